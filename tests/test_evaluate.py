"""example/evaluate.py: bad options, damaged model directories and invalid model.json are clear errors."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

import bmx
from bmx import packed
from test_data import write_recordio
from test_training import TINY_KNOBS, load_script

PREP = {"image_size": 32, "mean": [120.0, 115.0, 100.0], "std": [60.0, 60.0, 60.0], "resize": 0}


@pytest.fixture(scope="module")
def evaluate():
    return load_script("evaluate")


@pytest.fixture
def model_dir(tmp_path):
    """An exported tiny BinaryDenseNet with a model.json, and a record file of 16 toy images."""
    out = tmp_path / "run"
    out.mkdir()
    net = bmx.models.get_model("binary_densenet28", classes=4, **TINY_KNOBS)
    net.initialize(mx.init.Xavier())
    bmx.export(net, str(out / "model"), input_shape=(1, 3, 32, 32))
    (out / "model.json").write_text(json.dumps({"classes": 4, "preprocessing": PREP, "config": {"image_size": 32}}))
    return out, write_recordio(str(tmp_path / "val"), 16)


def run(evaluate, capsys, *args):
    try:
        code = evaluate.main([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def test_a_valid_model_directory_is_scored(model_dir, evaluate, capsys):
    out, rec = model_dir
    code, stdout, _ = run(evaluate, capsys, "--model-dir", out, "--data", rec)
    assert code == 0 and json.loads(stdout)["images"] == 16


@pytest.mark.parametrize("option, value, message", [
    ("--batch-size", 0, "--batch-size must be >= 1, got 0"),
    ("--num-workers", -1, "--num-workers must be >= 0, got -1"),
    ("--threads", 0, "--threads must be >= 1, got 0"),
])
def test_bad_options(option, value, message, model_dir, evaluate, capsys):
    out, rec = model_dir
    code, _, err = run(evaluate, capsys, "--model-dir", out, "--data", rec, option, value)
    assert code == 2 and f"evaluate.py: error: {message}" in err


def test_truncated_params_name_the_file(model_dir, evaluate, capsys):
    out, rec = model_dir
    path = out / "model-0000.params"
    path.write_bytes(path.read_bytes()[:1000])
    code, _, err = run(evaluate, capsys, "--model-dir", out, "--data", rec)
    assert code == 2 and err.startswith(f"evaluate.py: error: {path}: truncated") and err.count("\n") == 1


def test_non_finite_params_are_refused(model_dir, evaluate, capsys):
    out, rec = model_dir
    params = packed.read_params(out / "model-0000.params")
    name = next(k for k, a in params.items() if a.dtype == np.float32 and k.endswith("weight"))
    params[name] = np.full_like(params[name], np.nan)
    packed.write_params(out / "model-0000.params", params)
    code, stdout, err = run(evaluate, capsys, "--model-dir", out, "--data", rec)
    assert code == 2 and stdout == ""
    assert f"{out / 'model-0000.params'}: parameter {name[4:]} holds non-finite values" in err


@pytest.mark.parametrize("change, message", [
    ({"preprocessing": dict(PREP, std=[60.0, 0.0, 60.0])}, "preprocessing.std must be positive"),
    ({"preprocessing": dict(PREP, resize=-5)}, "preprocessing.resize must be 0 (no resize) or a positive integer"),
    ({"preprocessing": dict(PREP, image_size=64)}, "preprocessing.image_size is 64, but config.image_size says"),
    ({"classes": 0}, "classes must be a positive integer, got 0"),
])
def test_invalid_model_json_names_the_file_and_field(change, message, model_dir, evaluate, capsys):
    out, rec = model_dir
    meta = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps(dict(meta, **change)))
    code, _, err = run(evaluate, capsys, "--model-dir", out, "--data", rec)
    assert code == 2 and f"evaluate.py: error: {out / 'model.json'}: {message}" in err

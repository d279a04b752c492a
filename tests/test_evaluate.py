"""example/evaluate.py: bad options, damaged model directories and invalid model.json are clear errors;
--packed scores with numpy only, as MXNet's evaluation pipeline does, and without mxnet importable."""
import json
import os
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

import bmx
from bmx import data, datafiles, packed, runtime
from conftest import call_main
from test_data import write_recordio
from test_training import TINY_KNOBS, load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "example", "pretrained", "bdn28-cifar10")

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
    return call_main(evaluate.main, capsys, *args)


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


@pytest.fixture
def holdout_model(model_dir, tmp_path):
    """model_dir's model, as if trained on train.rec (40 records) holding out 8 of them."""
    out, _ = model_dir
    train = write_recordio(str(tmp_path / "train"), 40, seed=5)
    meta = json.loads((out / "model.json").read_text())
    meta["data"] = dict(val_size=8, split_seed=0, train_records=40, train_fingerprint=data.fingerprint(train))
    (out / "model.json").write_text(json.dumps(meta))
    return out, train


def test_holdout_scores_the_held_out_records_of_the_training_file(holdout_model, evaluate, capsys):
    out, train = holdout_model
    code, stdout, _ = run(evaluate, capsys, "--model-dir", out, "--data", train, "--holdout")
    assert code == 0 and json.loads(stdout)["images"] == 8 and json.loads(stdout)["holdout"]


def test_holdout_refuses_another_file(holdout_model, evaluate, capsys, tmp_path):
    out, _ = holdout_model
    smaller = write_recordio(str(tmp_path / "part"), 24, seed=5)
    code, stdout, err = run(evaluate, capsys, "--model-dir", out, "--data", smaller, "--holdout")
    assert code == 2 and stdout == ""
    assert f"{smaller}: 24 records, but the run held out its validation images from a training file of 40" in err
    same_count = write_recordio(str(tmp_path / "other"), 40, seed=6)
    code, stdout, err = run(evaluate, capsys, "--model-dir", out, "--data", same_count, "--holdout")
    assert code == 2 and stdout == "" and f"{same_count}: not the training file the run held out from" in err


def test_holdout_of_an_older_run_warns_and_refuses_a_file_too_small(holdout_model, evaluate, capsys, tmp_path):
    out, train = holdout_model
    meta = json.loads((out / "model.json").read_text())
    for key in ("train_records", "train_fingerprint"):
        del meta["data"][key]
    (out / "model.json").write_text(json.dumps(meta))
    tiny = write_recordio(str(tmp_path / "tiny"), 6, seed=5)
    code, _, err = run(evaluate, capsys, "--model-dir", out, "--data", tiny, "--holdout")
    assert code == 2 and f"{tiny}: 6 records, not more than the 8 the run held out" in err
    code, stdout, err = run(evaluate, capsys, "--model-dir", out, "--data", train, "--holdout")
    assert code == 0 and json.loads(stdout)["images"] == 8 and "does not record the training file" in err


def test_the_shipped_model_records_its_training_file():
    meta = json.loads(open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "example",
                                        "pretrained", "bdn28-cifar10", "model.json")).read())
    assert meta["data"]["train_records"] == 50000 and len(meta["data"]["train_fingerprint"]) == 16
    cifar = "/work/shared/data/cifar10/train.rec"
    if os.path.exists(cifar):
        assert data.fingerprint(cifar) == meta["data"]["train_fingerprint"]


def test_non_finite_outputs_are_an_error_not_nan_in_the_json(model_dir, evaluate, capsys):
    out, rec = model_dir
    params = packed.read_params(out / "model-0000.params")
    name = [k for k, a in params.items() if a.ndim == 2][-1]  # the classifier's weight
    params[name] = np.full_like(params[name], 3e38)
    packed.write_params(out / "model-0000.params", params)
    code, stdout, err = run(evaluate, capsys, "--model-dir", out, "--data", rec)
    assert code == 2 and stdout == "" and f"{out}: the model's outputs on {rec} are not finite" in err


# ----------------------------------------------------------------------------- --packed

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """13 images larger than the model's 32x32 input (center-cropped), as a .rec file and as folders."""
    directory = tmp_path_factory.mktemp("eval")
    rng = np.random.RandomState(3)
    rec, idx = str(directory / "d.rec"), str(directory / "d.idx")
    writer = mx.recordio.MXIndexedRecordIO(idx, rec, "w")
    for i in range(13):
        picture = rng.randint(0, 256, size=(36 + i % 2, 40, 3)).astype(np.uint8)
        label = i % 10
        writer.write_idx(i, mx.recordio.pack_img(mx.recordio.IRHeader(0, float(label), i, 0), picture,
                                                 img_fmt=".png"))
        os.makedirs(directory / "folders" / f"c{label}", exist_ok=True)
        cv2.imwrite(str(directory / "folders" / f"c{label}" / f"{i}.png"), picture)
    writer.close()
    return rec, str(directory / "folders")


def mxnet_scores(path, indices=None):
    """The scores MXNet's pipeline gives the same packed model (the independent reference)."""
    from bmx import data as bdata
    from bmx import training

    model = runtime.load(MODEL)

    def net(x):
        return mx.nd.array(model(x.asnumpy()))

    split = bdata.evaluation_split(path, bdata.Preprocessing.from_dict(model.meta["preprocessing"]), 5,
                                   indices=indices)
    return training.evaluate(net, split, model.meta["classes"])


def run_packed(evaluate, capsys, *args):
    code, out, err = run(evaluate, capsys, "--packed", MODEL, *args)
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("source", ["rec", "folders"])
def test_packed_scores_match_the_mxnet_pipeline(dataset, evaluate, capsys, source):
    data = dataset[0] if source == "rec" else dataset[1]
    got = run_packed(evaluate, capsys, "--data", data, "--batch-size", 4)
    want = mxnet_scores(data)
    assert got["images"] == want["images"] == 13
    assert got["top1"] == pytest.approx(want["top1"], abs=1e-9)
    assert got["top5"] == pytest.approx(want["top5"], abs=1e-9)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert got["packed"] is True


def test_packed_holdout_scores_the_records_of_the_split(dataset, evaluate, tmp_path, capsys):
    rec, _ = dataset
    meta = runtime.load(MODEL).meta
    indices = datafiles.heldout_indices(13, 6, meta["data"]["split_seed"])
    # the shipped model's val_size is larger than this file: a copy with a smaller one
    model = tmp_path / "model"
    os.makedirs(model)
    for name in os.listdir(MODEL):
        if name != "model.json":
            os.symlink(os.path.join(MODEL, name), model / name)
    meta["data"].update(val_size=6, train_records=13, train_fingerprint=datafiles.fingerprint(rec))
    (model / "model.json").write_text(json.dumps(meta))
    code, out, err = run(evaluate, capsys, "--packed", model, "--data", rec, "--holdout")
    assert code == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    want = mxnet_scores(rec, indices)
    assert got["images"] == 6 and got["holdout"] is True
    assert got["top1"] == pytest.approx(want["top1"], abs=1e-9)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_packed_evaluation_needs_no_mxnet(dataset):
    # None in sys.modules makes every `import mxnet` fail, whoever tries it
    code = ("import sys, runpy; sys.modules['mxnet'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, "example", "evaluate.py"),
                          "--packed", MODEL, "--data", dataset[0]], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["images"] == 13


def test_packed_data_errors_are_named(dataset, evaluate, tmp_path, capsys):
    code, _, err = run(evaluate, capsys, "--packed", MODEL, "--data", tmp_path / "none.rec")
    assert code == 2 and "none.rec" in err
    code, _, err = run(evaluate, capsys, "--packed", MODEL, "--data", dataset[1], "--holdout")
    assert code == 2 and "--holdout applies to RecordIO files only" in err
    picture = np.zeros((32, 32, 3), np.uint8)
    for label in range(11):  # one class folder more than the model has classes
        os.makedirs(tmp_path / "eleven" / f"k{label:02d}")
        cv2.imwrite(str(tmp_path / "eleven" / f"k{label:02d}" / "a.png"), picture)
    code, _, err = run(evaluate, capsys, "--packed", MODEL, "--data", tmp_path / "eleven")
    assert code == 2 and "eleven: label 10 is outside the model's 10 classes" in err

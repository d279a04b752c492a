"""example/evaluate.py --packed: numpy-only scoring of a packed model, against MXNet's evaluation
pipeline (bmx.data + bmx.training.evaluate), and without mxnet importable."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from bmx import runtime
from test_training import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "example", "pretrained", "bdn28-cifar10")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """13 images larger than the model's 32x32 input (center-cropped), as a .rec file and as folders."""
    mx = pytest.importorskip("mxnet")
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


def mxnet_scores(data, indices=None):
    """The scores MXNet's pipeline gives the same packed model (the independent reference)."""
    import mxnet as mx

    from bmx import data as bdata
    from bmx import training

    model = runtime.load(MODEL)

    def net(x):
        return mx.nd.array(model(x.asnumpy()))

    split = bdata.evaluation_split(data, bdata.Preprocessing.from_dict(model.meta["preprocessing"]), 5,
                                   indices=indices)
    return training.evaluate(net, split, model.meta["classes"])


def run_evaluate(capsys, *args):
    evaluate = load_script("evaluate")
    assert evaluate.main(["--packed", MODEL, *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("source", ["rec", "folders"])
def test_packed_scores_match_the_mxnet_pipeline(dataset, capsys, source):
    data = dataset[0] if source == "rec" else dataset[1]
    got = run_evaluate(capsys, "--data", data, "--batch-size", "4")
    want = mxnet_scores(data)
    assert got["images"] == want["images"] == 13
    assert got["top1"] == pytest.approx(want["top1"], abs=1e-9)
    assert got["top5"] == pytest.approx(want["top5"], abs=1e-9)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert got["packed"] is True


def test_packed_holdout_scores_the_records_of_the_split(dataset, tmp_path, capsys):
    from bmx import datafiles

    rec, _ = dataset
    meta = runtime.load(MODEL).meta
    indices = datafiles.heldout_indices(13, 6, meta["data"]["split_seed"])
    # the shipped model's val_size is larger than this file: a copy with a smaller one
    model = tmp_path / "model"
    os.makedirs(model)
    for name in os.listdir(MODEL):
        if name != "model.json":
            os.symlink(os.path.join(MODEL, name), model / name)
    meta["data"]["val_size"] = 6
    (model / "model.json").write_text(json.dumps(meta))
    evaluate = load_script("evaluate")
    assert evaluate.main(["--packed", str(model), "--data", rec, "--holdout"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
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


def test_errors_are_named(dataset, tmp_path, capsys):
    evaluate = load_script("evaluate")
    assert evaluate.main(["--packed", MODEL, "--data", str(tmp_path / "none.rec")]) == 2
    assert "none.rec" in capsys.readouterr().err
    assert evaluate.main(["--packed", MODEL, "--data", dataset[1], "--holdout"]) == 2
    assert "--holdout applies to RecordIO files only" in capsys.readouterr().err
    picture = np.zeros((32, 32, 3), np.uint8)
    for label in range(11):  # one class folder more than the model has classes
        os.makedirs(tmp_path / "eleven" / f"k{label:02d}")
        cv2.imwrite(str(tmp_path / "eleven" / f"k{label:02d}" / "a.png"), picture)
    assert evaluate.main(["--packed", MODEL, "--data", str(tmp_path / "eleven")]) == 2
    assert "eleven: label 10 is outside the model's 10 classes" in capsys.readouterr().err

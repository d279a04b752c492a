"""example/classify.py: top-5 classes of image files from a packed model, with and without mxnet."""
import json
import os
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

import bmx
from bmx import convert, images
from test_training import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREP = dict(image_size=32, mean=[125.3, 123.0, 113.9], std=[63.0, 62.1, 66.7], resize=0)


@pytest.fixture(scope="module")
def packed_model(tmp_path_factory):
    """A cifar-stem BinaryDenseNet with random weights, exported and packed with CIFAR-10 metadata."""
    tmp = tmp_path_factory.mktemp("classify")
    net = bmx.models.get_model("binary_densenet28", stem="cifar", classes=10, layers=(1, 1), growth_rate=16,
                               init_features=16, reduction=(1,))
    net.initialize(mx.init.Xavier(magnitude=3))
    prefix = str(tmp / "model")
    bmx.export(net, prefix, input_shape=(1, 3, 32, 32))
    meta = dict(preprocessing=PREP, classes=10, data=dict(dataset="cifar10", class_names=list(images.CIFAR10_CLASSES)))
    convert.binarize(prefix, str(tmp / "packed"), meta=meta)
    rng = np.random.RandomState(0)
    files = []
    for i, shape in enumerate([(32, 32, 3), (40, 48, 3)]):
        path = str(tmp / f"img{i}.png")
        cv2.imwrite(path, rng.randint(0, 256, shape).astype(np.uint8))
        files.append(path)
    original = bmx.imports(prefix + "-symbol.json", prefix + "-0000.params")
    return str(tmp / "packed"), files, original


def expected_top5(original, path):
    """Top-5 by the original MXNet model with an independent preprocessing (center crop, normalization)."""
    rgb = cv2.imread(path)[:, :, ::-1].astype(np.float64)
    h, w = rgb.shape[:2]
    crop = rgb[(h - 32) // 2:(h - 32) // 2 + 32, (w - 32) // 2:(w - 32) // 2 + 32]
    x = ((crop - np.array(PREP["mean"])) / np.array(PREP["std"])).transpose(2, 0, 1)[None].astype(np.float32)
    logits = original(mx.nd.array(x)).asnumpy()[0].astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    order = np.argsort(-p)[:5]
    return [images.CIFAR10_CLASSES[i] for i in order], p[order]


def test_top5_agrees_with_the_original_model(packed_model, capsys):
    packed, files, original = packed_model
    assert load_script("classify").main(["--model", packed, "--json", "--threads", "1"] + files) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["image"] for r in lines] == files
    for result, path in zip(lines, files):
        labels, probs = expected_top5(original, path)
        assert [t["label"] for t in result["top"]] == labels
        np.testing.assert_allclose([t["probability"] for t in result["top"]], probs, rtol=1e-3, atol=1e-5)


def test_runs_without_mxnet(packed_model):
    packed, files, _ = packed_model
    code = ("import sys, runpy; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code + "\nassert 'mxnet' not in sys.modules",
                          os.path.join(ROOT, "example", "classify.py"), "--model", packed, "--top", "3", files[0]],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == files[0] and len(out.stdout.splitlines()) == 4


def test_errors_name_the_file(packed_model, tmp_path, capsys):
    packed, files, _ = packed_model
    classify = load_script("classify")
    assert classify.main(["--model", str(tmp_path / "missing"), files[0]]) == 2
    assert "missing" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert classify.main(["--model", packed, str(bad)]) == 2
    assert "bad.jpg: not a readable image" in capsys.readouterr().err

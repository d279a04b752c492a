"""example/classify.py: top-5 classes of image files from a packed model, with and without mxnet."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

import bmx
from bmx import convert, images, packed
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
    for i, (shape, blow_up) in enumerate([((32, 32, 3), 1), ((32, 40, 3), 2)]):
        path = str(tmp / f"img{i}.png")
        pattern = rng.randint(0, 256, shape).astype(np.uint8)
        cv2.imwrite(path, np.repeat(np.repeat(pattern, blow_up, axis=0), blow_up, axis=1))
        files.append(path)
    original = bmx.imports(prefix + "-symbol.json", prefix + "-0000.params")
    return str(tmp / "packed"), files, original


def expected_top5(original, path):
    """Top-5 by the original MXNet model with an independent preprocessing (center crop, normalization).

    Larger images are k-fold nearest-neighbour blow-ups of a pattern whose shorter side is 32: scaled
    back to 32 bilinearly they give the pattern exactly (every output pixel is interpolated between
    two equal input pixels), which is every k-th pixel.
    """
    rgb = cv2.imread(path)[:, :, ::-1]
    k = min(rgb.shape[:2]) // 32
    rgb = rgb[::k, ::k].astype(np.float64)
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
    # the script ends in sys.exit: catch it, or the check after it never runs
    code = ("import sys, runpy\nsys.argv = sys.argv[1:]\ntry:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as stop:\n    status = stop.code\n"
            "assert 'mxnet' not in sys.modules, 'mxnet was imported'\nprint('no mxnet')\nsys.exit(status)")
    out = subprocess.run([sys.executable, "-c", code,
                          os.path.join(ROOT, "example", "classify.py"), "--model", packed, "--top", "3", files[0]],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == files[0] and len(lines) == 5 and lines[-1] == "no mxnet"


def test_errors_name_the_file(packed_model, tmp_path, capsys):
    packed, files, _ = packed_model
    classify = load_script("classify")
    assert classify.main(["--model", str(tmp_path / "missing"), files[0]]) == 2
    assert "missing" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert classify.main(["--model", packed, str(bad)]) == 2
    assert "bad.jpg: not a readable image" in capsys.readouterr().err


def test_a_larger_photo_is_resized_to_the_input_before_the_crop(packed_model, tmp_path, capsys):
    """resize 0 (a CIFAR-10 model): a photo 8x the input size is scaled down, not cropped to a patch."""
    packed, _, original = packed_model
    pattern = np.random.RandomState(3).randint(0, 256, (32, 40, 3)).astype(np.uint8)
    photo = np.repeat(np.repeat(pattern, 8, axis=0), 8, axis=1)
    path = str(tmp_path / "photo.png")
    cv2.imwrite(path, photo[:, :, ::-1])
    assert load_script("classify").main(["--model", packed, "--json", "--threads", "1", path]) == 0
    result = json.loads(capsys.readouterr().out)
    labels, probs = expected_top5(original, path)
    assert [t["label"] for t in result["top"]] == labels
    np.testing.assert_allclose([t["probability"] for t in result["top"]], probs, rtol=1e-3, atol=1e-5)
    assert result["preprocessing"] == dict(image_height=256, image_width=320, resize_shorter_side=32, center_crop=32,
                                           mean=PREP["mean"], std=PREP["std"])


def test_json_states_that_an_input_sized_image_is_only_normalized(packed_model, capsys):
    packed, files, _ = packed_model
    assert load_script("classify").main(["--model", packed, "--json", files[0]]) == 0
    assert json.loads(capsys.readouterr().out)["preprocessing"] == dict(
        image_height=32, image_width=32, resize_shorter_side=None, center_crop=32, mean=PREP["mean"], std=PREP["std"])


def test_non_finite_outputs_are_an_error_not_nan_percent(packed_model, tmp_path, capsys):
    """Finite but huge weights overflow to infinite logits: no 'nan%' and no NaN in the JSON."""
    source, files, _ = packed_model
    out = tmp_path / "huge"
    shutil.copytree(source, out)
    params = packed.read_params(out / packed.PARAMS_FILE)
    last = [k for k, a in params.items() if a.dtype == np.float32 and a.ndim == 2][-1]  # the classifier's weight
    params[last] = np.full_like(params[last], 3e38)
    packed.write_params(out / packed.PARAMS_FILE, params)
    meta = json.loads((out / packed.META_FILE).read_text())
    meta["packed"]["params_sha256"] = hashlib.sha256((out / packed.PARAMS_FILE).read_bytes()).hexdigest()
    (out / packed.META_FILE).write_text(json.dumps(meta))
    for extra in ([], ["--json"]):
        assert load_script("classify").main(["--model", str(out), *extra, files[0]]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and f"{files[0]}: the model's outputs are not finite" in captured.err


@pytest.mark.parametrize("field, value, message", [
    ("image_size", 64, "preprocessing.image_size is 64, but config.image_size says the model takes 32"),
    ("std", [63.0, 0.0, 66.7], "preprocessing.std must be positive, got [63.0, 0.0, 66.7]"),
    ("resize", -5, "preprocessing.resize must be 0 (no resize) or a positive integer, got -5"),
])
def test_bad_preprocessing_is_named(field, value, message, packed_model, tmp_path, capsys):
    source, files, _ = packed_model
    out = tmp_path / "bad"
    shutil.copytree(source, out)
    meta = json.loads((out / packed.META_FILE).read_text())
    meta["config"] = {"image_size": 32}
    meta["preprocessing"][field] = value
    (out / packed.META_FILE).write_text(json.dumps(meta))
    assert load_script("classify").main(["--model", str(out), files[0]]) == 2
    assert capsys.readouterr().err == f"classify.py: error: {out / packed.META_FILE}: {message}\n"

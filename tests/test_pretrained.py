"""example/pretrained/: the shipped bit-packed CIFAR-10 model is complete, small, well-formed and runs."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

import bmx
from bmx import images, packed, runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAINED = os.path.join(ROOT, "example", "pretrained")
MODEL = os.path.join(PRETRAINED, "bdn28-cifar10")


@pytest.fixture(scope="module")
def shipped():
    parts = packed.load_model(MODEL)
    with open(os.path.join(MODEL, "model-symbol.json")) as f:
        graph = json.load(f)
    return parts, graph


@pytest.fixture(scope="module")
def output_shapes():
    """Every node output's shape for one 32x32 image, by MXNet's shape inference on the symbol."""
    internals = mx.sym.load(os.path.join(MODEL, "model-symbol.json")).get_internals()
    _, shapes, _ = internals.infer_shape(data=(1, 3, 32, 32))
    return dict(zip(internals.list_outputs(), shapes))


def test_everything_shipped_fits_8_mb():
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(PRETRAINED) for f in files)
    assert total <= 8_000_000


def test_metadata_and_readme_describe_the_training(shipped):
    meta = shipped[0].meta
    assert meta["classes"] == 10 and meta["data"]["class_names"] == list(images.CIFAR10_CLASSES)
    assert meta["preprocessing"]["image_size"] == 32 and meta["data"]["val_size"] == 5000
    assert meta["config"]["model"] == "binary_densenet28" and meta["config"]["model_kwargs"] == {"stem": "cifar"}
    assert meta["epochs"] == meta["config"]["recipe"]["epochs"] == 12
    verified = meta["packed"]["verified"]
    assert verified["layers_checked_exactly"] == meta["packed"]["packed_layers"] == 23
    with open(os.path.join(PRETRAINED, "README.md")) as f:
        readme = f.read()
    # the accuracy the README states is the one recorded when the model was trained
    assert f"{100 * meta['final']['val_top1']:.2f} %" in readme
    assert "tools/binarize_model.py runs/cifar10/bdn28-binary --output example/pretrained/bdn28-cifar10" in readme


def _input_channels(graph, node_index, by_name):
    """Channels of a node's data input."""
    src, out_index, _ = graph["nodes"][node_index]["inputs"][0]
    src_node = graph["nodes"][src]
    name = src_node["name"] if src_node["op"] == "null" else f"{src_node['name']}_output"
    if name not in by_name:
        name = f"{src_node['name']}_output{out_index}"
    return by_name[name][1]


def test_binary_weights_are_packed_words_with_clean_tails(shipped, output_shapes):
    parts, graph = shipped
    params = parts.params
    xnor = [(i, n) for i, n in enumerate(graph["nodes"]) if n["op"] == "bmx_xnor_conv2d"]
    int64 = {k for k, v in params.items() if v.dtype == np.int64}
    assert len(xnor) == len(int64) == 23
    for i, node in xnor:
        weight = graph["nodes"][node["inputs"][1][0]]["name"]
        words = params[f"arg:{weight}"] if f"arg:{weight}" in params else params[weight]
        channels = _input_channels(graph, i, output_shapes)
        assert words.shape == (int(node["attrs"]["num_filter"]), 3, 3, -(-channels // 64)), node["name"]
        bits = np.unpackbits(words.view(np.uint8).reshape(words.shape + (8,)), axis=-1, bitorder="little")
        bits = bits.reshape(words.shape[:3] + (-1,))
        assert not bits[..., channels:].any(), f"{node['name']}: bits past channel {channels} must be 0"
        # a trained layer uses both signs in every filter
        assert bits[..., :channels].any(axis=(1, 2, 3)).all() and (bits[..., :channels] == 0).any(axis=(1, 2, 3)).all()


def test_runtime_and_mxnet_agree_on_the_shipped_model():
    x = np.random.RandomState(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    got = runtime.load(MODEL, threads=1)(x)
    net = bmx.imports(os.path.join(MODEL, "model-symbol.json"), os.path.join(MODEL, "model-0000.params"))
    want = net(mx.nd.array(x)).asnumpy()
    assert got.shape == want.shape == (16, 10) and np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()

"""Whole zoo models in bmx.runtime: exported and converted, against MXNet."""
import json

import mxnet as mx
import numpy as np
import pytest

import bmx
from bmx import convert, packed, runtime
from runtime_cases import F32


# ------------------------------------------------------------------ zoo models

def integer_params(net, seed):
    """Parameters that keep every value an exactly representable integer (or half-integer).

    Float weights in {-1, 0, 1}, BatchNorm with gamma = +-1, var + eps = 1 (exactly, in float32)
    and half-integer mean and beta: every float op is then exact in MXNet and in the runtime, so
    the signs agree everywhere and the outputs match to float precision. Random float
    parameters would put a few pre-sign values within rounding of 0, where each implementation
    may flip the sign (and a binary network amplifies every flip).
    """
    rng = np.random.default_rng(seed)
    for name, p in net.collect_params().items():
        shape = p.shape
        if name.endswith("gamma"):
            value = rng.choice([-1.0, 1.0], shape)
        elif name.endswith("running_var"):
            value = np.full(shape, F32(1 - 1e-5))
        elif name.endswith(("beta", "running_mean")):
            value = rng.integers(-2, 3, shape) + 0.5
        elif name.endswith("bias"):
            value = rng.integers(-2, 3, shape)
        elif "qconv" in name:  # latent binary weights: only their signs count
            value = rng.standard_normal(shape)
        else:
            value = rng.integers(-1, 2, shape) * (rng.random(shape) < 0.5)
        p.set_data(mx.nd.array(value))


def float_params(net, seed):
    rng = np.random.default_rng(seed)
    for name, p in net.collect_params().items():
        if name.endswith(("gamma", "running_var")):
            value = rng.uniform(0.5, 2.0, p.shape)
        elif name.endswith(("beta", "running_mean", "bias")):
            value = rng.uniform(-0.5, 0.5, p.shape)
        else:
            value = rng.standard_normal(p.shape) * np.sqrt(2 / np.prod(p.shape[1:]))
        p.set_data(mx.nd.array(value))


def export_zoo(tmp_path, name, binary, seed=0):
    net = bmx.models.get_model(name, stem="cifar", classes=10, binary=binary)
    net.initialize()
    (integer_params if binary else float_params)(net, seed)
    directory = tmp_path / "exported"
    directory.mkdir()
    bmx.export(net, str(directory / "model"))
    (directory / packed.META_FILE).write_text(json.dumps({"model": name, "stem": "cifar", "classes": 10}))
    return directory


def mxnet_of(directory, x):
    block = bmx.imports(str(directory / packed.SYMBOL_FILE), str(directory / packed.PARAMS_FILE))
    return block(mx.nd.array(x)).asnumpy()


def zoo_input(binary, seed=1):
    rng = np.random.default_rng(seed)
    shape = (2, 3, 32, 32)
    return rng.integers(-2, 3, shape).astype(F32) if binary else rng.standard_normal(shape).astype(F32)


ZOO = ["binary_densenet28", "meliusnet22", "binary_resnet_e18", "bdn_poster_16x128", "bdn_poster_16x128_fpds"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "float-twin"])
@pytest.mark.parametrize("name", ZOO)
def test_exported_zoo_models_match_mxnet(tmp_path, name, binary):
    """The graph bmx.export writes (binary layers as float convolutions of signs) runs unchanged."""
    directory = export_zoo(tmp_path, name, binary)
    x = zoo_input(binary)
    expected = mxnet_of(directory, x)
    got = runtime.load(directory)(x)
    assert got.shape == (2, 10)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * scale if binary else 1e-4 * scale)


@pytest.mark.parametrize("name", ZOO)
def test_converted_zoo_models_match_the_original(tmp_path, name):
    """bmx.convert's packed model (bmx_xnor_conv2d, int64 words) in the runtime and in MXNet."""
    directory = export_zoo(tmp_path, name, binary=True)
    meta = json.loads((directory / packed.META_FILE).read_text())
    graph, params, _ = convert.convert(str(directory / "model-symbol.json"), str(directory / "model-0000.params"), meta)
    out = tmp_path / "packed"
    packed.save_model(out, graph, params, meta)
    assert any(n["op"] == "bmx_xnor_conv2d" for n in graph["nodes"])
    x = zoo_input(True)
    expected = mxnet_of(directory, x)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(runtime.load(out)(x), expected, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(mxnet_of(out, x), expected, rtol=0, atol=1e-5 * scale)

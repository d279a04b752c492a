"""bmx.runtime's int8 layers (bmx/runtime/ops/int8.py) against plain numpy: the input quantized
(round half to even, clip to +-127), an exact integer convolution or product, then scaled.
Graphs are written as symbol JSON by hand: no mxnet needed."""
import json

import numpy as np
import pytest

from bmx import packed, runtime
from bmx.packed import PackedFormatError
from conftest import pad_nchw, ref_conv2d

F32 = np.float32


class Graph:
    """A symbol JSON graph built node by node (inputs before readers), with its parameters."""

    def __init__(self):
        self.nodes, self.params = [{"op": "null", "name": "data", "inputs": []}], {}

    def var(self, name, array):
        self.params[f"arg:{name}"] = array
        self.nodes.append({"op": "null", "name": name, "inputs": []})
        return len(self.nodes) - 1

    def op(self, op, name, inputs, **attrs):
        self.nodes.append({"op": op, "name": name, "attrs": {k: str(v) for k, v in attrs.items()},
                           "inputs": [[i, 0, 0] for i in inputs]})
        return len(self.nodes) - 1

    def save(self, path, heads):
        graph = {"nodes": self.nodes, "arg_nodes": [i for i, n in enumerate(self.nodes) if n["op"] == "null"],
                 "heads": [[h, 0, 0] for h in heads]}
        packed.save_model(path, graph, self.params, {})
        return path


def quantize(x, scale):
    """clip(round_half_even(x / scale), -127, 127) as int64, the division in float32."""
    return np.clip(np.round(x.astype(F32) / F32(scale)), -127, 127).astype(np.int64)


def int8_weights(shape, rng):
    w = rng.integers(-127, 128, shape).astype(np.int8)
    return w, rng.uniform(0.001, 0.01, shape[0]).astype(F32)


def int8_conv(g, name, data, w, w_scale, x_scale, bias=None, **attrs):
    inputs = [data, g.var(f"{name}_w", w), g.var(f"{name}_ws", w_scale), g.var(f"{name}_xs", np.array([x_scale], F32))]
    if bias is not None:
        inputs.append(g.var(f"{name}_b", bias))
    return g.op("bmx_int8_conv2d", name, inputs, num_filter=w.shape[0], kernel=tuple(w.shape[2:]),
                no_bias=bias is None, **attrs)


@pytest.mark.parametrize("stride, pad, dilate, groups", [((1, 1), (0, 0), (1, 1), 1), ((2, 2), (1, 1), (1, 1), 2),
                                                         ((1, 2), (2, 1), (2, 1), 1)])
def test_int8_conv2d_with_batchnorm_and_relu(tmp_path, stride, pad, dilate, groups):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 9, 8)).astype(F32)
    w, w_scale = int8_weights((6, 4 // groups, 3, 3), rng)
    bias = rng.standard_normal(6).astype(F32)
    gamma, beta = rng.uniform(-2, 2, 6).astype(F32), rng.standard_normal(6).astype(F32)
    mean, var = rng.standard_normal(6).astype(F32), rng.uniform(0.5, 2, 6).astype(F32)
    x_scale = F32(0.02)
    g = Graph()
    conv = int8_conv(g, "conv", 0, w, w_scale, x_scale, bias, stride=stride, pad=pad, dilate=dilate, num_group=groups)
    bn = g.op("BatchNorm", "bn", [conv] + [g.var(n, a) for n, a in (("gamma", gamma), ("beta", beta),
                                                                    ("mean", mean), ("var", var))],
              eps=1e-5, fix_gamma=False)
    relu = g.op("Activation", "relu", [bn], act_type="relu")
    model = runtime.load(g.save(tmp_path / "m", [relu]))
    assert not any(type(e.op).__name__ == "_BatchNorm" for e in model._entries), "the BatchNorm is folded"

    acc = ref_conv2d(pad_nchw(quantize(x, x_scale), pad, 0), w, stride, dilate, groups)  # exact integers
    y = acc * (np.float64(x_scale) * w_scale.reshape(-1, 1, 1)) + bias.reshape(-1, 1, 1)
    m = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-5)
    y = np.maximum((y - mean.reshape(-1, 1, 1)) * m.reshape(-1, 1, 1) + beta.reshape(-1, 1, 1), 0)
    got = model(x)
    assert got.shape == y.shape and got.dtype == F32
    np.testing.assert_allclose(got, y, rtol=1e-5, atol=1e-5 * np.abs(y).max())


def test_int8_dense_and_input_clipping(tmp_path):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3, 2, 4, 4)) * 3).astype(F32)  # values past 127 * scale clip
    w, w_scale = int8_weights((5, 32), rng)
    bias = rng.standard_normal(5).astype(F32)
    x_scale = F32(0.01)
    g = Graph()
    dense = g.op("bmx_int8_dense", "fc", [0, g.var("w", w), g.var("ws", w_scale), g.var("xs", np.array([x_scale], F32)),
                                          g.var("b", bias)], num_hidden=5)
    model = runtime.load(g.save(tmp_path / "m", [dense]))
    xq = quantize(x.reshape(3, -1), x_scale)
    assert np.abs(xq).max() == 127
    want = (xq @ w.astype(np.int64).T) * (np.float64(x_scale) * w_scale) + bias
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_rounding_is_half_to_even(tmp_path):
    scale = F32(0.5)
    x = np.array([-1.25, -0.75, -0.25, 0.25, 0.75, 1.25, 100.0, -100.0], F32).reshape(1, 8, 1, 1)
    g = Graph()
    w = np.eye(8, dtype=np.int8).reshape(8, 8, 1, 1)
    conv = int8_conv(g, "conv", 0, w, np.ones(8, F32), scale)
    got = runtime.load(g.save(tmp_path / "m", [conv]))(x).reshape(-1)
    # x / 0.5 = -2.5, -1.5, -0.5, 0.5, 1.5, 2.5 round to even; 200 clips to 127
    np.testing.assert_array_equal(got, np.array([-2, -2, 0, 0, 2, 2, 127, -127], F32) * scale)


@pytest.mark.parametrize("case, message", [
    ("float weight", "weight must be int8"),
    ("-128", "holds -128"),
    ("scale 0", "weight_scale must be float32"),
    ("input scale", "input_scale must be one positive float32"),
    ("bias", "bias has 3 values for 4 outputs"),
])
def test_bad_int8_layers_are_named(tmp_path, case, message):
    w, w_scale = np.ones((4, 2, 1, 1), np.int8), np.ones(4, F32)
    x_scale, bias = np.array([0.1], F32), np.zeros(4, F32)
    if case == "float weight":
        w = w.astype(F32)
    elif case == "-128":
        w[0, 0] = -128
    elif case == "scale 0":
        w_scale[1] = 0
    elif case == "input scale":
        x_scale = np.array([-0.1], F32)
    else:
        bias = np.zeros(3, F32)
    g = Graph()
    inputs = [0] + [g.var(n, a) for n, a in (("w", w), ("ws", w_scale), ("xs", x_scale), ("b", bias))]
    conv = g.op("bmx_int8_conv2d", "conv", inputs, num_filter=4, kernel=(1, 1))
    with pytest.raises(PackedFormatError, match=f"node 'conv' \\(bmx_int8_conv2d\\): .*{message}"):
        runtime.load(g.save(tmp_path / "m", [conv]))


def test_int8_models_are_format_version_2_and_round_trip(tmp_path):
    w, w_scale = int8_weights((4, 3, 3, 3), np.random.default_rng(2))
    g = Graph()
    conv = int8_conv(g, "conv", 0, w, w_scale, F32(0.05))
    path = g.save(tmp_path / "int8", [conv])
    loaded = packed.load_model(path)
    assert loaded.meta["packed"]["format_version"] == 2
    assert loaded.params["arg:conv_w"].dtype == np.int8
    np.testing.assert_array_equal(loaded.params["arg:conv_w"], w)
    float_graph = Graph()
    relu = float_graph.op("Activation", "relu", [0], act_type="relu")
    assert packed.load_model(float_graph.save(tmp_path / "float", [relu])).meta["packed"]["format_version"] == 1

    meta_path = path / packed.META_FILE
    meta = json.loads(meta_path.read_text())
    meta["packed"]["format_version"] = 1  # what an older writer would claim
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(PackedFormatError, match="format_version is 1 but .* holds int8 layers"):
        packed.load_model(path)

"""bmx.runtime: packed models run with numpy and bmx.xnor, compared with MXNet's executor."""
import glob
import json
import os
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest

import bmx
from bmx import _xnor, packed, runtime, xnor
from bmx.packed import PackedFormatError
from bmx.runtime.ops.elementwise import _BatchNormSign

F32 = np.float32
RNG = np.random.default_rng(0)


# ------------------------------------------------------------------ helpers

def save_model_dir(path, symbol, arg_params, aux_params=None, meta=None):
    """Writes a model directory the way train_imagenet.py lays it out, with MXNet's own writers."""
    path.mkdir(parents=True, exist_ok=True)
    symbol.save(str(path / packed.SYMBOL_FILE))
    arrays = {f"arg:{k}": mx.nd.array(v, dtype=v.dtype) for k, v in arg_params.items()}
    arrays.update({f"aux:{k}": mx.nd.array(v, dtype=v.dtype) for k, v in (aux_params or {}).items()})
    mx.nd.save(str(path / packed.PARAMS_FILE), arrays)
    (path / packed.META_FILE).write_text(json.dumps(meta or {}))
    return path


def mxnet_forward(symbol, x, arg_params, aux_params=None):
    names = symbol.list_arguments()
    args = {k: mx.nd.array(v, dtype=v.dtype) for k, v in arg_params.items() if k in names}
    args["data"] = mx.nd.array(x)
    known = {k: v.shape for k, v in args.items()}
    for name, shape in zip(symbol.list_arguments(), symbol.infer_shape(**known)[0]):
        args.setdefault(name, mx.nd.zeros(shape))  # labels of loss layers: unused at inference
    aux = {k: mx.nd.array(v) for k, v in (aux_params or {}).items()}
    executor = symbol.bind(mx.cpu(), args, aux_states=aux, grad_req="null")
    return [o.asnumpy() for o in executor.forward(is_train=False)]


def run_both(tmp_path, symbol, x, arg_params=None, aux_params=None, **load_args):
    arg_params = arg_params or {}
    model = runtime.load(save_model_dir(tmp_path / "model", symbol, arg_params, aux_params), **load_args)
    got = model(x)
    return (got if isinstance(got, tuple) else (got,)), mxnet_forward(symbol, x, arg_params, aux_params)


def check(tmp_path, symbol, x, arg_params=None, aux_params=None, rtol=1e-5, atol=1e-5):
    got, ref = run_both(tmp_path, symbol, x, arg_params, aux_params)
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == F32
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)


def away_from_zero(shape, low=0.05, high=2.0, seed=1):
    """Random values with |x| >= low, so that signs cannot depend on rounding."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(low, high, shape) * rng.choice([-1, 1], shape)).astype(F32)


def normal(*shape, seed=2):
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


DATA = mx.sym.var("data")
X = normal(2, 4, 9, 9)


# ------------------------------------------------------------------ one op at a time

def conv(**attrs):
    def build():
        kw = dict(attrs)
        c, o = 4, kw.pop("num_filter")
        groups = kw.get("num_group", 1)
        kernel = kw["kernel"]
        params = {"w": normal(o, c // groups, *kernel, seed=3)}
        inputs = dict(weight=mx.sym.var("w"))
        if not kw.get("no_bias"):
            params["b"] = normal(o, seed=4)
            inputs["bias"] = mx.sym.var("b")
        return mx.sym.Convolution(DATA, num_filter=o, **inputs, **kw), params
    return build


@pytest.fixture(params=xnor.available_kernels())
def kernel(request):
    """Forces each kernel variant in turn: the float convolution's paths follow bmx.xnor's choice."""
    xnor.set_kernel(request.param)
    yield request.param
    xnor.set_kernel(None)


@pytest.mark.parametrize("build", [
    conv(num_filter=6, kernel=(3, 3), pad=(1, 1)),
    conv(num_filter=6, kernel=(3, 3), stride=(2, 2), pad=(1, 0), dilate=(2, 1), num_group=2, no_bias=True),
    conv(num_filter=5, kernel=(1, 1), stride=(2, 2), no_bias=True),
    conv(num_filter=6, kernel=(1, 1), num_group=2),
    conv(num_filter=8, kernel=(7, 7), stride=(2, 2), pad=(3, 3), no_bias=True),
    conv(num_filter=3, kernel=(3, 1), stride=(1, 2)),
    conv(num_filter=17, kernel=(2, 3), pad=(0, 2)),
], ids=["3x3", "grouped-strided-dilated", "1x1-strided", "1x1-grouped", "7x7-stem", "3x1", "17-filters-2x3"])
def test_convolution(tmp_path, kernel, build):
    symbol, params = build()
    check(tmp_path, symbol, X, params, rtol=1e-4, atol=1e-4)
    # wide rows: several 16-output tiles and a partial one
    check(tmp_path / "wide", symbol, normal(1, 4, 5, 37, seed=30), params, rtol=1e-4, atol=1e-4)


def reference_convolution(x, w, bias, stride, pad, dilate, groups):
    """MXNet's Convolution in float64 numpy."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad[0],) * 2, (pad[1],) * 2))
    oh = (h + 2 * pad[0] - dilate[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * pad[1] - dilate[1] * (kw - 1) - 1) // stride[1] + 1
    og = o // groups
    out = np.zeros((n, o, oh, ow)) + (0 if bias is None else bias.reshape(1, -1, 1, 1))
    for g in range(groups):
        for a in range(kh):
            for b in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, a * dilate[0]:a * dilate[0] + stride[0] * (oh - 1) + 1:stride[0],
                           b * dilate[1]:b * dilate[1] + stride[1] * (ow - 1) + 1:stride[1]]
                out[:, g * og:(g + 1) * og] += np.einsum("ncij,oc->noij", patch, w[g * og:(g + 1) * og, :, a, b])
    return out


@pytest.mark.parametrize("shape, filters, kernel_size, stride, pad, dilate, groups, bias", [
    ((1, 3, 23, 21), 64, (7, 7), (2, 2), (3, 3), (1, 1), 1, True),
    ((2, 6, 13, 35), 10, (3, 2), (2, 3), (1, 2), (2, 1), 2, False),
    ((1, 5, 9, 9), 17, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    ((3, 4, 1, 50), 7, (1, 1), (1, 1), (0, 0), (1, 1), 1, False),
], ids=["stem", "grouped-strided-dilated", "17-filters", "1x1-one-row"])
def test_direct_convolution_kernel(shape, filters, kernel_size, stride, pad, dilate, groups, bias):
    """floatops.h's bmx_conv_f32 on every variant against float64, into a channel slice of a larger buffer."""
    rng = np.random.default_rng(31)
    x = rng.standard_normal(shape).astype(F32)
    w = rng.standard_normal((filters, shape[1] // groups) + kernel_size).astype(F32)
    b = rng.standard_normal(filters).astype(F32) if bias else None
    want = reference_convolution(x, w, b, stride, pad, dilate, groups)
    wt = np.ascontiguousarray(w.reshape(groups, filters // groups, -1).transpose(0, 2, 1))
    for name in xnor.available_kernels():
        buffer = np.full((shape[0], filters + 3) + want.shape[2:], 5.0, F32)
        _xnor.conv_f32(x, wt, b, buffer[:, 1:1 + filters], kernel_size, stride, pad, dilate, _xnor.KERNELS[name], 2)
        np.testing.assert_allclose(buffer[:, 1:1 + filters], want, rtol=1e-5, atol=1e-4, err_msg=name)
        assert (buffer[:, 0] == 5).all() and (buffer[:, 1 + filters:] == 5).all()


@pytest.mark.parametrize("kwargs", [dict(fix_gamma=False, eps=1e-5), dict(fix_gamma=True), dict(fix_gamma=False),
                                    dict(fix_gamma=False, use_global_stats=True, eps=0.1)],
                         ids=["gluon", "fix_gamma-default", "default-eps", "global-stats"])
def test_batchnorm_uses_moving_statistics_and_fix_gamma(tmp_path, kwargs):
    names = ["g", "b", "m", "v"]
    symbol = mx.sym.BatchNorm(DATA, *[mx.sym.var(n) for n in names], **kwargs)
    args = {"g": normal(4, seed=5) + 2, "b": normal(4, seed=6)}  # gamma far from 1: fix_gamma must ignore it
    aux = {"m": normal(4, seed=7), "v": np.random.default_rng(8).uniform(0.5, 2, 4).astype(F32)}
    check(tmp_path, symbol, X, args, aux)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh", "softrelu", "softsign"])
def test_activation(tmp_path, act):
    check(tmp_path, mx.sym.Activation(DATA * 10, act_type=act), X)


@pytest.mark.parametrize("kwargs", [dict(act_type="leaky", slope=0.1), dict(act_type="elu", slope=0.7),
                                    dict(act_type="selu"), dict(act_type="rrelu"), dict(act_type="prelu")],
                         ids=["leaky", "elu", "selu", "rrelu", "prelu"])
def test_leaky_relu(tmp_path, kwargs):
    params = {}
    if kwargs["act_type"] == "prelu":
        params["gamma"] = normal(4, seed=9)
        symbol = mx.sym.LeakyReLU(DATA, gamma=mx.sym.var("gamma"), **kwargs)
    else:
        symbol = mx.sym.LeakyReLU(DATA, **kwargs)[0]  # rrelu has a second output, its mask
    check(tmp_path, symbol, X, params)


@pytest.mark.parametrize("kwargs", [
    dict(pool_type="max", kernel=(3, 3), stride=(2, 2), pad=(1, 1)),
    dict(pool_type="max", kernel=(2, 2), stride=(2, 2), pad=(1, 1), pooling_convention="full"),
    dict(pool_type="avg", kernel=(2, 2), stride=(2, 2), pooling_convention="full", count_include_pad=False),
    dict(pool_type="avg", kernel=(3, 3), stride=(2, 2), pad=(1, 1), pooling_convention="full"),
    dict(pool_type="avg", kernel=(2, 2), stride=(2, 2), pad=(1, 1), pooling_convention="full",
         count_include_pad=False),
    dict(pool_type="avg", kernel=(3, 2), stride=(1, 2), pad=(1, 0)),
    dict(pool_type="sum", kernel=(2, 2), stride=(1, 1)),
    dict(pool_type="max", kernel=(1, 1), global_pool=True),
    dict(pool_type="avg", kernel=(1, 1), global_pool=True),
], ids=["max-3x3-s2", "max-full-empty-windows", "avg-full-exclude-pad", "avg-full-include-pad",
        "avg-full-pad-exclude", "avg-3x2", "sum", "global-max", "global-avg"])
def test_pooling(tmp_path, kwargs):
    check(tmp_path, mx.sym.Pooling(DATA, **kwargs), X)


@pytest.mark.parametrize("kwargs", [dict(kernel=(3, 3), stride=(2, 2), pad=(1, 1)), dict(kernel=(2, 2), stride=(2, 2)),
                                    dict(kernel=(3, 2), stride=(1, 3), pad=(1, 1), pooling_convention="full"),
                                    dict(kernel=(1, 1), global_pool=True)],
                         ids=["3x3-s2-pad", "2x2-s2", "3x2-full", "global"])
def test_max_pooling_is_mxnets_loop_nan_and_padding_never_win(tmp_path, kwargs):
    """MXNet takes a value only when it is greater than the max so far, starting from float32's lowest: NaN
    never wins, and a window of NaN / -inf / padding only gives the lowest value."""
    x = normal(2, 3, 8, 11, seed=32)
    x[0, 0, :4, :4] = np.nan
    x[0, 1, :4, :4] = -np.inf
    x[1, 2] = -np.inf
    x[1, 0, 2, 3] = np.nan
    x[1, 1, ::3, ::2] = np.inf
    check(tmp_path, mx.sym.Pooling(DATA, pool_type="max", **kwargs), x, rtol=0, atol=0)


@pytest.mark.parametrize("stride", [(2, 2), (1, 1), (3, 2)])
def test_max_pooling_odd_sizes_and_strides(tmp_path, stride):
    x = normal(1, 5, 13, 17, seed=33)
    big = normal(2, 40, 41, 39, seed=38)  # enough work for a thread team
    for kernel, pad in [((3, 3), (1, 1)), ((2, 3), (0, 1)), ((4, 4), (2, 0))]:
        symbol = mx.sym.Pooling(DATA, pool_type="max", kernel=kernel, stride=stride, pad=pad)
        check(tmp_path / f"{kernel}{pad}", symbol, x, rtol=0, atol=0)
        got, ref = run_both(tmp_path / f"big{kernel}{pad}", symbol, big, threads=2)
        np.testing.assert_array_equal(got[0], ref[0])


def test_batchnorm_and_relu_after_max_pooling_run_in_its_output_loop(tmp_path):
    """A DenseNet transition (BN -> max pool -> ReLU -> conv) and stem (ReLU -> max pool, read by a concat and
    a convolution): the BatchNorm moves behind the pooling, then it and the ReLU fold into the pooling."""
    bn, args, aux = batchnorm(DATA, "bn", 4, seed=34, gamma=[1.0, 0.5, 2.0, 0.0])
    pooled = mx.sym.relu(mx.sym.Pooling(bn, pool_type="max", kernel=(2, 2), stride=(2, 2)))
    args["w"] = normal(3, 4, 1, 1, seed=35)
    symbol = mx.sym.Convolution(pooled, weight=mx.sym.var("w"), kernel=(1, 1), num_filter=3, no_bias=True)
    check(tmp_path, symbol, X, args, aux, rtol=1e-5, atol=1e-5)
    model = runtime.load(tmp_path / "model")
    assert op_names(tmp_path) == ["_Pooling", "_Convolution"]
    pool = model._entries[0].op
    assert pool.scale is not None and pool.relu
    stem = mx.sym.Pooling(mx.sym.relu(DATA), pool_type="max", kernel=(3, 3), stride=(2, 2), pad=(1, 1))
    args = {"w": normal(2, 4, 3, 3, seed=36)}
    branch = mx.sym.Convolution(stem, weight=mx.sym.var("w"), kernel=(3, 3), pad=(1, 1), num_filter=2, no_bias=True)
    check(tmp_path / "stem", mx.sym.concat(stem, branch, dim=1), X, args, rtol=1e-5, atol=1e-5)
    assert op_names(tmp_path / "stem") == ["_Pooling", "_Convolution", "_Concat"]


@pytest.mark.parametrize("build", [
    lambda a, b: mx.sym.Concat(a, b, a * 2, dim=1),
    lambda a, b: mx.sym.concat(a, b, dim=2),
    lambda a, b: mx.sym.concat(a, a, dim=1),
    lambda a, b: mx.sym.concat(mx.sym.concat(a, b, dim=1), a + b, dim=1),
], ids=["Concat3", "concat-dim2", "same-input-twice", "nested"])
def test_concat(tmp_path, build):
    a = mx.sym.Activation(DATA, act_type="relu")
    b = DATA * 3
    check(tmp_path, build(a, b), X)


@pytest.mark.parametrize("build", [
    lambda x, c: x + x * 2, lambda x, c: x - x * 2, lambda x, c: x * (x + 1), lambda x, c: x / (mx.sym.abs(x) + 1),
    lambda x, c: mx.sym.broadcast_add(x, c), lambda x, c: mx.sym.broadcast_mul(x, c),
    lambda x, c: mx.sym.broadcast_sub(c, x), lambda x, c: mx.sym.broadcast_div(x, mx.sym.abs(c) + 1),
    lambda x, c: mx.sym._internal._plus(x, x), lambda x, c: mx.sym._internal._Plus(x, x),
    lambda x, c: mx.sym.add_n(x, x * 2, x * 3),
    lambda x, c: x * 2.5, lambda x, c: x + 1.5, lambda x, c: x - 1, lambda x, c: 1 - x, lambda x, c: x / 4,
    lambda x, c: 2 / (mx.sym.abs(x) + 1), lambda x, c: mx.sym.negative(x),
    lambda x, c: mx.sym.sqrt(mx.sym.abs(x)), lambda x, c: mx.sym.square(x), lambda x, c: mx.sym.clip(x, -0.5, 0.7),
    lambda x, c: mx.sym.relu(x), lambda x, c: mx.sym.sigmoid(x), lambda x, c: mx.sym.tanh(x),
    lambda x, c: mx.sym.BlockGrad(x) + mx.sym.stop_gradient(x) + mx.sym.Dropout(x, p=0.5) + mx.sym.identity(x),
], ids=["elemwise_add", "elemwise_sub", "elemwise_mul", "elemwise_div", "broadcast_add", "broadcast_mul",
        "broadcast_sub", "broadcast_div", "_plus", "_Plus", "add_n", "_mul_scalar", "_plus_scalar", "_minus_scalar",
        "_rminus_scalar", "_div_scalar", "_rdiv_scalar", "negative", "sqrt-abs", "square", "clip", "relu",
        "sigmoid", "tanh", "identities"])
def test_elementwise(tmp_path, build):
    check(tmp_path, build(DATA, mx.sym.var("c")), X, {"c": normal(1, 4, 1, 1, seed=10)})


@pytest.mark.parametrize("build", [
    lambda x: mx.sym.Flatten(x), lambda x: mx.sym.flatten(x),
    lambda x: mx.sym.Reshape(x, shape=(0, -1)), lambda x: mx.sym.reshape(x, shape=(-1,)),
    lambda x: mx.sym.reshape(x, shape=(0, 0, -3)), lambda x: mx.sym.reshape(x, shape=(-2, 1)),
    lambda x: mx.sym.reshape(x, shape=(0, -4, 2, -1, 0, 0)), lambda x: mx.sym.reshape(x, shape=(-1, 0), reverse=True),
    lambda x: mx.sym.reshape(x, shape=(2, 36, 9)),
    lambda x: mx.sym.slice_axis(x, axis=1, begin=1, end=None), lambda x: mx.sym.slice_axis(x, axis=2, begin=-4, end=-1),
    lambda x: mx.sym.slice(x, begin=(None, 1), end=(None, 3)),
    lambda x: mx.sym.slice(x, begin=(0, 0, 1), end=(2, 4, 8), step=(1, 2, 3)),
    lambda x: mx.sym.pad(x, mode="constant", constant_value=-1, pad_width=(0, 0, 0, 0, 1, 2, 2, 1)),
    lambda x: mx.sym.pad(x, mode="edge", pad_width=(0, 0, 0, 0, 1, 1, 2, 2)),
    lambda x: mx.sym.pad(x, mode="reflect", pad_width=(0, 0, 0, 0, 2, 1, 1, 2)),
    lambda x: mx.sym.sum(x, axis=(2, 3)), lambda x: mx.sym.mean(x, axis=1, keepdims=True),
    lambda x: mx.sym.sum(x, axis=(0, 1), exclude=True), lambda x: mx.sym.mean(x),
    lambda x: mx.sym.softmax(mx.sym.Flatten(x), axis=1), lambda x: mx.sym.softmax(x, axis=1, temperature=2.0),
    lambda x: mx.sym.SoftmaxActivation(x, mode="channel"), lambda x: mx.sym.SoftmaxActivation(mx.sym.Flatten(x)),
    lambda x: mx.sym.SoftmaxOutput(mx.sym.Flatten(x), name="softmax"),
    lambda x: mx.sym.SoftmaxOutput(x, multi_output=True, name="softmax"),
], ids=["Flatten", "flatten", "reshape-0-1", "reshape-1", "reshape-3", "reshape-2", "reshape-4", "reshape-reverse",
        "reshape-explicit", "slice_axis", "slice_axis-negative", "slice-none", "slice-step", "pad-constant",
        "pad-edge", "pad-reflect", "sum", "mean-keepdims", "sum-exclude", "mean-all", "softmax", "softmax-temperature",
        "SoftmaxActivation-channel", "SoftmaxActivation-instance", "SoftmaxOutput", "SoftmaxOutput-multi"])
def test_shape_ops(tmp_path, build):
    check(tmp_path, build(DATA), X)


@pytest.mark.parametrize("kwargs", [dict(), dict(no_bias=True), dict(flatten=False)],
                         ids=["flatten", "no_bias", "last-axis"])
def test_fully_connected(tmp_path, kwargs):
    features = 9 if kwargs.get("flatten") is False else 4 * 9 * 9
    params = {"w": normal(7, features, seed=11)}
    inputs = {"weight": mx.sym.var("w")}
    if not kwargs.get("no_bias"):
        params["b"] = normal(7, seed=12)
        inputs["bias"] = mx.sym.var("b")
    check(tmp_path, mx.sym.FullyConnected(DATA, num_hidden=7, **inputs, **kwargs), X, params, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("build", [
    lambda x: mx.sym.bmx_det_sign(x, clip_threshold=1.0), lambda x: mx.sym.bmx_det_sign(x, zero_one=1),
    lambda x: mx.sym.bmx_approx_sign(x), lambda x: mx.sym.bmx_approx_sign(x, zero_one=1),
    lambda x: mx.sym.bmx_quantize_act(x, bits=2), lambda x: mx.sym.bmx_quantize_act(x * 0.7 + 0.5, bits=4),
], ids=["det_sign", "det_sign-zero_one", "approx_sign", "approx_sign-zero_one", "quantize_act-2", "quantize_act-4"])
def test_bmx_activation_ops_are_exact(tmp_path, build):
    x = away_from_zero((2, 4, 9, 9))
    x.reshape(-1)[:4] = [0.0, -0.0, 0.5, 1.0]  # sign(+-0) = +1; exact quantization levels
    got, ref = run_both(tmp_path, build(DATA), x)
    np.testing.assert_array_equal(got[0], ref[0])


@pytest.mark.parametrize("quantizer", [lambda w: mx.sym.bmx_weight_sign(w),
                                       lambda w: mx.sym.bmx_quantize_weight(w, bits=2)],
                         ids=["weight_sign", "quantize_weight"])
def test_quantized_weights_are_folded_into_constants(tmp_path, quantizer):
    w = mx.sym.var("w")
    qw = quantizer(w)
    symbol = mx.sym.Convolution(DATA, weight=qw * 2, bias=-mx.sym.sum(qw, axis=(1, 2, 3)), kernel=(3, 3),
                                num_filter=5, pad=(1, 1))
    params = {"w": normal(5, 4, 3, 3, seed=13)}
    check(tmp_path, symbol, X, params, rtol=1e-4, atol=1e-4)
    model = runtime.load(tmp_path / "model")
    assert [e.op.__class__.__name__ for e in model._entries] == ["_Convolution"]  # sign, sum, scale: folded


# ------------------------------------------------------------------ bmx_xnor_conv2d

def xnor_model_dir(path, channels, filters, kernel, groups=1, **attrs):
    """A model of one bmx_xnor_conv2d with random packed weights; returns (dir, float ±1 weights)."""
    w = away_from_zero((filters, channels // groups) + kernel, seed=14)
    words = xnor.pack_weights(w, groups=groups).words.view(np.int64)
    attrs = dict(kernel=str(kernel), num_filter=str(filters), num_group=str(groups),
                 **{k: str(v) for k, v in attrs.items()})
    graph = {"nodes": [{"op": "null", "name": "data", "inputs": []},
                       {"op": "null", "name": "xw", "inputs": []},
                       {"op": "bmx_xnor_conv2d", "name": "xconv", "attrs": attrs, "inputs": [[0, 0, 0], [1, 0, 0]]}],
             "arg_nodes": [0, 1], "node_row_ptr": [0, 1, 2, 3], "heads": [[2, 0, 0]],
             "attrs": {"mxnet_version": ["int", 10901]}}
    packed.save_model(path, graph, {"arg:xw": words}, {}, force=True)
    return path, np.where(w >= 0, F32(1), F32(-1))


def reference_binary_conv(x, w_sign, stride, pad, dilate, groups, pad_value):
    """conv(pad_v(sign(x)), sign(W)) with MXNet's float Convolution (exact for integer sums)."""
    s = np.where(x >= 0, F32(1), F32(-1))
    padded = np.pad(s, ((0, 0), (0, 0), (pad[0],) * 2, (pad[1],) * 2), constant_values=pad_value)
    return mx.nd.Convolution(mx.nd.array(padded), mx.nd.array(w_sign), kernel=w_sign.shape[2:], stride=stride,
                             dilate=dilate, num_filter=w_sign.shape[0], num_group=groups, no_bias=True).asnumpy()


@pytest.mark.parametrize("channels, filters, kernel, groups, stride, pad, dilate, pad_value", [
    (70, 8, (3, 3), 1, (1, 1), (1, 1), (1, 1), -1),
    (70, 8, (3, 3), 1, (2, 2), (1, 1), (1, 1), 0),
    (64, 6, (3, 3), 2, (1, 2), (2, 1), (2, 1), -1),
    (130, 4, (1, 1), 1, (1, 1), (0, 0), (1, 1), -1),
], ids=["pad-1", "pad-0-strided", "grouped-dilated", "1x1"])
def test_xnor_conv2d(tmp_path, channels, filters, kernel, groups, stride, pad, dilate, pad_value):
    directory, w_sign = xnor_model_dir(tmp_path / "m", channels, filters, kernel, groups, stride=stride, pad=pad,
                                       dilate=dilate, pad_value=pad_value)
    x = normal(2, channels, 7, 8, seed=15)
    x.reshape(-1)[:3] = [0.0, -0.0, np.nan]  # sign(+-0) = +1, sign(NaN) = -1
    got = runtime.load(directory)(x)
    expected = reference_binary_conv(np.nan_to_num(x, nan=-1), w_sign, stride, pad, dilate, groups, pad_value)
    np.testing.assert_array_equal(got, expected)
    # the same files in MXNet (after `import bmx`), running the native op
    block = bmx.imports(str(directory / packed.SYMBOL_FILE), str(directory / packed.PARAMS_FILE))
    np.testing.assert_array_equal(block(mx.nd.array(x)).asnumpy(), expected)


def test_xnor_conv2d_rejects_a_weight_for_other_channels(tmp_path):
    directory, _ = xnor_model_dir(tmp_path / "m", 70, 4, (3, 3))  # 2 words per tap
    model = runtime.load(directory)
    with pytest.raises(ValueError, match="node 'xconv' .*2 words per tap, which does not fit 10 channels"):
        model(normal(1, 10, 5, 5))


# ------------------------------------------------------------------ graph and input handling

def test_unsupported_op_names_node_op_and_file(tmp_path):
    symbol = mx.sym.arccos(mx.sym.tanh(DATA), name="odd")
    save_model_dir(tmp_path / "m", symbol, {})
    with pytest.raises(PackedFormatError,
                       match=r"m/model-symbol.json: node 'odd' \(arccos\): op 'arccos' is not supported"):
        runtime.load(tmp_path / "m")


def test_unused_nodes_need_not_be_supported(tmp_path):
    graph = json.loads(mx.sym.Group([mx.sym.relu(DATA), mx.sym.arccos(DATA)]).tojson())
    graph["heads"] = graph["heads"][:1]
    packed.save_model(tmp_path / "m", graph, {}, {})
    np.testing.assert_array_equal(runtime.load(tmp_path / "m")(X), np.maximum(X, 0))


def test_bad_attributes_and_weights_are_named(tmp_path):
    symbol = mx.sym.Pooling(DATA, kernel=(2, 2), pool_type="lp", name="pool")
    save_model_dir(tmp_path / "a", symbol, {})
    with pytest.raises(PackedFormatError, match=r"node 'pool' \(Pooling\): attribute pool_type='lp' is not supported"):
        runtime.load(tmp_path / "a")
    symbol = mx.sym.Convolution(DATA, weight=mx.sym.var("w"), kernel=(3, 3), num_filter=4, no_bias=True, name="c")
    save_model_dir(tmp_path / "b", symbol, {"w": normal(4, 4, 2, 2)})
    with pytest.raises(PackedFormatError, match=r"node 'c' \(Convolution\): weight shape \(4, 4, 2, 2\) does not fit"):
        runtime.load(tmp_path / "b")
    symbol = mx.sym.Convolution(DATA, weight=DATA, kernel=(3, 3), num_filter=4, no_bias=True, name="c")
    save_model_dir(tmp_path / "c", symbol, {})
    with pytest.raises(PackedFormatError, match="input 'data' must be a parameter"):
        runtime.load(tmp_path / "c")


def test_one_input_only(tmp_path):
    save_model_dir(tmp_path / "m", DATA + mx.sym.var("other"), {})
    with pytest.raises(PackedFormatError, match="variables 'data' and 'other' have no parameter values"):
        runtime.load(tmp_path / "m")


def stem_model(tmp_path, head=True):
    """conv 3x3 (3 -> 4 channels) -> [FullyConnected over 4 x 6 x 6 features]."""
    y = mx.sym.Convolution(DATA, weight=mx.sym.var("w"), kernel=(3, 3), num_filter=4, no_bias=True, name="conv")
    params = {"w": normal(4, 3, 3, 3)}
    if head:
        y = mx.sym.FullyConnected(y, weight=mx.sym.var("fw"), num_hidden=5, no_bias=True, name="fc")
        params["fw"] = normal(5, 4 * 6 * 6)
    return runtime.load(save_model_dir(tmp_path / "m", y, params, meta={"classes": 5}))


def test_input_validation_messages(tmp_path):
    model = stem_model(tmp_path)
    assert model.input_name == "data" and model.input_channels == 3 and model.meta == {"classes": 5}
    with pytest.raises(ValueError, match=r"must be 4-D \(N, C, H, W\), got shape \(3, 8, 8\)"):
        model(normal(3, 8, 8))
    with pytest.raises(ValueError, match=r"takes 3 input channels \(NCHW\), got shape \(1, 8, 8, 3\)"):
        model(normal(1, 8, 8, 3))
    with pytest.raises(ValueError, match=r"shape \(1, 3, 2, 8\) does not fit the model: node 'conv' \(Convolution\): "
                                         r"the H size 2 \(padded 2\) is smaller than the window \(3\)"):
        model(normal(1, 3, 2, 8))
    with pytest.raises(ValueError, match=r"node 'fc' \(FullyConnected\): needs 144 input features"):
        model(normal(1, 3, 9, 8))
    with pytest.raises(TypeError, match="must be a real"):
        model(np.zeros((1, 3, 8, 8), np.complex64))
    x = normal(2, 3, 8, 8)
    np.testing.assert_allclose(model(x.astype(np.float64)), model(x))  # other dtypes are converted


def test_any_batch_and_size_with_a_plan_per_shape(tmp_path):
    model = stem_model(tmp_path, head=False)
    for shape in [(1, 3, 8, 8), (3, 3, 11, 7), (1, 3, 8, 8)]:
        x = normal(*shape)
        expected = mxnet_forward(mx.sym.load(str(tmp_path / "m" / packed.SYMBOL_FILE)), x, {"w": normal(4, 3, 3, 3)})[0]
        np.testing.assert_allclose(model.forward(x), expected, rtol=1e-5, atol=1e-5)


def test_several_heads_give_a_tuple(tmp_path):
    symbol = mx.sym.Group([mx.sym.relu(DATA, name="r"),
                           mx.sym.Pooling(DATA, kernel=(1, 1), global_pool=True, pool_type="avg", name="p")])
    check(tmp_path, symbol, X)
    assert runtime.load(tmp_path / "model").output_names == ["r", "p"]


def test_threads(tmp_path):
    directory, _ = xnor_model_dir(tmp_path / "m", 64, 4, (3, 3))
    assert runtime.load(directory).threads == xnor.default_threads()
    assert runtime.load(directory, threads=1).threads == 1
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        runtime.load(directory, threads=0)


def test_model_from_a_packed_model_in_memory(tmp_path):
    symbol = mx.sym.relu(DATA)
    model = runtime.Model(packed.PackedModel(json.loads(symbol.tojson()), {}, {"k": 1}))
    assert model.meta == {"k": 1}
    np.testing.assert_array_equal(model(X), np.maximum(X, 0))


def dense_block(layers, growth):
    """DenseNet-style: x <- concat(x, conv(BN(x))) with a final BN, and its parameters."""
    x, args, aux, channels = DATA, {}, {}, 4
    for i in range(layers):
        bn = mx.sym.BatchNorm(x, mx.sym.var(f"g{i}"), mx.sym.var(f"b{i}"), mx.sym.var(f"m{i}"), mx.sym.var(f"v{i}"),
                              fix_gamma=False, eps=1e-5)
        y = mx.sym.Convolution(mx.sym.relu(bn), weight=mx.sym.var(f"w{i}"), kernel=(3, 3), pad=(1, 1),
                               num_filter=growth, no_bias=True)
        x = mx.sym.concat(x, y, dim=1)
        args.update({f"g{i}": normal(channels, seed=i), f"b{i}": normal(channels, seed=i + 50),
                     f"w{i}": normal(growth, channels, 3, 3, seed=i + 100)})
        aux.update({f"m{i}": normal(channels, seed=i + 150), f"v{i}": np.ones(channels, F32)})
        channels += growth
    return x, args, aux


@pytest.mark.parametrize("batch", [1, 3])
def test_concat_chains_share_one_buffer_and_stay_correct(tmp_path, batch):
    symbol, args, aux = dense_block(4, 3)
    check(tmp_path, symbol, normal(batch, 4, 6, 6), args, aux, rtol=1e-4, atol=1e-4)
    model = runtime.load(tmp_path / "model")
    placement, claimed = model._placement(model._infer((batch, 4, 6, 6)))
    assert len(claimed) == 4 and len({root for root, _ in placement.values()}) == 1


# ------------------------------------------------------------------ rewrites: same results, cheaper

def batchnorm(x, name, channels, seed, gamma=None):
    """A BatchNorm (Gluon's attributes) and its parameters; gamma random of both signs unless given."""
    rng = np.random.default_rng(seed)
    symbol = mx.sym.BatchNorm(x, *[mx.sym.var(f"{name}_{p}") for p in ("g", "b", "m", "v")], fix_gamma=False,
                              eps=1e-5, name=name)
    if gamma is None:
        gamma = rng.uniform(0.5, 2, channels) * rng.choice([-1, 1], channels)
    args = {f"{name}_g": np.asarray(gamma, F32), f"{name}_b": rng.standard_normal(channels).astype(F32)}
    aux = {f"{name}_m": rng.standard_normal(channels).astype(F32),
           f"{name}_v": rng.uniform(0.5, 2, channels).astype(F32)}
    return symbol, args, aux


def op_names(tmp_path):
    return [type(e.op).__name__ for e in runtime.load(tmp_path / "model")._entries]


@pytest.mark.parametrize("bias", [False, True])
def test_convolution_absorbs_the_batchnorm_after_it(tmp_path, bias):
    params = {"w": normal(6, 2, 3, 3, seed=20)}
    inputs = {"weight": mx.sym.var("w")}
    if bias:
        params["b"] = normal(6, seed=21)
        inputs["bias"] = mx.sym.var("b")
    y = mx.sym.Convolution(DATA, kernel=(3, 3), stride=(2, 2), pad=(1, 1), num_filter=6, num_group=2,
                           no_bias=not bias, **inputs)
    symbol, args, aux = batchnorm(y, "bn", 6, seed=22)
    check(tmp_path, symbol, X, dict(params, **args), aux, rtol=1e-4, atol=1e-4)
    assert op_names(tmp_path) == ["_Convolution", "_Identity"]


@pytest.mark.parametrize("gamma", [None, [1.0, 0.5, 2.0, 0.0]], ids=["mixed-signs", "non-negative"])
@pytest.mark.parametrize("pool", [dict(kernel=(2, 2), stride=(2, 2)), dict(kernel=(3, 3), stride=(2, 2), pad=(1, 1))],
                         ids=["2x2", "3x3-pad"])
def test_batchnorm_then_max_pooling_pools_first(tmp_path, gamma, pool):
    symbol, args, aux = batchnorm(DATA, "bn", 4, seed=23, gamma=gamma)
    symbol = mx.sym.Pooling(symbol, pool_type="max", **pool)
    got, ref = run_both(tmp_path, symbol, X, args, aux)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)
    assert op_names(tmp_path) == (["_Pooling", "_BatchNorm"] if gamma else ["_Affine", "_Chain"])


def test_relu_then_max_pooling_pools_first_but_not_over_padding_only_windows(tmp_path):
    relu = mx.sym.relu(DATA - 0.5)
    check(tmp_path, mx.sym.Pooling(relu, pool_type="max", kernel=(3, 3), stride=(2, 2), pad=(1, 1)), X)
    assert op_names(tmp_path)[-2:] == ["_Pooling", "_Unary"]
    # a 'full' window past the input holds padding only: MXNet gives float32's lowest, not relu(lowest)
    check(tmp_path / "full", mx.sym.Pooling(relu, pool_type="max", kernel=(2, 2), stride=(2, 2), pad=(1, 1),
                                            pooling_convention="full"), X)
    assert op_names(tmp_path / "full")[-2:] == ["_Unary", "_Pooling"]


def test_batchnorm_feeding_only_signs_becomes_a_threshold(tmp_path):
    """BN -> bmx_xnor_conv2d and BN -> sign, with gammas of every sign (zero too): exact, since
    the integer inputs and gamma = +-1 / 0, var + eps = 1 make every BatchNorm output exact. Read by
    sign ops too, the BatchNorm becomes a one-pass threshold; read by bmx_xnor_conv2d only, it folds
    into their packing."""
    rng = np.random.default_rng(24)
    gamma = np.array([1, -1, 0, 1, -1, 1, 0, -1] * 8, F32)
    names = ("g", "b", "m", "v")
    bn = mx.sym.BatchNorm(DATA, *[mx.sym.var(n) for n in names], fix_gamma=False, eps=1e-5, name="bn")
    args = {"g": gamma, "b": rng.integers(-2, 3, 64).astype(F32) + 0.5}
    aux = {"m": rng.integers(-2, 3, 64).astype(F32) + 0.5, "v": np.full(64, F32(1 - 1e-5))}
    w = away_from_zero((8, 64, 3, 3), seed=25)
    words = xnor.pack_weights(w).words.view(np.int64)
    conv = mx.sym.bmx_xnor_conv2d(bn, mx.sym.var("xw"), kernel=(3, 3), pad=(1, 1), num_filter=8, pad_value=-1)
    symbol = mx.sym.Group([conv, mx.sym.bmx_det_sign(bn * 1, clip_threshold=1.0)])  # bn * 1: not sign-only
    x = rng.integers(-3, 4, (2, 64, 5, 5)).astype(F32)
    got, ref = run_both(tmp_path, symbol, x, dict(args, xw=words), aux)
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)
    assert op_names(tmp_path)[0] == "_BatchNorm"
    check(tmp_path / "sign_only", conv, x, dict(args, xw=words), aux, rtol=0, atol=0)
    assert op_names(tmp_path / "sign_only") == ["_XnorConv"]


def test_folded_batchnorm_packs_the_bits_the_one_pass_threshold_gives():
    """_BatchNormSign.input_threshold gives bmx.xnor's packing exactly the signs of _BatchNormSign.run,
    for inputs with +-0, +-inf and NaN, and scales of every sign, zero, and so small that the threshold
    overflows float32 (both signs of shift), or NaN."""
    rng = np.random.default_rng(37)
    c = 70
    scale = rng.uniform(0.5, 2, c) * rng.choice([-1, 1], c)
    shift = rng.standard_normal(c)
    scale[:12] = [0, 0, 1e-44, -1e-44, 1e-44, -1e-44, 1, -1, np.nan, 1, 0, 2]
    shift[:12] = [1, -1, 1, 1, -1, -1, np.nan, 0, 1, np.inf, np.nan, 0]
    bn = type("BN", (), dict(node=None, axis=1, infer=None, scale=scale.astype(F32), shift=shift.astype(F32)))()
    with np.errstate(all="ignore"):
        op = _BatchNormSign(bn)
        x = rng.standard_normal((2, c, 5, 7)).astype(F32) * 3
        flat = x.reshape(-1)
        flat[rng.choice(flat.size, 60, replace=False)] = np.tile([0.0, -0.0, np.inf, -np.inf, np.nan], 12)
        x[:, :, 0, 0] = op.threshold  # inputs equal to the thresholds
        x[0, :12, 1, 1] = np.inf
        x[1, :12, 1, 1] = -np.inf
        z = op.run(x)
    for name in xnor.available_kernels():
        xnor.set_kernel(name)
        try:
            np.testing.assert_array_equal(xnor.pack_channels(x, threshold=op.input_threshold()), xnor.pack_channels(z),
                                          err_msg=name)
        finally:
            xnor.set_kernel(None)


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


try:
    from bmx import convert
except ImportError:  # the converter is developed alongside; its tests run once it exists
    convert = None


@pytest.mark.skipif(convert is None, reason="bmx/convert.py is not there yet")
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


# ------------------------------------------------------------------ without mxnet

RUN_MODEL = """
import sys
import numpy as np
import bmx
import bmx.runtime
model = bmx.runtime.load(sys.argv[1])
x = np.load(sys.argv[2])
np.testing.assert_array_equal(model(x), np.load(sys.argv[3]))
print("MXNET IMPORTED:", "mxnet" in sys.modules)
"""

TRY_TRAINING = """
try:
    bmx.models
except ImportError as err:
    print("TRAINING:", err)
"""

BLOCK_MXNET = """
import importlib.abc, sys
class NoMXNet(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "mxnet" or name.startswith("mxnet."):
            raise ImportError("No module named 'mxnet' (blocked by the test)", name=name)
sys.meta_path.insert(0, NoMXNet())
"""


@pytest.fixture(scope="module")
def small_packed_model(tmp_path_factory):
    """A one-layer bmx_xnor_conv2d model, an input and its expected output, as files."""
    root = tmp_path_factory.mktemp("nomx")
    path, _ = xnor_model_dir(root / "model", 64, 8, (3, 3), pad=(1, 1))
    model = packed.load_model(path)
    x = normal(2, 64, 6, 6)
    np.save(root / "x.npy", x)
    np.save(root / "y.npy", runtime.Model(model)(x))
    return root


def run_python(code, *args, env=None):
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_runtime_runs_where_mxnet_cannot_be_imported(small_packed_model):
    root = small_packed_model
    out = run_python(BLOCK_MXNET + RUN_MODEL + TRY_TRAINING, root / "model", root / "x.npy", root / "y.npy")
    assert "TRAINING: bmx.models needs mxnet, but mxnet cannot be imported" in out
    assert "MXNET IMPORTED: False" in out


def test_runtime_never_imports_mxnet(small_packed_model):
    """Where mxnet is installed, with no switch: `import bmx` and the runtime leave it alone."""
    root = small_packed_model
    out = run_python(RUN_MODEL, root / "model", root / "x.npy", root / "y.npy")
    assert "MXNET IMPORTED: False" in out


def test_runtime_and_packed_modules_do_not_import_mxnet():
    """Whatever `import bmx` does, the deployment modules themselves never import mxnet."""
    code = textwrap.dedent("""
        import ast, sys
        for path in sys.argv[1:]:
            tree = ast.parse(open(path).read())
            names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            assert not any(name.split(".")[0] == "mxnet" for name in names), (path, names)
    """)
    here = os.path.dirname(bmx.__file__)
    files = glob.glob(os.path.join(here, "runtime", "**", "*.py"), recursive=True)
    assert len(files) > 1
    run_python(code, *files, *(os.path.join(here, f) for f in ("packed.py", "xnor.py", "_atomic.py", "symbol_json.py")))

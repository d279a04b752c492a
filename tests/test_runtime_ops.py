"""bmx.runtime.ops, one op at a time (layers, elementwise, shapes, bmx_xnor_conv2d) against MXNet and numpy."""

import mxnet as mx
import numpy as np
import pytest

import bmx
from bmx import _xnor, packed, runtime, xnor
from runtime_cases import DATA, F32, X, away_from_zero, batchnorm, check, normal, op_names, run_both, xnor_model_dir


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

"""bmx.nn layers against a direct numpy convolution / matrix product, forward and backward."""
import re

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import bmx
from bmx import nn as bnn
from bmx import quantizers as Q
from conftest import (F32, THRESHOLDS, activation_input, block_forward_backward, conv_out_size, crop,
                      dorefa_input, pad_nchw, ref_approx_sign_grad, ref_conv2d, ref_conv2d_backward,
                      ref_det_sign_grad, ref_dorefa, ref_quantize_act, ref_quantize_act_grad, ref_sign)

BACKENDS = ("native", "composite")


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# (in_channels, channels, kernel, strides, padding, dilation, groups): odd channel counts,
# non-square kernels, strides, asymmetric padding, dilation, groups and depthwise.
CONV_CASES = [
    (3, 5, 3, 1, 1, 1, 1),
    (5, 7, (3, 2), (2, 1), (1, 2), 1, 1),
    (6, 9, 3, 1, 2, 2, 3),
    (6, 4, (2, 3), 2, (2, 1), (1, 2), 2),
    (1, 3, 1, 1, 0, 1, 1),
    (7, 7, 3, (1, 2), 1, 1, 7),
    (3, 5, 2, 3, 0, 1, 1),
]
CONV_IDS = [f"in{c[0]}-out{c[1]}-k{c[2]}-s{c[3]}-p{c[4]}-d{c[5]}-g{c[6]}".replace(" ", "") for c in CONV_CASES]
H, W = 7, 6


def conv_kwargs(case):
    cin, cout, k, s, p, d, g = case
    return dict(channels=cout, kernel_size=k, strides=s, padding=p, dilation=d, groups=g, in_channels=cin)


def weight_of(layer):
    return layer.qconv.weight if isinstance(layer, bnn.BinaryConvolution) else layer.weight


def build(cls, kwargs, w, hybridize, backend):
    layer = cls(**kwargs)
    layer.initialize()
    weight_of(layer).set_data(mx.nd.array(w))
    if hybridize:
        layer.hybridize()
    return layer


def run_layer(cls, kwargs, x, w, head, hybridize, backend):
    with Q.use_backend(backend):
        layer = build(cls, kwargs, w, hybridize, backend)
        y, dx, grads = block_forward_backward(layer, x, head)
    (dw,) = grads.values()
    return y, dx, dw


def conv_reference(case, x_q, w_q, pad_value, head):
    """Forward and gradients (w.r.t. the quantized input and the quantized weight) of the conv."""
    cin, cout, k, s, p, d, g = case
    xp = pad_nchw(x_q, pair(p), pad_value)
    y = ref_conv2d(xp, w_q, pair(s), pair(d), g)
    if head is None:
        return y, None, None
    gxp, gw = ref_conv2d_backward(xp, w_q, head, pair(s), pair(d), g)
    return y, crop(gxp, pair(p)), gw


def conv_inputs(rng, case, threshold=1.0):
    cin, cout, k, s, p, d, g = case
    x = activation_input(rng, (2, cin, H, W), threshold)
    w = activation_input(rng, (cout, cin // g) + pair(k), 1.0)
    w.reshape(-1)[:2] = 0  # sign(0) = +1 for weights too
    kh, kw = pair(k)
    ho = conv_out_size(H + 2 * pair(p)[0], kh, pair(s)[0], pair(d)[0])
    wo = conv_out_size(W + 2 * pair(p)[1], kw, pair(s)[1], pair(d)[1])
    head = rng.standard_normal((2, cout, ho, wo)).astype(F32)
    return x, w, head


# ------------------------------------------------------------------ binary convolution

@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pad_value", [-1, 0])
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_binary_convolution_matches_reference(case, pad_value, backend, hybridize):
    """y = conv(pad_v(sign x), sign W); dx = conv^T(dy) * 1_{|x|<=t}; dW = conv_W^T(dy)."""
    index = CONV_CASES.index(case)
    threshold = THRESHOLDS[index % len(THRESHOLDS)]
    rng = np.random.default_rng(100 + index)
    x, w, head = conv_inputs(rng, case, threshold)
    kwargs = dict(conv_kwargs(case), clip_threshold=threshold, pad_value=pad_value)
    y, dx, dw = run_layer(bnn.BinaryConvolution, kwargs, x, w, head, hybridize, backend)
    y_ref, gx_ref, gw_ref = conv_reference(case, ref_sign(x), ref_sign(w), pad_value, head)
    assert y.shape == y_ref.shape
    np.testing.assert_array_equal(y, y_ref)  # small integer sums: exact in float32
    np.testing.assert_allclose(dx, gx_ref * ref_det_sign_grad(x, threshold), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, gw_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pad_value", [-1, 0])
@pytest.mark.parametrize("backend", BACKENDS)
def test_binary_convolution_approx_sign(backend, pad_value):
    case = CONV_CASES[3]
    rng = np.random.default_rng(120)
    x, w, head = conv_inputs(rng, case)
    kwargs = dict(conv_kwargs(case), activation="approx_sign", pad_value=pad_value)
    for hybridize in (False, True):
        y, dx, dw = run_layer(bnn.BinaryConvolution, kwargs, x, w, head, hybridize, backend)
        y_ref, gx_ref, gw_ref = conv_reference(case, ref_sign(x), ref_sign(w), pad_value, head)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_allclose(dx, gx_ref * ref_approx_sign_grad(x), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dw, gw_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits,bits_a", [(2, 2), (4, 3), (1, 2), (3, 1)])
@pytest.mark.parametrize("pad_value", [-1, 0])
@pytest.mark.parametrize("backend", BACKENDS)
def test_kbit_convolution_matches_reference(bits, bits_a, pad_value, backend):
    case = CONV_CASES[2]
    rng = np.random.default_rng(130 + bits * 10 + bits_a)
    x, _, head = conv_inputs(rng, case)
    cin, cout, k, s, p, d, g = case
    w = dorefa_input(rng, (cout, cin // g) + pair(k), max(bits, 2))
    if bits_a == 1:
        x_q, act_grad = ref_sign(x), ref_det_sign_grad(x, 1.0)
    else:
        x = rng.uniform(-0.5, 1.5, size=x.shape).astype(F32)
        x.reshape(-1)[:3] = [0, 1, 0.5]
        x_q, act_grad = ref_quantize_act(x, bits_a), ref_quantize_act_grad(x)
    if bits == 1:
        w_q, w_grad = ref_sign(w), np.ones(w.shape)
    else:
        w_q, w_grad, _ = ref_dorefa(w, bits)
    kwargs = dict(conv_kwargs(case), bits=bits, bits_a=bits_a, pad_value=pad_value)
    y, dx, dw = run_layer(bnn.BinaryConvolution, kwargs, x, w, head, True, backend)
    y_ref, gx_ref, gw_ref = conv_reference(case, x_q, w_q, pad_value, head)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)  # k-bit levels: float sums
    np.testing.assert_allclose(dx, gx_ref * act_grad, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, gw_ref * w_grad, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ QConv2D (input not quantized)

@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("pad_value", [-1, 0])
@pytest.mark.parametrize("case", CONV_CASES[:4], ids=CONV_IDS[:4])
def test_qconv2d_matches_reference(case, pad_value, hybridize):
    rng = np.random.default_rng(140 + CONV_CASES.index(case))
    x, w, head = conv_inputs(rng, case)
    for binary_input in (True, False):
        xin = ref_sign(x) if binary_input else x
        kwargs = dict(conv_kwargs(case), pad_value=pad_value)
        y, dx, dw = run_layer(bnn.QConv2D, kwargs, xin, w, head, hybridize, "auto")
        y_ref, gx_ref, gw_ref = conv_reference(case, xin, ref_sign(w), pad_value, head)
        if binary_input:
            np.testing.assert_array_equal(y, y_ref)
        else:
            np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dx, gx_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dw, gw_ref, rtol=1e-5, atol=1e-5)


def numerical_input_gradient(layer, x, head, step=0.125):
    """Central differences of L = sum(head * layer(x)), L evaluated in float64."""
    head64 = head.astype(np.float64)

    def loss(v):
        return float((layer(mx.nd.array(v)).asnumpy().astype(np.float64) * head64).sum())

    grad = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += F32(step)
        down[idx] -= F32(step)
        grad[idx] = (loss(up) - loss(down)) / (float(up[idx]) - float(down[idx]))
    return grad


@pytest.mark.parametrize("pad_value", [-1, 0])
@pytest.mark.parametrize("case", [(3, 5, 3, 1, 1, 1, 1), (4, 6, 3, 2, (2, 1), 2, 2)], ids=["plain", "s2d2g2"])
def test_qconv2d_input_gradient_matches_finite_differences(case, pad_value):
    """QConv2D is linear in its (unquantized) input, so central differences are exact up to rounding."""
    rng = np.random.default_rng(150)
    cin, cout, k, s, p, d, g = case
    x = activation_input(rng, (1, cin, 5, 5))
    w = activation_input(rng, (cout, cin // g) + pair(k))
    layer = build(bnn.QConv2D, dict(conv_kwargs(case), pad_value=pad_value), w, True, "auto")
    y = layer(mx.nd.array(x))
    head = rng.standard_normal(y.shape).astype(F32)
    _, dx, _ = block_forward_backward(layer, x, head)
    numeric = numerical_input_gradient(layer, x, head)
    np.testing.assert_allclose(dx, numeric, rtol=1e-4, atol=1e-4)
    _, gx_ref, _ = conv_reference(case, x, ref_sign(w), pad_value, head)
    np.testing.assert_allclose(numeric, gx_ref, rtol=1e-4, atol=1e-4)


def test_qdense_input_gradient_matches_finite_differences():
    rng = np.random.default_rng(151)
    x = activation_input(rng, (2, 3, 2, 2))
    w = activation_input(rng, (5, 12))
    layer = build(bnn.QDense, dict(units=5, in_units=12), w, False, "auto")
    head = rng.standard_normal((2, 5)).astype(F32)
    _, dx, _ = block_forward_backward(layer, x, head)
    numeric = numerical_input_gradient(layer, x, head)
    np.testing.assert_allclose(dx, numeric, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(numeric.reshape(2, 12), head @ ref_sign(w), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ apply_scaling

@pytest.mark.parametrize("backend", BACKENDS)
def test_qconv2d_apply_scaling(backend):
    case = CONV_CASES[1]
    rng = np.random.default_rng(160)
    x, w, head = conv_inputs(rng, case)
    cout = case[1]
    alpha = np.abs(w.astype(np.float64)).reshape(cout, -1).mean(axis=1)
    xin = ref_sign(x)
    y, dx, dw = run_layer(bnn.QConv2D, dict(conv_kwargs(case), apply_scaling=True), xin, w, head, True, backend)
    y0, _, _ = conv_reference(case, xin, ref_sign(w), -1, None)
    scaled_head = head * alpha[None, :, None, None]
    _, gx_ref, gw_ref = conv_reference(case, xin, ref_sign(w), -1, scaled_head)
    # dL/dalpha_o = sum(head * y0) over (n, h, w); d mean|W_o| / dW = sign0(W) / n (sign0(0) = 0)
    dalpha = (head * y0).sum(axis=(0, 2, 3))
    gw_ref = gw_ref + dalpha[:, None, None, None] * np.sign(w) / w[0].size
    np.testing.assert_allclose(y, y0 * alpha[None, :, None, None], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, gx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, gw_ref, rtol=1e-5, atol=1e-5)


def test_qdense_apply_scaling():
    rng = np.random.default_rng(161)
    x = ref_sign(activation_input(rng, (3, 7)))
    w = activation_input(rng, (4, 7))
    head = rng.standard_normal((3, 4)).astype(F32)
    alpha = np.abs(w.astype(np.float64)).mean(axis=1)
    y, dx, dw = run_layer(bnn.QDense, dict(units=4, in_units=7, apply_scaling=True), x, w, head, True, "auto")
    y0 = x @ ref_sign(w).T.astype(np.float64)
    np.testing.assert_allclose(y, y0 * alpha, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, (head * alpha) @ ref_sign(w), rtol=1e-5, atol=1e-5)
    gw_ref = (head * alpha).T @ x + (head * y0).sum(axis=0)[:, None] * np.sign(w) / 7
    np.testing.assert_allclose(dw, gw_ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ QDense

@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["det_sign", "approx_sign"])
def test_qactivation_qdense_matches_reference(method, backend, hybridize):
    """QActivation -> QDense: y = sign(x) sign(W)^T, exact; gradients of the matmul and the STE."""
    rng = np.random.default_rng(170)
    x = activation_input(rng, (4, 13), 1.3)
    w = activation_input(rng, (5, 13))
    w[0, :3] = 0
    head = rng.standard_normal((4, 5)).astype(F32)
    with Q.use_backend(backend):
        net = nn.HybridSequential()
        net.add(bnn.QActivation(method=method, clip_threshold=1.3), bnn.QDense(5, in_units=13))
        net.initialize()
        net[1].weight.set_data(mx.nd.array(w))
        if hybridize:
            net.hybridize()
        y, dx, grads = block_forward_backward(net, x, head)
    (dw,) = grads.values()
    xs, ws = ref_sign(x).astype(np.float64), ref_sign(w).astype(np.float64)
    np.testing.assert_array_equal(y, xs @ ws.T)
    mask = ref_det_sign_grad(x, 1.3) if method == "det_sign" else ref_approx_sign_grad(x)
    np.testing.assert_allclose(dx, (head @ ws) * mask, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, head.T.astype(np.float64) @ xs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [1, 2, 5])
def test_qdense_flattens_and_quantizes_weights(bits):
    rng = np.random.default_rng(180 + bits)
    x = activation_input(rng, (3, 2, 3, 3))
    w = dorefa_input(rng, (7, 18), max(bits, 2))
    head = rng.standard_normal((3, 7)).astype(F32)
    y, dx, dw = run_layer(bnn.QDense, dict(units=7, in_units=18, bits=bits), x, w, head, True, "auto")
    if bits == 1:
        w_q, w_grad = ref_sign(w), 1.0
    else:
        w_q, w_grad, _ = ref_dorefa(w, bits)
    xf = x.reshape(3, 18).astype(np.float64)
    np.testing.assert_allclose(y, xf @ w_q.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx.reshape(3, 18), head @ w_q.astype(np.float64), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, (head.T @ xf) * w_grad, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ QActivation

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits,method,zero_one", [(1, "det_sign", False), (1, "det_sign", True),
                                                   (1, "approx_sign", False), (1, "approx_sign", True),
                                                   (2, "round", False), (4, "round", False)])
def test_qactivation_matches_reference(bits, method, zero_one, backend):
    rng = np.random.default_rng(190 + bits)
    x = activation_input(rng, (2, 3, 4, 5), 1.3)
    head = rng.standard_normal(x.shape).astype(F32)
    with Q.use_backend(backend):
        layer = bnn.QActivation(bits=bits, method=method, clip_threshold=1.3, zero_one=zero_one)
        layer.initialize()
        layer.hybridize()
        y, dx, _ = block_forward_backward(layer, x, head)
    if method == "det_sign":
        xq, mask = ref_sign(x), ref_det_sign_grad(x, 1.3)
    elif method == "approx_sign":
        xq, mask = ref_sign(x), ref_approx_sign_grad(x)
    else:
        xq, mask = ref_quantize_act(x, bits), ref_quantize_act_grad(x)
    if zero_one:
        xq, mask = (xq + 1) / 2, mask / 2
    np.testing.assert_array_equal(y, xq)
    np.testing.assert_allclose(dx, head * mask, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bits", [1, 3])
@pytest.mark.parametrize("case", CONV_CASES[:4], ids=CONV_IDS[:4])
def test_qconv2d_input_zero_one_equals_padding_the_sign_with_minus_one(case, bits):
    """input_zero_one: the input b in {0, 1} stands for s = 2b - 1; the output is conv(pad_-1(s), Q(W))."""
    rng = np.random.default_rng(195 + CONV_CASES.index(case))
    x, _, head = conv_inputs(rng, case)
    cin, cout, k, s, p, d, g = case
    w = dorefa_input(rng, (cout, cin // g) + pair(k), 3)
    b = (ref_sign(x) + 1) / 2
    kwargs = dict(conv_kwargs(case), bits=bits, pad_value=-1, input_zero_one=True)
    y, db, dw = run_layer(bnn.QConv2D, kwargs, b, w, head, True, "auto")
    if bits == 1:
        w_q, w_grad = ref_sign(w), 1.0
    else:
        w_q, w_grad, _ = ref_dorefa(w, bits)
    y_ref, gs_ref, gw_ref = conv_reference(case, 2 * b - 1, w_q, -1, head)
    if bits == 1:
        np.testing.assert_array_equal(y, y_ref)
    else:
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, 2 * gs_ref, rtol=1e-5, atol=1e-5)  # ds/db = 2
    np.testing.assert_allclose(dw, gw_ref * w_grad, rtol=1e-4, atol=1e-5)


def test_composite_and_native_layers_agree():
    """CI has no GPU: the composite path (what a GPU would run) must match the native CPU one."""
    rng = np.random.default_rng(200)
    x = activation_input(rng, (2, 6, 9, 8), 1.3)
    results = {}
    for backend in BACKENDS:
        mx.random.seed(7)
        with Q.use_backend(backend):
            net = nn.HybridSequential()
            net.add(bnn.BinaryConvolution(6, 3, padding=1, in_channels=6, clip_threshold=1.3),
                    bnn.BinaryConvolution(5, 3, padding=1, strides=2, in_channels=6, pad_value=0,
                                          activation="approx_sign"),
                    bnn.BinaryConvolution(4, 1, in_channels=5, bits=2, bits_a=2),
                    bnn.QActivation(),
                    bnn.QDense(3, in_units=80))
            net.initialize(mx.init.Uniform(1.0))
            net.hybridize()
            head = np.random.default_rng(1).standard_normal((2, 3)).astype(F32)
            results[backend] = block_forward_backward(net, x, head)
    (y_n, dx_n, g_n), (y_c, dx_c, g_c) = results["native"], results["composite"]
    np.testing.assert_array_equal(y_n, y_c)
    np.testing.assert_allclose(dx_n, dx_c, rtol=1e-5, atol=1e-6)
    for (name_n, a), (name_c, b) in zip(sorted(g_n.items()), sorted(g_c.items())):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name_n)


# ------------------------------------------------------------------ deferred shapes (in_channels=0)

@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("backend", ["auto", "composite"])
def test_deferred_in_channels(backend, hybridize):
    """Layers without in_channels/in_units infer them from the first batch, also on the native path."""
    rng = np.random.default_rng(210)
    x = activation_input(rng, (2, 3, 6, 6))
    with Q.use_backend(backend):
        net = nn.HybridSequential()
        net.add(bnn.BinaryConvolution(4, 3, padding=1), bnn.QConv2D(5, 3, groups=1),
                bnn.QActivation(bits=2), bnn.QDense(3, bits=3))
        net.initialize(mx.init.Uniform(1.0))
        if hybridize:
            net.hybridize()
        y = net(mx.nd.array(x)).asnumpy()
    w0 = net[0].qconv.weight.data().asnumpy()
    w1 = net[1].weight.data().asnumpy()
    w3 = net[3].weight.data().asnumpy()
    assert w0.shape == (4, 3, 3, 3) and w1.shape == (5, 4, 3, 3) and w3.shape == (3, 80)
    h0, _, _ = conv_reference((3, 4, 3, 1, 1, 1, 1), ref_sign(x), ref_sign(w0), -1, None)
    h1, _, _ = conv_reference((4, 5, 3, 1, 0, 1, 1), h0.astype(F32), ref_sign(w1), -1, None)
    h2 = ref_quantize_act(h1.astype(F32), 2).reshape(2, -1)
    np.testing.assert_allclose(y, h2 @ ref_dorefa(w3, 3)[0].T.astype(np.float64), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ weight decay

def test_binary_weights_are_not_decayed():
    with bmx.binary_layer_config(bits=4):
        kbit_conv = bnn.QConv2D(2, 1, in_channels=2)
    layers = {"bin_conv": bnn.QConv2D(2, 1, in_channels=2), "bin_dense": bnn.QDense(2, in_units=2),
              "bin_bconv": bnn.BinaryConvolution(2, 1, in_channels=2),
              "kbit_conv": kbit_conv, "kbit_dense": bnn.QDense(2, in_units=2, bits=2),
              "kbit_bconv": bnn.BinaryConvolution(2, 1, in_channels=2, bits=3, bits_a=1)}
    for name, layer in layers.items():
        (param,) = layer.collect_params().values()
        assert param.wd_mult == (0.0 if name.startswith("bin") else 1.0), name

    # and an optimizer with weight decay really leaves binary weights alone (zero gradient step)
    lr, wd = 0.5, 0.1
    for name, layer in layers.items():
        layer.initialize(mx.init.Uniform(1.0))
        trainer = mx.gluon.Trainer(layer.collect_params(), "sgd", {"learning_rate": lr, "wd": wd})
        (param,) = layer.collect_params().values()
        before = param.data().asnumpy().copy()
        x = mx.nd.ones((1, 2, 1, 1))
        with mx.autograd.record():
            y = layer(x)
        y.backward(mx.nd.zeros_like(y))
        trainer.step(1)
        after = param.data().asnumpy()
        if name.startswith("bin"):
            np.testing.assert_array_equal(after, before, err_msg=name)
        else:
            np.testing.assert_allclose(after, before * (1 - lr * wd), rtol=1e-6, err_msg=name)


# ------------------------------------------------------------------ bad inputs

@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("cls", [bnn.QConv2D, bnn.BinaryConvolution])
def test_non_4d_input_raises_naming_the_layer(cls, hybridize):
    layer = cls(4, 3, in_channels=3, prefix="culprit_")
    layer.initialize()
    if hybridize:
        layer.hybridize()
    for shape in [(3, 6, 6), (1, 3, 6, 6, 6), (2, 27)]:
        with pytest.raises(ValueError, match=rf"{cls.__name__} 'culprit'.*4-D.*{re.escape(str(shape))}"):
            layer(mx.nd.ones(shape))


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("cls", [bnn.QConv2D, bnn.BinaryConvolution])
def test_wrong_in_channels_raises_naming_the_layer(cls, hybridize):
    layer = cls(4, 3, in_channels=3, prefix="culprit_")
    layer.initialize()
    if hybridize:
        layer.hybridize()
    layer(mx.nd.ones((1, 3, 5, 5)))  # fine
    with pytest.raises(ValueError, match=rf"{cls.__name__} 'culprit' expects 3 input channels"):
        layer(mx.nd.ones((1, 5, 5, 5)))


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_qdense_bad_input_raises_naming_the_layer(hybridize):
    layer = bnn.QDense(4, in_units=6, prefix="culprit_")
    layer.initialize()
    if hybridize:
        layer.hybridize()
    layer(mx.nd.ones((2, 2, 3)))  # flattened to 6 units: fine
    with pytest.raises(ValueError, match=r"QDense 'culprit' expects 6 input units"):
        layer(mx.nd.ones((2, 7)))
    with pytest.raises(ValueError, match=r"QDense 'culprit' expects a batch"):
        layer(mx.nd.ones((6,)))


LAYER_MAKERS = {
    "QActivation": lambda **kw: bnn.QActivation(prefix="culprit_", **kw),
    "QConv2D": lambda **kw: bnn.QConv2D(4, 3, prefix="culprit_", **kw),
    "QDense": lambda **kw: bnn.QDense(4, prefix="culprit_", **kw),
    "BinaryConvolution": lambda **kw: bnn.BinaryConvolution(4, 3, prefix="culprit_", **kw),
}
BAD_ARGUMENTS = [
    # (layers it applies to, kwargs, the culprit the message must name)
    (("QActivation", "QConv2D", "QDense", "BinaryConvolution"), dict(bits=0),
     r"bits(_a)? must be an integer in 1\.\.8, got 0"),
    (("QActivation", "QConv2D", "QDense", "BinaryConvolution"), dict(bits=9), "bits.*got 9"),
    (("QActivation", "QConv2D", "QDense", "BinaryConvolution"), dict(bits=1.5), "bits.*got 1.5"),
    (("BinaryConvolution",), dict(bits_a=9), "bits_a.*got 9"),
    (("QActivation",), dict(method="sigmoid"), "method 'sigmoid'"),
    (("BinaryConvolution",), dict(activation="sigmoid"), "activation 'sigmoid'"),
    (("QActivation",), dict(clip_threshold=-0.5), "clip_threshold.*got -0.5"),
    (("BinaryConvolution",), dict(clip_threshold=-1), "clip_threshold.*got -1"),
    (("QActivation", "BinaryConvolution"), dict(clip_threshold=float("nan")), "clip_threshold.*got nan"),
    (("QActivation",), dict(bits=2, method="approx_sign"), "method 'approx_sign' does not fit bits=2"),
    (("BinaryConvolution",), dict(bits_a=2, activation="approx_sign"), "'approx_sign' does not fit bits_a=2"),
    (("QConv2D", "QDense", "BinaryConvolution"), dict(bits=1, weight_quantization="dorefa"),
     "weight_quantization 'dorefa' does not fit bits=1"),
    (("QConv2D", "QDense", "BinaryConvolution"), dict(weight_quantization="ternary"), "'ternary'"),
    (("QConv2D", "BinaryConvolution"), dict(pad_value=2), "pad_value must be -1 or 0, got 2"),
    (("QActivation",), dict(bits=2, zero_one=True), "zero_one needs 1-bit activations"),
    (("QConv2D",), dict(padding=1, pad_value=0, input_zero_one=True), "input_zero_one needs pad_value=-1"),
]


@pytest.mark.parametrize("layer,kwargs,culprit", [
    (layer, kwargs, culprit) for layers, kwargs, culprit in BAD_ARGUMENTS for layer in layers])
def test_bad_layer_arguments_raise_value_error_naming_layer_and_argument(layer, kwargs, culprit):
    with pytest.raises(ValueError) as info:
        LAYER_MAKERS[layer](**kwargs)
    message = str(info.value)
    assert f"{layer} 'culprit'" in message, message
    assert re.search(culprit, message), message


@pytest.mark.parametrize("kwargs,culprit", [
    (dict(kernel_size=0), "kernel_size"), (dict(kernel_size=(3, 3, 3)), "kernel_size"),
    (dict(strides=0), "strides"), (dict(padding=-1), "padding"), (dict(dilation=0), "dilation"),
    (dict(groups=2, in_channels=3), "groups=2"), (dict(groups=3), "groups=3"), (dict(channels=0), "channels"),
])
def test_bad_convolution_geometry(kwargs, culprit):
    args = dict(channels=4, kernel_size=3)
    args.update(kwargs)
    for cls in (bnn.QConv2D, bnn.BinaryConvolution):
        with pytest.raises(ValueError, match=culprit):
            cls(prefix="culprit_", **args)


def test_repr_names_the_configuration():
    assert repr(bnn.QActivation(bits=1, clip_threshold=1.3)) == \
        "QActivation(bits=1, method='det_sign', clip_threshold=1.3)"
    r = repr(bnn.QConv2D(8, 3, in_channels=5, bits=2))
    assert "5 -> 8" in r and "bits=2" in r and "dorefa" in r


def test_quantized_layers_lists_them_in_order():
    net = nn.HybridSequential()
    net.add(bnn.BinaryConvolution(4, 3), nn.BatchNorm(), bnn.QActivation(), bnn.QDense(3))
    found = bnn.quantized_layers(net)
    assert [type(layer).__name__ for layer in found] == ["QConv2D", "QDense"]
    assert found[0] is net[0].qconv and found[1] is net[3]



def test_binary_convolution_resolves_its_configuration_once(monkeypatch):
    from bmx.nn import _common
    calls = []
    real = _common.resolve

    def counting(**options):
        calls.append(options)
        return real(**options)
    monkeypatch.setattr(_common, "resolve", counting)
    with bmx.binary_layer_config(clip_threshold=1.3, bits_a=1):
        layer = bnn.BinaryConvolution(8, 3, padding=1, in_channels=4, apply_scaling=True)
    assert len(calls) == 1
    assert layer.qact.config is layer.qconv.config is layer.config
    assert (layer.config.clip_threshold, layer.config.apply_scaling) == (1.3, True)


def test_a_given_config_excludes_the_arguments_it_replaces():
    config = bmx.config.BinaryLayerConfig(bits_a=2)
    assert bnn.QActivation(config=config).bits == 2
    with pytest.raises(TypeError, match=r"QActivation '.*': pass config or bits, method, not both"):
        bnn.QActivation(bits=1, method="det_sign", config=config)
    with pytest.raises(TypeError, match="config must be a BinaryLayerConfig, got dict"):
        bnn.QConv2D(4, 3, config={"bits": 1})

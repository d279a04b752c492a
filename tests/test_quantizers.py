"""bmx.quantizers and the native operators against plain numpy references.

Every quantizer is run with both backends (native library op and composite stock-MXNet graph),
on NDArrays (imperative) and on Symbols (inside a hybridized HybridBlock), and compared with the
documented forward and backward math; the two backends are also compared with each other.
"""
import json
import math

import mxnet as mx
import numpy as np
import pytest

from bmx import quantizers as Q
from conftest import (F32, THRESHOLDS, Lambda, activation_input, dorefa_input, forward_backward,
                      ref_approx_sign_grad, ref_det_sign_grad, ref_dorefa, ref_quantize_act,
                      ref_quantize_act_grad, ref_sign, special_values)

BACKENDS = ("native", "composite")
BITS = (2, 3, 4, 8)
SHAPE = (2, 3, 5, 4)


def run(fn, x, backend, symbolic, head=None):
    """y, dx for fn on x with the given backend, imperatively or through a hybridized block."""
    with Q.use_backend(backend):
        if symbolic:
            block = Lambda(fn)
            block.hybridize()
            return forward_backward(block, x, head)
        return forward_backward(fn, x, head)


def ref_sign_encoded(x, head, zero_one, grad_mask):
    """sign(x) in {-1, +1}, or (sign(x) + 1) / 2 in {0, 1} with the gradient halved."""
    if zero_one:
        return (ref_sign(x) + 1) / 2, head * (0.5 * grad_mask)
    return ref_sign(x), head * grad_mask


# ------------------------------------------------------------------ sanity of the inputs themselves

def test_special_values_hit_the_threshold_exactly_in_float32():
    for t in THRESHOLDS:
        v = special_values(t)
        assert (v == F32(t)).any() and (v == -F32(t)).any() and (v == 0).any()
        assert np.signbit(v[v == 0]).any()  # -0.0 is in there too


# ------------------------------------------------------------------ det_sign

@pytest.mark.parametrize("symbolic", [False, True], ids=["ndarray", "symbol"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_det_sign_matches_reference(backend, threshold, symbolic):
    rng = np.random.default_rng(10)
    for zero_one in (False, True):
        x = activation_input(rng, SHAPE, threshold)
        head = rng.standard_normal(SHAPE).astype(F32)
        y, dx, _ = run(lambda v: Q.det_sign(v, threshold, zero_one=zero_one), x, backend, symbolic, head)
        y_ref, dx_ref = ref_sign_encoded(x, head, zero_one, ref_det_sign_grad(x, threshold))
        assert y.dtype == np.float32 and y.shape == y_ref.shape
        np.testing.assert_array_equal(y, y_ref)
        # the mask is 0/1 (or 1/2), so the gradient is exact; the threshold itself passes gradient
        np.testing.assert_array_equal(dx, dx_ref)
        at_t = np.abs(x) == F32(threshold)
        assert at_t.any() and (dx[at_t] == (0.5 if zero_one else 1) * head[at_t]).all()
        beyond = np.abs(x) > F32(threshold)
        assert beyond.any() and (dx[beyond] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_det_sign_zero_threshold_passes_gradient_only_at_zero(backend):
    x = np.array([-1.0, -1e-30, -0.0, 0.0, 1e-30, 1.0], dtype=F32)
    y, dx, _ = run(lambda v: Q.det_sign(v, 0), x, backend, False, np.full(6, 3.0, F32))
    np.testing.assert_array_equal(y, [-1, -1, 1, 1, 1, 1])
    np.testing.assert_array_equal(dx, [0, 0, 3, 3, 0, 0])


# ------------------------------------------------------------------ approx_sign

@pytest.mark.parametrize("symbolic", [False, True], ids=["ndarray", "symbol"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_approx_sign_matches_reference(backend, symbolic):
    rng = np.random.default_rng(11)
    for zero_one in (False, True):
        x = activation_input(rng, SHAPE, 1.0)
        x.reshape(-1)[:4] = [0.25, -0.75, 1.0, -1.0]
        head = rng.standard_normal(SHAPE).astype(F32)
        y, dx, _ = run(lambda v: Q.approx_sign(v, zero_one=zero_one), x, backend, symbolic, head)
        y_ref, dx_ref = ref_sign_encoded(x, head, zero_one, ref_approx_sign_grad(x))
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)
        # 2 - 2|x| (halved for {0, 1}): 2 at zero, 0 at and beyond |x| = 1
        assert (dx[x == 0] == (1 if zero_one else 2) * head[x == 0]).all()
        assert (dx[np.abs(x) >= 1] == 0).all()


# ------------------------------------------------------------------ weight_sign

@pytest.mark.parametrize("symbolic", [False, True], ids=["ndarray", "symbol"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_sign_matches_reference(backend, symbolic):
    rng = np.random.default_rng(12)
    w = activation_input(rng, (7, 3, 3, 3), 1.0)
    head = rng.standard_normal(w.shape).astype(F32)
    y, dw, _ = run(Q.weight_sign, w, backend, symbolic, head)
    np.testing.assert_array_equal(y, ref_sign(w))
    np.testing.assert_array_equal(dw, head)  # identity straight-through, also far beyond |w| = 1
    assert (y[w == 0] == 1).all()


# ------------------------------------------------------------------ k-bit activations

def kbit_activation_input(rng, bits, shape):
    """Random values in [-0.5, 1.5] plus 0, -0, 1, values just outside [0, 1] and level midpoints."""
    levels = 2 ** bits - 1
    x = rng.uniform(-0.5, 1.5, size=shape).astype(F32)
    specials = np.array([0.0, -0.0, 1.0, -1e-7, np.nextafter(F32(1), F32(2))]
                        + [(j + 0.5) / levels for j in range(min(levels, 6))], dtype=F32)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, specials.size, replace=False)] = specials
    return x


@pytest.mark.parametrize("symbolic", [False, True], ids=["ndarray", "symbol"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", BITS)
def test_quantize_activation_matches_reference(bits, backend, symbolic):
    rng = np.random.default_rng(13 + bits)
    x = kbit_activation_input(rng, bits, SHAPE)
    y, dx, head = run(lambda v: Q.quantize_activation(v, bits), x, backend, symbolic)
    np.testing.assert_array_equal(y, ref_quantize_act(x, bits))
    np.testing.assert_array_equal(dx, head * ref_quantize_act_grad(x))
    levels = 2 ** bits - 1
    assert set(np.unique(np.round(y * levels)).tolist()) <= set(range(levels + 1))
    # inclusive at both ends of [0, 1]
    assert (dx[x == 0] == head[x == 0]).all() and (dx[x == 1] == head[x == 1]).all()


# ------------------------------------------------------------------ DoReFa weights

@pytest.mark.parametrize("symbolic", [False, True], ids=["ndarray", "symbol"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", BITS)
def test_dorefa_weight_matches_reference(bits, backend, symbolic):
    rng = np.random.default_rng(20 + bits)
    for scale in (0.05, 1.0, 3.0):
        w = dorefa_input(rng, (6, 4, 3, 3), bits, scale)
        y, dw, head = run(lambda v: Q.dorefa_weight(v, bits), w, backend, symbolic)
        q_ref, grad_ref, _ = ref_dorefa(w, bits)
        np.testing.assert_array_equal(y, q_ref)
        np.testing.assert_allclose(dw, head * grad_ref, rtol=2e-5, atol=1e-6)
        assert np.abs(y).max() == 1  # the max-|tanh| weight maps to an end level


@pytest.mark.parametrize("backend", BACKENDS)
def test_dorefa_weight_all_zero_tensor_is_finite(backend):
    y, dw, head = run(lambda v: Q.dorefa_weight(v, 2), np.zeros((3, 4), F32), backend, False)
    assert np.isfinite(y).all() and np.isfinite(dw).all()
    np.testing.assert_array_equal(y, np.full((3, 4), F32(2) * (F32(2) / F32(3)) - F32(1)))


# ------------------------------------------------------------------ the two backends agree

OPS = {
    "det_sign": (lambda v: Q.det_sign(v, 1.3), 0),
    "det_sign_zero_one": (lambda v: Q.det_sign(v, 0.5, zero_one=True), 0),
    "det_sign_t2": (lambda v: Q.det_sign(v, 2.0), 0),
    "approx_sign": (Q.approx_sign, 1e-6),
    "approx_sign_zero_one": (lambda v: Q.approx_sign(v, zero_one=True), 1e-6),
    "weight_sign": (Q.weight_sign, 0),
    "quantize_act": (lambda v: Q.quantize_activation(v, 3), 0),
    "dorefa": (lambda v: Q.dorefa_weight(v, 4), 2e-5),
}


@pytest.mark.parametrize("symbolic", [False, True], ids=["ndarray", "symbol"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_composite_equals_native_on_cpu(name, symbolic):
    fn, grad_rtol = OPS[name]
    rng = np.random.default_rng(30)
    x = dorefa_input(rng, (2, 4, 6, 5), 4) if name == "dorefa" else activation_input(rng, (2, 4, 6, 5), 1.3)
    y_n, dx_n, head = run(fn, x, "native", symbolic)
    y_c, dx_c, _ = run(fn, x, "composite", symbolic, head)
    np.testing.assert_array_equal(y_n, y_c)
    if grad_rtol:
        np.testing.assert_allclose(dx_n, dx_c, rtol=grad_rtol, atol=1e-6)
    else:
        np.testing.assert_array_equal(dx_n, dx_c)


@pytest.mark.parametrize("backend", BACKENDS)
def test_symbol_and_ndarray_paths_agree(backend):
    rng = np.random.default_rng(31)
    x = activation_input(rng, SHAPE, 1.0)
    for fn, _ in OPS.values():
        y_i, dx_i, head = run(fn, x, backend, False)
        y_s, dx_s, _ = run(fn, x, backend, True, head)
        np.testing.assert_array_equal(y_i, y_s)
        np.testing.assert_array_equal(dx_i, dx_s)


def test_large_tensors_use_the_parallel_path_correctly():
    """> 2^15 elements switches the native kernels to OpenMP; results must not change."""
    rng = np.random.default_rng(32)
    x = activation_input(rng, (2, 9, 50, 40), 1.0)
    head = rng.standard_normal(x.shape).astype(F32)
    for zero_one in (False, True):
        y, dx, _ = run(lambda v: Q.det_sign(v, 1.0, zero_one=zero_one), x, "native", False, head)
        y_ref, dx_ref = ref_sign_encoded(x, head, zero_one, ref_det_sign_grad(x, 1.0))
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(dx, dx_ref)
    y, dx, _ = run(Q.approx_sign, x, "native", False, head)
    np.testing.assert_array_equal(y, ref_sign(x))
    np.testing.assert_allclose(dx, head * ref_approx_sign_grad(x), rtol=1e-6, atol=1e-6)
    x = kbit_activation_input(rng, 3, (2, 9, 50, 40))
    y, dx, _ = run(lambda v: Q.quantize_activation(v, 3), x, "native", False, head)
    np.testing.assert_array_equal(y, ref_quantize_act(x, 3))
    np.testing.assert_array_equal(dx, head * ref_quantize_act_grad(x))
    w = dorefa_input(rng, (64, 32, 3, 3), 3)
    y, dw, head = run(lambda v: Q.dorefa_weight(v, 3), w, "native", False)
    q_ref, g_ref, _ = ref_dorefa(w, 3)
    np.testing.assert_array_equal(y, q_ref)
    np.testing.assert_allclose(dw, head * g_ref, rtol=2e-5, atol=1e-6)


# ------------------------------------------------------------------ float16 (native)

def _f16_head(rng, shape):
    return rng.uniform(-2, 2, size=shape).astype(np.float16)


@pytest.mark.parametrize("threshold", (0.5, 1.0, 1.25, 2.0))  # exactly representable in float16
def test_native_float16_det_sign(threshold):
    rng = np.random.default_rng(40)
    x = activation_input(rng, SHAPE, threshold).astype(np.float16)
    assert (np.abs(x) == np.float16(threshold)).any()
    head = _f16_head(rng, SHAPE)
    for zero_one in (False, True):
        y, dx, _ = run(lambda v: Q.det_sign(v, threshold, zero_one=zero_one), x, "native", False, head)
        assert y.dtype == np.float16 and dx.dtype == np.float16
        y_ref, dx_ref = ref_sign_encoded(x, head, zero_one, ref_det_sign_grad(x, threshold).astype(np.float16))
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(dx, dx_ref)


def test_native_float16_approx_sign_and_weight_sign():
    rng = np.random.default_rng(41)
    x = activation_input(rng, SHAPE, 1.0).astype(np.float16)
    head = _f16_head(rng, SHAPE)
    y, dx, _ = run(Q.approx_sign, x, "native", False, head)
    np.testing.assert_array_equal(y, ref_sign(x))
    np.testing.assert_allclose(dx.astype(np.float64), head * ref_approx_sign_grad(x), rtol=2e-3, atol=2e-3)
    y, dx, _ = run(Q.weight_sign, x, "native", False, head)
    np.testing.assert_array_equal(y, ref_sign(x))
    np.testing.assert_array_equal(dx, head)


@pytest.mark.parametrize("bits", (2, 4, 8))
def test_native_float16_kbit(bits):
    rng = np.random.default_rng(42 + bits)
    x = kbit_activation_input(rng, bits, SHAPE).astype(np.float16)
    head = _f16_head(rng, SHAPE)
    y, dx, _ = run(lambda v: Q.quantize_activation(v, bits), x, "native", False, head)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, ref_quantize_act(x, bits).astype(np.float16))
    np.testing.assert_array_equal(dx, head * ref_quantize_act_grad(x).astype(np.float16))

    w = dorefa_input(rng, (5, 4, 3, 3), bits, margin=5e-3).astype(np.float16)
    # re-check the tie margin on the float16-rounded weights
    _, _, scaled = ref_dorefa(w, bits)
    frac = scaled - np.floor(scaled)
    assert not ((np.abs(frac - 0.5) < 1e-3) & (w != 0)).any()
    head = _f16_head(rng, w.shape)
    y, dw, _ = run(lambda v: Q.dorefa_weight(v, bits), w, "native", False, head)
    q_ref, g_ref, _ = ref_dorefa(w, bits)
    np.testing.assert_array_equal(y, q_ref.astype(np.float16))
    np.testing.assert_allclose(dw.astype(np.float64), head * g_ref, rtol=3e-3, atol=3e-3)


# ------------------------------------------------------------------ argument validation

@pytest.mark.parametrize("bits", [0, 1, 9, 1.5, "2", None])
@pytest.mark.parametrize("fn", [Q.quantize_activation, Q.dorefa_weight], ids=["act", "dorefa"])
def test_bad_bits_raise_naming_bits(fn, bits):
    with pytest.raises(ValueError, match=r"bits must be an integer in 2\.\.8.*got " + repr(bits).replace(".", r"\.")):
        fn(mx.nd.ones((2, 2)), bits)


@pytest.mark.parametrize("threshold", [-0.5, -1e-30, float("nan"), "1.0", None])
def test_bad_threshold_raises_naming_clip_threshold(threshold):
    with pytest.raises(ValueError, match="clip_threshold"):
        Q.det_sign(mx.nd.ones((2, 2)), threshold)
    with pytest.raises(ValueError, match="clip_threshold"):
        Q.det_sign(mx.sym.var("x"), threshold)


def test_non_mxnet_input_raises_type_error():
    with pytest.raises(TypeError, match="ndarray"):
        Q.det_sign(np.ones(3, F32))


def test_native_op_attribute_errors_name_the_attribute():
    with pytest.raises(mx.base.MXNetError, match="'bits' must be in 2..8, got 9"):
        mx.nd.bmx_quantize_act(mx.nd.ones(3), bits=9).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match="clip_threshold must be >= 0"):
        mx.nd.bmx_det_sign(mx.nd.ones(3), clip_threshold=-2).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match="zero_one must be 0 or 1, got 2"):
        mx.nd.bmx_approx_sign(mx.nd.ones(3), zero_one=2).wait_to_read()


# ------------------------------------------------------------------ backend selection

def test_backend_selection_and_restore():
    assert Q.get_backend() == "auto"
    with pytest.raises(ValueError, match="backend must be one of.*'gpu'"):
        Q.set_backend("gpu")
    assert Q.get_backend() == "auto"
    with pytest.raises(RuntimeError):
        with Q.use_backend("composite"):
            assert Q.get_backend() == "composite"
            raise RuntimeError
    assert Q.get_backend() == "auto"


def _ops_in(symbol):
    return {n["op"] for n in json.loads(symbol.tojson())["nodes"]}


@pytest.mark.parametrize("backend,expect_native", [("auto", True), ("native", True), ("composite", False)])
def test_symbol_graph_uses_the_chosen_backend(backend, expect_native):
    x = mx.sym.var("x")
    with Q.use_backend(backend):
        graphs = {"bmx_det_sign": Q.det_sign(x, 1.0, zero_one=True), "bmx_approx_sign": Q.approx_sign(x),
                  "bmx_weight_sign": Q.weight_sign(x), "bmx_quantize_act": Q.quantize_activation(x, 2),
                  "bmx_quantize_weight": Q.dorefa_weight(x, 2)}
    for op, sym in graphs.items():
        ops = _ops_in(sym)
        if expect_native:
            assert op in ops
        else:
            assert not any(o.startswith("bmx_") for o in ops), ops


def test_auto_builds_composite_graphs_when_a_gpu_is_visible(monkeypatch):
    """The graph may later run on that GPU, where the CPU-only library ops cannot."""
    monkeypatch.setattr(Q, "_gpu_count", 1)
    ops = _ops_in(Q.det_sign(mx.sym.var("x"), 1.0))
    assert not any(op.startswith("bmx_") for op in ops), ops
    with Q.use_backend("native"):
        assert "bmx_det_sign" in _ops_in(Q.det_sign(mx.sym.var("x"), 1.0))
    # NDArrays on the CPU still use the native op
    assert Q._module_and_backend(mx.nd.ones(1)) == (mx.nd, "native")


def test_threshold_attribute_survives_as_float32():
    """The threshold reaches the native op as text; float32(1.3) must still count as 'at' 1.3."""
    x = np.array([math.nextafter(1.3, 0), 1.3, math.nextafter(1.3, 2)], dtype=F32)
    x = np.concatenate([x, np.nextafter(F32(1.3), F32(2))[None]])
    for backend in BACKENDS:
        _, dx, _ = run(lambda v: Q.det_sign(v, 1.3), x, backend, False, np.ones(4, F32))
        np.testing.assert_array_equal(dx, [1, 1, 1, 0])


# ------------------------------------------------------------------ non-finite inputs

NON_FINITE = np.array([np.nan, np.inf, -np.inf, 0.0, -3.0], dtype=F32)


@pytest.mark.parametrize("symbolic", [False, True], ids=["ndarray", "symbol"])
@pytest.mark.parametrize("name", ["det_sign", "det_sign_zero_one", "approx_sign", "approx_sign_zero_one"])
def test_signs_of_non_finite_inputs_agree_across_backends(name, symbolic):
    """sign(NaN) = -1 (x >= 0 is false), sign(+-inf) = +-1, no gradient: on both backends."""
    fn, _ = OPS[name]
    zero_one = name.endswith("zero_one")
    for backend in BACKENDS:
        y, dx, _ = run(fn, NON_FINITE, backend, symbolic, np.ones(5, F32))
        expected = np.array([-1, 1, -1, 1, -1], F32)
        np.testing.assert_array_equal(y, (expected + 1) / 2 if zero_one else expected, err_msg=backend)
        np.testing.assert_array_equal(dx[:3], [0, 0, 0], err_msg=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kbit_activation_of_infinities(backend):
    y, dx, _ = run(lambda v: Q.quantize_activation(v, 2), NON_FINITE[1:], backend, False, np.ones(4, F32))
    np.testing.assert_array_equal(y, [1, 0, 0, 0])
    np.testing.assert_array_equal(dx, [0, 0, 1, 0])


@pytest.mark.parametrize("fn", [lambda v: Q.quantize_activation(v, 2), lambda v: Q.dorefa_weight(v, 2)],
                         ids=["quantize_activation", "dorefa_weight"])
def test_native_kbit_ops_keep_nan(fn):
    y, _, _ = run(fn, np.array([np.nan, 0.25, -0.5], F32), "native", False)
    assert np.isnan(y[0])

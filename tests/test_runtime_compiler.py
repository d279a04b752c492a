"""bmx.runtime.compiler's rewrites: the same results, computed cheaper."""

import mxnet as mx
import numpy as np
import pytest

from bmx import xnor
from bmx.runtime.ops.elementwise import _BatchNormSign
from runtime_cases import DATA, F32, X, away_from_zero, batchnorm, check, normal, op_names, run_both


# ------------------------------------------------------------------ rewrites: same results, cheaper

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

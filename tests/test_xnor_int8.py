"""bmx.xnor's int8 kernels (quantize_int8, int8_conv2d, int8_dense) against int64 / float64 numpy
references, on every int8 kernel variant; the AVX-512 VNNI one is skipped where the CPU lacks it."""
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from bmx import xnor

ALL_KERNELS = ("avx512_vnni", "avx2", "portable")
AVAILABLE = xnor.available_int8_kernels()


@pytest.fixture(params=ALL_KERNELS)
def kernel(request):
    if request.param not in AVAILABLE:
        pytest.skip(f"this CPU cannot run the {request.param!r} int8 kernel (available: {AVAILABLE})")
    return request.param


def ref_conv(x, w, stride, padding, dilation, groups):
    """int64 convolution (cross-correlation): every window of the zero-padded input, by einsum."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    padded = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    # (N, C, OH, OW, KH, KW): the taps of each output's window
    windows = sliding_window_view(padded, span, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    oh, ow = windows.shape[2:4]
    windows = windows.reshape(n, groups, cg, oh, ow, kh, kw)
    weights = w.astype(np.int64).reshape(groups, o // groups, cg, kh, kw)
    return np.einsum("ngcijab,gocab->ngoij", windows, weights).reshape(n, o, oh, ow)


def random_int8(rng, shape):
    return rng.integers(-128, 128, shape, dtype=np.int8)


def pair(v):
    return (v, v) if isinstance(v, int) else v


# (N, C, H, W), (O, KH, KW), stride, padding, dilation, groups
CONV_CASES = [
    ((1, 3, 19, 23), (5, 7, 7), 2, 3, 1, 1),      # a stem: odd channels, 7x7, stride 2, padding 3
    ((3, 17, 9, 8), (33, 1, 1), 1, 0, 1, 1),      # 1x1 stride 1: one flat row per channel
    ((2, 33, 7, 7), (17, 1, 1), 2, 0, 1, 1),      # 1x1 stride 2
    ((1, 5, 11, 13), (3, 3, 3), 1, 1, 1, 1),
    ((3, 6, 12, 10), (9, 3, 3), (2, 1), (1, 0), 1, 3),   # groups, mixed stride and padding
    ((1, 8, 13, 14), (4, 3, 3), 1, 3, 2, 2),      # dilation 2, padding 3
    ((2, 4, 5, 40), (19, 3, 5), (1, 2), (0, 2), (2, 1), 1),  # rows longer than a 16-output tile
    ((1, 131, 4, 5), (7, 3, 3), 1, 1, 1, 1),      # K = 1179: many steps, odd
    ((1, 2, 3, 3), (3, 3, 3), 1, 0, 1, 1),        # a single output
    ((1, 1, 1, 1), (1, 1, 1), 1, 0, 1, 1),        # K = 1
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_int8_conv2d_matches_int64_reference(kernel, case):
    (n, c, h, w), (o, kh, kw), stride, padding, dilation, groups = case
    rng = np.random.default_rng(h * 31 + c)
    x, wq = random_int8(rng, (n, c, h, w)), random_int8(rng, (o, c // groups, kh, kw))
    acc = xnor.int8_conv2d(x, wq, stride=stride, padding=padding, dilation=dilation, groups=groups, kernel=kernel)
    expected = ref_conv(x, wq, pair(stride), pair(padding), pair(dilation), groups)
    assert acc.dtype == np.int32 and acc.shape == expected.shape
    np.testing.assert_array_equal(acc, expected)
    # the same from prepared weights, on 1 and 2 threads
    prepared = xnor.pack_int8_weights(wq)
    for threads in (1, 2):
        np.testing.assert_array_equal(
            xnor.int8_conv2d(x, prepared, stride=stride, padding=padding, dilation=dilation, groups=groups,
                             kernel=kernel, threads=threads), expected)


@pytest.mark.parametrize("value_x, value_w", [(-128, -128), (127, -128), (-127, 127)])
def test_int8_conv2d_extreme_values_are_exact(kernel, value_x, value_w):
    """Constant extreme inputs, 7x7 taps over 300 channels (K = 14700): outputs near +-2^28, where
    any 16-bit saturation or float accumulation would show. Border outputs see fewer taps."""
    x = np.full((1, 300, 9, 9), value_x, np.int8)
    w = np.full((3, 300, 7, 7), value_w, np.int8)
    acc = xnor.int8_conv2d(x, w, padding=3, kernel=kernel, threads=2)
    np.testing.assert_array_equal(acc, ref_conv(x, w, (1, 1), (3, 3), (1, 1), 1))
    assert abs(int(acc[0, 0, 4, 4])) == abs(value_x * value_w) * 300 * 49


def test_int8_conv2d_largest_allowed_k_is_exact(kernel):
    k = (2 ** 31 - 1) // (128 * 128)
    x = np.full((1, k, 1, 1), -128, np.int8)
    w = np.full((2, k, 1, 1), -128, np.int8)
    w[1] = 127
    acc = xnor.int8_conv2d(x, w, kernel=kernel)
    assert acc.reshape(-1).tolist() == [k * 128 * 128, -k * 128 * 127]
    with pytest.raises(ValueError, match="overflow int32"):
        xnor.int8_conv2d(np.zeros((1, k + 1, 1, 1), np.int8), np.zeros((1, k + 1, 1, 1), np.int8))


def test_int8_kernels_agree_on_a_large_threaded_layer():
    """A layer big enough for the thread team and the channel-block split (7x7 output, 70 channels)."""
    rng = np.random.default_rng(3)
    x, w = random_int8(rng, (1, 96, 7, 7)), random_int8(rng, (70, 96, 1, 1))
    expected = ref_conv(x, w, (1, 1), (0, 0), (1, 1), 1)
    for name in AVAILABLE:
        np.testing.assert_array_equal(xnor.int8_conv2d(x, w, kernel=name, threads=2), expected)


def float_reference(acc, scale, bias, axis):
    shape = [1] * acc.ndim
    shape[axis] = -1
    y = acc.astype(np.float64) * scale.astype(np.float64).reshape(shape)
    return y + bias.astype(np.float64).reshape(shape) if bias is not None else y


@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_conv2d_scaled_float_output(kernel, with_bias):
    rng = np.random.default_rng(7)
    x, w = random_int8(rng, (2, 5, 10, 9)), random_int8(rng, (11, 5, 3, 3))
    scale = rng.uniform(1e-4, 1e-2, 11).astype(np.float32)
    bias = rng.standard_normal(11).astype(np.float32) if with_bias else None
    y = xnor.int8_conv2d(x, w, padding=1, out_scale=scale, bias=bias, kernel=kernel)
    expected = float_reference(ref_conv(x, w, (1, 1), (1, 1), (1, 1), 1), scale, bias, 1)
    assert y.dtype == np.float32 and y.shape == expected.shape
    # int32 -> float32 (exact below 2^24), a product and a sum, each rounded to float32
    np.testing.assert_allclose(y, expected, rtol=3e-7, atol=3e-7 * np.abs(bias if with_bias else 0).max(initial=0))


@pytest.mark.parametrize("n, k, o", [(1, 576, 1000), (3, 17, 5), (5, 1, 33), (2, 1001, 19), (17, 64, 3)])
def test_int8_dense_matches_int64_reference(kernel, n, k, o):
    rng = np.random.default_rng(n * k + o)
    x, w = random_int8(rng, (n, k)), random_int8(rng, (o, k))
    expected = x.astype(np.int64) @ w.astype(np.int64).T
    acc = xnor.int8_dense(x, w, kernel=kernel)
    assert acc.dtype == np.int32 and acc.shape == (n, o)
    np.testing.assert_array_equal(acc, expected)
    np.testing.assert_array_equal(xnor.int8_dense(x, xnor.pack_int8_weights(w), kernel=kernel, threads=2), expected)
    scale, bias = rng.uniform(1e-3, 1e-1, o).astype(np.float32), rng.standard_normal(o).astype(np.float32)
    y = xnor.int8_dense(x, w, out_scale=scale, bias=bias, kernel=kernel)
    np.testing.assert_allclose(y, float_reference(expected, scale, bias, 1), rtol=3e-7,
                               atol=3e-7 * np.abs(bias).max())
    y = xnor.int8_dense(x, w, out_scale=scale, kernel=kernel)
    np.testing.assert_allclose(y, float_reference(expected, scale, None, 1), rtol=3e-7)


def test_empty_batches_give_empty_results():
    w = np.ones((4, 3, 3, 3), np.int8)
    assert xnor.int8_conv2d(np.zeros((0, 3, 5, 5), np.int8), w, padding=1).shape == (0, 4, 5, 5)
    y = xnor.int8_dense(np.zeros((0, 6), np.int8), np.ones((2, 6), np.int8), out_scale=np.ones(2, np.float32))
    assert y.shape == (0, 2) and y.dtype == np.float32


# ---------------------------------------------------------------- quantization


def test_quantize_int8_rounds_half_to_even_and_clips():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 126.5, 127.4, 127.6, 1e9, -1e9, np.inf, -np.inf,
                  -0.0, 3.0], np.float32)
    q = xnor.quantize_int8(x, 1.0)
    assert q.dtype == np.int8
    assert q.tolist() == [0, 2, 2, 0, -2, -2, 0, 126, 127, 127, 127, -127, 127, -127, 0, 3]
    assert xnor.quantize_int8(np.array([1.0, -1.0, 3.0], np.float32), 2.0).tolist() == [0, 0, 2]


def test_quantize_int8_matches_numpy_float32_division():
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((3, 7, 33, 35)) * 4).astype(np.float32)
    x.reshape(-1)[:50] = np.arange(-25, 25, dtype=np.float32) * np.float32(0.25 * 0.1)  # ties of scale 0.1
    for scale in (0.1, 0.0173, 3.0):
        expected = np.clip(np.rint(x / np.float32(scale)), -127, 127).astype(np.int8)
        np.testing.assert_array_equal(xnor.quantize_int8(x, scale, threads=2), expected)
    assert xnor.quantize_int8(np.float32(-2.6), 1).shape == ()


def test_quantize_int8_rejects_bad_input():
    with pytest.raises(ValueError, match="x holds NaN"):
        xnor.quantize_int8(np.array([1.0, np.nan], np.float32), 1.0)
    with pytest.raises(TypeError, match="x must be float32"):
        xnor.quantize_int8(np.zeros(3), 1.0)
    for scale in (0.0, -1.0, np.inf, np.nan, 1e-50, 1e39, True, "1", None):
        with pytest.raises(ValueError, match="scale must be"):
            xnor.quantize_int8(np.zeros(3, np.float32), scale)


# ---------------------------------------------------------------- validation


def test_available_int8_kernels():
    assert AVAILABLE[-1] == "portable" and set(AVAILABLE) <= set(ALL_KERNELS)
    assert list(AVAILABLE) == [k for k in ALL_KERNELS if k in AVAILABLE]  # best first


def test_int8_conv2d_rejects_bad_input():
    x, w = np.zeros((1, 4, 5, 5), np.int8), np.zeros((6, 4, 3, 3), np.int8)
    bad = [
        (dict(xq=x.astype(np.float32)), TypeError, "xq must be int8"),
        (dict(wq=w.astype(np.int16)), TypeError, "wq must be int8"),
        (dict(xq=x[0]), ValueError, "xq must be 4-D"),
        (dict(wq=w[:, :3]), ValueError, "need 3 input channels"),
        (dict(groups=4), ValueError, "divisible by 4"),
        (dict(groups=0), ValueError, "groups must be a positive integer"),
        (dict(wq=np.zeros((0, 4, 3, 3), np.int8)), ValueError, "wq must not be empty"),
        (dict(stride=0), ValueError, "stride must be an integer >= 1"),
        (dict(stride=(1, -1)), ValueError, "stride must be"),
        (dict(padding=-1), ValueError, "padding must be an integer >= 0"),
        (dict(dilation=0), ValueError, "dilation must be"),
        (dict(wq=np.zeros((6, 4, 7, 7), np.int8)), ValueError, "larger than the padded input"),
        (dict(kernel="avx3"), ValueError, "kernel must be one of"),
        (dict(out_scale=np.ones(5, np.float32)), ValueError, r"out_scale must be float32 of shape \(6,\)"),
        (dict(out_scale=np.ones(6)), ValueError, "out_scale must be float32"),
        (dict(out_scale=np.ones(6, np.float32), bias=np.ones(6)), ValueError, "bias must be float32"),
        (dict(bias=np.ones(6, np.float32)), ValueError, "bias needs out_scale"),
        (dict(threads=0), ValueError, "threads must be a positive integer"),
    ]
    for change, error, message in bad:
        args = dict(xq=x, wq=w)
        args.update(change)
        with pytest.raises(error, match=message):
            xnor.int8_conv2d(args.pop("xq"), args.pop("wq"), **args)
    missing = [k for k in ALL_KERNELS if k not in AVAILABLE]
    for name in missing:
        with pytest.raises(ValueError, match="kernel must be one of"):
            xnor.int8_conv2d(x, w, kernel=name)


def test_int8_dense_and_packing_reject_bad_input():
    x, w = np.zeros((2, 8), np.int8), np.zeros((3, 8), np.int8)
    with pytest.raises(ValueError, match="features of a row of xq"):
        xnor.int8_dense(x, w[:, :7])
    with pytest.raises(TypeError, match="xq must be int8"):
        xnor.int8_dense(x.astype(np.uint8), w)
    with pytest.raises(ValueError, match="xq must be 2-D"):
        xnor.int8_dense(x[0], w)
    with pytest.raises(ValueError, match="wq must be 2-D"):
        xnor.int8_dense(x, xnor.pack_int8_weights(w.reshape(3, 8, 1, 1)))
    with pytest.raises(ValueError, match="overflow int32"):
        xnor.int8_dense(np.zeros((1, 2 ** 17), np.int8), np.zeros((1, 2 ** 17), np.int8))
    for bad in (w.astype(np.float32), w[0], np.zeros((0, 8), np.int8)):
        with pytest.raises(ValueError, match="pack_int8_weights: wq must be"):
            xnor.pack_int8_weights(bad)
    prepared = xnor.pack_int8_weights(w)
    assert not prepared.array.flags.writeable and prepared.columns.shape == (8, 3)

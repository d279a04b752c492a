"""bmx.xnor against plain numpy references, bit for bit, on every kernel variant this CPU runs."""
import os

import numpy as np
import pytest

from bmx import _xnor, xnor

KERNELS = xnor.available_kernels()


@pytest.fixture(params=KERNELS)
def kernel(request):
    xnor.set_kernel(request.param)
    yield request.param
    xnor.set_kernel(None)


def signs(x):
    """+1 where x >= 0 (so -0.0 -> +1), else -1 (so NaN -> -1), as int64."""
    return np.where(np.asarray(x) >= 0, 1, -1).astype(np.int64)


def ref_pack(x):
    """Packs along the last axis: value j -> bit j % 64 of word j // 64, tail bits 0."""
    bits = (np.asarray(x) >= 0).astype(np.uint64)
    n = bits.shape[-1]
    words = -(-n // 64)
    padded = np.zeros(bits.shape[:-1] + (words * 64,), dtype=np.uint64)
    padded[..., :n] = bits
    padded = padded.reshape(bits.shape[:-1] + (words, 64))
    return (padded << np.arange(64, dtype=np.uint64)).sum(axis=-1, dtype=np.uint64)


def ref_conv(x, w, stride, padding, dilation, groups, pad_value):
    """Convolution of sign(x), padded with pad_value, with sign(w), in int64."""
    xs, ws = signs(x), signs(w)
    n, c, h, wd = xs.shape
    o, cg, kh, kw = ws.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.full((n, c, h + 2 * ph, wd + 2 * pw), int(pad_value), dtype=np.int64)
    xp[:, :, ph:ph + h, pw:pw + wd] = xs
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    og = o // groups
    out = np.zeros((n, o, oh, ow), dtype=np.int64)
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                           j * dw:j * dw + sw * (ow - 1) + 1:sw]
                out[:, g * og:(g + 1) * og] += np.einsum("ncij,oc->noij", patch,
                                                         ws[g * og:(g + 1) * og, :, i, j])
    return out


def random_floats(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    if flat.size >= 8:
        # the sign convention's edge cases: sign(+0) = sign(-0) = +1, sign(NaN) = -1
        flat[rng.choice(flat.size, 4, replace=False)] = [0.0, -0.0, np.nan, -np.inf]
    return x


# ---------------------------------------------------------------- packing


@pytest.mark.parametrize("n", [1, 5, 63, 64, 65, 127, 128, 129, 200, 1000])
def test_pack_matches_reference(kernel, n):
    rng = np.random.default_rng(n)
    x = random_floats(rng, (3, 2, n))
    words = xnor.pack(x)
    assert words.dtype == np.uint64 and words.shape == (3, 2, xnor.words_for_bits(n))
    np.testing.assert_array_equal(words, ref_pack(x))
    np.testing.assert_array_equal(xnor.unpack(words, n), signs(x).astype(np.float32))


@pytest.mark.parametrize("c,groups", [(1, 1), (3, 1), (64, 1), (65, 1), (130, 1), (96, 3), (130, 2), (256, 4)])
def test_pack_channels_matches_reference(kernel, c, groups):
    rng = np.random.default_rng(c + groups)
    for h, w in [(5, 3), (4, 8), (7, 9), (20, 20)]:  # pixel counts around the 8 / 16 / 64 blocks
        x = random_floats(rng, (2, c, h, w))
        got = xnor.pack_channels(x, groups) if groups > 1 else xnor.pack_channels(x, threads=2)
        nhwc = x.transpose(0, 2, 3, 1).reshape(2, h, w, groups, c // groups)
        np.testing.assert_array_equal(got, ref_pack(nhwc).reshape(2, h, w, -1))


def ref_threshold_signs(x, m, u):
    """+1 where m[c] * x >= u[c] (float32, ordered: NaN fails), where m[c] = 0 the constant 0 >= u[c]; else -1."""
    shape = (1, -1, 1, 1)
    m, u = m.reshape(shape), u.reshape(shape)
    with np.errstate(invalid="ignore"):
        bits = np.where(m == 0, np.float32(0) >= u, np.where(m < 0, -x, x) >= u)
    return np.where(bits, np.float32(1), np.float32(-1))


def random_threshold(rng, x, c):
    """(m, u) with every sign of m and the edge cases of u: +-0, +-inf, NaN, and values x takes."""
    m = rng.integers(-1, 2, c).astype(np.int32)
    u = rng.standard_normal(c).astype(np.float32)
    u[rng.random(c) < 0.2] = 0.0
    specials = [-0.0, np.inf, -np.inf, np.nan, np.float32(np.finfo(np.float32).min)]
    u[:min(c, len(specials))] = specials[:c]
    taken = rng.random(c) < 0.2  # thresholds equal to an input value: >= must hold there
    u[taken] = x[0, taken, 0, 0]
    return m, u


def threshold_floats(rng, shape):
    x = random_floats(rng, shape)
    flat = x.reshape(-1)
    if flat.size >= 16:
        flat[rng.choice(flat.size, 4, replace=False)] = [np.inf, -np.inf, np.nan, -0.0]
    return x


@pytest.mark.parametrize("c,groups", [(1, 1), (3, 1), (64, 1), (65, 1), (130, 1), (96, 3), (130, 2)])
def test_pack_channels_threshold_matches_reference(kernel, c, groups):
    rng = np.random.default_rng(c * 7 + groups)
    for h, w in [(5, 3), (4, 8), (7, 9), (20, 20)]:  # pixel counts around the 8 / 16 / 64 blocks
        x = threshold_floats(rng, (2, c, h, w))
        m, u = random_threshold(rng, x, c)
        got = xnor.pack_channels(x, groups, threshold=(m, u), threads=2)
        want = ref_threshold_signs(x, m, u).transpose(0, 2, 3, 1).reshape(2, h, w, groups, c // groups)
        np.testing.assert_array_equal(got, ref_pack(want).reshape(2, h, w, -1))
    # m = 1, u = 0 is the plain sign
    np.testing.assert_array_equal(xnor.pack_channels(x, groups, threshold=(np.ones(c, np.int32), np.zeros(c, np.float32))),
                                  xnor.pack_channels(x, groups))


def test_pack_large_threaded(kernel):
    x = random_floats(np.random.default_rng(5), (257, 999))
    np.testing.assert_array_equal(xnor.pack(x, threads=2), ref_pack(x))


def test_pack_degenerate_shapes(kernel):
    assert xnor.pack(np.zeros((4, 0), np.float32)).shape == (4, 0)
    assert xnor.pack(np.zeros((0, 70), np.float32)).shape == (0, 2)
    assert xnor.pack_channels(np.zeros((1, 5, 0, 3), np.float32)).shape == (1, 0, 3, 1)


def test_pack_rejects_bad_input():
    with pytest.raises(TypeError, match="float32"):
        xnor.pack(np.zeros(4, np.float64))
    with pytest.raises(ValueError, match="at least one axis"):
        xnor.pack(np.float32(1))
    with pytest.raises(ValueError, match="4-D"):
        xnor.pack_channels(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="groups"):
        xnor.pack_channels(np.zeros((1, 6, 2, 2), np.float32), groups=4)
    with pytest.raises(TypeError, match="uint64"):
        xnor.unpack(np.zeros(2, np.int64), 100)
    with pytest.raises(ValueError, match="words"):
        xnor.unpack(np.zeros(3, np.uint64), 100)


# ---------------------------------------------------------------- kernel choice


def test_kernel_selection():
    assert "portable" in KERNELS
    assert KERNELS == [k for k in ("avx512", "avx2", "neon", "portable") if k in KERNELS]
    assert xnor.get_kernel() == KERNELS[0]
    with pytest.raises(ValueError, match="unknown kernel"):
        xnor.set_kernel("sse9")
    xnor.set_kernel("portable")
    assert xnor.get_kernel() == "portable"
    xnor.set_kernel(None)
    assert xnor.get_kernel() == KERNELS[0]


def test_forcing_an_unavailable_kernel_raises(monkeypatch):
    monkeypatch.setattr(_xnor, "kernel_available", lambda k: k == _xnor.KERNELS["portable"])
    with pytest.raises(RuntimeError, match="cannot run the 'avx512' kernel"):
        xnor.set_kernel("avx512")
    assert xnor.available_kernels() == ["portable"]


# ---------------------------------------------------------------- gemm


GEMM_SHAPES = [(1, 1, 1), (1, 64, 1), (7, 65, 3), (6, 128, 32), (13, 511, 33), (5, 513, 64),
               (12, 1000, 70), (25, 1152, 97), (3, 4608, 31), (49, 200, 129), (37, 63, 65),
               (211, 130, 300)]  # several row and panel tiles


@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
def test_gemm_matches_reference(kernel, m, k, n):
    rng = np.random.default_rng(m * 1000 + k + n)
    a, b = random_floats(rng, (m, k)), random_floats(rng, (n, k))
    want = signs(a) @ signs(b).T
    pa, pb = xnor.pack(a), xnor.pack(b)
    got = xnor.gemm(pa, pb, k)
    assert got.dtype == np.int32 and got.shape == (m, n)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(xnor.gemm(pa, xnor.pack_weights(b), threads=2), want)


def test_gemm_random_shapes(kernel):
    rng = np.random.default_rng(7)
    for _ in range(12):
        m, n, k = (int(v) for v in (rng.integers(1, 40), rng.integers(1, 100), rng.integers(1, 1600)))
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((n, k), np.float32)
        for threads in (1, 2):
            got = xnor.gemm(xnor.pack(a), xnor.pack(b), k, threads=threads)
            np.testing.assert_array_equal(got, signs(a) @ signs(b).T, err_msg=f"{m}x{k}x{n}")


def test_gemm_empty_operands():
    assert xnor.gemm(np.zeros((0, 2), np.uint64), np.zeros((3, 2), np.uint64), 100).shape == (0, 3)
    assert xnor.gemm(np.zeros((2, 2), np.uint64), np.zeros((0, 2), np.uint64), 100).shape == (2, 0)
    np.testing.assert_array_equal(xnor.gemm(np.zeros((2, 0), np.uint64), np.zeros((3, 0), np.uint64), 0),
                                  np.zeros((2, 3), np.int32))


def test_gemm_rejects_bad_input():
    a, b = np.zeros((2, 2), np.uint64), np.zeros((3, 2), np.uint64)
    with pytest.raises(ValueError, match="k .* required"):
        xnor.gemm(a, b)
    with pytest.raises(ValueError, match="take 4 words"):
        xnor.gemm(a, b, 200)
    with pytest.raises(TypeError, match="uint64"):
        xnor.gemm(a.astype(np.int64), b, 100)
    with pytest.raises(ValueError, match="2-D"):
        xnor.gemm(a[0], b, 100)
    with pytest.raises(ValueError, match="must be 0"):
        xnor.gemm(np.full((2, 2), 2 ** 63, np.uint64), b, 100)
    with pytest.raises(ValueError, match="threads"):
        xnor.gemm(a, b, 100, threads=0)
    with pytest.raises(ValueError, match="2-D"):
        xnor.gemm(a, xnor.pack_weights(np.ones((4, 2, 3, 3), np.float32)))
    with pytest.raises(ValueError, match="must not be empty"):
        xnor.pack_weights(np.ones((4, 0), np.float32))
    with pytest.raises(ValueError, match="must not be empty"):
        xnor.PackedWeights(np.zeros((4, 0, 3, 1), np.uint64), 10)
    with pytest.raises(ValueError, match="take 1 words"):
        xnor.PackedWeights(np.zeros((4, 3, 3, 2), np.uint64), 10)


# ---------------------------------------------------------------- conv2d

# (n, c, h, w, o, k, stride, padding, dilation, groups)
CONV_CASES = [
    (1, 3, 5, 5, 2, (3, 3), 1, 1, 1, 1),
    (2, 64, 6, 7, 32, (3, 3), 1, 1, 1, 1),
    (1, 65, 8, 8, 33, (3, 3), 2, 1, 1, 1),
    (1, 130, 6, 5, 70, (1, 1), 1, 0, 1, 1),
    (1, 96, 9, 9, 40, (3, 3), 1, 2, 2, 1),
    (2, 40, 7, 6, 12, (3, 2), (2, 1), (1, 0), (1, 2), 4),
    (1, 128, 6, 6, 64, (3, 3), 1, 1, 1, 2),
    (1, 200, 5, 5, 9, (5, 5), 1, 2, 1, 1),
    (1, 16, 11, 4, 7, (7, 3), (3, 1), (3, 2), 1, 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("pad_value", [-1.0, 0.0])
def test_conv2d_matches_reference(kernel, case, pad_value):
    n, c, h, w, o, ks, stride, padding, dilation, groups = case
    rng = np.random.default_rng(c * 31 + o)
    x = random_floats(rng, (n, c, h, w))
    wt = random_floats(rng, (o, c // groups) + ks)
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    want = ref_conv(x, wt, pair(stride), pair(padding), pair(dilation), groups, pad_value)
    got = xnor.conv2d(x, wt, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      pad_value=pad_value)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    packed = xnor.conv2d(xnor.pack_channels(x, groups), xnor.pack_weights(wt, groups), stride=stride,
                         padding=padding, dilation=dilation, pad_value=pad_value, layout="NHWC",
                         threads=2)
    np.testing.assert_array_equal(packed, want.transpose(0, 2, 3, 1))


def test_tap_sums_and_their_computation_inside_the_kernel(kernel):
    rng = np.random.default_rng(9)
    x, wt = random_floats(rng, (1, 70, 6, 5)), random_floats(rng, (34, 35, 3, 3))
    w = xnor.pack_weights(wt, groups=2)
    want_sums = signs(wt).sum(axis=1).transpose(1, 2, 0).reshape(9, 34)
    np.testing.assert_array_equal(w.tap_sums, want_sums)
    # an empty table makes bitops.h compute it itself, as C callers may ask
    got = _xnor.conv(xnor.pack_channels(x, 2), w.panels, np.empty((0, 0), np.int32), 2, 35, 17, (3, 3),
                     (1, 1), (1, 1), (1, 1), True, _xnor.KERNELS[kernel], 1)
    want = ref_conv(x, wt, (1, 1), (1, 1), (1, 1), 2, 0.0).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(got, want)


def test_conv2d_fused_threshold_output(kernel):
    rng = np.random.default_rng(3)
    # 400 outputs make a tile buffer fewer rows than usual
    for (c, o, groups, pad_value) in [(64, 100, 1, -1.0), (70, 64, 1, 0.0), (96, 129, 3, 0.0), (64, 400, 1, 0.0)]:
        x = random_floats(rng, (2, c, 9, 8))
        wt = random_floats(rng, (o, c // groups, 3, 3))
        y = ref_conv(x, wt, (1, 1), (1, 1), (1, 1), groups, pad_value).transpose(0, 2, 3, 1)
        sgn = rng.integers(-1, 2, o).astype(np.int32)
        thr = rng.integers(-20, 21, o).astype(np.int32)
        # int32 extremes, which the kernels' "y >= 1 - thr" rewriting must not overflow
        thr[:6] = [-2 ** 31, 2 ** 31 - 1, -2 ** 31, 2 ** 31 - 1, -2 ** 31, 2 ** 31 - 1]
        sgn[:6] = [-1, -1, 0, 0, 1, 1]
        got = xnor.conv2d(x, wt, padding=1, groups=groups, pad_value=pad_value, layout="NHWC",
                          threshold=(sgn, thr))
        want = ref_pack(np.where(sgn.astype(np.int64) * y >= thr, 1.0, -1.0))
        np.testing.assert_array_equal(got, want)


def test_conv2d_input_threshold_matches_reference(kernel):
    rng = np.random.default_rng(21)
    for c, o, pad_value in [(70, 33, -1.0), (64, 64, 0.0), (5, 7, 0.0)]:
        x = threshold_floats(rng, (2, c, 7, 6))
        wt = random_floats(rng, (o, c, 3, 3))
        m, u = random_threshold(rng, x, c)
        want = ref_conv(ref_threshold_signs(x, m, u), wt, (1, 1), (1, 1), (1, 1), 1, pad_value)
        got = xnor.conv2d(x, wt, padding=1, pad_value=pad_value, input_threshold=(m, u))
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_writes_float32_nchw_into_out(kernel, case):
    n, c, h, w, o, ks, stride, padding, dilation, groups = case
    rng = np.random.default_rng(c * 13 + o)
    x = random_floats(rng, (n, c, h, w))
    wt = random_floats(rng, (o, c // groups) + ks)
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    want = ref_conv(x, wt, pair(stride), pair(padding), pair(dilation), groups, 0.0).astype(np.float32)
    weights = xnor.pack_weights(wt, groups)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, pad_value=0.0, threads=2)
    out = np.full(want.shape, np.nan, np.float32)
    assert xnor.conv2d(x, weights, out=out, **kwargs) is out
    np.testing.assert_array_equal(out, want)
    # a channel slice of a larger NCHW buffer, as a concatenation's input: the rest stays untouched
    buffer = np.full((n, o + 5) + want.shape[2:], 7.0, np.float32)
    xnor.conv2d(xnor.pack_channels(x, groups), weights, out=buffer[:, 2:2 + o], **kwargs)
    np.testing.assert_array_equal(buffer[:, 2:2 + o], want)
    assert (buffer[:, :2] == 7).all() and (buffer[:, 2 + o:] == 7).all()


def test_conv2d_out_may_alias_its_float_input(kernel):
    rng = np.random.default_rng(4)
    x = random_floats(rng, (1, 8, 6, 6))
    wt = random_floats(rng, (8, 8, 3, 3))
    want = ref_conv(x, wt, (1, 1), (1, 1), (1, 1), 1, -1.0).astype(np.float32)
    xnor.conv2d(x, wt, padding=1, out=x)  # x is packed before anything is written
    np.testing.assert_array_equal(x, want)


def test_bn_sign_thresholds_match_batchnorm():
    rng = np.random.default_rng(11)
    o = 64
    gamma = rng.standard_normal(o) * 0.5
    gamma[:4] = 0.0
    beta, mean = rng.standard_normal(o), rng.standard_normal(o) * 30
    var, eps = rng.random(o) * 50, 1e-5
    sgn, thr = xnor.bn_sign_thresholds(gamma, beta, mean, var, eps)
    y = np.arange(-300, 301)[:, None]
    bn = gamma * (y - mean) / np.sqrt(var + eps) + beta
    clear = np.abs(bn) > 1e-9  # float rounding may flip exact ties; those are not the point here
    np.testing.assert_array_equal(((sgn * y >= thr) == (bn >= 0))[clear], True)
    # bounds beyond int32 clamp to "always" / "never" for every possible |y| <= 2^31 - 2
    sgn, thr = xnor.bn_sign_thresholds([1.0, -1.0, 1.0, -1.0], [1e12, 1e12, -1e12, -1e12], [0] * 4, [1] * 4)
    extremes = np.array([[-(2 ** 31 - 2)], [2 ** 31 - 2]], dtype=np.int64)
    np.testing.assert_array_equal(sgn * extremes >= thr, [[True, True, False, False]] * 2)


def test_conv2d_rejects_bad_input():
    x, w = np.zeros((1, 8, 5, 5), np.float32), np.zeros((4, 8, 3, 3), np.float32)
    with pytest.raises(ValueError, match="channels"):
        xnor.conv2d(x[:, :7], w)
    with pytest.raises(ValueError, match="pad_value"):
        xnor.conv2d(x, w, pad_value=1.0)
    with pytest.raises(ValueError, match="larger than the padded input"):
        xnor.conv2d(x[:, :, :2], w)
    with pytest.raises(ValueError, match="stride"):
        xnor.conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="groups"):
        xnor.conv2d(x, xnor.pack_weights(w[:, :4], 2), groups=1)
    with pytest.raises(ValueError, match="words per pixel"):
        xnor.conv2d(np.zeros((1, 5, 5, 2), np.uint64), xnor.pack_weights(w))
    with pytest.raises(ValueError, match="must be 0"):
        xnor.conv2d(np.full((1, 5, 5, 1), 2 ** 40, np.uint64), xnor.pack_weights(w))
    with pytest.raises(TypeError, match="float32 NCHW or packed uint64"):
        xnor.conv2d(x.astype(np.float64), w)
    with pytest.raises(ValueError, match="layout='NHWC'"):
        xnor.conv2d(x, w, threshold=(np.zeros(4, np.int32), np.zeros(4, np.int32)))
    with pytest.raises(ValueError, match="int32 of shape"):
        xnor.conv2d(x, w, layout="NHWC", threshold=(np.zeros(3, np.int32), np.zeros(4, np.int32)))
    with pytest.raises(ValueError, match="-1, 0 or"):
        xnor.conv2d(x, w, layout="NHWC", threshold=(np.full(4, 2, np.int32), np.zeros(4, np.int32)))
    ones, zeros = np.ones(8, np.int32), np.zeros(8, np.float32)
    with pytest.raises(ValueError, match=r"m must be int32 of shape \(8,\)"):
        xnor.conv2d(x, w, input_threshold=(ones[:7], zeros))
    with pytest.raises(ValueError, match="u must be float32"):
        xnor.conv2d(x, w, input_threshold=(ones, zeros.astype(np.float64)))
    with pytest.raises(ValueError, match="m must be -1, 0 or"):
        xnor.pack_channels(x, threshold=(ones * 2, zeros))
    with pytest.raises(ValueError, match="pair"):
        xnor.pack_channels(x, threshold=ones)
    with pytest.raises(ValueError, match="input_threshold applies to float32 x"):
        xnor.conv2d(xnor.pack_channels(x), xnor.pack_weights(w), input_threshold=(ones, zeros))
    out = np.zeros((1, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"float32 array of shape \(1, 4, 3, 3\)"):
        xnor.conv2d(x, w, out=out.astype(np.float64))
    with pytest.raises(ValueError, match=r"float32 array of shape \(1, 4, 3, 3\)"):
        xnor.conv2d(x, w, out=out[:, :3])
    with pytest.raises(ValueError, match="plane of out must be contiguous"):
        xnor.conv2d(x, w, out=np.zeros((1, 4, 3, 6), np.float32)[..., ::2])
    with pytest.raises(ValueError, match="plane of out must be contiguous"):
        xnor.conv2d(x, w, out=np.zeros((1, 4, 3, 3), np.float32)[:, ::-1])
    with pytest.raises(ValueError, match="layout='NCHW'"):
        xnor.conv2d(x, w, out=out, layout="NHWC")
    with pytest.raises(ValueError, match="not thresholded bits"):
        xnor.conv2d(x, w, out=out, layout="NHWC", threshold=(np.zeros(4, np.int32), np.zeros(4, np.int32)))
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        xnor.conv2d(x, w, out=out)


def test_default_threads_follow_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert xnor.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2,1")
    assert xnor.default_threads() == 2


def test_default_threads_use_every_usable_core_despite_mxnet(monkeypatch):
    # import mxnet sets the main thread's OpenMP default to 1; the kernels must not inherit that.
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert xnor.default_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")
    assert xnor.default_threads() == len(os.sched_getaffinity(0))

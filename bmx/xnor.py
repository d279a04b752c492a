"""Numpy-facing bit kernels (over bitops.h through the Cython module bmx._xnor).

Layout (bitops.h): value j of a packed axis of length n lives in bit j % 64 of uint64 word
j // 64; bit 1 means +1 (value >= 0), bit 0 means -1; bits past n are 0.

Packed activations are NHWC: ``(N, H, W, words)``, the channels of a pixel packed together. With
``groups > 1`` each group of ``C / groups`` channels is packed on its own, starting on a word
boundary, so a pixel holds ``groups * words_for_bits(C / groups)`` words.

Packed weights (:class:`PackedWeights`) keep, per output channel, one packed row per kernel tap,
``(O, KH, KW, words_for_bits(C / groups))``, and the same rows re-laid for the kernels.

The kernels (packing, xnor GEMM, convolution) come in variants chosen at run time: ``avx512``
(AVX-512 with VPOPCNTDQ) and ``avx2`` on x86-64, ``neon`` on AArch64, and ``portable`` C
everywhere, all giving identical results (docs/deploy.md). The best one this CPU supports is used
unless :func:`set_kernel` forces another. Each call runs on
OpenMP threads: ``threads=None`` means :func:`default_threads` (``OMP_NUM_THREADS``, else one per
core). The int8 kernels (:func:`int8_conv2d`, :func:`int8_dense`) have variants of their own,
:func:`available_int8_kernels`, chosen per call.
"""
import os

import numpy as np

from . import _xnor

__all__ = ["pack", "pack_channels", "unpack", "words_for_bits", "available_kernels", "get_kernel",
           "set_kernel", "default_threads", "PackedWeights", "pack_weights", "gemm", "conv2d",
           "bn_sign_thresholds"]

_KERNEL_ORDER = ("avx512", "avx2", "neon", "portable")
_KERNEL_NAMES = {kernel_id: name for name, kernel_id in _xnor.KERNELS.items()}
_forced_kernel = None
# results and thresholds are int32, so a dot product must fit with room for "never" (2^31 - 1)
_MAX_BITS = 2 ** 31 - 2


def words_for_bits(n):
    """Number of uint64 words that hold n packed values."""
    return _xnor.words_for_bits(int(n))


def available_kernels():
    """Names of the kernel variants this CPU can run, fastest first."""
    return [name for name in _KERNEL_ORDER if _xnor.kernel_available(_xnor.KERNELS[name])]


def set_kernel(name):
    """Forces a kernel variant ('avx512', 'avx2', 'neon', 'portable'); None restores the automatic choice."""
    global _forced_kernel
    if name is None:
        _forced_kernel = None
        return
    if name not in _xnor.KERNELS:
        raise ValueError(f"set_kernel: unknown kernel {name!r}, expected one of {list(_KERNEL_ORDER)}")
    if not _xnor.kernel_available(_xnor.KERNELS[name]):
        raise RuntimeError(f"set_kernel: this CPU cannot run the {name!r} kernel "
                           f"(available: {available_kernels()})")
    _forced_kernel = name


def get_kernel():
    """Name of the kernel variant that gemm and conv2d use now."""
    return _forced_kernel or _KERNEL_NAMES[_xnor.best_kernel()]


def _kernel_id():
    return _xnor.KERNELS[get_kernel()]


def default_threads():
    """Threads a kernel uses when none are given: ``OMP_NUM_THREADS`` if set, else one per usable core.

    Read here instead of asking OpenMP, because importing mxnet (which bmx's training names do) sets
    the main thread's OpenMP default to 1, which would silently make every kernel single-threaded.
    """
    setting = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if setting.isdigit() and int(setting) > 0:
        return int(setting)
    return len(os.sched_getaffinity(0))


def _threads(threads):
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return int(threads)


def _float32(x, name):
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype} (convert with .astype(np.float32))")
    return np.require(x, requirements="C")  # unlike ascontiguousarray, keeps 0-d arrays 0-d


def _uint64(x, name, ndim, dtype=np.uint64, what="packed uint64 words"):
    """x as a C-contiguous array of ``dtype`` with ``ndim`` axes (uint64 unless told)."""
    x = np.asarray(x)
    if x.dtype != dtype:
        raise TypeError(f"{name} must be {what}, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    return np.ascontiguousarray(x)


def _check_tail(words, bits, name):
    """Bits past `bits` in each packed group (the last axis) must be 0, or they would count."""
    if bits % 64 and words.size and np.any(words[..., -1] >> np.uint64(bits % 64)):
        raise ValueError(f"{name}: bits past the {bits} packed values must be 0 (pack with bmx.xnor.pack)")


def pack(x, *, threads=None):
    """Signs of a float32 array packed along its last axis: (..., n) -> (..., ceil(n/64)) uint64."""
    x = _float32(x, "pack: x")
    if x.ndim < 1:
        raise ValueError("pack: x must have at least one axis")
    rows = x.reshape(int(np.prod(x.shape[:-1])), x.shape[-1])  # -1 cannot be inferred when n = 0
    return _xnor.pack_rows(rows, _kernel_id(), _threads(threads)).reshape(x.shape[:-1] + (words_for_bits(x.shape[-1]),))


def pack_channels(x, groups=1, *, threshold=None, threads=None):
    """Signs of an NCHW float32 tensor packed along C: (N, C, H, W) -> (N, H, W, words) uint64.

    words = groups * ceil(C / groups / 64): each group of C / groups channels starts on a word
    boundary (with groups=1 simply the C channels).

    ``threshold=(m, u)``, C values each (m int32 in {-1, 0, +1}, u float32), packs a per-channel
    affine threshold instead of the sign, e.g. a BatchNorm folded into the sign that follows it:
    channel c's bit is 1 where ``m[c] * x >= u[c]``, compared in float32 (``m[c] * x`` is x or -x,
    exactly; a NaN x or u[c] gives 0), and where m[c] = 0 it is the constant ``0 >= u[c]``, whatever
    x holds (NaN included). m = 1, u = 0 is the plain sign.
    """
    x = _float32(x, "pack_channels: x")
    if x.ndim != 4:
        raise ValueError(f"pack_channels: x must be 4-D NCHW, got shape {x.shape}")
    groups = _positive(groups, "pack_channels: groups")
    if x.shape[1] % groups:
        raise ValueError(f"pack_channels: {x.shape[1]} channels do not split into {groups} groups")
    m, u = _affine_threshold(threshold, x.shape[1], "pack_channels: threshold")
    return _xnor.pack_nchw(x, groups, _kernel_id(), _threads(threads), m, u)


def _affine_threshold(threshold, channels, name):
    """Validated (m, u) of an input threshold: int32 in {-1, 0, 1} and float32, ``channels`` each."""
    if threshold is None:
        return None, None
    try:
        m, u = (np.ascontiguousarray(t) for t in threshold)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (m, u) of arrays") from None
    if m.dtype != np.int32 or m.shape != (channels,):
        raise ValueError(f"{name}: m must be int32 of shape ({channels},), got {m.dtype} {m.shape}")
    if u.dtype != np.float32 or u.shape != (channels,):
        raise ValueError(f"{name}: u must be float32 of shape ({channels},), got {u.dtype} {u.shape}")
    if ((m < -1) | (m > 1)).any():
        raise ValueError(f"{name}: m must be -1, 0 or +1")
    return m, u


def unpack(words, n):
    """Inverse of :func:`pack`: (..., ceil(n/64)) uint64 -> (..., n) float32 in {-1, +1}."""
    words = np.asarray(words)
    if words.dtype != np.uint64:
        raise TypeError(f"unpack: words must be uint64, got {words.dtype}")
    if words.ndim < 1 or words.shape[-1] != words_for_bits(n):
        raise ValueError(f"unpack: last axis must have {words_for_bits(n)} words for n={n}, got {words.shape}")
    bits = (words[..., :, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    bits = bits.reshape(words.shape[:-1] + (-1,))[..., :n]
    return np.where(bits == 1, np.float32(1), np.float32(-1))


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _pair(value, name, minimum):
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum
                             for v in pair):
        raise ValueError(f"{name} must be an integer >= {minimum} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


class PackedWeights:
    """Binary weights ready for :func:`gemm` and :func:`conv2d` (make them with :func:`pack_weights`).

    Attributes: ``words`` (O, KH, KW, words_for_bits(in_channels)) uint64, the signs of output
    channel o, tap (kh, kw) packed along its group's input channels; ``groups``;
    ``in_channels`` (input channels per group, i.e. bits per tap); ``out_channels``;
    ``kernel_size`` (KH, KW); ``panels``, the same rows transposed for the kernels; ``tap_sums``
    (KH * KW, O) int32, each output channel's sum of its +/-1 weights per tap (for zero padding).
    """

    __slots__ = ("words", "groups", "in_channels", "out_channels", "kernel_size", "panels", "tap_sums")

    def __init__(self, words, in_channels, groups=1):
        words = _uint64(words, "PackedWeights: words", 4)
        self.groups = _positive(groups, "PackedWeights: groups")
        self.in_channels = _positive(in_channels, "PackedWeights: in_channels")
        self.out_channels, kh, kw, nwords = words.shape
        if min(words.shape[:3]) == 0:
            raise ValueError(f"PackedWeights: words must not be empty, got shape {words.shape}")
        if nwords != words_for_bits(self.in_channels):
            raise ValueError(f"PackedWeights: {self.in_channels} channels take {words_for_bits(self.in_channels)} "
                             f"words per tap, got {nwords}")
        if self.out_channels % self.groups:
            raise ValueError(f"PackedWeights: {self.out_channels} output channels do not split into "
                             f"{self.groups} groups")
        if kh * kw * self.in_channels > _MAX_BITS:
            raise ValueError("PackedWeights: a dot product of more than 2^31 - 2 bits does not fit int32")
        _check_tail(words, self.in_channels, "PackedWeights: words")
        self.words = words
        self.kernel_size = (kh, kw)
        self.panels = _xnor.pack_panels(words.reshape(self.out_channels, -1), self.groups)
        self.tap_sums = _xnor.tap_sums(self.panels, self.groups, self.in_channels,
                                       self.out_channels // self.groups, kh * kw)

    @property
    def bits(self):
        """Counted bits of one output (the length of the +/-1 dot product): KH * KW * in_channels."""
        return self.kernel_size[0] * self.kernel_size[1] * self.in_channels


def pack_weights(w, groups=1):
    """Signs of float32 weights packed for the kernels.

    ``w`` is a convolution weight (O, C / groups, KH, KW) (MXNet's OIHW) or a dense/GEMM weight
    (N, K), which becomes a 1x1 kernel. Returns a :class:`PackedWeights`.
    """
    w = _float32(w, "pack_weights: w")
    if w.ndim == 2:
        w = w[:, :, None, None]
    if w.ndim != 4:
        raise ValueError(f"pack_weights: w must be (O, C, KH, KW) or (N, K), got shape {w.shape}")
    if min(w.shape) == 0:
        raise ValueError(f"pack_weights: w must not be empty, got shape {w.shape}")
    return PackedWeights(pack(w.transpose(0, 2, 3, 1)), w.shape[1], groups)


def gemm(a, b, k=None, *, threads=None):
    """+/-1 matrix product of packed rows: int32 (M, N), C[i, j] = sum_t a_it * b_jt.

    ``a``: (M, Kw) uint64, M rows of k packed values (see :func:`pack`). ``b``: (N, Kw) uint64
    rows packed the same way, with ``k`` the number of values per row (Kw = ceil(k / 64)); or a
    :class:`PackedWeights` from ``pack_weights`` of an (N, k) matrix, whose k is known (prepare
    constant weights once: the panel re-layout is then not repeated per call).
    Equals ``unpack(a, k) @ unpack(b, k).T`` exactly.
    """
    a = _uint64(a, "gemm: a", 2)
    if isinstance(b, PackedWeights):
        if b.kernel_size != (1, 1) or b.groups != 1:
            raise ValueError("gemm: b must be packed from a 2-D (N, K) matrix")
        if k is not None and k != b.in_channels:
            raise ValueError(f"gemm: k={k} but b holds rows of {b.in_channels} values")
        k, n, panels = b.in_channels, b.out_channels, b.panels
    else:
        b = _uint64(b, "gemm: b", 2)
        if k is None:
            raise ValueError("gemm: k (values per packed row) is required when b is an array")
        k, n, panels = int(k), b.shape[0], None
    if not 0 <= k <= _MAX_BITS:
        raise ValueError(f"gemm: k must be in [0, 2^31 - 2], got {k}")
    words = words_for_bits(k)
    if a.shape[1] != words or (panels is None and b.shape[1] != words):
        raise ValueError(f"gemm: rows of {k} values take {words} words, got a {a.shape}"
                         + ("" if panels is not None else f", b {b.shape}"))
    _check_tail(a, k, "gemm: a")
    if panels is None:
        _check_tail(b, k, "gemm: b")
        panels = _xnor.pack_panels(b, 1)
    return _xnor.gemm(a, panels, n, k, _kernel_id(), _threads(threads))


def conv2d(x, w, *, stride=1, padding=0, dilation=1, groups=None, pad_value=-1.0, layout="NCHW",
           threshold=None, input_threshold=None, out=None, threads=None):
    """Binary 2-D convolution: the convolution of sign(x) with sign(w), computed on packed bits.

    x: float32 NCHW (its signs are packed here), or packed uint64 NHWC ``(N, H, W, words)`` as
    made by :func:`pack_channels` (with the same groups).
    w: float32 OIHW weights (packed here) or :class:`PackedWeights` (pack constant weights once).
    stride, padding, dilation: an int or an (h, w) pair. groups: taken from PackedWeights; for
    float weights, 1 unless given.
    pad_value: what the padding holds, -1.0 (BMXNet-v2's sign-then-pad: free on packed data) or
    0.0 (zero padding: exact, by a per-tap correction of the border outputs).
    input_threshold: ``(m, u)`` for float x: its channel c counts as +1 where ``m[c] * x >= u[c]``
    and -1 elsewhere instead of sign(x), e.g. a BatchNorm before the convolution folded in (see
    :func:`pack_channels`, which applies it).

    Returns int32 outputs y, (N, O, OH, OW) for layout 'NCHW' or (N, OH, OW, O) for 'NHWC'.

    With ``out``, a float32 (N, O, OH, OW) array (layout 'NCHW'), y is written there converted to
    float32 (exact for |y| <= 2^24, which any kernel of fewer than 2^24 bits guarantees) and out is
    returned. Each channel's OH x OW plane must be contiguous, its batch and channel strides are
    free: a channel slice ``buffer[:, c0:c0 + O]`` of a C-contiguous NCHW array fits, so that a
    concatenation can be filled in place. out may overlap float x (x is packed first).

    With ``threshold=(sgn, thr)`` (int32 per output channel, see :func:`bn_sign_thresholds`) it
    returns instead the packed signs of the next binary layer, NHWC uint64 (N, OH, OW,
    ceil(O / 64)) as :func:`pack_channels` with groups=1 lays them out: channel o is bit
    ``sgn[o] * y[o] >= thr[o]``; the int32 outputs are never written out.
    """
    if isinstance(w, PackedWeights):
        if groups is not None and groups != w.groups:
            raise ValueError(f"conv2d: groups={groups} but the packed weights have {w.groups}")
    else:
        w = _float32(w, "conv2d: w")
        if w.ndim != 4:
            raise ValueError(f"conv2d: w must be 4-D OIHW, got shape {w.shape}")
        w = pack_weights(w, 1 if groups is None else groups)
    groups, cg = w.groups, w.in_channels
    x = np.asarray(x)
    if x.dtype == np.float32:
        if x.ndim != 4 or x.shape[1] != groups * cg:
            raise ValueError(f"conv2d: x must be NCHW with {groups * cg} channels for these weights, "
                             f"got shape {x.shape}")
        x = pack_channels(x, groups, threshold=input_threshold, threads=threads)
    elif x.dtype != np.uint64:
        raise TypeError(f"conv2d: x must be float32 NCHW or packed uint64 NHWC, got {x.dtype}")
    elif input_threshold is not None:
        raise ValueError("conv2d: input_threshold applies to float32 x (packed x is signs already)")
    else:
        x = _uint64(x, "conv2d: x", 4)
        if x.shape[3] != groups * words_for_bits(cg):
            raise ValueError(f"conv2d: packed x must hold {groups} x {words_for_bits(cg)} words per pixel "
                             f"({groups * cg} channels in {groups} groups), got shape {x.shape}")
        _check_tail(x.reshape(x.shape[:3] + (groups, -1)), cg, "conv2d: x")
    stride = _pair(stride, "conv2d: stride", 1)
    padding = _pair(padding, "conv2d: padding", 0)
    dilation = _pair(dilation, "conv2d: dilation", 1)
    if pad_value not in (-1.0, 0.0):
        raise ValueError(f"conv2d: pad_value must be -1.0 or 0.0, got {pad_value!r}")
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"conv2d: layout must be 'NCHW' or 'NHWC', got {layout!r}")
    out_hw = _out_extents("conv2d", x.shape[1:3], w.kernel_size, stride, padding, dilation)
    sgn = thr = None
    if threshold is not None:
        if layout != "NHWC":
            raise ValueError("conv2d: thresholded output is packed NHWC: pass layout='NHWC'")
        if out is not None:
            raise ValueError("conv2d: out takes float32 NCHW results, not thresholded bits")
        sgn, thr = (np.ascontiguousarray(t) for t in threshold)
        for name, t in (("sgn", sgn), ("thr", thr)):
            if t.dtype != np.int32 or t.shape != (w.out_channels,):
                raise ValueError(f"conv2d: threshold {name} must be int32 of shape ({w.out_channels},), "
                                 f"got {t.dtype} {t.shape}")
        if ((sgn < -1) | (sgn > 1)).any():
            raise ValueError("conv2d: threshold sgn must be -1, 0 or +1")
    if out is not None:
        _check_out(out, (x.shape[0], w.out_channels) + tuple(out_hw), layout)
    y = _xnor.conv(x, w.panels, w.tap_sums, groups, cg, w.out_channels // groups, w.kernel_size, stride,
                   padding, dilation, pad_value == 0.0, _kernel_id(), _threads(threads), sgn, thr, out)
    if out is not None:
        return out
    if threshold is None and layout == "NCHW":
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2))
    return y


def _out_extents(name, size_hw, kernel_hw, stride, padding, dilation):
    """The (OH, OW) of a convolution ('valid' convention); a dilated kernel larger than the padded
    input is an error."""
    out_hw = []
    for axis, size in enumerate(size_hw):
        span = dilation[axis] * (kernel_hw[axis] - 1) + 1
        if size + 2 * padding[axis] < span:
            raise ValueError(f"{name}: the dilated kernel ({span}) is larger than the padded input "
                             f"({size + 2 * padding[axis]}) along {'HW'[axis]}")
        out_hw.append((size + 2 * padding[axis] - span) // stride[axis] + 1)
    return out_hw


def _check_out(out, shape, layout):
    """conv2d's out: float32 of ``shape``, each (OH, OW) plane contiguous, writeable."""
    if layout != "NCHW":
        raise ValueError("conv2d: out holds NCHW results: pass layout='NCHW'")
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != shape:
        raise ValueError(f"conv2d: out must be a float32 array of shape {shape}, got "
                         f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
    if not out.flags.writeable:
        raise ValueError("conv2d: out must be writeable")
    item = out.itemsize
    planes_contiguous = (out.strides[3] == item or shape[3] == 1) and \
        (out.strides[2] == shape[3] * item or shape[2] == 1)
    if not planes_contiguous or any(s < 0 or s % item for s in out.strides[:2]):
        raise ValueError(f"conv2d: each (OH, OW) plane of out must be contiguous, with non-negative batch and "
                         f"channel strides (e.g. a channel slice of an NCHW array); got strides {out.strides}")


def bn_sign_thresholds(gamma, beta, mean, var, eps=1e-5):
    """The integer thresholds (sgn, thr) for :func:`conv2d` that give sign(BatchNorm(y)).

    eps defaults to Gluon BatchNorm's epsilon.

    For an integer y, ``gamma * (y - mean) / sqrt(var + eps) + beta >= 0`` (sign(0) = +1) holds
    exactly when ``sgn * y >= thr``: sgn = sign(gamma) and thr the bound rounded to the integer
    grid (float64). A zero gamma gives a constant bit, sign(beta). Returns two int32 arrays.
    """
    gamma, beta, mean, var = (np.asarray(v, dtype=np.float64).ravel() for v in (gamma, beta, mean, var))
    if not gamma.shape == beta.shape == mean.shape == var.shape:
        raise ValueError("bn_sign_thresholds: gamma, beta, mean and var must have the same length")
    if not all(np.isfinite(v).all() for v in (gamma, beta, mean, var)) or (var + eps <= 0).any():
        raise ValueError("bn_sign_thresholds: parameters must be finite with var + eps > 0")
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = mean - beta * np.sqrt(var + eps) / gamma
    limit = float(_MAX_BITS + 1)
    sgn = np.sign(gamma).astype(np.int32)
    thr = np.where(gamma > 0, np.ceil(bound), -np.floor(bound))
    thr = np.where(gamma == 0, np.where(beta >= 0, 0.0, 1.0), np.clip(thr, -limit, limit))
    return sgn, thr.astype(np.int32)


# ---------------------------------------------------------------- float kernels (floatops.h)
# The runtime's float steps: the callers (bmx.runtime's ops) have validated shapes and layouts at
# load time, so these only pass the arrays through to the compiled module, once per step.


def has_direct_float_conv():
    """Whether the direct float convolution has a vectorized variant here (AVX2 / AVX-512); the
    portable one is slower than im2col and BLAS, so callers fall back to those."""
    return get_kernel() != "portable"


def float_conv2d(x, weight_t, bias, out, kernel, stride, padding, dilation, threads):
    """out (N, O, OH, OW) = the float convolution of x (N, C, H, W, C-contiguous float32) with
    ``weight_t`` (groups, C / groups * KH * KW, O / groups), the weight transposed per group, plus
    ``bias`` (O,) or None. The (OH, OW) planes of ``out`` must be contiguous."""
    _xnor.conv_f32(x, weight_t, bias, out, kernel, stride, padding, dilation, _kernel_id(), threads)


def float_max_pool(x, out, kernel, stride, padding, scale, shift, relu, threads):
    """out (N, C, OH, OW) = MXNet's max pooling of x (N, C, H, W), then ``* scale + shift`` per
    channel (each (C,) float32 or None) and ReLU if ``relu``. The (H, W) planes of x and the
    (OH, OW) planes of out must be contiguous; batch and channel strides are free."""
    _xnor.max_pool(x, out, kernel, stride, padding, scale, shift, relu, threads)


__all__ += ["has_direct_float_conv", "float_conv2d", "float_max_pool"]


# ---------------------------------------------------------------- int8 kernels (int8ops.h)
# Symmetric quantization (zero point 0): a float tensor t is approximated by scale * q with q int8
# in [-127, 127]; a convolution of such x and w is scale_x * scale_w[o] times the exact int32 one.

_INT8_ORDER = ("avx512_vnni", "avx2", "portable")
# int32 sums of K products of int8 (at most 128 * 128 each) are exact for K <= this
_MAX_INT8_TERMS = (2 ** 31 - 1) // (128 * 128)


def available_int8_kernels():
    """Names of the int8 kernel variants this CPU runs, best first: 'avx512_vnni' (AVX-512 with
    VNNI), 'avx2' and 'portable' (C, any CPU, ARM included). All give identical results."""
    return tuple(name for name in _INT8_ORDER if _xnor.int8_kernel_available(_xnor.INT8_KERNELS[name]))


def _int8_kernel_id(kernel, name):
    if kernel is None:
        return _xnor.best_int8_kernel()
    if kernel not in available_int8_kernels():
        raise ValueError(f"{name}: kernel must be one of {available_int8_kernels()} on this CPU, got {kernel!r}")
    return _xnor.INT8_KERNELS[kernel]


def quantize_int8(x, scale, *, threads=None):
    """Symmetric int8 quantization: ``q = clip(round(x / scale), -127, 127)``, int8 of x's shape.

    The division is float32 (x float32, scale rounded to float32: both must be IEEE divisions for
    a reference to agree) and rounds half to even; +-inf clip to +-127. A NaN in x is an error.
    """
    x = _float32(x, "quantize_int8: x")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) or \
            not float(np.finfo(np.float32).tiny) <= scale <= float(np.finfo(np.float32).max):
        raise ValueError(f"quantize_int8: scale must be a positive finite float in float32's normal range, got {scale!r}")
    q, has_nan = _xnor.quantize_int8(x.reshape(-1), float(np.float32(scale)), _threads(threads))
    if has_nan:
        raise ValueError("quantize_int8: x holds NaN")
    return q.reshape(x.shape)


class Int8Weights:
    """int8 weights prepared once for :func:`int8_conv2d` or :func:`int8_dense` (from
    :func:`pack_int8_weights`). ``array``: the C-contiguous int8 weights (read-only), (O, C / groups,
    KH, KW) or (O, K). A convolution weight keeps its kernel layout per (kernel, groups) after first
    use; a dense weight holds its (K, O) transpose ``columns``, which int8_dense multiplies with."""

    __slots__ = ("array", "columns", "_packed")

    def __init__(self, array):
        array = np.asarray(array)
        if array.dtype != np.int8 or array.ndim not in (2, 4) or array.size == 0:
            raise ValueError(f"pack_int8_weights: wq must be non-empty int8 (O, C, KH, KW) or (O, K), "
                             f"got {array.dtype} {array.shape}")
        self.array = np.array(array, order="C")
        self.columns = np.ascontiguousarray(self.array.T) if array.ndim == 2 else None
        self._packed = {}
        self.array.flags.writeable = False

    def packed(self, kernel_id, groups):
        """The layout of int8ops.h's bmx_int8_pack_weights for one kernel and group count."""
        if (kernel_id, groups) not in self._packed:
            self._packed[kernel_id, groups] = _xnor.int8_pack(self.array, groups, kernel_id)
        return self._packed[kernel_id, groups]


def pack_int8_weights(wq):
    """Constant int8 weights prepared once: an :class:`Int8Weights`, which :func:`int8_conv2d` and
    :func:`int8_dense` take in place of wq (then not re-laid out for the kernels on every call)."""
    return Int8Weights(wq)


def _int8(x, name, ndim):
    return _uint64(x, name, ndim, np.int8, "int8 (quantize with bmx.xnor.quantize_int8)")


def _int8_arguments(name, terms, out_scale, bias, channels, kernel):
    """Validated (out_scale, bias, kernel id): float32 (channels,) each or None; the terms per output."""
    if terms > _MAX_INT8_TERMS:
        raise ValueError(f"{name}: {terms} products per output could overflow int32 (at most {_MAX_INT8_TERMS})")
    if out_scale is None:
        if bias is not None:
            raise ValueError(f"{name}: bias needs out_scale (the int32 results carry no bias)")
        return None, None, _int8_kernel_id(kernel, name)
    checked = []
    for label, v in (("out_scale", out_scale), ("bias", bias)):
        v = None if v is None else np.ascontiguousarray(v)
        if v is not None and (v.dtype != np.float32 or v.shape != (channels,)):
            raise ValueError(f"{name}: {label} must be float32 of shape ({channels},), got {v.dtype} {v.shape}")
        checked.append(v)
    return checked + [_int8_kernel_id(kernel, name)]


def int8_conv2d(xq, wq, *, stride=1, padding=0, dilation=1, groups=1, out_scale=None, bias=None, kernel=None,
                threads=None):
    """int8 2-D convolution (MXNet's cross-correlation) with zero padding, accumulated exactly in int32:
    ``acc[n, o, i, j] = sum_{c, a, b} wq[o, c, a, b] * xq[n, g * C / groups + c, i * sh + a * dh - ph,
    j * sw + b * dw - pw]`` with g = o // (O / groups).

    xq: int8 (N, C, H, W); wq: int8 (O, C / groups, KH, KW) or :class:`Int8Weights`; stride, padding,
    dilation: an int or an (h, w) pair. Returns int32 acc (N, O, OH, OW); with ``out_scale`` (float32
    (O,)) float32 ``acc * out_scale[o] + bias[o]`` (bias float32 (O,) or None), rounded after the
    product and after the sum. ``kernel``: a name from :func:`available_int8_kernels` (None: the first).
    """
    name = "int8_conv2d"
    xq = _int8(xq, f"{name}: xq", 4)
    prepared = wq if isinstance(wq, Int8Weights) else None
    wq = _int8(wq.array if prepared else wq, f"{name}: wq", 4)
    groups = _positive(groups, f"{name}: groups")
    (n, c, h, w), (o, cg, kh, kw) = xq.shape, wq.shape
    if min(wq.shape) == 0:
        raise ValueError(f"{name}: wq must not be empty, got shape {wq.shape}")
    if o % groups or cg * groups != c:
        raise ValueError(f"{name}: {groups} groups of wq {wq.shape} need {cg * groups} input channels and "
                         f"output channels divisible by {groups}; xq has shape {xq.shape}")
    stride = _pair(stride, f"{name}: stride", 1)
    padding = _pair(padding, f"{name}: padding", 0)
    dilation = _pair(dilation, f"{name}: dilation", 1)
    oh, ow = _out_extents(name, (h, w), (kh, kw), stride, padding, dilation)
    scale, bias, kernel_id = _int8_arguments(name, cg * kh * kw, out_scale, bias, o, kernel)
    if n == 0:
        return np.zeros((0, o, oh, ow), dtype=np.int32 if scale is None else np.float32)
    return _xnor.int8_conv(xq, wq, groups, stride, padding, dilation, scale, bias, False, kernel_id, _threads(threads),
                           prepared.packed(kernel_id, groups) if prepared else None)


def int8_dense(xq, wq, *, out_scale=None, bias=None, kernel=None, threads=None):
    """int8 dense layer accumulated exactly in int32: ``acc[n, o] = sum_k xq[n, k] * wq[o, k]``.

    xq: int8 (N, K); wq: int8 (O, K) or :class:`Int8Weights`. Returns int32 (N, O), or float32
    ``acc * out_scale[o] + bias[o]`` as :func:`int8_conv2d`.
    """
    name = "int8_dense"
    xq = _int8(xq, f"{name}: xq", 2)
    columns = wq.columns if isinstance(wq, Int8Weights) else None
    wq = _int8(wq.array if isinstance(wq, Int8Weights) else wq, f"{name}: wq", 2)
    (n, k), o = xq.shape, wq.shape[0]
    if wq.size == 0 or wq.shape[1] != k:
        raise ValueError(f"{name}: wq must be non-empty with the {k} features of a row of xq, got shape {wq.shape}")
    scale, bias, kernel_id = _int8_arguments(name, k, out_scale, bias, o, kernel)
    if n == 0:
        return np.zeros((0, o), dtype=np.int32 if scale is None else np.float32)
    if columns is None:
        columns = np.ascontiguousarray(wq.T)
    # roles swapped so that the kernels vectorise over the O outputs, not over the (often 1) rows:
    # wq^T is a 1 x O image of K channels, each row of xq a 1x1 filter, scale and bias per column
    y = _xnor.int8_conv(columns.reshape(1, k, 1, o), xq.reshape(n, k, 1, 1), 1, (1, 1), (0, 0), (1, 1),
                        scale, bias, True, kernel_id, _threads(threads))
    return y.reshape(n, o)


__all__ += ["available_int8_kernels", "quantize_int8", "Int8Weights", "pack_int8_weights", "int8_conv2d",
            "int8_dense"]

# cython: boundscheck=False, wraparound=False, cdivision=True
"""Bit kernels over bitops.h (see bmx/xnor.py for the validated, documented API), the float
kernels of floatops.h (max pooling, direct convolution) for bmx.runtime, and the int8 kernels of
int8ops.h (quantization, convolution).

Nothing here checks its arguments beyond what Cython's typed memoryviews do: bmx.xnor and
bmx.runtime, the only callers, validate shapes, dtypes and ranges first.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, uint64_t
from libc.string cimport memset

cdef extern from "bitops.h" nogil:
    size_t bmx_words_for_bits(size_t n)
    void bmx_pack_rows(const float* x, size_t rows, size_t n, uint64_t* out, int kernel,
                       int threads)
    int bmx_pack_nchw(const float* x, size_t batch, size_t channels, size_t hw, size_t groups,
                      const int32_t* m, const float* u, uint64_t* out, int kernel, int threads)

    int BMX_KERNEL_PORTABLE, BMX_KERNEL_AVX2, BMX_KERNEL_AVX512, BMX_KERNEL_NEON
    int bmx_kernel_available(int kernel)
    int bmx_kernel_best()

    ctypedef struct bmx_conv_shape:
        size_t batch, in_h, in_w, pixel_words
        size_t groups, group_bits, out_per_group
        size_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
        int pad_zero

    size_t bmx_conv_out_extent(size_t inp, size_t pad, size_t kernel, size_t stride,
                               size_t dilation)
    size_t bmx_xnor_panel_words(size_t groups, size_t rows_per_group, size_t row_words)
    void bmx_xnor_pack_panels(const uint64_t* w, size_t ldw, size_t groups,
                              size_t rows_per_group, size_t row_words, uint64_t* panels)
    void bmx_conv_tap_sums(size_t groups, size_t group_bits, size_t out_per_group, size_t taps,
                           const uint64_t* panels, int32_t* sums)
    ctypedef struct bmx_conv_output:
        int32_t* y
        size_t ldy
        float* nchw
        size_t batch_stride, channel_stride
        const int32_t* sgn
        const int32_t* thr
        uint64_t* bits
        size_t ldb

    int bmx_xnor_conv(const bmx_conv_shape* sh, const uint64_t* x, const uint64_t* panels,
                      const int32_t* tap_sums, const bmx_conv_output* out, int kernel, int threads)
    int bmx_xnor_gemm(const uint64_t* a, size_t lda, const uint64_t* b_panels, size_t m,
                      size_t n, size_t kw, int32_t k_bits, int32_t* c, size_t ldc, int kernel,
                      int threads)

cdef extern from "floatops.h" nogil:
    int bmx_max_pool(const float* x, size_t batch, size_t channels, size_t h, size_t w,
                     size_t x_batch, size_t x_channel, float* out, size_t oh, size_t ow,
                     size_t o_batch, size_t o_channel, size_t kh, size_t kw, size_t sh, size_t sw,
                     size_t ph, size_t pw, const float* scale, const float* shift, int relu,
                     int threads)
    int bmx_conv_f32(const float* x, size_t batch, size_t channels, size_t h, size_t w,
                     const float* wt, const float* bias, size_t groups, size_t out_channels,
                     size_t kh, size_t kw, size_t sh, size_t sw, size_t ph, size_t pw, size_t dh,
                     size_t dw, float* out, size_t o_batch, size_t o_channel, int kernel,
                     int threads)

cdef extern from "int8ops.h" nogil:
    int BMX_INT8_PORTABLE, BMX_INT8_AVX2, BMX_INT8_VNNI
    int bmx_int8_kernel_available(int kernel)
    int bmx_int8_kernel_best()
    int bmx_quantize_int8(const float* x, size_t n, float scale, int8_t* q, int threads)
    ctypedef struct bmx_int8_output:
        int32_t* acc
        float* y
        const float* scale
        const float* bias
        int per_column
    size_t bmx_int8_packed_bytes(int kernel, size_t out_channels, size_t groups, size_t k)
    void bmx_int8_pack_weights(int kernel, const int8_t* w, size_t out_channels, size_t groups,
                               size_t k, void* packed)
    int bmx_int8_conv(const int8_t* x, size_t batch, size_t channels, size_t h, size_t w,
                      const int8_t* wt, const void* packed, size_t out_channels, size_t groups,
                      size_t kh, size_t kw,
                      size_t sh, size_t sw, size_t ph, size_t pw, size_t dh, size_t dw,
                      const bmx_int8_output* out, int kernel, int threads)

cnp.import_array()

KERNELS = {"portable": BMX_KERNEL_PORTABLE, "avx2": BMX_KERNEL_AVX2,
           "avx512": BMX_KERNEL_AVX512, "neon": BMX_KERNEL_NEON}


def kernel_available(int kernel):
    return bmx_kernel_available(kernel) != 0


def best_kernel():
    return bmx_kernel_best()


def words_for_bits(size_t n):
    return bmx_words_for_bits(n)


def pack_rows(const float[:, ::1] x, int kernel, int threads):
    """(R, n) float32 -> (R, ceil(n/64)) uint64, packing each row."""
    cdef size_t rows = x.shape[0], n = x.shape[1]
    out = np.empty((rows, bmx_words_for_bits(n)), dtype=np.uint64)
    cdef uint64_t[:, ::1] o = out
    if rows and n:
        with nogil:
            bmx_pack_rows(&x[0, 0], rows, n, &o[0, 0], kernel, threads)
    return out


def pack_nchw(const float[:, :, :, ::1] x, size_t groups, int kernel, int threads,
              const int32_t[::1] m=None, const float[::1] u=None):
    """(N, C, H, W) float32 -> (N, H, W, groups * ceil(C/groups/64)) uint64, packing along C.

    Each group of C/groups channels is packed on its own (starting on a word boundary). With m and
    u (C values each) channel c's bit is m[c] * x >= u[c] (bitops.h's affine threshold).
    """
    cdef size_t n = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    out = np.empty((n, h, w, groups * bmx_words_for_bits(c // groups)), dtype=np.uint64)
    cdef uint64_t[:, :, :, ::1] o = out
    cdef const int32_t* mp = &m[0] if m is not None and c else NULL
    cdef const float* up = &u[0] if u is not None and c else NULL
    cdef int rc = 0
    if out.size and c:
        with nogil:
            rc = bmx_pack_nchw(&x[0, 0, 0, 0], n, c, h * w, groups, mp, up, &o[0, 0, 0, 0], kernel,
                               threads)
    _check(rc, "bmx_pack_nchw")
    return out


def _aligned_words(size_t count):
    """A zeroed uint64 vector whose data starts on a 64-byte (cache line) boundary."""
    raw = np.zeros(count + 8, dtype=np.uint64)
    start = (-raw.ctypes.data % 64) // 8
    return raw[start:start + count]


def pack_panels(const uint64_t[:, ::1] w, size_t groups):
    """(groups * R, row_words) uint64 rows -> the panel layout of bitops.h (1-D uint64)."""
    cdef size_t rows = w.shape[0] // groups, row_words = w.shape[1]
    panels = _aligned_words(bmx_xnor_panel_words(groups, rows, row_words))
    cdef uint64_t[::1] p = panels
    if p.shape[0]:
        with nogil:
            bmx_xnor_pack_panels(&w[0, 0], row_words, groups, rows, row_words, &p[0])
    return panels


cdef const uint64_t* _words_ptr(const uint64_t[::1] v):
    return &v[0] if v.shape[0] else NULL


def _check(int rc, name):
    if rc == -1:
        raise MemoryError(f"{name}: out of memory")
    if rc != 0:
        raise ValueError(f"{name}: invalid shape (code {rc})")


def gemm(const uint64_t[:, ::1] a, const uint64_t[::1] b_panels, size_t n, int32_t k_bits,
         int kernel, int threads):
    """(M, Kw) packed rows . (N rows as panels) -> int32 (M, N) of +/-1 dot products."""
    cdef size_t m = a.shape[0], kw = a.shape[1]
    result = np.empty((m, n), dtype=np.int32)
    cdef int32_t[:, ::1] c = result
    cdef int rc
    if result.size == 0:
        return result
    if kw == 0:
        result.fill(0)
        return result
    with nogil:
        rc = bmx_xnor_gemm(&a[0, 0], kw, &b_panels[0], m, n, kw, k_bits, &c[0, 0], n, kernel,
                           threads)
    _check(rc, "bmx_xnor_gemm")
    return result


def tap_sums(const uint64_t[::1] panels, size_t groups, size_t group_bits, size_t out_per_group,
             size_t taps):
    """int32 (taps, O): each output channel's sum of +/-1 weights per kernel tap."""
    result = np.empty((taps, groups * out_per_group), dtype=np.int32)
    cdef int32_t[:, ::1] sums = result
    if result.size:
        with nogil:
            bmx_conv_tap_sums(groups, group_bits, out_per_group, taps, &panels[0], &sums[0, 0])
    return result


def conv(const uint64_t[:, :, :, ::1] x, const uint64_t[::1] panels, const int32_t[:, ::1] sums,
         size_t groups, size_t group_bits, size_t out_per_group, kernel_hw, stride, pad, dilation,
         bint pad_zero, int kernel, int threads, const int32_t[::1] sgn=None,
         const int32_t[::1] thr=None, float[:, :, :, :] out=None):
    """Binary convolution of packed NHWC x: returns int32 (N, OH, OW, O), or packed bits with
    sgn/thr; or writes float32 into ``out`` (N, O, OH, OW) and returns None (its OH x OW planes
    must be contiguous; its batch and channel strides, multiples of 4 bytes, are free).

    sums: the tap_sums of the weights (read only with pad_zero).
    """
    cdef bmx_conv_shape sh
    sh.batch, sh.in_h, sh.in_w, sh.pixel_words = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    sh.groups, sh.group_bits, sh.out_per_group = groups, group_bits, out_per_group
    sh.kernel_h, sh.kernel_w = kernel_hw
    sh.stride_h, sh.stride_w = stride
    sh.pad_h, sh.pad_w = pad
    sh.dilation_h, sh.dilation_w = dilation
    sh.pad_zero = pad_zero
    cdef size_t out_h = bmx_conv_out_extent(sh.in_h, sh.pad_h, sh.kernel_h, sh.stride_h,
                                            sh.dilation_h)
    cdef size_t out_w = bmx_conv_out_extent(sh.in_w, sh.pad_w, sh.kernel_w, sh.stride_w,
                                            sh.dilation_w)
    cdef size_t out_channels = groups * out_per_group
    cdef size_t out_words = bmx_words_for_bits(out_channels)
    cdef int32_t[:, :, :, ::1] y
    cdef uint64_t[:, :, :, ::1] bits
    cdef const uint64_t* xp = &x[0, 0, 0, 0] if x.size else NULL
    cdef const uint64_t* pp = _words_ptr(panels)
    cdef const int32_t* sp = &sums[0, 0] if sums.size else NULL
    cdef bmx_conv_output result
    cdef int rc
    memset(&result, 0, sizeof(result))
    if out is not None:
        result_array = None  # the caller holds out
        if out.size == 0:
            return None
        result.nchw = &out[0, 0, 0, 0]
        result.batch_stride = out.strides[0] // sizeof(float)
        result.channel_stride = out.strides[1] // sizeof(float)
    elif sgn is None:
        result_array = np.empty((sh.batch, out_h, out_w, out_channels), dtype=np.int32)
        y = result_array
        if result_array.size == 0:
            return result_array
        result.y = &y[0, 0, 0, 0]
        result.ldy = out_channels
    else:
        result_array = np.empty((sh.batch, out_h, out_w, out_words), dtype=np.uint64)
        bits = result_array
        if result_array.size == 0:
            return result_array
        result.sgn = &sgn[0]
        result.thr = &thr[0]
        result.bits = &bits[0, 0, 0, 0]
        result.ldb = out_words
    with nogil:
        rc = bmx_xnor_conv(&sh, xp, pp, sp, &result, kernel, threads)
    _check(rc, "bmx_xnor_conv")
    return result_array


def max_pool(const float[:, :, :, :] x, float[:, :, :, :] out, kernel_hw, stride, pad,
             const float[::1] scale, const float[::1] shift, bint relu, int threads):
    """out (N, C, OH, OW) = MXNet's max pooling of x (N, C, H, W), then optionally * scale + shift
    per channel (each (C,) or None) and ReLU: see floatops.h. The (H, W) planes of x and the
    (OH, OW) planes of out must be contiguous; batch and channel strides are free."""
    cdef size_t kh, kw, sh, sw, ph, pw
    kh, kw = kernel_hw
    sh, sw = stride
    ph, pw = pad
    cdef int rc
    if out.size == 0:
        return
    cdef const float* xp = &x[0, 0, 0, 0] if x.size else NULL  # an empty x: windows of padding only
    cdef const float* scale_p = &scale[0] if scale is not None else NULL
    cdef const float* shift_p = &shift[0] if shift is not None else NULL
    with nogil:
        rc = bmx_max_pool(xp, x.shape[0], x.shape[1], x.shape[2], x.shape[3],
                          x.strides[0] // sizeof(float), x.strides[1] // sizeof(float),
                          &out[0, 0, 0, 0], out.shape[2], out.shape[3],
                          out.strides[0] // sizeof(float), out.strides[1] // sizeof(float),
                          kh, kw, sh, sw, ph, pw, scale_p, shift_p, relu, threads)
    _check(rc, "bmx_max_pool")


def conv_f32(const float[:, :, :, ::1] x, const float[:, :, ::1] wt, const float[::1] bias,
             float[:, :, :, :] out, kernel_hw, stride, pad, dilation, int kernel, int threads):
    """out (N, O, OH, OW) = the float convolution of x (N, C, H, W), see floatops.h: wt is
    (groups, C / groups * KH * KW, O / groups), the weight transposed per group; bias (O,) or None.
    The (OH, OW) planes of out must be contiguous; its batch and channel strides are free."""
    cdef size_t kh, kw, sh, sw, ph, pw, dh, dw
    kh, kw = kernel_hw
    sh, sw = stride
    ph, pw = pad
    dh, dw = dilation
    cdef size_t groups = wt.shape[0]
    cdef const float* bp = &bias[0] if bias is not None else NULL
    cdef int rc
    if out.size == 0:
        return
    with nogil:
        rc = bmx_conv_f32(&x[0, 0, 0, 0], x.shape[0], x.shape[1], x.shape[2], x.shape[3],
                          &wt[0, 0, 0], bp, groups, groups * wt.shape[2], kh, kw, sh, sw, ph, pw,
                          dh, dw, &out[0, 0, 0, 0], out.strides[0] // sizeof(float),
                          out.strides[1] // sizeof(float), kernel, threads)
    _check(rc, "bmx_conv_f32")


INT8_KERNELS = {"portable": BMX_INT8_PORTABLE, "avx2": BMX_INT8_AVX2, "avx512_vnni": BMX_INT8_VNNI}


def int8_kernel_available(int kernel):
    return bmx_int8_kernel_available(kernel) != 0


def best_int8_kernel():
    return bmx_int8_kernel_best()


def quantize_int8(const float[::1] x, float scale, int threads):
    """(n,) float32 -> ((n,) int8, whether some x was NaN): see int8ops.h."""
    result = np.empty(x.shape[0], dtype=np.int8)
    cdef int8_t[::1] q = result
    cdef int nan = 0
    if x.shape[0]:
        with nogil:
            nan = bmx_quantize_int8(&x[0], x.shape[0], scale, &q[0], threads)
    return result, nan != 0


def int8_pack(const int8_t[:, :, :, ::1] w, size_t groups, int kernel):
    """w (O, C / groups, KH, KW) packed for the int8 kernel `kernel` (uint8, see int8ops.h)."""
    cdef size_t o = w.shape[0], k = w.shape[1] * w.shape[2] * w.shape[3]
    packed = np.empty(bmx_int8_packed_bytes(kernel, o, groups, k), dtype=np.uint8)
    cdef unsigned char[::1] p = packed
    with nogil:
        bmx_int8_pack_weights(kernel, &w[0, 0, 0, 0], o, groups, k, &p[0])
    return packed


def int8_conv(const int8_t[:, :, :, ::1] x, const int8_t[:, :, :, ::1] w, size_t groups, stride,
              pad, dilation, const float[::1] scale, const float[::1] bias, bint per_column,
              int kernel, int threads, const unsigned char[::1] packed=None):
    """int8 convolution of x (N, C, H, W) with w (O, C / groups, KH, KW): int32 (N, O, OH, OW), or
    float32 ``acc * scale + bias`` with scale (and bias, or None) per channel, or with per_column
    per output pixel (see int8ops.h). ``packed``: int8_pack(w, groups, kernel), or None to pack
    here. Output extents must be positive."""
    cdef size_t sh, sw, ph, pw, dh, dw
    sh, sw = stride
    ph, pw = pad
    dh, dw = dilation
    cdef size_t kh = w.shape[2], kw = w.shape[3]
    cdef size_t oh = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    cdef size_t ow = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cdef bmx_int8_output out
    memset(&out, 0, sizeof(out))
    shape = (x.shape[0], w.shape[0], oh, ow)
    cdef int32_t[:, :, :, ::1] acc
    cdef float[:, :, :, ::1] y
    if scale is None:
        result = np.empty(shape, dtype=np.int32)
        acc = result
        if result.size:
            out.acc = &acc[0, 0, 0, 0]
    else:
        result = np.empty(shape, dtype=np.float32)
        y = result
        if result.size:
            out.y = &y[0, 0, 0, 0]
        out.scale = &scale[0]
        out.bias = &bias[0] if bias is not None else NULL
        out.per_column = per_column
    if result.size == 0:
        return result
    cdef const void* pp = &packed[0] if packed is not None else NULL
    cdef int rc
    with nogil:
        rc = bmx_int8_conv(&x[0, 0, 0, 0], x.shape[0], x.shape[1], x.shape[2], x.shape[3],
                           &w[0, 0, 0, 0], pp, w.shape[0], groups, kh, kw, sh, sw, ph, pw, dh, dw,
                           &out, kernel, threads)
    _check(rc, "bmx_int8_conv")
    return result

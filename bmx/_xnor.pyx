# cython: boundscheck=False, wraparound=False, cdivision=True
"""Bit kernels over bitops.h (see bmx/xnor.py for the validated, documented API).

Nothing here checks its arguments beyond what Cython's typed memoryviews do:
bmx.xnor is the only caller and validates shapes, dtypes and ranges first.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, uint64_t

cdef extern from "bitops.h" nogil:
    size_t bmx_words_for_bits(size_t n)
    void bmx_pack_rows(const float* x, size_t rows, size_t n, uint64_t* out, int kernel,
                       int threads)
    void bmx_pack_nchw(const float* x, size_t batch, size_t channels, size_t hw, size_t groups,
                       uint64_t* out, int kernel, int threads)

    int BMX_KERNEL_PORTABLE, BMX_KERNEL_AVX2, BMX_KERNEL_AVX512
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
    int bmx_xnor_conv(const bmx_conv_shape* sh, const uint64_t* x, const uint64_t* panels,
                      const int32_t* tap_sums, int32_t* out, size_t ldo, const int32_t* sgn,
                      const int32_t* thr, uint64_t* bits, size_t ldb, int kernel, int threads)
    int bmx_xnor_gemm(const uint64_t* a, size_t lda, const uint64_t* b_panels, size_t m,
                      size_t n, size_t kw, int32_t k_bits, int32_t* c, size_t ldc, int kernel,
                      int threads)

cnp.import_array()

KERNELS = {"portable": BMX_KERNEL_PORTABLE, "avx2": BMX_KERNEL_AVX2,
           "avx512": BMX_KERNEL_AVX512}


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


def pack_nchw(const float[:, :, :, ::1] x, size_t groups, int kernel, int threads):
    """(N, C, H, W) float32 -> (N, H, W, groups * ceil(C/groups/64)) uint64, packing along C.

    Each group of C/groups channels is packed on its own (starting on a word boundary).
    """
    cdef size_t n = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    out = np.empty((n, h, w, groups * bmx_words_for_bits(c // groups)), dtype=np.uint64)
    cdef uint64_t[:, :, :, ::1] o = out
    if out.size and c:
        with nogil:
            bmx_pack_nchw(&x[0, 0, 0, 0], n, c, h * w, groups, &o[0, 0, 0, 0], kernel, threads)
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
         const int32_t[::1] thr=None):
    """Binary convolution of packed NHWC x: int32 (N, OH, OW, O), or packed bits with sgn/thr.

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
    cdef int rc
    if sgn is None:
        result = np.empty((sh.batch, out_h, out_w, out_channels), dtype=np.int32)
        y = result
        if result.size == 0:
            return result
        with nogil:
            rc = bmx_xnor_conv(&sh, xp, pp, sp, &y[0, 0, 0, 0], out_channels, NULL, NULL, NULL,
                               0, kernel, threads)
    else:
        result = np.empty((sh.batch, out_h, out_w, out_words), dtype=np.uint64)
        bits = result
        if result.size == 0:
            return result
        with nogil:
            rc = bmx_xnor_conv(&sh, xp, pp, sp, NULL, 0, &sgn[0], &thr[0], &bits[0, 0, 0, 0],
                               out_words, kernel, threads)
    _check(rc, "bmx_xnor_conv")
    return result

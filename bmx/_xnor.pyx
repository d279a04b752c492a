# cython: boundscheck=False, wraparound=False, cdivision=True
"""Bit packing over bitops.h (see bmx/xnor.py for the validated, documented API)."""
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport uint64_t

cdef extern from "bitops.h" nogil:
    size_t bmx_words_for_bits(size_t n)
    void bmx_pack_row_f32(const float* src, size_t n, uint64_t* dst)
    void bmx_pack_strided_f32(const float* src, size_t n, size_t stride, uint64_t* dst)

cnp.import_array()


def words_for_bits(size_t n):
    return bmx_words_for_bits(n)


def pack_rows(const float[:, ::1] x):
    """(R, n) float32 -> (R, ceil(n/64)) uint64, packing each row."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], r
    cdef size_t words = bmx_words_for_bits(n)
    out = np.empty((rows, words), dtype=np.uint64)
    cdef uint64_t[:, ::1] o = out
    if rows == 0 or n == 0:
        return out
    for r in prange(rows, nogil=True, schedule="static"):
        bmx_pack_row_f32(&x[r, 0], n, &o[r, 0])
    return out


def pack_nchw(const float[:, :, :, ::1] x):
    """(N, C, H, W) float32 -> (N, H, W, ceil(C/64)) uint64, packing along C."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t pixel, pixels = n * h * w, b, hw = h * w, i
    cdef size_t words = bmx_words_for_bits(c)
    out = np.empty((n, h, w, words), dtype=np.uint64)
    cdef uint64_t[:, :, :, ::1] o = out
    if pixels == 0 or c == 0:
        return out
    for pixel in prange(pixels, nogil=True, schedule="static"):
        b = pixel // hw
        i = pixel % hw
        bmx_pack_strided_f32(&x[b, 0, 0, 0] + i, c, hw, &o[b, i // w, i % w, 0])
    return out

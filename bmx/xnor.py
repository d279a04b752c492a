"""Numpy-facing bit kernels (over bitops.h through the Cython module bmx._xnor).

Layout (bitops.h): value j of a packed axis of length n lives in bit j % 64 of uint64 word
j // 64; bit 1 means +1 (value >= 0), bit 0 means -1; bits past n are 0.
"""
import numpy as np

from . import _xnor

__all__ = ["pack", "pack_channels", "unpack", "words_for_bits"]


def words_for_bits(n):
    """Number of uint64 words that hold n packed values."""
    return _xnor.words_for_bits(int(n))


def _float32(x, name):
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype} (convert with .astype(np.float32))")
    return np.ascontiguousarray(x)


def pack(x):
    """Signs of a float32 array packed along its last axis: (..., n) -> (..., ceil(n/64)) uint64."""
    x = _float32(x, "pack: x")
    if x.ndim < 1:
        raise ValueError("pack: x must have at least one axis")
    rows = x.reshape(-1, x.shape[-1])
    return _xnor.pack_rows(rows).reshape(x.shape[:-1] + (words_for_bits(x.shape[-1]),))


def pack_channels(x):
    """Signs of an NCHW float32 tensor packed along C: (N, C, H, W) -> (N, H, W, ceil(C/64)) uint64."""
    x = _float32(x, "pack_channels: x")
    if x.ndim != 4:
        raise ValueError(f"pack_channels: x must be 4-D NCHW, got shape {x.shape}")
    return _xnor.pack_nchw(x)


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

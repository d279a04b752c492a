"""bmx's quantizers without mxnet: each setting's one default and one validator, and the forward math
of the k-bit quantizers in numpy.

Both towers read this module (numpy only): :mod:`bmx.config` (layer defaults), :mod:`bmx.quantizers`
(the MXNet functions) and ``example/train_imagenet.py`` take the defaults and validators from here;
:mod:`bmx.runtime` and :mod:`bmx.convert` compute the forward passes with the functions here. The
operator library (``bmx/_native/ops.cc``) states the same defaults and rules in C, and its forward
math is the C twin of the functions below; tests/test_quantizer_math.py holds both to one
reference.

Rounding: both k-bit quantizers round values v >= 0 half up, ``floor(v + 0.5)``, which for v >= 0
is rounding half away from zero (C's ``round``).
"""
import math
import numbers

import numpy as np

__all__ = ["CLIP_THRESHOLD", "KBIT_MIN", "KBIT_MAX", "check_clip_threshold", "check_kbit", "check_layer_bits",
           "levels", "round_half_up", "activation_codes", "quantize_activation", "dorefa_weight"]

CLIP_THRESHOLD = 1.0  # t_clip of det_sign's clipped straight-through estimator (the best published runs use 1.3)
KBIT_MIN, KBIT_MAX = 2, 8  # bits of the k-bit quantizers (1 bit is the sign)
_F32 = np.float32
_TINY = _F32(1e-12)  # floor of max|tanh(W)|, so that an all-zero weight does not divide by zero


def check_clip_threshold(value):
    """``value`` as a float if it is a real number, finite and >= 0; ValueError naming clip_threshold."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"clip_threshold must be >= 0 and finite, got {value!r}")
    return float(value)


def check_kbit(bits):
    """``bits`` as an int if it is an integer in KBIT_MIN..KBIT_MAX; ValueError naming bits."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not KBIT_MIN <= bits <= KBIT_MAX:
        raise ValueError(f"bits must be an integer in {KBIT_MIN}..{KBIT_MAX} for a k-bit quantizer, got {bits!r}")
    return int(bits)


def check_layer_bits(bits, name):
    """A layer's weight or activation bits: 1 (the sign) or a k-bit width; ValueError naming ``name``."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 1 <= bits <= KBIT_MAX:
        raise ValueError(f"{name} must be an integer in 1..{KBIT_MAX}, got {bits!r}")
    return int(bits)


def levels(bits):
    """2^k - 1, the number of steps of a k-bit quantizer, as float32."""
    return _F32(2 ** check_kbit(bits) - 1)


def round_half_up(v):
    """floor(v + 0.5), in float64 (exact for float32 v), as an array of v's dtype."""
    v = np.asarray(v)
    return np.floor(v.astype(np.float64) + 0.5).astype(v.dtype)


def activation_codes(x, bits):
    """The integer level (0 .. 2^k - 1, as float32) the k-bit activation quantizer gives x."""
    return round_half_up(np.clip(np.asarray(x, _F32), _F32(0), _F32(1)) * levels(bits))


def quantize_activation(x, bits):
    """Forward of ``bmx.quantizers.quantize_activation`` in float32:
    round((2^k - 1) clip(x, 0, 1)) / (2^k - 1)."""
    return activation_codes(x, bits) / levels(bits)


def dorefa_weight(w, bits):
    """Forward of ``bmx.quantizers.dorefa_weight`` in float32 over the whole tensor:
    u = tanh(w) / (2 max|tanh(w)|) + 1/2, then 2 round((2^k - 1) u) / (2^k - 1) - 1."""
    t = np.tanh(np.asarray(w, _F32))
    two_m = _F32(2) * max(_F32(np.abs(t).max(initial=0)), _TINY)
    step = levels(bits)
    return _F32(2) * (round_half_up((t / two_m + _F32(0.5)) * step) / step) - _F32(1)

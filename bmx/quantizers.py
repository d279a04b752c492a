"""Quantizer functions for NDArray and Symbol inputs (usable inside ``hybrid_forward``).

Each quantizer has two implementations with identical math:

* ``native``: one fused, multi-threaded operator from bmx's operator library (CPU).
* ``composite``: the same forward and backward built from stock MXNet operators, so that
  it runs on any context MXNet supports, GPUs included. The straight-through estimators
  use the exact form ``q + (g - BlockGrad(g))``: the forward value is ``q`` bit for bit
  (``g - g`` is exactly 0) and the gradient is that of ``g``.

The backend is chosen per call (see :func:`set_backend`). ``auto`` picks ``native`` for
NDArrays on the CPU and ``composite`` for NDArrays on other devices; for Symbols (graphs
being built, the device not yet known) it picks ``native`` unless MXNet sees a GPU.

Sign convention everywhere: ``sign(x) = +1 if x >= 0 else -1`` (``sign(0) = +1``), unlike
``mx.nd.sign``.
"""
import contextlib
import threading

import mxnet as mx

from . import _library
from .quantizer_math import CLIP_THRESHOLD, check_clip_threshold, check_kbit

# The native backend calls the operator library's ops: whoever imports the quantizers (the layers,
# the models) can use them.
_library.load()

__all__ = ["det_sign", "approx_sign", "weight_sign", "quantize_activation", "dorefa_weight",
           "set_backend", "get_backend", "use_backend", "BACKENDS"]

BACKENDS = ("auto", "native", "composite")
_state = threading.local()
_gpu_count = None


def set_backend(name):
    """Selects the implementation for this thread: ``'auto'`` (default), ``'native'`` or ``'composite'``."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _state.backend = name


def get_backend():
    return getattr(_state, "backend", "auto")


@contextlib.contextmanager
def use_backend(name):
    """Context manager form of :func:`set_backend`; restores the previous backend on exit."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _gpus_visible():
    global _gpu_count
    if _gpu_count is None:
        _gpu_count = mx.context.num_gpus()
    return _gpu_count > 0


def _module_and_backend(x):
    """Returns (F, backend) for input x, where F is mx.nd or mx.sym."""
    if isinstance(x, mx.nd.NDArray):
        F, native_ok = mx.nd, x.context.device_type == "cpu"
    elif isinstance(x, mx.sym.Symbol):
        F, native_ok = mx.sym, not _gpus_visible()
    else:
        raise TypeError(f"quantizers take an mxnet NDArray or Symbol, got {type(x).__name__}")
    backend = get_backend()
    if backend == "auto":
        backend = "native" if native_ok else "composite"
    return F, backend


def _straight_through(F, value, surrogate):
    """Forward: value exactly. Backward: the gradient of surrogate."""
    return value + (surrogate - F.BlockGrad(surrogate))


def _sign_value(x):
    return 2 * (x >= 0) - 1


def _inside(F, x, mask):
    """x where mask holds, else 0, with gradient mask. Unlike x * mask, it is 0 (not NaN) for
    x = +-inf or NaN outside the mask, so the straight-through value stays exact there too."""
    return F.where(mask, x, F.zeros_like(x))


def det_sign(x, clip_threshold=CLIP_THRESHOLD, zero_one=False):
    r"""Deterministic sign with the clipped straight-through estimator (activations).

    Forward:  :math:`q(x) = +1` if :math:`x \ge 0` else :math:`-1`.

    Backward: :math:`\partial q / \partial x = 1_{|x| \le t_{clip}}` (inclusive at the threshold).

    Args:
        x: NDArray or Symbol, float32 or float16, any shape.
        clip_threshold: :math:`t_{clip} \ge 0`; the published BinaryDenseNets use 1.0 or 1.3.
        zero_one: return the same sign encoded as :math:`b = (q + 1) / 2 \in \{0, 1\}`, with
            gradient :math:`\tfrac12 1_{|x| \le t_{clip}}`. A convolution that must pad its
            :math:`\pm 1` input with -1 can then pad ``b`` with zeros natively (see
            :class:`bmx.nn.QConv2D`'s ``input_zero_one``).

    Returns:
        Same type, shape and dtype as x, entries in {-1, +1} (or {0, 1}).
    """
    F, backend = _module_and_backend(x)
    clip_threshold = check_clip_threshold(clip_threshold)
    if backend == "native":
        return F.bmx_det_sign(x, clip_threshold=clip_threshold, zero_one=int(bool(zero_one)))
    passed = _inside(F, x, F.abs(x) <= clip_threshold)
    if zero_one:
        return _straight_through(F, x >= 0, 0.5 * passed)
    return _straight_through(F, _sign_value(x), passed)


def approx_sign(x, zero_one=False):
    r"""Sign with the ApproxSign (Bi-Real Net) gradient.

    Forward:  :math:`q(x) = +1` if :math:`x \ge 0` else :math:`-1`.

    Backward: :math:`\partial q / \partial x = 2 - 2|x|` for :math:`|x| \le 1`, else 0.

    Args and returns as in :func:`det_sign` (no threshold; ``zero_one`` halves the gradient).
    """
    F, backend = _module_and_backend(x)
    if backend == "native":
        return F.bmx_approx_sign(x, zero_one=int(bool(zero_one)))
    # c (2 - |c|) with c = clip(x, -1, 1) has derivative 2 - 2|x| inside and 0 outside.
    c = _inside(F, F.clip(x, -1, 1), F.abs(x) <= 1)
    surrogate = c * (2 - F.abs(c))
    if zero_one:
        return _straight_through(F, x >= 0, 0.5 * surrogate)
    return _straight_through(F, _sign_value(x), surrogate)


def weight_sign(x):
    r"""Sign of latent weights with the identity straight-through estimator.

    Forward:  :math:`q(w) = +1` if :math:`w \ge 0` else :math:`-1`.

    Backward: :math:`\partial q / \partial w = 1` everywhere: the optimizer keeps updating
    the latent float weights, whose sign is the binary weight.

    Args:
        x: NDArray or Symbol of latent weights, any shape.

    Returns:
        Same shape and dtype, entries in {-1, +1}.
    """
    F, backend = _module_and_backend(x)
    if backend == "native":
        return F.bmx_weight_sign(x)
    return _straight_through(F, _sign_value(x), x)


def quantize_activation(x, bits):
    r"""k-bit uniform quantizer for activations (DoReFa), 2 <= k <= 8.

    Forward:  :math:`q(x) = \mathrm{round}((2^k - 1)\, \mathrm{clip}(x, 0, 1)) / (2^k - 1)`,
    rounding halves away from zero.

    Backward: straight through the rounding, not through the clip:
    :math:`\partial q / \partial x = 1_{0 \le x \le 1}`.

    Args:
        x: NDArray or Symbol, any shape.
        bits: k.

    Returns:
        Same shape and dtype, values in {0, 1/(2^k-1), ..., 1}.
    """
    F, backend = _module_and_backend(x)
    bits = check_kbit(bits)
    if backend == "native":
        return F.bmx_quantize_act(x, bits=bits)
    levels = float(2 ** bits - 1)
    clipped = F.clip(x, 0, 1)
    value = F.round(clipped * levels) / levels
    return _straight_through(F, value, _inside(F, x, (x >= 0) * (x <= 1)))


def dorefa_weight(x, bits):
    r"""DoReFa k-bit weight quantizer, 2 <= k <= 8.

    Forward, with :math:`m = \max_i |\tanh(w_i)|` over the whole tensor (floored at 1e-12):

    .. math::
        u = \frac{\tanh(w)}{2m} + \frac12,\qquad
        q(w) = 2\,\frac{\mathrm{round}((2^k - 1)\,u)}{2^k - 1} - 1 \in [-1, 1].

    Backward: straight through the rounding, with :math:`m` treated as a constant:
    :math:`\partial q / \partial w = (1 - \tanh^2(w)) / m`.

    Args:
        x: NDArray or Symbol of latent weights, any shape.
        bits: k.

    Returns:
        Same shape and dtype, values in {-1, -1 + 2/(2^k-1), ..., 1}.
    """
    F, backend = _module_and_backend(x)
    bits = check_kbit(bits)
    if backend == "native":
        return F.bmx_quantize_weight(x, bits=bits)
    levels = float(2 ** bits - 1)
    t = F.tanh(x)
    two_m = 2 * F.maximum(F.BlockGrad(F.max(F.abs(t))), 1e-12)
    # Adding zeros_like(t) changes no value but lets shape inference run from u back to x, which
    # a broadcast alone does not (layers with deferred in_channels need that).
    u = F.elemwise_add(F.broadcast_div(t, two_m), F.zeros_like(t)) + 0.5
    value = 2 * (F.round(u * levels) / levels) - 1
    return _straight_through(F, value, 2 * u)

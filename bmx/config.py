"""The binary layer configuration context.

``with bmx.binary_layer_config(bits=1, bits_a=1, clip_threshold=1.3):`` sets the defaults that
binary layers read *when they are constructed*; arguments given to a layer override them.
Contexts nest (inner values override outer ones) and are per thread.

Fields:
    bits: weight bits, 1 (sign) or 2..8 (DoReFa).
    bits_a: activation bits, 1 (sign) or 2..8 (uniform k-bit).
    clip_threshold: t_clip of the clipped straight-through estimator (``det_sign`` only), finite,
        >= 0, default 1.0.

Each quantizer setting's default and validator are :mod:`bmx.quantizer_math`'s; this module adds
the rules of their combinations.
    activation: ``'det_sign'`` or ``'approx_sign'`` for 1-bit activations, ``'round'`` for k-bit;
        None picks the default for ``bits_a``.
    weight_quantization: ``'det_sign'`` for 1-bit weights, ``'dorefa'`` for k-bit;
        None picks the default for ``bits``.
    pad_value: value a binary convolution pads its input with: -1 (as BMXNet-v2 trained the
        published models; keeps the border inside {-1, +1}) or 0.
    apply_scaling: multiply each output channel by the mean |W| of its latent weights.

An invalid combination (e.g. ``bits_a=2, activation='approx_sign'``) raises ValueError; nothing is
silently replaced.
"""
import contextlib
import dataclasses
import threading

from .quantizer_math import CLIP_THRESHOLD, check_clip_threshold, check_layer_bits

__all__ = ["BinaryLayerConfig", "binary_layer_config", "current_config", "resolve"]

ACTIVATIONS_1BIT = ("det_sign", "approx_sign")
ACTIVATIONS_KBIT = ("round",)
WEIGHT_QUANTIZATIONS_1BIT = ("det_sign",)
WEIGHT_QUANTIZATIONS_KBIT = ("dorefa",)


@dataclasses.dataclass(frozen=True)
class BinaryLayerConfig:
    bits: int = 1
    bits_a: int = 1
    clip_threshold: float = CLIP_THRESHOLD
    activation: str = None
    weight_quantization: str = None
    pad_value: float = -1
    apply_scaling: bool = False

    def __post_init__(self):
        for name in ("bits", "bits_a"):
            check_layer_bits(getattr(self, name), name)
        check_clip_threshold(self.clip_threshold)
        for field, (bits_field, one_bit, k_bit) in _DERIVED.items():
            self._choose(field, one_bit if getattr(self, bits_field) == 1 else k_bit, bits_field)
        if isinstance(self.pad_value, bool) or self.pad_value not in (-1, 0):
            raise ValueError(f"pad_value must be -1 or 0, got {self.pad_value!r}")
        if not isinstance(self.apply_scaling, bool):
            raise ValueError(f"apply_scaling must be True or False, got {self.apply_scaling!r}")

    def _choose(self, field, allowed, bits_field):
        """Set ``field`` to its first allowed value when None; reject a value that does not fit the
        bit width ``bits_field``."""
        value = getattr(self, field)
        if value is None:
            object.__setattr__(self, field, allowed[0])
        elif value not in allowed:
            raise ValueError(f"{field} {value!r} does not fit {bits_field}={getattr(self, bits_field)}; "
                             f"choose one of {allowed}")


_FIELDS = tuple(f.name for f in dataclasses.fields(BinaryLayerConfig))
# A method not given alongside new bits is inherited if it fits them, else re-derived from them.
_DERIVED = {"activation": ("bits_a", ACTIVATIONS_1BIT, ACTIVATIONS_KBIT),
            "weight_quantization": ("bits", WEIGHT_QUANTIZATIONS_1BIT, WEIGHT_QUANTIZATIONS_KBIT)}
_state = threading.local()


def current_config():
    """The configuration in force on this thread."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else BinaryLayerConfig()


def resolve(**overrides):
    """The current configuration with the non-None overrides applied (validated)."""
    base = current_config()
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - set(_FIELDS)
    if unknown:
        raise TypeError(f"unknown binary layer option(s): {sorted(unknown)}; known: {list(_FIELDS)}")
    merged = dataclasses.asdict(base)
    for method, (bits_field, one_bit, k_bit) in _DERIVED.items():
        if bits_field in given and method not in given:
            fitting = one_bit if given[bits_field] == 1 else k_bit
            if merged[method] not in fitting:
                merged[method] = None
    merged.update(given)
    return BinaryLayerConfig(**merged)


@contextlib.contextmanager
def binary_layer_config(**options):
    """Sets binary layer defaults for layers constructed inside the ``with`` block."""
    config = resolve(**options)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(config)
    try:
        yield config
    finally:
        stack.pop()

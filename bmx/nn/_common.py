"""Pieces shared by the quantized layers."""
import re

import mxnet as mx

from .. import quantizers
from ..config import BinaryLayerConfig, resolve


def layer_config(block, config, aliases=None, **options):
    """The layer's configuration: ``config`` as it is, if given (a BinaryLayerConfig that a layer
    made of layers resolved and validated once for all its parts), else :func:`resolve_for`."""
    if config is None:
        return resolve_for(block, aliases, **options)
    if not isinstance(config, BinaryLayerConfig):
        raise TypeError(f"{type(block).__name__} '{block.name}': config must be a BinaryLayerConfig, "
                        f"got {type(config).__name__}")
    given = sorted((aliases or {}).get(k, k) for k, v in options.items() if v is not None)
    if given:
        raise TypeError(f"{type(block).__name__} '{block.name}': pass config or {', '.join(given)}, not both")
    return config


def resolve_for(block, aliases=None, **options):
    """resolve() whose ValueError names the layer being built.

    ``aliases`` maps config field names to the layer's own argument names (QActivation calls
    ``bits_a`` ``bits``), so that the message names what the user actually passed.
    """
    try:
        return resolve(**options)
    except ValueError as err:
        message = str(err)
        for field, argument in (aliases or {}).items():
            message = re.sub(rf"\b{field}\b", argument, message)
        raise ValueError(f"{type(block).__name__} '{block.name}': {message}") from None


def quantize_weight(weight, config, parameter=None):
    """The weight the layer computes with: sign(W) for 1 bit, DoReFa for k bits.

    While ``parameter``'s shape is still partly unknown (deferred ``in_channels``/``in_units``),
    a Symbol weight is quantized with the stock-operator (composite) implementation, which
    computes the same values: MXNet 1.9 cannot infer shapes through a library operator (it hands
    the op an unknown dimension as 4294967295 and cannot infer the op's input from its output),
    so the native op would make deferred shape inference, and ``bmx.export(input_shape=...)``,
    fail.
    """
    if parameter is not None and isinstance(weight, mx.sym.Symbol) and not _shape_known(parameter):
        with quantizers.use_backend("composite"):
            return quantize_weight(weight, config)
    if config.bits == 1:
        return quantizers.weight_sign(weight)
    return quantizers.dorefa_weight(weight, config.bits)


def _shape_known(parameter):
    shape = parameter.shape
    return shape is not None and len(shape) > 0 and all(d > 0 for d in shape)


def scale_by_weight_magnitude(F, y, weight, channel_axis_shape):
    """y * mean|W| of each output unit (XNOR-Net scaling; gradients flow into the scale too)."""
    axes = tuple(range(1, len(channel_axis_shape)))
    alpha = F.mean(F.abs(weight), axis=axes) if axes else F.abs(weight)
    return F.broadcast_mul(y, alpha.reshape(channel_axis_shape))


def is_ndarray(x):
    return isinstance(x, mx.nd.NDArray)


def weight_parameter(block, shape, config, initializer):
    """The latent float weight; never decayed when it is binarized (1 bit)."""
    return block.params.get("weight", shape=shape, init=initializer, allow_deferred_init=True,
                            wd_mult=0.0 if config.bits == 1 else 1.0)

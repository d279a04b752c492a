"""Pieces shared by the quantized layers."""
import mxnet as mx

from .. import quantizers
from ..config import resolve


def resolve_for(block, **options):
    """resolve() whose ValueError names the layer being built."""
    try:
        return resolve(**options)
    except ValueError as err:
        raise ValueError(f"{type(block).__name__} '{block.name}': {err}") from None


def quantize_weight(weight, config):
    """The weight the layer computes with: sign(W) for 1 bit, DoReFa for k bits."""
    if config.bits == 1:
        return quantizers.weight_sign(weight)
    return quantizers.dorefa_weight(weight, config.bits)


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

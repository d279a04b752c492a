"""Building blocks shared by the model families: stems, heads, transitions, pre-activated convs.

Every block here is built with its input channel count so that all parameter shapes are known at
construction (``bmx.export`` then needs no forward pass).
"""
from mxnet.gluon import nn

from ..nn import BinaryConvolution

__all__ = ["STEMS", "DOWNSAMPLE_TOKENS", "make_stem", "make_head", "activated_conv", "make_transition",
           "check_stages"]

STEMS = ("imagenet", "grouped", "cifar", "thumbnail")
DOWNSAMPLE_TOKENS = ("bn", "relu", "max_pool", "avg_pool", "fp_conv", "bin_conv")


def make_stem(kind, features, in_channels=3):
    """The full-precision first layers.

    Args:
        kind: ``'imagenet'``: conv 7x7/2 -> BN -> ReLU -> max pool 3x3/2 (224 -> 56).
            ``'grouped'``: conv 3x3/2 (features/2) -> BN -> ReLU -> conv 3x3 groups=4 (features/2)
            -> BN -> ReLU -> conv 3x3 groups=8 (features) -> BN -> ReLU -> max pool 3x3/2
            (224 -> 56; about 40% of the 7x7 stem's MACs).
            ``'cifar'``: conv 3x3/2 -> BN -> ReLU (32 -> 16): cheap enough to train on a CPU.
            ``'thumbnail'``: conv 3x3/1 -> BN -> ReLU (32 -> 32), the usual full-resolution
            CIFAR stem, about 4x the compute of ``'cifar'`` in every later layer.
        features: output channels (the family's ``init_features``).
        in_channels: image channels.

    Returns:
        (HybridSequential, output channels).
    """
    stem = nn.HybridSequential(prefix="stem_")
    with stem.name_scope():
        if kind == "imagenet":
            stem.add(nn.Conv2D(features, 7, strides=2, padding=3, use_bias=False, in_channels=in_channels))
            _bn_relu(stem, features)
            stem.add(nn.MaxPool2D(3, strides=2, padding=1))
        elif kind == "grouped":
            if features % 16:
                raise ValueError(f"the grouped stem needs init_features divisible by 16, got {features}")
            half = features // 2
            stem.add(nn.Conv2D(half, 3, strides=2, padding=1, use_bias=False, in_channels=in_channels))
            _bn_relu(stem, half)
            stem.add(nn.Conv2D(half, 3, padding=1, groups=4, use_bias=False, in_channels=half))
            _bn_relu(stem, half)
            stem.add(nn.Conv2D(features, 3, padding=1, groups=8, use_bias=False, in_channels=half))
            _bn_relu(stem, features)
            stem.add(nn.MaxPool2D(3, strides=2, padding=1))
        elif kind in ("cifar", "thumbnail"):
            stride = 2 if kind == "cifar" else 1
            stem.add(nn.Conv2D(features, 3, strides=stride, padding=1, use_bias=False, in_channels=in_channels))
            _bn_relu(stem, features)
        else:
            raise ValueError(f"unknown stem {kind!r}; choose one of {STEMS}")
    return stem, features


def _bn_relu(seq, channels):
    seq.add(nn.BatchNorm(in_channels=channels))
    seq.add(nn.Activation("relu"))


def make_head(in_channels, classes, bn=True):
    """[BN ->] ReLU -> global average pool -> Dense(classes) with bias, all full precision.

    Returns (features part as a HybridSequential, the Dense layer).
    """
    head = nn.HybridSequential(prefix="head_")
    with head.name_scope():
        if bn:
            head.add(nn.BatchNorm(in_channels=in_channels))
        head.add(nn.Activation("relu"))
        head.add(nn.GlobalAvgPool2D())
        head.add(nn.Flatten())
    output = nn.Dense(classes, in_units=in_channels, prefix="output_")
    return head, output


def activated_conv(channels, in_channels, kernel_size, strides=1, padding=0, dilation=1, binary=True,
                   clip_threshold=None, prefix=None):
    """A pre-activated convolution: sign -> binary conv, or its full-precision twin ReLU -> conv.

    The binary version is :class:`bmx.nn.BinaryConvolution` (quantization options other than
    ``clip_threshold`` come from :func:`bmx.binary_layer_config`; it pads with -1 by default).
    The twin swaps the sign for a ReLU (the nonlinearity a float pre-activation network has in that
    place) and the binary conv for a plain bias-free ``nn.Conv2D`` with zero padding, so both
    have the same graph and parameter shapes.
    """
    if binary:
        return BinaryConvolution(channels, kernel_size, strides=strides, padding=padding, dilation=dilation,
                                 in_channels=in_channels, clip_threshold=clip_threshold, prefix=prefix)
    seq = nn.HybridSequential(prefix=prefix)
    with seq.name_scope():
        seq.add(nn.Activation("relu"))
        seq.add(nn.Conv2D(channels, kernel_size, strides=strides, padding=padding, dilation=dilation,
                          use_bias=False, in_channels=in_channels))
    return seq


def make_transition(structure, in_channels, out_channels, pool=True, binary=True, clip_threshold=None,
                    ceil_mode=False, prefix=None):
    """A downsampling block described by a comma-separated ``structure`` string.

    Tokens, applied in order: ``bn`` (BatchNorm), ``relu``, ``max_pool`` / ``avg_pool`` (2x2,
    stride 2; dropped when ``pool`` is False, as before a dilated stage), ``fp_conv`` (full-precision
    bias-free 1x1 conv to ``out_channels``), ``bin_conv`` (binary 1x1 conv to ``out_channels``:
    sign -> binary conv, or ReLU -> conv in the float twin). At most one conv token; without one,
    ``out_channels`` must equal ``in_channels``. ``ceil_mode`` rounds odd pooled sizes up so that
    a pooled shortcut matches a stride-2 3x3 conv.

    Examples: ``'bn,max_pool,relu,fp_conv'`` (BinaryDenseNet), ``'bn,bin_conv,avg_pool'`` (the
    poster's binary transitions), ``'avg_pool,fp_conv,bn'`` (ResNetE shortcut).
    """
    tokens = [t.strip() for t in structure.split(",") if t.strip()]
    unknown = [t for t in tokens if t not in DOWNSAMPLE_TOKENS]
    if unknown:
        raise ValueError(f"unknown downsampling token(s) {unknown} in {structure!r}; known: {DOWNSAMPLE_TOKENS}")
    convs = [t for t in tokens if t.endswith("_conv")]
    if len(convs) > 1:
        raise ValueError(f"downsampling structure {structure!r} has {len(convs)} convs; at most one is allowed")
    if not convs and in_channels != out_channels:
        raise ValueError(f"downsampling structure {structure!r} has no conv, so it cannot change "
                         f"{in_channels} channels to {out_channels}")
    seq = nn.HybridSequential(prefix=prefix)
    channels = in_channels
    with seq.name_scope():
        for token in tokens:
            if token == "bn":
                seq.add(nn.BatchNorm(in_channels=channels))
            elif token == "relu":
                seq.add(nn.Activation("relu"))
            elif token in ("max_pool", "avg_pool"):
                if not pool:
                    continue
                if token == "max_pool":
                    seq.add(nn.MaxPool2D(2, strides=2, ceil_mode=ceil_mode))
                else:
                    seq.add(nn.AvgPool2D(2, strides=2, ceil_mode=ceil_mode, count_include_pad=False))
            elif token == "fp_conv":
                seq.add(nn.Conv2D(out_channels, 1, use_bias=False, in_channels=channels))
                channels = out_channels
            else:
                seq.add(activated_conv(out_channels, channels, 1, binary=binary, clip_threshold=clip_threshold))
                channels = out_channels
    return seq


def check_stages(name, layers, per_stage):
    """Validates ``layers`` (positive ints) and per-stage sequences; returns them as tuples."""
    layers = tuple(layers)
    if not layers or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in layers):
        raise ValueError(f"{name}: layers must be a non-empty sequence of positive ints, got {layers!r}")
    checked = {}
    for key, (value, expected) in per_stage.items():
        value = tuple(value)
        if len(value) != expected:
            raise ValueError(f"{name}: {key} needs {expected} values for {len(layers)} stages, got {value!r}")
        checked[key] = value
    return layers, checked

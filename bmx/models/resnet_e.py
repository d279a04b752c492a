"""ResNetE (Bethge et al.): a binary ResNet in which every 3x3 conv has its own shortcut."""
from mxnet.gluon import HybridBlock, nn

from .common import activated_conv, check_stages, make_head, make_stem, make_transition

__all__ = ["BinaryResNetE", "ResidualUnit", "SPECS"]


class ResidualUnit(HybridBlock):
    """``shortcut(x) + BN(binary_conv3x3(sign(x)))``.

    The shortcut is the identity, or, when the unit changes resolution or width, the
    ``downsample`` structure (default AvgPool 2x2 -> full-precision 1x1 conv -> BN; pooling only
    when ``strides`` is 2).
    """

    def __init__(self, in_channels, channels, strides=1, downsample="avg_pool,fp_conv,bn", binary=True,
                 clip_threshold=None, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = activated_conv(channels, in_channels, 3, strides=strides, padding=1, binary=binary,
                                       clip_threshold=clip_threshold, prefix="conv_")
            self.bn = nn.BatchNorm(in_channels=channels, prefix="bn_")
            self.shortcut = None
            if strides != 1 or in_channels != channels:
                self.shortcut = make_transition(downsample, in_channels, channels, pool=strides != 1,
                                                binary=binary, clip_threshold=clip_threshold, ceil_mode=True,
                                                prefix="shortcut_")

    def hybrid_forward(self, F, x):
        residual = self.bn(self.conv(x))
        return (self.shortcut(x) if self.shortcut is not None else x) + residual


class BinaryResNetE(HybridBlock):
    r"""ResNetE: ResNet-18/34 with one shortcut per binary 3x3 conv and full-precision downsampling.

    Layout (ImageNet, 224x224 -> 7x7)::

        stem (full precision, init_features channels at 56x56)
        stage i: layers[i] x ResidualUnit at channels[i]; the first unit of stages 2.. has stride 2
        head: ReLU -> global avg pool -> Dense(classes)

    A :class:`ResidualUnit` is ``x + BN(binary_conv3x3(sign(x)))``; a basic block of ResNet
    (two convs, one shortcut) becomes two units, so the full-precision input of every binary conv
    is carried past it instead of being lost in the sign. The head has no BatchNorm: every unit already ends in one
    (this also reproduces the published 4.00 MB and 44.59 MB full-precision size of ResNetE-18).

    Args:
        layers: binary 3x3 convs (units) per stage: (4, 4, 4, 4) is ResNetE-18, (6, 8, 12, 6) -34.
        channels: width of each stage.
        init_features: channels of the stem.
        downsample: structure of the shortcut of a downsampling unit (tokens of
            :func:`bmx.models.common.make_transition`); ``'avg_pool,bin_conv,bn'`` gives the
            binary shortcut of the ablation.
        stem, classes, binary, clip_threshold: as in :class:`bmx.models.BinaryDenseNet`
            (``binary=False``: ReLU in place of the sign, plain convs).

    Input: (N, 3, H, W). Output: (N, classes) logits.
    """

    def __init__(self, layers=(4, 4, 4, 4), channels=(64, 128, 256, 512), init_features=64,
                 downsample="avg_pool,fp_conv,bn", stem="imagenet", classes=1000, binary=True,
                 clip_threshold=None, **kwargs):
        super().__init__(**kwargs)
        layers, checked = check_stages(type(self).__name__, layers, {"channels": (channels, len(tuple(layers)))})
        self.stage_channels = list(checked["channels"])
        with self.name_scope():
            self.features = nn.HybridSequential(prefix="")
            with self.features.name_scope():
                stem_block, width = make_stem(stem, init_features)
                self.features.add(stem_block)
                for i, (count, out) in enumerate(zip(layers, self.stage_channels)):
                    stage = nn.HybridSequential(prefix=f"stage{i + 1}_")
                    with stage.name_scope():
                        for j in range(count):
                            stage.add(ResidualUnit(width, out, strides=2 if i and not j else 1,
                                                   downsample=downsample, binary=binary,
                                                   clip_threshold=clip_threshold, prefix=f"unit{j}_"))
                            width = out
                    self.features.add(stage)
                head, self.output = make_head(width, classes, bn=False)
                self.features.add(head)
        self.num_features = width

    def hybrid_forward(self, F, x):
        return self.output(self.features(x))


# name -> BinaryResNetE arguments.
SPECS = {
    "binary_resnet_e18": dict(layers=(4, 4, 4, 4)),
    "binary_resnet_e34": dict(layers=(6, 8, 12, 6)),
}

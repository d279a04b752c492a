"""BinaryDenseNet (Bethge et al.), its dilated variant and the poster's ablation networks."""
from mxnet.gluon import HybridBlock, nn

from .common import activated_conv, check_stages, make_head, make_stem, make_transition

__all__ = ["BinaryDenseNet", "DenseLayer", "transition_width", "SPECS"]


def transition_width(channels, reduction):
    """Channels after a transition: ``round(channels / reduction / 32) * 32``.

    ``round`` is Python's (halves go to the even multiple), as in the implementation the published
    models were trained with; the poster's full-precision-downsampling rows depend on it
    (416 / 2 = 208 -> 192, not 224).
    """
    width = round(channels / reduction / 32) * 32
    if width < 32:
        raise ValueError(f"reduction {reduction} leaves {channels} channels with fewer than 32")
    return width


class DenseLayer(HybridBlock):
    """BN -> sign -> binary 3x3 conv to ``growth_rate`` channels, concatenated to the input.

    By default there is no bottleneck: a binary 1x1 bottleneck squeezes the features through few
    binary channels, which costs accuracy (the paper's ablation). ``bottleneck=k`` (k >= 1) adds
    one anyway, as in DenseNet-BC, for that ablation: BN -> sign -> binary 1x1 conv to
    ``k * growth_rate`` channels, then BN -> sign -> binary 3x3 conv (ReLU and float convs in the
    twin). Output channels: ``in_channels + growth_rate``.
    """

    def __init__(self, in_channels, growth_rate, dilation=1, binary=True, clip_threshold=None, bottleneck=0,
                 **kwargs):
        super().__init__(**kwargs)
        if isinstance(bottleneck, bool) or not isinstance(bottleneck, int) or bottleneck < 0:
            raise ValueError(f"DenseLayer '{self.prefix}': bottleneck must be an int >= 0 (0: none), "
                             f"got {bottleneck!r}")
        options = dict(binary=binary, clip_threshold=clip_threshold)
        with self.name_scope():
            self.bn = nn.BatchNorm(in_channels=in_channels, prefix="bn_")
            self.bottleneck = None
            conv_in = in_channels
            if bottleneck:
                conv_in = bottleneck * growth_rate
                self.bottleneck = nn.HybridSequential(prefix="")
                self.bottleneck.add(activated_conv(conv_in, in_channels, 1, prefix="bottleneck_", **options))
                self.bottleneck.add(nn.BatchNorm(in_channels=conv_in, prefix="bottleneck_bn_"))
            self.conv = activated_conv(growth_rate, conv_in, 3, padding=dilation, dilation=dilation,
                                       prefix="conv_", **options)

    def hybrid_forward(self, F, x):
        y = self.bn(x)
        if self.bottleneck is not None:
            y = self.bottleneck(y)
        return F.concat(x, self.conv(y), dim=1)


class BinaryDenseNet(HybridBlock):
    r"""BinaryDenseNet: a DenseNet without bottlenecks whose 3x3 convs are binary.

    Layout (ImageNet, 224x224 -> 7x7)::

        stem (full precision, 64 channels at 56x56)
        stage 1: layers[0] x DenseLayer     each adds growth_rate channels
        transition 1                         default BN -> MaxPool 2x2 -> ReLU -> fp 1x1 conv
        ... stages 2..n, a transition between consecutive stages
        head: BN -> ReLU -> global avg pool -> Dense(classes)

    A DenseLayer is BN -> sign -> binary 3x3 conv (``growth_rate`` channels, padded with -1),
    concatenated to its input. The first conv, the transitions' 1x1 convs (unless the structure
    asks for ``bin_conv``), BatchNorm and the last Dense stay full precision.

    Args:
        layers: dense layers per stage, e.g. (6, 6, 6, 5) for BinaryDenseNet-28.
        growth_rate: channels each dense layer adds.
        init_features: channels of the stem.
        reduction: per transition, the factor r in ``round(C / r / 32) * 32`` output channels
            (see :func:`transition_width`).
        transition_channels: per transition, the exact output channels (instead of ``reduction``).
        downsample: transition structure (tokens of :func:`bmx.models.common.make_transition`).
        dilation: per stage dilation of the 3x3 convs (default all 1). A transition before a stage
            with dilation > 1 does not pool, so the resolution stays (the dilated variant ends at
            28x28 instead of 7x7).
        stem: ``'imagenet'``, ``'grouped'``, ``'cifar'`` or ``'thumbnail'`` (:func:`make_stem`).
        classes: outputs of the last Dense.
        binary: False builds the full-precision twin: the same graph and parameter shapes with
            ReLU in place of every sign and plain zero-padded convs in place of binary ones, i.e. a
            standard pre-activation (BN -> ReLU -> conv) DenseNet without bottlenecks.
        clip_threshold: t_clip of the binary convs' sign; None takes it from
            :func:`bmx.binary_layer_config` (as do the weight/activation bits).
        bottleneck: 0 (the published models) or k >= 1 for a 1x1 bottleneck of
            ``k * growth_rate`` channels in every dense layer (see :class:`DenseLayer`).

    Attributes:
        stage_channels: channels after each stage; ``num_features`` is the last one.

    Input: (N, 3, H, W). Output: (N, classes) logits.
    """

    def __init__(self, layers, growth_rate=64, init_features=64, reduction=None, transition_channels=None,
                 downsample="bn,max_pool,relu,fp_conv", dilation=None, stem="imagenet", classes=1000,
                 binary=True, clip_threshold=None, bottleneck=0, **kwargs):
        super().__init__(**kwargs)
        name = type(self).__name__
        n = len(tuple(layers))
        if (reduction is None) == (transition_channels is None):
            raise ValueError(f"{name}: give exactly one of reduction and transition_channels")
        per_stage = {"dilation": (dilation if dilation is not None else (1,) * n, n)}
        if reduction is not None:
            per_stage["reduction"] = (reduction, n - 1)
        else:
            per_stage["transition_channels"] = (transition_channels, n - 1)
        layers, checked = check_stages(name, layers, per_stage)
        dilation = checked["dilation"]
        self.growth_rate = growth_rate
        self.binary = binary
        self._clip_threshold = clip_threshold
        self._bottleneck = bottleneck
        self.stage_channels = []
        with self.name_scope():
            self.features = nn.HybridSequential(prefix="")
            with self.features.name_scope():
                stem_block, channels = make_stem(stem, init_features)
                self.features.add(stem_block)
                for i, count in enumerate(layers):
                    if i:
                        if reduction is not None:
                            out = transition_width(channels, checked["reduction"][i - 1])
                        else:
                            out = checked["transition_channels"][i - 1]
                        self.features.add(make_transition(
                            downsample, channels, out, pool=dilation[i] == 1, binary=binary,
                            clip_threshold=clip_threshold, prefix=f"transition{i}_"))
                        channels = out
                    stage = nn.HybridSequential(prefix=f"stage{i + 1}_")
                    with stage.name_scope():
                        for j in range(count):
                            channels = self._add_unit(stage, channels, j, dilation[i])
                    self.features.add(stage)
                    self.stage_channels.append(channels)
                head, self.output = make_head(channels, classes)
                self.features.add(head)
        self.num_features = channels

    def _add_unit(self, stage, channels, index, dilation):
        """Adds one repeated unit to ``stage``; returns the channels after it."""
        stage.add(DenseLayer(channels, self.growth_rate, dilation, binary=self.binary,
                             clip_threshold=self._clip_threshold, bottleneck=self._bottleneck,
                             prefix=f"layer{index}_"))
        return channels + self.growth_rate

    def hybrid_forward(self, F, x):
        return self.output(self.features(x))


_BDN_POSTER_BINARY = dict(reduction=(1, 1.4, 1.4), downsample="bn,bin_conv,avg_pool")
# The poster's "FP downsampling": the binary rows' transition with ReLU in place of the sign and
# a full-precision conv, and a stronger reduction.
_BDN_POSTER_FP = dict(reduction=(2, 2, 2), downsample="bn,relu,fp_conv,avg_pool")

# name -> BinaryDenseNet arguments (architectures, sizes and results: docs/published.md).
SPECS = {
    "binary_densenet28": dict(layers=(6, 6, 6, 5), reduction=(2.7, 2.7, 2.2)),
    "binary_densenet37": dict(layers=(6, 8, 12, 6), reduction=(3.3, 3.3, 4)),
    "binary_densenet37_dilated": dict(layers=(6, 8, 12, 6), reduction=(3.3, 3.3, 4), dilation=(1, 1, 2, 4)),
    "binary_densenet45": dict(layers=(6, 12, 14, 8), reduction=(2.7, 3.3, 4)),
    "bdn_poster_8x256": dict(layers=(1, 1, 1, 1), growth_rate=256, **_BDN_POSTER_BINARY),
    "bdn_poster_16x128": dict(layers=(2, 2, 2, 2), growth_rate=128, **_BDN_POSTER_BINARY),
    "bdn_poster_32x64": dict(layers=(4, 4, 4, 4), growth_rate=64, **_BDN_POSTER_BINARY),
    "bdn_poster_16x128_fpds": dict(layers=(2, 2, 2, 2), growth_rate=128, **_BDN_POSTER_FP),
    "bdn_poster_32x64_fpds": dict(layers=(4, 4, 4, 4), growth_rate=64, **_BDN_POSTER_FP),
}

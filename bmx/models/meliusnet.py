"""MeliusNet (Bethge et al.): BinaryDenseNet whose dense layers are each followed by an improvement layer."""
from mxnet.gluon import HybridBlock, nn

from .common import activated_conv
from .densenet import BinaryDenseNet, DenseLayer

__all__ = ["MeliusNet", "ImprovementLayer", "SPECS"]


class ImprovementLayer(HybridBlock):
    """BN -> sign -> binary 3x3 conv to ``improved`` channels, added to the last ``improved`` input channels.

    The dense layer before it adds new channels; this layer then refines exactly those, which
    raises their quality without making the network wider. Output channels: ``in_channels``.
    """

    def __init__(self, in_channels, improved, dilation=1, binary=True, clip_threshold=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 < improved <= in_channels:
            raise ValueError(f"ImprovementLayer: cannot improve {improved} of {in_channels} channels")
        self.keep = in_channels - improved
        with self.name_scope():
            self.bn = nn.BatchNorm(in_channels=in_channels, prefix="bn_")
            self.conv = activated_conv(improved, in_channels, 3, padding=dilation, dilation=dilation,
                                       binary=binary, clip_threshold=clip_threshold, prefix="conv_")

    def hybrid_forward(self, F, x):
        residual = self.conv(self.bn(x))
        if not self.keep:
            return x + residual
        kept = F.slice_axis(x, axis=1, begin=0, end=self.keep)
        improved = F.slice_axis(x, axis=1, begin=self.keep, end=None) + residual
        return F.concat(kept, improved, dim=1)


class MeliusNet(BinaryDenseNet):
    r"""MeliusNet: BinaryDenseNet in which every DenseLayer is followed by an ImprovementLayer.

    Each repeated block is ``DenseLayer`` (BN -> sign -> binary 3x3 conv, ``growth_rate`` new
    channels concatenated) then :class:`ImprovementLayer` (BN -> sign -> binary 3x3 conv,
    ``growth_rate`` channels added to the channels just created). Stem, transitions
    (BN -> MaxPool -> ReLU -> full-precision 1x1 conv) and head are BinaryDenseNet's; the named
    variants fix each transition's output channels (``transition_channels``) instead of a
    reduction factor. The published accuracies used ``stem='grouped'``; the published sizes
    (3.89 MB for MeliusNet-22, 5.08 MB for -29) are those of the default ``'imagenet'`` stem.

    Arguments are :class:`BinaryDenseNet`'s (``growth_rate`` is also the improved width).
    """

    def __init__(self, *args, bottleneck=0, **kwargs):
        if bottleneck:
            raise ValueError(f"MeliusNet has no bottleneck option (got bottleneck={bottleneck!r})")
        super().__init__(*args, **kwargs)

    def _add_unit(self, stage, channels, index, dilation):
        options = dict(binary=self.binary, clip_threshold=self._clip_threshold)
        stage.add(DenseLayer(channels, self.growth_rate, dilation, prefix=f"layer{index}_", **options))
        channels += self.growth_rate
        stage.add(ImprovementLayer(channels, self.growth_rate, dilation, prefix=f"improve{index}_", **options))
        return channels


# name -> MeliusNet arguments (docs/published.md, section 2).
SPECS = {
    "meliusnet22": dict(layers=(4, 5, 4, 4), transition_channels=(160, 224, 256)),
    "meliusnet29": dict(layers=(4, 6, 8, 6), transition_channels=(128, 192, 256)),
    "meliusnet42": dict(layers=(5, 8, 14, 10), transition_channels=(160, 256, 416)),
    "meliusnet59": dict(layers=(6, 12, 24, 12), transition_channels=(192, 320, 544)),
}

"""QActivation: quantizes the activations flowing through it."""
from mxnet.gluon import HybridBlock

from .. import quantizers
from ._common import layer_config


class QActivation(HybridBlock):
    r"""Quantizes its input to ``bits`` bits.

    * ``bits=1, method='det_sign'``: forward :math:`\mathrm{sign}(x)` (+1 for x >= 0), backward
      the clipped straight-through estimator :math:`1_{|x| \le t_{clip}}` (:func:`bmx.quantizers.det_sign`).
    * ``bits=1, method='approx_sign'``: forward sign, backward :math:`2 - 2|x|` on
      :math:`|x| \le 1` (:func:`bmx.quantizers.approx_sign`).
    * ``bits=k`` (2..8), ``method='round'``: forward :math:`\mathrm{round}((2^k-1)\,\mathrm{clip}(x,0,1))/(2^k-1)`,
      backward :math:`1_{0 \le x \le 1}` (:func:`bmx.quantizers.quantize_activation`).

    Arguments left at None come from :func:`bmx.binary_layer_config`.

    Args:
        bits: activation bits (the config's ``bits_a``).
        clip_threshold: :math:`t_{clip}` for ``det_sign``.
        method: ``'det_sign'``, ``'approx_sign'`` or ``'round'``.
        zero_one: 1-bit only: output the sign as :math:`b = (q + 1)/2 \in \{0, 1\}` (gradient
            halved). :class:`BinaryConvolution` pairs it with ``QConv2D(input_zero_one=True)``
            so that padding with -1 costs nothing.
        config: a resolved :class:`bmx.config.BinaryLayerConfig` to use instead of the three
            arguments above and the context (:class:`BinaryConvolution` passes its own).

    Input: any shape. Output: same shape and dtype.
    """

    def __init__(self, bits=None, clip_threshold=None, method=None, zero_one=False, config=None, **kwargs):
        super().__init__(**kwargs)
        self.config = layer_config(self, config, aliases={"bits_a": "bits", "activation": "method"}, bits_a=bits,
                                   clip_threshold=clip_threshold, activation=method)
        if zero_one and self.config.bits_a != 1:
            raise ValueError(f"QActivation '{self.name}': zero_one needs 1-bit activations, "
                             f"got bits={self.config.bits_a}")
        self.zero_one = bool(zero_one)

    @property
    def bits(self):
        return self.config.bits_a

    @property
    def method(self):
        return self.config.activation

    def hybrid_forward(self, F, x):
        c = self.config
        if c.activation == "det_sign":
            return quantizers.det_sign(x, c.clip_threshold, zero_one=self.zero_one)
        if c.activation == "approx_sign":
            return quantizers.approx_sign(x, zero_one=self.zero_one)
        return quantizers.quantize_activation(x, c.bits_a)

    def __repr__(self):
        extra = f", clip_threshold={self.config.clip_threshold}" if self.method == "det_sign" else ""
        encoding = ", zero_one=True" if self.zero_one else ""
        return f"{type(self).__name__}(bits={self.bits}, method={self.method!r}{extra}{encoding})"

"""QActivation: quantizes the activations flowing through it."""
from mxnet.gluon import HybridBlock

from .. import quantizers
from ._common import resolve_for


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
        pad: border (int or (h, w)) of ``pad_value`` added around H and W after quantizing,
            in the same pass for 1-bit activations; :class:`BinaryConvolution` uses it so that
            its convolution needs no separate pad. Needs 4-D NCHW input when > 0.
        pad_value: -1 or 0.

    Input: any shape. Output: same shape (H and W grown by 2 pad), same dtype.
    """

    def __init__(self, bits=None, clip_threshold=None, method=None, pad=0, pad_value=None, **kwargs):
        super().__init__(**kwargs)
        self.config = resolve_for(self, bits_a=bits, clip_threshold=clip_threshold, activation=method,
                                  pad_value=pad_value)
        self.pad, _ = quantizers._check_pad(pad, self.config.pad_value)

    @property
    def bits(self):
        return self.config.bits_a

    @property
    def method(self):
        return self.config.activation

    def hybrid_forward(self, F, x):
        c = self.config
        if c.activation == "det_sign":
            return quantizers.det_sign(x, c.clip_threshold, pad=self.pad, pad_value=c.pad_value)
        if c.activation == "approx_sign":
            return quantizers.approx_sign(x, pad=self.pad, pad_value=c.pad_value)
        y = quantizers.quantize_activation(x, c.bits_a)
        return quantizers._border(F, y, self.pad, float(c.pad_value))

    def __repr__(self):
        extra = f", clip_threshold={self.config.clip_threshold}" if self.method == "det_sign" else ""
        pad = f", pad={self.pad}, pad_value={self.config.pad_value}" if self.pad != (0, 0) else ""
        return f"{type(self).__name__}(bits={self.bits}, method={self.method!r}{extra}{pad})"

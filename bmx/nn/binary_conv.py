"""BinaryConvolution: QActivation followed by QConv2D, the building block of the zoo."""
from mxnet.gluon import HybridBlock

from .activation import QActivation
from .conv import QConv2D, _pair
from ._common import is_ndarray, resolve_for


class BinaryConvolution(HybridBlock):
    r"""Quantize the input, then convolve it with quantized weights.

    Forward: :math:`y = \mathrm{conv}(\mathrm{pad}_v(Q_a(x)),\, Q_w(W))` (see :class:`QActivation`
    and :class:`QConv2D` for :math:`Q_a`, :math:`Q_w` and their backward passes). With 1-bit
    activations and ``pad_value=-1`` the sign is passed on as :math:`\{0, 1\}` so that the
    convolution pads with zeros natively and folds the -1 border into a bias (exactly; see
    :class:`QConv2D`'s ``input_zero_one``).

    Arguments are the union of QConv2D's and QActivation's (``bits`` for weights, ``bits_a`` for
    activations, ``activation`` for the activation method); None means "from the config".

    Input: (N, in_channels, H, W) float. Output: (N, channels, H_out, W_out).
    """

    def __init__(self, channels, kernel_size, strides=1, padding=0, dilation=1, groups=1, in_channels=0,
                 bits=None, bits_a=None, clip_threshold=None, activation=None, weight_quantization=None,
                 pad_value=None, apply_scaling=None, weight_initializer=None, **kwargs):
        super().__init__(**kwargs)
        c = self.config = resolve_for(self, bits=bits, bits_a=bits_a, clip_threshold=clip_threshold,
                                      activation=activation, weight_quantization=weight_quantization,
                                      pad_value=pad_value, apply_scaling=apply_scaling)
        padding = _pair(padding, "padding", f"BinaryConvolution '{self.name}'", 0)
        zero_one = c.bits_a == 1 and c.pad_value == -1 and padding != (0, 0)
        with self.name_scope():
            # the parts take the configuration resolved (and validated) here, once
            self.qact = QActivation(zero_one=zero_one, config=c)
            self.qconv = QConv2D(channels, kernel_size, strides=strides, padding=padding, dilation=dilation,
                                 groups=groups, in_channels=in_channels, weight_initializer=weight_initializer,
                                 input_zero_one=zero_one, config=c)

    def forward(self, x, *args):
        if is_ndarray(x) and x.ndim != 4:
            raise ValueError(f"BinaryConvolution '{self.name}' expects a 4-D NCHW input, got shape {x.shape}")
        in_channels = self.qconv.in_channels
        if is_ndarray(x) and in_channels and x.shape[1] != in_channels:
            raise ValueError(f"BinaryConvolution '{self.name}' expects {in_channels} input channels, "
                             f"got shape {x.shape}")
        return super().forward(x, *args)

    def hybrid_forward(self, F, x):
        return self.qconv(self.qact(x))

"""QConv2D: a 2-D convolution with quantized weights."""
from mxnet.gluon import HybridBlock

from ._common import is_ndarray, layer_config, quantize_weight, scale_by_weight_magnitude, weight_parameter


def _pair(value, name, layer, minimum):
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < minimum for v in pair):
        raise ValueError(f"{layer}: {name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return pair


class QConv2D(HybridBlock):
    r"""2-D convolution (NCHW) of its input with quantized weights; no bias.

    Forward: :math:`y = \mathrm{conv}(\mathrm{pad}_{v}(x),\, Q(W))`, where :math:`Q` is
    :func:`bmx.quantizers.weight_sign` for ``bits=1`` (:math:`\pm 1` weights) or
    :func:`bmx.quantizers.dorefa_weight` for ``bits`` 2..8, and :math:`\mathrm{pad}_v` pads
    with ``pad_value`` (-1 by default, as the published models were trained, so a binary input
    stays in {-1, +1}; 0 is also supported). The output is the plain dot product: no offset, no
    bias. With ``apply_scaling``, each output channel o is multiplied by :math:`\mathrm{mean}|W_o|`.

    Backward: the gradient w.r.t. the input is that of the convolution (the input is *not*
    quantized here; put a :class:`QActivation` in front, or use :class:`BinaryConvolution`);
    the gradient w.r.t. the latent weight W passes through :math:`Q` by its straight-through
    estimator (identity for sign). Binary weights get ``wd_mult = 0``.

    Arguments as in ``mxnet.gluon.nn.Conv2D``; quantization arguments left at None come from
    :func:`bmx.binary_layer_config`, or all of them from ``config`` (a resolved
    :class:`bmx.config.BinaryLayerConfig`, as :class:`BinaryConvolution` passes its own).

    ``input_zero_one=True`` (with ``pad_value=-1``) declares that the input is a sign given as
    :math:`b = (s + 1)/2 \in \{0, 1\}` (see :class:`QActivation`'s ``zero_one``). Since
    :math:`\mathrm{pad}_{-1}(s) = 2\,\mathrm{pad}_0(b) - 1` and every receptive field of the padded
    input is complete, the layer then computes exactly the same output as
    :math:`y_o = 2\,\mathrm{conv}(\mathrm{pad}_0(b), Q(W))_o - \sum Q(W_o)`: the convolution pads
    with zeros natively and the constant becomes its bias, which is cheaper than padding
    with -1 explicitly. Gradients are identical too.

    Input: (N, in_channels, H, W). Output: (N, channels, H_out, W_out) as for Conv2D.
    """

    def __init__(self, channels, kernel_size, strides=1, padding=0, dilation=1, groups=1, in_channels=0,
                 bits=None, pad_value=None, apply_scaling=None, weight_quantization=None,
                 weight_initializer=None, input_zero_one=False, config=None, **kwargs):
        super().__init__(**kwargs)
        self.config = layer_config(self, config, bits=bits, pad_value=pad_value, apply_scaling=apply_scaling,
                                   weight_quantization=weight_quantization)
        layer = f"QConv2D '{self.name}'"
        self.kernel_size = _pair(kernel_size, "kernel_size", layer, 1)
        self.strides = _pair(strides, "strides", layer, 1)
        self.padding = _pair(padding, "padding", layer, 0)
        self.dilation = _pair(dilation, "dilation", layer, 1)
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"{layer}: channels must be a positive int, got {channels!r}")
        if not isinstance(groups, int) or groups < 1 or channels % groups or in_channels % groups:
            raise ValueError(f"{layer}: groups={groups!r} must be a positive int dividing channels "
                             f"({channels}) and in_channels ({in_channels})")
        self.channels, self.groups, self.in_channels = channels, groups, in_channels
        if input_zero_one and self.config.pad_value != -1 and self.padding != (0, 0):
            raise ValueError(f"{layer}: input_zero_one needs pad_value=-1 when padding is used")
        self.input_zero_one = bool(input_zero_one)
        with self.name_scope():
            self.weight = weight_parameter(self, (channels, in_channels // groups) + self.kernel_size,
                                           self.config, weight_initializer)

    @property
    def bits(self):
        return self.config.bits

    def forward(self, x, *args):
        if is_ndarray(x):
            if x.ndim != 4:
                raise ValueError(f"QConv2D '{self.name}' expects a 4-D NCHW input, got shape {x.shape}")
            if self.in_channels and x.shape[1] != self.in_channels:
                raise ValueError(f"QConv2D '{self.name}' expects {self.in_channels} input channels, "
                                 f"got shape {x.shape}")
        return super().forward(x, *args)

    def hybrid_forward(self, F, x, weight):
        c = self.config
        qweight = quantize_weight(weight, c, self.weight)
        conv_args = dict(kernel=self.kernel_size, stride=self.strides, dilate=self.dilation,
                         num_filter=self.channels, num_group=self.groups, layout="NCHW")
        if self.input_zero_one:
            offset = F.negative(F.sum(qweight, axis=(1, 2, 3)))
            y = F.Convolution(data=x, weight=2 * qweight, bias=offset, pad=self.padding, **conv_args)
        elif c.pad_value == 0 or self.padding == (0, 0):
            y = F.Convolution(data=x, weight=qweight, pad=self.padding, no_bias=True, **conv_args)
        else:
            padded = F.pad(x, mode="constant", constant_value=float(c.pad_value),
                           pad_width=(0, 0, 0, 0) + (self.padding[0],) * 2 + (self.padding[1],) * 2)
            y = F.Convolution(data=padded, weight=qweight, pad=(0, 0), no_bias=True, **conv_args)
        if c.apply_scaling:
            y = scale_by_weight_magnitude(F, y, weight, (1, -1, 1, 1))
        return y

    def __repr__(self):
        c = self.config
        return (f"{type(self).__name__}({self.in_channels or None} -> {self.channels}, "
                f"kernel_size={self.kernel_size}, stride={self.strides}, padding={self.padding}, "
                f"dilation={self.dilation}, groups={self.groups}, bits={c.bits}, "
                f"weight_quantization={c.weight_quantization!r}, pad_value={c.pad_value}, "
                f"apply_scaling={c.apply_scaling})")

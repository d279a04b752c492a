"""QDense: a fully connected layer with quantized weights."""
import math

from mxnet.gluon import HybridBlock

from ._common import is_ndarray, quantize_weight, resolve_for, scale_by_weight_magnitude, weight_parameter


class QDense(HybridBlock):
    r"""Fully connected layer with quantized weights; no bias.

    Forward: :math:`y = x\, Q(W)^T` with :math:`Q` = sign (``bits=1``) or DoReFa (2..8 bits); with
    ``apply_scaling``, output unit o is multiplied by :math:`\mathrm{mean}|W_o|`.

    Backward: the gradient w.r.t. x is that of the matrix product (x is *not* quantized here);
    the latent weight's gradient passes through :math:`Q`'s straight-through estimator.
    Binary weights get ``wd_mult = 0``.

    Input: (N, ...) flattened to (N, in_units). Output: (N, units).
    """

    def __init__(self, units, in_units=0, bits=None, apply_scaling=None, weight_quantization=None,
                 weight_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.config = resolve_for(self, bits=bits, apply_scaling=apply_scaling,
                                  weight_quantization=weight_quantization)
        if not isinstance(units, int) or units < 1:
            raise ValueError(f"QDense '{self.name}': units must be a positive int, got {units!r}")
        self.units, self.in_units = units, in_units
        with self.name_scope():
            self.weight = weight_parameter(self, (units, in_units), self.config, weight_initializer)

    @property
    def bits(self):
        return self.config.bits

    def forward(self, x, *args):
        if is_ndarray(x) and x.ndim < 2:
            raise ValueError(f"QDense '{self.name}' expects a batch of shape (N, ...), got shape {x.shape}")
        if is_ndarray(x) and self.in_units and math.prod(x.shape[1:]) != self.in_units:
            raise ValueError(f"QDense '{self.name}' expects {self.in_units} input units per sample, "
                             f"got shape {x.shape}")
        return super().forward(x, *args)

    def hybrid_forward(self, F, x, weight):
        y = F.FullyConnected(x, quantize_weight(weight, self.config, self.weight), num_hidden=self.units,
                             no_bias=True, flatten=True)
        if self.config.apply_scaling:
            y = scale_by_weight_magnitude(F, y, weight, (1, -1))
        return y

    def __repr__(self):
        c = self.config
        return (f"{type(self).__name__}({self.in_units or None} -> {self.units}, bits={c.bits}, "
                f"weight_quantization={c.weight_quantization!r}, apply_scaling={c.apply_scaling})")

"""int8 full-precision layers: ``bmx_int8_conv2d`` and ``bmx_int8_dense`` (docs/packed.md).

Inputs ``(data, weight, weight_scale, input_scale[, bias])``: weight int8, weight_scale float32
(O,) > 0 per output channel, input_scale float32 (1,) > 0 for the whole input, bias float32 (O,).
With ``s = input_scale`` and ``w_s = weight_scale``::

    xq  = clip(round_half_to_even(x / s), -127, 127)           int8, per call
    acc = conv(pad_0(xq), weight)  (or xq_flat weight^T)          int32, exact
    out = acc * float32(s * w_s[o]) + bias[o]                     float32

The kernels are bmx.xnor's ``quantize_int8``, ``int8_conv2d`` and ``int8_dense``.
"""
import numpy as np

from ...xnor import int8_conv2d, int8_dense, pack_int8_weights, quantize_int8
from ..graph import F32, REQUIRED, product
from .elementwise import Op, into
from .layers import _Convolution, read_window


def _scales(op, node, params, outputs, weight_ndim):
    """Checks (weight, weight_scale, input_scale[, bias]) and sets op.weight, op.input_scale,
    op.out_scale and op.bias (zeros without one)."""
    no_bias = node.bool("no_bias", False)
    if len(params) != (3 if no_bias else 4):
        node.fail(f"expects data, weight, weight_scale, input_scale{'' if no_bias else ', bias'}; "
                  f"got {len(params) + 1} inputs")
    weight, weight_scale, input_scale = (np.asarray(p) for p in params[:3])
    if weight.dtype != np.int8 or weight.ndim != weight_ndim or weight.shape[0] != outputs:
        node.fail(f"weight must be int8 with {weight_ndim} dimensions and {outputs} outputs, "
                  f"got {weight.dtype} {weight.shape}")
    if np.any(weight == -128):
        node.fail("weight holds -128; int8 weights are symmetric, in -127..127")
    if weight_scale.dtype != F32 or weight_scale.shape != (outputs,) or not np.all(weight_scale > 0):
        node.fail(f"weight_scale must be float32 ({outputs},) and positive, got {weight_scale.dtype} "
                  f"{weight_scale.shape}")
    if input_scale.dtype != F32 or input_scale.size != 1 or not input_scale.reshape(-1)[0] > 0:
        node.fail(f"input_scale must be one positive float32, got {input_scale.dtype} {input_scale.shape}")
    op.weight = np.ascontiguousarray(weight)
    # laid out for the kernels on first use and kept: re-laying 1 MB of classifier weights on every
    # call cost more than the products at batch 1
    op.prepared = pack_int8_weights(op.weight)
    op.input_scale = F32(input_scale.reshape(-1)[0])
    op.out_scale = (op.input_scale * weight_scale).astype(F32)
    if no_bias:
        op.bias = np.zeros(outputs, F32)
    else:
        if params[3].size != outputs:
            node.fail(f"bias has {params[3].size} values for {outputs} outputs")
        op.bias = np.asarray(params[3], F32).reshape(-1)


class _Int8Conv(_Convolution):
    """bmx_int8_conv2d: an int8 Convolution (NCHW, groups, stride, pad, dilate; zero padding). A
    Convolution to the rewrites: a BatchNorm after it folds into its per-channel output scale and bias."""

    def __init__(self, node, params, runtime):
        Op.__init__(self, node, params, runtime)
        read_window(self, node)
        self.filters = node.int("num_filter", REQUIRED)
        _scales(self, node, params, self.filters, 4)
        if self.weight.shape[2:] != self.kernel or self.filters % self.groups:
            node.fail(f"weight shape {self.weight.shape} does not fit num_filter={self.filters}, "
                      f"kernel={self.kernel}, num_group={self.groups}")
        self.group_channels = self.weight.shape[1]
        self.threads = runtime.threads

    def fold_batchnorm(self, bn):
        """acc * out_scale * m + (bias * m + u): the BatchNorm x * m + u after it, exactly per channel."""
        scale, shift = bn.scale.astype(np.float64), bn.shift.astype(np.float64)
        self.out_scale = (self.out_scale * scale).astype(F32)
        self.bias = (self.bias * scale + shift).astype(F32)

    def run(self, x, out=None):
        xq = quantize_int8(np.ascontiguousarray(x), self.input_scale, threads=self.threads)
        y = int8_conv2d(xq, self.prepared, stride=self.stride, padding=self.pad, dilation=self.dilate,
                        groups=self.groups, out_scale=self.out_scale, bias=self.bias, threads=self.threads)
        return into(y, out)


class _Int8Dense(Op):
    """bmx_int8_dense: an int8 FullyConnected over the flattened input (weight (O, K))."""

    takes_params = True

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.units = node.int("num_hidden", REQUIRED)
        _scales(self, node, params, self.units, 2)
        self.threads = runtime.threads

    def infer(self, shape):
        features = product(shape[1:])
        if features not in (None, self.weight.shape[1]):
            self.node.shape_error(f"needs {self.weight.shape[1]} input features, got shape {shape}")
        return (shape[0], self.units)

    def run(self, x, out=None):
        xq = quantize_int8(np.ascontiguousarray(x).reshape(x.shape[0], -1), self.input_scale, threads=self.threads)
        y = int8_dense(xq, self.prepared, out_scale=self.out_scale, bias=self.bias, threads=self.threads)
        return into(y, out)

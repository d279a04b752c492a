"""The ops the runtime supports, by MXNet op name."""
from .elementwise import (_AddN, _BatchNorm, _Binary, _Clip, _Identity, _LeakyReLU, _QuantizeAct, _QuantizeWeight,
                          _Reduce, _Scalar, _SignOp, _Unary, _WeightSign)
from .int8 import _Int8Conv, _Int8Dense
from .layers import _Convolution, _FullyConnected, _Pooling, _XnorConv
from .shapes import _Concat, _Flatten, _Pad, _Reshape, _Slice, _SliceAxis, _Softmax

OPS = {
    "Convolution": _Convolution,
    "bmx_xnor_conv2d": _XnorConv,
    "bmx_int8_conv2d": _Int8Conv,
    "bmx_int8_dense": _Int8Dense,
    "FullyConnected": _FullyConnected,
    "BatchNorm": _BatchNorm,
    "Activation": _Unary,
    "LeakyReLU": _LeakyReLU,
    "Pooling": _Pooling,
    "Concat": _Concat,
    "concat": _Concat,
    "Flatten": _Flatten,
    "flatten": _Flatten,
    "Reshape": _Reshape,
    "reshape": _Reshape,
    "pad": _Pad,
    "Pad": _Pad,
    "slice_axis": _SliceAxis,
    "slice": _Slice,
    "softmax": _Softmax,
    "SoftmaxActivation": _Softmax,
    "SoftmaxOutput": _Softmax,
    "add_n": _AddN,
    "ElementWiseSum": _AddN,
    "clip": _Clip,
    "sum": _Reduce,
    "mean": _Reduce,
    "BlockGrad": _Identity,
    "stop_gradient": _Identity,
    "_copy": _Identity,
    "identity": _Identity,
    "Dropout": _Identity,
    "bmx_det_sign": _SignOp,
    "bmx_approx_sign": _SignOp,
    "bmx_weight_sign": _WeightSign,
    "bmx_quantize_act": _QuantizeAct,
    "bmx_quantize_weight": _QuantizeWeight,
}
for _class in (_Unary, _Binary, _Scalar):
    OPS.update({name: _class for name in _class.FUNCS})

SUPPORTED_OPS = tuple(sorted(OPS) + ["null"])

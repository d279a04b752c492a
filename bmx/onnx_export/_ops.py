"""One converter per MXNet operator: each emits standard ONNX operators for one symbol node.

A converter takes the builder ``b`` (:class:`bmx.onnx_export._graph.Builder`) and the node, reads
its inputs with ``b.value(entry)`` and returns the ONNX value (or list of values) of its outputs.
Whatever depends only on parameters (weight signs, DoReFa weights, mean |W| scales, unpacked bits)
is emitted as ordinary ONNX operators too and folded into constants afterwards by the builder.
"""
import numpy as np
from onnx import TensorProto

from .. import xnor

SIGN_OPS = ("bmx_det_sign", "bmx_approx_sign")
CONVERTERS = {}
_INT64_MAX = np.iinfo(np.int64).max


def _converts(*ops):
    def register(fn):
        for op in ops:
            CONVERTERS[op] = fn
        return fn
    return register


def _inputs(b, node, count=None):
    if count is not None and len(node.inputs) != count:
        node.fail(f"expects {count} inputs, got {len(node.inputs)}")
    return [b.value(entry) for entry in node.inputs]


# ---------------------------------------------------------------- quantizers

def sign(b, node, x, zero_one=False):
    """+1 where x >= 0, else -1 (NaN -> -1): ONNX ``Sign`` would give 0 at 0. zero_one: 1 / 0."""
    at_least_zero = b.emit("GreaterOrEqual", [x, b.const(0.0)], node)
    if zero_one:
        return b.emit("Cast", [at_least_zero], node, to=TensorProto.FLOAT)
    return b.emit("Where", [at_least_zero, b.const(1.0), b.const(-1.0)], node)


def round_half_away(b, node, v, nonnegative=False):
    """MXNet's round (halves away from zero); ONNX ``Round`` rounds halves to even.

    With a = |v|: a - floor(a) is exact in float32, so a tie is detected exactly and rounded up.
    """
    a = v if nonnegative else b.emit("Abs", [v], node)
    low = b.emit("Floor", [a], node)
    tie = b.emit("Equal", [b.emit("Sub", [a, low], node), b.const(0.5)], node)
    rounded = b.emit("Where", [tie, b.emit("Add", [low, b.const(1.0)], node), b.emit("Round", [a], node)], node)
    return rounded if nonnegative else b.emit("Mul", [b.emit("Sign", [v], node), rounded], node)


@_converts(*SIGN_OPS)
def _sign(b, node):
    (x,) = _inputs(b, node, 1)
    return sign(b, node, x, node.bool("zero_one", False))


@_converts("bmx_weight_sign")
def _weight_sign(b, node):
    (x,) = _inputs(b, node, 1)
    return sign(b, node, x)


def _levels(node):
    bits = node.int("bits")
    if not 2 <= bits <= 8:
        node.fail(f"bits={bits} is outside 2..8")
    return float(2 ** bits - 1)


@_converts("bmx_quantize_act")
def _quantize_act(b, node):
    """round((2^k - 1) clip(x, 0, 1)) / (2^k - 1), as the operator computes it in float32."""
    (x,) = _inputs(b, node, 1)
    levels = b.const(_levels(node))
    clipped = b.emit("Clip", [x, b.const(0.0), b.const(1.0)], node)
    return b.emit("Div", [round_half_away(b, node, b.emit("Mul", [clipped, levels], node), True), levels], node)


@_converts("bmx_quantize_weight")
def _quantize_weight(b, node):
    """DoReFa: u = tanh(w) / (2 max(max|tanh w|, 1e-12)) + 1/2; 2 round((2^k - 1) u) / (2^k - 1) - 1."""
    (w,) = _inputs(b, node, 1)
    levels = b.const(_levels(node))
    t = b.emit("Tanh", [w], node)
    m = b.emit("Max", [b.emit("ReduceMax", [b.emit("Abs", [t], node)], node, keepdims=0), b.const(1e-12)], node)
    u = b.emit("Add", [b.emit("Div", [t, b.emit("Mul", [b.const(2.0), m], node)], node), b.const(0.5)], node)
    q = b.emit("Div", [round_half_away(b, node, b.emit("Mul", [u, levels], node), True), levels], node)
    return b.emit("Sub", [b.emit("Mul", [b.const(2.0), q], node), b.const(1.0)], node)


# ---------------------------------------------------------------- convolutions and dense layers

def _window(node, key, nd, default):
    values = node.tuple(key, ())
    if not values:
        return (default,) * nd
    if len(values) != nd:
        node.fail(f"{key}={values} does not match the {nd}-d kernel")
    return values


def _conv_settings(node):
    kernel = node.tuple("kernel", None)
    if not kernel:
        node.fail("attribute 'kernel' is missing")
    layout = node.text("layout", "None")
    if layout not in ("None", "NCW", "NCHW", "NCDHW"):
        node.fail(f"layout {layout} is not supported (only channels-first layouts map to ONNX Conv)")
    nd = len(kernel)
    return dict(kernel_shape=list(kernel), strides=list(_window(node, "stride", nd, 1)),
                dilations=list(_window(node, "dilate", nd, 1)), pads=list(_window(node, "pad", nd, 0)) * 2,
                group=node.int("num_group", 1))


def binary_conv(b, node, x, weight, settings, pad_value):
    """conv(pad_{pad_value}(sign(x)), weight): the padding is an explicit ``Pad`` unless it is 0."""
    s = sign(b, node, x)
    pads = settings["pads"]
    if any(pads) and pad_value != 0:
        nd = len(pads) // 2
        s = b.emit("Pad", [s, b.const(np.array([0, 0] + pads[:nd] + [0, 0] + pads[nd:], np.int64)),
                           b.const(float(pad_value))], node, mode="constant")
        settings = dict(settings, pads=[0] * len(pads))
    return b.emit("Conv", [s, weight], node, **settings)


def _minus_one_padded(node):
    """(X, sign(W)) entries if node is BinaryConvolution's ``Convolution(sign01(X), 2 sign(W),
    -sum sign(W))``, which computes exactly conv(pad_-1(sign X), sign W) (bmx.nn.QConv2D)."""
    if len(node.inputs) != 3 or node.bool("no_bias", False):
        return None
    (data, _), (weight, _), (bias, _) = node.inputs
    if data.op not in SIGN_OPS or not data.bool("zero_one", False):
        return None
    if weight.op != "_mul_scalar" or weight.float("scalar", 0.0) != 2.0 or bias.op != "negative":
        return None
    signs = weight.inputs[0]
    total = bias.inputs[0][0]
    if signs[0].op != "bmx_weight_sign" or total.op != "sum" or total.inputs[0] != signs:
        return None
    rank = len(node.tuple("kernel", ())) + 2
    if tuple(total.tuple("axis", ())) != tuple(range(1, rank)) or total.bool("keepdims", False) \
            or total.bool("exclude", False):
        return None
    return data.inputs[0], signs


@_converts("Convolution")
def _convolution(b, node):
    settings = _conv_settings(node)
    folded = _minus_one_padded(node)
    if folded is not None:
        return binary_conv(b, node, b.value(folded[0]), b.value(folded[1]), settings, -1.0)
    no_bias = node.bool("no_bias", False)
    return b.emit("Conv", _inputs(b, node, 2 if no_bias else 3), node, **settings)


@_converts("bmx_xnor_conv2d")
def _xnor_conv(b, node):
    """Packed sign weights (O, KH, KW, words) become +-1 float weights (O, C / groups, KH, KW)."""
    x, weight = _inputs(b, node, 2)
    settings = _conv_settings(node)
    words = b.parameter(weight)
    if words is None or words.dtype != np.int64 or words.ndim != 4:
        node.fail("its weight must be a parameter of packed int64 words (O, KH, KW, words)")
    channels = b.channels(x, node) // settings["group"]
    expected = (node.int("num_filter"),) + tuple(settings["kernel_shape"]) + (xnor.words_for_bits(channels),)
    if words.shape != expected:
        node.fail(f"packed weight {weight} has shape {words.shape}, expected {expected} for {channels} input "
                  "channels per group")
    signs = xnor.unpack(words.view(np.uint64), channels).transpose(0, 3, 1, 2)
    return binary_conv(b, node, x, b.const(np.ascontiguousarray(signs)), settings, node.float("pad_value", -1.0))


@_converts("FullyConnected")
def _fully_connected(b, node):
    no_bias = node.bool("no_bias", False)
    inputs = _inputs(b, node, 2 if no_bias else 3)
    if node.bool("flatten", True):
        return b.emit("Gemm", [b.emit("Flatten", [inputs[0]], node, axis=1)] + inputs[1:], node, transB=1)
    y = b.emit("MatMul", [inputs[0], b.emit("Transpose", [inputs[1]], node, perm=[1, 0])], node)
    return y if no_bias else b.emit("Add", [y, inputs[2]], node)


@_converts("BatchNorm")
def _batch_norm(b, node):
    """Inference BatchNorm with the moving statistics; ``fix_gamma`` (MXNet's default) means gamma = 1."""
    x, gamma, beta, mean, var = _inputs(b, node, 5)
    if node.int("axis", 1) != 1:
        node.fail(f"axis={node.int('axis', 1)} is not supported (ONNX BatchNormalization normalizes axis 1)")
    if node.bool("fix_gamma", True):
        gamma = b.emit("ConstantOfShape", [b.emit("Shape", [gamma], node)], node,
                       value=np.ones(1, np.float32))
    return b.emit("BatchNormalization", [x, gamma, beta, mean, var], node, epsilon=node.float("eps", 1e-3))


# ---------------------------------------------------------------- activations, pooling, shapes

_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softrelu": "Softplus", "softsign": "Softsign"}


@_converts("Activation")
def _activation(b, node):
    (x,) = _inputs(b, node, 1)
    kind = node.text("act_type", "relu")
    if kind not in _ACTIVATIONS:
        node.fail(f"act_type {kind!r} is not supported (supported: {', '.join(_ACTIVATIONS)})")
    return b.emit(_ACTIVATIONS[kind], [x], node)


@_converts("LeakyReLU")
def _leaky_relu(b, node):
    (x,) = _inputs(b, node, 1)
    kind = node.text("act_type", "leaky")
    if kind == "leaky":
        return b.emit("LeakyRelu", [x], node, alpha=node.float("slope", 0.25))
    if kind == "elu":
        return b.emit("Elu", [x], node, alpha=node.float("slope", 0.25))
    if kind == "selu":
        return b.emit("Selu", [x], node)
    node.fail(f"act_type {kind!r} is not supported (supported: leaky, elu, selu)")


@_converts("Pooling")
def _pooling(b, node):
    (x,) = _inputs(b, node, 1)
    kind = node.text("pool_type", "max")
    if kind not in ("max", "avg"):
        node.fail(f"pool_type {kind!r} is not supported (max and avg are)")
    if node.bool("global_pool", False):
        return b.emit("GlobalMaxPool" if kind == "max" else "GlobalAveragePool", [x], node)
    settings = _conv_settings(node)
    convention = node.text("pooling_convention", "valid")
    if convention not in ("valid", "full"):
        node.fail(f"pooling_convention {convention!r} is not supported (valid and full are)")
    if settings.pop("dilations") != [1] * len(settings["kernel_shape"]) or settings.pop("group") != 1:
        node.fail("dilated or grouped pooling is not supported")
    settings["ceil_mode"] = int(convention == "full")
    if kind == "max":
        return b.emit("MaxPool", [x], node, **settings)
    return b.emit("AveragePool", [x], node, count_include_pad=int(node.bool("count_include_pad", True)), **settings)


@_converts("Concat", "concat")
def _concat(b, node):
    return b.emit("Concat", _inputs(b, node), node, axis=node.int("dim", 1))


@_converts("Flatten", "flatten")
def _flatten(b, node):
    return b.emit("Flatten", _inputs(b, node, 1), node, axis=1)


@_converts("Reshape", "reshape")
def _reshape(b, node):
    (x,) = _inputs(b, node, 1)
    shape = node.tuple("shape", None)
    if shape is None or node.bool("reverse", False) or any(d < -1 for d in shape):
        node.fail(f"shape={node.attrs.get('shape')} reverse={node.attrs.get('reverse', False)}: only positive "
                  "sizes, 0 (copy) and -1 (infer) are supported")
    return b.emit("Reshape", [x, b.const(np.array(shape, np.int64))], node)


def _slice(b, node, x, starts, ends, axes, steps):
    ints = [b.const(np.array(v, np.int64)) for v in (starts, ends, axes, steps)]
    return b.emit("Slice", [x] + ints, node)


@_converts("slice_axis")
def _slice_axis(b, node):
    (x,) = _inputs(b, node, 1)
    end = node.optional_int("end")
    return _slice(b, node, x, [node.int("begin")], [_INT64_MAX if end is None else end], [node.int("axis")], [1])


@_converts("slice")
def _slice_op(b, node):
    (x,) = _inputs(b, node, 1)
    begin, end = node.tuple("begin", None), node.tuple("end", None)
    step = node.tuple("step", ()) or (None,) * len(begin)
    if begin is None or end is None or not len(begin) == len(end) == len(step):
        node.fail("begin, end and step must be given for the same axes")
    steps = [1 if s is None else s for s in step]
    if any(s < 1 for s in steps):
        node.fail(f"step={step}: only positive steps are supported")
    return _slice(b, node, x, [0 if v is None else v for v in begin],
                  [_INT64_MAX if v is None else v for v in end], list(range(len(begin))), steps)


@_converts("Pad", "pad")
def _pad(b, node):
    (x,) = _inputs(b, node, 1)
    mode = node.text("mode", "constant")
    if mode not in ("constant", "edge", "reflect"):
        node.fail(f"mode {mode!r} is not supported")
    width = node.tuple("pad_width", ())
    if not width or len(width) % 2:
        node.fail(f"pad_width={width} must hold (before, after) for every axis")
    pads = np.array(width[0::2] + width[1::2], np.int64)
    return b.emit("Pad", [x, b.const(pads), b.const(node.float("constant_value", 0.0))], node, mode=mode)


@_converts("softmax")
def _softmax(b, node):
    (x,) = _inputs(b, node, 1)
    if node.float("temperature", 1.0) != 1.0:
        node.fail("a temperature other than 1 is not supported")
    return b.emit("Softmax", [x], node, axis=node.int("axis", -1))


@_converts("BlockGrad", "stop_gradient", "_copy", "identity", "Dropout")
def _identity(b, node):
    """Identities at inference (Dropout too): the value is passed on, no ONNX node."""
    return _inputs(b, node)[0]


# ---------------------------------------------------------------- elementwise ops and reductions

_BINARY = {"Add": ("elemwise_add", "broadcast_add", "broadcast_plus", "_plus", "_Plus", "_add"),
           "Sub": ("elemwise_sub", "broadcast_sub", "broadcast_minus", "_minus", "_Minus", "_sub"),
           "Mul": ("elemwise_mul", "broadcast_mul", "_mul", "_Mul"),
           "Div": ("elemwise_div", "broadcast_div", "_div", "_Div"),
           "Max": ("broadcast_maximum", "_maximum", "_Maximum"),
           "Min": ("broadcast_minimum", "_minimum", "_Minimum")}
_BINARY_OPS = {mx_op: onnx_op for onnx_op, ops in _BINARY.items() for mx_op in ops}
# (ONNX op, scalar on the left)
_SCALAR_OPS = {"_plus_scalar": ("Add", False), "_minus_scalar": ("Sub", False), "_rminus_scalar": ("Sub", True),
               "_mul_scalar": ("Mul", False), "_div_scalar": ("Div", False), "_rdiv_scalar": ("Div", True),
               "_maximum_scalar": ("Max", False), "_minimum_scalar": ("Min", False),
               "_greater_equal_scalar": ("GreaterOrEqual", False), "_greater_scalar": ("Greater", False),
               "_lesser_equal_scalar": ("LessOrEqual", False), "_lesser_scalar": ("Less", False),
               "_equal_scalar": ("Equal", False)}
_COMPARISONS = ("GreaterOrEqual", "Greater", "LessOrEqual", "Less", "Equal")
_UNARY_OPS = {"negative": "Neg", "abs": "Abs", "tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu", "exp": "Exp",
              "log": "Log", "sqrt": "Sqrt", "floor": "Floor", "ceil": "Ceil", "sign": "Sign"}
_REDUCTIONS = {"sum": "ReduceSum", "mean": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin"}


@_converts(*_BINARY_OPS)
def _binary(b, node):
    return b.emit(_BINARY_OPS[node.op], _inputs(b, node, 2), node)


@_converts(*_SCALAR_OPS)
def _scalar(b, node):
    """x op scalar, the scalar cast to float32 as MXNet casts it to the data type; comparisons give 1 / 0."""
    (x,) = _inputs(b, node, 1)
    op, scalar_first = _SCALAR_OPS[node.op]
    scalar = b.const(node.float("scalar"))
    y = b.emit(op, [scalar, x] if scalar_first else [x, scalar], node)
    return b.emit("Cast", [y], node, to=TensorProto.FLOAT) if op in _COMPARISONS else y


@_converts(*_UNARY_OPS)
def _unary(b, node):
    return b.emit(_UNARY_OPS[node.op], _inputs(b, node, 1), node)


@_converts("round")
def _round(b, node):
    (x,) = _inputs(b, node, 1)
    return round_half_away(b, node, x)


@_converts("clip")
def _clip(b, node):
    (x,) = _inputs(b, node, 1)
    return b.emit("Clip", [x, b.const(node.float("a_min")), b.const(node.float("a_max"))], node)


@_converts("zeros_like", "ones_like")
def _fill_like(b, node):
    (x,) = _inputs(b, node, 1)
    value = np.array([0.0 if node.op == "zeros_like" else 1.0], np.float32)
    return b.emit("ConstantOfShape", [b.emit("Shape", [x], node)], node, value=value)


@_converts("where")
def _where(b, node):
    condition, x, y = _inputs(b, node, 3)
    return b.emit("Where", [b.emit("Cast", [condition], node, to=TensorProto.BOOL), x, y], node)


@_converts("add_n", "ElementWiseSum")
def _add_n(b, node):
    return b.emit("Sum", _inputs(b, node), node)


@_converts(*_REDUCTIONS)
def _reduce(b, node):
    """Reduction over ``axis`` (all axes if none); MXNet returns shape (1,) for a full reduction."""
    (x,) = _inputs(b, node, 1)
    if node.bool("exclude", False):
        node.fail("exclude=True is not supported")
    axes = node.tuple("axis", ())
    keepdims = int(node.bool("keepdims", False))
    inputs = [x, b.const(np.array(axes, np.int64))] if axes else [x]
    y = b.emit(_REDUCTIONS[node.op], inputs, node, keepdims=keepdims)
    if not axes and not keepdims:
        y = b.emit("Reshape", [y, b.const(np.array([1], np.int64))], node)
    return y

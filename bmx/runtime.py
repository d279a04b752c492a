"""Runs a packed bmx model with numpy and bmx's native kernels only (bmx.xnor; floatops.h for max
pooling and direct float convolution): MXNet is never imported.

``load(directory)`` reads a model directory (:mod:`bmx.packed`) and compiles its symbol graph once:

* every node whose inputs are all parameters is evaluated at load time (constant folding: the
  ``sign(W)``, ``2 * sign(W)`` and ``-sum(sign(W))`` of an unpacked binary layer become constants);
* every other node becomes a step with its constant work done: BatchNorm folded into a per-channel
  scale and shift, convolution weights laid out for matrix products, packed binary weights turned
  into :class:`bmx.xnor.PackedWeights`.

Then a few rewrites where a value's only readers allow them: a BatchNorm that only feeds binary
convolutions folds into their packing of its input (and one that feeds signs otherwise becomes a
one-pass threshold), a float Convolution absorbs the BatchNorm after it, a ReLU or BatchNorm before
a max pooling moves behind it, onto the smaller tensor, and then into the pooling's output loop.

Per input shape (the first call with that shape) the steps are planned: shapes are checked node by
node (errors name the node), each Concat's inputs are computed straight into slices of its output
(a DenseNet's growing concatenations then copy nothing), and every value gets a buffer of an arena
that is kept between calls, reusing the buffers of dead values: a call allocates almost nothing.

Values are float32 NCHW arrays throughout. Ops run with MXNet's inference semantics (BatchNorm
uses the moving statistics, Dropout is the identity); see ``SUPPORTED_OPS`` and docs/packed.md.
A Model runs one call at a time (calls from several threads wait for each other).
"""
import math
import os
import threading

import numpy as np

from . import _xnor, packed, xnor

__all__ = ["load", "Model", "SUPPORTED_OPS"]

_F32 = np.float32
_LOWEST = np.finfo(_F32).min  # float32's lowest value


class _ShapeError(ValueError):
    """A node cannot take the shapes it is given (raised by the ops' infer)."""


class _Node:
    """A graph node: its name, op, attributes (strings, as MXNet writes them) and input entries."""

    __slots__ = ("name", "op", "attrs", "inputs", "file")

    def __init__(self, raw, file):
        self.name, self.op, self.file = raw["name"], raw["op"], file
        # the attribute key changed over MXNet versions: "param" (< 0.9), "attr", "attrs"
        self.attrs = raw.get("attrs") or raw.get("attr") or raw.get("param") or {}
        self.inputs = [(int(e[0]), int(e[1])) for e in raw.get("inputs", [])]

    def fail(self, message):
        raise packed.PackedFormatError(f"{self.file}: node '{self.name}' ({self.op}): {message}")

    def shape_error(self, message):
        raise _ShapeError(f"node '{self.name}' ({self.op}): {message}")

    def _get(self, key, parse, default, what):
        text = self.attrs.get(key)
        if text is None:
            if default is _REQUIRED:
                self.fail(f"attribute {key!r} is missing")
            return default
        try:
            return parse(str(text))
        except ValueError:
            self.fail(f"attribute {key}={text!r} is not {what}")

    def int(self, key, default=None):
        return self._get(key, _parse_int, default, "an integer")

    def optional_int(self, key):
        """An integer attribute that may be missing or 'None' (both give None)."""
        return self._get(key, _parse_optional_int, None, "an integer or None")

    def float(self, key, default=None):
        return self._get(key, _parse_float, default, "a number")

    def bool(self, key, default=None):
        return self._get(key, _parse_bool, default, "a boolean")

    def tuple(self, key, default=()):
        return self._get(key, _parse_tuple, default, "a tuple of integers")

    def str(self, key, default=None, choices=None):
        value = self._get(key, str, default, "a string")
        if choices is not None and value not in choices:
            self.fail(f"attribute {key}={value!r} is not supported (supported: {', '.join(choices)})")
        return value

    def pair(self, key, default):
        """A 2-D window attribute: kernel, stride, pad, dilate; '()' means the default."""
        value = self.tuple(key) or default
        if value is _REQUIRED:
            self.fail(f"attribute {key!r} is missing")
        if len(value) != 2 or any(v is None for v in value):
            self.fail(f"attribute {key}={self.attrs.get(key)!r}: only 2-D (NCHW) windows are supported")
        return value


_REQUIRED = object()


def _parse_int(text):
    return int(text.strip().rstrip("L"))  # Python 2 era files write longs as "3L"


def _parse_float(text):
    return float(text)


def _parse_bool(text):
    lowered = text.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError(text)


def _parse_tuple(text):
    """'(3, 3)', '[3,3]', '3', '()', '(None, 2)' -> tuple of ints (None kept)."""
    body = text.strip().strip("()[]")
    items = [item.strip() for item in body.split(",") if item.strip()]
    return tuple(None if item == "None" else _parse_int(item) for item in items)


def _parse_optional_int(text):
    return None if text.strip() == "None" else _parse_int(text)


# ------------------------------------------------------------------ shape helpers (dims may be None)

def _window_out(node, axis, size, kernel, stride, pad, dilate=1, ceil=False):
    """Output size of a window sliding along one axis (MXNet's formula; ceil for 'full' pooling)."""
    if size is None:
        return None
    span = dilate * (kernel - 1) + 1
    if size + 2 * pad < span:
        node.shape_error(f"the {'HW'[axis]} size {size} (padded {size + 2 * pad}) is smaller than the "
                         f"window ({span})")
    extent = size + 2 * pad - span
    return (-(-extent // stride) if ceil else extent // stride) + 1


def _broadcast(node, a, b):
    """The numpy/MXNet broadcast of shapes a and b (unknown dims None)."""
    if len(a) < len(b):
        a = (1,) * (len(b) - len(a)) + a
    b = (1,) * (len(a) - len(b)) + b
    out = []
    for x, y in zip(a, b):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif x is None or y is None:
            out.append(x if y is None else y)
        else:
            node.shape_error(f"shapes {a} and {b} do not broadcast")
    return tuple(out)


def _product(dims):
    total = 1
    for d in dims:
        if d is None:
            return None
        total *= d
    return total


def _axis(node, axis, ndim):
    if not -ndim <= axis < ndim:
        node.shape_error(f"axis {axis} is out of range for {ndim}-D input")
    return axis % ndim


# ------------------------------------------------------------------ ops

class _Op:
    """One node's computation. ``data`` leading inputs are passed to run() (None: all of them); the
    rest are parameters, which must be constants and are given to __init__ as arrays.

    infer(*shapes) returns the output shape (dims may be None at load time, when only the channels
    are known); run(*arrays, out=None) returns the output, written into ``out`` when given (the
    planner gives every step but a view an arena buffer). ``view`` ops return a view of their input.
    """

    data = 1
    takes_params = False
    used_inputs = None  # inputs past this count are ignored (a SoftmaxOutput's label)
    view = False

    def __init__(self, node, params, runtime):
        self.node = node
        if params and not self.takes_params:
            node.fail(f"takes {self.data} input(s), got {self.data + len(params)}")

    def infer(self, shape):
        return shape


def _sigmoid(x, out):
    # 0.5 (1 + tanh(x / 2)) = 1 / (1 + exp(-x)) without overflow for large -x
    out = np.multiply(x, _F32(0.5), out=out)
    np.tanh(out, out=out)
    out += _F32(1)
    out *= _F32(0.5)
    return out


def _sign(x, out, zero_one=False):
    """+1 for x >= 0 else -1 (NaN -> -1); with zero_one the same sign as 1 / 0."""
    positive = np.greater_equal(x, 0)
    if out is None:
        out = np.empty(x.shape, _F32)
    if zero_one:
        np.copyto(out, positive)
    else:
        np.multiply(positive, _F32(2), out=out)
        out -= _F32(1)
    return out


_ACTIVATIONS = {
    "relu": lambda x, out: np.maximum(x, _F32(0), out=out),
    "sigmoid": _sigmoid,
    "tanh": lambda x, out: np.tanh(x, out=out),
    "softrelu": lambda x, out: np.logaddexp(_F32(0), x, out=out),
    "softsign": lambda x, out: np.divide(x, np.abs(x) + _F32(1), out=out),
}


class _Unary(_Op):
    """Elementwise functions of one input: Activation (act_type) and the ops named in FUNCS."""

    FUNCS = {"relu": _ACTIVATIONS["relu"], "sigmoid": _sigmoid, "tanh": _ACTIVATIONS["tanh"],
             "negative": lambda x, out: np.negative(x, out=out), "abs": lambda x, out: np.abs(x, out=out),
             "sqrt": lambda x, out: np.sqrt(x, out=out), "square": lambda x, out: np.square(x, out=out)}

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        if node.op == "Activation":
            self.fn = _ACTIVATIONS[node.str("act_type", _REQUIRED, choices=list(_ACTIVATIONS))]
        else:
            self.fn = self.FUNCS[node.op]

    def run(self, x, out=None):
        return self.fn(x, out)


def _is_relu(op):
    return isinstance(op, _Unary) and op.fn is _ACTIVATIONS["relu"]


def _pool_first(op, pool):
    """(first, second) computing max pooling of op(x) with the pooling first: op is a ReLU or a
    BatchNorm. A BatchNorm's channels with a negative scale are negated before the pooling (their
    max is then the min), so that what follows the pooling is non-decreasing: x * |scale| + shift."""
    if _is_relu(op) or not (op.scale < 0).any():
        return pool, op
    flip = _Affine(op.node, op.axis, np.where(op.scale < 0, _F32(-1), _F32(1)), None)
    return flip, _Chain(pool, _Affine(op.node, op.axis, np.abs(op.scale), op.shift))


class _LeakyReLU(_Op):
    """LeakyReLU: leaky (slope), prelu (learned slope per channel), elu, selu; rrelu at inference."""

    _SELU_ALPHA, _SELU_LAMBDA = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946

    takes_params = True

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.kind = node.str("act_type", "leaky", choices=("leaky", "prelu", "elu", "selu", "rrelu"))
        self.slope = _F32(node.float("slope", 0.25))
        if self.kind == "rrelu":  # inference uses the mean of the random slope's range
            low, high = node.float("lower_bound", 0.125), node.float("upper_bound", 0.334)
            self.kind, self.slope = "leaky", _F32((low + high) / 2)
        if (self.kind == "prelu") != bool(params):
            node.fail("prelu takes a constant gamma input, the other act_types none")
        self.gamma = params[0].astype(_F32) if params else None

    def infer(self, shape):
        channels = shape[1] if len(shape) > 1 else 1
        if self.gamma is not None and self.gamma.size not in (1, channels) and channels is not None:
            self.node.shape_error(f"gamma has {self.gamma.size} values but the input has shape {shape}")
        return shape

    def run(self, x, out=None):
        if self.kind == "leaky":
            result = np.where(x > 0, x, x * self.slope)
        elif self.kind == "prelu":
            g = self.gamma.reshape((-1,) + (1,) * (x.ndim - 2)) if self.gamma.size > 1 else self.gamma
            result = np.where(x > 0, x, x * g)
        else:
            alpha, scale = (self.slope, _F32(1)) if self.kind == "elu" else \
                (_F32(self._SELU_ALPHA), _F32(self._SELU_LAMBDA))
            with np.errstate(over="ignore"):
                result = scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))
        return _into(result.astype(_F32, copy=False), out)


def _into(result, out):
    """``result``, copied into ``out`` if one is given."""
    if out is None:
        return result
    np.copyto(out, result)
    return out


class _SignOp(_Op):
    """bmx_det_sign / bmx_approx_sign forward: sign(x), +1 for x >= 0; zero_one gives (sign + 1) / 2."""

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.zero_one = node.bool("zero_one", False)

    def run(self, x, out=None):
        return _sign(x, out, self.zero_one)


class _WeightSign(_Op):
    """bmx_weight_sign forward: sign(w), +1 for w >= 0 (folded into a constant at load time)."""

    def run(self, x, out=None):
        return _sign(x, out)


def _round_half_away(v):
    """Rounds to the nearest integer, halves away from zero (C's round), exactly."""
    r = np.rint(v)
    tie = np.abs(v - np.trunc(v)) == 0.5
    return np.where(tie, np.trunc(v) + np.sign(v), r).astype(v.dtype)


class _KBit(_Op):
    """A k-bit quantizer: its ``bits`` attribute (2..8) gives 2^k - 1 levels above 0."""

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        bits = node.int("bits", _REQUIRED)
        if not 2 <= bits <= 8:
            node.fail(f"bits={bits} is outside 2..8")
        self.levels = _F32(2 ** bits - 1)


class _QuantizeAct(_KBit):
    """bmx_quantize_act forward: round((2^k - 1) clip(x, 0, 1)) / (2^k - 1) in float32."""

    def run(self, x, out=None):
        v = np.clip(x, _F32(0), _F32(1)).astype(_F32) * self.levels
        return _into(_round_half_away(v) / self.levels, out)


class _QuantizeWeight(_KBit):
    """bmx_quantize_weight forward (DoReFa, the whole tensor's max |tanh|), for constant folding."""

    def run(self, x, out=None):
        t = np.tanh(x.astype(_F32))
        two_m = _F32(2) * max(_F32(np.abs(t).max(initial=0)), _F32(1e-12))
        u = t / two_m + _F32(0.5)
        return _into(_F32(2) * (_round_half_away(u * self.levels) / self.levels) - _F32(1), out)


class _Scalar(_Op):
    """x op scalar (MXNet casts the scalar to the data type)."""

    FUNCS = {"_mul_scalar": lambda x, s, out: np.multiply(x, s, out=out),
              "_plus_scalar": lambda x, s, out: np.add(x, s, out=out),
              "_minus_scalar": lambda x, s, out: np.subtract(x, s, out=out),
              "_rminus_scalar": lambda x, s, out: np.subtract(s, x, out=out),
              "_div_scalar": lambda x, s, out: np.divide(x, s, out=out),
              "_rdiv_scalar": lambda x, s, out: np.divide(s, x, out=out)}

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.scalar = node.float("scalar", _REQUIRED)
        self.fn = self.FUNCS[node.op]

    def run(self, x, out=None):
        return self.fn(x, x.dtype.type(self.scalar), out)


class _Binary(_Op):
    """Elementwise binary ops; the elemwise_* family needs equal shapes, broadcast_* broadcasts."""

    data = None
    FUNCS = {name: (fn, name.startswith("broadcast_"))  # op name -> (ufunc, broadcasts)
             for fn, names in ((np.add, ("elemwise_add", "_plus", "_Plus", "_add", "broadcast_add", "broadcast_plus")),
                               (np.subtract, ("elemwise_sub", "_minus", "_Minus", "_sub", "broadcast_sub",
                                              "broadcast_minus")),
                               (np.multiply, ("elemwise_mul", "_mul", "_Mul", "broadcast_mul")),
                               (np.divide, ("elemwise_div", "_div", "_Div", "broadcast_div")))
             for name in names}

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.fn, self.broadcast = self.FUNCS[node.op]
        if len(node.inputs) != 2:
            node.fail(f"takes 2 inputs, got {len(node.inputs)}")

    def infer(self, a, b):
        if not self.broadcast and (len(a) != len(b) or _broadcast(self.node, a, b) != _merge(a, b)):
            self.node.shape_error(f"needs equal shapes, got {a} and {b}")
        return _broadcast(self.node, a, b)

    def run(self, a, b, out=None):
        return self.fn(a, b, out=out)


def _merge(a, b):
    """Shape a with its unknown dims taken from b."""
    return tuple(x if y is None else y for x, y in zip(a, b))


class _AddN(_Op):
    """add_n / ElementWiseSum: the sum of any number of equally shaped inputs."""

    data = None

    def infer(self, *shapes):
        for s in shapes[1:]:
            if len(s) != len(shapes[0]) or any(None not in (x, y) and x != y for x, y in zip(s, shapes[0])):
                self.node.shape_error(f"needs equal shapes, got {shapes}")
        return shapes[0]

    def run(self, *xs, out=None):
        out = np.add(xs[0], xs[1], out=out) if len(xs) > 1 else _into(xs[0].copy(), out)
        for x in xs[2:]:
            out += x
        return out


class _Identity(_Op):
    """BlockGrad, stop_gradient, _copy, identity, Dropout (the identity at inference)."""

    view = True

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        if node.op == "Dropout" and node.str("mode", "training") != "training":
            node.fail("Dropout with mode='always' is random at inference too")

    def run(self, x, out=None):
        return _into(x, out)


class _Clip(_Op):
    """clip(x, a_min, a_max)."""

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.low, self.high = node.float("a_min", _REQUIRED), node.float("a_max", _REQUIRED)

    def run(self, x, out=None):
        return np.clip(x, x.dtype.type(self.low), x.dtype.type(self.high), out=out)


class _Reduce(_Op):
    """sum / mean over ``axis`` (all axes if empty), with keepdims and exclude."""

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.axis = node.tuple("axis", ())
        self.keepdims = node.bool("keepdims", False)
        self.exclude = node.bool("exclude", False)
        self.fn = np.sum if node.op == "sum" else np.mean

    def _axes(self, ndim):
        axes = {_axis(self.node, a, ndim) for a in self.axis} if self.axis else set(range(ndim))
        return tuple(sorted(set(range(ndim)) - axes if self.exclude else axes))

    def infer(self, shape):
        axes = self._axes(len(shape))
        if self.keepdims:
            return tuple(1 if i in axes else d for i, d in enumerate(shape))
        # a full reduction is 0-d in numpy but (1,) in MXNet's legacy semantics
        return tuple(d for i, d in enumerate(shape) if i not in axes) or (1,)

    def run(self, x, out=None):
        return _into(self.fn(x, axis=self._axes(x.ndim), keepdims=self.keepdims).reshape(self.infer(x.shape)), out)


class _Affine(_Op):
    """x * scale (+ shift) per channel along ``axis``."""

    def __init__(self, node, axis, scale, shift):
        super().__init__(node, [], None)
        self.axis, self.scale, self.shift = axis, scale, shift

    def infer(self, shape):
        axis = _axis(self.node, self.axis, len(shape))
        if shape[axis] not in (None, self.scale.size):
            self.node.shape_error(f"has {self.scale.size} channels but the input has shape {shape} (axis {axis})")
        return shape

    def run(self, x, out=None):
        axis = self.axis % x.ndim
        shape = (-1,) + (1,) * (x.ndim - axis - 1)
        out = np.multiply(x, self.scale.reshape(shape), out=out)
        if self.shift is not None:
            out += self.shift.reshape(shape)
        return out


class _BatchNorm(_Affine):
    """Inference BatchNorm: (x - moving_mean) / sqrt(moving_var + eps) * gamma + beta, folded once
    into x * scale + shift. fix_gamma (MXNet's default) means gamma = 1."""

    takes_params = True

    def __init__(self, node, params, runtime):
        _Op.__init__(self, node, params, runtime)
        if len(params) != 4:
            node.fail(f"takes data, gamma, beta, moving_mean, moving_var; got {len(params) + 1} inputs")
        gamma, beta, mean, var = (np.asarray(p, np.float64).reshape(-1) for p in params)
        if not gamma.size == beta.size == mean.size == var.size:
            node.fail(f"gamma, beta, moving_mean, moving_var have different sizes "
                      f"{[p.size for p in (gamma, beta, mean, var)]}")
        eps = node.float("eps", 1e-3)
        if node.bool("fix_gamma", True):
            gamma = np.ones_like(gamma)
        self.axis = node.int("axis", 1)
        self.scale = (gamma / np.sqrt(var + eps)).astype(_F32)
        # the shift from the float32 scale: when the scale is exact (say 1), so is the shift
        self.shift = (beta - mean * self.scale.astype(np.float64)).astype(_F32)


class _Chain(_Op):
    """Two single-input ops in a row, the second working in place on the first's output."""

    def __init__(self, first, second):
        super().__init__(first.node, [], None)
        self.first, self.second = first, second

    def infer(self, shape):
        return self.second.infer(self.first.infer(shape))

    def run(self, x, out=None):
        y = self.first.run(x, out=out)
        return self.second.run(y, out=y)


class _BatchNormSign(_Op):
    """A BatchNorm whose output feeds only signs (bmx_xnor_conv2d, sign ops): it returns a z with
    z >= 0 exactly where x * scale + shift >= 0, in one pass instead of two: x - t per channel
    with t = -shift / scale, negated where scale < 0, and the sign of shift where scale = 0."""

    def __init__(self, bn):
        super().__init__(bn.node, [], None)
        self.axis, self.infer = bn.axis, bn.infer
        scale, shift = bn.scale.astype(np.float64), bn.shift.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.threshold = np.where(scale != 0, -shift / scale, 0).astype(_F32)
        self.negated = np.flatnonzero(scale < 0)
        self.constant = np.flatnonzero(scale == 0)
        self.constant_sign = np.where(shift[self.constant] >= 0, _F32(1), _F32(-1))

    def input_threshold(self):
        """(m, u) for bmx.xnor's packing: m * x >= u holds exactly where run() gives z >= 0.

        z is x - t per channel (negated where scale < 0) or a constant (scale = 0), so the bit is
        x >= t, resp. -x >= -t, since float32 x - t is >= 0 exactly when x >= t (with subnormals a
        difference rounds to 0 only when x = t). Not where t is infinite or NaN: x - t is then NaN
        for some x. t = NaN, or m * t = +inf, gives 0 for every x: m = 0 with u = 1; m * t = -inf
        gives 1 for every x but NaN and m * x = -inf: u = float32's lowest.
        """
        m = np.ones(self.threshold.size, np.int32)
        m[self.negated] = -1
        u = (m * self.threshold).astype(_F32)  # exact: a sign flip
        never = np.isnan(u) | (u == np.inf)
        u[u == -np.inf] = _LOWEST
        m[never], u[never] = 0, 1
        m[self.constant] = 0
        u[self.constant] = np.where(self.constant_sign > 0, _F32(0), _F32(1))
        return m, u

    def run(self, x, out=None):
        axis = self.axis % x.ndim
        shape = (-1,) + (1,) * (x.ndim - axis - 1)
        out = np.subtract(x, self.threshold.reshape(shape), out=out)
        lead = (slice(None),) * axis
        if self.negated.size:
            out[lead + (self.negated,)] *= _F32(-1)
        if self.constant.size:
            out[lead + (self.constant,)] = self.constant_sign.reshape(shape)
        return out


def _read_window(op, node):
    """Sets a convolution's kernel, stride, pad, dilate and groups from its node's attributes."""
    op.kernel = node.pair("kernel", _REQUIRED)
    op.stride = node.pair("stride", (1, 1))
    op.pad = node.pair("pad", (0, 0))
    op.dilate = node.pair("dilate", (1, 1))
    op.groups = node.int("num_group", 1)


class _Convolution(_Op):
    """Float 2-D convolution (NCHW, groups, stride, pad, dilate, optional bias). A 1x1 kernel (stride
    1, no padding) multiplies the channels directly (BLAS). Other kernels run floatops.h's direct
    convolution, which reads the input in place of an im2col matrix, where its AVX2 / AVX-512
    variants run (bmx.xnor.get_kernel()); else im2col and a matrix product, which BLAS then does
    faster. Sums in a different order, and with FMA: the paths agree up to float rounding."""

    takes_params = True

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        _read_window(self, node)
        filters = node.int("num_filter", _REQUIRED)
        if node.str("layout", "NCHW") != "NCHW":
            node.fail(f"layout {node.attrs['layout']} is not supported (only NCHW)")
        no_bias = node.bool("no_bias", False)
        if len(params) != (1 if no_bias else 2):
            node.fail(f"expects {'data, weight' if no_bias else 'data, weight, bias'}, got {len(params) + 1} inputs")
        weight = params[0]
        if weight.ndim != 4 or weight.shape[0] != filters or weight.shape[2:] != self.kernel or filters % self.groups:
            node.fail(f"weight shape {weight.shape} does not fit num_filter={filters}, kernel={self.kernel}, "
                      f"num_group={self.groups}")
        self.filters, self.group_channels = filters, weight.shape[1]
        self.scratch, self.threads = runtime.scratch, runtime.threads
        if not no_bias and params[1].size != filters:
            node.fail(f"bias has {params[1].size} values for {filters} filters")
        self._set_weights(weight.reshape(filters, -1), None if no_bias else params[1].reshape(-1))

    def _set_weights(self, weight, bias):
        """weight (O, C/groups * KH * KW), bias (O,) or None. With im2col, the bias rides along in
        the matrix product as one more column of the weights against a row of ones."""
        g = self.groups
        self.weight = np.ascontiguousarray(weight.reshape(g, self.filters // g, -1), dtype=_F32)
        self.weight_t = np.ascontiguousarray(self.weight.transpose(0, 2, 1))  # the direct kernel's layout
        self.bias = None if bias is None else np.asarray(bias, _F32)
        if bias is not None:
            self.weight_and_bias = np.concatenate([self.weight, self.bias.reshape(g, -1, 1)], axis=2)

    def fold_batchnorm(self, bn):
        """This convolution followed by the BatchNorm ``bn`` (over its output channels), as one."""
        scale, shift = bn.scale.astype(np.float64), bn.shift.astype(np.float64)
        bias = shift if self.bias is None else self.bias * scale + shift
        self._set_weights(self.weight.reshape(self.filters, -1) * scale[:, None], bias)

    def infer(self, shape):
        if len(shape) != 4:
            self.node.shape_error(f"needs a 4-D NCHW input, got shape {shape}")
        channels = self.groups * self.group_channels
        if shape[1] not in (None, channels):
            self.node.shape_error(f"needs {channels} input channels, got shape {shape}")
        return (shape[0], self.filters) + tuple(
            _window_out(self.node, i, shape[2 + i], self.kernel[i], self.stride[i], self.pad[i], self.dilate[i])
            for i in range(2))

    def run(self, x, out=None):
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.pad, self.dilate
        oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        g = self.groups
        weight, add_bias = self.weight, self.bias is not None
        if (kh, kw, ph, pw, sh, sw) == (1, 1, 0, 0, 1, 1):
            cols = x.reshape(n, g, c // g, oh * ow)
        elif xnor.get_kernel() != "portable":
            target = out if out is not None and _planes_contiguous(out) else np.empty((n, self.filters, oh, ow), _F32)
            _xnor.conv_f32(np.ascontiguousarray(x), self.weight_t, self.bias, target, self.kernel, self.stride,
                           self.pad, self.dilate, _xnor.KERNELS[xnor.get_kernel()], self.threads)
            return target if out is None or target is out else _into(target, out)
        else:
            padded = _zero_padded(self.scratch("pad", (n, c, h + 2 * ph, w + 2 * pw)), x, ph, pw) if ph or pw else x
            s = padded.strides
            taps = np.lib.stride_tricks.as_strided(
                padded, (n, g, c // g, kh, kw, oh, ow),
                (s[0], s[1] * (c // g), s[1], s[2] * dh, s[3] * dw, s[2] * sh, s[3] * sw), writeable=False)
            rows = (c // g) * kh * kw
            cols = self.scratch("cols", (n, g, rows + add_bias, oh * ow))
            np.copyto(cols[:, :, :rows].reshape(taps.shape), taps)
            if add_bias:
                cols[:, :, rows] = 1
                weight, add_bias = self.weight_and_bias, False
        shape = (n, g, self.filters // g, oh * ow)
        if out is not None and out.flags.c_contiguous:
            np.matmul(weight, cols, out=out.reshape(shape))
        else:
            out = _into(np.matmul(weight, cols).reshape(n, self.filters, oh, ow), out)
        if add_bias:
            out += self.bias.reshape(-1, 1, 1)
        return out


class _XnorConv(_Op):
    """bmx_xnor_conv2d: conv(pad_{pad_value}(sign(data)), sign(W)) on packed bits (bmx.xnor.conv2d).

    The weight is int64 (O, KH, KW, words) holding the uint64 words of bmx.xnor.pack_weights; its
    PackedWeights are built once per input channel count (known at load time for these models).
    ``input_threshold``: the (m, u) of a BatchNorm before it that Model._rewrite folded into the
    packing of its input (see _BatchNormSign.input_threshold), or None.
    """

    takes_params = True

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        _read_window(self, node)
        self.filters = node.int("num_filter", _REQUIRED)
        self.pad_value = node.float("pad_value", -1.0)
        if self.pad_value not in (-1.0, 0.0):
            node.fail(f"pad_value={self.pad_value} is not -1 or 0")
        if len(params) != 1:
            node.fail(f"expects data and a packed weight, got {len(params) + 1} inputs")
        words = params[0]
        if words.dtype != np.int64 or words.ndim != 4 or words.shape[0] != self.filters or \
                words.shape[1:3] != self.kernel or self.filters % self.groups:
            node.fail(f"weight must be int64 (num_filter={self.filters}, {self.kernel[0]}, {self.kernel[1]}, words) "
                      f"with num_filter divisible by num_group={self.groups}; got {words.dtype} {words.shape}")
        self.words = np.ascontiguousarray(words).view(np.uint64)
        self.threads = runtime.threads
        self.packed = {}  # input channels -> PackedWeights
        self.input_threshold = None

    def weights_for(self, channels):
        if channels not in self.packed:
            if channels % self.groups:
                self.node.shape_error(f"{channels} input channels do not split into num_group={self.groups}")
            group_channels = channels // self.groups
            if xnor.words_for_bits(group_channels) != self.words.shape[3]:
                self.node.shape_error(f"the packed weight holds {self.words.shape[3]} words per tap, "
                                      f"which does not fit {group_channels} channels per group")
            try:
                self.packed[channels] = xnor.PackedWeights(self.words, in_channels=group_channels, groups=self.groups)
            except ValueError as err:
                self.node.fail(f"invalid packed weight: {err}")
        return self.packed[channels]

    def infer(self, shape):
        if len(shape) != 4:
            self.node.shape_error(f"needs a 4-D NCHW input, got shape {shape}")
        if shape[1] is not None:
            self.weights_for(shape[1])
            if self.input_threshold is not None and self.input_threshold[0].size != shape[1]:
                self.node.shape_error(f"the BatchNorm folded into it has {self.input_threshold[0].size} "
                                      f"channels but its input has shape {shape}")
        return (shape[0], self.filters) + tuple(
            _window_out(self.node, i, shape[2 + i], self.kernel[i], self.stride[i], self.pad[i], self.dilate[i])
            for i in range(2))

    def run(self, x, out=None):
        # the kernels write float32 NCHW themselves, into any out whose (H, W) planes are contiguous
        # (a channel slice of a Concat's buffer is)
        target = out if out is not None and _planes_contiguous(out) else np.empty(self.infer(x.shape), _F32)
        xnor.conv2d(x, self.packed[x.shape[1]], stride=self.stride, padding=self.pad, dilation=self.dilate,
                    pad_value=self.pad_value, input_threshold=self.input_threshold, out=target,
                    threads=self.threads)
        return target if target is out or out is None else _into(target, out)


def _planes_contiguous(a):
    """Whether each (H, W) plane of the 4-D float32 array ``a`` is contiguous (strides >= 0)."""
    n, c, h, w = a.shape
    s = a.strides
    return (s[3] == 4 or w == 1) and (s[2] == 4 * w or h == 1) and s[0] >= 0 and s[1] >= 0


class _Pooling(_Op):
    """max / avg / sum pooling with MXNet's conventions: 'valid' (floor) or 'full' (ceil) output
    sizes; avg divides by the window clipped to the padded input (count_include_pad, the default)
    or to the input; max is MXNet's loop, starting from float32's lowest value and taking greater
    values only (padding and NaN never win; a window of padding only gives the lowest value), in C
    (floatops.h)."""

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.kind = node.str("pool_type", "max", choices=("max", "avg", "sum"))
        self.global_pool = node.bool("global_pool", False)
        self.ceil = node.str("pooling_convention", "valid", choices=("valid", "full")) == "full"
        self.include_pad = node.bool("count_include_pad", True)
        if node.str("layout", "NCHW") != "NCHW":
            node.fail(f"layout {node.attrs['layout']} is not supported (only NCHW)")
        if not self.global_pool:
            self.kernel = node.pair("kernel", _REQUIRED)
            self.stride = node.pair("stride", (1, 1))
            self.pad = node.pair("pad", (0, 0))
        self.divisors = {}  # (H, W) -> avg divisor per output position
        self.scratch = runtime.scratch
        self.threads = runtime.threads
        # what Model._rewrite folded into a max pooling's output loop: x * scale (+ shift) per
        # channel, then ReLU
        self.scale = self.shift = None
        self.relu = False

    def commutes_with_monotone(self):
        """max(f(x)) = f(max(x)) over every window for a non-decreasing f (ReLU, x * s + b with
        s >= 0; rounding keeps them non-decreasing), unless a window holds padding only ('full'
        windows can overhang the padded input, and so can a pad as large as the kernel; and windows
        of NaN or -inf only, which give the lowest value either way, aside)."""
        return self.kind == "max" and (self.global_pool or not self.ceil and self.pad[0] < self.kernel[0]
                                       and self.pad[1] < self.kernel[1])

    def infer(self, shape):
        if len(shape) != 4:
            self.node.shape_error(f"needs a 4-D NCHW input, got shape {shape}")
        if self.scale is not None and shape[1] not in (None, self.scale.size):
            self.node.shape_error(f"the per-channel scale folded into it has {self.scale.size} channels but its "
                                  f"input has shape {shape}")
        if self.global_pool:
            return shape[:2] + (1, 1)
        return shape[:2] + tuple(_window_out(self.node, i, shape[2 + i], self.kernel[i], self.stride[i], self.pad[i],
                                             ceil=self.ceil) for i in range(2))

    def run(self, x, out=None):
        if self.kind == "max":
            return self._max(x, out)
        if self.global_pool:
            flat = x.reshape(x.shape[0], x.shape[1], -1)
            reduce = np.mean if self.kind == "avg" else np.sum
            return _into(reduce(flat, axis=2).reshape(x.shape[:2] + (1, 1)), out)
        n, c, h, w = x.shape
        oh, ow = self.infer(x.shape)[2:]
        # separable, rows of each window first (contiguous, fast), then its columns; taps that fall
        # on padding are skipped instead of padding a copy (padding adds 0 to a sum)
        rows = self.scratch("rows", (n, c, oh, w))
        rows = _sum_axis(x, 2, oh, self.kernel[0], self.stride[0], self.pad[0], rows)
        out = _sum_axis(rows, 3, ow, self.kernel[1], self.stride[1], self.pad[1],
                        np.empty((n, c, oh, ow), _F32) if out is None else out)
        if self.kind == "avg":
            count = self._window_sizes(h, w, oh, ow)
            np.divide(out, count, out=out, where=count > 0)  # an empty window sums to 0: it stays 0
        return out

    def _max(self, x, out):
        geometry = ((x.shape[2], x.shape[3]), (1, 1), (0, 0)) if self.global_pool else \
            (self.kernel, self.stride, self.pad)
        if not _planes_contiguous(x):
            x = np.ascontiguousarray(x)
        target = out if out is not None and _planes_contiguous(out) else np.empty(self.infer(x.shape), _F32)
        _xnor.max_pool(x, target, *geometry, self.scale, self.shift, self.relu, self.threads)
        return target if out is None or target is out else _into(target, out)

    def _window_sizes(self, h, w, oh, ow):
        if (h, w) not in self.divisors:
            sizes = []
            for size, out_size, k, s, p in ((h, oh, self.kernel[0], self.stride[0], self.pad[0]),
                                            (w, ow, self.kernel[1], self.stride[1], self.pad[1])):
                start = np.arange(out_size) * s - p
                end = np.minimum(start + k, size + p)
                if not self.include_pad:
                    start, end = np.maximum(start, 0), np.minimum(end, size)
                sizes.append(np.maximum(end - start, 0))
            self.divisors[(h, w)] = np.outer(sizes[0], sizes[1]).astype(_F32)
        return self.divisors[(h, w)]


def _sum_axis(x, axis, size, kernel, stride, pad, out):
    """out (``size`` along ``axis``) = the sums of x over windows of ``kernel`` along ``axis``:
    out[o] = sum over k of x[o * stride + k - pad], skipping indices outside x (0 if none is in)."""
    length = x.shape[axis]
    lead = (slice(None),) * axis
    spans = []
    for k in range(kernel):
        first = max(0, -(-(pad - k) // stride))  # first output whose tap k lands inside x
        last = min(size, (length - 1 - k + pad) // stride + 1)
        if first < last:
            start = first * stride + k - pad
            spans.append((first, last, x[lead + (slice(start, start + (last - first - 1) * stride + 1, stride),)]))
    full = [i for i, (first, last, _) in enumerate(spans) if (first, last) == (0, size)]
    if full:
        np.copyto(out, spans.pop(full[0])[2])
    else:
        out.fill(0)
    for first, last, tap in spans:
        target = out[lead + (slice(first, last),)]
        np.add(target, tap, out=target)
    return out


def _zero_padded(buffer, x, ph, pw):
    """NCHW ``x`` written into ``buffer`` (H + 2 ph, W + 2 pw) with zeros around it."""
    h, w = x.shape[2:]
    buffer[:, :, :ph] = 0
    buffer[:, :, ph + h:] = 0
    buffer[:, :, ph:ph + h, :pw] = 0
    buffer[:, :, ph:ph + h, pw + w:] = 0
    buffer[:, :, ph:ph + h, pw:pw + w] = x
    return buffer


class _Concat(_Op):
    """Concat / concat along ``dim``. Usually no copy happens here: see Model._placement."""

    data = None

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.dim = node.int("dim", 1)

    def infer(self, *shapes):
        first = shapes[0]
        axis = _axis(self.node, self.dim, len(first))
        for s in shapes[1:]:
            if len(s) != len(first) or any(None not in (a, b) and a != b
                                            for i, (a, b) in enumerate(zip(s, first)) if i != axis):
                self.node.shape_error(f"inputs {shapes} differ outside the concatenation axis {axis}")
        merged = tuple(next((s[i] for s in shapes if s[i] is not None), None) for i in range(len(first)))
        total = None if any(s[axis] is None for s in shapes) else sum(s[axis] for s in shapes)
        return merged[:axis] + (total,) + merged[axis + 1:]

    def run(self, *xs, out=None):
        return np.concatenate(xs, axis=self.dim % xs[0].ndim, out=out)


class _Flatten(_Op):
    """(N, ...) -> (N, product of the rest)."""

    view = True

    def infer(self, shape):
        if not shape:
            self.node.shape_error("needs at least a 1-D input")
        return (shape[0], _product(shape[1:]))

    def run(self, x, out=None):
        return _into(x.reshape(x.shape[0], -1), out)


class _Reshape(_Op):
    """Reshape with MXNet's special values: 0 copy, -1 infer, -2 copy the rest, -3 merge two,
    -4 split one (followed by the two sizes); reverse applies them from the right."""

    view = True

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.target = node.tuple("shape", ())
        if not self.target or node.tuple("target_shape", ()):
            node.fail("needs the 'shape' attribute (the deprecated target_shape is not supported)")
        self.reverse = node.bool("reverse", False)

    def infer(self, shape):
        src, target = (shape[::-1], self.target[::-1]) if self.reverse else (shape, self.target)
        out, i, j, unknown = [], 0, 0, None

        def source(k):
            if k >= len(src):
                self.node.shape_error(f"shape={self.target} needs more axes than the input {shape} has")
            return src[k]

        while j < len(target):
            v = target[j]
            if v > 0:
                out.append(v)
                i += 1
            elif v == 0:
                out.append(source(i))
                i += 1
            elif v == -1:
                if unknown is not None:
                    self.node.shape_error(f"shape={self.target} has more than one -1")
                unknown = len(out)
                out.append(-1)
                i += 1
            elif v == -2:
                out.extend(src[i:])
                i = len(src)
            elif v == -3:
                out.append(_product([source(i), source(i + 1)]))
                i += 2
            elif v == -4 and j + 2 < len(target):
                d0, d1, d2 = source(i), target[j + 1], target[j + 2]
                if d0 is not None:
                    d1, d2 = (d0 // d2 if d1 == -1 else d1), (d0 // d1 if d2 == -1 else d2)
                    if d1 * d2 != d0:
                        self.node.shape_error(f"cannot split {d0} into ({target[j + 1]}, {target[j + 2]})")
                out.extend([d1 if d1 != -1 else None, d2 if d2 != -1 else None])
                i += 1
                j += 2
            else:
                self.node.shape_error(f"unsupported value {v} in shape={self.target}")
            j += 1
        total = _product(shape)
        if unknown is not None:
            known = _product([d for k, d in enumerate(out) if k != unknown])
            out[unknown] = None if total is None or known is None else total // max(known, 1)
        if None not in out and total is not None and _product(out) != total:
            self.node.shape_error(f"cannot reshape {shape} to {self.target}")
        return tuple(out[::-1] if self.reverse else out)

    def run(self, x, out=None):
        return _into(x.reshape(self.infer(x.shape)), out)


class _FullyConnected(_Op):
    """x W^T + b over the flattened input (flatten, the default) or over its last axis."""

    takes_params = True

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        hidden = node.int("num_hidden", _REQUIRED)
        no_bias = node.bool("no_bias", False)
        self.flatten = node.bool("flatten", True)
        if len(params) != (1 if no_bias else 2):
            node.fail(f"expects {'data, weight' if no_bias else 'data, weight, bias'}, got {len(params) + 1} inputs")
        if params[0].ndim != 2 or params[0].shape[0] != hidden:
            node.fail(f"weight shape {params[0].shape} does not fit num_hidden={hidden}")
        self.weight_t = np.ascontiguousarray(params[0].T, dtype=_F32)
        self.bias = None if no_bias else params[1].astype(_F32).reshape(-1)

    def infer(self, shape):
        units = self.weight_t.shape[0]
        features = _product(shape[1:]) if self.flatten else shape[-1]
        if features not in (None, units):
            self.node.shape_error(f"needs {units} input features, got shape {shape}")
        return (shape[0], self.weight_t.shape[1]) if self.flatten else shape[:-1] + (self.weight_t.shape[1],)

    def run(self, x, out=None):
        x2 = x.reshape(x.shape[0], -1) if self.flatten else x
        out = np.matmul(x2, self.weight_t, out=out)
        if self.bias is not None:
            out += self.bias
        return out


class _Pad(_Op):
    """pad: constant (constant_value), edge or reflect padding by pad_width (before, after) per axis."""

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.mode = node.str("mode", "constant", choices=("constant", "edge", "reflect"))
        width = node.tuple("pad_width", _REQUIRED)
        if len(width) % 2 or any(v is None or v < 0 for v in width):
            node.fail(f"pad_width={width} must be pairs of sizes >= 0")
        self.width = tuple(zip(width[::2], width[1::2]))
        self.value = node.float("constant_value", 0.0)

    def infer(self, shape):
        if len(shape) != len(self.width):
            self.node.shape_error(f"pad_width has {len(self.width)} axes, the input shape {shape}")
        return tuple(None if d is None else d + a + b for d, (a, b) in zip(shape, self.width))

    def run(self, x, out=None):
        if self.mode != "constant":
            return _into(np.pad(x, self.width, mode=self.mode), out)
        if out is None:
            out = np.empty(self.infer(x.shape), x.dtype)
        out.fill(self.value)
        out[tuple(slice(a, a + d) for d, (a, _) in zip(x.shape, self.width))] = x
        return out


class _SliceAxis(_Op):
    """slice_axis: [begin, end) along one axis, negative indices from the end, end None = all."""

    view = True

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.axis = node.int("axis", _REQUIRED)
        self.begin = node.int("begin", _REQUIRED)
        self.end = node.optional_int("end")

    def _range(self, shape):
        axis = _axis(self.node, self.axis, len(shape))
        size = shape[axis]
        if size is None:
            return axis, None
        begin = self.begin + size if self.begin < 0 else self.begin
        end = size if self.end is None else (self.end + size if self.end < 0 else self.end)
        if not 0 <= begin < end <= size:
            self.node.shape_error(f"slice [{self.begin}, {self.end}) is out of range for size {size}")
        return axis, slice(begin, end)

    def infer(self, shape):
        axis, index = self._range(shape)
        return shape[:axis] + (None if index is None else index.stop - index.start,) + shape[axis + 1:]

    def run(self, x, out=None):
        axis, index = self._range(x.shape)
        return _into(x[(slice(None),) * axis + (index,)], out)


class _Slice(_Op):
    """slice: begin, end, step per leading axis (None entries as in Python slices)."""

    view = True

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.begin, self.end = node.tuple("begin", _REQUIRED), node.tuple("end", _REQUIRED)
        self.step = node.tuple("step", ()) or (None,) * len(self.begin)
        if not len(self.begin) == len(self.end) == len(self.step):
            node.fail("begin, end and step must have the same length")

    def _index(self, shape):
        if len(self.begin) > len(shape):
            self.node.shape_error(f"slices {len(self.begin)} axes of a {len(shape)}-D input")
        return tuple(slice(b, e, s) for b, e, s in zip(self.begin, self.end, self.step))

    def infer(self, shape):
        index = self._index(shape)
        out = list(shape)
        for axis, sl in enumerate(index):
            out[axis] = None if shape[axis] is None else len(range(*sl.indices(shape[axis])))
        return tuple(out)

    def run(self, x, out=None):
        return _into(x[self._index(x.shape)], out)


class _Softmax(_Op):
    """softmax (axis, temperature), SoftmaxActivation (instance/channel) and SoftmaxOutput at
    inference (its label input is ignored)."""

    used_inputs = 1

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.temperature = 1.0
        self.flatten = False
        if node.op == "softmax":
            if node.bool("use_length", False):
                node.fail("use_length=True is not supported")
            self.axis = node.int("axis", -1)
            temperature = node.str("temperature", "None")
            self.temperature = 1.0 if temperature == "None" else node.float("temperature")
        elif node.op == "SoftmaxActivation":
            self.axis, self.flatten = 1, node.str("mode", "instance", choices=("instance", "channel")) == "instance"
        else:
            self.axis = -1 if node.bool("preserve_shape", False) else 1
            self.flatten = not node.bool("multi_output", False) and self.axis == 1

    def run(self, x, out=None):
        y = x.reshape(x.shape[0], -1) if self.flatten else x
        y = (y / _F32(self.temperature)) if self.temperature != 1.0 else y
        e = np.exp(y - y.max(axis=self.axis, keepdims=True))
        e /= e.sum(axis=self.axis, keepdims=True)
        return _into(e.reshape(x.shape), out)


_OPS = {
    "Convolution": _Convolution,
    "bmx_xnor_conv2d": _XnorConv,
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
    _OPS.update({name: _class for name in _class.FUNCS})

SUPPORTED_OPS = tuple(sorted(_OPS) + ["null"])


# ------------------------------------------------------------------ compiling and running a graph

class _Settings:
    """What the ops share with the model: the bit kernels' thread count and scratch space."""

    def __init__(self, threads):
        self.threads = threads
        self._scratch = {}

    def scratch(self, name, shape):
        """A float32 array of ``shape`` for temporaries, reused by every step and call (steps run
        one at a time): fresh allocations of this size would cost page faults on every call."""
        size = math.prod(shape)
        buffer = self._scratch.get(name)
        if buffer is None or buffer.size < size:
            buffer = self._scratch[name] = np.empty(size, _F32)
        return buffer[:size].reshape(shape)


class _Entry:
    """A compiled node: ``op`` applied to the values ``args``, giving the value ``out``."""

    __slots__ = ("node", "op", "args", "out")

    def __init__(self, node, op, args, out):
        self.node, self.op, self.args, self.out = node, op, args, out


class _Plan:
    """The steps for one input shape and the buffers they write into.

    ``steps``: (run, argument slots, output slot, output location, slots to drop afterwards); an
    output location is (buffer id, shape, index chain): the buffer seen with that shape (a Concat's
    full output), then indexed (to the slice of one of its inputs); or None (the step allocates).
    ``buffers``: float32 sizes of the arena, created by bind() and kept between calls, so that a
    call allocates (almost) nothing.
    """

    def __init__(self, steps, buffers, template):
        self.steps, self.buffers, self.template = steps, buffers, template
        self.bound = None

    def bind(self):
        """The steps with their output arrays, creating the arena if it is not there."""
        if self.bound is None:
            arena = [np.empty(size, _F32) for size in self.buffers]
            bound = []
            for run, args, out, location, frees in self.steps:
                view = None
                if location is not None:
                    buffer, shape, chain = location
                    view = arena[buffer][:math.prod(shape)].reshape(shape)
                    for index in chain:
                        view = view[index]
                bound.append((run, args, out, view, frees))
            self.bound = bound
        return self.bound


_MAX_PLANS = 8  # input shapes whose plans are kept (only the last one used keeps its arena)


class Model:
    """A compiled packed model: ``model(x)`` / ``model.forward(x)`` runs it on float32 NCHW input.

    Attributes: ``meta`` (model.json), ``input_name`` (the graph's input variable),
    ``input_channels`` (None if the graph does not fix them), ``output_names``, ``threads`` (of the
    bit kernels), ``directory``.
    """

    def __init__(self, packed_model, threads=None):
        """Compiles a :class:`bmx.packed.PackedModel`; ``threads`` defaults to bmx.xnor.default_threads()."""
        if threads is None:
            threads = xnor.default_threads()
        elif isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self.threads = int(threads)
        self.meta = packed_model.meta
        self.directory = packed_model.directory
        self._name = self.directory or "the model"  # how messages name it
        self._file = os.path.join(self._name, packed.SYMBOL_FILE)
        self._plans = {}
        self._bound = None  # the plan whose arena exists
        self._lock = threading.Lock()
        self._compile(packed_model.graph, self._parameters(packed_model.params))

    def __call__(self, x):
        return self.forward(x)

    def __repr__(self):
        return (f"bmx.runtime.Model({self.directory!r}, input {self.input_name!r} with "
                f"{self.input_channels} channels, {len(self._entries)} steps, threads={self.threads})")

    def _parameters(self, params):
        names = {}
        for key, value in params.items():
            kind, _, name = key.partition(":")
            if kind not in ("arg", "aux") or not name:
                raise packed.PackedFormatError(f"{os.path.join(self._name, packed.PARAMS_FILE)}: parameter key {key!r} "
                                               "is not 'arg:NAME' or 'aux:NAME'")
            if name in names:
                raise packed.PackedFormatError(
                    f"{os.path.join(self._name, packed.PARAMS_FILE)}: {name!r} is stored twice")
            names[name] = value
        return names

    # -------------------------------------------------------------- load time

    def _compile(self, graph, params):
        nodes = [_Node(raw, self._file) for raw in graph["nodes"]]
        heads = [self._entry_ref(h, len(nodes), "a head") for h in graph["heads"]]
        needed = self._needed(nodes, heads)
        settings = _Settings(self.threads)
        self._consts = {}  # value slot -> array
        self._entries = []
        slots = {}  # (node index, output index) -> value slot; slot 0 is the input
        self.input_name = None
        for index, node in enumerate(nodes):
            if index not in needed:
                continue
            if node.op == "null":
                if node.name in params:
                    slots[(index, 0)] = self._new_const(np.asarray(params[node.name]))
                elif self.input_name is None:
                    self.input_name, slots[(index, 0)] = node.name, 0
                else:
                    raise packed.PackedFormatError(
                        f"{self._file}: variables '{self.input_name}' and '{node.name}' have no parameter "
                        "values; the runtime runs models with one input")
                continue
            factory = _OPS.get(node.op)
            if factory is None:
                node.fail(f"op '{node.op}' is not supported by bmx.runtime (supported: {', '.join(SUPPORTED_OPS)})")
            used = node.inputs[:getattr(factory, "used_inputs", None)]
            args = []
            for nid, out in used:
                if (nid, out) not in slots:
                    node.fail(f"uses output {out} of node {nid}, which is missing, later in the graph, or not "
                              "an output the runtime computes (only first outputs are)")
                args.append(slots[(nid, out)])
            data = getattr(factory, "data", 1)
            data = len(args) if data is None else data
            if len(args) < data:
                node.fail(f"needs at least {data} input(s), got {len(args)}")
            for slot, (nid, _) in zip(args[data:], used[data:]):
                if slot not in self._consts:
                    node.fail(f"input '{nodes[nid].name}' must be a parameter (a constant), "
                              "but it depends on the input")
            op = factory(node, [self._consts[s] for s in args[data:]], settings)
            if all(s in self._consts for s in args[:data]):
                # constant folding: computed once here, never per call
                slots[(index, 0)] = self._new_const(op.run(*[self._consts[s] for s in args[:data]]))
            else:
                slots[(index, 0)] = out = len(self._entries) + 1
                self._entries.append(_Entry(node, op, args[:data], out))
        if self.input_name is None:
            raise packed.PackedFormatError(
                f"{self._file}: the graph has no input (every variable has a parameter value)")
        for nid, out in heads:
            if (nid, out) not in slots:
                nodes[nid].fail(f"its output {out} is a model output, but the runtime computes only first outputs")
        self._heads = [slots[h] for h in heads]
        self.output_names = [nodes[h[0]].name for h in heads]
        self.input_channels = self._first_layer_channels()
        self._values = len(self._entries) + 1  # value slots (the input, then each step's output)
        self._rewrite()
        try:  # with only the channels known: checks the graph and builds the packed weights now
            self._infer((None, self.input_channels, None, None))
        except _ShapeError as err:
            raise packed.PackedFormatError(f"{self._file}: {err}") from None

    def _rewrite(self):
        """Cheaper equivalents, where a value's only readers allow them:

        * a BatchNorm (over channels) read only by bmx_xnor_conv2d disappears: its threshold moves
          into their packing of its input (:meth:`_BatchNormSign.input_threshold`);
        * one read only by signs (bmx_xnor_conv2d, sign ops) otherwise computes a value with the same
          signs in one pass (:class:`_BatchNormSign`);
        * a float Convolution read only by a BatchNorm absorbs it (scaled weights, a bias);
        * ReLU or BatchNorm then max pooling becomes max pooling then ReLU or BatchNorm, which
          then run on the pooled, smaller tensor (a DenseNet transition's BN -> MaxPool 2x2);
        * a max pooling's only reader, if a per-channel affine map (a BatchNorm), and then its only
          reader, if a ReLU, disappear into the pooling's output loop (:meth:`_absorb_into_pool`).

        Steps that disappear hand their readers their input.
        """
        readers = {}
        for entry in self._entries:
            for a in entry.args:
                readers.setdefault(a, []).append(entry)
        folded = set()
        for entry in self._entries:
            only = readers.get(entry.out, []) if entry.out not in self._heads else []
            if isinstance(entry.op, _BatchNorm) and only and entry.op.axis in (1, -3) and \
                    all(isinstance(r.op, _XnorConv) for r in only):
                threshold = _BatchNormSign(entry.op).input_threshold()
                source = entry.args[0]
                for reader in only:
                    reader.op.input_threshold = threshold
                    reader.args = [source if a == entry.out else a for a in reader.args]
                readers[source] = [r for r in readers[source] if r is not entry] + only
                folded.add(entry.out)
            elif isinstance(entry.op, _BatchNorm) and only and \
                    all(isinstance(r.op, (_XnorConv, _SignOp)) for r in only):
                entry.op = _BatchNormSign(entry.op)
            elif isinstance(entry.op, _Convolution) and len(only) == 1 and isinstance(only[0].op, _BatchNorm) and \
                    only[0].op.axis in (1, -3) and only[0].op.scale.size == entry.op.filters:
                entry.op.fold_batchnorm(only[0].op)  # the BatchNorm becomes a copy-free identity
                only[0].op = _Identity(only[0].node, [], None)
            elif (_is_relu(entry.op) or isinstance(entry.op, _BatchNorm) and entry.op.axis in (1, -3)) and \
                    len(only) == 1 and isinstance(only[0].op, _Pooling) and only[0].op.commutes_with_monotone() \
                    and only[0].args == [entry.out]:
                entry.op, only[0].op = _pool_first(entry.op, only[0].op)
        for entry in self._entries:
            if isinstance(entry.op, _Pooling) and entry.op.kind == "max" and entry.out not in folded:
                folded.update(self._absorb_into_pool(entry, readers))
        self._entries = [e for e in self._entries if e.out not in folded]

    def _absorb_into_pool(self, entry, readers):
        """Folds into the max pooling of ``entry`` its only reader if that is a per-channel affine map
        (BatchNorm, scale and shift over axis 1), then (or else) the only reader of that if it is a
        ReLU; their readers read the pooling instead. Returns the slots of the steps folded away."""
        pool, current, gone = entry.op, entry, []
        while current.out not in self._heads:
            only = readers.get(current.out, [])
            if len(only) != 1 or only[0].args != [current.out] or only[0].out in self._heads:
                break
            reader = only[0]
            if isinstance(reader.op, _Affine) and reader.op.axis in (1, -3) and pool.scale is None and \
                    not pool.relu:
                pool.scale, pool.shift = reader.op.scale, reader.op.shift
            elif _is_relu(reader.op) and not pool.relu:
                pool.relu = True
            else:
                break
            gone.append(reader.out)
            current = reader
        if gone:
            last = gone[-1]
            for reader in readers.get(last, []):
                reader.args = [entry.out if a == last else a for a in reader.args]
            readers[entry.out] = readers.get(last, [])
        return gone

    def _entry_ref(self, entry, count, what):
        if not isinstance(entry, list) or len(entry) < 2 or not 0 <= int(entry[0]) < count:
            raise packed.PackedFormatError(f"{self._file}: {what} refers to a node that does not exist: {entry!r}")
        return int(entry[0]), int(entry[1])

    def _needed(self, nodes, heads):
        """Indices of the nodes the heads depend on (unused nodes need not be supported)."""
        needed, stack = set(), [h[0] for h in heads]
        while stack:
            index = stack.pop()
            if index in needed:
                continue
            needed.add(index)
            node = nodes[index]
            used = node.inputs[:getattr(_OPS.get(node.op), "used_inputs", None)]
            for nid, _ in used:
                if not 0 <= nid < index:
                    node.fail(f"input {nid} is not an earlier node (the graph must be in topological order)")
                stack.append(nid)
        return needed

    def _new_const(self, array):
        # constants get negative slots: a plan's register list ends with them (Python indexes
        # negative slots from the end); the input is slot 0 and the steps' outputs 1, 2, ...
        slot = -(len(self._consts) + 1)
        self._consts[slot] = array
        return slot

    def _first_layer_channels(self):
        """Input channels required by the first layer that reads the input directly, if it fixes them."""
        for entry in self._entries:
            if 0 in entry.args:
                if isinstance(entry.op, _Convolution):
                    return entry.op.groups * entry.op.group_channels
                if isinstance(entry.op, _BatchNorm) and entry.op.axis in (1, -3):
                    return entry.op.scale.size
        return None

    def _infer(self, input_shape):
        shapes = {slot: a.shape for slot, a in self._consts.items()}
        shapes[0] = input_shape
        for entry in self._entries:
            shapes[entry.out] = entry.op.infer(*[shapes[a] for a in entry.args])
        return shapes

    # -------------------------------------------------------------- per input shape

    def _plan(self, shape):
        try:
            shapes = self._infer(shape)
        except _ShapeError as err:
            raise ValueError(f"{self._name}: an input of shape {shape} does not fit the model: {err}") from None
        entries = self._entries
        placement, claimed = self._placement(shapes)
        # where each value lives: its own arena buffer, a slice of a Concat's buffer (placement),
        # the buffer of the value it is a view of, or (None) an array the step allocates itself
        base = {}
        for entry in entries:
            if entry.out in placement:
                base[entry.out] = placement[entry.out][0]
            elif entry.op.view:
                base[entry.out] = base.get(entry.args[0])
            else:
                base[entry.out] = entry.out
        first, last, reads = {}, {}, []
        for i, entry in enumerate(entries):
            read = set(entry.args)
            if entry.out in placement:
                read.add(placement[entry.out][0])  # writing into the Concat's buffer keeps it alive
            reads.append(read)
            for slot in read | {entry.out}:
                if base.get(slot) is not None:
                    first.setdefault(base[slot], i)
                    last[base[slot]] = i
        for head in self._heads:
            if base.get(head) is not None:
                last[base[head]] = len(entries)
        buffer_of, sizes = _assign_buffers(len(entries), shapes, first, last)
        # drop every value after its last reader: arrays the steps allocate are freed during the call
        last_read = {}
        for i, read in enumerate(reads):
            for slot in read:
                last_read[slot] = i
        for head in self._heads:
            last_read[head] = len(entries)
        frees = [[] for _ in entries]
        for slot, i in last_read.items():
            if slot >= 0 and i < len(entries):
                frees[i].append(slot)
        steps = []
        for i, entry in enumerate(entries):
            run, args = entry.op.run, entry.args
            if entry.out in claimed:
                run, args = _concat_rest(entry, shapes, claimed[entry.out])
            location = None
            if entry.out in placement:
                root, chain = placement[entry.out]
                location = (buffer_of[root], shapes[root], chain)
            elif base.get(entry.out) == entry.out:
                location = (buffer_of[entry.out], shapes[entry.out], ())
            steps.append((run, tuple(args), entry.out, location, tuple(frees[i])))
        template = [None] * (self._values + len(self._consts))
        for slot, array in self._consts.items():
            template[slot] = array
        if len(self._plans) >= _MAX_PLANS:
            self._plans.pop(next(iter(self._plans)))
        plan = self._plans[shape] = _Plan(steps, sizes, template)
        return plan

    def _placement(self, shapes):
        """Which values are written straight into a slice of the Concat that consumes them.

        Returns (placement, claimed): placement maps a slot to (root Concat slot, chain of index
        tuples into the root's buffer); claimed maps a Concat's slot to the argument positions it
        receives in place. A value qualifies if its step computes it into a given array (not a
        view, not the input, not a constant, not a model output) and no other Concat took it.
        Concats nest, so a DenseNet stage ends up in one buffer.
        """
        producers = {e.out: e for e in self._entries}
        heads = set(self._heads)
        placement, claimed = {}, {}
        for entry in reversed(self._entries):
            if not isinstance(entry.op, _Concat):
                continue
            root, chain = placement.get(entry.out, (entry.out, ()))
            axis = entry.op.dim % len(shapes[entry.out])
            offset = 0
            for position, a in enumerate(entry.args):
                size = shapes[a][axis]
                source = producers.get(a)
                if source is not None and a not in placement and a not in heads and entry.args.count(a) == 1 \
                        and not source.op.view:
                    placement[a] = (root, chain + ((slice(None),) * axis + (slice(offset, offset + size),),))
                    claimed.setdefault(entry.out, set()).add(position)
                offset += size
        return placement, claimed

    # -------------------------------------------------------------- per call

    def forward(self, x):
        """Runs the model on ``x``: (N, C, H, W) float32 (other real dtypes are converted).

        Returns the output array, e.g. (N, classes) logits, or a tuple if the graph has several
        heads. Raises ValueError if x does not fit the model (naming the node that rejects it).
        """
        x = self._check_input(x)
        with self._lock:  # the plan's buffers are shared by all calls
            plan = self._plans.get(x.shape) or self._plan(x.shape)
            if self._bound is not plan:
                if self._bound is not None:
                    self._bound.bound = None  # one arena at a time: free the previous shape's
                self._bound = plan
            regs = plan.template.copy()
            regs[0] = x
            for run, args, out, view, frees in plan.bind():
                regs[out] = run(*[regs[a] for a in args]) if view is None else run(*[regs[a] for a in args], out=view)
                for slot in frees:
                    regs[slot] = None
            outputs = tuple(np.array(regs[h]) for h in self._heads)  # copies: the arena is reused
        return outputs[0] if len(outputs) == 1 else outputs

    def _check_input(self, x):
        x = np.asarray(x)
        if x.dtype != _F32:
            if x.dtype.kind not in "fiub":
                raise TypeError(f"{self._name}: the input must be a real (float32) array, got {x.dtype}")
            x = x.astype(_F32)
        if x.ndim != 4:
            raise ValueError(f"{self._name}: the input must be 4-D (N, C, H, W), got shape {x.shape}")
        if self.input_channels is not None and x.shape[1] != self.input_channels:
            raise ValueError(f"{self._name}: the model takes {self.input_channels} input channels (NCHW), "
                             f"got shape {x.shape}")
        return np.ascontiguousarray(x)


def _assign_buffers(count, shapes, first, last):
    """Gives every value that owns memory an arena buffer, reusing those of dead values.

    A buffer is taken at the first step that writes into it and returned after the last step
    that reads it (or any view of it); best fit, else the largest free one grows. Returns
    (slot -> buffer id, buffer sizes in float32 elements).
    """
    starts, ends = {}, {}
    for slot, i in first.items():
        starts.setdefault(i, []).append(slot)
        ends.setdefault(last[slot], []).append(slot)
    sizes, free, buffer_of = [], [], {}
    for i in range(count):
        for slot in starts.get(i, ()):
            need = math.prod(shapes[slot])
            fits = [b for b in free if sizes[b] >= need]
            if fits:
                chosen = min(fits, key=lambda b: sizes[b])
            elif free:
                chosen = max(free, key=lambda b: sizes[b])
                sizes[chosen] = need
            else:
                chosen = len(sizes)
                sizes.append(need)
            if chosen in free:
                free.remove(chosen)
            buffer_of[slot] = chosen
        for slot in ends.get(i, ()):
            free.append(buffer_of[slot])
    return buffer_of, sizes


def _concat_rest(entry, shapes, in_place):
    """A Concat step whose inputs at positions ``in_place`` are already in its buffer: copies the rest."""
    axis = entry.op.dim % len(shapes[entry.out])
    offset, args, indices = 0, [], []
    for position, a in enumerate(entry.args):
        size = shapes[a][axis]
        if position not in in_place:
            args.append(a)
            indices.append((slice(None),) * axis + (slice(offset, offset + size),))
        offset += size

    def run(*xs, out):
        for x, index in zip(xs, indices):
            out[index] = x
        return out

    return run, args


def load(directory, threads=None):
    """Loads and compiles the packed model in ``directory`` (see :mod:`bmx.packed`).

    ``threads``: threads of the bit kernels (default :func:`bmx.xnor.default_threads`). Returns a
    :class:`Model`. Raises bmx.packed.PackedFormatError naming the file (and node) for a missing or
    malformed file or an op the runtime does not support.
    """
    return Model(packed.load_model(directory), threads)

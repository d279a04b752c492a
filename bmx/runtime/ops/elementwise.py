"""Element-wise, activation, quantizer and per-channel ops."""
import numpy as np

from ... import quantizer_math
from ..graph import F32, REQUIRED, broadcast, check_axis

LOWEST = np.finfo(F32).min  # float32's lowest value


# ------------------------------------------------------------------ ops


class Op:
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


def sigmoid(x, out):
    # 0.5 (1 + tanh(x / 2)) = 1 / (1 + exp(-x)) without overflow for large -x
    out = np.multiply(x, F32(0.5), out=out)
    np.tanh(out, out=out)
    out += F32(1)
    out *= F32(0.5)
    return out


def sign(x, out, zero_one=False):
    """+1 for x >= 0 else -1 (NaN -> -1); with zero_one the same sign as 1 / 0."""
    positive = np.greater_equal(x, 0)
    if out is None:
        out = np.empty(x.shape, F32)
    if zero_one:
        np.copyto(out, positive)
    else:
        np.multiply(positive, F32(2), out=out)
        out -= F32(1)
    return out


ACTIVATIONS = {
    "relu": lambda x, out: np.maximum(x, F32(0), out=out),
    "sigmoid": sigmoid,
    "tanh": lambda x, out: np.tanh(x, out=out),
    "softrelu": lambda x, out: np.logaddexp(F32(0), x, out=out),
    "softsign": lambda x, out: np.divide(x, np.abs(x) + F32(1), out=out),
}


class _Unary(Op):
    """Elementwise functions of one input: Activation (act_type) and the ops named in FUNCS."""

    FUNCS = {"relu": ACTIVATIONS["relu"], "sigmoid": sigmoid, "tanh": ACTIVATIONS["tanh"],
             "negative": lambda x, out: np.negative(x, out=out), "abs": lambda x, out: np.abs(x, out=out),
             "sqrt": lambda x, out: np.sqrt(x, out=out), "square": lambda x, out: np.square(x, out=out)}

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        if node.op == "Activation":
            self.fn = ACTIVATIONS[node.str("act_type", REQUIRED, choices=list(ACTIVATIONS))]
        else:
            self.fn = self.FUNCS[node.op]

    def run(self, x, out=None):
        return self.fn(x, out)


def is_relu(op):
    return isinstance(op, _Unary) and op.fn is ACTIVATIONS["relu"]


def pool_first(op, pool):
    """(first, second) computing max pooling of op(x) with the pooling first: op is a ReLU or a
    BatchNorm. A BatchNorm's channels with a negative scale are negated before the pooling (their
    max is then the min), so that what follows the pooling is non-decreasing: x * |scale| + shift."""
    if is_relu(op) or not (op.scale < 0).any():
        return pool, op
    flip = _Affine(op.node, op.axis, np.where(op.scale < 0, F32(-1), F32(1)), None)
    return flip, _Chain(pool, _Affine(op.node, op.axis, np.abs(op.scale), op.shift))


class _LeakyReLU(Op):
    """LeakyReLU: leaky (slope), prelu (learned slope per channel), elu, selu; rrelu at inference."""

    _SELU_ALPHA, _SELU_LAMBDA = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946

    takes_params = True

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.kind = node.str("act_type", "leaky", choices=("leaky", "prelu", "elu", "selu", "rrelu"))
        self.slope = F32(node.float("slope", 0.25))
        if self.kind == "rrelu":  # inference uses the mean of the random slope's range
            low, high = node.float("lower_bound", 0.125), node.float("upper_bound", 0.334)
            self.kind, self.slope = "leaky", F32((low + high) / 2)
        if (self.kind == "prelu") != bool(params):
            node.fail("prelu takes a constant gamma input, the other act_types none")
        self.gamma = params[0].astype(F32) if params else None

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
            alpha, scale = (self.slope, F32(1)) if self.kind == "elu" else \
                (F32(self._SELU_ALPHA), F32(self._SELU_LAMBDA))
            with np.errstate(over="ignore"):
                result = scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))
        return into(result.astype(F32, copy=False), out)


def into(result, out):
    """``result``, copied into ``out`` if one is given."""
    if out is None:
        return result
    np.copyto(out, result)
    return out


class _SignOp(Op):
    """bmx_det_sign / bmx_approx_sign forward: sign(x), +1 for x >= 0; zero_one gives (sign + 1) / 2."""

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.zero_one = node.bool("zero_one", False)

    def run(self, x, out=None):
        return sign(x, out, self.zero_one)


class _WeightSign(Op):
    """bmx_weight_sign forward: sign(w), +1 for w >= 0 (folded into a constant at load time)."""

    def run(self, x, out=None):
        return sign(x, out)


class _KBit(Op):
    """A k-bit quantizer: its ``bits`` attribute (KBIT_MIN..KBIT_MAX) gives 2^k - 1 levels above 0."""

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.bits = node.int("bits", REQUIRED)
        try:
            quantizer_math.check_kbit(self.bits)
        except ValueError as err:
            node.fail(str(err))


class _QuantizeAct(_KBit):
    """bmx_quantize_act forward: round((2^k - 1) clip(x, 0, 1)) / (2^k - 1) in float32."""

    def run(self, x, out=None):
        return into(quantizer_math.quantize_activation(x, self.bits), out)


class _QuantizeWeight(_KBit):
    """bmx_quantize_weight forward (DoReFa, the whole tensor's max |tanh|), for constant folding."""

    def run(self, x, out=None):
        return into(quantizer_math.dorefa_weight(x, self.bits), out)


class _Scalar(Op):
    """x op scalar (MXNet casts the scalar to the data type)."""

    FUNCS = {"_mul_scalar": lambda x, s, out: np.multiply(x, s, out=out),
             "_plus_scalar": lambda x, s, out: np.add(x, s, out=out),
             "_minus_scalar": lambda x, s, out: np.subtract(x, s, out=out),
             "_rminus_scalar": lambda x, s, out: np.subtract(s, x, out=out),
             "_div_scalar": lambda x, s, out: np.divide(x, s, out=out),
             "_rdiv_scalar": lambda x, s, out: np.divide(s, x, out=out)}

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.scalar = node.float("scalar", REQUIRED)
        self.fn = self.FUNCS[node.op]

    def run(self, x, out=None):
        return self.fn(x, x.dtype.type(self.scalar), out)


class _Binary(Op):
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
        if not self.broadcast and (len(a) != len(b) or broadcast(self.node, a, b) != merge(a, b)):
            self.node.shape_error(f"needs equal shapes, got {a} and {b}")
        return broadcast(self.node, a, b)

    def run(self, a, b, out=None):
        return self.fn(a, b, out=out)


def merge(a, b):
    """Shape a with its unknown dims taken from b."""
    return tuple(x if y is None else y for x, y in zip(a, b))


class _AddN(Op):
    """add_n / ElementWiseSum: the sum of any number of equally shaped inputs."""

    data = None

    def infer(self, *shapes):
        for s in shapes[1:]:
            if len(s) != len(shapes[0]) or any(None not in (x, y) and x != y for x, y in zip(s, shapes[0])):
                self.node.shape_error(f"needs equal shapes, got {shapes}")
        return shapes[0]

    def run(self, *xs, out=None):
        out = np.add(xs[0], xs[1], out=out) if len(xs) > 1 else into(xs[0].copy(), out)
        for x in xs[2:]:
            out += x
        return out


class _Identity(Op):
    """BlockGrad, stop_gradient, _copy, identity, Dropout (the identity at inference)."""

    view = True

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        if node.op == "Dropout" and node.str("mode", "training") != "training":
            node.fail("Dropout with mode='always' is random at inference too")

    def run(self, x, out=None):
        return into(x, out)


class _Clip(Op):
    """clip(x, a_min, a_max)."""

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.low, self.high = node.float("a_min", REQUIRED), node.float("a_max", REQUIRED)

    def run(self, x, out=None):
        return np.clip(x, x.dtype.type(self.low), x.dtype.type(self.high), out=out)


class _Reduce(Op):
    """sum / mean over ``axis`` (all axes if empty), with keepdims and exclude."""

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.axis = node.tuple("axis", ())
        self.keepdims = node.bool("keepdims", False)
        self.exclude = node.bool("exclude", False)
        self.fn = np.sum if node.op == "sum" else np.mean

    def _axes(self, ndim):
        axes = {check_axis(self.node, a, ndim) for a in self.axis} if self.axis else set(range(ndim))
        return tuple(sorted(set(range(ndim)) - axes if self.exclude else axes))

    def infer(self, shape):
        axes = self._axes(len(shape))
        if self.keepdims:
            return tuple(1 if i in axes else d for i, d in enumerate(shape))
        # a full reduction is 0-d in numpy but (1,) in MXNet's legacy semantics
        return tuple(d for i, d in enumerate(shape) if i not in axes) or (1,)

    def run(self, x, out=None):
        return into(self.fn(x, axis=self._axes(x.ndim), keepdims=self.keepdims).reshape(self.infer(x.shape)), out)


class _Affine(Op):
    """x * scale (+ shift) per channel along ``axis``."""

    def __init__(self, node, axis, scale, shift):
        super().__init__(node, [], None)
        self.axis, self.scale, self.shift = axis, scale, shift

    def infer(self, shape):
        axis = check_axis(self.node, self.axis, len(shape))
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
        Op.__init__(self, node, params, runtime)
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
        self.scale = (gamma / np.sqrt(var + eps)).astype(F32)
        # the shift from the float32 scale: when the scale is exact (say 1), so is the shift
        self.shift = (beta - mean * self.scale.astype(np.float64)).astype(F32)


class _Chain(Op):
    """Two single-input ops in a row, the second working in place on the first's output."""

    def __init__(self, first, second):
        super().__init__(first.node, [], None)
        self.first, self.second = first, second

    def infer(self, shape):
        return self.second.infer(self.first.infer(shape))

    def run(self, x, out=None):
        y = self.first.run(x, out=out)
        return self.second.run(y, out=y)


class _BatchNormSign(Op):
    """A BatchNorm whose output feeds only signs (bmx_xnor_conv2d, sign ops): it returns a z with
    z >= 0 exactly where x * scale + shift >= 0, in one pass instead of two: x - t per channel
    with t = -shift / scale, negated where scale < 0, and the sign of shift where scale = 0."""

    def __init__(self, bn):
        super().__init__(bn.node, [], None)
        self.axis, self.infer = bn.axis, bn.infer
        scale, shift = bn.scale.astype(np.float64), bn.shift.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.threshold = np.where(scale != 0, -shift / scale, 0).astype(F32)
        self.negated = np.flatnonzero(scale < 0)
        self.constant = np.flatnonzero(scale == 0)
        self.constant_sign = np.where(shift[self.constant] >= 0, F32(1), F32(-1))

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
        u = (m * self.threshold).astype(F32)  # exact: a sign flip
        never = np.isnan(u) | (u == np.inf)
        u[u == -np.inf] = LOWEST
        m[never], u[never] = 0, 1
        m[self.constant] = 0
        u[self.constant] = np.where(self.constant_sign > 0, F32(0), F32(1))
        return m, u

    def run(self, x, out=None):
        axis = self.axis % x.ndim
        shape = (-1,) + (1,) * (x.ndim - axis - 1)
        out = np.subtract(x, self.threshold.reshape(shape), out=out)
        lead = (slice(None),) * axis
        if self.negated.size:
            out[lead + (self.negated,)] *= F32(-1)
        if self.constant.size:
            out[lead + (self.constant,)] = self.constant_sign.reshape(shape)
        return out

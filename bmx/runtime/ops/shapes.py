"""Ops that move values around: concatenation, reshapes, padding, slicing, softmax."""
import numpy as np

from ..graph import F32, REQUIRED, check_axis, product
from .elementwise import Op, into


class _Concat(Op):
    """Concat / concat along ``dim``. Usually no copy happens here: see Model._placement."""

    data = None

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.dim = node.int("dim", 1)

    def infer(self, *shapes):
        first = shapes[0]
        axis = check_axis(self.node, self.dim, len(first))
        for s in shapes[1:]:
            if len(s) != len(first) or any(None not in (a, b) and a != b
                                           for i, (a, b) in enumerate(zip(s, first)) if i != axis):
                self.node.shape_error(f"inputs {shapes} differ outside the concatenation axis {axis}")
        merged = tuple(next((s[i] for s in shapes if s[i] is not None), None) for i in range(len(first)))
        total = None if any(s[axis] is None for s in shapes) else sum(s[axis] for s in shapes)
        return merged[:axis] + (total,) + merged[axis + 1:]

    def run(self, *xs, out=None):
        return np.concatenate(xs, axis=self.dim % xs[0].ndim, out=out)


class _Flatten(Op):
    """(N, ...) -> (N, product of the rest)."""

    view = True

    def infer(self, shape):
        if not shape:
            self.node.shape_error("needs at least a 1-D input")
        return (shape[0], product(shape[1:]))

    def run(self, x, out=None):
        return into(x.reshape(x.shape[0], -1), out)


class _Reshape(Op):
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
                out.append(product([source(i), source(i + 1)]))
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
        total = product(shape)
        if unknown is not None:
            known = product([d for k, d in enumerate(out) if k != unknown])
            out[unknown] = None if total is None or known is None else total // max(known, 1)
        if None not in out and total is not None and product(out) != total:
            self.node.shape_error(f"cannot reshape {shape} to {self.target}")
        return tuple(out[::-1] if self.reverse else out)

    def run(self, x, out=None):
        return into(x.reshape(self.infer(x.shape)), out)


class _Pad(Op):
    """pad: constant (constant_value), edge or reflect padding by pad_width (before, after) per axis."""

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.mode = node.str("mode", "constant", choices=("constant", "edge", "reflect"))
        width = node.tuple("pad_width", REQUIRED)
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
            return into(np.pad(x, self.width, mode=self.mode), out)
        if out is None:
            out = np.empty(self.infer(x.shape), x.dtype)
        out.fill(self.value)
        out[tuple(slice(a, a + d) for d, (a, _) in zip(x.shape, self.width))] = x
        return out


class _SliceAxis(Op):
    """slice_axis: [begin, end) along one axis, negative indices from the end, end None = all."""

    view = True

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.axis = node.int("axis", REQUIRED)
        self.begin = node.int("begin", REQUIRED)
        self.end = node.optional_int("end")

    def _range(self, shape):
        axis = check_axis(self.node, self.axis, len(shape))
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
        return into(x[(slice(None),) * axis + (index,)], out)


class _Slice(Op):
    """slice: begin, end, step per leading axis (None entries as in Python slices)."""

    view = True

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.begin, self.end = node.tuple("begin", REQUIRED), node.tuple("end", REQUIRED)
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
        return into(x[self._index(x.shape)], out)


class _Softmax(Op):
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
            self.temperature = 1.0 if temperature == "None" else node.float("temperature", None)
        elif node.op == "SoftmaxActivation":
            self.axis, self.flatten = 1, node.str("mode", "instance", choices=("instance", "channel")) == "instance"
        else:
            self.axis = -1 if node.bool("preserve_shape", False) else 1
            self.flatten = not node.bool("multi_output", False) and self.axis == 1

    def run(self, x, out=None):
        y = x.reshape(x.shape[0], -1) if self.flatten else x
        y = (y / F32(self.temperature)) if self.temperature != 1.0 else y
        e = np.exp(y - y.max(axis=self.axis, keepdims=True))
        e /= e.sum(axis=self.axis, keepdims=True)
        return into(e.reshape(x.shape), out)

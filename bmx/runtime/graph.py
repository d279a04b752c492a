"""The graph as the runtime sees it: nodes with typed attribute access, and shape arithmetic."""
import numpy as np

from .. import packed
from ..symbol_json import REQUIRED, TypedAttributes

F32 = np.float32


class ShapeError(ValueError):
    """A node cannot take the shapes it is given (raised by the ops' infer)."""


class Node(TypedAttributes):
    """A graph node: its name, op, attributes (strings, as MXNet writes them) and input entries."""

    __slots__ = ("name", "op", "attrs", "inputs", "file")

    def __init__(self, node, file):
        """``node``: a :class:`bmx.symbol_json.Node` of the file ``file``; inputs become (node index,
        output index) pairs."""
        self.name, self.op, self.attrs, self.file = node.name, node.op, node.attrs, file
        self.inputs = [(source.index, out) for source, out in node.inputs]

    def fail(self, message):
        raise packed.PackedFormatError(f"{self.file}: node '{self.name}' ({self.op}): {message}")

    def shape_error(self, message):
        raise ShapeError(f"node '{self.name}' ({self.op}): {message}")

    def str(self, key, default=None, choices=None):
        value = self._get(key, str, default, "a string")
        if choices is not None and value not in choices:
            self.fail(f"attribute {key}={value!r} is not supported (supported: {', '.join(choices)})")
        return value

    def pair(self, key, default):
        """A 2-D window attribute: kernel, stride, pad, dilate; '()' means the default."""
        value = self.tuple(key, ()) or default
        if value is REQUIRED:
            self.fail(f"attribute {key!r} is missing")
        if len(value) != 2 or any(v is None for v in value):
            self.fail(f"attribute {key}={self.attrs.get(key)!r}: only 2-D (NCHW) windows are supported")
        return value


# ------------------------------------------------------------------ shape helpers (dims may be None)


def window_out(node, axis, size, kernel, stride, pad, dilate=1, ceil=False):
    """Output size of a window sliding along one axis (MXNet's formula; ceil for 'full' pooling)."""
    if size is None:
        return None
    span = dilate * (kernel - 1) + 1
    if size + 2 * pad < span:
        node.shape_error(f"the {'HW'[axis]} size {size} (padded {size + 2 * pad}) is smaller than the "
                         f"window ({span})")
    extent = size + 2 * pad - span
    return (-(-extent // stride) if ceil else extent // stride) + 1


def broadcast(node, a, b):
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


def product(dims):
    total = 1
    for d in dims:
        if d is None:
            return None
        total *= d
    return total


def check_axis(node, axis, ndim):
    if not -ndim <= axis < ndim:
        node.shape_error(f"axis {axis} is out of range for {ndim}-D input")
    return axis % ndim

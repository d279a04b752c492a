"""What the converter's modules share: its errors, the bmx op names, attribute parsing and new nodes."""
import numpy as np

from ..symbol_json import Node, parse_bool, parse_tuple

SIGN_OPS = ("bmx_det_sign", "bmx_approx_sign")
WEIGHT_SIGN_OP = "bmx_weight_sign"
WEIGHT_QUANTIZER_OPS = (WEIGHT_SIGN_OP, "bmx_quantize_weight")
XNOR_OP = "bmx_xnor_conv2d"
# mshadow type flags, as MXNet writes them in a variable's __dtype__ attribute
DTYPE_FLAGS = {np.dtype(np.float32): 0, np.dtype(np.int8): 5, np.dtype(np.int64): 6}
# Ops that only the composite (stock-operator) quantizers put in an exported graph: their
# straight-through estimators are q + (g - BlockGrad(g)).
COMPOSITE_MARKERS = ("BlockGrad", "stop_gradient")


class ConvertError(ValueError):
    """The model cannot be converted; the message names the file, node or argument at fault."""


class VerificationError(ConvertError):
    """The packed model does not compute what the original computes; the message names the layer."""


# ---------------------------------------------------------------- attribute parsing


def ints(text, default, length, what):
    """A tuple attribute such as '(3, 3)' as ints; '()' or absence gives default."""
    if text is None:
        return default
    try:
        values = parse_tuple(str(text))
    except ValueError:
        values = None
    if values is None or None in values:
        raise ConvertError(f"{what}: cannot read {text!r} as integers")
    if not values:
        return default
    if length is not None and len(values) != length:
        raise ConvertError(f"{what}: expected {length} values, got {text!r}")
    return values


def flag(attrs, key, default=False):
    """A boolean attribute ('True', '1', 'false', ...); other text is an error, not False."""
    text = attrs.get(key)
    if text is None:
        return default
    try:
        return parse_bool(str(text))
    except ValueError:
        raise ConvertError(f"attribute {key}={text!r} is not a boolean") from None


def float_attr(attrs, key):
    try:
        return float(attrs.get(key))
    except (TypeError, ValueError):
        return None


def fmt(values):
    return "(" + ", ".join(str(int(v)) for v in values) + ")"


def is_sign(entry, zero_one):
    """Whether entry is the output of a 1-bit sign op ({0, 1} encoded if zero_one, else {-1, +1})."""
    node, idx = entry
    return (node.op in SIGN_OPS and idx == 0 and len(node.inputs) == 1
            and flag(node.attrs, "zero_one") == zero_one)


def weight_sign_var(entry, params):
    """The latent weight variable W if entry is bmx_weight_sign(W) of a stored parameter, else None."""
    node, idx = entry
    if node.op != WEIGHT_SIGN_OP or idx != 0 or len(node.inputs) != 1:
        return None
    var, _ = node.inputs[0]
    return var if var.op == "null" and var.name in params else None


def new_variable(name, array):
    """A variable node for a new parameter, with the __shape__ and __dtype__ MXNet writes."""
    return Node("null", name, {"__shape__": fmt(array.shape) if array.ndim else "()",
                               "__dtype__": str(DTYPE_FLAGS[array.dtype])})


def layer_name(weight_name):
    """'stage1_layer0_conv_qconv2d0_weight' -> 'stage1_layer0_conv_qconv2d0' (the layer's prefix)."""
    return weight_name[:-len("_weight")] if weight_name.endswith("_weight") else weight_name


def unique(name, taken):
    """name, or name1, name2, ... if taken; records the result in taken."""
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}{i}", i + 1
    taken.add(candidate)
    return candidate

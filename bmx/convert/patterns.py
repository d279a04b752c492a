"""Recognizing the binary layers of an exported graph (patterns a-d of the package docstring)."""
from .common import SIGN_OPS, float_attr, flag, ints, is_sign, weight_sign_var


class Match:
    """A binary layer to rewrite: ``data`` (entry X), the latent weight variable and conv settings."""

    def __init__(self, node, pattern, data, weight, kernel, stride, pad, dilate, groups, pad_value, dense=False):
        self.node, self.pattern, self.data, self.weight = node, pattern, data, weight
        self.kernel, self.stride, self.pad, self.dilate = kernel, stride, pad, dilate
        self.groups, self.pad_value, self.dense = groups, pad_value, dense


def conv_settings(node, weight_shape):
    """(kernel, stride, pad, dilate, groups) of a Convolution node, or a reason it is not a plain 2-D NCHW one."""
    a, what = node.attrs, f"node '{node.name}' (Convolution)"
    if a.get("layout", "NCHW") not in ("NCHW", "None"):
        return f"layout {a['layout']} is not NCHW"
    kernel = ints(a.get("kernel"), None, None, what)
    if kernel is None or len(kernel) != 2:
        return f"kernel {a.get('kernel')} is not 2-D"
    stride = ints(a.get("stride"), (1, 1), 2, what)
    pad = ints(a.get("pad"), (0, 0), 2, what)
    dilate = ints(a.get("dilate"), (1, 1), 2, what)
    groups = ints(a.get("num_group"), (1,), 1, what)[0]
    filters = ints(a.get("num_filter"), (0,), 1, what)[0]
    if len(weight_shape) != 4 or weight_shape[0] != filters or tuple(weight_shape[2:]) != kernel:
        return f"weight shape {weight_shape} does not fit num_filter {filters}, kernel {kernel}"
    if groups < 1 or filters % groups:
        return f"num_group {groups} does not divide num_filter {filters}"
    return kernel, stride, pad, dilate, groups


def match_conv(node, params):
    """A Match for a Convolution in pattern a, b or c, or a reason string why it is none."""
    with_bias = not flag(node.attrs, "no_bias")
    if len(node.inputs) != (3 if with_bias else 2):
        return "unexpected inputs"
    if with_bias:
        return match_zero_one_conv(node, params)
    var = weight_sign_var(node.inputs[1], params)
    if var is None:
        return "its weight is not sign(W)"
    settings = conv_settings(node, params[var.name].shape)
    if isinstance(settings, str):
        return settings
    source, idx = node.inputs[0]
    if source.op == "Pad" and idx == 0 and len(source.inputs) == 1:
        return match_pad_node_conv(node, var, settings)
    return match_self_padded_conv(node, var, settings)


def match_zero_one_conv(node, params):
    """Pattern a: 2 * Wb as weight and -sum(Wb) over (C, KH, KW) as bias, input a {0, 1} sign,
    which is exactly conv(pad_-1(s), Wb)."""
    data, (mul, _), (neg, neg_idx) = node.inputs
    if mul.op != "_mul_scalar" or len(mul.inputs) != 1 or float_attr(mul.attrs, "scalar") != 2.0:
        return "has a bias but its weight is not 2 * sign(W)"
    var = weight_sign_var(mul.inputs[0], params)
    total = neg.inputs[0][0] if neg.op == "negative" and neg_idx == 0 and len(neg.inputs) == 1 else None
    bias_ok = (total is not None and total.op == "sum" and total.inputs == mul.inputs
               and ints(total.attrs.get("axis"), None, None, total.name) == (1, 2, 3)
               and not flag(total.attrs, "keepdims") and not flag(total.attrs, "exclude"))
    if var is None or not bias_ok:
        return "has a bias that is not -sum(sign(W)) of its weight 2 * sign(W)"
    if not is_sign(data, zero_one=True):
        return "is not fed by a {0, 1} sign"
    settings = conv_settings(node, params[var.name].shape)
    if isinstance(settings, str):
        return settings
    kernel, stride, pad, dilate, groups = settings
    return Match(node, "a", data[0].inputs[0], var, kernel, stride, pad, dilate, groups, -1)


def match_pad_node_conv(node, var, settings):
    """Pattern b: explicit -1 padding (a Pad node) of a {-1, +1} sign, then an unpadded convolution."""
    kernel, stride, pad, dilate, groups = settings
    source = node.inputs[0][0]
    a = source.attrs
    widths = ints(a.get("pad_width"), None, None, f"node '{source.name}' (Pad)")
    if a.get("mode", "constant") != "constant" or float_attr(a, "constant_value") != -1.0:
        return f"its input is padded by '{source.name}' with something else than the constant -1"
    if widths is None or len(widths) != 8 or any(widths[:4]) or widths[4] != widths[5] or widths[6] != widths[7]:
        return f"its input is padded unevenly by '{source.name}' (pad_width {a.get('pad_width')})"
    if pad != (0, 0):
        return f"it pads a second time after '{source.name}'"
    if not is_sign(source.inputs[0], zero_one=False):
        return f"'{source.name}' does not pad a {{-1, +1}} sign"
    return Match(node, "b", source.inputs[0][0].inputs[0], var, kernel, stride, (widths[4], widths[6]),
                 dilate, groups, -1)


def match_self_padded_conv(node, var, settings):
    """Pattern c: a {-1, +1} sign padded with zeros by the convolution itself."""
    kernel, stride, pad, dilate, groups = settings
    data = node.inputs[0]
    if not is_sign(data, zero_one=False):
        return "is not fed by a {-1, +1} sign"
    return Match(node, "c", data[0].inputs[0], var, kernel, stride, pad, dilate, groups, 0 if any(pad) else -1)


def match_dense(node, params):
    """Pattern d: a FullyConnected without bias of a {-1, +1} sign, a Match or a reason string."""
    if not flag(node.attrs, "no_bias") or len(node.inputs) != 2:
        return "has a bias"
    if not flag(node.attrs, "flatten", default=True):
        return "does not flatten its input"
    var = weight_sign_var(node.inputs[1], params)
    if var is None:
        return "its weight is not sign(W)"
    if not is_sign(node.inputs[0], zero_one=False):
        return "is not fed by a {-1, +1} sign"
    shape = params[var.name].shape
    units = ints(node.attrs.get("num_hidden"), (0,), 1, f"node '{node.name}' (FullyConnected)")[0]
    if len(shape) != 2 or shape[0] != units:
        return f"weight shape {shape} does not fit num_hidden {units}"
    return Match(node, "d", node.inputs[0][0].inputs[0], var, (1, 1), (1, 1), (0, 0), (1, 1), 1, -1, dense=True)


def fed_by_sign(node):
    """Whether node's data input is a sign, directly or through a Pad."""
    src = node.inputs[0][0] if node.inputs else None
    if src is not None and src.op == "Pad" and src.inputs:
        src = src.inputs[0][0]
    return src is not None and src.op in SIGN_OPS

"""Convert an exported bmx model into the packed inference model (see docs/packed.md).

An exported model (``bmx.export``: ``PREFIX-symbol.json`` + ``PREFIX-NNNN.params``) computes its
binary layers with float convolutions of signs and keeps the latent float weights. The packed
model computes each binary layer with ``bmx_xnor_conv2d`` on 64-bit packed sign weights
(int64 ``(O, KH, KW, ceil(C/groups/64))``, as :func:`bmx.xnor.pack_weights` lays them out), so
that it is about 32x smaller and runs on xnor/popcount kernels, in MXNet or in
:func:`bmx.runtime.load` without MXNet.

The symbol JSON is read as JSON (never executed). Rewritten patterns (``X`` is the sign's input,
``s = sign(X)``, ``Wb = bmx_weight_sign(W)``; both ``bmx_det_sign`` and ``bmx_approx_sign`` are a
sign: their forward passes are identical):

a) ``Convolution(sign01(X), weight=2*Wb, bias=-sum(Wb), pad=p)`` with the sign in {0, 1}
   (``zero_one``), which is exactly ``conv(pad_-1(s), Wb)`` (:class:`bmx.nn.BinaryConvolution`
   padding with -1) -> ``bmx_xnor_conv2d(X, pad=p, pad_value=-1)``.
b) ``Convolution(Pad(s, constant -1, p), weight=Wb, pad=0, no_bias)`` -> ``pad=p, pad_value=-1``.
c) ``Convolution(s, weight=Wb, pad=p, no_bias)`` -> ``pad=p, pad_value=0`` (-1 when p = 0: same).
d) ``FullyConnected(s, weight=Wb, no_bias, flatten)`` -> ``Flatten(bmx_xnor_conv2d(Reshape(X,
   (0, -1, 1, 1)), 1x1))``.

Then every remaining subgraph computed from parameters only is evaluated once (in MXNet, with
the very operators of the model, so the values are bit-identical) and stored as a float32
constant: (e) the ``mean|W|`` scale of ``apply_scaling`` (its ``broadcast_mul`` stays) and (f)
quantized weights that do not meet 1-bit activations (weight-only binary, DoReFa k-bit), which
are reported as not packed. Nodes and latent weights no longer used are dropped.

Converting needs mxnet (constant folding and verification run MXNet); the packed model does not.
Command line: tools/binarize_model.py.
"""
import copy
import glob
import json
import os
import re
import tempfile
import warnings

import numpy as np

from . import __version__, packed, xnor

__all__ = ["convert", "binarize", "binarize_gluon", "resolve_source", "verify_packed", "format_report",
           "ConvertError", "VerificationError", "theoretical_size_from_graph"]

SIGN_OPS = ("bmx_det_sign", "bmx_approx_sign")
WEIGHT_SIGN_OP = "bmx_weight_sign"
WEIGHT_QUANTIZER_OPS = (WEIGHT_SIGN_OP, "bmx_quantize_weight")
XNOR_OP = "bmx_xnor_conv2d"
# mshadow type flags, as MXNet writes them in a variable's __dtype__ attribute
_DTYPE_FLAGS = {np.dtype(np.float32): 0, np.dtype(np.int64): 6}
# Ops that only the composite (stock-operator) quantizers put in an exported graph: their
# straight-through estimators are q + (g - BlockGrad(g)).
_COMPOSITE_MARKERS = ("BlockGrad", "stop_gradient")


class ConvertError(ValueError):
    """The model cannot be converted; the message names the file, node or argument at fault."""


class VerificationError(ConvertError):
    """The packed model does not compute what the original computes; the message names the layer."""


# ---------------------------------------------------------------- the graph, read as JSON

class _Node:
    """One node of the symbol JSON; ``inputs`` are (node, output index) entries."""

    __slots__ = ("op", "name", "attrs", "inputs", "num_outputs", "extra")

    def __init__(self, op, name, attrs=None, inputs=(), num_outputs=1, extra=None):
        self.op, self.name, self.attrs = op, name, dict(attrs or {})
        self.inputs, self.num_outputs, self.extra = list(inputs), num_outputs, dict(extra or {})


def _load_graph(symbol_file):
    """(nodes in file order, heads as entries) of a symbol JSON; ConvertError if it is not one."""
    try:
        with open(symbol_file) as f:
            graph = json.load(f)
    except FileNotFoundError:
        raise ConvertError(f"{symbol_file}: no such symbol file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConvertError(f"{symbol_file}: cannot read the symbol file ({err})") from None
    except ValueError as err:
        raise ConvertError(f"{symbol_file}: not valid JSON, truncated or not a symbol file ({err})") from None
    try:
        raw_nodes, raw_heads = graph["nodes"], graph["heads"]
        row_ptr = graph.get("node_row_ptr")
        nodes = []
        for i, raw in enumerate(raw_nodes):
            outputs = row_ptr[i + 1] - row_ptr[i] if row_ptr else 1
            extra = {k: v for k, v in raw.items() if k not in ("op", "name", "attrs", "inputs", "param")}
            node = _Node(str(raw["op"]), str(raw["name"]), raw.get("attrs", raw.get("param", {})),
                         num_outputs=outputs, extra=extra)
            # inputs must be earlier nodes: this also rules out cycles
            if any(not 0 <= int(e[0]) < i for e in raw["inputs"]):
                raise ValueError(f"inputs of node {i}")
            node.inputs = [(nodes[int(e[0])], int(e[1])) for e in raw["inputs"]]
            nodes.append(node)
        if any(not 0 <= int(e[0]) < len(nodes) for e in raw_heads):
            raise ValueError("heads")
        heads = [(nodes[int(e[0])], int(e[1])) for e in raw_heads]
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise ConvertError(f"{symbol_file}: not an MXNet symbol JSON (bad or missing {err})") from None
    if not heads:
        raise ConvertError(f"{symbol_file}: the symbol has no outputs")
    return nodes, heads, {k: v for k, v in graph.items() if k not in ("nodes", "heads", "arg_nodes", "node_row_ptr")}


def _topological(heads):
    """The nodes reachable from heads, inputs before consumers, in MXNet's depth-first order."""
    order, seen = [], set()
    for head, _ in heads:
        stack = [(head, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0 and id(node) in seen:
                continue
            if i < len(node.inputs):
                stack.append((node, i + 1))
                child = node.inputs[i][0]
                if id(child) not in seen:
                    stack.append((child, 0))
            else:
                seen.add(id(node))
                order.append(node)
    return order


def _to_json(heads, top_attrs):
    """The symbol JSON dict of the graph reachable from heads."""
    order = _topological(heads)
    ids = {id(n): i for i, n in enumerate(order)}
    nodes, row_ptr = [], [0]
    for n in order:
        entry = {"op": n.op, "name": n.name}
        if n.attrs:
            entry["attrs"] = dict(n.attrs)
        entry["inputs"] = [[ids[id(src)], idx, 0] for src, idx in n.inputs]
        entry.update(n.extra)
        nodes.append(entry)
        row_ptr.append(row_ptr[-1] + n.num_outputs)
    return {"nodes": nodes, "arg_nodes": [i for i, n in enumerate(order) if n.op == "null"],
            "node_row_ptr": row_ptr, "heads": [[ids[id(n)], idx, 0] for n, idx in heads],
            **copy.deepcopy(top_attrs)}


# ---------------------------------------------------------------- attribute parsing

def _ints(text, default, length, what):
    """A tuple attribute such as '(3, 3)' as ints; '()' or absence gives default."""
    if text is None:
        return default
    items = [t for t in re.split(r"[\s,()\[\]]+", str(text)) if t]
    if not items:
        return default
    try:
        values = tuple(int(t) for t in items)
    except ValueError:
        raise ConvertError(f"{what}: cannot read {text!r} as integers") from None
    if length is not None and len(values) != length:
        raise ConvertError(f"{what}: expected {length} values, got {text!r}")
    return values


def _flag(attrs, key, default=False):
    """A boolean attribute ('True', '1', 'false', ...)."""
    return str(attrs.get(key, default)).strip().lower() in ("true", "1")


def _float_attr(attrs, key):
    try:
        return float(attrs.get(key))
    except (TypeError, ValueError):
        return None


def _fmt(values):
    return "(" + ", ".join(str(int(v)) for v in values) + ")"


def _is_sign(entry, zero_one):
    """Whether entry is the output of a 1-bit sign op ({0, 1} encoded if zero_one, else {-1, +1})."""
    node, idx = entry
    return (node.op in SIGN_OPS and idx == 0 and len(node.inputs) == 1
            and _flag(node.attrs, "zero_one") == zero_one)


def _weight_sign_var(entry, params):
    """The latent weight variable W if entry is bmx_weight_sign(W) of a stored parameter, else None."""
    node, idx = entry
    if node.op != WEIGHT_SIGN_OP or idx != 0 or len(node.inputs) != 1:
        return None
    var, _ = node.inputs[0]
    return var if var.op == "null" and var.name in params else None


# ---------------------------------------------------------------- pattern matching

class _Match:
    """A binary layer to rewrite: ``data`` (entry X), the latent weight variable and conv settings."""

    def __init__(self, node, pattern, data, weight, kernel, stride, pad, dilate, groups, pad_value, dense=False):
        self.node, self.pattern, self.data, self.weight = node, pattern, data, weight
        self.kernel, self.stride, self.pad, self.dilate = kernel, stride, pad, dilate
        self.groups, self.pad_value, self.dense = groups, pad_value, dense


def _conv_settings(node, weight_shape):
    """(kernel, stride, pad, dilate, groups) of a Convolution node, or a reason it is not a plain 2-D NCHW one."""
    a, what = node.attrs, f"node '{node.name}' (Convolution)"
    if a.get("layout", "NCHW") not in ("NCHW", "None"):
        return f"layout {a['layout']} is not NCHW"
    kernel = _ints(a.get("kernel"), None, None, what)
    if kernel is None or len(kernel) != 2:
        return f"kernel {a.get('kernel')} is not 2-D"
    stride = _ints(a.get("stride"), (1, 1), 2, what)
    pad = _ints(a.get("pad"), (0, 0), 2, what)
    dilate = _ints(a.get("dilate"), (1, 1), 2, what)
    groups = _ints(a.get("num_group"), (1,), 1, what)[0]
    filters = _ints(a.get("num_filter"), (0,), 1, what)[0]
    if len(weight_shape) != 4 or weight_shape[0] != filters or tuple(weight_shape[2:]) != kernel:
        return f"weight shape {weight_shape} does not fit num_filter {filters}, kernel {kernel}"
    if groups < 1 or filters % groups:
        return f"num_group {groups} does not divide num_filter {filters}"
    return kernel, stride, pad, dilate, groups


def _match_conv(node, params):
    """A _Match for a Convolution in pattern a, b or c, or a reason string why it is none."""
    inputs = node.inputs
    with_bias = not _flag(node.attrs, "no_bias")
    if len(inputs) != (3 if with_bias else 2):
        return "unexpected inputs"
    data, weight_entry = inputs[0], inputs[1]
    if with_bias:
        # a) 2 * Wb as weight and -sum(Wb) over (C, KH, KW) as bias, input a {0, 1} sign
        mul, _ = weight_entry
        if mul.op != "_mul_scalar" or len(mul.inputs) != 1 or _float_attr(mul.attrs, "scalar") != 2.0:
            return "has a bias but its weight is not 2 * sign(W)"
        var = _weight_sign_var(mul.inputs[0], params)
        neg, neg_idx = inputs[2]
        total = neg.inputs[0][0] if neg.op == "negative" and neg_idx == 0 and len(neg.inputs) == 1 else None
        bias_ok = (total is not None and total.op == "sum" and total.inputs == mul.inputs
                   and _ints(total.attrs.get("axis"), None, None, total.name) == (1, 2, 3)
                   and not _flag(total.attrs, "keepdims") and not _flag(total.attrs, "exclude"))
        if var is None or not bias_ok:
            return "has a bias that is not -sum(sign(W)) of its weight 2 * sign(W)"
        if not _is_sign(data, zero_one=True):
            return "is not fed by a {0, 1} sign"
        settings = _conv_settings(node, params[var.name].shape)
        if isinstance(settings, str):
            return settings
        kernel, stride, pad, dilate, groups = settings
        return _Match(node, "a", data[0].inputs[0], var, kernel, stride, pad, dilate, groups, -1)
    var = _weight_sign_var(weight_entry, params)
    if var is None:
        return "its weight is not sign(W)"
    settings = _conv_settings(node, params[var.name].shape)
    if isinstance(settings, str):
        return settings
    kernel, stride, pad, dilate, groups = settings
    source, idx = data
    if source.op == "Pad" and idx == 0 and len(source.inputs) == 1:
        # b) explicit -1 padding of a {-1, +1} sign
        a = source.attrs
        widths = _ints(a.get("pad_width"), None, None, f"node '{source.name}' (Pad)")
        if a.get("mode", "constant") != "constant" or _float_attr(a, "constant_value") != -1.0:
            return f"its input is padded by '{source.name}' with something else than the constant -1"
        if widths is None or len(widths) != 8 or any(widths[:4]) or widths[4] != widths[5] or widths[6] != widths[7]:
            return f"its input is padded unevenly by '{source.name}' (pad_width {a.get('pad_width')})"
        if pad != (0, 0):
            return f"it pads a second time after '{source.name}'"
        if not _is_sign(source.inputs[0], zero_one=False):
            return f"'{source.name}' does not pad a {{-1, +1}} sign"
        return _Match(node, "b", source.inputs[0][0].inputs[0], var, kernel, stride, (widths[4], widths[6]),
                      dilate, groups, -1)
    if not _is_sign(data, zero_one=False):
        return "is not fed by a {-1, +1} sign"
    # c) zero padding (the convolution's own) of a {-1, +1} sign
    return _Match(node, "c", source.inputs[0], var, kernel, stride, pad, dilate, groups, 0 if any(pad) else -1)


def _match_dense(node, params):
    """A _Match for a FullyConnected in pattern d, or a reason string."""
    if not _flag(node.attrs, "no_bias") or len(node.inputs) != 2:
        return "has a bias"
    if not _flag(node.attrs, "flatten", default=True):
        return "does not flatten its input"
    var = _weight_sign_var(node.inputs[1], params)
    if var is None:
        return "its weight is not sign(W)"
    if not _is_sign(node.inputs[0], zero_one=False):
        return "is not fed by a {-1, +1} sign"
    shape = params[var.name].shape
    units = _ints(node.attrs.get("num_hidden"), (0,), 1, f"node '{node.name}' (FullyConnected)")[0]
    if len(shape) != 2 or shape[0] != units:
        return f"weight shape {shape} does not fit num_hidden {units}"
    return _Match(node, "d", node.inputs[0][0].inputs[0], var, (1, 1), (1, 1), (0, 0), (1, 1), 1, -1, dense=True)


# ---------------------------------------------------------------- rewriting

def _sign_values(w):
    """+1 where w >= 0, else -1 (NaN included), float32: the binary weight of a latent weight."""
    return np.where(w >= 0, np.float32(1), np.float32(-1)).astype(np.float32)


def _pack(match, latent):
    """The int64 (O, KH, KW, Wd) packed signs of a layer's latent weight."""
    w = _sign_values(latent)
    if match.dense:
        w = w[:, :, None, None]
    return xnor.pack_weights(w, match.groups).words.view(np.int64)


def _var(name, array):
    """A variable node for a new parameter, with the __shape__ and __dtype__ MXNet writes."""
    return _Node("null", name, {"__shape__": _fmt(array.shape) if array.ndim else "()",
                                "__dtype__": str(_DTYPE_FLAGS[array.dtype])})


def _xnor_node(match, data_entry, weight_var, out_channels):
    """The bmx_xnor_conv2d node computing a matched layer (attributes as docs/packed.md lists them)."""
    attrs = {"kernel": _fmt(match.kernel), "stride": _fmt(match.stride), "pad": _fmt(match.pad),
             "dilate": _fmt(match.dilate), "num_filter": str(out_channels), "num_group": str(match.groups),
             "pad_value": str(match.pad_value)}
    return _Node(XNOR_OP, f"{_layer_name(match.weight.name)}_xnor_conv2d", attrs, [data_entry, (weight_var, 0)])


def _layer_name(weight_name):
    """'stage1_layer0_conv_qconv2d0_weight' -> 'stage1_layer0_conv_qconv2d0' (the layer's prefix)."""
    return weight_name[:-len("_weight")] if weight_name.endswith("_weight") else weight_name


def _redirect(order, heads, replaced):
    """Points every use of a replaced node's output 0 at its replacement entry."""
    def fix(entry):
        node, idx = entry
        if id(node) in replaced:
            return replaced[id(node)]
        return entry
    for n in order:
        n.inputs = [fix(e) for e in n.inputs]
    return [fix(e) for e in heads]


def _unique(name, taken):
    """name, or name1, name2, ... if taken; records the result in taken."""
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}{i}", i + 1
    taken.add(candidate)
    return candidate


def _rewrite_binary_layers(order, heads, params, taken):
    """Replaces the binary layers that match a pattern by bmx_xnor_conv2d; adds their packed weights to params.

    Returns (new heads, [(match, xnor node, packed weight variable, latent weight)] per rewritten
    layer, warnings about binary layers fed by a sign that match no pattern and stay float).
    """
    replaced, done, warnings = {}, [], []
    for node in order:
        if node.op == "Convolution":
            match = _match_conv(node, params)
        elif node.op == "FullyConnected":
            match = _match_dense(node, params)
        else:
            continue
        if isinstance(match, str):
            if len(node.inputs) > 1 and _fed_by_sign(node) and WEIGHT_SIGN_OP in _subgraph_ops(node.inputs[1][0])[0]:
                warnings.append(f"node '{node.name}' ({node.op}) has binary weights and a sign input but is "
                                f"kept in float: it {match}")
            continue
        latent = params[match.weight.name]
        words = _pack(match, latent)
        weight_var = _var(_unique(f"{_layer_name(match.weight.name)}_packed_weight", taken), words)
        params[weight_var.name] = words
        data = match.data
        if match.dense:
            reshape = _Node("Reshape", _unique(f"{_layer_name(match.weight.name)}_to_1x1", taken),
                            {"shape": "(0, -1, 1, 1)"}, [data])
            data = (reshape, 0)
        conv = _xnor_node(match, data, weight_var, words.shape[0])
        conv.name = _unique(conv.name, taken)
        out = conv
        if match.dense:
            out = _Node("Flatten", _unique(f"{_layer_name(match.weight.name)}_flatten", taken), {}, [(conv, 0)])
        replaced[id(node)] = (out, 0)
        done.append((match, conv, weight_var, latent))
    return _redirect(order, heads, replaced), done, warnings


def _fed_by_sign(node):
    """Whether node's data input is a sign, directly or through a Pad."""
    src = node.inputs[0][0] if node.inputs else None
    if src is not None and src.op == "Pad" and src.inputs:
        src = src.inputs[0][0]
    return src is not None and src.op in SIGN_OPS


def _fold_constants(heads, params, taken, param_kinds, top_attrs):
    """Evaluates every parameter-only subgraph in MXNet and stores its value as a float32 constant.

    Returns (heads, folds): one fold dict per stored constant, naming its ops and source parameters.
    """
    order = _topological(heads)
    constant = {}
    for n in order:
        if n.op == "null":
            constant[id(n)] = n.name in params
        else:
            constant[id(n)] = bool(n.inputs) and all(constant[id(src)] for src, _ in n.inputs)
    wanted = []  # entries (node, idx) of constant nodes used by a computed node or the output
    for n in order:
        if n.op == "null" or constant[id(n)]:
            continue
        for entry in n.inputs:
            if entry[0].op != "null" and constant[id(entry[0])] and entry not in wanted:
                wanted.append(entry)
    for entry in heads:
        if entry[0].op != "null" and constant[id(entry[0])] and entry not in wanted:
            wanted.append(entry)
    if not wanted:
        return heads, []
    import mxnet as mx  # the values are computed by MXNet's own operators, bit for bit

    subgraph = _to_json(wanted, top_attrs)
    symbol = mx.sym.load_json(json.dumps(subgraph))
    arrays = {name: mx.nd.array(params[name], dtype=params[name].dtype) for name in symbol.list_arguments()}
    try:
        values = [v.asnumpy() for v in symbol.eval(ctx=mx.cpu(), **arrays)]
    except mx.MXNetError as err:
        raise ConvertError(f"cannot evaluate the parameter-only nodes {[e[0].name for e in wanted]}: "
                           f"{str(err).splitlines()[0]}") from None
    replaced, folds = {}, []
    for (node, idx), value in zip(wanted, values):
        ops, sources = _subgraph_ops(node)
        if value.dtype != np.float32:
            raise ConvertError(f"node '{node.name}' ({node.op}) computes a {value.dtype} constant; "
                               "only float32 constants are supported")
        var = _var(_unique(f"{node.name}_const", taken), value)
        params[var.name] = value
        param_kinds[var.name] = "arg"
        key = (id(node), idx)
        replaced[key] = (var, 0)
        folds.append(dict(node=node.name, op=node.op, ops=ops, sources=sources, constant=var.name,
                          shape=list(value.shape), bits=_quantizer_bits(node)))

    def fix(entry):
        return replaced.get((id(entry[0]), entry[1]), entry)
    for n in order:
        n.inputs = [fix(e) for e in n.inputs]
    return [fix(e) for e in heads], folds


def _subgraph_ops(node):
    """(sorted op names, sorted parameter names) of the parameter-only subgraph ending at node."""
    ops, sources = set(), set()
    for n in _topological([(node, 0)]):
        if n.op == "null":
            sources.add(n.name)
        else:
            ops.add(n.op)
    return sorted(ops), sorted(sources)


def _quantizer_bits(node):
    """Weight bits of the quantizer inside a folded subgraph (1 for sign, k for DoReFa), or None."""
    for n in _topological([(node, 0)]):
        if n.op == WEIGHT_SIGN_OP:
            return 1
        if n.op == "bmx_quantize_weight":
            return int(n.attrs.get("bits", 0))
    return None


# ---------------------------------------------------------------- checks on the graph

def _check_source_graph(symbol_file, order, params, input_names):
    """Rejects graphs exported with the composite quantizers, or with missing or mis-shaped parameters."""
    for n in order:
        if n.op in _COMPOSITE_MARKERS:
            raise ConvertError(
                f"{symbol_file}: node '{n.name}' (op {n.op}) shows the graph was exported with the composite "
                "(stock-operator) quantizer backend, whose binary layers cannot be recognized; re-export it "
                "with the native backend (bmx.quantizers.use_backend('native'), on a CPU)")
        if n.op != "null":
            continue
        if n.name not in params:
            if n.name not in input_names:
                raise ConvertError(f"{symbol_file}: variable '{n.name}' is neither an input {list(input_names)} "
                                   "nor stored in the parameter file")
            continue
        declared = n.attrs.get("__shape__")
        shape = _ints(declared, None, None, f"variable '{n.name}'") if declared else None
        if shape and all(d > 0 for d in shape) and tuple(shape) != params[n.name].shape:
            raise ConvertError(f"{symbol_file}: variable '{n.name}' has shape {tuple(shape)} but the parameter "
                               f"file holds {params[n.name].shape}")


def _check_runnable(order):
    """Every op left must be one that bmx.runtime runs and that MXNet knows (with bmx's library loaded)."""
    from . import _library, runtime
    for n in order:
        if n.op not in runtime.SUPPORTED_OPS:
            raise ConvertError(f"node '{n.name}' (op {n.op}) is not supported by bmx.runtime, so the packed "
                               "model could not run without MXNet")
        if n.op != "null" and not _library.is_registered(n.op):
            raise ConvertError(f"node '{n.name}' (op {n.op}) is not an operator of this MXNet with the loaded bmx "
                               "library")


# ---------------------------------------------------------------- sizes

def _split_params(raw, params_file):
    """{'arg:W': a, 'aux:M': b} -> ({'W': a, 'M': b}, {'W': 'arg', 'M': 'aux'})."""
    arrays, kinds = {}, {}
    for key, value in raw.items():
        kind, sep, name = key.partition(":")
        if not sep or kind not in ("arg", "aux"):
            raise ConvertError(f"{params_file}: entry {key!r} is not named 'arg:NAME' or 'aux:NAME' "
                               "(not a bmx.export / HybridBlock.export parameter file)")
        arrays[name] = np.asarray(value)
        kinds[name] = kind
    return arrays, kinds


def theoretical_size_from_graph(order, params, param_kinds):
    """Bytes by bmx.summary's rules, read off the exported graph.

    A latent weight consumed by ``bmx_weight_sign`` counts 1 bit per value, one consumed by
    ``bmx_quantize_weight`` its ``bits``; every other parameter the graph uses 32 bits; auxiliary
    states (BatchNorm running statistics) are not counted.
    """
    bits_of = {}
    for n in order:
        if n.op in WEIGHT_QUANTIZER_OPS and n.inputs and n.inputs[0][0].op == "null":
            bits = 1 if n.op == WEIGHT_SIGN_OP else int(n.attrs.get("bits", 32))
            bits_of[n.inputs[0][0].name] = bits
    total = 0
    for n in order:
        if n.op == "null" and param_kinds.get(n.name) == "arg":
            total += params[n.name].size * bits_of.get(n.name, 32)
    return total / 8


def _zoo_spec(meta):
    """(model name, get_model kwargs, classes, layer config, image size) from model.json metadata, or None."""
    if not meta:
        return None
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    name = config.get("model") or meta.get("model")
    if not isinstance(name, str):
        return None
    kwargs = dict(config.get("model_kwargs") or {})
    if "stem" not in kwargs and isinstance(meta.get("stem"), str):
        kwargs["stem"] = meta["stem"]
    for key in ("binary", "clip_threshold"):
        if config.get(key) is not None:
            kwargs[key] = config[key]
    preprocessing = meta.get("preprocessing") if isinstance(meta.get("preprocessing"), dict) else {}
    size = preprocessing.get("image_size") or config.get("image_size") or meta.get("image_size") or 224
    classes = meta.get("classes", config.get("classes", 1000))
    layer_config = config.get("layer_config") or {}
    if not (isinstance(size, int) and isinstance(classes, int) and isinstance(layer_config, dict)):
        return None  # not metadata this code wrote: fall back to the graph's rules
    return name, kwargs, classes, dict(layer_config), size


def _theoretical_from_zoo(spec):
    """bmx.summary's size in bytes of the zoo model the metadata names."""
    from . import config as bmx_config, models
    from .summary import summary
    name, kwargs, classes, layer_config, size = spec
    with bmx_config.binary_layer_config(**layer_config):
        net = models.get_model(name, classes=classes, **kwargs)
    return summary(net, (1, 3, size, size), show=False).size_mb * 2 ** 20


def _serialized_size(params):
    """Bytes of the parameter file save_model writes for these arrays."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model-0000.params")
        packed.write_params(path, params)
        return os.path.getsize(path)


# ---------------------------------------------------------------- public API

def convert(symbol_file, params_file, meta=None, input_names=("data",)):
    """Converts an exported bmx model into the packed model of docs/packed.md.

    Args:
        symbol_file: ``PREFIX-symbol.json`` written by :func:`bmx.export` (read as JSON).
        params_file: the matching ``PREFIX-NNNN.params`` (keys ``arg:NAME`` / ``aux:NAME``).
        meta: optional model.json metadata; when it names a zoo model (``config.model`` and
            ``config.model_kwargs`` as train_imagenet.py writes them, or top-level ``model`` /
            ``stem``), the theoretical size comes from :func:`bmx.summary` of that Gluon model.
        input_names: the graph's input variables (everything else must be in params_file).

    Returns:
        ``(graph, params, report)``: the symbol JSON as a dict; the parameters as
        ``{'arg:NAME' | 'aux:NAME': numpy array}`` (packed binary weights int64, all else float32);
        a JSON-ready report dict (``layers``: per binary layer what was packed and its bytes
        before/after; ``constants``: folded scales and unpacked quantized weights; ``warnings``;
        ``sizes``: ``params_file_bytes``, ``packed_params_bytes``, ``theoretical_bytes`` and its
        ``theoretical_source``).

    Raises:
        ConvertError: unreadable or inconsistent files, composite-backend graphs, or ops left
            that the packed model cannot run (each message names the file or node and op).
        bmx.packed.PackedFormatError: a parameter file that is not an MXNet NDArray file.
    """
    nodes, heads, top_attrs = _load_graph(symbol_file)
    raw = packed.read_params(params_file)
    params, kinds = _split_params(raw, params_file)
    order = _topological(heads)
    _check_source_graph(symbol_file, order, params, tuple(input_names))
    theoretical_graph = theoretical_size_from_graph(order, params, kinds)
    latent_before = {n.name: params[n.name].nbytes for n in order if n.op == "null" and n.name in params}
    taken = {n.name for n in nodes}

    heads, done, warnings = _rewrite_binary_layers(order, heads, params, taken)
    for match, conv, weight_var, latent in done:
        kinds[weight_var.name] = "arg"
    heads, folds = _fold_constants(heads, params, taken, kinds, top_attrs)
    order = _topological(heads)
    _check_runnable(order)

    used = [n.name for n in order if n.op == "null" and n.name in params]
    out_params = {f"{kinds[name]}:{name}": params[name] for name in used}
    graph = _to_json(heads, top_attrs)

    layers = []
    for match, conv, weight_var, latent in done:
        words = params[weight_var.name]
        layers.append(dict(
            layer=_layer_name(match.weight.name), node=match.node.name, op=match.node.op, pattern=match.pattern,
            packed_node=conv.name, input=[match.data[0].name, match.data[1]], weight=match.weight.name,
            packed_weight=weight_var.name,
            weight_shape=list(latent.shape), packed_shape=list(words.shape), groups=match.groups,
            kernel=list(match.kernel), stride=list(match.stride), pad=list(match.pad),
            dilate=list(match.dilate), pad_value=match.pad_value, bytes_before=int(latent.nbytes),
            bytes_after=int(words.nbytes), theoretical_bytes=latent.size / 8))
    constants = []
    for fold in folds:
        kind = ("quantized weight (float32 values, not packed)" if fold["bits"] is not None
                else "scale (apply_scaling)" if "abs" in fold["ops"] and "mean" in fold["ops"] else "constant")
        constants.append(dict(fold, kind=kind,
                              bytes_before=int(sum(latent_before.get(s, 0) for s in fold["sources"])),
                              bytes_after=int(params[fold["constant"]].nbytes)))
        if fold["bits"] is not None:
            warnings.append(f"{fold['node']}: {fold['bits']}-bit weights of {', '.join(fold['sources'])} are not fed "
                            "by 1-bit activations, so they are stored as float32 values, not packed")
    dropped = sorted(set(latent_before) - set(used))

    spec = _zoo_spec(meta)
    theoretical, source = theoretical_graph, "the exported graph (bmx.summary's rules)"
    if spec is not None:
        try:
            theoretical = _theoretical_from_zoo(spec)
            source = f"bmx.summary of zoo model {spec[0]} {spec[1]}"
        except (ValueError, TypeError) as err:
            warnings.append(f"model.json names zoo model {spec[0]!r}, which cannot be summarized ({err}); "
                            "the theoretical size is computed from the graph")
        if abs(theoretical - theoretical_graph) > 1:
            warnings.append(f"bmx.summary of {spec[0]} gives {theoretical:.0f} bytes but the graph "
                            f"{theoretical_graph:.0f}: model.json may not describe this model")
    packed_bytes = _serialized_size(out_params)
    sizes = dict(params_file_bytes=os.path.getsize(params_file), packed_params_bytes=packed_bytes,
                 theoretical_bytes=theoretical, theoretical_graph_bytes=theoretical_graph,
                 theoretical_source=source, packed_over_theoretical=packed_bytes / theoretical if theoretical else None)
    report = dict(symbol_file=os.path.abspath(symbol_file), params_file=os.path.abspath(params_file),
                  layers=layers, constants=constants, dropped_parameters=dropped, warnings=warnings, sizes=sizes)
    return graph, out_params, report


def resolve_source(source, epoch=None):
    """(symbol file, params file, metadata or None) of a PREFIX, a train_imagenet.py output directory
    or a (symbol file, params file) pair.

    A directory DIR means the prefix DIR/model. ``PREFIX-NNNN.params`` is the newest epoch unless
    ``epoch`` is given. The metadata is ``model.json`` beside a prefix named ``model``, if present.
    """
    if isinstance(source, (tuple, list)):
        if len(source) != 2 or epoch is not None:
            raise ConvertError("give a (symbol file, params file) pair, without an epoch")
        for path in source:
            if not os.path.isfile(path):
                raise ConvertError(f"{path}: no such file")
        return str(source[0]), str(source[1]), None
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        raise ConvertError(f"--epoch must be a non-negative integer, got {epoch!r}")
    source = os.fspath(source)
    prefix = os.path.join(source, "model") if os.path.isdir(source) else source
    symbol_file = f"{prefix}-symbol.json"
    if not os.path.isfile(symbol_file):
        what = (f"directory {source} holds no model-symbol.json" if os.path.isdir(source)
                else f"{symbol_file}: no such file")
        raise ConvertError(f"{what} (expected PREFIX-symbol.json and PREFIX-NNNN.params from bmx.export)")
    if epoch is not None:
        params_file = f"{prefix}-{epoch:04d}.params"
        if not os.path.isfile(params_file):
            raise ConvertError(f"{params_file}: no such parameter file (--epoch {epoch})")
    else:
        pattern = re.compile(re.escape(os.path.basename(prefix)) + r"-(\d{4,})\.params$")
        found = [(int(m.group(1)), path) for path in glob.glob(f"{glob.escape(prefix)}-*.params")
                 if (m := pattern.match(os.path.basename(path)))]
        if not found:
            raise ConvertError(f"{prefix}-NNNN.params: no parameter file beside {symbol_file}")
        params_file = max(found)[1]
    meta = None
    meta_file = os.path.join(os.path.dirname(prefix), "model.json")
    if os.path.basename(prefix) == "model" and os.path.isfile(meta_file):
        try:
            with open(meta_file) as f:
                meta = json.load(f)
        except (OSError, ValueError) as err:
            raise ConvertError(f"{meta_file}: not valid JSON ({err})") from None
        if not isinstance(meta, dict):
            raise ConvertError(f"{meta_file}: expected a JSON object")
    return symbol_file, params_file, meta


def _check_output(output_dir, inputs, force):
    """Refuses an existing output without force, and an output that would replace or hold an input."""
    out = os.path.realpath(output_dir)
    for path in inputs:
        real = os.path.realpath(path)
        if real == out or real.startswith(out + os.sep):
            raise ConvertError(f"output {output_dir} would replace the input {path}: choose another directory")
    if os.path.lexists(output_dir) and not force:
        raise ConvertError(f"output {output_dir} exists (pass --force to replace it)")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise ConvertError(f"output {output_dir}: the directory {parent} does not exist")


def _packed_meta(meta, report, sources):
    """The packed model's model.json: the source metadata plus a "packed" entry (format, sources, sizes)."""
    sizes = report["sizes"]
    info = dict(format_version=packed.FORMAT_VERSION, bmx_version=__version__, source_files=sources,
                params_file_bytes=sizes["params_file_bytes"], packed_params_bytes=sizes["packed_params_bytes"],
                theoretical_bytes=sizes["theoretical_bytes"], theoretical_source=sizes["theoretical_source"],
                packed_layers=len(report["layers"]))
    if "verify" in report:
        info["verified"] = report["verify"]
    return dict(meta or {}, packed=info)


def _input_shape(symbol_file, params_file, spec, input_size, batch):
    """NCHW shape of the verification inputs: the channels a convolution reading the input
    (through signs and pads) expects, else 3; the size input_size, else the metadata's, else 224."""
    channels = 3
    nodes, _, _ = _load_graph(symbol_file)
    params = packed.read_params(params_file)
    for n in nodes:
        if n.op != "Convolution" or len(n.inputs) < 2:
            continue
        src = n.inputs[0][0]
        while src.op in SIGN_OPS + ("Pad",) and src.inputs:
            src = src.inputs[0][0]
        weight = n.inputs[1][0]
        while weight.op != "null" and weight.inputs:  # through the weight quantizer
            weight = weight.inputs[0][0]
        shape = params.get(f"arg:{weight.name}", np.empty(0)).shape
        if src.op == "null" and f"arg:{src.name}" not in params and len(shape) == 4:
            channels = shape[1] * _ints(n.attrs.get("num_group"), (1,), 1, n.name)[0]
            break
    size = input_size or (spec[4] if spec else 224)
    return (batch, channels, size, size)


def binarize(source, output_dir, *, epoch=None, force=False, verify=False, input_size=None, seed=0, batch=2,
             meta=None, _sources=None):
    """Converts an exported model and writes the packed model directory (bmx.packed.save_model).

    Args:
        source: ``PREFIX`` (``PREFIX-symbol.json`` + ``PREFIX-NNNN.params``), a train_imagenet.py
            output directory (its ``model`` prefix and ``model.json``) or a (symbol file, params
            file) pair.
        output_dir: the packed model directory to create; an existing one is only replaced with
            ``force``. It is written only after conversion (and verification) succeeded.
        epoch: which ``PREFIX-NNNN.params``; None takes the newest.
        verify: check the packed model against the original on seeded random inputs (see
            :func:`verify_packed`) before writing it.
        input_size: height = width of the verification inputs (default: model.json's image
            size, else 224).
        meta: metadata to use instead of the model.json found beside the source.

    Returns:
        The report of :func:`convert` (with ``verify`` results if asked, and ``output_dir``).
    """
    symbol_file, params_file, found_meta = resolve_source(source, epoch)
    meta = found_meta if meta is None else meta
    sources = _sources or [os.path.abspath(symbol_file), os.path.abspath(params_file)]
    _check_output(output_dir, sources, force)
    graph, params, report = convert(symbol_file, params_file, meta)
    if verify:
        shape = _input_shape(symbol_file, params_file, _zoo_spec(meta), input_size, batch)
        with tempfile.TemporaryDirectory() as tmp:
            trial = os.path.join(tmp, "packed")
            packed.save_model(trial, graph, params, _packed_meta(meta, report, sources))
            report["verify"] = verify_packed(symbol_file, params_file, trial, report, shape, seed=seed)
    packed.save_model(output_dir, graph, params, _packed_meta(meta, report, sources), force=force)
    report["output_dir"] = os.path.abspath(output_dir)
    return report


def binarize_gluon(model, params_file, output_dir, *, stem=None, classes=1000, input_size=None, force=False,
                   verify=False, seed=0):
    """Like :func:`binarize` for a Gluon parameter file (``net.save_parameters``) of zoo model ``model``.

    The zoo model is built (``bmx.models.get_model(model, classes=classes[, stem=stem])``), loads
    params_file, is exported with :func:`bmx.export` to a temporary directory and converted.
    input_size (default 32 for the cifar/thumbnail stems, else 224) is the export's and the
    verification's input size.
    """
    import mxnet as mx
    from . import model_io, models

    if not os.path.isfile(params_file):
        raise ConvertError(f"{params_file}: no such parameter file")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ConvertError(f"--classes must be a positive integer, got {classes!r}")
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1):
        raise ConvertError(f"--input-size must be a positive integer, got {input_size!r}")
    _check_output(output_dir, [os.path.abspath(params_file)], force)
    kwargs = {"stem": stem} if stem else {}
    try:
        net = models.get_model(model, classes=classes, **kwargs)
    except ValueError as err:
        raise ConvertError(f"--model: {err}") from None
    stem = stem or "imagenet"  # every zoo family defaults to the ImageNet stem
    size = input_size or (32 if stem in ("cifar", "thumbnail") else 224)
    try:
        net.load_parameters(params_file, ctx=mx.cpu())
    except (mx.MXNetError, AssertionError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConvertError(f"{params_file}: not parameters of {model} (stem {stem}, {classes} classes): "
                           f"{first}") from None
    meta = dict(model=model, stem=stem, classes=classes, image_size=size)
    with tempfile.TemporaryDirectory() as tmp:
        model_io.export(net, os.path.join(tmp, "model"), input_shape=(1, 3, size, size))
        report = binarize(os.path.join(tmp, "model"), output_dir, epoch=0, force=force, verify=verify,
                          input_size=size, seed=seed, meta=meta, _sources=[os.path.abspath(params_file)])
    report["symbol_file"] = report["params_file"] = os.path.abspath(params_file)
    return report


# ---------------------------------------------------------------- verification

def _run_mxnet(graph, params_file, x):
    """Outputs (list of numpy arrays) of a symbol JSON dict run on x with bmx.imports."""
    import mxnet as mx
    from . import model_io

    with tempfile.TemporaryDirectory() as tmp:
        symbol_file = os.path.join(tmp, "probe-symbol.json")
        with open(symbol_file, "w") as f:
            json.dump(graph, f)
        with warnings.catch_warnings():
            # SymbolBlock.imports warns that it cannot infer the input's type before it sees the input
            warnings.filterwarnings("ignore", message="Cannot decide type")
            return _outputs(model_io.imports(symbol_file, params_file)(mx.nd.array(x)))


def _outputs(result):
    if isinstance(result, (list, tuple)):
        return [np.asarray(r.asnumpy() if hasattr(r, "asnumpy") else r) for r in result]
    return [np.asarray(result.asnumpy() if hasattr(result, "asnumpy") else result)]


def _quantized(point, x):
    """What the activation quantizer at a decision point makes of x (for comparing decisions)."""
    if point["bits"] is None:
        return x >= 0
    levels = 2 ** point["bits"] - 1
    return np.floor(np.clip(x, 0, 1) * levels + 0.5)


def _to_boundary(point, x):
    """How far x is from the nearest value where the quantizer's output jumps."""
    if point["bits"] is None:
        return np.abs(x)
    levels = 2 ** point["bits"] - 1
    v = np.clip(x, 0, 1) * levels
    return np.abs(v - np.floor(v) - 0.5) / levels


def _decision_points(nodes, layers, graph):
    """The activation quantizers of the packed graph, in the original graph's order.

    Each is a dict: ``label``; ``original`` (the entry of its input in the original graph),
    ``packed`` (the same input in the packed graph, as a JSON entry); ``bits`` (None for a sign,
    k for the k-bit quantizer). The packed layers' inputs come first in the list of each kind.
    """
    by_name = {n.name: n for n in nodes}
    position = {id(n): i for i, n in enumerate(nodes)}
    packed_nodes = {n["name"]: n for n in graph["nodes"]}
    points = [dict(label=f"layer {layer['layer']} (node '{layer['node']}')", bits=None,
                   original=(by_name[layer["input"][0]], layer["input"][1]),
                   packed=packed_nodes[layer["packed_node"]]["inputs"][0]) for layer in layers]
    for n in graph["nodes"]:
        if n["op"] in SIGN_OPS + ("bmx_quantize_act",):
            bits = int(n["attrs"]["bits"]) if n["op"] == "bmx_quantize_act" else None
            points.append(dict(label=f"node '{n['name']}' ({n['op']})", bits=bits,
                               original=by_name[n["name"]].inputs[0], packed=n["inputs"][0]))
    return sorted(points, key=lambda p: position[id(p["original"][0])])


def _check_path(name, original, got, points, rtol, atol, flip_tol):
    """Compares one way of running the packed model with the original, sample by sample.

    ``original`` and ``got`` are the model outputs followed by the values at the decision points
    (:func:`_decision_points`). A sample's outputs must agree within ``atol * max|original| + rtol
    * |original|``, unless float rounding legitimately changed a quantizer's decision: at the first
    decision point (in graph order) where a decision differs, it may differ only where the original
    input is within ``flip_tol`` (relative to its largest value) of a jump, and the inputs of all
    points up to it must agree within the same tolerance as the outputs. Such a sample is counted,
    not compared further. Returns (max |diff| over the compared samples, number of samples excused);
    VerificationError naming the output or decision point otherwise.
    """
    heads = len(original) - len(points)
    for i, (a, b) in enumerate(zip(original, got)):
        if a.shape != b.shape:
            what = f"output {i}" if i < heads else f"the input of {points[i - heads]['label']}"
            raise VerificationError(f"{name}: {what} has shape {b.shape}, the original {a.shape}")
    worst, excused = 0.0, 0
    for n in range(original[0].shape[0]):
        diffs = [np.abs(a[n].astype(np.float64) - b[n]) for a, b in zip(original[:heads], got[:heads])]
        bad = [not np.all(d <= atol * np.max(np.abs(a[n])) + rtol * np.abs(a[n])) for a, d in zip(original, diffs)]
        if not any(bad):
            worst = max([worst] + [float(d.max()) for d in diffs if d.size])
            continue
        for point, x, y in zip(points, original[heads:], got[heads:]):
            x, y = x[n].ravel(), y[n].ravel()
            scale = float(np.max(np.abs(x))) if x.size else 0.0
            changed = _quantized(point, x) != _quantized(point, y)
            off = np.abs(x.astype(np.float64) - y) > atol * scale + rtol * np.abs(x)
            if np.any(off & ~changed):
                raise VerificationError(f"{name}: the input of {point['label']} differs from the original by up to "
                                        f"{np.max(np.abs(x - y)):.3g} (sample {n}, scale {scale:.3g})")
            if np.any(changed):
                distance = float(np.max(_to_boundary(point, x[changed])))
                if distance > flip_tol * scale:
                    raise VerificationError(f"{name}: {int(changed.sum())} quantized value(s) at {point['label']} "
                                            f"differ from the original, whose inputs are up to {distance:.3g} from "
                                            f"a rounding boundary (sample {n}, scale {scale:.3g})")
                excused += 1
                break
        else:
            i = bad.index(True)
            raise VerificationError(f"{name}: output {i} differs from the original by up to {diffs[i].max():.3g} "
                                    f"(sample {n}, output scale {np.max(np.abs(original[i][n])):.3g}, tolerance "
                                    f"rtol {rtol} / atol {atol} x scale)")
    return worst, excused


def verify_packed(symbol_file, params_file, packed_dir, report, input_shape, seed=0, rtol=1e-3, atol=1e-3,
                  flip_tol=1e-4):
    """Checks a packed model against the exported original on seeded random inputs.

    * every packed layer, EXACTLY: the original graph's input of the layer (an internal output
      of the original symbol) through :func:`bmx.xnor.conv2d` and through the MXNet op
      ``bmx_xnor_conv2d``, both with the stored packed weights, equals the original layer's output;
    * the whole model: bmx.runtime and MXNet (bmx.imports) running the packed model agree with
      the original within rtol * |original| + atol * max|original|, sample by sample. The
      runtime's float ops round differently from MXNet's, so an activation quantizer's input
      within rounding of a jump (0 for a sign) may be decided the other way, which changes
      everything after it: a sample whose outputs differ is accepted only if the first differing
      decision had its input within ``flip_tol`` (relative) of the jump and the quantizer inputs
      up to it agree (see ``_check_path``); it is then counted in ``*_samples_excused``.

    Args:
        symbol_file, params_file: the original exported model.
        packed_dir: the packed model directory.
        report: :func:`convert`'s report for it (the layers to check).
        input_shape: NCHW shape of the random inputs (standard normal, seeded).

    Returns:
        A dict of what was checked and the largest differences. Raises VerificationError naming
        the layer or path and the max difference otherwise.
    """
    import mxnet as mx
    from . import runtime

    x = np.random.default_rng(seed).standard_normal(input_shape).astype(np.float32)
    nodes, heads, top_attrs = _load_graph(symbol_file)
    by_name = {n.name: n for n in nodes}
    layers, model = report["layers"], packed.load_model(packed_dir)
    points = _decision_points(nodes, layers, model.graph)
    outputs = [(by_name[layer["node"]], 0) for layer in layers]
    try:
        values = _run_mxnet(_to_json(heads + [p["original"] for p in points] + outputs, top_attrs), params_file, x)
    except mx.MXNetError as err:
        raise ConvertError(f"{symbol_file}: the original model does not run on inputs of shape {input_shape} "
                           f"({str(err).strip().splitlines()[0]}); give the input size") from None
    original, layer_outputs = values[:len(heads) + len(points)], values[len(heads) + len(points):]

    layer_inputs = {p["label"]: v for p, v in zip(points, original[len(heads):])}
    for layer, expected in zip(layers, layer_outputs):
        inp = layer_inputs[f"layer {layer['layer']} (node '{layer['node']}')"]
        words = np.asarray(model.params[f"arg:{layer['packed_weight']}"])
        if layer["op"] == "FullyConnected":
            inp = inp.reshape(inp.shape[0], -1, 1, 1)
        weights = xnor.PackedWeights(words.view(np.uint64), layer["weight_shape"][1], layer["groups"])
        got = xnor.conv2d(inp, weights, stride=layer["stride"], padding=layer["pad"], dilation=layer["dilate"],
                          pad_value=float(layer["pad_value"]))
        attrs = dict(kernel=tuple(layer["kernel"]), stride=tuple(layer["stride"]), pad=tuple(layer["pad"]),
                     dilate=tuple(layer["dilate"]), num_filter=layer["packed_shape"][0], num_group=layer["groups"],
                     pad_value=str(layer["pad_value"]))
        op = getattr(mx.nd, XNOR_OP)(mx.nd.array(inp), mx.nd.array(words, dtype=np.int64), **attrs)
        for what, value in (("bmx.xnor.conv2d", got), (XNOR_OP, op.asnumpy())):
            value = value.reshape(expected.shape).astype(np.float64)
            diff = float(np.max(np.abs(value - expected))) if expected.size else 0.0
            if diff != 0.0:
                raise VerificationError(f"layer {layer['layer']} (node '{layer['node']}'): {what} differs from the "
                                        f"original layer's output by up to {diff:g} (must be exact)")

    probe = copy.deepcopy(model.graph)
    probe["heads"] = probe["heads"] + [list(p["packed"]) for p in points]
    in_runtime = runtime.Model(packed.PackedModel(probe, model.params, model.meta, packed_dir))
    runs = (("runtime", "bmx.runtime", _outputs(in_runtime(x))),
            ("mxnet", "MXNet (SymbolBlock.imports)", _run_mxnet(probe, os.path.join(packed_dir, packed.PARAMS_FILE), x)))
    result = dict(input_shape=list(input_shape), seed=seed, layers_checked_exactly=len(layers),
                  output_scale=max(float(np.max(np.abs(o))) for o in original[:len(heads)]))
    for key, name, got in runs:
        worst, excused = _check_path(name, original, got, points, rtol, atol, flip_tol)
        result[f"{key}_max_abs_diff"], result[f"{key}_samples_excused"] = worst, excused
    return result


# ---------------------------------------------------------------- text

def _mb(n):
    return f"{n / 2 ** 20:.3f} MB ({int(round(n)):,} bytes)"


def format_report(report):
    """The report as lines of text: packed layers, constants, warnings, sizes."""
    lines = []
    for layer in report["layers"]:
        lines.append(f"packed {layer['layer']} ({layer['op']} pattern {layer['pattern']}, weight "
                     f"{tuple(layer['weight_shape'])} -> int64 {tuple(layer['packed_shape'])}, "
                     f"pad {tuple(layer['pad'])} value {layer['pad_value']}): "
                     f"{layer['bytes_before']:,} -> {layer['bytes_after']:,} bytes")
    for const in report["constants"]:
        lines.append(f"constant {const['constant']} ({const['kind']}, from {', '.join(const['sources'])}): "
                     f"{const['bytes_before']:,} -> {const['bytes_after']:,} bytes")
    for warning in report["warnings"]:
        lines.append(f"warning: {warning}")
    s = report["sizes"]
    lines.append(f"binary layers packed: {len(report['layers'])}")
    lines.append(f"size before (parameter file): {_mb(s['params_file_bytes'])}")
    lines.append(f"size after (packed parameter file): {_mb(s['packed_params_bytes'])}")
    lines.append(f"theoretical size: {_mb(s['theoretical_bytes'])} from {s['theoretical_source']}; "
                 f"packed / theoretical = {s['packed_over_theoretical']:.3f}")
    if "verify" in report:
        v = report["verify"]
        lines.append(f"verified on {tuple(v['input_shape'])}: {v['layers_checked_exactly']} layers exact, max |diff| "
                     f"runtime {v['runtime_max_abs_diff']:.3g}, MXNet {v['mxnet_max_abs_diff']:.3g} "
                     f"(output scale {v['output_scale']:.3g})")
        for key, name in (("runtime", "runtime"), ("mxnet", "MXNet")):
            if v[f"{key}_samples_excused"]:
                lines.append(f"  {name}: {v[f'{key}_samples_excused']} sample(s) not compared end to end: an "
                             "activation within float rounding of a quantizer's jump was decided the other way "
                             "(everything up to it agrees)")
    return lines

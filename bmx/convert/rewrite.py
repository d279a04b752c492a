"""Rewriting: matched binary layers become bmx_xnor_conv2d on packed weights; parameter-only
subgraphs become constants (computed by MXNet)."""
import json

import mxnet as mx
import numpy as np

from .. import symbol_json, xnor
from ..symbol_json import Node
from .common import WEIGHT_SIGN_OP, XNOR_OP, ConvertError, fmt, layer_name, new_variable, unique
from .patterns import fed_by_sign, match_conv, match_dense


def _sign_values(w):
    """+1 where w >= 0, else -1 (NaN included), float32: the binary weight of a latent weight."""
    return np.where(w >= 0, np.float32(1), np.float32(-1)).astype(np.float32)


def _pack(match, latent):
    """The int64 (O, KH, KW, Wd) packed signs of a layer's latent weight."""
    w = _sign_values(latent)
    if match.dense:
        w = w[:, :, None, None]
    return xnor.pack_weights(w, match.groups).words.view(np.int64)


def _xnor_node(match, data_entry, weight_var, out_channels):
    """The bmx_xnor_conv2d node computing a matched layer (attributes as docs/packed.md lists them)."""
    attrs = {"kernel": fmt(match.kernel), "stride": fmt(match.stride), "pad": fmt(match.pad),
             "dilate": fmt(match.dilate), "num_filter": str(out_channels), "num_group": str(match.groups),
             "pad_value": str(match.pad_value)}
    return Node(XNOR_OP, f"{layer_name(match.weight.name)}_xnor_conv2d", attrs, [data_entry, (weight_var, 0)])


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


def rewrite_binary_layers(order, heads, params, taken):
    """Replaces the binary layers that match a pattern by bmx_xnor_conv2d; adds their packed weights to params.

    Returns (new heads, [(match, xnor node, packed weight variable, latent weight)] per rewritten
    layer, warnings about binary layers fed by a sign that match no pattern and stay float).
    """
    replaced, done, warnings = {}, [], []
    for node in order:
        if node.op == "Convolution":
            match = match_conv(node, params)
        elif node.op == "FullyConnected":
            match = match_dense(node, params)
        else:
            continue
        if isinstance(match, str):
            if len(node.inputs) > 1 and fed_by_sign(node) and WEIGHT_SIGN_OP in subgraph_ops(node.inputs[1][0])[0]:
                warnings.append(f"node '{node.name}' ({node.op}) has binary weights and a sign input but is "
                                f"kept in float: it {match}")
            continue
        latent = params[match.weight.name]
        words = _pack(match, latent)
        weight_var = new_variable(unique(f"{layer_name(match.weight.name)}_packed_weight", taken), words)
        params[weight_var.name] = words
        data = match.data
        if match.dense:
            reshape = Node("Reshape", unique(f"{layer_name(match.weight.name)}_to_1x1", taken),
                           {"shape": "(0, -1, 1, 1)"}, [data])
            data = (reshape, 0)
        conv = _xnor_node(match, data, weight_var, words.shape[0])
        conv.name = unique(conv.name, taken)
        out = conv
        if match.dense:
            out = Node("Flatten", unique(f"{layer_name(match.weight.name)}_flatten", taken), {}, [(conv, 0)])
        replaced[id(node)] = (out, 0)
        done.append((match, conv, weight_var, latent))
    return _redirect(order, heads, replaced), done, warnings


def fold_constants(heads, params, taken, param_kinds, top_attrs):
    """Evaluates every parameter-only subgraph in MXNet and stores its value as a float32 constant.

    Returns (heads, folds): one fold dict per stored constant, naming its ops and source parameters.
    """
    order = symbol_json.topological(heads)
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
    # the values are computed by MXNet's own operators, bit for bit
    subgraph = symbol_json.to_json(wanted, top_attrs)
    symbol = mx.sym.load_json(json.dumps(subgraph))
    arrays = {name: mx.nd.array(params[name], dtype=params[name].dtype) for name in symbol.list_arguments()}
    try:
        values = [v.asnumpy() for v in symbol.eval(ctx=mx.cpu(), **arrays)]
    except mx.MXNetError as err:
        raise ConvertError(f"cannot evaluate the parameter-only nodes {[e[0].name for e in wanted]}: "
                           f"{str(err).splitlines()[0]}") from None
    replaced, folds = {}, []
    for (node, idx), value in zip(wanted, values):
        ops, sources = subgraph_ops(node)
        if value.dtype != np.float32:
            raise ConvertError(f"node '{node.name}' ({node.op}) computes a {value.dtype} constant; "
                               "only float32 constants are supported")
        var = new_variable(unique(f"{node.name}_const", taken), value)
        params[var.name] = value
        param_kinds[var.name] = "arg"
        key = (id(node), idx)
        replaced[key] = (var, 0)
        folds.append(dict(node=node.name, op=node.op, ops=ops, sources=sources, constant=var.name,
                          shape=list(value.shape), bits=quantizer_bits(node)))

    def fix(entry):
        return replaced.get((id(entry[0]), entry[1]), entry)
    for n in order:
        n.inputs = [fix(e) for e in n.inputs]
    return [fix(e) for e in heads], folds


def subgraph_ops(node):
    """(sorted op names, sorted parameter names) of the parameter-only subgraph ending at node."""
    ops, sources = set(), set()
    for n in symbol_json.topological([(node, 0)]):
        if n.op == "null":
            sources.add(n.name)
        else:
            ops.add(n.op)
    return sorted(ops), sorted(sources)


def quantizer_bits(node):
    """Weight bits of the quantizer inside a folded subgraph (1 for sign, k for DoReFa), or None."""
    for n in symbol_json.topological([(node, 0)]):
        if n.op == WEIGHT_SIGN_OP:
            return 1
        if n.op == "bmx_quantize_weight":
            return int(n.attrs.get("bits", 0))
    return None

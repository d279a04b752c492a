"""The one reader (and writer) of MXNet's symbol JSON (``PREFIX-symbol.json``), standard library only.

A symbol file is read as JSON, never executed. :func:`parse` turns it into :class:`Node` objects
whose ``inputs`` are ``(node, output index)`` entries: the converter rewrites that graph and writes
it back with :func:`to_json`, the runtime compiles it, and ``bmx.model_io`` lists its bmx
operators. Every function takes the exception class to raise (``error``), so that each caller
reports a bad file with its own error type; messages name the file. :func:`attribute` and the
``parse_*`` functions read the string attributes the way both the runtime and the ONNX exporter do.
"""
import copy
import json

__all__ = ["SymbolJSONError", "Node", "read", "parse", "load", "topological", "to_json", "REQUIRED", "attribute",
           "parse_int", "parse_float", "parse_bool", "parse_tuple", "parse_optional_int"]


class SymbolJSONError(ValueError):
    """The file is missing or is not an MXNet symbol JSON; the message names the file."""


class Node:
    """One node: ``op``, ``name``, ``attrs`` (strings, as MXNet writes them), ``inputs`` as
    (node, output index) entries, ``num_outputs``, ``extra`` (other keys of the node, kept when
    written back) and ``index`` (its position in the file, or None for a node made later)."""

    __slots__ = ("op", "name", "attrs", "inputs", "num_outputs", "extra", "index")

    def __init__(self, op, name, attrs=None, inputs=(), num_outputs=1, extra=None, index=None):
        self.op, self.name, self.attrs = op, name, dict(attrs or {})
        self.inputs, self.num_outputs, self.extra = list(inputs), num_outputs, dict(extra or {})
        self.index = index


# the attribute key changed over MXNet versions: "param" (< 0.9), "attr", "attrs"
_ATTR_KEYS = ("attrs", "attr", "param")
_GRAPH_KEYS = ("nodes", "heads", "arg_nodes", "node_row_ptr")


def read(path, error=SymbolJSONError):
    """The JSON value of the symbol file ``path`` (not yet checked to be a graph)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise error(f"{path}: no such symbol file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read the symbol file ({err})") from None
    except ValueError as err:
        raise error(f"{path}: not valid JSON, truncated or not a symbol file ({err})") from None


def parse(graph, source, error=SymbolJSONError):
    """(nodes in file order, heads as entries, the other top-level keys) of a symbol JSON value.

    ``source`` names the file in messages. Every input must be an earlier node (which also rules
    out cycles) and there must be at least one head.
    """
    try:
        raw_nodes, raw_heads = graph["nodes"], graph["heads"]
        row_ptr = graph.get("node_row_ptr")
        nodes = []
        for i, raw in enumerate(raw_nodes):
            outputs = row_ptr[i + 1] - row_ptr[i] if row_ptr else 1
            attrs = next((raw[k] for k in _ATTR_KEYS if raw.get(k)), {})
            if not isinstance(attrs, dict):
                raise TypeError(f"attributes of node {i}")
            extra = {k: v for k, v in raw.items() if k not in ("op", "name", "inputs") + _ATTR_KEYS}
            node = Node(str(raw["op"]), str(raw["name"]), attrs, num_outputs=outputs, extra=extra, index=i)
            if any(not 0 <= int(e[0]) < i for e in raw.get("inputs", [])):
                raise ValueError(f"inputs of node {i}")
            node.inputs = [(nodes[int(e[0])], int(e[1])) for e in raw.get("inputs", [])]
            nodes.append(node)
        if any(not 0 <= int(e[0]) < len(nodes) for e in raw_heads):
            raise ValueError("heads")
        heads = [(nodes[int(e[0])], int(e[1])) for e in raw_heads]
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise error(f"{source}: not an MXNet symbol JSON (bad or missing {err})") from None
    if not heads:
        raise error(f"{source}: the symbol has no outputs")
    return nodes, heads, {k: v for k, v in graph.items() if k not in _GRAPH_KEYS}


def load(path, error=SymbolJSONError):
    """:func:`parse` of the symbol file ``path``."""
    return parse(read(path, error), path, error)


def topological(heads):
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


def to_json(heads, top_attrs):
    """The symbol JSON value of the graph reachable from heads (``top_attrs``: other top-level keys)."""
    order = topological(heads)
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


# The default of an attribute that must be present.
REQUIRED = object()


def attribute(attrs, key, parse, default, what, fail):
    """``parse`` of the string attribute ``attrs[key]``, or ``default`` where it is missing.

    ``fail(message)`` raises the caller's error (naming its node) where a REQUIRED attribute is
    missing or the text does not parse (``what`` says what it should be).
    """
    text = attrs.get(key)
    if text is None:
        if default is REQUIRED:
            fail(f"attribute {key!r} is missing")
        return default
    try:
        return parse(str(text))
    except ValueError:
        fail(f"attribute {key}={text!r} is not {what}")


def parse_int(text):
    return int(text.strip().rstrip("L"))  # Python 2 era files write longs as "3L"


def parse_float(text):
    return float(text)


def parse_bool(text):
    lowered = text.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError(text)


def parse_tuple(text):
    """'(3, 3)', '[3,3]', '3', '()', '(None, 2)' -> tuple of ints (None kept)."""
    body = text.strip().strip("()[]")
    items = [item.strip() for item in body.split(",") if item.strip()]
    return tuple(None if item == "None" else parse_int(item) for item in items)


def parse_optional_int(text):
    return None if text.strip() == "None" else parse_int(text)


class TypedAttributes:
    """Typed getters over a node's string attributes ``self.attrs``, shared by the runtime's and
    the ONNX exporter's node types. A subclass defines ``fail(message)``, which raises its own
    error naming the file and node; a getter calls it where a REQUIRED attribute is missing or
    the text does not parse, and otherwise returns the parsed value or ``default``."""

    __slots__ = ()

    def fail(self, message):
        raise NotImplementedError

    def _get(self, key, parse, default, what):
        return attribute(self.attrs, key, parse, default, what, self.fail)

    def int(self, key, default=REQUIRED):
        return self._get(key, parse_int, default, "an integer")

    def optional_int(self, key):
        """An integer attribute that may be missing or 'None' (both give None)."""
        return self._get(key, parse_optional_int, None, "an integer or None")

    def float(self, key, default=REQUIRED):
        return self._get(key, parse_float, default, "a number")

    def bool(self, key, default=REQUIRED):
        return self._get(key, parse_bool, default, "a boolean")

    def tuple(self, key, default=REQUIRED):
        """A tuple attribute ('(3, 3)', '3', '()'); a single integer counts as a 1-tuple."""
        return self._get(key, parse_tuple, default, "a tuple of integers")

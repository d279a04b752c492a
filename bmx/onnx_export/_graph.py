"""The symbol JSON, read as JSON (nothing in it is executed), and the ONNX graph built from it."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from .. import __version__, symbol_json
from ..symbol_json import TypedAttributes
from ._ops import CONVERTERS, SIGN_OPS

OPSET = 18
# The IR version that came with opset 18 (onnx 1.13): the newest IR that consumers of opset 18 read.
IR_VERSION = 8

_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
          np.dtype(np.bool_): TensorProto.BOOL}
_BOOL_OPS = ("GreaterOrEqual", "Greater", "LessOrEqual", "Less", "Equal", "Not")
# Ops between the model input and the first Convolution that keep the channel count.
_CHANNEL_KEEPING = SIGN_OPS + ("Pad", "pad", "BatchNorm", "Activation", "bmx_quantize_act", "BlockGrad", "_copy",
                               "identity")
_WEIGHT_OPS = ("bmx_weight_sign", "bmx_quantize_weight", "_mul_scalar")


class OnnxExportError(ValueError):
    """The model cannot be exported; the message names the file and the node at fault."""


class MxNode(TypedAttributes):
    """One node of the symbol JSON: name, op, attributes (strings, as MXNet writes them) and input
    entries (source MxNode, output index). The typed getters raise OnnxExportError naming the node."""

    __slots__ = ("index", "name", "op", "attrs", "inputs", "file")

    def __init__(self, node, inputs, file):
        """``node``: a :class:`bmx.symbol_json.Node` of the file ``file``; ``inputs``: its input
        entries with MxNode sources."""
        self.index, self.name, self.op, self.attrs = node.index, node.name, node.op, node.attrs
        self.inputs, self.file = inputs, file

    def fail(self, message):
        raise OnnxExportError(f"{self.file}: node '{self.name}' ({self.op}): {message}")

    def text(self, key, default):
        return str(self.attrs.get(key, default))


def read_symbol(path):
    """(nodes, heads) of an MXNet symbol JSON file; heads are (MxNode, output index) entries."""
    parsed, heads, _ = symbol_json.load(path, OnnxExportError)
    nodes = []
    for node in parsed:
        nodes.append(MxNode(node, [(nodes[source.index], out) for source, out in node.inputs], path))
    return nodes, [(nodes[head.index], out) for head, out in heads]


def _reachable(heads):
    seen, stack = set(), [node for node, _ in heads]
    while stack:
        node = stack.pop()
        if node.index not in seen:
            seen.add(node.index)
            stack.extend(source for source, _ in node.inputs)
    return seen


def _parameter(params, name):
    for key in (f"arg:{name}", f"aux:{name}", name):
        if key in params:
            return np.asarray(params[key])
    return None


def input_channels(nodes, params):
    """{input name: channels} for the inputs that reach a Convolution through channel-keeping ops:
    the channels its (possibly quantized) weight expects."""
    found = {}
    for node in nodes:
        if node.op != "Convolution" or len(node.inputs) < 2:
            continue
        source, weight = node.inputs[0][0], node.inputs[1][0]
        while source.op in _CHANNEL_KEEPING and source.inputs:
            source = source.inputs[0][0]
        while weight.op in _WEIGHT_OPS and weight.inputs:
            weight = weight.inputs[0][0]
        array = _parameter(params, weight.name)
        if source.op == "null" and _parameter(params, source.name) is None and array is not None and array.ndim >= 2:
            found.setdefault(source.name, int(array.shape[1]) * node.int("num_group", 1))
    return found


class Builder:
    """Collects ONNX nodes and initializers while the converters walk the symbol graph."""

    def __init__(self, file, taken):
        self.file = file
        self.nodes, self.inputs, self.initializers, self.types = [], [], {}, {}
        self.values = {}  # (MXNet node index, output index) -> ONNX value name
        self._parameters = set()
        self._names, self._consts = set(taken), {}

    def unique(self, base):
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def value(self, entry):
        node, index = entry
        if (node.index, index) not in self.values:
            node.fail(f"output {index} is read, but only the first output of this op is exported")
        return self.values[(node.index, index)]

    def parameter(self, value):
        """The array of a model parameter by its value name (None for anything else)."""
        return self.initializers[value] if value in self._parameters else None

    def add_parameter(self, node, array):
        if array.dtype not in (np.float32, np.int64):
            node.fail(f"parameter has dtype {array.dtype}; only float32 (and packed int64) models are exported")
        self.initializers[node.name] = array
        self.types[node.name] = _TYPES[array.dtype]
        self._parameters.add(node.name)
        return node.name

    def const(self, value):
        """An initializer holding value (Python floats become float32); small constants are shared."""
        array = np.asarray(value, np.float32 if isinstance(value, float) else None)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 16 else None
        if key in self._consts:
            return self._consts[key]
        name = self.unique("const")
        self.initializers[name], self.types[name] = array, _TYPES[array.dtype]
        if key is not None:
            self._consts[key] = name
        return name

    def emit(self, op_type, inputs, node, **attrs):
        """Appends ONNX node op_type (named after the MXNet node) and returns its output's name."""
        attrs = {k: numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v for k, v in attrs.items()}
        out = self.unique(f"{node.name}/{op_type}")
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        if op_type in _BOOL_OPS:
            self.types[out] = TensorProto.BOOL
        elif op_type == "Shape":
            self.types[out] = TensorProto.INT64
        elif op_type == "Cast":
            self.types[out] = attrs["to"]
        elif op_type == "ConstantOfShape":
            self.types[out] = TensorProto.FLOAT
        else:
            self.types[out] = self.types[inputs[1] if op_type == "Where" else inputs[0]]
        return out

    def channels(self, value, node):
        """Dimension 1 of value, by ONNX shape inference over the graph built so far."""
        declared = [helper.make_tensor_value_info(name, self.types[name], array.shape)
                    for name, array in self.initializers.items()]
        graph = helper.make_graph(self.nodes, "probe", self.inputs + declared,
                                  [helper.make_tensor_value_info(value, self.types[value], None)])
        inferred = onnx.shape_inference.infer_shapes(self.model(graph)).graph
        for info in list(inferred.value_info) + list(inferred.output) + list(inferred.input):
            dims = info.type.tensor_type.shape.dim
            if info.name == value and len(dims) > 1 and dims[1].HasField("dim_value"):
                return dims[1].dim_value
        node.fail("cannot infer the channel count of its input (give the model a Convolution reading the "
                  "input first, or an input whose channels are known)")

    @staticmethod
    def model(graph):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bmx",
                                  producer_version=__version__)
        model.ir_version = IR_VERSION
        return model

    def fold(self, outputs):
        """Replaces every node computed from initializers only by its value, computed by ONNX Runtime
        running those very nodes (no graph optimizations): the weight signs, DoReFa weights, scales."""
        known, constant, rest = set(self.initializers), [], []
        for n in self.nodes:
            if n.input and all(i in known for i in n.input if i):
                constant.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        used = [i for n in rest for i in n.input] + list(outputs)
        needed = list(dict.fromkeys(v for v in used if v in known and v not in self.initializers))
        if not needed:
            return
        sources = {i for n in constant for i in n.input} & set(self.initializers)
        graph = helper.make_graph(constant, "fold", [],
                                  [helper.make_tensor_value_info(v, self.types[v], None) for v in needed],
                                  initializer=[numpy_helper.from_array(self.initializers[i], i) for i in sources])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(self.model(graph).SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
            values = session.run(needed, {})
        except Exception as err:  # onnxruntime raises its own exception types; its message names the node
            raise OnnxExportError(f"{self.file}: computing the constant part of the model failed: {err}") from None
        self.nodes = rest
        self.initializers.update(zip(needed, values))

    def prune(self, outputs):
        """Drops the nodes and initializers no output depends on (latent weights, folded subgraphs)."""
        needed, keep = set(outputs), []
        for n in reversed(self.nodes):
            if any(o in needed for o in n.output):
                keep.append(n)
                needed.update(i for i in n.input if i)
        self.nodes = keep[::-1]
        self.initializers = {k: v for k, v in self.initializers.items() if k in needed}
        self.inputs = [i for i in self.inputs if i.name in needed]


def build(symbol_file, params, input_size=None):
    """The ONNX ModelProto (opset OPSET, batch dimension 'batch') of a symbol file and its parameters
    (dict ``arg:NAME`` / ``aux:NAME`` -> numpy array)."""
    nodes, heads = read_symbol(symbol_file)
    b = Builder(symbol_file, {n.name for n in nodes})
    channels = input_channels(nodes, params)
    reachable = _reachable(heads)
    for node in nodes:
        if node.index not in reachable:
            continue
        if node.op == "null":
            array = _parameter(params, node.name)
            if array is not None:
                b.values[(node.index, 0)] = b.add_parameter(node, array)
                continue
            spatial = ["height", "width"] if input_size is None else [input_size, input_size]
            shape = ["batch", channels.get(node.name, "channels")] + spatial
            b.inputs.append(helper.make_tensor_value_info(node.name, TensorProto.FLOAT, shape))
            b.types[node.name] = TensorProto.FLOAT
            b.values[(node.index, 0)] = node.name
            continue
        converter = CONVERTERS.get(node.op)
        if converter is None:
            node.fail(f"operator {node.op} has no ONNX mapping (supported: {', '.join(sorted(CONVERTERS))})")
        result = converter(b, node)
        for i, value in enumerate(result if isinstance(result, list) else [result]):
            b.values[(node.index, i)] = value
    if len(b.inputs) != 1:
        raise OnnxExportError(f"{symbol_file}: the model must have exactly one input (a variable without a "
                              f"parameter), found {[i.name for i in b.inputs]}")
    outputs = ["output" if len(heads) == 1 else f"output{i}" for i in range(len(heads))]
    for name, head in zip(outputs, heads):
        b.nodes.append(helper.make_node("Identity", [b.value(head)], [name], name=name))
        b.types[name] = b.types[b.value(head)]
    b.fold(outputs)
    b.prune(outputs)
    graph = helper.make_graph(b.nodes, "bmx", b.inputs, [helper.make_tensor_value_info(o, b.types[o], None)
                                                          for o in outputs],
                              initializer=[numpy_helper.from_array(a, n) for n, a in b.initializers.items()])
    model = onnx.shape_inference.infer_shapes(Builder.model(graph), strict_mode=True)
    onnx.checker.check_model(model)
    return model

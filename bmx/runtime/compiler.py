"""Load time: the graph becomes a list of steps (constants folded, ops built), then cheaper rewrites."""
import math

import numpy as np

from .. import packed, symbol_json
from .graph import F32, Node, ShapeError
from .ops import OPS, SUPPORTED_OPS
from .ops.elementwise import _Affine, _BatchNorm, _BatchNormSign, _Identity, _SignOp, is_relu, pool_first
from .ops.layers import _Convolution, _Pooling, _XnorConv


class Settings:
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
            buffer = self._scratch[name] = np.empty(size, F32)
        return buffer[:size].reshape(shape)


class Entry:
    """A compiled node: ``op`` applied to the values ``args``, giving the value ``out``."""

    __slots__ = ("node", "op", "args", "out")

    def __init__(self, node, op, args, out):
        self.node, self.op, self.args, self.out = node, op, args, out


class Compiler:
    """Model's load-time half (a mixin: Model keeps the state)."""

    # -------------------------------------------------------------- load time

    def _compile(self, graph, params):
        parsed, parsed_heads, _ = symbol_json.parse(graph, self._file, packed.PackedFormatError)
        nodes = [Node(node, self._file) for node in parsed]
        heads = [(node.index, out) for node, out in parsed_heads]
        needed = self._needed(nodes, heads)
        settings = Settings(self.threads)
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
            factory = OPS.get(node.op)
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
                self._entries.append(Entry(node, op, args[:data], out))
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
        except ShapeError as err:
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
            elif (is_relu(entry.op) or isinstance(entry.op, _BatchNorm) and entry.op.axis in (1, -3)) and \
                    len(only) == 1 and isinstance(only[0].op, _Pooling) and only[0].op.commutes_with_monotone() \
                    and only[0].args == [entry.out]:
                entry.op, only[0].op = pool_first(entry.op, only[0].op)
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
            elif is_relu(reader.op) and not pool.relu:
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

    def _needed(self, nodes, heads):
        """Indices of the nodes the heads depend on (unused nodes need not be supported)."""
        needed, stack = set(), [h[0] for h in heads]
        while stack:
            index = stack.pop()
            if index in needed:
                continue
            needed.add(index)
            node = nodes[index]
            used = node.inputs[:getattr(OPS.get(node.op), "used_inputs", None)]
            stack.extend(nid for nid, _ in used)  # earlier nodes: symbol_json.parse checked
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

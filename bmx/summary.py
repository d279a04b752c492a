"""Per-layer model summary with the size and operation counts of the BNN papers.

Counting rules (as the BinaryDenseNet / MeliusNet papers count):

* size: a quantized weight (of a :class:`bmx.nn.QConv2D` / :class:`bmx.nn.QDense`) takes its
  ``bits`` (1 for binary); every other parameter takes 32 bits (first conv, last Dense and its
  bias, full-precision 1x1 convs, BatchNorm gamma and beta). Auxiliary states (BatchNorm running
  mean and variance) are not counted. 1 MB = 2**20 bytes.
* MACs, per image: a convolution makes ``out_elements * in_channels / groups * kh * kw``, a Dense
  ``in_units * units``. A quantized layer's MACs are binary MACs, counted ``bits_w * bits_a``
  times (the bit-serial cost of k-bit layers; 1 for binary). A bare QConv2D / QDense is assumed
  to be fed 1-bit activations, as it is inside :class:`bmx.nn.BinaryConvolution`. Other layers'
  MACs are float MACs. Pooling, BatchNorm and elementwise ops are not counted.
* operations = binary MACs / 64 + float MACs (64 binary MACs per 64-bit xnor-popcount).
"""
import dataclasses
import math

import mxnet as mx
from mxnet.gluon import nn

from .nn import BinaryConvolution, QConv2D, QDense

__all__ = ["summary", "ModelSummary", "LayerSummary"]

_MB = 2 ** 20


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    """One row of the table: a layer that owns parameters or multiply-accumulates.

    ``kind`` is ``'binary'`` (1-bit weights and activations), ``'W{w}A{a}'`` for other quantized
    layers, or ``'float'``. ``params`` excludes auxiliary states; ``quantized_params`` is the part
    of them stored at ``weight_bits`` bits. MAC counts are per image, summed over calls.
    """
    name: str
    type: str
    output_shape: tuple
    params: int
    quantized_params: int
    weight_bits: int
    kind: str
    macs: int
    binary_macs: int
    float_macs: int


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """Rows and totals of :func:`summary`; ``str()`` gives the table, :meth:`to_dict` the totals."""
    input_shape: tuple
    layers: tuple
    params: int
    params_binary: int
    size_mb: float
    size_mb_fp32: float
    binary_macs: int
    float_macs: int
    ops: float

    def to_dict(self):
        """The totals as a JSON-ready dict (sizes in MB unrounded, counts per image)."""
        return {"size_mb": self.size_mb, "size_mb_fp32": self.size_mb_fp32, "params": self.params,
                "params_binary": self.params_binary, "binary_macs": self.binary_macs,
                "float_macs": self.float_macs, "ops": self.ops}

    def table(self):
        """The per-layer table followed by the totals, as text."""
        header = ("Layer", "Type", "Output shape", "Params", "Kind", "MACs")
        body = [(r.name, r.type, str(r.output_shape), f"{r.params:,}", r.kind, f"{r.macs:,}") for r in self.layers]
        widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
        right = {3, 5}

        def line(row):
            return "  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                             for i, (cell, w) in enumerate(zip(row, widths))).rstrip()

        rule = "-" * len(line(header))
        lines = [f"Input: {self.input_shape}", rule, line(header), rule] + [line(row) for row in body] + [rule]
        lines += [
            f"Params: {self.params:,} ({self.params_binary:,} binary/quantized, "
            f"{self.params - self.params_binary:,} float)",
            f"Size: {self.size_mb:.2f} MB (full precision: {self.size_mb_fp32:.2f} MB)",
            f"MACs: binary {self.binary_macs:.3e}, float {self.float_macs:.3e}",
            f"Operations (binary MACs / 64 + float MACs): {self.ops:.3e}",
        ]
        return "\n".join(lines)

    def __str__(self):
        return self.table()


@dataclasses.dataclass
class _Layer:
    block: object
    name: str
    weight: object = None       # the Parameter whose shape gives the MACs, if the layer computes
    bits_w: int = None          # set for quantized layers
    bits_a: int = None
    outputs: list = dataclasses.field(default_factory=list)


def _collect_layers(net):
    """The table's rows in registration order; a BinaryConvolution is one row (sign + conv)."""
    prefix = net.prefix
    layers, visited = [], set()

    def short(block):
        name = block.name
        return name[len(prefix):] if prefix and name.startswith(prefix) else name

    def visit(block):
        if id(block) in visited:
            return  # a block reused in several places is one row; its calls add up
        visited.add(id(block))
        if isinstance(block, BinaryConvolution):
            conv = block.qconv
            layers.append(_Layer(block, short(block), conv.weight, conv.bits, block.qact.bits))
            return
        if isinstance(block, (QConv2D, QDense)):
            layers.append(_Layer(block, short(block), block.weight, block.bits, 1))
        elif isinstance(block, nn.Dense) or (isinstance(block, nn.conv_layers._Conv)
                                             and block._op_name == "Convolution"):
            layers.append(_Layer(block, short(block), block.weight))
        elif block._reg_params:
            layers.append(_Layer(block, short(block)))
        for child in block._children.values():
            visit(child)

    visit(net)
    return layers


def _per_image_shape(input_shape):
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W) of positive sizes, got {input_shape!r}")
    return (1,) + shape[1:]


def summary(net, input_shape, show=True):
    """Counts parameters, model size and MACs of ``net`` layer by layer.

    Shapes come from symbolic shape inference, so the net needs no initialization and no forward
    pass (deferred ``in_channels`` are fine); it may be hybridized.

    Args:
        net: a Gluon HybridBlock taking one NCHW input.
        input_shape: (C, H, W) or (N, C, H, W); counts are per image, whatever N is.
        show: print the table.

    Returns:
        :class:`ModelSummary` (rows and totals; see the module docstring for the rules).

    Raises:
        ValueError: the shapes cannot be inferred for this input.
    """
    shape = _per_image_shape(input_shape)
    layers = _collect_layers(net)
    by_block = {id(layer.block): layer for layer in layers}

    def record(block, _inputs, output):
        by_block[id(block)].outputs.append(output[0] if isinstance(output, (list, tuple)) else output)

    for param in net.collect_params().values():
        # A variable cached while its shape was deferred keeps the partial shape, through which the
        # native quantizer ops cannot infer; a fresh one carries the now complete shape.
        if param.shape and all(d > 0 for d in param.shape):
            param._var = None
    handles = [layer.block.register_forward_hook(record) for layer in layers]
    try:
        out = net(mx.sym.var("data"))
    finally:
        for handle in handles:
            handle.detach()
    graph = mx.sym.Group(list(out)) if isinstance(out, (list, tuple)) else out
    recorded = [(layer, sym) for layer in layers for sym in layer.outputs]
    group = mx.sym.Group([graph] + [sym for _, sym in recorded])
    try:
        arg_shapes, out_shapes, _ = group.infer_shape(data=shape)
    except mx.base.MXNetError as err:
        raise ValueError(f"cannot infer the shapes of {net.name} for input {shape}: {err}") from None
    if arg_shapes is None:
        raise ValueError(f"the shapes of {net.name} are not fully determined by input {shape}")
    param_shapes = dict(zip(group.list_arguments(), arg_shapes))
    out_shapes = out_shapes[len(graph.list_outputs()):]
    output_shapes = {}
    for (layer, _), out_shape in zip(recorded, out_shapes):
        output_shapes.setdefault(id(layer.block), []).append(tuple(out_shape))

    rows, seen = [], set()
    for layer in layers:
        block = layer.block
        own = block.collect_params() if isinstance(block, BinaryConvolution) else block._reg_params
        params = quantized = 0
        for param in own.values():
            if param.name in seen or param.name not in param_shapes:
                continue  # shared with an earlier row, an auxiliary state, or unused by the graph
            seen.add(param.name)
            size = math.prod(param_shapes[param.name])
            params += size
            if layer.bits_w is not None and param is layer.weight:
                quantized += size
        shapes = output_shapes.get(id(block), [])
        macs = 0
        if layer.weight is not None and layer.weight.name in param_shapes:
            per_output = math.prod(param_shapes[layer.weight.name][1:])
            macs = sum(math.prod(s[1:]) for s in shapes) * per_output
        if layer.bits_w is None:
            kind, binary_macs, float_macs = "float", 0, macs
        else:
            kind = "binary" if layer.bits_w == layer.bits_a == 1 else f"W{layer.bits_w}A{layer.bits_a}"
            binary_macs, float_macs = macs * layer.bits_w * layer.bits_a, 0
        rows.append(LayerSummary(layer.name, type(block).__name__, shapes[0] if shapes else None, params,
                                 quantized, layer.bits_w or 32, kind, macs, binary_macs, float_macs))

    total = sum(r.params for r in rows)
    quantized = sum(r.quantized_params for r in rows)
    bits = sum(r.quantized_params * r.weight_bits + (r.params - r.quantized_params) * 32 for r in rows)
    binary_macs = sum(r.binary_macs for r in rows)
    float_macs = sum(r.float_macs for r in rows)
    result = ModelSummary(input_shape=shape, layers=tuple(rows), params=total, params_binary=quantized,
                          size_mb=bits / 8 / _MB, size_mb_fp32=total * 4 / _MB, binary_macs=binary_macs,
                          float_macs=float_macs, ops=binary_macs / 64 + float_macs)
    if show:
        print(result.table())
    return result

"""Export a bmx model to ONNX (standard operators only, opset 18), to run in ONNX Runtime and others.

``export(source, output)`` reads an exported model (``bmx.export``: ``PREFIX-symbol.json`` +
``PREFIX-NNNN.params``, an ``example/train_imagenet.py`` output directory) or a packed model
directory (tools/binarize_model.py) with numpy and JSON alone (no MXNet, no pickle) and writes
an ONNX file. Command line: tools/export_onnx.py; what is exported and how: docs/onnx.md.

* sign (``bmx_det_sign``, ``bmx_approx_sign``, ``bmx_weight_sign``): ``Where(x >= 0, 1, -1)``, so
  sign(0) = +1 (ONNX ``Sign`` gives 0 there);
* binary convolutions: ``Conv`` of the signs with +-1 float weights, the -1 padding an explicit
  ``Pad(constant_value=-1)`` (BinaryConvolution's folded {0, 1} form and packed ``bmx_xnor_conv2d``
  layers alike);
* k-bit quantizers: ``Clip``, ``Mul``, rounding halves away from zero (ONNX ``Round`` rounds them to
  even, so ties are detected with ``Floor`` and rounded up), ``Div``;
* everything computed from parameters only (weight signs, DoReFa weights, mean |W| scales) is folded
  into constants by ONNX Runtime running those nodes;
* the batch dimension is dynamic (``batch``), and so are height and width unless ``input_size``.

Needs the ``onnx`` extra: ``pip install -e ".[onnx]"`` (onnx and onnxruntime).
"""
import collections
import json
import os

try:
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
except ImportError as _err:
    raise ImportError(f"bmx.onnx_export needs the onnx extra (pip install -e \".[onnx]\"): {_err}") from _err

from .. import packed
from .._atomic import atomic_path
from ..convert import resolve_source
from ._graph import IR_VERSION, OPSET, OnnxExportError, build
from ._ops import CONVERTERS

__all__ = ["export", "to_onnx", "format_report", "binary_convolutions", "OnnxExportError", "OPSET", "IR_VERSION",
           "SUPPORTED_OPS"]

SUPPORTED_OPS = tuple(sorted(CONVERTERS))


def binary_convolutions(model):
    """The number of ``Conv`` nodes of an ONNX model whose input is a sign (``Where``, maybe ``Pad``-ed)."""
    producer = {out: n for n in model.graph.node for out in n.output}

    def op(value):
        return producer[value].op_type if value in producer else None

    return sum(n.op_type == "Conv" and (op(n.input[0]) == "Where" or op(n.input[0]) == "Pad"
                                        and op(producer[n.input[0]].input[0]) == "Where")
               for n in model.graph.node)


def to_onnx(symbol_file, params_file, meta=None, input_size=None):
    """The onnx.ModelProto of a symbol file and its params file.

    ``meta`` (a model.json dict) adds the model's preprocessing and class names to the ONNX file's
    metadata (``metadata_props``: ``preprocessing``, ``class_names`` as JSON). Raises
    OnnxExportError naming the file and node for anything that cannot be exported.
    """
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int)
                                   or input_size < 1):
        raise OnnxExportError(f"input_size must be a positive integer, got {input_size!r}")
    model = build(symbol_file, packed.read_params(params_file), input_size)
    info = dict(source=json.dumps([os.path.basename(symbol_file), os.path.basename(params_file)]))
    meta = meta or {}
    if "preprocessing" in meta:
        info["preprocessing"] = json.dumps(meta["preprocessing"])
    names = (meta.get("data") or {}).get("class_names")
    if names:
        info["class_names"] = json.dumps(names)
    for key, value in info.items():
        model.metadata_props.add(key=key, value=value)
    return model


def export(source, output, *, epoch=None, input_size=None, force=False):
    """Writes the ONNX file of a model and returns a report (a dict).

    Args:
        source: a train_imagenet.py output directory, a packed model directory, a PREFIX of
            ``PREFIX-symbol.json`` / ``PREFIX-NNNN.params`` or a (symbol file, params file) pair
            (as :func:`bmx.convert.resolve_source` resolves them).
        output: the .onnx file to write (atomically); an existing file is replaced only with ``force``.
        epoch: which ``PREFIX-NNNN.params`` (default: the newest).
        input_size: fix the input's height and width (default: dynamic, like the batch size).
    """
    symbol_file, params_file, meta = resolve_source(source, epoch)
    output = os.fspath(output)
    if os.path.lexists(output) and not force:
        raise FileExistsError(f"{output} exists (pass --force to replace it)")
    if os.path.isdir(output):
        raise OnnxExportError(f"{output} is a directory; give the .onnx file to write")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise OnnxExportError(f"output {output}: the directory {parent} does not exist")
    model = to_onnx(symbol_file, params_file, meta, input_size)
    with atomic_path(output) as tmp:
        with open(tmp, "wb") as f:
            f.write(model.SerializeToString())

    def shape(info):
        return [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim]

    return dict(output=os.path.abspath(output), bytes=os.path.getsize(output), opset=OPSET, ir_version=IR_VERSION,
                source=[symbol_file, params_file], packed=bool(meta and "packed" in meta),
                inputs={i.name: shape(i) for i in model.graph.input},
                outputs={o.name: shape(o) for o in model.graph.output}, binary_convolutions=binary_convolutions(model),
                onnx_ops=dict(collections.Counter(n.op_type for n in model.graph.node).most_common()))


def format_report(report):
    """The report as lines of text."""
    ops = ", ".join(f"{op} {count}" for op, count in report["onnx_ops"].items())
    return [f"source: {report['source'][0]} ({'packed' if report['packed'] else 'exported'} model)",
            f"opset {report['opset']} (IR version {report['ir_version']}), inputs {report['inputs']}, "
            f"outputs {report['outputs']}",
            f"{report['binary_convolutions']} binary convolutions (Conv on signs with +-1 float weights)",
            f"ONNX nodes: {ops}",
            f"{report['bytes'] / 1e6:.2f} MB written to {report['output']}"]

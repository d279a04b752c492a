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
Command line: tools/binarize_model.py. The modules, by job: :mod:`.patterns` (recognizing the
binary layers), :mod:`.rewrite` (rewriting and constant folding), :mod:`.sizes` (what the model
weighs), :mod:`.verify` (checking the packed model against the original), :mod:`.report`
(the report as text) and :mod:`.pipeline` (files in, packed directory out).
"""
import importlib

from .common import ConvertError, VerificationError
from .source import resolve_source

__all__ = ["convert", "binarize", "binarize_gluon", "resolve_source", "verify_packed", "format_report",
           "ConvertError", "VerificationError", "theoretical_size_from_graph", "quantize_packed"]

# Converting runs MXNet, finding a model's files does not: the names that need mxnet (or, for
# quantize_packed, bmx.runtime and OpenCV) load their module on first use (PEP 562), so that
# bmx.onnx_export can use resolve_source without them.
_LAZY = {"binarize": "pipeline", "binarize_gluon": "pipeline", "convert": "pipeline", "format_report": "report",
         "quantize_packed": "int8", "theoretical_size_from_graph": "sizes", "verify_packed": "verify"}
_MODULES = ("common", "int8", "patterns", "pipeline", "report", "rewrite", "sizes", "source", "verify")


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

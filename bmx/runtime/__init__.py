"""Runs a packed bmx model with numpy and bmx's native kernels only (bmx.xnor; floatops.h for max
pooling and direct float convolution): MXNet is never imported.

``load(directory)`` reads a model directory (:mod:`bmx.packed`) and compiles its symbol graph once:

* every node whose inputs are all parameters is evaluated at load time (constant folding: the
  ``sign(W)``, ``2 * sign(W)`` and ``-sum(sign(W))`` of an unpacked binary layer become constants);
* every other node becomes a step with its constant work done: BatchNorm folded into a per-channel
  scale and shift, convolution weights laid out for matrix products, packed binary weights turned
  into :class:`bmx.xnor.PackedWeights`.

Then a few rewrites where a value's only readers allow them: a BatchNorm that only feeds binary
convolutions folds into their packing of its input (and one that feeds signs otherwise becomes a
one-pass threshold), a float Convolution absorbs the BatchNorm after it, a ReLU or BatchNorm before
a max pooling moves behind it, onto the smaller tensor, and then into the pooling's output loop.

Per input shape (the first call with that shape) the steps are planned: shapes are checked node by
node (errors name the node), each Concat's inputs are computed straight into slices of its output
(a DenseNet's growing concatenations then copy nothing), and every value gets a buffer of an arena
that is kept between calls, reusing the buffers of dead values: a call allocates almost nothing.

Values are float32 NCHW arrays throughout. Ops run with MXNet's inference semantics (BatchNorm
uses the moving statistics, Dropout is the identity); see ``SUPPORTED_OPS`` and docs/packed.md.
A Model runs one call at a time (calls from several threads wait for each other).

Modules: ``graph`` (nodes, their attributes, shape arithmetic), ``ops`` (one class per op),
``compiler`` (load time), ``planner`` (per input shape), ``model`` (:class:`Model`, :func:`load`).
"""
from .model import Model, load
from .ops import SUPPORTED_OPS

__all__ = ["load", "Model", "SUPPORTED_OPS"]

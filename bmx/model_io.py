"""Export a Gluon net to symbol JSON + params without a dummy forward, and import it back."""
import os

import mxnet as mx

from . import _library, packed, symbol_json
from ._atomic import atomic_path

__all__ = ["export", "imports", "ModelFileError"]


class ModelFileError(ValueError):
    """A model file is missing, unreadable, or needs operators that are not available."""


def _finish_shapes(net, symbol, input_name, input_shape):
    params = net.collect_params()
    pending = [p for p in params.values() if p._data is None]
    if not pending:
        return []
    uninitialized = [p for p in pending if not p._deferred_init]
    if uninitialized:
        raise ValueError(f"parameter {uninitialized[0].name} is not initialized: call net.initialize() first")
    if input_shape is None:
        raise ValueError(f"parameters {[p.name for p in pending][:3]}... have unknown shapes: "
                         "pass input_shape=(N, C, H, W) so that export can infer them")
    arg_shapes, _, aux_shapes = symbol.infer_shape(**{input_name: tuple(input_shape)})
    shapes = dict(zip(symbol.list_arguments(), arg_shapes))
    shapes.update(zip(symbol.list_auxiliary_states(), aux_shapes))
    for p in pending:
        p.shape = shapes[p.name]
        p._finish_deferred_init()
    return pending


def _forget_stale_variables(net):
    """Drops cached parameter Symbols whose __shape__ lags behind the parameter's shape.

    Gluon caches a parameter's variable with the shape it had when first built: a net whose
    in_channels were inferred by a forward pass still holds variables like (8, 0, 3, 3). Saved
    in the JSON, such a partial shape cannot be inferred through bmx's library operators.
    """
    for p in net.collect_params().values():
        if p._var is not None and p._var.attr("__shape__") != str(tuple(p.shape or ())):
            p._var = None


def _build_symbol(net, input_name):
    symbol = net(mx.sym.var(input_name))
    if isinstance(symbol, (list, tuple)):
        symbol = mx.sym.Group(list(symbol))
    return symbol


def export(net, path, epoch=0, input_shape=None, input_name="data"):
    """Writes ``PATH-symbol.json`` and ``PATH-EPOCH.params`` (each atomically) and returns their paths.

    Unlike ``HybridBlock.export`` this needs no forward pass: the graph is built symbolically.
    Parameters whose shape was deferred (``in_channels=0``) are finished from ``input_shape``.
    """
    _forget_stale_variables(net)
    symbol = _build_symbol(net, input_name)
    if _finish_shapes(net, symbol, input_name, input_shape):
        # The graph was built while these shapes were unknown: its variables carry partial
        # __shape__ attributes and the layers quantized those weights with stock operators
        # (see bmx.nn._common.quantize_weight). Rebuild it with complete shapes.
        _forget_stale_variables(net)
        symbol = _build_symbol(net, input_name)
    params = {p.name: p for p in net.collect_params().values()}
    arrays = {}
    for name in symbol.list_arguments():
        if name != input_name:
            arrays["arg:" + name] = params[name]._reduce()
    for name in symbol.list_auxiliary_states():
        arrays["aux:" + name] = params[name]._reduce()
    symbol_file = f"{path}-symbol.json"
    params_file = f"{path}-{epoch:04d}.params"
    with atomic_path(symbol_file) as tmp:
        symbol.save(tmp)
    with atomic_path(params_file) as tmp:
        mx.nd.save(tmp, arrays)
    return symbol_file, params_file


def required_operators(symbol_file):
    """The bmx operators a symbol JSON uses (read as JSON: nothing in the file is executed)."""
    nodes, _, _ = symbol_json.load(symbol_file, ModelFileError)
    return sorted({n.op for n in nodes if n.op.startswith(_library.OPS_PREFIX)})


def imports(symbol_file, param_file=None, input_names=("data",), ctx=None):
    """``SymbolBlock.imports`` that first checks that every bmx operator the model needs is loaded.

    A file MXNet cannot load (one with int8 layers: bmx.runtime runs those) is a ModelFileError or
    PackedFormatError (both ValueErrors) naming it.
    """
    _library.load()
    int8 = [op for op in required_operators(symbol_file) if op in packed.INT8_OPS]
    if int8:
        raise ModelFileError(f"{symbol_file} has int8 layers ({', '.join(int8)}), which MXNet does not run: load "
                             "it with bmx.runtime.load, or convert the model without --int8 to run it in MXNet")
    missing = [op for op in required_operators(symbol_file) if not _library.is_registered(op)]
    if missing:
        raise ModelFileError(
            f"{symbol_file} needs operator(s) {missing}, which the loaded bmx operator library "
            f"({_library.library_path()}) does not provide: the model was made by another bmx version")
    if param_file is not None and not os.path.isfile(param_file):
        raise ModelFileError(f"{param_file}: no such parameter file")
    if isinstance(input_names, str):
        input_names = (input_names,)
    try:
        return mx.gluon.SymbolBlock.imports(symbol_file, list(input_names), param_file, ctx=ctx)
    except mx.MXNetError as err:
        if param_file is not None:
            packed.read_params(param_file)  # a PackedFormatError naming the file and what is wrong with it
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFileError(f"{symbol_file}" + (f" / {param_file}" if param_file else "") +
                             f": MXNet cannot load the model ({first})") from None

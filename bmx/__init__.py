"""bmx: binary neural networks for MXNet Gluon.

Two towers (docs/architecture.md). The deployment tower needs only numpy and bmx's compiled
extension: :mod:`bmx.xnor` (bit kernels), :mod:`bmx.packed` (the packed model format),
:mod:`bmx.runtime` (runs a packed model) and :mod:`bmx.symbol_json`. Importing bmx, or any of
those, never imports mxnet.

The training tower's names (``bmx.nn``, ``bmx.models``, ``bmx.quantizers``, ``bmx.config``,
``bmx.optimizers``, ``bmx.binary_layer_config``, ``bmx.current_config``, ``bmx.export``,
``bmx.imports``, ``bmx.ModelFileError``, ``bmx.summary``, ``bmx.load_library``) load on first
use (PEP 562): the first one imports mxnet, loads bmx's native operator library into it
(``bmx_det_sign``, ``bmx_approx_sign``, ``bmx_weight_sign``, ``bmx_quantize_act``,
``bmx_quantize_weight``, ``bmx_xnor_conv2d``; importing :mod:`bmx.quantizers`, and so the
layers and models, directly does too) and registers the ``'radam'`` optimizer
(:mod:`bmx.optimizers`). Models exported from bmx load with :func:`bmx.imports`, or with
``mx.gluon.SymbolBlock.imports`` once a training name was used (e.g. :func:`bmx.load_library`).
Where mxnet cannot be imported, using a training name raises ImportError saying so.
"""
import importlib as _importlib
import importlib.util as _importlib_util
import sys as _sys
import types as _types

__version__ = "0.1.0"

# The training tower's names: module, or (module, attribute).
_TRAINING = {"config": "config", "models": "models", "nn": "nn", "optimizers": "optimizers",
             "quantizers": "quantizers", "binary_layer_config": ("config", "binary_layer_config"),
             "current_config": ("config", "current_config"), "export": ("model_io", "export"),
             "imports": ("model_io", "imports"), "ModelFileError": ("model_io", "ModelFileError"),
             "summary": ("summary", "summary"), "load_library": ("_library", "load")}
_DEPLOYMENT = ("packed", "runtime", "symbol_json", "xnor")
__all__ = list(_TRAINING) + list(_DEPLOYMENT)


class _Package(_types.ModuleType):
    """Keeps ``bmx.summary`` the function: the import system binds a submodule to its package's
    attribute when it first loads it, which would make it the module bmx.summary instead."""

    def __setattr__(self, name, value):
        if name == "summary" and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def _load(name):
    """The training name ``name``: imports mxnet (here, so that its absence gets a clear message),
    loads the operator library into it and registers RAdam (as ``import bmx`` did when it imported
    mxnet eagerly), then imports the module that defines the name."""
    try:
        import mxnet  # noqa: F401
    except (ImportError, OSError) as err:  # OSError: libmxnet.so or one of its libraries fails to load
        raise ImportError(f"bmx.{name} needs mxnet, but mxnet cannot be imported ({type(err).__name__}: {err}); "
                          "without mxnet bmx offers only bmx.xnor, bmx.packed and bmx.runtime (install mxnet "
                          "1.9.1 for training)", name="mxnet") from None
    from . import _library

    _library.load()
    _importlib.import_module(f"{__name__}.optimizers")
    target = _TRAINING[name]
    module, attribute = (target, None) if isinstance(target, str) else target
    value = _importlib.import_module(f"{__name__}.{module}")
    return value if attribute is None else getattr(value, attribute)


def __getattr__(name):
    """The training names, loaded on first use (PEP 562); any submodule (``bmx.runtime``, ``bmx.data``)
    is imported when first used as an attribute."""
    if name not in _TRAINING:
        if not name.startswith("__") and _importlib_util.find_spec(f"{__name__}.{name}") is not None:
            return _importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = _load(name)
    return value

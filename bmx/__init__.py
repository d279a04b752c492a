"""bmx: binary neural networks for MXNet Gluon.

Importing bmx loads its native operator library into MXNet (``bmx_det_sign``, ``bmx_approx_sign``,
``bmx_weight_sign``, ``bmx_quantize_act``, ``bmx_quantize_weight``, ``bmx_xnor_conv2d``) and
registers the ``'radam'`` optimizer; models exported from bmx can then be loaded with
``mx.gluon.SymbolBlock.imports`` or :func:`bmx.imports`.

The deployment parts need only numpy and bmx's compiled extension: :mod:`bmx.xnor` (bit kernels),
:mod:`bmx.packed` (the packed model format) and :mod:`bmx.runtime` (runs a packed model). Where
mxnet cannot be imported, or with the environment variable ``BMX_NO_MXNET=1``, ``import bmx``
gives only those and never imports mxnet; the training parts (``bmx.models``, ``bmx.nn``,
``bmx.export``, ...) then raise ImportError when used.
"""
import os as _os

__version__ = "0.1.0"

NO_MXNET_ENV = "BMX_NO_MXNET"

# The training tower's names (they need mxnet).
_TRAINING = ("binary_layer_config", "current_config", "config", "export", "imports", "ModelFileError", "models",
             "nn", "optimizers", "quantizers", "summary")
_DEPLOYMENT = ("packed", "runtime", "xnor")
__all__ = list(_TRAINING + _DEPLOYMENT)

if _os.environ.get("DMLC_ROLE") in ("server", "scheduler"):
    # A parameter-server process of a distributed job (bmx.distributed): `import mxnet` runs the
    # role's loop inside itself and the process ends there. The only bmx code it may run is an
    # optimizer that a dist_async server unpickles, importing bmx.optimizers while mxnet is still
    # half imported, when neither the operator library nor the layers could load.
    pass
else:
    from . import packed, runtime, xnor  # noqa: E402  (numpy and the compiled extension only)

    _no_mxnet = None  # why the training tower is unavailable, or None
    if _os.environ.get(NO_MXNET_ENV, "") not in ("", "0"):
        _no_mxnet = f"{NO_MXNET_ENV} is set"
    else:
        try:
            import mxnet as _mxnet  # noqa: F401
        except (ImportError, OSError) as _err:  # OSError: libmxnet.so or one of its libraries fails to load
            _no_mxnet = f"mxnet cannot be imported ({type(_err).__name__}: {_err})"

    if _no_mxnet is None:
        from . import _library

        _library.load()

        from . import config, models, nn, optimizers, quantizers  # noqa: E402
        from .config import binary_layer_config, current_config  # noqa: E402
        from .model_io import ModelFileError, export, imports  # noqa: E402
        from .summary import summary  # noqa: E402
    else:
        __all__ = list(_DEPLOYMENT)

        def __getattr__(name):
            """The training parts need mxnet: say so when one is used (PEP 562)."""
            if name in _TRAINING:
                raise ImportError(f"bmx.{name} needs mxnet, but {_no_mxnet}; without mxnet bmx offers only "
                                  "bmx.xnor, bmx.packed and bmx.runtime (install mxnet 1.9.1 for training)",
                                  name="mxnet")
            raise AttributeError(f"module 'bmx' has no attribute {name!r}")

"""bmx: binary neural networks for MXNet Gluon.

Importing bmx loads its native operator library into MXNet (``bmx_det_sign``, ``bmx_approx_sign``,
``bmx_weight_sign``, ``bmx_quantize_act``, ``bmx_quantize_weight``) and registers the ``'radam'``
optimizer; models exported from bmx can then be loaded with ``mx.gluon.SymbolBlock.imports`` or
:func:`bmx.imports`.
"""
import os as _os

__version__ = "0.1.0"

if _os.environ.get("DMLC_ROLE") in ("server", "scheduler"):
    # A parameter-server process of a distributed job (bmx.distributed): `import mxnet` runs the
    # role's loop inside itself and the process ends there. The only bmx code it may run is an
    # optimizer that a dist_async server unpickles, importing bmx.optimizers while mxnet is still
    # half imported, when neither the operator library nor the layers could load.
    pass
else:
    from . import _library

    _library.load()

    from . import config, models, nn, optimizers, quantizers, xnor  # noqa: E402
    from .config import binary_layer_config, current_config  # noqa: E402
    from .model_io import ModelFileError, export, imports  # noqa: E402
    from .summary import summary  # noqa: E402

__all__ = ["binary_layer_config", "current_config", "config", "export", "imports", "ModelFileError",
           "models", "nn", "optimizers", "quantizers", "summary", "xnor"]

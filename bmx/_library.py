"""Finds, checks and loads bmx's MXNet operator library (once per process)."""
import ctypes
import os

import mxnet as mx

LIBRARY_ENV = "BMX_OPS_LIBRARY"
OPS_PREFIX = "bmx_"
_DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native", "libbmx_ops.so")
# The operator library is compiled only when mxnet is importable at build time (setup.py).
_INSTALL_HINT = ("rebuild it against the installed mxnet from bmx's checkout: "
                 "pip install -c constraints.txt --no-build-isolation -e \".[train]\"")

_loaded_path = None


class NativeLibraryError(ImportError):
    """The operator library is missing, foreign, or built for another mxnet."""


def library_path():
    """Path of the operator library: $BMX_OPS_LIBRARY if set, else the one built into the package."""
    return os.path.abspath(os.environ.get(LIBRARY_ENV) or _DEFAULT_PATH)


def check_version(path, built_for, running):
    """Raises NativeLibraryError unless the library was compiled against the running mxnet."""
    if built_for != running:
        raise NativeLibraryError(
            f"bmx: the operator library {path} was built for mxnet {built_for}, "
            f"but mxnet {running} is installed; {_INSTALL_HINT}")


def load():
    """Loads the operator library into MXNet and returns its path (a no-op after the first call)."""
    global _loaded_path
    if _loaded_path is not None:
        return _loaded_path
    path = library_path()
    if not os.path.isfile(path):
        raise NativeLibraryError(f"bmx: native operator library not found at {path}; {_INSTALL_HINT}")
    try:
        handle = ctypes.CDLL(path)
        query = handle.bmx_built_for_mxnet
    except OSError as err:
        raise NativeLibraryError(f"bmx: cannot open the operator library {path}: {err}") from err
    except AttributeError as err:
        raise NativeLibraryError(f"bmx: {path} is not a bmx operator library (no version stamp)") from err
    query.restype = ctypes.c_char_p
    check_version(path, query().decode(), mx.__version__)
    mx.library.load(path, verbose=False)
    _loaded_path = path
    return path


def is_registered(op_name):
    """True if MXNet knows an operator of that name (built in or from a loaded library)."""
    return hasattr(mx.nd, op_name) or hasattr(mx.nd.op, op_name)

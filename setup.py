"""Builds bmx: the Cython bit-kernel extension always, the MXNet operator library when mxnet is there.

A plain `pip install .` gives the deployment tower (numpy and the compiled kernels: bmx.xnor,
bmx.packed, bmx.runtime). The training tower needs the operator library, which is compiled against
the installed mxnet's lib_api.h, so it is built only when mxnet is importable at build time: install
mxnet first and build without isolation (`pip install --no-build-isolation ".[train]"`, as the
README's quick start does). Both native parts include bmx/_native/bitops.h, the single definition
of the sign convention and the bit packing layout.
"""
import glob
import importlib.metadata
import importlib.util
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

OPS_LIBRARY = "libbmx_ops"
NATIVE_DIR = os.path.join("bmx", "_native")
OPENMP = ["-fopenmp"]


def mxnet_location():
    """The installed mxnet package directory, or None when there is none to build against."""
    spec = importlib.util.find_spec("mxnet")
    if spec is None or spec.origin is None:
        return None
    root = os.path.dirname(spec.origin)
    for needed in ("include/mxnet/lib_api.h", "src/lib_api.cc"):
        if not os.path.exists(os.path.join(root, needed)):
            raise RuntimeError(f"the mxnet installation at {root} lacks {needed}")
    return root


class BuildExt(build_ext):
    """Names the operator library plainly (libbmx_ops.so): mx.library.load takes a path, not a module."""

    def get_ext_filename(self, fullname):
        if fullname.split(".")[-1] == OPS_LIBRARY:
            return os.path.join(*fullname.split(".")[:-1], OPS_LIBRARY + ".so")
        return super().get_ext_filename(fullname)


HEADERS = sorted(glob.glob(os.path.join(NATIVE_DIR, "*.h")))

xnor_extension = Extension(
    "bmx._xnor",
    sources=[os.path.join("bmx", "_xnor.pyx")],
    depends=HEADERS,
    include_dirs=[NATIVE_DIR, numpy.get_include()],
    # Built against numpy 2 (the isolated build), the module still runs on numpy 1.23 and later.
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                   ("NPY_TARGET_VERSION", "NPY_1_23_API_VERSION")],
    extra_compile_args=["-O3"] + OPENMP,
    extra_link_args=OPENMP,
)
extensions = cythonize([xnor_extension], language_level=3)

MXNET = mxnet_location()
if MXNET is None:
    print("bmx: mxnet is not importable here, so the MXNet operator library (training tower) is not built; "
          "for training, install mxnet first and then bmx with --no-build-isolation (see the README)")
else:
    extensions.append(Extension(
        "bmx._native." + OPS_LIBRARY,
        sources=[os.path.join(NATIVE_DIR, "ops.cc"), os.path.join(NATIVE_DIR, "xnor_conv_op.cc"),
                 os.path.join(MXNET, "src", "lib_api.cc")],
        depends=HEADERS,
        include_dirs=[NATIVE_DIR, os.path.join(MXNET, "include"), os.path.join(MXNET, "include", "mxnet")],
        define_macros=[("BMX_MXNET_VERSION", f'"{importlib.metadata.version("mxnet")}"')],
        extra_compile_args=["-std=c++17", "-O3"] + OPENMP,
        extra_link_args=OPENMP,
        language="c++",
    ))

setup(
    name="bmx",
    version="0.1.0",
    description="Binary neural networks for MXNet Gluon: training layers, model zoo, bit-packed inference",
    packages=find_packages(include=["bmx", "bmx.*"]),
    package_data={"bmx": ["_native/*.h", "_native/*.cc"]},
    ext_modules=extensions,
    cmdclass={"build_ext": BuildExt},
    python_requires=">=3.8",
    # The deployment tower: packed models run with numpy alone (images are read with OpenCV).
    install_requires=[
        "numpy>=1.23",
        "opencv-python>=4.10",
    ],
    extras_require={
        # mxnet 1.9.1 (the last release) needs numpy < 1.24
        "train": ["mxnet==1.9.1", "numpy==1.23.5", "gluoncv", "tqdm", "matplotlib"],
        "onnx": ["onnx", "onnxruntime"],
        "test": ["pytest", "onnx", "onnxruntime"],
    },
)

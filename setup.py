"""Builds bmx: the MXNet operator library and the Cython bit-kernel extension.

Both native parts include bmx/_native/bitops.h, the single definition of the
sign convention and the bit packing layout.
"""
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
    spec = importlib.util.find_spec("mxnet")
    if spec is None or spec.origin is None:
        raise RuntimeError("building bmx needs mxnet==1.9.1 installed (its lib_api.h is compiled in)")
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


MXNET = mxnet_location()
MXNET_VERSION = importlib.metadata.version("mxnet")

ops_library = Extension(
    "bmx._native." + OPS_LIBRARY,
    sources=[os.path.join(NATIVE_DIR, "ops.cc"), os.path.join(NATIVE_DIR, "xnor_conv_op.cc"),
             os.path.join(MXNET, "src", "lib_api.cc")],
    include_dirs=[NATIVE_DIR, os.path.join(MXNET, "include"), os.path.join(MXNET, "include", "mxnet")],
    define_macros=[("BMX_MXNET_VERSION", f'"{MXNET_VERSION}"')],
    extra_compile_args=["-std=c++17", "-O3"] + OPENMP,
    extra_link_args=OPENMP,
    language="c++",
)

xnor_extension = Extension(
    "bmx._xnor",
    sources=[os.path.join("bmx", "_xnor.pyx")],
    include_dirs=[NATIVE_DIR, numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=["-O3"] + OPENMP,
    extra_link_args=OPENMP,
)

setup(
    name="bmx",
    version="0.1.0",
    description="Binary neural networks for MXNet Gluon: training layers, model zoo, bit-packed inference",
    packages=find_packages(include=["bmx", "bmx.*"]),
    package_data={"bmx": ["_native/*.h", "_native/*.cc"]},
    ext_modules=[ops_library] + cythonize([xnor_extension], language_level=3),
    cmdclass={"build_ext": BuildExt},
    python_requires=">=3.8",
    install_requires=[
        "mxnet==1.9.1",
        "numpy==1.23.5",
        "gluoncv",
        "tqdm",
        "matplotlib",
    ],
    extras_require={"onnx": ["onnx", "onnxruntime"], "test": ["pytest", "onnx", "onnxruntime"]},
)

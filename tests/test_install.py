"""A plain (non-editable) `pip install .`: the installed package finds its operator library and its
compiled kernels, and runs a packed model as the checkout does."""
import os
import subprocess
import sys

import numpy as np
import pytest

from bmx import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAINED = os.path.join(ROOT, "example", "pretrained", "bdn28-cifar10")
CHECK = """
import os, sys
import numpy as np
import bmx
from bmx import _library, runtime, xnor
target = os.path.realpath(sys.argv[1])
assert os.path.realpath(bmx.__file__).startswith(target), bmx.__file__
assert os.path.realpath(_library.library_path()).startswith(target), _library.library_path()
assert os.path.realpath(xnor._xnor.__file__).startswith(target), xnor._xnor.__file__
x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
np.save(sys.argv[3], runtime.load(sys.argv[2], threads=1)(x))
print("ok")
"""


@pytest.mark.slow
def test_non_editable_install_runs_the_pretrained_model(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                            "--target", str(target), ROOT], capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stdout + build.stderr
    assert (target / "bmx" / "_native" / "libbmx_ops.so").is_file()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BMX_OPS_LIBRARY")}
    env["PYTHONPATH"] = str(target)
    out = subprocess.run([sys.executable, "-c", CHECK, str(target), PRETRAINED, str(tmp_path / "y.npy")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), runtime.load(PRETRAINED, threads=1)(x))

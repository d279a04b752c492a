"""The NEON kernels of bmx/_native/bitops_neon.h, cross-compiled for aarch64 and run under qemu.

tests/arm/neon_check.c checks every NEON kernel (sign + pack of rows and of NCHW pixels with and
without the folded BatchNorm threshold, the xnor GEMM and the convolution into int32, float and
thresholded bits) bit for bit against the portable kernels on the same random inputs, and both
against a direct computation of the documented math. These tests build it with the Debian cross
compiler and run it with qemu-aarch64: `python -m pytest -q -m arm` (a plain run deselects them,
see pyproject.toml). Without the two packages (gcc-aarch64-linux-gnu, qemu-user) they fail when
selected with `-m arm`, so that CI cannot pass them silently, and are skipped otherwise.
"""
import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.arm

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE = os.path.join(HERE, os.pardir, os.pardir, "bmx", "_native")
COMPILER, EMULATOR = "aarch64-linux-gnu-gcc", "qemu-aarch64"
SYSROOT = "/usr/aarch64-linux-gnu"
# setup.py's optimisation and OpenMP flags, so the code under test is compiled as shipped
FLAGS = ["-O3", "-fopenmp", "-std=c11", "-Wall", "-Wextra", "-Werror"]
TIMEOUT = 300


@pytest.fixture(scope="module")
def toolchain(request):
    missing = [tool for tool in (COMPILER, EMULATOR) if shutil.which(tool) is None]
    if missing:
        message = (f"{', '.join(missing)} not found: install the Debian packages "
                   "gcc-aarch64-linux-gnu and qemu-user")
        if "arm" in (request.config.getoption("markexpr") or ""):
            pytest.fail(message)
        pytest.skip(message)
    return COMPILER, EMULATOR


def build(toolchain, native_dir, output):
    compiler, _ = toolchain
    command = [compiler, *FLAGS, "-I", native_dir, os.path.join(HERE, "neon_check.c"), "-o", output,
               "-lm"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"cross-compiling neon_check.c failed:\n{result.stderr}"
    return output


def run(toolchain, binary, *args):
    _, emulator = toolchain
    return subprocess.run([emulator, "-L", SYSROOT, binary, *map(str, args)], capture_output=True,
                          text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def driver(toolchain, tmp_path_factory):
    return build(toolchain, NATIVE, str(tmp_path_factory.mktemp("neon") / "neon_check"))


@pytest.mark.parametrize("seed", [1, 20260])
def test_neon_kernels_match_portable_bit_for_bit(toolchain, driver, seed):
    result = run(toolchain, driver, seed, 120)
    assert result.returncode == 0, result.stdout + result.stderr
    for family in ("pack_rows: 120 cases", "pack_nchw: 120 cases",
                   "conv (int32, float, bits): 120 + 2 long-row cases", "gemm: 120 + 2 long-K cases"):
        assert f"{family} identical" in result.stdout


@pytest.mark.parametrize("line, broken, found", [
    # the xnor micro-kernel reports columns 4-5's counts as columns 6-7's
    ("vpaddlq_u16(acc[r][3])", "vpaddlq_u16(acc[r][2])", "neon differs from portable"),
    # the pixel packer forgets the folded BatchNorm's sign flip
    ("vdupq_n_u32(a->negate[c])", "vdupq_n_u32(0)", "pack_nchw neon differs from portable"),
])
def test_the_check_catches_a_broken_neon_kernel(toolchain, tmp_path, line, broken, found):
    """The driver is not vacuous: a NEON header with one wrong line fails it, naming the kernel."""
    native = tmp_path / "native"
    shutil.copytree(NATIVE, native)
    header = native / "bitops_neon.h"
    source = header.read_text()
    assert source.count(line) == 1
    header.write_text(source.replace(line, broken))
    result = run(toolchain, build(toolchain, str(native), str(tmp_path / "broken")), 1, 40)
    assert result.returncode == 1
    assert found in result.stderr


def test_driver_rejects_bad_arguments(toolchain, driver):
    for args in (("0", "5"), ("1", "x"), ("1",)):
        result = run(toolchain, driver, *args)
        assert result.returncode == 2 and "neon_check" in result.stderr

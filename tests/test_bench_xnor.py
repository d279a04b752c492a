"""benchmarks/bench_xnor.py runs end to end, briefly, and reports consistent numbers (not a timing test)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BRIEF = ["--samples", "1", "--rounds", "1", "--threads", "1", "--json"]

# Reported ratios are rounded to 2 decimals and times to 0.1 us: allow that rounding.
RATIO = dict(rtol=1e-3, atol=0.005)


def run(*args):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_xnor.py"), *args, *BRIEF],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_gemm_report_is_consistent():
    rows = run()
    assert [tuple(r["shape"]) for r in rows] == [(3136, 1152, 128), (784, 2304, 256), (196, 4608, 512),
                                                 (49, 4608, 512)]
    for r in rows:
        assert r["threads"] == 1 and r["binary_us"] > 0 and r["mxnet_us"] > 0 and r["numpy_us"] > 0
        # binary multiply-accumulates per second: M * K * N / time, and the ratios of the same run's times
        np.testing.assert_allclose(r["gops"], np.prod(r["shape"]) / r["binary_us"] / 1e3, rtol=2e-3)
        np.testing.assert_allclose(r["ratio_mxnet"], r["mxnet_us"] / r["binary_us"], **RATIO)
        np.testing.assert_allclose(r["ratio_numpy"], r["numpy_us"] / r["binary_us"], **RATIO)


@pytest.mark.slow
def test_conv_report_is_consistent():
    rows = run("--conv")
    assert [r["layer"] for r in rows] == [[64, 56, 56], [128, 28, 28], [256, 14, 14], [512, 7, 7]]
    for r in rows:
        assert r["packed_us"] > 0 and r["float_io_us"] > 0 and r["mxnet_us"] > 0
        np.testing.assert_allclose(r["ratio_packed"], r["mxnet_us"] / r["packed_us"], **RATIO)
        np.testing.assert_allclose(r["ratio_float_io"], r["mxnet_us"] / r["float_io_us"], **RATIO)

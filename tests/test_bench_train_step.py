"""benchmarks/bench_train_step.py runs end to end at a tiny size and reports consistent numbers."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_tiny_run_report_is_consistent():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_train_step.py"), "--image-size",
                          "32", "--batch-size", "2", "--threads", "1", "--steps", "1", "--warmup", "0", "--json"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    [r] = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["threads"] == 1 and r["float_ms"] > 0 and r["binary_ms"] > 0
    np.testing.assert_allclose(r["ratio"], r["binary_ms"] / r["float_ms"], rtol=1e-9)  # the binary step's cost
    np.testing.assert_allclose(r["binary_img_s"], 2 / (r["binary_ms"] / 1000), rtol=1e-9)
    np.testing.assert_allclose(r["float_img_s"], 2 / (r["float_ms"] / 1000), rtol=1e-9)

"""benchmarks/bench_train_step.py runs end to end at a tiny size and reports consistent numbers."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_tiny_run_report_is_consistent():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_train_step.py"), "--image-size",
                          "32", "--batch-size", "2", "--threads", "1", "--steps", "1", "--warmup", "0", "--json"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    [r] = report["steps"]
    assert r["threads"] == 1 and r["binary_float32_ms"] > 0 and r["float_float32_ms"] > 0
    from bmx import precision

    supported, reason = precision.bfloat16_support()
    assert r["bfloat16"] == supported
    if supported:
        assert r["binary_bfloat16_ms"] > 0 and r["float_bfloat16_ms"] > 0
    else:
        assert r["bfloat16_reason"] == reason and "binary_bfloat16_ms" not in r
    assert report["epochs"] == [] and report["baseline"] is None  # no --data-dir: no epoch measurement

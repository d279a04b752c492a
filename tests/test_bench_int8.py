"""benchmarks/bench_int8.py runs end to end, briefly, and reports consistent numbers (not a timing test)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_int8_report_is_consistent():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_int8.py"), "--samples", "1",
                          "--threads", "1", "--json"], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["layer"] for r in rows] == ["stem 7x7/2", "transition 1", "transition 2", "transition 3",
                                          "classifier"]
    assert rows[0]["shape"] == [3, 64, 7, 2, 3, 224] and rows[-1]["shape"][:3] == [576, 1000, 0]
    for r in rows:
        assert r["threads"] == 1 and r["int8_us"] > 0 and r["quant_us"] > 0 and r["direct_us"] > 0
        np.testing.assert_allclose(r["ratio_direct"], r["direct_us"] / r["int8_us"], rtol=2e-3)
        if r["shape"][2] != 7:  # 1x1 layers and the classifier also run as a BLAS matrix product
            np.testing.assert_allclose(r["ratio_blas"], r["blas_us"] / r["int8_us"], rtol=2e-3)

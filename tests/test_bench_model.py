"""benchmarks/bench_model.py runs end to end and reports consistent numbers (not a timing test)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_json_report_is_consistent():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_model.py"), "--model",
                          "binary_densenet28", "--size", "32", "--batch", "1,2", "--rounds", "1", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["threads"] == 1 and r["batch"] == 1 and set(r["batches"]) == {"1", "2"}
    one = r["batches"]["1"]
    assert r["packed_ms"] == min(one["packed_mxnet"], one["packed_runtime"]) > 0
    assert r["float_ms"] == one["float"] > 0 and abs(r["speedup"] - r["float_ms"] / r["packed_ms"]) < 1e-9
    assert r["onnx_ms"] == one["onnx"] > 0 and r["batches"]["2"]["onnx"] > 0
    assert r["int8_ms"] == one["packed_int8"] > 0 and r["batches"]["2"]["packed_int8"] > 0
    # the Amdahl limit of BinaryDenseNet-28: total MACs over the MACs left in float
    assert r["binary_macs"] > 10 * r["float_macs"] > 0
    assert abs(r["amdahl_limit"] - (r["binary_macs"] + r["float_macs"]) / r["float_macs"]) < 1e-9

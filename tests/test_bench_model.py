"""benchmarks/bench_model.py runs end to end and reports consistent numbers (not a timing test)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
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


@pytest.mark.slow
def test_profile_and_thread_comparison():
    bench = os.path.join(ROOT, "benchmarks", "bench_model.py")
    common = ["--model", "binary_densenet28", "--size", "32", "--batch", "1", "--rounds", "2", "--threads", "1", "2"]
    out = subprocess.run([sys.executable, bench, *common, "--profile"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("step"))
    assert lines[head].split() == ["step", "1T", "ms", "share", "2T", "ms", "share", "speedup"]
    assert lines[-1].startswith("forward (unprofiled)") and float(lines[-1].split()[-1].rstrip("x")) > 0
    rows = {line.rsplit(None, 5)[0]: line.split()[-5:] for line in lines[head + 1:-1]}
    assert {"XnorConv 3x3", "Convolution 7x7", "Convolution 1x1", "sum of steps"} <= set(rows)
    one, two = float(rows["sum of steps"][0]), float(rows["sum of steps"][2])
    # the steps' shares add up to 100% and the speedup is the ratio of the two columns
    steps = [r for label, r in rows.items() if label != "sum of steps"]
    assert abs(sum(float(r[1].rstrip("%")) for r in steps) - 100) < 0.1 * len(steps)
    assert abs(float(rows["sum of steps"][4].rstrip("x")) - one / two) < 0.01 * one / two + 0.01
    out = subprocess.run([sys.executable, bench, *common, "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["threads"] == 2 and set(r["runtime_threads"]["1"]) == {"1", "2"}
    assert min(r["runtime_threads"]["1"].values()) > 0


@pytest.mark.slow
def test_int8_variant_profile_shows_the_int8_layers():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_model.py"), "--model",
                          "binary_densenet28", "--size", "32", "--batch", "1", "--rounds", "1", "--threads", "1", "2",
                          "--variant", "int8", "--profile"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "(int8 packed model)" in lines[0]
    head = next(i for i, line in enumerate(lines) if line.startswith("step"))
    kinds = {line.rsplit(None, 5)[0] for line in lines[head + 1:-1]}
    # the full-precision convolutions run as int8 layers, and none is left in float
    assert any("Int8" in k for k in kinds) and not any(k.startswith("Convolution") for k in kinds), kinds

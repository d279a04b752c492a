"""int8 convolution (bmx.xnor.int8_conv2d / int8_dense) against float32 on BinaryDenseNet-28's
full-precision layers at 224x224, batch 1, 1 and 2 threads.

    python benchmarks/bench_int8.py [--json] [--threads 1 2] [--samples 40] [--kernel avx2|...]

The float layers of binary_densenet28 (bmx/models/densenet.py: init_features 64, growth 64, layers
(6, 6, 6, 5), reduction (2.7, 2.7, 2.2), transitions 'bn,max_pool,relu,fp_conv'): the ImageNet
stem's 7x7 stride-2 conv 3 -> 64 at 224x224, the 1x1 transition convs 448 -> 160 at 28x28,
544 -> 192 at 14x14 and 576 -> 256 at 7x7, and the classifier 576 -> 1000.

Per layer, measured in the same process: ``int8_us``, the int8 kernel with float32 output
(``out_scale`` and ``bias``: what a quantized layer runs); ``quant_us``, quantizing its float input
(bmx.xnor.quantize_int8, which a quantized layer adds unless the previous one emits int8);
``direct_us``, the float32 direct convolution (bmx.xnor.float_conv2d, what bmx.runtime runs for
spatial kernels); ``blas_us``, float32 as a numpy matrix product (bmx.runtime's path for 1x1
convolutions and the classifier). Ratios are float time / int8 time. Each thread count runs in a
subprocess with OMP_NUM_THREADS and OPENBLAS_NUM_THREADS set; times are the best of many short
samples taken in turns (bench_xnor.best_time).
"""
import argparse
import datetime
import json
import os
import subprocess
import sys

from bench_xnor import best_time, cpu_model

# (name, in channels, out channels, kernel, stride, padding, input height = width); kernel 0: dense
LAYERS = [("stem 7x7/2", 3, 64, 7, 2, 3, 224), ("transition 1", 448, 160, 1, 1, 0, 28),
          ("transition 2", 544, 192, 1, 1, 0, 14), ("transition 3", 576, 256, 1, 1, 0, 7),
          ("classifier", 576, 1000, 0, 1, 0, 1)]


def measure(threads, samples, kernel):
    """Best seconds per call of each variant for every layer, on `threads` threads."""
    import numpy as np

    from bmx import xnor

    rng = np.random.default_rng(0)
    times = []
    for _, c, o, k, s, p, hw in LAYERS:
        ks = max(k, 1)
        x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
        w = rng.standard_normal((o, c, ks, ks)).astype(np.float32)
        xq = xnor.quantize_int8(x, 0.05)
        wq = xnor.pack_int8_weights(rng.integers(-127, 128, (o, c) if k == 0 else (o, c, k, k), dtype=np.int8))
        scale, bias = np.full(o, 1e-3, np.float32), rng.standard_normal(o).astype(np.float32)
        out_hw = (hw + 2 * p - ks) // s + 1
        out = np.empty((1, o, out_hw, out_hw), np.float32)
        weight_t = np.ascontiguousarray(w.reshape(1, o, -1).transpose(0, 2, 1))
        w2, x2 = w.reshape(o, -1), x.reshape(c, -1)
        if k == 0:
            int8 = lambda: xnor.int8_dense(xq.reshape(1, c), wq, out_scale=scale, bias=bias, kernel=kernel,
                                           threads=threads)
        else:
            int8 = lambda: xnor.int8_conv2d(xq, wq, stride=s, padding=p, out_scale=scale, bias=bias,
                                            kernel=kernel, threads=threads)
        calls = {"int8": int8, "quant": lambda: xnor.quantize_int8(x, 0.05, threads=threads),
                 "direct": lambda: xnor.float_conv2d(x, weight_t, bias, out, (ks, ks), (s, s), (p, p), (1, 1),
                                                     threads)}
        if ks == 1:
            calls["blas"] = lambda: np.matmul(w2, x2) + bias[:, None]
        times.append(dict(zip(calls, best_time(list(calls.values()), samples))))
    return {"kernel": kernel or xnor.available_int8_kernels()[0], "float_kernel": xnor.get_kernel(),
            "times": times}


def rows_of(threads, result):
    rows = []
    for (name, c, o, k, s, p, hw), t in zip(LAYERS, result["times"]):
        row = {"layer": name, "shape": [c, o, k, s, p, hw], "threads": threads, "kernel": result["kernel"],
               "float_kernel": result["float_kernel"]}
        for key, seconds in t.items():
            row[f"{key}_us"] = round(seconds * 1e6, 1)
        for key in ("direct", "blas"):
            if key in t:
                row[f"ratio_{key}"] = round(t[key] / t["int8"], 3)
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON list of results")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--kernel", help="force an int8 kernel variant (default: the best this CPU runs)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        json.dump(measure(args.worker, args.samples, args.kernel), sys.stdout)
        return
    results = []
    for threads in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(threads), "--samples", str(args.samples)]
        out = subprocess.run(cmd + (["--kernel", args.kernel] if args.kernel else []), env=env,
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"worker for {threads} thread(s) failed:\n{out.stderr}")
        results += rows_of(threads, json.loads(out.stdout))
    if args.json:
        print(json.dumps(results))
        return
    print(f"CPU: {cpu_model()}   cores: {os.cpu_count()}   date: {datetime.date.today()}   "
          f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"int8 kernel: {results[0]['kernel']}   float direct kernel: {results[0]['float_kernel']}")
    print(f"{'layer':>13} {'C->O':>9} {'HW':>4} {'thr':>3} {'int8 us':>8} {'quant us':>8} {'direct us':>9} "
          f"{'blas us':>8} {'x direct':>8} {'x blas':>7}")
    for r in results:
        c, o, hw = r["shape"][0], r["shape"][1], r["shape"][5]
        blas = f"{r['blas_us']:>8.0f}" if "blas_us" in r else f"{'-':>8}"
        ratio_blas = f"{r['ratio_blas']:>7.2f}" if "ratio_blas" in r else f"{'-':>7}"
        print(f"{r['layer']:>13} {f'{c}->{o}':>9} {hw:>4} {r['threads']:>3} {r['int8_us']:>8.0f} "
              f"{r['quant_us']:>8.0f} {r['direct_us']:>9.0f} {blas} {r['ratio_direct']:>8.2f} {ratio_blas}")


if __name__ == "__main__":
    main()

"""xnor-popcount GEMM (bmx.xnor.gemm) against float32 GEMM of the same shape, 1 and 2 threads.

    python benchmarks/bench_xnor.py [--json] [--threads 1 2] [--samples 40] [--rounds 2]
                                    [--kernel avx512|avx2|portable]
    python benchmarks/bench_xnor.py --conv [--json] ...

For each M x K x N (K counted in bits) it reports binary GOPS (binary multiply-accumulates per
second: M * N * K / time), the percentage of the binary peak (2.9 TOPS per core, the figure of
docs/published.md; thread count x that), and the speed ratio to float32 GEMM of the same
shape through MXNet FullyConnected (oneDNN) and through numpy (its BLAS), all measured in the same
run. Weights are prepared once (xnor.pack_weights, like float weights that already sit in memory);
activations are already packed. ``pack_us`` is what packing the float activations would add.

Each thread count runs in subprocesses with OMP_NUM_THREADS, MXNET_OMP_MAX_THREADS and
OPENBLAS_NUM_THREADS set (other variables, e.g. OPENBLAS_CORETYPE, are passed through): ones for
the binary kernels and numpy, and ones for MXNet (after MXNet has run, its OpenMP threads compete
for the cores), alternating for --rounds rounds. Times are the best of all samples (--samples short
ones per process, taken in turns), which resists other load on the machine; the load average is
printed alongside. When a C compiler is present, an in-register xor/popcount/add loop measures
what this CPU can reach at most (``probe_gops``, ``pct_probe``), since the 2.9 TOPS figure
belongs to a particular CPU (one with 512-bit-wide AVX-512 datapaths).

--conv instead times whole binary 3x3 convolutions (batch 1, padding 1, C in = C out, the
ResNet-18 stage shapes) against MXNet's float32 Convolution (oneDNN): ``packed_us`` with packed
NHWC input and the fused BatchNorm+sign output packed for the next binary layer (activations
stay packed between binary layers), ``float_io_us`` from a float32 NCHW input to int32 NCHW
output (sign and packing of the input included).
"""
import argparse
import ctypes
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

SHAPES = [(3136, 1152, 128), (784, 2304, 256), (196, 4608, 512), (49, 4608, 512)]
CONV_LAYERS = [(64, 56), (128, 28), (256, 14), (512, 7)]  # (channels, height = width)
PEAK_GOPS_PER_CORE = 2900.0

# 6 x 4 independent accumulators, the register block of the AVX-512 kernel, without memory.
PROBE_C = r"""
#include <immintrin.h>
#include <stdint.h>
__attribute__((target("avx512f,avx512vpopcntdq"))) uint64_t probe(int64_t iters, uint64_t seed) {
  __m512i b[4], a[6], acc[6][4];
  for (int j = 0; j < 4; ++j) b[j] = _mm512_set1_epi64((long long)(seed * (j + 3)));
  for (int i = 0; i < 6; ++i) {
    a[i] = _mm512_set1_epi64((long long)(seed + i));
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_si512();
  }
  for (int64_t t = 0; t < iters; ++t) {
    for (int i = 0; i < 6; ++i)
      for (int j = 0; j < 4; ++j)
        acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_popcnt_epi64(_mm512_xor_si512(a[i], b[j])));
    __asm__ volatile("" : "+v"(b[0]), "+v"(b[1]), "+v"(b[2]), "+v"(b[3]));
  }
  __m512i s = _mm512_setzero_si512();
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 4; ++j) s = _mm512_add_epi64(s, acc[i][j]);
  return (uint64_t)_mm512_reduce_add_epi64(s);
}
"""


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


ROUNDS = 4
SETTLE_SECONDS = 0.15


def best_time(calls, samples):
    """Best per-call seconds of each callable over `samples` short samples (a few ms each).

    The callables take turns in ROUNDS rounds, so that load from elsewhere hits all alike; short
    samples catch the moments without such load. Before each turn the previous callable's
    worker threads get SETTLE_SECONDS to stop spinning (OpenBLAS and OpenMP threads busy-wait
    after a call and would steal the cores of the next one).
    """
    per_sample = []
    for fn in calls:
        fn()
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < 0.002:
            fn()
            n += 1
        per_sample.append(max(1, n))
    best = [float("inf")] * len(calls)
    for _ in range(ROUNDS):
        for i, fn in enumerate(calls):
            time.sleep(SETTLE_SECONDS)
            fn()
            for _ in range(-(-samples // ROUNDS)):
                start = time.perf_counter()
                for _ in range(per_sample[i]):
                    fn()
                best[i] = min(best[i], (time.perf_counter() - start) / per_sample[i])
    return best


def load_probe(threads):
    """A callable running the in-register loop on every thread, and its binary ops; or None."""
    from concurrent.futures import ThreadPoolExecutor

    from bmx import xnor

    if "avx512" not in xnor.available_kernels():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = os.path.join(tmp, "probe.c"), os.path.join(tmp, "probe.so")
        with open(src, "w") as f:
            f.write(PROBE_C)
        try:
            subprocess.run(["cc", "-O3", "-shared", "-fPIC", src, "-o", lib], check=True,
                           capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        probe = ctypes.CDLL(lib).probe
    probe.restype, probe.argtypes = ctypes.c_uint64, [ctypes.c_int64, ctypes.c_uint64]
    iters = 100000
    pool = ThreadPoolExecutor(threads)  # ctypes releases the GIL during the call

    def run():
        list(pool.map(lambda seed: probe(iters, seed), range(1, threads + 1)))
    return run, threads * iters * 24 * 512


def gemm_part(part, threads, samples, kernel):
    """Best seconds per call for each shape: 'mxnet' times FullyConnected; 'binary' times the
    xnor GEMM, numpy and packing, and the probe (sampled alongside every shape, so that its best
    sees the quietest moments)."""
    import numpy as np

    from bmx import xnor

    if kernel:
        xnor.set_kernel(kernel)
    rng = np.random.default_rng(0)
    probe = load_probe(threads) if part == "binary" else None
    times = []
    for m, k, n in SHAPES:
        af = rng.standard_normal((m, k)).astype(np.float32)
        bf = rng.standard_normal((n, k)).astype(np.float32)
        if part == "mxnet":
            import mxnet as mx

            mx_a, mx_b = mx.nd.array(af), mx.nd.array(bf)

            def mxnet():
                mx.nd.FullyConnected(mx_a, mx_b, num_hidden=n, no_bias=True).wait_to_read()
            times.append({"mxnet": best_time([mxnet], samples)[0]})
            continue
        words = xnor.words_for_bits(k)
        a = rng.integers(0, 2 ** 64, (m, words), dtype=np.uint64, endpoint=False)
        w = xnor.PackedWeights(rng.integers(0, 2 ** 64, (n, 1, 1, words), dtype=np.uint64), k)
        calls = {"binary": lambda: xnor.gemm(a, w, threads=threads),
                 "numpy": lambda: np.dot(af, bf.T),
                 "pack": lambda: xnor.pack(af)}
        if probe:
            calls["probe"] = probe[0]
        times.append(dict(zip(calls, best_time(list(calls.values()), samples))))
    return {"kernel": xnor.get_kernel(), "times": times,
            "probe_ops": probe[1] if probe else None}


def gemm_rows(threads, binary, mxnet):
    probe_s = min(t["probe"] for t in binary["times"]) if binary["probe_ops"] else None
    probe_gops = round(binary["probe_ops"] / probe_s / 1e9, 1) if probe_s else None
    rows = []
    for (m, k, n), tb, tm in zip(SHAPES, binary["times"], mxnet["times"]):
        gops = m * n * k / tb["binary"] / 1e9
        rows.append({
            "shape": [m, k, n], "threads": threads, "kernel": binary["kernel"],
            "gops": round(gops, 1),
            "pct_peak": round(100 * gops / (PEAK_GOPS_PER_CORE * threads), 1),
            "ratio_mxnet": round(tm["mxnet"] / tb["binary"], 2),
            "ratio_numpy": round(tb["numpy"] / tb["binary"], 2),
            "binary_us": round(tb["binary"] * 1e6, 1), "mxnet_us": round(tm["mxnet"] * 1e6, 1),
            "numpy_us": round(tb["numpy"] * 1e6, 1),
            "mxnet_gflops": round(2 * m * n * k / tm["mxnet"] / 1e9, 1),
            "numpy_gflops": round(2 * m * n * k / tb["numpy"] / 1e9, 1),
            "pack_us": round(tb["pack"] * 1e6, 1), "probe_gops": probe_gops,
            "pct_probe": round(100 * gops / probe_gops, 1) if probe_gops else None,
        })
    return rows


def conv_part(part, threads, samples, kernel):
    """Best seconds per call for each layer: 'mxnet' times Convolution, 'binary' the two binary
    forms."""
    import numpy as np

    from bmx import xnor

    if kernel:
        xnor.set_kernel(kernel)
    rng = np.random.default_rng(0)
    times = []
    for c, hw in CONV_LAYERS:
        x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
        wf = rng.standard_normal((c, c, 3, 3)).astype(np.float32)
        if part == "mxnet":
            import mxnet as mx

            mx_x, mx_w = mx.nd.array(x), mx.nd.array(wf)

            def mxnet():
                mx.nd.Convolution(mx_x, mx_w, kernel=(3, 3), pad=(1, 1), num_filter=c,
                                  no_bias=True).wait_to_read()
            times.append({"mxnet": best_time([mxnet], samples)[0]})
            continue
        w, px = xnor.pack_weights(wf), xnor.pack_channels(x)
        sgn, thr = xnor.bn_sign_thresholds(*rng.standard_normal((2, c)), np.zeros(c), np.ones(c))
        calls = {"packed": lambda: xnor.conv2d(px, w, padding=1, layout="NHWC",
                                               threshold=(sgn, thr), threads=threads),
                 "float_io": lambda: xnor.conv2d(x, w, padding=1, threads=threads)}
        times.append(dict(zip(calls, best_time(list(calls.values()), samples))))
    return {"kernel": xnor.get_kernel(), "times": times}


def conv_rows(threads, binary, mxnet):
    rows = []
    for (c, hw), tb, tm in zip(CONV_LAYERS, binary["times"], mxnet["times"]):
        rows.append({
            "layer": [c, hw, hw], "threads": threads, "kernel": binary["kernel"],
            "packed_us": round(tb["packed"] * 1e6, 1), "float_io_us": round(tb["float_io"] * 1e6, 1),
            "mxnet_us": round(tm["mxnet"] * 1e6, 1),
            "ratio_packed": round(tm["mxnet"] / tb["packed"], 2),
            "ratio_float_io": round(tm["mxnet"] / tb["float_io"], 2),
            "gops_packed": round(hw * hw * c * c * 9 / tb["packed"] / 1e9, 1),
        })
    return rows


def print_conv(results):
    print(f"{'C x H x W':>12} {'thr':>3} {'packed us':>9} {'float-io us':>11} {'MXNet us':>9} "
          f"{'x packed':>8} {'x float-io':>10} {'GOPS':>6}")
    for r in results:
        layer = "x".join(map(str, r["layer"]))
        print(f"{layer:>12} {r['threads']:>3} {r['packed_us']:>9.0f} {r['float_io_us']:>11.0f} "
              f"{r['mxnet_us']:>9.0f} {r['ratio_packed']:>8.1f} {r['ratio_float_io']:>10.1f} "
              f"{r['gops_packed']:>6.0f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON list of results")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2,
                        help="processes per part and thread count (the best time counts)")
    parser.add_argument("--kernel", choices=["avx512", "avx2", "portable"],
                        help="force a kernel variant (default: the best this CPU runs)")
    parser.add_argument("--conv", action="store_true",
                        help="time whole binary 3x3 convolutions instead of GEMMs")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=["binary", "mxnet"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    part_fn, rows_fn = (conv_part, conv_rows) if args.conv else (gemm_part, gemm_rows)
    if args.worker:
        json.dump(part_fn(args.part, args.worker, args.samples, args.kernel), sys.stdout)
        return

    results = []
    for threads in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MXNET_OMP_MAX_THREADS=str(threads),
                   OPENBLAS_NUM_THREADS=str(threads))
        parts = {}
        # MXNet runs in processes of its own (once it has run, its OpenMP threads share the
        # cores with the kernels' threads); the two kinds alternate, and each time is the best
        # over the rounds, so that load from elsewhere is unlikely to hit only one of them
        for _ in range(args.rounds):
            for part in ("binary", "mxnet"):
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(threads),
                       "--part", part, "--samples", str(args.samples)]
                cmd += (["--kernel", args.kernel] if args.kernel else []) + (["--conv"] if args.conv else [])
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{part} worker for {threads} thread(s) failed:\n{out.stderr}")
                new = json.loads(out.stdout)
                if part in parts:
                    for old_times, new_times in zip(parts[part]["times"], new["times"]):
                        for key, seconds in new_times.items():
                            old_times[key] = min(old_times[key], seconds)
                else:
                    parts[part] = new
        results += rows_fn(threads, parts["binary"], parts["mxnet"])
    if args.json:
        print(json.dumps(results))
        return

    print(f"CPU: {cpu_model()}   cores: {os.cpu_count()}   date: {datetime.date.today()}   "
          f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.conv:
        print(f"binary kernel: {results[0]['kernel']}")
        print_conv(results)
        return
    probes = ", ".join(f"{r['threads']}T {r['probe_gops']}" for r in results[::len(SHAPES)])
    print(f"binary kernel: {results[0]['kernel']}   peak: {PEAK_GOPS_PER_CORE:.0f} GOPS/core   "
          f"in-register probe: {probes} GOPS")
    head = (f"{'M x K x N':>16} {'thr':>3} {'GOPS':>7} {'%peak':>6} {'%probe':>6} {'x MXNet':>8} "
            f"{'x numpy':>8} {'bin us':>8} {'MXNet us':>9} {'numpy us':>9} {'MX GFLOPS':>9} {'pack us':>8}")
    print(head)
    for r in results:
        shape = "x".join(map(str, r["shape"]))
        print(f"{shape:>16} {r['threads']:>3} {r['gops']:>7.0f} {r['pct_peak']:>6.1f} "
              f"{r['pct_probe'] if r['pct_probe'] is not None else 'n/a':>6} {r['ratio_mxnet']:>8.1f} "
              f"{r['ratio_numpy']:>8.1f} {r['binary_us']:>8.0f} {r['mxnet_us']:>9.0f} {r['numpy_us']:>9.0f} "
              f"{r['mxnet_gflops']:>9.0f} {r['pack_us']:>8.0f}")


if __name__ == "__main__":
    main()

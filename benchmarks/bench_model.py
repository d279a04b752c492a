#!/usr/bin/env python
"""End-to-end latency of a bit-packed zoo model against the same model run in float by MXNet.

    python benchmarks/bench_model.py --model binary_densenet28 --threads 1
    python benchmarks/bench_model.py --model binary_densenet28 --threads 2 --batch 1,8,32 --json
    python benchmarks/bench_model.py --threads 1 2 --batch 1 --profile

The model (ImageNet stem, 1000 classes, random weights and BatchNorm statistics: speed does not
depend on the values) is exported with bmx.export and packed with bmx.convert.binarize. Timed in
one process, alternating round by round so that background load hits every candidate alike:

* ``float``: its full-precision twin (same shapes, ReLU and float convs) in MXNet, hybridized
  with static_alloc/static_shape: what the network costs without binarization.
* ``packed_mxnet``: the packed model in MXNet (SymbolBlock.imports; bmx_xnor_conv2d), hybridized.
* ``packed_runtime``: the packed model in bmx.runtime (numpy + the xnor kernels, no MXNet).
* ``packed_int8``: the same with int8 full-precision layers (bmx.convert.int8, calibrated on 8
  random images: speed does not depend on the scales), in bmx.runtime.
* ``exported``: the binary model as trained (float convolutions of signs) in MXNet.
* ``onnx``: the same model exported by bmx.onnx_export (+-1 float weights) in ONNX Runtime, with
  ``--threads`` intra-op threads (left out, with a note, if the onnx extra is not installed).

Reported per batch size: the median milliseconds per forward pass of each, and speedup =
float_ms / packed_ms with the faster packed path. The Amdahl limit is the speedup if the binary
layers took no time at all, estimated from bmx.summary's operation counts:
(float MACs + binary MACs) / float MACs, time taken proportional to MACs.
``--json`` prints one object: ``packed_ms``, ``float_ms``, ``speedup`` and ``int8_ms`` at the first
batch size, and everything else under ``batches``.

Several ``--threads`` counts (``--threads 1 2``): the table runs at the last one (MXNet and ONNX
Runtime take their thread count once per process), and the packed model in bmx.runtime is also
loaded once per count and timed at each, all counts alternating round by round in the same
process; a line per batch size gives each count's median and its speedup over the first count
(``runtime_threads`` in the JSON). ``--variant int8`` compares (and profiles) the int8 model instead.

``--profile`` (instead of the table): where bmx.runtime's time goes at the first batch size, per
op kind (``--profile layers``: per layer), for each ``--threads`` count: the median over
``--rounds`` of each step's time (time.perf_counter around it, Model.profile), its share of the
sum of the steps and its speedup over the first thread count; then the forward passes' medians
with the profile switched off, timed in the same rounds.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="binary_densenet28", help="zoo model (default binary_densenet28)")
    p.add_argument("--threads", type=int, nargs="+", default=[1],
                   help="threads for MXNet and the xnor kernels (default 1); several: see above")
    p.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--size", type=int, default=224, help="input height = width (default 224)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per batch size (default 7)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--profile", nargs="?", const="ops", choices=("ops", "layers"),
                   help="print bmx.runtime's per-step profile instead of the table (per op kind, or per layer)")
    p.add_argument("--variant", choices=("float", "int8"), default="float",
                   help="which packed model the thread comparison and --profile run: the exact float one "
                        "(default) or the one with int8 full-precision layers")
    args = p.parse_args(argv)
    try:
        args.batch = [int(b) for b in args.batch.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batch must be comma-separated integers, got {args.batch!r}")
    if not args.batch or min(args.batch) < 1 or min(args.threads) < 1 or args.rounds < 1 or args.size < 32:
        p.error("--batch, --threads and --rounds must be >= 1 and --size >= 32")
    if args.profile and args.json:
        p.error("--profile prints a table: leave out --json")
    args.thread_counts, args.threads = args.threads, args.threads[-1]
    return args


def build(args, tmp):
    """(candidates: name -> callable(numpy batch) that returns when the output is ready, summary)."""
    import mxnet as mx
    import numpy as np

    import bmx
    from bmx import convert, packed, runtime
    from bmx.convert import int8

    def randomized(net):
        net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
        rng = np.random.RandomState(0)
        for name, p in net.collect_params().items():
            if name.endswith("running_mean"):
                p.set_data(mx.nd.array(rng.uniform(-0.5, 0.5, p.shape)))
            elif name.endswith("running_var"):
                p.set_data(mx.nd.array(rng.uniform(0.5, 2.0, p.shape)))
        return net

    shape = (1, 3, args.size, args.size)
    binary = randomized(bmx.models.get_model(args.model))
    summary = bmx.summary(binary, shape, show=False)
    prefix = os.path.join(tmp, "model")
    bmx.export(binary, prefix, input_shape=shape)
    packed_dir = os.path.join(tmp, "packed")
    convert.binarize(prefix, packed_dir)

    twin = randomized(bmx.models.get_model(args.model, binary=False))
    twin.hybridize(static_alloc=True, static_shape=True)
    packed_mx = bmx.imports(os.path.join(packed_dir, "model-symbol.json"), os.path.join(packed_dir, "model-0000.params"))
    packed_mx.hybridize(static_alloc=True, static_shape=True)
    exported = bmx.imports(prefix + "-symbol.json", prefix + "-0000.params")
    exported.hybridize(static_alloc=True, static_shape=True)
    model = runtime.load(packed_dir, threads=args.threads)
    float_packed = packed.load_model(packed_dir)
    sample = np.random.RandomState(1).uniform(-1, 1, (8, 3, args.size, args.size)).astype(np.float32)
    layers = int8.int8_layers(float_packed.graph, float_packed.params)
    peaks = int8.calibrate(float_packed, [sample], len(sample), layers)
    int8_graph, int8_params, _ = int8.quantize(float_packed.graph, float_packed.params, peaks)
    int8_packed = packed.PackedModel(int8_graph, int8_params, float_packed.meta)
    int8_model = runtime.Model(int8_packed, threads=args.threads)

    def in_mxnet(net):
        def run(x):
            net(mx.nd.array(x)).wait_to_read()
        return run

    candidates = {"float": in_mxnet(twin), "packed_mxnet": in_mxnet(packed_mx), "packed_runtime": model,
                  "packed_int8": int8_model, "exported": in_mxnet(exported)}
    try:
        import onnxruntime as ort
        from bmx import onnx_export
    except ImportError as err:
        print(f"no onnx column: {err} (pip install -e \".[onnx]\")", file=sys.stderr)
    else:
        onnx_export.export(tmp, os.path.join(tmp, "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = ort.InferenceSession(os.path.join(tmp, "model.onnx"), options, providers=["CPUExecutionProvider"])
        candidates["onnx"] = lambda x: session.run(None, {"data": x})
    return candidates, summary, {"float": float_packed, "int8": int8_packed}


def measure(candidates, batch, size, rounds):
    """Median ms per forward pass of each candidate at this batch size (two untimed warm-up calls)."""
    import numpy as np

    x = np.random.RandomState(batch).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
    for run in candidates.values():
        run(x)
        run(x)
    times = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            start = time.perf_counter()
            run(x)
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def runtime_models(source, counts):
    """The packed model ``source`` (a bmx.packed.PackedModel) in bmx.runtime, once per thread count."""
    from bmx import runtime

    return {threads: runtime.Model(source, threads=threads) for threads in counts}


def thread_comparison(models, batches, size, rounds):
    """{batch: {threads: median ms}} of the runtime models, all counts alternating round by round."""
    return {batch: measure(models, batch, size, rounds) for batch in batches}


def profile(models, batch, size, rounds, per_layer):
    """Per-step profile of each model (one per thread count): (rows, totals, forward).

    rows: [(label, {threads: median ms})], label the op kind or 'layer (kind)', ordered by the first
    count's time; totals: {threads: median of the sum of the steps}; forward: {threads: median ms
    of a plain forward pass}. Every round profiles each model once and runs it once unprofiled.
    """
    import numpy as np

    x = np.random.RandomState(batch).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
    times = {t: {} for t in models}
    totals, forward = {t: [] for t in models}, {t: [] for t in models}
    for model in models.values():
        model.profile(x)
        model(x)
    for _ in range(rounds):
        for t, model in models.items():
            _, steps = model.profile(x)
            per_round = {}
            for name, kind, seconds in steps:
                label = f"{name} ({kind})" if per_layer else kind
                per_round[label] = per_round.get(label, 0.0) + 1000 * seconds
            for label, ms in per_round.items():
                times[t].setdefault(label, []).append(ms)
            totals[t].append(sum(per_round.values()))
            start = time.perf_counter()
            model(x)
            forward[t].append(1000 * (time.perf_counter() - start))
    first = next(iter(models))
    labels = sorted(times[first], key=lambda label: -statistics.median(times[first][label]))
    rows = [(label, {t: statistics.median(times[t][label]) for t in models}) for label in labels]
    return rows, {t: statistics.median(v) for t, v in totals.items()}, \
        {t: statistics.median(v) for t, v in forward.items()}


def print_profile(args, rows, totals, forward):
    counts = list(totals)
    first = counts[0]
    print(f"bmx.runtime profile ({args.variant} packed model): {args.model} at {args.size}x{args.size}, batch {args.batch[0]}, "
          f"median of {args.rounds} rounds (ms per step kind{' and layer' if args.profile == 'layers' else ''})")
    head = "".join(f" {f'{t}T ms':>9} {'share':>6}" + (f" {'speedup':>8}" if t != first else "") for t in counts)
    width = max(len("sum of steps"), *(len(label) for label, _ in rows))
    print(f"{'step':<{width}}{head}")

    def line(label, ms, share=True):
        cells = ""
        for t in counts:
            cells += f" {ms[t]:>9.3f}" + (f" {100 * ms[t] / totals[t]:>5.1f}%" if share else " " * 7)
            if t != first:
                cells += f" {ms[first] / ms[t]:>7.2f}x"
        print(f"{label:<{width}}{cells}")

    for label, ms in rows:
        line(label, ms)
    line("sum of steps", totals)
    line("forward (unprofiled)", forward, share=False)


def main(argv=None):
    args = parse_args(argv)
    # MXNet and OpenMP read the thread count when they start: set it before importing them.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from tqdm import tqdm

    with tempfile.TemporaryDirectory() as tmp:
        candidates, summary, sources = build(args, tmp)
        models = runtime_models(sources[args.variant], args.thread_counts) if len(args.thread_counts) > 1 or args.profile else None
        if args.profile:
            print_profile(args, *profile(models, args.batch[0], args.size, args.rounds, args.profile == "layers"))
            return 0
        by_threads = thread_comparison(models, args.batch, args.size, args.rounds) if models else None
        batches = {}
        for batch in tqdm(args.batch, desc="batch sizes", disable=args.json, leave=False):
            ms = measure(candidates, batch, args.size, args.rounds)
            packed_ms = min(ms["packed_mxnet"], ms["packed_runtime"])
            batches[batch] = dict(ms, packed_ms=packed_ms, speedup=ms["float"] / packed_ms,
                                  best_packed="packed_mxnet" if ms["packed_mxnet"] <= ms["packed_runtime"]
                                  else "packed_runtime")
    amdahl = (summary.float_macs + summary.binary_macs) / summary.float_macs
    first = batches[args.batch[0]]
    from bmx.precision import cpu_model  # after the thread settings: it imports mxnet

    result = dict(model=args.model, input_size=args.size, threads=args.threads, cpu=cpu_model(),
                  batch=args.batch[0], packed_ms=first["packed_ms"], float_ms=first["float"],
                  speedup=first["speedup"], int8_ms=first["packed_int8"], onnx_ms=first.get("onnx"),
                  amdahl_limit=amdahl, float_macs=summary.float_macs, binary_macs=summary.binary_macs,
                  batches=batches, runtime_threads=by_threads)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.model} at {args.size}x{args.size}, {args.threads} thread(s), {result['cpu']}")
    print(f"float MACs {summary.float_macs / 1e6:.0f}M, binary MACs {summary.binary_macs / 1e6:.0f}M: "
          f"Amdahl limit {amdahl:.1f}x (binary layers free, time proportional to MACs)")
    print(f"{'batch':>5} {'float ms':>10} {'packed mxnet':>13} {'packed runtime':>15} {'int8 runtime':>13} "
          f"{'exported':>10} {'onnx':>8} {'speedup':>8}")
    for batch, r in batches.items():
        print(f"{batch:>5} {r['float']:>10.2f} {r['packed_mxnet']:>13.2f} {r['packed_runtime']:>15.2f} "
              f"{r['packed_int8']:>13.2f} {r['exported']:>10.2f} {r.get('onnx', float('nan')):>8.2f} "
              f"{r['speedup']:>7.2f}x")
    for batch, ms in (by_threads or {}).items():
        first = args.thread_counts[0]
        print(f"bmx.runtime ({args.variant} packed model), batch {batch}, thread counts alternating: " + ", ".join(
            f"{t} thread(s) {ms[t]:.2f} ms" + (f" ({ms[first] / ms[t]:.2f}x the speed of {first})" if t != first else "")
            for t in ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""End-to-end latency of a bit-packed zoo model against the same model run in float by MXNet.

    python benchmarks/bench_model.py --model binary_densenet28 --threads 1
    python benchmarks/bench_model.py --model binary_densenet28 --threads 2 --batch 1,8,32 --json

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
    p.add_argument("--threads", type=int, default=1, help="threads for MXNet and the xnor kernels (default 1)")
    p.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--size", type=int, default=224, help="input height = width (default 224)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per batch size (default 7)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    try:
        args.batch = [int(b) for b in args.batch.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batch must be comma-separated integers, got {args.batch!r}")
    if not args.batch or min(args.batch) < 1 or args.threads < 1 or args.rounds < 1 or args.size < 32:
        p.error("--batch, --threads and --rounds must be >= 1 and --size >= 32")
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
    int8_model = runtime.Model(packed.PackedModel(int8_graph, int8_params, float_packed.meta), threads=args.threads)

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
    return candidates, summary


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


def main(argv=None):
    args = parse_args(argv)
    # MXNet and OpenMP read the thread count when they start: set it before importing them.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from tqdm import tqdm

    with tempfile.TemporaryDirectory() as tmp:
        candidates, summary = build(args, tmp)
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
                  amdahl_limit=amdahl,
                  float_macs=summary.float_macs, binary_macs=summary.binary_macs, batches=batches)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())

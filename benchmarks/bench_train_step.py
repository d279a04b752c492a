"""Training-step cost: binary net vs full-precision twin, float32 vs bfloat16, and whole CIFAR-10
epochs with the real data pipelines, measured in one run.

Part 1 (steps): a step is forward + backward + optimizer update (Adam) of a hybridized net on one
synthetic batch. The zoo model is built binary and as its full-precision twin (``binary=False``:
the same graph with plain layers), each in float32 and, where the CPU supports it, bfloat16
(:func:`bmx.precision.training_block`). All nets are stepped in turn, round after round, so that
they see the same machine state; medians are compared.

Part 2 (data-inclusive epoch, with ``--data-dir``): steps of the same model that draw their
batches from the real CIFAR-10 pipeline, so decoding and augmentation cost what they cost in
training; the median step time x steps per epoch is the epoch time. The old pipeline is the
per-image Gluon reader in float32, taken from ``--baseline`` (a bmx checkout, e.g. the commit
before the in-memory pipeline, with its extension built) or, without it, ``loader='gluon'`` of
this checkout; the new one is the in-memory pipeline in bfloat16 (float32 where the CPU has no
bfloat16 support, which the output says). Old and new alternate ``--rounds`` times.

    python benchmarks/bench_train_step.py [--model binary_densenet28] [--stem cifar]
        [--image-size 32] [--batch-size 64] [--threads 1 2] [--steps 10]
        [--data-dir DIR [--data-steps 20] [--rounds 2] [--baseline PATH]] [--json] [--output FILE]

Each measurement runs in its own process (OMP_NUM_THREADS must be set before MXNet starts).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trainer_step(mx, net, forward, x, y, optimizer, batch):
    trainer = mx.gluon.Trainer(net.collect_params(), optimizer, {"learning_rate": 1e-3})
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()

    def step(data=x, label=y):
        with mx.autograd.record():
            loss = loss_fn(forward(data), label)
        loss.backward()
        trainer.step(batch)
        mx.nd.waitall()
    return step


def measure_steps(args):
    """Child process, part 1: median step times of binary/float x float32/bfloat16."""
    import mxnet as mx

    import bmx
    from bmx import precision

    supported, reason = precision.bfloat16_support()
    dtypes = ["float32", "bfloat16"] if supported else ["float32"]
    x = mx.nd.random.normal(shape=(args.batch_size, 3, args.image_size, args.image_size))
    y = mx.nd.random.randint(0, 10, shape=(args.batch_size,)).astype("float32")
    steps = {}
    for dtype in dtypes:
        for kind in ("binary", "float"):
            net = bmx.models.get_model(args.model, classes=10, stem=args.stem, binary=kind == "binary")
            net.initialize(mx.init.Xavier(magnitude=2))
            net.hybridize(static_alloc=True, static_shape=True)
            steps[f"{kind}_{dtype}"] = _trainer_step(mx, net, precision.training_block(net, dtype), x, y, "adam",
                                                     args.batch_size)
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    result = {"threads": args.threads[0], "bfloat16": supported, "bfloat16_reason": reason,
              "cpu": precision.cpu_model() or platform.processor() or "unknown"}
    for name, values in times.items():
        result[name + "_ms"] = 1e3 * statistics.median(values)
    return result


def measure_data(args):
    """Child process, part 2: median time of data-inclusive steps with one pipeline."""
    import mxnet as mx

    import bmx
    from bmx import data as bdata

    start = time.perf_counter()
    options = {} if args.pipeline == "old" and args.baseline else {"loader": "gluon" if args.pipeline == "old"
                                                                      else "memory"}
    bundle = bdata.cifar10(args.data_dir, args.batch_size, val_size=5000, seed=0, num_workers=1, **options)
    setup_s = time.perf_counter() - start
    net = bmx.models.get_model(args.model, classes=10, stem=args.stem, binary=True)
    net.initialize(mx.init.Xavier(magnitude=2))
    net.hybridize(static_alloc=True, static_shape=True)
    forward, dtype = net, "float32"
    if args.pipeline == "new":
        from bmx import precision
        if precision.bfloat16_support()[0]:
            forward, dtype = precision.training_block(net, "bfloat16"), "bfloat16"
    step = _trainer_step(mx, net, forward, None, None, "radam", args.batch_size)
    batches = bundle.train.batches(0)
    times, data_times = [], []
    for i in range(args.warmup + args.data_steps):
        start = time.perf_counter()
        x, y = next(batches)
        x.wait_to_read()
        loaded = time.perf_counter()
        step(x, y)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            data_times.append(loaded - start)
    step_s = statistics.median(times)
    return {"pipeline": args.pipeline, "dtype": dtype, "loader": bundle.info.get("loader"), "setup_s": setup_s,
            "step_ms": 1e3 * step_s, "data_ms": 1e3 * statistics.median(data_times),
            "steps_per_epoch": len(bundle.train), "epoch_s": step_s * len(bundle.train)}


def child(args, mode, threads, extra=(), pythonpath=ROOT):
    """Runs a measurement in a new process that imports bmx from ``pythonpath``."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MXNET_CPU_WORKER_NTHREADS="1", PYTHONPATH=pythonpath)
    argv = [sys.executable, os.path.abspath(__file__), "--child", mode, "--threads", str(threads), *extra]
    for key in ("model", "stem", "image_size", "batch_size", "steps", "warmup", "data_steps"):
        argv += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{mode} measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(args, cpu, steps, epochs):
    print(f"{args.model} (stem {args.stem}), {args.image_size}x{args.image_size}, batch {args.batch_size}, hybridized; "
          f"CPU: {cpu}; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"steps: Adam, synthetic data, median of {args.steps} interleaved steps")
    print(f"{'threads':>7} {'dtype':>9} {'float ms':>9} {'binary ms':>10} {'binary img/s':>13} {'bin/float':>10}")
    for r in steps:
        for dtype in ("float32", "bfloat16"):
            if f"binary_{dtype}_ms" not in r:
                continue
            b, f = r[f"binary_{dtype}_ms"], r[f"float_{dtype}_ms"]
            print(f"{r['threads']:>7} {dtype:>9} {f:>9.1f} {b:>10.1f} {1e3 * args.batch_size / b:>13.1f} "
                  f"{b / f:>10.3f}")
        if r["bfloat16"]:
            print(f"{r['threads']:>7}  bfloat16 binary step speed-up over float32: "
                  f"{r['binary_float32_ms'] / r['binary_bfloat16_ms']:.2f}x (target >= 1.7); bf16 binary / bf16 "
                  f"float: {r['binary_bfloat16_ms'] / r['float_bfloat16_ms']:.3f} (target <= 1.15)")
        else:
            print(f"{r['threads']:>7}  bfloat16 not measured: {r['bfloat16_reason']}")
    if not epochs:
        return
    print(f"CIFAR-10 epoch with data loading ({args.threads[-1]} threads, binary, RAdam, median of {args.data_steps} "
          f"steps per measurement, {args.rounds} rounds old/new alternating)")
    print(f"{'pipeline':>8} {'loader':>7} {'dtype':>9} {'setup s':>8} {'data ms':>8} {'step ms':>8} {'epoch s':>8}")
    for r in epochs:
        print(f"{r['pipeline']:>8} {r['loader']:>7} {r['dtype']:>9} {r['setup_s']:>8.1f} {r['data_ms']:>8.1f} "
              f"{r['step_ms']:>8.1f} {r['epoch_s']:>8.0f}")
    old = statistics.median(r["epoch_s"] for r in epochs if r["pipeline"] == "old")
    new = statistics.median(r["epoch_s"] for r in epochs if r["pipeline"] == "new")
    print(f"epoch time old / new: {old / new:.2f}x (target >= 1.8; medians over rounds)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="binary_densenet28")
    parser.add_argument("--stem", default="cifar")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--data-dir", help="CIFAR-10 train.rec/train.idx: also measure data-inclusive epochs")
    parser.add_argument("--data-steps", type=int, default=20, help="timed steps per data-inclusive measurement")
    parser.add_argument("--rounds", type=int, default=2, help="old/new alternations of the data-inclusive part")
    parser.add_argument("--baseline", help="bmx checkout (extension built) whose CIFAR-10 pipeline is 'old'")
    parser.add_argument("--json", action="store_true", help="print one JSON object of results")
    parser.add_argument("--output", help="also write the results as JSON to this file")
    parser.add_argument("--child", choices=("steps", "data"), help=argparse.SUPPRESS)
    parser.add_argument("--pipeline", choices=("old", "new"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("steps", "data_steps", "rounds", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")

    if args.child:
        print(json.dumps(measure_steps(args) if args.child == "steps" else measure_data(args)))
        return

    steps = [child(args, "steps", threads) for threads in args.threads]
    # The parent does not import bmx (the children import it from ROOT or --baseline), so they say which CPU ran.
    cpu = [r.pop("cpu") for r in steps][0]
    epochs = []
    if args.data_dir:
        data = ["--data-dir", args.data_dir] + (["--baseline", args.baseline] if args.baseline else [])
        for _ in range(args.rounds):
            for pipeline in ("old", "new"):
                path = args.baseline if pipeline == "old" and args.baseline else ROOT
                epochs.append(child(args, "data", args.threads[-1], data + ["--pipeline", pipeline], path))
    results = {"cpu": cpu, "steps": steps, "epochs": epochs, "baseline": args.baseline}
    if args.output:
        with open(args.output + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(args.output + ".tmp", args.output)
    if args.json:
        print(json.dumps(results))
    else:
        report(args, cpu, steps, epochs)


if __name__ == "__main__":
    main()

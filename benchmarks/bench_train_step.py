"""Training-step cost of a binary net against its full-precision twin, measured in one run.

A step is forward + backward + optimizer update (Adam) of a hybridized net on one batch of
synthetic data. Both nets come from the zoo (``binary=True`` and ``binary=False``, the same graph
with plain layers); their steps are timed alternately so that both see the same machine state, and
the median of the step times is compared. Target: binary step <= 1.25x the float step.

    python benchmarks/bench_train_step.py [--model binary_densenet28] [--stem cifar]
        [--image-size 32] [--batch-size 64] [--threads 1 2] [--steps 10] [--json]

Each thread count runs in its own process (OMP_NUM_THREADS must be set before MXNet starts).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure(args):
    """Runs in the child process: returns the timings of both nets as a dict."""
    import mxnet as mx

    import bmx

    def make_step(binary):
        net = bmx.models.get_model(args.model, classes=10, stem=args.stem, binary=binary)
        net.initialize(mx.init.Xavier(magnitude=2))
        net.hybridize(static_alloc=True, static_shape=True)
        trainer = mx.gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 1e-3})
        loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
        x = mx.nd.random.normal(shape=(args.batch_size, 3, args.image_size, args.image_size))
        y = mx.nd.random.randint(0, 10, shape=(args.batch_size,)).astype("float32")

        def step():
            with mx.autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(args.batch_size)
            mx.nd.waitall()
        return step

    steps = {"float": make_step(False), "binary": make_step(True)}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    float_s, binary_s = statistics.median(times["float"]), statistics.median(times["binary"])
    return {"threads": args.threads[0], "float_ms": 1e3 * float_s, "binary_ms": 1e3 * binary_s,
            "ratio": binary_s / float_s, "float_img_s": args.batch_size / float_s,
            "binary_img_s": args.batch_size / binary_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="binary_densenet28")
    parser.add_argument("--stem", default="cifar")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON list of results")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args)))
        return

    results = []
    for threads in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MXNET_CPU_WORKER_NTHREADS="1")
        argv = [sys.executable, os.path.abspath(__file__), "--child", "--threads", str(threads)]
        for key in ("model", "stem", "image_size", "batch_size", "steps", "warmup"):
            argv += ["--" + key.replace("_", "-"), str(getattr(args, key))]
        out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(results))
        return
    print(f"{args.model} (stem {args.stem}), {args.image_size}x{args.image_size}, batch {args.batch_size}, "
          f"Adam, hybridized; CPU: {cpu_model()}; median of {args.steps} steps")
    print(f"{'threads':>7} {'float ms':>9} {'binary ms':>10} {'float img/s':>12} {'binary img/s':>13} {'ratio':>6}")
    for r in results:
        print(f"{r['threads']:>7} {r['float_ms']:>9.1f} {r['binary_ms']:>10.1f} {r['float_img_s']:>12.1f} "
              f"{r['binary_img_s']:>13.1f} {r['ratio']:>6.3f}")
    print("target: ratio <= 1.25")


if __name__ == "__main__":
    main()

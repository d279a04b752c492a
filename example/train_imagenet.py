#!/usr/bin/env python
"""Train a bmx zoo model on ImageNet or CIFAR-10, or measure its training speed.

    python example/train_imagenet.py                      # = --benchmark: speed on synthetic data
    python example/train_imagenet.py --model binary_densenet28 --data-dir ~/imagenet --output-dir runs/bdn28
    python example/train_imagenet.py --dataset cifar10 --data-dir DIR --model binary_densenet28 \\
        --output-dir runs/c10 --epochs 100                # stem 'cifar' by default for CIFAR-10
    python example/train_imagenet.py ... --output-dir runs/bdn28 --resume   # same command + --resume

Defaults are the later published recipe: RAdam (beta1 0.95), lr 0.002, cosine decay to 0 over
120 epochs, no weight decay, t_clip 1.3, He initialization (Gaussian, fan-in, magnitude 2),
random-resized-crop + flip. The paper-era recipe is --optimizer adam --lr 0.001 --lr-mode step
--lr-steps 30,38 --epochs 40 --clip-threshold 1.0 --augment crop. docs/reproduce.md lists the
command of every published result.

--output-dir receives a checkpoint every epoch, best.params, metrics.csv, curves.png, train.log and,
at the end, the exported model (model-symbol.json, model-0000.params, model.json) that
example/evaluate.py and tools/binarize_model.py read. --resume (with otherwise the same command)
continues after the last completed epoch with the same schedule, optimizer state and data order;
with the Gluon and in-memory readers (image folders, CIFAR-10, --loader gluon) the result is
bit-identical to an uninterrupted run. tools/carry_run.py moves the last checkpoint to another machine
in one file of half the size (float32 rounded to bfloat16: close to, not bit-identical with, an
unbroken run). CIFAR-10 is decoded once into memory and augmented a batch at a
time (--loader memory, the default for --dataset cifar10); --loader gluon reads it image by image.

--dtype bfloat16 (CPUs with AVX-512 BF16, e.g. AMD Zen 4, Intel Sapphire Rapids) runs convolutions and
dense layers in bfloat16 with float32 weights, optimizer state and BatchNorm statistics (see
bmx/precision.py); checkpoints, --resume and the exported model are float32 as without it. On a CPU
without AVX-512 BF16 it stops with an error saying so.

--kv-store says how the gradients of several devices are combined: local (summed on the CPU),
device (summed on the GPUs; faster with several GPUs); with one device neither is used.

Several machines (docs/distributed.md): --kv-store dist_sync or dist_device_sync (synchronous; the
second sums a worker's GPUs on the GPUs, like device) or dist_async, MXNet's parameter server, with
the processes started by tools/launch.py, e.g. on one machine

    python tools/launch.py -n 2 -s 1 python example/train_imagenet.py --kv-store dist_sync \
        --dataset cifar10 --data-dir DIR --output-dir runs/c10 ...

Each worker reads its own part of the training data. --batch-size stays per device: with the
synchronous kinds the global batch of a step is workers x devices x batch size, the gradient is
averaged over it, and --lr is the rate for that global batch (nothing is rescaled when the number
of workers changes; an epoch has workers times fewer steps). With dist_async each worker's
gradient (averaged over its own devices x batch size) is applied by the servers as it arrives.
Only worker 0 validates and writes --output-dir; --resume needs that directory on a filesystem
every machine sees, and the same number of workers.

Distillation: --teacher DIR (a model this script exported, e.g. the full-precision twin trained
first) or --teacher gluoncv:NAME --teacher-params FILE adds the KL divergence to the teacher's
softened outputs on the same augmented batch to the loss (--distill-temperature,
--distill-weight); the teacher runs in inference mode in --dtype, and its share of the time shows in
the progress bar, the log and metrics.csv (teacher_s).
"""
import argparse
import json
import logging
import os
import sys

import bmx
from bmx import data as bdata
from bmx import distillation, losses, precision, run_checks, training
from bmx.quantizer_math import check_clip_threshold
from bmx.recipes import DEFAULT_RECIPE

# Keeps the default benchmark (binary_densenet28, 224x224, 2 + 20 steps) under a minute on a 2-core
# CPU, where training runs at 1-3 images/s.
BENCHMARK_BATCH = 4
TRAIN_BATCH = 64

KNOBS = {  # get_model keyword -> value type; passed to the model family unchanged
    "growth_rate": int, "init_features": int, "layers": "ints", "reduction": "floats",
    "transition_channels": "ints", "dilation": "ints", "channels": "ints", "downsample": str,
    "bottleneck": int,
}


def _list(kind):
    convert = int if kind == "ints" else float

    def parse(text):
        try:
            return tuple(convert(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind}, got {text!r}") from None
    return parse


def _clip_threshold(text):
    try:
        return check_clip_threshold(float(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=("imagenet", "cifar10"), default="imagenet")
    g.add_argument("--data-dir", help="imagenet: train.rec/train.idx/val.rec/val.idx or train/ and val/ "
                   "class folders; cifar10: train.rec/train.idx (+ test.rec/test.idx if present). "
                   "Without it the script runs --benchmark.")
    g.add_argument("--benchmark", action="store_true",
                   help="measure training speed on synthetic data (no files), print images/s and the projected "
                   f"time of one epoch, and exit; default batch {BENCHMARK_BATCH}, so that the default model at "
                   "224x224 finishes in about a minute on 2 CPU cores")
    g.add_argument("--benchmark-iters", type=int, default=20, help="timed steps of --benchmark (default 20, "
                   "after 2 untimed warm-up steps)")
    g.add_argument("--image-size", type=int, help="input side (default 224; CIFAR-10 is always 32)")
    g.add_argument("--augment", choices=bdata.AUGMENTATIONS, default=DEFAULT_RECIPE.augment,
                   help="imagenet training augmentation: resized-crop (area 8-100%%, aspect 3/4-4/3, flip; "
                   "later recipe) or crop (resize 256, random 224 crop, flip; paper recipe). "
                   "CIFAR-10 always uses pad 4 + random crop + flip.")
    g.add_argument("--loader", choices=sorted(set(bdata.LOADERS + bdata.CIFAR10_LOADERS)),
                   help="imagenet RecordIO reader: record-iter (default; mx.io.ImageRecordIter, fast) or gluon "
                   "(bit-reproducible resume, names corrupt records); image folders always use gluon. cifar10: "
                   "memory (default; records decoded once into memory, batches augmented with numpy) or gluon "
                   "(decodes and augments image by image every epoch)")
    g.add_argument("--classes", type=int, help="classes of an imagenet RecordIO set (default 1000; image "
                   "folders count their sub-folders, CIFAR-10 has 10)")
    g.add_argument("--val-size", type=int, default=5000,
                   help="cifar10: training images held out for validation with a fixed seed (default 5000)")
    g.add_argument("--num-workers", type=int, help="decoding threads/processes (default: CPU count up to 8 "
                   "for imagenet, 0 for cifar10)")

    g = p.add_argument_group("model")
    g.add_argument("--model", default="binary_densenet28",
                   help=f"zoo model (default binary_densenet28): {', '.join(bmx.models.list_models())}")
    g.add_argument("--stem", choices=bmx.models.common.STEMS,
                   help="default: the model's ('imagenet'), 'cifar' for --dataset cifar10")
    g.add_argument("--float", dest="binary", action="store_false",
                   help="train the full-precision twin (ReLU and plain convs in place of sign and binary convs)")
    g.add_argument("--clip-threshold", type=_clip_threshold, default=DEFAULT_RECIPE.clip_threshold,
                   help="t_clip of the sign's straight-through estimator (1.3 later recipe, 1.0 paper)")
    g.add_argument("--initialization", choices=training.INITIALIZATIONS, default="he",
                   help="he: Gaussian, fan-in, magnitude 2 (published); xavier: uniform, average, magnitude 3")
    g.add_argument("--activation", choices=("det_sign", "approx_sign"),
                   help="binary activation (bmx.binary_layer_config; default det_sign)")
    g.add_argument("--apply-scaling", action="store_true", help="scale binary conv outputs by mean |W|")
    g.add_argument("--bits", type=int, help="weight bits (default 1)")
    g.add_argument("--bits-a", type=int, help="activation bits (default 1)")
    for name, kind in KNOBS.items():
        g.add_argument("--" + name.replace("_", "-"), type=_list(kind) if isinstance(kind, str) else kind,
                       help=f"model knob {name} ({'comma-separated ' + kind if isinstance(kind, str) else 'value'})")

    g = p.add_argument_group("recipe")
    g.add_argument("--optimizer", choices=training.OPTIMIZERS, default=DEFAULT_RECIPE.optimizer)
    g.add_argument("--lr", type=float, default=DEFAULT_RECIPE.lr,
                   help="base learning rate for the total batch (default %(default)s)")
    g.add_argument("--lr-mode", choices=training.LR_MODES, default=DEFAULT_RECIPE.lr_mode)
    g.add_argument("--lr-steps", type=_list("floats"), default=(), help="step mode: epochs to decay at, e.g. 30,38")
    g.add_argument("--lr-factor", type=float, default=0.1, help="step mode: decay factor (default 0.1)")
    g.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warmup from 0 (default 0)")
    g.add_argument("--epochs", type=int, default=DEFAULT_RECIPE.epochs)
    g.add_argument("--batch-size", type=int, help=f"images per device (default {TRAIN_BATCH}; "
                   f"{BENCHMARK_BATCH} with --benchmark)")
    g.add_argument("--wd", type=float, default=0.0, help="weight decay (never on BatchNorm or binary weights)")
    g.add_argument("--beta1", type=float, help="Adam/RAdam beta1 (default 0.95 radam, 0.9 adam)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--dtype", choices=precision.DTYPES, default="float32",
                   help="bfloat16 (CPU with AVX-512 BF16): convolutions and dense layers in bfloat16, float32 "
                   "weights, optimizer state and BatchNorm statistics; float16 (GPU only) casts the net and keeps "
                   "float32 master weights in the optimizer. The exported model is float32.")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--label-smoothing", type=float, default=losses.DEFAULT_LABEL_SMOOTHING,
                   help="eps: cross-entropy to (1 - eps) onehot + eps / classes (default 0: none)")

    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", help="learn from a teacher's softened outputs too: a model directory exported by "
                   "this script (e.g. the full-precision twin), or gluoncv:NAME (a gluoncv model-zoo network, "
                   "with --teacher-params)")
    g.add_argument("--teacher-params", help="parameter file of a gluoncv:NAME teacher (nothing is downloaded)")
    g.add_argument("--distill-temperature", type=float, default=distillation.DEFAULT_TEMPERATURE,
                   help=f"softmax temperature T of teacher and student (default {distillation.DEFAULT_TEMPERATURE})")
    g.add_argument("--distill-weight", type=float, default=distillation.DEFAULT_WEIGHT,
                   help="weight w of the KL term: loss = (1 - w) CE + w T^2 KL "
                   f"(default {distillation.DEFAULT_WEIGHT})")

    g = p.add_argument_group("run")
    g.add_argument("--ctx", default="cpu", help="cpu, or gpu:0,1,... (the batch is split over the GPUs)")
    g.add_argument("--kv-store", default="local",
                   help="gradient aggregation: local (on the CPU), device (on the GPUs), or dist_sync / "
                   "dist_device_sync / dist_async (parameter server; start the job with tools/launch.py)")
    g.add_argument("--output-dir", help="checkpoints, metrics, log and the exported model (required to train)")
    g.add_argument("--resume", action="store_true", help="continue the run in --output-dir (same settings)")
    g.add_argument("--checkpoint-minutes", type=float,
                   help="also checkpoint inside an epoch every this many minutes (default: at epoch ends only); "
                   "--resume continues from that step")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")
    return p


def model_kwargs(args):
    kwargs = {name: getattr(args, name) for name in KNOBS if getattr(args, name) is not None}
    stem = args.stem or ("cifar" if args.dataset == "cifar10" else None)
    if stem:
        kwargs["stem"] = stem
    return kwargs


def layer_config(args):
    options = dict(activation=args.activation, bits=args.bits, bits_a=args.bits_a,
                   apply_scaling=True if args.apply_scaling else None)
    return {k: v for k, v in options.items() if v is not None}


def run_benchmark(args, recipe, net, ctx, kv, rank, workers):
    size = args.image_size or (32 if args.dataset == "cifar10" else 224)
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"benchmark: {args.model} ({'binary' if args.binary else 'full-precision twin'}), {size}x{size}, "
        f"batch {recipe.batch_size} x {len(ctx)} device(s) x {workers} worker(s), {recipe.optimizer}, "
        f"{args.benchmark_iters} steps, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)
    result = training.benchmark(net, recipe, size, args.classes or 1000, iters=args.benchmark_iters, ctx=ctx,
                                kvstore=kv, init=args.initialization, progress=args.progress and rank == 0)
    if args.dataset == "cifar10":
        epoch_images, what = 50000 - args.val_size, "CIFAR-10 epoch"
    else:
        epoch_images = bdata.IMAGENET_TRAIN_IMAGES
        what = "ImageNet epoch" + ("" if size == 224 else f" at {size}x{size}")
    hours = epoch_images / result["images_per_s"] / 3600
    result.update(model=args.model, binary=args.binary, image_size=size, dataset=args.dataset,
                  epoch_images=epoch_images, epoch_h=hours)
    say(f"{result['images_per_s']:.2f} images/s ({result['step_s']:.2f} s per step); one {what} "
        f"({epoch_images:,} images) would take {hours:.2f} h")
    say(json.dumps(result))


def load_data(args, batch_size, num_parts=1, part_index=0):
    part = dict(num_parts=num_parts, part_index=part_index)
    if args.dataset == "cifar10":
        if args.image_size not in (None, 32):
            raise bdata.DataError("CIFAR-10 images are 32x32; drop --image-size")
        return bdata.cifar10(args.data_dir, batch_size, val_size=args.val_size, seed=args.seed,
                             num_workers=args.num_workers or 0, loader=args.loader or "memory", **part)
    workers = args.num_workers if args.num_workers is not None else min(8, os.cpu_count() or 1)
    return bdata.imagenet(args.data_dir, batch_size, image_size=args.image_size or 224, augment=args.augment,
                          loader=args.loader or "record-iter", classes=args.classes or 1000, seed=args.seed,
                          num_workers=workers, **part)


def distillation_settings(args, parser):
    """The run's :class:`bmx.distillation.Distillation`, or None without --teacher."""
    if args.teacher is None:
        for flag in ("teacher_params", "distill_temperature", "distill_weight"):
            if getattr(args, flag) != parser.get_default(flag):
                raise ValueError(f"--{flag.replace('_', '-')} needs --teacher")
        return None
    teacher = args.teacher
    if not teacher.startswith(distillation.GLUONCV_PREFIX):
        teacher = os.path.abspath(teacher)  # the config compares it on --resume, from any working directory
    params = os.path.abspath(args.teacher_params) if args.teacher_params else None
    return distillation.Distillation(teacher, params, args.distill_temperature, args.distill_weight)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    benchmark = args.benchmark or args.data_dir is None
    for name, low in (("benchmark_iters", 1), ("image_size", 1), ("classes", 1), ("val_size", 0),
                      ("num_workers", 0), ("batch_size", 1), ("epochs", 1), ("bits", 1), ("bits_a", 1), ("seed", 0)):
        value = getattr(args, name)
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    if not benchmark and not args.output_dir:
        parser.error("--output-dir is required to train (checkpoints, metrics and the exported model go there)")
    try:
        ctx = training.parse_ctx(args.ctx)
        # A parameter-server kvstore exists before the data: its rank says which part this worker reads.
        kv = training.create_kvstore(args.kv_store)
        rank, workers = (0, 1) if isinstance(kv, str) else (kv.rank, kv.num_workers)
        if workers > 1:
            for handler in logging.getLogger().handlers:
                handler.setFormatter(logging.Formatter(f"[worker {rank}] %(message)s"))
        batch = args.batch_size if args.batch_size is not None else (BENCHMARK_BATCH if benchmark else TRAIN_BATCH)
        recipe = training.Recipe(optimizer=args.optimizer, lr=args.lr, lr_mode=args.lr_mode, lr_steps=args.lr_steps,
                                 lr_factor=args.lr_factor, warmup_epochs=args.warmup_epochs, epochs=args.epochs,
                                 batch_size=batch, wd=args.wd, beta1=args.beta1, momentum=args.momentum,
                                 dtype=args.dtype, seed=args.seed, label_smoothing=args.label_smoothing)
        precision.check(recipe.dtype, ctx)  # before the data is read
        distill = distillation_settings(args, parser)
        data = None if benchmark else load_data(args, batch, workers, rank)
        classes = data.classes if data else (args.classes or (10 if args.dataset == "cifar10" else 1000))
        kwargs = model_kwargs(args)
        net = training.build_model(args.model, classes, binary=args.binary, clip_threshold=args.clip_threshold,
                                   layer_config=layer_config(args), **kwargs)
    except (ValueError, TypeError) as err:  # bmx.data.DataError is a ValueError
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    if benchmark:
        run_benchmark(args, recipe, net, ctx, kv, rank, workers)
        return 0
    config = dict(model=args.model, model_kwargs=kwargs, binary=args.binary, clip_threshold=args.clip_threshold,
                  layer_config=layer_config(args), dataset=args.dataset, image_size=data.preprocessing.image_size,
                  augment=data.info["augment"], loader=data.info["loader"], classes=classes, val_size=args.val_size,
                  devices=len(ctx), kv_store=args.kv_store)
    try:
        run = training.Run(net, data, recipe, args.output_dir, config=config, ctx=ctx, kvstore=kv,
                           resume=args.resume, init=args.initialization, progress=args.progress,
                           distillation=distill, checkpoint_minutes=args.checkpoint_minutes)
    except ValueError as err:  # ResumeError, or settings the run cannot use
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    try:
        state = run.fit()
    except (bdata.DataError, run_checks.DivergedError) as err:  # a corrupt record, or a NaN loss
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if run.checkpoint_step:
            done = f"in epoch {run.epoch + 1} (last checkpoint at its step {run.checkpoint_step})"
        else:
            done = f"after epoch {run.epoch}" if run.epoch else "in epoch 1 (no epoch had finished)"
        print(f"\ninterrupted {done}; the same command plus --resume continues from the last checkpoint"
              + ("" if run.epoch or run.checkpoint_step else " (that is, starts epoch 1 again)"), file=sys.stderr)
        return 130
    if rank != 0:
        return 0
    final = state["history"][-1] if state["history"] else {}
    print(json.dumps({"output_dir": args.output_dir, "epochs": state["epoch"], "val_top1": final.get("val_top1"),
                      "val_top5": final.get("val_top5"), "best": state["best"], "test": state.get("test")}))
    return 0


if __name__ == "__main__":
    training.exit_process(main())

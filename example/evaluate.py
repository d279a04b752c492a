#!/usr/bin/env python
"""Top-1/top-5 of a model exported by train_imagenet.py, printed as one JSON object.

    python example/evaluate.py --model-dir runs/bdn28 --data ~/imagenet/val.rec
    python example/evaluate.py --model-dir runs/bdn28 --data ~/imagenet/val          # image folders
    python example/evaluate.py --model-dir runs/c10 --data DIR/train.rec --holdout   # CIFAR-10 hold-out
    python example/evaluate.py --packed example/pretrained/bdn28-cifar10 --data DIR/train.rec --holdout

The model is OUT/model-symbol.json + OUT/model-0000.params (loaded with bmx.imports); OUT/model.json
gives its preprocessing (input size, resize, mean/std), which is applied to every image: shorter
side resized, center crop, normalization. ``--packed DIR`` evaluates a bit-packed model made by
tools/binarize_model.py instead, run by bmx.runtime (the xnor-popcount kernels, not MXNet) on
images read with numpy and OpenCV (bmx.datafiles): that path needs no mxnet installed.
"""
import argparse
import json
import math
import os
import sys

import numpy as np

from bmx import datafiles, images
from bmx import packed as bpacked


def load_model_dir(model_dir, ctx):
    """(net, metadata) of a train_imagenet.py output directory; its model.json's preprocessing and
    classes are validated, and its parameters must be finite."""
    import bmx

    meta_path = os.path.join(model_dir, "model.json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise bmx.ModelFileError(f"{meta_path}: not found (expected the output directory of a finished "
                                 "example/train_imagenet.py run: model-symbol.json, model-0000.params, "
                                 "model.json)") from None
    except ValueError as err:
        raise bmx.ModelFileError(f"{meta_path}: not valid JSON ({err})") from None
    check_meta(meta, meta_path)
    params_path = os.path.join(model_dir, "model-0000.params")
    net = bmx.imports(os.path.join(model_dir, "model-symbol.json"), params_path, ctx=ctx)
    for name, param in net.collect_params().items():
        if not np.isfinite(param.data(ctx[0]).asnumpy()).all():
            raise bmx.ModelFileError(f"{params_path}: parameter {name} holds non-finite values (NaN or infinity)")
    net.hybridize(static_alloc=True)
    return net, meta


def check_meta(meta, meta_path):
    """The model.json fields evaluation relies on: preprocessing and a positive class count."""
    if not isinstance(meta, dict) or "preprocessing" not in meta:
        raise bpacked.PackedFormatError(f"{meta_path}: no 'preprocessing' entry (expected the model.json of "
                                        "example/train_imagenet.py)")
    bpacked.check_preprocessing(meta["preprocessing"], meta_path, meta)
    classes = meta.get("classes")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise bpacked.PackedFormatError(f"{meta_path}: classes must be a positive integer, got {classes!r}")


def load_packed(model_dir, threads=None):
    from bmx import runtime

    model = runtime.load(model_dir, threads=threads)
    check_meta(model.meta, os.path.join(model_dir, "model.json"))
    return model, model.meta


def score_packed(model, path, indices, batch_size):
    """Loss (softmax cross-entropy), top-1 and top-5 of a bmx.runtime model, as training.evaluate
    reports them, on a .rec file (the records at ``indices``, or all) or a class-folder directory."""
    read = datafiles.image_readers(path, None if os.path.isdir(path) else indices)
    classes = model.meta["classes"]
    k = min(5, classes)
    top1 = topk = 0
    loss = 0.0
    for start in range(0, len(read), batch_size):
        pictures, labels = zip(*(load() for load in read[start:start + batch_size]))
        x = np.concatenate([images.evaluation_input(p, model.meta["preprocessing"]) for p in pictures])
        logits = model(x).astype(np.float64)
        labels = np.asarray(labels)
        outside = labels[(labels < 0) | (labels >= classes)]
        if outside.size:
            raise datafiles.DataError(f"{path}: label {outside[0]} is outside the model's {classes} classes")
        shifted = logits - logits.max(axis=1, keepdims=True)
        loss += float(np.sum(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(labels)), labels]))
        top1 += int(np.sum(logits.argmax(axis=1) == labels))
        topk += int(np.sum(np.argsort(-logits, axis=1, kind="stable")[:, :k] == labels[:, None]))
    n = len(read)
    return {"loss": loss / n, "top1": top1 / n, "top5": topk / n, "images": n}


def holdout(args, meta, count_records):
    """The record indices of --holdout (None without it); count_records(path) checks the file and
    counts its records, which must be the training file of the run (check_training_file)."""
    if not args.holdout:
        return None
    val_size = meta["data"].get("val_size")
    if not val_size:
        raise ValueError(f"{args.packed or args.model_dir} was not trained with a hold-out "
                         "(no val_size in model.json)")
    if os.path.isdir(args.data):
        raise ValueError("--holdout applies to RecordIO files only")
    total = count_records(args.data)
    check_training_file(args.data, total, meta["data"], args.packed or args.model_dir)
    return datafiles.heldout_indices(total, val_size, meta["data"]["split_seed"])


def evaluate_model_dir(args):
    """Scores of a train_imagenet.py output directory, run by MXNet."""
    import mxnet as mx

    from bmx import data as bdata
    from bmx import training

    try:
        ctx = training.parse_ctx(args.ctx)
        net, meta = load_model_dir(args.model_dir, ctx)
        indices = holdout(args, meta, bdata.check_recordio)
        prep = bdata.Preprocessing.from_dict(meta["preprocessing"])
        split = bdata.evaluation_split(args.data, prep, args.batch_size, indices=indices, num_workers=args.num_workers)
        return training.evaluate(net, split, meta["classes"], ctx)
    except mx.MXNetError as err:
        raise ValueError(str(err)) from None


def check_training_file(path, total, info, model_dir):
    """--holdout: ``path`` must be the training file the run held its validation images out of (the
    record count and fingerprint in model.json); a run that predates these records gets a warning."""
    source = f"{os.path.join(model_dir, 'model.json')} (data.train_records, data.train_fingerprint)"
    if info.get("train_records") is None:
        if total <= info["val_size"]:
            raise ValueError(f"{path}: {total} records, not more than the {info['val_size']} the run held out: "
                             "not the file it was trained on")
        print(f"evaluate.py: warning: {source} does not record the training file (a run of an older bmx): "
              f"cannot check that {path} is the file the hold-out came from", file=sys.stderr)
        return
    if total != info["train_records"]:
        raise ValueError(f"{path}: {total} records, but the run held out its validation images from a training file "
                         f"of {info['train_records']} records ({source}): --holdout needs that file")
    if info.get("train_fingerprint") not in (None, datafiles.fingerprint(path)):
        raise ValueError(f"{path}: not the training file the run held out from (its fingerprint differs from "
                         f"{source}): --holdout needs that file")


def main(argv=None):
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-dir", help="output directory of train_imagenet.py")
    which.add_argument("--packed", metavar="DIR", help="a packed model directory (tools/binarize_model.py --output)")
    p.add_argument("--data", required=True, help="a .rec file (its .idx beside it) or a directory of class folders")
    p.add_argument("--holdout", action="store_true",
                   help="evaluate only the records the run held out for validation (CIFAR-10 train.rec)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ctx", default="cpu", help="cpu or gpu:0,1,...")
    p.add_argument("--num-workers", type=int, default=0, help="--model-dir: decoding processes (0: in this process)")
    p.add_argument("--threads", type=int, help="--packed: threads of the binary kernels (default: all cores)")
    args = p.parse_args(argv)
    for name, low in (("batch_size", 1), ("num_workers", 0), ("threads", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            p.error(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    try:
        if args.packed:
            model, meta = load_packed(args.packed, args.threads)
            indices = holdout(args, meta, lambda path: len(datafiles.read_index(path)[0]))
            scores = score_packed(model, args.data, indices, args.batch_size)
        else:
            scores = evaluate_model_dir(args)
        if not math.isfinite(scores["loss"]):
            raise ValueError(f"{args.packed or args.model_dir}: the model's outputs on {args.data} are not finite "
                             "(NaN or infinity), so its scores mean nothing")
    except ValueError as err:  # DataError, ModelFileError and PackedFormatError are ValueErrors
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(dict(top1=scores["top1"], top5=scores["top5"], loss=scores["loss"], images=scores["images"],
                          model_dir=args.packed or args.model_dir, packed=bool(args.packed), data=args.data,
                          holdout=args.holdout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

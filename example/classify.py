#!/usr/bin/env python
"""Top-5 classes of images, from a bit-packed model run by bmx.runtime (no MXNet needed).

    python tools/binarize_model.py runs/c10 --output packed/c10      # once: pack a trained model
    python example/classify.py --model packed/c10 cat.jpg ship.png
    python example/classify.py --model example/pretrained/bdn28-cifar10 --json img.jpg

Each image gets the model's evaluation transform from its model.json (shorter side resized, center
crop, normalization). A model trained on images of its input size (model.json ``resize`` 0, as for
CIFAR-10) gets larger photos with their shorter side resized to that size first, so that the crop
sees the whole scene; ``--json`` states the transform applied to each image. Class names come from
model.json (``class_names``, or ``data.class_names`` for CIFAR-10 runs); otherwise classes are
shown by index.
"""
import argparse
import json
import sys

import numpy as np

from bmx import images, runtime


def class_names(meta, classes):
    names = meta.get("class_names") or meta.get("data", {}).get("class_names")
    if names and len(names) == classes:
        return list(names)
    return [f"class {i}" for i in range(classes)]


def preprocessing_for(image, prep):
    """model.json's preprocessing for ``image``: with ``resize`` 0, an image larger than the input
    has its shorter side resized to the input size (a center crop alone would show a small patch)."""
    side = prep.get("resize", 0)
    if not side and min(image.shape[:2]) > prep["image_size"]:
        side = prep["image_size"]
    return dict(prep, resize=side)


def describe(image, prep):
    """The transform, as --json reports it."""
    return dict(image_height=image.shape[0], image_width=image.shape[1], resize_shorter_side=prep["resize"] or None,
                center_crop=prep["image_size"], mean=prep["mean"], std=prep["std"])


def top_classes(logits, names, k):
    """[(name, probability), ...] of the k most probable classes of one row of logits."""
    z = logits.astype(np.float64) - logits.max()
    p = np.exp(z) / np.exp(z).sum()
    order = np.argsort(-p, kind="stable")[:k]
    return [(names[i], float(p[i])) for i in order]


def main(argv=None):
    p = argparse.ArgumentParser(prog="classify.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="packed model directory (tools/binarize_model.py --output)")
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    p.add_argument("--top", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--threads", type=int, help="threads of the binary kernels (default: OMP_NUM_THREADS or all cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image instead of a table")
    args = p.parse_args(argv)
    if args.top < 1:
        p.error(f"--top must be >= 1, got {args.top}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    try:
        model = runtime.load(args.model, threads=args.threads)
        prep = model.meta.get("preprocessing")
        if not prep:
            raise ValueError(f"{args.model}: model.json has no 'preprocessing' entry, so the input transform "
                             "is unknown (pack a model exported by example/train_imagenet.py)")
        results = []
        for path in args.images:
            image = images.read_rgb(path)
            applied = preprocessing_for(image, prep)
            with np.errstate(over="ignore", invalid="ignore"):  # reported below, by image
                logits = model(images.evaluation_input(image, applied))[0]
            if not np.isfinite(logits).all():
                raise ValueError(f"{path}: the model's outputs are not finite (NaN or infinity): "
                                 f"{args.model} does not give meaningful scores")
            names = class_names(model.meta, logits.shape[0])
            results.append((path, top_classes(logits, names, min(args.top, logits.shape[0])), describe(image, applied)))
    except ValueError as err:  # runtime.load's PackedFormatError is a ValueError
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 2
    for path, top, applied in results:
        if args.json:
            print(json.dumps(dict(image=path, top=[dict(label=n, probability=round(q, 6)) for n, q in top],
                                  preprocessing=applied), allow_nan=False))
        else:
            print(path)
            for name, q in top:
                print(f"  {100 * q:6.2f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

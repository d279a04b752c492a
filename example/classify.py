#!/usr/bin/env python
"""Top-5 classes of images, from a bit-packed model run by bmx.runtime (no MXNet needed).

    python tools/binarize_model.py runs/c10 --output packed/c10      # once: pack a trained model
    python example/classify.py --model packed/c10 cat.jpg ship.png
    python example/classify.py --model example/pretrained/bdn28-cifar10 --json img.jpg

Each image gets the model's evaluation transform from its model.json (shorter side resized, center
crop, normalization). Class names come from model.json (``class_names``, or ``data.class_names``
for CIFAR-10 runs); otherwise classes are shown by index.
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


def top_classes(logits, names, k):
    """[(name, probability), ...] of the k most probable classes of one row of logits."""
    z = logits.astype(np.float64) - logits.max()
    p = np.exp(z) / np.exp(z).sum()
    order = np.argsort(-p, kind="stable")[:k]
    return [(names[i], float(p[i])) for i in order]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="packed model directory (tools/binarize_model.py --output)")
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    p.add_argument("--top", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--threads", type=int, help="threads of the binary kernels (default: OMP_NUM_THREADS or all cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image instead of a table")
    args = p.parse_args(argv)
    if args.top < 1:
        p.error(f"--top must be >= 1, got {args.top}")
    try:
        model = runtime.load(args.model, threads=args.threads)
        prep = model.meta.get("preprocessing")
        if not prep:
            raise ValueError(f"{args.model}: model.json has no 'preprocessing' entry, so the input transform "
                             "is unknown (pack a model exported by example/train_imagenet.py)")
        results = []
        for path in args.images:
            logits = model(images.evaluation_input(images.read_rgb(path), prep))[0]
            names = class_names(model.meta, logits.shape[0])
            results.append((path, top_classes(logits, names, min(args.top, logits.shape[0]))))
    except ValueError as err:  # runtime.load's PackedFormatError is a ValueError
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 2
    for path, top in results:
        if args.json:
            print(json.dumps(dict(image=path, top=[dict(label=n, probability=round(q, 6)) for n, q in top])))
        else:
            print(path)
            for name, q in top:
                print(f"  {100 * q:6.2f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

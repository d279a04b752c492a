"""CI: a packed model's outputs in one environment against another's (runtime-only vs full install).

    python .ci/packed_outputs.py write MODEL DIR     # in the full install
    python .ci/packed_outputs.py compare MODEL DIR [--evaluate JSON]   # in the runtime-only one

`write` makes seeded random images: DIR/image.png, DIR/images.rec + .idx (with mxnet's writer,
labels 0..9) and DIR/inputs.npy, the images put through the model's own evaluation transform
(bmx.images), so that both environments see exactly the same float32 batch; it writes the
model's logits to DIR/outputs.npy. `compare` runs DIR/inputs.npy here and compares with
DIR/outputs.npy; with --evaluate, also the scores that `example/evaluate.py --packed` printed here
(JSON) with those in DIR/evaluate.json (the full install's). It exits 1 when an output or score
differs by more than float tolerance or a predicted class changes, and 2 when mxnet is
importable (the runtime-only environment must not have it).
"""
import argparse
import importlib.abc
import importlib.util
import json
import os
import sys

import numpy as np

IMAGES = 16
# Both runs use the same kernels on the same machine; only numpy (and its BLAS) differ.
RTOL, ATOL = 1e-4, 1e-4


def make_inputs(meta, directory):
    import cv2
    import mxnet as mx

    from bmx import images

    side = int(meta["preprocessing"]["image_size"])
    pictures = np.random.RandomState(0).randint(0, 256, size=(IMAGES, side, side, 3)).astype(np.uint8)
    batch = np.concatenate([images.evaluation_input(p, meta["preprocessing"]) for p in pictures])
    np.save(os.path.join(directory, "inputs.npy"), batch)
    cv2.imwrite(os.path.join(directory, "image.png"), pictures[0][:, :, ::-1])  # OpenCV writes BGR
    writer = mx.recordio.MXIndexedRecordIO(os.path.join(directory, "images.idx"),
                                           os.path.join(directory, "images.rec"), "w")
    for i, picture in enumerate(pictures):
        header = mx.recordio.IRHeader(0, float(i % 10), i, 0)
        writer.write_idx(i, mx.recordio.pack_img(header, picture[:, :, ::-1], img_fmt=".png"))
    writer.close()
    return batch


def same_scores(path, reference):
    """The scores example/evaluate.py printed (JSON files) agree: counts and accuracies exactly."""
    with open(path) as f, open(reference) as g:
        got, want = json.load(f), json.load(g)
    print(f"packed_outputs: evaluate.py here {got}")
    return all(got[k] == want[k] for k in ("images", "top1", "top5")) and \
        np.isclose(got["loss"], want["loss"], rtol=RTOL, atol=ATOL)


class MxnetImports(importlib.abc.MetaPathFinder):
    """Records every attempt to import mxnet: the runtime-only install must not even try."""

    def __init__(self):
        self.attempts = []

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "mxnet":
            self.attempts.append(name)
        return None  # the next finders decide (here: there is no mxnet)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["write", "compare"])
    p.add_argument("model", help="packed model directory")
    p.add_argument("dir", help="directory of the files listed above")
    p.add_argument("--evaluate", metavar="JSON", help="compare: the output of example/evaluate.py --packed here")
    args = p.parse_args(argv)
    if args.action == "compare" and importlib.util.find_spec("mxnet") is not None:
        print("packed_outputs: mxnet is installed here; compare runs in the runtime-only environment",
              file=sys.stderr)
        return 2
    watch = MxnetImports()
    sys.meta_path.insert(0, watch)

    from bmx import runtime, xnor

    model = runtime.load(args.model)
    if args.action == "write":
        os.makedirs(args.dir, exist_ok=True)
        logits = model(make_inputs(model.meta, args.dir))
        np.save(os.path.join(args.dir, "outputs.npy"), logits)
        print(f"packed_outputs: wrote {logits.shape} logits of {args.model} (numpy {np.__version__}, "
              f"kernel {xnor.get_kernel()})")
        return 0
    want = np.load(os.path.join(args.dir, "outputs.npy"))
    got = model(np.load(os.path.join(args.dir, "inputs.npy")))
    worst = float(np.max(np.abs(got - want)))
    same_classes = bool((got.argmax(axis=1) == want.argmax(axis=1)).all())
    print(f"packed_outputs: numpy {np.__version__}, kernel {xnor.get_kernel()}: largest difference {worst:.3g} "
          f"over {got.size} logits, predicted classes {'identical' if same_classes else 'DIFFER'}")
    if got.shape != want.shape or not np.allclose(got, want, rtol=RTOL, atol=ATOL) or not same_classes:
        return 1
    if args.evaluate and not same_scores(args.evaluate, os.path.join(args.dir, "evaluate.json")):
        print("packed_outputs: example/evaluate.py --packed scores differ from the full install's", file=sys.stderr)
        return 1
    if watch.attempts:
        print(f"packed_outputs: loading and running the packed model tried to import {watch.attempts[0]}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

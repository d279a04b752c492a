#!/usr/bin/env python
"""Export a bmx model to ONNX (standard operators, opset 18, dynamic batch size).

    python tools/export_onnx.py runs/bdn28 --output bdn28.onnx                        # train_imagenet.py output
    python tools/export_onnx.py example/pretrained/bdn28-cifar10 --output bdn28.onnx  # packed model
    python tools/export_onnx.py PREFIX --output OUT.onnx [--epoch N] [--input-size 224] [--force]

PREFIX names PREFIX-symbol.json and PREFIX-NNNN.params (bmx.export; the newest epoch unless --epoch);
a directory means DIR/model, with DIR/model.json as metadata (its preprocessing and class names go
into the ONNX file's metadata). Binary layers become Conv on +-1 signs with +-1 float weights (ONNX
has no binary convolution). Needs the onnx extra (pip install -e ".[onnx]"); see docs/onnx.md.
"""
import argparse
import sys


def build_parser():
    p = argparse.ArgumentParser(prog="export_onnx.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="RUN_OR_MODEL_DIR", help="output directory of example/train_imagenet.py, "
                   "a packed model directory, or PREFIX of PREFIX-symbol.json / PREFIX-NNNN.params")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--epoch", type=int, help="which PREFIX-NNNN.params (default: the newest)")
    p.add_argument("--input-size", type=int, help="fix the input height = width (default: dynamic)")
    p.add_argument("--force", action="store_true", help="replace an existing --output file")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("epoch", "input_size"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "epoch" else 1):
            parser.error(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'epoch' else 'positive'}, got {value}")
    try:
        from bmx import onnx_export
    except ImportError as err:  # the onnx extra is not installed: the message says how to install it
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    try:
        report = onnx_export.export(args.source, args.output, epoch=args.epoch, input_size=args.input_size,
                                    force=args.force)
    except (ValueError, OSError) as err:  # OnnxExportError, ConvertError and PackedFormatError are ValueErrors
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print("\n".join(onnx_export.format_report(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

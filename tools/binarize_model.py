#!/usr/bin/env python
"""Convert an exported bmx model into a packed inference model (binary weights as bits).

    python tools/binarize_model.py runs/bdn28 --output runs/bdn28-packed            # train_imagenet.py output
    python tools/binarize_model.py PREFIX --output OUT [--epoch N] [--verify] [--force]
    python tools/binarize_model.py --model binary_densenet28 --params net.params --output OUT \\
        [--stem cifar --classes 10 --input-size 32]                                  # net.save_parameters file
    python tools/binarize_model.py PREFIX --output OUT --int8 --calibrate DATA [--calibration-images N] [--verify]
    python tools/binarize_model.py PACKED_DIR --output OUT --int8 --calibrate DATA   # a packed float model

PREFIX names PREFIX-symbol.json and PREFIX-NNNN.params (bmx.export; the newest epoch unless --epoch);
a directory means DIR/model, with DIR/model.json as metadata. OUT is a directory (model-symbol.json,
model-0000.params, model.json) that bmx.runtime.load(OUT) runs without MXNet and that
mx.gluon.SymbolBlock.imports runs after `bmx.load_library()`; its missing parents are created. --force
replaces only a packed model, never another directory. The conversion rules are in bmx/convert/.

--int8 also makes the full-precision convolutions and fully connected layers int8 (bmx/convert/int8.py:
per-output-channel weight scales, per-tensor input scales calibrated by running the float packed model
on N images of DATA, a .rec file or class folders as example/evaluate.py --data reads them; the
hold-out is left out of a model's own training file). Such a model runs in bmx.runtime only (MXNet
refuses it) and is packed format version 2. With --verify, the int8 model's top-1 agreement and max
|logit difference| with the float packed model on N other images of DATA are printed and recorded in
model.json (packed.int8.verified).

Temporary files live in a hidden scratch directory beside OUT, removed on every exit (SIGTERM and
SIGHUP included); one left by a killed run is removed, and a replace it interrupted is finished or
undone, by the next run for the same OUT (see bmx.packed.recover).
"""
import argparse
import os
import signal
import sys
import tempfile
import warnings

import bmx
from bmx import convert, packed


def build_parser():
    p = argparse.ArgumentParser(prog="binarize_model.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefix", nargs="?", help="PREFIX of PREFIX-symbol.json / PREFIX-NNNN.params, or an output "
                   "directory of example/train_imagenet.py")
    p.add_argument("--output", required=True, help="packed model directory to create (parents are created)")
    p.add_argument("--epoch", type=int, help="which PREFIX-NNNN.params (default: the newest)")
    p.add_argument("--model", help="zoo model name, to convert a Gluon parameter file given with --params")
    p.add_argument("--params", help="Gluon parameter file (net.save_parameters) of --model")
    p.add_argument("--stem", choices=bmx.models.common.STEMS, help="--model's stem (default: imagenet)")
    p.add_argument("--classes", type=int, help="--model's outputs (default 1000)")
    p.add_argument("--input-size", type=int, help="input height = width for export and --verify "
                   "(default: model.json's image size; 32 for the cifar/thumbnail stems, else 224)")
    p.add_argument("--verify", action="store_true", help="check the packed model against the original on random "
                   "inputs (binary layers exactly) before writing it")
    p.add_argument("--force", action="store_true", help="replace an existing --output packed model "
                   "(only a directory holding nothing but a packed model's files)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --verify inputs")
    p.add_argument("--int8", action="store_true", help="make the full-precision convolutions and fully connected "
                   "layers int8 (needs --calibrate)")
    p.add_argument("--calibrate", metavar="DATA", help="--int8: calibration images, a .rec file (its .idx beside it) "
                   "or a directory of class folders")
    p.add_argument("--calibration-images", type=int, metavar="N", help="--int8: how many images of DATA to calibrate "
                   f"on (default {convert.int8.DEFAULT_CALIBRATION_IMAGES}; --verify compares on N others)")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.prefix is None) == (args.model is None):
        parser.error("give either PREFIX or --model NAME --params FILE")
    if args.model is not None:
        if args.params is None:
            parser.error("--model needs --params FILE (a Gluon parameter file)")
        if args.epoch is not None:
            parser.error("--epoch applies to PREFIX only")
    else:
        given = [f"--{name}" for name in ("params", "stem", "classes") if getattr(args, name) is not None]
        if given:
            parser.error(f"{', '.join(given)} apply to --model only")
    if args.int8 and args.calibrate is None:
        parser.error("--int8 needs --calibrate DATA (images to calibrate the int8 layers' input scales on)")
    if not args.int8 and (args.calibrate is not None or args.calibration_images is not None):
        parser.error("--calibrate and --calibration-images apply to --int8 only")
    if args.int8 and args.model is not None:
        parser.error("--int8 applies to PREFIX only (its model.json gives the preprocessing of the calibration images)")
    for name in ("epoch", "classes", "input_size", "calibration_images"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "epoch" else 1):
            parser.error(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'epoch' else 'positive'}, got {value}")
    previous = {s: signal.signal(s, _exit_on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    created = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            notes = packed.recover(args.output)
        for note in notes:
            print(f"{parser.prog}: note: {note}", file=sys.stderr)
        if args.force:
            packed.check_replaceable(args.output)
        created = _make_parents(args.output)
        report = _convert(args)
    except (ValueError, OSError) as err:  # ConvertError, ModelFileError and PackedFormatError are ValueErrors
        _remove(created)
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    except BaseException:
        _remove(created)
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print("\n".join(convert.format_report(report)))
    print(f"wrote {report['output_dir']}")
    return 0


def _exit_on_signal(number, frame):
    """SIGTERM and SIGHUP end the run through SystemExit, so that every temporary file is removed."""
    raise SystemExit(128 + number)


def _make_parents(output):
    """Creates the missing parents of ``output``; returns them, deepest first."""
    created = []
    parent = os.path.dirname(os.path.abspath(output))
    while not os.path.exists(parent):
        created.append(parent)
        parent = os.path.dirname(parent)
    for path in reversed(created):
        os.mkdir(path)
    return created


def _remove(created):
    for path in created:
        try:
            os.rmdir(path)
        except OSError:
            return  # something else was put there meanwhile: keep it


def _convert(args):
    """Runs the conversion with every temporary file in a scratch directory beside the output."""
    with packed.scratch_directory(args.output) as scratch:
        saved, tempfile.tempdir = tempfile.tempdir, scratch
        try:
            if args.model is not None:
                return convert.binarize_gluon(args.model, args.params, args.output, stem=args.stem,
                                              classes=args.classes or 1000, input_size=args.input_size,
                                              force=args.force, verify=args.verify, seed=args.seed)
            count = args.calibration_images or convert.int8.DEFAULT_CALIBRATION_IMAGES
            return convert.binarize(args.prefix, args.output, epoch=args.epoch, force=args.force,
                                    verify=args.verify, input_size=args.input_size, seed=args.seed,
                                    calibrate=args.calibrate, calibration_images=count)
        finally:
            tempfile.tempdir = saved


if __name__ == "__main__":
    sys.exit(main())

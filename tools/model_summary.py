#!/usr/bin/env python
"""Layer table, model size and operation counts of bmx zoo models (see bmx.summary for the rules).

    python tools/model_summary.py --model binary_densenet28 [--stem grouped] [--json]
    python tools/model_summary.py --all      # every zoo model beside the published numbers
"""
import argparse
import json
import sys

import bmx
from bmx import models

JSON_KEYS = ("size_mb", "size_mb_fp32", "params", "params_binary", "binary_macs", "float_macs", "ops")


def _summarize(name, stem, size, classes, binary):
    net = models.get_model(name, classes=classes, stem=stem, binary=binary)
    return bmx.summary(net, (1, 3, size, size), show=False)


def _matches(key, computed, published):
    if key.startswith("size_mb"):
        return round(computed, 2) == round(published, 2)
    return abs(computed - published) <= 0.01 * published


def _all_rows(stem, size, classes, binary):
    """(model, stem, summary, published) for every zoo model, plus the published rows of other stems."""
    stem = stem or "imagenet"
    wanted = [(name, stem) for name in models.list_models()]
    if stem == "imagenet":
        wanted += sorted(key for key in models.PUBLISHED if key[1] != "imagenet")
    comparable = binary and size == 224 and classes == 1000
    for name, model_stem in wanted:
        published = models.PUBLISHED.get((name, model_stem), {}) if comparable else {}
        yield name, model_stem, _summarize(name, model_stem, size, classes, binary), published


def _print_all(rows):
    columns = ("model", "stem", "params", "size MB", "publ.", "fp32 MB", "publ.", "binary MACs", "publ.",
               "ops", "publ.", "check")
    table, failures = [], 0
    for name, stem, s, published in rows:
        values = s.to_dict()
        checks = [_matches(key, values[key], value) for key, value in published.items()]
        failures += not all(checks)

        def pub(key, fmt):
            return format(published[key], fmt) if key in published else "-"

        table.append((name, stem, f"{s.params:,}", f"{s.size_mb:.2f}", pub("size_mb", ".2f"),
                      f"{s.size_mb_fp32:.2f}", pub("size_mb_fp32", ".2f"), f"{s.binary_macs:.3e}",
                      pub("binary_macs", ".2e"), f"{s.ops:.3e}", pub("ops", ".2e"),
                      ("ok" if all(checks) else "MISMATCH") if checks else "-"))
    widths = [max(len(str(row[i])) for row in [columns] + table) for i in range(len(columns))]
    for row in [columns] + table:
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    print("size: binary weights 1 bit, other parameters 32 bits, BN running stats excluded, MB = 2^20 bytes; "
          "ops = binary MACs / 64 + float MACs; published values match to two decimals (sizes) or 1%")
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="zoo model name (see --list)")
    what.add_argument("--all", action="store_true", help="every zoo model beside the published values; "
                      "exits 1 if a published value is not reproduced")
    what.add_argument("--list", action="store_true", help="print the zoo's model names")
    parser.add_argument("--stem", choices=models.common.STEMS, help="stem (default: the model's, 'imagenet')")
    parser.add_argument("--input-size", type=int, help="input height = width "
                        "(default 224; 32 for the cifar and thumbnail stems)")
    parser.add_argument("--classes", type=int, default=1000, help="outputs of the last layer (default 1000)")
    parser.add_argument("--float", dest="binary", action="store_false", help="summarize the full-precision twin")
    parser.add_argument("--json", action="store_true", help="print the totals as JSON instead of the table")
    args = parser.parse_args(argv)

    if args.list:
        print("\n".join(models.list_models()))
        return 0
    size = args.input_size or (32 if args.stem in ("cifar", "thumbnail") else 224)
    try:
        if args.all:
            rows = list(_all_rows(args.stem, size, args.classes, args.binary))
            if args.json:
                totals = [dict(model=name, stem=stem, **s.to_dict()) for name, stem, s, _ in rows]
                print(json.dumps(totals, indent=1))
                return 0
            return 1 if _print_all(rows) else 0
        stem = args.stem or "imagenet"
        s = _summarize(args.model, stem, size, args.classes, args.binary)
    except ValueError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        values = s.to_dict()
        print(json.dumps({key: values[key] for key in JSON_KEYS}))
    else:
        print(f"{args.model} (stem {stem}, {'binary' if args.binary else 'full-precision twin'})")
        print(s.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Reproduce the published BinaryDenseNet / MeliusNet / ResNetE tables with train_imagenet.py.

    python example/reproduce.py --list                                   # the tables
    python example/reproduce.py --table later --dry-run                  # print the commands
    python example/reproduce.py --table later --data-dir ~/imagenet      # run them, then write the results
    python example/reproduce.py --table all --markdown                   # the tables of docs/reproduce.md
    python example/reproduce.py --table cifar10 --data-dir DIR           # CIFAR-10: main result + ablations
    python example/reproduce.py --table cifar10 --tabulate               # CIFAR-10 results from runs/ only

Each row is one train_imagenet.py run in RUNS/<run name> (default RUNS = runs). Running a table
executes its rows in order; a finished row is skipped and an interrupted one is resumed (the same
command plus --resume), so the script itself can be stopped and restarted at any time. After every
row it writes RUNS/results-<table>.md and .csv: the published and the measured (last epoch)
top-1/top-5 and the model size from bmx.summary. Rows shared between tables are trained once.

--ctx and --batch-size (per device) set the hardware; the published runs used a total batch of
64-256 (default here: 4 GPUs x 64 = 256). --extra appends flags to every command (they override
earlier ones), e.g. --extra "--epochs 1" for a smoke test.

The ``cifar10`` table (example/cifar10_table.py) is different: real CIFAR-10 runs sized for a 2-core
CPU (fixed epoch budgets, RUNS/cifar10/<run>), which then pack the main model into
example/pretrained/ and write docs/results/cifar10.md, .csv and accuracy-curve plots.
"""
import argparse
import csv
import os
import shlex
import subprocess
import sys

import cifar10_table
from runs import read_state, shell

from bmx.recipes import IMAGENET_RECIPES, PUBLISHED, TABLES

TRAIN = "example/train_imagenet.py"  # as shown (run from the repository root); executed by absolute path

# The recipes and the published tables are data in bmx.recipes.
RECIPES = {name: recipe.flags() for name, recipe in IMAGENET_RECIPES.items()}

# Flags that identify a run (beyond model, stem, recipe) -> short tag in its directory name.
_FLAG_TAGS = {"--downsample": "binds", "--apply-scaling": "scaled", "--activation": "approxsign"}


def run_name(r):
    parts = [r.model] + ([r.stem] if r.stem != "imagenet" else []) + [r.recipe]
    parts += [_FLAG_TAGS[f] for f in r.flags if f in _FLAG_TAGS]
    return "-".join(parts)


def command(r, data_dir, runs_dir, ctx, batch_size, extra=()):
    stem = ["--stem", r.stem] if r.stem != "imagenet" else []
    return (["python", TRAIN, "--model", r.model] + stem + list(r.flags) + RECIPES[r.recipe] +
            ["--data-dir", data_dir, "--ctx", ctx, "--batch-size", str(batch_size),
             "--output-dir", os.path.join(runs_dir, run_name(r))] + list(extra))


def model_size(r):
    """Size in MB (binary weights 1 bit) of the row's model at 224x224, by bmx.summary."""
    import bmx
    from bmx import training  # here: it imports mxnet, which --list and --dry-run do without

    options = {}
    if "--downsample" in r.flags:
        options["downsample"] = r.flags[r.flags.index("--downsample") + 1]
    layer = {"apply_scaling": True} if "--apply-scaling" in r.flags else {}
    if "--activation" in r.flags:
        layer["activation"] = r.flags[r.flags.index("--activation") + 1]
    net = training.build_model(r.model, 1000, stem=r.stem, layer_config=layer, **options)
    return bmx.summary(net, (1, 3, 224, 224), show=False).size_mb


def published_size(r):
    """The published size of the row's model (bmx.recipes.PUBLISHED), if any."""
    return None if r.flags else PUBLISHED.get((r.model, r.stem), {}).get("size_mb")


def _pct(value):
    return "-" if value is None else f"{value:.1f}"


def _mb(value):
    return "-" if value is None else f"{value:.2f}"


def markdown(names, data_dir, runs_dir, ctx, batch_size):
    """The tables of docs/reproduce.md: rows with published numbers and sizes, then their commands."""
    lines = []
    for name in names:
        title, rows = TABLES[name]
        lines += [f"### `{name}`: {title}", "",
                  "| row | model | stem | recipe | size MB (bmx.summary) | size MB (published) | "
                  "published top-1 / top-5 |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            published = f"{_pct(r.top1)} / {_pct(r.top5)}"
            lines.append(f"| {r.label} | `{r.model}`{' ' + ' '.join(r.flags) if r.flags else ''} | {r.stem} | "
                         f"{r.recipe} | {model_size(r):.2f} | {_mb(published_size(r))}"
                         f" | {published} |")
        lines += ["", "```bash"]
        lines += [shell(command(r, data_dir, runs_dir, ctx, batch_size)) for r in rows]
        lines += ["```", ""]
    return "\n".join(lines)


def measured(state):
    last = state["history"][-1] if state and state["history"] else {}
    pct = {k: None if last.get(k) is None else 100 * last[k] for k in ("val_top1", "val_top5")}
    return pct["val_top1"], pct["val_top5"], state["epoch"] if state else 0


def write_results(name, runs_dir):
    """RUNS/results-NAME.md and .csv from the rows' state files; returns the CSV path."""
    title, rows = TABLES[name]
    records = []
    for r in rows:
        top1, top5, epochs = measured(read_state(os.path.join(runs_dir, run_name(r))))
        records.append(dict(row=r.label, model=r.model, stem=r.stem, recipe=r.recipe, flags=" ".join(r.flags),
                            size_mb=f"{model_size(r):.2f}", published_top1=r.top1, published_top5=r.top5,
                            measured_top1=None if top1 is None else round(top1, 2),
                            measured_top5=None if top5 is None else round(top5, 2), epochs=epochs,
                            run=run_name(r)))
    base = os.path.join(runs_dir, f"results-{name}")
    with open(base + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    lines = [f"# {name}: {title}", "", "| row | model | stem | recipe | size MB | published top-1 / top-5 | "
             "measured top-1 / top-5 | epochs |", "|---|---|---|---|---|---|---|---|"]
    for rec in records:
        lines.append(f"| {rec['row']} | `{rec['model']}` {rec['flags']} | {rec['stem']} | {rec['recipe']} | "
                     f"{rec['size_mb']} | {_pct(rec['published_top1'])} / {_pct(rec['published_top5'])} | "
                     f"{_pct(rec['measured_top1'])} / {_pct(rec['measured_top5'])} | {rec['epochs']} |")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return base + ".csv"


def run_table(name, args, extra):
    for r in TABLES[name][1]:
        run_dir = os.path.join(args.runs_dir, run_name(r))
        state = read_state(run_dir)
        if state and state.get("finished"):
            print(f"[{name}] {r.label}: finished, skipped ({run_dir})", flush=True)
            continue
        cmd = command(r, args.data_dir, args.runs_dir, args.ctx, args.batch_size, extra)
        cmd[:2] = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_imagenet.py")]
        if state:
            cmd.append("--resume")
        print(f"[{name}] {r.label}: {shell(cmd)}", flush=True)
        code = subprocess.call(cmd)
        write_results(name, args.runs_dir)
        if code:
            print(f"[{name}] {r.label}: train_imagenet.py exited with {code}; rerun to resume", file=sys.stderr)
            return code
    print(f"[{name}] results: {write_results(name, args.runs_dir)}")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", choices=list(TABLES) + ["all", "cifar10"],
                   help="which ImageNet table ('all': every one), or cifar10")
    p.add_argument("--list", action="store_true", help="list the tables and their rows")
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    p.add_argument("--markdown", action="store_true", help="print the tables with sizes and commands as markdown")
    p.add_argument("--data-dir", default="$IMAGENET", help="ImageNet directory (see train_imagenet.py --help)")
    p.add_argument("--runs-dir", default="runs", help="parent of the run directories and the results files")
    p.add_argument("--ctx", default="gpu:0,1,2,3")
    p.add_argument("--batch-size", type=int, default=64, help="per device (default 64)")
    p.add_argument("--tabulate", action="store_true",
                   help="cifar10 only: rewrite the results from the runs directory without training")
    p.add_argument("--extra", default="", help="flags appended to every command, e.g. \"--epochs 1\"")
    args = p.parse_args(argv)
    if args.list:
        for name, (title, rows) in TABLES.items():
            print(f"{name}: {title}")
            for r in rows:
                print(f"    {r.label}  ({run_name(r)}; published {_pct(r.top1)} / {_pct(r.top5)})")
        for group in cifar10_table.GROUPS:
            print(f"cifar10 / {group.key}: {group.title}")
            for r in group.runs:
                print(f"    {r.label}  (cifar10/{r.name}; {r.epochs} epochs)")
        return 0
    if not args.table:
        p.error("--table is required (or --list)")
    if args.table == "cifar10":
        return _cifar10(p, args)
    if args.tabulate:
        p.error("--tabulate is for --table cifar10 (the ImageNet tables are rewritten after every row)")
    names = list(TABLES) if args.table == "all" else [args.table]
    extra = shlex.split(args.extra)
    if args.markdown:
        print(markdown(names, args.data_dir, args.runs_dir, args.ctx, args.batch_size))
        return 0
    if args.dry_run:
        for name in names:
            print(f"# {name}: {TABLES[name][0]}")
            for r in TABLES[name][1]:
                print(shell(command(r, args.data_dir, args.runs_dir, args.ctx, args.batch_size, extra)))
        return 0
    if args.data_dir == "$IMAGENET":
        p.error("--data-dir is required to run the tables")
    os.makedirs(args.runs_dir, exist_ok=True)
    for name in names:
        code = run_table(name, args, extra)
        if code:
            return code
    return 0


def _cifar10(p, args):
    data_dir = "$CIFAR10" if args.data_dir == "$IMAGENET" else args.data_dir
    extra = shlex.split(args.extra)
    if args.markdown:
        print(cifar10_table.commands_markdown(data_dir, args.runs_dir))
    elif args.dry_run:
        cifar10_table.dry_run(data_dir, args.runs_dir, extra)
    elif args.tabulate:
        print(f"[cifar10] results: {cifar10_table.write_results(os.path.abspath(args.runs_dir))}")
    elif data_dir == "$CIFAR10":
        p.error("--data-dir (the directory of CIFAR-10's train.rec and train.idx) is required to run the table")
    else:
        args.data_dir = data_dir
        return cifar10_table.run(args, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())

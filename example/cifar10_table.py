"""The CIFAR-10 table: BinaryDenseNet-28 and its twin, and the paper's ablations, on real data.

Used by ``example/reproduce.py --table cifar10``. Every run is one ``train_imagenet.py`` job on the
CIFAR-10 training split with 5,000 images held out (fixed seed) for validation; all runs share the
recipe below and differ only in what their group compares. Budgets are fixed numbers of epochs,
chosen so that each run fits its group's time limit on the 2-core machine this table was made on
(120 minutes for the main pair, 30 minutes per ablation run); the measured training minutes are
part of the results.

After the main binary run has finished, its exported model is packed with
``tools/binarize_model.py`` into ``example/pretrained/`` and the packed model is evaluated on the
held-out images with ``example/evaluate.py --packed``.
"""
import csv
import json
import math
import os
import subprocess
import sys

from runs import read_state, shell

from bmx.recipes import CIFAR10_FLAGS, CIFAR10_GROUPS

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The runs and their shared flags are data in bmx.recipes (with the published ImageNet recipes).
RECIPE = CIFAR10_FLAGS
GROUPS = CIFAR10_GROUPS

PRETRAINED = os.path.join("example", "pretrained", "bdn28-cifar10")
RESULTS = os.path.join(ROOT, "docs", "results")
REPRODUCE_DOC = os.path.join(ROOT, "docs", "reproduce.md")
DOC_BEGIN, DOC_END = "<!-- cifar10-results:begin -->", "<!-- cifar10-results:end -->"
SEED_PAIR = ("bdn28h-clip1.3", "bdn28h-clip1.3-seed1")
VALIDATION_IMAGES = 5000


def unique_runs():
    """Every run once, in table order (groups share some runs)."""
    seen = {}
    for group in GROUPS:
        for r in group.runs:
            seen.setdefault(r.name, r)
    return list(seen.values())


def command(r, data_dir, runs_dir, extra=()):
    """The train_imagenet.py command of run ``r`` (as shown: relative to the repository root)."""
    return (["python", "example/train_imagenet.py", "--model", r.model, *RECIPE, *r.flags, "--epochs", str(r.epochs),
             "--data-dir", data_dir, "--output-dir", os.path.join(runs_dir, "cifar10", r.name), *extra])


def pack_commands(data_dir, runs_dir):
    run = os.path.join(runs_dir, "cifar10", "bdn28-binary")
    return [["python", "tools/binarize_model.py", run, "--output", PRETRAINED, "--verify", "--force"],
            ["python", "example/evaluate.py", "--packed", PRETRAINED, "--data", os.path.join(data_dir, "train.rec"),
             "--holdout"]]


def _absolute(cmd):
    """A shown command made runnable from anywhere: this interpreter, scripts by absolute path."""
    return [sys.executable, os.path.join(ROOT, cmd[1]), *cmd[2:]]


def run(args, extra=()):
    """Trains every run not finished yet (resuming interrupted ones), packs the main model, writes results.

    Paths in ``args`` may be relative to the current directory; the work happens in the repository root.
    """
    args.runs_dir, args.data_dir = os.path.abspath(args.runs_dir), os.path.abspath(args.data_dir)
    os.chdir(ROOT)
    for r in unique_runs():
        run_dir = os.path.join(args.runs_dir, "cifar10", r.name)
        state = read_state(run_dir)
        if state and state.get("finished"):
            print(f"[cifar10] {r.name}: finished, skipped", flush=True)
            continue
        cmd = _absolute(command(r, args.data_dir, args.runs_dir, extra)) + (["--resume"] if state else [])
        print(f"[cifar10] {r.name}: {shell(cmd)}", flush=True)
        code = subprocess.call(cmd)
        write_results(args.runs_dir)
        if code:
            print(f"[cifar10] {r.name}: train_imagenet.py exited with {code}; rerun to resume", file=sys.stderr)
            return code
    code = pack_and_evaluate(args.data_dir, args.runs_dir)
    write_results(args.runs_dir)
    return code


def pack_and_evaluate(data_dir, runs_dir):
    """Packs the main binary model into example/pretrained/ and records its held-out accuracy."""
    binarize, evaluate = (_absolute(c) for c in pack_commands(data_dir, runs_dir))
    os.makedirs(os.path.dirname(PRETRAINED), exist_ok=True)
    print(f"[cifar10] packing: {shell(binarize)}", flush=True)
    code = subprocess.call(binarize)
    if code:
        return code
    print(f"[cifar10] evaluating the packed model: {shell(evaluate)}", flush=True)
    result = subprocess.run(evaluate, stdout=subprocess.PIPE, text=True)
    if result.returncode:
        return result.returncode
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "cifar10-packed.json"), "w") as f:
        f.write(result.stdout)
    return 0


def summarize(r, runs_dir):
    """One results record of run ``r`` from its state.json (None values for a run not started)."""
    state = read_state(os.path.join(runs_dir, "cifar10", r.name)) or {}
    history = state.get("history", [])
    tops = [h["val_top1"] for h in history if h.get("val_top1") is not None]
    speeds = sorted(h["images_per_s"] for h in history)
    times = sorted(h["time_s"] for h in history)
    return dict(run=r.name, label=r.label, model=r.model, flags=" ".join(r.flags), epochs_budget=r.epochs,
                epochs_done=len(history), finished=bool(state.get("finished")),
                final_top1=round(100 * tops[-1], 2) if tops else None,
                best_top1=round(100 * max(tops), 2) if tops else None,
                train_minutes=round(sum(times) / 60, 1) if history else None,
                # Epochs are alike, so the budget at the median epoch time is the run's length on an idle
                # machine even when some epochs shared the CPU with other work.
                median_budget_minutes=round(r.epochs * _median(times) / 60, 1) if times else None,
                median_images_per_s=round(_median(speeds), 1) if speeds else None,
                size_mb=round(_size_mb(r), 3), curve=[h.get("val_top1") for h in history])


def _median(values):
    """The median of a non-empty sorted list."""
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _size_mb(r):
    """Model size by bmx.summary (1 bit per binary weight) at 32x32 with 10 classes."""
    import bmx
    from bmx import training  # here: it imports mxnet, which --dry-run does without

    knobs, flags = {"stem": "cifar"}, list(r.flags)
    for flag, key, kind in (("--growth-rate", "growth_rate", int), ("--init-features", "init_features", int),
                            ("--bottleneck", "bottleneck", int)):
        if flag in flags:
            knobs[key] = kind(flags[flags.index(flag) + 1])
    net = training.build_model(r.model, 10, binary="--float" not in flags, **knobs)
    return bmx.summary(net, (1, 3, 32, 32), show=False).size_mb


def write_results(runs_dir):
    """docs/results/cifar10.csv, cifar10.md, one accuracy-curve PNG per group, and docs/reproduce.md's table."""
    os.makedirs(RESULTS, exist_ok=True)
    records = {r.name: summarize(r, runs_dir) for r in unique_runs()}
    fields = [k for k in next(iter(records.values())) if k != "curve"]
    csv_path = os.path.join(RESULTS, "cifar10.csv")
    with open(csv_path + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, ["group"] + fields)
        writer.writeheader()
        for group in GROUPS:
            for r in group.runs:
                row = {k: v for k, v in records[r.name].items() if k != "curve"}
                writer.writerow(dict(row, group=group.key, label=r.label))
    os.replace(csv_path + ".tmp", csv_path)
    for group in GROUPS:
        _plot(group, records, os.path.join(RESULTS, f"cifar10-{group.key}.png"))
    md_path = os.path.join(RESULTS, "cifar10.md")
    with open(md_path + ".tmp", "w") as f:
        f.write(markdown(records, runs_dir))
    os.replace(md_path + ".tmp", md_path)
    update_reproduce_doc(records, REPRODUCE_DOC)
    return csv_path


def _fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(records, runs_dir):
    lines = ["# CIFAR-10: BinaryDenseNet-28 and the paper's ablations", "",
             "Written by `python example/reproduce.py --table cifar10 --data-dir DIR` (see docs/reproduce.md). "
             "Validation: 5,000 images of the CIFAR-10 training split held out with a fixed seed, never trained "
             "on. Recipe for every run: " + f"`{' '.join(RECIPE)}`, one seed unless stated. Wall minutes cover "
             "training and validation and include any time the machine was shared with other work; the budget "
             "at the median epoch time is the run's length on an idle machine.", ""]
    lines += _noise(records)
    for group in GROUPS:
        lines += [f"## {group.title}", "", f"Budget: at most {group.minutes} minutes per run. {group.question}", "",
                  f"![validation accuracy](cifar10-{group.key}.png)", "",
                  "| run | model and flags | epochs | wall minutes | budget x median epoch, minutes | img/s | size MB | "
                  "best val top-1 % | final val top-1 % |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in group.runs:
            rec = records[r.name]
            done = f"{rec['epochs_done']}/{rec['epochs_budget']}"
            lines.append(f"| {r.label} | `--model {r.model} {rec['flags']}` | {done} | {_fmt(rec['train_minutes'])} | "
                         f"{_fmt(rec['median_budget_minutes'])} | {_fmt(rec['median_images_per_s'])} | "
                         f"{rec['size_mb']:.2f} | {_fmt(rec['best_top1'], 2)} | {_fmt(rec['final_top1'], 2)} |")
        lines.append("")
    packed = os.path.join(RESULTS, "cifar10-packed.json")
    if os.path.isfile(packed):
        with open(packed) as f:
            result = json.load(f)
        lines += ["## The packed model", "", f"`{PRETRAINED}` evaluated with `example/evaluate.py --packed`: "
                  f"top-1 {100 * result['top1']:.2f} %, top-5 {100 * result['top5']:.2f} % on "
                  f"{result['images']:,} held-out images.", ""]
    return "\n".join(lines)


def _noise(records):
    """How far apart two runs may end by chance: the seed pair and the binomial error of 5,000 images."""
    a, b = (records[name]["final_top1"] for name in SEED_PAIR)
    if a is None or b is None or not all(records[name]["finished"] for name in SEED_PAIR):
        return []
    p = (a + b) / 200
    # Binomial standard error of a difference of two top-1 values, treating the two runs' mistakes as
    # independent; runs that miss the same hard images differ less, so this errs on the wide side.
    se_diff = 100 * math.sqrt(2 * p * (1 - p) / VALIDATION_IMAGES)
    return [f"Noise: the same run with two seeds ({SEED_PAIR[0]}, {SEED_PAIR[1]}) ended at {a:.2f} and {b:.2f} % "
            f"(difference {abs(a - b):.2f} points); the binomial standard error of a difference between two "
            f"top-1 values on {VALIDATION_IMAGES:,} images is {se_diff:.2f} points. A difference of less than "
            f"about {max(abs(a - b), 2 * se_diff):.1f} points within a group is not evidence either way.", ""]


def reproduce_doc_table(records):
    """The results table for docs/reproduce.md: one line per run of every group."""
    lines = ["| group | run | epochs | wall minutes | budget x median epoch, minutes | size MB | final val top-1 % |",
             "|---|---|---|---|---|---|---|"]
    for group in GROUPS:
        for r in group.runs:
            rec = records[r.name]
            lines.append(f"| {group.key} | {r.label} | {rec['epochs_done']}/{rec['epochs_budget']} | "
                         f"{_fmt(rec['train_minutes'])} | {_fmt(rec['median_budget_minutes'])} | "
                         f"{rec['size_mb']:.2f} | {_fmt(rec['final_top1'], 2)} |")
    return "\n".join(lines)


def update_reproduce_doc(records, path):
    """Replaces the text between the cifar10-results markers of ``path`` with the current table."""
    with open(path) as f:
        doc = f.read()
    begin, end = doc.find(DOC_BEGIN), doc.find(DOC_END)
    if begin < 0 or end < begin:
        raise ValueError(f"{path}: expected the markers {DOC_BEGIN!r} and {DOC_END!r} around the CIFAR-10 results")
    doc = doc[:begin + len(DOC_BEGIN)] + "\n" + reproduce_doc_table(records) + "\n" + doc[end:]
    with open(path + ".tmp", "w") as f:
        f.write(doc)
    os.replace(path + ".tmp", path)


def _plot(group, records, path):
    from matplotlib.figure import Figure  # not pyplot: no backend or global figure list to touch

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for r in group.runs:
        curve = records[r.name]["curve"]
        if curve:
            ax.plot(range(1, len(curve) + 1), [None if v is None else 100 * v for v in curve], marker="o",
                    label=r.label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(group.title if len(group.title) < 60 else group.key, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=100)
    os.replace(path + ".tmp.png", path)


def dry_run(data_dir, runs_dir, extra=()):
    for group in GROUPS:
        print(f"# {group.key}: {group.title} (at most {group.minutes} min per run)")
        for r in group.runs:
            print(shell(command(r, data_dir, runs_dir, extra)))
    print("# pack and evaluate the main binary model")
    for cmd in pack_commands(data_dir, runs_dir):
        print(shell(cmd))


def commands_markdown(data_dir, runs_dir):
    lines = []
    for group in GROUPS:
        lines += [f"### `{group.key}`: {group.title}", "", f"At most {group.minutes} minutes per run. {group.question}",
                  "", "```bash"]
        lines += [shell(command(r, data_dir, runs_dir)) for r in group.runs] + ["```", ""]
    lines += ["Packing and evaluating the main binary model:", "", "```bash"]
    lines += [shell(c) for c in pack_commands(data_dir, runs_dir)] + ["```", ""]
    return "\n".join(lines)

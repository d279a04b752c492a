"""example/cifar10_table.py: the CIFAR-10 runs, their commands, and the results they are tabulated into."""
import csv
import json
import os

import pytest

import bmx
import cifar10_table as table
from test_training import load_script


def test_every_command_parses_with_train_imagenets_parser():
    parser = load_script("train_imagenet").build_parser()
    runs = table.unique_runs()
    assert len({r.name for r in runs}) == len(runs) == 13
    for r in runs:
        args = parser.parse_args(table.command(r, "/data/c10", "runs")[2:])
        assert args.dataset == "cifar10" and args.stem == "cifar" and args.model in bmx.models.list_models()
        assert args.epochs == r.epochs and args.output_dir == os.path.join("runs", "cifar10", r.name)


def test_runs_within_a_group_differ_only_in_what_the_group_compares():
    parser = load_script("train_imagenet").build_parser()
    compared = {"clip": {"clip_threshold", "seed"}, "downsampling": {"model"},
                "connections": {"model", "growth_rate"}, "bottleneck": {"bottleneck", "epochs"}, "main": {"binary"}}
    for group in table.GROUPS:
        settings = [vars(parser.parse_args(table.command(r, "/d", "runs")[2:])) for r in group.runs]
        differing = {k for k in settings[0] if k != "output_dir" and len({repr(s[k]) for s in settings}) > 1}
        # Epochs differ only in the bottleneck group, whose slower 8-epoch run overran the time cap.
        assert differing == compared[group.key], group.key


def test_reproduce_dispatches_the_cifar10_table(capsys):
    reproduce = load_script("reproduce")
    assert reproduce.main(["--table", "cifar10", "--dry-run", "--data-dir", "/data/c10"]) == 0
    out = capsys.readouterr().out
    for r in table.unique_runs():
        assert f"--output-dir runs/cifar10/{r.name}" in out
    assert "tools/binarize_model.py runs/cifar10/bdn28-binary --output example/pretrained/bdn28-cifar10" in out
    with pytest.raises(SystemExit):
        reproduce.main(["--table", "cifar10"])  # running needs --data-dir


def _fake_history(tops, seconds=60.0, speed=100.0):
    return [dict(epoch=i + 1, val_top1=t, images_per_s=speed + i, time_s=seconds) for i, t in enumerate(tops)]


def _write_states(runs, states):
    for name, state in states.items():
        (runs / "cifar10" / name).mkdir(parents=True)
        (runs / "cifar10" / name / "state.json").write_text(json.dumps(state))


@pytest.fixture
def results_dirs(tmp_path, monkeypatch):
    """Results and a copy of docs/reproduce.md under tmp_path, so that the real ones are not touched."""
    doc = tmp_path / "reproduce.md"
    doc.write_text(f"# head\n\n{table.DOC_BEGIN}\nold table\n{table.DOC_END}\n\ntail\n")
    monkeypatch.setattr(table, "RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(table, "REPRODUCE_DOC", str(doc))
    return tmp_path / "runs", tmp_path / "results", doc


def test_results_are_computed_from_the_run_states(results_dirs):
    runs, results, doc = results_dirs
    _write_states(runs, {
        "bdn28-binary": dict(finished=True, history=_fake_history([0.5, 0.7, 0.65])),
        # times 90, 30, 60 s: wall 3 min; median epoch 60 s x 8 epochs = 8 min
        "bdn28h-clip0.5": dict(finished=False, history=[dict(h, time_s=t) for h, t in
                                                        zip(_fake_history([0.3, 0.4, 0.45]), (90.0, 30.0, 60.0))])})
    csv_path = table.write_results(str(runs))
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(g.runs) for g in table.GROUPS)
    main = next(r for r in rows if r["run"] == "bdn28-binary")
    assert (main["best_top1"], main["final_top1"], main["epochs_done"]) == ("70.0", "65.0", "3")
    assert (main["train_minutes"], main["median_images_per_s"], main["finished"]) == ("3.0", "101.0", "True")
    assert main["median_budget_minutes"] == "12.0"  # 12 epochs x 60 s
    clip = next(r for r in rows if r["run"] == "bdn28h-clip0.5")
    assert (clip["best_top1"], clip["final_top1"], clip["finished"]) == ("45.0", "45.0", "False")
    assert (clip["train_minutes"], clip["median_budget_minutes"]) == ("3.0", "8.0")
    untouched = next(r for r in rows if r["run"] == "bdn28-float")
    assert untouched["best_top1"] == "" and untouched["epochs_done"] == "0"
    # sizes by bmx.summary: the float twin is 32 bits per weight, the binary net mostly 1
    sizes = {r["run"]: float(r["size_mb"]) for r in rows}
    assert sizes["bdn28-float"] > 5 * sizes["bdn28-binary"] > 0
    for group in table.GROUPS:
        assert (results / f"cifar10-{group.key}.png").stat().st_size > 1000
    md = (results / "cifar10.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| BinaryDenseNet-28, binary |"))
    assert row.startswith("| BinaryDenseNet-28, binary | `--model binary_densenet28 --clip-threshold 1.3` | 3/12 | "
                          "3.0 | 12.0 | 101.0 |") and row.endswith("| 70.00 | 65.00 |")
    assert "Noise:" not in md  # the seed pair has not run
    text = doc.read_text()
    assert text.startswith("# head\n\n") and text.endswith(f"{table.DOC_END}\n\ntail\n") and "old table" not in text
    assert "| main | BinaryDenseNet-28, binary | 3/12 | 3.0 | 12.0 |" in text
    assert "| clip | t_clip = 0.5 | 3/8 | 3.0 | 8.0 |" in text
    assert text.count("\n| ") == 1 + sum(len(g.runs) for g in table.GROUPS)  # header + one line per run


def test_noise_is_estimated_from_the_seed_pair(results_dirs):
    runs, results, _ = results_dirs
    _write_states(runs, {"bdn28h-clip1.3": dict(finished=True, history=_fake_history([0.7, 0.80])),
                         "bdn28h-clip1.3-seed1": dict(finished=True, history=_fake_history([0.7, 0.79]))})
    table.write_results(str(runs))
    md = (results / "cifar10.md").read_text()
    # binomial: p = 0.795, sqrt(2 p (1 - p) / 5000) = 0.807 points; the limit is max(1.00, 2 x 0.807)
    se = 100 * (2 * 0.795 * 0.205 / 5000) ** 0.5
    assert f"ended at 80.00 and 79.00 % (difference 1.00 points)" in md
    assert f"is {se:.2f} points" in md and f"about {2 * se:.1f} points" in md


def test_reproduce_doc_without_markers_is_an_error_and_untouched(results_dirs):
    runs, _, doc = results_dirs
    doc.write_text("no markers here\n")
    with pytest.raises(ValueError, match="reproduce.md: expected the markers"):
        table.write_results(str(runs))
    assert doc.read_text() == "no markers here\n"


def test_tabulate_writes_results_without_training(results_dirs, capsys):
    runs, results, _ = results_dirs
    _write_states(runs, {"bdn28-float": dict(finished=True, history=_fake_history([0.9]))})
    reproduce = load_script("reproduce")
    assert reproduce.main(["--table", "cifar10", "--tabulate", "--runs-dir", str(runs)]) == 0
    assert "cifar10.csv" in capsys.readouterr().out
    assert "| BinaryDenseNet-28, full-precision twin | `--model binary_densenet28 --float` | 1/12 |" in (results / "cifar10.md").read_text()
    with pytest.raises(SystemExit):
        reproduce.main(["--table", "later", "--tabulate"])


def test_commands_are_documented():
    with open(os.path.join(table.ROOT, "docs", "reproduce.md")) as f:
        doc = f.read()
    for r in table.unique_runs():
        assert table.shell(table.command(r, "$CIFAR10", "runs")) in doc
    for cmd in table.pack_commands("$CIFAR10", "runs"):
        assert table.shell(cmd) in doc
    assert 0 < doc.index(table.DOC_BEGIN) < doc.index(table.DOC_END)

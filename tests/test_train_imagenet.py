"""example/train_imagenet.py: nothing the user owns is overwritten, bad numbers and damaged run
directories are clear errors, and a run stops at a non-finite loss keeping its last good checkpoint."""
import json
import os
import shutil

import mxnet as mx
import numpy as np
import pytest

from bmx import steps
from conftest import call_main
from test_data import write_cifar
from test_training import FAST, TINY, load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def script():
    return load_script("train_imagenet")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_cifar(str(tmp_path_factory.mktemp("c10")), count=24)


def argv(data_dir, out, *extra):
    return ["--dataset", "cifar10", "--data-dir", str(data_dir), "--val-size", "8", "--epochs", "1",
            "--output-dir", str(out), *TINY, *FAST, *extra]


def run(script, capsys, args):
    code, _, err = call_main(script.main, capsys, *args)
    return code, err


def files(directory):
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


@pytest.fixture(scope="module")
def finished(script, cifar, tmp_path_factory):
    """A finished one-epoch run (copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert script.main(argv(cifar, out)) == 0
    return out


def test_a_directory_that_is_not_a_run_is_refused_and_untouched(script, cifar, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(os.path.join(ROOT, "example", "pretrained", "bdn28-cifar10"), out)
    before = files(out)
    code, err = run(script, capsys, argv(cifar, out))
    assert code == 2 and f"--output-dir {out} is not empty (model-0000.params, model-symbol.json, model.json)" in err
    assert "holds no run (state.json)" in err and files(out) == before


@pytest.mark.parametrize("option, value, message", [
    ("--lr", "nan", "lr (--lr) must be a finite number > 0, got nan"),
    ("--lr", "-1", "lr (--lr) must be a finite number > 0, got -1.0"),
    ("--wd", "inf", "wd (--wd) must be a finite number >= 0, got inf"),
    ("--momentum", "1.5", "momentum (--momentum) must be a finite number in [0, 1)"),
    ("--beta1", "nan", "beta1 (--beta1) must be a finite number in [0, 1)"),
    ("--warmup-epochs", "nan", "warmup_epochs must be in [0, epochs), got nan"),
    ("--batch-size", "0", "--batch-size must be >= 1, got 0"),
    ("--epochs", "0", "--epochs must be >= 1, got 0"),
    ("--val-size", "-1", "--val-size must be >= 0, got -1"),
    ("--clip-threshold", "nan", "clip_threshold must be >= 0 and finite, got nan"),
    ("--label-smoothing", "1", "label_smoothing (--label-smoothing) must be a finite number in [0, 1), got 1.0"),
    ("--checkpoint-minutes", "0", "checkpoint_minutes (--checkpoint-minutes) must be a finite number > 0, got 0.0"),
    ("--checkpoint-minutes", "nan", "checkpoint_minutes (--checkpoint-minutes) must be a finite number > 0"),
])
def test_bad_numbers_are_refused_before_anything_is_written(option, value, message, script, cifar, tmp_path, capsys):
    code, err = run(script, capsys, argv(cifar, tmp_path / "out", option, value))
    assert code == 2 and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(script, cifar, tmp_path, capsys,
                                                                              monkeypatch):
    out = tmp_path / "run"
    real, calls = steps.Step.__call__, []

    def nan_in_epoch_two(self, data, label):
        calls.append(1)
        labels, outputs, losses = real(self, data, label)
        if len(calls) == 2 + 1:  # 16 training images in batches of 8: epoch 2, step 1
            losses = [loss * np.nan for loss in losses]
        return labels, outputs, losses

    monkeypatch.setattr(steps.Step, "__call__", nan_in_epoch_two)
    code, err = run(script, capsys, argv(cifar, out, "--epochs", "3"))
    assert code == 2
    assert f"the training loss became nan at epoch 2, step 1 of 2: training stopped and nothing was exported; " \
           f"in {out} the last good checkpoint, checkpoint-0001.params (after epoch 1), is kept" in err
    assert json.load(open(out / "state.json"))["epoch"] == 1
    assert {"checkpoint-0001.params", "checkpoint-0001.states"} <= set(os.listdir(out))
    assert "model.json" not in os.listdir(out) and "checkpoint-0002.params" not in os.listdir(out)


def test_a_diverging_learning_rate_is_stopped(script, cifar, tmp_path, capsys):
    code, err = run(script, capsys, argv(cifar, tmp_path / "run", "--optimizer", "sgd", "--lr", "1e30"))
    assert code == 2 and "the training loss became" in err and "no epoch had finished" in err
    assert "model.json" not in os.listdir(tmp_path / "run")


def test_resume_on_other_training_data_is_refused(script, finished, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    other = write_cifar(str(tmp_path / "other"), count=32)
    code, err = run(script, capsys, argv(other, out, "--resume"))
    assert code == 2 and f"cannot resume {out}: it was trained on a training set of 24 records" in err
    assert "--data-dir now gives 32" in err


def test_a_run_from_before_the_data_records_still_resumes(script, finished, cifar, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    state = json.load(open(out / "state.json"))
    del state["data"]
    json.dump(state, open(out / "state.json", "w"))
    code, _ = run(script, capsys, argv(cifar, out, "--resume"))
    assert code == 0


def _unfinished(script, cifar, out, capsys, monkeypatch, after_calls):
    """A run of 2 epochs interrupted (Ctrl-C) at the given training step."""
    real, calls = steps.Step.__call__, []

    def interrupt(self, *args):
        calls.append(1)
        if len(calls) == after_calls:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(steps.Step, "__call__", interrupt)
    code, err = run(script, capsys, argv(cifar, out, "--epochs", "2"))
    monkeypatch.setattr(steps.Step, "__call__", real)
    assert code == 130
    return err


@pytest.mark.parametrize("damage, message", [
    ("truncate params", "checkpoint-0001.params: truncated"),
    ("remove params", "checkpoint-0001.params: no such checkpoint file"),
    ("foreign params", "checkpoint-0001.params: not a checkpoint of this model"),
    ("truncate states", "checkpoint-0001.states: truncated"),
    ("pickle states", "checkpoint-0001.states: an optimizer state file in MXNet's pickle format"),
    ("broken state.json", "state.json: not a valid run state"),
])
def test_a_damaged_run_directory_is_a_named_error(damage, message, script, cifar, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _unfinished(script, cifar, out, capsys, monkeypatch, 3)
    params, states = out / "checkpoint-0001.params", out / "checkpoint-0001.states"
    if damage == "truncate params":
        params.write_bytes(params.read_bytes()[:500])
    elif damage == "remove params":
        os.remove(params)
    elif damage == "foreign params":
        mx.nd.save(str(params), {"dense0_weight": mx.nd.ones((2, 2))})
    elif damage == "truncate states":
        states.write_bytes(states.read_bytes()[:300])
    elif damage == "pickle states":
        states.write_bytes(b"\x80\x04N.")
    else:
        (out / "state.json").write_text('{"epoch": 1, "hist')
    code, err = run(script, capsys, argv(cifar, out, "--epochs", "2", "--resume"))
    assert code == 2 and "Traceback" not in err and message in err, err


def test_ctrl_c_in_the_first_epoch_then_resume(script, cifar, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    err = _unfinished(script, cifar, out, capsys, monkeypatch, 1)
    assert "interrupted in epoch 1 (no epoch had finished); the same command plus --resume continues" in err
    code, _ = run(script, capsys, argv(cifar, out, "--epochs", "2", "--resume"))
    assert code == 0 and json.load(open(out / "state.json"))["epoch"] == 2


def test_ctrl_c_after_a_mid_epoch_checkpoint_says_where_it_resumes(script, cifar, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real, calls = steps.Step.__call__, []

    def interrupt(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(steps.Step, "__call__", interrupt)
    code, err = run(script, capsys, argv(cifar, out, "--epochs", "2", "--checkpoint-minutes", "1e-9"))
    monkeypatch.setattr(steps.Step, "__call__", real)
    assert code == 130
    assert "interrupted in epoch 1 (last checkpoint at its step 1); the same command plus --resume" in err, err
    assert json.load(open(out / "state.json"))["partial"]["step"] == 1
    code, _ = run(script, capsys, argv(cifar, out, "--epochs", "2", "--resume"))
    assert code == 0 and json.load(open(out / "state.json"))["epoch"] == 2


@pytest.mark.parametrize("case", ["file", "inside a file", "read-only"])
def test_an_unusable_output_dir_is_named(case, script, cifar, tmp_path, capsys):
    if case == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    target = tmp_path / "target"
    if case == "read-only":
        target.mkdir()
        os.chmod(target, 0o555)
        out, message = target / "run", f"--output-dir {target / 'run'}: cannot write there (Permission denied"
    else:
        target.write_text("mine")
        out = target if case == "file" else target / "run"
        message = (f"--output-dir {out}: exists and is not a directory" if case == "file"
                   else f"--output-dir {out}: cannot write there (Not a directory")
    code, err = run(script, capsys, argv(cifar, out))
    assert code == 2 and message in err, err


def test_gpu_context_and_a_data_file_for_data_dir(script, cifar, tmp_path, capsys):
    if mx.context.num_gpus() == 0:
        code, err = run(script, capsys, argv(cifar, tmp_path / "a", "--ctx", "gpu:0"))
        assert code == 2 and "--ctx gpu:0: this MXNet has no GPU support" in err
    rec = os.path.join(cifar, "train.rec")
    code, err = run(script, capsys, argv(rec, tmp_path / "b"))
    assert code == 2 and f"{rec}: a file, but a directory is expected (the directory holding CIFAR-10" in err
    assert f"{cifar}?" in err

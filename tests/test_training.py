"""bmx.training and the example scripts: end-to-end runs on tiny generated data, exact resume,
evaluation of the exported model, the benchmark, reproduce.py, and clear errors."""
import csv
import importlib.util
import json
import os
import subprocess
import sys
import types

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

import bmx
from bmx import convert, data, losses, training
from test_data import write_cifar, write_imagenet_folders, write_imagenet_recordio, write_recordio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A BinaryDenseNet with two one-layer stages: a training step on a batch of 8 takes milliseconds.
TINY_KNOBS = dict(stem="cifar", layers=(1, 1), growth_rate=8, init_features=16, reduction=(1,))
TINY = ["--model", "binary_densenet28", "--stem", "cifar", "--layers", "1,1", "--growth-rate", "8",
        "--init-features", "16", "--reduction", "1", "--batch-size", "8", "--no-progress"]
# Adam at a high rate fits the colour task within an epoch (RAdam starts with a built-in warmup).
FAST = ["--optimizer", "adam", "--lr", "0.01"]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "example", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_script():
    return load_script("train_imagenet")


@pytest.fixture(scope="module")
def evaluate_script():
    return load_script("evaluate")


def read_json_line(text):
    return json.loads(text.strip().splitlines()[-1])


def read_metrics(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- end to end

def test_end_to_end_recordio(tmp_path, train_script, evaluate_script, capsys):
    directory = write_imagenet_recordio(str(tmp_path / "data"))
    out = str(tmp_path / "run")
    code = train_script.main(["--data-dir", directory, "--image-size", "32", "--classes", "4", "--epochs", "2",
                              "--num-workers", "1", "--output-dir", out] + TINY + FAST)
    assert code == 0
    summary = read_json_line(capsys.readouterr().out)
    assert summary["epochs"] == 2
    files = set(os.listdir(out))
    assert {"checkpoint-0002.params", "checkpoint-0002.states", "best.params", "state.json", "metrics.csv",
            "curves.png", "train.log", "model-symbol.json", "model-0000.params", "model.json"} <= files
    assert "checkpoint-0001.params" not in files  # only the newest checkpoint is kept
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == list(training.METRIC_COLUMNS)
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])  # the toy task is learnt
    assert float(rows[1]["val_top1"]) > 0.5 and float(rows[1]["images_per_s"]) > 0
    with open(os.path.join(out, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(out, "train.log")) as f:
        log_text = f.read()
    assert "epoch 2/2" in log_text and "no weight decay on" in log_text
    with open(os.path.join(out, "model.json")) as f:
        meta = json.load(f)
    assert meta["classes"] == 4 and meta["preprocessing"]["image_size"] == 32
    assert meta["data"]["loader"] == "record-iter"

    assert evaluate_script.main(["--model-dir", out, "--data", os.path.join(directory, "val.rec")]) == 0
    result = read_json_line(capsys.readouterr().out)
    assert result["images"] == 16 and 0.5 < result["top1"] <= 1 and result["top5"] == 1.0


def test_end_to_end_image_folder_and_evaluate(tmp_path, train_script, evaluate_script, capsys):
    directory = write_imagenet_folders(str(tmp_path / "data"))
    out = str(tmp_path / "run")
    assert train_script.main(["--data-dir", directory, "--image-size", "32", "--epochs", "2", "--num-workers", "0",
                              "--output-dir", out] + TINY + FAST) == 0
    final = read_metrics(out)[-1]
    assert float(final["val_top1"]) > 0.5
    capsys.readouterr()
    assert evaluate_script.main(["--model-dir", out, "--data", os.path.join(directory, "val")]) == 0
    result = read_json_line(capsys.readouterr().out)
    # The exported model on the same pipeline reproduces the last validation exactly.
    assert result["images"] == 16
    assert result["top1"] == pytest.approx(float(final["val_top1"]), abs=1e-6)
    assert result["top5"] == pytest.approx(float(final["val_top5"]), abs=1e-6)
    exported = bmx.imports(os.path.join(out, "model-symbol.json"), os.path.join(out, "model-0000.params"))
    assert exported(mx.nd.zeros((2, 3, 32, 32))).shape == (2, 4)


def test_cifar_test_split_and_holdout_evaluation(tmp_path, train_script, evaluate_script, capsys):
    directory = write_cifar(str(tmp_path / "data"), count=56, test=16)
    out = str(tmp_path / "run")
    assert train_script.main(["--dataset", "cifar10", "--data-dir", directory, "--val-size", "16", "--epochs", "1",
                              "--output-dir", out] + TINY + FAST) == 0
    summary = read_json_line(capsys.readouterr().out)
    assert summary["test"]["images"] == 16
    final = read_metrics(out)[-1]
    assert evaluate_script.main(["--model-dir", out, "--data", os.path.join(directory, "train.rec"),
                                 "--holdout"]) == 0
    result = read_json_line(capsys.readouterr().out)
    assert result["images"] == 16 and result["holdout"]
    assert result["top1"] == pytest.approx(float(final["val_top1"]), abs=1e-6)
    assert evaluate_script.main(["--model-dir", out, "--data", os.path.join(directory, "test.rec")]) == 0
    assert read_json_line(capsys.readouterr().out)["top1"] == pytest.approx(summary["test"]["top1"], abs=1e-6)
    # the bit-packed model (bmx.runtime) scores the same hold-out images like the MXNet model
    packed = str(tmp_path / "packed")
    convert.binarize(out, packed, verify=True)
    assert evaluate_script.main(["--packed", packed, "--data", os.path.join(directory, "train.rec"), "--holdout",
                                 "--threads", "1"]) == 0
    result_packed = read_json_line(capsys.readouterr().out)
    assert result_packed["packed"] and result_packed["images"] == 16
    # a sign right at a rounding boundary may differ between the runtime and MXNet: allow one image
    assert result_packed["top1"] == pytest.approx(result["top1"], abs=1 / 16 + 1e-9)
    assert result_packed["loss"] == pytest.approx(result["loss"], rel=0.05)


# ----------------------------------------------------------------------------- resume

def _tiny_run(directory, out, resume=False, **kwargs):
    bundle = data.cifar10(directory, 8, val_size=8, seed=3)
    net = training.build_model("binary_densenet28", 10, **TINY_KNOBS)
    # A stateful schedule (warmup, then steps) and RAdam's step counter must both survive the restart.
    recipe = training.Recipe(optimizer="radam", lr=0.02, lr_mode="step", lr_steps=(2,), lr_factor=0.5,
                             warmup_epochs=0.5, epochs=3, batch_size=8, seed=3)
    return training.Run(net, bundle, recipe, out, config={"model": "tiny"}, resume=resume, progress=False,
                        **kwargs)


def _params(run):
    return [p.data().asnumpy() for p in run.net.collect_params().values()]


def test_resume_after_a_crash_equals_an_unbroken_run(tmp_path, monkeypatch):
    directory = write_cifar(str(tmp_path / "data"), count=40)
    unbroken = _tiny_run(directory, str(tmp_path / "a"))
    unbroken.fit()

    out = str(tmp_path / "b")
    batches = len(data.cifar10(directory, 8, val_size=8).train)
    undo = _crash_at_call(monkeypatch, 2 * batches + 2)  # in the third epoch
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(directory, out).fit()
    undo()
    with open(os.path.join(out, "state.json")) as f:
        assert json.load(f)["epoch"] == 2
    assert not os.path.exists(os.path.join(out, "checkpoint-0003.params"))

    resumed = _tiny_run(directory, out, resume=True)
    assert resumed.epoch == 2
    resumed.fit()
    for a, b in zip(_params(unbroken), _params(resumed)):
        np.testing.assert_array_equal(a, b)
    assert unbroken.trainer.learning_rate == resumed.trainer.learning_rate
    volatile = ("images_per_s", "time_s")
    strip = [{k: v for k, v in row.items() if k not in volatile} for row in unbroken.history]
    assert strip == [{k: v for k, v in row.items() if k not in volatile} for row in resumed.history]
    with open(os.path.join(out, "train.log")) as f:
        assert "resumed" in f.read()


def _crash_at_call(monkeypatch, call):
    """Makes the ``call``-th training step (counted over the whole run) raise KeyboardInterrupt."""
    step, calls = training.Step.__call__, []

    def crash(self, *args):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return step(self, *args)

    monkeypatch.setattr(training.Step, "__call__", crash)
    return lambda: monkeypatch.setattr(training.Step, "__call__", step)


def test_resume_inside_an_epoch_equals_an_unbroken_run(tmp_path, monkeypatch):
    directory = write_cifar(str(tmp_path / "data"), count=40)
    unbroken = _tiny_run(directory, str(tmp_path / "a"))
    unbroken.fit()
    batches = len(data.cifar10(directory, 8, val_size=8).train)
    assert batches == 4

    out = str(tmp_path / "b")
    undo = _crash_at_call(monkeypatch, batches + 3)  # epoch 2, step 3: checkpoints after every step until then
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(directory, out, checkpoint_minutes=1e-9).fit()
    undo()
    state = json.load(open(os.path.join(out, "state.json")))
    assert state["epoch"] == 1 and state["partial"]["step"] == 2
    assert state["params"] == "checkpoint-0001-step000002.params"
    assert sorted(f for f in os.listdir(out) if f.startswith("checkpoint")) == [
        "checkpoint-0001-step000002.params", "checkpoint-0001-step000002.states"]

    resumed = _tiny_run(directory, out, resume=True)
    assert (resumed.epoch, resumed.checkpoint_step) == (1, 2)
    resumed.fit()
    for a, b in zip(_params(unbroken), _params(resumed)):
        np.testing.assert_array_equal(a, b)
    assert unbroken.trainer.learning_rate == resumed.trainer.learning_rate
    volatile = ("images_per_s", "time_s")
    strip = [{k: v for k, v in row.items() if k not in volatile} for row in unbroken.history]
    # the epoch's training loss and accuracy continue from the running sums saved at step 2
    assert strip == [{k: v for k, v in row.items() if k not in volatile} for row in resumed.history]
    assert sorted(f for f in os.listdir(out) if f.startswith("checkpoint")) == [
        "checkpoint-0003.params", "checkpoint-0003.states"]
    with open(os.path.join(out, "train.log")) as f:
        assert "resumed %s after epoch 1 of 3 and step 2 of 4" % out in f.read()


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "5", True])
def test_checkpoint_minutes_are_validated(value, tmp_path):
    directory = write_cifar(str(tmp_path / "data"), count=16)
    with pytest.raises(training.run_checks.RunCheckError,
                       match=r"checkpoint_minutes \(--checkpoint-minutes\) must be a finite number > 0"):
        _tiny_run(directory, str(tmp_path / "run"), checkpoint_minutes=value)
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("partial", [{"step": 4, "scores": {}, "seconds": 1.0, "teacher_seconds": 0.0},
                                     {"step": 1, "scores": {"loss": [1.0, 8, 1.0, 8]}, "seconds": 1.0,
                                      "teacher_seconds": 0.0},
                                     {"step": 1, "scores": {}, "seconds": "x", "teacher_seconds": 0.0}, [1]])
def test_a_damaged_mid_epoch_position_is_refused(partial, tmp_path, monkeypatch):
    directory = write_cifar(str(tmp_path / "data"), count=40)
    out = str(tmp_path / "run")
    undo = _crash_at_call(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(directory, out, checkpoint_minutes=1e-9).fit()
    undo()
    path = os.path.join(out, "state.json")
    state = json.load(open(path))
    state["partial"] = partial
    json.dump(state, open(path, "w"))
    with pytest.raises(training.ResumeError, match="state.json: "):
        _tiny_run(directory, out, resume=True)


def _smoothed_run(directory, out, smoothing, resume=False):
    bundle = data.cifar10(directory, 8, val_size=8, seed=3)
    net = training.build_model("binary_densenet28", 10, **TINY_KNOBS)
    recipe = training.Recipe(optimizer="adam", lr=0.01, epochs=2, batch_size=8, seed=3, label_smoothing=smoothing)
    return training.Run(net, bundle, recipe, out, config={"model": "tiny"}, resume=resume, progress=False)


def test_label_smoothing_reaches_the_loss_and_older_runs_still_resume(tmp_path, monkeypatch):
    directory = write_cifar(str(tmp_path / "data"), count=40)
    smoothed = _smoothed_run(directory, str(tmp_path / "s"), 0.2)
    assert isinstance(smoothed.step.loss_fn, losses.SmoothedCrossEntropyLoss) and smoothed.step.loss_fn.smoothing == 0.2
    assert smoothed.config["recipe"]["label_smoothing"] == 0.2

    out = str(tmp_path / "run")
    undo = _crash_at_call(monkeypatch, 5)  # after epoch 1
    with pytest.raises(KeyboardInterrupt):
        _smoothed_run(directory, out, 0.0).fit()
    undo()
    # a run started before the setting existed has no label_smoothing in its state: it had none
    path = os.path.join(out, "state.json")
    state = json.load(open(path))
    del state["config"]["recipe"]["label_smoothing"]
    json.dump(state, open(path, "w"))
    with pytest.raises(training.ResumeError, match=r"recipe.label_smoothing: 0.0 -> 0.1"):
        _smoothed_run(directory, out, 0.1, resume=True)
    resumed = _smoothed_run(directory, out, 0.0, resume=True)
    assert resumed.epoch == 1 and type(resumed.step.loss_fn) is gluon.loss.SoftmaxCrossEntropyLoss
    resumed.fit()
    assert resumed.epoch == 2


def test_resume_refuses_changed_settings(tmp_path, train_script, capsys):
    directory = write_cifar(str(tmp_path / "data"), count=24)
    out = str(tmp_path / "run")
    argv = ["--dataset", "cifar10", "--data-dir", directory, "--val-size", "8", "--epochs", "1"] + TINY
    assert train_script.main(argv + ["--output-dir", out]) == 0
    assert train_script.main(argv + ["--output-dir", out]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert train_script.main(argv + ["--output-dir", out, "--resume", "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "recipe.lr: 0.002 -> 0.1" in err
    assert train_script.main(argv + ["--output-dir", out, "--resume"]) == 0  # finished: re-exports only
    assert train_script.main(argv + ["--output-dir", str(tmp_path / "empty"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def _two_device_run(directory, out, ctx, fit=True):
    """A net without BatchNorm (whose statistics are per device): several devices must then train
    exactly like one on the whole batch, the gradients of the parts summed."""
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(8, 3, padding=1, in_channels=3), bmx.nn.BinaryConvolution(8, 3, padding=1, in_channels=8),
            gluon.nn.GlobalAvgPool2D(), gluon.nn.Dense(10, in_units=8))
    bundle = data.cifar10(directory, 8, val_size=8, seed=3)
    recipe = training.Recipe(optimizer="adam", lr=0.01, epochs=1, batch_size=8, seed=3)
    run = training.Run(net, bundle, recipe, out, ctx=ctx, progress=False)
    if fit:
        run.fit()
    return run


def test_training_on_two_devices_equals_one(tmp_path):
    directory = write_cifar(str(tmp_path / "data"), count=40)
    one = _two_device_run(directory, str(tmp_path / "one"), [mx.cpu(0)])
    two = _two_device_run(directory, str(tmp_path / "two"), [mx.cpu(0), mx.cpu(1)])
    for (name, a), b in zip(one.net.collect_params().items(), two.net.collect_params().values()):
        assert a.list_ctx() == [mx.cpu(0)] and b.list_ctx() == [mx.cpu(0), mx.cpu(1)]
        np.testing.assert_allclose(b.data(mx.cpu(1)).asnumpy(), b.data(mx.cpu(0)).asnumpy(), rtol=0, atol=0,
                                   err_msg=f"{name}: the devices' copies differ")
        np.testing.assert_allclose(b.data(mx.cpu(0)).asnumpy(), a.data().asnumpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    # the comparison means something: training moved every parameter far more than the tolerance
    start = _two_device_run(directory, str(tmp_path / "start"), [mx.cpu(0)], fit=False)
    for (name, a), b in zip(one.net.collect_params().items(), start.net.collect_params().values()):
        assert np.abs(a.data().asnumpy() - b.data().asnumpy()).max() > 1e-3, name
    assert one.history[0]["train_loss"] == pytest.approx(two.history[0]["train_loss"], rel=1e-5)


# ----------------------------------------------------------------------------- recipe pieces

def test_learning_rate_schedules():
    cosine = training.Recipe(lr=1.0, epochs=4, warmup_epochs=1).lr_scheduler(10)
    assert cosine(5) == pytest.approx(0.5)   # linear warmup from 0
    assert cosine(10) == pytest.approx(1.0)
    assert cosine(25) == pytest.approx(0.5)  # half way through the cosine
    assert cosine(40) == pytest.approx(0.0, abs=1e-12)
    step = training.Recipe(lr=1.0, lr_mode="step", lr_steps=(2, 3), epochs=4).lr_scheduler(10)
    assert [step(n) for n in (1, 20, 21, 30, 31, 40)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_recipe_optimizer_defaults():
    assert training.Recipe().optimizer_params(10)["beta1"] == 0.95
    assert training.Recipe(optimizer="adam").optimizer_params(10)["beta1"] == 0.9
    assert training.Recipe(optimizer="sgd", momentum=0.8).optimizer_params(10)["momentum"] == 0.8
    assert training.Recipe(dtype="float16").optimizer_params(10)["multi_precision"]


@pytest.mark.parametrize("options, message", [
    (dict(optimizer="lamb"), "unknown optimizer"),
    (dict(lr_mode="poly"), "unknown lr mode"),
    (dict(lr_mode="step"), "needs lr_steps"),
    (dict(lr_mode="step", lr_steps=(5, 3)), "increasing"),
    (dict(warmup_epochs=200), "warmup_epochs"),
    (dict(dtype="int8"), "dtype"),
])
def test_recipe_validation(options, message):
    with pytest.raises(ValueError, match=message):
        training.Recipe(**options)


def test_no_weight_decay_on_batchnorm_and_binary_weights():
    net = training.build_model("binary_densenet28", 10, **TINY_KNOBS)
    net.initialize()
    names = training.no_weight_decay(net)
    params = net.collect_params()
    kinds = {}
    for name, p in params.items():
        if name.endswith(("gamma", "beta")):
            kinds.setdefault("bn", set()).add(p.wd_mult)
        elif "stage" in name and name.endswith("weight") and "conv" in name:
            kinds.setdefault("binary", set()).add(p.wd_mult)
    assert kinds == {"bn": {0.0}, "binary": {0.0}}
    decayed = [n for n, p in params.items() if p.wd_mult != 0 and p.grad_req != "null"]
    assert any("stem" in n for n in decayed) and any("output" in n for n in decayed)  # first conv, last Dense
    assert set(names) | set(decayed) == {n for n, p in params.items() if p.grad_req != "null"}


def test_parse_ctx():
    assert training.parse_ctx("cpu") == [mx.cpu()]
    if mx.context.num_gpus() >= 2:
        assert training.parse_ctx("gpu:0,1") == [mx.gpu(0), mx.gpu(1)]
    with pytest.raises(ValueError, match="--ctx"):
        training.parse_ctx("tpu")


@pytest.mark.skipif(mx.context.num_gpus() > 0, reason="this MXNet sees a GPU")
def test_gpu_contexts_without_gpus_are_a_clear_error():
    with pytest.raises(ValueError, match="--ctx gpu:0: this MXNet has no GPU support"):
        training.parse_ctx("gpu:0")


def test_float16_is_refused_on_cpu_with_the_reason(tmp_path, train_script, capsys):
    """MXNet 1.9 has no float16 convolution or fully-connected layer on CPU: say so up front."""
    directory = write_cifar(str(tmp_path / "data"), count=24)
    assert train_script.main(["--dataset", "cifar10", "--data-dir", directory, "--val-size", "8", "--epochs", "1",
                              "--dtype", "float16", "--output-dir", str(tmp_path / "run")] + TINY) == 2
    assert "float16 training needs GPU contexts" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run" / "state.json")


@pytest.mark.skipif(bmx.precision.bfloat16_support()[0], reason="this CPU supports bfloat16")
def test_bfloat16_is_refused_without_cpu_support(tmp_path, train_script, capsys):
    """No silent slowdown: without AVX-512 BF16 the run stops before it starts, saying why."""
    directory = write_cifar(str(tmp_path / "data"), count=24)
    assert train_script.main(["--dataset", "cifar10", "--data-dir", directory, "--val-size", "8", "--epochs", "1",
                              "--dtype", "bfloat16", "--output-dir", str(tmp_path / "run")] + TINY) == 2
    err = capsys.readouterr().err
    assert "bfloat16 training is not available here" in err and "avx512_bf16" in err
    assert not os.path.exists(tmp_path / "run" / "state.json")
    assert train_script.main(["--benchmark", "--dtype", "bfloat16"] + TINY) == 2


# ----------------------------------------------------------------------------- benchmark and errors

def test_benchmark_prints_speed(train_script, capsys):
    assert train_script.main(["--benchmark", "--image-size", "32", "--benchmark-iters", "2"] + TINY) == 0
    result = read_json_line(capsys.readouterr().out)
    assert result["images_per_s"] > 0 and result["batch_size"] == 8 and result["iters"] == 2
    assert result["epoch_images"] == data.IMAGENET_TRAIN_IMAGES and result["epoch_h"] > 0


def test_float_twin_benchmark(train_script, capsys):
    assert train_script.main(["--benchmark", "--float", "--dataset", "cifar10", "--benchmark-iters", "1"] + TINY) == 0
    result = read_json_line(capsys.readouterr().out)
    assert result["binary"] is False and result["epoch_images"] == 45000 and result["image_size"] == 32


@pytest.mark.parametrize("argv, message", [
    (["--data-dir", "/nonexistent/imagenet"], "/nonexistent/imagenet: no such directory"),
    (["--dataset", "cifar10", "--data-dir", "{tmp}"], "expected train.rec and train.idx"),
    (["--model", "binary_densenet99"], "unknown model 'binary_densenet99'"),
    (["--model", "binary_resnet_e18", "--growth-rate", "8"], "growth_rate"),
    (["--ctx", "tpu"], "--ctx"),
    (["--kv-store", "dist_sync"], "start the job with tools/launch.py"),
])
def test_cli_errors_are_clear(tmp_path, train_script, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert train_script.main(argv + ["--output-dir", str(tmp_path / "out"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_distributed_kvstores_need_the_launcher(monkeypatch):
    monkeypatch.delenv("DMLC_ROLE", raising=False)
    with pytest.raises(ValueError, match="dist_async runs on MXNet's parameter server: start the job with"):
        training.create_kvstore("dist_async")
    with pytest.raises(ValueError, match="unknown distributed kvstore 'dist_fast'"):
        training.create_kvstore("dist_fast")
    assert training.create_kvstore("local") == "local"


def test_run_refuses_data_not_split_for_its_workers(tmp_path):
    """A worker of 2 must read its half of the training data (bmx.data's num_parts/part_index)."""
    bundle = data.cifar10(write_cifar(str(tmp_path / "data"), count=24), 8, val_size=8)
    two_workers = types.SimpleNamespace(type="dist_sync", rank=0, num_workers=2)  # what Run reads of a KVStore
    net = training.build_model("binary_densenet28", 10, **TINY_KNOBS)
    with pytest.raises(ValueError, match=r"read as 1 part\(s\) but the job has 2 worker\(s\)"):
        training.Run(net, bundle, training.Recipe(batch_size=8), str(tmp_path / "run"), kvstore=two_workers)
    assert not os.path.exists(tmp_path / "run")


def test_cli_corrupt_record_is_named(tmp_path, train_script, capsys):
    write_recordio(str(tmp_path / "train"), 32, corrupt={9})
    code = train_script.main(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--val-size", "4", "--epochs", "1",
                              "--output-dir", str(tmp_path / "out")] + TINY)
    assert code == 2
    assert "train.rec: record 9 (key 9) is corrupt or not an image" in capsys.readouterr().err


def test_training_needs_an_output_dir(tmp_path, train_script):
    with pytest.raises(SystemExit) as exc:
        train_script.main(["--data-dir", str(tmp_path)])
    assert exc.value.code == 2


def test_evaluate_errors(tmp_path, evaluate_script, capsys):
    assert evaluate_script.main(["--model-dir", str(tmp_path), "--data", "x.rec"]) == 2
    assert "model.json: not found" in capsys.readouterr().err
    assert evaluate_script.main(["--packed", str(tmp_path / "nothing"), "--data", "x.rec"]) == 2
    assert "nothing" in capsys.readouterr().err


# ----------------------------------------------------------------------------- reproduce.py

def test_reproduce_commands_are_documented():
    reproduce = load_script("reproduce")
    with open(os.path.join(ROOT, "docs", "reproduce.md")) as f:
        doc = f.read()
    for name, (_, rows) in reproduce.TABLES.items():
        assert f"`{name}`" in doc
        for r in rows:
            line = reproduce.shell(reproduce.command(r, "$IMAGENET", "runs", "gpu:0,1,2,3", 64))
            assert line in doc, line
            assert r.label in doc


def test_reproduce_dry_run_prints_runnable_commands(train_script, capsys):
    reproduce = load_script("reproduce")
    assert reproduce.main(["--table", "all", "--dry-run", "--data-dir", "/data/imagenet"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("python ")]
    assert len(lines) == sum(len(rows) for _, rows in reproduce.TABLES.values())
    parser = train_script.build_parser()
    for line in lines:  # every command parses with train_imagenet.py's own parser
        args = parser.parse_args(line.split()[2:])
        assert args.data_dir == "/data/imagenet" and args.model in bmx.models.list_models()


@pytest.mark.slow
def test_reproduce_runs_resumes_and_tabulates(tmp_path):
    """Two rows on a toy ImageNet, then a rerun that skips finished rows and resumes an unfinished one."""
    directory = write_imagenet_recordio(str(tmp_path / "data"))
    runs = str(tmp_path / "runs")
    extra = " ".join(["--epochs", "1", "--image-size", "32", "--classes", "4", "--ctx", "cpu", "--loader", "gluon",
                      "--num-workers", "0"] + TINY[2:])
    argv = [sys.executable, os.path.join(ROOT, "example", "reproduce.py"), "--table", "poster-blocks",
            "--data-dir", directory, "--runs-dir", runs, "--extra", extra]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    with open(os.path.join(runs, "results-poster-blocks.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["bdn_poster_8x256", "bdn_poster_16x128", "bdn_poster_32x64"]
    assert all(r["epochs"] == "1" and float(r["measured_top1"]) >= 0 for r in rows)
    assert rows[0]["size_mb"] == "3.31" and rows[0]["published_top1"] == "50.2"
    with open(os.path.join(runs, "results-poster-blocks.md")) as f:
        assert "| 8 blocks of 256 |" in f.read()
    state_path = os.path.join(runs, "bdn_poster_8x256-paper", "state.json")
    with open(state_path) as f:
        state = json.load(f)
    state.pop("finished")
    with open(state_path, "w") as f:
        json.dump(state, f)
    second = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "--resume" in second.stdout.split("8 blocks of 256:")[1].splitlines()[0]
    assert second.stdout.count("finished, skipped") == 2


@pytest.mark.slow
def test_default_command_is_the_benchmark():
    """`python example/train_imagenet.py` with no arguments: the quick start's benchmark."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "example", "train_imagenet.py"), "--no-progress"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    speed = read_json_line(result.stdout)
    assert speed["model"] == "binary_densenet28" and speed["image_size"] == 224 and speed["images_per_s"] > 0

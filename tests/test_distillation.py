"""Distillation loss against a numpy reference, and teachers loaded from files."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn

import bmx
from bmx import distillation
from bmx.data import CIFAR10_MEAN, CIFAR10_STD, Preprocessing
from bmx.model_io import ModelFileError

PREP = Preprocessing(8, CIFAR10_MEAN, CIFAR10_STD, 0)


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def reference_loss(s, t, y, temperature, weight, smoothing=0.0):
    """The loss and its gradient into the student logits, in float64 numpy."""
    s, t = s.astype(np.float64), t.astype(np.float64)
    target = (1 - smoothing) * np.eye(s.shape[1])[y] + smoothing / s.shape[1]
    ce = -(target * _log_softmax(s)).sum(axis=-1)
    log_pt, log_ps = _log_softmax(t / temperature), _log_softmax(s / temperature)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=-1)
    loss = (1 - weight) * ce + weight * temperature ** 2 * kl
    grad = (1 - weight) * (np.exp(_log_softmax(s)) - target) + weight * temperature * (np.exp(log_ps) - np.exp(log_pt))
    return loss, grad


@pytest.mark.parametrize("temperature,weight,smoothing", [(1.0, 0.5, 0.0), (4.0, 0.9, 0.0), (2.5, 0.0, 0.0),
                                                          (8.0, 1.0, 0.0), (4.0, 0.5, 0.1), (2.0, 0.0, 0.3)])
def test_loss_and_gradient_match_numpy(temperature, weight, smoothing):
    rng = np.random.default_rng(3)
    s = rng.normal(scale=3, size=(6, 10)).astype(np.float32)
    t = rng.normal(scale=3, size=(6, 10)).astype(np.float32)
    y = rng.integers(0, 10, size=6)
    student = mx.nd.array(s)
    student.attach_grad()
    with autograd.record():
        loss = distillation.DistillationLoss(temperature, weight, smoothing)(student, mx.nd.array(t), mx.nd.array(y))
    loss.backward()
    want_loss, want_grad = reference_loss(s, t, y, temperature, weight, smoothing)
    np.testing.assert_allclose(loss.asnumpy(), want_loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(student.grad.asnumpy(), want_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("temperature,weight", [(0, 0.5), (-1, 0.5), (float("nan"), 0.5), (float("inf"), 0.5),
                                                (4, -0.1), (4, 1.5), (4, float("nan"))])
def test_invalid_settings_are_refused(temperature, weight):
    with pytest.raises(ValueError, match="distillation"):
        distillation.DistillationLoss(temperature, weight)


def small_net(seed, classes=10, width=8):
    net = nn.HybridSequential()
    net.add(nn.Conv2D(width, 3, padding=1, in_channels=3), nn.BatchNorm(in_channels=width), nn.Activation("relu"),
            nn.GlobalAvgPool2D(), nn.Dense(classes, in_units=width))
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier())
    return net


def test_teacher_that_is_the_student_gives_zero_kl():
    net = small_net(0)
    x = mx.nd.array(np.random.default_rng(0).normal(size=(5, 3, 8, 8)))
    teacher = distillation.Teacher(net, "self")
    t = teacher(x)
    s = net(x)
    kl = distillation.kl_divergence(mx.nd, s, t, 4.0).asnumpy()
    np.testing.assert_allclose(kl, 0.0, atol=1e-6)
    y = mx.nd.array([1, 2, 3, 4, 5])
    plain = gluon.loss.SoftmaxCrossEntropyLoss()(s, y).asnumpy()
    np.testing.assert_allclose(distillation.DistillationLoss(4.0, 0.9)(s, t, y).asnumpy(), 0.1 * plain, rtol=1e-5)


def test_teacher_runs_in_inference_mode_without_gradients():
    net = small_net(1)
    teacher = distillation.Teacher(net, "t")
    x = mx.nd.array(np.random.default_rng(1).normal(size=(4, 3, 8, 8)))
    with autograd.record():
        out = teacher(x)
    assert not out._fresh_grad
    # Running statistics untouched, and the output is the inference-mode one.
    np.testing.assert_allclose(out.asnumpy(), net(x).asnumpy(), rtol=1e-6)
    assert all(p.grad_req == "null" for p in net.collect_params().values())


def test_distillation_moves_the_student_toward_the_teacher():
    teacher_net, student = small_net(11), small_net(12)
    teacher = distillation.Teacher(teacher_net, "t")
    rng = np.random.default_rng(5)
    x = mx.nd.array(rng.normal(size=(32, 3, 8, 8)))
    y = mx.nd.array(rng.integers(0, 10, size=32))
    loss_fn = distillation.DistillationLoss(temperature=2.0, weight=1.0)
    trainer = gluon.Trainer(student.collect_params(), "adam", {"learning_rate": 0.02})
    t = teacher(x)

    def distance():
        return float(distillation.kl_divergence(mx.nd, student(x), t, 1.0).mean().asscalar())

    before = distance()
    agree_before = (student(x).argmax(axis=1) == t.argmax(axis=1)).mean().asscalar()
    for _ in range(60):
        with autograd.record():
            loss = loss_fn(student(x), t, y)
        loss.backward()
        trainer.step(32)
    after = distance()
    agree_after = (student(x).argmax(axis=1) == t.argmax(axis=1)).mean().asscalar()
    assert after < 0.3 * before, (before, after)
    assert agree_after > agree_before and agree_after >= 0.75


def write_exported(net, directory, classes=10, image_size=8, mean=CIFAR10_MEAN, std=CIFAR10_STD):
    directory.mkdir()
    net.hybridize()
    bmx.export(net, str(directory / "model"), input_shape=(1, 3, image_size, image_size))
    (directory / "model.json").write_text(json.dumps(dict(
        classes=classes, preprocessing=dict(image_size=image_size, mean=list(mean), std=list(std), resize=0))))


def test_exported_teacher_reproduces_its_network(tmp_path):
    net = small_net(2)
    write_exported(net, tmp_path / "teacher")
    teacher = distillation.load_teacher(str(tmp_path / "teacher"), 10, PREP)
    x = mx.nd.array(np.random.default_rng(2).normal(size=(3, 3, 8, 8)))
    np.testing.assert_allclose(teacher(x).asnumpy(), net(x).asnumpy(), rtol=1e-5, atol=1e-6)


def test_teacher_with_other_normalization_sees_the_same_image(tmp_path):
    """A teacher normalized with other statistics gets (image - its mean) / its std."""
    net = small_net(3)
    mean, std = (100.0, 110.0, 120.0), (50.0, 55.0, 60.0)
    write_exported(net, tmp_path / "teacher", mean=mean, std=std)
    teacher = distillation.load_teacher(str(tmp_path / "teacher"), 10, PREP)
    image = np.random.default_rng(3).uniform(0, 255, size=(2, 3, 8, 8))
    chan = (1, 3, 1, 1)
    student_input = (image - np.reshape(CIFAR10_MEAN, chan)) / np.reshape(CIFAR10_STD, chan)
    teacher_input = (image - np.reshape(mean, chan)) / np.reshape(std, chan)
    np.testing.assert_allclose(teacher(mx.nd.array(student_input)).asnumpy(),
                               net(mx.nd.array(teacher_input)).asnumpy(), rtol=1e-4, atol=1e-5)


def test_exported_teacher_must_match_the_student(tmp_path):
    write_exported(small_net(4, classes=5), tmp_path / "five", classes=5)
    with pytest.raises(ValueError, match="5 classes, but the student has 10"):
        distillation.load_teacher(str(tmp_path / "five"), 10, PREP)
    write_exported(small_net(4), tmp_path / "big", image_size=16)
    with pytest.raises(ValueError, match="input size 16"):
        distillation.load_teacher(str(tmp_path / "big"), 10, PREP)
    with pytest.raises(ModelFileError, match="no such directory"):
        distillation.load_teacher(str(tmp_path / "missing"), 10, PREP)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="model.json is missing"):
        distillation.load_teacher(str(tmp_path / "empty"), 10, PREP)
    (tmp_path / "big" / "model.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="model.json: not a model.json"):
        distillation.load_teacher(str(tmp_path / "big"), 10, PREP)


def test_gluoncv_teacher_loads_its_parameter_file(tmp_path):
    from gluoncv.model_zoo import get_model

    net = get_model("cifar_resnet20_v1", pretrained=False, classes=10)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))  # gluoncv defers its shapes to the first forward
    params = str(tmp_path / "resnet20.params")
    net.save_parameters(params)
    teacher = distillation.load_teacher("gluoncv:cifar_resnet20_v1", 10, Preprocessing(32, CIFAR10_MEAN,
                                                                                       CIFAR10_STD, 0), params)
    image = np.random.default_rng(4).uniform(0, 255, size=(2, 3, 32, 32))
    chan = (1, 3, 1, 1)
    student_input = (image - np.reshape(CIFAR10_MEAN, chan)) / np.reshape(CIFAR10_STD, chan)
    mean = np.array([0.4914, 0.4822, 0.4465]) * 255
    std = np.array([0.2023, 0.1994, 0.2010]) * 255
    gluoncv_input = (image - mean.reshape(chan)) / std.reshape(chan)
    np.testing.assert_allclose(teacher(mx.nd.array(student_input)).asnumpy(),
                               net(mx.nd.array(gluoncv_input)).asnumpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="--teacher-params"):
        distillation.load_teacher("gluoncv:cifar_resnet20_v1", 10, PREP)
    with pytest.raises(ModelFileError, match="not the parameters of cifar_resnet56_v1"):
        distillation.load_teacher("gluoncv:cifar_resnet56_v1", 10, PREP, params)


# ----------------------------------------------------------------------------- training with a teacher

def _train_script():
    import importlib.util
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("train_imagenet", os.path.join(root, "example", "train_imagenet.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = ["--model", "binary_densenet28", "--stem", "cifar", "--layers", "1,1", "--growth-rate", "8",
        "--init-features", "16", "--reduction", "1", "--batch-size", "8", "--no-progress", "--val-size", "8"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """CIFAR-like records and a float teacher trained on them for one epoch."""
    from test_data import write_cifar

    root = tmp_path_factory.mktemp("distill")
    directory = write_cifar(str(root / "data"), count=32)
    script = _train_script()
    teacher = str(root / "teacher")
    assert script.main(["--dataset", "cifar10", "--data-dir", directory, "--epochs", "1", "--float",
                        "--output-dir", teacher] + TINY) == 0
    return script, directory, teacher


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cli_distills_with_the_teacher_in_its_metrics(tmp_path, teacher_run, dtype):
    import csv
    import os

    from bmx import precision

    if dtype == "bfloat16" and not precision.bfloat16_support()[0]:
        pytest.skip(precision.bfloat16_support()[1])
    script, directory, teacher = teacher_run
    argv = ["--dataset", "cifar10", "--data-dir", directory, "--epochs", "2", "--teacher", teacher, "--dtype", dtype,
            "--distill-temperature", "3", "--distill-weight", "0.7", "--output-dir", str(tmp_path / "run")] + TINY
    assert script.main(argv) == 0
    with open(tmp_path / "run" / "state.json") as f:
        state = json.load(f)
    assert state["config"]["distillation"] == dict(teacher=os.path.abspath(teacher), params=None,
                                                   temperature=3.0, weight=0.7)
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(float(r["teacher_s"]) > 0 for r in rows)


def _distilled_run(directory, teacher, out, resume=False):
    from bmx import data, training

    bundle = data.cifar10(directory, 8, val_size=8, seed=3)
    net = training.build_model("binary_densenet28", 10, stem="cifar", layers=(1, 1), growth_rate=8,
                               init_features=16, reduction=(1,))
    recipe = training.Recipe(optimizer="radam", lr=0.02, epochs=3, batch_size=8, seed=3)
    return training.Run(net, bundle, recipe, out, resume=resume, progress=False,
                        distillation=distillation.Distillation(teacher, temperature=2.0, weight=0.5))


def test_resume_with_a_teacher_equals_an_unbroken_run(tmp_path, teacher_run, monkeypatch):
    from bmx import training

    _, directory, teacher = teacher_run
    unbroken = _distilled_run(directory, teacher, str(tmp_path / "a"))
    unbroken.fit()
    step, calls = training.Step.__call__, []

    def crash_in_second_epoch(self, *args):
        calls.append(1)
        if len(calls) == len(unbroken.data.train) + 2:
            raise KeyboardInterrupt
        return step(self, *args)

    monkeypatch.setattr(training.Step, "__call__", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        _distilled_run(directory, teacher, str(tmp_path / "b")).fit()
    monkeypatch.setattr(training.Step, "__call__", step)
    resumed = _distilled_run(directory, teacher, str(tmp_path / "b"), resume=True)
    assert resumed.epoch == 1
    resumed.fit()
    for a, b in zip(unbroken.net.collect_params().values(), resumed.net.collect_params().values()):
        np.testing.assert_array_equal(a.data().asnumpy(), b.data().asnumpy(), err_msg=a.name)


def test_cli_resume_needs_the_same_teacher(tmp_path, teacher_run, capsys):
    script, directory, teacher = teacher_run
    argv = ["--dataset", "cifar10", "--data-dir", directory, "--epochs", "1"] + TINY
    out = str(tmp_path / "run")
    assert script.main(argv + ["--output-dir", out, "--teacher", teacher]) == 0
    capsys.readouterr()
    assert script.main(argv + ["--output-dir", out, "--resume"]) == 2
    assert "distillation" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--distill-weight", "0.5"], "--distill-weight needs --teacher"),
    (["--teacher-params", "x.params"], "--teacher-params needs --teacher"),
    (["--teacher", "TEACHER", "--distill-temperature", "0"], "temperature must be a positive"),
    (["--teacher", "TEACHER", "--distill-weight", "nan"], "weight must be in"),
    (["--teacher", "TEACHER", "--teacher-params", "x.params"], "only for a gluoncv"),
    (["--teacher", "missing-dir"], "no such directory"),
])
def test_cli_distillation_errors(tmp_path, teacher_run, capsys, extra, message):
    script, directory, teacher = teacher_run
    extra = [teacher if a == "TEACHER" else a for a in extra]
    argv = ["--dataset", "cifar10", "--data-dir", directory, "--epochs", "1", "--output-dir",
            str(tmp_path / "run")] + TINY + extra
    assert script.main(argv) == 2
    assert message in capsys.readouterr().err

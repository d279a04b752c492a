"""bmx.optimizer_state: a trainer's optimizer state saved and restored exactly, without pickle."""
import json
import os
import pickle

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from bmx import optimizer_state, training
from bmx.optimizer_state import OptimizerStateError
from test_data import write_cifar
from test_training import _tiny_run


def make(optimizer, ctx, seed=0, **recipe):
    mx.random.seed(seed)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(6, in_units=5), gluon.nn.Dense(3, in_units=6))
    net.initialize(mx.init.Xavier(), ctx=ctx)
    r = training.Recipe(optimizer=optimizer, lr=0.05, epochs=3, **recipe)
    return net, gluon.Trainer(net.collect_params(), optimizer, r.optimizer_params(2))


def steps(net, trainer, ctx, start, count):
    for i in range(start, start + count):
        x = mx.nd.array(np.random.default_rng(i).standard_normal((4 * len(ctx), 5)))
        y = mx.nd.array(np.random.default_rng(100 + i).integers(0, 3, 4 * len(ctx)))
        xs, ys = gluon.utils.split_and_load(x, ctx), gluon.utils.split_and_load(y, ctx)
        with autograd.record():
            losses = [gluon.loss.SoftmaxCrossEntropyLoss()(net(a), b) for a, b in zip(xs, ys)]
        autograd.backward(losses)
        trainer.step(x.shape[0])


CASES = [("adam", [mx.cpu()], {}), ("sgd", [mx.cpu()], dict(momentum=0.9)),
         ("radam", [mx.cpu()], dict(lr_mode="step", lr_steps=(1, 2), warmup_epochs=0.5)),
         ("adam", [mx.cpu(0), mx.cpu(1)], dict(warmup_epochs=1.0))]


@pytest.mark.parametrize("optimizer, ctx, recipe", CASES, ids=["adam", "sgd", "radam-step", "adam-2-devices"])
def test_a_restored_trainer_continues_exactly(optimizer, ctx, recipe, tmp_path):
    unbroken, trainer = make(optimizer, ctx, **recipe)
    steps(unbroken, trainer, ctx, 0, 6)

    first, trainer = make(optimizer, ctx, **recipe)
    steps(first, trainer, ctx, 0, 3)
    first.save_parameters(str(tmp_path / "p.params"))
    optimizer_state.save_states(trainer, str(tmp_path / "s.states"))
    with open(tmp_path / "s.states", "rb") as f:
        assert f.read(1) != b"\x80"  # not a pickle
    resumed, trainer = make(optimizer, ctx, seed=7, **recipe)  # other initial weights, fresh optimizer
    resumed.load_parameters(str(tmp_path / "p.params"), ctx=ctx)
    optimizer_state.load_states(trainer, str(tmp_path / "s.states"))
    assert trainer._optimizer.num_update == 3
    steps(resumed, trainer, ctx, 3, 3)
    for (name, a), b in zip(unbroken.collect_params().items(), resumed.collect_params().values()):
        for c in ctx:
            np.testing.assert_array_equal(a.data(c).asnumpy(), b.data(c).asnumpy(), err_msg=f"{name} on {c}")
    assert trainer.learning_rate == pytest.approx(make(optimizer, ctx, **recipe)[1].optimizer.lr_scheduler(6), rel=0)


class _Payload:
    """Unpickling this creates the file ``path``: what a crafted .states file could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_pickle_states_file_is_not_executed_on_resume(tmp_path):
    directory = write_cifar(str(tmp_path / "data"), count=24)
    out = str(tmp_path / "run")
    run = _tiny_run(directory, out)
    run.recipe = training.Recipe(**dict(vars(run.recipe), epochs=1))
    run.fit()
    state = json.load(open(os.path.join(out, "state.json")))
    marker = tmp_path / "pwned"
    with open(os.path.join(out, state["states"]), "wb") as f:
        pickle.dump((_Payload(str(marker)), None), f, protocol=2)
    with pytest.raises(OptimizerStateError, match=r"checkpoint-0001.states: an optimizer state file in MXNet's "
                                                  r"pickle format .* bmx never unpickles files"):
        _tiny_run(directory, out, resume=True)
    assert not marker.exists()


@pytest.fixture
def saved(tmp_path):
    net, trainer = make("adam", [mx.cpu()])
    steps(net, trainer, [mx.cpu()], 0, 2)
    path = str(tmp_path / "s.states")
    optimizer_state.save_states(trainer, path)
    return path


def test_damaged_or_foreign_files_are_named_errors(saved, tmp_path):
    _, trainer = make("adam", [mx.cpu()])
    with pytest.raises(OptimizerStateError, match="nothing.states: no such optimizer state file"):
        optimizer_state.load_states(trainer, str(tmp_path / "nothing.states"))
    data = open(saved, "rb").read()
    truncated = str(tmp_path / "truncated.states")
    open(truncated, "wb").write(data[:len(data) // 2])
    with pytest.raises(OptimizerStateError, match=r"truncated.states: truncated.*not a bmx optimizer state file"):
        optimizer_state.load_states(trainer, truncated)
    params_only = str(tmp_path / "params.states")
    mx.nd.save(params_only, {"a": mx.nd.ones(3)})
    with pytest.raises(OptimizerStateError, match="params.states: not a bmx optimizer state file"):
        optimizer_state.load_states(trainer, params_only)
    _, sgd = make("sgd", [mx.cpu()], momentum=0.9)
    with pytest.raises(OptimizerStateError, match="the state of optimizer 'Adam', but this run uses 'SGD'"):
        optimizer_state.load_states(sgd, saved)
    other = gluon.nn.HybridSequential()
    other.add(gluon.nn.Dense(7, in_units=5), gluon.nn.Dense(3, in_units=7))
    other.initialize()
    with pytest.raises(OptimizerStateError, match=r"s.states: state:0.0 has shape \(6,\), but parameter \S+ "
                                                  r"has shape \(7,\): the state of another model"):
        optimizer_state.load_states(gluon.Trainer(other.collect_params(), "adam",
                                                  training.Recipe(optimizer="adam").optimizer_params(2)), saved)

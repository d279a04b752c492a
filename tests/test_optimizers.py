"""bmx.optimizers.RAdam against a plain numpy transcription of its documented update."""
import math
import pickle

import mxnet as mx
import numpy as np
import pytest

from bmx import optimizers


def radam_reference(w, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.0, rescale=1.0, clip=None, lrs=None):
    """The update of the RAdam docstring in float64; returns the weights after every step."""
    w = w.astype(np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    rho_inf = 2 / (1 - beta2) - 1
    out = []
    for t, grad in enumerate(grads, 1):
        step_lr = lrs[t - 1] if lrs is not None else lr
        g = grad.astype(np.float64) * rescale
        if clip is not None:
            g = np.clip(g, -clip, clip)
        g = g + wd * w
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1 ** t)
        rho_t = rho_inf - 2 * t * beta2 ** t / (1 - beta2 ** t)
        if rho_t > 4:
            v_hat = v / (1 - beta2 ** t)
            r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            w = w - step_lr * r * m_hat / (np.sqrt(v_hat) + eps)
        else:
            w = w - step_lr * m_hat
        out.append(w.copy())
    return out


def run_optimizer(opt, w0, grads, dtype=np.float32):
    weight = mx.nd.array(w0, dtype=dtype)
    state = opt.create_state_multi_precision(0, weight)
    out = []
    for g in grads:
        opt.update_multi_precision(0, weight, mx.nd.array(g, dtype=dtype), state)
        out.append(weight.asnumpy().astype(np.float64))
    return out, state


def data(steps=12, shape=(5, 7), seed=0):
    rng = np.random.RandomState(seed)
    return rng.standard_normal(shape).astype(np.float32), [rng.standard_normal(shape).astype(np.float32) * 0.3
                                                          for _ in range(steps)]


def test_registered_with_mxnet():
    opt = mx.optimizer.create("radam", learning_rate=0.1, beta1=0.95)
    assert isinstance(opt, optimizers.RAdam) and opt.beta1 == 0.95


def test_first_steps_are_momentum_steps_then_rectified():
    """With beta2 = 0.999, rho_t = 1.0, 2.0, 3.0, 4.0 (just below), 5.0, ...: four momentum steps."""
    rho_inf = 2 / 0.001 - 1
    rho = [rho_inf - 2 * t * 0.999 ** t / (1 - 0.999 ** t) for t in range(1, 8)]
    assert [r > 4 for r in rho] == [False] * 4 + [True] * 3
    w0, grads = data(steps=1)
    got, _ = run_optimizer(optimizers.RAdam(learning_rate=0.5), w0, grads)
    np.testing.assert_allclose(got[0], w0 - 0.5 * grads[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("options", [
    dict(),
    dict(beta1=0.95),
    dict(wd=0.01, rescale_grad=0.5, clip_gradient=0.2),
    dict(beta2=0.99, epsilon=1e-6),
])
def test_matches_numpy_reference_over_many_steps(options):
    w0, grads = data(steps=15)
    opt = optimizers.RAdam(learning_rate=0.01, **options)
    got, _ = run_optimizer(opt, w0, grads)
    ref = radam_reference(w0, grads, 0.01, beta1=options.get("beta1", 0.9), beta2=options.get("beta2", 0.999),
                          eps=options.get("epsilon", 1e-8), wd=options.get("wd", 0.0),
                          rescale=options.get("rescale_grad", 1.0), clip=options.get("clip_gradient"))
    for step, (a, b) in enumerate(zip(got, ref), 1):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")


def test_follows_the_learning_rate_scheduler():
    w0, grads = data(steps=10)
    sched = mx.lr_scheduler.FactorScheduler(step=3, factor=0.5, base_lr=0.02)
    got, _ = run_optimizer(optimizers.RAdam(learning_rate=0.02, lr_scheduler=sched), w0, grads)
    lrs = [0.02 * 0.5 ** ((t - 1) // 3) for t in range(1, 11)]
    ref = radam_reference(w0, grads, None, lrs=lrs)
    np.testing.assert_allclose(got[-1], ref[-1], rtol=1e-5, atol=1e-6)


def test_weight_decay_multiplier_zero_is_respected():
    w0, grads = data(steps=6)
    opt = optimizers.RAdam(learning_rate=0.01, wd=0.1)
    opt.set_wd_mult({0: 0.0})
    opt.idx2name = {0: "w"}
    got, _ = run_optimizer(opt, w0, grads)
    np.testing.assert_allclose(got[-1], radam_reference(w0, grads, 0.01)[-1], rtol=1e-5, atol=1e-6)


def test_multi_precision_updates_a_float32_master_copy():
    w0, grads = data(steps=8)
    opt = optimizers.RAdam(learning_rate=0.01, multi_precision=True)
    got, state = run_optimizer(opt, w0.astype(np.float16), [g.astype(np.float16) for g in grads], dtype=np.float16)
    master = state[0]
    assert master.dtype == np.float32
    ref = radam_reference(w0.astype(np.float16), [g.astype(np.float16) for g in grads], 0.01)
    np.testing.assert_allclose(master.asnumpy(), ref[-1], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got[-1], master.asnumpy().astype(np.float16))


def test_state_round_trip_continues_identically():
    """Pickled optimizer + states (what Trainer.save_states writes) resume the same trajectory."""
    w0, grads = data(steps=10)
    opt = optimizers.RAdam(learning_rate=0.01)
    updater = mx.optimizer.get_updater(opt)
    weight = mx.nd.array(w0)
    for g in grads[:4]:
        updater(0, mx.nd.array(g), weight)
    saved, saved_weight = updater.get_states(dump_optimizer=True), weight.copy()
    for g in grads[4:]:
        updater(0, mx.nd.array(g), weight)
    resumed = mx.optimizer.get_updater(optimizers.RAdam(learning_rate=1.0))
    resumed.set_states(saved)
    assert isinstance(resumed.optimizer, optimizers.RAdam) and resumed.optimizer.learning_rate == 0.01
    for g in grads[4:]:
        resumed(0, mx.nd.array(g), saved_weight)
    np.testing.assert_array_equal(saved_weight.asnumpy(), weight.asnumpy())
    assert pickle.loads(saved)[1].num_update == 4


def test_trains_a_gluon_model():
    """Through mx.gluon.Trainer by name: least squares converges."""
    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.standard_normal((64, 3)))
    y = mx.nd.dot(x, mx.nd.array([[1.0], [-2.0], [0.5]]))
    net = mx.gluon.nn.Dense(1, in_units=3)
    net.initialize(mx.init.Zero())
    trainer = mx.gluon.Trainer(net.collect_params(), "radam", {"learning_rate": 0.1})
    for _ in range(200):
        with mx.autograd.record():
            loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        trainer.step(1)
    assert loss.asscalar() < 1e-3


def test_invalid_betas_are_rejected():
    with pytest.raises(ValueError, match="beta1"):
        optimizers.RAdam(beta1=1.0)

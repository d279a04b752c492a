"""bmx.losses: smoothed cross-entropy and its gradient against a float64 numpy reference."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from bmx import losses


def reference(logits, labels, eps):
    """-sum_c q log softmax with q = (1 - eps) onehot + eps / K, and softmax - q, in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    q = (1 - eps) * np.eye(z.shape[1])[labels] + eps / z.shape[1]
    return -(q * log_p).sum(axis=-1), np.exp(log_p) - q


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 0.95])
@pytest.mark.parametrize("classes", [2, 10, 1000])
def test_loss_and_gradient_match_numpy(eps, classes):
    rng = np.random.default_rng(classes)
    logits = rng.normal(scale=4, size=(7, classes)).astype(np.float32)
    logits[0, 0] = 60.0  # a confident, large logit: log_softmax must stay exact
    labels = rng.integers(0, classes, size=7)
    x = mx.nd.array(logits)
    x.attach_grad()
    loss_fn = losses.SmoothedCrossEntropyLoss(eps)
    loss_fn.hybridize()
    with autograd.record():
        loss = loss_fn(x, mx.nd.array(labels))
    loss.backward()
    want_loss, want_grad = reference(logits, labels, eps)
    np.testing.assert_allclose(loss.asnumpy(), want_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x.grad.asnumpy(), want_grad, rtol=1e-4, atol=1e-5)  # float32: ~1e-6 of 1


def test_no_smoothing_is_gluons_cross_entropy():
    rng = np.random.default_rng(0)
    logits, labels = mx.nd.array(rng.normal(size=(16, 10))), mx.nd.array(rng.integers(0, 10, 16))
    np.testing.assert_allclose(losses.SmoothedCrossEntropyLoss(0.0)(logits, labels).asnumpy(),
                               gluon.loss.SoftmaxCrossEntropyLoss()(logits, labels).asnumpy(), rtol=1e-6)


def test_smoothing_keeps_the_loss_above_zero_at_certainty():
    """With eps > 0 a one-hot-certain net still pays: the minimum is at softmax = q, not at the label."""
    logits = mx.nd.array([[50.0, 0.0, 0.0, 0.0]])
    loss = losses.SmoothedCrossEntropyLoss(0.2)(logits, mx.nd.array([0])).asscalar()
    assert loss == pytest.approx(0.2 * 3 / 4 * 50.0, rel=1e-4)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), float("inf"), "0.1", True, None])
def test_invalid_smoothing_is_refused(value):
    with pytest.raises(ValueError, match=r"label_smoothing \(--label-smoothing\) must be a finite number in \[0, 1\)"):
        losses.SmoothedCrossEntropyLoss(value)

"""The classification loss of a training step: cross-entropy, optionally to smoothed labels.

Label smoothing (the ``label_smoothing`` of :class:`bmx.training.Recipe`) replaces the one-hot
target with ``(1 - eps) onehot(y) + eps / K``: the net is never asked for certainty, which limits
how large its logits grow. :class:`bmx.distillation.DistillationLoss` uses the same
cross-entropy term.
"""
import math

from mxnet import gluon

__all__ = ["SmoothedCrossEntropyLoss", "cross_entropy", "check_label_smoothing", "DEFAULT_LABEL_SMOOTHING"]

DEFAULT_LABEL_SMOOTHING = 0.0


def check_label_smoothing(value):
    """The one validator of the label smoothing ``eps``: a finite number in [0, 1); returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value < 1.0:
        raise ValueError(f"label_smoothing (--label-smoothing) must be a finite number in [0, 1), got {value!r}")
    return float(value)


def cross_entropy(F, logits, label, smoothing=0.0):
    """Per-sample cross-entropy of ``logits`` (N, K) to the labels (N,) smoothed by ``smoothing``.

    ``-sum_c q[c] log softmax(logits)[c]`` with ``q = (1 - eps) onehot(label) + eps / K``, computed
    as ``(1 - eps) CE + eps * mean_c(-log softmax)``; ``eps = 0`` is the plain cross-entropy.
    """
    log_p = F.log_softmax(logits, axis=-1)
    plain = -F.pick(log_p, label, axis=-1)
    if not smoothing:
        return plain
    return (1.0 - smoothing) * plain - smoothing * F.mean(log_p, axis=-1)


class SmoothedCrossEntropyLoss(gluon.loss.Loss):
    """Cross-entropy to smoothed labels.

    Forward, per sample, with logits ``s`` over ``K`` classes, label ``y`` and smoothing ``eps``::

        q    = (1 - eps) * onehot(y) + eps / K
        loss = -sum_c q[c] * log softmax(s)[c]

    Backward (into ``s``; labels get no gradient)::

        dloss/ds = softmax(s) - q

    Args:
        smoothing: ``eps`` in [0, 1) (:func:`check_label_smoothing`); 0 gives the values of
            ``gluon.loss.SoftmaxCrossEntropyLoss``.

    Call with ``(logits, label)``: logits of shape (N, K), integer class labels of shape (N,)
    (any float dtype); returns the per-sample loss, shape (N,).
    """

    def __init__(self, smoothing=DEFAULT_LABEL_SMOOTHING, **kwargs):
        super().__init__(weight=None, batch_axis=0, **kwargs)
        self.smoothing = check_label_smoothing(smoothing)

    def hybrid_forward(self, F, logits, label):
        return cross_entropy(F, logits, label, self.smoothing)

"""What :class:`bmx.training.Run` does per batch: one training step, running scores, evaluation.

The net passed in is the one that computes the forward pass: the Gluon net itself, or its
mixed-precision form (:func:`bmx.precision.training_block`), whose output is float32 either way.
"""
import time

import mxnet as mx
from mxnet import autograd, gluon
from tqdm import tqdm

__all__ = ["Step", "Scores", "evaluate"]


class Step:
    """Forward, backward and update of one batch, split over the devices.

    ``workers``: how many workers' batches the gradient sum covers (the synchronous kvstores sum
    over all workers; the trainer divides by the global batch).
    ``teacher``: a :class:`bmx.distillation.Teacher` whose outputs on the same batch the loss
    ``loss_fn`` (a :class:`bmx.distillation.DistillationLoss`) takes as its second argument; the
    seconds spent in the teacher add up in ``teacher_seconds``.
    """

    def __init__(self, net, trainer, ctx, dtype, workers=1, teacher=None, loss_fn=None):
        self.net, self.trainer, self.ctx, self.dtype = net, trainer, ctx, dtype
        self.workers = workers
        self.teacher = teacher
        self.loss_fn = loss_fn or gluon.loss.SoftmaxCrossEntropyLoss()
        self.teacher_seconds = 0.0

    def _teacher_outputs(self, xs):
        start = time.perf_counter()
        targets = [self.teacher(x) for x in xs]
        for target in targets:
            target.wait_to_read()
        self.teacher_seconds += time.perf_counter() - start
        return targets

    def __call__(self, data, label):
        xs = gluon.utils.split_and_load(data, self.ctx, even_split=False)
        ys = gluon.utils.split_and_load(label, self.ctx, even_split=False)
        targets = self._teacher_outputs(xs) if self.teacher is not None else None
        with autograd.record():
            outputs = [self.net(x.astype(self.dtype, copy=False)).astype("float32", copy=False) for x in xs]
            if targets is None:
                losses = [self.loss_fn(out, y) for out, y in zip(outputs, ys)]
            else:
                losses = [self.loss_fn(out, t, y) for out, t, y in zip(outputs, targets, ys)]
        autograd.backward(losses)
        self.trainer.step(data.shape[0] * self.workers)
        return ys, outputs, losses


class Scores:
    """Running loss, top-1 and top-k (k = 5, or the number of classes if fewer)."""

    def __init__(self, classes):
        self.loss = mx.metric.Loss()
        self.top1 = mx.metric.Accuracy()
        k = min(5, classes)
        self.topk = mx.metric.TopKAccuracy(top_k=k) if k > 1 else None

    def update(self, labels, outputs, losses):
        self.loss.update(None, losses)
        self.top1.update(labels, outputs)
        if self.topk is not None:
            self.topk.update(labels, outputs)

    def state(self):
        """The running sums as a JSON-ready dict (a mid-epoch checkpoint keeps them)."""
        return {name: [float(metric.sum_metric), int(metric.num_inst), float(metric.global_sum_metric),
                       int(metric.global_num_inst)]
                for name, metric in self._metrics()}

    def restore(self, state):
        """Continues from :meth:`state`'s sums; ``state`` must come from Scores with the same classes."""
        if not isinstance(state, dict) or set(state) != {name for name, _ in self._metrics()}:
            raise ValueError(f"running scores {state!r} do not fit these scores")
        for name, metric in self._metrics():
            metric.sum_metric, metric.num_inst, metric.global_sum_metric, metric.global_num_inst = state[name]

    def _metrics(self):
        return [(name, metric) for name, metric in (("loss", self.loss), ("top1", self.top1), ("topk", self.topk))
                if metric is not None]

    def get(self):
        top1 = self.top1.get()[1]
        return {"loss": self.loss.get()[1], "top1": top1, "top5": self.topk.get()[1] if self.topk else top1,
                "images": self.top1.num_inst}


def evaluate(net, split, classes, ctx=None, dtype="float32", progress=False):
    """Loss, top-1 and top-5 of ``net`` on a :class:`bmx.data.Split`; returns a dict (also ``images``)."""
    ctx = ctx or [mx.cpu()]
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    scores = Scores(classes)
    for data, label in tqdm(split.batches(0), total=len(split), desc=f"eval {split.name}", leave=False,
                            disable=not progress, unit="batch"):
        xs = gluon.utils.split_and_load(data, ctx, even_split=False)
        ys = gluon.utils.split_and_load(label, ctx, even_split=False)
        outputs = [net(x.astype(dtype, copy=False)).astype("float32", copy=False) for x in xs]
        scores.update(ys, outputs, [loss_fn(o, y) for o, y in zip(outputs, ys)])
    return scores.get()

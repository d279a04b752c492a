"""Knowledge distillation: a frozen teacher's softened outputs guide a (binary) student.

The student's loss on a batch is the weighted sum of the usual cross-entropy and the KL
divergence from the teacher's softened class distribution to the student's, on the same
augmented images (:class:`DistillationLoss`). The teacher (:class:`Teacher`) is any model that
``example/train_imagenet.py`` exported, or a gluoncv model-zoo network with a parameter file;
it runs in inference mode (BatchNorm uses its running statistics) and no gradient reaches it.
"""
import dataclasses
import json
import math
import os

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from .losses import DEFAULT_LABEL_SMOOTHING, check_label_smoothing, cross_entropy
from .model_io import ModelFileError, imports

__all__ = ["Distillation", "DistillationLoss", "Teacher", "load_teacher", "check_distillation", "DEFAULT_TEMPERATURE",
           "DEFAULT_WEIGHT", "GLUONCV_PREFIX"]

DEFAULT_TEMPERATURE = 4.0
DEFAULT_WEIGHT = 0.9
GLUONCV_PREFIX = "gluoncv:"

# gluoncv's model-zoo networks were trained on images scaled to 0..1 and normalized with these
# statistics (its CIFAR networks with the CIFAR-10 ones); bmx's preprocessing is on the 0..255
# scale, so both are kept on that scale here.
_GLUONCV_CIFAR = ((0.4914 * 255, 0.4822 * 255, 0.4465 * 255), (0.2023 * 255, 0.1994 * 255, 0.2010 * 255))
_GLUONCV_IMAGENET = ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255))


def check_distillation(temperature, weight):
    """The one validator of the distillation settings; returns them as floats.

    ``temperature`` must be finite and positive; ``weight`` (of the KL term) in [0, 1].
    """
    temperature, weight = float(temperature), float(weight)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"distillation temperature must be a positive finite number, got {temperature}")
    if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
        raise ValueError(f"distillation weight must be in [0, 1], got {weight}")
    return temperature, weight


@dataclasses.dataclass(frozen=True)
class Distillation:
    """What a run distills from (the settings :class:`bmx.training.Run` takes and saves).

    Attributes:
        teacher: an exported model directory or ``'gluoncv:NAME'`` (:func:`load_teacher`).
        params: the gluoncv network's parameter file; None for an exported directory.
        temperature, weight: of :class:`DistillationLoss`.
    """
    teacher: str
    params: str = None
    temperature: float = DEFAULT_TEMPERATURE
    weight: float = DEFAULT_WEIGHT

    def __post_init__(self):
        temperature, weight = check_distillation(self.temperature, self.weight)
        object.__setattr__(self, "temperature", temperature)
        object.__setattr__(self, "weight", weight)


class DistillationLoss(gluon.loss.Loss):
    """Cross-entropy to the labels plus KL divergence to a teacher's softened outputs.

    Forward, per sample, with student logits ``s``, teacher logits ``t``, label ``y``, temperature
    ``T`` and weight ``w``::

        p_t = softmax(t / T),  p_s = softmax(s / T)
        KL  = sum_c p_t[c] * (log p_t[c] - log p_s[c])
        loss = (1 - w) * CE(s, y) + w * T^2 * KL

    where CE is to the labels smoothed by ``eps`` (:func:`bmx.losses.cross_entropy`; ``eps = 0``:
    plain cross-entropy).

    The ``T^2`` keeps the KL term's gradient on the scale of the cross-entropy's as ``T`` grows.
    Backward (only into ``s``; the teacher is constant)::

        dloss/ds = (1 - w) * (softmax(s) - q) + w * T * (p_s - p_t),  q = (1 - eps) onehot(y) + eps / K

    Args:
        temperature: ``T`` > 0.
        weight: ``w`` in [0, 1]; 0 is plain cross-entropy, 1 learns from the teacher only.
        label_smoothing: ``eps`` in [0, 1) of the cross-entropy term.

    Call with ``(student_logits, teacher_logits, label)``, each with the batch first (logits of
    shape (N, classes), labels (N,)); returns the per-sample loss, shape (N,).
    """

    def __init__(self, temperature=DEFAULT_TEMPERATURE, weight=DEFAULT_WEIGHT,
                 label_smoothing=DEFAULT_LABEL_SMOOTHING, **kwargs):
        super().__init__(weight=None, batch_axis=0, **kwargs)
        self.temperature, self.distill_weight = check_distillation(temperature, weight)
        self.label_smoothing = check_label_smoothing(label_smoothing)

    def hybrid_forward(self, F, student, teacher, label):
        kl = kl_divergence(F, student, teacher, self.temperature)
        scale = self.distill_weight * self.temperature ** 2
        return (1.0 - self.distill_weight) * cross_entropy(F, student, label, self.label_smoothing) + scale * kl


def kl_divergence(F, student, teacher, temperature):
    """Per-sample KL(softmax(teacher / T) || softmax(student / T)) over the last axis."""
    log_p_t = F.log_softmax(teacher / temperature, axis=-1)
    log_p_s = F.log_softmax(student / temperature, axis=-1)
    return F.sum(F.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)


class Teacher:
    """A frozen network that maps the student's inputs to logits, in inference mode.

    Args:
        net: a Gluon block returning logits (N, classes); its parameters are frozen here.
        name: what the teacher is (for logs and errors).
        input_affine: optional per-channel ``(scale, shift)`` that turns the student's normalized
            input into the teacher's (when the two were trained with different mean/std).

    Calling it outside ``autograd.record`` gives the logits with no graph recorded, BatchNorm on
    its running statistics and dropout off.
    """

    def __init__(self, net, name, input_affine=None):
        self.net, self.name = net, name
        for param in net.collect_params().values():
            param.grad_req = "null"
        self._affine = None
        if input_affine is not None:
            scale, shift = (np.asarray(v, dtype=np.float32).reshape(1, -1, 1, 1) for v in input_affine)
            self._affine = (mx.nd.array(scale), mx.nd.array(shift))

    def __call__(self, x):
        with autograd.pause(train_mode=False):
            if self._affine is not None:
                scale, shift = (v.as_in_context(x.context).astype(x.dtype, copy=False) for v in self._affine)
                x = mx.nd.broadcast_add(mx.nd.broadcast_mul(x, scale), shift)
            out = self.net(x)
        return out.astype("float32", copy=False)


def _affine(student_prep, mean, std):
    """Per-channel (scale, shift) mapping the student's normalized input onto the teacher's."""
    s_mean, s_std = np.asarray(student_prep.mean, np.float64), np.asarray(student_prep.std, np.float64)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    if np.allclose(s_mean, mean) and np.allclose(s_std, std):
        return None
    return s_std / std, (s_mean - mean) / std


def _exported_teacher(directory, classes, preprocessing, ctx):
    meta_file = os.path.join(directory, "model.json")
    symbol_file = os.path.join(directory, "model-symbol.json")
    params_file = os.path.join(directory, "model-0000.params")
    for path in (meta_file, symbol_file, params_file):
        if not os.path.isfile(path):
            raise ModelFileError(f"teacher {directory}: {os.path.basename(path)} is missing; --teacher takes a "
                                 "directory exported by example/train_imagenet.py or gluoncv:NAME with --teacher-params")
    try:
        with open(meta_file) as f:
            meta = json.load(f)
        teacher_classes = int(meta["classes"])
        prep = meta["preprocessing"]
        image_size, mean, std = int(prep["image_size"]), prep["mean"], prep["std"]
    except (ValueError, KeyError, TypeError) as err:
        raise ModelFileError(f"{meta_file}: not a model.json written by train_imagenet.py ({err})") from None
    if teacher_classes != classes:
        raise ValueError(f"teacher {meta_file}: {teacher_classes} classes, but the student has {classes}")
    if image_size != preprocessing.image_size:
        raise ValueError(f"teacher {meta_file}: input size {image_size}, but the student's is "
                         f"{preprocessing.image_size}; both must see the same images")
    net = imports(symbol_file, params_file, ctx=ctx)
    return Teacher(net, directory, _affine(preprocessing, mean, std))


def _gluoncv_teacher(name, params_file, classes, preprocessing, ctx):
    if not params_file:
        raise ValueError(f"teacher {GLUONCV_PREFIX}{name}: give its parameter file with --teacher-params "
                         "(nothing is downloaded)")
    if not os.path.isfile(params_file):
        raise ModelFileError(f"--teacher-params {params_file}: no such file")
    from gluoncv.model_zoo import get_model  # noqa: PLC0415  (gluoncv is slow to import; only teachers need it)

    try:
        net = get_model(name, pretrained=False, classes=classes)
    except ValueError as err:
        raise ValueError(f"teacher {GLUONCV_PREFIX}{name}: not a gluoncv model-zoo network ({err})") from None
    try:
        net.load_parameters(params_file, ctx=ctx)
    except (mx.base.MXNetError, AssertionError, ValueError) as err:
        raise ModelFileError(f"--teacher-params {params_file}: not the parameters of {name} with {classes} "
                             f"classes ({str(err).splitlines()[0]})") from None
    net.hybridize(static_alloc=True)
    mean, std = _GLUONCV_CIFAR if name.startswith("cifar") else _GLUONCV_IMAGENET
    return Teacher(net, GLUONCV_PREFIX + name, _affine(preprocessing, mean, std))


def load_teacher(spec, classes, preprocessing, params_file=None, ctx=None):
    """The teacher named by ``spec``: an exported model directory, or ``'gluoncv:NAME'``.

    Args:
        spec: a directory holding ``model-symbol.json``, ``model-0000.params`` and ``model.json``
            (what ``example/train_imagenet.py`` exports), or ``gluoncv:NAME`` for a gluoncv
            model-zoo network whose parameters are in ``params_file``.
        classes: the student's number of classes; the teacher must have the same.
        preprocessing: the student's :class:`bmx.data.Preprocessing`; the teacher must take the
            same image size, and a different mean/std is converted per channel.
        params_file: the gluoncv network's parameter file (MXNet's own format, never a pickle).
        ctx: the context or list of contexts the student trains on; the teacher gets a copy on each.
    """
    ctx = ctx or mx.cpu()
    if spec.startswith(GLUONCV_PREFIX):
        return _gluoncv_teacher(spec[len(GLUONCV_PREFIX):], params_file, classes, preprocessing, ctx)
    if params_file:
        raise ValueError("--teacher-params is only for a gluoncv:NAME teacher; an exported teacher directory "
                         "carries its own parameters")
    if not os.path.isdir(spec):
        raise ModelFileError(f"--teacher {spec}: no such directory (expected a model exported by "
                             "train_imagenet.py, or gluoncv:NAME)")
    return _exported_teacher(spec, classes, preprocessing, ctx)

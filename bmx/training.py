"""The training loop behind ``example/train_imagenet.py``: recipe, checkpoints, resume, metrics, export.

A :class:`Recipe` holds what the published results vary (optimizer, learning-rate schedule,
epochs, batch size, weight decay); :class:`Run` trains a Gluon net on a
:class:`bmx.data.DataBundle` with it and keeps its output directory up to date:

* ``checkpoint-EEEE.params`` / ``checkpoint-EEEE.states``: parameters and trainer states (optimizer
  moments, update counts and the learning-rate scheduler, kept without pickle: bmx.optimizer_state)
  after epoch EEEE (``checkpoint-EEEE-stepSSSSSS.*``: SSSSSS steps into the next epoch, with
  ``checkpoint_minutes``); only the newest is kept.
* ``state.json``: which checkpoint is current, completed epochs, best validation top-1, seeds,
  the run's configuration and every epoch's metrics. It is written after the files it points to,
  and every file is written to a temporary name and renamed, so an interrupted run always leaves
  a consistent checkpoint.
* ``best.params``: the parameters of the epoch with the best validation top-1.
* ``metrics.csv``, ``curves.png``, ``train.log``.
* at the end, ``model-symbol.json`` + ``model-0000.params`` (:func:`bmx.export`, float32) and
  ``model.json`` (model name and arguments, classes, preprocessing) for ``example/evaluate.py``.

Resuming (``resume=True``) continues exactly where the last checkpoint left off: every epoch
reseeds Python's, numpy's and MXNet's generators from ``(seed, epoch)`` and the Gluon data
pipelines derive order and augmentation from the same pair, so "train 2 epochs, stop, resume for
the 3rd" gives the parameters of "train 3 epochs". With ``checkpoint_minutes`` a checkpoint is
also written inside an epoch (``checkpoint-EEEE-stepSSSSSS.*``: after epoch EEEE and SSSSSS
steps of the next, with the epoch's running training scores in ``state.json``); a resume from it
replays the epoch's data order up to that step without training on it, so it too ends where an
unbroken run ends. Only the checkpoint ``state.json`` names is kept.

Distributed training (MXNet's parameter server, kvstore ``dist_sync``, ``dist_device_sync`` or
``dist_async``; processes started by ``tools/launch.py``, see docs/distributed.md): every worker
runs the same :class:`Run` on its own part of the training data (``num_parts=kv.num_workers,
part_index=kv.rank`` of :mod:`bmx.data`).

* Synchronous kinds: the servers sum the gradients of all workers, each worker applies the same
  optimizer update to the same sum (``update_on_kvstore=False``), and the sum is divided by the
  global batch (``batch_size`` x devices x workers). All workers keep identical parameters, and a
  run equals one process stepping on the workers' batches put together (up to BatchNorm, whose
  batch statistics stay per device).
* ``dist_async``: the servers run the optimizer (MXNet allows nothing else) and apply each
  worker's gradient, divided by that worker's batch, as it arrives; the schedule counts
  workers x steps updates per epoch. MXNet cannot save optimizer state held by servers, so
  checkpoints hold the parameters only, and a resumed run restarts the optimizer's moments (the
  schedule continues where it was).
* Only rank 0 validates and writes to ``output_dir``; the other workers train only. On resume
  every worker reads the checkpoint, so ``output_dir`` must be on a filesystem all machines share.
"""
import csv
import dataclasses
import itertools
import json
import logging
import os
import random
import time

import mxnet as mx
import numpy as np
from matplotlib.figure import Figure
from mxnet import gluon
from mxnet.gluon import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import distillation, losses, models, optimizer_state, precision, run_checks
from . import optimizers  # noqa: F401  (registers 'radam')
from ._atomic import atomic_path
from .config import binary_layer_config
from .data import synthetic_batch
from .devices import DIST_KVSTORES, create_kvstore, exit_process, parse_ctx, synchronous, topology
from .model_io import export
from .steps import Scores, Step, evaluate

__all__ = ["Recipe", "Run", "ResumeError", "build_model", "initializer", "no_weight_decay", "evaluate",
           "benchmark", "parse_ctx", "create_kvstore", "exit_process", "OPTIMIZERS", "LR_MODES", "INITIALIZATIONS",
           "METRIC_COLUMNS", "DIST_KVSTORES"]

log = logging.getLogger(__name__)

OPTIMIZERS = ("radam", "adam", "sgd")
LR_MODES = ("cosine", "step")
INITIALIZATIONS = ("he", "xavier")
METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5",
                  "images_per_s", "time_s", "teacher_s")
STATE_FILE = "state.json"


class ResumeError(ValueError):
    """The output directory cannot be resumed with these settings (or must not be overwritten)."""


@dataclasses.dataclass
class Recipe:
    """Optimizer, schedule and length of a training run.

    The defaults are the later published recipe (RAdam with beta1 0.95, lr 0.002, cosine decay to
    0 over 120 epochs, no weight decay); the paper-era recipe is ``optimizer='adam', lr=0.001,
    lr_mode='step'`` with ``lr_steps`` and 40-60 epochs.

    Attributes:
        optimizer: ``'radam'`` (:class:`bmx.optimizers.RAdam`), ``'adam'`` or ``'sgd'`` (with momentum).
        lr: base learning rate (for the total batch, which is ``batch_size`` x devices x workers
            with a synchronous distributed kvstore; it is not rescaled when the total changes).
        lr_mode: ``'cosine'`` (from lr down to 0 at the end of the last epoch) or ``'step'``
            (multiply by ``lr_factor`` at each epoch in ``lr_steps``).
        lr_steps: epochs at which the step schedule decays.
        lr_factor: the step schedule's factor.
        warmup_epochs: linear warmup from 0 over this many epochs (fractions allowed), before the
            schedule starts.
        epochs: epochs to train.
        batch_size: images per device per step.
        wd: L2 weight decay. BatchNorm parameters and binary weights are never decayed
            (:func:`no_weight_decay`), whatever this is.
        beta1: first-moment decay of Adam/RAdam; None takes 0.95 for RAdam (the published recipe)
            and 0.9 for Adam.
        momentum: SGD momentum.
        dtype: ``'float32'``, ``'bfloat16'`` (CPU with AVX-512 BF16: convolutions and dense layers in
            bfloat16, float32 master weights, optimizer state and BatchNorm statistics) or
            ``'float16'`` (GPU only: the net is cast, the optimizer keeps float32 master weights with
            ``multi_precision``); the exported model is float32 either way. See :mod:`bmx.precision`.
        seed: seed of initialization, data order and augmentation.
        label_smoothing: ``eps`` in [0, 1): the cross-entropy's target is
            ``(1 - eps) onehot + eps / classes`` (:class:`bmx.losses.SmoothedCrossEntropyLoss`);
            0 is the plain cross-entropy.
    """
    optimizer: str = "radam"
    lr: float = 0.002
    lr_mode: str = "cosine"
    lr_steps: tuple = ()
    lr_factor: float = 0.1
    warmup_epochs: float = 0.0
    epochs: int = 120
    batch_size: int = 64
    wd: float = 0.0
    beta1: float = None
    momentum: float = 0.9
    dtype: str = "float32"
    seed: int = 0
    label_smoothing: float = losses.DEFAULT_LABEL_SMOOTHING

    def __post_init__(self):
        self.lr_steps = tuple(self.lr_steps)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.lr_mode not in LR_MODES:
            raise ValueError(f"unknown lr mode {self.lr_mode!r}; choose one of {LR_MODES}")
        if self.dtype not in precision.DTYPES:
            raise ValueError(f"dtype must be one of {precision.DTYPES}, got {self.dtype!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch size must be positive, got {self.epochs} and {self.batch_size}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        if self.lr_mode == "step":
            if not self.lr_steps:
                raise ValueError("the step schedule needs lr_steps (epochs at which to decay)")
            if list(self.lr_steps) != sorted(set(self.lr_steps)) or not 0 < self.lr_steps[0]:
                raise ValueError(f"lr_steps must be increasing positive epochs, got {self.lr_steps}")
        run_checks.check_recipe_numbers(self)

    def lr_scheduler(self, steps_per_epoch):
        """The MXNet scheduler of this recipe, counting optimizer updates (steps)."""
        warmup = int(round(self.warmup_epochs * steps_per_epoch))
        if self.lr_mode == "cosine":
            return mx.lr_scheduler.CosineScheduler(max_update=self.epochs * steps_per_epoch, base_lr=self.lr,
                                                   final_lr=0.0, warmup_steps=warmup)
        steps = [max(int(round(e * steps_per_epoch)), 1) for e in self.lr_steps]
        return mx.lr_scheduler.MultiFactorScheduler(step=steps, factor=self.lr_factor, base_lr=self.lr,
                                                    warmup_steps=warmup)

    def optimizer_params(self, steps_per_epoch):
        """Keyword arguments for ``mx.gluon.Trainer``'s optimizer."""
        params = dict(learning_rate=self.lr, wd=self.wd, lr_scheduler=self.lr_scheduler(steps_per_epoch),
                      multi_precision=self.dtype == "float16")
        if self.optimizer in ("radam", "adam"):
            params["beta1"] = self.beta1 if self.beta1 is not None else (0.95 if self.optimizer == "radam" else 0.9)
        else:
            params["momentum"] = self.momentum
        return params


def build_model(name, classes, binary=True, clip_threshold=None, layer_config=None, **knobs):
    """A zoo model (``bmx.models.get_model``) built inside ``bmx.binary_layer_config(**layer_config)``.

    ``knobs`` (``stem``, ``growth_rate``, ``layers``, ...) go to ``get_model`` unchanged.
    """
    with binary_layer_config(**(layer_config or {})):
        return models.get_model(name, classes=classes, binary=binary, clip_threshold=clip_threshold, **knobs)


def initializer(kind):
    """``'he'``: Gaussian, fan-in, magnitude 2 (the published recipe); ``'xavier'``: MXNet's default
    Xavier (uniform, average fan, magnitude 3). BatchNorm gamma/beta start at 1/0 with either."""
    if kind == "he":
        return mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2)
    if kind == "xavier":
        return mx.init.Xavier()
    raise ValueError(f"unknown initialization {kind!r}; choose one of {INITIALIZATIONS}")


def no_weight_decay(net):
    """Sets wd_mult = 0 on every BatchNorm gamma and beta; returns the names of all parameters that
    are not decayed (those and the binary weights, which bmx.nn layers create with wd_mult = 0)."""
    def visit(block):
        if isinstance(block, nn.BatchNorm):
            block.gamma.wd_mult = 0.0
            block.beta.wd_mult = 0.0
    net.apply(visit)
    return sorted(name for name, p in net.collect_params().items() if p.wd_mult == 0 and p.grad_req != "null")


def _flatten(config, prefix=""):
    """{'recipe': {'lr': 0.1}} -> {'recipe.lr': 0.1}, so that a changed setting is named precisely."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _derived_seed(seed, *keys):
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0] >> 1)


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    mx.random.seed(seed)


def _make_trainer(net, recipe, steps_per_epoch, kvstore):
    """The Gluon trainer and the number of workers each step's gradient sum covers."""
    kind, _, workers = topology(kvstore)
    params = net.collect_params()
    if not kind.startswith("dist"):
        return gluon.Trainer(params, recipe.optimizer, recipe.optimizer_params(steps_per_epoch), kvstore=kvstore), 1
    if synchronous(kind):
        # The servers only sum gradients; every worker runs the optimizer on the same sums. Its
        # state then lives where save_states can reach it (MXNet cannot save server-side state),
        # and no optimizer has to be unpickled on a server.
        trainer = gluon.Trainer(params, recipe.optimizer, recipe.optimizer_params(steps_per_epoch), kvstore=kvstore,
                                update_on_kvstore=False)
        # A server key holds rank 0's initial weights until the first gradients replace them. The
        # trainer's first step pulls the weights (asynchronously) and then pushes gradients with
        # no order between the two, so a worker sometimes pulled the first gradient sum as its
        # weights. Initializing here and waiting for the pulls closes that race.
        trainer._init_kvstore()
        trainer._init_params()
        mx.nd.waitall()
        return trainer, workers
    # dist_async must update on the servers, once per push: workers x steps updates per epoch.
    return gluon.Trainer(params, recipe.optimizer, recipe.optimizer_params(steps_per_epoch * workers),
                         kvstore=kvstore, update_on_kvstore=True), 1


def _teacher_and_loss(settings, data, recipe, ctx):
    """The teacher (None without a :class:`bmx.distillation.Distillation`) and the loss of a step."""
    if settings is None:
        # gluon's own loss when nothing is smoothed: the same numbers as runs from before the option
        smoothed = losses.SmoothedCrossEntropyLoss(recipe.label_smoothing) if recipe.label_smoothing else None
        return None, smoothed
    teacher = distillation.load_teacher(settings.teacher, data.classes, data.preprocessing, settings.params, ctx)
    teacher.net = precision.training_block(teacher.net, recipe.dtype)
    return teacher, distillation.DistillationLoss(settings.temperature, settings.weight, recipe.label_smoothing)


def _prepare(net, recipe, ctx, init):
    """Initializes (seeded), excludes BN from weight decay and hybridizes ``net``; returns the names
    without weight decay and the block that runs the forward pass in ``recipe.dtype``
    (:func:`bmx.precision.training_block`)."""
    precision.check(recipe.dtype, ctx)
    _seed_everything(_derived_seed(recipe.seed, 0))
    net.initialize(initializer(init), ctx=ctx)
    no_wd = no_weight_decay(net)
    net.hybridize(static_alloc=True, static_shape=True)
    return no_wd, precision.training_block(net, recipe.dtype)


def benchmark(net, recipe, image_size, classes, iters=20, warmup=2, ctx=None, kvstore="local", init="he",
              progress=True):
    """Training speed on synthetic data: ``warmup`` untimed steps, then ``iters`` timed ones.

    A step is what :class:`Run` does per batch (forward, backward, optimizer update of
    ``recipe.batch_size`` images per device), on one batch held in memory, so the data pipeline is
    not measured. ``kvstore``: a name or a KVStore (:func:`create_kvstore`); every worker of a
    distributed job must call this with the same arguments. Returns a dict with ``images_per_s``
    (over all devices and workers), ``step_s``, ``batch_size`` (per worker) and ``workers``.
    """
    ctx = ctx or [mx.cpu()]
    kvstore = create_kvstore(kvstore) if isinstance(kvstore, str) else kvstore
    _, forward = _prepare(net, recipe, ctx, init)
    total = recipe.batch_size * len(ctx)
    workers = topology(kvstore)[2]
    # The schedule's length does not change the cost of a step.
    trainer, scale = _make_trainer(net, recipe, iters + warmup, kvstore)
    step = Step(forward, trainer, ctx, precision.input_dtype(recipe.dtype), scale)
    data, label = synthetic_batch(total, image_size, classes, recipe.seed)
    for _ in range(warmup):
        step(data, label)
    mx.nd.waitall()
    start = time.perf_counter()
    for _ in tqdm(range(iters), desc="benchmark", unit="step", leave=False, disable=not progress):
        step(data, label)
        mx.nd.waitall()
    seconds = time.perf_counter() - start
    return {"images_per_s": iters * total * workers / seconds, "step_s": seconds / iters, "batch_size": total,
            "iters": iters, "workers": workers}


class Run:
    """One training run writing to ``output_dir`` (see the module docstring for its files).

    Args:
        net: an uninitialized Gluon HybridBlock with all parameter shapes known
            (every :mod:`bmx.models` model).
        data: :class:`bmx.data.DataBundle`.
        recipe: :class:`Recipe`.
        output_dir: where checkpoints, metrics, logs and the exported model go.
        config: JSON-ready description of the run (model name and arguments, data options, ...);
            saved in ``state.json`` and ``model.json``. A resumed run must pass the same config and
            recipe: any difference is reported as a :class:`ResumeError`.
        ctx: list of contexts (default CPU).
        kvstore: ``'local'``, ``'device'``, or a distributed kvstore: a KVStore from
            :func:`create_kvstore` (or its name), with ``data`` read as part ``kv.rank`` of
            ``kv.num_workers`` (see the module docstring).
        resume: continue from ``output_dir/state.json``. Without it, an ``output_dir`` that already
            holds a run is refused rather than overwritten.
        init: ``'he'`` or ``'xavier'`` (:func:`initializer`).
        progress: show tqdm progress bars (rank 0 only).
        distillation: a :class:`bmx.distillation.Distillation` to learn from a teacher too (the
            loss becomes :class:`bmx.distillation.DistillationLoss`; the teacher runs in
            ``recipe.dtype``). Part of the config, so a resume needs the same teacher.
        checkpoint_minutes: also checkpoint inside an epoch once this many minutes have passed
            since the last checkpoint (a positive finite number; None: at the end of each epoch
            only). Not part of the config: a resume may change it.

    Attributes:
        rank, num_workers: this worker and the size of a distributed job (0 and 1 otherwise).
        epoch: epochs finished.
        checkpoint_step: steps into epoch ``epoch + 1`` at which the last checkpoint was taken (None:
            it ended epoch ``epoch``, or there is none yet).
        forward: the block that computes ``net``'s forward pass in ``recipe.dtype``
            (:func:`bmx.precision.training_block`; ``net`` itself in float32). Checkpoints and
            export always use ``net``, whose parameters are float32.
    """

    def __init__(self, net, data, recipe, output_dir, config=None, ctx=None, kvstore="local", resume=False,
                 init="he", progress=True, distillation=None, checkpoint_minutes=None):
        self.net, self.data, self.recipe = net, data, recipe
        self.checkpoint_seconds = None if checkpoint_minutes is None else 60 * run_checks.check_checkpoint_minutes(
            checkpoint_minutes)
        self.out = output_dir
        self.kvstore = create_kvstore(kvstore) if isinstance(kvstore, str) else kvstore
        kind, self.rank, self.num_workers = topology(self.kvstore)
        self.asynchronous = kind.startswith("dist") and not synchronous(kind)
        parts = data.info.get("num_parts", 1)
        if parts != self.num_workers:
            raise ValueError(f"the training data is read as {parts} part(s) but the job has {self.num_workers} "
                             f"worker(s); read it with num_parts=kv.num_workers, part_index=kv.rank")
        self.config = dict(config or {}, recipe=dataclasses.asdict(recipe), init=init)
        if distillation is not None:
            self.config["distillation"] = dataclasses.asdict(distillation)
        if kind.startswith("dist"):
            # Another number of workers changes the global batch and the data order: not a resume.
            self.config["workers"] = self.num_workers
        self.ctx = ctx or [mx.cpu()]
        self.writer = self.rank == 0
        self.progress = progress and self.writer
        self.state_path = os.path.join(output_dir, STATE_FILE)
        run_checks.check_output_dir(output_dir, STATE_FILE, resume)
        saved = self._read_state() if resume else None
        if not resume and os.path.exists(self.state_path):
            raise ResumeError(f"{output_dir} already holds a run ({STATE_FILE}); pass resume=True (--resume) to "
                              "continue it, or choose another output directory")
        no_wd, self.forward = _prepare(net, recipe, self.ctx, init)
        self.trainer, scale = _make_trainer(net, recipe, len(data.train), self.kvstore)
        teacher, loss_fn = _teacher_and_loss(distillation, data, recipe, self.ctx)
        self.step = Step(self.forward, self.trainer, self.ctx, precision.input_dtype(recipe.dtype), scale,
                         teacher=teacher, loss_fn=loss_fn)
        self._handler = None
        self.history, self.best, self.epoch = [], None, 0
        # the current checkpoint's two files and its step in the next epoch (None: at the epoch's end);
        # after a resume from inside an epoch, where that epoch continues
        self._current, self.checkpoint_step, self._partial = None, None, None
        if self.writer:
            try:
                os.makedirs(output_dir, exist_ok=True)
                self._handler = logging.FileHandler(os.path.join(output_dir, "train.log"))
                if not saved:  # from the start a run: --resume after an interrupted first epoch works
                    self._write_state()
            except OSError as err:
                raise run_checks.RunCheckError(f"--output-dir {output_dir}: cannot write there ({err.strerror}: "
                                               f"{err.filename})") from None
            self._handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            log.addHandler(self._handler)
        log.setLevel(logging.INFO)
        if saved:
            self._restore(saved)
        elif self.writer:
            log.info("run: %s", json.dumps(self.config, sort_keys=True))
            workers = f" per worker x {self.num_workers} workers" if self.num_workers > 1 else ""
            log.info("data: train %d images%s (%s), val %s; %d classes", data.train.num_images, workers,
                     data.train.description, data.val.num_images if data.val else "none", data.classes)
            log.info("no weight decay on %d parameters (BatchNorm, binary weights)", len(no_wd))

    # ------------------------------------------------------------------ state

    def _read_state(self):
        try:
            with open(self.state_path) as f:
                saved = json.load(f)
        except FileNotFoundError:
            shared = ("" if self.writer else f" (worker rank {self.rank}: every worker reads the checkpoint that "
                      "rank 0 wrote, so the output directory must be on a filesystem all machines share)")
            raise ResumeError(f"{self.state_path}: not found, nothing to resume in {self.out}{shared}") from None
        except ValueError as err:
            raise ResumeError(f"{self.state_path}: not a valid run state ({err})") from None
        if not isinstance(saved, dict) or not isinstance(saved.get("epoch"), int) or \
                not isinstance(saved.get("history"), list):
            raise ResumeError(f"{self.state_path}: not a bmx run state (no epoch and history)")
        run_checks.check_same_data(saved.get("data"), run_checks.data_identity(self.data.info), self.out)
        before, now = _flatten(saved.get("config", {})), _flatten(json.loads(json.dumps(self.config)))
        # A recipe field added since the run started is absent from its state: it had the default.
        added = _flatten(json.loads(json.dumps({"recipe": dataclasses.asdict(Recipe())})))
        keys = set(before) | set(now)
        before = {k: before.get(k, added.get(k)) for k in keys}
        now = {k: now.get(k, added.get(k)) for k in keys}
        changed = sorted(k for k in keys if before[k] != now[k])
        if changed:
            detail = "; ".join(f"{k}: {before[k]!r} -> {now[k]!r}" for k in changed)
            raise ResumeError(f"cannot resume {self.out} with different settings ({detail}); "
                              "resume with the run's original settings")
        return saved

    def _restore(self, saved):
        self.epoch, self.history, self.best = saved["epoch"], saved["history"], saved.get("best")
        self._partial = self._read_partial(saved.get("partial"))
        if saved.get("params"):
            self._current = saved["params"], saved.get("states")
            self.checkpoint_step = self._partial["step"] if self._partial else None
            path = os.path.join(self.out, saved["params"])
            try:
                self.net.load_parameters(path, ctx=self.ctx)
            except (mx.MXNetError, AssertionError, ValueError, OSError) as err:
                raise run_checks.checkpoint_error(path, err) from None
            if self.asynchronous:
                # No saved state (it lived on the servers): restart the moments, but continue the
                # schedule, which counts the servers' updates. The optimizer is sent to the
                # servers at the first step, with these counts.
                steps = self._partial["step"] if self._partial else 0
                updates = (self.epoch * len(self.data.train) + steps) * self.num_workers
                self.trainer.optimizer.begin_num_update = self.trainer.optimizer.num_update = updates
            else:
                optimizer_state.load_states(self.trainer, os.path.join(self.out, saved["states"]))
        if self.writer:
            within = f" and step {self._partial['step']} of {len(self.data.train)}" if self._partial else ""
            log.info("resumed %s after epoch %d of %d%s", self.out, self.epoch, self.recipe.epochs, within)

    def _read_partial(self, partial):
        """The mid-epoch position a state.json records, checked (None: the checkpoint ends an epoch)."""
        if partial is None:
            return None
        steps = len(self.data.train)
        if not (isinstance(partial, dict) and isinstance(partial.get("step"), int) and 0 < partial["step"] < steps
                and isinstance(partial.get("scores"), dict)
                and all(run_checks.is_finite_number(partial.get(k)) for k in ("seconds", "teacher_seconds"))):
            raise ResumeError(f"{self.state_path}: its mid-epoch position {partial!r} is not a step inside an "
                              f"epoch of {steps} steps")
        try:
            Scores(self.data.classes).restore(partial["scores"])
        except (ValueError, TypeError) as err:
            raise ResumeError(f"{self.state_path}: {err}") from None
        return partial

    def _write_state(self, extra=None, partial=None):
        params, states = self._current or (None, None)
        state = dict(epoch=self.epoch, params=params, states=None if self.asynchronous else states,
                     partial=partial, best=self.best,
                     seed=self.recipe.seed, epoch_seeds=[_derived_seed(self.recipe.seed, 1, e)
                                                         for e in range(self.epoch)],
                     config=self.config, history=self.history, data=run_checks.data_identity(self.data.info))
        if extra:
            state.update(extra)
        with atomic_path(self.state_path) as tmp, open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        return state

    def _checkpoint(self, improved=False, step=None, partial=None):
        """Saves parameters and optimizer state after ``self.epoch`` epochs (and ``step`` steps of
        the next), points state.json at them, then removes the previous checkpoint."""
        name = f"checkpoint-{self.epoch:04d}" + ("" if step is None else f"-step{step:06d}")
        files = name + ".params", name + ".states"
        with atomic_path(os.path.join(self.out, files[0])) as tmp:
            self.net.save_parameters(tmp)
        if not self.asynchronous:
            with atomic_path(os.path.join(self.out, files[1])) as tmp:
                optimizer_state.save_states(self.trainer, tmp)
        if improved:
            with atomic_path(os.path.join(self.out, "best.params")) as tmp:
                self.net.save_parameters(tmp)
        previous, self._current, self.checkpoint_step = self._current, files, step
        self._write_state(partial=partial)
        for old in previous or ():
            if old not in files and os.path.exists(os.path.join(self.out, old)):
                os.remove(os.path.join(self.out, old))

    # ------------------------------------------------------------------ training

    def fit(self):
        """Trains the remaining epochs, then evaluates the test split (if any) and exports the model.

        Returns the final ``state.json`` content as a dict.
        """
        with logging_redirect_tqdm(loggers=[logging.getLogger()]):
            try:
                while self.epoch < self.recipe.epochs:
                    self._train_epoch()
                return self._finish()
            finally:
                if self._handler:
                    log.removeHandler(self._handler)
                    self._handler.close()

    def _train_epoch(self):
        epoch = self.epoch
        _seed_everything(_derived_seed(self.recipe.seed, 1, epoch))
        split = self.data.train
        scores = Scores(self.data.classes)
        partial, self._partial = self._partial, None
        done = partial["step"] if partial else 0
        start = time.perf_counter() - (partial["seconds"] if partial else 0.0)
        teacher_before = self.step.teacher_seconds - (partial["teacher_seconds"] if partial else 0.0)
        batches = split.batches(epoch)
        if partial:
            scores.restore(partial["scores"])
            # Drawn, not trained on: the data order and augmentation continue where the checkpoint was.
            for _ in itertools.islice(batches, done):
                pass
        bar = tqdm(batches, total=len(split), initial=done, desc=f"epoch {epoch + 1}/{self.recipe.epochs}",
                   unit="batch", leave=False, disable=not self.progress, dynamic_ncols=True)
        saved_at = time.perf_counter()
        for step, (data, label) in enumerate(bar, done + 1):
            scores.update(*self.step(data, label))
            run_checks.check_loss(scores.loss.sum_metric, epoch + 1, step, len(split), self.out,
                                  self._current[0] if self._current else None, self.checkpoint_step)
            if (self.checkpoint_seconds is not None and self.writer and step < len(split)
                    and time.perf_counter() - saved_at >= self.checkpoint_seconds):
                self._checkpoint(step=step, partial=dict(
                    step=step, scores=scores.state(), seconds=time.perf_counter() - start,
                    teacher_seconds=self.step.teacher_seconds - teacher_before))
                log.info("checkpoint in epoch %d after step %d of %d", epoch + 1, step, len(split))
                saved_at = time.perf_counter()
            if bar.n % 10 == 0:
                current = scores.get()
                shown = dict(loss=f"{current['loss']:.3f}", top1=f"{current['top1']:.3f}")
                if self.step.teacher is not None:
                    shown["teacher"] = f"{(self.step.teacher_seconds - teacher_before) / (time.perf_counter() - start):.0%}"
                bar.set_postfix(shown)
        train_time = time.perf_counter() - start
        teacher_time = self.step.teacher_seconds - teacher_before
        train = scores.get()
        # The other workers wait for rank 0 at their next step (synchronous kinds) or exit.
        val = evaluate(self.forward, self.data.val, self.data.classes, self.ctx,
                       precision.input_dtype(self.recipe.dtype), self.progress) if self.data.val and self.writer else {}
        self.epoch = epoch + 1
        row = dict(epoch=self.epoch, lr=self._learning_rate(), train_loss=train["loss"],
                   train_top1=train["top1"], train_top5=train["top5"], val_loss=val.get("loss"),
                   val_top1=val.get("top1"), val_top5=val.get("top5"),
                   images_per_s=train["images"] * self.num_workers / train_time, time_s=time.perf_counter() - start,
                   teacher_s=teacher_time if self.step.teacher is not None else None)
        self.history.append(row)
        if not self.writer:
            return
        improved = bool(val) and (self.best is None or val["top1"] > self.best["top1"])
        if improved:
            self.best = dict(epoch=self.epoch, top1=val["top1"], top5=val["top5"])
        self._checkpoint(improved)
        self._write_metrics()
        log.info("epoch %d/%d  lr %.3g  train loss %.4f top-1 %.4f top-5 %.4f  val %s  %.1f img/s  %.0f s%s",
                 self.epoch, self.recipe.epochs, row["lr"], row["train_loss"], row["train_top1"], row["train_top5"],
                 f"loss {val['loss']:.4f} top-1 {val['top1']:.4f} top-5 {val['top5']:.4f}" if val else "-",
                 row["images_per_s"], row["time_s"],
                 f" (teacher {teacher_time:.0f} s)" if self.step.teacher is not None else "")

    def _learning_rate(self):
        if self.asynchronous:
            # The workers' copy of the optimizer never steps; the servers' has made about this many updates.
            return self.trainer.optimizer.lr_scheduler(self.epoch * len(self.data.train) * self.num_workers)
        return self.trainer.learning_rate

    def _write_metrics(self):
        with atomic_path(os.path.join(self.out, "metrics.csv")) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, METRIC_COLUMNS)
            writer.writeheader()
            for row in self.history:
                # .get: runs started before a column existed resume with it empty.
                writer.writerow({k: "" if row.get(k) is None else (f"{row[k]:.6g}" if isinstance(row[k], float)
                                                                   else row[k]) for k in METRIC_COLUMNS})
        _plot_curves(self.history, os.path.join(self.out, "curves.png"))

    def _finish(self):
        if not self.writer:
            return dict(epoch=self.epoch, best=None, history=self.history, finished=True)
        extra = {}
        if self.data.test is not None:
            extra["test"] = evaluate(self.forward, self.data.test, self.data.classes, self.ctx,
                                     precision.input_dtype(self.recipe.dtype), self.progress)
            log.info("test: top-1 %.4f top-5 %.4f (%d images)", extra["test"]["top1"], extra["test"]["top5"],
                     extra["test"]["images"])
        if self.recipe.dtype == "float16":
            self.net.cast("float32")
        size = self.data.preprocessing.image_size
        export(self.net, os.path.join(self.out, "model"), input_shape=(1, 3, size, size))
        final = self.history[-1] if self.history else {}
        meta = dict(config=self.config, classes=self.data.classes, preprocessing=self.data.preprocessing.to_dict(),
                    data=self.data.info, epochs=self.epoch, final=final, best=self.best, **extra)
        with atomic_path(os.path.join(self.out, "model.json")) as tmp, open(tmp, "w") as f:
            json.dump(meta, f, indent=1)
        log.info("exported %s (model-symbol.json, model-0000.params, model.json)", self.out)
        return self._write_state(dict(extra, finished=True))


def _plot_curves(history, path):
    """Loss, top-1/top-5 and learning rate per epoch, as a PNG."""
    epochs = [r["epoch"] for r in history]

    def series(key):
        return [np.nan if r[key] is None else r[key] for r in history]

    fig = Figure(figsize=(13, 3.6))  # not pyplot: no backend or global figure list to touch
    axes = fig.subplots(1, 3)
    axes[0].plot(epochs, series("train_loss"), "o-", label="train")
    axes[0].plot(epochs, series("val_loss"), "o-", label="val")
    axes[0].set_title("loss")
    for key, style in (("top1", "o-"), ("top5", "s--")):
        axes[1].plot(epochs, series(f"train_{key}"), style, color="C0", label=f"train {key}")
        axes[1].plot(epochs, series(f"val_{key}"), style, color="C1", label=f"val {key}")
    axes[1].set_title("accuracy")
    axes[2].plot(epochs, series("lr"), "o-", color="C2")
    axes[2].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)

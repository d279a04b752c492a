"""What a training run (:class:`bmx.training.Run`) checks before and while it trains.

* numbers of the recipe: finite and in range (``--lr nan`` would train a model of NaNs);
* the output directory: a directory, and either empty, new, or a run (``state.json``): a run
  writes ``model-0000.params``, ``model.json``, ... there and would replace files of those names;
* the training data of a resumed run: the record count and fingerprint the run started with
  (another file changes the schedule and the validation split);
* the training loss: a non-finite loss stops the run, naming the step, before anything is saved,
  so the last good checkpoint stays the run's latest.
"""
import math
import os

from . import losses, packed

__all__ = ["RunCheckError", "DivergedError", "is_finite_number", "check_recipe_numbers", "check_checkpoint_minutes",
           "check_output_dir", "data_identity", "check_same_data", "check_loss", "checkpoint_error"]


class RunCheckError(ValueError):
    """A setting, output directory or dataset a run cannot use; the message says which and why."""


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def is_finite_number(value):
    """True for an int or float (not a bool) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_recipe_numbers(recipe):
    """Raises RunCheckError unless every number of ``recipe`` (a bmx.training.Recipe) is finite and in range."""
    rules = [("lr", "--lr", lambda v: v > 0, "a finite number > 0"),
             ("lr_factor", "--lr-factor", lambda v: v > 0, "a finite number > 0"),
             ("wd", "--wd", lambda v: v >= 0, "a finite number >= 0"),
             ("momentum", "--momentum", lambda v: 0 <= v < 1, "a finite number in [0, 1)")]
    if recipe.beta1 is not None:
        rules.append(("beta1", "--beta1", lambda v: 0 <= v < 1, "a finite number in [0, 1)"))
    for name, flag, ok, what in rules:
        value = getattr(recipe, name)
        if not is_finite_number(value) or not ok(value):
            raise RunCheckError(f"{name} ({flag}) must be {what}, got {value!r}")
    if not all(is_finite_number(v) for v in recipe.lr_steps):
        raise RunCheckError(f"lr_steps (--lr-steps) must be finite epochs, got {recipe.lr_steps}")
    try:
        losses.check_label_smoothing(recipe.label_smoothing)
    except ValueError as err:
        raise RunCheckError(str(err)) from None


def check_checkpoint_minutes(value):
    """Returns ``value`` as a float if it is a positive finite number of minutes (--checkpoint-minutes)."""
    if not is_finite_number(value) or value <= 0:
        raise RunCheckError(f"checkpoint_minutes (--checkpoint-minutes) must be a finite number > 0, got {value!r}")
    return float(value)


def check_output_dir(output_dir, state_file, resume):
    """Refuses an output directory that is a file, or that is not empty and holds no run."""
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise RunCheckError(f"--output-dir {output_dir}: exists and is not a directory")
    if resume or not os.path.isdir(output_dir) or os.path.exists(os.path.join(output_dir, state_file)):
        return
    entries = sorted(os.listdir(output_dir))
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise RunCheckError(f"--output-dir {output_dir} is not empty ({shown}) and holds no run ({state_file}): "
                            "a run writes model-0000.params, model.json, checkpoints and logs there and would "
                            "replace files of those names; choose a new or empty directory")


def data_identity(info):
    """The record count and fingerprint of the training data (the keys bmx.data puts in ``info``)."""
    return {k: info[k] for k in ("train_records", "train_fingerprint") if k in info}


def check_same_data(saved, now, output_dir):
    """Refuses to resume a run on other training data than it started with. A run whose state
    predates these records (``saved`` None or without a key) is accepted."""
    changed = [k for k in (saved or {}) if k in now and saved[k] != now[k]]
    if changed:
        raise RunCheckError(
            f"cannot resume {output_dir}: it was trained on a training set of {saved.get('train_records')} records "
            f"(fingerprint {saved.get('train_fingerprint')}), but --data-dir now gives {now.get('train_records')} "
            f"(fingerprint {now.get('train_fingerprint')}); the schedule and the validation split depend on the "
            "data: resume with the run's --data-dir")


def check_loss(loss_sum, epoch, step, steps, output_dir, checkpoint, checkpoint_step=None):
    """Raises DivergedError if the running loss sum of the epoch is not finite.

    ``checkpoint``: the last checkpoint's file, taken after epoch ``epoch - 1`` (and
    ``checkpoint_step`` steps of epoch ``epoch``, if given), or None."""
    if math.isfinite(loss_sum):
        return
    where = f"at step {checkpoint_step} of epoch {epoch}" if checkpoint_step else f"after epoch {epoch - 1}"
    kept = (f"the last good checkpoint, {checkpoint} ({where}), is kept" if checkpoint else
            "no epoch had finished, so there is no checkpoint")
    raise DivergedError(f"the training loss became {loss_sum} at epoch {epoch}, step {step} of {steps}: training "
                        f"stopped and nothing was exported; in {output_dir} {kept}. Lower --lr or check the data")


def checkpoint_error(path, err):
    """The RunCheckError for a checkpoint's parameter file that MXNet could not load (``err``)."""
    if not os.path.exists(path):
        return RunCheckError(f"{path}: no such checkpoint file (the run's state.json names it)")
    try:
        packed.read_params(path)
    except packed.PackedFormatError as bad:
        return RunCheckError(f"{bad}: the checkpoint is damaged")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return RunCheckError(f"{path}: not a checkpoint of this model ({first})")

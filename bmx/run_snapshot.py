"""A training run's latest checkpoint as one compact file, to carry the run to another machine
(``tools/carry_run.py``).

A run directory of ``example/train_imagenet.py`` holds float32 parameters and optimizer moments
(about 12 bytes per weight with Adam-like optimizers). The snapshot keeps what ``--resume`` needs:
``state.json``, ``metrics.csv``, ``train.log`` and the current checkpoint's two NDArray files, with
every float32 array rounded to bfloat16 (round to nearest even), which halves the size. The
rounding is a one-off relative change of at most 2^-9 per value when the run is carried, not a
change to how it trains: a carried run continues like an unbroken one from weights and moments
perturbed by that much, not to the same bytes. Other arrays (the optimizer's JSON description,
integer arrays) are kept exactly.

The snapshot is a numpy ``.npz`` read with ``allow_pickle=False``; its description is JSON.
``restore`` writes into a new or empty directory only, so it never replaces a run's files.
"""
import json
import os
import tempfile

import numpy as np

from . import packed
from ._atomic import atomic_path

__all__ = ["SnapshotError", "save", "restore", "describe", "to_bfloat16", "from_bfloat16"]

FORMAT = "bmx-run-snapshot"
VERSION = 1
TEXT_FILES = ("state.json", "metrics.csv", "train.log")
META_KEY = "meta"


class SnapshotError(ValueError):
    """A run directory or snapshot file that cannot be carried."""


def to_bfloat16(x):
    """float32 array -> uint16 array of its bfloat16 bits, rounded to nearest, ties to even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bfloat16(bits):
    """uint16 bfloat16 bits -> float32 array."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _checkpoint_files(run_dir):
    path = os.path.join(run_dir, "state.json")
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        raise SnapshotError(f"{path}: not found; RUN_DIR must be a run directory of train_imagenet.py") from None
    except ValueError as err:
        raise SnapshotError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int) or state["epoch"] < 0:
        raise SnapshotError(f"{path}: not a run state (no epoch count)")
    if state.get("params") is None:
        raise SnapshotError(f"{path}: the run has no checkpoint to carry yet (no epoch, and no --checkpoint-minutes "
                            "interval, has finished)")
    names = [state.get("params"), state.get("states")]
    if not all(isinstance(n, str) and n and os.path.basename(n) == n for n in names):
        raise SnapshotError(f"{path}: names no checkpoint files (params {names[0]!r}, states {names[1]!r}); "
                            "runs with an asynchronous kvstore keep no optimizer state and cannot be carried")
    partial = state.get("partial")
    step = partial.get("step") if isinstance(partial, dict) else None
    return describe(state["epoch"], step), names


def describe(epoch, step):
    """Where a checkpoint is in the run, in words."""
    return f"after epoch {epoch}" + (f" and step {step} of epoch {epoch + 1}" if step else "")


def save(run_dir, snapshot):
    """Writes the run's current checkpoint and text files to ``snapshot`` (atomically); returns where
    in the run the checkpoint is (:func:`describe`)."""
    position, checkpoint = _checkpoint_files(run_dir)
    arrays, meta = {}, dict(format=FORMAT, version=VERSION, position=position, text=[], checkpoint={})
    for name in TEXT_FILES:
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                arrays[f"text{len(meta['text'])}"] = np.frombuffer(f.read(), np.uint8)
            meta["text"].append(name)
    for index, name in enumerate(checkpoint):
        entries = []
        for key, (array_name, value) in enumerate(packed.read_params(os.path.join(run_dir, name)).items()):
            if value.dtype == np.float32:
                if not np.isfinite(value).all():
                    raise SnapshotError(f"{os.path.join(run_dir, name)}: array {array_name!r} holds NaN or "
                                        "infinity; the run diverged, nothing worth carrying")
                value, stored = to_bfloat16(value), "bfloat16"
            else:
                stored = "exact"
            arrays[f"file{index}_{key}"] = value
            entries.append([array_name, stored, list(value.shape)])
        meta["checkpoint"][name] = entries
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with atomic_path(snapshot) as tmp:
        # np.savez appends ".npz" to a name without it; a file object keeps the temporary name.
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return position


def _read_snapshot(snapshot):
    try:
        data = np.load(snapshot, allow_pickle=False)
    except FileNotFoundError:
        raise SnapshotError(f"{snapshot}: no such file") from None
    except (OSError, ValueError) as err:
        raise SnapshotError(f"{snapshot}: not a run snapshot (.npz) ({err})") from None
    with data:
        try:
            arrays = {key: data[key] for key in data.files}
        except ValueError as err:
            raise SnapshotError(f"{snapshot}: damaged or holds pickled objects ({err})") from None
    if META_KEY not in arrays or arrays[META_KEY].dtype != np.uint8:
        raise SnapshotError(f"{snapshot}: has no snapshot description; not written by carry_run.py")
    try:
        meta = json.loads(arrays[META_KEY].tobytes().decode())
    except (UnicodeDecodeError, ValueError) as err:
        raise SnapshotError(f"{snapshot}: damaged description ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SnapshotError(f"{snapshot}: not a {FORMAT} file")
    if meta.get("version") != VERSION:
        raise SnapshotError(f"{snapshot}: snapshot version {meta.get('version')!r}; this bmx reads version {VERSION}")
    return meta, arrays


def _safe_name(name, snapshot):
    if not isinstance(name, str) or not name or os.path.basename(name) != name or name in (".", ".."):
        raise SnapshotError(f"{snapshot}: bad file name {name!r} in the description")
    return name


def _array(arrays, key, stored, shape, snapshot):
    if key not in arrays:
        raise SnapshotError(f"{snapshot}: array {key} is missing")
    value = arrays[key]
    if list(value.shape) != shape:
        raise SnapshotError(f"{snapshot}: array {key} has shape {list(value.shape)}, the description says {shape}")
    if stored == "bfloat16":
        if value.dtype != np.uint16:
            raise SnapshotError(f"{snapshot}: array {key} should hold bfloat16 bits (uint16), holds {value.dtype}")
        return from_bfloat16(value)
    if stored != "exact":
        raise SnapshotError(f"{snapshot}: array {key} is stored as {stored!r}, which this bmx does not know")
    return value


def restore(snapshot, run_dir):
    """Writes the snapshot's files into ``run_dir`` (new or empty); returns where in the run its
    checkpoint is (:func:`describe`)."""
    meta, arrays = _read_snapshot(snapshot)
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        raise SnapshotError(f"{run_dir}: not empty; restore into a new directory (nothing there is replaced)")
    if not (isinstance(meta.get("position"), str) and isinstance(meta.get("text"), list)
            and isinstance(meta.get("checkpoint"), dict)):
        raise SnapshotError(f"{snapshot}: damaged description (position, text or checkpoint missing)")
    files = {}
    for index, name in enumerate(meta["text"]):
        files[_safe_name(name, snapshot)] = ("text", arrays.get(f"text{index}"))
        if files[name][1] is None or files[name][1].dtype != np.uint8:
            raise SnapshotError(f"{snapshot}: the text of {name} is missing")
    if "state.json" not in files or len(meta["checkpoint"]) != 2:
        raise SnapshotError(f"{snapshot}: lacks state.json or the checkpoint's two files")
    for index, (name, entries) in enumerate(meta["checkpoint"].items()):
        values = {}
        for key, entry in enumerate(entries):
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                    and isinstance(entry[2], list)):
                raise SnapshotError(f"{snapshot}: bad array entry {entry!r} for {name}")
            values[entry[0]] = _array(arrays, f"file{index}_{key}", entry[1], entry[2], snapshot)
        files[_safe_name(name, snapshot)] = ("params", values)
    os.makedirs(run_dir, exist_ok=True)
    # Written to a scratch folder first, so that a failure leaves the run directory empty.
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=".restore-") as scratch:
        for name, (kind, value) in files.items():
            path = os.path.join(scratch, name)
            if kind == "text":
                with open(path, "wb") as f:
                    f.write(value.tobytes())
            else:
                packed.write_params(path, value)
        for name in files:
            os.replace(os.path.join(scratch, name), os.path.join(run_dir, name))
    return meta["position"]

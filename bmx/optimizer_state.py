"""A Gluon trainer's optimizer state in a file that loading cannot turn into code (no pickle).

``mx.gluon.Trainer.save_states`` pickles the updater and the optimizer object, and
``load_states`` unpickles them: a crafted ``.states`` file runs code. Here the same state is kept
in an MXNet NDArray-list file (what ``mx.nd.save`` writes), read back with
:func:`bmx.packed.read_params` (numpy, bounds-checked):

* ``state:INDEX[.I[.J]]``: the optimizer's per-parameter arrays (e.g. Adam's mean and variance,
  SGD's momentum; nested tuples flattened), for parameter INDEX of the trainer;
* ``bmx_optimizer_state.json``: a uint8 array holding JSON: the format version, the optimizer's
  class name, the structure of every parameter's state, and the optimizer's and learning-rate
  scheduler's plain attributes (update counts, learning rate, the scheduler's position).

Restoring these onto the freshly built optimizer of a resumed run gives it the state the pickle
would have given it, so a resumed run trains to the same bytes as an unbroken one.
"""
import json

import mxnet as mx
import numpy as np

from . import packed

__all__ = ["OptimizerStateError", "save_states", "load_states", "FORMAT_VERSION"]

FORMAT_VERSION = 1
META_KEY = "bmx_optimizer_state.json"
# Rebuilt by the trainer from its parameters, not state: never saved or restored.
_STRUCTURAL = frozenset(("param_dict", "idx2name", "sym_info", "lr_scheduler", "_index_update_count"))
_PICKLE_PROTOCOL_2_AND_LATER = b"\x80"


class OptimizerStateError(ValueError):
    """An optimizer state file is missing, damaged, in MXNet's pickle format, or not this trainer's."""


class _Unencodable(Exception):
    pass


def _encode(value, arrays=None, key=""):
    """Plain values as tagged JSON (tuples, lists and dicts with non-string keys survive); NDArrays
    go into ``arrays`` under ``state:KEY`` (only if ``arrays`` is given)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [_encode(v, arrays, f"{key}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        return {"dict": [[_encode(k), _encode(v, arrays, key)] for k, v in value.items()]}
    if arrays is not None and isinstance(value, mx.nd.NDArray):
        name = f"state:{key}"
        arrays[name] = value
        return {"array": name}
    raise _Unencodable(type(value).__name__)


def _decode(value, arrays=None, ctx=None, path=""):
    if not isinstance(value, dict):
        if isinstance(value, list):
            raise OptimizerStateError(f"{path}: malformed state description")
        return value
    [(tag, body)] = value.items() if len(value) == 1 else [(None, None)]
    if tag in ("list", "tuple") and isinstance(body, list):
        items = [_decode(v, arrays, ctx, path) for v in body]
        return items if tag == "list" else tuple(items)
    if tag == "dict" and isinstance(body, list) and all(isinstance(p, list) and len(p) == 2 for p in body):
        return {_decode(k, None, None, path): _decode(v, arrays, ctx, path) for k, v in body}
    if tag == "array" and arrays is not None and body in arrays:
        a = arrays[body]
        return mx.nd.array(a, ctx=ctx, dtype=a.dtype)
    raise OptimizerStateError(f"{path}: malformed state description ({str(value)[:80]})")


def _plain_attributes(obj):
    """The attributes of ``obj`` that are plain data (numbers, strings, containers of them)."""
    result = {}
    for name, value in vars(obj).items():
        if name in _STRUCTURAL:
            continue
        try:
            result[name] = _encode(value)
        except _Unencodable:
            pass
    return result


def _updaters(trainer):
    """The trainer's updaters (one per device, or the local kvstore's one), after its lazy setup."""
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    if trainer._update_on_kvstore:
        updater = getattr(trainer._kvstore, "_updater", None)
        if updater is None:
            raise OptimizerStateError("the optimizer state lives on the parameter servers, where it cannot be saved")
        return [updater]
    return trainer._updaters


def save_states(trainer, path):
    """Writes ``trainer``'s optimizer state to ``path`` (see the module docstring)."""
    updater = _updaters(trainer)[0]
    optimizer = trainer._optimizer
    arrays = {}
    states = [[index, _encode(state, arrays, str(index))] for index, state in updater.states.items()]
    current = [k for k, v in optimizer._all_index_update_counts.items() if v is optimizer._index_update_count]
    scheduler = optimizer.lr_scheduler
    meta = dict(format_version=FORMAT_VERSION, optimizer=type(optimizer).__name__, states=states,
                attributes=_plain_attributes(optimizer), current_device=current[0] if current else None,
                scheduler=type(scheduler).__name__ if scheduler is not None else None,
                scheduler_attributes=_plain_attributes(scheduler) if scheduler is not None else {})
    arrays[META_KEY] = mx.nd.array(np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8), dtype=np.uint8)
    mx.nd.save(path, arrays)


def _read(path):
    try:
        with open(path, "rb") as f:
            head = f.read(1)
    except FileNotFoundError:
        raise OptimizerStateError(f"{path}: no such optimizer state file") from None
    except OSError as err:
        raise OptimizerStateError(f"{path}: cannot read the optimizer state file ({err.strerror})") from None
    if head == _PICKLE_PROTOCOL_2_AND_LATER:
        raise OptimizerStateError(
            f"{path}: an optimizer state file in MXNet's pickle format (Trainer.save_states, written by an older "
            "bmx); bmx never unpickles files, since loading one can run any code. Resume from a checkpoint "
            "written by this bmx, or convert the file in a process you trust")
    try:
        arrays = packed.read_params(path)
    except packed.PackedFormatError as err:
        raise OptimizerStateError(f"{err} (not a bmx optimizer state file)") from None
    blob = arrays.pop(META_KEY, None)
    if blob is None or blob.dtype != np.uint8 or blob.ndim != 1:
        raise OptimizerStateError(f"{path}: not a bmx optimizer state file (no {META_KEY} entry)")
    try:
        meta = json.loads(blob.tobytes().decode("utf-8"))
    except ValueError as err:
        raise OptimizerStateError(f"{path}: its {META_KEY} entry is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("states"), list):
        raise OptimizerStateError(f"{path}: its {META_KEY} entry is not a bmx optimizer state")
    return arrays, meta


def load_states(trainer, path):
    """Restores the optimizer state that :func:`save_states` wrote to ``path`` into ``trainer``.

    The trainer must be built like the saved one (same optimizer, same parameters). Raises
    OptimizerStateError naming the file if it is missing, truncated, in MXNet's pickle format,
    written for another optimizer, or holds state of other shapes than the trainer's parameters.
    """
    arrays, meta = _read(path)
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise OptimizerStateError(f"{path}: optimizer state format {version!r} is newer than this bmx reads "
                                  f"({FORMAT_VERSION}); upgrade bmx")
    optimizer = trainer._optimizer
    if meta.get("optimizer") != type(optimizer).__name__:
        raise OptimizerStateError(f"{path}: the state of optimizer {meta.get('optimizer')!r}, but this run uses "
                                  f"{type(optimizer).__name__!r}")
    scheduler = optimizer.lr_scheduler
    kind = type(scheduler).__name__ if scheduler is not None else None
    if meta.get("scheduler") != kind:
        raise OptimizerStateError(f"{path}: a learning-rate schedule of kind {meta.get('scheduler')!r}, but this run "
                                  f"uses {kind!r}")
    updaters = _updaters(trainer)
    params = trainer._params
    described = {}
    for entry in meta["states"]:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int)
                and 0 <= entry[0] < len(params)):
            raise OptimizerStateError(f"{path}: state for a parameter this trainer does not have ({str(entry)[:80]})")
        described[entry[0]] = entry[1]
    for name, a in arrays.items():
        index = name.split(":", 1)[1].split(".", 1)[0] if name.startswith("state:") else ""
        if not index.isdigit() or int(index) not in described:
            raise OptimizerStateError(f"{path}: unexpected array {name!r}")
        if a.shape != params[int(index)].shape:
            raise OptimizerStateError(f"{path}: {name} has shape {a.shape}, but parameter {params[int(index)].name} "
                                      f"has shape {params[int(index)].shape}: the state of another model")
    for updater in updaters:
        # every device gets its own arrays: the updaters change their state in place
        updater.states = {i: _decode(s, arrays, mx.cpu(), path) for i, s in described.items()}
        updater.states_synced = dict.fromkeys(updater.states, False)
    for name, value in _decode_attributes(meta.get("attributes"), path).items():
        setattr(optimizer, name, value)
    if scheduler is not None:
        for name, value in _decode_attributes(meta.get("scheduler_attributes"), path).items():
            setattr(scheduler, name, value)
    current = meta.get("current_device")
    if current is not None:  # the pickle kept this alias of one device's counts
        optimizer._index_update_count = optimizer._all_index_update_counts.setdefault(current, {})


def _decode_attributes(attributes, path):
    if not isinstance(attributes, dict):
        raise OptimizerStateError(f"{path}: malformed optimizer attributes")
    return {name: _decode(value, path=path) for name, value in attributes.items() if name not in _STRUCTURAL}

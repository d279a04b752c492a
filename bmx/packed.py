"""The packed model format: MXNet's files, read and written with numpy alone (no mxnet, no pickle).

A packed model is a directory laid out like a ``example/train_imagenet.py`` output, so that both
:func:`bmx.runtime.load` and MXNet (``SymbolBlock.imports`` after ``bmx.load_library()``) load it:

* ``model-symbol.json``: the MXNet symbol JSON (standard MXNet ops and bmx ops);
* ``model-0000.params``: an MXNet NDArray-list file with the keys ``arg:NAME`` / ``aux:NAME``;
* ``model.json``: metadata (the source model's ``model.json`` keys plus ``"packed"``, which holds
  ``params_sha256``, the sha256 of the params file, checked on load).

Binary weights are stored packed, as int64 arrays (see docs/packed.md). Format version 1 holds
float and binary layers; version 2 adds int8 full-precision layers (the ops in ``INT8_OPS``). A
model is written with the lowest version that holds it, so float models stay readable by a bmx
that reads version 1 only, and an int8 model is refused by it as "newer than this bmx reads".

NDArray-list file (what ``mx.nd.save`` writes for a dict of dense arrays), all little-endian::

    uint64 0x112 (list magic), uint64 0 (reserved)
    uint64 number of arrays, then per array:
        uint32 0xF993FAC9 (NDArray V2; 0xF993FACA = V3, written in numpy-shape mode)
        int32  storage type (0 = dense; 1 row-sparse and 2 CSR are not supported here)
        int32  ndim, int64 dims[ndim]   (V2 with ndim 0: a "none" array, nothing follows)
        int32  device type, int32 device id
        int32  dtype flag (0 float32, 1 float64, 2 float16, 3 uint8, 4 int32, 5 int8, 6 int64, 7 bool)
        the raw C-order data
    uint64 number of names, then per name: uint64 length, UTF-8 bytes
"""
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import struct
import tempfile
import warnings
from typing import NamedTuple

import numpy as np

from ._atomic import atomic_path

__all__ = ["PackedFormatError", "PackedModel", "read_params", "write_params", "load_model", "save_model",
           "check_replaceable", "recover", "scratch_directory", "check_preprocessing", "FORMAT_VERSION",
           "SYMBOL_FILE", "PARAMS_FILE", "META_FILE", "INT8_OPS", "required_version"]

FORMAT_VERSION = 2  # the newest version this bmx reads
INT8_OPS = ("bmx_int8_conv2d", "bmx_int8_dense")
_INT8_VERSION = 2
SYMBOL_FILE = "model-symbol.json"
PARAMS_FILE = "model-0000.params"
META_FILE = "model.json"
MODEL_FILES = frozenset((SYMBOL_FILE, PARAMS_FILE, META_FILE))

_LIST_MAGIC = 0x112
_V2_MAGIC = 0xF993FAC9
_V3_MAGIC = 0xF993FACA  # numpy shape semantics: ndim 0 is a scalar, ndim -1 "unknown"
_OLD_MAGICS = (0xF993FAC8,)  # V1 (before storage types)
_DTYPES = {0: "<f4", 1: "<f8", 2: "<f2", 3: "u1", 4: "<i4", 5: "i1", 6: "<i8", 7: "?"}
_FLAGS = {np.dtype(code).newbyteorder("<"): flag for flag, code in _DTYPES.items()}
_STORAGE_NAMES = {1: "row_sparse", 2: "csr"}


class PackedFormatError(ValueError):
    """A model file is missing, malformed, truncated or uses something this format does not hold."""


class PackedModel(NamedTuple):
    """A loaded packed model: ``graph`` (the symbol JSON as a dict), ``params`` (the params file's
    arrays by key, ``"arg:NAME"`` / ``"aux:NAME"``), ``meta`` (model.json) and ``directory``."""
    graph: dict
    params: dict
    meta: dict
    directory: str = None


class _Reader:
    """Reads little-endian fields from a bytes buffer; every read checks the remaining length."""

    def __init__(self, data, path):
        self.data, self.path, self.pos = data, path, 0

    def fail(self, message):
        raise PackedFormatError(f"{self.path}: {message}")

    def take(self, size, what):
        if size > len(self.data) - self.pos:
            self.fail(f"truncated: {what} needs {size} bytes at offset {self.pos}, "
                      f"but the file ends after {len(self.data) - self.pos}")
        start = self.pos
        self.pos += size
        return start

    def unpack(self, fmt, what):
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.data, start)

    def one(self, fmt, what):
        return self.unpack(fmt, what)[0]


def read_params(path):
    """Reads an MXNet NDArray-list file (``mx.nd.save`` / ``mx.npx.save`` of a dict of dense arrays).

    Returns a dict name -> numpy array (writable, in the file's order and dtype). Raises
    PackedFormatError naming the file for a missing file, bad magic, truncation, an unknown dtype,
    sparse storage, a missing name list or duplicate names. Sizes are checked against the file
    length before anything is allocated, so a corrupt header cannot ask for huge memory.
    """
    return _parse_params(_read_bytes(path), path)


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise PackedFormatError(f"{path}: no such parameter file") from None
    except OSError as err:
        raise PackedFormatError(f"{path}: cannot read the parameter file ({err.strerror})") from None


def _parse_params(data, path):
    r = _Reader(data, path)
    magic, _reserved = r.unpack("<QQ", "the header")
    if magic != _LIST_MAGIC:
        r.fail(f"not an MXNet parameter file (magic {magic:#x}, expected {_LIST_MAGIC:#x})")
    count = r.one("<Q", "the array count")
    # every array takes at least 12 bytes (magic, storage type, ndim)
    if count > (len(data) - r.pos) // 12:
        r.fail(f"truncated: the header declares {count} arrays, more than the file can hold")
    arrays = [_read_array(r, i) for i in range(count)]
    names = _read_names(r, count)
    if r.pos != len(data):
        r.fail(f"{len(data) - r.pos} unexpected bytes after the last name")
    result = {}
    for name, array in zip(names, arrays):
        if name in result:
            r.fail(f"duplicate array name {name!r}")
        result[name] = array
    return result


def _read_array(r, index):
    what = f"array {index}"
    magic = r.one("<I", f"{what}'s magic")
    if magic in _OLD_MAGICS or magic < 32:  # V1, or pre-V1 files whose first field is ndim
        r.fail(f"{what} uses a pre-1.0 MXNet NDArray format, which is not supported (re-save it with MXNet 1.x)")
    if magic not in (_V2_MAGIC, _V3_MAGIC):
        r.fail(f"{what} has a bad magic number {magic:#x} (expected {_V2_MAGIC:#x} or {_V3_MAGIC:#x})")
    storage = r.one("<i", f"{what}'s storage type")
    if storage != 0:
        kind = _STORAGE_NAMES.get(storage, f"unknown storage type {storage}")
        r.fail(f"{what} is sparse ({kind}); only dense arrays are supported")
    ndim = r.one("<i", f"{what}'s ndim")
    if (ndim == 0 and magic == _V2_MAGIC) or (ndim == -1 and magic == _V3_MAGIC):
        r.fail(f"{what} is an uninitialized (none) NDArray")
    if not 0 <= ndim <= 32:
        r.fail(f"{what} has an invalid ndim {ndim}")
    shape = r.unpack(f"<{ndim}q", f"{what}'s shape")
    if any(d < 0 for d in shape):
        r.fail(f"{what} has an invalid shape {shape}")
    r.unpack("<ii", f"{what}'s device")
    flag = r.one("<i", f"{what}'s dtype flag")
    if flag not in _DTYPES:
        r.fail(f"{what} has an unsupported dtype flag {flag} (supported: "
               f"{', '.join(f'{k} {np.dtype(v).name}' for k, v in _DTYPES.items())})")
    dtype = np.dtype(_DTYPES[flag])
    size = 1
    for d in shape:
        size *= d  # Python ints: a corrupt shape cannot overflow
    start = r.take(size * dtype.itemsize, f"{what}'s data ({shape} {dtype.name})")
    # copy: an aligned, writable array that does not pin the whole file in memory
    return np.frombuffer(r.data, dtype, size, start).astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def _read_names(r, count):
    n = r.one("<Q", "the name count")
    if n != count:
        r.fail(f"holds {count} arrays but {n} names" + (" (an unnamed list, not a dict)" if n == 0 else ""))
    names = []
    for i in range(n):
        length = r.one("<Q", f"name {i}'s length")
        start = r.take(length, f"name {i}")
        try:
            names.append(r.data[start:start + length].decode("utf-8"))
        except UnicodeDecodeError:
            r.fail(f"name {i} is not valid UTF-8")
    return names


def write_params(path, arrays):
    """Writes a dict name -> numpy array as an MXNet NDArray-list file, atomically.

    The bytes are those ``mx.nd.save(path, {name: mx.nd.array(a, dtype=a.dtype)})`` writes, in the
    dict's order, so ``mx.nd.load`` and :func:`read_params` return the same arrays. Supported
    dtypes: float32, float64, float16, uint8, int8, int32, int64, bool. Arrays must have at least
    one axis: MXNet's NDArray format (outside numpy mode) cannot hold a 0-d array (reshape to (1,)).
    """
    records = _param_records(path, arrays)
    with atomic_path(path) as tmp:
        _write_records(tmp, records)


def _param_records(path, arrays):
    """Validates the arrays and returns [(name, little-endian C-contiguous array, dtype flag)]."""
    if not isinstance(arrays, dict):
        raise TypeError(f"{path}: arrays must be a dict name -> numpy array, got {type(arrays).__name__}")
    records = []
    for name, value in arrays.items():
        if not isinstance(name, str):
            raise TypeError(f"{path}: array names must be strings, got {name!r}")
        a = np.asarray(value)
        flag = _FLAGS.get(a.dtype.newbyteorder("<"))
        if flag is None:
            raise PackedFormatError(f"{path}: array {name!r} has dtype {a.dtype}, which MXNet's format does not "
                                    f"hold (supported: {', '.join(np.dtype(v).name for v in _DTYPES.values())})")
        if a.ndim == 0:
            raise PackedFormatError(f"{path}: array {name!r} is 0-d, which MXNet's NDArray format cannot hold "
                                    "(mx.nd.load would misread it); reshape it to (1,)")
        records.append((name, np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")), flag))
    return records


def _write_records(path, records):
    with open(path, "wb") as f:
        f.write(struct.pack("<QQQ", _LIST_MAGIC, 0, len(records)))
        for _, a, flag in records:
            # device: type 1 (CPU), id 0, as MXNet writes arrays saved from the CPU
            f.write(struct.pack(f"<Iii{a.ndim}qiii", _V2_MAGIC, 0, a.ndim, *a.shape, 1, 0, flag))
            f.write(memoryview(a.reshape(-1)).cast("B"))
        f.write(struct.pack("<Q", len(records)))
        for name, _, _ in records:
            encoded = name.encode("utf-8")
            f.write(struct.pack("<Q", len(encoded)))
            f.write(encoded)


def _read_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise PackedFormatError(f"{path}: no such {what} file") from None
    except OSError as err:
        raise PackedFormatError(f"{path}: cannot read the {what} file ({err.strerror})") from None
    except ValueError as err:
        raise PackedFormatError(f"{path}: not a valid JSON {what} file ({err})") from None


def _check_graph(graph, path):
    """The symbol JSON's top level: a dict with a list of node dicts and a list of heads."""
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list) or \
            not isinstance(graph.get("heads"), list):
        raise PackedFormatError(f"{path}: not an MXNet symbol JSON (needs 'nodes' and 'heads' lists)")
    for i, node in enumerate(graph["nodes"]):
        if not isinstance(node, dict) or not isinstance(node.get("op"), str) or \
                not isinstance(node.get("name"), str) or not isinstance(node.get("inputs", []), list):
            raise PackedFormatError(f"{path}: node {i} is not an MXNet node (needs 'op', 'name' and 'inputs')")


def required_version(graph):
    """The format version a symbol JSON dict needs: 2 if it has an int8 layer (INT8_OPS), else 1."""
    return _INT8_VERSION if any(n.get("op") in INT8_OPS for n in graph["nodes"]) else 1


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_preprocessing(prep, path, meta=None):
    """Validates model.json's ``preprocessing`` entry and returns it.

    ``image_size`` a positive integer (and equal to the ``image_size`` the metadata's ``config`` or
    top level gives the model, if any), ``resize`` 0 or at least ``image_size`` (the center crop
    must fit), ``mean`` and ``std`` three finite numbers each, ``std`` positive. Raises
    PackedFormatError naming ``path`` and the field.
    """
    def bad(field, message):
        raise PackedFormatError(f"{path}: preprocessing.{field} {message}")

    if not isinstance(prep, dict):
        raise PackedFormatError(f"{path}: preprocessing must be a JSON object, got {type(prep).__name__}")
    size = prep.get("image_size")
    if not _is_int(size) or size < 1:
        bad("image_size", f"must be a positive integer, got {size!r}")
    resize = prep.get("resize", 0)
    if not _is_int(resize) or resize < 0:
        bad("resize", f"must be 0 (no resize) or a positive integer, got {resize!r}")
    if 0 < resize < size:
        bad("resize", f"is {resize}, smaller than image_size {size}: the center crop would not fit")
    for field in ("mean", "std"):
        values = prep.get(field)
        if not isinstance(values, list) or len(values) != 3 or not all(map(_is_finite_number, values)):
            bad(field, f"must be a list of 3 finite numbers (R, G, B on the 0..255 scale), got {values!r}")
    if min(prep["std"]) <= 0:
        bad("std", f"must be positive, got {prep['std']!r}")
    for where, holder in (("config.image_size", (meta or {}).get("config")), ("image_size", meta)):
        trained = holder.get("image_size") if isinstance(holder, dict) else None
        if trained is not None and trained != size:
            bad("image_size", f"is {size}, but {where} says the model takes {trained!r}")
    return prep


def _check_finite(params, path):
    for name, a in params.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            raise PackedFormatError(f"{path}: array {name!r} holds {bad} non-finite value(s) (NaN or infinity); "
                                    "a model with such weights gives meaningless outputs")


def load_model(directory):
    """Reads a packed model directory (see the module docstring) and returns a :class:`PackedModel`.

    The symbol file is read as JSON (nothing in it is executed). Raises PackedFormatError naming
    the file for a missing or malformed file, a model written by a newer format version, params
    whose sha256 differs from model.json's ``packed.params_sha256``, non-finite float params or an
    invalid ``preprocessing`` entry (see :func:`check_preprocessing`). A replace of the directory
    that was interrupted is first finished or undone (see :func:`recover`).
    """
    directory = os.fspath(directory)
    recover(directory)
    if not os.path.isdir(directory):
        raise PackedFormatError(f"{directory}: no such model directory")
    symbol_path = os.path.join(directory, SYMBOL_FILE)
    meta_path = os.path.join(directory, META_FILE)
    params_path = os.path.join(directory, PARAMS_FILE)
    graph = _read_json(symbol_path, "symbol")
    _check_graph(graph, symbol_path)
    meta = _read_json(meta_path, "metadata")
    if not isinstance(meta, dict):
        raise PackedFormatError(f"{meta_path}: metadata must be a JSON object, got {type(meta).__name__}")
    packed_info = meta.get("packed") if isinstance(meta.get("packed"), dict) else {}
    version = packed_info.get("format_version", 1)
    if not _is_int(version) or version < 1:
        raise PackedFormatError(f"{meta_path}: packed.format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise PackedFormatError(f"{meta_path}: packed format version {version!r} is newer than this bmx "
                                f"reads ({FORMAT_VERSION}); upgrade bmx")
    if version < required_version(graph):
        raise PackedFormatError(f"{meta_path}: packed.format_version is {version} but {SYMBOL_FILE} holds int8 "
                                f"layers ({', '.join(INT8_OPS)}), which need version {_INT8_VERSION}")
    if "preprocessing" in meta:
        check_preprocessing(meta["preprocessing"], meta_path, meta)
    data = _read_bytes(params_path)
    expected = packed_info.get("params_sha256")
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise PackedFormatError(f"{params_path}: the file's sha256 is not the packed.params_sha256 recorded in "
                                f"{META_FILE}: it was damaged or changed after packing")
    params = _parse_params(data, params_path)
    _check_finite(params, params_path)
    return PackedModel(graph, params, meta, directory)


def _check_params(params, graph, path):
    variables = {n["name"] for n in graph["nodes"] if n["op"] == "null"}
    for key in params:
        kind, _, name = key.partition(":") if isinstance(key, str) else ("", "", "")
        if kind not in ("arg", "aux") or not name:
            raise PackedFormatError(f"{path}: parameter key {key!r} must be 'arg:NAME' or 'aux:NAME'")
        if name not in variables:
            # MXNet's SymbolBlock.imports rejects parameters the graph does not use
            raise PackedFormatError(f"{path}: parameter {key!r} is not a variable of the graph")


def _holds_only_model_files(path, exactly=False):
    """Whether ``path`` is a real directory whose entries are regular files named like a packed model's."""
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    names = set(os.listdir(path))
    if not (names == MODEL_FILES if exactly else names <= MODEL_FILES):
        return False
    return all(os.path.isfile(os.path.join(path, n)) and not os.path.islink(os.path.join(path, n)) for n in names)


def check_replaceable(directory):
    """Raises FileExistsError unless ``save_model(directory, ..., force=True)`` may replace it.

    Only a packed model is replaced: a directory holding nothing but model-symbol.json,
    model-0000.params and model.json (which, if readable, has a ``packed`` entry), possibly none
    of them; never a file, a symbolic link, or the current directory or one of its parents.
    """
    out = os.path.abspath(os.fspath(directory))
    if not os.path.lexists(out):
        return
    if os.path.islink(out) or not os.path.isdir(out):
        raise FileExistsError(f"{out} exists and is not a directory; it is not replaced")
    real, cwd = os.path.realpath(out), os.path.realpath(os.getcwd())
    if os.path.commonpath([real, cwd]) == real:
        raise FileExistsError(f"{out} is the current directory or one of its parents; it is never replaced")
    if not os.listdir(out):
        return
    what = (f"{out} is not a packed model directory; only one holding nothing but "
            f"{', '.join(sorted(MODEL_FILES))} is replaced")
    if not _holds_only_model_files(out):
        others = sorted(set(os.listdir(out)) - MODEL_FILES)
        raise FileExistsError(what + (f" (it also holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''})"
                                      if others else ""))
    try:
        with open(os.path.join(out, META_FILE), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return  # a damaged or partly deleted packed model
    if not isinstance(meta, dict) or not isinstance(meta.get("packed"), dict):
        raise FileExistsError(what + f" (its {META_FILE} has no 'packed' entry: an exported model, not a packed one)")


def _leftovers(out):
    """Hidden siblings ``.BASE.XXXXXXXX.{tmp,old,work}`` that save_model or scratch_directory made for ``out``."""
    parent, base = os.path.split(out)
    pattern = re.compile(rf"\.{re.escape(base)}\.[a-z0-9_]{{8}}\.(tmp|old|work)\Z")
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    found = [os.path.join(parent, n) for n in names if pattern.match(n)]
    # the newest aside copy first: it is the one a replace put there last
    return sorted((p for p in found if os.path.isdir(p) and not os.path.islink(p)),
                  key=lambda p: (not p.endswith(".old"), -os.path.getmtime(p)))


def _is_abandoned_work(path):
    """A scratch directory whose owner died: it has the marker and nobody holds its lock."""
    import fcntl

    try:
        fd = os.open(os.path.join(path, _WORK_MARKER), os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def recover(directory):
    """Finishes or undoes an interrupted :func:`save_model` of ``directory``; returns what it did.

    A replace renames the old model aside (``.BASE.XXXXXXXX.old``) before renaming the new one in,
    and writes into ``.BASE.XXXXXXXX.tmp`` first. A kill between the renames leaves no model: the
    aside copy is renamed back. Copies aside next to a model, unfinished ``.tmp`` writes and
    abandoned scratch directories (``.work``, see :func:`scratch_directory`) are deleted. Only
    directories holding nothing but packed-model files (or a scratch marker) are touched. Each
    action is also issued as a warning.
    """
    out = os.path.abspath(os.fspath(directory))
    done = []
    for path in _leftovers(out):
        try:
            if path.endswith(".work"):
                if _is_abandoned_work(path):
                    shutil.rmtree(path)
                    done.append(f"{out}: removed {path}, the scratch directory of an interrupted conversion")
            elif path.endswith(".old") and not os.path.lexists(out) and _holds_only_model_files(path, exactly=True):
                os.rename(path, out)
                done.append(f"{out}: restored the previous model from {path}, where an interrupted replace left it")
            elif _holds_only_model_files(path):
                shutil.rmtree(path)
                done.append(f"{out}: removed {path}, left behind by an interrupted write or replace")
        except OSError as err:
            done.append(f"{out}: could not clean up {path} ({err.strerror})")
    for message in done:
        warnings.warn(message, stacklevel=2)
    return done


_WORK_MARKER = ".bmx-scratch"


@contextlib.contextmanager
def scratch_directory(directory):
    """A scratch directory ``.BASE.XXXXXXXX.work`` beside ``directory``, deleted on exit.

    It is locked while in use; if the process is killed, the next :func:`recover` of
    ``directory`` (every save_model and load_model runs one) deletes it.
    """
    import fcntl

    out = os.path.abspath(os.fspath(directory))
    parent, base = os.path.split(out)
    path = tempfile.mkdtemp(prefix=f".{base}.", suffix=".work", dir=parent)
    try:
        fd = os.open(os.path.join(path, _WORK_MARKER), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield path
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def save_model(directory, graph, params, meta, force=False):
    """Writes a packed model directory atomically and returns its absolute path.

    ``graph``: the symbol JSON as a dict; ``params``: dict ``"arg:NAME"`` / ``"aux:NAME"`` ->
    finite numpy array (every NAME a variable of the graph); ``meta``: a JSON-serializable dict for
    model.json (its ``preprocessing``, if any, valid: :func:`check_preprocessing`), written with
    ``packed.params_sha256`` (the params file's sha256) and ``packed.format_version`` (the lowest
    version that holds ``graph``: :func:`required_version`) set. Everything
    is validated first, then written into a temporary sibling directory that is renamed into
    place, so an interrupted write never leaves a partial model under ``directory``. An existing
    ``directory`` is an error (FileExistsError, left untouched) unless ``force`` and
    :func:`check_replaceable` allows it: then it is renamed aside, the new one renamed in, and the
    old one deleted (restored if the swap fails, or by the next save_model or load_model if the
    process is killed in between: see :func:`recover`).
    """
    out = os.path.abspath(os.fspath(directory))
    params_path, meta_path = os.path.join(out, PARAMS_FILE), os.path.join(out, META_FILE)
    _check_graph(graph, os.path.join(out, SYMBOL_FILE))
    _check_params(params, graph, params_path)
    records = _param_records(params_path, params)
    _check_finite({name: a for name, a, _ in records}, params_path)
    if not isinstance(meta, dict):
        raise TypeError(f"{meta_path}: meta must be a dict, got {type(meta).__name__}")
    if not isinstance(meta.get("packed", {}), dict):
        raise TypeError(f"{meta_path}: meta['packed'] must be a dict, got {type(meta['packed']).__name__}")
    if "preprocessing" in meta:  # a model that load_model would refuse is not written
        check_preprocessing(meta["preprocessing"], meta_path, meta)
    texts = {SYMBOL_FILE: json.dumps(graph, indent=2)}
    json.dumps(meta)  # fail before writing
    recover(out)
    if os.path.lexists(out):
        if not force:
            raise FileExistsError(f"{out} already exists; pass force=True (--force) to replace it")
        check_replaceable(out)
    parent, base = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
    try:
        # mkdtemp makes the directory owner-only; give it the permissions a plain mkdir would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        _write_records(os.path.join(tmp, PARAMS_FILE), records)
        with open(os.path.join(tmp, PARAMS_FILE), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        info = dict(meta.get("packed", {}), format_version=required_version(graph), params_sha256=digest)
        texts[META_FILE] = json.dumps(dict(meta, packed=info), indent=2)
        for name, text in texts.items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                f.write(text)
        if os.path.lexists(out):
            _swap_in(tmp, out, parent, base)
        else:
            os.rename(tmp, out)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return out


def _swap_in(new, out, parent, base):
    """Replaces the directory ``out`` by ``new``: old renamed aside, new renamed in, old deleted."""
    # rename(2) may replace an empty directory: reserve a fresh name for the old one that way
    old = tempfile.mkdtemp(prefix=f".{base}.", suffix=".old", dir=parent)
    try:
        os.rename(out, old)
    except OSError:
        os.rmdir(old)
        raise
    try:
        os.rename(new, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old)

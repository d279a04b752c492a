"""bmx.packed: MXNet's NDArray-list files without mxnet, and the packed model directory."""
import hashlib
import json
import os
import struct
import subprocess
import sys
import warnings

import mxnet as mx
import numpy as np
import pytest

from bmx import packed
from bmx.packed import PackedFormatError

DTYPES = ["float32", "float64", "float16", "uint8", "int8", "int32", "int64", "bool"]
SHAPES = [(1,), (5,), (2, 3), (2, 3, 4, 5), (0, 3), (4, 0, 2)]


def sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if np.dtype(dtype).kind == "f":
        return (rng.standard_normal(shape) * 100).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def sample_dict():
    arrays = {f"arg:{dtype}_{i}": sample(dtype, shape, i) for dtype in DTYPES for i, shape in enumerate(SHAPES)}
    # packed binary weights: int64 words with every bit pattern, including the sign bit
    arrays["arg:packed_weight"] = np.array([[-1, 0, 2 ** 63 - 1, -2 ** 63]], dtype=np.int64).reshape(1, 1, 2, 2)
    arrays["aux:mean"] = np.arange(3, dtype=np.float32)
    return arrays


def mx_save(path, arrays):
    mx.nd.save(str(path), {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()})


def assert_same(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ------------------------------------------------------------------ round trips with MXNet

@pytest.mark.parametrize("dtype", DTYPES)
def test_write_params_is_byte_identical_to_mx_nd_save(tmp_path, dtype):
    arrays = {f"arg:a{i}": sample(dtype, shape, i) for i, shape in enumerate(SHAPES)}
    packed.write_params(tmp_path / "ours.params", arrays)
    mx_save(tmp_path / "mxnet.params", arrays)
    assert (tmp_path / "ours.params").read_bytes() == (tmp_path / "mxnet.params").read_bytes()


def test_round_trips_in_both_directions(tmp_path):
    arrays = sample_dict()
    packed.write_params(tmp_path / "ours.params", arrays)
    loaded = mx.nd.load(str(tmp_path / "ours.params"))
    assert_same({k: v.asnumpy() for k, v in loaded.items()}, arrays)
    mx_save(tmp_path / "mxnet.params", arrays)
    assert_same(packed.read_params(tmp_path / "mxnet.params"), arrays)
    assert (tmp_path / "ours.params").read_bytes() == (tmp_path / "mxnet.params").read_bytes()


def test_read_params_returns_aligned_writable_native_arrays(tmp_path):
    arrays = {"a": np.ones((3,), np.int8), "b": np.arange(5, dtype=np.float64)}  # b starts at an odd offset
    packed.write_params(tmp_path / "x.params", arrays)
    for value in packed.read_params(tmp_path / "x.params").values():
        assert value.flags.aligned and value.flags.writeable and value.flags.c_contiguous
        assert value.dtype.isnative


def test_big_endian_and_non_contiguous_inputs_are_written_as_mxnet_would(tmp_path):
    a = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    packed.write_params(tmp_path / "x.params", {"a": a})
    back = packed.read_params(tmp_path / "x.params")["a"]
    assert back.dtype == np.float32 and np.array_equal(back, a)


def test_numpy_mode_files_with_0d_and_empty_arrays_are_read(tmp_path):
    """mx.npx.save writes NDArray V3 records, the only ones that hold 0-d arrays."""
    path = str(tmp_path / "np.params")
    with mx.util.np_shape(True), mx.util.np_array(True):
        mx.npx.save(path, {"scalar": mx.np.array(np.float32(2.5)), "empty": mx.np.zeros((0, 3)),
                           "words": mx.np.array(np.array([1, -1], np.int64), dtype=np.int64)})
    got = packed.read_params(path)
    assert got["scalar"].shape == () and got["scalar"] == np.float32(2.5)
    assert got["empty"].shape == (0, 3) and got["empty"].dtype == np.float32
    assert got["words"].dtype == np.int64 and list(got["words"]) == [1, -1]


def test_empty_dict(tmp_path):
    packed.write_params(tmp_path / "e.params", {})
    assert mx.nd.load(str(tmp_path / "e.params")) == []  # how MXNet returns an empty file
    assert packed.read_params(tmp_path / "e.params") == {}


# ------------------------------------------------------------------ what cannot be written

def test_0d_arrays_are_refused_with_the_reason(tmp_path):
    with pytest.raises(PackedFormatError, match=r"'s'.*0-d.*reshape it to \(1,\)"):
        packed.write_params(tmp_path / "x.params", {"s": np.float32(1)})
    assert not os.path.exists(tmp_path / "x.params")


@pytest.mark.parametrize("value", [np.zeros(2, np.uint16), np.zeros(2, np.complex64), np.array(["a"])])
def test_unsupported_dtypes_are_refused_naming_the_array(tmp_path, value):
    with pytest.raises(PackedFormatError, match=f"x.params: array 'bad' has dtype {value.dtype}"):
        packed.write_params(tmp_path / "x.params", {"ok": np.zeros(1, np.float32), "bad": value})
    assert not os.listdir(tmp_path)


def test_names_must_be_strings(tmp_path):
    with pytest.raises(TypeError, match="names must be strings"):
        packed.write_params(tmp_path / "x.params", {1: np.zeros(1, np.float32)})


def _half_write(target, records):
    """Stands in for the record writer: a few bytes reach the file, then the disk is full."""
    with open(target, "wb") as f:
        f.write(b"\x12\x01\0\0")
    raise OSError("disk full")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "x.params"
    packed.write_params(path, {"a": np.ones(3, np.float32)})
    before = path.read_bytes()

    monkeypatch.setattr(packed, "_write_records", _half_write)
    with pytest.raises(OSError, match="disk full"):
        packed.write_params(path, {"a": np.zeros(3, np.float32)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["x.params"]


# ------------------------------------------------------------------ corrupt files

def header(count):
    return struct.pack("<QQQ", 0x112, 0, count)


def record(shape=(2,), flag=0, magic=0xF993FAC9, storage=0, data=None):
    body = struct.pack(f"<Iii{len(shape)}q", magic, storage, len(shape), *shape) + struct.pack("<iii", 1, 0, flag)
    if data is None:
        data = b"\0" * (int(np.prod(shape)) * 4)
    return body + data


def names(*items):
    out = struct.pack("<Q", len(items))
    for name in items:
        out += struct.pack("<Q", len(name)) + name
    return out


def read_bytes(tmp_path, content):
    path = tmp_path / "bad.params"
    path.write_bytes(content)
    return packed.read_params(path)


def test_crafted_records_are_what_mxnet_reads(tmp_path):
    """The record layout the corruption tests build on: MXNet loads it."""
    (tmp_path / "ok.params").write_bytes(header(1) + record((2,), data=struct.pack("<ff", 1, 2)) + names(b"w"))
    assert mx.nd.load(str(tmp_path / "ok.params"))["w"].asnumpy().tolist() == [1, 2]
    assert packed.read_params(tmp_path / "ok.params")["w"].tolist() == [1, 2]


def test_missing_file(tmp_path):
    with pytest.raises(PackedFormatError, match="nope.params: no such parameter file"):
        packed.read_params(tmp_path / "nope.params")


CORRUPT = [
    (b"", "truncated: the header"),
    (struct.pack("<QQQ", 0x113, 0, 0), "not an MXNet parameter file"),
    (header(1) + record(magic=0x12345678) + names(b"w"), "array 0 has a bad magic number 0x12345678"),
    (header(1) + record(magic=0xF993FAC8) + names(b"w"), "array 0 uses a pre-1.0 MXNet NDArray format"),
    (header(1) + record(storage=1) + names(b"w"), r"array 0 is sparse \(row_sparse\)"),
    (header(1) + record(storage=2) + names(b"w"), r"array 0 is sparse \(csr\)"),
    (header(1) + record(flag=12) + names(b"w"), "array 0 has an unsupported dtype flag 12"),
    (header(1) + record(shape=()) + names(b"w"), "array 0 is an uninitialized"),
    (header(1) + record(shape=(-2,), data=b"") + names(b"w"), r"array 0 has an invalid shape \(-2,\)"),
    (header(2) + record() + record() + names(b"w", b"w"), "duplicate array name 'w'"),
    (header(1) + record() + names(), r"holds 1 arrays but 0 names \(an unnamed list"),
    (header(1) + record() + names(b"w") + b"x", "1 unexpected bytes after the last name"),
    (header(1) + record() + names(b"\xff"), "name 0 is not valid UTF-8"),
]


@pytest.mark.parametrize("content, message", CORRUPT, ids=[m.split(" ")[-1] for _, m in CORRUPT])
def test_corrupt_files_are_named_errors(tmp_path, content, message):
    with pytest.raises(PackedFormatError, match="bad.params: " + message):
        read_bytes(tmp_path, content)


def test_every_truncation_is_detected(tmp_path):
    arrays = {"arg:w": np.arange(6, dtype=np.float32).reshape(2, 3), "aux:i": np.arange(2, dtype=np.int64)}
    packed.write_params(tmp_path / "full.params", arrays)
    content = (tmp_path / "full.params").read_bytes()
    for size in range(len(content)):
        with pytest.raises(PackedFormatError, match="bad.params: truncated"):
            read_bytes(tmp_path, content[:size])


@pytest.mark.parametrize("content", [
    header(2 ** 62),                                                 # absurd array count
    header(1) + record(shape=(2 ** 31, 2 ** 31), data=b""),          # 2^62 elements declared
    header(1) + record() + struct.pack("<QQ", 1, 2 ** 60),           # absurd name length
], ids=["count", "shape", "name"])
def test_corrupt_sizes_are_rejected_before_allocating(tmp_path, content):
    with pytest.raises(PackedFormatError, match="truncated"):
        read_bytes(tmp_path, content)


# ------------------------------------------------------------------ model directories

def small_graph():
    """A real MXNet graph (FullyConnected with bias) and its parameters."""
    data = mx.sym.var("data")
    y = mx.sym.FullyConnected(data, num_hidden=3, name="fc")
    graph = json.loads(y.tojson())
    rng = np.random.default_rng(0)
    params = {"arg:fc_weight": rng.standard_normal((3, 4)).astype(np.float32),
              "arg:fc_bias": rng.standard_normal(3).astype(np.float32)}
    return graph, params


def test_save_and_load_model_round_trip_and_mxnet_loads_it(tmp_path):
    graph, params = small_graph()
    meta = {"classes": 3, "packed": {"format_version": packed.FORMAT_VERSION, "bmx_version": "0.1.0"}}
    out = packed.save_model(tmp_path / "model", graph, params, meta)
    assert out == str(tmp_path / "model")
    assert sorted(os.listdir(out)) == sorted([packed.SYMBOL_FILE, packed.PARAMS_FILE, packed.META_FILE])
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary left beside it
    model = packed.load_model(out)
    digest = hashlib.sha256((tmp_path / "model" / packed.PARAMS_FILE).read_bytes()).hexdigest()
    assert model.graph == graph and model.directory == out
    # the writer sets the version the graph needs: 1 for one without int8 layers
    assert model.meta == dict(meta, packed=dict(meta["packed"], format_version=1, params_sha256=digest))
    assert_same(model.params, params)
    block = mx.gluon.SymbolBlock.imports(os.path.join(out, packed.SYMBOL_FILE), ["data"],
                                         os.path.join(out, packed.PARAMS_FILE))
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(block(mx.nd.array(x)).asnumpy(),
                               x @ params["arg:fc_weight"].T + params["arg:fc_bias"], rtol=1e-5)


def test_existing_directory_needs_force_and_is_untouched_without_it(tmp_path):
    graph, params = small_graph()
    out = tmp_path / "model"
    packed.save_model(out, graph, params, {"version": 1})
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    with pytest.raises(FileExistsError, match="already exists; pass force=True"):
        packed.save_model(out, graph, params, {"version": 2})
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    packed.save_model(out, graph, params, {"version": 2}, force=True)
    assert packed.load_model(out).meta["version"] == 2
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_force_does_not_replace_a_file(tmp_path):
    graph, params = small_graph()
    (tmp_path / "model").write_text("not a model")
    with pytest.raises(FileExistsError, match="not a directory"):
        packed.save_model(tmp_path / "model", graph, params, {}, force=True)
    assert (tmp_path / "model").read_text() == "not a model"


def test_a_failure_while_writing_keeps_the_old_model_and_leaves_no_temporary(tmp_path, monkeypatch):
    graph, params = small_graph()
    out = tmp_path / "model"
    packed.save_model(out, graph, params, {"version": 1})

    monkeypatch.setattr(packed, "_write_records", _half_write)
    with pytest.raises(OSError, match="disk full"):
        packed.save_model(out, graph, params, {"version": 2}, force=True)
    assert packed.load_model(out).meta["version"] == 1
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_a_failed_swap_restores_the_old_model(tmp_path, monkeypatch):
    graph, params = small_graph()
    out = tmp_path / "model"
    packed.save_model(out, graph, params, {"version": 1})
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the old one is aside; moving the new one in fails
            raise OSError("rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        packed.save_model(out, graph, params, {"version": 2}, force=True)
    monkeypatch.setattr(os, "rename", real_rename)
    assert packed.load_model(out).meta["version"] == 1
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_save_model_validates_before_writing(tmp_path):
    graph, params = small_graph()
    out = tmp_path / "model"
    with pytest.raises(PackedFormatError, match="parameter 'arg:other' is not a variable of the graph"):
        packed.save_model(out, graph, dict(params, **{"arg:other": np.zeros(1, np.float32)}), {})
    with pytest.raises(PackedFormatError, match="'fc_weight' must be 'arg:NAME' or 'aux:NAME'"):
        packed.save_model(out, graph, {"fc_weight": params["arg:fc_weight"]}, {})
    with pytest.raises(PackedFormatError, match="not an MXNet symbol JSON"):
        packed.save_model(out, {"nodes": "x"}, params, {})
    with pytest.raises(TypeError, match="not JSON serializable"):
        packed.save_model(out, graph, params, {"bad": object()})
    with pytest.raises(TypeError, match="meta must be a dict"):
        packed.save_model(out, graph, params, [])
    assert os.listdir(tmp_path) == []


def test_load_model_errors_name_the_file(tmp_path):
    graph, params = small_graph()
    with pytest.raises(PackedFormatError, match="nothing: no such model directory"):
        packed.load_model(tmp_path / "nothing")
    out = tmp_path / "model"
    for name in (packed.SYMBOL_FILE, packed.META_FILE, packed.PARAMS_FILE):
        packed.save_model(out, graph, params, {}, force=True)
        os.remove(out / name)
        with pytest.raises(PackedFormatError, match=f"model/{name}: no such"):
            packed.load_model(out)
    packed.save_model(out, graph, params, {}, force=True)
    (out / packed.SYMBOL_FILE).write_text("{not json")
    with pytest.raises(PackedFormatError, match=f"{packed.SYMBOL_FILE}: not a valid JSON symbol file"):
        packed.load_model(out)
    (out / packed.SYMBOL_FILE).write_text(json.dumps({"nodes": [{"op": "null"}], "heads": []}))
    with pytest.raises(PackedFormatError, match="node 0 is not an MXNet node"):
        packed.load_model(out)
    packed.save_model(out, graph, params, {}, force=True)
    (out / packed.META_FILE).write_text("[1, 2]")
    with pytest.raises(PackedFormatError, match="metadata must be a JSON object"):
        packed.load_model(out)
    (out / packed.META_FILE).write_text(json.dumps({"packed": {"format_version": packed.FORMAT_VERSION + 1}}))
    with pytest.raises(PackedFormatError, match="newer than this bmx reads"):
        packed.load_model(out)


# ------------------------------------------------------------------ what --force may replace

def test_force_replaces_only_a_packed_model_or_an_empty_directory(tmp_path, monkeypatch):
    graph, params = small_graph()
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a packed model directory.*also holds notes.txt"):
        packed.save_model(out, graph, params, {}, force=True)
    assert os.listdir(out) == ["notes.txt"]
    # the three files of an exported (not packed) model: model.json without a "packed" entry
    os.remove(out / "notes.txt")
    for name in packed.MODEL_FILES:
        (out / name).write_text("{}")
    with pytest.raises(FileExistsError, match="has no 'packed' entry"):
        packed.save_model(out, graph, params, {}, force=True)
    assert {n: (out / n).read_text() for n in os.listdir(out)} == {n: "{}" for n in packed.MODEL_FILES}
    empty = tmp_path / "empty"
    empty.mkdir()
    packed.save_model(empty, graph, params, {"v": 1}, force=True)
    assert packed.load_model(empty).meta["v"] == 1


def test_force_never_replaces_the_current_directory_or_a_parent(tmp_path, monkeypatch):
    graph, params = small_graph()
    out = tmp_path / "model"
    packed.save_model(out, graph, params, {"v": 1})
    (out / "sub").mkdir()
    monkeypatch.chdir(out / "sub")
    with pytest.raises(FileExistsError, match="current directory or one of its parents"):
        packed.save_model(out, graph, params, {"v": 2}, force=True)
    os.rmdir(out / "sub")
    monkeypatch.chdir(out)  # a packed model, but the current directory
    with pytest.raises(FileExistsError, match="current directory or one of its parents"):
        packed.save_model(".", graph, params, {"v": 2}, force=True)
    assert packed.load_model(out).meta["v"] == 1


# ------------------------------------------------------------------ interrupted replaces

KILLED_SAVE = """
import os, signal, sys
import numpy as np
from bmx import packed
graph, out, when = __import__("json").loads(sys.argv[1]), sys.argv[2], sys.argv[3]
real_rename, real_rmtree = os.rename, packed.shutil.rmtree
calls = []
def rename(src, dst):
    calls.append(dst)
    if when == "between renames" and len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real_rename(src, dst)
def rmtree(path, *args, **kwargs):
    if when == "while deleting the old copy" and path.endswith(".old"):
        os.remove(os.path.join(path, packed.SYMBOL_FILE))
        os.kill(os.getpid(), signal.SIGKILL)
    real_rmtree(path, *args, **kwargs)
os.rename, packed.shutil.rmtree = rename, rmtree
params = {"arg:fc_weight": np.zeros((3, 4), np.float32), "arg:fc_bias": np.zeros(3, np.float32)}
packed.save_model(out, graph, params, {"version": 2}, force=True)
"""


def _killed_save(graph, out, when):
    result = subprocess.run([sys.executable, "-c", KILLED_SAVE, json.dumps(graph), str(out), when],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr


@pytest.mark.parametrize("then", ["load", "save"])
def test_a_kill_between_the_renames_is_undone_by_the_next_load_or_save(then, tmp_path):
    graph, params = small_graph()
    out = tmp_path / "model"
    packed.save_model(out, graph, params, {"version": 1})
    _killed_save(graph, out, "between renames")
    left = sorted(os.listdir(tmp_path))
    assert "model" not in left and sorted(n[-4:] for n in left) == [".old", ".tmp"]  # the state the issue reports
    with pytest.warns(UserWarning) as caught:
        if then == "load":
            assert packed.load_model(out).meta["version"] == 1
        else:
            packed.save_model(out, graph, params, {"version": 3}, force=True)
            assert packed.load_model(out).meta["version"] == 3
    said = " | ".join(str(w.message) for w in caught)
    assert "restored the previous model from" in said and "removed" in said and ".tmp" in said
    assert os.listdir(tmp_path) == ["model"]


def test_a_kill_while_deleting_the_old_copy_is_cleaned_up(tmp_path):
    graph, params = small_graph()
    out = tmp_path / "model"
    packed.save_model(out, graph, params, {"version": 1})
    _killed_save(graph, out, "while deleting the old copy")
    assert len(os.listdir(tmp_path)) == 2
    with pytest.warns(UserWarning, match=r"removed .*\.old, left behind"):
        assert packed.load_model(out).meta["version"] == 2
    assert os.listdir(tmp_path) == ["model"]


def test_recovery_touches_only_its_own_leftovers(tmp_path):
    graph, params = small_graph()
    out = tmp_path / "model"
    foreign = tmp_path / ".model.abcdefgh.old"  # the right name, but not holding a packed model
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    other = tmp_path / ".model.tmp"
    other.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        packed.save_model(out, graph, params, {})
        packed.load_model(out)
    assert sorted(os.listdir(tmp_path)) == [".model.abcdefgh.old", ".model.tmp", "model"]
    assert (foreign / "thesis.tex").read_text() == "mine"


def test_an_abandoned_scratch_directory_is_removed_but_not_one_in_use(tmp_path):
    out = tmp_path / "model"
    graph, params = small_graph()
    with packed.scratch_directory(out) as scratch:
        (tmp_path / "x").mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            packed.save_model(out, graph, params, {})  # the scratch directory is in use: kept
        assert os.path.isdir(scratch)
        os.rename(scratch, scratch + "-copy")  # a copy without its owner's lock: abandoned
        os.rename(scratch + "-copy", scratch[:-13] + "zzzzzzzz.work")
        os.mkdir(scratch)
    with pytest.warns(UserWarning, match="scratch directory of an interrupted conversion"):
        packed.load_model(out)
    assert sorted(os.listdir(tmp_path)) == ["model", "x"]


# ------------------------------------------------------------------ checksum and finite weights

def test_the_params_checksum_is_checked_on_load(tmp_path):
    graph, params = small_graph()
    out = tmp_path / "model"
    packed.save_model(out, graph, params, {})
    path = out / packed.PARAMS_FILE
    data = bytearray(path.read_bytes())
    data[24 + 40 + 5] ^= 1  # one bit of the first weight (after the list header and its record header)
    path.write_bytes(bytes(data))
    packed.read_params(path)
    with pytest.raises(PackedFormatError, match=rf"{packed.PARAMS_FILE}: the file's sha256 is not the "
                                                r"packed.params_sha256 recorded in model.json"):
        packed.load_model(out)


def _nan_params_with_a_matching_checksum(out, params):
    bad = dict(params)
    bad["arg:fc_bias"] = np.array([0.5, np.nan, 1.0], np.float32)
    packed.write_params(out / packed.PARAMS_FILE, bad)
    meta = json.loads((out / packed.META_FILE).read_text())
    meta["packed"]["params_sha256"] = hashlib.sha256((out / packed.PARAMS_FILE).read_bytes()).hexdigest()
    (out / packed.META_FILE).write_text(json.dumps(meta))


def test_non_finite_params_are_refused_on_save_and_load(tmp_path):
    graph, params = small_graph()
    out = tmp_path / "model"
    weight = params["arg:fc_weight"].copy()
    weight[1, 2] = np.inf
    with pytest.raises(PackedFormatError, match="'arg:fc_weight' holds 1 non-finite value"):
        packed.save_model(out, graph, dict(params, **{"arg:fc_weight": weight}), {})
    assert not out.exists()
    packed.save_model(out, graph, params, {})
    _nan_params_with_a_matching_checksum(out, params)
    with pytest.raises(PackedFormatError, match=rf"{packed.PARAMS_FILE}: array 'arg:fc_bias' holds 1 non-finite"):
        packed.load_model(out)


# ------------------------------------------------------------------ preprocessing in model.json

GOOD_PREP = {"image_size": 32, "mean": [125.3, 123.0, 113.9], "std": [63.0, 62.1, 66.7], "resize": 0}


@pytest.mark.parametrize("change, field, message", [
    ({"image_size": 0}, "image_size", "must be a positive integer, got 0"),
    ({"image_size": "32"}, "image_size", "must be a positive integer, got '32'"),
    ({"image_size": 64}, "image_size", "is 64, but config.image_size says the model takes 32"),
    ({"resize": -5}, "resize", "must be 0 (no resize) or a positive integer, got -5"),
    ({"resize": 16}, "resize", "is 16, smaller than image_size 32"),
    ({"std": [63.0, 0, 66.7]}, "std", "must be positive"),
    ({"std": [1, 2]}, "std", "must be a list of 3 finite numbers"),
    ({"mean": [1, None, 3]}, "mean", "must be a list of 3 finite numbers"),
])
def test_preprocessing_is_validated_on_load(change, field, message, tmp_path):
    graph, params = small_graph()
    out = tmp_path / "model"
    meta = {"config": {"image_size": 32}, "preprocessing": GOOD_PREP}
    packed.save_model(out, graph, params, meta)
    packed.load_model(out)
    stored = json.loads((out / packed.META_FILE).read_text())
    stored["preprocessing"] = dict(GOOD_PREP, **change)
    (out / packed.META_FILE).write_text(json.dumps(stored))
    with pytest.raises(PackedFormatError) as err:
        packed.load_model(out)
    assert str(err.value) == f"{out / packed.META_FILE}: preprocessing.{field} {message}" or \
        str(err.value).startswith(f"{out / packed.META_FILE}: preprocessing.{field} {message}")

"""bmx.run_snapshot and tools/carry_run.py: bfloat16 rounding against a float64 reference, a carried
run resumes, clear errors."""
import importlib.util
import json
import os

import numpy as np
import pytest

from bmx import data, packed, run_snapshot
from test_data import write_cifar
from test_training import _crash_at_call, _params, _tiny_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("carry_run", os.path.join(ROOT, "tools", "carry_run.py"))
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def ref_bfloat16(x):
    """Nearest value with an 8-bit significand (ties to the even one), by comparing both neighbours."""
    out = np.empty(x.shape, np.float64)
    for i, v in enumerate(x.astype(np.float64).ravel()):
        if v == 0:
            out.flat[i] = v
            continue
        exponent = np.floor(np.log2(abs(v)))
        step = 2.0 ** (max(exponent, -126) - 7)
        low = np.floor(v / step) * step
        high = low + step
        if v - low < high - v or (v - low == high - v and round(low / step) % 2 == 0):
            out.flat[i] = low
        else:
            out.flat[i] = high
    return out


def test_bfloat16_rounding_matches_reference():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(2000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 2000),
                        np.float32([0.0, -0.0, 1.0, -1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20,
                                    3.0e38, 1e-39, -2.5e-40])]).astype(np.float32)
    got = run_snapshot.from_bfloat16(run_snapshot.to_bfloat16(x))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.astype(np.float64), ref_bfloat16(x))
    # ties go to the even significand; just above a tie rounds up
    assert got[2004] == 1.0 and got[2005] == np.float32(1 + 2 ** -6) and got[2006] == np.float32(1 + 2 ** -7)


def _stopped_run(tmp_path, monkeypatch, directory, out):
    """A tiny 3-epoch run interrupted in its third epoch (checkpoint after epoch 2)."""
    batches = len(data.cifar10(directory, 8, val_size=8).train)
    undo = _crash_at_call(monkeypatch, 2 * batches + 1)
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(directory, out).fit()
    undo()


def test_carried_run_resumes_from_rounded_checkpoint(tmp_path, monkeypatch):
    directory = write_cifar(str(tmp_path / "data"), count=40)
    out, carried, snapshot = str(tmp_path / "run"), str(tmp_path / "carried"), str(tmp_path / "run.npz")
    _stopped_run(tmp_path, monkeypatch, directory, out)
    assert tool.main(["save", out, snapshot]) is None
    assert tool.main(["restore", snapshot, carried]) is None

    with open(os.path.join(out, "state.json")) as f:
        state = json.load(f)
    for name in (state["params"], state["states"]):
        before, after = packed.read_params(os.path.join(out, name)), packed.read_params(os.path.join(carried, name))
        assert list(before) == list(after)
        for key in before:
            assert after[key].dtype == before[key].dtype and after[key].shape == before[key].shape
            if before[key].dtype == np.float32:
                np.testing.assert_array_equal(after[key].astype(np.float64), ref_bfloat16(before[key]))
            else:
                np.testing.assert_array_equal(after[key], before[key])
    for name in ("state.json", "metrics.csv", "train.log"):
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(carried, name), "rb") as b:
            assert a.read() == b.read()

    resumed = _tiny_run(directory, carried, resume=True)
    assert resumed.epoch == 2
    original = _tiny_run(directory, out, resume=True)
    assert resumed.trainer.optimizer.num_update == original.trainer.optimizer.num_update > 0
    for a, b in zip(_params(original), _params(resumed)):
        np.testing.assert_allclose(b, a, rtol=2 ** -8, atol=1e-38)
    resumed.fit()
    assert resumed.epoch == 3 and len(resumed.history) == 3


def test_a_mid_epoch_checkpoint_is_carried(tmp_path, monkeypatch, capsys):
    directory = write_cifar(str(tmp_path / "data"), count=40)
    out, carried, snapshot = str(tmp_path / "run"), str(tmp_path / "carried"), str(tmp_path / "run.npz")
    batches = len(data.cifar10(directory, 8, val_size=8).train)
    undo = _crash_at_call(monkeypatch, batches + 3)  # epoch 2, step 3
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(directory, out, checkpoint_minutes=1e-9).fit()
    undo()
    tool.main(["save", out, snapshot])
    assert f"{out} after epoch 1 and step 2 of epoch 2" in capsys.readouterr().out
    tool.main(["restore", snapshot, carried])
    assert "restored after epoch 1 and step 2 of epoch 2" in capsys.readouterr().out
    resumed = _tiny_run(directory, carried, resume=True)
    assert (resumed.epoch, resumed.checkpoint_step) == (1, 2)
    resumed.fit()
    assert resumed.epoch == 3


def test_errors_name_the_file(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit, match="state.json: not found"):
        tool.main(["save", str(tmp_path), str(tmp_path / "s.npz")])
    (tmp_path / "state.json").write_text(json.dumps({"epoch": 0, "history": []}))
    with pytest.raises(SystemExit, match="no checkpoint to carry yet"):
        tool.main(["save", str(tmp_path), str(tmp_path / "s.npz")])
    assert not os.path.exists(tmp_path / "s.npz")

    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(SystemExit, match="other.npz: has no snapshot description"):
        tool.main(["restore", str(tmp_path / "other.npz"), str(tmp_path / "new")])
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(SystemExit, match="text.npz: not a run snapshot"):
        tool.main(["restore", str(tmp_path / "text.npz"), str(tmp_path / "new")])
    np.savez(tmp_path / "pickled.npz", meta=np.array([{"format": run_snapshot.FORMAT}], dtype=object))
    with pytest.raises(SystemExit, match="pickled.npz: damaged or holds pickled objects"):
        tool.main(["restore", str(tmp_path / "pickled.npz"), str(tmp_path / "new")])
    meta = np.frombuffer(json.dumps({"format": run_snapshot.FORMAT, "version": 99}).encode(), np.uint8)
    np.savez(tmp_path / "future.npz", meta=meta)
    with pytest.raises(SystemExit, match="snapshot version 99"):
        tool.main(["restore", str(tmp_path / "future.npz"), str(tmp_path / "new")])


def test_restore_never_replaces_files(tmp_path, monkeypatch):
    directory = write_cifar(str(tmp_path / "data"), count=40)
    out, snapshot = str(tmp_path / "run"), str(tmp_path / "run.npz")
    _stopped_run(tmp_path, monkeypatch, directory, out)
    run_snapshot.save(out, snapshot)
    with open(os.path.join(out, "state.json"), "rb") as f:
        kept = f.read()
    with pytest.raises(SystemExit, match="run: not empty"):
        tool.main(["restore", snapshot, out])
    with open(os.path.join(out, "state.json"), "rb") as f:
        assert f.read() == kept
    # a damaged array leaves the new directory empty
    with np.load(snapshot) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["file0_0"] = arrays["file0_0"][:1]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(SystemExit, match="bad.npz: array file0_0 has shape"):
        tool.main(["restore", str(tmp_path / "bad.npz"), str(tmp_path / "new")])
    assert not os.path.exists(tmp_path / "new") or os.listdir(tmp_path / "new") == []

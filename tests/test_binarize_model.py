"""tools/binarize_model.py: end to end in a subprocess, error paths through its main()."""
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

import bmx
from bmx import packed, runtime
from bmx import nn as bnn
from bmx import quantizers as Q
from conftest import call_main as call_script
from conftest import image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "binarize_model.py")
# A small BinaryDenseNet (two stages) so that every run takes a fraction of a second.
TINY = dict(stem="cifar", classes=10, layers=(1, 1), reduction=(2,), growth_rate=32, init_features=32)


def load_tool():
    spec = importlib.util.spec_from_file_location("binarize_model", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = load_tool()


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def call_main(capsys, *args):
    """(exit code, stdout, stderr) of the tool's main() run in this process."""
    return call_script(tool.main, capsys, *args)


def digest(directory):
    """sha256 of every file under directory (path -> hash), to prove inputs stay untouched."""
    result = {}
    for base, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(base, name)
            result[os.path.relpath(path, directory)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return result


def tiny_net(seed=0):
    net = bmx.models.get_model("binary_densenet28", **TINY)
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier(magnitude=2))
    rng = np.random.default_rng(seed)
    for name, p in net.collect_params().items():
        if name.endswith(("running_mean", "beta")):
            p.set_data(mx.nd.array(rng.uniform(-0.5, 0.5, p.shape)))
        elif name.endswith("running_var"):
            p.set_data(mx.nd.array(rng.uniform(0.5, 2.0, p.shape)))
    return net


@pytest.fixture
def run_dir(tmp_path):
    """A train_imagenet.py-like output directory: model-symbol.json, model-0000.params, model.json."""
    directory = tmp_path / "run"
    directory.mkdir()
    net = tiny_net()
    bmx.export(net, str(directory / "model"), input_shape=(1, 3, 32, 32))
    meta = {"config": {"model": "binary_densenet28", "model_kwargs": {k: v for k, v in TINY.items() if k != "classes"},
                       "classes": 10, "image_size": 32},
            "classes": 10, "preprocessing": {"image_size": 32, "mean": [0, 0, 0], "std": [1, 1, 1], "resize": 0}}
    (directory / "model.json").write_text(json.dumps(meta))
    return directory, net


def test_prefix_directory_with_verify(run_dir, tmp_path):
    directory, net = run_dir
    out = tmp_path / "packed"
    result = run_tool(directory, "--output", out, "--verify")
    assert result.returncode == 0, result.stderr
    assert "size before (parameter file)" in result.stdout and "theoretical size" in result.stdout
    assert "bmx.summary of zoo model binary_densenet28" in result.stdout
    assert "layers exact" in result.stdout and f"wrote {out}" in result.stdout
    model = packed.load_model(str(out))
    assert model.meta["classes"] == 10 and model.meta["preprocessing"]["image_size"] == 32
    assert model.meta["packed"]["verified"]["layers_checked_exactly"] == 2
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    expected = net(mx.nd.array(x)).asnumpy()
    got = np.asarray(runtime.load(str(out))(x))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


@pytest.mark.slow
def test_gluon_parameter_file(tmp_path):
    net = tiny_net(seed=1)
    params_file = tmp_path / "net.params"
    net.save_parameters(str(params_file))
    before = digest(tmp_path)
    out = tmp_path / "packed"
    result = run_tool("--model", "binary_densenet28", "--params", params_file, "--stem", "cifar", "--classes", 10,
                      "--input-size", 32, "--output", out, "--verify")
    # TINY's knobs are not options of the tool: the parameter file does not fit the full model
    assert result.returncode == 2
    assert result.stderr.startswith("binarize_model.py: error: ") and str(params_file) in result.stderr
    assert digest(tmp_path) == before and not out.exists()

    full = bmx.models.get_model("bdn_poster_8x256", stem="cifar", classes=10)
    full.initialize(mx.init.Xavier())
    full.save_parameters(str(params_file))
    result = run_tool("--model", "bdn_poster_8x256", "--params", params_file, "--stem", "cifar", "--classes", 10,
                      "--output", out, "--verify")
    assert result.returncode == 0, result.stderr
    meta = packed.load_model(str(out)).meta
    assert (meta["model"], meta["stem"], meta["classes"], meta["image_size"]) == ("bdn_poster_8x256", "cifar", 10, 32)
    assert meta["packed"]["source_files"] == [str(params_file)]
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    expected = full(mx.nd.array(x)).asnumpy()
    np.testing.assert_allclose(np.asarray(runtime.load(str(out))(x)), expected, rtol=1e-3,
                               atol=1e-3 * np.abs(expected).max())


def test_force(run_dir, tmp_path, capsys):
    directory, _ = run_dir
    out = tmp_path / "packed"
    code, _, _ = call_main(capsys, directory, "--output", out)
    assert code == 0
    first = digest(out)
    code, _, err = call_main(capsys, directory, "--output", out)
    assert code == 2 and err == f"binarize_model.py: error: output {out} exists (pass --force to replace it)\n"
    assert digest(out) == first
    code, stdout, _ = call_main(capsys, directory, "--output", out, "--force", "--verify")
    assert code == 0 and "packed / theoretical" in stdout
    assert sorted(os.listdir(out)) == ["model-0000.params", "model-symbol.json", "model.json"]
    assert "verified" in packed.load_model(str(out)).meta["packed"] and digest(out) != first
    assert sorted(os.listdir(tmp_path)) == ["packed", "run"]


def test_force_replaces_nothing_but_a_packed_model(run_dir, tmp_path, capsys, monkeypatch):
    directory, _ = run_dir
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "old.txt").write_text("old")
    code, _, err = call_main(capsys, directory, "--output", mine, "--force")
    assert code == 2 and f"{mine} is not a packed model directory" in err and "also holds old.txt" in err
    assert os.listdir(mine) == ["old.txt"]
    # the case: --output . --force from a directory of the user's files
    monkeypatch.chdir(mine)
    code, _, err = call_main(capsys, directory, "--output", ".", "--force")
    assert code == 2 and "is the current directory or one of its parents; it is never replaced" in err
    code, _, err = call_main(capsys, directory, "--output", "..", "--force")
    assert code == 2 and "is the current directory or one of its parents" in err
    assert os.listdir(mine) == ["old.txt"] and sorted(os.listdir(tmp_path)) == ["mine", "run"]


def test_missing_parents_of_the_output_are_created(run_dir, tmp_path, capsys):
    directory, _ = run_dir
    code, _, err = call_main(capsys, directory / "nothing", "--output", tmp_path / "a" / "b" / "packed")
    assert code == 2 and "nothing-symbol.json: no such file" in err
    assert sorted(os.listdir(tmp_path)) == ["run"]  # the parents it made for a failed run are gone
    code, stdout, _ = call_main(capsys, directory, "--output", tmp_path / "a" / "b" / "packed")
    assert code == 0 and f"wrote {tmp_path / 'a' / 'b' / 'packed'}" in stdout
    assert os.listdir(tmp_path / "a" / "b") == ["packed"]


# Runs the tool with the conversion held for two minutes once its scratch directory exists, so
# that a signal always arrives mid-conversion, however fast the machine converts the tiny model.
HELD = ("import runpy, sys, time\n"
        "from bmx import convert\n"
        "binarize = convert.binarize\n"
        "def held(*args, **kwargs):\n"
        "    time.sleep(120)\n"
        "    return binarize(*args, **kwargs)\n"
        "convert.binarize = held\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def _start_and_wait_for_scratch(run_dir, tmp_path):
    """Starts the tool, held inside the conversion, and waits for its scratch directory."""
    out = tmp_path / "out" / "packed"
    proc = subprocess.Popen([sys.executable, "-c", HELD, TOOL, str(run_dir), "--output", str(out), "--verify"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.isdir(out.parent) and any(n.endswith(".work") for n in os.listdir(out.parent)):
            return proc, out
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"no scratch directory appeared: {proc.communicate()}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_conversion_leaves_no_temporary_files(sig, run_dir, tmp_path):
    directory, _ = run_dir
    proc, out = _start_and_wait_for_scratch(directory, tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err
    assert not os.path.exists(out.parent)  # the scratch directory and the parent the run created


@pytest.mark.slow
def test_the_run_after_a_kill_cleans_up_and_says_so(run_dir, tmp_path, capsys):
    directory, _ = run_dir
    proc, out = _start_and_wait_for_scratch(directory, tmp_path)
    proc.kill()
    proc.communicate(timeout=300)
    assert any(n.endswith(".work") for n in os.listdir(out.parent))
    code, _, err = call_main(capsys, directory, "--output", out)
    assert code == 0 and "binarize_model.py: note: " in err and "scratch directory of an interrupted conversion" in err
    assert os.listdir(out.parent) == ["packed"]


def test_epoch_selection(run_dir, tmp_path, capsys):
    directory, net = run_dir
    bmx.export(net, str(directory / "model"), epoch=7, input_shape=(1, 3, 32, 32))
    code, _, _ = call_main(capsys, directory / "model", "--output", tmp_path / "newest")
    assert code == 0
    sources = packed.load_model(str(tmp_path / "newest")).meta["packed"]["source_files"]
    assert sources[1].endswith("model-0007.params")
    code, _, _ = call_main(capsys, directory / "model", "--epoch", 0, "--output", tmp_path / "first")
    assert code == 0
    assert packed.load_model(str(tmp_path / "first")).meta["packed"]["source_files"][1].endswith("model-0000.params")
    code, _, err = call_main(capsys, directory / "model", "--epoch", 3, "--output", tmp_path / "none")
    assert code == 2 and "model-0003.params: no such parameter file (--epoch 3)" in err


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])


def _composite(directory):
    with Q.use_backend("composite"):
        net = bnn.BinaryConvolution(8, 3, padding=1, in_channels=3)
        net.initialize()
        bmx.export(net, str(directory / "model"), input_shape=(1, 3, 8, 8))


@pytest.mark.parametrize("case, args, message", [
    ("missing prefix", ["{d}/nothing", "--output", "{o}"], "{d}/nothing-symbol.json: no such file"),
    ("missing params", ["{d}", "--output", "{o}"], "{d}/model-NNNN.params: no parameter file beside"),
    ("truncated params", ["{d}", "--output", "{o}"], "{d}/model-0000.params: truncated"),
    ("truncated symbol", ["{d}", "--output", "{o}"], "{d}/model-symbol.json: not valid JSON"),
    ("bad model.json", ["{d}", "--output", "{o}"], "{d}/model.json: not valid JSON"),
    ("composite layers", ["{d}", "--output", "{o}"], "(op BlockGrad) shows the graph was exported with the composite"),
    ("output is the input", ["{d}", "--output", "{d}", "--force"], "{d} is not a packed model directory"),
    ("unknown model", ["--model", "densenet_9000", "--params", "{d}/model-0000.params", "--output", "{o}"],
     "--model: unknown model 'densenet_9000'"),
    ("missing gluon params", ["--model", "binary_densenet28", "--params", "{d}/none.params", "--output", "{o}"],
     "{d}/none.params: no such parameter file"),
])
def test_errors_leave_inputs_untouched(case, args, message, run_dir, tmp_path, capsys):
    directory, _ = run_dir
    if case == "missing params":
        os.remove(directory / "model-0000.params")
    elif case == "truncated params":
        _truncate(directory / "model-0000.params")
    elif case == "truncated symbol":
        _truncate(directory / "model-symbol.json")
    elif case == "bad model.json":
        (directory / "model.json").write_text("{")
    elif case == "composite layers":
        _composite(directory)
    out = tmp_path / "packed"
    before = digest(tmp_path)
    code, stdout, err = call_main(capsys, *[a.format(d=directory, o=out) for a in args])
    assert code == 2 and stdout == ""
    assert err.startswith("binarize_model.py: error: ") and message.format(d=directory) in err, err
    assert err.count("\n") == 1
    assert digest(tmp_path) == before and not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--output", "o"], "give either PREFIX or --model NAME --params FILE"),
    (["p", "--model", "m", "--params", "f", "--output", "o"], "give either PREFIX or --model NAME --params FILE"),
    (["--model", "binary_densenet28", "--output", "o"], "--model needs --params FILE"),
    (["--model", "m", "--params", "f", "--epoch", "1", "--output", "o"], "--epoch applies to PREFIX only"),
    (["p", "--stem", "cifar", "--output", "o"], "--stem apply to --model only"),
    (["p", "--epoch", "-1", "--output", "o"], "--epoch must be >= 0, got -1"),
    (["--model", "m", "--params", "f", "--classes", "0", "--output", "o"], "--classes must be positive, got 0"),
    (["p", "--stem", "round", "--output", "o"], "argument --stem: invalid choice: 'round'"),
    (["p"], "the following arguments are required: --output"),
    (["p", "--int8", "--output", "o"], "--int8 needs --calibrate DATA"),
    (["p", "--calibrate", "d", "--output", "o"], "--calibrate and --calibration-images apply to --int8 only"),
    (["p", "--calibration-images", "8", "--output", "o"], "--calibrate and --calibration-images apply to --int8 only"),
    (["p", "--int8", "--calibrate", "d", "--calibration-images", "0", "--output", "o"],
     "--calibration-images must be positive, got 0"),
    (["--model", "m", "--params", "f", "--int8", "--calibrate", "d", "--output", "o"], "--int8 applies to PREFIX only"),
])
def test_bad_arguments(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = call_main(capsys, *args)
    assert code == 2 and "binarize_model.py: error: " in err and message in err, err
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_subprocess_error_exit_code(tmp_path):
    result = run_tool(tmp_path / "missing", "--output", tmp_path / "out")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"binarize_model.py: error: {tmp_path}/missing-symbol.json: no such file " \
                            "(expected PREFIX-symbol.json and PREFIX-NNNN.params from bmx.export)\n"


def test_int8_from_an_exported_and_from_a_packed_model(run_dir, tmp_path, capsys):
    directory, net = run_dir
    data = image_folder(tmp_path / "images")
    code, stdout, err = call_main(capsys, directory, "--output", tmp_path / "int8", "--int8", "--calibrate", data,
                                  "--calibration-images", "4", "--verify")
    assert code == 0, err
    assert "layers exact" in stdout and "int8 layers: 3, calibrated on 4 images" in stdout
    assert "int8 vs float on 4 other images: top-1 agreement" in stdout
    meta = packed.load_model(str(tmp_path / "int8")).meta
    assert meta["packed"]["format_version"] == 2 and meta["packed"]["int8"]["verified"]["images"] == 4
    assert meta["packed"]["int8"]["calibration"]["data"] == str(data)

    code, _, err = call_main(capsys, directory, "--output", tmp_path / "float")
    assert code == 0, err
    code, _, err = call_main(capsys, tmp_path / "float", "--output", tmp_path / "again")
    assert code == 2 and "is already a packed model; pass --int8 --calibrate DATA" in err
    code, stdout, err = call_main(capsys, tmp_path / "float", "--output", tmp_path / "int8b", "--int8",
                                  "--calibrate", data, "--calibration-images", "4")
    assert code == 0, err
    assert "int8 layers: 3" in stdout and "packed " not in stdout  # no binary layer is packed again
    written = [(tmp_path / name / packed.PARAMS_FILE).read_bytes() for name in ("int8", "int8b")]
    assert written[0] == written[1], "the same images give the same int8 model, from either source"
    code, _, err = call_main(capsys, tmp_path / "float", "--output", tmp_path / "int8c", "--int8",
                             "--calibrate", data, "--calibration-images", "9")
    assert code == 2 and "--calibration-images 9 is more than the 8 images of" in err

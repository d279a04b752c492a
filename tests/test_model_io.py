"""bmx.export / bmx.imports and stock SymbolBlock.imports of bmx models."""
import json
import os
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import bmx
from bmx import nn as bnn
from bmx import quantizers as Q
from conftest import activation_input

INPUT_SHAPE = (2, 3, 8, 8)
BMX_OPS = {"bmx_det_sign", "bmx_approx_sign", "bmx_quantize_act", "bmx_weight_sign", "bmx_quantize_weight"}


def make_net(deferred=False):
    """BinaryConvolution (pad -1 and 0), QActivation (det_sign, approx_sign, 2-bit), QConv2D with 2-bit
    weights padding with -1, QDense, BatchNorm. With deferred=True no layer is told its input size."""
    def n(value):
        return 0 if deferred else value

    net = nn.HybridSequential(prefix="net_")
    with net.name_scope():
        net.add(bnn.BinaryConvolution(8, 3, padding=1, in_channels=n(3), pad_value=-1, clip_threshold=1.3),
                nn.BatchNorm(in_channels=n(8)),
                bnn.QActivation(bits=2),
                bnn.BinaryConvolution(6, 3, padding=1, strides=2, in_channels=n(8), pad_value=0),
                nn.BatchNorm(in_channels=n(6)),
                bnn.QActivation(method="approx_sign"),
                bnn.QConv2D(5, 3, padding=1, in_channels=n(6), bits=2),
                bnn.QActivation(method="det_sign", clip_threshold=0.5),
                bnn.QDense(4, in_units=n(80)))
    return net


def initialize(net, seed=3):
    mx.random.seed(seed)
    net.initialize(mx.init.Uniform(1.0))
    rng = np.random.default_rng(seed)
    for name, p in net.collect_params().items():
        if p._data is None:  # deferred: leave to shape inference
            continue
        if name.endswith(("gamma", "running_var")):
            p.set_data(mx.nd.array(rng.uniform(0.5, 2.0, p.shape)))
        elif name.endswith(("beta", "running_mean")):
            p.set_data(mx.nd.array(rng.uniform(-0.5, 0.5, p.shape)))


def net_input(seed=5):
    return activation_input(np.random.default_rng(seed), INPUT_SHAPE, 1.3)


def graph_of(symbol_file):
    with open(symbol_file) as f:
        return json.load(f)


# ------------------------------------------------------------------ round trip

def test_imperative_hybridized_and_exported_outputs_are_identical(tmp_path):
    """Exact equality: the binary ops are exact, and the float ops (Convolution, BatchNorm,
    FullyConnected) run the same CPU kernels on the same values in all three paths."""
    net = make_net()
    initialize(net)
    net.hybridize()
    # exported right after initialize: no forward pass has run, the cached graph does not exist
    symbol_file, params_file = bmx.export(net, str(tmp_path / "model"))
    assert os.path.basename(symbol_file) == "model-symbol.json"
    assert os.path.basename(params_file) == "model-0000.params"

    x = mx.nd.array(net_input())
    y_hybrid = net(x).asnumpy()
    imperative = make_net()
    imperative.initialize()
    trained = net.collect_params()
    for name, p in imperative.collect_params().items():
        p.set_data(trained[name].data())
    y_imperative = imperative(x).asnumpy()
    y_bmx = bmx.imports(symbol_file, params_file)(x).asnumpy()
    y_stock = mx.gluon.SymbolBlock.imports(symbol_file, ["data"], params_file)(x).asnumpy()

    assert y_hybrid.shape == (2, 4) and np.unique(y_hybrid).size > 2  # not a constant output
    np.testing.assert_array_equal(y_imperative, y_hybrid)
    np.testing.assert_array_equal(y_bmx, y_hybrid)
    np.testing.assert_array_equal(y_stock, y_hybrid)


def test_export_writes_every_parameter(tmp_path):
    net = make_net()
    initialize(net)
    symbol_file, params_file = bmx.export(net, str(tmp_path / "m"), epoch=7)
    assert params_file.endswith("m-0007.params")
    saved = mx.nd.load(params_file)
    expected = {("aux:" if "running" in name else "arg:") + name: p.data().asnumpy()
                for name, p in net.collect_params().items()}
    assert set(saved) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(saved[key].asnumpy(), value, err_msg=key)
    assert sorted(os.listdir(tmp_path)) == ["m-0007.params", "m-symbol.json"]  # no temp files left


def test_exported_json_names_binary_layers_and_ops(tmp_path):
    net = make_net()
    initialize(net)
    symbol_file, _ = bmx.export(net, str(tmp_path / "m"))
    nodes = graph_of(symbol_file)["nodes"]
    ops = {node["op"] for node in nodes}
    assert BMX_OPS <= ops, ops
    variables = {node["name"]: node.get("attrs", {}) for node in nodes if node["op"] == "null"}
    for weight in ("net_binaryconvolution0_qconv2d0_weight", "net_binaryconvolution1_qconv2d0_weight",
                   "net_qconv2d0_weight", "net_qdense0_weight"):
        assert weight in variables
    # binary weights are recognizable as not decayed; the 2-bit one is decayed
    assert float(variables["net_binaryconvolution0_qconv2d0_weight"]["__wd_mult__"]) == 0
    assert float(variables["net_qconv2d0_weight"]["__wd_mult__"]) == 1
    op_names = {}
    for node in nodes:
        op_names.setdefault(node["op"], []).append(node["name"])
    # each bmx op node is named after the layer that made it
    assert any(name.startswith("net_binaryconvolution0_qactivation0") for name in op_names["bmx_det_sign"])
    assert any(name.startswith("net_qactivation2") for name in op_names["bmx_det_sign"])
    assert [name.split("_bmx")[0] for name in op_names["bmx_approx_sign"]] == ["net_qactivation1"]
    assert [name.split("_bmx")[0] for name in op_names["bmx_quantize_weight"]] == ["net_qconv2d0"]
    assert [name.split("_bmx")[0] for name in op_names["bmx_quantize_act"]] == ["net_qactivation0"]
    assert sorted(name.split("_bmx")[0] for name in op_names["bmx_weight_sign"]) == [
        "net_binaryconvolution0_qconv2d0", "net_binaryconvolution1_qconv2d0", "net_qdense0"]


def test_export_with_deferred_shapes(tmp_path):
    net = make_net(deferred=True)
    initialize(net)
    net.hybridize()
    with pytest.raises(ValueError, match="input_shape"):
        bmx.export(net, str(tmp_path / "m"))
    symbol_file, params_file = bmx.export(net, str(tmp_path / "m"), input_shape=INPUT_SHAPE)
    assert net[0].qconv.weight.shape == (8, 3, 3, 3) and net[8].weight.shape == (4, 80)
    # the graph written is the native one, with complete variable shapes
    nodes = graph_of(symbol_file)["nodes"]
    assert BMX_OPS <= {node["op"] for node in nodes}
    shapes = {node["name"]: node["attrs"]["__shape__"] for node in nodes if "__shape__" in node.get("attrs", {})}
    assert shapes["net_qdense0_weight"] == "(4, 80)"
    x = mx.nd.array(net_input())
    np.testing.assert_array_equal(bmx.imports(symbol_file, params_file)(x).asnumpy(), net(x).asnumpy())


def test_export_after_a_deferred_forward(tmp_path):
    net = make_net(deferred=True)
    initialize(net)
    x = mx.nd.array(net_input())
    y = net(x).asnumpy()  # infers the shapes imperatively
    symbol_file, params_file = bmx.export(net, str(tmp_path / "m"))
    np.testing.assert_array_equal(bmx.imports(symbol_file, params_file)(x).asnumpy(), y)
    # the JSON carries the inferred shapes, not the (8, 0, 3, 3) the variables were created with,
    # so the saved graph's shapes can be inferred from the input alone
    arg_shapes, out_shapes, _ = mx.sym.load(symbol_file).infer_shape(data=INPUT_SHAPE)
    assert out_shapes == [(2, 4)] and (8, 3, 3, 3) in arg_shapes
    assert BMX_OPS <= {node["op"] for node in graph_of(symbol_file)["nodes"]}


def test_export_uninitialized_net_says_so(tmp_path):
    with pytest.raises(ValueError, match="net_binaryconvolution0_qconv2d0_weight is not initialized"):
        bmx.export(make_net(), str(tmp_path / "m"))
    assert os.listdir(tmp_path) == []


def test_composite_export_runs_without_bmx_ops(tmp_path):
    """A graph built with the composite backend (what a GPU would get) uses stock ops only."""
    net = make_net()
    initialize(net)
    with Q.use_backend("composite"):
        symbol_file, params_file = bmx.export(net, str(tmp_path / "m"))
    ops = {node["op"] for node in graph_of(symbol_file)["nodes"]}
    assert not any(op.startswith("bmx_") for op in ops)
    x = mx.nd.array(net_input())
    np.testing.assert_array_equal(bmx.imports(symbol_file, params_file)(x).asnumpy(), net(x).asnumpy())


# ------------------------------------------------------------------ loading errors

@pytest.fixture
def exported(tmp_path):
    net = bnn.BinaryConvolution(4, 3, in_channels=3, prefix="tiny_")
    net.initialize()
    return bmx.export(net, str(tmp_path / "tiny"))


def test_imports_unknown_bmx_op_names_op_and_file(exported, tmp_path):
    symbol_file, params_file = exported
    graph = graph_of(symbol_file)
    for node in graph["nodes"]:
        if node["op"] == "bmx_det_sign":
            node["op"] = "bmx_det_sign_v2"
    bad = tmp_path / "future-symbol.json"
    bad.write_text(json.dumps(graph))
    with pytest.raises(bmx.ModelFileError) as info:
        bmx.imports(str(bad), params_file)
    assert "bmx_det_sign_v2" in str(info.value) and str(bad) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_imports_file_errors_name_the_file(exported, tmp_path):
    symbol_file, params_file = exported
    missing = str(tmp_path / "nope-symbol.json")
    with pytest.raises(bmx.ModelFileError, match="nope-symbol.json: no such symbol file"):
        bmx.imports(missing)
    garbage = tmp_path / "garbage-symbol.json"
    garbage.write_text("{not json")
    with pytest.raises(bmx.ModelFileError, match="garbage-symbol.json: not valid JSON"):
        bmx.imports(str(garbage))
    no_nodes = tmp_path / "empty-symbol.json"
    no_nodes.write_text("{}")
    with pytest.raises(bmx.ModelFileError, match="empty-symbol.json"):
        bmx.imports(str(no_nodes))
    with pytest.raises(bmx.ModelFileError, match="nope.params: no such parameter file"):
        bmx.imports(symbol_file, str(tmp_path / "nope.params"))


def test_imports_accepts_a_single_input_name(exported):
    symbol_file, params_file = exported
    block = bmx.imports(symbol_file, params_file, input_names="data")
    assert block(mx.nd.ones((1, 3, 5, 5))).shape == (1, 4, 3, 3)


def test_loading_without_bmx_names_the_missing_operator(exported, tmp_path):
    """A process that never imported bmx cannot run the model and is told which operator is
    missing; after `bmx.load_library()` the same files load and reproduce this process's output."""
    symbol_file, params_file = exported
    x = net_input()
    np.save(tmp_path / "x.npy", x)
    expected = bmx.imports(symbol_file, params_file)(mx.nd.array(x)).asnumpy()
    np.save(tmp_path / "expected.npy", expected)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import mxnet as mx
        assert "bmx" not in sys.modules
        x = mx.nd.array(np.load({str(tmp_path / "x.npy")!r}))
        try:
            mx.gluon.SymbolBlock.imports({symbol_file!r}, ["data"], {params_file!r})(x).wait_to_read()
        except Exception as err:
            print("ERROR:", err)
        else:
            print("LOADED WITHOUT BMX")
        import bmx
        bmx.load_library()
        y = mx.gluon.SymbolBlock.imports({symbol_file!r}, ["data"], {params_file!r})(x).asnumpy()
        print("EQUAL:", np.array_equal(y, np.load({str(tmp_path / "expected.npy")!r})))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "ERROR:" in result.stdout and "LOADED WITHOUT BMX" not in result.stdout
    error_line = result.stdout.split("ERROR:", 1)[1]
    assert "bmx_det_sign" in error_line and "not registered" in error_line
    assert "EQUAL: True" in result.stdout


def test_required_operators_reads_the_json(exported):
    from bmx.model_io import required_operators
    assert required_operators(exported[0]) == ["bmx_det_sign", "bmx_weight_sign"]


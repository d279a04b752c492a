"""bmx.runtime.model and graph: input handling, errors naming node and file, plans per shape, and
running without mxnet."""
import glob
import json
import os
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest

import bmx
from bmx import packed, runtime, xnor
from bmx.packed import PackedFormatError
from runtime_cases import DATA, F32, X, check, mxnet_forward, normal, save_model_dir, xnor_model_dir


# ------------------------------------------------------------------ graph and input handling

def test_unsupported_op_names_node_op_and_file(tmp_path):
    symbol = mx.sym.arccos(mx.sym.tanh(DATA), name="odd")
    save_model_dir(tmp_path / "m", symbol, {})
    with pytest.raises(PackedFormatError,
                       match=r"m/model-symbol.json: node 'odd' \(arccos\): op 'arccos' is not supported"):
        runtime.load(tmp_path / "m")


def test_unused_nodes_need_not_be_supported(tmp_path):
    graph = json.loads(mx.sym.Group([mx.sym.relu(DATA), mx.sym.arccos(DATA)]).tojson())
    graph["heads"] = graph["heads"][:1]
    packed.save_model(tmp_path / "m", graph, {}, {})
    np.testing.assert_array_equal(runtime.load(tmp_path / "m")(X), np.maximum(X, 0))


def test_bad_attributes_and_weights_are_named(tmp_path):
    symbol = mx.sym.Pooling(DATA, kernel=(2, 2), pool_type="lp", name="pool")
    save_model_dir(tmp_path / "a", symbol, {})
    with pytest.raises(PackedFormatError, match=r"node 'pool' \(Pooling\): attribute pool_type='lp' is not supported"):
        runtime.load(tmp_path / "a")
    symbol = mx.sym.Convolution(DATA, weight=mx.sym.var("w"), kernel=(3, 3), num_filter=4, no_bias=True, name="c")
    save_model_dir(tmp_path / "b", symbol, {"w": normal(4, 4, 2, 2)})
    with pytest.raises(PackedFormatError, match=r"node 'c' \(Convolution\): weight shape \(4, 4, 2, 2\) does not fit"):
        runtime.load(tmp_path / "b")
    symbol = mx.sym.Convolution(DATA, weight=DATA, kernel=(3, 3), num_filter=4, no_bias=True, name="c")
    save_model_dir(tmp_path / "c", symbol, {})
    with pytest.raises(PackedFormatError, match="input 'data' must be a parameter"):
        runtime.load(tmp_path / "c")


def test_one_input_only(tmp_path):
    save_model_dir(tmp_path / "m", DATA + mx.sym.var("other"), {})
    with pytest.raises(PackedFormatError, match="variables 'data' and 'other' have no parameter values"):
        runtime.load(tmp_path / "m")


def stem_model(tmp_path, head=True):
    """conv 3x3 (3 -> 4 channels) -> [FullyConnected over 4 x 6 x 6 features]."""
    y = mx.sym.Convolution(DATA, weight=mx.sym.var("w"), kernel=(3, 3), num_filter=4, no_bias=True, name="conv")
    params = {"w": normal(4, 3, 3, 3)}
    if head:
        y = mx.sym.FullyConnected(y, weight=mx.sym.var("fw"), num_hidden=5, no_bias=True, name="fc")
        params["fw"] = normal(5, 4 * 6 * 6)
    return runtime.load(save_model_dir(tmp_path / "m", y, params, meta={"classes": 5}))


def test_input_validation_messages(tmp_path):
    model = stem_model(tmp_path)
    assert model.input_name == "data" and model.input_channels == 3 and model.meta == {"classes": 5}
    with pytest.raises(ValueError, match=r"must be 4-D \(N, C, H, W\), got shape \(3, 8, 8\)"):
        model(normal(3, 8, 8))
    with pytest.raises(ValueError, match=r"takes 3 input channels \(NCHW\), got shape \(1, 8, 8, 3\)"):
        model(normal(1, 8, 8, 3))
    with pytest.raises(ValueError, match=r"shape \(1, 3, 2, 8\) does not fit the model: node 'conv' \(Convolution\): "
                                         r"the H size 2 \(padded 2\) is smaller than the window \(3\)"):
        model(normal(1, 3, 2, 8))
    with pytest.raises(ValueError, match=r"node 'fc' \(FullyConnected\): needs 144 input features"):
        model(normal(1, 3, 9, 8))
    with pytest.raises(TypeError, match="must be a real"):
        model(np.zeros((1, 3, 8, 8), np.complex64))
    x = normal(2, 3, 8, 8)
    np.testing.assert_allclose(model(x.astype(np.float64)), model(x))  # other dtypes are converted


def test_any_batch_and_size_with_a_plan_per_shape(tmp_path):
    model = stem_model(tmp_path, head=False)
    for shape in [(1, 3, 8, 8), (3, 3, 11, 7), (1, 3, 8, 8)]:
        x = normal(*shape)
        expected = mxnet_forward(mx.sym.load(str(tmp_path / "m" / packed.SYMBOL_FILE)), x, {"w": normal(4, 3, 3, 3)})[0]
        np.testing.assert_allclose(model.forward(x), expected, rtol=1e-5, atol=1e-5)


def test_several_heads_give_a_tuple(tmp_path):
    symbol = mx.sym.Group([mx.sym.relu(DATA, name="r"),
                           mx.sym.Pooling(DATA, kernel=(1, 1), global_pool=True, pool_type="avg", name="p")])
    check(tmp_path, symbol, X)
    assert runtime.load(tmp_path / "model").output_names == ["r", "p"]


def test_threads(tmp_path):
    directory, _ = xnor_model_dir(tmp_path / "m", 64, 4, (3, 3))
    assert runtime.load(directory).threads == xnor.default_threads()
    assert runtime.load(directory, threads=1).threads == 1
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        runtime.load(directory, threads=0)


def test_model_from_a_packed_model_in_memory(tmp_path):
    symbol = mx.sym.relu(DATA)
    model = runtime.Model(packed.PackedModel(json.loads(symbol.tojson()), {}, {"k": 1}))
    assert model.meta == {"k": 1}
    np.testing.assert_array_equal(model(X), np.maximum(X, 0))


def dense_block(layers, growth):
    """DenseNet-style: x <- concat(x, conv(BN(x))) with a final BN, and its parameters."""
    x, args, aux, channels = DATA, {}, {}, 4
    for i in range(layers):
        bn = mx.sym.BatchNorm(x, mx.sym.var(f"g{i}"), mx.sym.var(f"b{i}"), mx.sym.var(f"m{i}"), mx.sym.var(f"v{i}"),
                              fix_gamma=False, eps=1e-5)
        y = mx.sym.Convolution(mx.sym.relu(bn), weight=mx.sym.var(f"w{i}"), kernel=(3, 3), pad=(1, 1),
                               num_filter=growth, no_bias=True)
        x = mx.sym.concat(x, y, dim=1)
        args.update({f"g{i}": normal(channels, seed=i), f"b{i}": normal(channels, seed=i + 50),
                     f"w{i}": normal(growth, channels, 3, 3, seed=i + 100)})
        aux.update({f"m{i}": normal(channels, seed=i + 150), f"v{i}": np.ones(channels, F32)})
        channels += growth
    return x, args, aux


@pytest.mark.parametrize("batch", [1, 3])
def test_concat_chains_share_one_buffer_and_stay_correct(tmp_path, batch):
    symbol, args, aux = dense_block(4, 3)
    check(tmp_path, symbol, normal(batch, 4, 6, 6), args, aux, rtol=1e-4, atol=1e-4)
    model = runtime.load(tmp_path / "model")
    placement, claimed = model._placement(model._infer((batch, 4, 6, 6)))
    assert len(claimed) == 4 and len({root for root, _ in placement.values()}) == 1


# ------------------------------------------------------------------ without mxnet

RUN_MODEL = """
import sys
import numpy as np
import bmx
import bmx.runtime
model = bmx.runtime.load(sys.argv[1])
x = np.load(sys.argv[2])
np.testing.assert_array_equal(model(x), np.load(sys.argv[3]))
print("MXNET IMPORTED:", "mxnet" in sys.modules)
"""

TRY_TRAINING = """
try:
    bmx.models
except ImportError as err:
    print("TRAINING:", err)
"""

BLOCK_MXNET = """
import importlib.abc, sys
class NoMXNet(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "mxnet" or name.startswith("mxnet."):
            raise ImportError("No module named 'mxnet' (blocked by the test)", name=name)
sys.meta_path.insert(0, NoMXNet())
"""


@pytest.fixture(scope="module")
def small_packed_model(tmp_path_factory):
    """A one-layer bmx_xnor_conv2d model, an input and its expected output, as files."""
    root = tmp_path_factory.mktemp("nomx")
    path, _ = xnor_model_dir(root / "model", 64, 8, (3, 3), pad=(1, 1))
    model = packed.load_model(path)
    x = normal(2, 64, 6, 6)
    np.save(root / "x.npy", x)
    np.save(root / "y.npy", runtime.Model(model)(x))
    return root


def run_python(code, *args, env=None):
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_runtime_runs_where_mxnet_cannot_be_imported(small_packed_model):
    root = small_packed_model
    out = run_python(BLOCK_MXNET + RUN_MODEL + TRY_TRAINING, root / "model", root / "x.npy", root / "y.npy")
    assert "TRAINING: bmx.models needs mxnet, but mxnet cannot be imported" in out
    assert "MXNET IMPORTED: False" in out


def test_runtime_never_imports_mxnet(small_packed_model):
    """Where mxnet is installed, with no switch: `import bmx` and the runtime leave it alone."""
    root = small_packed_model
    out = run_python(RUN_MODEL, root / "model", root / "x.npy", root / "y.npy")
    assert "MXNET IMPORTED: False" in out


def test_runtime_and_packed_modules_do_not_import_mxnet():
    """Whatever `import bmx` does, the deployment modules themselves never import mxnet."""
    code = textwrap.dedent("""
        import ast, sys
        for path in sys.argv[1:]:
            tree = ast.parse(open(path).read())
            names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            assert not any(name.split(".")[0] == "mxnet" for name in names), (path, names)
    """)
    here = os.path.dirname(bmx.__file__)
    files = glob.glob(os.path.join(here, "runtime", "**", "*.py"), recursive=True)
    assert len(files) > 1
    run_python(code, *files, *(os.path.join(here, f) for f in ("packed.py", "xnor.py", "_atomic.py", "symbol_json.py")))

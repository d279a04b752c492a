"""bmx.precision: the bfloat16 graph (checked by type inference, on any CPU), the support check, and
(on CPUs with AVX-512 BF16 only) bfloat16 against float32 numerics and training."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

import bmx
from bmx import precision, training

BF16 = precision.bfloat16_support()[0]
needs_bf16 = pytest.mark.skipif(not BF16, reason="bfloat16 needs AVX-512 BF16: " + precision.bfloat16_support()[1])


def _kind(t):
    return "bfloat16" if np.dtype(t).names == ("bfloat16",) else np.dtype(t).name


def node_dtypes(symbol):
    """[(op, output dtype)] of every node of ``symbol``, by MXNet's type inference from float32 data."""
    internals = symbol.get_internals()
    _, out_types, _ = internals.infer_type(data="float32")
    ops = {n["name"]: n["op"] for n in json.loads(symbol.tojson())["nodes"]}
    return [(ops[name.rsplit("_output", 1)[0]], _kind(t)) for name, t in zip(internals.list_outputs(), out_types)
            if name.rsplit("_output", 1)[0] in ops]


@pytest.mark.parametrize("name, knobs", [
    ("binary_densenet28", dict(stem="cifar", layers=(1, 1), growth_rate=8, init_features=16, reduction=(1,))),
    ("binary_resnet_e18", dict(stem="cifar")),
    ("bdn_poster_16x128_fpds", dict(stem="cifar")),
    ("meliusnet22", dict(stem="cifar")),
])
@pytest.mark.parametrize("binary", [True, False])
def test_only_convolutions_and_dense_layers_run_in_bfloat16(name, knobs, binary):
    net = bmx.models.get_model(name, classes=10, binary=binary, **knobs)
    net.initialize()
    symbol = precision.mixed_symbol(net)
    kinds = node_dtypes(symbol)
    for op, kind in kinds:
        if op in ("Convolution", "FullyConnected"):
            assert kind == "bfloat16", op
        elif op != "amp_cast":
            assert kind == "float32", op  # BatchNorm, bmx's sign operators, concat, pooling, ...
    assert sum(op == "Convolution" for op, _ in kinds) > 3
    assert any(op.startswith("bmx_") for op, _ in kinds) == binary
    arg_types, out_types, aux_types = symbol.infer_type(data="float32")
    assert {_kind(t) for t in arg_types + aux_types} == {"float32"}  # master weights, BN statistics
    assert [_kind(t) for t in out_types] == ["float32"]


def test_training_block_shares_the_float32_parameters():
    net = training.build_model("binary_densenet28", 10, stem="cifar", layers=(1, 1), growth_rate=8,
                               init_features=16, reduction=(1,))
    net.initialize()
    block = precision.training_block(net, "bfloat16")
    ours, theirs = net.collect_params(), block.collect_params()
    assert sorted(ours.keys()) == sorted(theirs.keys())
    assert all(ours[k] is theirs[k] for k in ours.keys())
    assert {p.data().dtype for p in ours.values()} == {np.float32}
    assert precision.training_block(net, "float32") is net
    assert precision.input_dtype("bfloat16") == "float32" and precision.input_dtype("float16") == "float16"


def test_support_needs_the_avx512_bf16_flag():
    supported, reason = precision.bfloat16_support()
    if "avx512_bf16" not in precision.cpu_flags():
        assert not supported and "avx512_bf16" in reason
    else:
        assert supported or "fails in this MXNet build" in reason


@pytest.mark.skipif(BF16, reason="this CPU supports bfloat16")
def test_bfloat16_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match=r"bfloat16 training is not available here: .*avx512_bf16.*--dtype float32"):
        precision.check("bfloat16", [mx.cpu()])
    from test_data import write_cifar
    bundle = bmx.data.cifar10(write_cifar(str(tmp_path / "data"), count=24), 8, val_size=8)
    net = training.build_model("binary_densenet28", 10, stem="cifar", layers=(1, 1), growth_rate=8,
                               init_features=16, reduction=(1,))
    with pytest.raises(ValueError, match="bfloat16 training is not available here"):
        training.Run(net, bundle, training.Recipe(dtype="bfloat16", epochs=1, batch_size=8), str(tmp_path / "run"),
                     progress=False)
    assert not os.path.exists(tmp_path / "run")


def test_check_validates_dtype_and_contexts():
    with pytest.raises(ValueError, match="dtype must be one of"):
        precision.check("bf16", [mx.cpu()])
    with pytest.raises(ValueError, match="float16 training needs GPU contexts"):
        precision.check("float16", [mx.cpu()])
    with pytest.raises(ValueError, match="one CPU context"):
        precision.check("bfloat16", [mx.gpu(0)])
    precision.check("float32", [mx.cpu()])
    assert training.Recipe(dtype="bfloat16").dtype == "bfloat16"


# ----------------------------------------------------------------------------- on bfloat16 CPUs

@needs_bf16
@pytest.mark.parametrize("channels, size", [(16, 8), (64, 6)])
def test_binary_convolution_in_bfloat16_matches_float32_up_to_the_output_rounding(channels, size):
    """+-1 inputs and weights are exact in bfloat16 and oneDNN accumulates in float32, so the only
    difference is rounding the output (an integer sum of up to K = 9 x channels terms) to bfloat16's
    8 significant bits: at most half a unit in the last place, 2^-8 of its magnitude."""
    net = mx.gluon.nn.HybridSequential()
    net.add(bmx.nn.BinaryConvolution(32, 3, padding=1, in_channels=channels))
    net.initialize(mx.init.Normal(1.0))
    x = mx.nd.random.normal(shape=(4, channels, size, size))
    expected = net(x).asnumpy()
    got = precision.training_block(net, "bfloat16")(x).asnumpy()
    assert got.dtype == np.float32
    np.testing.assert_array_less(np.abs(got - expected), np.abs(expected) * 2.0 ** -8 + 1e-6)
    assert np.abs(expected).max() > 256  # sums large enough that bfloat16 rounding shows


@needs_bf16
def test_small_binary_net_trains_in_bfloat16_resumes_exactly_and_exports_float32(tmp_path):
    from test_data import write_cifar
    from test_training import TINY_KNOBS
    directory = write_cifar(str(tmp_path / "data"), count=40)

    def run(out, epochs, resume=False):
        bundle = bmx.data.cifar10(directory, 8, val_size=8, seed=3)
        net = training.build_model("binary_densenet28", 10, **TINY_KNOBS)
        recipe = training.Recipe(optimizer="adam", lr=0.01, epochs=3, batch_size=8, seed=3, dtype="bfloat16")
        r = training.Run(net, bundle, recipe, out, config={"model": "tiny"}, resume=resume, progress=False)
        while r.epoch < epochs:
            r._train_epoch()
        return r

    unbroken = run(str(tmp_path / "a"), 3)
    losses = [row["train_loss"] for row in unbroken.history]
    assert losses[-1] < losses[0]
    run(str(tmp_path / "b"), 2)
    resumed = run(str(tmp_path / "b"), 3, resume=True)
    for a, b in zip(unbroken.net.collect_params().values(), resumed.net.collect_params().values()):
        np.testing.assert_array_equal(a.data().asnumpy(), b.data().asnumpy())
    unbroken._finish()
    exported = bmx.imports(str(tmp_path / "a" / "model"))
    assert {p.data().dtype for p in exported.collect_params().values()} == {np.float32}
    with open(tmp_path / "a" / "model-symbol.json") as f:
        assert "amp_cast" not in f.read()
    bmx.convert.binarize(str(tmp_path / "a"), str(tmp_path / "packed"), verify=True)

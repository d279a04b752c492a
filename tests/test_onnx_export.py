"""bmx.onnx_export and tools/export_onnx.py: bmx models -> standard ONNX, run in ONNX Runtime.

References: single layers against plain numpy written from the documented math (conftest: sign(0)
= +1, explicit padding with the pad value, rounding halves away from zero); whole models against
MXNet running the exported model, and the shipped packed model against bmx.runtime.
"""
import importlib.util
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mxnet.gluon import nn

import bmx
from bmx import convert, onnx_export, packed, runtime
from bmx import nn as bnn
from conftest import activation_input, dorefa_input, pad_nchw, ref_conv2d, ref_dorefa, ref_quantize_act, ref_sign

F32 = np.float32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("export_onnx", os.path.join(ROOT, "tools", "export_onnx.py"))
export_onnx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_onnx)
SHIPPED = os.path.join(ROOT, "example", "pretrained", "bdn28-cifar10")
CIFAR10 = os.environ.get("BMX_CIFAR10_REC", "/work/shared/data/cifar10/train.rec")
# Every family keeps a default-speed member; the other zoo models are slow.
SLOW = {"binary_densenet37", "binary_densenet37_dilated", "binary_densenet45", "bdn_poster_16x128", "bdn_poster_32x64",
        "bdn_poster_32x64_fpds", "meliusnet29", "meliusnet42", "meliusnet59", "binary_resnet_e34"}


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run(path, x):
    return session(path).run(None, {"data": x})[0]


def randomize(net, seed=0):
    """Xavier weights; gamma of both signs, beta and the running statistics random. k-bit (DoReFa)
    weights keep away from rounding ties: tanh differs by an ulp between libraries (docs/onnx.md)."""
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier(magnitude=2))
    rng = np.random.default_rng(seed)
    for layer in bnn.quantized_layers(net):
        if layer.bits > 1:
            layer.weight.set_data(mx.nd.array(dorefa_input(rng, layer.weight.shape, layer.bits, scale=0.1)))
    ranges = {"gamma": (0.5, 1.5), "beta": (-0.5, 0.5), "running_mean": (-0.5, 0.5), "running_var": (0.5, 2.0)}
    for name, p in net.collect_params().items():
        suffix = name.rsplit("_", 1)[-1] if not name.endswith(("running_mean", "running_var")) else name[-12:]
        if suffix in ranges:
            value = rng.uniform(*ranges[suffix], p.shape) * (rng.choice([-1, 1], p.shape) if suffix == "gamma" else 1)
            p.set_data(mx.nd.array(value.astype(F32)))


def export(net, tmp_path, shape, **options):
    """bmx.export's files in tmp_path (as train_imagenet.py leaves them), then the ONNX file of them."""
    bmx.export(net, str(tmp_path / "model"), input_shape=shape)
    path = str(tmp_path / "model.onnx")
    report = onnx_export.export(str(tmp_path), path, **options)
    return path, report


def close(expected, got, rtol, atol):
    """(|got - expected| <= atol * max|expected| + rtol * |expected| and, for 2-D outputs, the same
    argmax per row; the largest |difference|)."""
    diff = np.abs(got.astype(np.float64) - expected)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    same_class = expected.ndim != 2 or (got.argmax(axis=1) == expected.argmax(axis=1)).all()
    return bool(np.all(diff <= atol * scale + rtol * np.abs(expected)) and same_class), float(diff.max(initial=0))


def assert_close(expected, got, what, rtol=1e-4, atol=1e-4):
    assert got.shape == expected.shape, what
    ok, worst = close(expected, got, rtol, atol)
    assert ok, f"{what}: max |diff| {worst} (scale {np.max(np.abs(expected))}) or a different argmax"


def onnx_with_decision_inputs(directory, path, x):
    """ONNX Runtime's output and the inputs of its quantizers, in graph order: the signs' (the input
    of ``GreaterOrEqual``) and the k-bit quantizers' (of ``Clip``). Returns (output, values, names of
    the MXNet internal outputs they come from, levels: None for a sign, else 2^k - 1). ONNX values
    are named NODE/OP after the MXNet node that made them."""
    with open(os.path.join(directory, "model-symbol.json")) as f:
        mx_nodes = {n["name"]: n for n in json.load(f)["nodes"]}
    model = onnx.load(path)
    points = {}
    for node in model.graph.node:
        source = mx_nodes.get(node.name.split("/")[0], {})
        if node.op_type == "GreaterOrEqual":
            points.setdefault(node.input[0], None)
        elif node.op_type == "Clip" and source.get("op") == "bmx_quantize_act":
            points.setdefault(node.input[0], 2 ** int(source["attrs"]["bits"]) - 1)
    model.graph.output.extend(onnx.helper.make_tensor_value_info(p, onnx.TensorProto.FLOAT, None) for p in points)
    outputs = session(model.SerializeToString()).run(None, {"data": x})
    names = [p.split("/")[0] + "_output" if "/" in p else p for p in points]
    return outputs[0], outputs[1:], names, list(points.values())


def quantized(x, levels):
    return x >= 0 if levels is None else np.floor(np.clip(x, 0, 1) * levels + 0.5)


def to_jump(x, levels):
    """How far x is from the nearest input where the quantizer's output jumps."""
    if levels is None:
        return np.abs(x)
    v = np.clip(x, 0, 1) * levels
    return np.abs(v - np.floor(v) - 0.5) / levels


def mxnet_with_internals(directory, x, names):
    """MXNet's output and the named internal outputs of the model in directory (bmx.export's files)."""
    symbol = mx.sym.load(os.path.join(directory, "model-symbol.json"))
    internals = symbol.get_internals()
    block = mx.gluon.SymbolBlock([symbol] + [internals[n] for n in names], [mx.sym.var("data")])
    block.collect_params().load(os.path.join(directory, "model-0000.params"), ctx=mx.cpu(), cast_dtype=True,
                                dtype_source="saved")
    outputs = block(mx.nd.array(x))
    outputs = [o.asnumpy() for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]
    return outputs[0], outputs[1:]


def assert_matches_mxnet(directory, path, x, what, rtol=1e-4, atol=1e-4, flip_tol=1e-5):
    """ONNX Runtime running path == MXNet running directory's model, sample by sample.

    Both compute in float32 but round differently (summation order, fused BatchNorm), so a
    quantizer whose input lies within rounding of a jump (0 for a sign) may decide the other way,
    which changes everything after it. A sample whose outputs differ is accepted only if, at the
    first quantizer whose decisions differ, every differing input is within flip_tol (relative)
    of a jump and the other inputs agree; at least one sample must agree outright. Returns the
    number of samples so excused.
    """
    got, got_points, names, levels = onnx_with_decision_inputs(directory, path, x)
    expected, expected_points = mxnet_with_internals(directory, x, names)
    assert got.shape == expected.shape, what
    excused = 0
    for n in range(len(x)):
        ok, worst = close(expected[n:n + 1], got[n:n + 1], rtol, atol)
        if ok:
            continue
        for name, k, a, b in zip(names, levels, expected_points, got_points):
            a, b = a[n], b[n]
            flipped = quantized(a, k) != quantized(b, k)
            scale = float(np.max(np.abs(a)))
            ok_elsewhere, diff = close(a[~flipped], b[~flipped], rtol, atol)
            assert ok_elsewhere, f"{what}: sample {n}: the input of the quantizer on {name} differs by {diff}"
            if flipped.any():
                off = float(np.max(to_jump(a[flipped], k)))
                assert off <= flip_tol * scale, (f"{what}: sample {n}: {int(flipped.sum())} decision(s) on {name} "
                                                 f"differ, with inputs up to {off} from a jump (scale {scale})")
                excused += 1
                break
        else:
            raise AssertionError(f"{what}: sample {n}: output differs by {worst} with every decision equal")
    assert excused < len(x), f"{what}: no sample agrees outright"
    return excused


def kbit_ties(bits):
    """float32 inputs x with x * (2^k - 1) exactly k + 1/2 in float32: rounding ties of the quantizer."""
    levels = F32(2 ** bits - 1)
    found = []
    for k in range(int(levels)):
        x = F32((k + 0.5) / levels)
        for candidate in (np.nextafter(x, F32(0)), x, np.nextafter(x, F32(1))):
            if F32(candidate) * levels == F32(k + 0.5):
                found.append(candidate)
    assert found, "no exact ties"
    return np.array(found, F32)


# ------------------------------------------------------------------ single layers vs numpy

def seq(*blocks):
    net = nn.HybridSequential()
    net.add(*blocks)
    return net


def ref_binary_conv(x, w, stride=(1, 1), pad=(0, 0), dilation=(1, 1), groups=1, pad_value=-1.0):
    """conv(pad_{pad_value}(sign x), sign w), in float64."""
    padded = pad_nchw(ref_sign(x), pad, pad_value)
    return ref_conv2d(padded, ref_sign(w), stride, dilation, groups)


def ref_scaled(y, w):
    return y * np.abs(w.astype(np.float64)).mean(axis=(1, 2, 3))[None, :, None, None]


LAYERS = {
    # name: (block factory, numpy reference of (x, latent weight), exact)
    "folded_minus1_padding": (lambda: bnn.BinaryConvolution(8, 3, padding=1, in_channels=4, clip_threshold=1.3),
                              lambda x, w: ref_binary_conv(x, w, pad=(1, 1)), True),
    "strided_dilated_grouped": (
        lambda: bnn.BinaryConvolution(6, 3, strides=2, padding=2, dilation=2, groups=2, in_channels=4),
        lambda x, w: ref_binary_conv(x, w, stride=(2, 2), pad=(2, 2), dilation=(2, 2), groups=2), True),
    "sign_then_qconv_explicit_pad": (lambda: seq(bnn.QActivation(), bnn.QConv2D(8, 3, padding=(1, 2), in_channels=4)),
                                     lambda x, w: ref_binary_conv(x, w, pad=(1, 2)), True),
    "approx_sign_pad_zero_scaled": (
        lambda: bnn.BinaryConvolution(8, 3, padding=1, in_channels=4, activation="approx_sign", pad_value=0,
                                      apply_scaling=True),
        lambda x, w: ref_scaled(ref_binary_conv(x, w, pad=(1, 1), pad_value=0.0), w), False),
    "dense_after_sign": (lambda: seq(bnn.QActivation(), bnn.QDense(5, in_units=4 * 7 * 7)),
                         lambda x, w: ref_sign(x).reshape(len(x), -1).astype(np.float64) @ ref_sign(w).T, True),
    "two_bit_activations_and_weights": (
        lambda: bnn.BinaryConvolution(8, 3, padding=1, in_channels=4, bits=2, bits_a=2),
        lambda x, w: ref_conv2d(pad_nchw(ref_quantize_act(x, 2), (1, 1), -1.0), ref_dorefa(w, 2)[0], (1, 1), (1, 1),
                                1), False),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_matches_numpy_at_the_quantizer_jumps(name, tmp_path):
    """Inputs hold exact zeros (sign(0) = +1), +-t_clip and their neighbours, and the k-bit ties."""
    factory, reference, exact = LAYERS[name]
    net = factory()
    net.initialize()
    layer = bnn.quantized_layers(net)[0]
    rng = np.random.default_rng(1)
    bits = layer.bits
    w = dorefa_input(rng, layer.weight.shape, bits) if bits > 1 else rng.standard_normal(layer.weight.shape)
    layer.weight.set_data(mx.nd.array(w.astype(F32)))
    x = activation_input(rng, (3, 4, 7, 7), threshold=1.3)
    ties = kbit_ties(2)
    x.reshape(-1)[rng.choice(x.size, 4 * ties.size, replace=False)] = np.tile(ties, 4)
    path, _ = export(net, tmp_path, (1, 4, 7, 7))
    expected = reference(x, layer.weight.data().asnumpy())
    s = session(path)
    for batch in (3, 1):  # one file, two batch sizes
        got = s.run(None, {"data": x[:batch]})[0]
        if exact:  # sums of +-1 products: exact in any order
            np.testing.assert_array_equal(got, expected[:batch].astype(F32), err_msg=name)
        else:
            assert_close(expected[:batch], got, name, rtol=1e-5, atol=1e-5)
    assert_close(net(mx.nd.array(x)).asnumpy(), s.run(None, {"data": x})[0], f"{name} vs MXNet", 1e-5, 1e-5)


def test_sign_is_plus_one_at_zero_and_binary_weights_are_plus_minus_one(tmp_path):
    net = bnn.BinaryConvolution(4, 3, padding=1, in_channels=2)
    net.initialize()
    path, report = export(net, tmp_path, (1, 2, 5, 5))
    x = np.zeros((1, 2, 5, 5), F32)
    x[0, 1] = -0.0
    # all +1 inside, -1 padding: the corners see 4 of 9 taps inside, the centre all 9
    w = ref_sign(net.qconv.weight.data().asnumpy())
    got = run(path, x)
    np.testing.assert_array_equal(got, ref_binary_conv(np.ones_like(x), w, pad=(1, 1)).astype(F32))
    model = onnx.load(path)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(weights[conv.input[1]], w)
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    assert weights[pad.input[2]] == -1 and list(weights[pad.input[1]]) == [0, 0, 1, 1, 0, 0, 1, 1]
    assert report["binary_convolutions"] == 1 and "Sign" not in report["onnx_ops"]


# ------------------------------------------------------------------ the zoo

@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in bmx.models.list_models()])
def test_zoo_model_matches_mxnet(name, tmp_path):
    """Every zoo model (32x32, 10 classes, t_clip 1.3): ONNX Runtime == MXNet at batch 3 and 1."""
    net = bmx.models.get_model(name, stem="cifar", classes=10, clip_threshold=1.3)
    randomize(net)
    path, report = export(net, tmp_path, (1, 3, 32, 32))
    assert report["inputs"] == {"data": ["batch", 3, "height", "width"]}
    assert report["outputs"] == {"output": ["batch", 10]}
    assert report["binary_convolutions"] == len(bnn.quantized_layers(net)) > 0
    x = activation_input(np.random.default_rng(2), (3, 3, 32, 32), threshold=1.3)
    assert_matches_mxnet(str(tmp_path), path, x, name)
    s = session(path)
    assert_close(s.run(None, {"data": x})[0][:1], s.run(None, {"data": x[:1]})[0], f"{name} batch 1", 1e-6, 1e-6)


@pytest.mark.parametrize("config", [dict(bits=2, bits_a=2), dict(apply_scaling=True, activation="approx_sign"),
                                    dict(pad_value=0), "composite"])
def test_layer_configs_and_their_packed_models_match_mxnet(config, tmp_path):
    """k-bit, scaled, zero-padded and composite-operator models; the packed model of each exports too."""
    backend = "composite" if config == "composite" else "auto"
    with bmx.quantizers.use_backend(backend), bmx.binary_layer_config(**({} if config == "composite" else config)):
        net = bmx.models.get_model("bdn_poster_8x256", stem="cifar", classes=10)
        randomize(net)
        path, _ = export(net, tmp_path, (1, 3, 32, 32))
    ops = {n["op"] for n in json.load(open(tmp_path / "model-symbol.json"))["nodes"]}
    assert ("BlockGrad" in ops) == (config == "composite")
    x = activation_input(np.random.default_rng(3), (3, 3, 32, 32))
    assert_matches_mxnet(str(tmp_path), path, x, f"{config}")
    if config != "composite":  # the converter packs native-operator models only
        packed_dir = str(tmp_path / "packed")
        convert.binarize(str(tmp_path), packed_dir)
        report = onnx_export.export(packed_dir, str(tmp_path / "packed.onnx"))
        binary = 0 if "bits" in config else len(bnn.quantized_layers(net))  # k-bit layers have no signs
        assert report["packed"] and report["binary_convolutions"] == binary
        assert_matches_mxnet(packed_dir, str(tmp_path / "packed.onnx"), x, f"{config} packed")


def test_fixed_input_size(tmp_path):
    net = bnn.BinaryConvolution(4, 3, padding=1, in_channels=2)
    net.initialize()
    path, report = export(net, tmp_path, (1, 2, 5, 5), input_size=5)
    assert report["inputs"] == {"data": ["batch", 2, 5, 5]} and report["outputs"] == {"output": ["batch", 4, 5, 5]}
    assert run(path, np.zeros((3, 2, 5, 5), F32)).shape == (3, 4, 5, 5)
    with pytest.raises(Exception, match="data"):  # onnxruntime refuses other sizes
        run(path, np.zeros((1, 2, 6, 6), F32))


# ------------------------------------------------------------------ the shipped packed CIFAR-10 model

@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("shipped") / "bdn28.onnx")
    return path, onnx_export.export(SHIPPED, path), runtime.load(SHIPPED, threads=1), packed.load_model(SHIPPED)


def images_as_inputs(images, meta):
    """uint8 NHWC RGB images -> normalized float32 NCHW inputs (the model.json preprocessing)."""
    prep = meta["preprocessing"]
    x = (images.astype(F32) - np.array(prep["mean"], F32)) / np.array(prep["std"], F32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def test_shipped_model_exports_its_packed_bits_as_plus_minus_one_weights(shipped):
    path, report, _, model = shipped
    assert report["binary_convolutions"] == 23 and report["packed"]
    onnx_model = onnx.load(path)
    assert [(o.domain, o.version) for o in onnx_model.opset_import] == [("", onnx_export.OPSET)]
    assert onnx_model.ir_version == onnx_export.IR_VERSION and all(n.domain == "" for n in onnx_model.graph.node)
    props = {p.key: json.loads(p.value) for p in onnx_model.metadata_props}
    assert props["preprocessing"] == model.meta["preprocessing"]
    assert props["class_names"] == model.meta["data"]["class_names"]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx_model.graph.initializer}
    nodes = {n["name"]: n for n in model.graph["nodes"]}
    checked = 0
    for conv in (n for n in onnx_model.graph.node if n.op_type == "Conv"):
        source = nodes[conv.name.split("/")[0]]
        if source["op"] != "bmx_xnor_conv2d":
            continue
        words = model.params["arg:" + model.graph["nodes"][source["inputs"][1][0]]["name"]]
        w = weights[conv.input[1]]  # (O, C, KH, KW) floats; the packed words hold bit c % 64 of word c // 64
        bits = np.unpackbits(words.view(np.uint8).reshape(words.shape + (8,)), axis=-1, bitorder="little")
        bits = bits.reshape(words.shape[:3] + (-1,))[..., :w.shape[1]].transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(w, np.where(bits == 1, F32(1), F32(-1)))
        checked += 1
    assert checked == 23


def test_shipped_model_agrees_with_the_runtime_on_generated_images(shipped):
    """Random and smooth 32x32 images through the model.json preprocessing: same outputs and top-1."""
    path, _, model, _ = shipped
    rng = np.random.default_rng(4)
    noise = rng.integers(0, 256, (6, 32, 32, 3))
    ramp = np.linspace(0, 255, 32)
    smooth = np.stack([np.stack(np.broadcast_arrays(ramp[:, None] * (c / 3), ramp[None, :], 255 - ramp[:, None]),
                                axis=-1) for c in range(4)])
    flat = np.stack([np.zeros((32, 32, 3)), np.full((32, 32, 3), 255)])
    images = np.concatenate([noise, smooth, flat]).astype(np.uint8)
    x = images_as_inputs(images, model.meta)
    expected = model(x)
    assert_close(expected, session(path).run(None, {"data": x})[0], "shipped model")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(CIFAR10), reason=f"CIFAR-10 records not found at {CIFAR10} "
                    "(set BMX_CIFAR10_REC)")
def test_shipped_model_top1_on_the_heldout_images_equals_the_runtime(shipped):
    """The 5,000 CIFAR-10 images the model was never trained on (split seed of its model.json)."""
    from bmx import data

    path, _, model, _ = shipped
    info = model.meta["data"]
    indices = data.heldout_indices(data.check_recordio(CIFAR10), info["val_size"], info["split_seed"])
    split = data.evaluation_split(CIFAR10, data.Preprocessing.from_dict(model.meta["preprocessing"]), 250,
                                  indices=indices)
    s = session(path)
    labels, in_runtime, in_onnx = [], [], []
    for batch, label in split.batches(0):
        x = batch.asnumpy()
        labels.append(label.asnumpy())
        in_runtime.append(model(x).argmax(axis=1))
        in_onnx.append(s.run(None, {"data": x})[0].argmax(axis=1))
    labels, in_runtime, in_onnx = (np.concatenate(a) for a in (labels, in_runtime, in_onnx))
    assert len(labels) == info["val_size"]
    assert (in_onnx == labels).mean() == (in_runtime == labels).mean()
    assert (in_onnx == in_runtime).mean() >= 0.999
    assert abs((in_onnx == labels).mean() - model.meta["final"]["val_top1"]) <= 0.001


# ------------------------------------------------------------------ errors and the command line

def test_unsupported_op_is_named(tmp_path):
    net = seq(nn.HybridLambda(lambda F, x: F.erf(x)), nn.Dense(3, in_units=12))
    net.initialize()
    with pytest.raises(onnx_export.OnnxExportError, match=r"model-symbol.json: node '\w+' \(erf\): operator erf has "
                                                          r"no ONNX mapping"):
        export(net, tmp_path, (1, 3, 2, 2))
    assert not os.path.exists(tmp_path / "model.onnx")


def test_existing_output_is_kept_without_force(tmp_path):
    net = bnn.BinaryConvolution(4, 3, padding=1, in_channels=2)
    net.initialize()
    target = tmp_path / "model.onnx"
    target.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="pass --force"):
        export(net, tmp_path, (1, 2, 5, 5))
    assert target.read_bytes() == b"mine"
    onnx_export.export(str(tmp_path), str(target), force=True)
    assert run(str(target), np.ones((2, 2, 5, 5), F32)).shape == (2, 4, 5, 5)


@pytest.mark.parametrize("damage, message", [("params", "truncated"), ("size", "input_size must be a positive"),
                                             ("missing", "no model-symbol.json")])
def test_bad_inputs_are_named(damage, message, tmp_path):
    net = bnn.BinaryConvolution(4, 3, padding=1, in_channels=2)
    net.initialize()
    bmx.export(net, str(tmp_path / "model"), input_shape=(1, 2, 5, 5))
    options = {}
    if damage == "params":
        params = tmp_path / "model-0000.params"
        params.write_bytes(params.read_bytes()[:-20])
    elif damage == "size":
        options["input_size"] = 0
    else:
        os.remove(tmp_path / "model-symbol.json")
    with pytest.raises(ValueError, match=message):
        onnx_export.export(str(tmp_path), str(tmp_path / "out.onnx"), **options)
    assert not os.path.exists(tmp_path / "out.onnx")


def test_command_line(tmp_path, capsys):
    net = bnn.BinaryConvolution(4, 3, padding=1, in_channels=2)
    net.initialize()
    bmx.export(net, str(tmp_path / "model"), input_shape=(1, 2, 5, 5))
    out = str(tmp_path / "m.onnx")
    assert export_onnx.main([str(tmp_path), "--output", out, "--epoch", "0"]) == 0
    assert "1 binary convolutions" in capsys.readouterr().out
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(F32)
    np.testing.assert_array_equal(run(out, x), net(mx.nd.array(x)).asnumpy())
    for argv, message in (([str(tmp_path), "--output", out], "exists"),
                          ([str(tmp_path), "--output", out, "--input-size", "0"], "--input-size must be positive"),
                          ([str(tmp_path), "--output", out, "--epoch", "3", "--force"], "model-0003.params")):
        with pytest.raises(SystemExit) as stop:
            export_onnx.main(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_the_comparison_catches_a_wrong_padding(tmp_path):
    """assert_matches_mxnet is not blind: a file padding with 0 instead of -1 fails it."""
    net = bnn.BinaryConvolution(4, 3, padding=1, in_channels=2)
    net.initialize()
    path, _ = export(net, tmp_path, (1, 2, 5, 5))
    x = activation_input(np.random.default_rng(6), (2, 2, 5, 5))
    assert assert_matches_mxnet(str(tmp_path), path, x, "as exported") == 0
    model = onnx.load(path)
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0, F32), "zero_padding"))
    pad.input[2] = "zero_padding"  # the -1 constant itself is shared with the sign
    onnx.save(model, path)
    with pytest.raises(AssertionError, match="every decision equal"):
        assert_matches_mxnet(str(tmp_path), path, x, "zero padded")


@pytest.mark.parametrize("block, expected", [(None, "mxnet imported: False"), ("onnxruntime", "needs the onnx extra")])
def test_export_needs_neither_mxnet_nor_pickle_and_names_a_missing_extra(block, expected, tmp_path):
    """A packed model exports without importing MXNet; a missing onnxruntime is explained."""
    script = (f"import sys; sys.modules['{block}'] = None\n" if block else "") + (
        "from bmx import onnx_export\n"
        f"onnx_export.export({SHIPPED!r}, {str(tmp_path / 'm.onnx')!r})\n"
        "print('mxnet imported:', 'mxnet' in sys.modules)\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", "import sys\n" + script], capture_output=True, text=True, env=env,
                         timeout=300)
    assert expected in out.stdout + out.stderr, out.stderr
    assert os.path.exists(tmp_path / "m.onnx") == (block is None)

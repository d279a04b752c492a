"""bmx.convert: exported bmx models -> packed models (binary layers as bmx_xnor_conv2d on packed bits).

The references are plain numpy from the documented math (conftest): sign(0) = +1, explicit
padding with the pad value, a direct convolution. Packed words are decoded here from the
contract's layout (bit j of word w = channel 64 w + j of a tap, 1 <=> +1), not with bmx.xnor.
"""
import hashlib
import json
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import bmx
from bmx import convert, packed, runtime
from bmx.packed import PackedFormatError
from bmx import nn as bnn
from bmx.convert.verify import _check_path
from bmx import quantizers as Q
from conftest import pad_nchw, ref_conv2d, ref_dorefa, ref_sign

F32 = np.float32
SMALL = dict(stem="cifar", classes=10)  # 32x32 inputs
# The heaviest zoo models at 32x32 are marked slow; every family keeps a default-speed member.
SLOW_AT_32 = {"meliusnet42", "meliusnet59", "binary_resnet_e34", "binary_densenet45"}


def randomize(net, seed=0):
    """Xavier weights and non-trivial BatchNorm: random gamma (both signs), beta and running stats."""
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier(magnitude=2))
    rng = np.random.default_rng(seed)
    latent = _latent_binary_weights(net)
    for name, p in net.collect_params().items():
        if name.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, p.shape) * rng.choice([-1, 1], p.shape)
        elif name.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, p.shape)
        elif name.endswith(("beta", "running_mean")):
            value = rng.uniform(-0.5, 0.5, p.shape)
        elif name in latent:
            value = rng.standard_normal(p.shape)  # latent weights: only their signs and mean |W| count
        else:
            continue
        p.set_data(mx.nd.array(value.astype(F32)))


def _latent_binary_weights(net):
    return {layer.weight.name for layer in bnn.quantized_layers(net)}


def export(net, directory, input_shape):
    prefix = os.path.join(directory, "model")
    return bmx.export(net, prefix, input_shape=input_shape)


def run_original(net, x):
    return net(mx.nd.array(x)).asnumpy()


def run_mxnet(out_dir, x):
    net = mx.gluon.SymbolBlock.imports(os.path.join(out_dir, "model-symbol.json"), ["data"],
                                       os.path.join(out_dir, "model-0000.params"))
    return net(mx.nd.array(x)).asnumpy()


def run_runtime(out_dir, x):
    result = runtime.load(out_dir)(x)
    return np.asarray(result[0] if isinstance(result, (list, tuple)) else result)


def assert_close(expected, got, what, rtol=1e-3, atol=1e-3):
    scale = float(np.max(np.abs(expected)))
    diff = np.abs(got.astype(np.float64) - expected)
    assert got.shape == expected.shape, what
    assert np.all(diff <= atol * scale + rtol * np.abs(expected)), f"{what}: max |diff| {diff.max()} (scale {scale})"


def ops_of(graph):
    return [n["op"] for n in graph["nodes"]]


def nodes_of(graph, op):
    return [n for n in graph["nodes"] if n["op"] == op]


def digest(*paths):
    return [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]


def decode_words(words, channels):
    """Contract layout -> (O, C, KH, KW) of +-1: bit j of word w is channel 64 w + j, 1 <=> +1."""
    words = np.asarray(words).view(np.uint64)
    bits = (words[..., None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    bits = bits.reshape(words.shape[:3] + (-1,))
    assert not bits[..., channels:].any(), "tail bits past the channels must be 0"
    return np.where(bits[..., :channels] == 1, F32(1), F32(-1)).transpose(0, 3, 1, 2)


# ------------------------------------------------------------------ single layers vs numpy

def seq(*blocks):
    net = nn.HybridSequential()
    for block in blocks:
        net.add(block)
    return net


def ref_binary_conv(x, w, stride=(1, 1), pad=(0, 0), dilation=(1, 1), groups=1, pad_value=-1.0):
    return ref_conv2d(pad_nchw(ref_sign(x), pad, pad_value), ref_sign(w), stride, dilation, groups)


LAYERS = {
    # name: (block factory, input shape, expected (pattern, pad, pad_value), numpy reference of (x, weights))
    "a_binary_conv_pad_minus1": (
        lambda: bnn.BinaryConvolution(8, 3, padding=1, in_channels=4), (2, 4, 7, 7), ("a", [1, 1], -1),
        lambda x, w: ref_binary_conv(x, w, pad=(1, 1))),
    "a_strided_dilated_grouped": (
        lambda: bnn.BinaryConvolution(6, 3, strides=2, padding=2, dilation=2, groups=2, in_channels=4),
        (2, 4, 9, 9), ("a", [2, 2], -1),
        lambda x, w: ref_binary_conv(x, w, stride=(2, 2), pad=(2, 2), dilation=(2, 2), groups=2)),
    "a_approx_sign_70_channels": (
        lambda: bnn.BinaryConvolution(5, 3, padding=1, in_channels=70, activation="approx_sign"),
        (1, 70, 5, 5), ("a", [1, 1], -1), lambda x, w: ref_binary_conv(x, w, pad=(1, 1))),
    "b_sign_then_qconv_pad_minus1": (
        lambda: seq(bnn.QActivation(), bnn.QConv2D(8, 3, padding=(1, 2), in_channels=4)), (2, 4, 7, 7),
        ("b", [1, 2], -1), lambda x, w: ref_binary_conv(x, w, pad=(1, 2))),
    "c_pad_zero": (
        lambda: bnn.BinaryConvolution(8, 3, padding=1, in_channels=4, pad_value=0), (2, 4, 7, 7),
        ("c", [1, 1], 0), lambda x, w: ref_binary_conv(x, w, pad=(1, 1), pad_value=0.0)),
    "c_no_padding": (
        lambda: bnn.BinaryConvolution(8, 1, strides=2, in_channels=4), (2, 4, 7, 7), ("c", [0, 0], -1),
        lambda x, w: ref_binary_conv(x, w, stride=(2, 2))),
    "d_dense_after_sign": (
        lambda: seq(bnn.QActivation(method="approx_sign"), bnn.QDense(5, in_units=4 * 7 * 7)), (2, 4, 7, 7),
        ("d", [0, 0], -1), lambda x, w: ref_sign(x).reshape(2, -1).astype(np.float64) @ ref_sign(w).T),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_binary_layer_matches_numpy(name, tmp_path):
    make, shape, (pattern, pad, pad_value), reference = LAYERS[name]
    net = make()
    randomize(net)
    symbol_file, params_file = export(net, str(tmp_path), shape)
    graph, params, report = convert.convert(symbol_file, params_file)

    [layer] = report["layers"]
    assert (layer["pattern"], layer["pad"], layer["pad_value"]) == (pattern, pad, pad_value)
    [op] = nodes_of(graph, "bmx_xnor_conv2d")
    assert op["attrs"]["pad_value"] == str(pad_value)
    gone = {"bmx_weight_sign", "bmx_det_sign", "bmx_approx_sign", "Convolution", "FullyConnected"}
    assert not gone & set(ops_of(graph))
    [latent] = _latent_binary_weights(net)
    assert f"arg:{latent}" not in params  # the latent float weights are gone
    [words] = [v for v in params.values() if v.dtype == np.int64]
    w = net.collect_params()[latent].data().asnumpy()
    kernel = tuple(w.shape[2:]) if w.ndim == 4 else (1, 1)
    assert words.shape == (w.shape[0],) + kernel + (-(-w.shape[1] // 64),)
    assert np.array_equal(decode_words(words, w.shape[1]).reshape(w.shape), ref_sign(w)), "packed bits are sign(W)"

    out = str(tmp_path / "packed")
    packed.save_model(out, graph, params, {})
    x = np.random.default_rng(1).standard_normal(shape).astype(F32)
    x[0, 0, 0, :3] = [0.0, -0.0, 1e-30]  # sign(0) = sign(-0) = +1
    expected = reference(x, w)
    assert np.array_equal(run_runtime(out, x), expected.astype(F32)), "runtime"
    assert np.array_equal(run_mxnet(out, x), expected.astype(F32)), "MXNet"


@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_apply_scaling_keeps_a_constant_alpha(kind, tmp_path):
    """e) y * mean|W_o|: the broadcast_mul stays, by a float32 constant computed once."""
    if kind == "conv":
        net, shape = bnn.BinaryConvolution(8, 3, padding=1, in_channels=4, apply_scaling=True), (2, 4, 6, 6)
    else:
        net, shape = seq(bnn.QActivation(), bnn.QDense(5, in_units=4 * 36, apply_scaling=True)), (2, 4, 6, 6)
    randomize(net)
    graph, params, report = convert.convert(*export(net, str(tmp_path), shape))
    [const] = report["constants"]
    assert const["kind"] == "scale (apply_scaling)"
    alpha = params[f"arg:{const['constant']}"]
    [latent] = _latent_binary_weights(net)
    w = net.collect_params()[latent].data().asnumpy()
    assert alpha.dtype == np.float32
    np.testing.assert_allclose(alpha.ravel(), np.abs(w).reshape(w.shape[0], -1).mean(axis=1), rtol=1e-6)
    assert ops_of(graph).count("broadcast_mul") == 1 and f"arg:{latent}" not in params

    out = str(tmp_path / "packed")
    packed.save_model(out, graph, params, {})
    x = np.random.default_rng(2).standard_normal(shape).astype(F32)
    expected = run_original(net, x)
    assert_close(expected, run_runtime(out, x), "runtime", rtol=1e-6, atol=0)
    assert_close(expected, run_mxnet(out, x), "MXNet", rtol=1e-6, atol=0)


@pytest.mark.parametrize("case", ["weight_only_binary", "dorefa_conv", "dorefa_dense_after_sign"])
def test_quantized_weights_without_binary_activations_become_constants(case, tmp_path):
    """f) the weight quantizer is evaluated once and stored as float32 values (reported, not packed)."""
    shape = (2, 4, 6, 6)
    if case == "weight_only_binary":
        net, bits = bnn.QConv2D(8, 3, padding=1, in_channels=4), 1
    elif case == "dorefa_conv":
        net, bits = bnn.BinaryConvolution(8, 3, padding=1, in_channels=4, bits=2, bits_a=2), 2
    else:
        net, bits = seq(bnn.QActivation(), bnn.QDense(5, in_units=4 * 36, bits=3)), 3
    randomize(net)
    graph, params, report = convert.convert(*export(net, str(tmp_path), shape))
    assert report["layers"] == []
    [const] = report["constants"]
    assert const["bits"] == bits and "not packed" in const["kind"]
    assert any("not packed" in w for w in report["warnings"])
    [latent] = _latent_binary_weights(net)
    w = net.collect_params()[latent].data().asnumpy()
    values = params[f"arg:{const['constant']}"]
    expected_w = ref_sign(w) if bits == 1 else ref_dorefa(w, bits)[0]
    assert values.dtype == np.float32 and np.array_equal(values, expected_w)
    assert "bmx_quantize_weight" not in ops_of(graph) and "bmx_weight_sign" not in ops_of(graph)

    out = str(tmp_path / "packed")
    packed.save_model(out, graph, params, {})
    x = np.random.default_rng(3).standard_normal(shape).astype(F32)
    expected = run_original(net, x)
    assert_close(expected, run_mxnet(out, x), "MXNet", rtol=1e-6, atol=0)
    assert_close(expected, run_runtime(out, x), "runtime", rtol=1e-5, atol=1e-6)


def test_sign_with_other_consumers_is_kept(tmp_path):
    """The sign feeds the binary conv and a concat: the conv is rewritten, the sign stays for the concat."""
    class Net(mx.gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            with self.name_scope():
                self.act = bnn.QActivation()
                self.conv = bnn.QConv2D(4, 3, padding=1, in_channels=4, pad_value=0)

        def hybrid_forward(self, F, x):
            s = self.act(x)
            return F.concat(s, self.conv(s), dim=1)

    net = Net()
    randomize(net)
    graph, params, report = convert.convert(*export(net, str(tmp_path), (1, 4, 5, 5)))
    assert len(report["layers"]) == 1 and ops_of(graph).count("bmx_det_sign") == 1
    out = str(tmp_path / "packed")
    packed.save_model(out, graph, params, {})
    x = np.random.default_rng(4).standard_normal((1, 4, 5, 5)).astype(F32)
    assert np.array_equal(run_mxnet(out, x), run_original(net, x))


def test_unmatched_binary_layer_stays_float_with_a_warning(tmp_path):
    """An uneven -1 padding (not expressible by the op) is left to the float convolution, and said so."""
    net = seq(bnn.QActivation(), bnn.QConv2D(8, 3, padding=1, in_channels=4))
    randomize(net)
    symbol_file, params_file = export(net, str(tmp_path), (1, 4, 6, 6))
    graph = json.load(open(symbol_file))
    [pad] = nodes_of(graph, "Pad")
    pad["attrs"]["pad_width"] = "(0, 0, 0, 0, 1, 1, 2, 0)"
    json.dump(graph, open(symbol_file, "w"))
    graph, params, report = convert.convert(symbol_file, params_file)
    assert report["layers"] == [] and "Convolution" in ops_of(graph)
    assert any("kept in float" in w and "unevenly" in w for w in report["warnings"])


# ------------------------------------------------------------------ errors

def test_composite_backend_is_refused(tmp_path):
    with Q.use_backend("composite"):
        net = bnn.BinaryConvolution(8, 3, padding=1, in_channels=4)
        randomize(net)
        files = export(net, str(tmp_path), (1, 4, 6, 6))
    before = digest(*files)
    with pytest.raises(convert.ConvertError, match=r"node '.*blockgrad.*' \(op BlockGrad\).*composite"):
        convert.convert(*files)
    assert digest(*files) == before


def test_unsupported_op_is_named(tmp_path):
    net = bnn.BinaryConvolution(8, 3, padding=1, in_channels=4)
    randomize(net)
    symbol_file, params_file = export(net, str(tmp_path), (1, 4, 6, 6))
    graph = json.load(open(symbol_file))
    graph["nodes"].append({"op": "_contrib_quadratic", "name": "odd_one", "attrs": {"a": "1"},
                           "inputs": [graph["heads"][0]]})
    graph["node_row_ptr"].append(graph["node_row_ptr"][-1] + 1)
    graph["heads"] = [[len(graph["nodes"]) - 1, 0, 0]]
    json.dump(graph, open(symbol_file, "w"))
    with pytest.raises(convert.ConvertError, match=r"node 'odd_one' \(op _contrib_quadratic\)"):
        convert.convert(symbol_file, params_file)


def _small_files(tmp_path):
    net = bnn.BinaryConvolution(8, 3, padding=1, in_channels=4)
    randomize(net)
    return export(net, str(tmp_path), (1, 4, 6, 6))


@pytest.mark.parametrize("damage", ["missing_symbol", "truncated_symbol", "not_a_graph", "truncated_params",
                                    "missing_weight", "wrong_shape"])
def test_bad_inputs_name_the_file_and_stay_untouched(damage, tmp_path):
    symbol_file, params_file = _small_files(tmp_path)
    if damage == "missing_symbol":
        os.remove(symbol_file)
        files, pattern = [params_file], r"model-symbol.json: no such symbol file"
    else:
        files = [symbol_file, params_file]
        if damage == "truncated_symbol":
            text = open(symbol_file).read()
            open(symbol_file, "w").write(text[:len(text) // 2])
            pattern = r"model-symbol.json: not valid JSON"
        elif damage == "not_a_graph":
            json.dump({"nodes": 3}, open(symbol_file, "w"))
            pattern = r"model-symbol.json: not an MXNet symbol JSON"
        elif damage == "truncated_params":
            data = open(params_file, "rb").read()
            open(params_file, "wb").write(data[:len(data) - 100])
            pattern = r"model-0000.params"
        else:
            arrays = mx.nd.load(params_file)
            key = next(k for k in arrays if k.endswith("weight"))
            if damage == "missing_weight":
                del arrays[key]
                pattern = rf"variable '{key[4:]}' is neither an input"
            else:
                arrays[key] = mx.nd.zeros((2, 2))
                pattern = rf"variable '{key[4:]}' has shape .* but the parameter file holds \(2, 2\)"
            mx.nd.save(params_file, arrays)
    before = digest(*files)
    with pytest.raises(ValueError, match=pattern):
        convert.convert(symbol_file, params_file)
    assert digest(*files) == before


# ------------------------------------------------------------------ the zoo

@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_AT_32 else n
                                  for n in bmx.models.list_models()])
def test_zoo_model_matches_original(name, tmp_path):
    """Every zoo model (32x32, 10 classes): packed == original through the runtime and MXNet."""
    net = bmx.models.get_model(name, **SMALL)
    randomize(net)
    export(net, str(tmp_path), (1, 3, 32, 32))
    out = str(tmp_path / "packed")
    report = convert.binarize(str(tmp_path), out, verify=True, input_size=32)
    binary_convs = [b for b in bnn.quantized_layers(net) if b.bits == 1]
    assert len(report["layers"]) == len(binary_convs) > 0
    params = packed.load_model(out).params
    assert not {f"arg:{b.weight.name}" for b in binary_convs} & set(params)
    assert_packed_bits_are_signs(net, params)
    x = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(F32)
    expected = run_original(net, x)
    assert_close(expected, run_runtime(out, x), f"{name} runtime")
    assert_close(expected, run_mxnet(out, x), f"{name} MXNet")


def assert_packed_bits_are_signs(net, params):
    """Every packed weight decodes (numpy, from the layout) to sign(W) of its own binary layer of the
    original net, and every binary layer got one: checked from the bits, not from the converter's report."""
    remaining = {b.weight.name: b.weight.data().asnumpy() for b in bnn.quantized_layers(net) if b.bits == 1}
    words = [v for v in params.values() if v.dtype == np.int64]
    assert len(words) == len(remaining) > 0
    for packed_words in words:
        match = None
        for name, w in remaining.items():
            kernel = tuple(w.shape[2:]) if w.ndim == 4 else (1, 1)
            if packed_words.shape == (w.shape[0],) + kernel + (-(-w.shape[1] // 64),) and \
                    np.array_equal(decode_words(packed_words, w.shape[1]).reshape(w.shape), ref_sign(w)):
                match = name
                break
        assert match is not None, f"packed weight {packed_words.shape} is sign(W) of no binary layer"
        del remaining[match]


def assert_outputs_match_original(net, out, shape, seed, what, excused=None):
    """The packed model (runtime and MXNet) against the original Gluon net, sample by sample.

    ``excused`` ({'runtime': n, 'mxnet': n}, default none): how many samples of each path
    bmx.convert.verify_packed, on these same inputs, traced to a quantizer decision that float
    rounding flipped next to a jump (its excuse rule has its own test below); at most that many
    samples of the path may differ."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(F32)
    expected = run_original(net, x)
    allowed = dict(excused or {})
    for i in range(shape[0]):
        for path, run in (("runtime", run_runtime), ("mxnet", run_mxnet)):
            try:
                assert_close(expected[i:i + 1], run(out, x[i:i + 1]), f"{what} {path}, sample {i}")
            except AssertionError:
                if allowed.get(path, 0) == 0:
                    raise
                allowed[path] -= 1


@pytest.mark.parametrize("config, packed_layers", [(dict(apply_scaling=True, activation="approx_sign"), 23),
                                                   (dict(pad_value=0, clip_threshold=1.3), 23),
                                                   (dict(bits=2, bits_a=2), 0), (dict(bits_a=2), 0)])
def test_zoo_model_with_layer_config_verifies(config, packed_layers, tmp_path):
    """Scaled, zero-padded and multi-bit variants: packed where binary, float32 constants elsewhere."""
    with bmx.binary_layer_config(**config):
        net = bmx.models.get_model("binary_densenet28", **SMALL)
    randomize(net)
    export(net, str(tmp_path), (1, 3, 32, 32))
    out = str(tmp_path / "packed")
    report = convert.binarize(str(tmp_path), out, verify=True, input_size=32)
    assert len(report["layers"]) == packed_layers
    expected_constants = 23 if config.get("apply_scaling") or packed_layers == 0 else 0
    assert len(report["constants"]) == expected_constants
    if packed_layers:
        assert_packed_bits_are_signs(net, packed.load_model(out).params)
    # k-bit activations jump at many points, so a sum rounded another way can flip a level (it did on
    # about 1 sample in 8, with the BLAS and the direct 1x1 convolution alike); such a sample must be
    # one the verification traced to a flip next to a jump.
    verified = convert.verify_packed(os.path.join(str(tmp_path), "model-symbol.json"),
                                     os.path.join(str(tmp_path), "model-0000.params"), out, report, (2, 3, 32, 32),
                                     seed=11)
    assert_outputs_match_original(net, out, (2, 3, 32, 32), 11, str(config),
                                  excused={path: verified[f"{path}_samples_excused"] for path in ("runtime", "mxnet")})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["binary_densenet28", "meliusnet22"])
def test_zoo_model_at_224_verifies(name, tmp_path):
    net = bmx.models.get_model(name)
    randomize(net)
    export(net, str(tmp_path), (1, 3, 224, 224))
    out = str(tmp_path / "packed")
    report = convert.binarize(str(tmp_path), out, verify=True, input_size=224, batch=2)
    v = report["verify"]
    assert v["runtime_samples_excused"] == v["mxnet_samples_excused"] == 0
    assert_packed_bits_are_signs(net, packed.load_model(out).params)
    assert_outputs_match_original(net, out, (2, 3, 224, 224), 12, name)


# ------------------------------------------------------------------ verification, sizes, binarize

def test_verify_checks_every_layer_and_both_paths(tmp_path):
    net = bmx.models.get_model("bdn_poster_8x256", **SMALL)
    randomize(net)
    export(net, str(tmp_path), (1, 3, 32, 32))
    report = convert.binarize(str(tmp_path), str(tmp_path / "packed"), verify=True, input_size=32)
    v = report["verify"]
    assert v["layers_checked_exactly"] == len(report["layers"]) == 7
    assert v["mxnet_max_abs_diff"] <= 1e-3 * v["output_scale"] and v["runtime_max_abs_diff"] <= 1e-3 * v["output_scale"]
    assert v["input_shape"] == [2, 3, 32, 32] and v["runtime_samples_excused"] == v["mxnet_samples_excused"] == 0
    assert json.load(open(tmp_path / "packed" / "model.json"))["packed"]["verified"] == v


def test_rounding_flips_are_excused_only_near_a_jump():
    """A sample whose outputs differ passes only if the first changed quantizer decision had its
    original input within rounding of the jump (0 for a sign, (m + 1/2) / 3 for 2 bits)."""
    rng = np.random.default_rng(0)
    points = [dict(label="layer first", bits=None), dict(label="node 'q' (bmx_quantize_act)", bits=2)]
    outputs = [rng.standard_normal((2, 5)).astype(F32)]
    inputs = [rng.standard_normal((2, 3, 4, 4)).astype(F32), rng.uniform(0, 1, (2, 3, 4, 4)).astype(F32)]

    def check(got_outputs, got_inputs):
        return _check_path("p", outputs + inputs, got_outputs + got_inputs, points, 1e-3, 1e-3, 1e-4)

    assert check(outputs, inputs) == (0.0, 0)
    changed = [outputs[0].copy()]
    changed[0][1] += 1
    sign_flip = [inputs[0].copy(), inputs[1] + 1]  # all after the flip may differ
    inputs[0][1, 0, 0, 0], sign_flip[0][1, 0, 0, 0] = 1e-7, -1e-7
    assert check(changed, sign_flip) == (0.0, 1)
    round_flip = [inputs[0], inputs[1].copy()]
    inputs[1][1, 2, 3, 3], round_flip[1][1, 2, 3, 3] = F32(0.5 / 3 + 1e-7), F32(0.5 / 3 - 1e-7)
    assert check(changed, round_flip) == (0.0, 1)

    sign_flip[0][1, 0, 0, 0], inputs[0][1, 0, 0, 0] = -0.5, 0.5
    with pytest.raises(convert.VerificationError, match=r"1 quantized value\(s\) at layer first .* up to 0.5 from"):
        check(changed, sign_flip)
    inputs[0][1, 0, 0, 0] = -0.5
    with pytest.raises(convert.VerificationError, match=r"p: output 0 differs from the original by up to 1 \(sample 1"):
        check(changed, inputs)
    with pytest.raises(convert.VerificationError, match=r"the input of node 'q' \(bmx_quantize_act\) differs"):
        check(changed, [inputs[0], inputs[1] * 0.5])


def test_verify_names_the_layer_that_differs(tmp_path):
    net = bnn.BinaryConvolution(8, 3, padding=1, in_channels=4)
    randomize(net)
    symbol_file, params_file = export(net, str(tmp_path), (1, 4, 6, 6))
    graph, params, report = convert.convert(symbol_file, params_file)
    key = f"arg:{report['layers'][0]['packed_weight']}"
    params[key] = params[key] ^ np.int64(1)  # flip one weight bit of every tap
    out = str(tmp_path / "bad")
    packed.save_model(out, graph, params, {})
    with pytest.raises(convert.VerificationError, match=r"layer binaryconvolution\d+_qconv2d0 .*differs .* by up to"):
        convert.verify_packed(symbol_file, params_file, out, report, (1, 4, 6, 6))


@pytest.mark.parametrize("stem, size", [("imagenet", 224), ("cifar", 32)])
def test_binary_densenet28_size_is_near_theoretical(stem, size, tmp_path):
    """The packed parameter file is within 10% of bmx.summary's size (1 bit per binary weight)."""
    classes = 1000 if stem == "imagenet" else 10
    net = bmx.models.get_model("binary_densenet28", stem=stem, classes=classes)
    net.initialize()
    symbol_file, params_file = export(net, str(tmp_path), (1, 3, size, size))
    meta = {"config": {"model": "binary_densenet28", "model_kwargs": {"stem": stem}, "classes": classes},
            "preprocessing": {"image_size": size}, "classes": classes}
    _, params, report = convert.convert(symbol_file, params_file, meta)
    sizes = report["sizes"]
    summary = bmx.summary(net, (1, 3, size, size), show=False)
    assert sizes["theoretical_bytes"] == pytest.approx(summary.size_mb * 2 ** 20)
    assert sizes["theoretical_graph_bytes"] == pytest.approx(sizes["theoretical_bytes"])
    assert "bmx.summary" in sizes["theoretical_source"]
    assert sizes["packed_params_bytes"] <= 1.10 * sizes["theoretical_bytes"]
    assert sizes["params_file_bytes"] == os.path.getsize(params_file)
    assert sizes["packed_params_bytes"] < sizes["params_file_bytes"] / 4
    out = str(tmp_path / "packed")
    packed.save_model(out, *convert.convert(symbol_file, params_file)[:2], {})
    assert os.path.getsize(os.path.join(out, "model-0000.params")) == sizes["packed_params_bytes"]


def test_theoretical_size_without_a_model_name_comes_from_the_graph(tmp_path):
    net = bmx.models.get_model("binary_resnet_e18", **SMALL)
    net.initialize()
    _, _, report = convert.convert(*export(net, str(tmp_path), (1, 3, 32, 32)))
    sizes = report["sizes"]
    assert "graph" in sizes["theoretical_source"]
    assert sizes["theoretical_bytes"] == pytest.approx(bmx.summary(net, (1, 3, 32, 32), show=False).size_mb * 2 ** 20)


def test_binarize_takes_the_newest_epoch_and_the_metadata(tmp_path):
    net = bnn.BinaryConvolution(8, 3, padding=1, in_channels=4)
    randomize(net)
    prefix = str(tmp_path / "model")
    bmx.export(net, prefix, epoch=3, input_shape=(1, 4, 6, 6))
    bmx.export(net, prefix, epoch=12, input_shape=(1, 4, 6, 6))
    json.dump({"classes": 8, "preprocessing": {"image_size": 6, "mean": [0, 0, 0], "std": [1, 1, 1]}},
              open(tmp_path / "model.json", "w"))
    out = str(tmp_path.parent / (tmp_path.name + "-packed"))
    report = convert.binarize(str(tmp_path), out)
    assert report["params_file"].endswith("model-0012.params")
    meta = packed.load_model(out).meta
    assert meta["classes"] == 8 and meta["packed"]["format_version"] == 1
    assert meta["packed"]["source_files"][1].endswith("model-0012.params")
    assert convert.binarize(prefix, out, epoch=3, force=True)["params_file"].endswith("model-0003.params")


def test_binarize_refuses_metadata_that_loading_would_refuse(tmp_path):
    net = bnn.BinaryConvolution(8, 3, padding=1, in_channels=4)
    randomize(net)
    bmx.export(net, str(tmp_path / "model"), input_shape=(1, 4, 6, 6))
    json.dump({"preprocessing": {"image_size": 6, "mean": [0, 0, 0], "std": [1, 0, 1]}},
              open(tmp_path / "model.json", "w"))
    out = tmp_path.parent / (tmp_path.name + "-packed")
    with pytest.raises(PackedFormatError, match=r"-packed/model.json: preprocessing.std must be positive"):
        convert.binarize(str(tmp_path), str(out))
    assert not out.exists()


def test_binarize_refuses_existing_output_without_force(tmp_path):
    symbol_file, params_file = _small_files(tmp_path)
    out = tmp_path / "packed"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(convert.ConvertError, match=r"packed exists \(pass --force"):
        convert.binarize(str(tmp_path / "model"), str(out))
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(FileExistsError, match=r"packed is not a packed model directory.*also holds keep.txt"):
        convert.binarize(str(tmp_path / "model"), str(out), force=True)
    assert os.listdir(out) == ["keep.txt"]
    os.remove(out / "keep.txt")
    convert.binarize(str(tmp_path / "model"), str(out), force=True)
    convert.binarize(str(tmp_path / "model"), str(out), force=True)  # a packed model is replaced
    assert sorted(os.listdir(out)) == ["model-0000.params", "model-symbol.json", "model.json"]
    with pytest.raises(convert.ConvertError, match="would replace the input"):
        convert.binarize(str(tmp_path / "model"), str(tmp_path), force=True)


def test_binarize_writes_nothing_when_verification_fails(tmp_path, monkeypatch):
    files = _small_files(tmp_path)

    def fail(*args, **kwargs):
        raise convert.VerificationError("layer x differs")

    monkeypatch.setattr(convert.pipeline, "verify_packed", fail)
    out = tmp_path / "packed"
    with pytest.raises(convert.VerificationError, match="layer x differs"):
        convert.binarize(files, str(out), verify=True)
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["model-0000.params", "model-symbol.json"]

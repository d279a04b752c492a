"""bmx.convert.int8: weight and input scales against numpy, deterministic calibration, a small zoo
model's int8 layers against a plain numpy reference of the quantized math, the shipped CIFAR-10
model's held-out accuracy with int8 full-precision layers (slow)."""
import copy
import os

import mxnet as mx
import numpy as np
import pytest

import bmx
from bmx import convert, datafiles, images, packed, runtime
from bmx.convert import int8
from bmx.symbol_json import parse_tuple
from conftest import image_folder, pad_nchw, ref_conv2d

F32 = np.float32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAINED = os.path.join(ROOT, "example", "pretrained", "bdn28-cifar10")
CIFAR10 = "/work/shared/data/cifar10/train.rec"
PREP = {"image_size": 32, "mean": [120, 115, 100], "std": [60, 60, 60], "resize": 0}


def test_weight_scales_match_numpy():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 3, 3)).astype(F32)
    w[2] = 0
    w[3, 0, 0, 0] = -7  # the largest |w| is negative
    wq, scale = int8.weight_scales(w)
    assert wq.dtype == np.int8 and scale.dtype == F32
    for o in range(5):
        peak = max(abs(float(v)) for v in w[o].ravel())
        expected = F32(peak / 127) if peak else F32(1)
        assert scale[o] == expected
        for v, q in zip(w[o].ravel(), wq[o].ravel()):
            ratio = float(v) / float(expected)
            nearest = round(ratio)  # Python rounds halves to even
            assert q == max(-127, min(127, nearest))
    assert wq[3, 0, 0, 0] == -127 and not wq[2].any()


@pytest.mark.parametrize("percentile", [100.0, 99.9, 97.5, 50.0])
def test_the_input_peak_is_numpys_percentile_over_all_batches(percentile):
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((3, 4, 5, 5)).astype(F32) * (i + 1) for i in range(4)]
    peak = int8._Peak(percentile, sum(b.size for b in batches))
    for b in batches:
        peak.add(b)
    everything = np.abs(np.concatenate([b.ravel() for b in batches]))
    assert peak.value() == np.percentile(everything, percentile, method="higher")
    assert int8.activation_scale(peak.value()) == F32(peak.value() / 127)
    assert int8.activation_scale(0.0) == 1


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    """A small BinaryDenseNet (cifar stem, 32x32), packed in float, with random BatchNorm statistics."""
    tmp = tmp_path_factory.mktemp("zoo")
    net = bmx.models.get_model("binary_densenet28", stem="cifar", classes=10, layers=(1, 1), reduction=(2,),
                               growth_rate=32, init_features=32)
    mx.random.seed(0)
    net.initialize(mx.init.Xavier(magnitude=2))
    rng = np.random.default_rng(0)
    for name, p in net.collect_params().items():
        if name.endswith(("running_mean", "beta")):
            p.set_data(mx.nd.array(rng.uniform(-0.5, 0.5, p.shape)))
        elif name.endswith("running_var"):
            p.set_data(mx.nd.array(rng.uniform(0.5, 2.0, p.shape)))
    bmx.export(net, str(tmp / "model"), input_shape=(1, 3, 32, 32))
    convert.binarize(str(tmp / "model"), str(tmp / "float"), epoch=0, meta={"classes": 10, "preprocessing": PREP})
    return packed.load_model(str(tmp / "float")), image_folder(tmp / "images", count=6)


def test_zoo_model_int8_layers_compute_the_quantized_math(float_model, tmp_path):
    model, data = float_model
    layers = int8.int8_layers(model.graph, model.params)
    ops = {n["name"]: n["op"] for n in model.graph["nodes"]}
    assert [ops[name] for name in layers] == ["Convolution", "Convolution", "FullyConnected"]
    graph, params, meta = int8.quantize_packed(model, data, count=12)
    left = {n["op"] for n in graph["nodes"]}
    assert "bmx_xnor_conv2d" in left and not left & {"Convolution", "FullyConnected"}
    packed.save_model(tmp_path / "int8", graph, params, meta)
    assert packed.load_model(tmp_path / "int8").meta["packed"]["format_version"] == 2

    # all 12 images calibrate: the input scale is max |input| over them / 127, from the float model
    x = np.concatenate([images.evaluation_input(read()[0], PREP) for read in datafiles.image_readers(data)])
    nodes = {n["name"]: n for n in model.graph["nodes"]}
    probe = copy.deepcopy(model.graph)
    probe["heads"] += [nodes[name]["inputs"][0] for name in layers]
    float_inputs = runtime.Model(packed.PackedModel(probe, model.params, model.meta))(x)[1:]

    int8_nodes = {n["name"]: n for n in graph["nodes"]}
    probe = copy.deepcopy(graph)
    probe["heads"] += [int8_nodes[name]["inputs"][0] for name in layers] + [[graph["nodes"].index(int8_nodes[name]),
                                                                             0, 0] for name in layers]
    got = runtime.Model(packed.PackedModel(probe, params, meta))(x)[1:]
    for i, name in enumerate(layers):
        node, float_node = int8_nodes[name], nodes[name]
        w = model.params[f"arg:{model.graph['nodes'][float_node['inputs'][1][0]]['name']}"].astype(np.float64)
        value = {k: params[f"arg:{graph['nodes'][e[0]]['name']}"] for k, e in
                 zip(("weight", "weight_scale", "input_scale"), node["inputs"][1:4])}
        x_scale = F32(np.abs(float_inputs[i]).max() / 127)
        assert value["input_scale"][0] == x_scale, name
        w_scale = (np.abs(w.reshape(len(w), -1)).max(axis=1) / 127).astype(F32)
        np.testing.assert_array_equal(value["weight_scale"], w_scale)
        wq = np.clip(np.round(w / w_scale.astype(np.float64).reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127)
        np.testing.assert_array_equal(value["weight"], wq)

        inp, out = got[i], got[len(layers) + i]
        xq = np.clip(np.round(inp / x_scale), -127, 127)
        if w.ndim == 4:
            a = node["attrs"]
            pad, stride = parse_tuple(a.get("pad", "(0, 0)")), parse_tuple(a.get("stride", "(1, 1)"))
            acc = ref_conv2d(pad_nchw(xq, pad, 0), wq, stride, (1, 1), 1)  # float64 on integers: exact
            shape = (-1, 1, 1)
        else:
            acc, shape = xq.reshape(len(xq), -1) @ wq.T, (-1,)
        bias = params[f"arg:{graph['nodes'][node['inputs'][4][0]]['name']}"] if len(node["inputs"]) > 4 else 0
        want = acc * (np.float64(x_scale) * w_scale).reshape(shape) + np.reshape(bias, shape)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=name)


def test_calibration_is_deterministic(float_model, tmp_path):
    model, data = float_model
    written = []
    for run in ("a", "b"):
        graph, params, meta = int8.quantize_packed(model, data, count=5, verify=True)
        packed.save_model(tmp_path / run, graph, params, meta)
        written.append([open(tmp_path / run / f, "rb").read() for f in (packed.PARAMS_FILE, packed.SYMBOL_FILE)])
    assert written[0] == written[1]
    assert meta["packed"]["int8"]["calibration"]["images"] == 5 and meta["packed"]["int8"]["verified"]["images"] == 5
    assert meta["packed"]["int8"]["verified"]["disjoint_from_calibration"]  # 5 + 5 of 12 images
    _, _, meta = int8.quantize_packed(model, data, count=7, verify=True)
    assert not meta["packed"]["int8"]["verified"]["disjoint_from_calibration"]  # 7 + 7 > 12


def test_mxnet_refuses_an_int8_model(float_model, tmp_path):
    model, data = float_model
    packed.save_model(tmp_path / "int8", *int8.quantize_packed(model, data, count=2))
    with pytest.raises(bmx.ModelFileError, match="has int8 layers .* which MXNet does not run: load it with "
                                                 "bmx.runtime.load"):
        bmx.imports(str(tmp_path / "int8" / packed.SYMBOL_FILE), str(tmp_path / "int8" / packed.PARAMS_FILE))


@pytest.mark.skipif(not os.path.isfile(CIFAR10), reason=f"{CIFAR10} not found")
def test_calibration_images_leave_the_holdout_out():
    meta = packed.load_model(PRETRAINED).meta
    chosen, others, left_out = int8.select_images(CIFAR10, 300, meta)
    held = datafiles.heldout_indices(50000, 5000, 0)
    assert left_out == 5000 and len(chosen) == len(others) == 300
    assert not np.intersect1d(chosen, held).size and not np.intersect1d(others, held).size
    assert not np.intersect1d(chosen, others).size
    assert chosen.min() < 500 and chosen.max() > 49000  # spread over the file
    _, _, left_out = int8.select_images(CIFAR10, 3, {})  # not known as the training file: nothing left out
    assert left_out == 0


@pytest.mark.parametrize("count", [0, -1, 2.5, True])
def test_calibration_image_count_is_validated(count, tmp_path):
    with pytest.raises(convert.ConvertError, match="--calibration-images must be a positive integer"):
        int8.select_images(str(tmp_path), count)


def test_calibration_data_must_be_a_rec_file_or_folders(tmp_path):
    with pytest.raises(convert.ConvertError, match="--calibrate .*images.txt: expected a .rec file"):
        int8.select_images(str(tmp_path / "images.txt"), 4)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(CIFAR10), reason=f"{CIFAR10} not found")
def test_shipped_cifar10_model_loses_at_most_0_3_points_with_int8_layers():
    """Calibrated on 256 training images outside the hold-out, scored on the 5,000 held-out images."""
    model = packed.load_model(PRETRAINED)
    graph, params, meta = int8.quantize_packed(model, CIFAR10)
    assert meta["packed"]["int8"]["calibration"]["holdout_images_left_out"] == 5000
    held = datafiles.heldout_indices(50000, 5000, 0)
    float_model = runtime.Model(model)
    int8_model = runtime.Model(packed.PackedModel(graph, params, meta))
    scores = int8.agreement(float_model, int8_model, CIFAR10, held, model.meta["preprocessing"])
    print(f"held-out top-1: float {100 * scores['float_top1']:.2f} %, int8 {100 * scores['int8_top1']:.2f} %, "
          f"agreement {100 * scores['top1_agreement']:.2f} %")
    assert scores["float_top1"] - scores["int8_top1"] <= 0.003

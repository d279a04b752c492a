"""bmx.summary and tools/model_summary.py: the published size and operation columns, hand counts,
and the counting rules (docs/published.md, section 3)."""
import importlib.util
import json
import os
import subprocess
import sys

import mxnet as mx
import pytest
from mxnet.gluon import nn

import bmx
from bmx.models import get_model, list_models
from bmx.nn import BinaryConvolution, QDense

MB = 2 ** 20
CLI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "model_summary.py")

# docs/published.md, sections 2 and 3 (the poster's table for the bdn_poster rows).
PUBLISHED_SIZE_MB = {
    "binary_resnet_e18": 4.00, "binary_densenet28": 4.04, "binary_densenet37": 5.13, "binary_densenet45": 7.35,
    "meliusnet22": 3.89, "meliusnet29": 5.08, "bdn_poster_8x256": 3.31, "bdn_poster_16x128": 3.39,
    "bdn_poster_32x64": 3.45, "bdn_poster_16x128_fpds": 3.03, "bdn_poster_32x64_fpds": 3.08,
}
PUBLISHED_OPS = {("binary_densenet28", "imagenet"): 2.58e8, ("binary_densenet37", "imagenet"): 2.70e8,
                 ("binary_densenet28", "grouped"): 2.09e8, ("binary_densenet37", "grouped"): 2.20e8}
PUBLISHED_BINARY_MACS = {"binary_densenet28": 3.59e9, "binary_densenet37": 4.51e9, "binary_densenet45": 6.43e9}


def count(name, stem="imagenet", **kwargs):
    return bmx.summary(get_model(name, stem=stem, **kwargs), (1, 3, 224, 224), show=False)


@pytest.mark.parametrize("name", sorted(PUBLISHED_SIZE_MB))
def test_published_sizes_to_two_decimals(name):
    assert f"{count(name).size_mb:.2f}" == f"{PUBLISHED_SIZE_MB[name]:.2f}"


@pytest.mark.parametrize("name, stem", sorted(PUBLISHED_OPS))
def test_published_operations_within_one_percent(name, stem):
    assert count(name, stem).ops == pytest.approx(PUBLISHED_OPS[name, stem], rel=0.01)


@pytest.mark.parametrize("name", sorted(PUBLISHED_BINARY_MACS))
def test_published_binary_macs_within_one_percent(name):
    assert count(name).binary_macs == pytest.approx(PUBLISHED_BINARY_MACS[name], rel=0.01)


def test_resnet_e18_full_precision_size():
    s = count("binary_resnet_e18")
    assert f"{s.size_mb_fp32:.2f}" == "44.59"
    assert s.params == 11_689_512   # exactly ResNet-18's parameter count, BN running stats excluded


def test_hand_count_of_a_tiny_model():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, padding=1, use_bias=False, in_channels=3),
            nn.BatchNorm(in_channels=8),
            BinaryConvolution(16, 3, strides=2, padding=1, in_channels=8),
            nn.GlobalAvgPool2D(),
            nn.Dense(10, in_units=16))
    s = bmx.summary(net, (3, 8, 8), show=False)
    conv, bn, binary, dense = 8 * 3 * 9, 2 * 8, 16 * 8 * 9, 16 * 10 + 10
    assert [row.params for row in s.layers] == [conv, bn, binary, dense]
    assert [row.kind for row in s.layers] == ["float", "float", "binary", "float"]
    assert s.layers[2].output_shape == (1, 16, 4, 4)
    conv_macs, binary_macs, dense_macs = 8 * 8 * 8 * (3 * 9), 4 * 4 * 16 * (8 * 9), 16 * 10
    assert [row.macs for row in s.layers] == [conv_macs, 0, binary_macs, dense_macs]
    assert (s.params, s.params_binary) == (conv + bn + binary + dense, binary)
    assert (s.binary_macs, s.float_macs) == (binary_macs, conv_macs + dense_macs)
    assert s.ops == binary_macs / 64 + conv_macs + dense_macs
    assert s.size_mb == (binary + 32 * (conv + bn + dense)) / 8 / MB
    assert s.size_mb_fp32 == 4 * s.params / MB


def densenet_count(layers, growth, reductions, downsample="fp", init=64, classes=1000, hw=56):
    """Independent count of a BinaryDenseNet with the 7x7 stem: (size MB, binary MACs, float MACs)."""
    float_params = 3 * init * 49 + 2 * init
    float_macs = (hw * 2) ** 2 * init * 3 * 49
    binary_params = binary_macs = 0
    c = init
    for i, n in enumerate(layers):
        for _ in range(n):
            float_params += 2 * c
            binary_params += 9 * c * growth
            binary_macs += hw * hw * growth * 9 * c
            c += growth
        if i < len(layers) - 1:
            out = round(c / reductions[i] / 32) * 32
            float_params += 2 * c
            if downsample == "fp":             # BN -> MaxPool -> ReLU -> conv: the conv runs pooled
                hw //= 2
                float_params += c * out
                float_macs += hw * hw * c * out
            else:                               # BN -> sign -> binary conv -> AvgPool
                binary_params += c * out
                binary_macs += hw * hw * c * out
                hw //= 2
            c = out
    float_params += 2 * c + c * classes + classes
    float_macs += c * classes
    return (binary_params / 8 + 4 * float_params) / MB, binary_macs, float_macs


@pytest.mark.parametrize("name, kwargs, expected", [
    ("binary_densenet28", {}, ((6, 6, 6, 5), 64, (2.7, 2.7, 2.2))),
    ("binary_densenet45", {}, ((6, 12, 14, 8), 64, (2.7, 3.3, 4))),
    ("binary_densenet28", dict(layers=(3, 5, 2), growth_rate=96, reduction=(1.7, 2.5), classes=100),
     ((3, 5, 2), 96, (1.7, 2.5))),
    ("bdn_poster_16x128", {}, ((2, 2, 2, 2), 128, (1, 1.4, 1.4), "binary")),
])
def test_summary_matches_an_independent_count(name, kwargs, expected):
    s = count(name, **kwargs)
    size, binary_macs, float_macs = densenet_count(*expected, classes=kwargs.get("classes", 1000))
    assert s.size_mb == pytest.approx(size, rel=1e-12)
    assert (s.binary_macs, s.float_macs) == (binary_macs, float_macs)


def test_full_precision_twin_is_all_float():
    s = count("binary_densenet28", binary=False)
    assert s.params_binary == 0 and s.binary_macs == 0
    assert s.size_mb == s.size_mb_fp32
    binary = count("binary_densenet28")
    assert s.params == binary.params
    assert s.float_macs == binary.float_macs + binary.binary_macs


def test_k_bit_layers_count_k_bits_and_bit_serial_macs():
    binary = count("bdn_poster_8x256")
    with bmx.binary_layer_config(bits=2, bits_a=2):
        two_bit = count("bdn_poster_8x256")
    assert two_bit.params_binary == binary.params_binary
    assert two_bit.binary_macs == 4 * binary.binary_macs
    assert two_bit.size_mb - binary.size_mb == pytest.approx(binary.params_binary / 8 / MB)
    assert {row.kind for row in two_bit.layers} == {"float", "W2A2"}


def test_bare_quantized_dense_counts_its_weight_bits():
    net = nn.HybridSequential()
    net.add(QDense(10, in_units=64, bits=1), QDense(10, in_units=10, bits=4))
    s = bmx.summary(net, (1, 64), show=False)
    assert (s.params_binary, s.binary_macs) == (640 + 100, 640 + 4 * 100)
    assert s.size_mb == (640 + 4 * 100) / 8 / MB


def test_deferred_shapes_uninitialized_and_hybridized_nets():
    def build(known):
        net = nn.HybridSequential()
        net.add(nn.Conv2D(16, 3, padding=1, in_channels=3 if known else 0),
                nn.BatchNorm(in_channels=16 if known else 0),
                BinaryConvolution(32, 3, padding=1, in_channels=16 if known else 0),
                nn.GlobalAvgPool2D(), nn.Dense(10, in_units=32 if known else 0))
        return net

    reference = bmx.summary(build(True), (3, 16, 16), show=False)
    deferred = bmx.summary(build(False), (3, 16, 16), show=False)
    assert deferred.to_dict() == reference.to_dict()
    net = build(False)
    net.initialize()
    net.hybridize()
    net(mx.nd.ones((2, 3, 16, 16)))
    assert bmx.summary(net, (2, 3, 16, 16), show=False).to_dict() == reference.to_dict()


def test_counts_are_per_image_whatever_the_batch():
    net = get_model("binary_resnet_e18", stem="cifar", classes=10)
    per_image = bmx.summary(net, (3, 32, 32), show=False)
    assert bmx.summary(net, (8, 3, 32, 32), show=False).to_dict() == per_image.to_dict()
    assert per_image.layers[0].output_shape == (1, 64, 16, 16)


def test_shared_parameters_are_counted_once():
    dense = nn.Dense(8, in_units=8)
    net = nn.HybridSequential()
    net.add(dense, dense)
    s = bmx.summary(net, (1, 8), show=False)
    assert s.params == 72
    assert s.float_macs == 2 * 64


def test_summary_prints_the_table(capsys):
    s = bmx.summary(get_model("binary_densenet28"), (1, 3, 224, 224))
    printed = capsys.readouterr().out
    assert printed.strip() == s.table().strip()
    assert "Size: 4.04 MB" in printed
    assert "stage1_layer0_conv" in printed and "BinaryConvolution" in printed
    assert len(s.layers) == 23 * 2 + 3 * 2 + 2 + 2   # dense layers (BN, conv), transitions, stem, head
    assert s.layers[-1].name == "output" and s.layers[-1].output_shape == (1, 1000)


def test_bad_input_shape():
    with pytest.raises(ValueError):
        bmx.summary(get_model("binary_densenet28"), (224, 224), show=False)
    with pytest.raises(ValueError):
        bmx.summary(get_model("binary_densenet28"), (1, 4, 224, 224), show=False)


def run_cli(*args):
    return subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, timeout=300)


def load_cli():
    spec = importlib.util.spec_from_file_location("model_summary", CLI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_json(capsys):
    cli = load_cli()
    assert cli.main(["--model", "binary_densenet28", "--json"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert set(values) == {"size_mb", "size_mb_fp32", "params", "params_binary", "binary_macs", "float_macs",
                           "ops"}
    assert round(values["size_mb"], 2) == 4.04
    assert values["ops"] == pytest.approx(2.58e8, rel=0.01)
    assert values == pytest.approx(count("binary_densenet28").to_dict())
    assert cli.main(["--model", "binary_densenet37", "--stem", "grouped", "--json"]) == 0
    grouped = json.loads(capsys.readouterr().out)
    assert grouped["ops"] == pytest.approx(2.20e8, rel=0.01)


@pytest.mark.slow
def test_cli_unknown_model_fails_clearly():
    result = run_cli("--model", "binary_densenet_28")
    assert result.returncode != 0
    assert "unknown model" in result.stderr and "binary_densenet28" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_all_reproduces_the_published_table():
    result = run_cli("--all")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in list_models():
        assert any(line.startswith(name + " ") for line in lines), name
    assert "MISMATCH" not in result.stdout
    assert sum(line.rstrip().endswith(" ok") for line in lines) == 13
    assert len([line for line in lines if " grouped " in line]) == 2


def test_cli_table_list_and_float_twin(capsys):
    cli = load_cli()
    assert cli.main(["--list"]) == 0
    assert capsys.readouterr().out.split() == list_models()
    assert cli.main(["--model", "meliusnet22", "--stem", "cifar", "--float"]) == 0
    out = capsys.readouterr().out
    assert "full-precision twin" in out and "Input: (1, 3, 32, 32)" in out
    assert "binary" not in out.split("Input:")[1].split("Params:")[0]

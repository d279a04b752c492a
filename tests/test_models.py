"""The model zoo: names, architectures (channel counts, precision of each layer), knobs, forward
shapes, hybridization, export without a forward pass, and reload."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import bmx
from bmx.models import get_model, list_models
from bmx.models.densenet import DenseLayer, transition_width
from bmx.models.meliusnet import ImprovementLayer
from bmx.models.resnet_e import ResidualUnit
from bmx.nn import BinaryConvolution, QConv2D, QDense
from conftest import pad_nchw, ref_conv2d

ISSUE_NAMES = {
    "binary_densenet28", "binary_densenet37", "binary_densenet37_dilated", "binary_densenet45",
    "meliusnet22", "meliusnet29", "meliusnet42", "meliusnet59", "binary_resnet_e18", "binary_resnet_e34",
    "bdn_poster_8x256", "bdn_poster_16x128", "bdn_poster_32x64", "bdn_poster_16x128_fpds",
    "bdn_poster_32x64_fpds",
}
# 224x224 forwards of these take over a second each on 2 cores.
HEAVY = {"meliusnet42", "meliusnet59"}
POSTER_BINARY_TRANSITIONS = {"bdn_poster_8x256", "bdn_poster_16x128", "bdn_poster_32x64"}


def blocks(block):
    yield block
    for child in block._children.values():
        yield from blocks(child)


def param_shapes(net):
    return sorted(p.shape for p in net.collect_params().values())


def image(size, batch=1, seed=0):
    return mx.nd.array(np.random.RandomState(seed).uniform(-1, 1, (batch, 3, size, size)).astype("float32"))


def test_list_models_is_the_issues_zoo():
    assert set(list_models()) == ISSUE_NAMES
    assert len(list_models()) == len(ISSUE_NAMES)


def test_alias_builds_binary_densenet28():
    alias, net = get_model("binary_densenet"), get_model("binary_densenet28")
    assert type(alias) is type(net)
    assert alias.stage_channels == net.stage_channels
    assert param_shapes(alias) == param_shapes(net)


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="binary_densenet28") as info:
        get_model("binary_densenet29")
    assert "unknown model" in str(info.value)
    with pytest.raises(ValueError, match="meliusnet22"):
        get_model("meliusnet_22")


@pytest.mark.parametrize("name, stages", [
    # stage outputs: 64 + n*64, then round(C / r / 32) * 32 at each transition (docs/published.md, section 2)
    ("binary_densenet28", [448, 544, 576, 576]),     # 448/2.7 -> 160, 544/2.7 -> 192, 576/2.2 -> 256
    ("binary_densenet37", [448, 640, 960, 640]),     # 448/3.3 -> 128, 640/3.3 -> 192, 960/4 -> 256
    ("binary_densenet37_dilated", [448, 640, 960, 640]),
    ("binary_densenet45", [448, 928, 1184, 800]),    # -> 160, 288, 288
    ("meliusnet22", [320, 480, 480, 512]),           # transitions 160, 224, 256
    ("meliusnet29", [320, 512, 704, 640]),           # transitions 128, 192, 256
    ("meliusnet42", [384, 672, 1152, 1056]),         # transitions 160, 256, 416
    ("meliusnet59", [448, 960, 1856, 1312]),         # transitions 192, 320, 544
    ("bdn_poster_8x256", [320, 576, 672, 736]),      # reduction 1, 1.4, 1.4: -> 320, 416, 480
    ("bdn_poster_16x128_fpds", [320, 416, 448, 480]),  # reduction 2: -> 160, 192 (208 rounds to even), 224
    ("binary_resnet_e18", [64, 128, 256, 512]),
])
def test_stage_channels(name, stages):
    net = get_model(name)
    assert net.stage_channels == stages
    assert net.num_features == stages[-1]


def test_final_channels_of_the_binary_densenets():
    assert [get_model(f"binary_densenet{n}").num_features for n in (28, 37, 45)] == [576, 640, 800]


def test_transition_width_rounds_halves_to_even():
    assert transition_width(448, 2.7) == 160
    assert transition_width(960, 4) == 256      # 7.5 -> 8
    assert transition_width(416, 2) == 192      # 6.5 -> 6
    assert transition_width(672, 1.4) == 480
    with pytest.raises(ValueError):
        transition_width(40, 4)


@pytest.mark.parametrize("name", sorted(ISSUE_NAMES))
def test_precision_of_every_layer(name):
    """Binary: every 3x3 conv of the body; float: first conv(s), 1x1 downsampling, BN, last Dense."""
    net = get_model(name)
    binary_1x1 = name in POSTER_BINARY_TRANSITIONS
    plain_convs, denses = [], []
    wrapped = {id(b.qconv) for b in blocks(net) if isinstance(b, BinaryConvolution)}
    for block in blocks(net):
        assert not isinstance(block, QDense)
        if isinstance(block, BinaryConvolution):
            conv = block.qconv
            assert conv.bits == 1 and block.qact.bits == 1
            assert conv.config.pad_value == -1
            if conv.kernel_size == (1, 1):
                assert binary_1x1 and "transition" in block.name
            else:
                assert conv.kernel_size == (3, 3)
        elif isinstance(block, QConv2D) and id(block) not in wrapped:
            pytest.fail(f"{block.name}: a quantized conv outside a BinaryConvolution")
        elif isinstance(block, nn.Conv2D):
            plain_convs.append(block)
        elif isinstance(block, nn.Dense):
            denses.append(block)
    assert [d.name for d in denses] == [net.output.name]
    for conv in plain_convs:
        assert "stem" in conv.name or conv._kwargs["kernel"] == (1, 1), conv.name
    downsampling = [c for c in plain_convs if "stem" not in c.name]
    assert (not downsampling) == binary_1x1


@pytest.mark.parametrize("name", sorted(ISSUE_NAMES))
def test_full_precision_twin_has_the_same_parameter_shapes(name):
    binary, twin = get_model(name), get_model(name, binary=False)
    assert bmx.nn.quantized_layers(twin) == []
    assert not any(isinstance(b, BinaryConvolution) for b in blocks(twin))
    assert param_shapes(twin) == param_shapes(binary)


def test_every_parameter_shape_is_known_at_construction():
    for name in list_models():
        for p in get_model(name).collect_params().values():
            assert p.shape and all(d > 0 for d in p.shape), (name, p.name, p.shape)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
                                  for n in sorted(ISSUE_NAMES)])
def test_forward_224(name):
    net = get_model(name)
    net.initialize()
    out = net(image(224))
    assert out.shape == (1, 1000)
    assert np.isfinite(out.asnumpy()).all()


@pytest.mark.parametrize("name", sorted(ISSUE_NAMES))
def test_forward_cifar_stem_32(name):
    net = get_model(name, stem="cifar", classes=10)
    net.initialize()
    net.hybridize()
    out = net(image(32, batch=2))
    assert out.shape == (2, 10)
    assert np.isfinite(out.asnumpy()).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ISSUE_NAMES))
def test_forward_224_full_precision_twin(name):
    net = get_model(name, binary=False)
    net.initialize()
    assert net(image(224)).shape == (1, 1000)


@pytest.mark.parametrize("stem, size, spatial", [("imagenet", 224, 56), ("grouped", 224, 56), ("cifar", 32, 16),
                                                 ("thumbnail", 32, 32)])
def test_stems(stem, size, spatial):
    net = get_model("binary_densenet28", stem=stem, classes=10, layers=(1, 1, 1, 1))
    net.initialize()
    stem_block = net.features[0]
    assert stem_block(image(size)).shape == (1, 64, spatial, spatial)
    assert net(image(size)).shape == (1, 10)


def test_dilated_variant_keeps_28x28():
    net = get_model("binary_densenet37_dilated")
    net.initialize()
    body = nn.HybridSequential()
    for block in list(net.features._children.values())[:-1]:
        body.add(block)
    assert body(image(224)).shape == (1, 640, 28, 28)
    dilations = {b.qconv.dilation for b in blocks(net) if isinstance(b, BinaryConvolution)}
    assert dilations == {(1, 1), (2, 2), (4, 4)}


def test_hybridized_output_equals_imperative():
    net = get_model("meliusnet22", stem="cifar", classes=10)
    net.initialize(mx.init.Xavier(magnitude=2))
    x = image(32, batch=2)
    imperative = net(x).asnumpy()
    net.hybridize()
    np.testing.assert_allclose(net(x).asnumpy(), imperative, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, knobs", [
    ("binary_densenet28", {}),
    ("binary_densenet37_dilated", dict(layers=(1, 2, 2, 1))),
    ("meliusnet22", dict(layers=(1, 1, 1, 1))),
    ("binary_resnet_e18", dict(channels=(32, 64, 128, 256), init_features=32)),
    ("bdn_poster_8x256", dict(growth_rate=64)),
    ("bdn_poster_16x128_fpds", dict(binary=False)),
])
def test_export_right_after_initialize_and_reload(tmp_path, name, knobs):
    net = get_model(name, stem="cifar", classes=10, **knobs)
    net.initialize(mx.init.Xavier(magnitude=2))
    symbol_file, params_file = bmx.export(net, str(tmp_path / name))
    loaded = bmx.imports(symbol_file, params_file)
    x = image(32, batch=2)
    np.testing.assert_allclose(loaded(x).asnumpy(), net(x).asnumpy(), rtol=1e-4, atol=1e-4)


def test_clip_threshold_knob_and_config_default():
    net = get_model("meliusnet22", clip_threshold=1.3)
    convs = [b for b in blocks(net) if isinstance(b, BinaryConvolution)]
    assert convs and all(b.qact.config.clip_threshold == 1.3 for b in convs)
    with bmx.binary_layer_config(clip_threshold=0.75):
        net = get_model("bdn_poster_8x256")
    convs = [b for b in blocks(net) if isinstance(b, BinaryConvolution)]
    assert len(convs) == 4 + 3 and all(b.qact.config.clip_threshold == 0.75 for b in convs)


def test_family_knobs_make_new_variants():
    net = get_model("binary_densenet28", layers=(2, 3), growth_rate=32, init_features=32, reduction=(2,),
                    stem="cifar", classes=10)
    # 32 + 2*32 = 96 -> 96/2 = 48 -> round(1.5)*32 = 64; 64 + 3*32 = 160
    assert net.stage_channels == [96, 160]
    net.initialize()
    assert net(image(32)).shape == (1, 10)
    melius = get_model("meliusnet22", reduction=(2, 2, 2))
    assert melius.stage_channels == [320, 480, 512, 512]   # 320 -> 160, 480 -> 240 -> 256 (7.5 -> 8), 512 -> 256
    widths = get_model("binary_densenet28", transition_channels=(96, 128, 160))
    assert widths.stage_channels == [448, 480, 512, 480]


def test_resnet_e_binary_shortcut_knob():
    fp = get_model("binary_resnet_e18")
    binary = get_model("binary_resnet_e18", downsample="avg_pool,bin_conv,bn")
    shortcut_convs = [b for b in blocks(binary) if isinstance(b, BinaryConvolution) and "shortcut" in b.name]
    assert len(shortcut_convs) == 3 and all(b.qconv.kernel_size == (1, 1) for b in shortcut_convs)
    assert len(bmx.nn.quantized_layers(binary)) == len(bmx.nn.quantized_layers(fp)) + 3


@pytest.mark.parametrize("kwargs", [
    dict(stem="imagenet_small"),
    dict(downsample="bn,max_pool,gelu,fp_conv"),
    dict(downsample="bn,fp_conv,fp_conv"),
    dict(downsample="bn,max_pool"),
    dict(reduction=(2.7, 2.7)),
    dict(reduction=(2, 2, 2), transition_channels=(64, 64, 64)),
    dict(layers=(6, 0, 6, 5)),
    dict(dilation=(1, 2)),
    dict(stem="grouped", init_features=40),
])
def test_invalid_knobs_raise(kwargs):
    with pytest.raises(ValueError):
        bmx.models.BinaryDenseNet(**{"layers": (6, 6, 6, 5), "reduction": (2.7, 2.7, 2.2), **kwargs})


def test_dense_layer_concatenates_its_input():
    layer = DenseLayer(16, 8, binary=False)
    layer.initialize()
    x = mx.nd.random.normal(shape=(2, 16, 5, 5))
    y = layer(x)
    assert y.shape == (2, 24, 5, 5)
    np.testing.assert_array_equal(y[:, :16].asnumpy(), x.asnumpy())


def _bn_inference(x, bn):
    g, b, m, v = (bn.params.get(k).data().asnumpy().astype(np.float64)
                  for k in ("gamma", "beta", "running_mean", "running_var"))
    shape = (1, -1, 1, 1)
    return (x - m.reshape(shape)) / np.sqrt(v.reshape(shape) + 1e-5) * g.reshape(shape) + b.reshape(shape)


def _np_sign(x):
    return np.where(x >= 0, 1.0, -1.0)


def test_dense_layer_bottleneck_matches_numpy():
    layer = DenseLayer(16, 8, bottleneck=2, prefix="d_")
    layer.initialize(mx.init.Xavier())
    rng = np.random.RandomState(3)
    for bn in (layer.bn, layer.bottleneck[1]):
        for name in ("gamma", "beta", "running_mean", "running_var"):
            p = bn.params.get(name)
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape) if name in ("gamma", "running_var")
                                   else rng.uniform(-0.3, 0.3, p.shape)))
    x = rng.standard_normal((2, 16, 6, 6)).astype(np.float32)
    y = layer(mx.nd.array(x)).asnumpy()
    w1 = _np_sign(layer.bottleneck[0].qconv.weight.data().asnumpy())
    w3 = _np_sign(layer.conv.qconv.weight.data().asnumpy())
    assert w1.shape == (16, 16, 1, 1) and w3.shape == (8, 16, 3, 3)
    h = ref_conv2d(_np_sign(_bn_inference(x, layer.bn)), w1, (1, 1), (1, 1), 1)
    h = _bn_inference(h, layer.bottleneck[1])
    new = ref_conv2d(pad_nchw(_np_sign(h), (1, 1), -1.0), w3, (1, 1), (1, 1), 1)
    assert y.shape == (2, 24, 6, 6)
    np.testing.assert_array_equal(y[:, :16], x)
    np.testing.assert_allclose(y[:, 16:], new, rtol=0, atol=1e-4)


def test_bottleneck_knob_builds_densenet_bc_layers():
    plain = get_model("binary_densenet28", stem="cifar", classes=10)
    bc = get_model("binary_densenet28", stem="cifar", classes=10, bottleneck=4)
    assert len(bmx.nn.quantized_layers(bc)) == len(bmx.nn.quantized_layers(plain)) + 23
    twin = get_model("binary_densenet28", stem="cifar", classes=10, bottleneck=4, binary=False)
    assert param_shapes(twin) == param_shapes(bc)
    bc.initialize()
    assert bc(image(32)).shape == (1, 10)
    with pytest.raises(ValueError, match="bottleneck"):
        get_model("binary_densenet28", bottleneck=-1)
    with pytest.raises(ValueError, match="bottleneck"):
        get_model("meliusnet22", bottleneck=2)


def test_improvement_layer_adds_to_the_last_channels_only():
    layer = ImprovementLayer(24, 8)
    layer.initialize(mx.init.Xavier())
    x = mx.nd.random.normal(shape=(2, 24, 5, 5))
    y = layer(x)
    expected = x[:, 16:] + layer.conv(layer.bn(x))
    np.testing.assert_array_equal(y[:, :16].asnumpy(), x[:, :16].asnumpy())
    np.testing.assert_allclose(y[:, 16:].asnumpy(), expected.asnumpy(), rtol=1e-6)


def test_residual_unit_shortcut_matches_odd_sizes():
    unit = ResidualUnit(8, 16, strides=2)
    unit.initialize()
    assert unit(mx.nd.random.normal(shape=(1, 8, 7, 7))).shape == (1, 16, 4, 4)
    identity = ResidualUnit(8, 8)
    assert identity.shortcut is None

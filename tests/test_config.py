"""bmx.binary_layer_config: defaults, nesting, per-layer overrides and validation."""
import threading

import pytest

import bmx
from bmx import nn as bnn
from bmx.config import BinaryLayerConfig, resolve


def test_defaults():
    c = bmx.current_config()
    assert (c.bits, c.bits_a, c.clip_threshold, c.activation, c.weight_quantization, c.pad_value,
            c.apply_scaling) == (1, 1, 1.0, "det_sign", "det_sign", -1, False)


def test_context_sets_and_restores():
    with bmx.binary_layer_config(bits_a=2, clip_threshold=1.3, pad_value=0) as c:
        assert c is bmx.current_config()
        assert (c.bits_a, c.activation, c.clip_threshold, c.pad_value) == (2, "round", 1.3, 0)
    assert bmx.current_config() == BinaryLayerConfig()


def test_context_restored_after_exception():
    with pytest.raises(KeyError):
        with bmx.binary_layer_config(bits=4):
            raise KeyError
    assert bmx.current_config().bits == 1


def test_nesting_inner_overrides_outer_and_inherits_the_rest():
    with bmx.binary_layer_config(clip_threshold=1.3, pad_value=0, apply_scaling=True):
        with bmx.binary_layer_config(bits=2) as inner:
            assert (inner.bits, inner.weight_quantization) == (2, "dorefa")
            assert (inner.clip_threshold, inner.pad_value, inner.apply_scaling) == (1.3, 0, True)
            with bmx.binary_layer_config(bits=1, clip_threshold=0.5) as innermost:
                assert (innermost.bits, innermost.weight_quantization, innermost.clip_threshold) == \
                       (1, "det_sign", 0.5)
                assert innermost.pad_value == 0
            assert bmx.current_config() is inner
        assert bmx.current_config().bits == 1 and bmx.current_config().clip_threshold == 1.3
    assert bmx.current_config() == BinaryLayerConfig()


def test_method_is_rederived_when_the_bits_change_class():
    with bmx.binary_layer_config(bits_a=2):
        assert bmx.current_config().activation == "round"
        with bmx.binary_layer_config(bits_a=1):
            assert bmx.current_config().activation == "det_sign"
        assert bnn.QActivation(bits=1).method == "det_sign"


def test_explicit_method_is_kept_when_the_bits_still_fit():
    """Restating compatible bits must not silently replace an explicitly chosen method."""
    with bmx.binary_layer_config(activation="approx_sign"):
        with bmx.binary_layer_config(bits_a=1):
            assert bmx.current_config().activation == "approx_sign"
        assert bnn.QActivation(bits=1).method == "approx_sign"
        assert bnn.BinaryConvolution(4, 3, bits_a=1).qact.method == "approx_sign"
        assert bnn.QActivation(bits=3).method == "round"  # approx_sign cannot do 3 bits


def test_config_is_read_at_construction_not_at_call():
    with bmx.binary_layer_config(clip_threshold=2.0, bits_a=1, activation="approx_sign"):
        act = bnn.QActivation()
    outside = bnn.QActivation()
    assert (act.method, act.config.clip_threshold) == ("approx_sign", 2.0)
    with bmx.binary_layer_config(bits_a=4):
        assert act.method == "approx_sign" and outside.method == "det_sign"
        assert outside.bits == 1


@pytest.mark.parametrize("make,attr,expected", [
    (lambda: bnn.QActivation(bits=2), "bits", 2),
    (lambda: bnn.QActivation(bits=1, method="approx_sign"), "method", "approx_sign"),
    (lambda: bnn.QActivation(clip_threshold=0.5), "config.clip_threshold", 0.5),
    (lambda: bnn.QConv2D(4, 3, bits=1), "bits", 1),
    (lambda: bnn.QConv2D(4, 3, pad_value=-1), "config.pad_value", -1),
    (lambda: bnn.QDense(4, apply_scaling=False), "config.apply_scaling", False),
    (lambda: bnn.BinaryConvolution(4, 3, bits=1, bits_a=1), "qconv.bits", 1),
    (lambda: bnn.BinaryConvolution(4, 3, bits_a=1), "qact.bits", 1),
    (lambda: bnn.BinaryConvolution(4, 3, clip_threshold=2.0), "qact.config.clip_threshold", 2.0),
])
def test_layer_arguments_override_the_context(make, attr, expected):
    with bmx.binary_layer_config(bits=3, bits_a=2, clip_threshold=1.3, pad_value=0, apply_scaling=True):
        layer = make()
    value = layer
    for part in attr.split("."):
        value = getattr(value, part)
    assert value == expected


def test_binary_convolution_passes_the_context_to_its_children():
    with bmx.binary_layer_config(bits=2, bits_a=3, pad_value=0, apply_scaling=True):
        b = bnn.BinaryConvolution(4, 3)
    assert (b.qconv.bits, b.qconv.config.weight_quantization, b.qconv.config.pad_value,
            b.qconv.config.apply_scaling) == (2, "dorefa", 0, True)
    assert (b.qact.bits, b.qact.method) == (3, "round")


@pytest.mark.parametrize("options,culprit", [
    (dict(bits=0), "bits"), (dict(bits=9), "bits"), (dict(bits=1.5), "bits"), (dict(bits=True), "bits"),
    (dict(bits_a=0), "bits_a"), (dict(bits_a=9), "bits_a"), (dict(bits_a=2.5), "bits_a"),
    (dict(clip_threshold=-1), "clip_threshold"), (dict(clip_threshold=float("nan")), "clip_threshold"),
    (dict(clip_threshold=float("inf")), "clip_threshold"), (dict(clip_threshold="1"), "clip_threshold"),
    (dict(activation="relu"), "activation 'relu'"),
    (dict(bits_a=2, activation="approx_sign"), "activation 'approx_sign' does not fit bits_a=2"),
    (dict(bits_a=1, activation="round"), "activation 'round' does not fit bits_a=1"),
    (dict(bits=1, weight_quantization="dorefa"), "weight_quantization 'dorefa' does not fit bits=1"),
    (dict(bits=4, weight_quantization="det_sign"), "weight_quantization 'det_sign' does not fit bits=4"),
    (dict(weight_quantization="xnor"), "weight_quantization 'xnor'"),
    (dict(pad_value=2), "pad_value"), (dict(pad_value=1), "pad_value"), (dict(pad_value=True), "pad_value"),
    (dict(apply_scaling=1), "apply_scaling"),
])
def test_invalid_context_raises_value_error(options, culprit):
    with pytest.raises(ValueError, match=culprit):
        with bmx.binary_layer_config(**options):
            pytest.fail("entered an invalid configuration")
    assert bmx.current_config() == BinaryLayerConfig()


def test_invalid_combination_across_levels_raises_instead_of_replacing():
    """An explicit method that does not fit explicit bits at the same level is an error."""
    with bmx.binary_layer_config(bits_a=2):
        with pytest.raises(ValueError, match="approx_sign"):
            bnn.QActivation(method="approx_sign")
        with pytest.raises(ValueError, match="approx_sign"):
            with bmx.binary_layer_config(activation="approx_sign"):
                pass
    with bmx.binary_layer_config(bits=3):
        with pytest.raises(ValueError, match="QConv2D '.*'.*weight_quantization 'det_sign'"):
            bnn.QConv2D(4, 3, weight_quantization="det_sign")


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="clip_treshold"):
        resolve(clip_treshold=1.0)
    with pytest.raises(TypeError, match="clip_treshold"):
        with bmx.binary_layer_config(clip_treshold=1.0):
            pass


def test_contexts_are_per_thread():
    seen = {}
    entered, release = threading.Event(), threading.Event()

    def other():
        with bmx.binary_layer_config(bits=5):
            entered.set()
            release.wait(5)
            seen["other"] = bmx.current_config().bits

    t = threading.Thread(target=other)
    t.start()
    entered.wait(5)
    seen["main"] = bmx.current_config().bits
    release.set()
    t.join()
    assert seen == {"main": 1, "other": 5}

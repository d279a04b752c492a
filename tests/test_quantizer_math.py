"""bmx.quantizer_math: the one default and validator per quantizer setting, which the operator
library (C) applies too, and the numpy k-bit math, held with the native ops to one reference."""
import inspect

import mxnet as mx
import numpy as np
import pytest

from bmx import config, quantizer_math as qm
from bmx import quantizers as Q
from bmx.recipes import DEFAULT_RECIPE
from conftest import activation_input, dorefa_input, forward_backward, ref_dorefa, ref_quantize_act
from test_training import load_script

F32 = np.float32
GOOD_THRESHOLDS = (0.0, 0.5, 1.0, 1.3, 1e30)
BAD_THRESHOLDS = (-1.0, -1e-30, float("inf"), float("nan"), float("-inf"))


# ------------------------------------------------------------------ one rule, checked in Python and in C

@pytest.mark.parametrize("value", GOOD_THRESHOLDS)
def test_accepted_thresholds_are_accepted_by_python_and_c(value):
    assert qm.check_clip_threshold(value) == value
    y = mx.nd.bmx_det_sign(mx.nd.array([-2.0, 0.0, 3.0]), clip_threshold=value).asnumpy()
    np.testing.assert_array_equal(y, [-1, 1, 1])


@pytest.mark.parametrize("value", BAD_THRESHOLDS)
def test_rejected_thresholds_are_rejected_by_python_and_c(value):
    with pytest.raises(ValueError, match="clip_threshold must be >= 0 and finite"):
        qm.check_clip_threshold(value)
    with pytest.raises(mx.base.MXNetError, match="clip_threshold must be >= 0 and finite"):
        mx.nd.bmx_det_sign(mx.nd.ones(3), clip_threshold=value).wait_to_read()


@pytest.mark.parametrize("bits", range(qm.KBIT_MIN - 2, qm.KBIT_MAX + 3))
def test_bits_rule_is_the_same_in_python_and_c(bits):
    accepted = qm.KBIT_MIN <= bits <= qm.KBIT_MAX
    assert accepted == (2 <= bits <= 8)  # the documented range
    for op in (mx.nd.bmx_quantize_act, mx.nd.bmx_quantize_weight):
        if accepted:
            assert qm.check_kbit(bits) == bits
            op(mx.nd.ones(3), bits=bits).wait_to_read()
        else:
            with pytest.raises(ValueError, match=r"bits must be an integer in 2\.\.8"):
                qm.check_kbit(bits)
            with pytest.raises(mx.base.MXNetError, match=r"'bits' must be in 2\.\.8"):
                op(mx.nd.ones(3), bits=bits).wait_to_read()


def test_the_c_default_threshold_is_the_python_default():
    """Without the attribute the op clips the gradient at CLIP_THRESHOLD, inclusive: 1 at it, 0 just past it."""
    t = F32(qm.CLIP_THRESHOLD)
    x = np.array([t, np.nextafter(t, F32(2)), -t, -np.nextafter(t, F32(2))], F32)
    _, dx, _ = forward_backward(lambda v: mx.nd.bmx_det_sign(v), x, head=np.ones(4, F32))
    np.testing.assert_array_equal(dx, [1, 0, 1, 0])


def test_every_default_is_the_one_constant():
    assert qm.CLIP_THRESHOLD == 1.0
    assert config.BinaryLayerConfig().clip_threshold == qm.CLIP_THRESHOLD
    assert inspect.signature(Q.det_sign).parameters["clip_threshold"].default == qm.CLIP_THRESHOLD
    parser = load_script("train_imagenet").build_parser()
    # the script's default is the recipe's (1.3), a recipe value and not a second quantizer default
    assert parser.parse_args([]).clip_threshold == DEFAULT_RECIPE.clip_threshold == 1.3


@pytest.mark.parametrize("text", ["inf", "-0.5", "nan"])
def test_the_cli_rejects_what_the_validator_rejects(text, capsys):
    parser = load_script("train_imagenet").build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--clip-threshold", text])
    assert "clip_threshold must be >= 0 and finite" in capsys.readouterr().err


@pytest.mark.parametrize("value, name", [(0, "bits"), (9, "bits_a"), (True, "bits"), (2.0, "bits_a")])
def test_layer_bits_are_one_to_eight(value, name):
    with pytest.raises(ValueError, match=f"{name} must be an integer in 1..8"):
        qm.check_layer_bits(value, name)
    assert [qm.check_layer_bits(b, name) for b in range(1, 9)] == list(range(1, 9))


# ------------------------------------------------------------------ numpy and C against one reference

@pytest.mark.parametrize("bits", range(2, 9))
def test_quantize_activation_numpy_and_native_match_the_reference(bits):
    x = activation_input(np.random.default_rng(bits), (4, 300))
    # exact ties of (2^k - 1) clip(x, 0, 1): rounded up (away from zero)
    x[0, :4] = (np.arange(4) + 0.5) / F32(2 ** bits - 1)
    want = ref_quantize_act(x, bits)
    np.testing.assert_array_equal(qm.quantize_activation(x, bits), want)
    np.testing.assert_array_equal(mx.nd.bmx_quantize_act(mx.nd.array(x), bits=bits).asnumpy(), want)
    assert qm.quantize_activation(x, bits).dtype == F32
    np.testing.assert_array_equal(qm.activation_codes(x, bits), want * F32(2 ** bits - 1))


@pytest.mark.parametrize("bits", range(2, 9))
def test_dorefa_numpy_and_native_match_the_reference(bits):
    w = dorefa_input(np.random.default_rng(10 + bits), (16, 8, 3, 3), bits)
    want, _, _ = ref_dorefa(w, bits)
    np.testing.assert_array_equal(qm.dorefa_weight(w, bits), want)
    np.testing.assert_array_equal(mx.nd.bmx_quantize_weight(mx.nd.array(w), bits=bits).asnumpy(), want)


def test_dorefa_of_zero_weights_is_the_midpoint_level():
    """max|tanh(0)| is floored, so u = 1/2 exactly, a tie that rounds up: 2 * 2^(k-1) / (2^k - 1) - 1."""
    for bits in (2, 8):
        levels = 2 ** bits - 1
        expected = F32(2) * (F32(2 ** (bits - 1)) / F32(levels)) - F32(1)
        np.testing.assert_array_equal(qm.dorefa_weight(np.zeros(5, F32), bits), np.full(5, expected, F32))


def test_round_half_up_is_exact_for_float32():
    v = np.array([0.5, 1.5, 2.5, 0.49999997, 2 ** 22 + 0.5, 0.0], F32)
    np.testing.assert_array_equal(qm.round_half_up(v), [1, 2, 3, 0, 2 ** 22 + 1, 0])

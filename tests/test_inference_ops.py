"""bmx_xnor_conv2d, the packed binary convolution op (bmx/_native/ops.cc), against plain numpy.

The reference is the documented math done the long way: sign the input, pad it explicitly with the
pad value, convolve directly with the signed float weights (conftest's pad_nchw and ref_conv2d).
Outputs must match it bit for bit on every kernel variant this CPU runs, through every way MXNet
runs the op: mx.nd calls, bound symbols, and a saved model loaded by SymbolBlock.imports.
"""
import ctypes
import json
import re

import mxnet as mx
import numpy as np
import pytest

from bmx import _library, _xnor, xnor
from conftest import F32, pad_nchw, ref_conv2d, ref_sign

# the library MXNet loaded: dlopen of the same path returns the same handle
OPS = ctypes.CDLL(_library.library_path())


@pytest.fixture(params=xnor.available_kernels())
def kernel(request):
    """Forces each kernel variant in turn (bmx_ops_set_kernel), restoring the automatic choice."""
    assert OPS.bmx_ops_set_kernel(_xnor.KERNELS[request.param]) == 0
    yield request.param
    assert OPS.bmx_ops_set_kernel(-1) == 0


def random_input(rng, shape):
    """Gaussian floats with the sign convention's edge cases planted: +0, -0 (-> +1), NaN, -inf (-> -1), inf."""
    x = rng.standard_normal(shape).astype(F32)
    flat = x.reshape(-1)
    specials = np.array([0.0, -0.0, np.nan, -np.inf, np.inf], dtype=F32)
    count = min(flat.size, 3 * len(specials))
    flat[rng.choice(flat.size, count, replace=False)] = np.resize(specials, count)
    return x


def packed(w, groups=1):
    """The op's weight input: bmx.xnor.pack_weights words viewed as int64, as the contract stores them."""
    return xnor.pack_weights(w, groups).words.view(np.int64)


def reference(x, w, stride=(1, 1), pad=(0, 0), dilate=(1, 1), groups=1, pad_value=-1):
    return ref_conv2d(pad_nchw(ref_sign(x), pad, F32(pad_value)), ref_sign(w), stride, dilate, groups)


def attrs(w, stride=(1, 1), pad=(0, 0), dilate=(1, 1), groups=1, pad_value=-1):
    return dict(kernel=w.shape[2:], stride=stride, pad=pad, dilate=dilate, num_filter=w.shape[0],
                num_group=groups, pad_value=pad_value)


def newest_op_error(call):
    """Runs call, which must fail, and returns the op library's message for this failure.

    MXNet 1.9's lib_api never clears the library's message list, so an error also lists every earlier
    message of the process; the last one is this error's.
    """
    with pytest.raises(mx.base.MXNetError) as info:
        call()
    messages = re.findall(r"^\s*\[\d+\] \S+\[\d+\]: (.*)$", str(info.value), re.MULTILINE)
    assert messages, str(info.value)
    return messages[-1]


# (batch, C, O, groups, (H, W), (KH, KW), stride, pad, dilate)
CASES = [
    (2, 1, 4, 1, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1)),
    (1, 3, 8, 1, (7, 9), (3, 3), (1, 1), (1, 1), (1, 1)),
    (2, 63, 5, 1, (6, 5), (3, 3), (2, 2), (1, 1), (1, 1)),
    (1, 64, 33, 1, (5, 7), (1, 1), (1, 1), (0, 0), (1, 1)),
    (2, 65, 16, 1, (9, 8), (3, 3), (1, 1), (2, 2), (2, 2)),
    (1, 130, 40, 2, (5, 5), (3, 3), (2, 2), (1, 1), (1, 1)),
    (1, 200, 70, 1, (4, 6), (2, 3), (1, 2), (0, 1), (1, 1)),
    (1, 96, 12, 3, (7, 7), (5, 5), (1, 1), (2, 2), (1, 1)),
    (3, 6, 6, 6, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1)),  # one channel per group
    (1, 256, 8, 1, (4, 4), (3, 3), (1, 1), (1, 1), (1, 1)),  # 36 words per output: AVX2 flushes
    (1, 3, 4, 1, (2, 2), (4, 4), (1, 1), (1, 1), (1, 1)),  # kernel = padded input: one output
    (2, 5, 3, 1, (3, 3), (1, 1), (1, 1), (2, 2), (1, 1)),  # outputs made of padding only
    (1, 8, 4, 1, (9, 9), (2, 2), (3, 3), (0, 0), (1, 1)),  # stride > kernel
    (3, 200, 70, 1, (1, 1), (1, 1), (1, 1), (0, 0), (1, 1)),  # a dense layer
    (2, 64, 16, 1, (40, 40), (3, 3), (1, 1), (1, 1), (1, 1)),  # large enough to pack and transpose in parallel
]


@pytest.mark.parametrize("pad_value", [-1, 0])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{}c{}o{}g{}-{}x{}-k{}x{}-s{}{}-p{}{}-d{}{}".format(
    *c[:4], *c[4], *c[5], *c[6], *c[7], *c[8]))
def test_nd_call_matches_reference(kernel, case, pad_value):
    batch, c, o, groups, hw, k, stride, pad, dilate = case
    rng = np.random.default_rng([CASES.index(case), pad_value + 1])
    x = random_input(rng, (batch, c) + hw)
    w = random_input(rng, (o, c // groups) + k)
    y = mx.nd.bmx_xnor_conv2d(mx.nd.array(x), mx.nd.array(packed(w, groups), dtype=np.int64),
                              **attrs(w, stride, pad, dilate, groups, pad_value))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.asnumpy(), reference(x, w, stride, pad, dilate, groups, pad_value))


def test_kernel_switch_accepts_exactly_the_available_kernels():
    for name, kernel_id in _xnor.KERNELS.items():
        available = name in xnor.available_kernels()
        assert (OPS.bmx_ops_set_kernel(kernel_id) == 0) == available, name
        if available:
            assert OPS.bmx_ops_kernel() == kernel_id
    assert OPS.bmx_ops_set_kernel(99) == -1
    assert OPS.bmx_ops_set_kernel(-1) == 0
    assert OPS.bmx_ops_kernel() == _xnor.best_kernel()  # the automatic choice: the best this CPU runs


def test_symbol_infers_the_weight_and_runs_bound():
    rng = np.random.default_rng(1)
    x, w = random_input(rng, (2, 65, 7, 9)), random_input(rng, (8, 65, 3, 3))
    sym = mx.sym.bmx_xnor_conv2d(mx.sym.var("data"), mx.sym.var("w"), **attrs(w, pad=(1, 1), pad_value=0))
    arg_shapes, out_shapes, _ = sym.infer_shape(data=x.shape)
    assert arg_shapes == [x.shape, (8, 3, 3, 2)] and out_shapes == [(2, 8, 7, 9)]
    arg_types, out_types, _ = sym.infer_type(data=np.float32)
    assert arg_types == [np.float32, np.int64] and out_types == [np.float32]

    weight = mx.nd.array(packed(w), dtype=np.int64)
    executor = sym.bind(mx.cpu(), {"data": mx.nd.array(x), "w": weight})
    for _ in range(2):  # the second run reuses the weights' re-layout
        out = executor.forward()[0].asnumpy()
        np.testing.assert_array_equal(out, reference(x, w, pad=(1, 1), pad_value=0))
    # an in-place write to the weight (a new version of the same array) is seen
    w2 = random_input(rng, w.shape)
    weight[:] = mx.nd.array(packed(w2), dtype=np.int64)
    np.testing.assert_array_equal(executor.forward()[0].asnumpy(), reference(x, w2, pad=(1, 1), pad_value=0))


def test_symbolblock_imports_keeps_int64_weights(tmp_path):
    """A saved packed model: binary conv (zero padding) -> binary dense as the contract expresses it."""
    rng = np.random.default_rng(2)
    x = random_input(rng, (2, 70, 6, 5))
    w_conv, w_dense = random_input(rng, (16, 70, 3, 3)), random_input(rng, (10, 16 * 6 * 5))
    data = mx.sym.var("data")
    conv = mx.sym.bmx_xnor_conv2d(data, mx.sym.var("conv_weight"), name="conv",
                                  **attrs(w_conv, pad=(1, 1), pad_value=0))
    dense = mx.sym.bmx_xnor_conv2d(mx.sym.Reshape(conv, shape=(0, -1, 1, 1)), mx.sym.var("dense_weight"),
                                   kernel=(1, 1), num_filter=10, name="dense")
    mx.sym.Flatten(dense).save(str(tmp_path / "model-symbol.json"))
    params = {"arg:conv_weight": packed(w_conv), "arg:dense_weight": packed(w_dense)}
    mx.nd.save(str(tmp_path / "model-0000.params"), {k: mx.nd.array(v, dtype=np.int64) for k, v in params.items()})
    nodes = json.loads((tmp_path / "model-symbol.json").read_text())["nodes"]
    assert [n["op"] for n in nodes if n["op"] != "null"] == ["bmx_xnor_conv2d", "Reshape", "bmx_xnor_conv2d",
                                                             "Flatten"]

    net = mx.gluon.SymbolBlock.imports(str(tmp_path / "model-symbol.json"), ["data"],
                                       str(tmp_path / "model-0000.params"))
    for name in ("conv_weight", "dense_weight"):
        param = net.collect_params()[name]
        assert param.dtype == np.int64 and param.data().dtype == np.int64
        np.testing.assert_array_equal(param.data().asnumpy(), params["arg:" + name])

    hidden = reference(x, w_conv, pad=(1, 1), pad_value=0)
    expected = reference(hidden.reshape(2, -1, 1, 1), w_dense[:, :, None, None]).reshape(2, -1)
    np.testing.assert_array_equal(net(mx.nd.array(x)).asnumpy(), expected)
    net.hybridize(static_alloc=True, static_shape=True)
    for _ in range(2):
        np.testing.assert_array_equal(net(mx.nd.array(x)).asnumpy(), expected)
    # new weights set in place reach the static graph's cached re-layout
    w_conv2 = random_input(rng, w_conv.shape)
    net.collect_params()["conv_weight"].set_data(mx.nd.array(packed(w_conv2), dtype=np.int64))
    hidden = reference(x, w_conv2, pad=(1, 1), pad_value=0)
    expected = reference(hidden.reshape(2, -1, 1, 1), w_dense[:, :, None, None]).reshape(2, -1)
    np.testing.assert_array_equal(net(mx.nd.array(x)).asnumpy(), expected)


def call(data_shape=(1, 3, 5, 5), weight_shape=(4, 3, 3, 1), data_dtype=np.float32, weight_dtype=np.int64,
         weight=None, **kwargs):
    kwargs = {"kernel": (3, 3), "num_filter": 4, **kwargs}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if weight is None:
        weight = np.zeros(weight_shape, dtype=weight_dtype)
    data = mx.nd.zeros(data_shape, dtype=data_dtype)
    return lambda: mx.nd.bmx_xnor_conv2d(data, mx.nd.array(weight, dtype=weight.dtype), **kwargs).asnumpy()


@pytest.mark.parametrize("make_call,message", [
    (call(pad_value=0.5), "pad_value must be -1 or 0, got 0.5"),
    (call(stride=(0, 1)), r"attribute 'stride' must be a pair of integers >= 1 .*got '\(0, 1\)'"),
    (call(kernel=3), "attribute 'kernel' must be a pair of integers >= 1 .*got '3'"),
    (call(kernel=None), "attribute 'kernel' is required"),
    (call(num_filter=None), "attribute 'num_filter' is required"),
    (call(dilation=(2, 2)), "unknown attribute 'dilation'"),
    (call(num_filter=6, num_group=4), "num_filter = 6 output channels do not split into num_group = 4 groups"),
    (call(num_group=2), "data's C = 3 channels do not split into num_group = 2 groups"),
    (call(data_shape=(1, 65, 5, 5)),
     r"weight holds Wd = 1 words per tap \(axis 3\) but C/num_group = 65/1 = 65 channels take ceil\(65/64\) = 2"),
    (call(weight_shape=(5, 3, 3, 1)), r"weight has 5 output channels \(axis 0\) but num_filter = 4"),
    (call(weight_shape=(4, 1, 1, 1)), r"weight holds a 1 x 1 kernel \(axes 1, 2\) but kernel = \(3, 3\)"),
    (call(weight_shape=(4, 9, 1)), r"weight must be 4-D \(O, KH, KW, Wd\) = \(4, 3, 3, 1\), got shape \(4, 9, 1\)"),
    (call(data_shape=(3, 5, 5)), r"data must be 4-D \(N, C, H, W\) with C >= 1, got shape \(3, 5, 5\)"),
    (call(kernel=(7, 7), weight_shape=(4, 7, 7, 1)),
     r"the kernel spans 7 along H \(kernel 7, dilate 1\), more than the padded input's 5 \(H = 5, pad 0\)"),
    (call(data_shape=(1, 3, 9, 4), dilate=(1, 3)),
     r"the kernel spans 7 along W \(kernel 3, dilate 3\), more than the padded input's 4 \(W = 4, pad 0\)"),
    (call(data_dtype=np.float16), r"data must be float32, got float16 \(float16 is not supported"),
    (call(weight_dtype=np.float32), "weight must be int64 .*got float32"),
    (call(weight=np.full((4, 3, 3, 1), 8, dtype=np.int64)),
     r"weight\[0, 0, 0, 0\] has bits set past the C/num_group = 3 channels"),
])
def test_errors_name_the_attribute_or_shape(make_call, message):
    assert re.search("bmx_xnor_conv2d.*" + message, newest_op_error(make_call))


def test_dot_products_beyond_float32_exactness_are_refused():
    sym = mx.sym.bmx_xnor_conv2d(mx.sym.var("data"), mx.sym.var("w"), kernel=(3, 3), num_filter=1)
    message = newest_op_error(lambda: sym.infer_shape(data=(1, 1 << 21, 3, 3)))
    assert "C/num_group x KH x KW = 2097152 x 3 x 3 products, more than 2^24" in message


def test_backward_says_inference_only():
    data = mx.nd.ones((1, 3, 5, 5))
    data.attach_grad()
    weight = mx.nd.zeros((4, 3, 3, 1), dtype=np.int64)

    def backward():
        with mx.autograd.record():
            y = mx.nd.bmx_xnor_conv2d(data, weight, kernel=(3, 3), num_filter=4)
        y.backward()
        data.grad.asnumpy()

    assert "bmx_xnor_conv2d is inference only and has no gradient" in newest_op_error(backward)

"""bmx.runtime on several threads: the steps that split their work across threads give the 1-thread
results exactly, and both match an independent reference (float64 numpy, or MXNet's executor).
Inputs are large enough for every kernel to cross its grain threshold (BMX_FLOAT_GRAIN, 65536)."""
import json

import mxnet as mx
import numpy as np
import pytest

from bmx import _xnor, packed, runtime, xnor

F32 = np.float32
DATA = mx.sym.var("data")


def normal(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


@pytest.fixture(params=xnor.available_kernels())
def kernel(request):
    """Each kernel variant in turn (the runtime's float steps follow bmx.xnor's choice)."""
    xnor.set_kernel(request.param)
    yield request.param
    xnor.set_kernel(None)


def load(tmp_path, symbol, params, threads):
    """The model of ``symbol`` with parameters ``params`` in bmx.runtime (a packed model in memory)."""
    arrays = {f"arg:{k}": v for k, v in params.items()}
    return runtime.Model(packed.PackedModel(json.loads(symbol.tojson()), arrays, {}), threads=threads)


def mxnet_forward(symbol, x, params):
    aux_names = symbol.list_auxiliary_states()
    args = {k: mx.nd.array(v) for k, v in params.items() if k not in aux_names}
    args["data"] = mx.nd.array(x)
    aux = {k: mx.nd.array(params[k]) for k in aux_names}
    return symbol.bind(mx.cpu(), args, aux_states=aux, grad_req="null").forward(is_train=False)[0].asnumpy()


@pytest.mark.parametrize("channels, size, filters, groups, bias", [
    (96, (30, 30), 40, 1, True),   # several blocks of output channels, a partial last tile
    (96, (30, 30), 5, 1, False),   # a single block (one AVX2 / AVX-512 block): full tiles read in place
    (64, (7, 7), 48, 2, True),     # groups, a plane smaller than one tile
    (600, (1, 1000), 3, 1, False),  # a FullyConnected's shape: W^T as the image, 3 rows as filters
], ids=["blocks", "one-block", "grouped-7x7", "dense-shape"])
def test_1x1_convolution_kernel_splits_across_threads_exactly(channels, size, filters, groups, bias):
    """bmx_conv1x1_f32 (bmx_conv_f32's 1x1 case) with 2 threads = 1 thread, bit for bit, and = float64
    numpy, into a channel slice of a larger buffer, on every kernel variant."""
    x = normal(1, channels, *size, seed=1)
    w = normal(filters, channels // groups, seed=2)
    b = normal(filters, seed=3) if bias else None
    og, cg = filters // groups, channels // groups
    want = np.concatenate([np.einsum("oc,nchw->nohw", w[g * og:(g + 1) * og].astype(np.float64),
                                     x[:, g * cg:(g + 1) * cg].astype(np.float64)) for g in range(groups)], axis=1)
    if bias:
        want += b.reshape(1, -1, 1, 1)
    wt = np.ascontiguousarray(w.reshape(groups, og, cg).transpose(0, 2, 1))
    for name in xnor.available_kernels():
        results = []
        for threads in (1, 2):
            buffer = np.full((1, filters + 2) + size, 7.0, F32)
            _xnor.conv_f32(x, wt, b, buffer[:, 1:1 + filters], (1, 1), (1, 1), (0, 0), (1, 1),
                           _xnor.KERNELS[name], threads)
            assert (buffer[:, 0] == 7).all() and (buffer[:, -1] == 7).all()
            results.append(buffer[:, 1:1 + filters])
        np.testing.assert_array_equal(results[1], results[0], err_msg=name)
        np.testing.assert_allclose(results[0], want, rtol=1e-5, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("batch", [1, 5])
def test_fully_connected_on_threads(tmp_path, kernel, batch):
    """FullyConnected (floatops.h's 1x1 convolution where it is vectorized, else BLAS): 2 threads =
    1 thread exactly, and = x W^T + b in float64."""
    params = {"w": normal(1000, 600, seed=4), "b": normal(1000, seed=5)}
    symbol = mx.sym.FullyConnected(DATA, mx.sym.var("w"), mx.sym.var("b"), num_hidden=1000)
    x = normal(batch, 6, 10, 10, seed=6)
    got = [load(tmp_path, symbol, params, threads)(x) for threads in (1, 2)]
    np.testing.assert_array_equal(got[1], got[0])
    want = x.reshape(batch, -1).astype(np.float64) @ params["w"].T.astype(np.float64) + params["b"]
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-3)


def small_network():
    """A stem, max pooling, a 1x1 transition with BatchNorm, a concatenation, global pooling and a
    classifier: every float step kind of a BinaryDenseNet, with its parameters."""
    names = ("stem_w", "bn_g", "bn_b", "bn_m", "bn_v", "t_w", "t_b", "fc_w", "fc_b")
    v = {n: mx.sym.var(n) for n in names}
    stem = mx.sym.Convolution(DATA, v["stem_w"], kernel=(7, 7), stride=(2, 2), pad=(3, 3), num_filter=32,
                              no_bias=True)
    bn = mx.sym.BatchNorm(stem, v["bn_g"], v["bn_b"], v["bn_m"], v["bn_v"], fix_gamma=False, eps=1e-5)
    pool = mx.sym.Pooling(mx.sym.relu(bn), kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max")
    transition = mx.sym.Convolution(pool, v["t_w"], v["t_b"], kernel=(1, 1), num_filter=48)
    both = mx.sym.concat(pool, mx.sym.relu(transition), dim=1)
    head = mx.sym.Pooling(both, global_pool=True, kernel=(1, 1), pool_type="avg")
    symbol = mx.sym.FullyConnected(head, v["fc_w"], v["fc_b"], num_hidden=100)
    params = {"stem_w": normal(32, 3, 7, 7, seed=7) * F32(0.1), "bn_g": normal(32, seed=8),
              "bn_b": normal(32, seed=9), "bn_m": normal(32, seed=10), "bn_v": np.full(32, 0.5, F32),
              "t_w": normal(48, 32, 1, 1, seed=11) * F32(0.2), "t_b": normal(48, seed=12),
              "fc_w": normal(100, 80, seed=13), "fc_b": normal(100, seed=14)}
    return symbol, params


def test_a_network_on_two_threads_gives_the_one_thread_output(tmp_path, kernel):
    symbol, params = small_network()
    x = normal(1, 3, 96, 96, seed=15)
    got = [load(tmp_path, symbol, params, threads)(x) for threads in (1, 2)]
    np.testing.assert_array_equal(got[1], got[0])
    np.testing.assert_allclose(got[0], mxnet_forward(symbol, x, params), rtol=1e-4, atol=1e-3)


def test_profile_times_every_step_and_returns_the_output(tmp_path):
    symbol, params = small_network()
    model = load(tmp_path, symbol, params, 2)
    x = normal(2, 3, 64, 64, seed=16)
    output, steps = model.profile(x)
    np.testing.assert_array_equal(output, model(x))
    assert len(steps) == len(model._entries)
    names = [name for name, _, _ in steps]
    assert names == [e.node.name for e in model._entries]  # in execution order
    kinds = {kind for _, kind, _ in steps}
    # the BatchNorm and ReLU after the stem run in the max pooling's output loop (the rewrites)
    assert {"Convolution 7x7", "Convolution 1x1", "Pooling max", "Pooling global avg", "FullyConnected"} <= kinds
    assert all(seconds > 0 for _, _, seconds in steps)

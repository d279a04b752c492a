"""Shared by the tests of bmx.runtime: model directories written with MXNet's own writers, the
MXNet forward pass they are compared with, and input generators."""
import json

import mxnet as mx
import numpy as np

from bmx import packed, runtime, xnor

F32 = np.float32
RNG = np.random.default_rng(0)


# ------------------------------------------------------------------ helpers

def save_model_dir(path, symbol, arg_params, aux_params=None, meta=None):
    """Writes a model directory the way train_imagenet.py lays it out, with MXNet's own writers."""
    path.mkdir(parents=True, exist_ok=True)
    symbol.save(str(path / packed.SYMBOL_FILE))
    arrays = {f"arg:{k}": mx.nd.array(v, dtype=v.dtype) for k, v in arg_params.items()}
    arrays.update({f"aux:{k}": mx.nd.array(v, dtype=v.dtype) for k, v in (aux_params or {}).items()})
    mx.nd.save(str(path / packed.PARAMS_FILE), arrays)
    (path / packed.META_FILE).write_text(json.dumps(meta or {}))
    return path


def mxnet_forward(symbol, x, arg_params, aux_params=None):
    names = symbol.list_arguments()
    args = {k: mx.nd.array(v, dtype=v.dtype) for k, v in arg_params.items() if k in names}
    args["data"] = mx.nd.array(x)
    known = {k: v.shape for k, v in args.items()}
    for name, shape in zip(symbol.list_arguments(), symbol.infer_shape(**known)[0]):
        args.setdefault(name, mx.nd.zeros(shape))  # labels of loss layers: unused at inference
    aux = {k: mx.nd.array(v) for k, v in (aux_params or {}).items()}
    executor = symbol.bind(mx.cpu(), args, aux_states=aux, grad_req="null")
    return [o.asnumpy() for o in executor.forward(is_train=False)]


def run_both(tmp_path, symbol, x, arg_params=None, aux_params=None, **load_args):
    arg_params = arg_params or {}
    model = runtime.load(save_model_dir(tmp_path / "model", symbol, arg_params, aux_params), **load_args)
    got = model(x)
    return (got if isinstance(got, tuple) else (got,)), mxnet_forward(symbol, x, arg_params, aux_params)


def check(tmp_path, symbol, x, arg_params=None, aux_params=None, rtol=1e-5, atol=1e-5):
    got, ref = run_both(tmp_path, symbol, x, arg_params, aux_params)
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == F32
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)


def away_from_zero(shape, low=0.05, high=2.0, seed=1):
    """Random values with |x| >= low, so that signs cannot depend on rounding."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(low, high, shape) * rng.choice([-1, 1], shape)).astype(F32)


def normal(*shape, seed=2):
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


DATA = mx.sym.var("data")
X = normal(2, 4, 9, 9)


def xnor_model_dir(path, channels, filters, kernel, groups=1, **attrs):
    """A model of one bmx_xnor_conv2d with random packed weights; returns (dir, float ±1 weights)."""
    w = away_from_zero((filters, channels // groups) + kernel, seed=14)
    words = xnor.pack_weights(w, groups=groups).words.view(np.int64)
    attrs = dict(kernel=str(kernel), num_filter=str(filters), num_group=str(groups),
                 **{k: str(v) for k, v in attrs.items()})
    graph = {"nodes": [{"op": "null", "name": "data", "inputs": []},
                       {"op": "null", "name": "xw", "inputs": []},
                       {"op": "bmx_xnor_conv2d", "name": "xconv", "attrs": attrs, "inputs": [[0, 0, 0], [1, 0, 0]]}],
             "arg_nodes": [0, 1], "node_row_ptr": [0, 1, 2, 3], "heads": [[2, 0, 0]],
             "attrs": {"mxnet_version": ["int", 10901]}}
    packed.save_model(path, graph, {"arg:xw": words}, {}, force=True)
    return path, np.where(w >= 0, F32(1), F32(-1))


def batchnorm(x, name, channels, seed, gamma=None):
    """A BatchNorm (Gluon's attributes) and its parameters; gamma random of both signs unless given."""
    rng = np.random.default_rng(seed)
    symbol = mx.sym.BatchNorm(x, *[mx.sym.var(f"{name}_{p}") for p in ("g", "b", "m", "v")], fix_gamma=False,
                              eps=1e-5, name=name)
    if gamma is None:
        gamma = rng.uniform(0.5, 2, channels) * rng.choice([-1, 1], channels)
    args = {f"{name}_g": np.asarray(gamma, F32), f"{name}_b": rng.standard_normal(channels).astype(F32)}
    aux = {f"{name}_m": rng.standard_normal(channels).astype(F32),
           f"{name}_v": rng.uniform(0.5, 2, channels).astype(F32)}
    return symbol, args, aux


def op_names(tmp_path):
    return [type(e.op).__name__ for e in runtime.load(tmp_path / "model")._entries]

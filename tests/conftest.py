"""Shared helpers: plain-numpy references for bmx's math and small MXNet drivers.

The references are written from the documented math (bmx/quantizers.py and bmx/nn docstrings),
not from bmx's code: sign(0) = +1, rounding halves away from zero, explicit padding with the
pad value, a direct strided/dilated/grouped convolution.
"""
import os
import sys

import numpy as np
import pytest

try:
    import mxnet as mx

    from bmx import quantizers  # loads the operator library
except ImportError:  # the runtime-only install (CI's second environment): deployment tests only
    mx = quantizers = None

# The example scripts import their sibling modules (reproduce.py imports cifar10_table.py), as they do
# when run as scripts.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "example"))

F32 = np.float32

# Thresholds to test; every one is exactly representable in float32 except 1.3, for which the
# "value at the threshold" is float32(1.3), the number the threshold becomes in float32 math.
THRESHOLDS = (0.5, 1.0, 1.3, 2.0)


@pytest.fixture(autouse=True)
def _fresh_backend():
    """Every test starts (and leaves) the thread on the 'auto' backend."""
    if quantizers is None:
        yield
        return
    quantizers.set_backend("auto")
    yield
    quantizers.set_backend("auto")


# ------------------------------------------------------------------ inputs

def special_values(threshold=1.0):
    """Exact zeros (both signs), values exactly at and next to +-threshold and +-1."""
    t = F32(threshold)
    above = np.nextafter(t, F32(np.inf))
    below = np.nextafter(t, F32(0))
    vals = [0.0, -0.0, t, -t, above, -above, below, -below, 1.0, -1.0,
            np.nextafter(F32(1), F32(2)), -np.nextafter(F32(1), F32(2)), 0.5, -0.5, 2 * t, -2 * t]
    return np.array(vals, dtype=F32)


def activation_input(rng, shape, threshold=1.0, dtype=F32):
    """Random values in about [-2.5 t, 2.5 t] with the special values planted at random places."""
    x = (rng.uniform(-2.5, 2.5, size=shape) * max(threshold, 1.0)).astype(dtype)
    flat = x.reshape(-1)
    specials = special_values(threshold).astype(dtype)
    reps = np.resize(specials, max(len(specials), flat.size // 3))
    idx = rng.choice(flat.size, size=min(reps.size, flat.size), replace=False)
    flat[idx] = reps[:idx.size]
    return flat.reshape(shape)


# ------------------------------------------------------------------ elementwise references

def round_half_away(v):
    """Rounds to nearest, ties away from zero (C's round, MXNet's round), exactly."""
    v = np.asarray(v)
    r = np.round(v)  # ties to even
    trunc = np.trunc(v)
    tie = np.abs(v - trunc) == 0.5
    return np.where(tie, trunc + np.sign(v), r).astype(v.dtype)


def ref_sign(x):
    return np.where(np.asarray(x) >= 0, 1, -1).astype(np.asarray(x).dtype)


def ref_det_sign_grad(x, t):
    """d sign / dx of the clipped STE: 1 where |x| <= t (inclusive), in float32 comparisons."""
    return (np.abs(x.astype(F32)) <= F32(t)).astype(F32)


def ref_approx_sign_grad(x):
    a = np.abs(x.astype(np.float64))
    return np.where(a <= 1, 2 - 2 * a, 0.0)


def ref_quantize_act(x, bits):
    """round((2^k-1) clip(x, 0, 1)) / (2^k-1), computed in float32 like the documented op."""
    levels = F32(2 ** bits - 1)
    c = np.clip(x.astype(F32), F32(0), F32(1))
    return (round_half_away(c * levels) / levels).astype(F32)


def ref_quantize_act_grad(x):
    x = x.astype(F32)
    return ((x >= 0) & (x <= 1)).astype(F32)


def ref_dorefa(w, bits):
    """DoReFa weights: returns (q in float32, dq/dw in float64, u*(2^k-1) in float64)."""
    levels = 2 ** bits - 1
    t = np.tanh(w.astype(np.float64))
    m = max(np.abs(t).max(), 1e-12)
    scaled = (t / (2 * m) + 0.5) * levels
    k = round_half_away(scaled)
    q = F32(2) * (k.astype(F32) / F32(levels)) - F32(1)
    return q.astype(F32), (1 - t * t) / m, scaled


def dorefa_input(rng, shape, bits, scale=1.0, margin=2e-3):
    """Random latent weights with exact zeros whose u*(2^k-1) stays >= margin away from a .5 tie.

    Exact zeros are kept: tanh(0) = 0 gives u = 1/2 exactly in every implementation, a tie that
    all of them resolve the same way (up).
    """
    w = (rng.standard_normal(shape) * scale).astype(F32)
    flat = w.reshape(-1)
    flat[rng.choice(flat.size, size=max(1, flat.size // 10), replace=False)] = 0
    for _ in range(100):
        _, _, scaled = ref_dorefa(w, bits)
        frac = scaled - np.floor(scaled)
        bad = (np.abs(frac - 0.5) < margin) & (w != 0)
        if not bad.any():
            return w
        w[bad] = (rng.standard_normal(int(bad.sum())) * scale).astype(F32)
    raise AssertionError("could not build DoReFa inputs away from rounding ties")


# ------------------------------------------------------------------ convolution references

def pad_nchw(x, pad, value):
    ph, pw = pad
    n, c, h, w = x.shape
    out = np.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def conv_out_size(size, k, s, d):
    return (size - d * (k - 1) - 1) // s + 1


def ref_conv2d(xp, w, stride, dilation, groups):
    """Direct convolution of an already padded NCHW array with OIHW weights (float64)."""
    xp = xp.astype(np.float64)
    w = w.astype(np.float64)
    n, c, hp, wp = xp.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    assert cg * groups == c
    (sh, sw), (dh, dw) = stride, dilation
    ho, wo = conv_out_size(hp, kh, sh, dh), conv_out_size(wp, kw, sw, dw)
    out = np.zeros((n, o, ho, wo))
    for g in range(groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        ws = w[g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    return out


def ref_conv2d_backward(xp, w, gy, stride, dilation, groups):
    """Gradients of sum(gy * conv(xp, w)) w.r.t. the padded input and the weights (float64)."""
    xp = xp.astype(np.float64)
    w = w.astype(np.float64)
    gy = gy.astype(np.float64)
    o, cg, kh, kw = w.shape
    og = o // groups
    (sh, sw), (dh, dw) = stride, dilation
    ho, wo = gy.shape[2:]
    gxp = np.zeros_like(xp)
    gw = np.zeros_like(w)
    for g in range(groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        ws = w[g * og:(g + 1) * og]
        gys = gy[:, g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
                cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
                patch = xs[:, :, rows, cols]
                gxp[:, g * cg:(g + 1) * cg, rows, cols] += np.einsum("nohw,oc->nchw", gys, ws[:, :, i, j])
                gw[g * og:(g + 1) * og, :, i, j] += np.einsum("nohw,nchw->oc", gys, patch)
    return gxp, gw


def crop(xp, pad):
    ph, pw = pad
    return xp[:, :, ph:xp.shape[2] - ph, pw:xp.shape[3] - pw]


# ------------------------------------------------------------------ MXNet drivers

if mx is not None:
    class Lambda(mx.gluon.HybridBlock):
        """A HybridBlock computing fn(x) (fn must work on NDArrays and Symbols)."""

        def __init__(self, fn, **kwargs):
            super().__init__(**kwargs)
            self._fn = fn

        def hybrid_forward(self, F, x):
            return self._fn(x)


def forward_backward(fn, x, head=None, dtype=None):
    """Runs y = fn(x) under autograd, backpropagates head (random if None); returns (y, dx)."""
    xa = mx.nd.array(x, dtype=dtype or x.dtype)
    xa.attach_grad()
    with mx.autograd.record():
        y = fn(xa)
    if head is None:
        head = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
    y.backward(mx.nd.array(head, dtype=y.dtype))
    return y.asnumpy(), xa.grad.asnumpy(), head


def block_forward_backward(block, x, head):
    """Forward and backward through a Gluon block; returns (y, dx, {param name: grad})."""
    xa = mx.nd.array(x)
    xa.attach_grad()
    with mx.autograd.record():
        y = block(xa)
    y.backward(mx.nd.array(head))
    grads = {name: p.grad().asnumpy() for name, p in block.collect_params().items()
             if p.grad_req != "null"}
    return y.asnumpy(), xa.grad.asnumpy(), grads


def call_main(main, capsys, *args):
    """(exit code, stdout, stderr) of a script's ``main(argv)`` run in this process; argparse's
    errors (SystemExit) count as exit codes."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def image_folder(path, count=4, seed=0):
    """Class folders a/ and b/ under ``path`` of ``count`` random 32x32 PNG images each; returns str(path)."""
    import cv2

    rng = np.random.default_rng(seed)
    for label in ("a", "b"):
        (path / label).mkdir(parents=True)
        for i in range(count):
            cv2.imwrite(str(path / label / f"{i}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return str(path)

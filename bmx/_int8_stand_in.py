"""TEMPORARY numpy stand-in for bmx.xnor's int8 kernels (branch i16a), dropped when it is merged.

The same four functions and signatures as bmx.xnor's; used only where bmx.xnor lacks them.
"""
import numpy as np


def available_int8_kernels():
    return ("numpy-stand-in",)


def quantize_int8(x, scale, *, threads=None):
    """int8 clip(round_half_to_even(x / scale), -127, 127), the division in float32."""
    q = np.rint(np.asarray(x, np.float32) / np.float32(scale))
    return np.clip(q, -127, 127).astype(np.int8)


def _finish(acc, out_scale, bias, channel_axis):
    if out_scale is None:
        return acc.astype(np.int32)
    shape = [1] * acc.ndim
    shape[channel_axis] = -1
    out = acc.astype(np.float32) * np.asarray(out_scale, np.float32).reshape(shape)
    if bias is not None:
        out += np.asarray(bias, np.float32).reshape(shape)
    return out.astype(np.float32)


def int8_conv2d(xq, wq, *, stride=1, padding=0, dilation=1, groups=1, out_scale=None, bias=None, kernel=None,
                threads=None):
    pair = lambda v: (v, v) if np.isscalar(v) else tuple(v)  # noqa: E731
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    n, c, h, w = xq.shape
    o, cg, kh, kw = wq.shape
    oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    # float64 products are exact: |acc| <= 127 * 127 * C * KH * KW < 2^53
    x = np.zeros((n, c, h + 2 * ph, w + 2 * pw), np.float64)
    x[:, :, ph:ph + h, pw:pw + w] = xq
    acc = np.empty((n, o, oh, ow), np.float64)
    og = o // groups
    for g in range(groups):
        cols = np.stack([x[:, g * cg:(g + 1) * cg, i * dh:i * dh + (oh - 1) * sh + 1:sh,
                           j * dw:j * dw + (ow - 1) * sw + 1:sw] for i in range(kh) for j in range(kw)], axis=2)
        weight = wq[g * og:(g + 1) * og].astype(np.float64).reshape(og, cg, kh * kw)
        acc[:, g * og:(g + 1) * og] = np.einsum("nckhw,ock->nohw", cols, weight, optimize=True)
    return _finish(acc, out_scale, bias, 1)


def int8_dense(xq, wq, *, out_scale=None, bias=None, kernel=None, threads=None):
    acc = xq.astype(np.float64) @ wq.astype(np.float64).T
    return _finish(acc, out_scale, bias, 1)

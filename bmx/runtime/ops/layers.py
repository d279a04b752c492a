"""Convolutions (float and binary), pooling and fully connected layers."""
import numpy as np

from ... import xnor
from ..graph import F32, REQUIRED, product, window_out
from .elementwise import Op, into


def read_window(op, node):
    """Sets a convolution's kernel, stride, pad, dilate and groups from its node's attributes."""
    op.kernel = node.pair("kernel", REQUIRED)
    op.stride = node.pair("stride", (1, 1))
    op.pad = node.pair("pad", (0, 0))
    op.dilate = node.pair("dilate", (1, 1))
    op.groups = node.int("num_group", 1)


class _Convolution(Op):
    """Float 2-D convolution (NCHW, groups, stride, pad, dilate, optional bias). Runs floatops.h's
    direct convolution, which reads the input in place of an im2col matrix, on the model's threads,
    where its AVX2 / AVX-512 variants run (bmx.xnor.get_kernel()); 1x1 kernels too, so that BLAS's
    own thread pool never competes with the kernels' OpenMP threads. Else a 1x1 kernel (stride 1,
    no padding) multiplies the channels directly and others run im2col, both with BLAS, which then
    is faster. Sums in a different order, and with FMA: the paths agree up to float rounding."""

    takes_params = True

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        read_window(self, node)
        filters = node.int("num_filter", REQUIRED)
        if node.str("layout", "NCHW") != "NCHW":
            node.fail(f"layout {node.attrs['layout']} is not supported (only NCHW)")
        no_bias = node.bool("no_bias", False)
        if len(params) != (1 if no_bias else 2):
            node.fail(f"expects {'data, weight' if no_bias else 'data, weight, bias'}, got {len(params) + 1} inputs")
        weight = params[0]
        if weight.ndim != 4 or weight.shape[0] != filters or weight.shape[2:] != self.kernel or filters % self.groups:
            node.fail(f"weight shape {weight.shape} does not fit num_filter={filters}, kernel={self.kernel}, "
                      f"num_group={self.groups}")
        self.filters, self.group_channels = filters, weight.shape[1]
        self.scratch, self.threads = runtime.scratch, runtime.threads
        if not no_bias and params[1].size != filters:
            node.fail(f"bias has {params[1].size} values for {filters} filters")
        self._set_weights(weight.reshape(filters, -1), None if no_bias else params[1].reshape(-1))

    def _set_weights(self, weight, bias):
        """weight (O, C/groups * KH * KW), bias (O,) or None. With im2col, the bias rides along in
        the matrix product as one more column of the weights against a row of ones."""
        g = self.groups
        self.weight = np.ascontiguousarray(weight.reshape(g, self.filters // g, -1), dtype=F32)
        self.weight_t = np.ascontiguousarray(self.weight.transpose(0, 2, 1))  # the direct kernel's layout
        self.bias = None if bias is None else np.asarray(bias, F32)
        if bias is not None:
            self.weight_and_bias = np.concatenate([self.weight, self.bias.reshape(g, -1, 1)], axis=2)

    def fold_batchnorm(self, bn):
        """This convolution followed by the BatchNorm ``bn`` (over its output channels), as one."""
        scale, shift = bn.scale.astype(np.float64), bn.shift.astype(np.float64)
        bias = shift if self.bias is None else self.bias * scale + shift
        self._set_weights(self.weight.reshape(self.filters, -1) * scale[:, None], bias)

    def infer(self, shape):
        if len(shape) != 4:
            self.node.shape_error(f"needs a 4-D NCHW input, got shape {shape}")
        channels = self.groups * self.group_channels
        if shape[1] not in (None, channels):
            self.node.shape_error(f"needs {channels} input channels, got shape {shape}")
        return (shape[0], self.filters) + tuple(
            window_out(self.node, i, shape[2 + i], self.kernel[i], self.stride[i], self.pad[i], self.dilate[i])
            for i in range(2))

    def run(self, x, out=None):
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.pad, self.dilate
        oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        g = self.groups
        weight, add_bias = self.weight, self.bias is not None
        if xnor.has_direct_float_conv():
            target = out if out is not None and planes_contiguous(out) else np.empty((n, self.filters, oh, ow), F32)
            xnor.float_conv2d(np.ascontiguousarray(x), self.weight_t, self.bias, target, self.kernel, self.stride,
                              self.pad, self.dilate, self.threads)
            return target if out is None or target is out else into(target, out)
        if (kh, kw, ph, pw, sh, sw) == (1, 1, 0, 0, 1, 1):
            cols = x.reshape(n, g, c // g, oh * ow)
        else:
            padded = zero_padded(self.scratch("pad", (n, c, h + 2 * ph, w + 2 * pw)), x, ph, pw) if ph or pw else x
            s = padded.strides
            taps = np.lib.stride_tricks.as_strided(
                padded, (n, g, c // g, kh, kw, oh, ow),
                (s[0], s[1] * (c // g), s[1], s[2] * dh, s[3] * dw, s[2] * sh, s[3] * sw), writeable=False)
            rows = (c // g) * kh * kw
            cols = self.scratch("cols", (n, g, rows + add_bias, oh * ow))
            np.copyto(cols[:, :, :rows].reshape(taps.shape), taps)
            if add_bias:
                cols[:, :, rows] = 1
                weight, add_bias = self.weight_and_bias, False
        shape = (n, g, self.filters // g, oh * ow)
        if out is not None and out.flags.c_contiguous:
            np.matmul(weight, cols, out=out.reshape(shape))
        else:
            out = into(np.matmul(weight, cols).reshape(n, self.filters, oh, ow), out)
        if add_bias:
            out += self.bias.reshape(-1, 1, 1)
        return out


class _XnorConv(Op):
    """bmx_xnor_conv2d: conv(pad_{pad_value}(sign(data)), sign(W)) on packed bits (bmx.xnor.conv2d).

    The weight is int64 (O, KH, KW, words) holding the uint64 words of bmx.xnor.pack_weights; its
    PackedWeights are built once per input channel count (known at load time for these models).
    ``input_threshold``: the (m, u) of a BatchNorm before it that Model._rewrite folded into the
    packing of its input (see _BatchNormSign.input_threshold), or None.
    """

    takes_params = True

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        read_window(self, node)
        self.filters = node.int("num_filter", REQUIRED)
        self.pad_value = node.float("pad_value", -1.0)
        if self.pad_value not in (-1.0, 0.0):
            node.fail(f"pad_value={self.pad_value} is not -1 or 0")
        if len(params) != 1:
            node.fail(f"expects data and a packed weight, got {len(params) + 1} inputs")
        words = params[0]
        if words.dtype != np.int64 or words.ndim != 4 or words.shape[0] != self.filters or \
                words.shape[1:3] != self.kernel or self.filters % self.groups:
            node.fail(f"weight must be int64 (num_filter={self.filters}, {self.kernel[0]}, {self.kernel[1]}, words) "
                      f"with num_filter divisible by num_group={self.groups}; got {words.dtype} {words.shape}")
        self.words = np.ascontiguousarray(words).view(np.uint64)
        self.threads = runtime.threads
        self.packed = {}  # input channels -> PackedWeights
        self.input_threshold = None

    def weights_for(self, channels):
        if channels not in self.packed:
            if channels % self.groups:
                self.node.shape_error(f"{channels} input channels do not split into num_group={self.groups}")
            group_channels = channels // self.groups
            if xnor.words_for_bits(group_channels) != self.words.shape[3]:
                self.node.shape_error(f"the packed weight holds {self.words.shape[3]} words per tap, "
                                      f"which does not fit {group_channels} channels per group")
            try:
                self.packed[channels] = xnor.PackedWeights(self.words, in_channels=group_channels, groups=self.groups)
            except ValueError as err:
                self.node.fail(f"invalid packed weight: {err}")
        return self.packed[channels]

    def infer(self, shape):
        if len(shape) != 4:
            self.node.shape_error(f"needs a 4-D NCHW input, got shape {shape}")
        if shape[1] is not None:
            self.weights_for(shape[1])
            if self.input_threshold is not None and self.input_threshold[0].size != shape[1]:
                self.node.shape_error(f"the BatchNorm folded into it has {self.input_threshold[0].size} "
                                      f"channels but its input has shape {shape}")
        return (shape[0], self.filters) + tuple(
            window_out(self.node, i, shape[2 + i], self.kernel[i], self.stride[i], self.pad[i], self.dilate[i])
            for i in range(2))

    def run(self, x, out=None):
        # the kernels write float32 NCHW themselves, into any out whose (H, W) planes are contiguous
        # (a channel slice of a Concat's buffer is)
        target = out if out is not None and planes_contiguous(out) else np.empty(self.infer(x.shape), F32)
        xnor.conv2d(x, self.packed[x.shape[1]], stride=self.stride, padding=self.pad, dilation=self.dilate,
                    pad_value=self.pad_value, input_threshold=self.input_threshold, out=target,
                    threads=self.threads)
        return target if target is out or out is None else into(target, out)


def planes_contiguous(a):
    """Whether each (H, W) plane of the 4-D float32 array ``a`` is contiguous (strides >= 0)."""
    n, c, h, w = a.shape
    s = a.strides
    return (s[3] == 4 or w == 1) and (s[2] == 4 * w or h == 1) and s[0] >= 0 and s[1] >= 0


class _Pooling(Op):
    """max / avg / sum pooling with MXNet's conventions: 'valid' (floor) or 'full' (ceil) output
    sizes; avg divides by the window clipped to the padded input (count_include_pad, the default)
    or to the input; max is MXNet's loop, starting from float32's lowest value and taking greater
    values only (padding and NaN never win; a window of padding only gives the lowest value), in C
    (floatops.h)."""

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        self.kind = node.str("pool_type", "max", choices=("max", "avg", "sum"))
        self.global_pool = node.bool("global_pool", False)
        self.ceil = node.str("pooling_convention", "valid", choices=("valid", "full")) == "full"
        self.include_pad = node.bool("count_include_pad", True)
        if node.str("layout", "NCHW") != "NCHW":
            node.fail(f"layout {node.attrs['layout']} is not supported (only NCHW)")
        if not self.global_pool:
            self.kernel = node.pair("kernel", REQUIRED)
            self.stride = node.pair("stride", (1, 1))
            self.pad = node.pair("pad", (0, 0))
        self.divisors = {}  # (H, W) -> avg divisor per output position
        self.scratch = runtime.scratch
        self.threads = runtime.threads
        # what Model._rewrite folded into a max pooling's output loop: x * scale (+ shift) per
        # channel, then ReLU
        self.scale = self.shift = None
        self.relu = False

    def commutes_with_monotone(self):
        """max(f(x)) = f(max(x)) over every window for a non-decreasing f (ReLU, x * s + b with
        s >= 0; rounding keeps them non-decreasing), unless a window holds padding only ('full'
        windows can overhang the padded input, and so can a pad as large as the kernel; and windows
        of NaN or -inf only, which give the lowest value either way, aside)."""
        return self.kind == "max" and (self.global_pool or not self.ceil and self.pad[0] < self.kernel[0]
                                       and self.pad[1] < self.kernel[1])

    def infer(self, shape):
        if len(shape) != 4:
            self.node.shape_error(f"needs a 4-D NCHW input, got shape {shape}")
        if self.scale is not None and shape[1] not in (None, self.scale.size):
            self.node.shape_error(f"the per-channel scale folded into it has {self.scale.size} channels but its "
                                  f"input has shape {shape}")
        if self.global_pool:
            return shape[:2] + (1, 1)
        return shape[:2] + tuple(window_out(self.node, i, shape[2 + i], self.kernel[i], self.stride[i], self.pad[i],
                                            ceil=self.ceil) for i in range(2))

    def run(self, x, out=None):
        if self.kind == "max":
            return self._max(x, out)
        if self.global_pool:
            flat = x.reshape(x.shape[0], x.shape[1], -1)
            reduce = np.mean if self.kind == "avg" else np.sum
            return into(reduce(flat, axis=2).reshape(x.shape[:2] + (1, 1)), out)
        n, c, h, w = x.shape
        oh, ow = self.infer(x.shape)[2:]
        # separable, rows of each window first (contiguous, fast), then its columns; taps that fall
        # on padding are skipped instead of padding a copy (padding adds 0 to a sum)
        rows = self.scratch("rows", (n, c, oh, w))
        rows = sum_axis(x, 2, oh, self.kernel[0], self.stride[0], self.pad[0], rows)
        out = sum_axis(rows, 3, ow, self.kernel[1], self.stride[1], self.pad[1],
                       np.empty((n, c, oh, ow), F32) if out is None else out)
        if self.kind == "avg":
            count = self._window_sizes(h, w, oh, ow)
            np.divide(out, count, out=out, where=count > 0)  # an empty window sums to 0: it stays 0
        return out

    def _max(self, x, out):
        geometry = ((x.shape[2], x.shape[3]), (1, 1), (0, 0)) if self.global_pool else \
            (self.kernel, self.stride, self.pad)
        if not planes_contiguous(x):
            x = np.ascontiguousarray(x)
        target = out if out is not None and planes_contiguous(out) else np.empty(self.infer(x.shape), F32)
        xnor.float_max_pool(x, target, *geometry, self.scale, self.shift, self.relu, self.threads)
        return target if out is None or target is out else into(target, out)

    def _window_sizes(self, h, w, oh, ow):
        if (h, w) not in self.divisors:
            sizes = []
            for size, out_size, k, s, p in ((h, oh, self.kernel[0], self.stride[0], self.pad[0]),
                                            (w, ow, self.kernel[1], self.stride[1], self.pad[1])):
                start = np.arange(out_size) * s - p
                end = np.minimum(start + k, size + p)
                if not self.include_pad:
                    start, end = np.maximum(start, 0), np.minimum(end, size)
                sizes.append(np.maximum(end - start, 0))
            self.divisors[(h, w)] = np.outer(sizes[0], sizes[1]).astype(F32)
        return self.divisors[(h, w)]


def sum_axis(x, axis, size, kernel, stride, pad, out):
    """out (``size`` along ``axis``) = the sums of x over windows of ``kernel`` along ``axis``:
    out[o] = sum over k of x[o * stride + k - pad], skipping indices outside x (0 if none is in)."""
    length = x.shape[axis]
    lead = (slice(None),) * axis
    spans = []
    for k in range(kernel):
        first = max(0, -(-(pad - k) // stride))  # first output whose tap k lands inside x
        last = min(size, (length - 1 - k + pad) // stride + 1)
        if first < last:
            start = first * stride + k - pad
            spans.append((first, last, x[lead + (slice(start, start + (last - first - 1) * stride + 1, stride),)]))
    full = [i for i, (first, last, _) in enumerate(spans) if (first, last) == (0, size)]
    if full:
        np.copyto(out, spans.pop(full[0])[2])
    else:
        out.fill(0)
    for first, last, tap in spans:
        target = out[lead + (slice(first, last),)]
        np.add(target, tap, out=target)
    return out


def zero_padded(buffer, x, ph, pw):
    """NCHW ``x`` written into ``buffer`` (H + 2 ph, W + 2 pw) with zeros around it."""
    h, w = x.shape[2:]
    buffer[:, :, :ph] = 0
    buffer[:, :, ph + h:] = 0
    buffer[:, :, ph:ph + h, :pw] = 0
    buffer[:, :, ph:ph + h, pw + w:] = 0
    buffer[:, :, ph:ph + h, pw:pw + w] = x
    return buffer


class _FullyConnected(Op):
    """x W^T + b over the flattened input (flatten, the default) or over its last axis: floatops.h's
    1x1 convolution where its AVX2 / AVX-512 variants run, else BLAS (they agree up to rounding)."""

    takes_params = True

    def __init__(self, node, params, runtime):
        super().__init__(node, params, runtime)
        hidden = node.int("num_hidden", REQUIRED)
        no_bias = node.bool("no_bias", False)
        self.flatten = node.bool("flatten", True)
        if len(params) != (1 if no_bias else 2):
            node.fail(f"expects {'data, weight' if no_bias else 'data, weight, bias'}, got {len(params) + 1} inputs")
        if params[0].ndim != 2 or params[0].shape[0] != hidden:
            node.fail(f"weight shape {params[0].shape} does not fit num_hidden={hidden}")
        self.weight_t = np.ascontiguousarray(params[0].T, dtype=F32)
        self.bias = None if no_bias else params[1].astype(F32).reshape(-1)
        self.threads = runtime.threads

    def infer(self, shape):
        units = self.weight_t.shape[0]
        features = product(shape[1:]) if self.flatten else shape[-1]
        if features not in (None, units):
            self.node.shape_error(f"needs {units} input features, got shape {shape}")
        return (shape[0], self.weight_t.shape[1]) if self.flatten else shape[:-1] + (self.weight_t.shape[1],)

    def run(self, x, out=None):
        x2 = x.reshape(x.shape[0], -1) if self.flatten else x
        if xnor.has_direct_float_conv() and out is not None and out.flags.c_contiguous:
            # floatops.h's 1x1 convolution on the model's threads (not BLAS's, see _Convolution), with
            # the roles turned: the image is W^T (channel c = row c, its pixels the output units), the
            # filters are the rows of x, and output plane n = row n of out
            rows, units = x2.size // self.weight_t.shape[0], self.weight_t.shape[1]
            xnor.float_conv2d(self.weight_t.reshape(1, -1, 1, units),
                              np.ascontiguousarray(x2.reshape(rows, -1).T)[None], None,
                              out.reshape(1, rows, 1, units), (1, 1), (1, 1), (0, 0), (1, 1), self.threads)
        else:
            out = np.matmul(x2, self.weight_t, out=out)
        if self.bias is not None:
            out += self.bias
        return out

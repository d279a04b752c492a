"""int8 full-precision layers: calibration and quantization of a packed float model (docs/packed.md).

Every full-precision ``Convolution`` and ``FullyConnected`` (flatten) of a packed model whose
weight is a stored parameter becomes ``bmx_int8_conv2d`` / ``bmx_int8_dense``; the binary layers
(``bmx_xnor_conv2d``) stay binary and every other op stays float. For a layer with float weight
W (O, ...), bias b and input x:

* weight: symmetric, per output channel: ``w_s[o] = float32(max|W[o]| / 127)`` (1 for an all-zero
  channel), ``Wq[o] = clip(round_half_even(W[o] / w_s[o]), -127, 127)`` as int8;
* input: symmetric, per tensor: ``s = float32(a / 127)`` with ``a`` the ``percentile``-th
  percentile of |x| over the calibration images (100: the maximum), found by running the float
  packed model (bmx.runtime) on them; 1 if every x was 0;
* the layer computes ``acc * float32(s * w_s[o]) + b[o]`` with ``acc`` the int32 convolution (or
  product) of ``clip(round_half_even(x / s), -127, 127)`` and Wq (bmx/runtime/ops/int8.py).

Calibration images are read like ``example/evaluate.py`` reads them (a .rec file or class
folders, :mod:`bmx.datafiles`, the model's own preprocessing): ``count`` of them evenly spaced
over the file, leaving out the hold-out when the file is the model's training file (model.json's
``data``: record count, fingerprint, ``val_size``, ``split_seed``). The same images give the
same bytes. The agreement with the float model is measured on as many other images, halfway
between the calibration images (disjoint from them when the file has at least twice as many).

numpy and bmx.runtime only: quantizing a packed model needs no mxnet.
"""
import copy
import math
import os

import numpy as np

from .. import __version__, datafiles, images, packed, runtime, symbol_json
from .common import ConvertError, layer_name, new_variable, unique

__all__ = ["DEFAULT_CALIBRATION_IMAGES", "DEFAULT_PERCENTILE", "weight_scales", "activation_scale",
           "int8_layers", "select_images", "calibrate", "quantize", "agreement", "quantize_packed"]

DEFAULT_CALIBRATION_IMAGES = 256
DEFAULT_PERCENTILE = 100.0
BATCH = 64
_KEPT_ATTRS = {"Convolution": ("kernel", "stride", "pad", "dilate", "num_filter", "num_group", "no_bias"),
               "FullyConnected": ("num_hidden", "no_bias")}
_INT8_OP = {"Convolution": "bmx_int8_conv2d", "FullyConnected": "bmx_int8_dense"}


def weight_scales(w):
    """(int8 Wq, float32 (O,) w_s) of a float weight (O, ...): w_s[o] = float32(max|W[o]| / 127)
    (1 where W[o] is all zero), Wq = clip(round_half_even(W / w_s), -127, 127)."""
    w = np.asarray(w, np.float64)
    peak = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) if w.size else np.zeros(w.shape[0])
    scale = np.where(peak > 0, peak / 127, 1.0).astype(np.float32)
    per_channel = scale.astype(np.float64).reshape((-1,) + (1,) * (w.ndim - 1))
    return np.clip(np.rint(w / per_channel), -127, 127).astype(np.int8), scale


def activation_scale(peak):
    """float32(peak / 127), or 1 for a peak of 0 (every input was 0: any scale represents it)."""
    return np.float32(peak / 127) if peak > 0 else np.float32(1)


def int8_layers(graph, params):
    """Names of the nodes to make int8: Convolution, and FullyConnected with flatten, whose weight
    (and bias) are stored parameters; in graph order."""
    nodes = graph["nodes"]

    def stored(entry):
        node = nodes[entry[0]]
        return node["op"] == "null" and f"arg:{node['name']}" in params

    chosen = []
    for node in nodes:
        attrs = node.get("attrs", {})
        if node["op"] not in _INT8_OP or not all(stored(e) for e in node["inputs"][1:]):
            continue
        if node["op"] == "FullyConnected" and not symbol_json.parse_bool(attrs.get("flatten", "True")):
            continue
        if node["op"] == "Convolution" and attrs.get("layout", "NCHW") not in ("NCHW", "None"):
            continue
        chosen.append(node["name"])
    return chosen


def _training_holdout(path, meta, total):
    """The hold-out record indices if ``path`` is the model's training file, else an empty array."""
    info = (meta or {}).get("data")
    if not isinstance(info, dict) or not info.get("val_size") or info.get("train_records") != total:
        return np.empty(0, np.int64)
    if info.get("train_fingerprint") not in (None, datafiles.fingerprint(path)):
        return np.empty(0, np.int64)
    return datafiles.heldout_indices(total, info["val_size"], info.get("split_seed", datafiles.CIFAR10_SPLIT_SEED))


def select_images(path, count, meta=None):
    """(calibration indices, agreement indices, number of hold-out images left out) into ``path``:
    ``count`` images evenly spaced over the file (after leaving out the hold-out, see the module
    docstring), and ``count`` more halfway between them."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ConvertError(f"--calibration-images must be a positive integer, got {count!r}")
    if os.path.isdir(path):
        total, excluded = len(datafiles.folder_images(path)[1]), np.empty(0, np.int64)
    elif path.endswith(".rec"):
        total = len(datafiles.read_index(path)[0])
        excluded = _training_holdout(path, meta, total)
    else:
        raise ConvertError(f"--calibrate {path}: expected a .rec file (with its .idx beside it) or a directory of "
                           "class folders, as example/evaluate.py --data")
    available = np.setdiff1d(np.arange(total), excluded)
    if count > available.size:
        raise ConvertError(f"--calibration-images {count} is more than the {available.size} images of {path}"
                           + (f" outside its {excluded.size} held-out images" if excluded.size else ""))
    k = np.arange(count)
    return (available[k * available.size // count], available[(2 * k + 1) * available.size // (2 * count)],
            int(excluded.size))


def _batches(path, indices, preprocessing):
    """(float32 NCHW inputs, int labels) in batches of BATCH, in index order."""
    readers = datafiles.image_readers(path, indices)
    for start in range(0, len(readers), BATCH):
        pictures, labels = zip(*(read() for read in readers[start:start + BATCH]))
        yield (np.concatenate([images.evaluation_input(p, preprocessing) for p in pictures]),
               np.asarray(labels))


class _Peak:
    """The ``percentile``-th percentile of |x| over every value seen, as numpy's percentile with
    method 'higher' (of the n values sorted ascending, the one at index ceil(p / 100 (n - 1))),
    from the largest values kept across batches; the maximum for 100."""

    def __init__(self, percentile, total):
        self.keep = total - math.ceil(percentile / 100 * (total - 1))
        self.largest = np.empty(0, np.float32)

    def add(self, x):
        values = np.concatenate([self.largest, np.abs(x).ravel()])
        if values.size > self.keep:
            values = np.partition(values, values.size - self.keep)[values.size - self.keep:]
        self.largest = values

    def value(self):
        return float(self.largest.min()) if self.largest.size else 0.0


def calibrate(model, batches, images, layers, percentile=DEFAULT_PERCENTILE, threads=None):
    """{layer node name: float peak |input|} of ``layers`` of the float packed ``model`` (a
    bmx.packed.PackedModel) over ``batches``, float32 NCHW inputs of ``images`` images in all
    (see :class:`_Peak`)."""
    if not (isinstance(percentile, (int, float)) and not isinstance(percentile, bool) and 0 < percentile <= 100):
        raise ConvertError(f"the calibration percentile must be in (0, 100], got {percentile!r}")
    graph = copy.deepcopy(model.graph)
    by_name = {n["name"]: n for n in graph["nodes"]}
    graph["heads"] = graph["heads"] + [list(by_name[name]["inputs"][0]) for name in layers]
    probe = runtime.Model(packed.PackedModel(graph, model.params, model.meta, model.directory), threads)
    heads, peaks = len(model.graph["heads"]), None
    for x in batches:
        values = probe(x)[heads:]
        if peaks is None:
            peaks = [_Peak(percentile, images * v[0].size) for v in values]
        for peak, v in zip(peaks, values):
            peak.add(v)
    if peaks is None:
        raise ConvertError("no calibration images: calibrating needs at least one batch")
    return {name: peak.value() for name, peak in zip(layers, peaks)}


def quantize(graph, params, peaks, source="the model"):
    """(int8 graph, params, per-layer report) of a packed float model: the layers of ``peaks``
    ({node name: peak |input|}) become int8 (module docstring); their float weights are dropped."""
    nodes, heads, top_attrs = symbol_json.parse(graph, source, ConvertError)
    taken = {n.name for n in nodes}
    params = dict(params)
    report = []
    for node in nodes:
        if node.name not in peaks:
            continue
        weight_var = node.inputs[1][0]
        wq, w_scale = weight_scales(params.pop(f"arg:{weight_var.name}"))
        x_scale = activation_scale(peaks[node.name])
        base = layer_name(weight_var.name)
        new = []
        for suffix, array in (("int8_weight", wq), ("weight_scale", w_scale), ("input_scale", x_scale.reshape(1))):
            var = new_variable(unique(f"{base}_{suffix}", taken), array)
            params[f"arg:{var.name}"] = array
            new.append((var, 0))
        node.inputs = [node.inputs[0]] + new + node.inputs[2:]
        report.append(dict(node=node.name, op=node.op, int8_op=_INT8_OP[node.op], weight_shape=list(wq.shape),
                           input_peak=peaks[node.name], input_scale=float(x_scale),
                           weight_scale_min=float(w_scale.min()), weight_scale_max=float(w_scale.max())))
        node.attrs = {k: v for k, v in node.attrs.items() if k in _KEPT_ATTRS[node.op]}
        node.op = _INT8_OP[node.op]
    out = symbol_json.to_json(heads, top_attrs)
    used = {n["name"] for n in out["nodes"] if n["op"] == "null"}
    return out, {k: v for k, v in params.items() if k.partition(":")[2] in used}, report


def agreement(float_model, int8_model, path, indices, preprocessing):
    """How the int8 model agrees with the float one on the images ``indices`` of ``path``: top-1
    agreement, max |logit difference|, and each model's top-1 against the labels."""
    same = right_float = right_int8 = 0
    worst = 0.0
    for x, labels in _batches(path, indices, preprocessing):
        a, b = float_model(x), int8_model(x)
        same += int(np.sum(a.argmax(axis=1) == b.argmax(axis=1)))
        right_float += int(np.sum(a.argmax(axis=1) == labels))
        right_int8 += int(np.sum(b.argmax(axis=1) == labels))
        worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))))
    n = len(indices)
    return dict(images=n, top1_agreement=same / n, max_abs_logit_diff=worst, float_top1=right_float / n,
                int8_top1=right_int8 / n)


def quantize_packed(model, data, *, count=DEFAULT_CALIBRATION_IMAGES, percentile=DEFAULT_PERCENTILE, verify=False,
                    threads=None):
    """(graph, params, meta) of the int8 version of the packed float model ``model`` (a
    bmx.packed.PackedModel), calibrated on ``count`` images of ``data``; with ``verify``, the
    agreement (:func:`agreement`) is measured on ``count`` other images (disjoint from the
    calibration images if ``data`` has at least ``2 count``) and recorded in
    ``meta["packed"]["int8"]["verified"]``."""
    source = os.path.join(model.directory or "the model", packed.SYMBOL_FILE)
    prep = model.meta.get("preprocessing")
    if prep is None:
        raise ConvertError(f"{source}: model.json has no preprocessing entry, so calibration images cannot be "
                           "prepared the way the model expects")
    layers = int8_layers(model.graph, model.params)
    if not layers:
        raise ConvertError(f"{source}: no full-precision Convolution or FullyConnected layer to make int8")
    chosen, others, held_out = select_images(data, count, model.meta)
    batches = (x for x, _ in _batches(data, chosen, prep))
    peaks = calibrate(model, batches, len(chosen), layers, percentile, threads)
    graph, params, report = quantize(model.graph, model.params, peaks, source)
    calibration = dict(data=os.path.abspath(data), images=len(chosen), holdout_images_left_out=held_out,
                       percentile=percentile)
    info = dict(model.meta.get("packed", {}), int8=dict(layers=report, calibration=calibration,
                                                           bmx_version=__version__))
    info.pop("params_sha256", None)
    meta = dict(model.meta, packed=info)
    if verify:
        float_model = runtime.Model(model, threads)
        int8_model = runtime.Model(packed.PackedModel(graph, params, meta, model.directory), threads)
        info["int8"]["verified"] = dict(agreement(float_model, int8_model, data, others, prep),
                                        disjoint_from_calibration=not np.intersect1d(chosen, others).size)
    return graph, params, meta

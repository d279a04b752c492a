"""Checking a packed model against the exported original (layers exactly, outputs to tolerance)."""
import copy
import json
import os
import tempfile
import warnings

import mxnet as mx
import numpy as np

from .. import model_io, packed, quantizer_math, runtime, symbol_json, xnor
from .common import SIGN_OPS, XNOR_OP, ConvertError, VerificationError


def _run_mxnet(graph, params_file, x):
    """Outputs (list of numpy arrays) of a symbol JSON dict run on x with bmx.imports."""
    with tempfile.TemporaryDirectory() as tmp:
        symbol_file = os.path.join(tmp, "probe-symbol.json")
        with open(symbol_file, "w") as f:
            json.dump(graph, f)
        with warnings.catch_warnings():
            # SymbolBlock.imports warns that it cannot infer the input's type before it sees the input
            warnings.filterwarnings("ignore", message="Cannot decide type")
            return _outputs(model_io.imports(symbol_file, params_file)(mx.nd.array(x)))


def _outputs(result):
    if isinstance(result, (list, tuple)):
        return [np.asarray(r.asnumpy() if hasattr(r, "asnumpy") else r) for r in result]
    return [np.asarray(result.asnumpy() if hasattr(result, "asnumpy") else result)]


def _quantized(point, x):
    """What the activation quantizer at a decision point makes of x (for comparing decisions)."""
    if point["bits"] is None:
        return x >= 0
    return quantizer_math.activation_codes(x, point["bits"])


def _to_boundary(point, x):
    """How far x is from the nearest value where the quantizer's output jumps."""
    if point["bits"] is None:
        return np.abs(x)
    levels = quantizer_math.levels(point["bits"])
    v = np.clip(x, 0, 1) * levels
    return np.abs(v - np.floor(v) - 0.5) / levels


def _decision_points(nodes, layers, graph):
    """The activation quantizers of the packed graph, in the original graph's order.

    Each is a dict: ``label``; ``original`` (the entry of its input in the original graph),
    ``packed`` (the same input in the packed graph, as a JSON entry); ``bits`` (None for a sign,
    k for the k-bit quantizer). The packed layers' inputs come first in the list of each kind.
    """
    by_name = {n.name: n for n in nodes}
    position = {id(n): i for i, n in enumerate(nodes)}
    packed_nodes = {n["name"]: n for n in graph["nodes"]}
    points = [dict(label=f"layer {layer['layer']} (node '{layer['node']}')", bits=None,
                   original=(by_name[layer["input"][0]], layer["input"][1]),
                   packed=packed_nodes[layer["packed_node"]]["inputs"][0]) for layer in layers]
    for n in graph["nodes"]:
        if n["op"] in SIGN_OPS + ("bmx_quantize_act",):
            bits = int(n["attrs"]["bits"]) if n["op"] == "bmx_quantize_act" else None
            points.append(dict(label=f"node '{n['name']}' ({n['op']})", bits=bits,
                               original=by_name[n["name"]].inputs[0], packed=n["inputs"][0]))
    return sorted(points, key=lambda p: position[id(p["original"][0])])


def _check_path(name, original, got, points, rtol, atol, flip_tol):
    """Compares one way of running the packed model with the original, sample by sample.

    ``original`` and ``got`` are the model outputs followed by the values at the decision points
    (:func:`_decision_points`). A sample's outputs must agree within ``atol * max|original| + rtol
    * |original|``, unless float rounding legitimately changed a quantizer's decision: at the first
    decision point (in graph order) where a decision differs, it may differ only where the original
    input is within ``flip_tol`` (relative to its largest value) of a jump, and the inputs of all
    points up to it must agree within the same tolerance as the outputs. Such a sample is counted,
    not compared further. Returns (max |diff| over the compared samples, number of samples excused);
    VerificationError naming the output or decision point otherwise.
    """
    heads = len(original) - len(points)
    for i, (a, b) in enumerate(zip(original, got)):
        if a.shape != b.shape:
            what = f"output {i}" if i < heads else f"the input of {points[i - heads]['label']}"
            raise VerificationError(f"{name}: {what} has shape {b.shape}, the original {a.shape}")
    worst, excused = 0.0, 0
    for n in range(original[0].shape[0]):
        diffs = [np.abs(a[n].astype(np.float64) - b[n]) for a, b in zip(original[:heads], got[:heads])]
        bad = [not np.all(d <= atol * np.max(np.abs(a[n])) + rtol * np.abs(a[n])) for a, d in zip(original, diffs)]
        if not any(bad):
            worst = max([worst] + [float(d.max()) for d in diffs if d.size])
            continue
        for point, x, y in zip(points, original[heads:], got[heads:]):
            x, y = x[n].ravel(), y[n].ravel()
            scale = float(np.max(np.abs(x))) if x.size else 0.0
            changed = _quantized(point, x) != _quantized(point, y)
            off = np.abs(x.astype(np.float64) - y) > atol * scale + rtol * np.abs(x)
            if np.any(off & ~changed):
                raise VerificationError(f"{name}: the input of {point['label']} differs from the original by up to "
                                        f"{np.max(np.abs(x - y)):.3g} (sample {n}, scale {scale:.3g})")
            if np.any(changed):
                distance = float(np.max(_to_boundary(point, x[changed])))
                if distance > flip_tol * scale:
                    raise VerificationError(f"{name}: {int(changed.sum())} quantized value(s) at {point['label']} "
                                            f"differ from the original, whose inputs are up to {distance:.3g} from "
                                            f"a rounding boundary (sample {n}, scale {scale:.3g})")
                excused += 1
                break
        else:
            i = bad.index(True)
            raise VerificationError(f"{name}: output {i} differs from the original by up to {diffs[i].max():.3g} "
                                    f"(sample {n}, output scale {np.max(np.abs(original[i][n])):.3g}, tolerance "
                                    f"rtol {rtol} / atol {atol} x scale)")
    return worst, excused


def verify_packed(symbol_file, params_file, packed_dir, report, input_shape, seed=0, rtol=1e-3, atol=1e-3,
                  flip_tol=1e-4):
    """Checks a packed model against the exported original on seeded random inputs.

    * every packed layer, EXACTLY: the original graph's input of the layer (an internal output
      of the original symbol) through :func:`bmx.xnor.conv2d` and through the MXNet op
      ``bmx_xnor_conv2d``, both with the stored packed weights, equals the original layer's output;
    * the whole model: bmx.runtime and MXNet (bmx.imports) running the packed model agree with
      the original within rtol * |original| + atol * max|original|, sample by sample. The
      runtime's float ops round differently from MXNet's, so an activation quantizer's input
      within rounding of a jump (0 for a sign) may be decided the other way, which changes
      everything after it: a sample whose outputs differ is accepted only if the first differing
      decision had its input within ``flip_tol`` (relative) of the jump and the quantizer inputs
      up to it agree (see ``_check_path``); it is then counted in ``*_samples_excused``.

    Args:
        symbol_file, params_file: the original exported model.
        packed_dir: the packed model directory.
        report: :func:`convert`'s report for it (the layers to check).
        input_shape: NCHW shape of the random inputs (standard normal, seeded).

    Returns:
        A dict of what was checked and the largest differences. Raises VerificationError naming
        the layer or path and the max difference otherwise.
    """
    x = np.random.default_rng(seed).standard_normal(input_shape).astype(np.float32)
    nodes, heads, top_attrs = symbol_json.load(symbol_file, ConvertError)
    by_name = {n.name: n for n in nodes}
    layers, model = report["layers"], packed.load_model(packed_dir)
    points = _decision_points(nodes, layers, model.graph)
    outputs = [(by_name[layer["node"]], 0) for layer in layers]
    try:
        probe = symbol_json.to_json(heads + [p["original"] for p in points] + outputs, top_attrs)
        values = _run_mxnet(probe, params_file, x)
    except mx.MXNetError as err:
        raise ConvertError(f"{symbol_file}: the original model does not run on inputs of shape {input_shape} "
                           f"({str(err).strip().splitlines()[0]}); give the input size") from None
    original, layer_outputs = values[:len(heads) + len(points)], values[len(heads) + len(points):]

    layer_inputs = {p["label"]: v for p, v in zip(points, original[len(heads):])}
    for layer, expected in zip(layers, layer_outputs):
        inp = layer_inputs[f"layer {layer['layer']} (node '{layer['node']}')"]
        words = np.asarray(model.params[f"arg:{layer['packed_weight']}"])
        if layer["op"] == "FullyConnected":
            inp = inp.reshape(inp.shape[0], -1, 1, 1)
        weights = xnor.PackedWeights(words.view(np.uint64), layer["weight_shape"][1], layer["groups"])
        got = xnor.conv2d(inp, weights, stride=layer["stride"], padding=layer["pad"], dilation=layer["dilate"],
                          pad_value=float(layer["pad_value"]))
        attrs = dict(kernel=tuple(layer["kernel"]), stride=tuple(layer["stride"]), pad=tuple(layer["pad"]),
                     dilate=tuple(layer["dilate"]), num_filter=layer["packed_shape"][0], num_group=layer["groups"],
                     pad_value=str(layer["pad_value"]))
        op = getattr(mx.nd, XNOR_OP)(mx.nd.array(inp), mx.nd.array(words, dtype=np.int64), **attrs)
        for what, value in (("bmx.xnor.conv2d", got), (XNOR_OP, op.asnumpy())):
            value = value.reshape(expected.shape).astype(np.float64)
            diff = float(np.max(np.abs(value - expected))) if expected.size else 0.0
            if diff != 0.0:
                raise VerificationError(f"layer {layer['layer']} (node '{layer['node']}'): {what} differs from the "
                                        f"original layer's output by up to {diff:g} (must be exact)")

    probe = copy.deepcopy(model.graph)
    probe["heads"] = probe["heads"] + [list(p["packed"]) for p in points]
    in_runtime = runtime.Model(packed.PackedModel(probe, model.params, model.meta, packed_dir))
    runs = (("runtime", "bmx.runtime", _outputs(in_runtime(x))),
            ("mxnet", "MXNet (SymbolBlock.imports)",
             _run_mxnet(probe, os.path.join(packed_dir, packed.PARAMS_FILE), x)))
    result = dict(input_shape=list(input_shape), seed=seed, layers_checked_exactly=len(layers),
                  output_scale=max(float(np.max(np.abs(o))) for o in original[:len(heads)]))
    for key, name, got in runs:
        worst, excused = _check_path(name, original, got, points, rtol, atol, flip_tol)
        result[f"{key}_max_abs_diff"], result[f"{key}_samples_excused"] = worst, excused
    return result

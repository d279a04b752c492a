"""Files in, packed model directory out: checks on the source graph, convert, binarize."""
import os
import tempfile

import mxnet as mx
import numpy as np

from .. import __version__, _library, model_io, models, packed, runtime, symbol_json
from .common import COMPOSITE_MARKERS, SIGN_OPS, ConvertError, ints, layer_name
from .int8 import DEFAULT_CALIBRATION_IMAGES, DEFAULT_PERCENTILE, quantize_packed
from .rewrite import fold_constants, rewrite_binary_layers
from .sizes import serialized_size, split_params, theoretical_from_zoo, theoretical_size_from_graph, zoo_spec
from .source import resolve_source
from .verify import verify_packed



def check_source_graph(symbol_file, order, params, input_names):
    """Rejects graphs exported with the composite quantizers, or with missing or mis-shaped parameters."""
    for n in order:
        if n.op in COMPOSITE_MARKERS:
            raise ConvertError(
                f"{symbol_file}: node '{n.name}' (op {n.op}) shows the graph was exported with the composite "
                "(stock-operator) quantizer backend, whose binary layers cannot be recognized; re-export it "
                "with the native backend (bmx.quantizers.use_backend('native'), on a CPU)")
        if n.op != "null":
            continue
        if n.name not in params:
            if n.name not in input_names:
                raise ConvertError(f"{symbol_file}: variable '{n.name}' is neither an input {list(input_names)} "
                                   "nor stored in the parameter file")
            continue
        declared = n.attrs.get("__shape__")
        shape = ints(declared, None, None, f"variable '{n.name}'") if declared else None
        if shape and all(d > 0 for d in shape) and tuple(shape) != params[n.name].shape:
            raise ConvertError(f"{symbol_file}: variable '{n.name}' has shape {tuple(shape)} but the parameter "
                               f"file holds {params[n.name].shape}")


def check_runnable(order):
    """Every op left must be one that bmx.runtime runs and that MXNet knows (with bmx's library loaded)."""
    for n in order:
        if n.op not in runtime.SUPPORTED_OPS:
            raise ConvertError(f"node '{n.name}' (op {n.op}) is not supported by bmx.runtime, so the packed "
                               "model could not run without MXNet")
        if n.op != "null" and not _library.is_registered(n.op):
            raise ConvertError(f"node '{n.name}' (op {n.op}) is not an operator of this MXNet with the loaded bmx "
                               "library")


def convert(symbol_file, params_file, meta=None, input_names=("data",)):
    """Converts an exported bmx model into the packed model of docs/packed.md.

    Args:
        symbol_file: ``PREFIX-symbol.json`` written by :func:`bmx.export` (read as JSON).
        params_file: the matching ``PREFIX-NNNN.params`` (keys ``arg:NAME`` / ``aux:NAME``).
        meta: optional model.json metadata; when it names a zoo model (``config.model`` and
            ``config.model_kwargs`` as train_imagenet.py writes them, or top-level ``model`` /
            ``stem``), the theoretical size comes from :func:`bmx.summary` of that Gluon model.
        input_names: the graph's input variables (everything else must be in params_file).

    Returns:
        ``(graph, params, report)``: the symbol JSON as a dict; the parameters as
        ``{'arg:NAME' | 'aux:NAME': numpy array}`` (packed binary weights int64, all else float32);
        a JSON-ready report dict (``layers``: per binary layer what was packed and its bytes
        before/after; ``constants``: folded scales and unpacked quantized weights; ``warnings``;
        ``sizes``: ``params_file_bytes``, ``packed_params_bytes``, ``theoretical_bytes`` and its
        ``theoretical_source``).

    Raises:
        ConvertError: unreadable or inconsistent files, composite-backend graphs, or ops left
            that the packed model cannot run (each message names the file or node and op).
        bmx.packed.PackedFormatError: a parameter file that is not an MXNet NDArray file.
    """
    nodes, heads, top_attrs = symbol_json.load(symbol_file, ConvertError)
    raw = packed.read_params(params_file)
    params, kinds = split_params(raw, params_file)
    order = symbol_json.topological(heads)
    check_source_graph(symbol_file, order, params, tuple(input_names))
    theoretical_graph = theoretical_size_from_graph(order, params, kinds)
    latent_before = {n.name: params[n.name].nbytes for n in order if n.op == "null" and n.name in params}
    taken = {n.name for n in nodes}

    heads, done, warnings = rewrite_binary_layers(order, heads, params, taken)
    for match, conv, weight_var, latent in done:
        kinds[weight_var.name] = "arg"
    heads, folds = fold_constants(heads, params, taken, kinds, top_attrs)
    order = symbol_json.topological(heads)
    check_runnable(order)

    used = [n.name for n in order if n.op == "null" and n.name in params]
    out_params = {f"{kinds[name]}:{name}": params[name] for name in used}
    graph = symbol_json.to_json(heads, top_attrs)

    layers = []
    for match, conv, weight_var, latent in done:
        words = params[weight_var.name]
        layers.append(dict(
            layer=layer_name(match.weight.name), node=match.node.name, op=match.node.op, pattern=match.pattern,
            packed_node=conv.name, input=[match.data[0].name, match.data[1]], weight=match.weight.name,
            packed_weight=weight_var.name,
            weight_shape=list(latent.shape), packed_shape=list(words.shape), groups=match.groups,
            kernel=list(match.kernel), stride=list(match.stride), pad=list(match.pad),
            dilate=list(match.dilate), pad_value=match.pad_value, bytes_before=int(latent.nbytes),
            bytes_after=int(words.nbytes), theoretical_bytes=latent.size / 8))
    constants = []
    for fold in folds:
        kind = ("quantized weight (float32 values, not packed)" if fold["bits"] is not None
                else "scale (apply_scaling)" if "abs" in fold["ops"] and "mean" in fold["ops"] else "constant")
        constants.append(dict(fold, kind=kind,
                              bytes_before=int(sum(latent_before.get(s, 0) for s in fold["sources"])),
                              bytes_after=int(params[fold["constant"]].nbytes)))
        if fold["bits"] is not None:
            warnings.append(f"{fold['node']}: {fold['bits']}-bit weights of {', '.join(fold['sources'])} are not fed "
                            "by 1-bit activations, so they are stored as float32 values, not packed")
    dropped = sorted(set(latent_before) - set(used))

    spec = zoo_spec(meta)
    theoretical, source = theoretical_graph, "the exported graph (bmx.summary's rules)"
    if spec is not None:
        try:
            theoretical = theoretical_from_zoo(spec)
            source = f"bmx.summary of zoo model {spec[0]} {spec[1]}"
        except (ValueError, TypeError) as err:
            warnings.append(f"model.json names zoo model {spec[0]!r}, which cannot be summarized ({err}); "
                            "the theoretical size is computed from the graph")
        if abs(theoretical - theoretical_graph) > 1:
            warnings.append(f"bmx.summary of {spec[0]} gives {theoretical:.0f} bytes but the graph "
                            f"{theoretical_graph:.0f}: model.json may not describe this model")
    packed_bytes = serialized_size(out_params)
    sizes = dict(params_file_bytes=os.path.getsize(params_file), packed_params_bytes=packed_bytes,
                 theoretical_bytes=theoretical, theoretical_graph_bytes=theoretical_graph,
                 theoretical_source=source, packed_over_theoretical=packed_bytes / theoretical if theoretical else None)
    report = dict(symbol_file=os.path.abspath(symbol_file), params_file=os.path.abspath(params_file),
                  layers=layers, constants=constants, dropped_parameters=dropped, warnings=warnings, sizes=sizes)
    return graph, out_params, report


def check_output(output_dir, inputs, force):
    """Refuses an existing output without force, and an output that would replace or hold an input."""
    out = os.path.realpath(output_dir)
    for path in inputs:
        real = os.path.realpath(path)
        if real == out or real.startswith(out + os.sep):
            raise ConvertError(f"output {output_dir} would replace the input {path}: choose another directory")
    if os.path.lexists(output_dir) and not force:
        raise ConvertError(f"output {output_dir} exists (pass --force to replace it)")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise ConvertError(f"output {output_dir}: the directory {parent} does not exist")


def packed_meta(meta, report, sources):
    """The packed model's model.json: the source metadata plus a "packed" entry (format, sources, sizes)."""
    sizes = report["sizes"]
    info = dict(bmx_version=__version__, source_files=sources,
                params_file_bytes=sizes["params_file_bytes"], packed_params_bytes=sizes["packed_params_bytes"],
                theoretical_bytes=sizes["theoretical_bytes"], theoretical_source=sizes["theoretical_source"],
                packed_layers=len(report["layers"]))
    if "verify" in report:
        info["verified"] = report["verify"]
    return dict(meta or {}, packed=info)


def input_shape(symbol_file, params_file, spec, input_size, batch):
    """NCHW shape of the verification inputs: the channels a convolution reading the input
    (through signs and pads) expects, else 3; the size input_size, else the metadata's, else 224."""
    channels = 3
    nodes, _, _ = symbol_json.load(symbol_file, ConvertError)
    params = packed.read_params(params_file)
    for n in nodes:
        if n.op != "Convolution" or len(n.inputs) < 2:
            continue
        src = n.inputs[0][0]
        while src.op in SIGN_OPS + ("Pad",) and src.inputs:
            src = src.inputs[0][0]
        weight = n.inputs[1][0]
        while weight.op != "null" and weight.inputs:  # through the weight quantizer
            weight = weight.inputs[0][0]
        shape = params.get(f"arg:{weight.name}", np.empty(0)).shape
        if src.op == "null" and f"arg:{src.name}" not in params and len(shape) == 4:
            channels = shape[1] * ints(n.attrs.get("num_group"), (1,), 1, n.name)[0]
            break
    size = input_size or (spec[4] if spec else 224)
    return (batch, channels, size, size)


def binarize(source, output_dir, *, epoch=None, force=False, verify=False, input_size=None, seed=0, batch=2,
             meta=None, calibrate=None, calibration_images=DEFAULT_CALIBRATION_IMAGES, percentile=DEFAULT_PERCENTILE,
             _sources=None):
    """Converts an exported model and writes the packed model directory (bmx.packed.save_model).

    Args:
        source: ``PREFIX`` (``PREFIX-symbol.json`` + ``PREFIX-NNNN.params``), a train_imagenet.py
            output directory (its ``model`` prefix and ``model.json``) or a (symbol file, params
            file) pair.
        output_dir: the packed model directory to create; an existing one is only replaced with
            ``force``. It is written only after conversion (and verification) succeeded.
        epoch: which ``PREFIX-NNNN.params``; None takes the newest.
        verify: check the packed model against the original on seeded random inputs (see
            :func:`verify_packed`) before writing it.
        input_size: height = width of the verification inputs (default: model.json's image
            size, else 224).
        meta: metadata to use instead of the model.json found beside the source.
        calibrate: images (a .rec file or class folders, as example/evaluate.py's --data) to
            calibrate int8 full-precision layers on (:mod:`bmx.convert.int8`); None keeps them
            float. With it, ``source`` may also be a packed float model directory, quantized as is.
        calibration_images, percentile: how many images, and which percentile of |input| sets
            each layer's input scale. With ``verify``, the int8 model's agreement with the float
            one is measured on as many other images (``report["int8"]["verified"]``).

    Returns:
        The report of :func:`convert` (with ``verify`` results if asked, ``int8`` with
        ``calibrate``, and ``output_dir``); for a packed source, ``int8``, ``source_dir`` and
        ``output_dir`` only.
    """
    symbol_file, params_file, found_meta = resolve_source(source, epoch)
    meta = found_meta if meta is None else meta
    sources = _sources or [os.path.abspath(symbol_file), os.path.abspath(params_file)]
    check_output(output_dir, sources, force)
    if isinstance(meta, dict) and isinstance(meta.get("packed"), dict):
        return _int8_of_packed(os.path.dirname(symbol_file), output_dir, force, verify, calibrate,
                               calibration_images, percentile)
    graph, params, report = convert(symbol_file, params_file, meta)
    if verify:
        shape = input_shape(symbol_file, params_file, zoo_spec(meta), input_size, batch)
        with tempfile.TemporaryDirectory() as tmp:
            trial = os.path.join(tmp, "packed")
            packed.save_model(trial, graph, params, packed_meta(meta, report, sources))
            report["verify"] = verify_packed(symbol_file, params_file, trial, report, shape, seed=seed)
    meta = packed_meta(meta, report, sources)
    if calibrate is not None:
        float_model = packed.PackedModel(graph, params, meta, os.path.dirname(os.path.abspath(symbol_file)))
        graph, params, meta = quantize_packed(float_model, calibrate, count=calibration_images,
                                              percentile=percentile, verify=verify)
        report["int8"] = meta["packed"]["int8"]
    packed.save_model(output_dir, graph, params, meta, force=force)
    report["output_dir"] = os.path.abspath(output_dir)
    return report


def _int8_of_packed(source_dir, output_dir, force, verify, calibrate, count, percentile):
    """binarize() of a packed float model: its full-precision layers made int8."""
    if calibrate is None:
        raise ConvertError(f"{source_dir} is already a packed model; pass --int8 --calibrate DATA to make its "
                           "full-precision layers int8")
    model = packed.load_model(source_dir)
    if packed.required_version(model.graph) > 1:
        raise ConvertError(f"{source_dir}: its full-precision layers are int8 already")
    graph, params, meta = quantize_packed(model, calibrate, count=count, percentile=percentile, verify=verify)
    packed.save_model(output_dir, graph, params, meta, force=force)
    return dict(source_dir=os.path.abspath(source_dir), int8=meta["packed"]["int8"],
                output_dir=os.path.abspath(output_dir))


def binarize_gluon(model, params_file, output_dir, *, stem=None, classes=1000, input_size=None, force=False,
                   verify=False, seed=0):
    """Like :func:`binarize` for a Gluon parameter file (``net.save_parameters``) of zoo model ``model``.

    The zoo model is built (``bmx.models.get_model(model, classes=classes[, stem=stem])``), loads
    params_file, is exported with :func:`bmx.export` to a temporary directory and converted.
    input_size (default 32 for the cifar/thumbnail stems, else 224) is the export's and the
    verification's input size.
    """
    if not os.path.isfile(params_file):
        raise ConvertError(f"{params_file}: no such parameter file")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ConvertError(f"--classes must be a positive integer, got {classes!r}")
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1):
        raise ConvertError(f"--input-size must be a positive integer, got {input_size!r}")
    check_output(output_dir, [os.path.abspath(params_file)], force)
    kwargs = {"stem": stem} if stem else {}
    try:
        net = models.get_model(model, classes=classes, **kwargs)
    except ValueError as err:
        raise ConvertError(f"--model: {err}") from None
    stem = stem or "imagenet"  # every zoo family defaults to the ImageNet stem
    size = input_size or (32 if stem in ("cifar", "thumbnail") else 224)
    try:
        net.load_parameters(params_file, ctx=mx.cpu())
    except (mx.MXNetError, AssertionError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConvertError(f"{params_file}: not parameters of {model} (stem {stem}, {classes} classes): "
                           f"{first}") from None
    meta = dict(model=model, stem=stem, classes=classes, image_size=size)
    with tempfile.TemporaryDirectory() as tmp:
        model_io.export(net, os.path.join(tmp, "model"), input_shape=(1, 3, size, size))
        report = binarize(os.path.join(tmp, "model"), output_dir, epoch=0, force=force, verify=verify,
                          input_size=size, seed=seed, meta=meta, _sources=[os.path.abspath(params_file)])
    report["symbol_file"] = report["params_file"] = os.path.abspath(params_file)
    return report

"""What a model weighs: the theoretical size by bmx.summary's rules (from the graph or the zoo
model), and the bytes of the packed parameter file."""
import os
import tempfile

import numpy as np

from .. import config as bmx_config
from .. import models, packed
from ..summary import summary
from .common import WEIGHT_QUANTIZER_OPS, WEIGHT_SIGN_OP, ConvertError


def split_params(raw, params_file):
    """{'arg:W': a, 'aux:M': b} -> ({'W': a, 'M': b}, {'W': 'arg', 'M': 'aux'})."""
    arrays, kinds = {}, {}
    for key, value in raw.items():
        kind, sep, name = key.partition(":")
        if not sep or kind not in ("arg", "aux"):
            raise ConvertError(f"{params_file}: entry {key!r} is not named 'arg:NAME' or 'aux:NAME' "
                               "(not a bmx.export / HybridBlock.export parameter file)")
        arrays[name] = np.asarray(value)
        kinds[name] = kind
    return arrays, kinds


def theoretical_size_from_graph(order, params, param_kinds):
    """Bytes by bmx.summary's rules, read off the exported graph.

    A latent weight consumed by ``bmx_weight_sign`` counts 1 bit per value, one consumed by
    ``bmx_quantize_weight`` its ``bits``; every other parameter the graph uses 32 bits; auxiliary
    states (BatchNorm running statistics) are not counted.
    """
    bits_of = {}
    for n in order:
        if n.op in WEIGHT_QUANTIZER_OPS and n.inputs and n.inputs[0][0].op == "null":
            bits = 1 if n.op == WEIGHT_SIGN_OP else int(n.attrs.get("bits", 32))
            bits_of[n.inputs[0][0].name] = bits
    total = 0
    for n in order:
        if n.op == "null" and param_kinds.get(n.name) == "arg":
            total += params[n.name].size * bits_of.get(n.name, 32)
    return total / 8


def zoo_spec(meta):
    """(model name, get_model kwargs, classes, layer config, image size) from model.json metadata, or None."""
    if not meta:
        return None
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    name = config.get("model") or meta.get("model")
    if not isinstance(name, str):
        return None
    kwargs = dict(config.get("model_kwargs") or {})
    if "stem" not in kwargs and isinstance(meta.get("stem"), str):
        kwargs["stem"] = meta["stem"]
    for key in ("binary", "clip_threshold"):
        if config.get(key) is not None:
            kwargs[key] = config[key]
    preprocessing = meta.get("preprocessing") if isinstance(meta.get("preprocessing"), dict) else {}
    size = preprocessing.get("image_size") or config.get("image_size") or meta.get("image_size") or 224
    classes = meta.get("classes", config.get("classes", 1000))
    layer_config = config.get("layer_config") or {}
    if not (isinstance(size, int) and isinstance(classes, int) and isinstance(layer_config, dict)):
        return None  # not metadata this code wrote: fall back to the graph's rules
    return name, kwargs, classes, dict(layer_config), size


def theoretical_from_zoo(spec):
    """bmx.summary's size in bytes of the zoo model the metadata names."""
    name, kwargs, classes, layer_config, size = spec
    with bmx_config.binary_layer_config(**layer_config):
        net = models.get_model(name, classes=classes, **kwargs)
    return summary(net, (1, 3, size, size), show=False).size_mb * 2 ** 20


def serialized_size(params):
    """Bytes of the parameter file save_model writes for these arrays."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, packed.PARAMS_FILE)
        packed.write_params(path, params)
        return os.path.getsize(path)

"""Which files an exported model is: a PREFIX, a train_imagenet.py output directory or a pair.

Numpy-free and mxnet-free, so that exporters that read the files as data (:mod:`bmx.onnx_export`)
find them the same way as the converter.
"""
import glob
import json
import os
import re

from .. import packed
from .common import ConvertError

__all__ = ["resolve_source"]

_MODEL_PREFIX = packed.SYMBOL_FILE[:-len("-symbol.json")]  # "model"


def resolve_source(source, epoch=None):
    """(symbol file, params file, metadata or None) of a PREFIX, a train_imagenet.py output directory
    or a (symbol file, params file) pair.

    A directory DIR means the prefix DIR/model. ``PREFIX-NNNN.params`` is the newest epoch unless
    ``epoch`` is given. The metadata is ``model.json`` beside a prefix named ``model``, if present.
    """
    if isinstance(source, (tuple, list)):
        if len(source) != 2 or epoch is not None:
            raise ConvertError("give a (symbol file, params file) pair, without an epoch")
        for path in source:
            if not os.path.isfile(path):
                raise ConvertError(f"{path}: no such file")
        return str(source[0]), str(source[1]), None
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        raise ConvertError(f"--epoch must be a non-negative integer, got {epoch!r}")
    source = os.fspath(source)
    # a directory holds the exported model under the prefix of the packed format's file names
    prefix = os.path.join(source, _MODEL_PREFIX) if os.path.isdir(source) else source
    symbol_file = f"{prefix}-symbol.json"
    if not os.path.isfile(symbol_file):
        what = (f"directory {source} holds no {packed.SYMBOL_FILE}" if os.path.isdir(source)
                else f"{symbol_file}: no such file")
        raise ConvertError(f"{what} (expected PREFIX-symbol.json and PREFIX-NNNN.params from bmx.export)")
    if epoch is not None:
        params_file = f"{prefix}-{epoch:04d}.params"
        if not os.path.isfile(params_file):
            raise ConvertError(f"{params_file}: no such parameter file (--epoch {epoch})")
    else:
        pattern = re.compile(re.escape(os.path.basename(prefix)) + r"-(\d{4,})\.params$")
        found = [(int(m.group(1)), path) for path in glob.glob(f"{glob.escape(prefix)}-*.params")
                 if (m := pattern.match(os.path.basename(path)))]
        if not found:
            raise ConvertError(f"{prefix}-NNNN.params: no parameter file beside {symbol_file}")
        params_file = max(found)[1]
    meta = None
    meta_file = os.path.join(os.path.dirname(prefix), packed.META_FILE)
    if os.path.basename(prefix) == _MODEL_PREFIX and os.path.isfile(meta_file):
        try:
            with open(meta_file) as f:
                meta = json.load(f)
        except (OSError, ValueError) as err:
            raise ConvertError(f"{meta_file}: not valid JSON ({err})") from None
        if not isinstance(meta, dict):
            raise ConvertError(f"{meta_file}: expected a JSON object")
    return symbol_file, params_file, meta

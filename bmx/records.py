"""Images from RecordIO files and image folders, with errors that name the file and record.

:class:`RecordImages` and :class:`FolderImages` are Gluon datasets of (HWC uint8 RGB array, label);
:func:`check_recordio` validates a RecordIO pair before training starts.
"""
import os
import struct

import cv2
import mxnet as mx
import numpy as np
from mxnet.gluon.data import Dataset
from mxnet.gluon.data.vision import ImageFolderDataset

from .datafiles import DataError, fingerprint, read_index

__all__ = ["DataError", "RecordImages", "FolderImages", "check_recordio", "require_dir", "decode_error",
           "fingerprint"]


def require_dir(path, what):
    if os.path.isfile(path):
        raise DataError(f"{path}: a file, but a directory is expected (the directory holding {what}: "
                        f"{os.path.dirname(path) or '.'}?)")
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such directory (expected {what})")


def check_recordio(rec_path, idx_path=None):
    """Checks a RecordIO pair before training starts; returns its number of records.

    The index must be text lines ``key<TAB>offset`` with offsets inside the .rec file, and the
    first record must hold a decodable image. Raises :class:`DataError` naming the file otherwise.
    """
    idx_path = idx_path or os.path.splitext(rec_path)[0] + ".idx"
    keys, _ = read_index(rec_path, idx_path)
    RecordImages(rec_path, idx_path)[0]
    return len(keys)


def decode_error(err):
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


class RecordImages(Dataset):
    """Images of a RecordIO file as (HWC uint8 RGB array, label); errors name the file and record."""

    def __init__(self, rec_path, idx_path=None):
        self.path = rec_path
        idx_path = idx_path or os.path.splitext(rec_path)[0] + ".idx"
        try:
            self._reader = mx.recordio.MXIndexedRecordIO(idx_path, rec_path, "r")
        except (ValueError, IndexError) as err:
            raise DataError(f"{idx_path}: malformed RecordIO index ({err})") from None
        except mx.MXNetError as err:
            raise DataError(f"{rec_path}: cannot open as RecordIO ({decode_error(err)})") from None

    def __len__(self):
        return len(self._reader.keys)

    def __getitem__(self, index):
        key = self._reader.keys[index]
        try:
            header, image = mx.recordio.unpack_img(self._reader.read_idx(key), cv2.IMREAD_COLOR)
        except (mx.MXNetError, struct.error, cv2.error) as err:
            image, reason = None, decode_error(err)
        else:
            reason = "the payload is not a decodable image"
        if image is None:
            raise DataError(f"{self.path}: record {index} (key {key}) is corrupt or not an image ({reason})")
        label = header.label if np.isscalar(header.label) else header.label[0]
        return image[:, :, ::-1], label


class FolderImages(Dataset):
    """Images of ``root/<class>/*`` (classes: sorted sub-folder names) as (HWC uint8 RGB array, label)."""

    def __init__(self, root):
        require_dir(root, "one sub-folder of images per class")
        listing = ImageFolderDataset(root)
        self.root = root
        self.synsets = listing.synsets
        self._items = listing.items
        if not self._items:
            raise DataError(f"{root}: no images found (expected {root}/<class>/<image>.jpg, "
                            "one sub-folder per class)")

    def __len__(self):
        return len(self._items)

    def __getitem__(self, index):
        path, label = self._items[index]
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"{path}: not a readable image")
        return image[:, :, ::-1], label

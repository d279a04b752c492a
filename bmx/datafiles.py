"""Image datasets on disk without MXNet: RecordIO files, class folders, the CIFAR-10 hold-out.

Numpy and OpenCV only, so that ``example/evaluate.py --packed`` scores a packed model where mxnet
is not installed; the training pipelines (:mod:`bmx.records`, :mod:`bmx.data`) read the same files with MXNet's
readers and shares the index check and the hold-out from here.

RecordIO (what ``im2rec`` and ``mx.recordio`` write): the ``.idx`` file has text lines
``key<TAB>offset``; at each offset of the ``.rec`` file a record is one or more parts, each
``uint32 0xced7230a`` (the magic word), ``uint32 cflag << 29 | length``, ``length`` bytes, then
zero bytes to a multiple of 4 (little-endian). cflag 0 is a whole record; a record whose payload
held the magic word at a multiple of 4 bytes was split there into parts 1 (first), 2 (middle) and
3 (last), rejoined with the magic word between them. The payload starts with the header
``uint32 flag, float32 label, uint64 id, uint64 id2``; with ``flag > 0`` that many float32 labels
follow (the first is the class), then the encoded image.
"""
import hashlib
import os
import struct

import numpy as np

from .images import decode_rgb, read_rgb

__all__ = ["DataError", "CIFAR10_SPLIT_SEED", "heldout_indices", "read_index", "fingerprint", "RecordFile",
           "folder_images", "image_readers"]

# The CIFAR-10 hold-out depends on this constant only, not on the training seed, so that runs
# with different seeds are validated on the same images.
CIFAR10_SPLIT_SEED = 0

_MAGIC = 0xCED7230A
_HEADER = struct.Struct("<IfQQ")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class DataError(ValueError):
    """Missing, misplaced or corrupt data; the message names the path and what was expected."""


def heldout_indices(num_images, val_size, split_seed=CIFAR10_SPLIT_SEED):
    """Record indices of the CIFAR-10 hold-out (what :func:`bmx.data.cifar10` validates on)."""
    return np.sort(np.random.RandomState(split_seed).permutation(num_images)[:val_size])


def read_index(rec_path, idx_path=None):
    """(keys, offsets) of a RecordIO pair, checked: both files exist, every index line is
    ``key<TAB>offset`` with the offset inside the .rec file, and there is at least one record.
    Raises :class:`DataError` naming the file (and line) otherwise."""
    idx_path = idx_path or os.path.splitext(rec_path)[0] + ".idx"
    missing = [p for p in (rec_path, idx_path) if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{' and '.join(missing)}: not found (expected a RecordIO pair "
                        f"{os.path.basename(rec_path)} + {os.path.basename(idx_path)} in "
                        f"{os.path.dirname(os.path.abspath(rec_path))})")
    size = os.path.getsize(rec_path)
    keys, offsets = [], []
    with open(idx_path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                if len(fields) != 2:
                    raise ValueError
                key, offset = int(fields[0]), int(fields[1])
            except ValueError:
                raise DataError(f"{idx_path}: line {number} is not 'key<TAB>offset': {line.strip()[:80]!r}") from None
            if not 0 <= offset < size:
                raise DataError(f"{idx_path}: line {number} points to byte {offset}, outside {rec_path} "
                                f"({size} bytes): the index does not belong to this .rec file")
            keys.append(key)
            offsets.append(offset)
    if not keys:
        raise DataError(f"{idx_path}: the index lists no records")
    return keys, offsets


def fingerprint(rec_path, idx_path=None):
    """A cheap identity of a RecordIO pair: sha256 of its index (every record's key and offset) and
    of the .rec file's size. Another file, or one with a record added, removed or resized, differs."""
    idx_path = idx_path or os.path.splitext(rec_path)[0] + ".idx"
    digest = hashlib.sha256(str(os.path.getsize(rec_path)).encode())
    with open(idx_path, "rb") as f:
        digest.update(f.read())
    return digest.hexdigest()[:16]


class RecordFile:
    """The images of a RecordIO pair, in index order: ``len(f)``, ``f.image(i)`` -> (RGB uint8
    (H, W, 3) array, class label as an int)."""

    def __init__(self, rec_path, idx_path=None):
        self.path = rec_path
        self.keys, self._offsets = read_index(rec_path, idx_path)

    def __len__(self):
        return len(self.keys)

    def _corrupt(self, index, reason):
        return DataError(f"{self.path}: record {index} (key {self.keys[index]}) is corrupt or not an image "
                         f"({reason})")

    def payload(self, index):
        """The bytes of record ``index``, its parts rejoined."""
        parts = []
        with open(self.path, "rb") as f:
            f.seek(self._offsets[index])
            while True:
                head = f.read(8)
                if len(head) < 8:
                    raise self._corrupt(index, "the file ends inside the record")
                magic, word = struct.unpack("<II", head)
                if magic != _MAGIC:
                    raise self._corrupt(index, "no RecordIO magic word")
                cflag, length = word >> 29, word & ((1 << 29) - 1)
                data = f.read(length)
                if len(data) < length:
                    raise self._corrupt(index, "the file ends inside the record")
                f.read(-length % 4)
                if (cflag in (0, 1)) != (not parts):
                    raise self._corrupt(index, f"a part with continuation flag {cflag} out of order")
                parts.append(data)
                if cflag in (0, 3):
                    return struct.pack("<I", _MAGIC).join(parts)

    def image(self, index):
        payload = self.payload(index)
        if len(payload) < _HEADER.size:
            raise self._corrupt(index, "shorter than the record header")
        flag, label, _, _ = _HEADER.unpack_from(payload)
        start = _HEADER.size + 4 * flag
        if flag > 0:
            if len(payload) < start:
                raise self._corrupt(index, "shorter than its labels")
            label = struct.unpack_from("<f", payload, _HEADER.size)[0]
        try:
            image = decode_rgb(np.frombuffer(payload, dtype=np.uint8, offset=start), self.path)
        except ValueError:
            raise self._corrupt(index, "the payload is not a decodable image") from None
        return image, int(label)


def folder_images(root):
    """(class names, [(path, label), ...]) of ``root/<class>/<image>``: classes are the sorted
    sub-folder names, images their .jpg/.jpeg/.png files in sorted order (as MXNet's
    ImageFolderDataset lists them)."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such directory (expected one sub-folder of images per class)")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    items = [(os.path.join(root, name, file), label) for label, name in enumerate(classes)
             for file in sorted(os.listdir(os.path.join(root, name)))
             if os.path.splitext(file)[1].lower() in IMAGE_EXTENSIONS]
    if not items:
        raise DataError(f"{root}: no images found (expected {root}/<class>/<image>.jpg, one sub-folder per class)")
    return classes, items


def image_readers(path, indices=None):
    """One callable per image of ``path``, each returning (RGB uint8 (H, W, 3) array, class label):
    a .rec file (with its .idx; the records at ``indices``, in that order, or all) or a directory of
    class folders (:func:`folder_images`; ``indices`` into its sorted list, or all). Nothing is
    decoded until a callable is called. Raises :class:`DataError` for another kind of path."""
    if os.path.isdir(path):
        _, items = folder_images(path)
        chosen = range(len(items)) if indices is None else indices
        return [lambda item=items[int(i)]: (read_rgb(item[0]), item[1]) for i in chosen]
    if not path.endswith(".rec"):
        raise DataError(f"{path}: expected a .rec file (with its .idx beside it) or an image-folder directory")
    rec = RecordFile(path)
    chosen = range(len(rec)) if indices is None else indices
    return [lambda i=int(i): rec.image(i) for i in chosen]

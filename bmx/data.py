"""Data pipelines for training and evaluating image classifiers: ImageNet, CIFAR-10, synthetic.

Every pipeline is a :class:`Split` whose ``batches(epoch)`` yields ``(data, label)`` NDArrays on
the CPU: ``data`` float32 (N, 3, H, W), normalized with the dataset's per-channel mean and std
(0..255 scale); ``label`` float32 (N,) class ids.

Layouts read:

* ImageNet, RecordIO: ``DIR/train.rec`` + ``train.idx`` and ``DIR/val.rec`` + ``val.idx``
  (as ``im2rec`` packs them), read by ``mx.io.ImageRecordIter`` (C++ decoding threads; the fast
  path) or, with ``loader='gluon'``, by the Gluon pipeline below.
* ImageNet, image folders: ``DIR/train/<class>/*.jpg`` and ``DIR/val/<class>/*.jpg``, listed by
  ``mx.gluon.data.vision.ImageFolderDataset`` (classes are the sorted sub-folder names).
* CIFAR-10, RecordIO: ``DIR/train.rec`` + ``train.idx`` (JPEG records, labels 0..9). A fixed-seed
  random hold-out of ``val_size`` images is the validation split; ``DIR/test.rec`` + ``test.idx``,
  when present, is the test split. By default (``loader='memory'``) the records are decoded once
  into memory and augmented a batch at a time (:mod:`bmx.memory_data`); ``loader='gluon'`` reads
  them with the per-image Gluon pipeline below.

Augmentation presets:

* ``'resized-crop'`` (ImageNet default, the published later recipe): a crop of 8%-100% of the
  image area with aspect ratio 3/4-4/3, resized to ``image_size``; horizontal flip.
* ``'crop'`` (the paper-era recipe): shorter side resized to ``image_size * 256 / 224``, random
  ``image_size`` crop; horizontal flip.
* CIFAR-10: zero-pad 4 pixels, random 32x32 crop, horizontal flip.
* Evaluation: shorter side resized to ``image_size * 256 / 224`` (256 for 224), center crop.

Determinism: the Gluon pipelines seed Python's ``random`` for every image from
``(seed, epoch, image index)`` before augmenting it and shuffle with a generator seeded from
``(seed, epoch)``, so an epoch's batches do not depend on worker processes or on what ran before;
this is what makes a resumed run identical to an unbroken one. The in-memory CIFAR-10 splits read
the same ``(seed, epoch)`` order and draw a batch's crops and flips from a generator seeded from
``(seed, epoch)`` as well. ``mx.io.ImageRecordIter`` is
re-created every epoch with seeds derived from ``(seed, epoch)``, which fixes its order, but its
decoding threads make augmentation only reproducible with one thread.

Sharding (``num_parts`` workers of a distributed job, this one ``part_index``; see
docs/distributed.md): only the training split is sharded, and every part yields the same number
of batches per epoch, because a synchronous parameter-server step waits for all workers.

* Gluon and in-memory pipelines: all workers draw the same ``(seed, epoch)`` order; step s of the epoch takes its
  ``num_parts x batch_size`` images from that order and part p reads the p-th batch of them. The
  images of a step are therefore those one process with a ``num_parts`` times larger batch would
  read, and no image is read twice in an epoch.
* ``mx.io.ImageRecordIter``: each worker reads its own contiguous part of the RecordIO file
  (``num_parts``/``part_index`` of the iterator), shuffled with a seed that also depends on the
  part. The iterator makes the last part smaller than the others (it gets the remainder), so
  every part yields ``ceil((images // num_parts) / batch_size)`` batches and starts another pass
  over its images when it runs out.
"""
import dataclasses
import functools
import math
import os
import random

import cv2
import mxnet as mx
import numpy as np
from mxnet.gluon.data import BatchSampler, DataLoader, Dataset, Sampler

from . import memory_data
from .images import CIFAR10_CLASSES, center_crop, resize, resize_short
from .datafiles import CIFAR10_SPLIT_SEED, heldout_indices
from .records import DataError, FolderImages, RecordImages, check_recordio, decode_error, fingerprint, require_dir

__all__ = ["DataError", "Preprocessing", "Split", "DataBundle", "imagenet", "cifar10", "synthetic_batch",
           "evaluation_split", "check_recordio", "fingerprint", "heldout_indices", "eval_resize", "IMAGENET_MEAN",
           "IMAGENET_STD", "IMAGENET_TRAIN_IMAGES", "CIFAR10_MEAN", "CIFAR10_STD", "AUGMENTATIONS", "LOADERS",
           "CIFAR10_LOADERS"]

IMAGENET_MEAN = (123.68, 116.78, 103.94)
IMAGENET_STD = (58.39, 57.12, 57.38)
IMAGENET_TRAIN_IMAGES = 1281167
# Of the 50,000 JPEG-decoded training images (see the dataset's README).
CIFAR10_MEAN = (125.27, 122.93, 113.86)
CIFAR10_STD = (62.53, 61.91, 66.46)

AUGMENTATIONS = ("resized-crop", "crop")
LOADERS = ("record-iter", "gluon")
CIFAR10_LOADERS = ("memory", "gluon")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a network input at evaluation time (stored beside exported models).

    Attributes:
        image_size: side of the square input.
        mean, std: per-channel (R, G, B) statistics on the 0..255 scale.
        resize: shorter side the image is resized to before the center crop; 0 keeps its size.
    """
    image_size: int
    mean: tuple
    std: tuple
    resize: int = 0

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]), int(d.get("resize", 0)))


def eval_resize(image_size):
    """The shorter side before the evaluation center crop: 256 for 224 (the published ratio)."""
    return int(round(image_size * 256 / 224))


class Split:
    """One split of a dataset.

    Attributes:
        name: 'train', 'val' or 'test'.
        num_images: images per epoch.
        batch_size: images per batch (the last batch of an evaluation split may be smaller).
        description: where the images come from, for logs and model metadata.
    """

    def __init__(self, name, num_images, batch_size, drop_last, description):
        self.name = name
        self.num_images = num_images
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.description = description

    def __len__(self):
        """Batches per epoch."""
        if self.drop_last:
            return self.num_images // self.batch_size
        return -(-self.num_images // self.batch_size)

    def batches(self, epoch):
        """Yields (data, label) for epoch ``epoch`` (0-based)."""
        raise NotImplementedError


@dataclasses.dataclass
class DataBundle:
    """The splits of a dataset and what a model trained on it needs to know."""
    train: Split
    val: Split
    test: Split
    classes: int
    preprocessing: Preprocessing
    info: dict


# ----------------------------------------------------------------------------- augmentation
# On HWC uint8 numpy arrays with OpenCV: mx.image's NDArray functions cost 0.1-0.3 ms per call
# in engine overhead, more than decoding and cropping a CIFAR image takes. Randomness comes from
# Python's ``random``, which _Augmented seeds per image.

def _flip(image):
    return image[:, ::-1] if random.random() < 0.5 else image


def _random_crop(image, size):
    h, w = image.shape[:2]
    top, left = random.randint(0, h - size), random.randint(0, w - size)
    return image[top:top + size, left:left + size]


def _center_crop(image, size):
    try:
        return center_crop(image, size)
    except ValueError as err:
        raise DataError(str(err)) from None


def _resized_crop(size, area=(0.08, 1.0), aspect=(3 / 4, 4 / 3)):
    """Inception-style crop: a box of random area fraction and log-uniform aspect ratio, resized."""
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))

    def augment(image):
        h, w = image.shape[:2]
        for _ in range(10):
            box_area = random.uniform(*area) * h * w
            ratio = math.exp(random.uniform(*log_aspect))
            bw, bh = int(round(math.sqrt(box_area * ratio))), int(round(math.sqrt(box_area / ratio)))
            if 0 < bw <= w and 0 < bh <= h:
                top, left = random.randint(0, h - bh), random.randint(0, w - bw)
                return _flip(resize(image[top:top + bh, left:left + bw], size, size))
        # No box fitted (extreme aspect ratio): the whole image, squeezed.
        return _flip(resize(image, size, size))
    return augment


def _resize_then_crop(size):
    def augment(image):
        return _flip(_random_crop(resize_short(image, eval_resize(size)), size))
    return augment


def _pad_crop(size, pad):
    def augment(image):
        padded = cv2.copyMakeBorder(np.ascontiguousarray(image), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        return _flip(_random_crop(padded, size))
    return augment


def _center(size, side):
    def transform(image):
        return _center_crop(resize_short(image, side) if side else image, size)
    return transform


class _Augmented(Dataset):
    """Item ``epoch * n + i`` is image i of the base dataset, augmented with Python's ``random``
    seeded from (seed, epoch, i): the result does not depend on which process makes it."""

    def __init__(self, base, transform, seed):
        self._base = base
        self._transform = transform
        self._seed = seed

    def __len__(self):
        return len(self._base)

    def __getitem__(self, key):
        epoch, index = divmod(key, len(self._base))
        image, label = self._base[index]
        random.seed((self._seed << 64) | (epoch << 32) | index)
        return np.ascontiguousarray(self._transform(image)), np.float32(label)


def _epoch_order(indices, shuffle, seed, epoch):
    """The order in which an epoch reads ``indices``: shuffled by a generator seeded from (seed, epoch)."""
    return np.random.RandomState([seed, epoch]).permutation(indices) if shuffle else indices


def _part_of(order, num_parts, part_index, batch_size):
    """Part ``part_index`` of an epoch's ``order`` (rows): from every block of ``num_parts * batch_size``
    consecutive rows, the ``part_index``-th batch (see the module docstring)."""
    if num_parts == 1:
        return order
    steps = len(order) // (num_parts * batch_size)
    blocks = order[:steps * num_parts * batch_size].reshape((steps, num_parts, batch_size) + order.shape[1:])
    return blocks[:, part_index].reshape((-1,) + order.shape[1:])


class _EpochSampler(Sampler):
    """Keys of :class:`_Augmented` for one epoch (:func:`_epoch_order`), part ``part_index`` of
    ``num_parts`` (:func:`_part_of`)."""

    def __init__(self, indices, size, shuffle, seed, num_parts=1, part_index=0, batch_size=1):
        self._indices = np.asarray(indices, dtype=np.int64)
        self._size = size
        self._shuffle = shuffle
        self._seed = seed
        self._parts, self._part, self._batch = num_parts, part_index, batch_size
        self.epoch = 0

    def __len__(self):
        if self._parts == 1:
            return len(self._indices)
        return len(self._indices) // (self._parts * self._batch) * self._batch

    def __iter__(self):
        order = _epoch_order(self._indices, self._shuffle, self._seed, self.epoch)
        order = _part_of(order, self._parts, self._part, self._batch)
        return iter((order + self.epoch * self._size).tolist())


def _to_input(images, preprocessing):
    """(N, H, W, 3) uint8 images (numpy or NDArray) -> normalized (N, 3, H, W) float32 NDArray.

    ``(x / 255 - mean / 255) / (std / 255)`` in float32, the operations (and so the bits) of
    ``mx.nd.image.to_tensor`` followed by ``mx.nd.image.normalize``, in numpy, which costs a
    fifth of those two operators on a CIFAR-10 batch.
    """
    images = images.asnumpy() if isinstance(images, mx.nd.NDArray) else images
    data = images.transpose(0, 3, 1, 2).astype(np.float32)
    data /= np.float32(255)
    data -= np.array([m / 255 for m in preprocessing.mean], dtype=np.float32)[:, None, None]
    data /= np.array([s / 255 for s in preprocessing.std], dtype=np.float32)[:, None, None]
    return mx.nd.array(data)


def _check_batch(name, images, batch_size, num_parts, description):
    if name == "train" and images < batch_size * num_parts:
        workers = f" for each of {num_parts} workers" if num_parts > 1 else ""
        raise DataError(f"{description}: the training split has {images} images, fewer than "
                        f"one batch of {batch_size}{workers}")


class _GluonSplit(Split):
    """A split read by a Gluon DataLoader with per-image seeded augmentation."""

    def __init__(self, name, base, indices, transform, preprocessing, batch_size, shuffle, seed, num_workers,
                 description, num_parts=1, part_index=0):
        indices = np.arange(len(base)) if indices is None else np.asarray(indices)
        super().__init__(name, len(indices) // num_parts, batch_size, drop_last=name == "train",
                         description=description)
        _check_batch(name, len(indices), batch_size, num_parts, description)
        self._preprocessing = preprocessing
        self._sampler = _EpochSampler(indices, len(base), shuffle, seed, num_parts, part_index, batch_size)
        self._loader = DataLoader(_Augmented(base, transform, seed),
                                  batch_sampler=BatchSampler(self._sampler, batch_size,
                                                             "discard" if self.drop_last else "keep"),
                                  num_workers=num_workers)

    def batches(self, epoch):
        self._sampler.epoch = epoch
        for images, labels in self._loader:
            yield _to_input(images, self._preprocessing), labels.astype("float32")


class _MemorySplit(Split):
    """A split of images held in memory (:mod:`bmx.memory_data`): ``images[indices]`` in the order
    and parts of the Gluon pipeline (:func:`_epoch_order`, :func:`_part_of`), with ``pad > 0``
    zero-padded, cropped back and flipped a batch at a time. The crop offsets and flips of an epoch
    are drawn, one per position of its whole order, by a generator seeded from (seed, epoch), then
    split into parts like the order, so a part sees what one process with a larger batch would."""

    def __init__(self, name, images, labels, indices, preprocessing, batch_size, shuffle, seed, pad, description,
                 num_parts=1, part_index=0):
        self._indices = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
        super().__init__(name, len(self._indices) // num_parts, batch_size, drop_last=name == "train",
                         description=description)
        _check_batch(name, len(self._indices), batch_size, num_parts, description)
        self._images, self._labels, self._preprocessing = images, labels, preprocessing
        self._shuffle, self._seed, self._pad = shuffle, seed, pad
        self._parts, self._part = num_parts, part_index

    def batches(self, epoch):
        order = _epoch_order(self._indices, self._shuffle, self._seed, epoch)
        draws = None
        if self._pad:
            rng = np.random.default_rng([self._seed, epoch])
            draws = np.stack(memory_data.draw_pad_crop_flip(rng, len(order), self._pad), axis=1)
            draws = _part_of(draws, self._parts, self._part, self.batch_size)
        order = _part_of(order, self._parts, self._part, self.batch_size)
        for step in range(len(self)):
            rows = slice(step * self.batch_size, (step + 1) * self.batch_size)
            images = self._images[order[rows]]
            if draws is not None:
                tops, lefts, flips = draws[rows].T
                images = memory_data.pad_crop_flip(images, tops, lefts, flips.astype(bool), self._pad)
            yield (_to_input(images, self._preprocessing),
                   mx.nd.array(self._labels[order[rows]]))


class _RecordIterSplit(Split):
    """A split read by ``mx.io.ImageRecordIter``, re-created every epoch with (seed, epoch) seeds.

    ``num_parts > 1`` (training only) reads part ``part_index`` of the file; see the module docstring.
    """

    def __init__(self, name, rec_path, idx_path, num_images, batch_size, options, seed, description,
                 num_parts=1, part_index=0):
        if num_images < num_parts:
            raise DataError(f"{rec_path}: {num_images} images cannot be split into {num_parts} parts")
        super().__init__(name, num_images // num_parts, batch_size, drop_last=False, description=description)
        self._rec = rec_path
        self._options = dict(path_imgrec=rec_path, path_imgidx=idx_path, batch_size=batch_size,
                             round_batch=name == "train", verbose=False, num_parts=num_parts,
                             part_index=part_index, **options)
        self._seed_keys = [seed] + ([part_index] if num_parts > 1 else [])
        self._part = f"part {part_index + 1} of {num_parts}"

    def batches(self, epoch):
        seed = int(np.random.RandomState(self._seed_keys + [epoch]).randint(2 ** 31))
        try:
            it = mx.io.ImageRecordIter(seed=seed, seed_aug=seed, **self._options)
            # Copies: the iterator refills these buffers for later batches.
            if self.name == "train":
                # Always full and always len(self) of them: the last batch of a pass wraps around
                # to the first images (round_batch), and a part smaller than the others (the
                # iterator gives the last part the remainder) starts another pass.
                for _ in range(len(self)):
                    batch = next(it, None)
                    if batch is None:
                        it.reset()
                        batch = next(it, None)
                    if batch is None:
                        raise DataError(f"{self._rec}: {self._part} of the training images is empty; the file "
                                        "has too few records for this many workers")
                    yield batch.data[0].copy(), batch.label[0].copy()
                return
            remaining = self.num_images
            for batch in it:
                # Without round_batch the last validation batch ends in stale rows and reports no
                # padding, so the record count decides what is real.
                n = min(batch.data[0].shape[0], remaining)
                remaining -= n
                yield batch.data[0][:n].copy(), batch.label[0][:n].copy()
        except mx.MXNetError as err:
            raise DataError(f"{self._rec}: mx.io.ImageRecordIter failed ({decode_error(err)}); a record is "
                            "corrupt or not an image (loader 'gluon' names the record)") from None


# ----------------------------------------------------------------------------- datasets

def _imagenet_layout(data_dir):
    require_dir(data_dir, "ImageNet as train.rec/train.idx/val.rec/val.idx or train/ and val/ image folders")
    if os.path.exists(os.path.join(data_dir, "train.rec")):
        return "recordio"
    if os.path.isdir(os.path.join(data_dir, "train")):
        return "folder"
    raise DataError(f"{data_dir}: expected train.rec and train.idx (RecordIO), or train/<class>/*.jpg "
                    "image folders, in this directory")


def _check_part(num_parts, part_index):
    if not (isinstance(num_parts, int) and num_parts >= 1 and isinstance(part_index, int)
            and 0 <= part_index < num_parts):
        raise ValueError(f"part_index must be in [0, num_parts) with num_parts >= 1, got part {part_index!r} "
                         f"of {num_parts!r}")


def imagenet(data_dir, batch_size, image_size=224, augment="resized-crop", loader="record-iter", classes=1000,
             seed=0, num_workers=4, num_parts=1, part_index=0):
    """ImageNet (or any dataset in the same layout) for training.

    Args:
        data_dir: directory with ``train.rec``/``train.idx``/``val.rec``/``val.idx`` or with
            ``train/`` and ``val/`` class folders.
        batch_size: images per batch.
        image_size: side of the network input (224 for the published results).
        augment: ``'resized-crop'`` or ``'crop'`` (see the module docstring).
        loader: for RecordIO, ``'record-iter'`` (``mx.io.ImageRecordIter``, fast) or ``'gluon'``
            (reproducible to the bit, names corrupt records). Image folders always use Gluon.
        classes: number of classes of a RecordIO dataset (image folders count their sub-folders).
        seed: shuffling and augmentation seed.
        num_workers: decoding threads (record-iter) or worker processes (gluon; 0 decodes in the
            main process).
        num_parts, part_index: read only this part of the training split (a worker of a
            distributed job: ``kv.num_workers``, ``kv.rank``); validation is not sharded.

    Returns:
        :class:`DataBundle` with train and val splits.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augment!r}; choose one of {AUGMENTATIONS}")
    if loader not in LOADERS:
        raise ValueError(f"unknown loader {loader!r}; choose one of {LOADERS}")
    _check_part(num_parts, part_index)
    layout = _imagenet_layout(data_dir)
    prep = Preprocessing(image_size, IMAGENET_MEAN, IMAGENET_STD, eval_resize(image_size))
    train_tf = _resized_crop(image_size) if augment == "resized-crop" else _resize_then_crop(image_size)
    val_tf = _center(image_size, prep.resize)
    info = dict(dataset="imagenet", data_dir=os.path.abspath(data_dir), layout=layout, augment=augment,
                num_parts=num_parts, part_index=part_index)
    part = dict(num_parts=num_parts, part_index=part_index)
    if layout == "folder":
        train_base = FolderImages(os.path.join(data_dir, "train"))
        val_base = FolderImages(os.path.join(data_dir, "val"))
        if val_base.synsets != train_base.synsets:
            raise DataError(f"{data_dir}: train/ and val/ have different class folders "
                            f"({len(train_base.synsets)} vs {len(val_base.synsets)})")
        classes = len(train_base.synsets)
        info.update(loader="gluon", synsets=train_base.synsets, train_records=len(train_base))
        make = dict(preprocessing=prep, batch_size=batch_size, seed=seed, num_workers=num_workers)
        train = _GluonSplit("train", train_base, None, train_tf, shuffle=True, description=train_base.root, **make,
                            **part)
        val = _GluonSplit("val", val_base, None, val_tf, shuffle=False, description=val_base.root, **make)
        return DataBundle(train, val, None, classes, prep, info)

    paths = {s: (os.path.join(data_dir, f"{s}.rec"), os.path.join(data_dir, f"{s}.idx")) for s in ("train", "val")}
    missing = [p for pair in paths.values() for p in pair if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{data_dir}: expected train.rec, train.idx, val.rec and val.idx in this directory; "
                        f"missing {', '.join(os.path.basename(p) for p in missing)}")
    counts = {s: check_recordio(*paths[s]) for s in paths}
    info.update(loader=loader, classes=classes, train_records=counts["train"],
                train_fingerprint=fingerprint(*paths["train"]))
    if loader == "gluon":
        make = dict(preprocessing=prep, batch_size=batch_size, seed=seed, num_workers=num_workers)
        train = _GluonSplit("train", RecordImages(*paths["train"]), None, train_tf, shuffle=True,
                            description=paths["train"][0], **make, **part)
        val = _GluonSplit("val", RecordImages(*paths["val"]), None, val_tf, shuffle=False,
                          description=paths["val"][0], **make)
        return DataBundle(train, val, None, classes, prep, info)
    norm = dict(mean_r=prep.mean[0], mean_g=prep.mean[1], mean_b=prep.mean[2],
                std_r=prep.std[0], std_g=prep.std[1], std_b=prep.std[2],
                data_shape=(3, image_size, image_size), preprocess_threads=max(1, num_workers))
    if augment == "resized-crop":
        train_aug = dict(random_resized_crop=True, min_random_area=0.08, max_random_area=1.0,
                         min_aspect_ratio=3 / 4, max_aspect_ratio=4 / 3)
    else:
        train_aug = dict(resize=prep.resize, rand_crop=True)
    train = _RecordIterSplit("train", *paths["train"], counts["train"], batch_size,
                             dict(shuffle=True, rand_mirror=True, **train_aug, **norm), seed, paths["train"][0],
                             **part)
    val = _RecordIterSplit("val", *paths["val"], counts["val"], batch_size, dict(resize=prep.resize, **norm),
                           seed, paths["val"][0])
    return DataBundle(train, val, None, classes, prep, info)


def cifar10(data_dir, batch_size, val_size=5000, seed=0, num_workers=0, num_parts=1, part_index=0,
            loader="memory"):
    """CIFAR-10 from RecordIO: train minus a fixed hold-out, the hold-out as val, test.rec if present.

    Args:
        data_dir: directory with ``train.rec``/``train.idx`` (and optionally ``test.rec``/``test.idx``).
        batch_size: images per batch.
        val_size: images held out of train.rec for validation (0: none). The hold-out is a random
            subset drawn with a fixed seed (``CIFAR10_SPLIT_SEED``), the same for every run.
        seed: shuffling and augmentation seed.
        num_workers: worker processes of the ``'gluon'`` loader (0 decodes in the main process).
        num_parts, part_index: read only this part of the training split (a worker of a
            distributed job: ``kv.num_workers``, ``kv.rank``); validation and test are not sharded.
        loader: ``'memory'`` (default: every record decoded once into a uint8 array, 150 MB for
            CIFAR-10, and each training batch padded, cropped and flipped at once with numpy;
            see :mod:`bmx.memory_data`) or ``'gluon'`` (decodes and augments image by image every
            epoch). Both read the same images in the same order; their random crops and flips differ.

    Returns:
        :class:`DataBundle` (``test`` is None without test.rec).
    """
    _check_part(num_parts, part_index)
    if loader not in CIFAR10_LOADERS:
        raise ValueError(f"unknown CIFAR-10 loader {loader!r}; choose one of {CIFAR10_LOADERS}")
    require_dir(data_dir, "CIFAR-10 as train.rec and train.idx")
    rec, idx = os.path.join(data_dir, "train.rec"), os.path.join(data_dir, "train.idx")
    if not (os.path.isfile(rec) and os.path.isfile(idx)):
        raise DataError(f"{data_dir}: expected train.rec and train.idx (CIFAR-10 RecordIO) in this directory")
    total = check_recordio(rec, idx)
    if not 0 <= val_size < total:
        raise DataError(f"{rec}: cannot hold out {val_size} of its {total} images for validation")
    prep = Preprocessing(32, CIFAR10_MEAN, CIFAR10_STD, 0)
    val_idx = heldout_indices(total, val_size)
    train_idx = np.setdiff1d(np.arange(total), val_idx)
    test_rec, test_idx = os.path.join(data_dir, "test.rec"), os.path.join(data_dir, "test.idx")
    if os.path.exists(test_rec):
        check_recordio(test_rec, test_idx)
    make = dict(preprocessing=prep, batch_size=batch_size, seed=seed)
    held = f"{rec} (hold-out of {val_size})"
    if loader == "memory":
        images, labels = memory_data.decode(RecordImages(rec, idx), rec)
        split = functools.partial(_MemorySplit, images=images, labels=labels, **make)
        train = split("train", indices=train_idx, shuffle=True, pad=4, description=rec, num_parts=num_parts,
                      part_index=part_index)
        val = split("val", indices=val_idx, shuffle=False, pad=0, description=held) if val_size else None
        test = None
        if os.path.exists(test_rec):
            test_images, test_labels = memory_data.decode(RecordImages(test_rec, test_idx), test_rec)
            test = _MemorySplit("test", test_images, test_labels, None, shuffle=False, pad=0, description=test_rec,
                                **make)
    else:
        base = RecordImages(rec, idx)
        make["num_workers"] = num_workers
        train = _GluonSplit("train", base, train_idx, _pad_crop(32, 4), shuffle=True, description=rec, **make,
                            num_parts=num_parts, part_index=part_index)
        val = _GluonSplit("val", base, val_idx, _center(32, 0), shuffle=False, description=held,
                          **make) if val_size else None
        test = None
        if os.path.exists(test_rec):
            test = _GluonSplit("test", RecordImages(test_rec, test_idx), None, _center(32, 0), shuffle=False,
                               description=test_rec, **make)
    info = dict(dataset="cifar10", class_names=list(CIFAR10_CLASSES), data_dir=os.path.abspath(data_dir),
                layout="recordio", loader=loader,
                val_size=val_size, split_seed=CIFAR10_SPLIT_SEED, augment="pad-crop", num_parts=num_parts,
                part_index=part_index, train_records=total, train_fingerprint=fingerprint(rec, idx))
    return DataBundle(train, val, test, 10, prep, info)


def evaluation_split(path, preprocessing, batch_size, indices=None, num_workers=0):
    """A split for evaluation: a ``.rec`` file (``.idx`` beside it) or an image-folder directory.

    Images get the evaluation transform of ``preprocessing`` (resize shorter side, center crop,
    normalize). ``indices`` restricts a RecordIO file to those records.
    """
    if os.path.isdir(path):
        base = FolderImages(path)
        if indices is not None:
            raise ValueError("indices apply to RecordIO files only")
    else:
        if not path.endswith(".rec"):
            raise DataError(f"{path}: expected a .rec file (with its .idx beside it) or an image-folder directory")
        check_recordio(path)
        base = RecordImages(path)
    return _GluonSplit("val", base, indices, _center(preprocessing.image_size, preprocessing.resize), preprocessing,
                       batch_size, shuffle=False, seed=0, num_workers=num_workers, description=path)


def synthetic_batch(batch_size, image_size, classes, seed=0):
    """One random batch (normal data, uniform labels) for speed measurements; no files needed."""
    rng = np.random.RandomState(seed)
    data = rng.standard_normal((batch_size, 3, image_size, image_size)).astype(np.float32)
    labels = rng.randint(0, classes, batch_size).astype(np.float32)
    return mx.nd.array(data), mx.nd.array(labels)

"""Image datasets held in memory as one uint8 array, augmented a whole batch at a time with numpy.

CIFAR-10's 50,000 training images take 150 MB as uint8 (N, 32, 32, 3). Decoding them once, instead
of decoding and augmenting every image in Python every epoch, leaves per batch one fancy-indexing
gather (crop and flip together) and the normalization. :func:`bmx.data.cifar10` builds its
``loader='memory'`` splits on these functions.

The random draws come from a generator the caller seeds (``(seed, epoch)`` in :mod:`bmx.data`), so
an epoch's batches are a function of the seed and the epoch only, which keeps resume exact.
"""
import numpy as np

from .records import DataError

__all__ = ["decode", "draw_pad_crop_flip", "pad_crop_flip"]


def decode(dataset, description):
    """Every item of ``dataset`` (HWC uint8 images of one shape, labels) as (uint8 array, float32 labels).

    ``description`` names the source in the error raised when an image has another shape.
    """
    if not len(dataset):
        raise DataError(f"{description}: no images")
    first, _ = dataset[0]
    images = np.empty((len(dataset),) + first.shape, dtype=np.uint8)
    labels = np.empty(len(dataset), dtype=np.float32)
    for i in range(len(dataset)):
        image, labels[i] = dataset[i]
        if image.shape != first.shape:
            raise DataError(f"{description}: record {i} is {image.shape[1]}x{image.shape[0]}x{image.shape[2]}, "
                            f"but record 0 is {first.shape[1]}x{first.shape[0]}x{first.shape[2]}; an in-memory "
                            "dataset needs images of one size")
        images[i] = image
    return images, labels


def draw_pad_crop_flip(rng, count, pad):
    """(tops, lefts, flips) for ``count`` images: crop offsets uniform in [0, 2 pad], flips with p = 1/2.

    ``rng``: a ``numpy.random.Generator``; the draws are made in this order, one array each.
    """
    tops = rng.integers(0, 2 * pad + 1, size=count)
    lefts = rng.integers(0, 2 * pad + 1, size=count)
    flips = rng.random(count) < 0.5
    return tops, lefts, flips


def pad_crop_flip(images, tops, lefts, flips, pad):
    """Zero-pads (N, H, W, C) ``images`` by ``pad`` on each side, crops the H x W window at
    (``tops[i]``, ``lefts[i]``) of image i and mirrors it left-right where ``flips[i]``.

    One gather does crop and flip: output pixel (i, r, c) is padded pixel
    (i, tops[i] + r, lefts[i] + c), or (i, tops[i] + r, lefts[i] + W - 1 - c) when flipped.
    """
    n, h, w = images.shape[:3]
    padded = np.zeros((n, h + 2 * pad, w + 2 * pad) + images.shape[3:], dtype=images.dtype)
    padded[:, pad:pad + h, pad:pad + w] = images
    rows = tops[:, None] + np.arange(h)
    cols = lefts[:, None] + np.arange(w)
    cols = np.where(flips[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]

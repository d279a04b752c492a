"""Image geometry and the evaluation transform on HWC uint8 numpy arrays (OpenCV, no MXNet).

Shared by the training pipelines (:mod:`bmx.data`) and by deployment scripts that run packed
models without MXNet (``example/classify.py``), so that an image becomes the same network input in
both.
"""
import cv2
import numpy as np

__all__ = ["CIFAR10_CLASSES", "read_rgb", "decode_rgb", "resize", "resize_short", "center_crop", "evaluation_input"]

# CIFAR-10's label order (class id = index).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_rgb(path):
    """The image file at ``path`` as an (H, W, 3) uint8 RGB array; ValueError naming the file otherwise."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ValueError(f"{path}: cannot read the image file ({err.strerror})") from None
    return decode_rgb(data, path)


def decode_rgb(data, name):
    """Encoded image bytes (uint8 array: JPEG, PNG, ...) -> (H, W, 3) uint8 RGB; ValueError naming ``name``."""
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"{name}: not a readable image file")
    return image[:, :, ::-1]


def resize(image, width, height):
    """Bilinear resize of an HWC image to ``width`` x ``height``."""
    return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_LINEAR)


def resize_short(image, side):
    """Resizes so that the shorter side is ``side``, keeping the aspect ratio."""
    h, w = image.shape[:2]
    scale = side / min(h, w)
    return resize(image, max(side, int(round(w * scale))), max(side, int(round(h * scale))))


def center_crop(image, size):
    """The central ``size`` x ``size`` square; ValueError if the image is smaller."""
    h, w = image.shape[:2]
    if min(h, w) < size:
        raise ValueError(f"an image of {h}x{w} pixels is smaller than the {size}x{size} input")
    top, left = (h - size) // 2, (w - size) // 2
    return image[top:top + size, left:left + size]


def evaluation_input(image, preprocessing):
    """An RGB uint8 (H, W, 3) image -> the normalized float32 (1, 3, S, S) network input.

    ``preprocessing`` is the dict stored in an exported model's model.json (``image_size``,
    ``resize``: the shorter side before the center crop, 0 for none; ``mean``/``std``: per-channel
    statistics on the 0..255 scale): shorter side resized, center crop, ``(x - mean) / std``.
    """
    size, side = int(preprocessing["image_size"]), int(preprocessing.get("resize", 0))
    image = center_crop(resize_short(image, side) if side else image, size)
    mean = np.asarray(preprocessing["mean"], dtype=np.float32) / 255
    std = np.asarray(preprocessing["std"], dtype=np.float32) / 255
    x = (image.astype(np.float32) / 255 - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

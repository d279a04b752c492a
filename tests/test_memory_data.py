"""bmx.memory_data: whole-batch pad/crop/flip against a per-image numpy reference, draws, decoding."""
import numpy as np
import pytest

from bmx import memory_data
from bmx.records import DataError


def reference_pad_crop_flip(image, top, left, flip, pad):
    """One image, the textbook way: zero-pad, slice the window, mirror the columns."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    window = padded[top:top + h, left:left + w]
    return window[:, ::-1] if flip else window


def test_pad_crop_flip_matches_the_per_image_reference():
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (40, 8, 6, 3)).astype(np.uint8)
    tops, lefts = rng.randint(0, 5, 40), rng.randint(0, 5, 40)
    flips = rng.rand(40) < 0.5
    got = memory_data.pad_crop_flip(images, tops, lefts, flips, 2)
    assert got.shape == images.shape and got.dtype == np.uint8
    for i in range(40):
        np.testing.assert_array_equal(got[i], reference_pad_crop_flip(images[i], tops[i], lefts[i], flips[i], 2))


def test_centre_window_without_flip_is_the_image():
    images = np.random.RandomState(1).randint(0, 256, (3, 5, 5, 3)).astype(np.uint8)
    same = memory_data.pad_crop_flip(images, np.full(3, 4), np.full(3, 4), np.zeros(3, bool), 4)
    np.testing.assert_array_equal(same, images)
    mirrored = memory_data.pad_crop_flip(images, np.full(3, 4), np.full(3, 4), np.ones(3, bool), 4)
    np.testing.assert_array_equal(mirrored, images[:, :, ::-1])


def test_draws_cover_the_offsets_and_depend_only_on_the_generator():
    a = memory_data.draw_pad_crop_flip(np.random.default_rng([3, 1]), 20000, 4)
    b = memory_data.draw_pad_crop_flip(np.random.default_rng([3, 1]), 20000, 4)
    c = memory_data.draw_pad_crop_flip(np.random.default_rng([3, 2]), 20000, 4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    tops, lefts, flips = a
    assert set(np.unique(tops)) == set(range(9)) == set(np.unique(lefts))
    # 9 equally likely offsets and a fair coin: 20,000 draws stay within 5 sigma of uniform.
    assert np.all(np.abs(np.bincount(tops) / 20000 - 1 / 9) < 5 * np.sqrt((1 / 9) * (8 / 9) / 20000))
    assert abs(flips.mean() - 0.5) < 5 * np.sqrt(0.25 / 20000)


class _Items:
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_decode_stacks_images_and_labels():
    rng = np.random.RandomState(2)
    items = [(rng.randint(0, 256, (4, 4, 3)).astype(np.uint8), float(i % 3)) for i in range(7)]
    images, labels = memory_data.decode(_Items(items), "toy.rec")
    assert images.dtype == np.uint8 and labels.dtype == np.float32
    np.testing.assert_array_equal(images, np.stack([im for im, _ in items]))
    np.testing.assert_array_equal(labels, [label for _, label in items])


def test_decode_names_the_record_of_another_size():
    items = [(np.zeros((4, 4, 3), np.uint8), 0.0), (np.zeros((5, 4, 3), np.uint8), 1.0)]
    with pytest.raises(DataError, match=r"toy\.rec: record 1 is 4x5x3, but record 0 is 4x4x3"):
        memory_data.decode(_Items(items), "toy.rec")
    with pytest.raises(DataError, match="toy.rec: no images"):
        memory_data.decode(_Items([]), "toy.rec")

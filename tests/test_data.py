"""bmx.data: layouts, presets, the CIFAR-10 hold-out, determinism and clear errors.

Every test builds its own tiny dataset. ``write_images`` / ``write_recordio`` / ``write_folder``
are also used by test_training.py: a learnable toy task in which each class is a colour (plus
noise and a random bright square), so a small network fits it in a few batches.
"""
import os

import cv2
import mxnet as mx
import numpy as np
import pytest

from bmx import data

# One RGB colour per class.
COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]], dtype=np.float32)


def toy_images(count, classes=4, size=32, seed=0):
    """(images as HWC uint8 RGB, labels) of the colour task, classes interleaved."""
    rng = np.random.RandomState(seed)
    labels = np.arange(count) % classes
    images = []
    for label in labels:
        image = COLOURS[label] + rng.normal(0, 25, (size, size, 3))
        top, left = rng.randint(0, size - 8, 2)
        image[top:top + 8, left:left + 8] += 60
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images, labels


def write_recordio(path_prefix, count, classes=4, size=32, seed=0, corrupt=()):
    """Packs the toy images as JPEG records (``PREFIX.rec`` + ``PREFIX.idx``); records whose index is
    in ``corrupt`` get a payload that is not an image."""
    images, labels = toy_images(count, classes, size, seed)
    writer = mx.recordio.MXIndexedRecordIO(path_prefix + ".idx", path_prefix + ".rec", "w")
    for i, (image, label) in enumerate(zip(images, labels)):
        payload = b"not a jpeg" * 8 if i in corrupt else cv2.imencode(".jpg", image[:, :, ::-1])[1].tobytes()
        writer.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, float(label), i, 0), payload))
    writer.close()
    return path_prefix + ".rec"


def write_folder(root, count, classes=4, size=32, seed=0):
    """The toy images as ``root/class<k>/<i>.jpg``."""
    images, labels = toy_images(count, classes, size, seed)
    for i, (image, label) in enumerate(zip(images, labels)):
        directory = os.path.join(root, f"class{label}")
        os.makedirs(directory, exist_ok=True)
        cv2.imwrite(os.path.join(directory, f"{i:04d}.jpg"), image[:, :, ::-1])
    return root


def write_imagenet_recordio(directory, train=48, val=16, size=32):
    os.makedirs(directory, exist_ok=True)
    write_recordio(os.path.join(directory, "train"), train, size=size, seed=1)
    write_recordio(os.path.join(directory, "val"), val, size=size, seed=2)
    return directory


def write_imagenet_folders(directory, train=48, val=16, size=32):
    write_folder(os.path.join(directory, "train"), train, size=size, seed=1)
    write_folder(os.path.join(directory, "val"), val, size=size, seed=2)
    return directory


def write_cifar(directory, count=60, test=0):
    os.makedirs(directory, exist_ok=True)
    write_recordio(os.path.join(directory, "train"), count, seed=3)
    if test:
        write_recordio(os.path.join(directory, "test"), test, seed=4)
    return directory


def collect(split, epoch=0):
    batches = list(split.batches(epoch))
    return (np.concatenate([x.asnumpy() for x, _ in batches]), np.concatenate([y.asnumpy() for _, y in batches]))


# ----------------------------------------------------------------------------- layouts and presets

@pytest.mark.parametrize("layout", ["recordio-gluon", "recordio-iter", "folder"])
def test_imagenet_layouts_give_normalized_batches(tmp_path, layout):
    if layout == "folder":
        directory = write_imagenet_folders(str(tmp_path))
    else:
        directory = write_imagenet_recordio(str(tmp_path))
    bundle = data.imagenet(directory, 8, image_size=24, loader="gluon" if layout != "recordio-iter" else "record-iter",
                           classes=4, num_workers=1)
    assert bundle.classes == 4
    assert bundle.preprocessing == data.Preprocessing(24, data.IMAGENET_MEAN, data.IMAGENET_STD, 27)
    assert (len(bundle.train), len(bundle.val)) == (6, 2)
    x, y = collect(bundle.train)
    assert x.shape == (48, 3, 24, 24) and x.dtype == np.float32
    assert sorted(np.bincount(y.astype(int))) == [12, 12, 12, 12]
    # Normalized with the ImageNet statistics: the toy colours land within a few std of 0.
    assert -3 < x.mean() < 3 and 0.2 < x.std() < 3
    xv, yv = collect(bundle.val)
    assert xv.shape == (16, 3, 24, 24)
    np.testing.assert_array_equal(yv, np.arange(16) % 4 if layout != "folder" else np.sort(np.arange(16) % 4))


def test_record_iter_validation_matches_gluon_and_keeps_every_image(tmp_path):
    """13 validation images in batches of 8: both readers give the same 13 (no stale padding rows);
    record-iter training batches stay full (the last wraps around)."""
    write_recordio(str(tmp_path / "train"), 21, seed=1)
    write_recordio(str(tmp_path / "val"), 13, seed=2)
    fast = data.imagenet(str(tmp_path), 8, image_size=24, classes=4, num_workers=1)
    exact = data.imagenet(str(tmp_path), 8, image_size=24, classes=4, num_workers=0, loader="gluon")
    x_fast, y_fast = collect(fast.val)
    x_exact, y_exact = collect(exact.val)
    np.testing.assert_array_equal(y_fast, np.arange(13) % 4)
    np.testing.assert_array_equal(y_fast, y_exact)
    np.testing.assert_allclose(x_fast, x_exact, atol=1e-5)
    assert [x.shape[0] for x, _ in fast.train.batches(0)] == [8, 8, 8] and len(fast.train) == 3


def test_evaluation_is_resize_then_center_crop(tmp_path):
    """A 40x32 image: shorter side to round(24 * 256 / 224) = 27, then the central 24x24."""
    image = np.random.RandomState(0).randint(0, 256, (32, 40, 3)).astype(np.uint8)
    folder = tmp_path / "val" / "a"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "x.png"), image[:, :, ::-1])
    prep = data.Preprocessing(24, (0, 0, 0), (1, 1, 1), data.eval_resize(24))
    x, _ = collect(data.evaluation_split(str(tmp_path / "val"), prep, 4))
    resized = cv2.resize(image, (34, 27), interpolation=cv2.INTER_LINEAR)
    expected = resized[1:25, 5:29].transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_allclose(x[0], expected, atol=1e-3)


def _window_of(got, candidates, pad=4):
    """Whether ``got`` is a 32x32 window of a zero-padded candidate: None, or True if mirrored."""
    for candidate in candidates:
        padded = np.pad(candidate, ((pad, pad), (pad, pad), (0, 0))).astype(np.float64)
        for view, mirrored in ((padded, False), (padded[:, ::-1], True)):
            for top in range(2 * pad + 1):
                for left in range(2 * pad + 1):
                    if np.abs(view[top:top + 32, left:left + 32] - got).max() <= 1:
                        return mirrored
    return None


@pytest.mark.parametrize("loader", data.CIFAR10_LOADERS)
def test_cifar_augmentation_is_pad_crop_flip(tmp_path, loader):
    """Every augmented image is a 32x32 window of the zero-padded image, mirrored about half the time."""
    directory = write_cifar(str(tmp_path), count=16)
    bundle = data.cifar10(directory, 8, val_size=0, seed=5, loader=loader)
    images, _ = toy_images(16, seed=3)
    decoded = [cv2.imdecode(cv2.imencode(".jpg", im[:, :, ::-1])[1], cv2.IMREAD_COLOR)[:, :, ::-1] for im in images]
    mean, std = np.array(data.CIFAR10_MEAN), np.array(data.CIFAR10_STD)
    mirrored = []
    for epoch in range(2):
        x, _ = collect(bundle.train, epoch)
        for got in np.rint(x.transpose(0, 2, 3, 1) * std + mean):
            mirrored.append(_window_of(got, decoded))
    assert None not in mirrored
    assert 0 < sum(mirrored) < len(mirrored)


@pytest.mark.parametrize("loader", data.CIFAR10_LOADERS)
def test_cifar_holdout_is_fixed_and_disjoint(tmp_path, loader):
    directory = write_cifar(str(tmp_path), count=60, test=12)
    a = data.cifar10(directory, 8, val_size=20, seed=1, loader=loader)
    b = data.cifar10(directory, 8, val_size=20, seed=2, loader=loader)
    held = data.heldout_indices(60, 20)
    assert len(held) == 20 and len(set(held)) == 20
    assert (a.train.num_images, a.val.num_images, a.test.num_images) == (40, 20, 12)
    # The hold-out does not depend on the training seed; validation sees exactly those records.
    _, ya = collect(a.val)
    _, yb = collect(b.val)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(ya, (held % 4).astype(np.float32))
    _, ytrain = collect(a.train)
    assert len(ytrain) == 40  # 5 full batches of 8: train and hold-out together are the whole file
    assert a.info["val_size"] == 20 and a.preprocessing.image_size == 32


def test_gluon_pipeline_is_a_function_of_seed_and_epoch(tmp_path):
    directory = write_cifar(str(tmp_path), count=40)
    serial = data.cifar10(directory, 8, val_size=8, seed=7, loader="gluon")
    parallel = data.cifar10(directory, 8, val_size=8, seed=7, num_workers=2, loader="gluon")
    x0, y0 = collect(serial.train, 3)
    x1, y1 = collect(parallel.train, 3)
    np.testing.assert_array_equal(x0, x1)
    np.testing.assert_array_equal(y0, y1)
    x2, _ = collect(serial.train, 4)
    assert not np.array_equal(x0, x2)
    other_seed = data.cifar10(directory, 8, val_size=8, seed=8, loader="gluon")
    assert not np.array_equal(x0, collect(other_seed.train, 3)[0])


def test_synthetic_batch():
    x, y = data.synthetic_batch(4, 16, 10, seed=1)
    assert x.shape == (4, 3, 16, 16) and y.shape == (4,)
    assert 0 <= y.min().asscalar() and y.max().asscalar() < 10


# ----------------------------------------------------------------------------- parts (distributed workers)

@pytest.mark.parametrize("loader", data.CIFAR10_LOADERS)
def test_gluon_parts_are_the_batches_of_one_process_with_a_larger_batch(tmp_path, loader):
    """3 workers with batch 4: step s of the epoch is step s of one process with batch 12."""
    directory = write_cifar(str(tmp_path), count=60)
    whole = data.cifar10(directory, 12, val_size=4, seed=2, loader=loader)
    parts = [data.cifar10(directory, 4, val_size=4, seed=2, num_parts=3, part_index=p, loader=loader)
             for p in range(3)]
    assert [len(p.train) for p in parts] == [len(whole.train)] * 3 == [4] * 3  # 56 images, 8 left over
    for epoch in (0, 1):
        got = [list(p.train.batches(epoch)) for p in parts]
        for step, (x, y) in enumerate(whole.train.batches(epoch)):
            np.testing.assert_array_equal(np.concatenate([g[step][0].asnumpy() for g in got]), x.asnumpy())
            np.testing.assert_array_equal(np.concatenate([g[step][1].asnumpy() for g in got]), y.asnumpy())
    assert (parts[1].info["num_parts"], parts[1].info["part_index"]) == (3, 1)
    assert parts[2].val.num_images == 4  # validation is not split


def write_numbered(path_prefix, count, size=16):
    """Records whose label is their index."""
    rng = np.random.RandomState(0)
    writer = mx.recordio.MXIndexedRecordIO(path_prefix + ".idx", path_prefix + ".rec", "w")
    for i in range(count):
        image = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
        writer.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, float(i), i, 0),
                                             cv2.imencode(".png", image)[1].tobytes()))
    writer.close()


@pytest.mark.parametrize("parts", [2, 3, 4])
def test_record_iter_parts_split_the_file_and_give_every_worker_as_many_batches(tmp_path, parts):
    """22 records: mx.io.ImageRecordIter's parts are disjoint, the last one smaller (8, 8, 6 for 3
    parts); every part still yields ceil((22 // parts) / 4) full batches."""
    write_numbered(str(tmp_path / "train"), 22)
    write_numbered(str(tmp_path / "val"), 4)
    seen = []
    for p in range(parts):
        bundle = data.imagenet(str(tmp_path), 4, image_size=8, classes=22, num_workers=1, num_parts=parts,
                               part_index=p)
        batches = list(bundle.train.batches(0))
        assert len(batches) == len(bundle.train) == -(-(22 // parts) // 4)
        assert all(x.shape == (4, 3, 8, 8) for x, _ in batches)
        seen.append(set(np.concatenate([y.asnumpy() for _, y in batches]).astype(int).tolist()))
        assert len(list(bundle.val.batches(0))) == 1  # validation is not split
    assert set().union(*seen) == set(range(22)) and sum(map(len, seen)) == 22


def test_bad_parts(tmp_path):
    directory = write_cifar(str(tmp_path), count=20)
    with pytest.raises(ValueError, match=r"part_index must be in \[0, num_parts\)"):
        data.cifar10(directory, 4, val_size=4, num_parts=2, part_index=2)
    with pytest.raises(ValueError, match="part_index"):
        data.cifar10(directory, 4, val_size=4, num_parts=0)
    with pytest.raises(data.DataError, match="fewer than one batch of 4 for each of 5 workers"):
        data.cifar10(directory, 4, val_size=4, num_parts=5, part_index=0)


# ----------------------------------------------------------------------------- errors

def test_missing_directory_names_the_path(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(data.DataError, match="nope: no such directory"):
        data.imagenet(missing, 8)
    with pytest.raises(data.DataError, match="nope: no such directory"):
        data.cifar10(missing, 8)


def test_empty_directory_says_what_was_expected(tmp_path):
    with pytest.raises(data.DataError, match=r"expected train\.rec and train\.idx .* in this directory"):
        data.imagenet(str(tmp_path), 8)
    with pytest.raises(data.DataError, match=r"expected train\.rec and train\.idx \(CIFAR-10"):
        data.cifar10(str(tmp_path), 8)


def test_missing_val_files_are_named(tmp_path):
    write_recordio(str(tmp_path / "train"), 16)
    with pytest.raises(data.DataError, match="missing val.rec, val.idx"):
        data.imagenet(str(tmp_path), 8)


def test_missing_idx_is_named(tmp_path):
    write_cifar(str(tmp_path), 16)
    os.remove(tmp_path / "train.idx")
    with pytest.raises(data.DataError, match="train.idx"):
        data.cifar10(str(tmp_path), 8, val_size=4)


def test_malformed_index_is_named_with_its_line(tmp_path):
    write_cifar(str(tmp_path), 16)
    with open(tmp_path / "train.idx", "a") as f:
        f.write("17 not-an-offset\n")
    with pytest.raises(data.DataError, match=r"train\.idx: line 17 is not 'key<TAB>offset'"):
        data.cifar10(str(tmp_path), 8, val_size=4)


def test_index_of_another_file_is_detected(tmp_path):
    write_cifar(str(tmp_path), 16)
    with open(tmp_path / "train.idx", "a") as f:
        f.write("16\t99999999\n")
    with pytest.raises(data.DataError, match="outside .*train.rec"):
        data.cifar10(str(tmp_path), 8, val_size=4)


def test_corrupt_record_names_file_and_record(tmp_path):
    write_recordio(str(tmp_path / "train"), 24, corrupt={13})
    bundle = data.cifar10(str(tmp_path), 8, val_size=0, loader="gluon")
    with pytest.raises(data.DataError, match=r"train\.rec: record 13 \(key 13\) is corrupt or not an image"):
        collect(bundle.train)
    # The in-memory pipeline decodes every record before training starts.
    with pytest.raises(data.DataError, match=r"train\.rec: record 13 \(key 13\) is corrupt or not an image"):
        data.cifar10(str(tmp_path), 8, val_size=0, loader="memory")


def test_corrupt_record_is_reported_from_worker_processes(tmp_path):
    write_recordio(str(tmp_path / "train"), 24, corrupt={5})
    bundle = data.cifar10(str(tmp_path), 8, val_size=0, num_workers=2, loader="gluon")
    with pytest.raises(data.DataError, match=r"record 5 \(key 5\)"):
        collect(bundle.train)


def test_corrupt_first_record_fails_before_training(tmp_path):
    write_recordio(str(tmp_path / "train"), 16, corrupt={0})
    with pytest.raises(data.DataError, match="record 0"):
        data.cifar10(str(tmp_path), 8, val_size=4)


def test_record_iter_failure_names_the_file(tmp_path):
    directory = write_imagenet_recordio(str(tmp_path))
    write_recordio(os.path.join(directory, "train"), 48, seed=1, corrupt={20})
    bundle = data.imagenet(directory, 8, image_size=24, classes=4, num_workers=1)
    with pytest.raises(data.DataError, match=r"train\.rec: mx\.io\.ImageRecordIter failed"):
        collect(bundle.train)


def test_unreadable_image_file_is_named(tmp_path):
    directory = write_imagenet_folders(str(tmp_path), train=16, val=8)
    bad = os.path.join(directory, "train", "class1", "broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8 truncated")
    bundle = data.imagenet(directory, 4, image_size=24)
    with pytest.raises(data.DataError, match="broken.jpg: not a readable image"):
        collect(bundle.train)


def test_class_folders_must_match(tmp_path):
    write_folder(str(tmp_path / "train"), 16, classes=4)
    write_folder(str(tmp_path / "val"), 8, classes=2)
    with pytest.raises(data.DataError, match="different class folders"):
        data.imagenet(str(tmp_path), 4)


def test_too_few_training_images_for_a_batch(tmp_path):
    write_cifar(str(tmp_path), 12)
    with pytest.raises(data.DataError, match="fewer than one batch"):
        data.cifar10(str(tmp_path), 16, val_size=2)


def test_holdout_larger_than_the_file(tmp_path):
    write_cifar(str(tmp_path), 12)
    with pytest.raises(data.DataError, match="cannot hold out 12 of its 12"):
        data.cifar10(str(tmp_path), 4, val_size=12)


# ----------------------------------------------------------------------------- in-memory CIFAR-10

def test_normalization_matches_mxnet_to_tensor_and_normalize():
    """data._to_input against the MXNet operators it replaces, on every uint8 value: bit-identical."""
    prep = data.Preprocessing(32, data.CIFAR10_MEAN, data.CIFAR10_STD)
    images = np.random.RandomState(0).randint(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    images[0] = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    reference = mx.nd.image.normalize(mx.nd.image.to_tensor(mx.nd.array(images, dtype=np.uint8)),
                                      mean=tuple(m / 255 for m in prep.mean), std=tuple(s / 255 for s in prep.std))
    np.testing.assert_array_equal(data._to_input(images, prep).asnumpy(), reference.asnumpy())


def test_memory_pipeline_reads_the_same_images_and_labels_as_the_record_reader(tmp_path):
    """Hold-out and test (not augmented) are bit-identical to the Gluon record pipeline; training
    reads the same records in the same (seed, epoch) order, each a window of its decoded image."""
    directory = write_cifar(str(tmp_path), count=40, test=12)
    memory = data.cifar10(directory, 8, val_size=8, seed=4, loader="memory")
    gluon = data.cifar10(directory, 8, val_size=8, seed=4, loader="gluon")
    assert memory.info["loader"] == "memory" and gluon.info["loader"] == "gluon"
    for split in ("val", "test"):
        xm, ym = collect(getattr(memory, split))
        xg, yg = collect(getattr(gluon, split))
        np.testing.assert_array_equal(xm, xg)
        np.testing.assert_array_equal(ym, yg)
    images, labels = toy_images(40, seed=3)
    decoded = [cv2.imdecode(cv2.imencode(".jpg", im[:, :, ::-1])[1], cv2.IMREAD_COLOR)[:, :, ::-1] for im in images]
    mean, std = np.array(data.CIFAR10_MEAN), np.array(data.CIFAR10_STD)
    held = set(data.heldout_indices(40, 8))
    for epoch in (0, 1):
        xm, ym = collect(memory.train, epoch)
        _, yg = collect(gluon.train, epoch)
        np.testing.assert_array_equal(ym, yg)
        order = np.random.RandomState([4, epoch]).permutation([i for i in range(40) if i not in held])
        np.testing.assert_array_equal(ym, (order % 4).astype(np.float32))
        for got, record in zip(np.rint(xm.transpose(0, 2, 3, 1) * std + mean), order):
            assert _window_of(got, [decoded[record]]) is not None


def test_memory_augmentation_is_a_function_of_seed_and_epoch(tmp_path):
    """A new bundle (a resumed process) gives epoch 3 bit for bit without reading epochs 0-2."""
    directory = write_cifar(str(tmp_path), count=40)
    first = data.cifar10(directory, 8, val_size=8, seed=7)
    for epoch in range(3):
        collect(first.train, epoch)
    x3, y3 = collect(first.train, 3)
    resumed = data.cifar10(directory, 8, val_size=8, seed=7)
    x, y = collect(resumed.train, 3)
    np.testing.assert_array_equal(x, x3)
    np.testing.assert_array_equal(y, y3)
    assert not np.array_equal(collect(first.train, 4)[0], x3)
    assert not np.array_equal(collect(data.cifar10(directory, 8, val_size=8, seed=8).train, 3)[0], x3)


def test_unknown_cifar_loader_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown CIFAR-10 loader 'record-iter'"):
        data.cifar10(write_cifar(str(tmp_path), 16), 8, val_size=4, loader="record-iter")

"""bmx.images: the evaluation transform shared by the MXNet pipelines and the packed-model scripts."""
import cv2
import numpy as np
import pytest

from bmx import data, images


def test_evaluation_input_equals_the_mxnet_evaluation_pipeline(tmp_path):
    rng = np.random.RandomState(0)
    rgb = rng.randint(0, 256, (40, 52, 3)).astype(np.uint8)
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, rgb[:, :, ::-1])
    np.testing.assert_array_equal(images.read_rgb(path), rgb)
    prep = data.Preprocessing(32, (120.0, 110.0, 100.0), (60.0, 62.0, 64.0), 36)
    x = images.evaluation_input(rgb, prep.to_dict())
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    expected = data._to_input(mx_batch(data._center(32, 36)(rgb)), prep).asnumpy()
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    # independently: resize the shorter side (40 -> 36, 52 -> 47), crop the center, normalize
    side = cv2.resize(rgb, (47, 36), interpolation=cv2.INTER_LINEAR)[2:34, 7:39].astype(np.float64)
    manual = (side - np.array(prep.mean)) / np.array(prep.std)
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), manual, rtol=1e-4, atol=1e-4)


def mx_batch(image):
    import mxnet as mx
    return mx.nd.array(np.ascontiguousarray(image)[None], dtype=np.uint8)


def test_bad_images_are_named(tmp_path):
    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not-an-image.jpg: not a readable image"):
        images.read_rgb(str(bad))
    with pytest.raises(ValueError, match="missing.jpg"):
        images.read_rgb(str(tmp_path / "missing.jpg"))
    with pytest.raises(ValueError, match="smaller than the 32x32 input"):
        images.center_crop(np.zeros((20, 40, 3), np.uint8), 32)

"""bmx.datafiles: RecordIO files and class folders read with numpy and OpenCV, against MXNet's writer
and a writer of the documented format."""
import os
import struct

import cv2
import numpy as np
import pytest

from bmx import datafiles

MAGIC = 0xCED7230A


def png(image):
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    assert ok
    return data.tobytes()


def payload(image, label, extra_labels=()):
    """A record payload as the module docstring documents it (independent of mx.recordio)."""
    flag = len(extra_labels)
    head = struct.pack("<IfQQ", flag, 0.0 if flag else label, 7, 0)
    return head + struct.pack(f"<{flag}f", *extra_labels) + png(image)


def write_parts(f, data, parts):
    """Writes one record as `parts` pieces split at the magic words planted in data."""
    pieces = data.split(struct.pack("<I", MAGIC))
    assert len(pieces) == parts
    for i, piece in enumerate(pieces):
        cflag = 0 if parts == 1 else 1 if i == 0 else 3 if i == parts - 1 else 2
        f.write(struct.pack("<II", MAGIC, cflag << 29 | len(piece)) + piece + b"\0" * (-len(piece) % 4))


def images(n, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 256, size=(5 + i % 3, 7, 3)).astype(np.uint8) for i in range(n)]


def test_reads_the_documented_format_with_split_records_and_label_arrays(tmp_path):
    pictures = images(4)
    rec, idx = tmp_path / "d.rec", tmp_path / "d.idx"
    offsets = []
    with open(rec, "wb") as f:
        for i, picture in enumerate(pictures):
            offsets.append(f.tell())
            data = payload(picture, i, extra_labels=(i + 2.0, 9.0) if i == 1 else ())
            if i == 2:  # a payload holding the magic word twice, 4-aligned: three parts
                data += struct.pack("<I", MAGIC) + b"tail" + struct.pack("<I", MAGIC) + b"more"
                write_parts(f, data, 3)
            else:
                write_parts(f, data, 1)
    idx.write_text("".join(f"{10 + i}\t{o}\n" for i, o in enumerate(offsets)))
    reader = datafiles.RecordFile(str(rec))
    assert len(reader) == 4 and reader.keys == [10, 11, 12, 13]
    for i, picture in enumerate(pictures):
        image, label = reader.image(i)
        np.testing.assert_array_equal(image, picture)
        assert label == (3 if i == 1 else i)
    assert reader.payload(2).endswith(struct.pack("<I", MAGIC) + b"tail" + struct.pack("<I", MAGIC) + b"more")


def test_reads_what_mxnet_writes(tmp_path):
    mx = pytest.importorskip("mxnet")
    pictures = images(5, seed=1)
    rec, idx = str(tmp_path / "m.rec"), str(tmp_path / "m.idx")
    writer = mx.recordio.MXIndexedRecordIO(idx, rec, "w")
    for i, picture in enumerate(pictures):
        header = mx.recordio.IRHeader(0, float(i % 3), i, 0)
        writer.write_idx(i, mx.recordio.pack_img(header, picture[:, :, ::-1], img_fmt=".png"))
    # MXNet splits a payload at a 4-aligned magic word: the reader must rejoin it
    raw = b"abcd" + struct.pack("<I", MAGIC) + b"efgh"
    writer.write_idx(len(pictures), raw)
    writer.close()
    reader = datafiles.RecordFile(rec)
    for i, picture in enumerate(pictures):
        image, label = reader.image(i)
        np.testing.assert_array_equal(image, picture)
        assert label == i % 3
    assert reader.payload(len(pictures)) == raw


@pytest.mark.parametrize("index, message", [
    ("0\t0\nnot a line\n", r"d\.idx: line 2 is not 'key<TAB>offset'"),
    ("0\t999999\n", r"d\.idx: line 1 points to byte 999999, outside"),
    ("\n", r"d\.idx: the index lists no records"),
])
def test_index_errors_name_the_file_and_line(tmp_path, index, message):
    (tmp_path / "d.rec").write_bytes(b"\0" * 64)
    (tmp_path / "d.idx").write_text(index)
    with pytest.raises(datafiles.DataError, match=message):
        datafiles.RecordFile(str(tmp_path / "d.rec"))


def test_missing_files_and_corrupt_records_are_named(tmp_path):
    with pytest.raises(datafiles.DataError, match=r"d\.rec and .*d\.idx: not found"):
        datafiles.read_index(str(tmp_path / "d.rec"))
    rec = tmp_path / "d.rec"
    with open(rec, "wb") as f:
        write_parts(f, payload(images(1)[0], 1), 1)
        second = f.tell()
        write_parts(f, struct.pack("<IfQQ", 0, 1.0, 0, 0) + b"not an image", 1)
        third = f.tell()
        f.write(b"garbage!")
    (tmp_path / "d.idx").write_text(f"5\t0\n6\t{second}\n7\t{third}\n")
    reader = datafiles.RecordFile(str(rec))
    assert reader.image(0)[1] == 1
    with pytest.raises(datafiles.DataError, match=r"d\.rec: record 1 \(key 6\) is corrupt or not an image "
                                                r"\(the payload is not a decodable image\)"):
        reader.image(1)
    with pytest.raises(datafiles.DataError, match=r"record 2 \(key 7\) .*no RecordIO magic word"):
        reader.image(2)


def test_folder_images_list_sorted_classes_and_image_files(tmp_path):
    for name, files in (("b", ["2.png", "1.JPG", "notes.txt"]), ("a", ["x.jpeg"]), ("c", [])):
        os.makedirs(tmp_path / name)
        for file in files:
            (tmp_path / name / file).write_bytes(b"")
    (tmp_path / "stray.png").write_bytes(b"")
    classes, items = datafiles.folder_images(str(tmp_path))
    assert classes == ["a", "b", "c"]
    assert [(os.path.relpath(p, tmp_path), label) for p, label in items] == \
        [(os.path.join("a", "x.jpeg"), 0), (os.path.join("b", "1.JPG"), 1), (os.path.join("b", "2.png"), 1)]
    with pytest.raises(datafiles.DataError, match="no images found"):
        datafiles.folder_images(str(tmp_path / "c"))
    with pytest.raises(datafiles.DataError, match="no such directory"):
        datafiles.folder_images(str(tmp_path / "missing"))


def test_heldout_indices_are_a_fixed_sorted_sample():
    held = datafiles.heldout_indices(100, 30)
    assert len(held) == 30 and len(set(held.tolist())) == 30 and (np.diff(held) > 0).all()
    np.testing.assert_array_equal(held, np.sort(np.random.RandomState(0).permutation(100)[:30]))

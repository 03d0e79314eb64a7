"""The IDX reader on hand-made files: what it returns, and every way a file can be wrong."""

from __future__ import annotations

import gzip

import pytest
import torch

from ewc.data import DataFileError, parse_images, parse_labels, read_images, read_labels
from ewc.data.idx import check_same_count, decompress


def test_images_round_trip(kit):
    images = kit.random_images(3, seed=1)
    parsed = parse_images(kit.images_file(images), name="x")
    assert parsed.dtype == torch.uint8
    assert parsed.shape == (3, 28, 28)
    assert torch.equal(parsed, images)


def test_labels_round_trip(kit):
    labels = torch.tensor([0, 9, 3, 3, 7])
    parsed = parse_labels(kit.labels_file(labels), name="x")
    assert parsed.dtype == torch.int64
    assert parsed.tolist() == [0, 9, 3, 3, 7]


def test_row_major_order(kit):
    values = bytes(range(256)) * 3 + bytes(range(16))  # 784 bytes, one image
    image = parse_images(kit.idx(values, (1, 28, 28)), name="x")[0]
    assert image[0, :4].tolist() == [0, 1, 2, 3]
    assert int(image[1, 0]) == 28  # second row starts at byte 28
    assert int(image[27, 27]) == 15


def test_empty_files_parse_to_empty_tensors(kit):
    assert parse_images(kit.idx(b"", (0, 28, 28)), name="x").shape == (0, 28, 28)
    assert parse_labels(kit.idx(b"", (0,)), name="x").shape == (0,)


def test_num_classes_bounds_labels(kit):
    assert parse_labels(kit.idx(bytes([0, 46]), (2,)), name="x", num_classes=47).tolist() == [0, 46]
    with pytest.raises(DataFileError, match=r"label 47 at index 1 is outside \[0, 47\)"):
        parse_labels(kit.idx(bytes([0, 47]), (2,)), name="x", num_classes=47)


@pytest.mark.parametrize("num_classes", [0, 257, -1])
def test_num_classes_outside_byte_range_is_a_usage_error(kit, num_classes):
    with pytest.raises(ValueError, match="num_classes must be in") as caught:
        parse_labels(kit.idx(b"\x00", (1,)), name="x", num_classes=num_classes)
    assert not isinstance(caught.value, DataFileError)


IMAGE = bytes(784)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda k: b"\x00\x00\x08", r"3 bytes is too short for an IDX file"),
        (lambda k: b"", r"0 bytes is too short"),
        (lambda k: k.idx(IMAGE, (1, 28, 28), zero=b"\x01\x02"), r"starts with 0x0102, expected"),
        (lambda k: k.gz(k.idx(IMAGE, (1, 28, 28))), r"looks gzip-compressed: name it \*\.gz"),
        (lambda k: k.idx(IMAGE, (1, 28, 28), type_code=0x0D), r"type code 0x0D \(float32\)"),
        (lambda k: k.idx(IMAGE, (1, 28, 28), type_code=0x42), r"type code 0x42 \(unknown type\)"),
        (lambda k: k.idx(IMAGE, (784,)), r"IDX file has 1 dimensions, expected 3"),
        (lambda k: k.idx(IMAGE, (1, 28, 28, 1)), r"IDX file has 4 dimensions, expected 3"),
        (lambda k: k.idx(b"", (1, 28, 28))[:10], r"header with 3 dimensions is 16 bytes.*has 10"),
        (lambda k: k.idx(bytes(1024), (1, 32, 32)), r"images are 32×32, expected 28×28"),
        (lambda k: k.idx(IMAGE, (1, 28, 27)), r"images are 28×27, expected 28×28"),
        (
            lambda k: k.idx(IMAGE, (2, 28, 28)),
            r"expected 1568 bytes of images.*got 784 \(truncated",
        ),
        (lambda k: k.idx(IMAGE + b"\x00", (1, 28, 28)), r"got 785 \(trailing bytes\?\)"),
    ],
)
def test_bad_image_files(kit, make, message):
    with pytest.raises(DataFileError, match=message) as caught:
        parse_images(make(kit), name="train-images-idx3-ubyte")
    assert str(caught.value).startswith("train-images-idx3-ubyte: ")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (lambda k: k.idx(bytes(4), (4,), type_code=0x0C), r"type code 0x0C \(int32\)"),
        (lambda k: k.idx(bytes(784), (1, 28, 28)), r"IDX file has 3 dimensions, expected 1"),
        (lambda k: k.idx(bytes(3), (4,)), r"expected 4 bytes of labels after the header, got 3"),
        (lambda k: k.idx(bytes(5), (4,)), r"expected 4 bytes of labels.*got 5 \(trailing"),
        (lambda k: k.idx(bytes([1, 2, 3, 10, 255]), (5,)), r"label 10 at index 3 .*\(2 labels out"),
    ],
)
def test_bad_label_files(kit, payload, message):
    with pytest.raises(DataFileError, match=message) as caught:
        parse_labels(payload(kit), name="t10k-labels-idx1-ubyte")
    assert str(caught.value).startswith("t10k-labels-idx1-ubyte: ")


def test_truncated_gz_labels_message_names_file_and_sizes(kit, tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(kit.gz(kit.idx(bytes(9987), (10000,))))
    with pytest.raises(DataFileError) as caught:
        read_labels(path)
    assert str(caught.value) == (
        f"{path}: expected 10000 bytes of labels after the header, got 9987 (truncated?)"
    )


def test_gz_and_uncompressed_files_read_the_same(kit, tmp_path):
    images, labels = kit.random_images(4, seed=2), torch.tensor([5, 0, 9, 1])
    (tmp_path / "a-images").write_bytes(kit.images_file(images))
    (tmp_path / "a-images.gz").write_bytes(kit.gz(kit.images_file(images)))
    (tmp_path / "a-labels").write_bytes(kit.labels_file(labels))
    (tmp_path / "a-labels.gz").write_bytes(kit.gz(kit.labels_file(labels)))
    for suffix in ("", ".gz"):
        assert torch.equal(read_images(tmp_path / f"a-images{suffix}"), images)
        assert torch.equal(read_labels(str(tmp_path / f"a-labels{suffix}")), labels)


def test_count_mismatch_names_both_files(kit):
    images = parse_images(kit.images_file(kit.random_images(5, seed=0)), name="x")
    labels = parse_labels(kit.labels_file(torch.arange(4)), name="y")
    with pytest.raises(DataFileError, match=r"^a-images has 5 images but a-labels has 4 labels"):
        check_same_count(images, labels, images_name="a-images", labels_name="a-labels")
    check_same_count(images, torch.zeros(5), images_name="a", labels_name="b")  # no error


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda raw: raw[: len(raw) // 2], r"gzip stream ends early \(truncated download\?\)"),
        (lambda raw: raw[:-1], r"gzip stream ends early"),
        (lambda raw: b"\x1f\x8c" + raw[2:], r"not a valid gzip file"),
        (lambda raw: raw + b"garbage", r"not a valid gzip file"),
        (lambda raw: raw[:-8] + bytes(8), r"not a valid gzip file \(CRC check failed"),
        (lambda raw: raw[:20] + bytes([raw[20] ^ 0xFF]) + raw[21:], r"not a valid gzip file"),
    ],
)
def test_corrupt_gzip(kit, tmp_path, corrupt, message):
    raw = kit.gz(kit.images_file(kit.random_images(2, seed=3)))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(corrupt(raw))
    with pytest.raises(DataFileError, match=message) as caught:
        read_images(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_decompress_accepts_what_gzip_accepts():
    assert decompress(gzip.compress(b"abc"), name="x") == b"abc"


def test_data_file_error_is_a_value_error():
    assert issubclass(DataFileError, ValueError)

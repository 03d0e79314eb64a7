"""The checksum rule and the catalog of known data sets."""

from __future__ import annotations

import gzip
import re

import pytest

from ewc.data import IDX_FILES, DataFileError, DatasetName, get_spec, md5_hex, verify

PAYLOAD = b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03"


def test_md5_hex_known_vectors():
    assert md5_hex(b"") == "d41d8cd98f00b204e9800998ecf8427e"
    assert md5_hex(b"abc") == "900150983cd24fb0d6963f7d28e17f72"


def test_gz_file_matching_its_own_digest():
    raw = gzip.compress(PAYLOAD, mtime=0)
    assert verify(raw, name="a.gz", checksums={"a.gz": md5_hex(raw)}) is True


def test_recompressed_gz_matching_the_content_digest():
    """Debian's Fashion-MNIST case: another gzip container around the identical content."""
    official = gzip.compress(PAYLOAD, compresslevel=9, mtime=0)
    repacked = gzip.compress(PAYLOAD, compresslevel=1, mtime=123456)
    assert md5_hex(official) != md5_hex(repacked)
    table = {"a.gz": md5_hex(official), "a": md5_hex(PAYLOAD)}
    assert verify(repacked, name="a.gz", checksums=table) is True
    assert verify(repacked, name="a.gz", checksums=table, payload=PAYLOAD) is True


def test_uncompressed_file_uses_the_content_digest():
    assert verify(PAYLOAD, name="a", checksums={"a": md5_hex(PAYLOAD)}) is True
    with pytest.raises(DataFileError, match="checksum mismatch"):
        verify(PAYLOAD + b"\x00", name="a", checksums={"a": md5_hex(PAYLOAD)})


def test_no_known_digest_returns_false():
    assert verify(PAYLOAD, name="a", checksums={"a.gz": "0" * 32, "b": "1" * 32}) is False
    assert verify(gzip.compress(PAYLOAD), name="b.gz", checksums={}) is False


def test_mismatch_names_file_expected_and_actual():
    raw = gzip.compress(PAYLOAD, mtime=0)
    with pytest.raises(DataFileError) as caught:
        verify(raw, name="a.gz", checksums={"a.gz": "0" * 32}, display="/x/a.gz", dataset="kmnist")
    message = str(caught.value)
    assert message.startswith("/x/a.gz: checksum mismatch: ")
    assert f"md5 {md5_hex(raw)}, expected {'0' * 32}" in message
    assert "not the official kmnist file" in message


def test_mismatch_of_both_digests_reports_both():
    other = b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x04"
    raw = gzip.compress(other, mtime=0)
    table = {"a.gz": "0" * 32, "a": md5_hex(PAYLOAD)}
    with pytest.raises(DataFileError) as caught:
        verify(raw, name="a.gz", checksums=table)
    message = str(caught.value)
    assert f"md5 {md5_hex(raw)}, expected {'0' * 32}" in message
    assert f"decompressed content {md5_hex(other)}, expected {md5_hex(PAYLOAD)}" in message


def test_corrupt_gzip_with_content_digest_is_a_data_file_error():
    with pytest.raises(DataFileError, match=r"^a\.gz: not a valid gzip file"):
        verify(b"\x1f\x8c\x08garbage", name="a.gz", checksums={"a": md5_hex(PAYLOAD)})


def test_catalog_names_and_parse():
    assert [n.value for n in DatasetName] == ["mnist", "fashion-mnist", "kmnist"]
    assert DatasetName.parse("kmnist") is DatasetName.KMNIST
    assert DatasetName.parse(DatasetName.MNIST) is DatasetName.MNIST
    with pytest.raises(
        ValueError, match="'cifar10'; valid names are 'mnist', 'fashion-mnist', 'km"
    ):
        get_spec("cifar10")


@pytest.mark.parametrize("name", list(DatasetName))
def test_every_dataset_has_a_digest_for_every_gz_file(name):
    spec = get_spec(name)
    assert len(spec.classes) == 10
    assert len(set(spec.classes)) == 10
    for base in IDX_FILES:
        assert re.fullmatch("[0-9a-f]{32}", spec.checksums[f"{base}.gz"])
    assert all(re.fullmatch("[0-9a-f]{32}", digest) for digest in spec.checksums.values())
    assert spec.mirrors
    assert all(mirror.endswith("/") for mirror in spec.mirrors)
    with pytest.raises(TypeError):
        spec.checksums["x"] = "y"  # the table is read-only


def test_official_mnist_digests():
    table = get_spec("mnist").checksums
    assert table["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert table["train-labels-idx1-ubyte.gz"] == "d53e105ee54ea40749a09fcbcd1e9432"
    assert table["t10k-images-idx3-ubyte.gz"] == "9fb629c4189551a2d022fa330f9573f3"
    assert table["t10k-labels-idx1-ubyte.gz"] == "ec29112dd5afa0611ce80d1b7f02629c"


def test_content_digests_are_known_except_for_kmnist():
    for name in ("mnist", "fashion-mnist"):
        assert all(base in get_spec(name).checksums for base in IDX_FILES)
    assert not any(base in get_spec("kmnist").checksums for base in IDX_FILES)

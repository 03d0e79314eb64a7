"""The MNIST subset shipped in the package: real digits, the 8,000 / 2,000 split, checksums."""

from __future__ import annotations

from importlib import resources

import pytest
import torch

from ewc.data import DataFileError, get_spec, load_dataset, load_embedded_mnist, md5_hex
from ewc.data.embedded_mnist import EMBEDDED_FILES, split_indices
from ewc.data.idx import parse_images, parse_labels, read_payload

# Digits 0..9 in the official 10,000-image MNIST test set.
MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def embedded():
    return load_embedded_mnist()


@pytest.fixture(scope="module")
def full_test_set():
    folder = resources.files("ewc.data") / "embedded"
    with resources.as_file(folder / EMBEDDED_FILES[0]) as path:
        images = parse_images(read_payload(path), name=str(path))
    with resources.as_file(folder / EMBEDDED_FILES[1]) as path:
        labels = parse_labels(read_payload(path), name=str(path))
    return images, labels


def test_shapes_and_types(embedded):
    assert embedded.name == "mnist"
    assert embedded.train_images.shape == (8000, 28, 28)
    assert embedded.test_images.shape == (2000, 28, 28)
    assert embedded.train_images.dtype == torch.uint8
    assert embedded.train_labels.shape == (8000,)
    assert embedded.test_labels.dtype == torch.int64
    assert embedded.classes == tuple("0123456789")
    assert embedded.is_subset is True
    assert "subset of the MNIST test set" in embedded.source
    assert "MD5 verified" in embedded.source


def test_these_are_the_real_mnist_test_digits(full_test_set):
    images, labels = full_test_set
    assert torch.bincount(labels, minlength=10).tolist() == MNIST_TEST_CLASS_COUNTS
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert int(images.max()) == 255
    assert int(images.min()) == 0
    # Digits are dark ink on a black background: mostly zeros, a real share of ink.
    ink = (images > 0).double().mean().item()
    assert 0.1 < ink < 0.3


def test_split_rule_is_index_mod_5(embedded, full_test_set):
    images, labels = full_test_set
    assert torch.equal(embedded.test_images, images[4::5])
    assert torch.equal(embedded.test_labels, labels[4::5])
    keep = torch.tensor([i % 5 != 4 for i in range(10000)])
    assert torch.equal(embedded.train_images, images[keep])
    assert torch.equal(embedded.train_labels, labels[keep])


def test_every_class_is_in_both_splits_in_plausible_proportion(embedded):
    for labels in (embedded.train_labels, embedded.test_labels):
        share = torch.bincount(labels, minlength=10).double() / labels.numel()
        assert share.min() > 0.07
        assert share.max() < 0.14


def test_split_indices_partition():
    train, test = split_indices(12)
    assert train.tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11]
    assert test.tolist() == [4, 9]
    train, test = split_indices(10000)
    assert (train.numel(), test.numel()) == (8000, 2000)
    assert torch.equal(torch.cat([train, test]).sort().values, torch.arange(10000))


def test_packaged_files_match_the_official_digests():
    table = get_spec("mnist").checksums
    folder = resources.files("ewc.data") / "embedded"
    for name in EMBEDDED_FILES:
        raw = (folder / name).read_bytes()
        assert md5_hex(raw) == table[name]


def test_damaged_package_is_reported():
    with pytest.raises(DataFileError, match=r"t10k-images-idx3-ubyte\.gz: checksum mismatch"):
        load_embedded_mnist(checksums={"t10k-images-idx3-ubyte.gz": "0" * 32})


def test_load_dataset_embedded_source(embedded):
    loaded = load_dataset("mnist", source="embedded")
    assert torch.equal(loaded.test_labels, embedded.test_labels)
    assert loaded.is_subset


def test_readme_carries_provenance_and_licence():
    readme = (resources.files("ewc.data") / "embedded" / "README.md").read_text(encoding="utf-8")
    assert "LeCun" in readme
    assert "Cortes" in readme
    assert "Burges" in readme
    assert "CC BY-SA 3.0" in readme
    assert "i % 5 == 4" in readme

"""The other common names of the IDX files (``train-images.idx3-ubyte``, as Kaggle names them).

A folder may hold the files under their official names or with a dot before ``idx``, gzipped or
not; either way they are checked against the official digests, and a folder holding one file
under both names is refused, naming both.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from ewc.data import IDX_FILES, DataFileError, DatasetNotFoundError, load_dataset
from ewc.data.catalog import file_names, official_name

SHARED_MNIST = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist"


def dotted(base: str) -> str:
    """``train-images-idx3-ubyte`` → ``train-images.idx3-ubyte``."""
    return file_names(base)[1]


def write_dotted(data, folder: Path, *, compressed: bool) -> Path:
    """Write ``data``'s four files into ``folder`` under the dotted names."""
    folder.mkdir(parents=True, exist_ok=True)
    for base, payload in data.payloads.items():
        if compressed:
            (folder / f"{dotted(base)}.gz").write_bytes(data.gz_files[f"{base}.gz"])
        else:
            (folder / dotted(base)).write_bytes(payload)
    return folder


@pytest.fixture
def isolated(tmp_path):
    """Keyword arguments that keep the loader away from the real cache and Debian folder."""
    return {"cache_dir": tmp_path / "cache", "debian_dir": tmp_path / "no-debian"}


def test_the_names_of_each_file():
    assert [dotted(base) for base in IDX_FILES] == [
        "train-images.idx3-ubyte",
        "train-labels.idx1-ubyte",
        "t10k-images.idx3-ubyte",
        "t10k-labels.idx1-ubyte",
    ]
    assert official_name("t10k-labels.idx1-ubyte.gz") == "t10k-labels-idx1-ubyte.gz"
    assert official_name("train-images-idx3-ubyte") == "train-images-idx3-ubyte"
    assert official_name("train-images.idx3-ubyte.zip") is None


@pytest.mark.parametrize("compressed", [True, False])
def test_dotted_names_load_and_are_verified(kit, tmp_path, isolated, compressed):
    data = kit.data(seed=21)
    folder = write_dotted(data, tmp_path / "kaggle", compressed=compressed)
    loaded = load_dataset(
        "mnist", source="dir", data_dir=folder, checksums=data.checksums, **isolated
    )
    assert torch.equal(loaded.train_images, data.train_images)
    assert torch.equal(loaded.test_labels, data.test_labels)
    assert loaded.source == f"MNIST from folder {folder} (MD5 verified)"


def test_dotted_names_are_found_by_auto_in_the_named_subfolder(kit, tmp_path, isolated):
    data = kit.data(seed=22)
    write_dotted(data, tmp_path / "datasets" / "kmnist", compressed=True)
    loaded = load_dataset(
        "kmnist", data_dir=tmp_path / "datasets", checksums=data.checksums, **isolated
    )
    assert torch.equal(loaded.train_labels, data.train_labels)


@pytest.mark.parametrize("compressed", [True, False])
def test_a_dotted_file_with_other_content_fails_the_official_digest(
    kit, tmp_path, isolated, compressed
):
    data, other = kit.data(seed=23), kit.data(seed=24)
    folder = write_dotted(data, tmp_path, compressed=compressed)
    wrong = f"{dotted(IDX_FILES[1])}{'.gz' if compressed else ''}"
    suffix = ".gz" if compressed else ""
    (folder / wrong).write_bytes(
        other.gz_files[f"{IDX_FILES[1]}.gz"] if compressed else other.payloads[IDX_FILES[1]]
    )
    with pytest.raises(DataFileError) as caught:
        load_dataset("mnist", source="dir", data_dir=folder, checksums=data.checksums, **isolated)
    message = str(caught.value)
    assert message.startswith(f"{folder / wrong}: checksum mismatch")
    assert f"expected {data.checksums[IDX_FILES[1] + suffix]}" in message


def test_the_content_digest_accepts_a_recompressed_dotted_file(kit, tmp_path, isolated):
    data = kit.data(seed=25)
    for base, payload in data.payloads.items():
        (tmp_path / f"{dotted(base)}.gz").write_bytes(gzip.compress(payload, mtime=7))
    loaded = load_dataset(
        "fashion-mnist", source="dir", data_dir=tmp_path, checksums=data.checksums, **isolated
    )
    assert torch.equal(loaded.test_images, data.test_images)


@pytest.mark.parametrize(
    ("official", "other"),
    [
        ("train-images-idx3-ubyte.gz", "train-images.idx3-ubyte"),
        ("train-images-idx3-ubyte", "train-images.idx3-ubyte.gz"),
        ("train-images-idx3-ubyte.gz", "train-images.idx3-ubyte.gz"),
    ],
)
def test_one_file_under_both_names_is_an_error_naming_both(
    kit, tmp_path, isolated, official, other
):
    data = kit.data(seed=26)
    data.write(tmp_path, compressed=official.endswith(".gz"))
    body = (
        data.gz_files[f"{IDX_FILES[0]}.gz"]
        if other.endswith(".gz")
        else data.payloads[IDX_FILES[0]]
    )
    (tmp_path / other).write_bytes(body)
    with pytest.raises(DataFileError) as caught:
        load_dataset("mnist", source="dir", data_dir=tmp_path, checksums=data.checksums, **isolated)
    assert str(caught.value) == (
        f"{tmp_path / official} and {tmp_path / other} are two copies of train-images-idx3-ubyte; "
        "keep one of them (move or delete the other), so that it is clear which file to read"
    )


def test_names_mixed_across_files_are_fine(kit, tmp_path, isolated):
    data = kit.data(seed=27)
    data.write(tmp_path)
    base = IDX_FILES[3]
    (tmp_path / f"{base}.gz").rename(tmp_path / dotted(base))
    (tmp_path / dotted(base)).write_bytes(data.payloads[base])
    loaded = load_dataset(
        "mnist", source="dir", data_dir=tmp_path, checksums=data.checksums, **isolated
    )
    assert torch.equal(loaded.test_labels, data.test_labels)


def test_a_missing_file_is_still_reported(kit, tmp_path, isolated):
    data = kit.data(seed=28)
    write_dotted(data, tmp_path, compressed=True)
    (tmp_path / f"{dotted(IDX_FILES[2])}.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing t10k-images-idx3-ubyte"):
        load_dataset("mnist", source="dir", data_dir=tmp_path, **isolated)


@pytest.mark.skipif(
    not (SHARED_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="no shared MNIST files"
)
def test_real_mnist_uncompressed_under_dotted_names(tmp_path, isolated):
    """The official content under Kaggle's names passes the official (uncompressed) digests."""
    folder = tmp_path / "kaggle-mnist"
    folder.mkdir()
    for base in IDX_FILES:
        payload = gzip.decompress((SHARED_MNIST / f"{base}.gz").read_bytes())
        (folder / dotted(base)).write_bytes(payload)
    loaded = load_dataset("mnist", source="dir", data_dir=folder, **isolated)
    assert loaded.source == f"MNIST from folder {folder} (MD5 verified)"
    assert loaded.train_images.shape == (60000, 28, 28)
    assert loaded.test_images.shape == (10000, 28, 28)
    assert torch.bincount(loaded.test_labels).tolist()[:3] == [980, 1135, 1032]

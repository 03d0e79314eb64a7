"""`load_dataset` over its sources (dir, cache, debian, embedded) and the auto order.

Every test points the loader at its own temporary folders (``cache_dir=``, ``debian_dir=``), so
neither the user's cache nor an installed Debian package can make a test pass.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest
import torch

from ewc.data import (
    DEBIAN_FASHION_MNIST_DIR,
    DataFileError,
    DatasetNotFoundError,
    dataset_cache_dir,
    default_cache_dir,
    load_dataset,
)
from ewc.data.sources import _AUTO_ORDER


def assert_same_data(loaded, data) -> None:
    assert torch.equal(loaded.train_images, data.train_images)
    assert torch.equal(loaded.train_labels, data.train_labels)
    assert torch.equal(loaded.test_images, data.test_images)
    assert torch.equal(loaded.test_labels, data.test_labels)


@pytest.fixture
def isolated(tmp_path):
    """Keyword arguments that keep the loader away from the real cache and Debian folder."""
    return {"cache_dir": tmp_path / "cache", "debian_dir": tmp_path / "no-debian"}


@pytest.mark.parametrize("compressed", [True, False])
def test_dir_source(kit, tmp_path, isolated, compressed):
    data = kit.data(seed=1)
    folder = data.write(tmp_path / "idx", compressed=compressed)
    loaded = load_dataset(
        "kmnist", source="dir", data_dir=folder, checksums=data.checksums, **isolated
    )
    assert_same_data(loaded, data)
    assert loaded.name == "kmnist"
    assert loaded.classes[0] == "o"
    assert loaded.is_subset is False
    assert loaded.source == f"Kuzushiji-MNIST from folder {folder} (MD5 verified)"


def test_dir_source_finds_the_named_subfolder(kit, tmp_path, isolated):
    data = kit.data(seed=2)
    data.write(tmp_path / "datasets" / "fashion-mnist")
    loaded = load_dataset(
        "fashion-mnist",
        source="dir",
        data_dir=str(tmp_path / "datasets"),
        checksums=data.checksums,
        **isolated,
    )
    assert_same_data(loaded, data)


def test_uncompressed_files_without_known_digest_are_checked_for_structure(kit, tmp_path, isolated):
    data = kit.data(seed=3)
    folder = data.write(tmp_path, compressed=False)
    loaded = load_dataset(
        "kmnist", source="dir", data_dir=folder, checksums=data.gz_checksums, **isolated
    )
    assert_same_data(loaded, data)
    assert "no known checksum for train-images-idx3-ubyte, train-labels-idx1-ubyte" in loaded.source
    assert "structure checked only" in loaded.source


def test_unverified_files_of_another_size_are_not_taken_for_the_data_set(kit, tmp_path, isolated):
    """KMNIST's uncompressed files have no known digest: other data must not pass as them."""
    folder = kit.data(seed=3).write(tmp_path, compressed=False)
    with pytest.raises(DataFileError, match=r"the training files hold .* images, but the official"):
        load_dataset("kmnist", source="dir", data_dir=folder, **isolated)


def test_gz_preferred_over_uncompressed(kit, tmp_path, isolated):
    data = kit.data(seed=4)
    data.write(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"not an IDX file")
    loaded = load_dataset(
        "mnist", source="dir", data_dir=tmp_path, checksums=data.checksums, **isolated
    )
    assert_same_data(loaded, data)


def test_real_table_rejects_files_of_another_data_set(kit, tmp_path, isolated):
    data = kit.data(seed=5)
    data.write(tmp_path)
    with pytest.raises(DataFileError) as caught:
        load_dataset("mnist", source="dir", data_dir=tmp_path, **isolated)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'train-images-idx3-ubyte.gz'}: checksum mismatch")
    assert "expected f68b3c2dcbeaaa9fbdd348bbdeb94873" in message
    assert data.checksums["train-images-idx3-ubyte.gz"] in message
    assert "official mnist file" in message


def test_recompressed_files_pass_through_their_content_digest(kit, tmp_path, isolated):
    data = kit.data(seed=6)
    for base, payload in data.payloads.items():
        (tmp_path / f"{base}.gz").write_bytes(gzip.compress(payload, compresslevel=1, mtime=99))
    loaded = load_dataset(
        "fashion-mnist", source="dir", data_dir=tmp_path, checksums=data.checksums, **isolated
    )
    assert_same_data(loaded, data)
    with pytest.raises(DataFileError, match="checksum mismatch"):
        load_dataset(
            "fashion-mnist",
            source="dir",
            data_dir=tmp_path,
            checksums=data.gz_checksums,
            **isolated,
        )


def test_count_mismatch_between_files(kit, tmp_path, isolated):
    data = kit.data(seed=7)
    data.write(tmp_path)
    short = kit.gz(kit.labels_file(data.test_labels[:-1]))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(short)
    with pytest.raises(DataFileError, match=r"has 4 images but .*t10k-labels.* has 3 labels"):
        load_dataset("kmnist", source="dir", data_dir=tmp_path, checksums={}, **isolated)


def test_missing_file_in_dir(kit, tmp_path, isolated):
    kit.data().write(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("kmnist", source="dir", data_dir=tmp_path, **isolated)
    message = str(caught.value)
    assert f"dir ({tmp_path}: missing t10k-labels-idx1-ubyte" in message
    assert "ewc download kmnist" in message


def test_cache_source(kit, tmp_path, isolated):
    data = kit.data(seed=8)
    data.write(tmp_path / "cache" / "kmnist")
    loaded = load_dataset("kmnist", source="cache", checksums=data.checksums, **isolated)
    assert_same_data(loaded, data)
    assert loaded.source.startswith(f"Kuzushiji-MNIST from cache {tmp_path / 'cache' / 'kmnist'}")


def test_cache_root_from_environment(kit, tmp_path, monkeypatch):
    data = kit.data(seed=9)
    data.write(tmp_path / "env-cache" / "mnist")
    monkeypatch.setenv("EWC_CACHE", str(tmp_path / "env-cache"))
    loaded = load_dataset("mnist", source="cache", checksums=data.checksums)
    assert_same_data(loaded, data)


def test_default_cache_dir_precedence(tmp_path):
    home = str(tmp_path)
    assert default_cache_dir({"HOME": home}) == tmp_path / ".cache" / "ewc"
    assert default_cache_dir({"HOME": home, "XDG_CACHE_HOME": "/xdg"}) == Path("/xdg/ewc")
    assert default_cache_dir({"HOME": home, "XDG_CACHE_HOME": "rel"}) == tmp_path / ".cache/ewc"
    assert default_cache_dir({"HOME": home, "XDG_CACHE_HOME": ""}) == tmp_path / ".cache/ewc"
    both = {"HOME": home, "XDG_CACHE_HOME": "/xdg", "EWC_CACHE": "/mine"}
    assert default_cache_dir(both) == Path("/mine")
    assert dataset_cache_dir("fashion-mnist", tmp_path) == tmp_path / "fashion-mnist"


def test_debian_source(kit, tmp_path):
    data = kit.data(seed=10)
    data.write(tmp_path / "debian")
    loaded = load_dataset(
        "fashion-mnist",
        source="debian",
        debian_dir=tmp_path / "debian",
        cache_dir=tmp_path / "cache",
        checksums=data.checksums,
    )
    assert_same_data(loaded, data)
    assert "Debian package dataset-fashion-mnist" in loaded.source


@pytest.mark.parametrize(
    ("name", "source", "message"),
    [
        ("mnist", "debian", "source='debian' cannot load 'mnist': Debian packages only fashion"),
        ("kmnist", "embedded", "source='embedded' cannot load 'kmnist': only mnist is embedded"),
        ("mnist", "dir", "source='dir' cannot load 'mnist': no data_dir given"),
        ("mnist", "web", "unknown data source 'web'; valid sources are 'auto', 'dir', 'cache'"),
        ("emnist", "auto", "unknown data set 'emnist'; valid names are 'mnist', 'fashion-mnist'"),
    ],
)
def test_bad_arguments(isolated, name, source, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_dataset(name, source=source, **isolated)


def test_auto_prefers_data_dir_then_cache_then_debian(kit, tmp_path, isolated):
    in_dir, in_cache, in_debian = kit.data(seed=11), kit.data(seed=12), kit.data(seed=13)
    in_dir.write(tmp_path / "dir")
    in_cache.write(tmp_path / "cache" / "fashion-mnist")
    in_debian.write(tmp_path / "debian")

    def load(**kwargs):
        # Three different data sets share file names, so no one table fits: structure only.
        return load_dataset("fashion-mnist", checksums={}, **kwargs)

    debian = {"debian_dir": tmp_path / "debian"}
    assert_same_data(
        load(data_dir=tmp_path / "dir", cache_dir=tmp_path / "cache", **debian), in_dir
    )
    assert_same_data(load(cache_dir=tmp_path / "cache", **debian), in_cache)
    assert_same_data(load(cache_dir=tmp_path / "empty", **debian), in_debian)


def test_auto_skips_incomplete_sources_and_falls_back_to_embedded(kit, tmp_path, isolated):
    partial = tmp_path / "cache" / "mnist"
    kit.data().write(partial)
    (partial / "train-images-idx3-ubyte.gz").unlink()
    loaded = load_dataset("mnist", **isolated)
    assert loaded.is_subset
    assert loaded.train_images.shape == (8000, 28, 28)


@pytest.mark.parametrize("folder", ["nowhere", "incomplete"])
def test_auto_never_passes_over_a_named_data_dir(kit, tmp_path, isolated, folder):
    """A typo or an incomplete folder must not become a run on the embedded subset."""
    kit.data().write(tmp_path / "incomplete")
    (tmp_path / "incomplete" / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("mnist", data_dir=tmp_path / folder, **isolated)
    message = str(caught.value)
    assert f"dir ({tmp_path / folder}: " in message
    assert "embedded" not in message  # the search ended at the folder the user named


def test_auto_does_not_hide_a_damaged_file(kit, tmp_path, isolated):
    data = kit.data(seed=14)
    data.write(tmp_path / "cache" / "mnist")
    (tmp_path / "cache" / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08")
    with pytest.raises(DataFileError, match=r"train-labels-idx1-ubyte\.gz: the gzip stream ends"):
        load_dataset("mnist", checksums=data.checksums, **isolated)


def test_auto_lists_everything_tried(kit, tmp_path, isolated):
    partial = tmp_path / "cache" / "kmnist"
    kit.data().write(partial)
    (partial / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("kmnist", **isolated)
    message = str(caught.value)
    assert message.startswith("Kuzushiji-MNIST ('kmnist') was not found; tried: ")
    assert "dir (no data_dir given)" in message
    assert f"cache ({partial}: missing train-images-idx3-ubyte (.gz or uncompressed))" in message
    assert "debian (Debian packages only fashion-mnist)" in message
    assert "embedded (only mnist is embedded)" in message
    assert message.index("dir (") < message.index("cache (") < message.index("debian (")
    assert isinstance(caught.value, FileNotFoundError)


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_real_debian_fashion_mnist(tmp_path):
    """Debian's gzip containers differ from Zalando's; their content must match the official MD5."""
    loaded = load_dataset("fashion-mnist", source="debian", cache_dir=tmp_path)
    assert loaded.source.endswith("(MD5 verified)")
    assert loaded.train_images.shape == (60000, 28, 28)
    assert loaded.test_images.shape == (10000, 28, 28)
    assert torch.bincount(loaded.train_labels).tolist() == [6000] * 10
    assert torch.bincount(loaded.test_labels).tolist() == [1000] * 10
    assert loaded.classes[9] == "Ankle boot"


def test_a_source_that_cannot_have_the_data_set_points_to_auto(isolated):
    with pytest.raises(ValueError, match="source='embedded' cannot load") as caught:
        load_dataset("fashion-mnist", source="embedded", **isolated)
    assert str(caught.value) == (
        "source='embedded' cannot load 'fashion-mnist': only mnist is embedded; "
        "source='auto' looks in every source (data_dir, cache, Debian, embedded)"
    )


def test_the_readme_lists_the_sources_in_the_order_auto_tries_them():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    data = readme[readme.index("## Data") :]
    data = data[: data.index("\n## ")]
    listed = re.findall(r"^- `(\w+)`:", data, re.M)
    assert listed == [source.value for source in _AUTO_ORDER]
    assert "train-images.idx3-ubyte" in data

"""The downloader against a local HTTP server on 127.0.0.1 (never the internet).

The server serves small synthetic ``.gz`` files; the checksum table passed to ``download`` holds
their digests. After every failure the target folder must hold no partial file.
"""

from __future__ import annotations

import errno
import importlib
import re
import socket
from pathlib import Path

import pytest
import torch

from ewc import _atomic as ewc_atomic
from ewc.data import DataFileError, DownloadError, download, get_spec, load_dataset
from ewc.data.download import _download_verified

LABELS = "t10k-labels-idx1-ubyte.gz"
DOWNLOADER = importlib.import_module("ewc.data.download")  # the module, not ewc.data.download()


def serve(server, data, prefix: str = "/mnist") -> str:
    """Serve the four ``.gz`` files of ``data`` under ``prefix``; return the mirror URL."""
    for name, body in data.gz_files.items():
        server.serve(f"{prefix}/{name}", body)
    return f"{server.url}{prefix}/"


def leftovers(folder) -> list[str]:
    """Names in ``folder`` that are not one of the four final file names (none: no folder)."""
    finals = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"}
    finals |= {"t10k-images-idx3-ubyte.gz", LABELS}
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name not in finals)


def free_port() -> int:
    """A port that was free a moment ago, with nobody listening."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_download_then_load(kit, http_server, tmp_path):
    data = kit.data(seed=1)
    mirror = serve(http_server, data)
    lines: list[str] = []
    folder = download(
        "mnist",
        cache_dir=tmp_path,
        mirrors=[mirror],
        checksums=data.gz_checksums,
        progress=lines.append,
    )
    assert folder == tmp_path / "mnist"
    for name, body in data.gz_files.items():
        assert (folder / name).read_bytes() == body
    assert leftovers(folder) == []
    assert len(lines) == 4
    assert all("checksum verified" in line for line in lines)
    loaded = load_dataset("mnist", source="cache", cache_dir=tmp_path, checksums=data.checksums)
    assert torch.equal(loaded.test_images, data.test_images)
    assert torch.equal(loaded.train_labels, data.train_labels)


def test_verified_files_are_not_downloaded_again(kit, http_server, tmp_path):
    data = kit.data(seed=2)
    mirror = serve(http_server, data)
    download("kmnist", cache_dir=tmp_path, mirrors=[mirror], checksums=data.gz_checksums)
    assert len(http_server.requests) == 4
    lines: list[str] = []
    download(
        "kmnist",
        cache_dir=tmp_path,
        mirrors=[mirror],
        checksums=data.gz_checksums,
        progress=lines.append,
    )
    assert len(http_server.requests) == 4
    assert all("already present, checksum verified" in line for line in lines)


def test_a_damaged_existing_file_is_replaced(kit, http_server, tmp_path):
    data = kit.data(seed=3)
    mirror = serve(http_server, data)
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / LABELS).write_bytes(b"half a file")
    (folder / f"{LABELS}.mismatch").write_bytes(b"an earlier one")
    reports = []
    download(
        "mnist",
        cache_dir=tmp_path,
        mirrors=[mirror],
        checksums=data.gz_checksums,
        progress=reports.append,
    )
    assert (folder / LABELS).read_bytes() == data.gz_files[LABELS]
    # what was there is kept beside it, under a free name, and the report says where
    assert (folder / f"{LABELS}.mismatch").read_bytes() == b"an earlier one"
    assert (folder / f"{LABELS}.mismatch-2").read_bytes() == b"half a file"
    assert any(f"is now {folder / LABELS}.mismatch-2" in line for line in reports)


def test_corrupted_file_raises_and_leaves_nothing(kit, http_server, tmp_path):
    data = kit.data(seed=4)
    mirror = serve(http_server, data)
    body = bytearray(data.gz_files[LABELS])
    body[len(body) // 2] ^= 0x10
    http_server.serve(f"/mnist/{LABELS}", bytes(body))
    with pytest.raises(DownloadError) as caught:
        download("mnist", cache_dir=tmp_path, mirrors=[mirror], checksums=data.gz_checksums)
    message = str(caught.value)
    assert message.startswith(f"{LABELS}: no mirror delivered a verified copy")
    assert f"{mirror}{LABELS}: checksum mismatch" in message
    assert f"expected {data.gz_checksums[LABELS]}" in message
    assert not (tmp_path / "mnist" / LABELS).exists()
    assert leftovers(tmp_path / "mnist") == []


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("truncate", "bytes (the connection closed early)"),
        ("no-length", "checksum mismatch"),  # nothing tells the client; the checksum does
    ],
)
def test_truncated_response_raises_and_leaves_nothing(kit, http_server, tmp_path, mode, reason):
    data = kit.data(seed=5)
    mirror = serve(http_server, data)
    http_server.serve(f"/mnist/{LABELS}", data.gz_files[LABELS], mode)
    with pytest.raises(DownloadError, match=f"{LABELS}: .*{re.escape(reason)}"):
        download("mnist", cache_dir=tmp_path, mirrors=[mirror], checksums=data.gz_checksums)
    assert not (tmp_path / "mnist" / LABELS).exists()
    assert leftovers(tmp_path / "mnist") == []


def test_truncation_message_gives_the_byte_counts(kit, http_server, tmp_path):
    body = kit.data().gz_files[LABELS]
    http_server.serve("/f", body, "truncate")
    (tmp_path / "out").mkdir()
    with pytest.raises(DownloadError) as caught:
        _download_verified(f"{http_server.url}/f", tmp_path / "out" / LABELS, {}, 5.0, "mnist")
    assert f"received {len(body) // 2} of {len(body)} bytes" in str(caught.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_404_raises_and_leaves_nothing(kit, http_server, tmp_path):
    data = kit.data(seed=6)
    mirror = serve(http_server, data)
    http_server.forget(f"/mnist/{LABELS}")
    with pytest.raises(DownloadError, match=f"{mirror}{LABELS}: HTTP 404 Not Found"):
        download("mnist", cache_dir=tmp_path, mirrors=[mirror], checksums=data.gz_checksums)
    assert leftovers(tmp_path / "mnist") == []
    assert not (tmp_path / "mnist" / LABELS).exists()


def test_next_mirror_is_tried(kit, http_server, tmp_path):
    data = kit.data(seed=7)
    good = serve(http_server, data, prefix="/good")
    bad = serve(http_server, data, prefix="/bad")
    http_server.serve(f"/bad/{LABELS}", b"wrong content")
    download("mnist", cache_dir=tmp_path, mirrors=[bad, good], checksums=data.gz_checksums)
    assert (tmp_path / "mnist" / LABELS).read_bytes() == data.gz_files[LABELS]
    assert http_server.requests[-2:] == [f"/bad/{LABELS}", f"/good/{LABELS}"]


def test_unreachable_server(kit, tmp_path):
    port = free_port()
    data = kit.data()
    with pytest.raises(DownloadError, match=f"127.0.0.1:{port}/x/train-images-idx3-ubyte.gz: "):
        download(
            "mnist",
            cache_dir=tmp_path,
            mirrors=[f"http://127.0.0.1:{port}/x"],
            checksums=data.gz_checksums,
            timeout=5.0,
        )
    assert leftovers(tmp_path / "mnist") == []


def test_refuses_files_without_a_checksum(kit, http_server, tmp_path):
    data = kit.data()
    table = dict(data.gz_checksums)
    del table[LABELS]
    with pytest.raises(ValueError, match=f"no checksum known for {LABELS}"):
        download("mnist", cache_dir=tmp_path, mirrors=[serve(http_server, data)], checksums=table)
    assert http_server.requests == []


def test_content_digest_is_enough_to_download(kit, http_server, tmp_path):
    data = kit.data(seed=8)
    content_only = {name: digest for name, digest in data.checksums.items() if ".gz" not in name}
    download(
        "kmnist", cache_dir=tmp_path, mirrors=[serve(http_server, data)], checksums=content_only
    )
    assert (tmp_path / "kmnist" / LABELS).read_bytes() == data.gz_files[LABELS]


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="mirrors must name at least one base URL"):
        download("mnist", cache_dir=tmp_path, mirrors=[])
    with pytest.raises(ValueError, match="unknown data set 'qmnist'"):
        download("qmnist", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_default_mirrors_are_the_official_ones():
    assert get_spec("mnist").mirrors[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert "fashion-mnist" in get_spec("fashion-mnist").mirrors[0]
    assert get_spec("kmnist").mirrors == ("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",)


def test_checksum_failure_is_a_data_file_error_inside(kit, http_server, tmp_path):
    """One mirror's bad content is reported as the DataFileError it is, named by its URL."""
    http_server.serve("/f", b"junk")
    with pytest.raises(DataFileError, match=rf"^{http_server.url}/f: checksum mismatch"):
        _download_verified(f"{http_server.url}/f", tmp_path / LABELS, {LABELS: "0" * 32}, 5.0, "")
    assert list(tmp_path.iterdir()) == []


def test_offline_creates_no_cache_folder(kit, tmp_path):
    root = tmp_path / "new" / "cache"
    with pytest.raises(DownloadError, match=r"train-images-idx3-ubyte\.gz: no mirror delivered"):
        download(
            "mnist",
            cache_dir=root,
            mirrors=[f"http://127.0.0.1:{free_port()}/x"],
            checksums=kit.data().gz_checksums,
            timeout=5.0,
        )
    assert list(tmp_path.iterdir()) == []


def disk_full(path, data):
    """A stand-in for write_bytes_atomic on a full disk."""
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_write_removes_only_the_folders_it_created(
    kit, http_server, tmp_path, monkeypatch, existing
):
    data = kit.data(seed=9)
    root = tmp_path / "root"
    if existing:
        (root / "mnist").mkdir(parents=True)
    monkeypatch.setattr(DOWNLOADER, "write_bytes_atomic", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        download(
            "mnist", cache_dir=root, mirrors=[serve(http_server, data)], checksums=data.gz_checksums
        )
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*")] == (
        [Path("root"), Path("root/mnist")] if existing else []
    )


def test_verified_files_are_written_through_the_atomic_writer(
    kit, http_server, tmp_path, monkeypatch
):
    data = kit.data(seed=11)
    written: list[str] = []
    real = ewc_atomic.write_bytes_atomic

    def spy(path, body):
        written.append(Path(path).name)
        real(path, body)

    monkeypatch.setattr(DOWNLOADER, "write_bytes_atomic", spy)
    download(
        "mnist", cache_dir=tmp_path, mirrors=[serve(http_server, data)], checksums=data.gz_checksums
    )
    assert sorted(written) == sorted(data.gz_files)
    assert leftovers(tmp_path / "mnist") == []

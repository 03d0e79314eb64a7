"""`ewc download` on the command line, against a local HTTP server only."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ewc.cli import main


def test_a_file_failing_its_official_checksum_is_refused_and_not_kept(
    kit, http_server, tmp_path, capsys
):
    data = kit.data(seed=4)  # synthetic files: they cannot match the official MNIST checksums
    for name, body in data.gz_files.items():
        http_server.serve(f"/mirror/{name}", body)
    code = main(
        [
            "download",
            "mnist",
            "--cache-dir",
            str(tmp_path),
            "--mirror",
            f"{http_server.url}/mirror/",
        ]
    )
    assert code == 1
    error = capsys.readouterr().err
    assert error.startswith("ewc download: ")
    assert "train-images-idx3-ubyte.gz" in error
    assert "/mirror/train-images-idx3-ubyte.gz" in http_server.requests
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing partial or unverified stays


def test_unknown_data_sets_are_named(capsys, tmp_path):
    assert main(["download", "cifar10", "--cache-dir", str(tmp_path)]) == 1
    assert "cifar10" in capsys.readouterr().err


def test_offline_download_leaves_no_cache_folder(tmp_path, capsys):
    with socket.socket() as probe:  # a port that was free a moment ago, with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cache = tmp_path / "cache"
    args = ["download", "mnist", "--cache-dir", str(cache), "--timeout", "5"]
    assert main([*args, "--mirror", f"http://127.0.0.1:{port}/mnist/"]) == 1
    error = capsys.readouterr().err
    assert error.startswith(
        "ewc download: train-images-idx3-ubyte.gz: no mirror delivered a verified copy; tried:"
    )
    assert f"http://127.0.0.1:{port}/mnist/train-images-idx3-ubyte.gz: URLError:" in error
    assert not cache.exists()


SHARED_MNIST = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist"


@pytest.mark.skipif(
    not (SHARED_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="no shared MNIST files"
)
def test_the_real_mnist_files_pass_the_official_checksums(http_server, tmp_path, capsys):
    """Served from 127.0.0.1: the official test files, and training files recompressed from the
    official content (accepted through the content digest)."""
    for path in SHARED_MNIST.glob("*.gz"):
        http_server.serve(f"/mnist/{path.name}", path.read_bytes())
    cache = tmp_path / "cache"
    mirror = ["--mirror", f"{http_server.url}/mnist/"]
    assert main(["download", "mnist", "--cache-dir", str(cache), *mirror]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == str(cache / "mnist")
    assert all(line.endswith("checksum verified") for line in lines[:-1])
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(
        p.name for p in SHARED_MNIST.glob("*.gz")
    )

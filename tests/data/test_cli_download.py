"""`ewc download` on the command line, against a local HTTP server only."""

from __future__ import annotations

import socket

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

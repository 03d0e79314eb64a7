"""Shared helpers for the data tests: an IDX writer, small synthetic data sets, a local HTTP server.

Nothing here touches the network, the user's cache or the Debian folder: every test points the
loaders at its own temporary folders.
"""

from __future__ import annotations

import gzip
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from ewc.data import IDX_FILES, md5_hex


def idx_bytes(
    values: bytes,
    dims: Sequence[int],
    *,
    type_code: int = 0x08,
    ndim: int | None = None,
    zero: bytes = b"\x00\x00",
) -> bytes:
    """An IDX file: magic (``zero``, type code, ndim), big-endian dims, then ``values``."""
    ndim = len(dims) if ndim is None else ndim
    return zero + bytes([type_code, ndim]) + struct.pack(f">{len(dims)}I", *dims) + values


def random_images(n: int, seed: int) -> torch.Tensor:
    """``n`` uint8 images of 28×28 drawn with an explicit generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 28, 28), generator=generator, dtype=torch.uint8)


def images_file(images: torch.Tensor) -> bytes:
    """The uncompressed IDX file of uint8 images ``(N, 28, 28)``."""
    return idx_bytes(bytes(images.flatten().tolist()), images.shape)


def labels_file(labels: torch.Tensor) -> bytes:
    """The uncompressed IDX file of labels ``(N,)`` in [0, 256)."""
    return idx_bytes(bytes(labels.flatten().tolist()), labels.shape)


def gz(payload: bytes) -> bytes:
    """Gzip ``payload`` reproducibly (mtime 0)."""
    return gzip.compress(payload, mtime=0)


@dataclass(frozen=True)
class SyntheticData:
    """A tiny four-file data set: its tensors, its files' bytes, and a checksum table for them."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    payloads: dict[str, bytes]  # base name → uncompressed IDX bytes
    gz_files: dict[str, bytes]  # "<base>.gz" → compressed bytes

    @property
    def checksums(self) -> dict[str, str]:
        """MD5 of every ``.gz`` file and every uncompressed payload."""
        table = {name: md5_hex(data) for name, data in self.gz_files.items()}
        table.update({name: md5_hex(data) for name, data in self.payloads.items()})
        return table

    @property
    def gz_checksums(self) -> dict[str, str]:
        """MD5 of the ``.gz`` files only (as for KMNIST, whose payload digests are unknown)."""
        return {name: md5_hex(data) for name, data in self.gz_files.items()}

    def write(self, folder: Path, *, compressed: bool = True) -> Path:
        """Write the four files into ``folder`` (created), ``.gz`` or uncompressed."""
        folder.mkdir(parents=True, exist_ok=True)
        for base, payload in self.payloads.items():
            if compressed:
                (folder / f"{base}.gz").write_bytes(self.gz_files[f"{base}.gz"])
            else:
                (folder / base).write_bytes(payload)
        return folder


def synthetic_data(seed: int = 0, n_train: int = 6, n_test: int = 4) -> SyntheticData:
    """A data set of random images whose labels cycle through 0..9 (shifted by ``seed``)."""
    train_images, test_images = random_images(n_train, seed), random_images(n_test, seed + 1000)
    train_labels = (torch.arange(n_train) + seed) % 10
    test_labels = (torch.arange(n_test) + seed + 3) % 10
    payloads = dict(
        zip(
            IDX_FILES,
            (
                images_file(train_images),
                labels_file(train_labels),
                images_file(test_images),
                labels_file(test_labels),
            ),
            strict=True,
        )
    )
    return SyntheticData(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        payloads=payloads,
        gz_files={f"{base}.gz": gz(payload) for base, payload in payloads.items()},
    )


class Kit:
    """The helpers above, handed to tests by the ``kit`` fixture."""

    idx = staticmethod(idx_bytes)
    images_file = staticmethod(images_file)
    labels_file = staticmethod(labels_file)
    random_images = staticmethod(random_images)
    gz = staticmethod(gz)
    data = staticmethod(synthetic_data)


@pytest.fixture(scope="session")
def kit() -> type[Kit]:
    """IDX writer and synthetic data helpers."""
    return Kit


@dataclass(frozen=True)
class Route:
    """What the test server answers for one path: ``mode`` is "ok", "truncate" or "no-length"."""

    body: bytes
    mode: str = "ok"


@dataclass
class LocalServer:
    """A plain HTTP server on 127.0.0.1 serving ``routes``; it records every requested path.

    Modes: "ok" sends the body; "truncate" announces the full ``Content-Length`` but sends half
    the body, then closes; "no-length" sends half the body with no ``Content-Length``.
    """

    url: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def serve(self, path: str, body: bytes, mode: str = "ok") -> None:
        """Answer GET ``path`` with ``body`` in ``mode``."""
        self.routes[path] = Route(body, mode)

    def forget(self, path: str) -> None:
        """Answer GET ``path`` with 404 from now on."""
        del self.routes[path]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append(self.path)
        route = state.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if route.mode != "no-length":
            self.send_header("Content-Length", str(len(route.body)))
        self.end_headers()
        cut = len(route.body) // 2 if route.mode in ("truncate", "no-length") else None
        self.wfile.write(route.body[:cut])

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output clean."""


class _Server(ThreadingHTTPServer):
    state: LocalServer


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    """A local HTTP/1.0 server in a thread (each response closes its connection)."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = LocalServer(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server.state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

"""Downloading a data set's four ``.gz`` files into the cache, verified and atomically.

For each file, :func:`download`:

1. keeps an existing file whose checksum matches (it is never downloaded again);
2. otherwise tries each mirror in order: the response is read into memory (the largest file is
   18 MB), the byte count is compared with ``Content-Length`` and the checksum verified; only a
   verified copy is written, with :func:`ewc._atomic.write_bytes_atomic` (a temporary file beside
   the final name, fsynced, renamed over it, the folder fsynced), so the final name only ever
   holds a verified file and a crash leaves no partial one;
3. creates the cache folders only when a verified file is about to be written, and removes the
   folders it created if that write fails: a download that fails (offline, say) leaves nothing.

Only the standard library is used (:mod:`urllib.request`). A file for which the checksum table
knows no digest is refused rather than downloaded unverified. pooch was evaluated for this module
and not adopted: it creates the cache folder before the first request, can check only the
compressed file's own hash (not the official content digest that accepts recompressed copies),
and brings requests and platformdirs with it.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from ewc._atomic import write_bytes_atomic
from ewc._version import __version__
from ewc.data.cache import dataset_cache_dir
from ewc.data.catalog import IDX_FILES, DatasetName, get_spec
from ewc.data.checksums import Checksums, verify
from ewc.data.errors import DataFileError, DownloadError

_CHUNK = 1 << 20


def download(
    name: DatasetName | str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    mirrors: Sequence[str] | None = None,
    checksums: Checksums | None = None,
    timeout: float = 60.0,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Download the four files of a data set into ``<cache root>/<name>``, verified.

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` or ``"kmnist"``.
        cache_dir: the cache root; the default cache root when None (see
            :func:`ewc.data.cache.default_cache_dir`).
        mirrors: base URLs tried in order for each file (``<base>/<file name>``); the data set's
            official mirrors when None.
        checksums: file name → MD5 table; the official one when None (another is for tests and
            private mirrors).
        timeout: seconds to wait for a server before trying the next mirror.
        progress: called with one line of text per file (e.g. ``print``); silent when None.

    Returns:
        The folder holding the four verified files, ready for ``load_dataset(name,
        source="cache", cache_dir=cache_dir)``.

    Raises:
        ValueError: unknown ``name``, no mirror, or a file with no known checksum.
        DownloadError: every mirror failed for a file; the message lists each URL and why.
    """
    spec = get_spec(name)
    bases = spec.mirrors if mirrors is None else tuple(mirrors)
    table = spec.checksums if checksums is None else checksums
    if not bases:
        raise ValueError("mirrors must name at least one base URL")
    files = [f"{base}.gz" for base in IDX_FILES]
    for file_name in files:
        if file_name not in table and file_name.removesuffix(".gz") not in table:
            raise ValueError(
                f"no checksum known for {file_name}; refusing to download it unverified"
            )
    folder = dataset_cache_dir(spec.name, cache_dir)
    report = progress or (lambda _: None)
    for file_name in files:
        _fetch(folder / file_name, bases, table, timeout, report, spec.name.value)
    return folder


def _set_aside(target: Path) -> Path | None:
    """Rename a file at ``target`` to a free ``<name>.mismatch[-k]``: it is never overwritten."""
    if not target.exists():
        return None
    aside, counter = target.with_name(target.name + ".mismatch"), 2
    while aside.exists():
        aside, counter = target.with_name(f"{target.name}.mismatch-{counter}"), counter + 1
    target.rename(aside)
    return aside


def _fetch(
    target: Path,
    bases: Sequence[str],
    table: Checksums,
    timeout: float,
    report: Callable[[str], None],
    dataset: str,
) -> None:
    """Make ``target`` a verified copy, keeping it if it already is one."""
    if target.is_file() and _is_verified(target, table, dataset):
        report(f"{target}: already present, checksum verified")
        return
    failures = []
    for base in bases:
        url = f"{base.rstrip('/')}/{target.name}"
        try:
            body = _download_verified(url, target, table, timeout, dataset)
        except (DownloadError, DataFileError) as error:
            failures.append(str(error))
            continue
        kept = _set_aside(target)
        _write(target, body)
        aside = f" (the file that was there, which failed the checksum, is now {kept})"
        report(f"{target}: downloaded from {url}, checksum verified{aside if kept else ''}")
        return
    raise DownloadError(
        f"{target.name}: no mirror delivered a verified copy; tried:\n  " + "\n  ".join(failures)
    )


def _is_verified(path: Path, table: Checksums, dataset: str) -> bool:
    """True when ``path``'s checksum matches the table (a damaged file is then replaced)."""
    try:
        return verify(path.read_bytes(), name=path.name, checksums=table, dataset=dataset)
    except DataFileError:
        return False


def _download_verified(
    url: str, target: Path, table: Checksums, timeout: float, dataset: str
) -> bytes:
    """The body of ``url``, verified as the file ``target`` (its name is the checksum key).

    Nothing is written: the caller writes the verified bytes.

    Raises:
        DownloadError: network failure or a response shorter than its ``Content-Length``.
        DataFileError: the received bytes fail the checksum (the message starts with ``url``).
    """
    body = _receive(url, timeout)
    verify(body, name=target.name, checksums=table, display=url, dataset=dataset)
    return body


def _write(target: Path, body: bytes) -> None:
    """Write ``body`` atomically to ``target``, creating its folders; undo them if that fails."""
    created = [folder for folder in (target.parent, *target.parent.parents) if not folder.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, body)
    except BaseException:
        for folder in created:  # deepest first; a folder someone else filled meanwhile stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _receive(url: str, timeout: float) -> bytes:
    """The body of ``url``; network failures and short bodies become :class:`DownloadError`."""
    request = urllib.request.Request(url, headers={"User-Agent": f"ewc/{__version__}"})
    body, declared = bytearray(), None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            while chunk := response.read(_CHUNK):
                body += chunk
    except urllib.error.HTTPError as error:
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from error
    except (
        urllib.error.URLError,
        http.client.HTTPException,
        ConnectionError,
        TimeoutError,
    ) as error:
        raise DownloadError(f"{url}: {type(error).__name__}: {error}") from error
    if declared is not None and declared.isdigit() and len(body) != int(declared):
        raise DownloadError(
            f"{url}: received {len(body)} of {declared} bytes (the connection closed early)"
        )
    return bytes(body)

"""Finding the IDX files of a data set in a folder and reading them with every check applied."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import torch

from ewc.data.catalog import IDX_FILES
from ewc.data.checksums import Checksums, verify
from ewc.data.idx import check_same_count, decompress, parse_images, parse_labels


class ReadableFile(Protocol):
    """A file that can be read whole: a :class:`pathlib.Path` or an ``importlib.resources`` file."""

    @property
    def name(self) -> str:
        """The file's base name."""
        ...

    def read_bytes(self) -> bytes:
        """The file's content."""
        ...


def find_idx_files(directory: Path) -> tuple[dict[str, Path], tuple[str, ...]]:
    """Look for the four files of :data:`~ewc.data.catalog.IDX_FILES` in ``directory``.

    Each file may be gzip-compressed (``name.gz``) or not (``name``); when both exist the ``.gz``
    is used, since every data set publishes checksums for its ``.gz`` files.

    Returns:
        The files found, keyed by their name without ``.gz``, and the names not found.
    """
    found: dict[str, Path] = {}
    for base in IDX_FILES:
        for candidate in (directory / f"{base}.gz", directory / base):
            if candidate.is_file():
                found[base] = candidate
                break
    return found, tuple(base for base in IDX_FILES if base not in found)


def read_checked(file: ReadableFile, *, checksums: Checksums, dataset: str) -> tuple[bytes, bool]:
    """Read a file, decompress it if it is ``.gz``, and verify it against ``checksums``.

    Returns:
        The uncompressed IDX content, and whether a known checksum matched (False: none known).

    Raises:
        DataFileError: corrupt gzip or checksum mismatch.
    """
    raw, display = file.read_bytes(), str(file)
    payload = decompress(raw, name=display) if file.name.endswith(".gz") else raw
    verified = verify(
        raw, name=file.name, checksums=checksums, display=display, payload=payload, dataset=dataset
    )
    return payload, verified


def read_pair(
    images_file: ReadableFile,
    labels_file: ReadableFile,
    *,
    checksums: Checksums,
    dataset: str,
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Read an images file and its labels file, checking each and that their counts agree.

    Returns:
        Images (uint8, ``(N, 28, 28)``), labels (int64, ``(N,)``) and the names of the files for
        which no checksum is known (checked for structure only).
    """
    images_bytes, images_ok = read_checked(images_file, checksums=checksums, dataset=dataset)
    labels_bytes, labels_ok = read_checked(labels_file, checksums=checksums, dataset=dataset)
    images = parse_images(images_bytes, name=str(images_file))
    labels = parse_labels(labels_bytes, name=str(labels_file), num_classes=num_classes)
    check_same_count(images, labels, images_name=str(images_file), labels_name=str(labels_file))
    checked = ((images_file, images_ok), (labels_file, labels_ok))
    return images, labels, tuple(file.name for file, ok in checked if not ok)


def describe_checks(unverified: tuple[str, ...]) -> str:
    """How the files were checked, in words, for an :class:`ImageDataset`'s ``source``."""
    if not unverified:
        return "MD5 verified"
    return f"no known checksum for {', '.join(unverified)}: structure checked only"


def read_all(
    files: Mapping[str, ReadableFile], *, checksums: Checksums, dataset: str, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Read the four files of a data set (keyed as in ``IDX_FILES``).

    Returns:
        Train images, train labels, test images, test labels, and the unverified file names.
    """
    train_images, train_labels, unverified_train = read_pair(
        files[IDX_FILES[0]],
        files[IDX_FILES[1]],
        checksums=checksums,
        dataset=dataset,
        num_classes=num_classes,
    )
    test_images, test_labels, unverified_test = read_pair(
        files[IDX_FILES[2]],
        files[IDX_FILES[3]],
        checksums=checksums,
        dataset=dataset,
        num_classes=num_classes,
    )
    return train_images, train_labels, test_images, test_labels, unverified_train + unverified_test

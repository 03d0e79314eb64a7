"""Finding the IDX files of a data set in a folder and reading them with every check applied."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import torch

from ewc.data.catalog import IDX_FILES, file_names, official_name
from ewc.data.checksums import Checksums, verify
from ewc.data.errors import DataFileError
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

    Each file may have its official name or the dotted one (``train-images.idx3-ubyte``, see
    :func:`~ewc.data.catalog.file_names`), gzip-compressed (``.gz``) or not. When one name exists
    both ways the ``.gz`` is used, since every data set publishes checksums for its ``.gz`` files.

    Returns:
        The files found, keyed by their official name without ``.gz``, and the names not found.

    Raises:
        DataFileError: a file is there under both names (``train-images-idx3-ubyte.gz`` and
            ``train-images.idx3-ubyte``): which one to read is not clear, so neither is read.
    """
    found: dict[str, Path] = {}
    for base in IDX_FILES:
        named = [_present(directory, name) for name in file_names(base)]
        copies = [paths[0] for paths in named if paths]
        if len(copies) > 1:
            raise DataFileError(
                f"{copies[0]} and {copies[1]} are two copies of {base}; keep one of them "
                "(move or delete the other), so that it is clear which file to read"
            )
        if copies:
            found[base] = copies[0]
    return found, tuple(base for base in IDX_FILES if base not in found)


def _present(directory: Path, name: str) -> list[Path]:
    """The files ``name.gz`` and ``name`` in ``directory`` that exist, in that order."""
    return [path for path in (directory / f"{name}.gz", directory / name) if path.is_file()]


def read_checked(file: ReadableFile, *, checksums: Checksums, dataset: str) -> tuple[bytes, bool]:
    """Read a file, decompress it if it is ``.gz``, and verify it against ``checksums``.

    Returns:
        The uncompressed IDX content, and whether a known checksum matched (False: none known).

    Raises:
        DataFileError: corrupt gzip or checksum mismatch.
    """
    raw, display = file.read_bytes(), str(file)
    payload = decompress(raw, name=display) if file.name.endswith(".gz") else raw
    key = official_name(file.name) or file.name  # a dotted name has the official digests
    verified = verify(
        raw, name=key, checksums=checksums, display=display, payload=payload, dataset=dataset
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
    train, test = (
        read_pair(
            files[images],
            files[labels],
            checksums=checksums,
            dataset=dataset,
            num_classes=num_classes,
        )
        for images, labels in (IDX_FILES[:2], IDX_FILES[2:])
    )
    return train[0], train[1], test[0], test[1], train[2] + test[2]

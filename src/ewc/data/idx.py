"""A strict reader for the IDX files of MNIST, Fashion-MNIST and KMNIST.

An IDX file is a 4-byte magic number ``0x00 0x00 <type code> <number of dimensions>``, then each
dimension as a big-endian unsigned 32-bit integer, then the values in row-major order (format
described on the MNIST page of LeCun, Cortes and Burges). These data sets use only type code
``0x08`` (unsigned byte): images are ``(N, 28, 28)`` and labels ``(N,)``.

Everything that can be wrong with a file is checked before any tensor is built: the magic number,
the type code, the number of dimensions, the image size, and that the payload is *exactly* as long
as the dimensions say (a short file is truncated, a long one has trailing bytes). Files whose name
ends in ``.gz`` are decompressed first. Every failure raises :class:`DataFileError` with the file's
name first in the message; checksums are checked elsewhere (:mod:`ewc.data.checksums`).
Only the standard library and torch are used.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import torch

from ewc.data.errors import DataFileError

IMAGE_SIZE = (28, 28)
"""Height and width of every image of the supported data sets."""

_UNSIGNED_BYTE = 0x08
_TYPE_NAMES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}
_GZIP_MAGIC = b"\x1f\x8b"


def decompress(raw: bytes, *, name: str) -> bytes:
    """Return the decompressed content of the gzip file ``name`` whose bytes are ``raw``.

    Raises:
        DataFileError: the stream ends early, is not gzip, or fails its CRC or length check.
    """
    try:
        return gzip.decompress(raw)
    except EOFError as error:
        raise DataFileError(f"{name}: the gzip stream ends early (truncated download?)") from error
    except (OSError, zlib.error) as error:
        raise DataFileError(f"{name}: not a valid gzip file ({error})") from error


def parse_images(payload: bytes, *, name: str) -> torch.Tensor:
    """Parse an uncompressed IDX image file into a uint8 tensor of shape ``(N, 28, 28)``.

    Raises:
        DataFileError: the header is not a 3-dimensional unsigned-byte IDX header for 28×28
            images, or the payload is not exactly N·28·28 bytes long.
    """
    return _parse_idx(payload, name=name, item_shape=IMAGE_SIZE, what="images")


def parse_labels(payload: bytes, *, name: str, num_classes: int = 10) -> torch.Tensor:
    """Parse an uncompressed IDX label file into an int64 tensor of shape ``(N,)``.

    Args:
        payload: the uncompressed bytes of the file.
        name: the file's name, used in error messages.
        num_classes: labels must lie in ``[0, num_classes)``; 1 to 256 (labels are bytes).

    Raises:
        DataFileError: the header is not a 1-dimensional unsigned-byte IDX header, the payload is
            not exactly N bytes long, or a label is out of range.
        ValueError: ``num_classes`` is outside 1..256.
    """
    if not 1 <= num_classes <= 256:
        raise ValueError(f"num_classes must be in [1, 256] for byte labels; got {num_classes}")
    labels = _parse_idx(payload, name=name, item_shape=(), what="labels")
    out_of_range = (labels >= num_classes).nonzero().flatten()
    if out_of_range.numel() > 0:
        first = int(out_of_range[0])
        raise DataFileError(
            f"{name}: label {int(labels[first])} at index {first} is outside "
            f"[0, {num_classes}) ({out_of_range.numel()} labels out of range)"
        )
    return labels.to(torch.int64)


def check_same_count(
    images: torch.Tensor, labels: torch.Tensor, *, images_name: str, labels_name: str
) -> None:
    """Raise :class:`DataFileError` unless there is exactly one label per image."""
    if images.shape[0] != labels.shape[0]:
        raise DataFileError(
            f"{images_name} has {images.shape[0]} images but {labels_name} has "
            f"{labels.shape[0]} labels; the two files must hold the same number of items"
        )


def read_payload(path: str | os.PathLike[str]) -> bytes:
    """Read an IDX file, decompressing it when its name ends in ``.gz``."""
    path = Path(path)
    raw = path.read_bytes()
    return decompress(raw, name=str(path)) if path.name.endswith(".gz") else raw


def read_images(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an IDX image file (``.gz`` or not) into uint8 ``(N, 28, 28)``; no checksum check."""
    return parse_images(read_payload(path), name=str(path))


def read_labels(path: str | os.PathLike[str], *, num_classes: int = 10) -> torch.Tensor:
    """Read an IDX label file (``.gz`` or not) into int64 ``(N,)``; no checksum check."""
    return parse_labels(read_payload(path), name=str(path), num_classes=num_classes)


def _parse_idx(
    payload: bytes, *, name: str, item_shape: tuple[int, ...], what: str
) -> torch.Tensor:
    """Check an unsigned-byte IDX payload whose items have ``item_shape``; return its tensor."""
    dims, offset = _read_header(payload, name=name, ndim=1 + len(item_shape))
    if dims[1:] != item_shape:
        found, expected = "×".join(map(str, dims[1:])), "×".join(map(str, item_shape))
        raise DataFileError(f"{name}: {what} are {found}, expected {expected}")
    expected_bytes, got = math.prod(dims), len(payload) - offset
    if got != expected_bytes:
        hint = "truncated?" if got < expected_bytes else "trailing bytes?"
        raise DataFileError(
            f"{name}: expected {expected_bytes} bytes of {what} after the header, "
            f"got {got} ({hint})"
        )
    if expected_bytes == 0:
        return torch.empty(dims, dtype=torch.uint8)
    # bytearray: torch.frombuffer needs a writable buffer to hand out a tensor without a warning.
    values = torch.frombuffer(bytearray(payload), dtype=torch.uint8, offset=offset)
    return values.reshape(dims)


def _read_header(payload: bytes, *, name: str, ndim: int) -> tuple[tuple[int, ...], int]:
    """Validate the magic number of an ``ndim``-dimensional unsigned-byte IDX file.

    Returns:
        The dimensions and the offset of the first value.
    """
    if len(payload) < 4:
        raise DataFileError(
            f"{name}: {len(payload)} bytes is too short for an IDX file "
            "(the magic number alone is 4 bytes)"
        )
    if payload[:2] != b"\x00\x00":
        hint = " (it looks gzip-compressed: name it *.gz)" if payload[:2] == _GZIP_MAGIC else ""
        raise DataFileError(
            f"{name}: not an IDX file: it starts with 0x{payload[:2].hex()}, expected 0x0000{hint}"
        )
    type_code, found_ndim = payload[2], payload[3]
    if type_code != _UNSIGNED_BYTE:
        type_name = _TYPE_NAMES.get(type_code, "unknown type")
        raise DataFileError(
            f"{name}: IDX type code 0x{type_code:02X} ({type_name}) is not supported; "
            "expected 0x08 (unsigned byte)"
        )
    if found_ndim != ndim:
        raise DataFileError(f"{name}: IDX file has {found_ndim} dimensions, expected {ndim}")
    offset = 4 + 4 * ndim
    if len(payload) < offset:
        raise DataFileError(
            f"{name}: an IDX header with {ndim} dimensions is {offset} bytes, "
            f"the file has {len(payload)} (truncated?)"
        )
    return struct.unpack(f">{ndim}I", payload[4:offset]), offset

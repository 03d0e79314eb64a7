"""Truncations and bit flips of IDX files: DataFileError or a correct parse, nothing else.

The property, for a file read the way the loaders read it (:func:`read_checked`, then parsing):

- with a checksum known for the file, any truncation or flipped byte raises DataFileError;
- with no checksum, a truncation still raises; a flip either raises, or (only for a flip inside
  the values of an uncompressed file) parses with exactly the flipped values changed; a flip in a
  ``.gz`` file either raises or decompresses to the original content (gzip's CRC).

Every truncation and every single-byte flip of small files is tried exhaustively; hypothesis adds
multi-byte flips, truncations of flipped files, and arbitrary bytes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ewc.data import DataFileError, md5_hex, parse_images, parse_labels
from ewc.data.files import read_checked

_IMAGES = "train-images-idx3-ubyte"
_LABELS = "train-labels-idx1-ubyte"
_HEADER = {_IMAGES: 16, _LABELS: 8}


@dataclass(frozen=True)
class MemoryFile:
    """An in-memory stand-in for a file on disk."""

    name: str
    data: bytes

    def read_bytes(self) -> bytes:
        return self.data

    def __str__(self) -> str:
        return self.name


def _files(kit) -> dict[str, bytes]:
    images = kit.images_file(kit.random_images(2, seed=7))
    labels = kit.labels_file(torch.tensor([3, 1, 4, 1, 5, 9, 2, 6]))
    return {
        _IMAGES: images,
        _LABELS: labels,
        f"{_IMAGES}.gz": kit.gz(images),
        f"{_LABELS}.gz": kit.gz(labels),
    }


def _load(name: str, data: bytes, checksums: dict[str, str]) -> torch.Tensor:
    """Read ``data`` as the file ``name`` through the loaders' path."""
    payload, _ = read_checked(MemoryFile(name, data), checksums=checksums, dataset="test")
    if name.startswith(_IMAGES):
        return parse_images(payload, name=name)
    return parse_labels(payload, name=name)


def _flip(data: bytes, flips: dict[int, int]) -> bytes:
    out = bytearray(data)
    for position, mask in flips.items():
        out[position] ^= mask
    return bytes(out)


def _check_flipped(name: str, original: bytes, flips: dict[int, int], *, checksummed: bool) -> bool:
    """Assert the property of the module docstring for one flipped file; True if it parsed."""
    table = {name: md5_hex(original)} if checksummed else {}
    reference = _load(name, original, {})
    try:
        result = _load(name, _flip(original, flips), table)
    except DataFileError:
        return False
    assert not checksummed, f"flips {flips} of {name} passed its checksum"
    if name.endswith(".gz"):
        assert torch.equal(result, reference)
        return True
    assert min(flips) >= _HEADER[name], f"a flip in the header of {name} parsed: {flips}"
    changed = (result.flatten() != reference.flatten()).nonzero().flatten() + _HEADER[name]
    assert changed.tolist() == sorted(flips)
    return True


@pytest.fixture(scope="module")
def files(kit) -> dict[str, bytes]:
    return _files(kit)


@pytest.mark.parametrize("name", [_IMAGES, _LABELS, f"{_IMAGES}.gz", f"{_LABELS}.gz"])
@pytest.mark.parametrize("checksummed", [True, False])
def test_every_truncation_raises(files, name, checksummed):
    original = files[name]
    table = {name: md5_hex(original)} if checksummed else {}
    for length in range(len(original)):
        with pytest.raises(DataFileError):
            _load(name, original[:length], table)
    assert _load(name, original, table).numel() > 0


@pytest.mark.parametrize("name", [_IMAGES, _LABELS, f"{_IMAGES}.gz", f"{_LABELS}.gz"])
@pytest.mark.parametrize("checksummed", [True, False])
def test_every_single_byte_flip(files, name, checksummed):
    original = files[name]
    masks = {position: 0x01 << (position % 8) for position in range(len(original))}
    parsed = [
        position
        for position, mask in masks.items()
        if _check_flipped(name, original, {position: mask}, checksummed=checksummed)
    ]
    if checksummed:
        assert parsed == []
    elif name == _IMAGES:  # every pixel flip parses, no header flip does
        assert parsed == list(range(16, len(original)))
    elif name == _LABELS:  # a label flip parses iff the new label is still in [0, 10)
        in_range = [p for p in range(8, len(original)) if original[p] ^ masks[p] < 10]
        assert parsed == in_range
        assert 0 < len(in_range) < len(original) - 8


_NAMES = st.sampled_from([_IMAGES, _LABELS, f"{_IMAGES}.gz", f"{_LABELS}.gz"])


def _draw_flips(data: st.DataObject, size: int) -> dict[int, int]:
    positions, masks = st.integers(0, size - 1), st.integers(1, 255)
    return data.draw(st.dictionaries(positions, masks, min_size=1, max_size=4), label="flips")


@settings(max_examples=300, deadline=None)
@given(name=_NAMES, checksummed=st.booleans(), data=st.data())
def test_random_flips(files, name, checksummed, data):
    flips = _draw_flips(data, len(files[name]))
    _check_flipped(name, files[name], flips, checksummed=checksummed)


@settings(max_examples=200, deadline=None)
@given(name=_NAMES, cut=st.integers(1, 2000), data=st.data())
def test_flipped_then_truncated_raises(files, name, cut, data):
    flipped = _flip(files[name], _draw_flips(data, len(files[name])))
    with pytest.raises(DataFileError):
        _load(name, flipped[: max(0, len(flipped) - cut)], {})


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=64) | st.builds(lambda rest: b"\x00\x00\x08\x03" + rest, st.binary()),
    name=_NAMES,
)
def test_arbitrary_bytes_raise_data_file_error_or_parse(data, name):
    with contextlib.suppress(DataFileError):
        _load(name, data, {})

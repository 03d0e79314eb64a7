"""MD5 checksums of data files and the rule that accepts or rejects a file.

A checksum table maps a file name to the MD5 of its bytes, in two flavours:

- a name ending in ``.gz`` (``"t10k-images-idx3-ubyte.gz"``): the MD5 of the compressed file as
  the data set's authors distribute it (the digests they publish);
- the same name without ``.gz`` (``"t10k-images-idx3-ubyte"``): the MD5 of the uncompressed IDX
  content.

A file passes :func:`verify` when its own MD5 equals the entry for its name, or, for a ``.gz`` file,
when the MD5 of its decompressed content equals the entry for the name without ``.gz``. The second
rule accepts recompressed copies whose content is byte-identical to the official one: Debian's
``dataset-fashion-mnist`` ships such files (same IDX content, different gzip containers). When the
table has an entry and nothing matches, :class:`DataFileError` names the file, the expected and the
actual digest. When the table has no entry for the file (uncompressed KMNIST: only the digests of
its ``.gz`` files are published), :func:`verify` returns ``False`` and the caller relies on the
strict structural checks of :mod:`ewc.data.idx` alone.

MD5 guards against corruption and wrong files, not against tampering; it is what the data sets'
authors publish, so it is what can be checked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from ewc.data.errors import DataFileError
from ewc.data.idx import decompress

Checksums = Mapping[str, str]
"""File name → hexadecimal MD5 (see the module docstring for the ``.gz`` / uncompressed keys)."""


def md5_hex(data: bytes) -> str:
    """The hexadecimal MD5 digest of ``data``."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def verify(
    raw: bytes,
    *,
    name: str,
    checksums: Checksums,
    display: str | None = None,
    payload: bytes | None = None,
    dataset: str = "",
) -> bool:
    """Check the bytes of the file ``name`` against a checksum table.

    Args:
        raw: the bytes of the file as stored (compressed when ``name`` ends in ``.gz``).
        name: the file's base name, the key into ``checksums``.
        checksums: the table of known digests.
        display: how to name the file in errors (e.g. its full path); defaults to ``name``.
        payload: the decompressed content of a ``.gz`` file when the caller already has it.
        dataset: the data set the file should belong to, for the error message.

    Returns:
        True when a known digest matched; False when the table knows no digest for the file.

    Raises:
        DataFileError: the table knows a digest for the file (or its content) and none matched.
    """
    display = display or name
    actual = md5_hex(raw)
    expected = checksums.get(name)
    if expected == actual:
        return True
    mismatches = [] if expected is None else [f"md5 {actual}, expected {expected}"]
    expected_content = checksums.get(name.removesuffix(".gz")) if name.endswith(".gz") else None
    if expected_content is not None:
        content = decompress(raw, name=display) if payload is None else payload
        actual_content = md5_hex(content)
        if actual_content == expected_content:
            return True
        mismatches.append(
            f"md5 of the decompressed content {actual_content}, expected {expected_content}"
        )
    if not mismatches:
        return False
    official = f"the official {dataset} file" if dataset else "the file the table describes"
    raise DataFileError(
        f"{display}: checksum mismatch: {'; '.join(mismatches)} "
        f"(the file is corrupt or is not {official})"
    )

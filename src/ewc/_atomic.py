"""Writing files so that a crash leaves the old file or the new one, never half of either.

The bytes go to a temporary file beside the destination (a fresh random name, created
exclusively), are flushed and fsynced, the file is renamed over the destination with `os.replace`
(atomic on POSIX and Windows), and the directory is fsynced so the rename itself survives a crash.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from pathlib import Path
from typing import Any

_TEMPORARY = re.compile(r"\.(.+)\.[0-9a-f]{16}\.tmp")


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path``'s content by ``data`` atomically and durably; no temporary file remains."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        with os.fdopen(os.open(temporary, flags, 0o666), "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """`write_bytes_atomic` of UTF-8 text; the parent directory is created if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """`write_text_atomic` of pretty-printed JSON; NaN (an undefined value) is written as null."""
    write_text_atomic(path, json.dumps(_nan_to_none(data), indent=2, allow_nan=False) + "\n")


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable (POSIX; Windows cannot open a directory)."""
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def destination(path: str | os.PathLike[str]) -> Path:
    """The file that ``path`` is a temporary file of (``path`` itself if it is none).

    An error met while writing uses it to name the file the user knows.
    """
    path = Path(path)
    match = _TEMPORARY.fullmatch(path.name)
    return path.with_name(match[1]) if match else path


def temporary_files(path: str | os.PathLike[str]) -> list[Path]:
    """Temporary files that an interrupted `write_bytes_atomic` of ``path`` may have left."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))

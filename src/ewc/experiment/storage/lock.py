"""An exclusive lock on a folder: while one process writes a run directory, no other may.

Two processes that write the same run directory (a second ``ewc run --resume`` while the first
still trains, or two new runs given the same ``--out``) would cut each other's event logs and
checkpoints and mix their results. The writer therefore holds an operating-system lock on the
file ``.lock`` in the folder, taken without waiting: a second writer is refused at once, and the
lock goes away with the process that held it, however it ended (no stale lock after a kill).

POSIX systems use ``fcntl.flock``, Windows ``msvcrt.locking``. The file is never deleted (a
process that opened it before the deletion could lock a file nobody else sees); it holds the
holder's process id, for the message of the one refused.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

LOCK_FILE = ".lock"


class FolderLock:
    """An exclusive lock on ``<folder>/.lock``, held until `release` (or the process ends)."""

    def __init__(self, path: Path, descriptor: int):
        """Use `acquire`; this wraps a locked file descriptor."""
        self.path, self._descriptor = path, descriptor

    @classmethod
    def acquire(cls, folder: Path) -> FolderLock | None:
        """Lock ``folder`` (which must exist) without waiting; None if another process holds it."""
        path = folder / LOCK_FILE
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(descriptor):
                os.close(descriptor)
                return None
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(descriptor)
            raise
        return cls(path, descriptor)

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._descriptor < 0:
            return
        descriptor, self._descriptor = self._descriptor, -1
        try:
            _unlock(descriptor)
        finally:
            os.close(descriptor)


def is_lock_file(entry: Path) -> bool:
    """Whether ``entry`` is a lock file as `FolderLock` writes it: ``.lock``, empty or a pid.

    A user's own file of that name (notes, another tool's lock) is not one, and is never
    truncated: the folder that holds it counts as someone else's.
    """
    if entry.name != LOCK_FILE or not entry.is_file():
        return False
    try:
        content = entry.read_bytes()[:64]
    except OSError:
        return False
    return content.strip().isdigit() or not content.strip()


def holder(folder: Path) -> str:
    """``process 1234``: who holds the lock of ``folder``, as far as its file says."""
    try:
        pid = (folder / LOCK_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


if sys.platform == "win32":  # pragma: no cover - this project's CI runs on Linux
    import msvcrt

    def _try_lock(descriptor: int) -> bool:
        os.lseek(descriptor, 0, os.SEEK_SET)
        try:
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(descriptor: int) -> None:
        os.lseek(descriptor, 0, os.SEEK_SET)
        msvcrt.locking(descriptor, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(descriptor: int) -> bool:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(descriptor: int) -> None:
        fcntl.flock(descriptor, fcntl.LOCK_UN)

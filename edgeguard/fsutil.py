"""Small file-system helpers: atomic, durable writes (python-tuf's habit).

A file is written to a temporary name in the same directory, flushed and
fsynced, renamed over the target with :func:`os.replace`, and the directory
is fsynced so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir"]


def fsync_dir(directory: Path) -> None:
    """fsync a directory so renames and creations in it are durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, exclusive: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Args:
        path: Target file.
        data: Complete new content.
        mode: Permission bits of the new file (applied before any data is written).
        exclusive: Refuse (FileExistsError) if ``path`` already exists.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if exclusive and path.exists():
        raise FileExistsError(str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if path appeared meanwhile
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

"""Small file-system helpers: atomic, durable writes and private directories.

Layer: below everything but :mod:`edgeguard.errors` (no edgeguard imports).

A file is written to a temporary name in the same directory, flushed and
fsynced, renamed over the target with :func:`os.replace`, and the directory
is fsynced so the rename itself survives a power cut (python-tuf's habit).

A directory edgeguard keeps state in (anti-rollback versions, the event log)
is opened with :func:`open_private_dir`, which refuses one that another user
owns or that group or others may write, and creates a missing one 0700. The
files in it are opened relative to that directory's descriptor with
:func:`open_nofollow` (``O_NOFOLLOW``: a symbolic link planted in place of a
state file is refused, never followed) and replaced with
:func:`atomic_write_at`. Both raise :class:`UnsafePathError` (an
:class:`OSError` carrying a hint) for a path that is not safe; callers turn it
into their own :class:`~edgeguard.errors.EdgeguardError`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "UnsafePathError",
    "atomic_write",
    "atomic_write_at",
    "fsync_dir",
    "open_nofollow",
    "open_private_dir",
]

#: Permission bits of a directory :func:`open_private_dir` creates.
PRIVATE_DIR_MODE = 0o700


class UnsafePathError(OSError):
    """A path that must be private is not: a symbolic link, another owner, open permissions.

    Attributes:
        hint: One short sentence telling the user what to do.
    """

    def __init__(self, message: str, *, hint: str) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        return str(self.args[0])


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


def _check_owner_and_mode(st: os.stat_result, path: Path, what: str) -> None:
    """Refuse ``path`` unless the effective user owns it and only that user may write it."""
    is_dir = stat.S_ISDIR(st.st_mode)
    euid = os.geteuid()
    if st.st_uid != euid:
        raise UnsafePathError(
            f"{what} {path} belongs to uid {st.st_uid}, not to this user (uid {euid}); "
            "refusing to use it",
            hint="use a directory of this user's own, or chown it to this user"
            if is_dir
            else "remove it or chown it to this user",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePathError(
            f"{what} {path} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to use it",
            hint=f"make it private: chmod {'700' if is_dir else '600'} {path}",
        )


def open_private_dir(
    directory: Path, *, create: bool = True, what: str = "state directory"
) -> int | None:
    """Open a directory that only this user may change; returns an ``O_DIRECTORY`` descriptor.

    A missing directory is created with mode 0700 (its missing parents with the
    default mode) when ``create`` is set; otherwise None is returned for it. An
    existing directory must belong to the effective user and must not be
    writable by group or others. The checks are made on the opened descriptor,
    so the directory the caller then works in (through ``dir_fd``) is the one
    that was checked. A symbolic link *to* a directory is followed: its target
    is what is checked. ``what`` names the directory in messages.

    Raises:
        UnsafePathError: Another user owns it, or group or others may write it.
        OSError: It cannot be created or opened (``NotADirectoryError`` for a file).
    """
    directory = Path(directory)
    created = False
    if create:
        try:
            directory.mkdir(parents=True, mode=PRIVATE_DIR_MODE)
            created = True
        except FileExistsError:
            pass
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        if create:
            raise
        return None
    try:
        if created:
            os.fchmod(fd, PRIVATE_DIR_MODE)  # exactly 0700, whatever the umask
        _check_owner_and_mode(os.fstat(fd), directory, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_nofollow(
    name: str, flags: int, mode: int = 0o600, *, dir_fd: int, where: Path, what: str = "state file"
) -> int:
    """Open the regular file ``name`` in the directory ``dir_fd`` without following links.

    ``O_NOFOLLOW``, ``O_CLOEXEC`` and ``O_NONBLOCK`` (a FIFO planted in its place
    cannot block the open) are added to ``flags``. The opened file must be a
    regular file of the effective user and not writable by group or others.

    Args:
        name: A file name (no directory part).
        flags: ``os.O_*`` flags (``O_CREAT`` creates it with ``mode``).
        mode: Permission bits of a created file.
        dir_fd: Descriptor of the directory (:func:`open_private_dir`).
        where: That directory's path, for messages.
        what: What the file is, for messages.

    Raises:
        UnsafePathError: It is a symbolic link or not a regular file, another user
            owns it, or group or others may write it.
        OSError: The operating system refused (``FileNotFoundError`` without ``O_CREAT``).
    """
    path = where / name
    try:
        fd = os.open(
            name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode, dir_fd=dir_fd
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(
                f"{path} is a symbolic link; refusing to follow it",
                hint="remove the link: edgeguard creates its state files itself",
            ) from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(
                f"{path} is not a regular file; refusing to use it",
                hint="remove it: edgeguard creates its state files itself",
            )
        _check_owner_and_mode(st, path, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def atomic_write_at(
    dir_fd: int, name: str, data: bytes | Iterable[bytes], *, mode: int = 0o600
) -> None:
    """Replace ``name`` in the directory ``dir_fd`` with ``data``, atomically and durably.

    ``data`` is the bytes, or an iterable of chunks written in order (a large file is
    never held whole in memory).

    The temporary file is created with ``O_EXCL | O_NOFOLLOW`` next to the target,
    written, fsynced and renamed over it (a rename replaces a symbolic link at
    ``name``, it never writes through one); then the directory is fsynced.

    Raises:
        OSError: Any step failed (the temporary file is removed).
    """
    tmp = f".{name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(
        tmp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        mode,
        dir_fd=dir_fd,
    )
    try:
        try:
            os.fchmod(fd, mode)
            for part in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise

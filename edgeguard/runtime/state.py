"""The device's local anti-rollback store: highest release version opened.

Layer: runtime (file I/O). One JSON file, ``versions.json``, in the state
directory maps ``<signer key id hex>/<bundle name>`` to the highest release
version this device has opened. Writes are atomic and durable (temporary
file, fsync, rename, fsync of the directory) under an exclusive ``flock`` so
two processes cannot interleave. The store fails closed: an unreadable or
corrupt store is an error, never an empty one.

The state directory must be private: it is created 0700, and an existing one
that another user owns or that group or others may write is refused
(:class:`~edgeguard.errors.StateStoreError`). Its files (``versions.json``,
``versions.lock``) are opened relative to the checked directory with
``O_NOFOLLOW``: a symbolic link in place of one is refused, never followed,
so edgeguard running as root cannot be steered into creating or reading a
file elsewhere (:mod:`edgeguard.fsutil`).

Limitation (documented in ``docs/threat-model.md``): an attacker who can
delete or replace this file can reset it. A TPM NV monotonic counter closes
that gap on devices that have one (a later issue).

Default location (``default_state_dir``): ``$EDGEGUARD_STATE_DIR`` if set,
else ``$XDG_STATE_HOME/edgeguard``, else ``~/.local/state/edgeguard``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeguard.bundle.verify import check_rollback
from edgeguard.errors import StateStoreError
from edgeguard.fsutil import UnsafePathError, atomic_write_at, open_nofollow, open_private_dir

__all__ = ["VersionStore", "default_state_dir", "ensure_state_dir"]

_SCHEMA = 1
_VERSIONS = "versions.json"
_LOCK = "versions.lock"


def default_state_dir() -> Path:
    """The documented default state directory (see module docstring)."""
    env = os.environ.get("EDGEGUARD_STATE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "edgeguard"


def _unsafe(exc: UnsafePathError) -> StateStoreError:
    return StateStoreError(str(exc), hint=exc.hint)


@contextlib.contextmanager
def _state_dir_fd(directory: Path, *, create: bool) -> Iterator[int | None]:
    """The checked state directory's descriptor (None: missing and ``create`` unset)."""
    try:
        fd = open_private_dir(directory, create=create)
    except UnsafePathError as exc:
        raise _unsafe(exc) from exc
    except OSError as exc:
        raise StateStoreError(f"cannot open state directory {directory}: {exc}") from exc
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def ensure_state_dir(directory: Path) -> Path:
    """Create the state directory (mode 0700) if missing and check it is private; returns it.

    Raises:
        StateStoreError: It cannot be created, or it exists but another user owns
            it or group or others may write it.
    """
    with _state_dir_fd(Path(directory), create=True):
        pass
    return directory


@dataclass(frozen=True)
class VersionStore:
    """Highest opened release version per (signer, bundle name)."""

    directory: Path

    @property
    def path(self) -> Path:
        """The JSON file holding the versions."""
        return self.directory / _VERSIONS

    @staticmethod
    def key(signer_key_id: bytes, name: str) -> str:
        """Entry key for a bundle name under a signer."""
        return f"{signer_key_id.hex()}/{name}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """Hold the store's exclusive lock; yields the state directory's descriptor."""
        with _state_dir_fd(self.directory, create=True) as dfd:
            assert dfd is not None
            try:
                fd = open_nofollow(
                    _LOCK, os.O_RDWR | os.O_CREAT, 0o600, dir_fd=dfd, where=self.directory
                )
            except UnsafePathError as exc:
                raise _unsafe(exc) from exc
            except OSError as exc:
                raise StateStoreError(
                    f"cannot lock state store in {self.directory}: {exc}"
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield dfd
            finally:
                os.close(fd)

    def _read(self, dfd: int) -> bytes | None:
        """The raw store, or None when there is none yet."""
        try:
            fd = open_nofollow(_VERSIONS, os.O_RDONLY, dir_fd=dfd, where=self.directory)
        except FileNotFoundError:
            return None
        except UnsafePathError as exc:
            raise _unsafe(exc) from exc
        except OSError as exc:
            raise StateStoreError(f"cannot read state store {self.path}: {exc}") from exc
        try:
            with os.fdopen(fd, "rb") as f:
                return f.read()
        except OSError as exc:
            raise StateStoreError(f"cannot read state store {self.path}: {exc}") from exc

    def _load(self, dfd: int | None = None) -> dict[str, Any]:
        if dfd is None:
            with _state_dir_fd(self.directory, create=False) as fd:
                raw = None if fd is None else self._read(fd)
        else:
            raw = self._read(dfd)
        if raw is None:
            return {}
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise StateStoreError(
                f"state store {self.path} is corrupt; refusing to guess (fail closed)",
                hint="restore it from backup; deleting it disables rollback protection",
            ) from exc
        entries = doc.get("entries") if isinstance(doc, dict) else None
        if (
            not isinstance(doc, dict)
            or doc.get("schema") != _SCHEMA
            or not isinstance(entries, dict)
            or not all(
                isinstance(v, dict) and isinstance(v.get("version"), int) for v in entries.values()
            )
        ):
            raise StateStoreError(f"state store {self.path} has an unknown layout (fail closed)")
        return entries

    def get(self, signer_key_id: bytes, name: str) -> int | None:
        """Highest version opened for this signer and name, or None."""
        entry = self._load().get(self.key(signer_key_id, name))
        return None if entry is None else int(entry["version"])

    def record(
        self, signer_key_id: bytes, name: str, version: int, *, manifest_digest: bytes
    ) -> None:
        """Check ``version`` against the stored one and raise the stored one to it.

        The check and the update are one critical section under the store's lock,
        so of two opens that both passed the early check in
        :func:`~edgeguard.bundle.verify.check_policy`, the one that records second
        is refused if the first recorded a higher version. The stored version is
        never lowered; the same version again changes nothing.

        Raises:
            RollbackError: A higher version was recorded meanwhile.
            StateStoreError: The store cannot be read or written safely.
        """
        with self._locked() as dfd:
            entries = self._load(dfd)
            k = self.key(signer_key_id, name)
            old = entries.get(k)
            check_rollback(name, version, None if old is None else int(old["version"]))
            if old is not None and int(old["version"]) == version:
                return
            entries[k] = {
                "version": version,
                "manifest_sha256": manifest_digest.hex(),
                "recorded": int(time.time()),
            }
            body = json.dumps({"schema": _SCHEMA, "entries": entries}, indent=1, sort_keys=True)
            try:
                atomic_write_at(dfd, _VERSIONS, body.encode(), mode=0o600)
            except OSError as exc:
                raise StateStoreError(f"cannot write state store {self.path}: {exc}") from exc

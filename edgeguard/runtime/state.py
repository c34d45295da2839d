"""The device's local anti-rollback store: highest release version opened.

Layer: runtime (file I/O). One JSON file, ``versions.json``, in the state
directory maps ``<signer key id hex>/<bundle name>`` to the highest release
version this device has opened. Writes are atomic and durable (temporary
file, fsync, rename, fsync of the directory) under an exclusive ``flock`` so
two processes cannot interleave. The store fails closed: an unreadable or
corrupt store is an error, never an empty one.

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

from edgeguard.errors import StateStoreError
from edgeguard.fsutil import atomic_write

__all__ = ["VersionStore", "default_state_dir", "ensure_state_dir"]

_SCHEMA = 1


def default_state_dir() -> Path:
    """The documented default state directory (see module docstring)."""
    env = os.environ.get("EDGEGUARD_STATE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "edgeguard"


def ensure_state_dir(directory: Path) -> Path:
    """Create the state directory (mode 0700) if it does not exist; returns it.

    Raises:
        StateStoreError: It cannot be created.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StateStoreError(f"cannot create state directory {directory}: {exc}") from exc
    return directory


@dataclass(frozen=True)
class VersionStore:
    """Highest opened release version per (signer, bundle name)."""

    directory: Path

    @property
    def path(self) -> Path:
        """The JSON file holding the versions."""
        return self.directory / "versions.json"

    @staticmethod
    def key(signer_key_id: bytes, name: str) -> str:
        """Entry key for a bundle name under a signer."""
        return f"{signer_key_id.hex()}/{name}"

    def _ensure_dir(self) -> None:
        ensure_state_dir(self.directory)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure_dir()
        try:
            fd = os.open(self.directory / "versions.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateStoreError(f"cannot lock state store in {self.directory}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _load(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StateStoreError(f"cannot read state store {self.path}: {exc}") from exc
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
        """Raise the stored version to ``version`` (never lowers it)."""
        with self._locked():
            entries = self._load()
            k = self.key(signer_key_id, name)
            old = entries.get(k)
            if old is not None and int(old["version"]) >= version:
                return
            entries[k] = {
                "version": version,
                "manifest_sha256": manifest_digest.hex(),
                "recorded": int(time.time()),
            }
            body = json.dumps({"schema": _SCHEMA, "entries": entries}, indent=1, sort_keys=True)
            try:
                atomic_write(self.path, body.encode(), mode=0o600)
            except OSError as exc:
                raise StateStoreError(f"cannot write state store {self.path}: {exc}") from exc

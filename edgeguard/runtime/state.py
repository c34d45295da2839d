"""The device's local anti-rollback store: highest release version opened.

Layer: runtime (file I/O). One JSON file, ``versions.json``, in the state
directory maps each bundle name to the highest release version this device
has opened, whichever trusted signer signed it: a release signed by an older,
still trusted key cannot take a name back below a version the device saw
under another key. Writes are atomic and durable (temporary file, fsync,
rename, fsync of the directory) under an exclusive ``flock``; checking a
release against the stored version and raising it is one critical section
under that lock (:meth:`VersionStore.record`). The store fails closed: an
unreadable, corrupt or unknown store is an error, never an empty one.

The store also keeps the device's **time floor**: the latest wall-clock time
at which a bundle was opened and recorded here. It only moves forward, and
only with a successful open (a check-only open records nothing), so a clock
set far ahead cannot move it unless a bundle actually opens at that time.
:func:`~edgeguard.bundle.verify.clock_check` decides expiry at the floor when
the clock lies too far behind it, so setting the clock back does not revive
an expired bundle.

Layout (schema 2; ``time_floor`` is absent until the first record)::

    {"schema": 2, "time_floor": <unix s>,
     "entries": {"<bundle name>": {"version": 7, "manifest_sha256": "<hex>",
                                   "signer": "<key id hex>", "recorded": <unix s>}}}

A schema 1 store (entries keyed ``<signer key id hex>/<bundle name>``, written
before anti-rollback was kept per name) is read as schema 2: each name gets
the highest version any signer had, and the next write stores schema 2.

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
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeguard.bundle.model import DEFAULT_LIMITS
from edgeguard.bundle.verify import check_rollback
from edgeguard.errors import StateStoreError
from edgeguard.fsutil import UnsafePathError, atomic_write_at, open_nofollow, open_private_dir

__all__ = ["StoredState", "VersionStore", "default_state_dir", "ensure_state_dir"]

_SCHEMA = 2
_LEGACY_SCHEMA = 1  # entries keyed "<signer key id hex>/<name>"
_VERSIONS = "versions.json"
_LOCK = "versions.lock"
#: A bundle name as the manifest allows it (docs/bundle-format.md, ``name``).
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")
_LEGACY_KEY_RE = re.compile(r"([0-9a-f]{64})/(" + _NAME_RE.pattern + ")")
_HEX32_RE = re.compile(r"[0-9a-f]{64}")
_ENTRY_FIELDS = {"version", "manifest_sha256", "signer", "recorded"}
_REQUIRED_KEYS = {"schema", "entries"}
_OPTIONAL_KEYS = {"time_floor"}  # schema 2 only


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


def _open_state_dir(directory: Path, *, create: bool) -> int | None:
    """The checked state directory's descriptor (None: missing and ``create`` unset)."""
    try:
        return open_private_dir(directory, create=create)
    except UnsafePathError as exc:
        raise _unsafe(exc) from exc
    except OSError as exc:
        raise StateStoreError(f"cannot open state directory {directory}: {exc}") from exc


@contextlib.contextmanager
def _state_dir_fd(directory: Path, *, create: bool) -> Iterator[int | None]:
    """:func:`_open_state_dir`, closed on the way out."""
    fd = _open_state_dir(directory, create=create)
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


def _is_int(v: object) -> bool:
    """An integer that is not a bool (JSON ``true`` must not pass as 1)."""
    return type(v) is int


def _valid_entry(v: object, *, legacy: bool) -> bool:
    if not isinstance(v, dict) or not set(v) <= _ENTRY_FIELDS or "version" not in v:
        return False
    version = v["version"]
    if not _is_int(version) or not 0 <= version <= DEFAULT_LIMITS.max_version:
        return False
    if legacy and "signer" in v:
        return False
    digest = v.get("manifest_sha256")
    signer = v.get("signer")
    recorded = v.get("recorded")
    return (
        (digest is None or (isinstance(digest, str) and _HEX32_RE.fullmatch(digest) is not None))
        and (
            signer is None or (isinstance(signer, str) and _HEX32_RE.fullmatch(signer) is not None)
        )
        and (recorded is None or (_is_int(recorded) and recorded >= 0))
    )


def _migrate(entries: dict[str, Any]) -> dict[str, Any] | None:
    """Schema 1 entries (per signer and name) as schema 2 entries (per name), or None."""
    out: dict[str, Any] = {}
    for key, entry in entries.items():
        m = _LEGACY_KEY_RE.fullmatch(key)
        if m is None:
            return None
        signer, name = m.groups()
        if name not in out or entry["version"] > out[name]["version"]:
            out[name] = {**entry, "signer": signer}
    return out


@dataclass(frozen=True)
class StoredState:
    """What the store holds: the entries per bundle name and the time floor.

    Attributes:
        entries: Bundle name -> its entry (``version``, ``manifest_sha256``,
            ``signer``, ``recorded``).
        time_floor: The latest wall-clock time of a recorded open, or None.
    """

    entries: Mapping[str, Mapping[str, Any]]
    time_floor: int | None = None

    def version(self, name: str) -> int | None:
        """Highest version of bundle ``name`` opened (any signer), or None."""
        entry = self.entries.get(name)
        return None if entry is None else int(entry["version"])


_EMPTY = StoredState(entries={})


@dataclass(frozen=True)
class VersionStore:
    """Highest opened release version per bundle name, across every trusted signer."""

    directory: Path

    @property
    def path(self) -> Path:
        """The JSON file holding the versions."""
        return self.directory / _VERSIONS

    def _lock(self, dfd: int) -> int:
        """Open ``versions.lock`` in the state directory and take its exclusive lock."""
        try:
            fd = open_nofollow(
                _LOCK, os.O_RDWR | os.O_CREAT, 0o600, dir_fd=dfd, where=self.directory
            )
        except UnsafePathError as exc:
            raise _unsafe(exc) from exc
        except OSError as exc:
            raise StateStoreError(f"cannot lock state store in {self.directory}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            raise StateStoreError(f"cannot lock state store in {self.directory}: {exc}") from exc
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """Hold the store's exclusive lock; yields the state directory's descriptor."""
        with _state_dir_fd(self.directory, create=True) as dfd:
            assert dfd is not None
            fd = self._lock(dfd)
            try:
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

    def _load(self, dfd: int | None) -> StoredState:
        """The store in the state directory ``dfd`` (None: there is no directory yet)."""
        raw = None if dfd is None else self._read(dfd)
        if raw is None:
            return _EMPTY
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise StateStoreError(
                f"state store {self.path} is corrupt; refusing to guess (fail closed)",
                hint="restore it from backup; deleting it disables rollback protection",
            ) from exc
        state = self._parse(doc)
        if state is None:
            raise StateStoreError(
                f"state store {self.path} has an unknown layout (fail closed)",
                hint="restore it from backup, or use the edgeguard release that wrote it",
            )
        return state

    @staticmethod
    def _parse(doc: object) -> StoredState | None:
        """A well-formed store document (schema 2, or 1 migrated), else None."""
        if not isinstance(doc, dict) or not set(doc) >= _REQUIRED_KEYS:
            return None
        schema, entries = doc["schema"], doc["entries"]
        if not _is_int(schema) or schema not in (_LEGACY_SCHEMA, _SCHEMA):
            return None
        legacy = schema == _LEGACY_SCHEMA
        if not set(doc) <= (_REQUIRED_KEYS if legacy else _REQUIRED_KEYS | _OPTIONAL_KEYS):
            return None
        floor = doc.get("time_floor")
        if floor is not None and not (_is_int(floor) and floor >= 0):
            return None
        if not isinstance(entries, dict) or not all(
            _valid_entry(v, legacy=legacy) for v in entries.values()
        ):
            return None
        if legacy:
            migrated = _migrate(entries)
            return None if migrated is None else StoredState(entries=migrated)
        if not all(_NAME_RE.fullmatch(k) for k in entries):
            return None
        return StoredState(entries=entries, time_floor=floor)

    def read(self) -> StoredState:
        """The entries and the time floor, as one consistent read (no lock needed:
        the file is only ever replaced whole).

        Raises:
            StateStoreError: The store cannot be read safely, or is corrupt.
        """
        with _state_dir_fd(self.directory, create=False) as dfd:
            return self._load(dfd)

    def get(self, name: str) -> int | None:
        """Highest version of bundle ``name`` this device opened (any signer), or None."""
        return self.read().version(name)

    def time_floor(self) -> int | None:
        """The latest wall-clock time of a recorded open, or None."""
        return self.read().time_floor

    def record(
        self, name: str, version: int, *, manifest_digest: bytes, signer_key_id: bytes, now: int
    ) -> None:
        """Check ``version`` against the stored one and raise the stored one to it.

        The check and the update are one critical section under the store's lock,
        so of two opens that both passed the early check in
        :func:`~edgeguard.bundle.verify.check_policy`, the one that records second
        is refused if the first recorded a higher version. The stored version is
        never lowered; the same version again leaves its entry as it is. The time
        floor is raised to ``now`` (never lowered) in the same write.

        Args:
            name: The bundle name (the anti-rollback counter's key).
            version: Its release version.
            manifest_digest: SHA-256 of the signed header (kept for reference).
            signer_key_id: The key that signed it (kept for reference; not part of
                the key: the counter is shared by every trusted signer).
            now: The wall clock when the bundle was opened (Unix seconds).

        Raises:
            RollbackError: A higher version of ``name`` was recorded.
            StateStoreError: The store cannot be read or written safely.
        """
        with self._locked() as dfd:
            state = self._load(dfd)
            stored = state.version(name)
            check_rollback(name, version, stored)
            floor = now if state.time_floor is None else max(state.time_floor, now)
            if stored == version and floor == state.time_floor:
                return
            entries = dict(state.entries)
            if stored != version:
                entries[name] = {
                    "version": version,
                    "manifest_sha256": manifest_digest.hex(),
                    "signer": signer_key_id.hex(),
                    "recorded": now,
                }
            doc = {"schema": _SCHEMA, "time_floor": floor, "entries": entries}
            body = json.dumps(doc, indent=1, sort_keys=True)
            try:
                atomic_write_at(dfd, _VERSIONS, body.encode(), mode=0o600)
            except OSError as exc:
                raise StateStoreError(f"cannot write state store {self.path}: {exc}") from exc

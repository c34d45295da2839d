"""Challenge nonces and the verifier's single-use nonce store.

Layer: attest (file I/O for the verifier's state).

``edgeguard attest challenge`` draws a 32-byte random nonce, records it as
*issued* (with the verifier's clock) in a small JSON store and writes a
challenge file holding the nonce and issue time. ``edgeguard attest verify``
*consumes* the nonce: it must have been issued by this store, not be used
before, and be at most ``max_age`` seconds old by the **stored** issue time
(the time in the challenge file is informational; a device cannot make a
nonce younger by editing it). A consumed nonce stays in the store as *used*
until it is older than the retention window, after which it would be
refused as unknown or stale anyway.

The store is ``<state dir>/nonces.json``, written atomically under an
exclusive ``flock`` on ``<state dir>/nonces.lock`` so concurrent verifiers
never both accept the same nonce. Default state dir:
``$EDGEGUARD_VERIFIER_STATE_DIR``, else ``$XDG_STATE_HOME/edgeguard-verifier``,
else ``~/.local/state/edgeguard-verifier``.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgeguard.errors import MalformedError, StateStoreError, UsageError
from edgeguard.fsutil import atomic_write

__all__ = [
    "DEFAULT_MAX_AGE",
    "NONCE_LEN",
    "Challenge",
    "NonceStore",
    "NonceVerdict",
    "default_verifier_state_dir",
]

NONCE_LEN = 32
DEFAULT_MAX_AGE = 300
RETENTION = 7 * 24 * 3600
MAX_STORE_ENTRIES = 100_000
_CHALLENGE_TYPE = "edgeguard-attest-challenge"


def default_verifier_state_dir() -> Path:
    """The documented default verifier state directory (see the module docstring)."""
    env = os.environ.get("EDGEGUARD_VERIFIER_STATE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "edgeguard-verifier"


@dataclass(frozen=True)
class Challenge:
    """A verifier's challenge: the nonce and when it was issued."""

    nonce: bytes
    issued: int

    def __post_init__(self) -> None:
        if len(self.nonce) != NONCE_LEN:
            raise MalformedError(f"challenge nonce must be {NONCE_LEN} bytes")

    @classmethod
    def new(cls, *, now: int | None = None) -> Challenge:
        """A fresh random challenge."""
        return cls(secrets.token_bytes(NONCE_LEN), int(time.time()) if now is None else now)

    def encode(self) -> bytes:
        """The challenge file's content (JSON)."""
        doc = {"type": _CHALLENGE_TYPE, "v": 1, "nonce": self.nonce.hex(), "issued": self.issued}
        return (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()

    @classmethod
    def decode(cls, data: bytes, *, source: str) -> Challenge:
        """Parse a challenge file.

        Raises:
            MalformedError: Not a challenge file.
        """
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedError(f"{source}: not a JSON challenge file") from exc
        if (
            not isinstance(doc, dict)
            or doc.get("type") != _CHALLENGE_TYPE
            or doc.get("v") != 1
            or isinstance(doc.get("v"), bool)
        ):
            raise MalformedError(f"{source}: not an edgeguard attestation challenge")
        nonce, issued = doc.get("nonce"), doc.get("issued")
        if not isinstance(nonce, str) or not isinstance(issued, int):
            raise MalformedError(f"{source}: challenge needs a hex nonce and an issue time")
        try:
            raw = bytes.fromhex(nonce)
        except ValueError as exc:
            raise MalformedError(f"{source}: challenge nonce is not hex") from exc
        return cls(raw, issued)

    @classmethod
    def load(cls, path: Path) -> Challenge:
        """Read a challenge file."""
        try:
            return cls.decode(Path(path).read_bytes(), source=str(path))
        except FileNotFoundError as exc:
            raise UsageError(f"challenge file {path} does not exist") from exc


NonceStatus = Literal["fresh", "replayed", "stale", "unknown"]


@dataclass(frozen=True)
class NonceVerdict:
    """What the store said about a nonce it was asked to consume."""

    status: NonceStatus
    age: int | None
    reason: str

    def __bool__(self) -> bool:
        return self.status == "fresh"


class NonceStore:
    """The verifier's record of issued and used nonces (one JSON file)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_verifier_state_dir()

    @property
    def path(self) -> Path:
        """The JSON store file."""
        return self.directory / "nonces.json"

    @contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, int]]]:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock = open(self.directory / "nonces.lock", "a+b")  # noqa: SIM115
        except OSError as exc:
            raise StateStoreError(f"cannot use verifier state dir {self.directory}: {exc}") from exc
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            state = self._read()
            yield state
        finally:
            lock.close()

    def _read(self) -> dict[str, dict[str, int]]:
        try:
            doc: Any = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {"issued": {}, "used": {}}
        except (ValueError, OSError) as exc:
            raise StateStoreError(f"verifier nonce store {self.path} is unreadable") from exc
        if (
            not isinstance(doc, dict)
            or set(doc) != {"issued", "used"}
            or not all(isinstance(doc[k], dict) for k in doc)
        ):
            raise StateStoreError(f"verifier nonce store {self.path} is malformed")
        return doc

    def _write(self, state: dict[str, dict[str, int]], now: int) -> None:
        for k in ("issued", "used"):
            state[k] = {n: t for n, t in state[k].items() if now - t <= RETENTION}
        if len(state["issued"]) + len(state["used"]) > MAX_STORE_ENTRIES:
            raise StateStoreError("too many outstanding nonces in the verifier store")
        data = json.dumps(state, sort_keys=True).encode()
        try:
            atomic_write(self.path, data, mode=0o600)
        except OSError as exc:
            raise StateStoreError(f"cannot write verifier nonce store {self.path}: {exc}") from exc

    def issue(self, *, now: int | None = None) -> Challenge:
        """Draw and record a fresh challenge."""
        ch = Challenge.new(now=now)
        with self._locked() as state:
            state["issued"][ch.nonce.hex()] = ch.issued
            self._write(state, ch.issued)
        return ch

    def consume(
        self, nonce: bytes, *, max_age: int = DEFAULT_MAX_AGE, now: int | None = None
    ) -> NonceVerdict:
        """Mark ``nonce`` used and say whether it was fresh.

        A nonce is fresh when this store issued it, it was never consumed,
        and it is at most ``max_age`` seconds old. It is consumed whatever
        the verdict, so each nonce is judged at most once.
        """
        if max_age <= 0:
            raise UsageError("--max-age must be positive")
        now = int(time.time()) if now is None else now
        key = nonce.hex()
        with self._locked() as state:
            if key in state["used"]:
                verdict = NonceVerdict("replayed", None, "nonce was already used (replay)")
            elif key not in state["issued"]:
                verdict = NonceVerdict("unknown", None, "nonce was not issued by this verifier")
            else:
                age = now - state["issued"].pop(key)
                state["used"][key] = now
                if age > max_age:
                    verdict = NonceVerdict("stale", age, f"nonce is {age} s old (max {max_age} s)")
                elif age < -60:
                    verdict = NonceVerdict("stale", age, "nonce was issued in the future")
                else:
                    verdict = NonceVerdict("fresh", age, f"fresh, single use, {age} s old")
            self._write(state, now)
        return verdict

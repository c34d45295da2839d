"""The event log's head, anchored outside the log: a signed file and an optional TPM counter.

Layer: :mod:`edgeguard.guard`, next to :mod:`edgeguard.guard.eventlog`; file
I/O in the state directory, and the TPM through ``tpm2-pytss`` (the ``[tpm]``
extra, imported lazily) when a counter is configured.

Why: each clean close ends the log with a signed final checkpoint, so the log
cut back to an earlier session's final checkpoint is itself a clean, fully
signed log. Nothing in the log shows the later sessions are gone. The anchor
keeps the latest signed checkpoint's position where cutting the log does not
reach it:

* ``eventlog.anchor`` in the state directory (never ``versions.json``): one
  canonical JSON line holding the log id, the checkpoint's ``seq`` and
  ``head``, the TPM counter value it is bound to (or null) and an ECDSA P-256
  signature by the device key. The writer replaces it atomically (temporary
  file opened ``O_EXCL | O_NOFOLLOW`` relative to the directory descriptor,
  fsync, ``rename``, fsync of the directory) after every checkpoint is
  durable, and never moves it backwards. Reading it refuses a symbolic link,
  anything but a regular file, and a file or directory that is writable by
  group or others or owned by another user (root excepted).
* With a TPM (:class:`TpmNvCounter`), an NV counter that only ever goes up.
  At each checkpoint the anchor is written bound to the counter's next value,
  then the counter is incremented, so the anchor's value is the counter's or
  one more (a crash between the two); an older anchor has a smaller value.
  Deleting or restoring the file cannot move the counter back.

A log is **behind** its anchor, :class:`~edgeguard.errors.LogRolledBackError`
(exit 4), when it ends before the anchor's checkpoint, when the record at the
anchor's ``seq`` is not that checkpoint, when it is another log, or when the
log is gone while the anchor is not. The anchor is behind the TPM counter when
it was deleted or restored. What stays undetectable is in ``docs/eventlog.md``.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from edgeguard._optional import require
from edgeguard.errors import (
    BackendError,
    IntegrityError,
    LogRolledBackError,
    StateStoreError,
    UsageError,
)
from edgeguard.guard.eventlog import _too_deep, canonical_json, key_id

__all__ = [
    "ANCHOR_FORMAT",
    "ANCHOR_NAME",
    "DEFAULT_NV_INDEX",
    "AnchorState",
    "LogAnchor",
    "MonotonicCounter",
    "TpmNvCounter",
    "counter_from_env",
]

ANCHOR_FORMAT = "edgeguard-eventlog-anchor/1"
#: File name of the anchor in the state directory.
ANCHOR_NAME = "eventlog.anchor"
#: NV index of the counter: in the owner range of the TCG handle registry (0x01000000-0x013FFFFF).
DEFAULT_NV_INDEX = 0x0100E901
_CONTEXT = b"edgeguard-eventlog/1 anchor\x00"
_MAX_BYTES = 4096
_KEYS = frozenset({"format", "log_id", "key_id", "seq", "head", "counter", "sig"})
_HEX64 = re.compile(r"[0-9a-f]{64}")


class MonotonicCounter(Protocol):
    """A counter that never goes back, kept where the state directory's owner cannot reset it."""

    @property
    def name(self) -> str:
        """What the counter is, for messages (e.g. ``TPM NV index 0x0100e901``)."""
        ...

    def read(self) -> int | None:
        """The current value, or None when the counter was never incremented."""
        ...

    def increment(self) -> int:
        """Add one; returns the new value."""
        ...


@dataclass(frozen=True)
class AnchorState:
    """What the anchor file says (after its signature verified).

    Attributes:
        log_id: The anchored log's id.
        seq: Sequence number of the latest signed checkpoint written.
        head: That checkpoint's ``head`` (and ``prev``).
        counter: The monotonic counter value the anchor is bound to, or None.
    """

    log_id: str
    seq: int
    head: str
    counter: int | None


def _message(kid: str, log_id: str, seq: int, head: str, counter: int | None) -> bytes:
    return _CONTEXT + canonical_json(
        {
            "format": ANCHOR_FORMAT,
            "log_id": log_id,
            "key_id": kid,
            "seq": seq,
            "head": head,
            "counter": counter,
        }
    )


def _unsafe(st: os.stat_result) -> str | None:
    if st.st_uid not in (os.geteuid(), 0):
        return f"owned by uid {st.st_uid}"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


class LogAnchor:
    """The anchor of one event log: ``eventlog.anchor`` in ``directory``, and a counter.

    Args:
        directory: The state directory (created by the runtime with mode 0700).
        counter: A monotonic counter (a :class:`TpmNvCounter`), or None.
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, counter: MonotonicCounter | None = None
    ):
        self.directory = Path(directory)
        self.counter = counter
        self._counter_value: int | None = None

    @property
    def path(self) -> Path:
        """The anchor file."""
        return self.directory / ANCHOR_NAME

    # -- files --------------------------------------------------------------------------------

    def _open_dir(self) -> int:
        try:
            dfd = os.open(
                self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            )
        except OSError as exc:
            raise StateStoreError(
                f"cannot open state directory {self.directory} for the event-log anchor: "
                f"{exc.strerror}"
            ) from exc
        why = _unsafe(os.fstat(dfd))
        if why is not None:
            os.close(dfd)
            raise StateStoreError(
                f"state directory {self.directory} is {why}; refusing to trust its anchor"
            )
        return dfd

    def _read_raw(self) -> bytes | None:
        dfd = self._open_dir()
        try:
            try:
                fd = os.open(
                    ANCHOR_NAME,
                    os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                    dir_fd=dfd,
                )
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise StateStoreError(
                        f"event-log anchor {self.path} is a symbolic link; refusing to follow it"
                    ) from exc
                raise StateStoreError(
                    f"cannot read event-log anchor {self.path}: {exc.strerror}"
                ) from exc
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise StateStoreError(f"event-log anchor {self.path} is not a regular file")
                why = _unsafe(st)
                if why is not None:
                    raise StateStoreError(f"event-log anchor {self.path} is {why}")
                return os.read(fd, _MAX_BYTES + 1)
            finally:
                os.close(fd)
        finally:
            os.close(dfd)

    def _parse(self, raw: bytes, public_key: ec.EllipticCurvePublicKey) -> AnchorState:
        def bad(what: str) -> IntegrityError:
            return IntegrityError(
                f"event-log anchor {self.path}: {what}",
                hint="the anchor was edited or replaced; it is signed by the device key",
            )

        if len(raw) > _MAX_BYTES or not raw.endswith(b"\n") or _too_deep(raw, 1):
            raise bad("not an anchor (too long, unterminated or nested)")
        try:
            doc = json.loads(raw[:-1])
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad("not valid JSON") from exc
        if not isinstance(doc, dict) or set(doc) != _KEYS:
            raise bad("wrong set of fields")
        seq, counter = doc["seq"], doc["counter"]
        if (
            doc["format"] != ANCHOR_FORMAT
            or not all(isinstance(doc[k], str) for k in ("log_id", "key_id", "head", "sig"))
            or isinstance(seq, bool)
            or not isinstance(seq, int)
            or seq < 1
            or not (counter is None or (isinstance(counter, int) and not isinstance(counter, bool)))
            or not _HEX64.fullmatch(doc["head"])
        ):
            raise bad("field of the wrong type or format")
        if canonical_json(doc) + b"\n" != raw:
            raise bad("not in canonical form")
        kid = key_id(public_key)
        if doc["key_id"] != kid:
            raise bad("written for a different key")
        try:
            sig = base64.b64decode(doc["sig"], validate=True)
            public_key.verify(
                sig,
                _message(kid, doc["log_id"], seq, doc["head"], counter),
                ec.ECDSA(hashes.SHA256()),
            )
        except (InvalidSignature, ValueError) as exc:
            raise bad("signature does not verify") from exc
        return AnchorState(doc["log_id"], seq, doc["head"], counter)

    def _read(self, public_key: ec.EllipticCurvePublicKey) -> AnchorState | None:
        raw = self._read_raw()
        return None if raw is None else self._parse(raw, public_key)

    def _write(self, body: bytes) -> None:
        dfd = self._open_dir()
        tmp = f".{ANCHOR_NAME}.{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dfd,
            )
            try:
                view = memoryview(body)
                while view:
                    n = os.write(fd, view)
                    if n <= 0:
                        raise OSError(errno.EIO, "the write made no progress")
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, ANCHOR_NAME, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise StateStoreError(
                f"cannot write event-log anchor {self.path}: {exc.strerror or exc}",
                hint="the log itself is intact; the anchor is updated again at the next checkpoint",
            ) from exc
        finally:
            os.close(dfd)

    # -- the checks ---------------------------------------------------------------------------

    def load(
        self, public_key: ec.EllipticCurvePublicKey, *, required: bool = False
    ) -> AnchorState | None:
        """Read and check the anchor, and the counter when one is configured.

        Args:
            public_key: The device key that signs the log and the anchor.
            required: A missing anchor is an error (the caller named this state
                directory) instead of "nothing to check".

        Returns:
            The anchor, or None when there is none and nothing says there should be.

        Raises:
            LogRolledBackError: The counter shows the anchor was deleted or an
                older one restored.
            IntegrityError: The anchor does not verify, or the counter is behind it.
            StateStoreError: The anchor or its directory is a link, not a regular
                file, writable by others or unreadable; or ``required`` and missing.
            BackendError: The TPM cannot be reached.
        """
        state = self._read(public_key)
        value = self.counter.read() if self.counter is not None else None
        self._counter_value = value
        if self.counter is not None and value is not None:
            cname = self.counter.name
            if state is None:
                raise LogRolledBackError(
                    f"event-log anchor {self.path} is missing, but {cname} is at {value}: "
                    "the anchor (and the log) were deleted",
                    hint="a device whose log is reset on purpose must reset the counter too",
                )
            if state.counter is None or state.counter < value:
                raise LogRolledBackError(
                    f"event-log anchor {self.path} is older than {cname}: bound to "
                    f"{state.counter}, the counter is at {value}; an earlier anchor was restored",
                    hint="the log and its anchor were rolled back",
                )
            if state.counter > value + 1:
                raise IntegrityError(
                    f"event-log anchor {self.path} is bound to {state.counter}, but {cname} "
                    f"is at {value}: not this device's TPM, or it was cleared"
                )
        elif self.counter is not None and state is not None and state.counter is not None:
            raise IntegrityError(
                f"event-log anchor {self.path} is bound to {self.counter.name} at "
                f"{state.counter}, but the counter was never incremented: it was "
                "deleted or the TPM cleared"
            )
        if state is None and required:
            raise StateStoreError(
                f"no event-log anchor {self.path}",
                hint="it was deleted or never written; without it a cut back to an earlier "
                "checkpoint cannot be detected",
            )
        return state

    def catch_up(self, state: AnchorState | None) -> None:
        """After :meth:`load`: finish an increment a crash interrupted (anchor one ahead)."""
        if self.counter is None or state is None or state.counter is None:
            return
        if self._counter_value is not None and state.counter == self._counter_value + 1:
            self._counter_value = self._increment()

    def _increment(self) -> int:
        assert self.counter is not None
        before = self._counter_value
        after = self.counter.increment()
        if before is not None and after != before + 1:
            raise IntegrityError(
                f"{self.counter.name} went from {before} to {after} on one increment: "
                "someone else increments it"
            )
        return after

    def advance(
        self, signing_key: ec.EllipticCurvePrivateKey, *, log_id: str, seq: int, head: str
    ) -> None:
        """Move the anchor to the checkpoint at ``seq`` (durable in the log already).

        Writes the anchor bound to the counter's next value, then increments the
        counter. Never moves the anchor backwards or to another log.

        Raises:
            StateStoreError: The anchor cannot be written, or would move backwards.
            BackendError: The TPM cannot be reached (the anchor is written; the
                next checkpoint binds it to the same value again).
        """
        public_key = signing_key.public_key()
        old = self._read(public_key)
        if old is not None and (old.log_id != log_id or old.seq >= seq):
            raise StateStoreError(
                f"event-log anchor {self.path} names record {old.seq} of log {old.log_id}; "
                f"refusing to move it to record {seq} of log {log_id}",
                hint="another writer uses this state directory",
            )
        counter: int | None = None
        if self.counter is not None:
            if self._counter_value is None:
                self._counter_value = self._increment()  # a new counter starts here
            counter = self._counter_value + 1
        kid = key_id(public_key)
        sig = signing_key.sign(_message(kid, log_id, seq, head, counter), ec.ECDSA(hashes.SHA256()))
        doc: dict[str, Any] = {
            "format": ANCHOR_FORMAT,
            "log_id": log_id,
            "key_id": kid,
            "seq": seq,
            "head": head,
            "counter": counter,
            "sig": base64.b64encode(sig).decode("ascii"),
        }
        self._write(canonical_json(doc) + b"\n")
        if self.counter is not None:
            self._counter_value = self._increment()


# -- the TPM counter ---------------------------------------------------------------------------


class TpmNvCounter:
    """A TPM 2.0 NV counter (``TPM_NT_COUNTER``) at ``nv_index``, defined on first use.

    Owner-authorised (empty owner auth unless the device sets one): written with
    owner authorisation, readable with the index's own (empty) auth. Each
    operation opens and closes its own TPM connection, so a verifier and a
    writer can share one TPM. ``TPM2_NV_Increment`` writes NV: a real TPM
    rate-limits and wears under very many increments (one per checkpoint).

    Args:
        tcti: The TPM's TCTI, e.g. ``device:/dev/tpmrm0`` or ``swtpm:path=SOCK``.
        nv_index: The NV index (default :data:`DEFAULT_NV_INDEX`).
    """

    def __init__(self, tcti: str, *, nv_index: int = DEFAULT_NV_INDEX) -> None:
        if not tcti or not isinstance(tcti, str):
            raise UsageError("empty TCTI", hint="for example device:/dev/tpmrm0")
        if not 0x01000000 <= nv_index <= 0x01FFFFFF:
            raise UsageError(f"NV index {nv_index:#x} is not an NV index handle (0x01xxxxxx)")
        self.tcti = tcti
        self.nv_index = nv_index

    @property
    def name(self) -> str:
        """For messages."""
        return f"TPM NV counter {self.nv_index:#010x}"

    @contextlib.contextmanager
    def _esapi(self) -> Any:
        require("tpm2_pytss", extra="tpm", purpose="The event log's TPM counter")
        from tpm2_pytss import ESAPI, TCTILdr

        name, _, conf = self.tcti.partition(":")
        try:
            tcti = TCTILdr(name, conf or None)
            esapi = ESAPI(tcti)
        except Exception as exc:
            raise BackendError(f"cannot connect to the TPM via TCTI {self.tcti!r}: {exc}") from exc
        try:
            yield esapi
        except (StateStoreError, IntegrityError):
            raise
        except Exception as exc:
            raise BackendError(f"{self.name} via {self.tcti!r}: {exc}") from exc
        finally:
            esapi.close()
            tcti.close()

    def _handle(self, esapi: Any, *, create: bool) -> Any:
        from tpm2_pytss.constants import TPM2_ALG, TPM2_CAP, TPM2_NT, TPMA_NV
        from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC

        _, data = esapi.get_capability(TPM2_CAP.HANDLES, self.nv_index, 1)
        if self.nv_index in list(data.data.handles):
            handle = esapi.tr_from_tpmpublic(self.nv_index)
            public, _ = esapi.nv_read_public(handle)
            attrs = int(public.nvPublic.attributes)
            if (attrs & TPMA_NV.TPM2_NT_MASK) >> TPMA_NV.TPM2_NT_SHIFT != TPM2_NT.COUNTER:
                raise StateStoreError(f"TPM NV index {self.nv_index:#010x} is not a counter")
            return handle, bool(attrs & TPMA_NV.WRITTEN)
        if not create:
            return None, False
        attrs = (
            TPMA_NV.OWNERWRITE
            | TPMA_NV.OWNERREAD
            | TPMA_NV.AUTHREAD
            | TPMA_NV.NO_DA
            | (TPM2_NT.COUNTER << TPMA_NV.TPM2_NT_SHIFT)
        )
        public = TPM2B_NV_PUBLIC(
            nvPublic=TPMS_NV_PUBLIC(
                nvIndex=self.nv_index, nameAlg=TPM2_ALG.SHA256, attributes=attrs, dataSize=8
            )
        )
        return esapi.nv_define_space(None, public), False

    def read(self) -> int | None:
        """The counter's value, or None when it is undefined or was never incremented."""
        with self._esapi() as esapi:
            handle, written = self._handle(esapi, create=False)
            if handle is None or not written:
                return None
            return int.from_bytes(bytes(esapi.nv_read(handle, 8)), "big")

    def increment(self) -> int:
        """Define the counter if needed, increment it and return the new value."""
        from tpm2_pytss.constants import ESYS_TR

        with self._esapi() as esapi:
            handle, _ = self._handle(esapi, create=True)
            esapi.nv_increment(handle, ESYS_TR.OWNER)
            return int.from_bytes(bytes(esapi.nv_read(handle, 8)), "big")


def counter_from_env() -> TpmNvCounter | None:
    """The TPM counter named by ``$EDGEGUARD_TPM`` (a TCTI), or None when it is unset.

    ``$EDGEGUARD_TPM_NV_INDEX`` (hex or decimal) overrides the NV index.

    Raises:
        UsageError: The NV index is not a number.
    """
    tcti = os.environ.get("EDGEGUARD_TPM")
    if not tcti:
        return None
    raw = os.environ.get("EDGEGUARD_TPM_NV_INDEX")
    if not raw:
        return TpmNvCounter(tcti)
    try:
        index = int(raw, 0)
    except ValueError as exc:
        raise UsageError(f"EDGEGUARD_TPM_NV_INDEX={raw!r} is not a number") from exc
    return TpmNvCounter(tcti, nv_index=index)

"""Tamper-evident, append-only event log: hash-chained JSON lines with signed checkpoints.

Layer: :mod:`edgeguard.guard`. This is the one guard module that does file
I/O (the log *is* a file); it depends only on ``cryptography``.

Format (normative text in ``docs/eventlog.md``): one record per line, each
line the canonical JSON encoding (sorted keys, no spaces, ASCII, no NaN) of
``{"seq", "time", "kind", "data", "prev", "hash"}`` where ``hash`` is the
SHA-256 of the canonical encoding of the other five fields and ``prev`` is the
previous record's ``hash`` (64 zeros for record 0). Record 0 is ``log_open``
naming the format, a random log id and the signing key's id. Every
``checkpoint_every`` records, and on :meth:`EventLog.close`, a
``checkpoint`` record carries an ECDSA P-256 / SHA-256 signature by the device
key over (log id, sequence number, chain head). A log closed cleanly ends with
a checkpoint whose ``final`` is true. Lines are read one at a time with a bounded
length, and their nesting is bounded before a JSON parser sees them (:class:`LogLimits`).

Verification has two failure outcomes: :class:`~edgeguard.errors.IntegrityError`
(exit 4) for any edit, deletion, insertion, reordering or foreign key, and, only
when a clean end is required, :class:`~edgeguard.errors.UncleanLogError`
(exit 13) for a log that verifies but lacks the final checkpoint (the writer
stopped without closing, or the tail was cut: the log alone cannot tell which).

Durability: in the default ``sync="always"`` mode :meth:`EventLog.append`
returns only after ``write`` + ``fsync``; a process killed at any instant
loses no acknowledged record, and a power loss none either (as far as the
storage honours fsync). ``sync="batch"`` fsyncs every ``batch_records``
records or ``batch_interval_s`` seconds (checked at each append) and at every
checkpoint: acknowledged records survive a process kill (they are in the
kernel), but a power loss or kernel crash may lose the records appended since
the last fsync.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import math
import os
import re
import secrets
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeguard.errors import (
    FileSystemError,
    IntegrityError,
    LogRolledBackError,
    StateStoreError,
    UncleanLogError,
    UsageError,
)

if TYPE_CHECKING:
    from edgeguard.guard.loganchor import AnchorState, LogAnchor

__all__ = [
    "DEFAULT_LIMITS",
    "FORMAT",
    "GENESIS_PREV",
    "EventLog",
    "LogLimits",
    "LogReport",
    "canonical_json",
    "key_id",
    "verify",
]

FORMAT = "edgeguard-eventlog/1"
GENESIS_PREV = "0" * 64
_SIG_CONTEXT = b"edgeguard-eventlog/1 checkpoint\x00"
_RECORD_KEYS = frozenset({"seq", "time", "kind", "data", "prev", "hash"})
_OPEN_KEYS = frozenset({"format", "log_id", "key_id", "checkpoint_every"})
_RESUME_KEYS = frozenset({"key_id", "previous_clean", "torn_bytes_dropped"})
_LOG_ID = re.compile(r"[0-9a-f]{32}")
# A JSON string (escapes included) and the bracket characters outside strings.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


@dataclass(frozen=True)
class LogLimits:
    """Hard limits on a log line, checked before it is parsed (one place, not literals).

    Attributes:
        max_line_bytes: Longest line, its line feed included. The writer refuses a
            longer record; the verifier stops reading a line at this length.
        max_depth: Deepest nesting of arrays and objects in a record, the record
            object itself counting 1 (``{"data":{"v":[1]}}`` is 3).
    """

    max_line_bytes: int = 1 << 20
    max_depth: int = 64


DEFAULT_LIMITS = LogLimits()


def _too_deep(text: bytes, max_depth: int) -> bool:
    """Whether JSON ``text`` nests arrays/objects deeper than ``max_depth``.

    A scan of the bytes (strings skipped), so it costs no recursion: a line of
    100 000 ``[`` is refused here instead of exhausting the parser's stack.
    """
    if text.count(b"[") + text.count(b"{") <= max_depth:
        return False
    depth = 0
    for m in _BRACKET.finditer(_JSON_STRING.sub(b"", text)):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1
    return False


def canonical_json(obj: Any) -> bytes:
    """The one canonical JSON encoding used for hashing and storage.

    Raises:
        UsageError: ``obj`` holds NaN/inf or a type JSON cannot encode.
    """
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise UsageError(f"event data is not JSON-encodable: {exc}") from exc


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 (hex) of the key's DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _record_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _checkpoint_message(log_id: str, seq: int, head: str, final: bool) -> bytes:
    return _SIG_CONTEXT + canonical_json(
        {"log_id": log_id, "seq": seq, "head": head, "final": final}
    )


@dataclass(frozen=True)
class LogReport:
    """What verification found.

    Attributes:
        path: The log file.
        log_id: The log's random id.
        records: Complete records (including checkpoints).
        checkpoints: Signed checkpoints verified.
        last_seq: Sequence number of the last complete record (-1 if none).
        last_checkpoint_seq: Sequence number of the last checkpoint (-1 if none).
        clean: The log ends with a final checkpoint (closed cleanly).
        torn_tail_bytes: Bytes of a partially written last line (a torn write), ignored.
        unsigned_tail: Records after the last checkpoint (chained but not yet signed).
        sessions: Number of ``log_open`` / ``log_resume`` sessions.
        head: ``hash`` of the last complete record (the chain head).
        anchor: The anchor file the log was checked against, or None (the log
            alone was checked, so a cut back to an earlier session's final
            checkpoint could not be seen).
        anchor_seq: The anchor's checkpoint (-1 without an anchor).
        counter_checked: The anchor was checked against a monotonic (TPM) counter.
        kinds: Count of records per kind.
    """

    path: str
    log_id: str
    records: int
    checkpoints: int
    last_seq: int
    last_checkpoint_seq: int
    clean: bool
    torn_tail_bytes: int
    unsigned_tail: int
    sessions: int
    head: str = GENESIS_PREV
    anchor: str | None = None
    anchor_seq: int = -1
    counter_checked: bool = False
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """``"clean"`` or ``"writer stopped without closing after record N"``.

        N is the sequence number of the last complete record.
        """
        if self.clean:
            return "clean"
        return f"writer stopped without closing after record {self.last_seq}"

    def raise_if_unclean(self) -> None:
        """Raise :class:`UncleanLogError` unless the log ends with a final checkpoint.

        The message names the last complete record, the records after the last
        signed checkpoint and the torn bytes ignored.
        """
        if self.clean:
            return
        if self.last_checkpoint_seq < 0:
            detail = f"{self.unsigned_tail} record(s), no signed checkpoint"
        else:
            detail = (
                f"{self.unsigned_tail} record(s) after the last signed checkpoint "
                f"(record {self.last_checkpoint_seq})"
            )
        if self.torn_tail_bytes:
            detail += f"; a torn last line of {self.torn_tail_bytes} byte(s) ignored"
        raise UncleanLogError(
            f"event log {self.path}: {self.status}; {detail}",
            hint="the writer crashed, lost power or was killed, or the tail was cut, which "
            "the log alone cannot tell apart; --allow-unclean accepts it",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for ``--json``)."""
        return {
            "path": self.path,
            "log_id": self.log_id,
            "records": self.records,
            "checkpoints": self.checkpoints,
            "last_seq": self.last_seq,
            "last_checkpoint_seq": self.last_checkpoint_seq,
            "clean": self.clean,
            "status": self.status,
            "torn_tail_bytes": self.torn_tail_bytes,
            "unsigned_tail": self.unsigned_tail,
            "sessions": self.sessions,
            "head": self.head,
            "anchor": self.anchor,
            "anchor_seq": self.anchor_seq,
            "counter_checked": self.counter_checked,
            "kinds": dict(sorted(self.kinds.items())),
        }


def _bad(n: int, what: str) -> IntegrityError:
    return IntegrityError(
        f"event log: record {n} (line {n + 1}): {what}",
        hint="records were edited, deleted, inserted or reordered, or another key signed",
    )


def _is_count(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _open_ok(data: dict[str, Any]) -> bool:
    """``log_open`` data holds exactly its four members, well typed."""
    return (
        set(data) == _OPEN_KEYS
        and isinstance(data["log_id"], str)
        and _LOG_ID.fullmatch(data["log_id"]) is not None
        and isinstance(data["key_id"], str)
        and _is_count(data["checkpoint_every"], 1)
    )


def _resume_ok(data: dict[str, Any]) -> bool:
    """``log_resume`` data holds exactly its three members, well typed."""
    return (
        set(data) == _RESUME_KEYS
        and isinstance(data["key_id"], str)
        and isinstance(data["previous_clean"], bool)
        and _is_count(data["torn_bytes_dropped"], 0)
    )


def _parse_line(line: bytes, n: int, limits: LogLimits) -> dict[str, Any]:
    """One complete line (without its line feed) as a record of the right shape.

    The depth is checked before the parser sees the line, so no line can
    exhaust its stack; the reader bounded the length.
    """
    if _too_deep(line, limits.max_depth):
        raise _bad(n, f"nested deeper than {limits.max_depth} levels")
    try:
        rec = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting recurses
        raise _bad(n, "not valid JSON") from exc
    if not isinstance(rec, dict) or set(rec) != _RECORD_KEYS:
        raise _bad(n, "wrong set of fields")
    try:
        again = canonical_json(rec)
    except UsageError as exc:
        raise _bad(n, "not canonical JSON") from exc
    if again != line:
        raise _bad(n, "not in canonical form")
    if (
        isinstance(rec["seq"], bool)
        or not isinstance(rec["seq"], int)
        or not isinstance(rec["kind"], str)
        or not isinstance(rec["data"], dict)
        or not isinstance(rec["prev"], str)
        or not isinstance(rec["hash"], str)
        or isinstance(rec["time"], bool)
        or not isinstance(rec["time"], (int, float))
    ):
        raise _bad(n, "field of the wrong type")
    return rec


def _open_log(path: Path, flags: int, *, what: str) -> int:
    """Open the log file itself, never a symbolic link or anything but a regular file.

    ``O_NOFOLLOW`` refuses a link at the log's name (which could point the
    writer at another file, or create one elsewhere); ``O_NONBLOCK`` keeps a
    FIFO planted there from blocking the open, and the ``fstat`` refuses it.

    Raises:
        FileSystemError: The name is a symbolic link or not a regular file.
        UsageError: The file cannot be opened (missing, no permission).
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileSystemError(
                f"event log {path} is a symbolic link; refusing to follow it",
                hint="the log must be a regular file; a link there is tampering or a mistake",
            ) from exc
        raise UsageError(f"cannot {what} event log {path}: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileSystemError(f"event log {path} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def verify(
    path: str | os.PathLike[str],
    public_key: ec.EllipticCurvePublicKey,
    *,
    require_clean: bool = False,
    limits: LogLimits = DEFAULT_LIMITS,
    anchor: LogAnchor | None = None,
    require_anchor: bool = False,
) -> LogReport:
    """Verify an event log end to end, and against its anchor when one is given.

    Checks, for every complete line: length and nesting within ``limits``,
    canonical encoding, consecutive ``seq`` from 0, ``prev`` equal to the
    previous record's ``hash``, ``hash`` equal to the digest of the record, the
    genesis naming this format and the key, and every checkpoint's signature
    over (log id, seq, head). A final line without a newline is a torn write
    (reported, not an error). The file is read one line at a time.

    Args:
        path: The log file.
        public_key: The device's P-256 public key.
        require_clean: Raise :class:`UncleanLogError` unless the log ends with a
            final checkpoint.
        limits: Longest line and deepest nesting accepted.
        anchor: The log's anchor (state directory, optional TPM counter): the
            log must reach the anchor's checkpoint, and hold it at its ``seq``.
        require_anchor: A missing anchor file is an error, not "unchecked".

    Returns:
        The report; ``report.clean`` is False when the writer stopped without
        closing ("writer stopped without closing after record N").

    Raises:
        IntegrityError: Any edit, deletion, insertion, reordering, wrong key, or
            a line that is too long, too deeply nested or not a record; the
            message names the record and its line. Checked before the end, so
            an edited log whose writer also crashed raises this, not
            ``UncleanLogError``.
        UncleanLogError: With ``require_clean``, the log verifies but does not
            end with a final checkpoint (crash, power loss, kill, or a tail cut
            at a record boundary, which the log alone cannot tell apart).
        LogRolledBackError: The log is behind its anchor (cut back, rolled back,
            replaced), or the anchor behind the TPM counter (exit 4 like any
            integrity error, with its own message).
        UsageError: The file cannot be read.
        FileSystemError: ``path`` is a symbolic link or not a regular file.
        StateStoreError: The anchor cannot be read safely, or is required and missing.
    """
    p = Path(path)
    state = None
    if anchor is not None:
        state = anchor.load(public_key, required=require_anchor)
    fd = _open_log(p, os.O_RDONLY, what="read")
    with os.fdopen(fd, "rb") as f:
        report = _verify_stream(f, str(p), public_key, limits, anchor=anchor, state=state)
    if require_clean:
        report.raise_if_unclean()
    return report


def _behind(name: str, anchor: LogAnchor, what: str) -> LogRolledBackError:
    return LogRolledBackError(
        f"event log {name} is behind its anchor {anchor.path}: {what}",
        hint="later records, sessions included, were removed or the log replaced; "
        "the log alone cannot show this",
    )


def _verify_stream(
    f: IO[bytes],
    name: str,
    public_key: ec.EllipticCurvePublicKey,
    limits: LogLimits,
    *,
    anchor: LogAnchor | None = None,
    state: AnchorState | None = None,
) -> LogReport:
    """The rules of :func:`verify` over an open file, read from its current offset."""
    kid = key_id(public_key)
    prev = GENESIS_PREV
    log_id = ""
    checkpoints = 0
    last_cp = -1
    sessions = 0
    clean = False
    kinds: Counter[str] = Counter()
    cap = limits.max_line_bytes
    n = 0
    while True:
        try:
            line = f.readline(cap + 1)
        except OSError as exc:
            raise UsageError(f"cannot read event log {name}: {exc.strerror}") from exc
        if len(line) > cap:  # its line feed included, like the writer counts
            raise _bad(n, f"longer than {cap} bytes")
        if not line.endswith(b"\n"):
            torn = len(line)  # 0 when the file ends with a line feed
            break
        rec = _parse_line(line[:-1], n, limits)
        if rec["seq"] != n:
            raise _bad(n, f"sequence number {rec['seq']} where {n} was expected")
        if rec["prev"] != prev:
            raise _bad(n, "does not chain to the previous record")
        body = {k: rec[k] for k in ("seq", "time", "kind", "data", "prev")}
        if rec["hash"] != _record_hash(body):
            raise _bad(n, "hash does not match the content")
        kind = rec["kind"]
        data = rec["data"]
        if n == 0:
            if kind != "log_open" or data.get("format") != FORMAT:
                raise _bad(0, f"first record must be log_open of {FORMAT}")
            if not _open_ok(data):
                raise _bad(0, "malformed log_open")
            if data["key_id"] != kid:
                raise _bad(0, "log was opened for a different key")
            log_id = data["log_id"]
            sessions = 1
            if anchor is not None and state is not None and log_id != state.log_id:
                raise _behind(name, anchor, f"it is log {log_id}, the anchor names {state.log_id}")
        elif kind == "log_open":
            raise _bad(n, "log_open after the first record")
        elif kind == "log_resume":
            if not _resume_ok(data):
                raise _bad(n, "malformed log_resume")
            if data["key_id"] != kid:
                raise _bad(n, "log resumed with a different key")
            sessions += 1
        elif clean:
            raise _bad(n, "record after a final checkpoint without log_resume")
        if kind == "checkpoint":
            sig_b64 = data.get("sig")
            final = data.get("final")
            if (
                set(data) != {"head", "final", "sig"}
                or data.get("head") != rec["prev"]
                or not isinstance(final, bool)
                or not isinstance(sig_b64, str)
            ):
                raise _bad(n, "malformed checkpoint")
            try:
                sig = base64.b64decode(sig_b64, validate=True)
                public_key.verify(
                    sig,
                    _checkpoint_message(log_id, n, rec["prev"], final),
                    ec.ECDSA(hashes.SHA256()),
                )
            except (InvalidSignature, ValueError) as exc:
                raise _bad(n, "checkpoint signature does not verify") from exc
            checkpoints += 1
            last_cp = n
            clean = final
        else:
            clean = False
        if (
            anchor is not None
            and state is not None
            and n == state.seq
            and (kind != "checkpoint" or rec["prev"] != state.head)
        ):
            raise _behind(name, anchor, f"record {n} is not the signed checkpoint the anchor names")
        kinds[kind] += 1
        prev = rec["hash"]
        n += 1
    if anchor is not None and state is not None and n - 1 < state.seq:
        raise _behind(
            name,
            anchor,
            f"the log ends at record {n - 1}, but the anchor records a signed checkpoint "
            f"at record {state.seq}: it was cut back or rolled back",
        )
    if n == 0:
        raise IntegrityError(f"event log {name}: no complete record (empty or truncated)")
    clean = clean and torn == 0
    last = n - 1
    return LogReport(
        path=name,
        log_id=log_id,
        records=n,
        checkpoints=checkpoints,
        last_seq=last,
        last_checkpoint_seq=last_cp,
        clean=clean,
        torn_tail_bytes=torn,
        unsigned_tail=last - last_cp,
        sessions=sessions,
        head=prev,
        anchor=str(anchor.path) if anchor is not None and state is not None else None,
        anchor_seq=state.seq if state is not None else -1,
        counter_checked=anchor is not None and anchor.counter is not None,
        kinds=dict(kinds),
    )


class EventLog:
    """Appender for the event log (thread-safe).

    Opening an existing file verifies it with the signing key's public half,
    cuts a torn last line (a write interrupted by a crash), and continues the
    chain with a ``log_resume`` record noting whether the previous session
    ended cleanly.

    A write or fsync that fails (disk full, I/O error, an exception in the
    middle of a line) leaves the file in an unknown state, possibly ending in
    a torn line. The appender then refuses further records, and
    :meth:`close` only closes the file: the log reads as unclean (exit 13),
    never as edited, and reopening it cuts the torn line and resumes.

    Args:
        path: Log file; created (mode 0600) when missing.
        signing_key: The device's P-256 private key, signs checkpoints.
        checkpoint_every: Records between signed checkpoints.
        sync: ``"always"`` (fsync every record) or ``"batch"``.
        batch_records: In batch mode, fsync after this many records.
        batch_interval_s: In batch mode, fsync when this much time passed since
            the last fsync (checked at each append).
        clock: Wall clock for record timestamps (only informational).
        limits: Longest line and deepest nesting; a record beyond them is
            refused, so the writer never writes what the verifier would refuse.
        anchor: Where the latest signed checkpoint is anchored outside the log
            (:class:`~edgeguard.guard.loganchor.LogAnchor`: the state directory,
            and a TPM counter if configured). Opening checks the log against it
            and every checkpoint advances it.

    Raises:
        UsageError: Bad arguments or the file cannot be opened.
        LogRolledBackError: The log is behind its anchor (cut back, replaced,
            deleted), or the anchor behind the TPM counter.
        StateStoreError: The anchor cannot be read or written safely.
        IntegrityError: The existing file does not verify with this key.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        signing_key: ec.EllipticCurvePrivateKey,
        checkpoint_every: int = 64,
        sync: str = "always",
        batch_records: int = 32,
        batch_interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        limits: LogLimits = DEFAULT_LIMITS,
        anchor: LogAnchor | None = None,
    ) -> None:
        if not isinstance(signing_key, ec.EllipticCurvePrivateKey) or not isinstance(
            signing_key.curve, ec.SECP256R1
        ):
            raise UsageError("event log signing key must be an ECDSA P-256 private key")
        if checkpoint_every < 1:
            raise UsageError("checkpoint_every must be >= 1")
        if sync not in ("always", "batch"):
            raise UsageError("sync must be 'always' or 'batch'")
        if batch_records < 1 or not (math.isfinite(batch_interval_s) and batch_interval_s >= 0):
            raise UsageError("batch_records must be >= 1 and batch_interval_s >= 0")
        self._path = Path(path)
        self._key = signing_key
        self._kid = key_id(signing_key.public_key())
        self._every = checkpoint_every
        self._sync = sync
        self._batch_records = batch_records
        self._batch_interval = batch_interval_s
        self._clock = clock
        self._limits = limits
        self._anchor = anchor
        self._lock = threading.Lock()
        self._closed = False
        self._failed = False
        self._pending = 0
        self._last_sync = time.monotonic()
        self._since_cp = 0
        self._fd = _open_log(self._path, os.O_RDWR | os.O_CREAT | os.O_APPEND, what="open")
        try:
            self._start(signing_key.public_key())
        except BaseException:
            os.close(self._fd)
            raise

    def _start(self, public_key: ec.EllipticCurvePublicKey) -> None:
        """Verify what the file holds through the open descriptor, then open or resume."""
        state = None
        anchor = self._anchor
        if anchor is not None:
            state = anchor.load(public_key)
            if state is not None and state.counter is not None and anchor.counter is None:
                raise StateStoreError(
                    f"event-log anchor {anchor.path} is bound to a TPM counter, "
                    "but no counter was given",
                    hint="set EDGEGUARD_TPM to the device's TPM (its TCTI)",
                )
        size = os.fstat(self._fd).st_size
        report: LogReport | None = None
        if size > 0:
            with os.fdopen(os.dup(self._fd), "rb") as f:
                report = _verify_stream(
                    f, str(self._path), public_key, self._limits, anchor=anchor, state=state
                )
        elif anchor is not None and state is not None:
            raise _behind(
                str(self._path),
                anchor,
                f"the log is empty, but the anchor records a signed checkpoint at record "
                f"{state.seq} of log {state.log_id}: it was deleted or cut back",
            )
        if anchor is not None:
            anchor.catch_up(state)
        if report is None:
            self._fsync_dir()
            self._log_id = secrets.token_hex(16)
            self._seq = 0
            self._prev = GENESIS_PREV
            self._write_record(
                "log_open",
                {
                    "format": FORMAT,
                    "log_id": self._log_id,
                    "key_id": self._kid,
                    "checkpoint_every": self._every,
                },
                force=True,
            )
        else:
            if report.torn_tail_bytes:
                os.ftruncate(self._fd, size - report.torn_tail_bytes)
                os.fsync(self._fd)
            self._log_id = report.log_id
            self._seq = report.last_seq + 1
            self._prev = report.head
            self._write_record(
                "log_resume",
                {
                    "key_id": self._kid,
                    "previous_clean": report.clean,
                    "torn_bytes_dropped": report.torn_tail_bytes,
                },
                force=True,
            )

    # -- public -------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The log file."""
        return self._path

    @property
    def log_id(self) -> str:
        """Random id of this log (stable across sessions)."""
        return self._log_id

    @property
    def next_seq(self) -> int:
        """Sequence number the next record will get."""
        return self._seq

    def append(self, kind: str, data: Mapping[str, Any] | None = None) -> int:
        """Append one record; returns its sequence number once it is written (see sync).

        Raises:
            UsageError: Log closed, reserved kind, data not JSON-encodable, a
                record longer or more deeply nested than the limits, or the log
                unusable after a failed write.
            FileSystemError: The write or fsync failed (disk full, I/O error):
                the record is not acknowledged and the log refuses every
                further record until it is reopened.
        """
        if (
            not isinstance(kind, str)
            or not kind
            or kind in ("log_open", "log_resume", "checkpoint")
        ):
            raise UsageError(f"event kind {kind!r} is empty or reserved")
        with self._lock:
            self._check_open()
            seq = self._write_record(kind, dict(data or {}), force=False)
            self._since_cp += 1
            if self._since_cp >= self._every:
                self._checkpoint(final=False)
            return seq

    def checkpoint(self) -> int:
        """Write a signed (non-final) checkpoint now; returns its sequence number."""
        with self._lock:
            self._check_open()
            return self._checkpoint(final=False)

    def sync(self) -> None:
        """fsync any batched records now.

        Raises:
            FileSystemError: The fsync failed.
        """
        with self._lock:
            self._check_open()
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise FileSystemError(
                    f"cannot sync event log {self._path}: {exc.strerror or exc}"
                ) from exc
            self._pending = 0
            self._last_sync = time.monotonic()

    def close(self) -> None:
        """Write the final checkpoint, fsync and close the file.

        Idempotent and safe in a ``finally``: the first call writes the final
        checkpoint (once) and closes the file, every later call does nothing.
        After a failed write no checkpoint is written, so a torn line is never
        followed by a record. The file is closed even when writing the final
        checkpoint fails; that error (:class:`FileSystemError`) is raised by this
        call only.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if not self._failed:
                    self._checkpoint(final=True)
            finally:
                os.close(self._fd)

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("event log is closed")
        if self._failed:
            raise UsageError(
                "event log is unusable after a failed write",
                hint="close it and open it again; reopening cuts a torn line and resumes",
            )

    def _checkpoint(self, *, final: bool) -> int:
        seq = self._seq
        head = self._prev
        msg = _checkpoint_message(self._log_id, seq, head, final)
        sig = self._key.sign(msg, ec.ECDSA(hashes.SHA256()))
        out = self._write_record(
            "checkpoint",
            {
                "head": head,
                "final": final,
                "sig": base64.b64encode(sig).decode("ascii"),
            },
            force=True,
        )
        self._since_cp = 0
        if self._anchor is not None:
            # Only now: the checkpoint is durable (fsynced), so the anchor never
            # names a checkpoint a power loss could take from the log.
            self._anchor.advance(self._key, log_id=self._log_id, seq=out, head=head)
        return out

    def _write_record(self, kind: str, data: dict[str, Any], *, force: bool) -> int:
        seq = self._seq
        body = {
            "seq": seq,
            "time": float(self._clock()),
            "kind": kind,
            "data": data,
            "prev": self._prev,
        }
        enc = canonical_json(body)
        h = hashlib.sha256(enc).hexdigest()
        line = canonical_json({**body, "hash": h}) + b"\n"
        if len(line) > self._limits.max_line_bytes:
            raise UsageError(
                f"event record too large ({len(line)} bytes, at most "
                f"{self._limits.max_line_bytes} with its line feed)"
            )
        if _too_deep(line, self._limits.max_depth):
            raise UsageError(f"event data nested deeper than {self._limits.max_depth} levels")
        view = memoryview(line)
        try:
            while view:
                written = os.write(self._fd, view)
                if written <= 0:  # never loop on a write that makes no progress
                    raise OSError(errno.EIO, "the write made no progress")
                view = view[written:]
            self._pending += 1
            now = time.monotonic()
            if (
                force
                or self._sync == "always"
                or self._pending >= self._batch_records
                or now - self._last_sync >= self._batch_interval
            ):
                os.fsync(self._fd)
                self._pending = 0
                self._last_sync = now
        except BaseException as exc:
            # The line may be partly written: appending anything after it would
            # turn a torn write into what looks like an edit.
            self._failed = True
            if isinstance(exc, OSError):
                raise FileSystemError(
                    f"cannot write event log {self._path}: {exc.strerror or exc}",
                    hint="the record was not written; the log refuses further records "
                    "until it is reopened",
                ) from exc
            raise
        self._seq = seq + 1
        self._prev = h
        return seq

    def _fsync_dir(self) -> None:
        try:
            dfd = os.open(self._path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)

"""Event log: hash chain, signed checkpoints, tamper detection, crash safety."""

from __future__ import annotations

import errno
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeguard.errors import FileSystemError, IntegrityError, UncleanLogError, UsageError
from edgeguard.guard.eventlog import GENESIS_PREV, EventLog, canonical_json, verify


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, key: ec.EllipticCurvePrivateKey, n: int, every: int = 4) -> None:
    with EventLog(path, signing_key=key, checkpoint_every=every) as log:
        for i in range(n):
            log.append("fallback", {"frame": i, "source": "safe_default"})


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_clean_log_verifies(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    p = tmp_path / "ev.log"
    _write(p, key, 10, every=4)
    rep = verify(p, key.public_key(), require_clean=True)
    assert rep.clean and rep.status == "clean"
    # 1 open + 10 records + checkpoints after every 4 appended records (2) + final
    assert rep.records == 14
    assert rep.checkpoints == 3
    assert rep.kinds["fallback"] == 10
    assert rep.unsigned_tail == 0
    first = json.loads(_lines(p)[0])
    assert first["kind"] == "log_open" and first["prev"] == GENESIS_PREV and first["seq"] == 0
    assert oct(p.stat().st_mode & 0o777) == "0o600"


def test_record_hash_is_sha256_of_canonical_body(tmp_path: Path, key) -> None:
    import hashlib

    p = tmp_path / "ev.log"
    _write(p, key, 1)
    recs = [json.loads(x) for x in _lines(p)]
    for prev, rec in itertools.pairwise(recs):
        assert rec["prev"] == prev["hash"]
    body = {k: recs[1][k] for k in ("seq", "time", "kind", "data", "prev")}
    assert recs[1]["hash"] == hashlib.sha256(canonical_json(body)).hexdigest()


@pytest.mark.parametrize("victim", [1, 3, 5, 8])
def test_edit_detected_with_record_number(tmp_path: Path, key, victim: int) -> None:
    p = tmp_path / "ev.log"
    _write(p, key, 8)
    lines = _lines(p)
    rec = json.loads(lines[victim])
    rec["data"]["tampered"] = True
    lines[victim] = canonical_json(rec) + b"\n"
    p.write_bytes(b"".join(lines))
    with pytest.raises(IntegrityError, match=f"record {victim}"):
        verify(p, key.public_key())


def test_edit_with_recomputed_hashes_caught_by_signature(tmp_path: Path, key) -> None:
    """An attacker without the key rewrites a record and re-chains everything after it."""
    import hashlib

    p = tmp_path / "ev.log"
    _write(p, key, 8)
    recs = [json.loads(x) for x in _lines(p)]
    recs[2]["data"]["source"] = "ensemble"
    for i in range(2, len(recs)):
        if i > 2:
            recs[i]["prev"] = recs[i - 1]["hash"]
            if recs[i]["kind"] == "checkpoint":
                recs[i]["data"]["head"] = recs[i]["prev"]
        body = {k: recs[i][k] for k in ("seq", "time", "kind", "data", "prev")}
        recs[i]["hash"] = hashlib.sha256(canonical_json(body)).hexdigest()
    p.write_bytes(b"".join(canonical_json(r) + b"\n" for r in recs))
    with pytest.raises(IntegrityError, match="signature"):
        verify(p, key.public_key())


def test_deletion_and_reordering_detected(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    _write(p, key, 8)
    lines = _lines(p)
    p.write_bytes(b"".join(lines[:3] + lines[4:]))
    with pytest.raises(IntegrityError, match="record 3"):
        verify(p, key.public_key())
    swapped = lines[:]
    swapped[2], swapped[3] = swapped[3], swapped[2]
    p.write_bytes(b"".join(swapped))
    with pytest.raises(IntegrityError, match="record 2"):
        verify(p, key.public_key())


def test_truncation_reported_as_unclean_end(tmp_path: Path, key) -> None:
    """A cut at a record boundary reads as a writer that stopped there (the log cannot tell)."""
    p = tmp_path / "ev.log"
    _write(p, key, 10, every=4)
    lines = _lines(p)
    p.write_bytes(b"".join(lines[:9]))
    rep = verify(p, key.public_key())
    assert not rep.clean and rep.status == "writer stopped without closing after record 8"
    with pytest.raises(
        UncleanLogError,
        match=r"after record 8; 3 record\(s\) after the last signed checkpoint \(record 5\)$",
    ):
        verify(p, key.public_key(), require_clean=True)


_KILLED = r"""
import os, sys
from cryptography.hazmat.primitives import serialization
from edgeguard.guard.eventlog import EventLog
key = serialization.load_pem_private_key(open(sys.argv[2], "rb").read(), None)
log = EventLog(sys.argv[1], signing_key=key, checkpoint_every=4)
for i in range(6):
    log.append("frame", {"i": i})
os._exit(0)  # the writer dies without close(): no final checkpoint, no finally
"""


def _pem(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    pem = tmp_path / "k.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem


def test_killed_writer_is_unclean_not_tampering(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    pem = _pem(tmp_path, key)
    subprocess.run([sys.executable, "-c", _KILLED, str(p), str(pem)], check=True, timeout=60)
    # 0 log_open, 1-4 frames, 5 checkpoint, 6-7 frames
    rep = verify(p, key.public_key())
    assert not rep.clean and rep.last_seq == 7 and rep.last_checkpoint_seq == 5
    assert rep.status == "writer stopped without closing after record 7"
    assert rep.to_dict()["status"] == rep.status
    with pytest.raises(UncleanLogError) as ei:
        verify(p, key.public_key(), require_clean=True)
    assert not isinstance(ei.value, IntegrityError) and ei.value.exit_code == 13
    assert str(ei.value).endswith(
        "writer stopped without closing after record 7; "
        "2 record(s) after the last signed checkpoint (record 5)"
    )
    # an edit is still tampering, also in a log whose writer was killed
    lines = _lines(p)
    p.write_bytes(b"".join([*lines[:6], lines[6].replace(b'"i":4', b'"i":5'), *lines[7:]]))
    with pytest.raises(IntegrityError, match="record 6"):
        verify(p, key.public_key(), require_clean=True)


def test_torn_write_is_not_tampering(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    _write(p, key, 5)
    whole = p.read_bytes()
    lines = _lines(p)
    p.write_bytes(whole + lines[2][:37])  # a crash in the middle of a write
    rep = verify(p, key.public_key())
    assert rep.torn_tail_bytes == 37 and not rep.clean
    assert rep.records == len(lines)


def test_torn_last_line_is_unclean_not_tampering(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    log = EventLog(p, signing_key=key, checkpoint_every=4)
    for i in range(5):
        log.append("fallback", {"frame": i})
    os.close(log._fd)  # the writer dies in the middle of its next write
    torn = b'{"data":{"frame":5},"hash":"9c'
    with open(p, "ab") as f:
        f.write(torn)
    # 0 log_open, 1-4 frames, 5 checkpoint, 6 frame, then the torn bytes
    with pytest.raises(UncleanLogError) as ei:
        verify(p, key.public_key(), require_clean=True)
    assert str(ei.value).endswith(
        "writer stopped without closing after record 6; 1 record(s) after the last "
        f"signed checkpoint (record 5); a torn last line of {len(torn)} byte(s) ignored"
    )


def test_garbage_complete_last_line_is_tampering(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    _write(p, key, 3)
    p.write_bytes(p.read_bytes() + b'{"seq":99}\n')
    with pytest.raises(IntegrityError):
        verify(p, key.public_key())


def test_non_canonical_encoding_rejected(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    _write(p, key, 2)
    lines = _lines(p)
    rec = json.loads(lines[1])
    lines[1] = json.dumps(rec, indent=1).replace("\n", "").encode() + b"\n"
    p.write_bytes(b"".join(lines))
    with pytest.raises(IntegrityError, match="record 1"):
        verify(p, key.public_key())


def test_wrong_key_rejected(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    _write(p, key, 2)
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(IntegrityError, match="different key"):
        verify(p, other.public_key())
    with pytest.raises(IntegrityError):
        EventLog(p, signing_key=other)


def test_resume_after_crash_continues_chain(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    log = EventLog(p, signing_key=key, checkpoint_every=100)
    for i in range(3):
        log.append("x", {"i": i})
    # simulated crash: no close, plus a torn write
    os.close(log._fd)
    with open(p, "ab") as f:
        f.write(b'{"seq":4,"ti')
    with EventLog(p, signing_key=key) as log2:
        log2.append("y", {})
    rep = verify(p, key.public_key(), require_clean=True)
    assert rep.sessions == 2 and rep.kinds["log_resume"] == 1
    resume = next(json.loads(x) for x in _lines(p) if b"log_resume" in x)
    assert resume["data"]["previous_clean"] is False
    assert resume["data"]["torn_bytes_dropped"] == 12


def test_reopen_clean_log(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    _write(p, key, 2)
    _write(p, key, 2)
    rep = verify(p, key.public_key(), require_clean=True)
    assert rep.sessions == 2


def test_refusals(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    with pytest.raises(UsageError):
        EventLog(p, signing_key=ec.generate_private_key(ec.SECP384R1()))
    log = EventLog(p, signing_key=key)
    with pytest.raises(UsageError, match="reserved"):
        log.append("checkpoint", {})
    with pytest.raises(UsageError, match="JSON"):
        log.append("x", {"v": float("nan")})
    log.close()
    with pytest.raises(UsageError, match="closed"):
        log.append("x", {})
    with pytest.raises(UsageError):
        verify(tmp_path / "missing.log", key.public_key())
    (tmp_path / "empty.log").write_bytes(b"")
    with pytest.raises(IntegrityError):
        verify(tmp_path / "empty.log", key.public_key())


def _finals(path: Path) -> int:
    return sum(
        1
        for rec in map(json.loads, _lines(path))
        if rec["kind"] == "checkpoint" and rec["data"]["final"]
    )


def test_close_twice_writes_one_final_checkpoint(tmp_path: Path, key, monkeypatch) -> None:
    p = tmp_path / "ev.log"
    log = EventLog(p, signing_key=key, checkpoint_every=100)
    log.append("x", {})
    log.close()
    log.close()
    assert _finals(p) == 1
    # The fsync of the final checkpoint fails: close() raises once, still closes the
    # file, and the close() in the caller's finally neither writes nor raises again.
    q = tmp_path / "ev2.log"
    log = EventLog(q, signing_key=key, checkpoint_every=100)
    log.append("x", {})
    fd = log._fd
    real_fsync = os.fsync

    def failing_fsync(n: int) -> None:
        if n == fd:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(n)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(FileSystemError, match="Input/output"):
        try:
            log.close()
        finally:
            log.close()
    monkeypatch.undo()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed
    assert _finals(q) == 1
    assert verify(q, key.public_key(), require_clean=True).kinds["checkpoint"] == 1


def test_close_in_finally_after_a_failed_write_leaves_an_unclean_log(
    tmp_path: Path, key, monkeypatch
) -> None:
    p = tmp_path / "ev.log"
    log = EventLog(p, signing_key=key, checkpoint_every=100)
    log.append("x", {"i": 0})
    fd = log._fd
    real_write = os.write

    def disk_full(n: int, data: bytes) -> int:
        if n == fd:  # 20 bytes of the line reach the file, then the disk is full
            real_write(n, bytes(data[:20]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(n, data)

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(FileSystemError, match="No space"):
        try:
            log.append("x", {"i": 1})
        finally:
            log.close()  # must not write a checkpoint after the torn line
    monkeypatch.undo()
    with pytest.raises(UsageError, match="closed"):
        log.append("x", {"i": 2})
    # unclean (torn write), not tampered
    with pytest.raises(UncleanLogError, match=r"after record 1; .* torn last line of 20 byte"):
        verify(p, key.public_key(), require_clean=True)
    # the device reopens the log: the fragment is cut and the chain resumes
    with EventLog(p, signing_key=key) as again:
        again.append("after_reboot", {})
    assert verify(p, key.public_key(), require_clean=True).sessions == 2


def test_failed_write_refuses_further_records(tmp_path: Path, key, monkeypatch) -> None:
    p = tmp_path / "ev.log"
    log = EventLog(p, signing_key=key, checkpoint_every=100)
    fd = log._fd
    real_write = os.write

    def torn(n: int, data: bytes) -> int:
        if n == fd:
            real_write(n, bytes(data[:9]))
            raise OSError(errno.EIO, "Input/output error")
        return real_write(n, data)

    monkeypatch.setattr(os, "write", torn)
    with pytest.raises(FileSystemError, match="Input/output error"):
        log.append("x", {"i": 0})
    monkeypatch.undo()
    with pytest.raises(UsageError, match="failed write"):
        log.append("x", {"i": 1})
    log.close()
    assert verify(p, key.public_key()).torn_tail_bytes == 9


def test_batch_mode_verifies(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    with EventLog(p, signing_key=key, sync="batch", batch_records=8, checkpoint_every=16) as log:
        for i in range(40):
            log.append("x", {"i": i})
    assert verify(p, key.public_key(), require_clean=True).kinds["x"] == 40


_CHILD = r"""
import sys
from cryptography.hazmat.primitives import serialization
from edgeguard.guard.eventlog import EventLog
key = serialization.load_pem_private_key(open(sys.argv[2], "rb").read(), None)
log = EventLog(sys.argv[1], signing_key=key, checkpoint_every=7, sync=sys.argv[3])
i = 0
while True:
    seq = log.append("frame", {"i": i, "pad": "x" * (i % 50)})
    sys.stdout.write(f"{seq}\n")
    sys.stdout.flush()
    i += 1
"""


@pytest.mark.parametrize("mode", ["always", "batch"])
def test_sigkill_loses_no_acknowledged_record(tmp_path: Path, key, mode: str) -> None:
    pem = tmp_path / "k.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    rng = random.Random(1234)
    for trial in range(3):
        log_path = tmp_path / f"kill{trial}.log"
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(log_path), str(pem), mode],
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # wait until it is appending
        assert first.strip().isdigit()
        time.sleep(rng.uniform(0.02, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        acked = [int(first)] + [int(x) for x in proc.stdout.read().split()]
        proc.stdout.close()
        rep = verify(log_path, key.public_key())
        assert not rep.clean
        seqs = {json.loads(x)["seq"] for x in log_path.read_bytes().splitlines()[: rep.records]}
        missing = [s for s in acked if s not in seqs]
        assert not missing, f"acknowledged records lost: {missing[:5]}"
        assert len(acked) > 1
        # the device reboots and goes on appending to the same log
        with EventLog(log_path, signing_key=key) as again:
            again.append("after_reboot", {})
        assert verify(log_path, key.public_key(), require_clean=True).sessions == 2


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"data":' + b"[" * 5_000 + b"]" * 5_000 + b"}",
    ],
    ids=["deep-array", "deep-object", "deep-inside-a-record"],
)
def test_deeply_nested_line_is_an_integrity_error_naming_the_line(
    tmp_path: Path, key, line: bytes
) -> None:
    """Nesting is bounded before parsing: no RecursionError, on verify and on reopen."""
    p = tmp_path / "ev.log"
    _write(p, key, 3)
    n = len(_lines(p))
    p.write_bytes(p.read_bytes() + line + b"\n")
    with pytest.raises(IntegrityError, match=rf"record {n} \(line {n + 1}\): nested deeper"):
        verify(p, key.public_key())
    with pytest.raises(IntegrityError, match=rf"record {n} \(line {n + 1}\)"):
        EventLog(p, signing_key=key)


def test_overlong_line_is_refused_before_it_is_read_whole(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    _write(p, key, 1)
    n = len(_lines(p))
    with open(p, "ab") as f:
        f.write(b" " * (2 << 20) + b"\n")
    with pytest.raises(IntegrityError, match=rf"record {n} \(line {n + 1}\): longer than"):
        verify(p, key.public_key())


def test_writer_refuses_data_the_verifier_would_refuse(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    deep: object = 1
    for _ in range(80):
        deep = [deep]
    with EventLog(p, signing_key=key) as log:
        with pytest.raises(UsageError, match="nested deeper"):
            log.append("x", {"v": deep})
        with pytest.raises(UsageError, match="too large"):
            log.append("x", {"v": "a" * (1 << 20)})
        log.append("x", {"v": [[[[1]]]]})
    assert verify(p, key.public_key(), require_clean=True).kinds["x"] == 1


def test_symlinked_log_is_refused_by_writer_and_verifier(tmp_path: Path, key) -> None:
    """A link planted at the log's name is never followed: not to a log, not to any file."""
    real = tmp_path / "real.log"
    _write(real, key, 2)
    before = real.read_bytes()
    link = tmp_path / "events.log"
    link.symlink_to(real)
    with pytest.raises(FileSystemError, match=r"events\.log is a symbolic link"):
        EventLog(link, signing_key=key)
    with pytest.raises(FileSystemError) as ei:
        verify(link, key.public_key())
    assert str(ei.value) == f"event log {link} is a symbolic link; refusing to follow it"
    assert ei.value.hint == (
        "the log must be a regular file; a link there is tampering or a mistake"
    )
    assert real.read_bytes() == before
    # a dangling link: following it would create the file it names
    link.unlink()
    target = tmp_path / "elsewhere.log"
    link.symlink_to(target)
    with pytest.raises(FileSystemError, match="symbolic link"):
        EventLog(link, signing_key=key)
    assert not target.exists()


def test_log_that_is_not_a_regular_file_is_refused(tmp_path: Path, key) -> None:
    fifo = tmp_path / "events.log"
    os.mkfifo(fifo)
    with pytest.raises(FileSystemError, match="not a regular file"):
        EventLog(fifo, signing_key=key)
    with pytest.raises(FileSystemError, match="not a regular file"):
        verify(fifo, key.public_key())  # must not block waiting for a writer


# -- logs forged by a key holder: each structural rule must hold on its own, even when
#    every hash and signature is valid -----------------------------------------------------


def _seal(recs: list[dict], key: ec.EllipticCurvePrivateKey, *, resign: bool = True) -> bytes:
    """Re-chain ``recs`` and re-sign their checkpoints as a writer with ``key`` would.

    Written from docs/eventlog.md, not with the module's helpers: the message is
    "edgeguard-eventlog/1 checkpoint" || 0x00 || canonical_json(final, head, log_id, seq).
    """
    import base64
    import hashlib

    from cryptography.hazmat.primitives import hashes

    log_id = recs[0]["data"].get("log_id", "")
    prev = GENESIS_PREV
    out = []
    for i, rec in enumerate(recs):
        rec["seq"], rec["prev"] = i, prev
        if rec["kind"] == "checkpoint" and resign:
            rec["data"]["head"] = prev
            msg = (
                b"edgeguard-eventlog/1 checkpoint\x00"
                + json.dumps(
                    {"final": rec["data"]["final"], "head": prev, "log_id": log_id, "seq": i},
                    sort_keys=True,
                    separators=(",", ":"),
                ).encode()
            )
            sig = key.sign(msg, ec.ECDSA(hashes.SHA256()))
            rec["data"]["sig"] = base64.b64encode(sig).decode()
        body = {k: rec[k] for k in ("seq", "time", "kind", "data", "prev")}
        rec["hash"] = hashlib.sha256(canonical_json(body)).hexdigest()
        prev = rec["hash"]
        out.append(canonical_json(rec) + b"\n")
    return b"".join(out)


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in _lines(path)]


def test_sealing_helper_reproduces_the_writer(tmp_path: Path, key) -> None:
    """The forgeries below differ from a real log only where each test changes it."""
    p = tmp_path / "ev.log"
    _write(p, key, 5)
    recs = _records(p)
    resealed = _seal(recs, key)
    p.write_bytes(resealed)
    assert verify(p, key.public_key(), require_clean=True).checkpoints == 2


def test_record_after_a_final_checkpoint_needs_log_resume(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    _write(p, key, 2)  # ... ends with a final checkpoint
    recs = _records(p)
    n = len(recs)
    for kind in ("fallback", "checkpoint"):
        extra = {"kind": kind, "time": 1.0, "data": {"frame": 9}}
        if kind == "checkpoint":
            extra["data"] = {"head": "", "final": False, "sig": ""}
        p.write_bytes(_seal([*recs, extra], key))
        with pytest.raises(
            IntegrityError,
            match=rf"record {n} \(line {n + 1}\): record after a final checkpoint without log_res",
        ):
            verify(p, key.public_key())
    # the same record after a log_resume is fine
    resume = {
        "kind": "log_resume",
        "time": 1.0,
        "data": {
            "key_id": recs[0]["data"]["key_id"],
            "previous_clean": True,
            "torn_bytes_dropped": 0,
        },
    }
    p.write_bytes(_seal([*recs, resume, {"kind": "fallback", "time": 1.0, "data": {}}], key))
    rep = verify(p, key.public_key())
    assert rep.sessions == 2 and not rep.clean and rep.unsigned_tail == 2


def test_checkpoint_with_an_extra_field_is_refused(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    _write(p, key, 5)
    recs = _records(p)
    assert recs[5]["kind"] == "checkpoint"
    recs[5]["data"]["note"] = "harmless?"  # the signature does not cover it
    p.write_bytes(_seal(recs, key))
    with pytest.raises(IntegrityError, match=r"record 5 \(line 6\): malformed checkpoint"):
        verify(p, key.public_key())


@pytest.mark.parametrize("signed", ["prev", "head"])
def test_checkpoint_head_must_be_its_prev(tmp_path: Path, key, signed: str) -> None:
    """``head`` is covered: it must equal ``prev``, which the signature and the hash cover.

    Refused whether the signature is over the record's ``prev`` (so it verifies) or
    over the forged ``head`` (a key holder's forgery).
    """
    import base64

    from cryptography.hazmat.primitives import hashes

    p = tmp_path / "ev.log"
    _write(p, key, 5)
    recs = _records(p)
    other = recs[2]["hash"]
    raw = _seal(recs, key)
    recs = [json.loads(x) for x in raw.splitlines()]
    recs[5]["data"]["head"] = other
    if signed == "head":
        msg = b"edgeguard-eventlog/1 checkpoint\x00" + canonical_json(
            {"final": False, "head": other, "log_id": recs[0]["data"]["log_id"], "seq": 5}
        )
        recs[5]["data"]["sig"] = base64.b64encode(key.sign(msg, ec.ECDSA(hashes.SHA256()))).decode()
    p.write_bytes(_seal(recs, key, resign=False))
    with pytest.raises(IntegrityError, match=r"record 5 \(line 6\): malformed checkpoint"):
        verify(p, key.public_key())


@pytest.mark.parametrize(
    ("field", "value"),
    [("final", "true"), ("final", 1), ("sig", 7), ("sig", None)],
)
def test_checkpoint_fields_of_the_wrong_type_are_refused(
    tmp_path: Path, key, field: str, value: object
) -> None:
    p = tmp_path / "ev.log"
    _write(p, key, 5)
    recs = _records(p)
    recs[5]["data"][field] = value
    p.write_bytes(_seal(recs, key, resign=False))
    with pytest.raises(IntegrityError, match=r"record 5 \(line 6\): malformed checkpoint"):
        verify(p, key.public_key())


def test_resume_under_another_key_is_refused(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    _write(p, key, 2)
    _write(p, key, 2)
    recs = _records(p)
    i = next(i for i, r in enumerate(recs) if r["kind"] == "log_resume")
    other = ec.generate_private_key(ec.SECP256R1())
    from edgeguard.guard.eventlog import key_id

    recs[i]["data"]["key_id"] = key_id(other.public_key())
    p.write_bytes(_seal(recs, key))
    with pytest.raises(IntegrityError, match=rf"record {i} \(line {i + 1}\): log resumed with a"):
        verify(p, key.public_key())
    with pytest.raises(IntegrityError, match="resumed with a different key"):
        EventLog(p, signing_key=key)


# -- durability: fsync and a full disk -------------------------------------------------------


class _FsyncSpy:
    """Counts fsyncs of one descriptor and records the file size at each."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
        self.fd = -1
        self.sizes: list[int] = []
        real = os.fsync

        def spy(fd: int) -> None:
            if fd == self.fd:
                self.sizes.append(path.stat().st_size)
            real(fd)

        monkeypatch.setattr(os, "fsync", spy)

    def watch(self, log: EventLog) -> None:
        self.fd = log._fd
        self.sizes.clear()


def test_append_returns_after_its_record_is_written_and_fsynced(
    tmp_path: Path, key, monkeypatch
) -> None:
    p = tmp_path / "ev.log"
    spy = _FsyncSpy(monkeypatch, p)
    log = EventLog(p, signing_key=key, checkpoint_every=3)
    spy.watch(log)
    for i in range(1, 3):
        log.append("x", {"i": i})
        # one fsync per record, after the whole line reached the file
        assert len(spy.sizes) == i and spy.sizes[-1] == p.stat().st_size
    log.append("x", {"i": 3})  # the 3rd record, then a checkpoint: both fsynced
    assert len(spy.sizes) == 4 and spy.sizes[-1] == p.stat().st_size
    assert spy.sizes[2] < spy.sizes[3]
    log.close()  # final checkpoint
    assert len(spy.sizes) == 5


def test_batch_mode_fsyncs_every_n_records_at_checkpoints_and_close(
    tmp_path: Path, key, monkeypatch
) -> None:
    p = tmp_path / "ev.log"
    spy = _FsyncSpy(monkeypatch, p)
    log = EventLog(
        p,
        signing_key=key,
        sync="batch",
        batch_records=3,
        batch_interval_s=3600,
        checkpoint_every=100,
    )
    spy.watch(log)
    log.append("x", {})
    log.append("x", {})
    assert spy.sizes == []  # written, not yet fsynced
    log.append("x", {})
    assert spy.sizes == [p.stat().st_size]
    log.append("x", {})
    log.sync()  # explicit, and the batch counts again from there
    assert len(spy.sizes) == 2 and spy.sizes[-1] == p.stat().st_size
    log.append("x", {})
    log.append("x", {})
    assert len(spy.sizes) == 2
    log.append("x", {})  # the third since the sync
    assert len(spy.sizes) == 3
    log.append("x", {})
    log.checkpoint()  # a checkpoint is always fsynced
    assert len(spy.sizes) == 4
    log.append("x", {})
    log.close()
    assert len(spy.sizes) == 5 and spy.sizes[-1] == p.stat().st_size


def test_batch_mode_fsyncs_when_the_interval_passed(tmp_path: Path, key, monkeypatch) -> None:
    import time as _time

    now = [1000.0]
    monkeypatch.setattr(_time, "monotonic", lambda: now[0])
    p = tmp_path / "ev.log"
    spy = _FsyncSpy(monkeypatch, p)
    log = EventLog(p, signing_key=key, sync="batch", batch_records=100, batch_interval_s=2.0)
    spy.watch(log)
    log.append("x", {})
    now[0] += 1.75
    log.append("x", {})
    assert spy.sizes == []
    now[0] += 0.25  # exactly 2.0 s since the last fsync (binary fractions: no rounding)
    log.append("x", {})
    assert len(spy.sizes) == 1
    now[0] += 1.0
    log.append("x", {})
    assert len(spy.sizes) == 1  # the interval counts from the last fsync
    log.close()


def test_full_disk_on_append_raises_an_edgeguard_error_and_drops_nothing_silently(
    tmp_path: Path, key, monkeypatch
) -> None:
    """ENOSPC before a byte is written: FileSystemError (exit 12), never a silent loss."""
    p = tmp_path / "ev.log"
    log = EventLog(p, signing_key=key, checkpoint_every=100)
    log.append("x", {"i": 0})
    fd = log._fd
    real_write = os.write

    def disk_full(n: int, data: bytes) -> int:
        if n == fd:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(n, data)

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(FileSystemError) as ei:
        log.append("x", {"i": 1})
    assert ei.value.exit_code == 12
    assert str(ei.value) == f"cannot write event log {p}: No space left on device"
    assert isinstance(ei.value.__cause__, OSError)
    assert log.next_seq == 2  # record 2 was not acknowledged
    monkeypatch.undo()
    # every later record is refused too (not dropped), and close() writes nothing after it
    with pytest.raises(UsageError, match="failed write"):
        log.append("x", {"i": 2})
    log.close()
    rep = verify(p, key.public_key())
    assert rep.last_seq == 1 and not rep.clean and rep.torn_tail_bytes == 0


def test_a_write_that_makes_no_progress_is_an_error_not_a_hang(
    tmp_path: Path, key, monkeypatch
) -> None:
    p = tmp_path / "ev.log"
    log = EventLog(p, signing_key=key)
    fd = log._fd
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda n, data: 0 if n == fd else real_write(n, data))
    with pytest.raises(FileSystemError, match="cannot write event log"):
        log.append("x", {})
    monkeypatch.undo()
    log.close()


def test_failed_fsync_on_append_is_an_edgeguard_error(tmp_path: Path, key, monkeypatch) -> None:
    p = tmp_path / "ev.log"
    log = EventLog(p, signing_key=key)
    fd = log._fd
    real_fsync = os.fsync

    def eio(n: int) -> None:
        if n == fd:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(n)

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(FileSystemError, match=r"cannot write event log .*: Input/output error"):
        log.append("x", {})
    with pytest.raises(UsageError, match="failed write"):
        log.sync()
    monkeypatch.undo()
    log.close()
    # an explicit sync() that fails is the same error
    q = tmp_path / "ev2.log"
    log = EventLog(q, signing_key=key, sync="batch")
    fd = log._fd
    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(FileSystemError, match=r"cannot sync event log .*: Input/output error"):
        log.sync()
    monkeypatch.undo()
    log.close()


def _resealed_with(path: Path, key, i: int, data: dict) -> None:
    recs = _records(path)
    recs[i]["data"] = data
    path.write_bytes(_seal(recs, key))


@pytest.mark.parametrize(
    "change",
    [
        "no log_id",
        "short log_id",
        "extra field",
        "checkpoint_every 0",
        "checkpoint_every true",
        "no checkpoint_every",
    ],
)
def test_log_open_data_is_exactly_what_the_format_says(tmp_path: Path, key, change: str) -> None:
    """A key holder's log_open without a log id (signatures over "") or with extra fields."""
    p = tmp_path / "ev.log"
    _write(p, key, 5)
    data = dict(_records(p)[0]["data"])
    if change == "no log_id":
        del data["log_id"]
    elif change == "short log_id":
        data["log_id"] = "ab"
    elif change == "extra field":
        data["comment"] = "x"
    elif change == "no checkpoint_every":
        del data["checkpoint_every"]
    else:
        data["checkpoint_every"] = 0 if change.endswith("0") else True
    recs = _records(p)
    recs[0]["data"] = data
    if "log_id" not in data:  # sign as the format would with an empty log id
        recs[0]["data"]["log_id"] = ""
        raw = _seal(recs, key)
        recs = [json.loads(x) for x in raw.splitlines()]
        del recs[0]["data"]["log_id"]
        p.write_bytes(_seal(recs, key, resign=False))
    else:
        p.write_bytes(_seal(recs, key))
    with pytest.raises(IntegrityError, match=r"^event log: record 0 \(line 1\): malformed log_op"):
        verify(p, key.public_key())


@pytest.mark.parametrize(
    "data",
    [
        {"previous_clean": True, "torn_bytes_dropped": 0},
        {"previous_clean": "yes", "torn_bytes_dropped": 0},
        {"previous_clean": True, "torn_bytes_dropped": -1},
        {"previous_clean": True, "torn_bytes_dropped": False},
        {"previous_clean": True, "torn_bytes_dropped": 0, "extra": 1},
    ],
    ids=["no key_id", "clean not bool", "negative torn", "torn bool", "extra field"],
)
def test_log_resume_data_is_exactly_what_the_format_says(tmp_path: Path, key, data: dict) -> None:
    p = tmp_path / "ev.log"
    _write(p, key, 2)
    _write(p, key, 2)
    recs = _records(p)
    i = next(i for i, r in enumerate(recs) if r["kind"] == "log_resume")
    full = {"key_id": recs[0]["data"]["key_id"], **data}
    if "key_id" not in data and len(data) == 2:
        full.pop("key_id")
    recs[i]["data"] = full
    p.write_bytes(_seal(recs, key))
    with pytest.raises(IntegrityError, match=rf"record {i} \(line {i + 1}\): malformed log_resume"):
        verify(p, key.public_key())


# -- every refusal, word for word (a changed message or hint is a changed contract) ---------

_HINT = "records were edited, deleted, inserted or reordered, or another key signed"


def _valid(path: Path, key) -> list[dict]:
    """A sealed log of 5 appends: 0 log_open, 1-4 x, 5 checkpoint, 6 x, 7 final checkpoint."""
    _write(path, key, 5)
    return _records(path)


def _line(rec: dict) -> bytes:
    return canonical_json(rec) + b"\n"


def _tamper(case: str, path: Path, key) -> tuple[int, str]:
    """Apply ``case`` to a fresh log at ``path``; returns (record, expected message)."""
    recs = _valid(path, key)
    lines = _lines(path)
    body = b"".join(lines)
    bad_types = {
        "seq str": ("seq", "3"),
        "seq bool": ("seq", True),
        "kind int": ("kind", 1),
        "data list": ("data", []),
        "prev int": ("prev", 1),
        "hash int": ("hash", 1),
        "time bool": ("time", True),
        "time str": ("time", "1.0"),
    }
    if case in bad_types:
        k, v = bad_types[case]
        rec = dict(recs[3])
        rec[k] = v
        path.write_bytes(b"".join(lines[:3]) + _line(rec))
        return 3, "field of the wrong type"
    if case == "not JSON":
        path.write_bytes(body + b'{"seq":\n')
        return 8, "not valid JSON"
    if case == "not UTF-8":
        path.write_bytes(body + b'{"seq":"\xff"}\n')
        return 8, "not valid JSON"
    if case == "not an object":
        path.write_bytes(body + b"[1,2]\n")
        return 8, "wrong set of fields"
    if case == "missing field":
        rec = dict(recs[3])
        del rec["time"]
        path.write_bytes(b"".join(lines[:3]) + _line(rec))
        return 3, "wrong set of fields"
    if case == "NaN":
        path.write_bytes(
            body + b'{"data":{},"hash":"x","kind":"x","prev":"x","seq":8,"time":NaN}\n'
        )
        return 8, "not canonical JSON"
    if case == "spaces":
        path.write_bytes(b"".join(lines[:3]) + json.dumps(recs[3], sort_keys=True).encode() + b"\n")
        return 3, "not in canonical form"
    if case == "seq":
        recs[3]["seq"] = 5
        path.write_bytes(b"".join(lines[:3]) + _line(recs[3]))
        return 3, "sequence number 5 where 3 was expected"
    if case == "chain":
        path.write_bytes(b"".join(lines[:3]) + _line({**recs[4], "seq": 3}))
        return 3, "does not chain to the previous record"
    if case == "hash":
        recs[3]["data"]["i"] = 99
        path.write_bytes(b"".join(lines[:3]) + _line(recs[3]))
        return 3, "hash does not match the content"
    if case == "first not log_open":
        recs[0]["kind"] = "fallback"
        path.write_bytes(_seal(recs, key))
        return 0, "first record must be log_open of edgeguard-eventlog/1"
    if case == "first of another format":
        recs[0]["data"]["format"] = "edgeguard-eventlog/2"
        path.write_bytes(_seal(recs, key))
        return 0, "first record must be log_open of edgeguard-eventlog/1"
    if case == "another key":
        from edgeguard.guard.eventlog import key_id

        recs[0]["data"]["key_id"] = key_id(ec.generate_private_key(ec.SECP256R1()).public_key())
        path.write_bytes(_seal(recs, key))
        return 0, "log was opened for a different key"
    if case == "second log_open":
        recs.insert(7, {"kind": "log_open", "time": 1.0, "data": dict(recs[0]["data"])})
        path.write_bytes(_seal(recs, key))
        return 7, "log_open after the first record"
    if case == "bad base64":
        sig = recs[5]["data"]["sig"]
        recs[5]["data"]["sig"] = sig[:10] + "!" + sig[10:]  # skipped by a lax decoder
        path.write_bytes(_seal(recs, key, resign=False))
        return 5, "checkpoint signature does not verify"
    if case == "signature of another final":
        recs[5]["data"]["final"] = True  # signed as final: False
        raw = _seal(recs, key)
        recs = [json.loads(x) for x in raw.splitlines()]
        recs[5]["data"]["final"] = False
        path.write_bytes(_seal(recs, key, resign=False))
        return 5, "checkpoint signature does not verify"
    raise AssertionError(case)


_CASES = [
    "seq str",
    "seq bool",
    "kind int",
    "data list",
    "prev int",
    "hash int",
    "time bool",
    "time str",
    "not JSON",
    "not UTF-8",
    "not an object",
    "missing field",
    "NaN",
    "spaces",
    "seq",
    "chain",
    "hash",
    "first not log_open",
    "first of another format",
    "another key",
    "second log_open",
    "bad base64",
    "signature of another final",
]


@pytest.mark.parametrize("case", _CASES)
def test_each_refusal_names_its_record_line_and_rule_word_for_word(
    tmp_path: Path, key, case: str
) -> None:
    p = tmp_path / "ev.log"
    n, what = _tamper(case, p, key)
    with pytest.raises(IntegrityError) as ei:
        verify(p, key.public_key())
    assert type(ei.value) is IntegrityError
    assert str(ei.value) == f"event log: record {n} (line {n + 1}): {what}"
    assert ei.value.hint == _HINT


def test_an_empty_log_names_the_file(tmp_path: Path, key) -> None:
    for content in (b"", b'{"data":{'):
        p = tmp_path / "ev.log"
        p.write_bytes(content)
        with pytest.raises(IntegrityError) as ei:
            verify(p, key.public_key())
        assert str(ei.value) == f"event log {p}: no complete record (empty or truncated)"
    # a writer refuses to start on a fragment of line 0 (it cannot tell what was lost)
    with pytest.raises(IntegrityError, match="no complete record"):
        EventLog(p, signing_key=key)
    assert p.read_bytes() == b'{"data":{'


def test_reading_errors_are_usage_errors_naming_the_file(tmp_path: Path, key) -> None:
    p = tmp_path / "missing.log"
    with pytest.raises(UsageError) as ei:
        verify(p, key.public_key())
    assert str(ei.value) == f"cannot read event log {p}: No such file or directory"
    d = tmp_path / "ro"
    d.mkdir()
    os.chmod(d, 0o500)
    try:
        if os.geteuid() != 0:
            with pytest.raises(UsageError) as ei:
                EventLog(d / "ev.log", signing_key=key)
            assert str(ei.value).startswith(f"cannot open event log {d / 'ev.log'}: ")
    finally:
        os.chmod(d, 0o700)


# -- the encoding, checked by an independent implementation -------------------------------


def test_records_are_canonical_json_hashed_and_signed_as_documented(tmp_path: Path, key) -> None:
    """Re-derive every line, hash and signature from docs/eventlog.md with json and hashlib."""
    import base64
    import hashlib

    from cryptography.hazmat.primitives import hashes

    def canon(obj: object) -> bytes:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode("ascii")

    p = tmp_path / "ev.log"
    with EventLog(p, signing_key=key, checkpoint_every=2) as log:
        log.append("note", {"z": 1, "a": "caf\u00e9 \u2603", "m": [2.5, {"y": None, "b": True}]})
        log.append("note", {"n": -1})
        log.append("note", {})
    raw = p.read_bytes()
    assert raw.isascii()
    recs = [json.loads(x) for x in raw.splitlines()]
    assert recs[1]["data"]["a"] == "caf\u00e9 \u2603"
    log_id = recs[0]["data"]["log_id"]
    prev = "0" * 64
    for i, (line, rec) in enumerate(zip(raw.splitlines(), recs, strict=True)):
        assert line == canon(rec)
        body = {k: rec[k] for k in ("seq", "time", "kind", "data", "prev")}
        assert rec["seq"] == i and rec["prev"] == prev
        assert rec["hash"] == hashlib.sha256(canon(body)).hexdigest()
        if rec["kind"] == "checkpoint":
            d = rec["data"]
            assert set(d) == {"head", "final", "sig"} and d["head"] == prev
            msg = b"edgeguard-eventlog/1 checkpoint\x00" + canon(
                {"final": d["final"], "head": prev, "log_id": log_id, "seq": i}
            )
            key.public_key().verify(base64.b64decode(d["sig"]), msg, ec.ECDSA(hashes.SHA256()))
        prev = rec["hash"]
    assert [r["kind"] for r in recs] == [
        "log_open",
        "note",
        "note",
        "checkpoint",
        "note",
        "checkpoint",
    ]
    assert recs[-1]["data"]["final"] is True and recs[3]["data"]["final"] is False
    assert canonical_json({"b": [1.0, 2], "a": "\u00e9"}) == b'{"a":"\\u00e9","b":[1.0,2]}'
    for bad in (float("nan"), float("inf"), {1, 2}, b"x"):
        with pytest.raises(UsageError, match="not JSON-encodable"):
            canonical_json({"v": bad})


def test_log_open_names_the_format_a_random_log_id_the_key_and_k(tmp_path: Path, key) -> None:
    from edgeguard.guard.eventlog import FORMAT, key_id

    ids = set()
    for i in range(2):
        p = tmp_path / f"ev{i}.log"
        EventLog(p, signing_key=key).close()
        data = _records(p)[0]["data"]
        assert set(data) == {"format", "log_id", "key_id", "checkpoint_every"}
        assert data["format"] == FORMAT == "edgeguard-eventlog/1"
        assert len(data["log_id"]) == 32 and int(data["log_id"], 16) >= 0
        assert data["key_id"] == key_id(key.public_key()) and data["checkpoint_every"] == 64
        ids.add(data["log_id"])
    assert len(ids) == 2
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    import hashlib

    assert key_id(key.public_key()) == hashlib.sha256(der).hexdigest()


def test_default_checkpoint_every_is_64(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    log = EventLog(p, signing_key=key)
    for i in range(64):
        assert log.append("x", {}) == i + 1
    assert log.next_seq == 66  # record 65 is the checkpoint after the 64th
    log.close()
    recs = _records(p)
    assert recs[65]["kind"] == "checkpoint" and not recs[65]["data"]["final"]
    assert [r["seq"] for r in recs if r["kind"] == "checkpoint"] == [65, 66]


def test_checkpoint_every_one_and_explicit_checkpoints(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    with EventLog(p, signing_key=key, checkpoint_every=1) as log:
        assert log.append("x", {}) == 1
        assert log.next_seq == 3
        assert log.checkpoint() == 3
        assert log.append("x", {}) == 4
    assert [r["kind"] for r in _records(p)] == [
        "log_open",
        "x",
        "checkpoint",
        "checkpoint",
        "x",
        "checkpoint",
        "checkpoint",
    ]
    assert verify(p, key.public_key(), require_clean=True).checkpoints == 4


def test_report_fields_and_json_form(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    lg = EventLog(p, signing_key=key, checkpoint_every=3)
    for i in range(4):
        lg.append("fallback" if i % 2 else "x", {"i": i})
    os.close(lg._fd)  # killed: 0 open, 1-3, 4 checkpoint, 5
    recs = _records(p)
    rep = verify(p, key.public_key())
    assert rep.to_dict() == {
        "path": str(p),
        "log_id": recs[0]["data"]["log_id"],
        "records": 6,
        "checkpoints": 1,
        "last_seq": 5,
        "last_checkpoint_seq": 4,
        "clean": False,
        "status": "writer stopped without closing after record 5",
        "torn_tail_bytes": 0,
        "unsigned_tail": 1,
        "sessions": 1,
        "head": recs[5]["hash"],
        "anchor": None,
        "anchor_seq": -1,
        "counter_checked": False,
        "kinds": {"checkpoint": 1, "fallback": 2, "log_open": 1, "x": 2},
    }
    assert list(rep.to_dict()["kinds"]) == sorted(rep.kinds)
    with pytest.raises(UncleanLogError) as ei:
        rep.raise_if_unclean()
    assert str(ei.value) == (
        f"event log {p}: writer stopped without closing after record 5; "
        "1 record(s) after the last signed checkpoint (record 4)"
    )
    assert ei.value.hint == (
        "the writer crashed, lost power or was killed, or the tail was cut, which "
        "the log alone cannot tell apart; --allow-unclean accepts it"
    )


def test_a_log_without_any_checkpoint(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    lg = EventLog(p, signing_key=key, checkpoint_every=10)
    lg.append("x", {})
    os.close(lg._fd)
    with open(p, "ab") as f:
        f.write(b'{"da')
    rep = verify(p, key.public_key())
    assert (rep.checkpoints, rep.last_checkpoint_seq, rep.unsigned_tail) == (0, -1, 2)
    assert (rep.records, rep.last_seq, rep.torn_tail_bytes) == (2, 1, 4)
    assert rep.kinds == {"log_open": 1, "x": 1} and rep.sessions == 1
    with pytest.raises(UncleanLogError) as ei:
        rep.raise_if_unclean()
    assert str(ei.value) == (
        f"event log {p}: writer stopped without closing after record 1; "
        "2 record(s), no signed checkpoint; a torn last line of 4 byte(s) ignored"
    )


# -- the writer's arguments, limits and edge cases ------------------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"checkpoint_every": 0}, "checkpoint_every must be >= 1"),
        ({"sync": "never"}, "sync must be 'always' or 'batch'"),
        ({"batch_records": 0}, "batch_records must be >= 1 and batch_interval_s >= 0"),
        ({"batch_interval_s": -0.5}, "batch_records must be >= 1 and batch_interval_s >= 0"),
        (
            {"batch_interval_s": float("nan")},
            "batch_records must be >= 1 and batch_interval_s >= 0",
        ),
        (
            {"batch_interval_s": float("inf")},
            "batch_records must be >= 1 and batch_interval_s >= 0",
        ),
    ],
)
def test_bad_writer_arguments_are_refused_word_for_word(
    tmp_path: Path, key, kw: dict, message: str
) -> None:
    p = tmp_path / "ev.log"
    with pytest.raises(UsageError) as ei:
        EventLog(p, signing_key=key, **kw)
    assert str(ei.value) == message
    assert not p.exists()


def test_writer_argument_boundaries_are_accepted(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    with EventLog(
        p, signing_key=key, checkpoint_every=1, sync="batch", batch_records=1, batch_interval_s=0
    ) as log:
        log.append("x", {})
    assert verify(p, key.public_key(), require_clean=True).records == 4


def test_signing_keys_other_than_p256_are_refused(tmp_path: Path, key) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    for bad in (
        ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate(),
        key.public_key(),
    ):
        with pytest.raises(UsageError) as ei:
            EventLog(tmp_path / "ev.log", signing_key=bad)  # type: ignore[arg-type]
        assert str(ei.value) == "event log signing key must be an ECDSA P-256 private key"


def test_every_reserved_or_empty_kind_is_refused(tmp_path: Path, key) -> None:
    with EventLog(tmp_path / "ev.log", signing_key=key) as log:
        for kind in ("log_open", "log_resume", "checkpoint", "", None, 3):
            with pytest.raises(UsageError) as ei:
                log.append(kind, {})  # type: ignore[arg-type]
            assert str(ei.value) == f"event kind {kind!r} is empty or reserved"
        assert log.append("log_opened", None) == 1


def test_closed_and_failed_logs_refuse_with_their_reason(tmp_path: Path, key, monkeypatch) -> None:
    log = EventLog(tmp_path / "ev.log", signing_key=key)
    log.close()
    for call in (lambda: log.append("x", {}), log.checkpoint, log.sync):
        with pytest.raises(UsageError) as ei:
            call()
        assert str(ei.value) == "event log is closed" and ei.value.hint is None
    log = EventLog(tmp_path / "ev2.log", signing_key=key)
    fd = log._fd
    real = os.write

    def eio(n: int, data: bytes) -> int:
        if n == fd:
            raise OSError(errno.EIO, "Input/output error")
        return real(n, data)

    monkeypatch.setattr(os, "write", eio)
    with pytest.raises(FileSystemError):
        log.append("x", {})
    monkeypatch.undo()
    for call in (lambda: log.append("x", {}), log.checkpoint, log.sync):
        with pytest.raises(UsageError) as ei:
            call()
        assert str(ei.value) == "event log is unusable after a failed write"
        assert ei.value.hint == (
            "close it and open it again; reopening cuts a torn line and resumes"
        )
    log.close()


def test_short_writes_are_continued_until_the_line_is_whole(
    tmp_path: Path, key, monkeypatch
) -> None:
    p = tmp_path / "ev.log"
    log = EventLog(p, signing_key=key, checkpoint_every=3)
    size_at_open = p.stat().st_size
    fd = log._fd
    real = os.write
    calls = []

    def dribble(n: int, data: bytes) -> int:
        if n == fd:
            calls.append(len(data))
            return real(n, bytes(data[:1]))  # one byte per call: still progress
        return real(n, data)

    monkeypatch.setattr(os, "write", dribble)
    for i in range(4):
        log.append("x", {"i": i})
    log.close()
    monkeypatch.undo()
    assert len(calls) == p.stat().st_size - size_at_open
    assert verify(p, key.public_key(), require_clean=True).kinds["x"] == 4


def test_the_limits_are_exact_for_writer_and_verifier(tmp_path: Path, key) -> None:
    from edgeguard.guard.eventlog import DEFAULT_LIMITS, LogLimits

    assert (DEFAULT_LIMITS.max_line_bytes, DEFAULT_LIMITS.max_depth) == (1 << 20, 64)
    p = tmp_path / "ev.log"
    small = LogLimits(max_line_bytes=400, max_depth=4)
    with EventLog(p, signing_key=key, checkpoint_every=100, limits=small, clock=lambda: 1.5) as log:
        size = p.stat().st_size
        log.append("x", {"p": ""})
        overhead = p.stat().st_size - size  # a record with an empty string
        log.append("x", {"p": "a" * (400 - overhead)})  # exactly 400 bytes with its line feed
        assert p.stat().st_size - size == overhead + 400
        with pytest.raises(UsageError) as ei:
            log.append("x", {"p": "a" * (401 - overhead)})
        assert str(ei.value) == "event record too large (401 bytes, at most 400 with its line feed)"
        log.append("x", {"v": [[1]]})  # the record 1, data 2, v 3, [1] 4
        with pytest.raises(UsageError) as ei:
            log.append("x", {"v": [[[1]]]})
        assert str(ei.value) == "event data nested deeper than 4 levels"
        log.append("x", {"v": [[1], [2], [3], {"k": "[[[[[[["}]})  # many brackets, not deep
    rep = verify(p, key.public_key(), require_clean=True, limits=small)
    assert rep.kinds["x"] == 4
    with pytest.raises(IntegrityError, match=r"record 2 \(line 3\): longer than 399 bytes"):
        verify(p, key.public_key(), limits=LogLimits(max_line_bytes=399, max_depth=4))
    with pytest.raises(IntegrityError, match=r"record 3 \(line 4\): nested deeper than 3 levels"):
        verify(p, key.public_key(), limits=LogLimits(max_line_bytes=400, max_depth=3))
    # a torn tail longer than any line a writer writes is not a torn write
    with open(p, "ab") as f:
        f.write(b"x" * 401)
    with pytest.raises(IntegrityError, match=r"record 6 \(line 7\): longer than 400 bytes"):
        verify(p, key.public_key(), limits=small)


def test_an_existing_empty_file_starts_a_new_log(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    p.write_bytes(b"")
    with EventLog(p, signing_key=key) as log:
        log.append("x", {})
    rep = verify(p, key.public_key(), require_clean=True)
    assert rep.sessions == 1 and rep.kinds["log_open"] == 1


def test_log_open_and_log_resume_are_fsynced_in_batch_mode_too(
    tmp_path: Path, key, monkeypatch
) -> None:
    p = tmp_path / "ev.log"
    seen: list[int] = []
    dirs: list[int] = []
    real = os.fsync

    def spy(fd: int) -> None:
        if p.exists() and os.path.samestat(os.fstat(fd), p.stat()):
            seen.append(p.stat().st_size)
        if os.path.samestat(os.fstat(fd), tmp_path.stat()):
            dirs.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    log = EventLog(p, signing_key=key, sync="batch", batch_records=100, batch_interval_s=3600)
    assert seen == [p.stat().st_size]  # log_open
    assert len(dirs) == 1  # the new file's directory entry is durable too
    log.append("x", {})
    assert len(seen) == 1
    os.close(log._fd)  # killed
    seen.clear()
    log = EventLog(p, signing_key=key, sync="batch", batch_records=100, batch_interval_s=3600)
    assert seen == [p.stat().st_size]  # log_resume
    assert len(dirs) == 1  # no new directory entry
    log.close()


def test_batch_defaults_are_32_records_and_one_second(tmp_path: Path, key, monkeypatch) -> None:
    import time as _time

    now = [1000.0]
    monkeypatch.setattr(_time, "monotonic", lambda: now[0])
    p = tmp_path / "ev.log"
    spy = _FsyncSpy(monkeypatch, p)
    log = EventLog(p, signing_key=key, sync="batch", checkpoint_every=1000)
    spy.watch(log)
    for _ in range(31):
        log.append("x", {})
    assert spy.sizes == []
    log.append("x", {})
    assert len(spy.sizes) == 1
    now[0] += 0.5
    log.append("x", {})
    assert len(spy.sizes) == 1
    now[0] += 0.5  # one second since the last fsync
    log.append("x", {})
    assert len(spy.sizes) == 2
    log.close()


def test_depth_counts_down_at_each_closing_bracket(tmp_path: Path, key) -> None:
    """A sibling that closes must not hide a deeper one after it."""
    from edgeguard.guard.eventlog import LogLimits

    small = LogLimits(max_line_bytes=1 << 20, max_depth=4)
    with EventLog(tmp_path / "ev.log", signing_key=key, limits=small) as log:
        log.append("x", {"v": [[1], [2]]})  # record 1, data 2, v 3, [1] 4
        with pytest.raises(UsageError, match="nested deeper than 4 levels"):
            log.append("x", {"v": [[], [[1]]]})  # the second member reaches 5
        with pytest.raises(UsageError, match="nested deeper than 4 levels"):
            log.append("x", {"a": [[]], "v": [[[1]]]})


def test_an_overlong_line_is_refused_without_being_held_whole(tmp_path: Path, key) -> None:
    import tracemalloc

    p = tmp_path / "ev.log"
    _write(p, key, 1)
    with open(p, "ab") as f:
        f.write(b"[" * (32 << 20) + b"\n")
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError, match="longer than 1048576 bytes"):
            verify(p, key.public_key())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # at most a line and its buffers, not the 32 MiB


def test_a_read_error_is_a_usage_error_naming_the_log(tmp_path: Path, key, monkeypatch) -> None:
    p = tmp_path / "ev.log"
    _write(p, key, 1)
    real = os.fdopen

    class Failing:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def readline(self, n: int) -> bytes:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Failing(real(fd, mode)))
    with pytest.raises(UsageError) as ei:
        verify(p, key.public_key())
    assert str(ei.value) == f"cannot read event log {p}: Input/output error"


def test_a_log_in_a_missing_directory_cannot_be_opened(tmp_path: Path, key) -> None:
    p = tmp_path / "nowhere" / "ev.log"
    with pytest.raises(UsageError) as ei:
        EventLog(p, signing_key=key)
    assert str(ei.value) == f"cannot open event log {p}: No such file or directory"


def test_a_writer_refuses_a_one_byte_fragment_naming_the_log(tmp_path: Path, key) -> None:
    p = tmp_path / "ev.log"
    p.write_bytes(b"{")
    with pytest.raises(IntegrityError) as ei:
        EventLog(p, signing_key=key)
    assert str(ei.value) == f"event log {p}: no complete record (empty or truncated)"
    assert p.read_bytes() == b"{"


def test_write_errors_word_for_word(tmp_path: Path, key, monkeypatch) -> None:
    p = tmp_path / "ev.log"
    log = EventLog(p, signing_key=key)
    fd = log._fd
    real = os.write
    monkeypatch.setattr(os, "write", lambda n, d: 0 if n == fd else real(n, d))
    with pytest.raises(FileSystemError) as ei:
        log.append("x", {})
    monkeypatch.undo()
    assert str(ei.value) == f"cannot write event log {p}: the write made no progress"
    assert ei.value.hint == (
        "the record was not written; the log refuses further records until it is reopened"
    )
    assert isinstance(ei.value.__cause__, OSError) and ei.value.__cause__.errno == errno.EIO
    log.close()

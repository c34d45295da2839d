"""The event log's anchor: a cut back to an earlier checkpoint, detected outside the log."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeguard.cli.main import main
from edgeguard.errors import (
    IntegrityError,
    LogRolledBackError,
    StateStoreError,
    UncleanLogError,
)
from edgeguard.guard.eventlog import EventLog, verify
from edgeguard.guard.loganchor import ANCHOR_NAME, LogAnchor, TpmNvCounter
from tests.guard.test_guard_eventlog import _seal
from tests.swtpm import running_swtpm


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _session(path: Path, key, anchor: LogAnchor, n: int, *, kind: str = "fallback") -> None:
    with EventLog(path, signing_key=key, checkpoint_every=4, anchor=anchor) as log:
        for i in range(n):
            log.append(kind, {"i": i})


def _anchor_doc(state: Path) -> dict:
    return json.loads((state / ANCHOR_NAME).read_bytes())


def test_every_checkpoint_advances_the_anchor(tmp_path: Path, key) -> None:
    log = tmp_path / "events.log"
    anchor = LogAnchor(tmp_path)
    with EventLog(log, signing_key=key, checkpoint_every=4, anchor=anchor) as lg:
        for i in range(5):
            lg.append("x", {"i": i})
            recs = [json.loads(x) for x in log.read_bytes().splitlines()]
            cps = [r for r in recs if r["kind"] == "checkpoint"]
            if cps:
                doc = _anchor_doc(tmp_path)
                assert (doc["seq"], doc["head"]) == (cps[-1]["seq"], cps[-1]["data"]["head"])
            else:
                assert not (tmp_path / ANCHOR_NAME).exists()
    recs = [json.loads(x) for x in log.read_bytes().splitlines()]
    doc = _anchor_doc(tmp_path)
    assert doc["seq"] == recs[-1]["seq"] and doc["head"] == recs[-1]["prev"]
    assert doc["log_id"] == recs[0]["data"]["log_id"] and doc["counter"] is None
    st = (tmp_path / ANCHOR_NAME).stat()
    assert oct(st.st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    rep = verify(log, key.public_key(), require_clean=True, anchor=anchor)
    assert rep.anchor == str(tmp_path / ANCHOR_NAME) and rep.anchor_seq == doc["seq"]
    assert not rep.counter_checked
    # a directory without an anchor: nothing to check against, and the report says so
    bare = tmp_path / "bare"
    bare.mkdir(mode=0o700)
    rep = verify(log, key.public_key(), anchor=LogAnchor(bare))
    assert (rep.anchor, rep.anchor_seq, rep.counter_checked) == (None, -1, False)


@pytest.mark.parametrize("where", ["earlier session", "earlier checkpoint", "record 0"])
def test_a_cut_back_to_an_earlier_checkpoint_is_behind_the_anchor(
    tmp_path: Path, key, where: str
) -> None:
    log = tmp_path / "events.log"
    anchor = LogAnchor(tmp_path)
    _session(log, key, anchor, 3)
    first = log.read_bytes()
    _session(log, key, anchor, 9, kind="abuse_alert")
    lines = log.read_bytes().splitlines(keepends=True)
    recs = [json.loads(x) for x in lines]
    if where == "earlier session":
        cut = first  # the first session's final checkpoint: a clean, fully signed log
    elif where == "earlier checkpoint":
        i = max(r["seq"] for r in recs if r["kind"] == "checkpoint" and not r["data"]["final"])
        cut = b"".join(lines[: i + 1])
    else:
        cut = lines[0]
    log.write_bytes(cut)
    if where == "earlier session":
        assert verify(log, key.public_key(), require_clean=True).clean  # the log alone
    with pytest.raises(LogRolledBackError, match="cut back or rolled back") as ei:
        verify(log, key.public_key(), anchor=anchor)
    assert isinstance(ei.value, IntegrityError) and ei.value.exit_code == 4
    last = len(cut.splitlines()) - 1
    assert str(ei.value) == (
        f"event log {log} is behind its anchor {anchor.path}: the log ends at record {last}, "
        f"but the anchor records a signed checkpoint at record {len(recs) - 1}: "
        "it was cut back or rolled back"
    )
    assert ei.value.hint == (
        "later records, sessions included, were removed or the log replaced; "
        "the log alone cannot show this"
    )
    with pytest.raises(LogRolledBackError):
        EventLog(log, signing_key=key, anchor=anchor)
    assert log.read_bytes() == cut


def test_an_unsigned_tail_cut_is_still_only_unclean(tmp_path: Path, key) -> None:
    """Records after the last checkpoint are not anchored: cutting them reads as a crash."""
    log = tmp_path / "events.log"
    anchor = LogAnchor(tmp_path)
    lg = EventLog(log, signing_key=key, checkpoint_every=4, anchor=anchor)
    for i in range(6):
        lg.append("x", {"i": i})
    lines = log.read_bytes().splitlines(keepends=True)
    os.close(lg._fd)  # killed
    log.write_bytes(b"".join(lines[:-1]))
    with pytest.raises(UncleanLogError):
        verify(log, key.public_key(), require_clean=True, anchor=anchor)


def test_a_replaced_or_rewritten_log_is_behind_the_anchor(tmp_path: Path, key) -> None:
    log = tmp_path / "events.log"
    anchor = LogAnchor(tmp_path)
    _session(log, key, anchor, 5)
    ours = log.read_bytes()
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    _session(other / "events.log", key, LogAnchor(other), 12)  # same key, another log
    shutil.copyfile(other / "events.log", log)
    with pytest.raises(LogRolledBackError, match=r"it is log [0-9a-f]{32}, the anchor names"):
        verify(log, key.public_key(), anchor=anchor)
    # the same log id, but not the checkpoint the anchor names at its seq
    doc = _anchor_doc(tmp_path)
    recs = [json.loads(x) for x in ours.splitlines()[: doc["seq"]]]
    recs.append({"kind": "fallback", "time": 1.0, "data": {}})  # where the checkpoint was
    recs.append({"kind": "checkpoint", "time": 1.0, "data": {"final": True}})
    log.write_bytes(_seal(recs, key))  # a key holder's rewrite, validly signed
    assert verify(log, key.public_key(), require_clean=True).clean
    with pytest.raises(LogRolledBackError, match=f"record {doc['seq']} is not the signed"):
        verify(log, key.public_key(), anchor=anchor)


def test_a_deleted_log_is_behind_the_anchor_but_deleting_both_is_not_seen(
    tmp_path: Path, key
) -> None:
    log = tmp_path / "events.log"
    anchor = LogAnchor(tmp_path)
    _session(log, key, anchor, 5)
    log.unlink()
    with pytest.raises(LogRolledBackError, match="the log is empty, but the anchor records"):
        EventLog(log, signing_key=key, anchor=anchor)
    log.write_bytes(b"")
    with pytest.raises(LogRolledBackError, match="ends at record -1"):
        verify(log, key.public_key(), anchor=anchor)
    log.unlink()
    # without a counter, removing the anchor too leaves nothing that shows it
    (tmp_path / ANCHOR_NAME).unlink()
    _session(log, key, anchor, 1)
    assert verify(log, key.public_key(), require_clean=True, anchor=anchor).sessions == 1


def test_an_edited_or_foreign_anchor_is_an_integrity_error(tmp_path: Path, key) -> None:
    log = tmp_path / "events.log"
    anchor = LogAnchor(tmp_path)
    _session(log, key, anchor, 5)
    path = tmp_path / ANCHOR_NAME
    good = path.read_bytes()
    doc = json.loads(good)
    cases = {
        "signature does not verify": {**doc, "seq": doc["seq"] - 1},
        "wrong set of fields": {**doc, "extra": 1},
        "field of the wrong type": {**doc, "seq": True},
    }
    for match, edited in cases.items():
        path.write_bytes(json.dumps(edited, sort_keys=True, separators=(",", ":")).encode() + b"\n")
        with pytest.raises(IntegrityError, match=match):
            verify(log, key.public_key(), anchor=anchor)
    path.write_bytes(json.dumps(doc, sort_keys=True, indent=1).encode() + b"\n")
    with pytest.raises(IntegrityError, match=r"not an anchor|not in canonical form"):
        verify(log, key.public_key(), anchor=anchor)
    path.write_bytes(b"[" * 5000 + b"\n")
    with pytest.raises(IntegrityError, match="not an anchor"):
        verify(log, key.public_key(), anchor=anchor)
    path.write_bytes(good)
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(IntegrityError, match="written for a different key"):
        LogAnchor(tmp_path).load(other.public_key())


def test_unsafe_anchor_files_and_directories_are_refused(tmp_path: Path, key) -> None:
    log = tmp_path / "events.log"
    anchor = LogAnchor(tmp_path)
    _session(log, key, anchor, 5)
    path = tmp_path / ANCHOR_NAME
    saved = tmp_path / "saved.anchor"
    path.rename(saved)
    path.symlink_to(saved)
    with pytest.raises(StateStoreError, match="is a symbolic link"):
        verify(log, key.public_key(), anchor=anchor)
    with pytest.raises(StateStoreError, match="is a symbolic link"):
        EventLog(log, signing_key=key, anchor=anchor)
    path.unlink()
    shutil.copyfile(saved, path)
    os.chmod(path, 0o620)
    with pytest.raises(StateStoreError, match="writable by group or others"):
        verify(log, key.public_key(), anchor=anchor)
    os.chmod(path, 0o600)
    if os.geteuid() == 0:
        os.chown(path, 12345, -1)
        with pytest.raises(StateStoreError, match="owned by uid 12345"):
            verify(log, key.public_key(), anchor=anchor)
        os.chown(path, 0, -1)
    os.chmod(tmp_path, 0o777)
    try:
        with pytest.raises(StateStoreError, match=r"state directory .* writable by group"):
            verify(log, key.public_key(), anchor=anchor)
    finally:
        os.chmod(tmp_path, 0o700)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(StateStoreError, match="not a regular file"):
        verify(log, key.public_key(), anchor=anchor)
    path.unlink()
    # a link planted at the temporary name is not followed either (O_EXCL | O_NOFOLLOW)
    shutil.copyfile(saved, path)
    with EventLog(log, signing_key=key, checkpoint_every=2, anchor=anchor) as lg:
        lg.append("x", {})
    assert verify(log, key.public_key(), require_clean=True, anchor=anchor).clean


def test_the_anchor_never_moves_backwards_or_to_another_log(tmp_path: Path, key) -> None:
    log = tmp_path / "events.log"
    anchor = LogAnchor(tmp_path)
    _session(log, key, anchor, 5)
    doc = _anchor_doc(tmp_path)
    with pytest.raises(StateStoreError, match="refusing to move it"):
        anchor.advance(key, log_id=doc["log_id"], seq=doc["seq"], head=doc["head"])
    with pytest.raises(StateStoreError, match="refusing to move it"):
        anchor.advance(key, log_id="0" * 32, seq=doc["seq"] + 10, head=doc["head"])
    assert _anchor_doc(tmp_path) == doc


def test_an_anchor_that_cannot_be_written_is_an_error_and_the_log_stays_intact(
    tmp_path: Path, key, monkeypatch
) -> None:
    log = tmp_path / "events.log"
    anchor = LogAnchor(tmp_path)
    lg = EventLog(log, signing_key=key, checkpoint_every=2, anchor=anchor)
    lg.append("x", {})
    real = os.replace

    def full(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StateStoreError, match=r"cannot write event-log anchor .*No space"):
        lg.append("x", {})  # the record and its checkpoint are written; the anchor is not
    monkeypatch.setattr(os, "replace", real)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert not (tmp_path / ANCHOR_NAME).exists()
    lg.append("x", {})
    lg.close()  # the final checkpoint anchors again
    rep = verify(log, key.public_key(), require_clean=True, anchor=anchor)
    assert rep.anchor_seq == rep.last_seq


def test_cli_checks_the_anchor_beside_the_log_or_in_state_dir(tmp_path: Path, key, capsys) -> None:
    pub = tmp_path / "device.pub.pem"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    log = state / "events.log"
    _session(log, key, LogAnchor(state), 3)
    first = log.read_bytes()
    _session(log, key, LogAnchor(state), 3)
    base = ["log", "verify", "--pubkey-pem", str(pub)]
    assert main([*base, str(log), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["anchor"] == str(state / ANCHOR_NAME) and rep["anchor_seq"] == rep["last_seq"]
    copy = tmp_path / "copy.log"  # a copy elsewhere: the log alone, said so
    copy.write_bytes(first)
    assert main([*base, str(copy), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["anchor"] is None and rep["anchor_seq"] == -1 and rep["clean"]
    assert main([*base, str(copy)]) == 0
    assert "anchor" in capsys.readouterr().out
    assert main([*base, str(copy), "--state-dir", str(state)]) == 4
    err = capsys.readouterr().err
    assert err.startswith(f"edgeguard: error: event log {copy} is behind its anchor")
    assert err.count("\n") == 1
    assert main([*base, str(copy), "--state-dir", str(state), "--json"]) == 4
    out = json.loads(capsys.readouterr().out)
    assert (out["error"]["type"], out["error"]["exit_code"]) == ("LogRolledBackError", 4)
    empty = tmp_path / "empty-state"
    empty.mkdir(mode=0o700)
    assert main([*base, str(log), "--state-dir", str(empty)]) == 11
    assert "no event-log anchor" in capsys.readouterr().err


# -- the TPM counter (swtpm) -------------------------------------------------------------------


@pytest.fixture()
def tpm() -> Iterator[str]:
    """A fresh swtpm (its own NV) per test; yields its TCTI."""
    with running_swtpm(prefix="eg-nv-") as tcti:
        yield tcti


@pytest.mark.tpm
def test_tpm_counter_follows_every_checkpoint(tmp_path: Path, key, tpm: str) -> None:
    counter = TpmNvCounter(tpm)
    assert counter.read() is None
    log = tmp_path / "events.log"
    _session(log, key, LogAnchor(tmp_path, counter=counter), 5)  # 1 checkpoint + final
    value = counter.read()
    assert value is not None and _anchor_doc(tmp_path)["counter"] == value
    rep = verify(log, key.public_key(), anchor=LogAnchor(tmp_path, counter=counter))
    assert rep.counter_checked and rep.clean
    _session(log, key, LogAnchor(tmp_path, counter=counter), 1)
    assert counter.read() == value + 1 == _anchor_doc(tmp_path)["counter"]


@pytest.mark.tpm
def test_tpm_counter_detects_deleting_or_restoring_log_and_anchor(
    tmp_path: Path, key, tpm: str
) -> None:
    counter = TpmNvCounter(tpm)
    log = tmp_path / "events.log"
    _session(log, key, LogAnchor(tmp_path, counter=counter), 3)
    saved_log, saved_anchor = log.read_bytes(), (tmp_path / ANCHOR_NAME).read_bytes()
    _session(log, key, LogAnchor(tmp_path, counter=counter), 3)
    # the whole state rolled back: log and anchor agree, the counter does not
    log.write_bytes(saved_log)
    (tmp_path / ANCHOR_NAME).write_bytes(saved_anchor)
    assert verify(log, key.public_key(), require_clean=True, anchor=LogAnchor(tmp_path)).clean
    with pytest.raises(LogRolledBackError, match="older than TPM NV counter"):
        verify(log, key.public_key(), anchor=LogAnchor(tmp_path, counter=counter))
    with pytest.raises(LogRolledBackError, match="older than TPM NV counter"):
        EventLog(log, signing_key=key, anchor=LogAnchor(tmp_path, counter=counter))
    # both deleted
    log.unlink()
    (tmp_path / ANCHOR_NAME).unlink()
    with pytest.raises(LogRolledBackError, match=r"anchor .* is missing, but TPM NV counter"):
        EventLog(log, signing_key=key, anchor=LogAnchor(tmp_path, counter=counter))
    # without the counter nothing shows it
    _session(log, key, LogAnchor(tmp_path), 1)


@pytest.mark.tpm
def test_a_crash_between_anchor_and_counter_is_caught_up(
    tmp_path: Path, key, tpm: str, monkeypatch
) -> None:
    counter = TpmNvCounter(tpm)
    log = tmp_path / "events.log"
    _session(log, key, LogAnchor(tmp_path, counter=counter), 3)
    before = counter.read()
    lg = EventLog(
        log, signing_key=key, checkpoint_every=100, anchor=LogAnchor(tmp_path, counter=counter)
    )
    lg.append("x", {})

    def power_cut(self) -> int:
        raise KeyboardInterrupt  # the anchor is written, the counter not yet incremented

    monkeypatch.setattr(TpmNvCounter, "increment", power_cut)
    with pytest.raises(KeyboardInterrupt):
        lg.checkpoint()
    monkeypatch.undo()
    os.close(lg._fd)
    assert counter.read() == before and _anchor_doc(tmp_path)["counter"] == before + 1
    rep = verify(log, key.public_key(), anchor=LogAnchor(tmp_path, counter=counter))
    assert rep.counter_checked and not rep.clean
    again = EventLog(log, signing_key=key, anchor=LogAnchor(tmp_path, counter=counter))
    assert counter.read() == before + 1  # caught up at open, before any checkpoint
    again.close()
    assert counter.read() == before + 2 == _anchor_doc(tmp_path)["counter"]


@pytest.mark.tpm
def test_a_bound_anchor_needs_its_counter_to_write(tmp_path: Path, key, tpm: str) -> None:
    log = tmp_path / "events.log"
    _session(log, key, LogAnchor(tmp_path, counter=TpmNvCounter(tpm)), 3)
    with pytest.raises(StateStoreError, match="bound to a TPM counter"):
        EventLog(log, signing_key=key, anchor=LogAnchor(tmp_path))
    # a verifier without the TPM checks what it can, and says the counter was not checked
    rep = verify(log, key.public_key(), anchor=LogAnchor(tmp_path))
    assert rep.anchor_seq == rep.last_seq and not rep.counter_checked


# -- the counter logic without a TPM: a counter in memory -----------------------------------


class FakeCounter:
    """A monotonic counter in memory, as :class:`TpmNvCounter` behaves."""

    name = "fake counter"

    def __init__(self, start: int = 41) -> None:
        self.value: int | None = None
        self.start = start
        self.increments = 0

    def read(self) -> int | None:
        return self.value

    def increment(self) -> int:
        self.value = self.start if self.value is None else self.value + 1
        self.increments += 1
        return self.value


def test_counter_logic_follows_every_checkpoint_and_catches_up_at_open(tmp_path: Path, key) -> None:
    counter = FakeCounter()
    log = tmp_path / "events.log"
    _session(log, key, LogAnchor(tmp_path, counter=counter), 5)  # checkpoint + final
    # first use: one increment to learn the value, then one per checkpoint
    assert counter.value == 43 and counter.increments == 3
    assert _anchor_doc(tmp_path)["counter"] == 43
    # a crash after the anchor was written, before the increment
    counter.value = 42
    lg = EventLog(log, signing_key=key, anchor=LogAnchor(tmp_path, counter=counter))
    assert counter.value == 43  # caught up at open, before any checkpoint
    lg.close()
    assert counter.value == 44 == _anchor_doc(tmp_path)["counter"]
    rep = verify(log, key.public_key(), anchor=LogAnchor(tmp_path, counter=counter))
    assert rep.counter_checked and rep.clean


def test_counter_logic_refusals_word_for_word(tmp_path: Path, key) -> None:
    counter = FakeCounter()
    log = tmp_path / "events.log"
    path = tmp_path / ANCHOR_NAME
    _session(log, key, LogAnchor(tmp_path, counter=counter), 1)
    old_log, old_anchor = log.read_bytes(), path.read_bytes()
    _session(log, key, LogAnchor(tmp_path, counter=counter), 1)
    assert counter.value == 43
    log.write_bytes(old_log)
    path.write_bytes(old_anchor)
    with pytest.raises(LogRolledBackError) as ei:
        verify(log, key.public_key(), anchor=LogAnchor(tmp_path, counter=counter))
    assert str(ei.value) == (
        f"event-log anchor {path} is older than fake counter: bound to 42, the counter is "
        "at 43; an earlier anchor was restored"
    )
    assert ei.value.hint == "the log and its anchor were rolled back"
    path.unlink()
    with pytest.raises(LogRolledBackError) as ei:
        EventLog(log, signing_key=key, anchor=LogAnchor(tmp_path, counter=counter))
    assert str(ei.value) == (
        f"event-log anchor {path} is missing, but fake counter is at 43: "
        "the anchor (and the log) were deleted"
    )
    assert ei.value.hint == "a device whose log is reset on purpose must reset the counter too"
    path.write_bytes(old_anchor)
    counter.value = 40  # another TPM, or a cleared one that counts from lower
    with pytest.raises(IntegrityError) as ei:
        verify(log, key.public_key(), anchor=LogAnchor(tmp_path, counter=counter))
    assert str(ei.value) == (
        f"event-log anchor {path} is bound to 42, but fake counter is at 40: "
        "not this device's TPM, or it was cleared"
    )
    counter.value = None
    with pytest.raises(IntegrityError) as ei:
        verify(log, key.public_key(), anchor=LogAnchor(tmp_path, counter=counter))
    assert str(ei.value) == (
        f"event-log anchor {path} is bound to fake counter at 42, but the counter was "
        "never incremented: it was deleted or the TPM cleared"
    )
    with pytest.raises(StateStoreError) as ei:
        EventLog(log, signing_key=key, anchor=LogAnchor(tmp_path))
    assert str(ei.value) == (
        f"event-log anchor {path} is bound to a TPM counter, but no counter was given"
    )
    assert ei.value.hint == "set EDGEGUARD_TPM to the device's TPM (its TCTI)"
    # an anchor written before the counter was configured is bound at the next checkpoint
    fresh = tmp_path / "fresh"
    fresh.mkdir(mode=0o700)
    _session(fresh / "events.log", key, LogAnchor(fresh), 1)
    unbound = (fresh / ANCHOR_NAME).read_bytes()
    c2 = FakeCounter(start=7)
    _session(fresh / "events.log", key, LogAnchor(fresh, counter=c2), 1)
    assert _anchor_doc(fresh)["counter"] == c2.value == 8
    (fresh / ANCHOR_NAME).write_bytes(unbound)  # the anchor from before the counter, put back
    with pytest.raises(LogRolledBackError, match="bound to None, the counter is at 8"):
        verify(fresh / "events.log", key.public_key(), anchor=LogAnchor(fresh, counter=c2))


def test_someone_else_incrementing_the_counter_is_an_integrity_error(tmp_path: Path, key) -> None:
    counter = FakeCounter()
    log = tmp_path / "events.log"
    lg = EventLog(
        log, signing_key=key, checkpoint_every=2, anchor=LogAnchor(tmp_path, counter=counter)
    )
    lg.append("x", {})
    lg.append("x", {})  # a checkpoint: the counter is at 42
    counter.value = 47  # someone else
    lg.append("x", {})
    with pytest.raises(IntegrityError) as ei:
        lg.append("x", {})
    assert str(ei.value) == (
        "fake counter went from 42 to 48 on one increment: someone else increments it"
    )
    os.close(lg._fd)


def test_behind_messages_name_the_log_and_the_anchor(tmp_path: Path, key) -> None:
    log = tmp_path / "events.log"
    anchor = LogAnchor(tmp_path)
    _session(log, key, anchor, 5)
    doc = _anchor_doc(tmp_path)
    recs = [json.loads(x) for x in log.read_bytes().splitlines()]
    # a key holder rewrites record 2: the checkpoint at the anchor's seq has another head
    recs[2]["data"]["i"] = 99
    log.write_bytes(_seal(recs, key))
    assert verify(log, key.public_key(), require_clean=True).clean
    with pytest.raises(LogRolledBackError) as ei:
        verify(log, key.public_key(), anchor=anchor)
    assert str(ei.value) == (
        f"event log {log} is behind its anchor {anchor.path}: record {doc['seq']} is not "
        "the signed checkpoint the anchor names"
    )
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    _session(other / "events.log", key, LogAnchor(other), 1)
    shutil.copyfile(other / "events.log", log)
    other_id = json.loads((other / "events.log").read_bytes().splitlines()[0])["data"]["log_id"]
    with pytest.raises(LogRolledBackError) as ei:
        verify(log, key.public_key(), anchor=anchor)
    assert str(ei.value) == (
        f"event log {log} is behind its anchor {anchor.path}: it is log {other_id}, "
        f"the anchor names {doc['log_id']}"
    )
    log.unlink()
    with pytest.raises(LogRolledBackError) as ei:
        EventLog(log, signing_key=key, anchor=anchor)
    assert str(ei.value) == (
        f"event log {log} is behind its anchor {anchor.path}: the log is empty, but the "
        f"anchor records a signed checkpoint at record {doc['seq']} of log {doc['log_id']}: "
        "it was deleted or cut back"
    )

"""``edgeguard log verify``: exit codes and output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeguard.cli.main import main
from edgeguard.guard.eventlog import EventLog


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, Path, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    pub = tmp_path / "device.pub.pem"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    log = tmp_path / "events.log"
    with EventLog(log, signing_key=key, checkpoint_every=3) as lg:
        for i in range(7):
            lg.append("fallback", {"frame": i})
    return log, pub, key


def test_verify_ok_json(setup, capsys) -> None:
    log, pub, _ = setup
    assert main(["log", "verify", str(log), "--pubkey-pem", str(pub), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["clean"] is True and rep["kinds"]["fallback"] == 7


def test_verify_ok_table(setup, capsys) -> None:
    log, pub, _ = setup
    assert main(["log", "verify", str(log), "--pubkey-pem", str(pub)]) == 0
    assert "clean" in capsys.readouterr().out


def test_tampered_log_exit_4(setup, capsys) -> None:
    log, pub, _ = setup
    log.write_bytes(log.read_bytes().replace(b'"frame":3', b'"frame":4'))
    assert main(["log", "verify", str(log), "--pubkey-pem", str(pub)]) == 4
    err = capsys.readouterr().err
    assert err.startswith("edgeguard: error: event log: record") and err.count("\n") == 1


def test_unclean_end(setup, capsys) -> None:
    log, pub, _ = setup
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-2]))
    assert main(["log", "verify", str(log), "--pubkey-pem", str(pub)]) == 13
    assert "writer stopped without closing after record 8" in capsys.readouterr().err
    assert (
        main(["log", "verify", str(log), "--pubkey-pem", str(pub), "--allow-unclean", "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["clean"] is False


@pytest.fixture()
def killed(tmp_path: Path) -> tuple[Path, Path]:
    """The log as a writer killed after its last append leaves it (no close)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pub = tmp_path / "device.pub.pem"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    log = tmp_path / "events.log"
    lg = EventLog(log, signing_key=key, checkpoint_every=3)
    for i in range(5):
        lg.append("fallback", {"frame": i})
    # 0 log_open, 1-3 frames, 4 checkpoint, 5-6 frames: copied before close
    shutil.copyfile(log, tmp_path / "killed.log")
    lg.close()
    return tmp_path / "killed.log", pub


def test_killed_writer_exit_13(killed, capsys) -> None:
    log, pub = killed
    assert main(["log", "verify", str(log), "--pubkey-pem", str(pub)]) == 13
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.count("\n") == 1
    assert cap.err.startswith("edgeguard: error: event log ")
    assert (
        ": writer stopped without closing after record 6; "
        "2 record(s) after the last signed checkpoint (record 4) (" in cap.err
    )
    assert main(["log", "verify", str(log), "--pubkey-pem", str(pub), "--allow-unclean"]) == 0
    cap = capsys.readouterr()
    assert "writer stopped without closing after record 6" in cap.out and cap.err == ""


def test_killed_writer_json_prints_report_and_exits_13(killed, capsys) -> None:
    log, pub = killed
    assert main(["log", "verify", str(log), "--pubkey-pem", str(pub), "--json"]) == 13
    cap = capsys.readouterr()
    rep = json.loads(cap.out)
    assert rep["clean"] is False and rep["last_seq"] == 6 and rep["unsigned_tail"] == 2
    assert rep["status"] == "writer stopped without closing after record 6"
    assert "writer stopped without closing" in cap.err and cap.err.count("\n") == 1
    args = ["log", "verify", str(log), "--pubkey-pem", str(pub), "--json", "--allow-unclean"]
    assert main(args) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["status"] == rep["status"] and cap.err == ""


def test_edit_in_killed_writers_log_is_tampering_not_unclean(killed, capsys) -> None:
    log, pub = killed
    assert main(["log", "verify", str(log), "--pubkey-pem", str(pub)]) == 13
    capsys.readouterr()
    lines = log.read_bytes().splitlines(keepends=True)
    for victim in (2, 6):  # a signed record, and one after the last checkpoint
        edited = list(lines)
        edited[victim] = edited[victim].replace(b'"frame":', b'"frame":1')
        assert edited[victim] != lines[victim]
        log.write_bytes(b"".join(edited))
        for extra in ([], ["--allow-unclean"], ["--json"]):
            assert main(["log", "verify", str(log), "--pubkey-pem", str(pub), *extra]) == 4
            cap = capsys.readouterr()
            if extra == ["--json"]:  # the error, for the program reading stdout
                err = json.loads(cap.out)["error"]
                assert (err["type"], err["exit_code"]) == ("IntegrityError", 4)
            else:
                assert cap.out == ""
            assert cap.err.startswith(
                f"edgeguard: error: event log: record {victim} (line {victim + 1}):"
            )
            assert "writer stopped" not in cap.err


def test_torn_last_line_is_unclean_not_tampering(killed, capsys) -> None:
    log, pub = killed
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines) + lines[5][:40])  # killed in the middle of a write
    assert main(["log", "verify", str(log), "--pubkey-pem", str(pub)]) == 13
    assert "after record 6; " in capsys.readouterr().err
    args = ["log", "verify", str(log), "--pubkey-pem", str(pub), "--allow-unclean", "--json"]
    assert main(args) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["torn_tail_bytes"] == 40 and rep["records"] == 7 and rep["clean"] is False


def test_key_refusals(setup, tmp_path: Path, capsys) -> None:
    log, _, _ = setup
    assert main(["log", "verify", str(log)]) == 2
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    assert main(["log", "verify", str(log), "--pubkey-pem", str(bad)]) == 9
    other = tmp_path / "p384.pem"
    other.write_bytes(
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert main(["log", "verify", str(log), "--pubkey-pem", str(other)]) == 9
    assert main(["log", "verify", str(tmp_path / "nope.log"), "--pubkey-pem", str(setup[1])]) == 2


def test_help(capsys) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["log", "verify", "--help"])
    assert ei.value.code == 0
    assert "--pubkey-pem" in capsys.readouterr().out


@pytest.mark.parametrize("line", [b"[" * 100_000, b'{"a":' * 100_000 + b"0" + b"}" * 100_000])
def test_deeply_nested_line_is_exit_4_not_an_internal_error(setup, capsys, line: bytes) -> None:
    log, pub, _ = setup
    n = len(log.read_bytes().splitlines())
    log.write_bytes(log.read_bytes() + line + b"\n")
    assert main(["log", "verify", str(log), "--pubkey-pem", str(pub)]) == 4
    err = capsys.readouterr().err
    assert err.startswith(f"edgeguard: error: event log: record {n} (line {n + 1}): nested deeper")
    assert err.count("\n") == 1


def test_symlinked_log_is_refused_with_one_line(setup, tmp_path: Path, capsys) -> None:
    log, pub, _ = setup
    link = tmp_path / "link.log"
    link.symlink_to(log)
    assert main(["log", "verify", str(link), "--pubkey-pem", str(pub)]) == 12
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.count("\n") == 1
    assert cap.err.startswith(f"edgeguard: error: event log {link} is a symbolic link")

"""``edgeguard log verify``: exit codes and output."""

from __future__ import annotations

import json
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
    assert main(["log", "verify", str(log), "--pubkey-pem", str(pub)]) == 4
    assert "unclean end after record" in capsys.readouterr().err
    assert (
        main(["log", "verify", str(log), "--pubkey-pem", str(pub), "--allow-unclean", "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["clean"] is False


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

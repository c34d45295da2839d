"""``edgeguard attest ...``: the CLI contract (run through the subcommand's own parser)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from edgeguard.cli import cmd_attest
from edgeguard.errors import EdgeguardError

from .conftest import World


def attest(argv: Sequence[object]) -> int:
    """Parse and run like ``edgeguard.cli.main`` does (one-line errors, exit codes)."""
    parser = argparse.ArgumentParser(prog="edgeguard")
    cmd_attest.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["attest", *map(str, argv)])
    try:
        return int(args.func(args))
    except EdgeguardError as exc:
        print(f"edgeguard: error: {exc.one_line()}")
        return exc.exit_code


@pytest.fixture
def files(world: World, tmp_path: Path) -> dict[str, Path]:
    k = world.root / "keys"
    return {
        "state": tmp_path / "verifier",
        "nonce": tmp_path / "nonce.json",
        "ev": tmp_path / "evidence.cbor",
        "dkey": k / "device.key",
        "dpub": k / "device.pub",
        "spub": k / "signer.pub",
        "skey": k / "signer.key",
    }


def test_help_of_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    for sub in ("challenge", "quote", "verify", "enroll-tpm", "reference"):
        with pytest.raises(SystemExit) as exc:
            attest([sub, "--help"])
        assert exc.value.code == 0
    assert "--reference" in capsys.readouterr().out


def test_challenge_quote_verify_and_replay(
    world: World, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    f = files
    assert attest(["challenge", "-o", f["nonce"], "--state-dir", f["state"]]) == 0
    quote = ["quote", world.bundle, "--device-key", f["dkey"], "--trust", f["spub"]]
    quote += ["--nonce", f["nonce"], "-o", f["ev"], "--state-dir", world.state]
    assert attest(quote) == 0
    verify = ["verify", f["ev"], "--nonce", f["nonce"], "--reference", world.reference]
    verify += ["--device-pub", f["dpub"], "--trust", f["spub"], "--state-dir", f["state"]]
    capsys.readouterr()
    assert attest([*verify, "--json"]) == 0
    ear = json.loads(capsys.readouterr().out)
    sub = ear["submods"]["edgeguard"]
    assert ear["ok"] is True and sub["ear.status"] == "warning"
    assert sub["edgeguard.assurance"] == "software"
    assert sub["edgeguard.claims"]["nonce"]["status"] == "affirming"
    # replay: same evidence, same nonce -> exit 4 with the reason in the table
    assert attest(verify) == 4
    out = capsys.readouterr().out
    assert "nonce was already used (replay)" in out and "FAIL" in out


def test_verify_refusals(
    world: World, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = files
    assert attest(["challenge", "-o", f["nonce"], "--state-dir", f["state"]]) == 0
    verify = ["verify", f["ev"], "--nonce", f["nonce"], "--reference", world.reference]
    verify += ["--device-pub", f["dpub"], "--state-dir", f["state"]]
    assert attest([*verify, "--trust", f["spub"]]) == 2  # no evidence file yet
    assert "does not exist" in capsys.readouterr().out
    f["ev"].write_bytes(b"\x00garbage")
    assert attest([*verify, "--trust", f["spub"], "--require-tpm"]) == 4
    assert "evidence is malformed" in capsys.readouterr().out
    # the reference must be signed by a trusted key
    mallory = tmp_path / "mallory"
    from edgeguard.crypto.keys import SignerKey
    from edgeguard.keystore import write_keypair

    write_keypair(SignerKey.generate(), mallory.with_suffix(".key"), mallory.with_suffix(".pub"))
    assert attest([*verify, "--trust", mallory.with_suffix(".pub")]) == 5
    assert "not in the trust store" in capsys.readouterr().out


def test_reference_subcommand(world: World, files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ref.json"
    assert attest(["reference", world.bundle, "--sign-key", files["skey"], "-o", out]) == 0
    from edgeguard.attest.reference import load_reference_values

    a = load_reference_values(out, trust=world.trust)
    b = load_reference_values(world.reference, trust=world.trust)
    # same bundle, same code: identical except for kernels found on this host
    assert [m for m in a.measurements if m.kind != "kernel"] == [
        m for m in b.measurements if m.kind != "kernel"
    ]
    assert a.device_profiles == b.device_profiles and a.manifest_digest == b.manifest_digest


@pytest.mark.tpm
def test_enroll_and_tpm_quote_via_cli(
    world: World,
    files: dict[str, Path],
    swtpm: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    f = files
    ak = tmp_path / "ak.pub"
    assert attest(["enroll-tpm", "--device-key", f["dkey"], "--tpm", swtpm, "-o", ak]) == 0
    assert ak.read_text().startswith("-----BEGIN EDGEGUARD TPM AK PUBLIC-----")
    assert attest(["challenge", "-o", f["nonce"], "--state-dir", f["state"]]) == 0
    quote = ["quote", world.bundle, "--device-key", f["dkey"], "--trust", f["spub"]]
    quote += ["--nonce", f["nonce"], "-o", f["ev"], "--state-dir", world.state, "--tpm", swtpm]
    assert attest(quote) == 0
    verify = ["verify", f["ev"], "--nonce", f["nonce"], "--reference", world.reference]
    verify += ["--device-pub", f["dpub"], "--trust", f["spub"], "--state-dir", f["state"]]
    capsys.readouterr()
    assert attest([*verify, "--ak-pub", ak, "--require-tpm", "--json"]) == 0
    sub = json.loads(capsys.readouterr().out)["submods"]["edgeguard"]
    assert sub["ear.status"] == "affirming" and sub["edgeguard.assurance"] == "tpm"

"""``edgeguard sandbox-check``: report, JSON, policy sources and refusal (exit code 6)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from edgeguard.cli import cmd_sandbox_check
from edgeguard.errors import EdgeguardError, MalformedError, PolicyError, UsageError
from edgeguard.runtime.sandbox import LAYERS, HostCapabilities


def run(*argv: str) -> int:
    p = argparse.ArgumentParser()
    cmd_sandbox_check.register(p.add_subparsers())
    args = p.parse_args(["sandbox-check", *argv])
    code: int = args.func(args)
    return code


def test_json_report(capsys: pytest.CaptureFixture[str], caps: HostCapabilities) -> None:
    assert run("--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["error"] is None
    assert [r["layer"] for r in out["layers"]] == list(LAYERS)
    for r in out["layers"]:
        assert r["available"] == caps.available(r["layer"])
        assert r["plan"] == ("apply" if r["available"] else "skip")
    assert out["host"]["landlock_abi"] == caps.landlock_abi


def test_human_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert run() == 0
    text = capsys.readouterr().out
    assert "seccomp" in text and "landlock" in text and "OK: the policy can be met" in text


def test_refuses_when_a_required_layer_is_missing(
    capsys: pytest.CaptureFixture[str], caps: HostCapabilities, tmp_path: Path
) -> None:
    missing = [layer for layer in LAYERS if not caps.available(layer)]
    if not missing:
        pytest.skip("every layer is available on this host; nothing to refuse")
    pol = tmp_path / "runtime.json"
    pol.write_text(json.dumps({"sandbox": {missing[0]: "required"}}))
    with pytest.raises(PolicyError) as ei:
        run("--json", "--policy", str(pol))
    assert ei.value.exit_code == 6 and missing[0] in str(ei.value)
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False
    row = next(r for r in out["layers"] if r["layer"] == missing[0])
    assert row["plan"] == "MISSING"
    with pytest.raises(PolicyError):
        run("--require", missing[0])


def test_off_layers_are_never_refused(tmp_path: Path) -> None:
    pol = tmp_path / "p.json"
    pol.write_text(json.dumps({layer: "off" for layer in LAYERS}))
    assert run("--json", "--policy", str(pol)) == 0


def test_bad_inputs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MalformedError):
        run("--policy", str(bad))
    bad.write_text(json.dumps({"seccomp": "mandatory"}))
    with pytest.raises(MalformedError):
        run("--policy", str(bad))
    with pytest.raises(UsageError):
        run("--policy", str(tmp_path / "missing.json"))
    with pytest.raises(UsageError):
        run("--require", "selinux")
    with pytest.raises(UsageError):
        run("--bundle", str(tmp_path / "x.egb"))  # no --trust
    with pytest.raises(EdgeguardError):
        run("--bundle", str(tmp_path / "x.egb"), "--trust", str(tmp_path / "k.pub"))

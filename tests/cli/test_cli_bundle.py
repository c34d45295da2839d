"""The CLI contract: names, files, exit codes, one-line errors."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeguard import data
from edgeguard.cli.main import main
from tests.helpers import eg


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    k = d / "keys"
    assert main(["keygen", "signer", "-o", str(k)]) == 0
    assert main(["keygen", "device", "-o", str(k / "cam"), "--id", "cam-01"]) == 0
    assert (
        main(["keygen", "device", "-o", str(k / "other"), "--id", "cam-02", "--kem", "p256"]) == 0
    )
    assert main(["keygen", "signer", "-o", str(k / "mallory")]) == 0
    b = d / "digits.egb"
    rc = main(
        [
            "build",
            str(data.model_path("digits_mlp")),
            "-o",
            str(b),
            "--sign-key",
            str(k / "signer.key"),
            "--recipient",
            str(k / "cam" / "device.pub"),
            "--device-profile",
            "generic-cpu",
            "--version",
            "3",
            "--expires",
            "2099-01-01",
        ]
    )
    assert rc == 0
    images, labels = data.load_split("test")
    np.savez(d / "in.npz", image=images[:50])
    return {"d": d, "k": k, "bundle": b, "labels": labels[:50]}  # type: ignore[dict-item]


def test_keygen_files_and_modes(world) -> None:
    k = world["k"]
    for p in (k / "signer.key", k / "cam" / "device.key"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert (k / "signer.pub").read_text().startswith("-----BEGIN EDGEGUARD PUBLIC KEY-----")
    r = eg("keygen", "signer", "-o", k)
    assert r.returncode == 2 and "already exists" in r.stderr
    r = eg("keygen", "device", "-o", k / "x")
    assert r.returncode == 2 and "needs --id" in r.stderr
    r = eg("keygen", "device", "-o", k / "x", "--id", "a", "--profile", "no-such-board")
    assert r.returncode == 2 and "no-such-board" in r.stderr


def test_run_writes_outputs_and_json(world, tmp_path) -> None:
    out = tmp_path / "out.npz"
    r = eg(
        "run",
        world["bundle"],
        "--trust",
        world["k"] / "signer.pub",
        "--device-key",
        world["k"] / "cam" / "device.key",
        "--input",
        world["d"] / "in.npz",
        "--output",
        out,
        "--state-dir",
        tmp_path / "state",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    *frames, last = (json.loads(line) for line in r.stdout.splitlines())
    summary = last["summary"]
    assert summary["frames"] == len(frames) == 50
    assert summary["sources"] == {"single_member": 50} and summary["isolation"] == "sandbox"
    logits = np.load(out)["logits"]
    assert logits.shape == (50, 10)
    assert np.mean(np.argmax(logits, axis=1) == world["labels"]) > 0.9


def test_run_default_state_dir_is_used(world, tmp_path) -> None:
    env = {"EDGEGUARD_STATE_DIR": str(tmp_path / "default-state")}
    r = eg(
        "run",
        world["bundle"],
        "--trust",
        world["k"] / "signer.pub",
        "--device-key",
        world["k"] / "cam" / "device.key",
        "--input",
        world["d"] / "in.npz",
        "--output",
        tmp_path / "o.npz",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "default-state" / "versions.json").exists()


def test_inspect_needs_no_secrets(world) -> None:
    r = eg("inspect", world["bundle"], "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["name"] == "digits_mlp" and d["version"] == 3 and d["verified"] is False
    assert d["members"][0]["format"] == "onnx"
    r = eg("inspect", world["bundle"])
    assert r.returncode == 0 and "signature not verified" in r.stdout


def test_verify_levels(world, tmp_path) -> None:
    r = eg("verify", world["bundle"], "--trust", world["k"] / "signer.pub")
    assert r.returncode == 0 and "payload digest" in r.stdout
    r = eg(
        "verify",
        world["bundle"],
        "--trust",
        world["k"] / "signer.pub",
        "--device-key",
        world["k"] / "cam" / "device.key",
        "--state-dir",
        tmp_path,
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True
    assert not (tmp_path / "versions.json").exists()  # verify never records


def _one_line_no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("edgeguard: error: ")


def test_exit_codes_for_each_error_class(world, tmp_path) -> None:
    k, b = world["k"], world["bundle"]
    tampered = tmp_path / "t.egb"
    raw = bytearray(b.read_bytes())
    raw[-100] ^= 4
    tampered.write_bytes(bytes(raw))
    garbage = tmp_path / "g.egb"
    garbage.write_bytes(b"hello world")
    cases = {
        "usage: no trust": (["verify", b], 2),
        "usage: missing file": (["verify", tmp_path / "nope.egb", "--trust", k / "signer.pub"], 2),
        "malformed": (["verify", garbage, "--trust", k / "signer.pub"], 3),
        "integrity": (["verify", tampered, "--trust", k / "signer.pub"], 4),
        "untrusted": (["verify", b, "--trust", k / "mallory" / "signer.pub"], 5),
        "policy: not a recipient": (
            [
                "verify",
                b,
                "--trust",
                k / "signer.pub",
                "--device-key",
                k / "other" / "device.key",
                "--state-dir",
                tmp_path,
            ],
            6,
        ),
        "key file: wrong kind": (["verify", b, "--trust", k / "cam" / "device.pub"], 9),
    }
    for name, (args, code) in cases.items():
        r = eg(*args)
        assert r.returncode == code, (name, r.returncode, r.stderr)
        _one_line_no_traceback(r)


def test_an_unsafe_state_dir_is_one_line_with_exit_11(world, tmp_path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    r = eg(
        "verify",
        world["bundle"],
        "--trust",
        world["k"] / "signer.pub",
        "--device-key",
        world["k"] / "cam" / "device.key",
        "--state-dir",
        state,
    )
    assert r.returncode == 11, r.stderr
    _one_line_no_traceback(r)
    assert "writable by group or others" in r.stderr and f"chmod 700 {state}" in r.stderr


def test_a_clock_set_back_behind_the_time_floor_warns_and_does_not_revive(world, tmp_path) -> None:
    import time

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    verify = [
        "verify",
        world["bundle"],  # expires 2099-01-01
        "--trust",
        world["k"] / "signer.pub",
        "--device-key",
        world["k"] / "cam" / "device.key",
        "--state-dir",
        state,
    ]

    def floor(t: int) -> None:
        doc = {"schema": 2, "time_floor": t, "entries": {}}
        (state / "versions.json").write_text(json.dumps(doc))
        (state / "versions.json").chmod(0o600)

    floor(int(time.time()) + 86_400)  # this device opened a bundle a day from now
    r = eg(*verify)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("edgeguard: warning: the clock (") and "time floor" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    floor(4_102_444_800)  # 2100-01-01: the clock was set back past the bundle's expiry
    r = eg(*verify)
    assert r.returncode == 6, r.stderr
    _one_line_no_traceback(r)
    assert "expired at 2099-01-01T00:00:00Z (time floor 2100-01-01T00:00:00Z" in r.stderr


def test_rollback_and_expiry_exit_codes(world, tmp_path) -> None:
    k = world["k"]
    state = tmp_path / "state"
    common = [
        "--sign-key",
        k / "signer.key",
        "--recipient",
        k / "cam" / "device.pub",
        "--device-profile",
        "generic-cpu",
    ]
    model = data.model_path("digits_mlp")
    for v in (1, 2):
        assert (
            eg(
                "build", model, "-o", tmp_path / f"v{v}.egb", *common, "--version", v, "--name", "d"
            ).returncode
            == 0
        )
    run = [
        "--trust",
        k / "signer.pub",
        "--device-key",
        k / "cam" / "device.key",
        "--input",
        world["d"] / "in.npz",
        "--output",
        tmp_path / "o.npz",
        "--state-dir",
        state,
    ]
    assert eg("run", tmp_path / "v2.egb", *run).returncode == 0
    r = eg("run", tmp_path / "v1.egb", *run)
    assert r.returncode == 6 and "rollback" in r.stderr
    _one_line_no_traceback(r)
    r = eg(
        "build", model, "-o", tmp_path / "e.egb", *common, "--version", 9, "--expires", "2001-01-01"
    )
    assert r.returncode == 2 and "expiry" in r.stderr


def test_build_refuses_bad_models_and_profiles(world, tmp_path) -> None:
    k = world["k"]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx at all")
    common = [
        "-o",
        tmp_path / "x.egb",
        "--sign-key",
        k / "signer.key",
        "--recipient",
        k / "cam" / "device.pub",
        "--version",
        1,
    ]
    r = eg("build", bad, *common, "--device-profile", "generic-cpu")
    assert r.returncode == 3 and "ONNX" in r.stderr
    r = eg("build", data.model_path("digits_mlp"), *common, "--device-profile", "nope")
    assert r.returncode == 2 and "nope" in r.stderr
    _one_line_no_traceback(r)
    assert not (tmp_path / "x.egb").exists()


def test_passphrase_protected_signer(tmp_path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    assert eg("keygen", "signer", "-o", tmp_path, "--passphrase-file", pw).returncode == 0
    r = eg(
        "build",
        data.model_path("digits_mlp"),
        "-o",
        tmp_path / "b.egb",
        "--sign-key",
        tmp_path / "signer.key",
        "--recipient",
        tmp_path / "signer.pub",
        "--device-profile",
        "generic-cpu",
        "--version",
        1,
    )
    assert r.returncode == 9 and "passphrase" in r.stderr
    r = eg(
        "build",
        data.model_path("digits_mlp"),
        "-o",
        tmp_path / "b.egb",
        "--sign-key",
        tmp_path / "signer.key",
        "--recipient",
        tmp_path / "signer.pub",
        "--device-profile",
        "generic-cpu",
        "--version",
        1,
        env={"EDGEGUARD_PASSPHRASE": "wrong"},
    )
    assert r.returncode == 9 and "wrong passphrase" in r.stderr


def test_every_help_runs() -> None:
    for cmd in ("keygen", "build", "inspect", "verify", "run", "demo", "devices"):
        r = eg(cmd, "--help")
        assert r.returncode == 0 and "usage:" in r.stdout, cmd


def test_import_does_not_pull_heavy_modules() -> None:
    code = (
        "import sys, edgeguard, edgeguard.api, edgeguard.cli.main, edgeguard.bundle, "
        "edgeguard.crypto.keys, edgeguard.runtime.opener, edgeguard.keystore\n"
        "edgeguard.cli.main.build_parser()\n"
        "bad = [m for m in ('onnxruntime', 'numba', 'tensorrt', 'pycuda') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_missing_optional_dependency_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['tensorrt'] = None\n"
        "from edgeguard.errors import MissingDependencyError\n"
        "from edgeguard._optional import require\n"
        "try:\n"
        "    require('tensorrt', extra='trt', purpose='The TensorRT backend')\n"
        "except MissingDependencyError as e:\n"
        "    print(e.exit_code, e.one_line())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.stdout.startswith("7 ") and "edgeguard[trt]" in r.stdout


def test_every_command_has_an_example_in_its_help() -> None:
    import argparse

    from edgeguard.cli.main import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: str = "") -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    key = f"{path} {name}".strip()
                    if "example: edgeguard" not in (sub.epilog or ""):
                        missing.append(key)
                    walk(sub, key)

    walk(build_parser())
    assert missing == []

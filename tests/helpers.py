"""Helpers shared by the CLI tests: run the real CLI, make keys, build bundles."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeguard.cli.main import main
from edgeguard.errors import EdgeguardError

EG = [sys.executable, "-m", "edgeguard.cli.main"]


def eg(
    *args: object, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (true exit codes, real stderr)."""
    return subprocess.run(
        [*EG, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )


def make_keys(d: Path, device_id: str = "cam-01") -> None:
    """``d/signer.{key,pub}`` and ``d/dev/device.{key,pub}``."""
    assert main(["keygen", "signer", "-o", str(d)]) == 0
    assert main(["keygen", "device", "-o", str(d / "dev"), "--id", device_id]) == 0


def build(
    d: Path, out: Path, *models: object, version: int = 1, extra: tuple[object, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``edgeguard build`` with the keys of :func:`make_keys` for profile generic-cpu."""
    return eg(
        "build",
        *models,
        "-o",
        out,
        "--sign-key",
        d / "signer.key",
        "--recipient",
        d / "dev" / "device.pub",
        "--device-profile",
        "generic-cpu",
        "--version",
        version,
        *extra,
    )


def run_bundle(
    d: Path, bundle: Path, inputs: Path, output: Path, state: Path, *extra: object
) -> subprocess.CompletedProcess[str]:
    """``edgeguard run`` as the device of :func:`make_keys`."""
    return eg(
        "run",
        bundle,
        "--trust",
        d / "signer.pub",
        "--device-key",
        d / "dev" / "device.key",
        "--input",
        inputs,
        "--output",
        output,
        "--state-dir",
        state,
        *extra,
    )


def refused(
    kind: type[Exception], message: str, call: Callable[[], object], *, hint: str | None = None
) -> Exception:
    """``call`` raises exactly ``kind`` with exactly ``message`` (and ``hint``)."""
    with pytest.raises(kind) as err:
        call()
    assert type(err.value) is kind
    assert str(err.value) == message
    if isinstance(err.value, EdgeguardError):
        assert err.value.hint == hint
    return err.value

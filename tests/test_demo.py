"""`edgeguard demo` (the README's main job) runs end to end and exits 0."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_and_every_check_passes(tmp_path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "edgeguard.cli.main", "demo", "--workdir", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "demo passed" in out
    for needle in (
        "IntegrityError",
        "RollbackError",
        "NotARecipientError",
        "DeviceNotAllowedError",
        "UntrustedSignerError",
        "BundleExpiredError",
        "accuracy",
        "unchanged",
    ):
        assert needle in out, needle
    assert not (tmp_path / "w").exists()  # removed unless --keep

"""A software TPM for tests: why it is unavailable, or a running swtpm and its TCTI."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def tpm_unavailable() -> str | None:
    """Why the TPM tests cannot run here, or None when swtpm and tpm2-pytss are usable."""
    if shutil.which("swtpm") is None:
        return "swtpm is not installed (Debian package 'swtpm')"
    if importlib.util.find_spec("tpm2_pytss") is None:
        return "tpm2-pytss is not installed (pip install 'edgeguard[tpm]', needs libtss2-dev)"
    try:
        import tpm2_pytss  # noqa: F401
    except Exception as exc:  # the C libraries may be missing
        return f"tpm2-pytss cannot load the TSS libraries: {exc}"
    return None


@contextlib.contextmanager
def running_swtpm(prefix: str = "eg-swtpm-") -> Iterator[str]:
    """Start a swtpm with its own state on a unix socket; yield its TCTI string.

    Skips the test when the TPM stack is unavailable or swtpm exits at start; fails it
    when the socket does not open within 10 s.
    """
    why = tpm_unavailable()
    if why is not None:
        pytest.skip(f"TPM stack unavailable: {why}")
    d = Path(tempfile.mkdtemp(prefix=prefix))
    sock = d / "sock"
    proc = subprocess.Popen(
        [
            "swtpm",
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={d}",
            "--server",
            f"type=unixio,path={sock}",
            "--ctrl",
            f"type=unixio,path={sock}.ctrl",
            "--flags",
            "startup-clear,not-need-init",
            "--log",
            f"file={d / 'log'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.skip(f"TPM stack unavailable: swtpm exited at start: {err.strip()}")
            if sock.exists() and Path(f"{sock}.ctrl").exists():
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(str(sock))
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                pytest.fail("swtpm did not open its socket within 10 s")
            time.sleep(0.05)
        yield f"swtpm:path={sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)

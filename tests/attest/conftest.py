"""Fixtures for the attestation tests: keys, a bundle, reference values and a real swtpm."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeguard import data
from edgeguard.api import build_bundle
from edgeguard.attest.reference import write_reference_values
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.keys import DeviceKey, SignerKey
from edgeguard.keystore import write_keypair


@dataclass(frozen=True)
class World:
    """A signer, two devices, one bundle for the first device and its reference values."""

    root: Path
    signer: SignerKey
    device: DeviceKey
    other: DeviceKey
    bundle: Path
    reference: Path
    trust: TrustStore
    kernels: Path
    state: Path


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("attest")
    signer = SignerKey.generate()
    device = DeviceKey.generate("cam-01", profile="generic-cpu", kem="x25519")
    other = DeviceKey.generate("cam-02", profile="generic-cpu", kem="x25519")
    keys = root / "keys"
    keys.mkdir()
    write_keypair(signer, keys / "signer.key", keys / "signer.pub")
    write_keypair(device, keys / "device.key", keys / "device.pub")
    write_keypair(other, keys / "other.key", keys / "other.pub")
    bundle = root / "digits.egb"
    build_bundle(
        [data.model_path("digits_logreg")],
        out=bundle,
        signer=signer,
        recipients=[device.public, other.public],
        profiles=["generic-cpu"],
        version=4,
    )
    kernels = root / "kernels"  # an explicit (empty) kernel dir: other work may build kernels
    kernels.mkdir()
    ref = write_reference_values(bundle, signer=signer, kernel_dirs=[kernels])
    state = root / "device-state"
    state.mkdir()
    return World(
        root=root,
        signer=signer,
        device=device,
        other=other,
        bundle=bundle,
        reference=ref,
        trust=TrustStore.of([signer.public]),
        kernels=kernels,
        state=state,
    )


def _tpm_unavailable() -> str | None:
    if shutil.which("swtpm") is None:
        return "swtpm is not installed (Debian package 'swtpm')"
    if importlib.util.find_spec("tpm2_pytss") is None:
        return "tpm2-pytss is not installed (pip install 'edgeguard[tpm]', needs libtss2-dev)"
    try:
        import tpm2_pytss  # noqa: F401
    except Exception as exc:  # the C libraries may be missing
        return f"tpm2-pytss cannot load the TSS libraries: {exc}"
    return None


@pytest.fixture(scope="session")
def swtpm() -> Iterator[str]:
    """Start a swtpm on a unix socket in a private temp dir; yield its TCTI string."""
    why = _tpm_unavailable()
    if why is not None:
        pytest.skip(f"TPM stack unavailable: {why}")
    d = Path(tempfile.mkdtemp(prefix="eg-swtpm-"))
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

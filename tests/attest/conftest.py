"""Fixtures for the attestation tests: keys, a bundle, reference values and a real swtpm."""

from __future__ import annotations

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
from tests.swtpm import running_swtpm


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


@pytest.fixture(scope="session")
def swtpm() -> Iterator[str]:
    """A swtpm on a unix socket in a private temp dir, for the session; its TCTI string."""
    with running_swtpm() as tcti:
        yield tcti

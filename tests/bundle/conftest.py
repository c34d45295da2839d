"""Fixtures for bundle tests: keys made once per session, small bundles per test."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.keys import DeviceKey, SignerKey
from edgeguard.packaging.packager import MemberSource, write_bundle

NOW = 1_800_000_000  # fixed "now" for policy decisions in tests

#: Exhaustive sweeps (every byte, every cut, thousands of random mutants): seconds each,
#: so a mutation run (mutmut sets MUTANT_UNDER_TEST) skips them and relies on the
#: targeted tests; the normal suite always runs them.
_SWEEPS = {
    "test_every_single_byte_change_is_refused",
    "test_truncation_at_every_point_is_refused",
    "test_seeded_mutation_fuzz_run",
    "test_random_mutations_of_a_real_bundle",
}


@pytest.fixture(autouse=True)
def _no_sweeps_under_mutation_testing(request: pytest.FixtureRequest) -> None:
    if os.environ.get("MUTANT_UNDER_TEST") and request.node.name.split("[")[0] in _SWEEPS:
        pytest.skip("exhaustive sweep, skipped under mutation testing")


@pytest.fixture(scope="session")
def signer() -> SignerKey:
    return SignerKey.generate()


@pytest.fixture(scope="session")
def attacker() -> SignerKey:
    return SignerKey.generate()


@pytest.fixture(scope="session")
def device() -> DeviceKey:
    return DeviceKey.generate("cam-01", profile="generic-cpu")


@pytest.fixture(scope="session")
def other_device() -> DeviceKey:
    return DeviceKey.generate("cam-99", profile="generic-cpu", kem="x25519")


@pytest.fixture(scope="session")
def trust(signer: SignerKey) -> TrustStore:
    return TrustStore.of([signer.public])


@pytest.fixture
def make_bundle(tmp_path: Path, signer: SignerKey, device: DeviceKey) -> Callable[..., Path]:
    counter = iter(range(10_000))

    def make(
        *,
        data: bytes = b"tiny model bytes",
        version: int = 2,
        name: str = "digits",
        chunk_size: int = 65536,
        recipients: list[object] | None = None,
        profiles: tuple[str, ...] = ("generic-cpu",),
        device_ids: tuple[str, ...] | None = None,
        expires: int | None = NOW + 86400,
        created: int = NOW - 60,
        extra_member: bytes | None = None,
        by: SignerKey | None = None,
    ) -> Path:
        out = tmp_path / f"b{next(counter)}.egb"
        members = [MemberSource("model", data)]
        if extra_member is not None:
            members.append(MemberSource("aux", extra_member, role="aux", format="json"))
        write_bundle(
            out,
            members,
            name=name,
            version=version,
            signer=by or signer,
            recipients=recipients or [device.public],  # type: ignore[arg-type]
            profiles=profiles,
            device_ids=device_ids,
            expires=expires,
            created=created,
            chunk_size=chunk_size,
        )
        return out

    return make


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file in a state directory, for 'unchanged' assertions."""
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture
def rand() -> Callable[[int], bytes]:
    return os.urandom

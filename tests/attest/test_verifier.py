"""The verifier on the software path: happy path and every refusal with its reason."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from edgeguard.attest.attester import make_evidence, measure_bundle, quote_bundle
from edgeguard.attest.eat import EatClaims, parse_eat, sign_eat
from edgeguard.attest.measure import MeasurementLog, sha256_tag
from edgeguard.attest.nonce import NonceStore
from edgeguard.attest.reference import load_reference_values, reference_path_for
from edgeguard.attest.verifier import AttestationResult, verify_evidence
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.keys import SignerKey
from edgeguard.errors import IntegrityError, UntrustedSignerError
from edgeguard.runtime.opener import verify_bundle

from .conftest import World


def _quote(world: World, store: NonceStore, **kw: object) -> tuple[bytes, bytes]:
    ch = store.issue()
    ev = quote_bundle(
        world.bundle,
        trust=world.trust,
        device_key=kw.get("device", world.device),  # type: ignore[arg-type]
        nonce=ch.nonce,
        state_dir=world.state,
        kernel_dirs=[world.kernels],
    )
    return ev, ch.nonce


def _verify(
    world: World, store: NonceStore, ev: bytes, nonce: bytes, **kw: object
) -> AttestationResult:
    ref = load_reference_values(world.reference, trust=world.trust)
    return verify_evidence(
        ev,
        nonce=nonce,
        device=world.device.public,
        reference=ref,
        store=store,
        **kw,  # type: ignore[arg-type]
    )


def _log(world: World) -> MeasurementLog:
    vb = verify_bundle(world.bundle, trust=world.trust)
    return measure_bundle(vb, device_profile="generic-cpu", kernel_dirs=[world.kernels])


def test_reference_written_next_to_bundle_and_signed(world: World) -> None:
    assert world.reference == reference_path_for(world.bundle)
    assert world.reference.name == "digits.egb.rv.json"
    ref = load_reference_values(world.reference, trust=world.trust)
    kinds = [m.kind for m in ref.measurements]
    assert kinds[:3] == ["code", "bundle-manifest", "bundle-signer"] and "member" in kinds
    assert ("kernel", "none") in [(m.kind, m.name) for m in ref.measurements]
    assert dict(ref.device_profiles).keys() == {"generic-cpu"}


def test_reference_tampered_or_untrusted_is_refused(world: World, tmp_path: Path) -> None:
    doc = json.loads(world.reference.read_text())
    doc["measurements"][1]["digest"] = sha256_tag(b"evil")
    bad = tmp_path / "bad.rv.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="altered"):
        load_reference_values(bad, trust=world.trust)
    with pytest.raises(UntrustedSignerError):
        load_reference_values(world.reference, trust=TrustStore.of([SignerKey.generate().public]))


def test_software_evidence_passes_with_warning(world: World, tmp_path: Path) -> None:
    store = NonceStore(tmp_path / "v")
    ev, nonce = _quote(world, store)
    r = _verify(world, store, ev, nonce)
    assert r.ok, r.failures()
    assert r.assurance == "software" and r.status == "warning"
    assert r.check("hardware").status == "warning"
    assert all(r.check(n).status == "affirming" for n in ("nonce", "executables", "configuration"))
    ear = r.to_ear()["submods"]["edgeguard"]
    assert ear["ear.status"] == "warning" and ear["edgeguard.assurance"] == "software"
    assert ear["ear.trustworthiness-vector"]["hardware"] == 32
    assert ear["ear.trustworthiness-vector"]["executables"] == 2
    # the same evidence again: the nonce was consumed
    again = _verify(world, store, ev, nonce)
    assert not again.ok and again.check("nonce").reason == "nonce was already used (replay)"


def test_require_tpm_refuses_software_evidence(world: World, tmp_path: Path) -> None:
    store = NonceStore(tmp_path / "v")
    ev, nonce = _quote(world, store)
    r = _verify(world, store, ev, nonce, require_tpm=True)
    assert not r.ok and r.check("hardware").status == "contraindicated"


def test_stale_and_unknown_nonce(world: World, tmp_path: Path) -> None:
    store = NonceStore(tmp_path / "v")
    ch = store.issue(now=1_000)
    log = _log(world)
    ev = make_evidence(log, device_key=world.device, nonce=ch.nonce)
    r = _verify(world, store, ev, ch.nonce, max_age=300, now=1_000 + 301)
    assert not r.ok and "301 s old (max 300 s)" in r.check("nonce").reason
    ev2 = make_evidence(log, device_key=world.device, nonce=b"\x07" * 32)
    r2 = _verify(world, store, ev2, b"\x07" * 32)
    assert r2.check("nonce").reason == "nonce was not issued by this verifier"


def test_evidence_for_other_nonce(world: World, tmp_path: Path) -> None:
    store = NonceStore(tmp_path / "v")
    ch = store.issue()
    ev = make_evidence(_log(world), device_key=world.device, nonce=b"\x01" * 32)
    r = _verify(world, store, ev, ch.nonce)
    assert r.check("nonce").reason == "evidence answers a different nonce"


def test_unknown_device_key(world: World, tmp_path: Path) -> None:
    store = NonceStore(tmp_path / "v")
    ev, nonce = _quote(world, store, device=world.other)
    r = _verify(world, store, ev, nonce)
    assert not r.ok
    assert "unknown device key" in r.check("device-identity").reason
    assert r.check("executables").status == "none"


def test_forged_signature(world: World, tmp_path: Path) -> None:
    store = NonceStore(tmp_path / "v")
    ev, nonce = _quote(world, store)
    forged = bytearray(ev)
    forged[-5] ^= 0x40  # inside the 64-byte signature
    r = _verify(world, store, bytes(forged), nonce)
    assert r.check("signature").status == "contraindicated"
    assert "does not verify" in r.check("signature").reason
    # and a token that is not COSE at all
    r2 = _verify(world, store, b"\xa0", nonce)
    assert r2.check("evidence-format").status == "contraindicated"


def test_single_changed_measurement(world: World, tmp_path: Path) -> None:
    store = NonceStore(tmp_path / "v")
    ch = store.issue()
    log = _log(world)
    entries = list(log.entries)
    i = next(k for k, e in enumerate(entries) if e.kind == "member")
    entries[i] = replace(entries[i], digest=sha256_tag(b"swapped model"))
    ev = make_evidence(MeasurementLog(tuple(entries)), device_key=world.device, nonce=ch.nonce)
    r = _verify(world, store, ev, ch.nonce)
    assert not r.ok
    assert r.check("log-integrity").status == "affirming"  # consistent, just different
    reason = r.check("executables").reason
    assert reason.startswith(f"measurement member/{entries[i].name} differs") and "(+" not in reason
    assert r.check("configuration").status == "affirming"
    # a changed device profile file is a configuration problem
    ch2 = store.issue()
    entries2 = list(log.entries)
    entries2[-1] = replace(entries2[-1], digest=sha256_tag(b"other profile"))
    ev2 = make_evidence(MeasurementLog(tuple(entries2)), device_key=world.device, nonce=ch2.nonce)
    r2 = _verify(world, store, ev2, ch2.nonce)
    assert "device profile 'generic-cpu' file differs" in r2.check("configuration").reason


def _resign(world: World, ev: bytes, **changes: object) -> bytes:
    claims = parse_eat(ev).claims()
    return sign_eat(replace(claims, **changes), world.device.attest)  # type: ignore[arg-type]


def test_truncated_and_reordered_log(world: World, tmp_path: Path) -> None:
    store = NonceStore(tmp_path / "v")
    ev, nonce = _quote(world, store)
    log = parse_eat(ev).claims().log
    truncated = _resign(world, ev, log=MeasurementLog(log.entries[:-1]))
    r = _verify(world, store, truncated, nonce)
    assert "does not match the attested register value" in r.check("log-integrity").reason
    assert "missing measurement device-profile" not in r.check("configuration").reason
    assert r.check("configuration").status == "contraindicated"
    e = list(log.entries)
    e[1], e[2] = e[2], e[1]
    ch = store.issue()
    reordered = _resign(world, ev, log=MeasurementLog(tuple(e)), nonce=ch.nonce)
    r2 = _verify(world, store, reordered, ch.nonce)
    assert "removed or reordered" in r2.check("log-integrity").reason


def test_claimed_register_without_matching_log(world: World, tmp_path: Path) -> None:
    store = NonceStore(tmp_path / "v")
    ev, nonce = _quote(world, store)
    claims: EatClaims = parse_eat(ev).claims()
    extended = claims.log.add("kernel", "injected.cubin", sha256_tag(b"x"))
    r = _verify(world, store, _resign(world, ev, log=extended), nonce)
    assert r.check("log-integrity").status == "contraindicated"
    assert "unexpected measurement kernel/injected.cubin" in r.check("executables").reason

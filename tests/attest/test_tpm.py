"""The TPM path against a real software TPM (swtpm) started by the ``swtpm`` fixture."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgeguard.attest.attester import make_evidence, measure_bundle
from edgeguard.attest.eat import EatClaims, parse_eat, sign_eat
from edgeguard.attest.measure import MeasurementLog
from edgeguard.attest.nonce import NonceStore
from edgeguard.attest.reference import load_reference_values
from edgeguard.attest.tpm import (
    AK_ATTRIBUTES,
    AkBinding,
    TpmAttester,
    parse_attest,
    parse_public,
)
from edgeguard.attest.verifier import AttestationResult, verify_evidence
from edgeguard.errors import BackendError, IntegrityError
from edgeguard.runtime.opener import verify_bundle

from .conftest import World

pytestmark = pytest.mark.tpm


def _log(world: World) -> MeasurementLog:
    vb = verify_bundle(world.bundle, trust=world.trust)
    return measure_bundle(vb, device_profile="generic-cpu", kernel_dirs=[world.kernels])


def _enroll(world: World, tcti: str) -> AkBinding:
    kid = world.device.public.key_id
    with TpmAttester(tcti) as tpm:
        area = tpm.ak_public(device_key_id=kid)
    b = AkBinding.create(area, device_key_id=kid, attest_key=world.device.attest)
    return AkBinding.decode(b.encode(), source="ak.pub")


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


def test_ak_is_deterministic_restricted_and_parses_like_the_tss(world: World, swtpm: str) -> None:
    from tpm2_pytss.types import TPMT_PUBLIC

    a, b = _enroll(world, swtpm), _enroll(world, swtpm)
    assert a.area == b.area  # re-derived from the owner seed + device key id
    ak = parse_public(a.area)
    assert ak.attributes & AK_ATTRIBUTES == AK_ATTRIBUTES
    tss, _ = TPMT_PUBLIC.unmarshal(a.area)  # independent parser
    assert bytes(tss.unique.ecc.x) == ak.key.public_numbers().x.to_bytes(32, "big")
    assert int(tss.objectAttributes) == ak.attributes
    other = AkBinding.create(
        a.area, device_key_id=world.other.public.key_id, attest_key=world.other.attest
    )
    with pytest.raises(IntegrityError, match="different device"):
        other.verify(
            device_key_id=world.device.public.key_id, attest_pub=world.device.public.attest
        )


def test_tpm_evidence_is_affirmed(world: World, swtpm: str, tmp_path: Path) -> None:
    ak = _enroll(world, swtpm)
    store = NonceStore(tmp_path / "v")
    ch = store.issue()
    with TpmAttester(swtpm) as tpm:
        ev = make_evidence(_log(world), device_key=world.device, nonce=ch.nonce, tpm=tpm)
    claims = parse_eat(ev).claims()
    assert claims.assurance == "tpm" and claims.quote is not None
    info = parse_attest(claims.quote.attest)
    assert info.extra_data == ch.nonce and info.selection == ((0x000B, (23,)),)
    r = _verify(world, store, ev, ch.nonce, ak=ak, require_tpm=True)
    assert r.ok and r.status == "affirming", r.failures()
    assert r.to_ear()["submods"]["edgeguard"]["ear.trustworthiness-vector"]["hardware"] == 2
    # TPM evidence without an enrolled AK cannot be affirmed
    ch2 = store.issue()
    with TpmAttester(swtpm) as tpm:
        ev2 = make_evidence(_log(world), device_key=world.device, nonce=ch2.nonce, tpm=tpm)
    r2 = _verify(world, store, ev2, ch2.nonce)
    assert "no TPM AK enrolled" in r2.check("hardware").reason


def _tpm_claims(world: World, swtpm: str, nonce: bytes, *, quote_pcr: int = 23) -> EatClaims:
    log = _log(world)
    with TpmAttester(swtpm) as tpm:
        tpm.ak_public(device_key_id=world.device.public.key_id)
        pcr = tpm.measure(log)
        if quote_pcr != 23:
            tpm.measure(log, pcr=quote_pcr)
        quote = tpm.quote(nonce, device_key_id=world.device.public.key_id, pcr=quote_pcr)
    ev = make_evidence(log, device_key=world.device, nonce=nonce)  # software claims to reuse
    return replace(parse_eat(ev).claims(), assurance="tpm", quote=quote, pcr=pcr)


def test_quote_over_different_pcrs(world: World, swtpm: str, tmp_path: Path) -> None:
    ak = _enroll(world, swtpm)
    store = NonceStore(tmp_path / "v")
    ch = store.issue()
    claims = _tpm_claims(world, swtpm, ch.nonce, quote_pcr=16)
    r = _verify(world, store, sign_eat(claims, world.device.attest), ch.nonce, ak=ak)
    assert not r.ok
    assert "covers PCRs alg 0x000b: [16], expected sha256:23 only" in r.check("hardware").reason


def test_log_truncated_against_the_quote(world: World, swtpm: str, tmp_path: Path) -> None:
    """A device re-signs a shorter, self-consistent log: the TPM quote still exposes it."""
    ak = _enroll(world, swtpm)
    store = NonceStore(tmp_path / "v")
    ch = store.issue()
    claims = _tpm_claims(world, swtpm, ch.nonce)
    short = MeasurementLog(claims.log.entries[:-2]).add(
        "device-profile", *(lambda e: (e.name, e.digest))(claims.log.entries[-1])
    )
    forged = replace(claims, log=short, pcr=short.replay())
    r = _verify(world, store, sign_eat(forged, world.device.attest), ch.nonce, ak=ak)
    assert r.check("log-integrity").status == "affirming"  # self-consistent in software...
    assert "quoted PCR digest does not match" in r.check("hardware").reason  # ...not in the TPM


def test_forged_quote_signature_and_other_nonce(world: World, swtpm: str, tmp_path: Path) -> None:
    ak = _enroll(world, swtpm)
    store = NonceStore(tmp_path / "v")
    ch = store.issue()
    claims = _tpm_claims(world, swtpm, ch.nonce)
    assert claims.quote is not None
    sig = bytearray(claims.quote.signature)
    sig[-1] ^= 1
    bad = replace(claims, quote=replace(claims.quote, signature=bytes(sig)))
    r = _verify(world, store, sign_eat(bad, world.device.attest), ch.nonce, ak=ak)
    assert "quote signature does not verify" in r.check("hardware").reason
    ch2 = store.issue()
    stale_quote = replace(claims, nonce=ch2.nonce)  # quote was made for ch.nonce
    r2 = _verify(world, store, sign_eat(stale_quote, world.device.attest), ch2.nonce, ak=ak)
    assert "different nonce (extraData)" in r2.check("hardware").reason


def test_unreachable_tpm_is_a_backend_error(tmp_path: Path) -> None:
    pytest.importorskip("tpm2_pytss", reason="tpm2-pytss is not installed")
    with pytest.raises(BackendError, match="cannot connect"):
        TpmAttester(f"swtpm:path={tmp_path / 'no-such-socket'}")

"""The open path: every refusal class, in order, with the state store untouched."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from edgeguard.bundle.codec import SIGNATURE_CONTEXT, encode_prefix, signed_region
from edgeguard.bundle.model import MAGIC, SignatureBlock
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.encoding import canonical_cbor, decode_canonical
from edgeguard.crypto.keys import DeviceKey, SignerKey
from edgeguard.crypto.sign import HybridSignature, hybrid_sign
from edgeguard.crypto.stream import TAG_LEN
from edgeguard.errors import (
    BundleExpiredError,
    DeviceNotAllowedError,
    EdgeguardError,
    IntegrityError,
    MalformedError,
    NotARecipientError,
    RollbackError,
    UntrustedSignerError,
    UsageError,
)
from edgeguard.runtime.opener import open_bundle, read_prefix, verify_bundle
from tests.bundle.conftest import NOW, snapshot

REFUSALS = (MalformedError, IntegrityError, UntrustedSignerError)


def _open(path: Path, trust: TrustStore, device: DeviceKey, state: Path, **kw: object) -> bytes:
    ob = open_bundle(path, trust=trust, device_key=device, state_dir=state, now=NOW, **kw)
    return bytes(ob.member_bytes())


def _split(path: Path) -> tuple[bytes, bytes, bytes]:
    """(header bytes, signature block bytes, payload) of a bundle file."""
    data = path.read_bytes()
    pos = len(MAGIC)
    (hlen,) = struct.unpack(">I", data[pos : pos + 4])
    header = data[pos + 4 : pos + 4 + hlen]
    pos += 4 + hlen
    (slen,) = struct.unpack(">I", data[pos : pos + 4])
    sig = data[pos + 4 : pos + 4 + slen]
    return header, sig, data[pos + 4 + slen :]


def _resign(header: bytes, key: SignerKey, kid: bytes | None = None) -> bytes:
    sig = hybrid_sign(key.ecdsa, key.mldsa, signed_region(header), context=SIGNATURE_CONTEXT)
    return encode_prefix(header, SignatureBlock(kid or key.public.key_id, sig))


def test_round_trip_and_state_record(make_bundle, trust, device, state_dir) -> None:
    data = bytes(range(256)) * 1000  # several 64 KiB chunks
    b = make_bundle(data=data, extra_member=b'{"k": 1}')
    ob = open_bundle(b, trust=trust, device_key=device, state_dir=state_dir, now=NOW)
    assert bytes(ob.member_bytes()) == data
    assert bytes(ob.members["aux"]) == b'{"k": 1}'
    assert ob.manifest.version == 2
    assert "versions.json" in snapshot(state_dir)
    assert all(not buf.wiped for buf in ob.members.values())
    ob.wipe()
    assert all(buf.wiped for buf in ob.members.values())


def test_plaintext_digest_mode_agrees(make_bundle, trust, device, state_dir) -> None:
    b = make_bundle(data=b"x" * 200_000)
    assert _open(b, trust, device, state_dir, check_plaintext_digests=True) == b"x" * 200_000


def test_every_single_byte_change_is_refused(make_bundle, trust, device, state_dir) -> None:
    b = make_bundle()
    original = b.read_bytes()
    before = snapshot(state_dir)
    mutated = b.with_name("mut.egb")
    for i in range(len(original)):
        data = bytearray(original)
        data[i] ^= 0x01 if i % 2 else 0xFF
        mutated.write_bytes(bytes(data))
        with pytest.raises(REFUSALS):
            _open(mutated, trust, device, state_dir)
    assert snapshot(state_dir) == before
    assert _open(b, trust, device, state_dir) == b"tiny model bytes"


def test_truncation_at_every_point_is_refused(make_bundle, trust, device, state_dir) -> None:
    b = make_bundle()
    original = b.read_bytes()
    cut = b.with_name("cut.egb")
    for n in range(len(original)):
        cut.write_bytes(original[:n])
        with pytest.raises((MalformedError, IntegrityError)):
            _open(cut, trust, device, state_dir)
    assert snapshot(state_dir) == {}


@pytest.mark.parametrize("extra", [b"\x00", b"A" * 17, b"\x00" * 65536])
def test_appended_bytes_are_refused(make_bundle, trust, device, state_dir, extra) -> None:
    b = make_bundle()
    b.write_bytes(b.read_bytes() + extra)
    with pytest.raises(IntegrityError, match="trailing bytes"):
        _open(b, trust, device, state_dir)
    with pytest.raises(IntegrityError):
        verify_bundle(b, trust=trust)


def test_swapped_and_duplicated_chunks_are_refused(make_bundle, trust, device, state_dir) -> None:
    chunk = 65536
    b = make_bundle(data=bytes(3 * chunk + 100))
    _, _, payload = _split(b)
    sealed = chunk + TAG_LEN
    c = [payload[i * sealed : (i + 1) * sealed] for i in range(4)]
    prefix = b.read_bytes()[: -len(payload)]
    variants = {
        "swap": c[1] + c[0] + c[2] + c[3],
        "duplicate": c[0] + c[0] + c[2] + c[3],
        "drop-last": c[0] + c[1] + c[2] + c[2][: len(c[3])],
    }
    for name, p in variants.items():
        assert len(p) == len(payload), name
        b.write_bytes(prefix + p)
        with pytest.raises(IntegrityError):
            _open(b, trust, device, state_dir)


def test_untrusted_resigned_manifest(make_bundle, trust, device, state_dir, attacker) -> None:
    b = make_bundle()
    header, _, payload = _split(b)
    b.write_bytes(_resign(header, attacker) + payload)
    with pytest.raises(UntrustedSignerError):
        _open(b, trust, device, state_dir)
    # Claiming the trusted key id while signing with another key fails verification.
    b.write_bytes(_resign(header, attacker, kid=next(iter(trust.signers))) + payload)
    with pytest.raises(IntegrityError):
        _open(b, trust, device, state_dir)


def test_manifest_naming_another_signer_is_refused(
    make_bundle, signer, device, state_dir, attacker
) -> None:
    """Validly signed by a trusted key whose id is in the signature block, but the signed
    manifest names another signer: not authentic."""
    from edgeguard.bundle.codec import parse_prefix
    from edgeguard.bundle.verify import verify_signature

    b = make_bundle()
    header, _, payload = _split(b)
    h = decode_canonical(header, what="h")
    h["manifest"]["signer"] = attacker.public.key_id
    b.write_bytes(_resign(canonical_cbor(h), signer) + payload)
    both = TrustStore.of([signer.public, attacker.public])
    with pytest.raises(IntegrityError, match="different signer"):
        _open(b, both, device, state_dir)
    with open(b, "rb") as f:
        prefix = parse_prefix(f.read, file_size=b.stat().st_size)
    with pytest.raises(IntegrityError) as err:
        verify_signature(prefix, trust=both)
    assert str(err.value) == "bundle manifest names a different signer than its signature"
    assert snapshot(state_dir) == {}


def test_attacker_bundle_with_own_trust_is_untrusted_by_ours(
    make_bundle, trust, device, state_dir, attacker
) -> None:
    b = make_bundle(by=attacker)
    with pytest.raises(UntrustedSignerError):
        _open(b, trust, device, state_dir)
    assert _open(b, TrustStore.of([attacker.public]), device, state_dir)


@pytest.mark.parametrize("half", ["ecdsa", "mldsa"])
@pytest.mark.parametrize("how", ["corrupt", "zero", "remove"])
def test_each_half_of_hybrid_signature_is_required(
    make_bundle, trust, device, state_dir, half, how
) -> None:
    b = make_bundle()
    header, sig_bytes, payload = _split(b)
    sig = decode_canonical(sig_bytes, what="sig")
    if how == "remove":
        del sig[half]
    elif how == "zero":
        sig[half] = bytes(len(sig[half]))
    else:
        v = bytearray(sig[half])
        v[len(v) // 2] ^= 0x40
        sig[half] = bytes(v)
    new_sig = canonical_cbor(sig)
    b.write_bytes(signed_region(header) + struct.pack(">I", len(new_sig)) + new_sig + payload)
    with pytest.raises(MalformedError if how == "remove" else IntegrityError):
        _open(b, trust, device, state_dir)


def test_high_s_ecdsa_signature_is_refused(make_bundle, trust, device, state_dir) -> None:
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    b = make_bundle()
    header, sig_bytes, payload = _split(b)
    sig = decode_canonical(sig_bytes, what="sig")
    r, s = sig["ecdsa"][:32], int.from_bytes(sig["ecdsa"][32:], "big")
    sig["ecdsa"] = r + (n - s).to_bytes(32, "big")  # mathematically valid, not canonical
    new_sig = canonical_cbor(sig)
    b.write_bytes(signed_region(header) + struct.pack(">I", len(new_sig)) + new_sig + payload)
    with pytest.raises(IntegrityError, match="low-S"):
        _open(b, trust, device, state_dir)


def test_expired_and_future_bundles(make_bundle, trust, device, state_dir) -> None:
    with pytest.raises(BundleExpiredError, match=r"expired at 20\d\d-\d\d-\d\dT[0-9:]{8}Z \(now"):
        _open(make_bundle(expires=NOW - 1, created=NOW - 100), trust, device, state_dir)
    with pytest.raises(BundleExpiredError, match="future"):
        _open(make_bundle(created=NOW + 3600, expires=None), trust, device, state_dir)
    assert snapshot(state_dir) == {}


def test_rollback_is_refused_and_store_unchanged(make_bundle, trust, device, state_dir) -> None:
    old, new = make_bundle(version=1), make_bundle(version=5)
    _open(old, trust, device, state_dir)
    _open(new, trust, device, state_dir)
    before = snapshot(state_dir)
    with pytest.raises(RollbackError, match="v1 is older than v5"):
        _open(old, trust, device, state_dir)
    assert snapshot(state_dir) == before
    # The same version again is fine (re-opening the current release).
    _open(new, trust, device, state_dir)
    # Another bundle name is tracked separately.
    _open(make_bundle(version=1, name="other"), trust, device, state_dir)


def test_rollback_check_is_per_signer(make_bundle, trust, device, state_dir, attacker) -> None:
    _open(make_bundle(version=5), trust, device, state_dir)
    both = TrustStore.of([next(iter(trust.signers.values())), attacker.public])
    _open(make_bundle(version=1, by=attacker), both, device, state_dir)


def test_device_not_a_recipient(make_bundle, trust, device, other_device, state_dir) -> None:
    b = make_bundle()
    with pytest.raises(NotARecipientError):
        _open(b, trust, other_device, state_dir)
    fleet = make_bundle(recipients=[other_device.public, device.public])
    assert _open(fleet, trust, other_device, state_dir)
    assert _open(fleet, trust, device, state_dir)
    assert snapshot(state_dir)


def test_device_profile_and_id_constraints(make_bundle, trust, device, state_dir) -> None:
    with pytest.raises(DeviceNotAllowedError, match="profiles jetson-agx-orin"):
        _open(make_bundle(profiles=("jetson-agx-orin",)), trust, device, state_dir)
    with pytest.raises(DeviceNotAllowedError, match="cam-01"):
        _open(make_bundle(device_ids=("cam-02",)), trust, device, state_dir)
    ok = make_bundle(profiles=("jetson-agx-orin", "generic-cpu"), device_ids=("cam-01",))
    assert _open(ok, trust, device, state_dir)


def test_wrong_device_key_with_same_id_cannot_unwrap(make_bundle, trust, device, state_dir) -> None:
    impostor = DeviceKey.generate("cam-01", profile="generic-cpu")
    with pytest.raises(NotARecipientError):
        _open(make_bundle(), trust, impostor, state_dir)


def test_wrapped_key_tampering_after_resign_is_integrity_error(
    make_bundle, signer, device, state_dir
) -> None:
    """Even the signer cannot make a device accept a broken wrap silently."""
    b = make_bundle()
    header, _, payload = _split(b)
    h = decode_canonical(header, what="h")
    w = bytearray(h["recipients"][0]["wrapped"])
    w[-1] ^= 1
    h["recipients"][0]["wrapped"] = bytes(w)
    new_header = canonical_cbor(h)
    b.write_bytes(_resign(new_header, signer) + payload)
    with pytest.raises(IntegrityError):
        _open(b, TrustStore.of([signer.public]), device, state_dir)


def test_empty_trust_store_is_refused() -> None:
    with pytest.raises(UsageError, match="trust store is empty"):
        TrustStore.of([])


@pytest.mark.parametrize(
    ("offset_field", "value"),
    [("header", 0xFFFFFFFF), ("header", 0), ("signature", 0xFFFFFFFF), ("signature", 0)],
)
def test_absurd_length_fields(make_bundle, trust, device, state_dir, offset_field, value) -> None:
    b = make_bundle()
    data = bytearray(b.read_bytes())
    pos = len(MAGIC)
    if offset_field == "signature":
        (hlen,) = struct.unpack(">I", data[pos : pos + 4])
        pos += 4 + hlen
    data[pos : pos + 4] = struct.pack(">I", value)
    b.write_bytes(bytes(data))
    with pytest.raises(MalformedError, match="length"):
        _open(b, trust, device, state_dir)


def test_absurd_sizes_inside_signed_header_are_refused_before_allocation(
    make_bundle, signer, device, state_dir
) -> None:
    b = make_bundle()
    header, _, payload = _split(b)
    h = decode_canonical(header, what="h")
    h["manifest"]["members"][0]["size"] = 2**62
    h["payload"]["size"] = 2**62
    new_header = canonical_cbor(h)
    b.write_bytes(_resign(new_header, signer) + payload)
    with pytest.raises(MalformedError, match="size"):
        _open(b, TrustStore.of([signer.public]), device, state_dir)


def test_not_a_bundle_and_wrong_version(tmp_path, trust, device, state_dir) -> None:
    p = tmp_path / "x.egb"
    p.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(MalformedError, match="bad magic"):
        _open(p, trust, device, state_dir)
    p.write_bytes(MAGIC[:10] + b"2" + MAGIC[11:] + b"\x00" * 40)
    with pytest.raises(MalformedError, match="version"):
        _open(p, trust, device, state_dir)
    p.write_bytes(b"")
    with pytest.raises(MalformedError):
        _open(p, trust, device, state_dir)
    with pytest.raises(UsageError, match="does not exist"):
        _open(tmp_path / "missing.egb", trust, device, state_dir)


def test_non_canonical_header_is_refused(make_bundle, signer, device, state_dir) -> None:
    """A header with the same content but a different (non-canonical) encoding."""
    import cbor2

    b = make_bundle()
    header, _, payload = _split(b)
    h = decode_canonical(header, what="h")
    loose = cbor2.dumps(dict(reversed(list(h.items()))), canonical=False)
    assert loose != header
    b.write_bytes(_resign(loose, signer) + payload)
    with pytest.raises(MalformedError, match="canonical"):
        _open(b, TrustStore.of([signer.public]), device, state_dir)


def test_unknown_manifest_field_is_refused(make_bundle, signer, device, state_dir) -> None:
    b = make_bundle()
    header, _, payload = _split(b)
    h = decode_canonical(header, what="h")
    h["manifest"]["debug_backdoor"] = True
    b.write_bytes(_resign(canonical_cbor(h), signer) + payload)
    with pytest.raises(MalformedError, match="unknown field"):
        _open(b, TrustStore.of([signer.public]), device, state_dir)


def test_verify_bundle_detects_payload_change(make_bundle, trust) -> None:
    b = make_bundle(data=b"z" * 100_000)
    verify_bundle(b, trust=trust)
    data = bytearray(b.read_bytes())
    data[-5] ^= 1
    b.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="payload digest"):
        verify_bundle(b, trust=trust)


def test_read_prefix_reports_layout(make_bundle) -> None:
    b = make_bundle(data=b"abc")
    with open(b, "rb") as f:
        prefix, size = read_prefix(f)
    assert size == prefix.payload_offset + prefix.header.payload.size
    assert prefix.header.manifest.members[0].size == 3


def test_refusals_are_edgeguard_errors() -> None:
    for cls in (*REFUSALS, RollbackError, NotARecipientError, DeviceNotAllowedError):
        assert issubclass(cls, EdgeguardError)


def test_signature_dataclass_validates_lengths() -> None:
    with pytest.raises(MalformedError):
        HybridSignature(ecdsa=b"", mldsa=b"")

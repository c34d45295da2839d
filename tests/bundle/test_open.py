"""The open path: every refusal class, in order, with the state store untouched."""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeguard.bundle.codec import SIGNATURE_CONTEXT, encode_prefix, signed_region
from edgeguard.bundle.model import MAGIC, SignatureBlock
from edgeguard.bundle.verify import (
    CLOCK_FLOOR_SKEW_S,
    CLOCK_SKEW_S,
    ClockCheck,
    TrustStore,
    clock_check,
)
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
from edgeguard.runtime.opener import (
    OpenedBundle,
    open_bundle,
    read_prefix,
    record_opened,
    verify_bundle,
)
from edgeguard.runtime.state import StoredState, VersionStore
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


def _open_at(path: Path, t: int, trust: TrustStore, device: DeviceKey, state: Path) -> OpenedBundle:
    """Open with the wall clock reading ``t`` (a fake clock); returns the opened bundle."""
    ob = open_bundle(path, trust=trust, device_key=device, state_dir=state, now=t)
    ob.wipe()
    return ob


@pytest.fixture
def local_time_not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A host whose local time zone is not UTC (messages must still name UTC times)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_expiry_and_creation_boundaries(
    make_bundle, trust, device, state_dir, local_time_not_utc
) -> None:
    b = make_bundle(expires=NOW + 10, created=NOW - 100)
    _open_at(b, NOW + 9, trust, device, state_dir)  # one second before expiry
    with pytest.raises(BundleExpiredError) as ei:
        _open_at(b, NOW + 10, trust, device, state_dir)  # at expiry: expired
    assert ei.value.one_line() == (
        "bundle 'digits' v2 expired at 2027-01-15T08:00:10Z (now 2027-01-15T08:00:10Z) "
        "(ask the publisher for a current release)"
    )
    at_limit = make_bundle(created=NOW + CLOCK_SKEW_S, expires=None)
    _open_at(at_limit, NOW, trust, device, state_dir)  # created exactly the skew ahead
    over = make_bundle(created=NOW + CLOCK_SKEW_S + 1, expires=None)
    with pytest.raises(BundleExpiredError) as ei:
        _open_at(over, NOW, trust, device, state_dir)
    assert ei.value.one_line() == (
        "bundle 'digits' claims to be created in the future (2027-01-15T08:05:01Z; "
        "now 2027-01-15T08:00:00Z) (check the device clock)"
    )


def test_setting_the_clock_back_does_not_revive_an_expired_bundle(
    make_bundle, trust, device, state_dir
) -> None:
    expiring = make_bundle(expires=NOW + 1000, created=NOW - 100)
    lasting = make_bundle(name="other", expires=None, created=NOW - 100)
    _open_at(expiring, NOW, trust, device, state_dir)
    _open_at(lasting, NOW + 5000, trust, device, state_dir)  # time goes on
    assert VersionStore(state_dir).time_floor() == NOW + 5000
    before = snapshot(state_dir)
    # The clock is set back 5000 s: the expiring bundle is judged at the floor.
    with pytest.raises(BundleExpiredError, match=r"\(time floor .*; the clock says") as ei:
        _open_at(expiring, NOW, trust, device, state_dir)
    assert "\n" not in ei.value.one_line()
    assert snapshot(state_dir) == before
    # A bundle valid at the floor opens, with the warning, and the floor stays.
    ob = _open_at(lasting, NOW, trust, device, state_dir)
    assert ob.clock == ClockCheck(now=NOW, floor=NOW + 5000, effective=NOW + 5000)
    assert ob.clock.behind_floor
    assert ob.clock.describe() == (
        "the clock (2027-01-15T08:00:00Z) is 5000 s behind this device's time floor "
        "(2027-01-15T09:23:20Z, the latest successful open); expiry was checked at the floor"
    )
    assert VersionStore(state_dir).time_floor() == NOW + 5000


def test_the_clock_skew_allowed_behind_the_floor_ends_exactly_at_its_limit(
    make_bundle, trust, device, state_dir
) -> None:
    floor = NOW + 5000
    _open_at(make_bundle(name="other", expires=None), floor, trust, device, state_dir)
    b = make_bundle(expires=floor - CLOCK_FLOOR_SKEW_S + 1, created=NOW - 100)
    ob = _open_at(b, floor - CLOCK_FLOOR_SKEW_S, trust, device, state_dir)  # at the limit
    assert not ob.clock.behind_floor
    with pytest.raises(BundleExpiredError, match="time floor"):
        _open_at(b, floor - CLOCK_FLOOR_SKEW_S - 1, trust, device, state_dir)  # one second over


def test_clock_check_boundaries() -> None:
    f = NOW
    assert clock_check(f, None) == ClockCheck(now=f, floor=None, effective=f)
    assert clock_check(0, None).effective == 0
    assert clock_check(f + 1, f).effective == f + 1  # ahead of the floor
    assert clock_check(f, f) == ClockCheck(now=f, floor=f, effective=f)
    assert clock_check(f - CLOCK_FLOOR_SKEW_S, f).effective == f - CLOCK_FLOOR_SKEW_S
    over = clock_check(f - CLOCK_FLOOR_SKEW_S - 1, f)
    assert over == ClockCheck(now=f - CLOCK_FLOOR_SKEW_S - 1, floor=f, effective=f)
    assert over.behind_floor and not clock_check(f, f).behind_floor
    assert over.to_dict() == {"now": f - CLOCK_FLOOR_SKEW_S - 1, "floor": f, "effective": f}
    assert CLOCK_FLOOR_SKEW_S == 300


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


def _race(paths: tuple[Path, Path], trust: TrustStore, device: DeviceKey, state: Path) -> list:
    """Open both bundles at once; both pass the early check, then the first records first."""
    barrier = threading.Barrier(2)
    first_recorded = threading.Event()
    results: list[object] = [None, None]

    def run(i: int) -> None:
        try:
            ob = open_bundle(
                paths[i], trust=trust, device_key=device, state_dir=state, now=NOW,
                record_version=False,
            )  # fmt: skip
            barrier.wait(timeout=30)  # both passed the check against the store
            if i == 1:
                assert first_recorded.wait(timeout=30)
            try:
                record_opened(ob, state)
                results[i] = "recorded"
            finally:
                ob.wipe()
        except Exception as exc:
            results[i] = exc
        finally:
            if i == 0:
                first_recorded.set()

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_a_lower_release_racing_a_higher_one_is_refused_when_the_higher_recorded_first(
    make_bundle, trust, device, state_dir
) -> None:
    v3, v5 = make_bundle(version=3), make_bundle(version=5)
    five, three = _race((v5, v3), trust, device, state_dir)
    assert five == "recorded"
    assert isinstance(three, RollbackError), three
    assert "v3 is older than v5" in str(three)
    assert VersionStore(state_dir).get("digits") == 5


def test_a_lower_release_recorded_first_lets_the_higher_one_follow(
    make_bundle, trust, device, state_dir
) -> None:
    v3, v5 = make_bundle(version=3), make_bundle(version=5)
    assert _race((v3, v5), trust, device, state_dir) == ["recorded", "recorded"]
    assert VersionStore(state_dir).get("digits") == 5


def test_open_bundle_refuses_and_wipes_when_a_higher_release_was_recorded_meanwhile(
    make_bundle, trust, device, state_dir, monkeypatch
) -> None:
    from edgeguard.runtime import secmem

    wiped: list[int] = []
    real_wipe = secmem.SecretBuffer.wipe

    def wipe(self: secmem.SecretBuffer) -> None:
        wiped.append(id(self))
        real_wipe(self)

    monkeypatch.setattr(secmem.SecretBuffer, "wipe", wipe)
    store = VersionStore(state_dir)
    real_read = VersionStore.read

    def read_then_race(self: VersionStore) -> StoredState:
        stored = real_read(self)  # the open's early check sees nothing yet
        store.record("digits", 7, manifest_digest=b"\0" * 32, signer_key_id=b"\1" * 32, now=NOW)
        return stored

    monkeypatch.setattr(VersionStore, "read", read_then_race)
    with pytest.raises(RollbackError, match="v2 is older than v7"):
        _open(make_bundle(version=2), trust, device, state_dir)
    assert wiped  # the decrypted member was wiped before the error left open_bundle


def test_a_check_only_open_refuses_a_rollback_before_decrypting(
    make_bundle, trust, device, state_dir, monkeypatch
) -> None:
    from edgeguard.runtime import opener

    _open(make_bundle(version=5), trust, device, state_dir)
    before = snapshot(state_dir)

    def no_unwrap(*_a: object, **_k: object) -> bytes:
        raise AssertionError("a rolled-back bundle must be refused before its key is unwrapped")

    monkeypatch.setattr(opener, "unwrap_data_key", no_unwrap)
    with pytest.raises(RollbackError) as ei:
        _open(make_bundle(version=1), trust, device, state_dir, record_version=False)
    assert str(ei.value) == (
        "bundle 'digits' v1 is older than v5, which this device already opened (rollback refused)"
    )
    assert snapshot(state_dir) == before


def test_rollback_is_per_name_across_every_trusted_signer(
    make_bundle, trust, device, state_dir, attacker
) -> None:
    # A device that only ever saw releases of the new key ("signer") refuses an old
    # release of the same name signed by a previous key it still trusts ("attacker").
    _open(make_bundle(version=5), trust, device, state_dir)
    both = TrustStore.of([next(iter(trust.signers.values())), attacker.public])
    before = snapshot(state_dir)
    with pytest.raises(RollbackError, match="v1 is older than v5"):
        _open(make_bundle(version=1, by=attacker), both, device, state_dir)
    assert snapshot(state_dir) == before
    # A higher release under the previous key moves the same counter on.
    _open(make_bundle(version=6, by=attacker), both, device, state_dir)
    with pytest.raises(RollbackError, match="v5 is older than v6"):
        _open(make_bundle(version=5), trust, device, state_dir)
    assert VersionStore(state_dir).get("digits") == 6


def test_a_store_kept_per_signer_is_migrated_and_refuses_an_old_key_s_release(
    make_bundle, trust, device, state_dir, attacker
) -> None:
    # Written by the release that kept a counter per signer: v5 of "digits" under
    # the current key. The old key's v3 must not open, though that key never had v5.
    (kid,) = trust.signers
    legacy = {"schema": 1, "entries": {f"{kid.hex()}/digits": {"version": 5}}}
    (state_dir / "versions.json").write_text(json.dumps(legacy))
    (state_dir / "versions.json").chmod(0o600)
    both = TrustStore.of([next(iter(trust.signers.values())), attacker.public])
    with pytest.raises(RollbackError, match="v3 is older than v5"):
        _open(make_bundle(version=3, by=attacker), both, device, state_dir)
    _open(make_bundle(version=5, by=attacker), both, device, state_dir)
    doc = json.loads((state_dir / "versions.json").read_text())
    assert doc == {
        "schema": 2,
        "time_floor": NOW,
        "entries": {"digits": {"version": 5, "signer": kid.hex()}},
    }
    _open(make_bundle(version=9, by=attacker), both, device, state_dir)
    doc = json.loads((state_dir / "versions.json").read_text())
    assert doc["schema"] == 2 and doc["entries"]["digits"]["version"] == 9
    assert doc["entries"]["digits"]["signer"] == attacker.public.key_id.hex()


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

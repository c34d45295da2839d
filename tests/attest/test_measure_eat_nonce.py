"""Measurement log, EAT/COSE encoding and the nonce store: the pure building blocks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cbor2
import pytest

from edgeguard.attest.eat import EatClaims, TpmQuote, parse_eat, sign_eat, verify_eat_signature
from edgeguard.attest.measure import (
    PCR_ZERO,
    LogEntry,
    MeasurementLog,
    code_digest,
    extend,
    kernel_files,
    sha256_tag,
)
from edgeguard.attest.nonce import Challenge, NonceStore
from edgeguard.crypto.encoding import canonical_cbor
from edgeguard.crypto.keys import DeviceKey
from edgeguard.errors import IntegrityError, MalformedError, UsageError

D1 = sha256_tag(b"one")
D2 = sha256_tag(b"two")


def _log() -> MeasurementLog:
    return MeasurementLog().add("code", "edgeguard", D1).add("member", "m", D2)


def test_replay_equals_hand_computed_pcr_chain() -> None:
    log = _log()
    e0 = hashlib.sha256(
        canonical_cbor({"i": 0, "kind": "code", "name": "edgeguard", "digest": D1})
    ).digest()
    e1 = hashlib.sha256(canonical_cbor({"i": 1, "kind": "member", "name": "m", "digest": D2}))
    pcr = hashlib.sha256(hashlib.sha256(bytes(32) + e0).digest() + e1.digest()).digest()
    assert log.replay() == pcr
    assert MeasurementLog().replay() == PCR_ZERO
    assert log.matches(pcr) and not log.matches(PCR_ZERO)


def test_log_roundtrip_and_refusals() -> None:
    log = _log()
    assert MeasurementLog.decode(log.encode()) == log
    swapped = MeasurementLog((log.entries[1], log.entries[0]))
    with pytest.raises(MalformedError, match="removed or reordered"):
        swapped.replay()
    assert not swapped.matches(log.replay())
    dropped = MeasurementLog((log.entries[1],))
    with pytest.raises(MalformedError, match="removed or reordered"):
        dropped.replay()
    with pytest.raises(MalformedError):
        MeasurementLog.decode(cbor2.dumps([{"i": 0, "kind": "code"}]))
    with pytest.raises(MalformedError, match="unknown measurement kind"):
        LogEntry(0, "firmware", "x", D1)
    with pytest.raises(MalformedError, match="sha256"):
        LogEntry(0, "code", "x", "md5:00")
    # A pattern matches the whole string: no trailing newline (``$`` would allow one).
    with pytest.raises(MalformedError, match="measurement name"):
        LogEntry(0, "code", "x\n", D1)
    with pytest.raises(MalformedError, match="sha256"):
        LogEntry(0, "code", "x", D1 + "\n")
    with pytest.raises(MalformedError):
        extend(bytes(31), bytes(32))


def test_code_digest_tracks_every_file(tmp_path: Path) -> None:
    pkg = tmp_path / "edgeguard"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("A = 1\n")
    (pkg / "sub" / "b.py").write_text("B = 2\n")
    prof = tmp_path / "profiles"
    prof.mkdir()
    (prof / "x.toml").write_text("id = 'x'\n")
    d1, files = code_digest(package_dir=pkg, profiles_dir=prof)
    assert [f[0] for f in files] == ["edgeguard/a.py", "edgeguard/sub/b.py", "profiles/x.toml"]
    (pkg / "sub" / "b.py").write_text("B = 3\n")
    d2, _ = code_digest(package_dir=pkg, profiles_dir=prof)
    (prof / "x.toml").write_text("id = 'y'\n")
    d3, _ = code_digest(package_dir=pkg, profiles_dir=prof)
    assert len({d1, d2, d3}) == 3
    real, listing = code_digest()
    assert real.startswith("sha256:") and any(
        p == "edgeguard/attest/measure.py" for p, _ in listing
    )


def test_kernel_files_first_directory_wins(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert kernel_files([a, b, tmp_path / "missing"]) == []
    (a / "k.fatbin").write_bytes(b"first")
    (b / "k.fatbin").write_bytes(b"second")
    (b / "libsanity_host.so").write_bytes(b"host")
    (b / "notes.txt").write_bytes(b"ignored")
    assert kernel_files([a, b]) == [
        ("k.fatbin", sha256_tag(b"first")),
        ("libsanity_host.so", sha256_tag(b"host")),
    ]


def _claims(key: DeviceKey, **kw: object) -> EatClaims:
    log = _log()
    args: dict[str, object] = {
        "nonce": b"n" * 32,
        "device_key_id": key.public.key_id,
        "hwmodel": key.profile,
        "swname": "edgeguard",
        "swversion": "0.1.0",
        "iat": 1_700_000_000,
        "log": log,
        "pcr": log.replay(),
        "pcr_index": 23,
        "assurance": "software",
    }
    args.update(kw)
    return EatClaims(**args)  # type: ignore[arg-type]


def test_eat_roundtrip_and_claim_keys() -> None:
    key = DeviceKey.generate("d1", kem="x25519")
    token = sign_eat(_claims(key), key.attest)
    parsed = parse_eat(token)
    verify_eat_signature(parsed, key.public.attest)
    assert parsed.kid == key.public.key_id
    assert parsed.claims() == _claims(key)
    raw = cbor2.loads(parsed.payload)
    # RFC 9711 / IANA CWT claim keys
    assert raw[10] == b"n" * 32 and raw[256] == b"\x01" + key.public.key_id
    assert raw[259] == b"generic-cpu" and raw[270] == "edgeguard" and raw[271][0] == "0.1.0"
    assert raw[273][0][0] == 65000 and raw[-70001]["assurance"] == "software"


def test_eat_verifies_with_independent_cose_implementation() -> None:
    pytest.importorskip("pycose", reason="pycose (independent COSE check) is not installed")
    from cryptography.hazmat.primitives import serialization
    from pycose.keys import EC2Key
    from pycose.messages import Sign1Message

    key = DeviceKey.generate("d1", kem="x25519")
    token = sign_eat(_claims(key), key.attest)
    point = key.public.attest.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    # pycose's decode() wants a list, but cbor2 >= 6 yields a tuple: hand it the parts.
    tagged = cbor2.loads(token)
    assert tagged.tag == 18
    parts = [*tagged.value]
    parts[1] = dict(parts[1])
    msg = Sign1Message.from_cose_obj(parts, True)
    msg.key = EC2Key(crv="P_256", x=point[1:33], y=point[33:])
    assert msg.verify_signature()
    other = DeviceKey.generate("d2", kem="x25519").public.attest.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    msg.key = EC2Key(crv="P_256", x=other[1:33], y=other[33:])
    assert not msg.verify_signature()


def test_eat_refuses_tampering_and_bad_shapes() -> None:
    key = DeviceKey.generate("d1", kem="x25519")
    token = bytearray(sign_eat(_claims(key), key.attest))
    token[-70] ^= 1  # inside the payload
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_eat_signature(parse_eat(bytes(token)), key.public.attest)
    good = sign_eat(_claims(key), key.attest)
    with pytest.raises(MalformedError, match=r"canonical|trailing"):
        parse_eat(good + b"\x00")
    with pytest.raises(MalformedError, match="COSE_Sign1"):
        parse_eat(cbor2.dumps([1, 2, 3]))
    v = cbor2.loads(good).value
    es384 = cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -35, 4: v[0][-32:]}), {}, v[2], v[3]]))
    with pytest.raises(MalformedError, match="ES256"):
        parse_eat(es384)
    # The outer COSE_Sign1 tag is the only one: a tag inside the structure is refused
    # before anything decodes it (a regular expression, a bignum, a shared reference).
    for inner in (
        cbor2.CBORTag(35, "a*"),
        cbor2.CBORTag(2, b"\x01" + bytes(8)),
        cbor2.CBORTag(258, [1]),
    ):
        tagged = cbor2.dumps(cbor2.CBORTag(18, [v[0], {1: inner}, v[2], v[3]]), canonical=True)
        with pytest.raises(MalformedError, match="CBOR tags"):
            parse_eat(tagged)
    with pytest.raises(MalformedError, match="tagged COSE_Sign1"):
        parse_eat(cbor2.dumps(cbor2.CBORTag(17, [v[0], {}, v[2], v[3]])))
    # a boolean is not an integer (true == 1 in Python)
    for claim in (6, 263):
        bad_claims = {**_claims(key).to_cbor(), claim: True}
        with pytest.raises(MalformedError, match=r"wrong types|must be an integer"):
            EatClaims.from_cbor(bad_claims)
    with pytest.raises(MalformedError, match="exactly when"):
        _claims(key, assurance="tpm")
    with pytest.raises(MalformedError, match="exactly when"):
        _claims(key, quote=TpmQuote(b"a", b"b"))


def test_nonce_store_single_use_and_age(tmp_path: Path) -> None:
    store = NonceStore(tmp_path / "v")
    ch = store.issue(now=1000)
    assert Challenge.decode(ch.encode(), source="c") == ch
    v = store.consume(ch.nonce, now=1010)
    assert v and v.status == "fresh" and v.age == 10
    again = store.consume(ch.nonce, now=1011)
    assert not again and again.status == "replayed"
    old = store.issue(now=2000)
    stale = store.consume(old.nonce, max_age=300, now=2301)
    assert stale.status == "stale" and "301 s old" in stale.reason
    assert store.consume(old.nonce, now=2302).status == "replayed"
    assert store.consume(b"\x00" * 32, now=2302).status == "unknown"
    with pytest.raises(UsageError):
        store.consume(b"\x00" * 32, max_age=0)
    with pytest.raises(MalformedError):
        Challenge.decode(b'{"type": "x"}', source="c")
    with pytest.raises(MalformedError):
        Challenge.decode(b"not json", source="c")

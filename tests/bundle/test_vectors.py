"""The frozen format v1 vectors in tests/vectors/bundle/ keep verifying."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from edgeguard.bundle.codec import parse_prefix
from edgeguard.bundle.model import DEFAULT_LIMITS, MAGIC, Header
from edgeguard.crypto.encoding import canonical_cbor, decode_canonical, unarmor
from edgeguard.crypto.keys import DeviceKey, DevicePublicKey, validate_device_id
from edgeguard.crypto.stream import StreamDecryptor, encrypt_stream
from edgeguard.errors import IntegrityError, MalformedError
from edgeguard.keystore import load_device_key, load_signer_public, load_trust_store
from edgeguard.runtime.opener import open_bundle, verify_bundle

V = Path(__file__).resolve().parents[1] / "vectors" / "bundle"
EXPECTED = json.loads((V / "expected.json").read_text())
INVALID = json.loads((V / "invalid.json").read_text())


def test_vector_files_are_the_frozen_ones() -> None:
    digest = hashlib.sha256((V / "bundle-v1.egb").read_bytes()).hexdigest()
    assert digest == EXPECTED["bundle_sha256"]
    assert load_signer_public(V / "signer.pub").key_id.hex() == EXPECTED["signer_key_id"]


@pytest.mark.parametrize("kem", ["mlkem768-x25519", "x25519", "p256"])
def test_frozen_bundle_opens_for_every_kem(kem: str, tmp_path: Path) -> None:
    device = load_device_key(V / f"device-{kem}.key", unsafe_allow_open_permissions=True)
    assert device.public.key_id.hex() == EXPECTED["device_key_ids"][kem]
    trust = load_trust_store([V / "signer.pub"])
    ob = open_bundle(
        V / "bundle-v1.egb",
        trust=trust,
        device_key=device,
        state_dir=tmp_path,
        now=EXPECTED["open_at"],
        check_plaintext_digests=True,
    )
    m = ob.manifest
    assert (m.name, m.version, m.created, m.expires) == (
        EXPECTED["name"],
        EXPECTED["version"],
        EXPECTED["created"],
        EXPECTED["expires"],
    )
    for name, want in EXPECTED["members"].items():
        assert bytes(ob.members[name]).hex() == want["hex"]
        assert m.member(name).digest.value.hex() == want["sha256"]
    assert ob.prefix.header.payload.digest.value.hex() == EXPECTED["payload_sha256"]


def test_tampered_vector_is_refused(tmp_path: Path) -> None:
    trust = load_trust_store([V / "signer.pub"])
    with pytest.raises(IntegrityError):
        verify_bundle(V / "bundle-v1-tampered-payload.egb", trust=trust)
    device = load_device_key(V / "device-x25519.key", unsafe_allow_open_permissions=True)
    with pytest.raises(IntegrityError):
        open_bundle(
            V / "bundle-v1-tampered-payload.egb",
            trust=trust,
            device_key=device,
            state_dir=tmp_path,
            now=EXPECTED["open_at"],
        )
    assert not any(tmp_path.iterdir())


def test_vector_keys_need_explicit_unsafe_flag_in_a_checkout(tmp_path: Path) -> None:
    """Checked-in private keys are world-readable; loading them needs the unsafe flag."""
    p = tmp_path / "k.key"
    shutil.copy(V / "device-x25519.key", p)
    p.chmod(0o644)
    from edgeguard.errors import KeyFileError

    with pytest.raises(KeyFileError):
        load_device_key(p)


def test_stream_vector_with_independent_gcm() -> None:
    s = EXPECTED["stream"]
    key = bytes.fromhex(s["key"])
    pt = bytes(i % 251 for i in range(65636))
    chunk = s["chunk_size"]
    # Independent computation with the low-level GCM API and the spec's nonces.
    out = b""
    for i, last in ((0, False), (1, True)):
        nonce = i.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        enc = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
        out += enc.update(pt[i * chunk : (i + 1) * chunk]) + enc.finalize() + enc.tag
    assert len(out) == s["ciphertext_len"]
    assert hashlib.sha256(out).hexdigest() == s["ciphertext_sha256"]
    assert out[chunk : chunk + 16].hex() == s["tag0"]
    assert out[chunk + 16 :].hex() == s["final_chunk"]
    # And edgeguard's implementation agrees in both directions.
    assert b"".join(encrypt_stream(key, pt, chunk)) == out
    dec = StreamDecryptor(key, plaintext_size=len(pt), chunk_size=chunk)
    assert dec.decrypt_chunk(1, out[chunk + 16 :]) == pt[chunk:]


def _vector_header() -> tuple[bytes, bytes]:
    """The frozen bundle's header bytes and the bytes after them (signature, payload)."""
    raw = (V / "bundle-v1.egb").read_bytes()
    hlen = int.from_bytes(raw[len(MAGIC) : len(MAGIC) + 4], "big")
    start = len(MAGIC) + 4
    return raw[start : start + hlen], raw[start + hlen :]


def _with_header(header: bytes, rest: bytes) -> bytes:
    return MAGIC + len(header).to_bytes(4, "big") + header + rest


@pytest.mark.parametrize("case", INVALID["cbor"], ids=lambda c: re.sub(r"\W+", "-", c["case"]))
def test_invalid_cbor_vectors_are_refused(case: dict[str, str]) -> None:
    raw = bytes.fromhex(case["hex"])
    with pytest.raises(MalformedError, match=case["error"]):
        decode_canonical(raw, what="vector")
    # Anywhere in a bundle header: spliced in as the value of manifest.tool.
    header, rest = _vector_header()
    tool = canonical_cbor(decode_canonical(header, what="h")["manifest"]["tool"])
    assert header.count(tool) == 1
    spliced = _with_header(header.replace(tool, raw), rest)
    with pytest.raises(MalformedError):
        parse_prefix(io.BytesIO(spliced).read, file_size=len(spliced))


@pytest.mark.parametrize("name", INVALID["bundle_names"], ids=lambda v: v.encode().hex() or "empty")
def test_invalid_bundle_names_are_refused(name: str) -> None:
    header, _ = _vector_header()
    tree = decode_canonical(header, what="h")
    Header.from_cbor(tree, DEFAULT_LIMITS)  # the frozen header itself is valid
    tree["manifest"]["name"] = name
    with pytest.raises(MalformedError, match="bundle name"):
        Header.from_cbor(tree, DEFAULT_LIMITS)


@pytest.mark.parametrize("value", INVALID["ids"], ids=lambda v: v.encode().hex() or "empty")
def test_invalid_device_and_profile_ids_are_refused(value: str) -> None:
    with pytest.raises(MalformedError):
        validate_device_id(value)
    with pytest.raises(MalformedError):
        DeviceKey.generate(value, kem="x25519")
    pub = decode_canonical(
        unarmor((V / "device-x25519.pub").read_bytes(), kind="PUBLIC KEY", source="v"), what="v"
    )
    DevicePublicKey.from_dict(pub, source="v")  # the frozen key itself is valid
    for field in ("id", "profile"):
        with pytest.raises(MalformedError):
            DevicePublicKey.from_dict({**pub, field: value}, source="v")
    header, _ = _vector_header()
    for field in ("ids", "profiles"):
        tree = decode_canonical(header, what="h")
        tree["manifest"]["devices"][field] = [value]
        with pytest.raises(MalformedError):
            Header.from_cbor(tree, DEFAULT_LIMITS)

"""The engine cache's crypto: key derivation, binding, sealed entries and their vectors.

The frozen vectors in ``tests/vectors/enginecache`` are checked against the code and
against a second computation: HKDF written out from HMAC-SHA256 (RFC 5869), the header
encoded by hand, every chunk sealed with AES-GCM directly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgeguard.crypto.encoding import canonical_cbor
from edgeguard.crypto.enginecache import (
    MAGIC,
    Binding,
    EntryOpener,
    derive_cache_key,
    parse_header,
    seal_entry,
)
from edgeguard.crypto.keys import DeviceKey
from edgeguard.errors import IntegrityError, MalformedError
from edgeguard.keystore import load_device_key

V = Path(__file__).resolve().parents[1] / "vectors" / "enginecache"
EXPECTED: dict[str, Any] = json.loads((V / "expected.json").read_text())
ARTIFACT = bytes(i * 7 % 251 for i in range(70_000))
ENTRY = (V / EXPECTED["entry_file"]).read_bytes()


def _binding(**over: Any) -> Binding:
    d = {k: bytes.fromhex(v) if k.endswith("sha256") else v for k, v in EXPECTED["binding"].items()}
    d.update(over)
    return Binding(**d)


def _device() -> DeviceKey:
    return load_device_key(V / EXPECTED["device_key"], unsafe_allow_open_permissions=True)


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """RFC 5869 with SHA-256, 32 bytes: one HMAC for extract, one for expand."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def _open(entry: bytes, binding: Binding, key: bytes) -> bytes:
    header = parse_header(entry, max_size=1 << 30)
    if len(entry) != len(header.prefix) + header.body_size:
        raise IntegrityError("length")
    opener = EntryOpener(key, header, binding)
    out = bytearray(header.size)
    for i in range(opener.chunks):
        off, n = opener.span(i)
        start = len(header.prefix) + off
        opener.open_into(i, entry[start : start + n], memoryview(out)[i * header.chunk :][: n - 16])
    return bytes(out)


def test_vector_artifact_and_files_are_the_frozen_ones() -> None:
    assert hashlib.sha256(ARTIFACT).hexdigest() == EXPECTED["artifact_sha256"]
    assert hashlib.sha256(ENTRY).hexdigest() == EXPECTED["entry_sha256"]
    assert len(ENTRY) == EXPECTED["entry_size"]


def test_cache_key_vector_by_two_paths() -> None:
    device = _device()
    assert device.public.key_id.hex() == EXPECTED["device_key_id"]
    assert derive_cache_key(device).hex() == EXPECTED["cache_key"]
    d = device.to_dict()
    # second path: the CBOR array by hand (two byte strings of 32 bytes: 0x82 0x58 0x20 ...)
    ikm = b"\x82" + b"\x58\x20" + d["hpke"] + b"\x58\x20" + d["attest-p256"]
    key = _hkdf(ikm, device.public.key_id, b"edgeguard/v1 engine cache key")
    assert key.hex() == EXPECTED["cache_key"]


def test_cache_key_is_not_the_kem_key_and_differs_per_device() -> None:
    device = _device()
    key = derive_cache_key(device)
    assert key not in (device.to_dict()["hpke"], device.to_dict()["attest-p256"])
    assert derive_cache_key(DeviceKey.generate("cam-02", kem="x25519")) != key


def test_binding_vector_by_two_paths() -> None:
    b = _binding()
    assert b.encode().hex() == EXPECTED["binding_cbor"]
    assert b.digest().hex() == EXPECTED["binding_sha256"]
    raw = dict(EXPECTED["binding"])
    doc = {
        "v": 1,
        "bundle": raw["bundle"],
        "manifest": bytes.fromhex(raw["manifest_sha256"]),
        "member": raw["member"],
        "member_sha256": bytes.fromhex(raw["member_sha256"]),
        "recipe": bytes.fromhex(raw["recipe_sha256"]),
        "kind": raw["kind"],
        "library": raw["library"],
        "hardware": raw["hardware"],
    }
    assert cbor2.dumps(doc, canonical=True).hex() == EXPECTED["binding_cbor"]
    group = cbor2.dumps(
        ["edgeguard/v1 engine cache group", raw["bundle"], raw["member"], raw["kind"]],
        canonical=True,
    )
    assert hashlib.sha256(group).hexdigest() == EXPECTED["group"]


def test_entry_vector_by_two_paths() -> None:
    key = bytes.fromhex(EXPECTED["cache_key"])
    salt = bytes.fromhex(EXPECTED["salt"])
    b = _binding()
    ours = b"".join(seal_entry(key, b, ARTIFACT, salt=salt, chunk_size=EXPECTED["chunk"]))
    assert ours == ENTRY
    # second path: header, key and chunks written out
    digest = bytes.fromhex(EXPECTED["binding_sha256"])
    header = cbor2.dumps(
        {
            "v": 1,
            "kind": "ort-model",
            "binding": digest,
            "group": bytes.fromhex(EXPECTED["group"]),
            "salt": salt,
            "chunk": EXPECTED["chunk"],
            "size": len(ARTIFACT),
        },
        canonical=True,
    )
    prefix = MAGIC + len(header).to_bytes(2, "big") + header
    aad = hashlib.sha256(prefix).digest()
    aead = AESGCM(_hkdf(key, salt, b"edgeguard/v1 engine cache entry" + digest))
    c = EXPECTED["chunk"]
    chunks = [ARTIFACT[i : i + c] for i in range(0, len(ARTIFACT), c)]
    body = b"".join(
        aead.encrypt(i.to_bytes(11, "big") + bytes([i == len(chunks) - 1]), ch, aad)
        for i, ch in enumerate(chunks)
    )
    assert prefix + body == ENTRY
    assert _open(ENTRY, b, key) == ARTIFACT


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


@pytest.mark.parametrize(
    ("what", "entry", "error"),
    [
        ("magic", _flip(ENTRY, 0), MalformedError),
        ("first chunk", _flip(ENTRY, len(ENTRY) - 10_000), IntegrityError),
        ("last tag", _flip(ENTRY, len(ENTRY) - 1), IntegrityError),
        ("truncated", ENTRY[:-1], IntegrityError),
        ("extended", ENTRY + b"\x00", IntegrityError),
        ("last chunk dropped", ENTRY[: len(ENTRY) - (70_000 - 65_536) - 16], IntegrityError),
    ],
)
def test_tampered_entries_refused(what: str, entry: bytes, error: type[Exception]) -> None:
    key = bytes.fromhex(EXPECTED["cache_key"])
    with pytest.raises(error):
        _open(entry, _binding(), key)


def test_a_changed_salt_fails_the_tag() -> None:
    key = bytes.fromhex(EXPECTED["cache_key"])
    header = parse_header(ENTRY, max_size=1 << 30)
    at = header.prefix.index(bytes.fromhex(EXPECTED["salt"]))
    with pytest.raises(IntegrityError, match="not authentic"):
        _open(_flip(ENTRY, at), _binding(), key)


@pytest.mark.parametrize(
    "over",
    [
        {"library": "onnxruntime 1.31.0"},
        {"hardware": {"machine": "x86_64", "cpu": "Other CPU", "flags": "avx avx2 fma"}},
        {"manifest_sha256": b"\x12" * 32},
        {"member_sha256": b"\x23" * 32},
        {"recipe_sha256": b"\x34" * 32},
        {"member": "other"},
    ],
)
def test_another_binding_is_refused(over: dict[str, Any]) -> None:
    key = bytes.fromhex(EXPECTED["cache_key"])
    with pytest.raises(IntegrityError, match="another"):
        _open(ENTRY, _binding(**over), key)


def test_a_forged_header_naming_the_other_binding_fails_the_tag() -> None:
    """Rewriting the header's binding digest (and group) to the reader's does not help."""
    key = bytes.fromhex(EXPECTED["cache_key"])
    other = _binding(library="onnxruntime 1.31.0")
    h = parse_header(ENTRY, max_size=1 << 30)
    forged = cbor2.dumps(
        {
            "v": 1,
            "kind": h.kind,
            "binding": other.digest(),
            "group": other.group(),
            "salt": h.salt,
            "chunk": h.chunk,
            "size": h.size,
        },
        canonical=True,
    )
    entry = MAGIC + len(forged).to_bytes(2, "big") + forged + ENTRY[len(h.prefix) :]
    with pytest.raises(IntegrityError, match="not authentic"):
        _open(entry, other, key)


def test_another_device_key_is_refused() -> None:
    other = derive_cache_key(DeviceKey.generate("cam-01", kem="x25519"))
    with pytest.raises(IntegrityError, match="not authentic"):
        _open(ENTRY, _binding(), other)


@pytest.mark.parametrize(
    "header",
    [
        {"v": 2},
        {"size": 0},
        {"size": (1 << 30) + 1},
        {"chunk": 1000},
        {"kind": "exe"},
        {"salt": b"short"},
        {"extra": 1},
    ],
)
def test_malformed_headers_refused(header: dict[str, Any]) -> None:
    h = parse_header(ENTRY, max_size=1 << 30)
    doc: dict[str, Any] = {
        "v": 1,
        "kind": h.kind,
        "binding": h.binding,
        "group": h.group,
        "salt": h.salt,
        "chunk": h.chunk,
        "size": h.size,
    }
    doc.update(header)
    raw = canonical_cbor(doc)
    with pytest.raises(MalformedError):
        parse_header(MAGIC + len(raw).to_bytes(2, "big") + raw, max_size=1 << 30)


def test_header_not_canonical_refused() -> None:
    h = parse_header(ENTRY, max_size=1 << 30)
    raw = h.prefix[len(MAGIC) + 2 :]
    noncanon = cbor2.dumps(cbor2.loads(raw), canonical=False)  # insertion order
    if noncanon == raw:
        noncanon = raw[:-1] + b"\x1a" + h.size.to_bytes(4, "big")  # long-form integer
    with pytest.raises(MalformedError):
        parse_header(MAGIC + len(noncanon).to_bytes(2, "big") + noncanon, max_size=1 << 30)


@pytest.mark.parametrize(
    "over",
    [
        {"kind": "onnx"},
        {"bundle": "a\nb"},
        {"member": "x" * 300},
        {"manifest_sha256": b"short"},
        {"hardware": {"cpu": "\x00"}},
    ],
)
def test_bad_bindings_refused(over: dict[str, Any]) -> None:
    with pytest.raises(MalformedError):
        _binding(**over)


def test_seal_refuses_empty_and_bad_salt() -> None:
    key = bytes.fromhex(EXPECTED["cache_key"])
    with pytest.raises(ValueError):
        list(seal_entry(key, _binding(), b"", salt=bytes(32)))
    with pytest.raises(ValueError):
        list(seal_entry(key, _binding(), b"x", salt=bytes(31)))

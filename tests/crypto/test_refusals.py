"""Every refusal of the crypto layer, with the exact message a user reads.

The messages are the CLI's one line (``edgeguard: error: <message> (<hint>)``), so they
are part of what is tested: each names the file or structure and the problem.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from edgeguard.crypto.encoding import armor, canonical_cbor, decode_canonical, unarmor
from edgeguard.crypto.keys import (
    DeviceKey,
    DevicePublicKey,
    SignerKey,
    SignerPublicKey,
    decode_private,
    decode_public,
    encode_private,
    validate_device_id,
)
from edgeguard.crypto.sign import (
    HybridSignature,
    ecdsa_sign_raw,
    ecdsa_verify_raw,
    hybrid_sign,
    hybrid_verify,
)
from edgeguard.crypto.stream import (
    CHUNK_MIN,
    StreamDecryptor,
    chunk_count,
    ciphertext_size,
    derive_stream_key,
    encrypt_stream,
    stream_nonce,
)
from edgeguard.crypto.wrap import unwrap_data_key, wrap_data_key
from edgeguard.errors import IntegrityError, KeyFileError, MalformedError
from tests.helpers import refused

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@pytest.fixture(scope="module")
def signer() -> SignerKey:
    return SignerKey.generate()


@pytest.fixture(scope="module")
def devices() -> dict[str, DeviceKey]:
    return {k: DeviceKey.generate(f"cam-{k}", kem=k) for k in ("x25519", "p256", "mlkem768-x25519")}  # type: ignore[arg-type]


# --------------------------------------------------------------------------- armour


def test_unarmor_messages() -> None:
    block = armor("PUBLIC KEY", b"abc")
    assert unarmor(block, kind="PUBLIC KEY", source="s") == b"abc"
    assert unarmor(block.encode(), kind="PUBLIC KEY", source="s") == b"abc"
    assert (
        block == "-----BEGIN EDGEGUARD PUBLIC KEY-----\nYWJj\n-----END EDGEGUARD PUBLIC KEY-----\n"
    )
    refused(
        MalformedError,
        "f.pub: not an edgeguard text key file",
        lambda: unarmor(b"\xff", kind="PUBLIC KEY", source="f.pub"),
    )
    refused(
        MalformedError,
        "f.pub: expected an EDGEGUARD PUBLIC KEY block, found 'an empty file'",
        lambda: unarmor("  \n", kind="PUBLIC KEY", source="f.pub"),
    )
    # the first line is quoted, cut at 60 characters
    long = "x" * 70 + "\nYWJj\n-----END EDGEGUARD PUBLIC KEY-----\n"
    refused(
        MalformedError,
        f"f.pub: expected an EDGEGUARD PUBLIC KEY block, found {'x' * 60!r}",
        lambda: unarmor(long, kind="PUBLIC KEY", source="f.pub"),
    )
    # a right BEGIN with a wrong END, and a wrong BEGIN with a right END, are both refused
    begin_only = block.replace("END EDGEGUARD PUBLIC", "END EDGEGUARD PRIVATE")
    refused(
        MalformedError,
        "f.pub: expected an EDGEGUARD PUBLIC KEY block, found "
        "'-----BEGIN EDGEGUARD PUBLIC KEY-----'",
        lambda: unarmor(begin_only, kind="PUBLIC KEY", source="f.pub"),
    )
    end_only = block.replace("BEGIN EDGEGUARD PUBLIC", "BEGIN EDGEGUARD PRIVATE")
    refused(
        MalformedError,
        "f.pub: expected an EDGEGUARD PUBLIC KEY block, found "
        "'-----BEGIN EDGEGUARD PRIVATE KEY-----'",
        lambda: unarmor(end_only, kind="PUBLIC KEY", source="f.pub"),
    )
    refused(
        MalformedError,
        "f.pub: expected an EDGEGUARD PUBLIC KEY block, found "
        "'-----BEGIN EDGEGUARD PUBLIC KEY-----'",
        lambda: unarmor(
            "-----BEGIN EDGEGUARD PUBLIC KEY-----\n-----END EDGEGUARD PUBLIC KEY-----\n",
            kind="PUBLIC KEY",
            source="f.pub",
        ),
    )
    # base64 is validated: a character outside the alphabet is not silently dropped
    refused(
        MalformedError,
        "f.pub: the key block is not valid base64",
        lambda: unarmor(block.replace("YWJj", "YW!Jj"), kind="PUBLIC KEY", source="f.pub"),
    )


# --------------------------------------------------------------------------- public keys


def test_public_key_messages(signer: SignerKey, devices: dict[str, DeviceKey]) -> None:
    sp = signer.public.to_dict()
    assert SignerPublicKey.from_dict(sp, source="s.pub") == signer.public
    cases: list[tuple[type[Exception], str, Any]] = [
        (MalformedError, "s.pub: key structure must be a map", [1]),
        (KeyFileError, "s.pub: this is a 'x' key, expected 'signer-public'", {**sp, "type": "x"}),
        (MalformedError, "s.pub: unsupported key version 2", {**sp, "v": 2}),
        (MalformedError, "s.pub: unsupported key version True", {**sp, "v": True}),
        (
            MalformedError,
            "s.pub: unexpected or missing fields in signer-public key",
            {**sp, "extra": 1},
        ),
        (MalformedError, "s.pub: field 'ml-dsa-65' must be a byte string", {**sp, "ml-dsa-65": 1}),
        (MalformedError, "s.pub: invalid ML-DSA-65 public key", {**sp, "ml-dsa-65": b"x"}),
        (
            MalformedError,
            "s.pub: field 'ecdsa-p256' must be a byte string",
            {**sp, "ecdsa-p256": 1},
        ),
        (
            MalformedError,
            "s.pub: invalid P-256 public key",
            {**sp, "ecdsa-p256": b"\x04" + bytes(64)},
        ),
    ]
    for kind, message, d in cases:
        refused(kind, message, lambda d=d: SignerPublicKey.from_dict(d, source="s.pub"))
    dev = devices["x25519"]
    dp = dev.public.to_dict()
    assert DevicePublicKey.from_dict(dp, source="d.pub") == dev.public
    bad_point = b"\x04" + bytes(64)
    for kind, message, d in [
        (
            MalformedError,
            "d.pub: unexpected or missing fields in device-public key",
            {**dp, "x": 1},
        ),
        (MalformedError, "d.pub: unknown KEM 'rsa'", {**dp, "kem": "rsa"}),
        (MalformedError, "d.pub: invalid device profile id", {**dp, "profile": "a b"}),
        (MalformedError, "d.pub: invalid device profile id", {**dp, "profile": 7}),
        (
            MalformedError,
            "device id 'a b' must be 1-128 characters of letters, digits, '._:-'",
            {**dp, "id": "a b"},
        ),
        (MalformedError, "d.pub: field 'hpke' must be a byte string", {**dp, "hpke": "k"}),
        (
            MalformedError,
            "d.pub: field 'attest-p256' must be a byte string",
            {**dp, "attest-p256": 1},
        ),
        (MalformedError, "d.pub: invalid P-256 public key", {**dp, "attest-p256": bad_point}),
        (MalformedError, "invalid x25519 recipient public key", {**dp, "hpke": b"short"}),
        (
            MalformedError,
            "device key: invalid P-256 public key",
            {**dp, "kem": "p256", "hpke": bad_point},
        ),
        (
            MalformedError,
            "hybrid ML-KEM-768+X25519 public key must be 1216 bytes",
            {**dp, "kem": "mlkem768-x25519", "hpke": bytes(32)},
        ),
        (
            MalformedError,
            "invalid mlkem768-x25519 recipient public key",
            {**dp, "kem": "mlkem768-x25519", "hpke": b"\xff" * 1216},
        ),
    ]:
        refused(kind, message, lambda d=d: DevicePublicKey.from_dict(d, source="d.pub"))
    # decode_public: the kind comes from the map, and only public kinds are accepted
    assert decode_public(signer.public.encode(), source="s.pub") == signer.public
    assert decode_public(dev.public.encode(), source="d.pub") == dev.public
    refused(
        KeyFileError,
        "s.key: not a public key (type 'signer-private')",
        lambda: decode_public(encode_private(signer), source="s.key"),
    )
    refused(
        KeyFileError,
        "x.pub: not a public key (type None)",
        lambda: decode_public(canonical_cbor([1, 2]), source="x.pub"),
    )
    refused(
        MalformedError,
        "x.pub: not valid CBOR (truncated)",
        lambda: decode_public(b"\xa1", source="x.pub"),
    )
    refused(
        MalformedError,
        "x.pub: unexpected or missing fields in device-public key",
        lambda: decode_public(canonical_cbor({**dp, "x": 1}), source="x.pub"),
    )
    refused(
        MalformedError,
        "x.pub: unexpected or missing fields in signer-public key",
        lambda: decode_public(canonical_cbor({**sp, "x": 1}), source="x.pub"),
    )


# --------------------------------------------------------------------------- private keys


def test_private_key_messages(signer: SignerKey, devices: dict[str, DeviceKey]) -> None:
    sk = signer.to_dict()
    for kind, message, d in [
        (MalformedError, "s.key: invalid ML-DSA-65 seed", {**sk, "ml-dsa-65-seed": b"x"}),
        (
            MalformedError,
            "s.key: field 'ml-dsa-65-seed' must be a byte string",
            {**sk, "ml-dsa-65-seed": 1},
        ),
        (
            MalformedError,
            "s.key: P-256 private scalar must be 32 bytes",
            {**sk, "ecdsa-p256": b"x"},
        ),
        (MalformedError, "s.key: invalid P-256 private scalar", {**sk, "ecdsa-p256": bytes(32)}),
        (
            MalformedError,
            "s.key: invalid P-256 private scalar",
            {**sk, "ecdsa-p256": N.to_bytes(32, "big")},
        ),
        (
            MalformedError,
            "s.key: unexpected or missing fields in signer-private key",
            {**sk, "x": 1},
        ),
        (
            KeyFileError,
            "s.key: this is a 'device-private' key, expected 'signer-private'",
            {**sk, "type": "device-private"},
        ),
    ]:
        refused(kind, message, lambda d=d: SignerKey.from_dict(d, source="s.key"))
    refused(
        MalformedError,
        "s.key: field 'ecdsa-p256' must be a byte string",
        lambda: SignerKey.from_dict({**sk, "ecdsa-p256": 1}, source="s.key"),
    )
    # the P-256 scalar is big-endian: n - 1 is valid, its little-endian reading is not
    top = {**sk, "ecdsa-p256": (N - 1).to_bytes(32, "big")}
    assert SignerKey.from_dict(top, source="s.key").ecdsa.private_numbers().private_value == N - 1
    for kem, dev in devices.items():
        dk = dev.to_dict()
        assert DeviceKey.from_dict(dk, source="d.key").public == dev.public
        refused(
            MalformedError,
            "d.key: invalid device profile id",
            lambda dk=dk: DeviceKey.from_dict({**dk, "profile": "a b"}, source="d.key"),
        )
        refused(
            MalformedError,
            "d.key: P-256 private scalar must be 32 bytes",
            lambda dk=dk: DeviceKey.from_dict({**dk, "attest-p256": b"x"}, source="d.key"),
        )
        refused(
            MalformedError,
            "d.key: field 'hpke' must be a byte string",
            lambda dk=dk: DeviceKey.from_dict({**dk, "hpke": 1}, source="d.key"),
        )
        refused(
            MalformedError,
            "d.key: field 'attest-p256' must be a byte string",
            lambda dk=dk: DeviceKey.from_dict({**dk, "attest-p256": 1}, source="d.key"),
        )
        refused(
            MalformedError,
            "d.key: unexpected or missing fields in device-private key",
            lambda dk=dk: DeviceKey.from_dict({**dk, "x": 1}, source="d.key"),
        )
        short = {**dk, "hpke": b"x"}
        message = {
            "x25519": "d.key: invalid x25519 private key",
            "p256": "d.key: P-256 private scalar must be 32 bytes",
            "mlkem768-x25519": "d.key: hybrid KEM private key must be 96 bytes",
        }[kem]
        refused(
            MalformedError, message, lambda short=short: DeviceKey.from_dict(short, source="d.key")
        )
    dk = devices["x25519"].to_dict()
    refused(
        MalformedError,
        "d.key: unknown KEM 'rsa'",
        lambda: DeviceKey.from_dict({**dk, "kem": "rsa"}, source="d.key"),
    )
    refused(
        MalformedError,
        "d.key: invalid device profile id",
        lambda: DeviceKey.from_dict({**dk, "profile": 7}, source="d.key"),
    )
    refused(
        MalformedError,
        "d.key: invalid P-256 private scalar",
        lambda: DeviceKey.from_dict({**dk, "kem": "p256", "hpke": bytes(32)}, source="d.key"),
    )
    # decode_private: kinds and encryption
    refused(
        KeyFileError,
        "p.pub: not a private key (type 'signer-public')",
        lambda: decode_private(signer.public.encode(), source="p.pub"),
    )
    refused(
        KeyFileError,
        "p: not a private key (type None)",
        lambda: decode_private(canonical_cbor([1]), source="p"),
    )
    blob = encode_private(signer, passphrase=b"pw")
    refused(
        KeyFileError,
        "s.key is passphrase-protected",
        lambda: decode_private(blob, source="s.key"),
        hint="pass --passphrase-file FILE or set EDGEGUARD_PASSPHRASE",
    )
    refused(
        KeyFileError,
        "s.key: wrong passphrase (or the key file is damaged)",
        lambda: decode_private(blob, source="s.key", passphrase=b"nope"),
    )
    d = decode_canonical(blob, what="b")
    for change, message in [
        ({"aead": "AES-128-GCM"}, "s.key: unsupported private key encryption"),
        ({"v": True}, "s.key: unsupported private key encryption"),
        ({"kdf": {**d["kdf"], "alg": "argon2"}}, "s.key: unsupported private key encryption"),
        ({"kdf": [1]}, "s.key: unsupported private key encryption"),
        ({"ct": "x"}, "s.key: malformed encrypted key"),
        ({"nonce": 12}, "s.key: malformed encrypted key"),
        ({"kdf": {**d["kdf"], "salt": bytes(65)}}, "s.key: malformed encrypted key"),
        ({"kdf": {**d["kdf"], "salt": bytes(15)}}, "s.key: malformed encrypted key"),
        (
            {"kdf": {**d["kdf"], "n": 2**15 + 1}},
            "s.key: scrypt n=32769 must be a power of two from 2^10 to 2^20",
        ),
        (
            {"kdf": {**d["kdf"], "r": 33}},
            "s.key: scrypt r=33, p=1 out of range (1 <= r <= 32, 1 <= p <= 16)",
        ),
        ({"kdf": {**d["kdf"], "n": "x"}}, "s.key: scrypt parameters n, r and p must be integers"),
        (
            {"kdf": {**d["kdf"], "n": 2**20, "r": 3}},
            "s.key: scrypt n=1048576, r=3, p=1 would need more than 256 MiB or 16 times the "
            "work of edgeguard's own key files",
        ),
    ]:
        hints = {
            "s.key: scrypt n=32769 must be a power of two from 2^10 to 2^20": "the key file was "
            "not written by edgeguard or is damaged",
        }
        if "would need" in message:
            hints[message] = "re-encrypt the key with edgeguard keygen"
        bad = canonical_cbor({**d, **change})
        refused(
            MalformedError,
            message,
            lambda bad=bad: decode_private(bad, source="s.key", passphrase=b"pw"),
            hint=hints.get(message),
        )
    # the limits themselves are accepted (and the defaults work)
    for n, r, p in ((2**10, 1, 1), (2**10, 32, 16)):
        edge = canonical_cbor({**d, "kdf": {**d["kdf"], "n": n, "r": r, "p": p}})
        refused(
            KeyFileError,
            "s.key: wrong passphrase (or the key file is damaged)",
            lambda edge=edge: decode_private(edge, source="s.key", passphrase=b"pw"),
        )
    refused(
        KeyFileError,
        "an empty passphrase is not allowed",
        lambda: encode_private(signer, passphrase=b""),
    )
    assert isinstance(decode_private(encode_private(signer), source="s"), SignerKey)
    # the file is named in every message, before and after decryption
    refused(
        MalformedError,
        "s.key: not valid CBOR (truncated)",
        lambda: decode_private(b"\xa1", source="s.key"),
    )
    for plain in (sk, devices["x25519"].to_dict()):
        extra = canonical_cbor({**plain, "x": 1})
        message = f"s.key: unexpected or missing fields in {plain['type']} key"
        refused(MalformedError, message, lambda extra=extra: decode_private(extra, source="s.key"))
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    def sealed(inner: bytes, salt: bytes) -> bytes:
        """An encrypted key file holding ``inner``, made independently of encode_private."""
        kek = Scrypt(salt=salt, length=32, n=2**10, r=8, p=1).derive(b"pw")
        ct = AESGCM(kek).encrypt(bytes(12), inner, b"edgeguard private key v1")
        kdf = {"alg": "scrypt", "salt": salt, "n": 2**10, "r": 8, "p": 1}
        return canonical_cbor(
            {
                "type": "encrypted-private",
                "v": 1,
                "kdf": kdf,
                "aead": "AES-256-GCM",
                "nonce": bytes(12),
                "ct": ct,
            }
        )

    refused(
        MalformedError,
        "s.key: not valid CBOR (truncated)",
        lambda: decode_private(sealed(b"\xa1", bytes(16)), source="s.key", passphrase=b"pw"),
    )
    # salts of 16 to 64 bytes are accepted
    for size in (16, 64):
        key = decode_private(
            sealed(canonical_cbor(sk), bytes(size)), source="s.key", passphrase=b"pw"
        )
        assert isinstance(key, SignerKey) and key.public == signer.public


def test_device_key_generation(devices: dict[str, DeviceKey]) -> None:
    assert DeviceKey.generate("cam-9", kem="x25519").profile == "generic-cpu"
    assert DeviceKey.generate("cam-9").kem == "mlkem768-x25519"
    refused(
        MalformedError,
        "unknown KEM 'rsa'; choose one of x25519, p256, mlkem768-x25519",
        lambda: DeviceKey.generate("cam-9", kem="rsa"),  # type: ignore[arg-type]
    )
    refused(
        MalformedError,
        "device id 'cam 9' must be 1-128 characters of letters, digits, '._:-'",
        lambda: validate_device_id("cam 9"),
    )
    refused(
        MalformedError,
        "device id 7 must be 1-128 characters of letters, digits, '._:-'",
        lambda: validate_device_id(7),  # type: ignore[arg-type]
    )
    assert validate_device_id("a" * 128) == "a" * 128
    for dev in devices.values():
        assert DevicePublicKey.from_dict(dev.public.to_dict(), source="d") == dev.public


# --------------------------------------------------------------------------- signatures


def test_signature_messages(signer: SignerKey) -> None:
    sig = hybrid_sign(signer.ecdsa, signer.mldsa, b"m", context=b"c")
    pub = signer.public
    refused(
        IntegrityError,
        "ECDSA signature has the wrong length",
        lambda: ecdsa_verify_raw(pub.ecdsa, sig.ecdsa[:-1], b"m", context=b"c"),
    )
    refused(
        IntegrityError,
        "ECDSA signature is out of range or not in low-S form",
        lambda: ecdsa_verify_raw(pub.ecdsa, bytes(64), b"m", context=b"c"),
    )
    refused(
        IntegrityError,
        "ECDSA signature does not verify",
        lambda: ecdsa_verify_raw(pub.ecdsa, sig.ecdsa, b"other", context=b"c"),
    )
    # r and s at each edge of their ranges: 0 < r < n and 0 < s <= n // 2 (exact integers)
    r_ok, s_ok = sig.ecdsa[:32], sig.ecdsa[32:]
    out, no = (
        "ECDSA signature is out of range or not in low-S form",
        "ECDSA signature does not verify",
    )
    for r, s, message in [
        (bytes(32), s_ok, out),
        ((1).to_bytes(32, "big"), s_ok, no),
        (N.to_bytes(32, "big"), s_ok, out),
        ((N - 1).to_bytes(32, "big"), s_ok, no),
        (r_ok, bytes(32), out),
        (r_ok, (1).to_bytes(32, "big"), no),
        (r_ok, (N // 2).to_bytes(32, "big"), no),
        (r_ok, (N // 2 + 1).to_bytes(32, "big"), out),
    ]:
        refused(
            IntegrityError,
            message,
            lambda r=r, s=s: ecdsa_verify_raw(pub.ecdsa, r + s, b"m", context=b"c"),
        )
    forged = HybridSignature(ecdsa=sig.ecdsa, mldsa=bytes(len(sig.mldsa)))
    refused(
        IntegrityError,
        "ML-DSA-65 signature does not verify",
        lambda: hybrid_verify(pub.ecdsa, pub.mldsa, forged, b"m", context=b"c"),
    )
    refused(
        MalformedError,
        "ECDSA signature must be 64 bytes",
        lambda: HybridSignature(ecdsa=b"", mldsa=sig.mldsa),
    )
    refused(
        MalformedError,
        "ML-DSA-65 signature must be 3309 bytes",
        lambda: HybridSignature(ecdsa=sig.ecdsa, mldsa=b""),
    )
    refused(
        ValueError,
        "signature context must not contain NUL bytes",
        lambda: hybrid_sign(signer.ecdsa, signer.mldsa, b"m", context=b"a\x00b"),
    )
    refused(
        ValueError,
        "ECDSA keys must be on P-256",
        lambda: ecdsa_sign_raw(ec.generate_private_key(ec.SECP384R1()), b"m", context=b"c"),
    )
    # the ECDSA message is prefix || context || NUL || message: the context and the
    # message cannot trade bytes, and the signature is over the whole
    a = ecdsa_sign_raw(signer.ecdsa, b"b", context=b"a")
    refused(
        IntegrityError,
        "ECDSA signature does not verify",
        lambda: ecdsa_verify_raw(pub.ecdsa, a, b"", context=b"ab"),
    )
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    r, s = int.from_bytes(a[:32], "big"), int.from_bytes(a[32:], "big")
    assert s <= N // 2
    pub.ecdsa.verify(
        encode_dss_signature(r, s), b"edgeguard-sig-v1\x00a\x00b", ec.ECDSA(hashes.SHA256())
    )
    # high-S values from the signer are normalised (both halves of the curve order)
    for i in range(24):
        raw = ecdsa_sign_raw(signer.ecdsa, bytes([i]), context=b"c")
        assert int.from_bytes(raw[32:], "big") <= N // 2


# --------------------------------------------------------------------------- STREAM and wrap


def test_stream_messages_and_sizes() -> None:
    key = os.urandom(32)
    pt = os.urandom(CHUNK_MIN + 1)
    chunks = list(encrypt_stream(key, pt, CHUNK_MIN))
    assert [len(c) for c in chunks] == [CHUNK_MIN + 16, 1 + 16]
    assert chunk_count(0, CHUNK_MIN) == 1 and chunk_count(CHUNK_MIN, CHUNK_MIN) == 1
    assert chunk_count(CHUNK_MIN + 1, CHUNK_MIN) == 2
    assert ciphertext_size(0, CHUNK_MIN) == 16
    assert ciphertext_size(CHUNK_MIN + 1, CHUNK_MIN) == CHUNK_MIN + 1 + 32
    assert list(encrypt_stream(key, b"", CHUNK_MIN)) != []
    dec = StreamDecryptor(key, plaintext_size=len(pt), chunk_size=CHUNK_MIN)
    assert dec.chunk_span(0) == (0, CHUNK_MIN + 16) and dec.chunk_span(1) == (CHUNK_MIN + 16, 17)
    for bad in (-1, 2):
        with pytest.raises(IndexError, match=f"^{bad}$"):
            dec.chunk_span(bad)
    refused(
        IntegrityError,
        "bundle is not authentic (payload chunk has the wrong length)",
        lambda: dec.decrypt_chunk(1, chunks[1] + b"x"),
    )
    refused(
        IntegrityError,
        "bundle is not authentic (payload authentication failed)",
        lambda: dec.decrypt_chunk(1, chunks[1][:-1] + bytes([chunks[1][-1] ^ 1])),
    )
    out = memoryview(bytearray(1))
    refused(
        IntegrityError,
        "bundle is not authentic (payload chunk has the wrong length)",
        lambda: dec.decrypt_into(1, chunks[1][:-1], out),
    )
    refused(
        IntegrityError,
        "bundle is not authentic (payload authentication failed)",
        lambda: dec.decrypt_into(1, chunks[1][:-1] + bytes([chunks[1][-1] ^ 1]), out),
    )
    for size in (CHUNK_MIN - 1, CHUNK_MIN * 3, 2 * 1024 * 1024, True):
        refused(
            MalformedError,
            f"chunk size {size!r} must be a power of two from 65536 to 1048576",
            lambda size=size: StreamDecryptor(key, plaintext_size=1, chunk_size=size),
        )
    assert StreamDecryptor(key, plaintext_size=1, chunk_size=1024 * 1024).chunks == 1
    refused(
        ValueError,
        "data key and salt must be 32 bytes",
        lambda: derive_stream_key(b"k", salt=bytes(32), index=0),
    )
    refused(
        ValueError,
        "data key and salt must be 32 bytes",
        lambda: derive_stream_key(bytes(32), salt=b"s", index=0),
    )
    refused(ValueError, "chunk counter out of range", lambda: stream_nonce(-1, last=False))
    refused(ValueError, "chunk counter out of range", lambda: stream_nonce(2**88, last=True))
    assert stream_nonce(2**88 - 1, last=True) == b"\xff" * 11 + b"\x01"
    assert stream_nonce(1, last=False) == bytes(10) + b"\x01\x00"
    # the key depends on every input, and on the member index as 4 bytes
    base = derive_stream_key(bytes(32), salt=bytes(32), index=1)
    assert base != derive_stream_key(bytes(32), salt=b"\x01" * 32, index=1)
    assert base != derive_stream_key(b"\x01" * 32, salt=bytes(32), index=1)
    assert len(base) == 32


def test_wrap_messages(devices: dict[str, DeviceKey]) -> None:
    salt = os.urandom(32)
    for dev in devices.values():
        wrapped = wrap_data_key(bytes(32), dev.public, salt=salt)
        assert unwrap_data_key(wrapped, dev, salt=salt) == bytes(32)
        refused(
            IntegrityError,
            "bundle is not authentic (data key does not unwrap)",
            lambda wrapped=wrapped, dev=dev: unwrap_data_key(wrapped, dev, salt=bytes(32)),
        )
        # a wrap of anything but a 32-byte data key is refused too
        short = wrap_data_key(bytes(16), dev.public, salt=salt)
        refused(
            IntegrityError,
            "bundle is not authentic (data key does not unwrap)",
            lambda short=short, dev=dev: unwrap_data_key(short, dev, salt=salt),
        )


# -- the tag walk and scrypt bounds at their edges ---------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        bytes.fromhex("82820102c24101"),  # [[1, 2], 2(h'01')]: a bignum after a nested array
        bytes.fromhex("a201a10203" + "04c24101"),  # {1: {2: 3}, 4: 2(h'01')}: after a map
        bytes.fromhex("8181" + "c24101"),  # [[2(h'01')]]
    ],
    ids=["after-array", "after-map", "nested"],
)
def test_a_tag_after_or_inside_nested_items_is_found(raw: bytes) -> None:
    from edgeguard.crypto.encoding import decode_canonical

    with pytest.raises(MalformedError, match=r"^x: CBOR tags are not allowed"):
        decode_canonical(raw, what="x")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("1901", "x: not valid CBOR (truncated)"),  # a 2-byte argument with 1 byte
        ("1b00000000", "x: not valid CBOR (truncated)"),  # an 8-byte argument with 4
        ("456162", "x: not valid CBOR (truncated)"),  # a 5-byte string with 2
        ("1c", "x: not valid CBOR (reserved additional information)"),
        ("1d", "x: not valid CBOR (reserved additional information)"),
        ("62fffe", "x: not valid CBOR (CBORDecodeError)"),  # the walk passes, cbor2 not
    ],
)
def test_the_walk_refuses_what_it_cannot_follow_in_its_own_words(raw: str, message: str) -> None:
    from edgeguard.crypto.encoding import decode_canonical

    with pytest.raises(MalformedError) as err:
        decode_canonical(bytes.fromhex(raw), what="x")
    assert str(err.value) == message


def test_scrypt_bounds_are_inclusive() -> None:
    from edgeguard.crypto.keys import _scrypt_parameters

    # 128 * n * r exactly 256 MiB and n * r * p exactly 2^22: the largest accepted
    assert _scrypt_parameters({"n": 2**20, "r": 2, "p": 2}, "k") == (2**20, 2, 2)
    with pytest.raises(MalformedError, match="would need more than 256 MiB"):
        _scrypt_parameters({"n": 2**20, "r": 2, "p": 3}, "k")
    with pytest.raises(MalformedError, match="would need more than 256 MiB"):
        _scrypt_parameters({"n": 2**20, "r": 3, "p": 1}, "k")

"""Keys, hybrid signatures, HPKE wrapping and the STREAM AEAD."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeguard import data
from edgeguard.crypto.encoding import armor, canonical_cbor, decode_canonical, unarmor
from edgeguard.crypto.keys import (
    KEM_KINDS,
    DeviceKey,
    SignerKey,
    decode_private,
    decode_public,
    encode_private,
)
from edgeguard.crypto.sign import (
    ECDSA_SIG_LEN,
    ecdsa_sign_raw,
    ecdsa_verify_raw,
    hybrid_sign,
    hybrid_verify,
)
from edgeguard.crypto.stream import (
    CHUNK_MIN,
    TAG_LEN,
    StreamDecryptor,
    ciphertext_size,
    derive_stream_key,
    encrypt_stream,
    stream_nonce,
)
from edgeguard.crypto.wrap import unwrap_data_key, wrap_data_key
from edgeguard.errors import IntegrityError, KeyFileError, MalformedError, UsageError
from edgeguard.keystore import (
    load_device_key,
    load_device_public,
    load_signer_key,
    load_signer_public,
    load_trust_store,
    write_keypair,
)


@pytest.fixture(scope="module")
def signer() -> SignerKey:
    return SignerKey.generate()


def test_hybrid_signature_needs_both_halves(signer: SignerKey) -> None:
    sig = hybrid_sign(signer.ecdsa, signer.mldsa, b"msg", context=b"ctx")
    hybrid_verify(signer.public.ecdsa, signer.public.mldsa, sig, b"msg", context=b"ctx")
    other = SignerKey.generate()
    # Mixing one valid half with a half made by another key fails.
    mixed_ecdsa = type(sig)(
        ecdsa=sig.ecdsa, mldsa=hybrid_sign(other.ecdsa, other.mldsa, b"msg", context=b"ctx").mldsa
    )
    mixed_mldsa = type(sig)(
        ecdsa=hybrid_sign(other.ecdsa, other.mldsa, b"msg", context=b"ctx").ecdsa, mldsa=sig.mldsa
    )
    for bad in (mixed_ecdsa, mixed_mldsa):
        with pytest.raises(IntegrityError):
            hybrid_verify(signer.public.ecdsa, signer.public.mldsa, bad, b"msg", context=b"ctx")


def test_signature_context_separates_domains(signer: SignerKey) -> None:
    sig = hybrid_sign(signer.ecdsa, signer.mldsa, b"msg", context=b"edgeguard-bundle-v1")
    with pytest.raises(IntegrityError):
        hybrid_verify(signer.public.ecdsa, signer.public.mldsa, sig, b"msg", context=b"eventlog")
    with pytest.raises(IntegrityError):
        hybrid_verify(
            signer.public.ecdsa, signer.public.mldsa, sig, b"msg2", context=b"edgeguard-bundle-v1"
        )


def test_ecdsa_signatures_are_low_s(signer: SignerKey) -> None:
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    for i in range(32):
        sig = hybrid_sign(signer.ecdsa, signer.mldsa, bytes([i]), context=b"c")
        assert int.from_bytes(sig.ecdsa[32:], "big") <= n // 2


@pytest.mark.parametrize("kem", KEM_KINDS)
def test_device_keys_round_trip_and_wrap(kem: str) -> None:
    dev = DeviceKey.generate("cam-7", profile="jetson-agx-orin", kem=kem)  # type: ignore[arg-type]
    again = decode_private(encode_private(dev), source="t")
    assert isinstance(again, DeviceKey)
    assert again.public.key_id == dev.public.key_id
    pub = decode_public(dev.public.encode(), source="t")
    assert pub.key_id == dev.public.key_id
    import hashlib

    assert dev.public.key_id == hashlib.sha256(dev.public.encode()).digest()
    salt, key = os.urandom(32), os.urandom(32)
    wrapped = wrap_data_key(key, dev.public, salt=salt)
    assert unwrap_data_key(wrapped, again, salt=salt) == key
    with pytest.raises(IntegrityError):
        unwrap_data_key(wrapped, again, salt=os.urandom(32))  # bound to the bundle salt
    tampered = bytearray(wrapped)
    tampered[-3] ^= 1
    with pytest.raises(IntegrityError):
        unwrap_data_key(bytes(tampered), again, salt=salt)
    other = DeviceKey.generate("cam-8", kem=kem)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        unwrap_data_key(wrapped, other, salt=salt)


def test_passphrase_protected_keys(signer: SignerKey) -> None:
    blob = encode_private(signer, passphrase=b"correct horse")
    with pytest.raises(KeyFileError, match="passphrase-protected"):
        decode_private(blob, source="k")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        decode_private(blob, source="k", passphrase=b"wrong")
    ok = decode_private(blob, source="k", passphrase=b"correct horse")
    assert ok.public.key_id == signer.public.key_id
    with pytest.raises(KeyFileError):
        encode_private(signer, passphrase=b"")


def _reencrypted(blob: bytes, **change: object) -> bytes:
    """An encrypted key file with its scrypt parameters (or other fields) changed."""
    d = decode_canonical(blob, what="k")
    kdf = dict(d["kdf"])
    for k, v in change.items():
        if k in ("n", "r", "p", "salt", "alg", "extra"):
            kdf[k] = v
        else:
            d[k] = v
    return canonical_cbor({**d, "kdf": kdf})


@pytest.mark.parametrize(
    "change",
    [
        {"n": 2**15 + 1},  # not a power of two (cryptography raised ValueError: exit 1)
        {"n": 3 * 2**12},
        {"n": 2**9},
        {"n": 2**21},
        {"n": 2**64},
        {"n": True},
        {"r": 0},
        {"r": 33},
        {"r": True},
        {"p": 0},
        {"p": 17},
        {"p": 1.0},
        {"n": 2**20, "r": 32},  # 4 GiB of memory, half a minute
        {"n": 2**20, "r": 8, "p": 16},  # 1 GiB, 16 times over
        {"n": 2**18, "r": 8, "p": 3},  # 256 MiB, but over the work bound
        {"salt": b""},
        {"salt": "x" * 16},
        {"nonce": b"\x00" * 11},
        {"extra": 1},
        {"v": 2},
    ],
    ids=lambda change: (
        "-".join(f"{k}_{v}" for k, v in change.items() if isinstance(v, int)) or "-".join(change)
    ),
)
def test_encrypted_key_parameters_are_checked_before_any_work(
    signer: SignerKey, change: dict[str, object]
) -> None:
    blob = _reencrypted(encode_private(signer, passphrase=b"pw"), **change)
    with pytest.raises(MalformedError) as err:
        decode_private(blob, source="k", passphrase=b"pw")
    assert err.value.exit_code == 3


def test_encrypted_key_with_bad_scrypt_n_is_one_error_line(tmp_path, signer: SignerKey) -> None:
    from edgeguard.cli.main import main

    blob = _reencrypted(encode_private(signer, passphrase=b"pw"), n=2**15 + 1)
    key = tmp_path / "signer.key"
    key.write_text(armor("PRIVATE KEY", blob))
    key.chmod(0o600)
    (tmp_path / "pw").write_bytes(b"pw\n")
    dev = DeviceKey.generate("cam-1", kem="x25519")
    write_keypair(dev, tmp_path / "d.key", tmp_path / "d.pub")
    code = main(
        [
            "build",
            str(data.model_path("digits_logreg")),
            "-o",
            str(tmp_path / "b.egb"),
            "--sign-key",
            str(key),
            "--passphrase-file",
            str(tmp_path / "pw"),
            "--recipient",
            str(tmp_path / "d.pub"),
            "--device-profile",
            "generic-cpu",
            "--version",
            "1",
        ]
    )
    assert code == 3


def test_key_files_permissions_and_types(tmp_path, signer: SignerKey) -> None:
    write_keypair(signer, tmp_path / "signer.key", tmp_path / "signer.pub")
    assert stat.S_IMODE(os.stat(tmp_path / "signer.key").st_mode) == 0o600
    assert load_signer_key(tmp_path / "signer.key").public.key_id == signer.public.key_id
    assert load_signer_public(tmp_path / "signer.pub").key_id == signer.public.key_id
    with pytest.raises(UsageError, match="already exists"):
        write_keypair(signer, tmp_path / "signer.key", tmp_path / "signer.pub")
    # Wrong kind of key for the job.
    with pytest.raises(KeyFileError):
        load_device_key(tmp_path / "signer.key")
    with pytest.raises(KeyFileError):
        load_device_public(tmp_path / "signer.pub")
    with pytest.raises(KeyFileError, match="is a public key, expected a private key"):
        load_signer_key(tmp_path / "signer.pub")
    # Group/world-readable private keys are refused unless explicitly unsafe.
    os.chmod(tmp_path / "signer.key", 0o644)
    with pytest.raises(KeyFileError, match="readable by group or others"):
        load_signer_key(tmp_path / "signer.key")
    load_signer_key(tmp_path / "signer.key", unsafe_allow_open_permissions=True)
    with pytest.raises(UsageError, match="does not exist"):
        load_signer_key(tmp_path / "nope.key")
    with pytest.raises(UsageError, match="no trust store"):
        load_trust_store([])


def test_armor_refuses_garbage() -> None:
    assert unarmor(armor("PUBLIC KEY", b"abc"), kind="PUBLIC KEY", source="s") == b"abc"
    with pytest.raises(MalformedError):
        unarmor("hello", kind="PUBLIC KEY", source="s")
    with pytest.raises(MalformedError):
        unarmor(armor("PUBLIC KEY", b"abc").replace("YWJj", "Y!Jj"), kind="PUBLIC KEY", source="s")
    with pytest.raises(MalformedError):
        unarmor(b"\xff\xfe", kind="PUBLIC KEY", source="s")


def test_canonical_decoding_refuses_alternatives() -> None:
    assert decode_canonical(canonical_cbor({"a": 1}), what="x") == {"a": 1}
    with pytest.raises(MalformedError):
        decode_canonical(bytes.fromhex("a1616119000a"), what="x")  # 10 as a 2-byte int
    with pytest.raises(MalformedError):
        decode_canonical(canonical_cbor(1) + b"\x00", what="x")  # trailing byte
    with pytest.raises(MalformedError):
        decode_canonical(bytes.fromhex("c11a514b67b0"), what="x")  # a tag
    with pytest.raises(MalformedError):
        decode_canonical(bytes.fromhex("5bffffffffffffffff"), what="x")  # absurd length


def _independent_stream_encrypt(key: bytes, pt: bytes, chunk: int) -> bytes:
    """STREAM written again with the low-level Cipher API (not AESGCM)."""
    n = max(1, -(-len(pt) // chunk))
    out = b""
    for i in range(n):
        nonce = i.to_bytes(11, "big") + (b"\x01" if i == n - 1 else b"\x00")
        enc = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
        out += enc.update(pt[i * chunk : (i + 1) * chunk]) + enc.finalize() + enc.tag
    return out


@pytest.mark.parametrize("size", [0, 1, CHUNK_MIN - 1, CHUNK_MIN, CHUNK_MIN + 1, 3 * CHUNK_MIN])
def test_stream_matches_independent_implementation(size: int) -> None:
    key = bytes(range(32))
    pt = bytes(i % 251 for i in range(size))
    ct = b"".join(encrypt_stream(key, pt, CHUNK_MIN))
    assert ct == _independent_stream_encrypt(key, pt, CHUNK_MIN)
    assert len(ct) == ciphertext_size(size, CHUNK_MIN)


def test_stream_detects_reorder_truncation_extension_duplication() -> None:
    key = os.urandom(32)
    pt = os.urandom(3 * CHUNK_MIN + 5)
    chunks = list(encrypt_stream(key, pt, CHUNK_MIN))
    dec = StreamDecryptor(key, plaintext_size=len(pt), chunk_size=CHUNK_MIN)
    # In order, and by random access (seek).
    assert b"".join(dec.decrypt_chunk(i, c) for i, c in enumerate(chunks)) == pt
    assert dec.decrypt_chunk(2, chunks[2]) == pt[2 * CHUNK_MIN : 3 * CHUNK_MIN]
    with pytest.raises(IntegrityError):
        dec.decrypt_chunk(0, chunks[1])  # reordered
    with pytest.raises(IntegrityError):
        dec.decrypt_chunk(1, chunks[0][: len(chunks[1])])  # duplicated first chunk
    # Truncation: a shorter plaintext makes an earlier chunk the final one; its
    # non-final tag does not verify under the final-chunk nonce.
    short = StreamDecryptor(key, plaintext_size=2 * CHUNK_MIN, chunk_size=CHUNK_MIN)
    with pytest.raises(IntegrityError):
        short.decrypt_chunk(1, chunks[1])
    # Extension: claiming one more chunk makes the real final chunk non-final.
    longer = StreamDecryptor(key, plaintext_size=4 * CHUNK_MIN + 5, chunk_size=CHUNK_MIN)
    with pytest.raises(IntegrityError):
        longer.decrypt_chunk(3, chunks[3] + bytes(CHUNK_MIN - 5))
    assert len(chunks[3]) == 5 + TAG_LEN


def test_stream_keys_differ_per_member_and_nonces_are_unique() -> None:
    dk, salt = os.urandom(32), os.urandom(32)
    assert derive_stream_key(dk, salt=salt, index=0) != derive_stream_key(dk, salt=salt, index=1)
    assert stream_nonce(1, last=False) != stream_nonce(1, last=True)
    with pytest.raises(MalformedError):
        StreamDecryptor(dk, plaintext_size=1, chunk_size=1000)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=4 * CHUNK_MIN), st.integers(0, 3))
def test_stream_round_trip_property(pt: bytes, shift: int) -> None:
    chunk = CHUNK_MIN << shift
    key = os.urandom(32)
    chunks = list(encrypt_stream(key, pt, chunk))
    dec = StreamDecryptor(key, plaintext_size=len(pt), chunk_size=chunk)
    assert dec.chunks == len(chunks)
    assert b"".join(dec.decrypt_chunk(i, c) for i, c in enumerate(chunks)) == pt


_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def test_ecdsa_raw_signature_has_exactly_one_accepted_encoding(signer: SignerKey) -> None:
    sig = ecdsa_sign_raw(signer.ecdsa, b"msg", context=b"ctx")
    assert len(sig) == ECDSA_SIG_LEN
    ecdsa_verify_raw(signer.public.ecdsa, sig, b"msg", context=b"ctx")
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    other_encodings = {
        "63 bytes (one byte short)": sig[:-1],
        "63 bytes (leading byte dropped)": sig[1:],
        "65 bytes (a leading zero)": b"\x00" + sig,
        "65 bytes (a trailing zero)": sig + b"\x00",
        "65 bytes (r padded to 33)": b"\x00" + sig[:32] + sig[32:],
        "high S": sig[:32] + (_P256_N - s).to_bytes(32, "big"),
        "r = 0": bytes(32) + sig[32:],
        "s = 0": sig[:32] + bytes(32),
        "r = n": _P256_N.to_bytes(32, "big") + sig[32:],
        "s = n/2 + 1": sig[:32] + (_P256_N // 2 + 1).to_bytes(32, "big"),
        "empty": b"",
    }
    for what, bad in other_encodings.items():
        with pytest.raises(IntegrityError):
            ecdsa_verify_raw(signer.public.ecdsa, bad, b"msg", context=b"ctx")
            pytest.fail(f"accepted {what}")
    # A wrong length names itself before any arithmetic.
    for bad in (sig[:-1], sig + b"\x00"):
        with pytest.raises(IntegrityError, match="wrong length"):
            ecdsa_verify_raw(signer.public.ecdsa, bad, b"msg", context=b"ctx")
    # r, s and the context each matter.
    with pytest.raises(IntegrityError, match="does not verify"):
        ecdsa_verify_raw(signer.public.ecdsa, sig, b"msg", context=b"other")
    assert r > 0


def test_decrypt_into_refuses_a_tampered_chunk_on_its_own() -> None:
    """decrypt_into checks each chunk's tag itself (not only the later payload digest)."""
    import numpy as np

    key = os.urandom(32)
    pt = os.urandom(CHUNK_MIN + 100)
    chunks = list(encrypt_stream(key, pt, CHUNK_MIN))
    dec = StreamDecryptor(key, plaintext_size=len(pt), chunk_size=CHUNK_MIN)
    out = np.zeros(len(pt), np.uint8)
    view = memoryview(out)
    dec.decrypt_into(0, chunks[0], view[:CHUNK_MIN])
    dec.decrypt_into(1, chunks[1], view[CHUNK_MIN:])
    assert out.tobytes() == pt
    for where in (0, CHUNK_MIN // 2, CHUNK_MIN, CHUNK_MIN + TAG_LEN - 1):  # data and tag
        bad = bytearray(chunks[0])
        bad[where] ^= 0x01
        with pytest.raises(IntegrityError, match="authentication failed"):
            dec.decrypt_into(0, bytes(bad), view[:CHUNK_MIN])
    bad_last = bytearray(chunks[1])
    bad_last[-1] ^= 0x80
    with pytest.raises(IntegrityError, match="authentication failed"):
        dec.decrypt_into(1, bytes(bad_last), view[CHUNK_MIN:])
    # The chunk's place is bound: chunk 0 at index 1 (or the final one at 0) fails.
    with pytest.raises(IntegrityError):
        dec.decrypt_into(1, chunks[0][: len(chunks[1])], view[CHUNK_MIN:])
    with pytest.raises(IntegrityError):
        dec.decrypt_into(0, chunks[1] + bytes(CHUNK_MIN - 100), view[:CHUNK_MIN])
    # Lengths: the sealed chunk and the output must both fit the chunk exactly.
    with pytest.raises(IntegrityError, match="wrong length"):
        dec.decrypt_into(0, chunks[0][:-1], view[:CHUNK_MIN])
    with pytest.raises(IntegrityError, match="wrong length"):
        dec.decrypt_into(0, chunks[0], view[: CHUNK_MIN - 1])
    with pytest.raises(IntegrityError, match="wrong length"):
        dec.decrypt_into(1, chunks[1] + b"\x00", view[CHUNK_MIN:])
    with pytest.raises(IndexError):
        dec.decrypt_into(2, chunks[1], view[CHUNK_MIN:])

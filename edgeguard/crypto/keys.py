"""Signer and device keys, their canonical encodings and key ids.

Layer: crypto (bytes in, bytes out; files are handled by
:mod:`edgeguard.keystore`).

* A **signer** key is a hybrid pair: ECDSA P-256 + ML-DSA-65.
* A **device** key holds an HPKE recipient key (X25519, P-256, or the hybrid
  ML-KEM-768 + X25519) that unwraps bundle data keys, and an ECDSA P-256
  attestation key that signs evidence and event-log checkpoints.

Public keys have one canonical CBOR encoding; the **key id** is the SHA-256
of that encoding. Private keys are encoded as CBOR holding raw scalars /
seeds, optionally encrypted under a passphrase with scrypt + AES-256-GCM
(both from ``cryptography``; the same construction as age's scrypt stanza).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from edgeguard.crypto.encoding import canonical_cbor, decode_canonical
from edgeguard.errors import KeyFileError, MalformedError

__all__ = [
    "KEM_KINDS",
    "DeviceKey",
    "DevicePublicKey",
    "KemKind",
    "SignerKey",
    "SignerPublicKey",
    "decode_private",
    "decode_public",
    "encode_private",
]

KemKind = Literal["x25519", "p256", "mlkem768-x25519"]
KEM_KINDS: tuple[KemKind, ...] = ("x25519", "p256", "mlkem768-x25519")
_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**15, 8, 1
#: What a reader accepts in a key file (the writer uses n=2^15, r=8, p=1: 32 MiB).
_SCRYPT_N_RANGE, _SCRYPT_R_MAX, _SCRYPT_P_MAX = (2**10, 2**20), 32, 16
_SCRYPT_MAX_MEMORY = 256 * 1024 * 1024  # 128 * n * r bytes
_SCRYPT_MAX_WORK = 2**22  # n * r * p: 16 times the writer's
_PRIV_AAD = b"edgeguard private key v1"


def _p256_point(pub: ec.EllipticCurvePublicKey) -> bytes:
    return pub.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _p256_from_point(data: bytes, what: str) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), data)
    except (ValueError, TypeError) as exc:
        raise MalformedError(f"{what}: invalid P-256 public key") from exc


def _p256_private(scalar: bytes, what: str) -> ec.EllipticCurvePrivateKey:
    if len(scalar) != 32:
        raise MalformedError(f"{what}: P-256 private scalar must be 32 bytes")
    try:
        return ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())
    except ValueError as exc:
        raise MalformedError(f"{what}: invalid P-256 private scalar") from exc


def _p256_scalar(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_numbers().private_value.to_bytes(32, "big")


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is 1-128 chars of ``[A-Za-z0-9._:-]``."""
    if not isinstance(device_id, str) or not _ID_RE.fullmatch(device_id):
        raise MalformedError(
            f"device id {device_id!r} must be 1-128 characters of letters, digits, '._:-'"
        )
    return device_id


# --------------------------------------------------------------------------- signer


@dataclass(frozen=True)
class SignerPublicKey:
    """The public half of a hybrid signer key."""

    ecdsa: ec.EllipticCurvePublicKey
    mldsa: mldsa.MLDSA65PublicKey

    def to_dict(self) -> dict[str, Any]:
        """The canonical structure (before CBOR encoding)."""
        return {
            "type": "signer-public",
            "v": 1,
            "ecdsa-p256": _p256_point(self.ecdsa),
            "ml-dsa-65": self.mldsa.public_bytes_raw(),
        }

    def encode(self) -> bytes:
        """Canonical CBOR encoding; its SHA-256 is the key id."""
        return canonical_cbor(self.to_dict())

    @property
    def key_id(self) -> bytes:
        """SHA-256 of :meth:`encode` (32 bytes)."""
        return hashlib.sha256(self.encode()).digest()

    @classmethod
    def from_dict(cls, d: Any, *, source: str) -> SignerPublicKey:
        """Parse the canonical structure, refusing anything malformed."""
        _expect_keys(d, {"type", "v", "ecdsa-p256", "ml-dsa-65"}, source, "signer-public")
        try:
            ml = mldsa.MLDSA65PublicKey.from_public_bytes(_bytes(d, "ml-dsa-65", source))
        except ValueError as exc:
            raise MalformedError(f"{source}: invalid ML-DSA-65 public key") from exc
        return cls(ecdsa=_p256_from_point(_bytes(d, "ecdsa-p256", source), source), mldsa=ml)


@dataclass(frozen=True)
class SignerKey:
    """A hybrid signer private key (ECDSA P-256 + ML-DSA-65)."""

    ecdsa: ec.EllipticCurvePrivateKey = field(repr=False)
    mldsa: mldsa.MLDSA65PrivateKey = field(repr=False)
    public: SignerPublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "public", SignerPublicKey(self.ecdsa.public_key(), self.mldsa.public_key())
        )

    @classmethod
    def generate(cls) -> SignerKey:
        """A fresh random signer key."""
        return cls(ec.generate_private_key(ec.SECP256R1()), mldsa.MLDSA65PrivateKey.generate())

    def to_dict(self) -> dict[str, Any]:
        """Private structure: raw P-256 scalar and ML-DSA-65 seed."""
        return {
            "type": "signer-private",
            "v": 1,
            "ecdsa-p256": _p256_scalar(self.ecdsa),
            "ml-dsa-65-seed": self.mldsa.private_bytes_raw(),
        }

    @classmethod
    def from_dict(cls, d: Any, *, source: str) -> SignerKey:
        """Parse the private structure."""
        _expect_keys(d, {"type", "v", "ecdsa-p256", "ml-dsa-65-seed"}, source, "signer-private")
        try:
            ml = mldsa.MLDSA65PrivateKey.from_seed_bytes(_bytes(d, "ml-dsa-65-seed", source))
        except ValueError as exc:
            raise MalformedError(f"{source}: invalid ML-DSA-65 seed") from exc
        return cls(_p256_private(_bytes(d, "ecdsa-p256", source), source), ml)


# --------------------------------------------------------------------------- device


def _kem_public_bytes(kind: KemKind, pub: Any) -> bytes:
    if kind == "x25519":
        return bytes(pub.public_bytes_raw())
    if kind == "p256":
        return _p256_point(pub)
    mlkem_pub, x_pub = pub
    return bytes(mlkem_pub.public_bytes_raw()) + bytes(x_pub.public_bytes_raw())


@dataclass(frozen=True)
class DevicePublicKey:
    """What a builder needs to know about a device: recipient and attestation keys.

    Attributes:
        device_id: The device's name in the fleet.
        profile: Device profile id (for example ``jetson-agx-orin``).
        kem: HPKE KEM of the recipient key.
        hpke_public: Raw recipient public key (for the hybrid KEM: the ML-KEM-768
            encapsulation key followed by the X25519 key).
        attest: ECDSA P-256 attestation / event-log verification key.
    """

    device_id: str
    profile: str
    kem: KemKind
    hpke_public: bytes
    attest: ec.EllipticCurvePublicKey

    def to_dict(self) -> dict[str, Any]:
        """The canonical structure."""
        return {
            "type": "device-public",
            "v": 1,
            "id": self.device_id,
            "profile": self.profile,
            "kem": self.kem,
            "hpke": self.hpke_public,
            "attest-p256": _p256_point(self.attest),
        }

    def encode(self) -> bytes:
        """Canonical CBOR encoding; its SHA-256 is the key id."""
        return canonical_cbor(self.to_dict())

    @property
    def key_id(self) -> bytes:
        """SHA-256 of :meth:`encode` (32 bytes)."""
        return hashlib.sha256(self.encode()).digest()

    def hpke_key(self) -> Any:
        """The recipient key as a ``cryptography`` object for HPKE."""
        from cryptography.hazmat.primitives import hpke

        raw = self.hpke_public
        try:
            if self.kem == "x25519":
                return x25519.X25519PublicKey.from_public_bytes(raw)
            if self.kem == "p256":
                return _p256_from_point(raw, "device key")
            if len(raw) != 1184 + 32:
                raise MalformedError("hybrid ML-KEM-768+X25519 public key must be 1216 bytes")
            return hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(raw[:1184]),
                x25519.X25519PublicKey.from_public_bytes(raw[1184:]),
            )
        except ValueError as exc:
            raise MalformedError(f"invalid {self.kem} recipient public key") from exc

    @classmethod
    def from_dict(cls, d: Any, *, source: str) -> DevicePublicKey:
        """Parse the canonical structure."""
        keys = {"type", "v", "id", "profile", "kem", "hpke", "attest-p256"}
        _expect_keys(d, keys, source, "device-public")
        kem = d["kem"]
        if kem not in KEM_KINDS:
            raise MalformedError(f"{source}: unknown KEM {kem!r}")
        profile = d["profile"]
        if not isinstance(profile, str) or not _ID_RE.fullmatch(profile):
            raise MalformedError(f"{source}: invalid device profile id")
        out = cls(
            device_id=validate_device_id(d["id"]),
            profile=profile,
            kem=kem,
            hpke_public=_bytes(d, "hpke", source),
            attest=_p256_from_point(_bytes(d, "attest-p256", source), source),
        )
        out.hpke_key()  # validates the recipient key bytes
        return out


@dataclass(frozen=True)
class DeviceKey:
    """A device's private keys: HPKE recipient and attestation signing key."""

    device_id: str
    profile: str
    kem: KemKind
    hpke_private: Any = field(repr=False)  # x25519 / ec / (mlkem, x25519) objects
    attest: ec.EllipticCurvePrivateKey = field(repr=False)
    public: DevicePublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)
        if self.kem == "mlkem768-x25519":
            mk, xk = self.hpke_private
            pub: Any = (mk.public_key(), xk.public_key())
        else:
            pub = self.hpke_private.public_key()
        object.__setattr__(
            self,
            "public",
            DevicePublicKey(
                device_id=self.device_id,
                profile=self.profile,
                kem=self.kem,
                hpke_public=_kem_public_bytes(self.kem, pub),
                attest=self.attest.public_key(),
            ),
        )

    @classmethod
    def generate(
        cls, device_id: str, *, profile: str = "generic-cpu", kem: KemKind = "mlkem768-x25519"
    ) -> DeviceKey:
        """A fresh device key; the default KEM is the post-quantum hybrid."""
        if kem not in KEM_KINDS:
            raise MalformedError(f"unknown KEM {kem!r}; choose one of {', '.join(KEM_KINDS)}")
        priv: Any
        if kem == "x25519":
            priv = x25519.X25519PrivateKey.generate()
        elif kem == "p256":
            priv = ec.generate_private_key(ec.SECP256R1())
        else:
            priv = (mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate())
        return cls(device_id, profile, kem, priv, ec.generate_private_key(ec.SECP256R1()))

    def hpke_key(self) -> Any:
        """The recipient private key as a ``cryptography`` object for HPKE."""
        if self.kem == "mlkem768-x25519":
            from cryptography.hazmat.primitives import hpke

            return hpke.MLKEM768X25519PrivateKey(*self.hpke_private)
        return self.hpke_private

    def to_dict(self) -> dict[str, Any]:
        """Private structure with raw keys / seeds."""
        if self.kem == "x25519":
            raw = self.hpke_private.private_bytes_raw()
        elif self.kem == "p256":
            raw = _p256_scalar(self.hpke_private)
        else:
            mk, xk = self.hpke_private
            raw = mk.private_bytes_raw() + xk.private_bytes_raw()
        return {
            "type": "device-private",
            "v": 1,
            "id": self.device_id,
            "profile": self.profile,
            "kem": self.kem,
            "hpke": bytes(raw),
            "attest-p256": _p256_scalar(self.attest),
        }

    @classmethod
    def from_dict(cls, d: Any, *, source: str) -> DeviceKey:
        """Parse the private structure."""
        keys = {"type", "v", "id", "profile", "kem", "hpke", "attest-p256"}
        _expect_keys(d, keys, source, "device-private")
        kem = d["kem"]
        raw = _bytes(d, "hpke", source)
        priv: Any
        try:
            if kem == "x25519":
                priv = x25519.X25519PrivateKey.from_private_bytes(raw)
            elif kem == "p256":
                priv = _p256_private(raw, source)
            elif kem == "mlkem768-x25519":
                if len(raw) != 64 + 32:
                    raise MalformedError(f"{source}: hybrid KEM private key must be 96 bytes")
                priv = (
                    mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:64]),
                    x25519.X25519PrivateKey.from_private_bytes(raw[64:]),
                )
            else:
                raise MalformedError(f"{source}: unknown KEM {kem!r}")
        except ValueError as exc:
            raise MalformedError(f"{source}: invalid {kem} private key") from exc
        profile = d["profile"]
        if not isinstance(profile, str) or not _ID_RE.fullmatch(profile):
            raise MalformedError(f"{source}: invalid device profile id")
        return cls(
            validate_device_id(d["id"]),
            profile,
            kem,
            priv,
            _p256_private(_bytes(d, "attest-p256", source), source),
        )


# --------------------------------------------------------------------------- codecs


def _expect_keys(d: Any, keys: set[str], source: str, type_: str) -> None:
    if not isinstance(d, dict):
        raise MalformedError(f"{source}: key structure must be a map")
    if d.get("type") != type_:
        raise KeyFileError(f"{source}: this is a {d.get('type')!r} key, expected {type_!r}")
    if isinstance(d.get("v"), bool) or d.get("v") != 1:  # true == 1 in Python
        raise MalformedError(f"{source}: unsupported key version {d.get('v')!r}")
    if set(d) != keys:
        raise MalformedError(f"{source}: unexpected or missing fields in {type_} key")


def _bytes(d: dict[str, Any], name: str, source: str) -> bytes:
    v = d[name]
    if not isinstance(v, bytes):
        raise MalformedError(f"{source}: field {name!r} must be a byte string")
    return v


def decode_public(data: bytes, *, source: str) -> SignerPublicKey | DevicePublicKey:
    """Decode a public key of either kind from canonical CBOR."""
    d = decode_canonical(data, what=source)
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "signer-public":
        return SignerPublicKey.from_dict(d, source=source)
    if kind == "device-public":
        return DevicePublicKey.from_dict(d, source=source)
    raise KeyFileError(f"{source}: not a public key (type {kind!r})")


def encode_private(key: SignerKey | DeviceKey, *, passphrase: bytes | None = None) -> bytes:
    """Encode a private key, encrypting it when ``passphrase`` is given."""
    inner = canonical_cbor(key.to_dict())
    if passphrase is None:
        return inner
    if not passphrase:
        raise KeyFileError("an empty passphrase is not allowed")
    salt, nonce = os.urandom(16), os.urandom(12)
    kek = Scrypt(salt=salt, length=32, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P).derive(passphrase)
    ct = AESGCM(kek).encrypt(nonce, inner, _PRIV_AAD)
    return canonical_cbor(
        {
            "type": "encrypted-private",
            "v": 1,
            "kdf": {"alg": "scrypt", "salt": salt, "n": _SCRYPT_N, "r": _SCRYPT_R, "p": _SCRYPT_P},
            "aead": "AES-256-GCM",
            "nonce": nonce,
            "ct": ct,
        }
    )


def _scrypt_parameters(kdf: dict[str, Any], source: str) -> tuple[int, int, int]:
    """``(n, r, p)`` of an encrypted key file, refused before any work is done unless
    ``n`` is a power of two in range, ``r`` and ``p`` are in range, and the memory
    (``128 * n * r`` bytes) and work (``n * r * p``) stay bounded."""
    n, r, p = kdf.get("n"), kdf.get("r"), kdf.get("p")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (n, r, p)):
        raise MalformedError(f"{source}: scrypt parameters n, r and p must be integers")
    assert isinstance(n, int) and isinstance(r, int) and isinstance(p, int)
    lo, hi = _SCRYPT_N_RANGE
    if not (lo <= n <= hi and n & (n - 1) == 0):
        raise MalformedError(
            f"{source}: scrypt n={n} must be a power of two from 2^10 to 2^20",
            hint="the key file was not written by edgeguard or is damaged",
        )
    if not (1 <= r <= _SCRYPT_R_MAX and 1 <= p <= _SCRYPT_P_MAX):
        raise MalformedError(
            f"{source}: scrypt r={r}, p={p} out of range (1 <= r <= {_SCRYPT_R_MAX}, "
            f"1 <= p <= {_SCRYPT_P_MAX})"
        )
    if 128 * n * r > _SCRYPT_MAX_MEMORY or n * r * p > _SCRYPT_MAX_WORK:
        raise MalformedError(
            f"{source}: scrypt n={n}, r={r}, p={p} would need more than "
            f"{_SCRYPT_MAX_MEMORY >> 20} MiB or {_SCRYPT_MAX_WORK >> 18} times the work of "
            "edgeguard's own key files",
            hint="re-encrypt the key with edgeguard keygen",
        )
    return n, r, p


def decode_private(
    data: bytes, *, source: str, passphrase: bytes | None = None
) -> SignerKey | DeviceKey:
    """Decode (and if needed decrypt) a private key.

    Raises:
        KeyFileError: Encrypted but no or a wrong passphrase; wrong key type.
        MalformedError: The structure is invalid.
    """
    d = decode_canonical(data, what=source)
    if isinstance(d, dict) and d.get("type") == "encrypted-private":
        if passphrase is None:
            raise KeyFileError(
                f"{source} is passphrase-protected",
                hint="pass --passphrase-file FILE or set EDGEGUARD_PASSPHRASE",
            )
        kdf = d.get("kdf")
        if (
            set(d) != {"type", "v", "kdf", "aead", "nonce", "ct"}
            or isinstance(d.get("v"), bool)
            or d.get("v") != 1
            or not isinstance(kdf, dict)
            or set(kdf) != {"alg", "salt", "n", "r", "p"}
            or kdf.get("alg") != "scrypt"
            or d.get("aead") != "AES-256-GCM"
        ):
            raise MalformedError(f"{source}: unsupported private key encryption")
        n, r, p = _scrypt_parameters(kdf, source)
        salt, nonce, ct = kdf.get("salt"), d.get("nonce"), d.get("ct")
        if not (
            isinstance(salt, bytes)
            and 16 <= len(salt) <= 64
            and isinstance(nonce, bytes)
            and len(nonce) == 12
            and isinstance(ct, bytes)
        ):
            raise MalformedError(f"{source}: malformed encrypted key")
        kek = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)
        try:
            inner = AESGCM(kek).decrypt(nonce, ct, _PRIV_AAD)
        except (InvalidTag, ValueError) as exc:
            raise KeyFileError(f"{source}: wrong passphrase (or the key file is damaged)") from exc
        d = decode_canonical(inner, what=source)
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "signer-private":
        return SignerKey.from_dict(d, source=source)
    if kind == "device-private":
        return DeviceKey.from_dict(d, source=source)
    raise KeyFileError(f"{source}: not a private key (type {kind!r})")

"""Hybrid signatures: ECDSA P-256 (SHA-256) **and** ML-DSA-65 (FIPS 204).

Layer: crypto. A hybrid signature verifies only if *both* component
signatures verify, so it stays secure while either scheme stands: ECDSA
P-256 interoperates with TPMs and OpenSSF model signing today; ML-DSA-65
protects against a future quantum adversary.

Both halves are bound to a *context* string (domain separation): a
signature made for a bundle never verifies as an attestation or event-log
signature. ECDSA signs ``b"edgeguard-sig-v1\\x00" + context + b"\\x00" +
message``; ML-DSA signs ``message`` with its FIPS 204 context string set to
``context``.

ECDSA signatures are encoded as fixed 64-byte ``r || s`` with *low S*
(``s <= n/2``), and verification refuses high-S values, so a signature has
exactly one valid encoding (no malleability).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, mldsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from edgeguard.errors import IntegrityError, MalformedError

__all__ = [
    "ECDSA_SIG_LEN",
    "HYBRID_ALG",
    "MLDSA65_SIG_LEN",
    "HybridSignature",
    "ecdsa_sign_raw",
    "ecdsa_verify_raw",
    "hybrid_sign",
    "hybrid_verify",
]

HYBRID_ALG = "ecdsa-p256-sha256+ml-dsa-65"
ECDSA_SIG_LEN = 64
MLDSA65_SIG_LEN = 3309
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_ECDSA_PREFIX = b"edgeguard-sig-v1\x00"


@dataclass(frozen=True)
class HybridSignature:
    """Both halves of a hybrid signature, each in its canonical encoding."""

    ecdsa: bytes
    mldsa: bytes

    def __post_init__(self) -> None:
        if len(self.ecdsa) != ECDSA_SIG_LEN:
            raise MalformedError(f"ECDSA signature must be {ECDSA_SIG_LEN} bytes")
        if len(self.mldsa) != MLDSA65_SIG_LEN:
            raise MalformedError(f"ML-DSA-65 signature must be {MLDSA65_SIG_LEN} bytes")


def _ecdsa_message(context: bytes, message: bytes) -> bytes:
    if b"\x00" in context:
        raise ValueError("signature context must not contain NUL bytes")
    return _ECDSA_PREFIX + context + b"\x00" + message


def ecdsa_sign_raw(key: ec.EllipticCurvePrivateKey, message: bytes, *, context: bytes) -> bytes:
    """ECDSA P-256/SHA-256 signature as 64 bytes ``r || s`` with low S."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("ECDSA keys must be on P-256")
    der = key.sign(_ecdsa_message(context, message), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    if s > _P256_N // 2:
        s = _P256_N - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def ecdsa_verify_raw(
    key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes, *, context: bytes
) -> None:
    """Verify a raw low-S ECDSA P-256 signature.

    Raises:
        IntegrityError: The signature is malformed, high-S or does not verify.
    """
    if len(signature) != ECDSA_SIG_LEN:
        raise IntegrityError("ECDSA signature has the wrong length")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < _P256_N and 0 < s <= _P256_N // 2):
        raise IntegrityError("ECDSA signature is out of range or not in low-S form")
    try:
        key.verify(
            encode_dss_signature(r, s),
            _ecdsa_message(context, message),
            ec.ECDSA(hashes.SHA256()),
        )
    except InvalidSignature as exc:
        raise IntegrityError("ECDSA signature does not verify") from exc


def hybrid_sign(
    ecdsa_key: ec.EllipticCurvePrivateKey,
    mldsa_key: mldsa.MLDSA65PrivateKey,
    message: bytes,
    *,
    context: bytes,
) -> HybridSignature:
    """Sign ``message`` with both keys under ``context``."""
    return HybridSignature(
        ecdsa=ecdsa_sign_raw(ecdsa_key, message, context=context),
        mldsa=mldsa_key.sign(message, context),
    )


def hybrid_verify(
    ecdsa_pub: ec.EllipticCurvePublicKey,
    mldsa_pub: mldsa.MLDSA65PublicKey,
    signature: HybridSignature,
    message: bytes,
    *,
    context: bytes,
) -> None:
    """Verify both halves; both must pass.

    Raises:
        IntegrityError: Either half is missing, malformed or does not verify.
    """
    ecdsa_verify_raw(ecdsa_pub, signature.ecdsa, message, context=context)
    try:
        mldsa_pub.verify(signature.mldsa, message, context)
    except InvalidSignature as exc:
        raise IntegrityError("ML-DSA-65 signature does not verify") from exc

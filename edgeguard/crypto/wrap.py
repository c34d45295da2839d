"""Wrapping the bundle data key to each recipient device with HPKE (RFC 9180).

Layer: crypto. Single-shot HPKE base mode, KDF HKDF-SHA256, AEAD
AES-256-GCM, KEM chosen by the device key (DHKEM(X25519), DHKEM(P-256) or the
hybrid ML-KEM-768 + X25519). The HPKE ``info`` binds the wrap to the bundle
salt and to the recipient key id, so a wrapped key cannot be moved to
another bundle or recipient slot.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import hpke

from edgeguard.crypto.keys import DeviceKey, DevicePublicKey, KemKind
from edgeguard.errors import IntegrityError

__all__ = ["unwrap_data_key", "wrap_data_key"]

_INFO = b"edgeguard/v1 data key wrap\x00"
_KEMS: dict[str, Any] = {
    "x25519": hpke.KEM.X25519,
    "p256": hpke.KEM.P256,
    "mlkem768-x25519": hpke.KEM.MLKEM768_X25519,
}


def _suite(kem: KemKind) -> hpke.Suite:
    return hpke.Suite(_KEMS[kem], hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def _info(salt: bytes, key_id: bytes) -> bytes:
    return _INFO + salt + key_id


def wrap_data_key(data_key: bytes, recipient: DevicePublicKey, *, salt: bytes) -> bytes:
    """Seal ``data_key`` to ``recipient``; returns HPKE ``enc || ciphertext``."""
    return _suite(recipient.kem).encrypt(
        data_key, recipient.hpke_key(), info=_info(salt, recipient.key_id)
    )


def unwrap_data_key(wrapped: bytes, device: DeviceKey, *, salt: bytes) -> bytes:
    """Open a wrapped data key with the device's recipient key.

    Raises:
        IntegrityError: The wrap does not open (tampered, or not for this key).
    """
    try:
        key = _suite(device.kem).decrypt(
            wrapped, device.hpke_key(), info=_info(salt, device.public.key_id)
        )
    except Exception as exc:  # cryptography raises InvalidTag/ValueError variants
        raise IntegrityError("bundle is not authentic (data key does not unwrap)") from exc
    if len(key) != 32:
        raise IntegrityError("bundle is not authentic (data key does not unwrap)")
    return bytes(key)

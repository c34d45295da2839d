"""Data model of bundle format v1: manifest, recipients, payload and signature.

Layer: bundle (no I/O). Every class is a frozen dataclass with ``to_cbor()``
producing the structure that is canonically encoded, and ``from_cbor()``
that validates a decoded structure strictly (exact field sets, types,
ranges, the limits in :class:`Limits`) and raises
:class:`~edgeguard.errors.MalformedError` on anything else. The normative
description is ``docs/bundle-format.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeguard._strict import as_bytes, as_int, as_map, as_str, check_fields, fail
from edgeguard.crypto.sign import HYBRID_ALG, HybridSignature
from edgeguard.crypto.stream import check_chunk_size, ciphertext_size
from edgeguard.errors import MalformedError

__all__ = [
    "FORMATS",
    "MAGIC",
    "ROLES",
    "DeviceConstraints",
    "Digest",
    "Header",
    "Limits",
    "Manifest",
    "Member",
    "PayloadInfo",
    "Recipient",
    "SignatureBlock",
]

#: The versioned magic: 16 bytes, PNG-style so text-mode transfers corrupt it visibly.
MAGIC = b"\x89edgeguard/1\r\n\x1a\n"
#: Member roles understood by format v1.
ROLES = ("primary", "member", "fallback", "engine", "aux")
#: Member payload formats understood by format v1.
FORMATS = ("onnx", "trt-engine", "npz", "cubin", "fatbin", "json")
AEAD_STREAM = "AES-256-GCM-STREAM"
KDF = "HKDF-SHA256"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")


@dataclass(frozen=True)
class Limits:
    """Hard limits checked before anything is allocated (one place, not literals)."""

    max_header: int = 8 * 1024 * 1024
    max_signature: int = 16 * 1024
    max_members: int = 64
    max_recipients: int = 10_000
    max_profiles: int = 64
    max_device_ids: int = 10_000
    max_member_size: int = 16 * 1024**3
    max_payload: int = 64 * 1024**3
    max_version: int = 2**53


DEFAULT_LIMITS = Limits()


_W = "malformed bundle"


def _fail(msg: str) -> MalformedError:
    return fail(_W, msg)


def _map(
    obj: Any, keys: set[str], what: str, optional: set[str] | None = None
) -> Mapping[str, Any]:
    opt = optional or set()
    return check_fields(obj, f"{_W}: {what}", keys - opt, opt)


def _uint(v: Any, what: str, maximum: int) -> int:
    return as_int(v, f"{_W}: {what}", lo=0, hi=maximum)


def _bstr(v: Any, what: str, size: int | None = None, max_size: int = 1 << 20) -> bytes:
    return as_bytes(v, f"{_W}: {what}", size=size, max_size=max_size)


def _name(v: Any, what: str) -> str:
    return as_str(v, f"{_W}: {what}", max_len=128, pattern=_NAME_RE)


def _opt_map(v: Any, what: str) -> dict[str, Any] | None:
    return None if v is None else dict(as_map(v, f"{_W}: {what}"))


@dataclass(frozen=True)
class Digest:
    """A self-describing digest: algorithm name and value."""

    alg: str
    value: bytes

    def to_cbor(self) -> dict[str, Any]:
        return {"alg": self.alg, "value": self.value}

    @classmethod
    def from_cbor(cls, obj: Any, what: str) -> Digest:
        d = _map(obj, {"alg", "value"}, what)
        if d["alg"] != "sha256":
            raise _fail(f"{what}: unsupported digest algorithm {d['alg']!r}")
        return cls("sha256", _bstr(d["value"], f"{what} value", 32))


@dataclass(frozen=True)
class Member:
    """One payload of the bundle: a model, engine or auxiliary file.

    Attributes:
        name: Unique name within the bundle.
        role: One of :data:`ROLES`.
        format: One of :data:`FORMATS`.
        size: Plaintext size in bytes.
        digest: SHA-256 of the plaintext.
        offset: Offset of this member's ciphertext stream within the payload.
    """

    name: str
    role: str
    format: str
    size: int
    digest: Digest
    offset: int

    def ct_size(self, chunk_size: int) -> int:
        """Length of this member's ciphertext stream."""
        return ciphertext_size(self.size, chunk_size)

    def to_cbor(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "format": self.format,
            "size": self.size,
            "digest": self.digest.to_cbor(),
            "offset": self.offset,
        }

    @classmethod
    def from_cbor(cls, obj: Any, limits: Limits) -> Member:
        d = _map(obj, {"name", "role", "format", "size", "digest", "offset"}, "member")
        if d["role"] not in ROLES:
            raise _fail(f"member role {d['role']!r} is not one of {', '.join(ROLES)}")
        if d["format"] not in FORMATS:
            raise _fail(f"member format {d['format']!r} is not one of {', '.join(FORMATS)}")
        return cls(
            name=_name(d["name"], "member name"),
            role=d["role"],
            format=d["format"],
            size=_uint(d["size"], "member size", limits.max_member_size),
            digest=Digest.from_cbor(d["digest"], "member digest"),
            offset=_uint(d["offset"], "member offset", limits.max_payload),
        )


@dataclass(frozen=True)
class DeviceConstraints:
    """Which devices may open the bundle: allowed profiles, optionally device ids."""

    profiles: tuple[str, ...]
    device_ids: tuple[str, ...] | None = None

    def to_cbor(self) -> dict[str, Any]:
        return {
            "profiles": list(self.profiles),
            "ids": None if self.device_ids is None else list(self.device_ids),
        }

    @classmethod
    def from_cbor(cls, obj: Any, limits: Limits) -> DeviceConstraints:
        d = _map(obj, {"profiles", "ids"}, "device constraints")
        profiles = d["profiles"]
        if not isinstance(profiles, list) or not 1 <= len(profiles) <= limits.max_profiles:
            raise _fail(f"device profiles must be a list of 1 to {limits.max_profiles} names")
        ids = d["ids"]
        if ids is not None and (
            not isinstance(ids, list) or not 1 <= len(ids) <= limits.max_device_ids
        ):
            raise _fail(f"device ids must be null or a list of 1 to {limits.max_device_ids}")
        return cls(
            tuple(_name(p, "device profile") for p in profiles),
            None if ids is None else tuple(_name(i, "device id") for i in ids),
        )


@dataclass(frozen=True)
class Manifest:
    """What the signer states about the release.

    ``sanity``, ``policy`` and ``engine_recipe`` are slots for the input-sanity
    profile, the runtime policy and the TensorRT engine recipe; format v1 only
    requires them to be maps or null, their owners validate their content.
    """

    name: str
    version: int
    created: int
    expires: int | None
    signer: bytes
    devices: DeviceConstraints
    members: tuple[Member, ...]
    sanity: dict[str, Any] | None = None
    policy: dict[str, Any] | None = None
    engine_recipe: dict[str, Any] | None = None
    tool: str = "edgeguard"

    def member(self, name: str) -> Member:
        """The member called ``name`` (KeyError if absent)."""
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def to_cbor(self) -> dict[str, Any]:
        return {
            "format": 1,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "expires": self.expires,
            "signer": self.signer,
            "devices": self.devices.to_cbor(),
            "members": [m.to_cbor() for m in self.members],
            "sanity": self.sanity,
            "policy": self.policy,
            "engine_recipe": self.engine_recipe,
            "tool": self.tool,
        }

    @classmethod
    def from_cbor(cls, obj: Any, limits: Limits) -> Manifest:
        keys = {"format", "name", "version", "created", "expires", "signer", "devices"}
        keys |= {"members", "sanity", "policy", "engine_recipe", "tool"}
        d = _map(obj, keys, "manifest")
        if isinstance(d["format"], bool) or d["format"] != 1:  # true == 1 in Python
            raise _fail(f"manifest format {d['format']!r} is not supported (expected 1)")
        members = d["members"]
        if not isinstance(members, list) or not 1 <= len(members) <= limits.max_members:
            raise _fail(f"members must be a list of 1 to {limits.max_members}")
        parsed = tuple(Member.from_cbor(m, limits) for m in members)
        if len({m.name for m in parsed}) != len(parsed):
            raise _fail("member names must be unique")
        expires = d["expires"]
        tool = d["tool"]
        if not isinstance(tool, str) or len(tool) > 128:
            raise _fail("tool must be a short text string")
        created = _uint(d["created"], "created", 2**40)
        return cls(
            name=_name(d["name"], "bundle name"),
            version=_uint(d["version"], "version", limits.max_version),
            created=created,
            expires=None if expires is None else _uint(expires, "expires", 2**40),
            signer=_bstr(d["signer"], "signer key id", 32),
            devices=DeviceConstraints.from_cbor(d["devices"], limits),
            members=parsed,
            sanity=_opt_map(d["sanity"], "sanity"),
            policy=_opt_map(d["policy"], "policy"),
            engine_recipe=_opt_map(d["engine_recipe"], "engine_recipe"),
            tool=tool,
        )


@dataclass(frozen=True)
class Recipient:
    """The data key wrapped with HPKE for one device (identified by key id)."""

    key_id: bytes
    kem: str
    wrapped: bytes

    def to_cbor(self) -> dict[str, Any]:
        return {"kid": self.key_id, "kem": self.kem, "wrapped": self.wrapped}

    @classmethod
    def from_cbor(cls, obj: Any) -> Recipient:
        d = _map(obj, {"kid", "kem", "wrapped"}, "recipient")
        if d["kem"] not in ("x25519", "p256", "mlkem768-x25519"):
            raise _fail(f"recipient KEM {d['kem']!r} is not supported")
        return cls(
            _bstr(d["kid"], "recipient key id", 32),
            d["kem"],
            _bstr(d["wrapped"], "wrapped key", max_size=4096),
        )


@dataclass(frozen=True)
class PayloadInfo:
    """How the payload is encrypted, and the digest of all its ciphertext bytes."""

    chunk_size: int
    salt: bytes
    size: int
    digest: Digest
    aead: str = AEAD_STREAM
    kdf: str = KDF

    def to_cbor(self) -> dict[str, Any]:
        return {
            "aead": self.aead,
            "kdf": self.kdf,
            "chunk": self.chunk_size,
            "salt": self.salt,
            "size": self.size,
            "digest": self.digest.to_cbor(),
        }

    @classmethod
    def from_cbor(cls, obj: Any, limits: Limits) -> PayloadInfo:
        d = _map(obj, {"aead", "kdf", "chunk", "salt", "size", "digest"}, "payload")
        if d["aead"] != AEAD_STREAM or d["kdf"] != KDF:
            raise _fail("payload must use AES-256-GCM-STREAM with HKDF-SHA256")
        try:
            chunk = check_chunk_size(d["chunk"])
        except MalformedError as exc:
            raise _fail(str(exc)) from exc
        return cls(
            chunk_size=chunk,
            salt=_bstr(d["salt"], "payload salt", 32),
            size=_uint(d["size"], "payload size", limits.max_payload),
            digest=Digest.from_cbor(d["digest"], "payload digest"),
        )


@dataclass(frozen=True)
class Header:
    """The signed header: manifest, recipients and payload description."""

    manifest: Manifest
    recipients: tuple[Recipient, ...]
    payload: PayloadInfo

    def to_cbor(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest.to_cbor(),
            "recipients": [r.to_cbor() for r in self.recipients],
            "payload": self.payload.to_cbor(),
        }

    def recipient(self, key_id: bytes) -> Recipient | None:
        """The recipient entry for ``key_id``, if any."""
        for r in self.recipients:
            if r.key_id == key_id:
                return r
        return None

    @classmethod
    def from_cbor(cls, obj: Any, limits: Limits) -> Header:
        d = _map(obj, {"manifest", "recipients", "payload"}, "header")
        recips = d["recipients"]
        if not isinstance(recips, list) or not 1 <= len(recips) <= limits.max_recipients:
            raise _fail(f"recipients must be a list of 1 to {limits.max_recipients}")
        header = cls(
            manifest=Manifest.from_cbor(d["manifest"], limits),
            recipients=tuple(Recipient.from_cbor(r) for r in recips),
            payload=PayloadInfo.from_cbor(d["payload"], limits),
        )
        if len({r.key_id for r in header.recipients}) != len(header.recipients):
            raise _fail("recipient key ids must be unique")
        header.check_layout()
        return header

    def check_layout(self) -> None:
        """Members' streams must tile the payload exactly, in order."""
        offset = 0
        for m in self.manifest.members:
            if m.offset != offset:
                raise _fail(f"member {m.name!r} does not start where the previous one ends")
            offset += m.ct_size(self.payload.chunk_size)
        if offset != self.payload.size:
            raise _fail("member streams do not add up to the payload size")


@dataclass(frozen=True)
class SignatureBlock:
    """The hybrid signature over ``MAGIC || u32 header length || header``."""

    key_id: bytes
    signature: HybridSignature
    alg: str = HYBRID_ALG

    def to_cbor(self) -> dict[str, Any]:
        return {
            "alg": self.alg,
            "kid": self.key_id,
            "ecdsa": self.signature.ecdsa,
            "mldsa": self.signature.mldsa,
        }

    @classmethod
    def from_cbor(cls, obj: Any) -> SignatureBlock:
        d = _map(obj, {"alg", "kid", "ecdsa", "mldsa"}, "signature block")
        if d["alg"] != HYBRID_ALG:
            raise _fail(f"signature algorithm {d['alg']!r} is not {HYBRID_ALG}")
        kid = _bstr(d["kid"], "signature key id", 32)
        ecdsa, mldsa = _bstr(d["ecdsa"], "ECDSA signature"), _bstr(d["mldsa"], "ML-DSA signature")
        try:
            sig = HybridSignature(ecdsa=ecdsa, mldsa=mldsa)
        except MalformedError as exc:
            raise _fail(str(exc)) from exc
        return cls(key_id=kid, signature=sig)

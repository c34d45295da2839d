"""The sealed per-device engine cache: key derivation, binding and sealed-entry format.

Layer: crypto (no I/O). Specification: ``docs/engine-cache.md``; test vectors:
``tests/vectors/enginecache/``.

A device compiles a bundle member into an artifact that is specific to it (a TensorRT
plan, an ONNX Runtime optimised model in ORT format) and keeps it between starts. The
artifact is a function of the decrypted model, so it is as secret as the model: it is
kept only sealed, under a **cache key** derived from the device's private key material
with HKDF-SHA256 and its own label (the KEM key itself is never used for anything but
HPKE). Every entry is bound to what made it (:class:`Binding`): the bundle release,
the member and its digest, the recipe, the artifact kind, the library version and the
hardware identity. The binding's digest is in the entry's header, in the per-entry key
derivation and in every chunk's associated data, so an entry moved to another binding,
edited, truncated or extended, or sealed under another device key, fails to open.

The body is the STREAM construction of :mod:`edgeguard.crypto.stream` (AES-256-GCM,
chunk counter and final flag in the nonce) with associated data, so an artifact of
hundreds of megabytes is sealed and opened chunk by chunk.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgeguard.crypto.encoding import canonical_cbor, decode_canonical
from edgeguard.crypto.keys import DeviceKey
from edgeguard.crypto.stream import (
    TAG_LEN,
    check_chunk_size,
    chunk_count,
    ciphertext_size,
    stream_nonce,
)
from edgeguard.errors import IntegrityError, MalformedError

__all__ = [
    "ARTIFACT_KINDS",
    "CHUNK_SIZE",
    "DEVICE_WIDE",
    "HEADER_MAX",
    "MAGIC",
    "Binding",
    "EntryHeader",
    "EntryOpener",
    "cache_key_from_material",
    "derive_cache_key",
    "entry_key",
    "parse_header",
    "seal_entry",
]

#: First bytes of every sealed entry.
MAGIC = b"EGENGC\x00\x01"
#: Largest header (CBOR) a reader accepts.
HEADER_MAX = 1024
#: Chunk size a writer uses (any power of two from 64 KiB to 1 MiB is read).
CHUNK_SIZE = 1 << 20
#: Artifact kinds: a TensorRT plan, an ONNX Runtime model in ORT format, the device's
#: TensorRT timing cache.
ARTIFACT_KINDS = ("trt-plan", "ort-model", "trt-timing")
#: The digests (and, as the empty name, the bundle and member) of a device-wide entry,
#: bound to no bundle: the TensorRT timing cache (``docs/engine-cache.md``).
DEVICE_WIDE = bytes(32)

_KEY_INFO = b"edgeguard/v1 engine cache key"
_ENTRY_INFO = b"edgeguard/v1 engine cache entry"
_GROUP_LABEL = "edgeguard/v1 engine cache group"
_HEADER_KEYS = frozenset({"v", "kind", "binding", "group", "salt", "chunk", "size"})
_TEXT_RE = re.compile(r"[\x20-\x7e]{0,256}")


def cache_key_from_material(material: bytes, *, key_id: bytes) -> bytes:
    """The 32-byte cache key: HKDF-SHA256(IKM = material, salt = key_id, info = label).

    Args:
        material: The device's private key material (see :func:`derive_cache_key`).
        key_id: The device public key's identifier (32 bytes).
    """
    if not material or len(key_id) != 32:
        raise ValueError("the key material must be non-empty and the key id 32 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=key_id, info=_KEY_INFO).derive(material)


def derive_cache_key(device: DeviceKey) -> bytes:
    """The engine cache key of ``device``: its private material through HKDF, own label.

    The input keying material is the canonical CBOR array ``[hpke, attest-p256]`` of the
    device key's private structure (the raw KEM private key or seeds and the P-256
    attestation scalar), the salt is the device public key's id. Another device key
    gives another cache key, so entries sealed by one device never open on another.
    """
    d = device.to_dict()
    material = canonical_cbor([bytes(d["hpke"]), bytes(d["attest-p256"])])
    return cache_key_from_material(material, key_id=device.public.key_id)


def _text(value: str, what: str) -> str:
    if not isinstance(value, str) or not _TEXT_RE.fullmatch(value):
        raise MalformedError(f"engine cache binding: {what} must be printable ASCII (<= 256)")
    return value


def _digest32(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise MalformedError(f"engine cache binding: {what} must be a 32-byte digest")
    return value


@dataclass(frozen=True)
class Binding:
    """What a cached artifact was made from and for; the associated data of its entry.

    Attributes:
        bundle: The bundle's name.
        manifest_sha256: The release's manifest digest.
        member: The member's name.
        member_sha256: The member's plaintext digest (signed).
        recipe_sha256: SHA-256 of what turned the member into the artifact: the
            signed engine recipe (TensorRT), or the canonical CBOR of the loader
            options that change the artifact (ONNX Runtime).
        kind: ``"trt-plan"``, ``"ort-model"`` or ``"trt-timing"`` (the device's
            TensorRT timing cache: bundle and member ``""``, every digest
            :data:`DEVICE_WIDE`).
        library: The compiler and its version (``"onnxruntime 1.32.0"``).
        hardware: What the artifact is specific to (text to text): the GPU name,
            compute capability and driver, or the CPU model, its flags relevant to the
            kernels and the machine architecture.
    """

    bundle: str
    manifest_sha256: bytes = field(repr=False)
    member: str
    member_sha256: bytes = field(repr=False)
    recipe_sha256: bytes = field(repr=False)
    kind: str
    library: str
    hardware: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for what in ("bundle", "member", "library"):
            _text(getattr(self, what), what)
        for what in ("manifest_sha256", "member_sha256", "recipe_sha256"):
            _digest32(getattr(self, what), what)
        if self.kind not in ARTIFACT_KINDS:
            raise MalformedError(f"engine cache binding: unknown artifact kind {self.kind!r}")
        if len(self.hardware) > 32:
            raise MalformedError("engine cache binding: more than 32 hardware entries")
        for k, v in self.hardware.items():
            _text(k, "hardware key")
            _text(v, f"hardware {k!r}")
        object.__setattr__(self, "hardware", dict(sorted(self.hardware.items())))

    def to_cbor(self) -> dict[str, Any]:
        """The binding as a CBOR map (before encoding)."""
        return {
            "v": 1,
            "bundle": self.bundle,
            "manifest": self.manifest_sha256,
            "member": self.member,
            "member_sha256": self.member_sha256,
            "recipe": self.recipe_sha256,
            "kind": self.kind,
            "library": self.library,
            "hardware": dict(self.hardware),
        }

    def encode(self) -> bytes:
        """The canonical CBOR encoding of :meth:`to_cbor`."""
        return canonical_cbor(self.to_cbor())

    def digest(self) -> bytes:
        """SHA-256 of :meth:`encode` (names the entry's file, in its header and AAD)."""
        return hashlib.sha256(self.encode()).digest()

    def group(self) -> bytes:
        """SHA-256 of the canonical CBOR ``[label, bundle, member, kind]``.

        Entries of one group are the same member of the same bundle compiled the same
        way; a new entry replaces the others of its group (stale releases, old drivers).
        """
        return hashlib.sha256(
            canonical_cbor([_GROUP_LABEL, self.bundle, self.member, self.kind])
        ).digest()

    def describe(self) -> dict[str, Any]:
        """JSON-compatible form for the event log."""
        d = self.to_cbor()
        for k in ("manifest", "member_sha256", "recipe"):
            d[k] = d[k].hex()
        d["sha256"] = self.digest().hex()
        return d


@dataclass(frozen=True)
class EntryHeader:
    """The parsed header of a sealed entry (its prefix is the body's associated data).

    Attributes:
        kind: The artifact kind.
        binding: SHA-256 of the binding's encoding.
        group: The binding's group (:meth:`Binding.group`).
        salt: 32 random bytes of this entry.
        chunk: Chunk size.
        size: Plaintext size of the artifact.
        prefix: The bytes ``MAGIC || u16(len(header)) || header``.
    """

    kind: str
    binding: bytes
    group: bytes
    salt: bytes
    chunk: int
    size: int
    prefix: bytes = field(repr=False)

    @property
    def body_size(self) -> int:
        """The exact length of the sealed body that follows the prefix."""
        return ciphertext_size(self.size, self.chunk)

    @property
    def aad(self) -> bytes:
        """The associated data of every chunk: SHA-256 of the prefix."""
        return hashlib.sha256(self.prefix).digest()


def entry_key(cache_key: bytes, *, salt: bytes, binding: bytes) -> bytes:
    """HKDF-SHA256(IKM = cache key, salt = entry salt, info = label || binding digest)."""
    if len(cache_key) != 32 or len(salt) != 32 or len(binding) != 32:
        raise ValueError("cache key, salt and binding digest must be 32 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_ENTRY_INFO + binding).derive(
        cache_key
    )


def _header_prefix(header: Mapping[str, Any]) -> bytes:
    raw = canonical_cbor(dict(header))
    if len(raw) > HEADER_MAX:
        raise MalformedError("engine cache entry header too large")
    return MAGIC + len(raw).to_bytes(2, "big") + raw


def parse_header(data: bytes | bytearray | memoryview, *, max_size: int) -> EntryHeader:
    """Parse the prefix of a sealed entry (``data`` may hold more bytes after it).

    Args:
        data: At least the entry's prefix (``len(MAGIC) + 2 + HEADER_MAX`` bytes, or
            the whole file when it is shorter).
        max_size: The largest artifact the reader accepts.

    Raises:
        MalformedError: Not an entry of this format, or an artifact above ``max_size``.
    """
    raw = bytes(data[: len(MAGIC) + 2 + HEADER_MAX])
    if len(raw) < len(MAGIC) + 2 or raw[: len(MAGIC)] != MAGIC:
        raise MalformedError("not a sealed engine cache entry (magic)")
    n = int.from_bytes(raw[len(MAGIC) : len(MAGIC) + 2], "big")
    if not 0 < n <= HEADER_MAX or len(raw) < len(MAGIC) + 2 + n:
        raise MalformedError("engine cache entry: bad header length")
    prefix = raw[: len(MAGIC) + 2 + n]
    h = decode_canonical(prefix[len(MAGIC) + 2 :], what="engine cache entry header")
    if not isinstance(h, dict) or set(h) != _HEADER_KEYS or h["v"] != 1:
        raise MalformedError("engine cache entry: bad header fields or version")
    for k in ("binding", "group", "salt"):
        if not isinstance(h[k], bytes) or len(h[k]) != 32:
            raise MalformedError(f"engine cache entry: bad {k}")
    if h["kind"] not in ARTIFACT_KINDS:
        raise MalformedError("engine cache entry: unknown kind")
    size = h["size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= max_size:
        raise MalformedError(f"engine cache entry: artifact size outside 1..{max_size}")
    chunk = h["chunk"]
    if isinstance(chunk, bool) or not isinstance(chunk, int):
        raise MalformedError("engine cache entry: bad chunk size")
    check_chunk_size(chunk)
    return EntryHeader(
        kind=h["kind"],
        binding=h["binding"],
        group=h["group"],
        salt=h["salt"],
        chunk=chunk,
        size=size,
        prefix=prefix,
    )


def seal_entry(
    cache_key: bytes,
    binding: Binding,
    artifact: bytes | bytearray | memoryview,
    *,
    salt: bytes,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[bytes]:
    """Yield a sealed entry: its prefix, then each sealed chunk.

    Args:
        cache_key: :func:`derive_cache_key`.
        binding: What the artifact was made from and for.
        artifact: The plaintext artifact (not empty).
        salt: 32 fresh random bytes (``secrets.token_bytes(32)``; fixed in test vectors).
        chunk_size: A power of two from 64 KiB to 1 MiB.
    """
    view = memoryview(artifact).cast("B")
    if len(view) == 0:
        raise ValueError("an empty artifact is not cached")
    if len(salt) != 32:
        raise ValueError("the salt must be 32 bytes")
    check_chunk_size(chunk_size)
    digest = binding.digest()
    prefix = _header_prefix(
        {
            "v": 1,
            "kind": binding.kind,
            "binding": digest,
            "group": binding.group(),
            "salt": bytes(salt),
            "chunk": chunk_size,
            "size": len(view),
        }
    )
    aad = hashlib.sha256(prefix).digest()
    aead = AESGCM(entry_key(cache_key, salt=salt, binding=digest))
    yield prefix
    n = chunk_count(len(view), chunk_size)
    for i in range(n):
        chunk = view[i * chunk_size : (i + 1) * chunk_size]
        yield aead.encrypt(stream_nonce(i, last=i == n - 1), chunk, aad)


class EntryOpener:
    """Opens the body of one sealed entry for an expected binding, chunk by chunk.

    Raises (every method): :class:`~edgeguard.errors.IntegrityError` when the entry is
    for another binding, was sealed under another key, or any chunk fails its tag.
    """

    def __init__(self, cache_key: bytes, header: EntryHeader, binding: Binding) -> None:
        digest = binding.digest()
        if header.binding != digest or header.kind != binding.kind:
            raise IntegrityError("engine cache entry is for another binding")
        if header.group != binding.group():
            raise IntegrityError("engine cache entry is for another member")
        self.header = header
        self._aad = header.aad
        self._aead = AESGCM(entry_key(cache_key, salt=header.salt, binding=digest))
        self.chunks = chunk_count(header.size, header.chunk)

    def span(self, index: int) -> tuple[int, int]:
        """(offset in the body, sealed length) of chunk ``index``."""
        if not 0 <= index < self.chunks:
            raise IndexError(index)
        plain = min(self.header.chunk, self.header.size - index * self.header.chunk)
        return index * (self.header.chunk + TAG_LEN), plain + TAG_LEN

    def open_into(
        self, index: int, sealed: bytes | bytearray | memoryview, out: memoryview
    ) -> None:
        """Open sealed chunk ``index`` into ``out`` (exactly its plaintext length)."""
        _, length = self.span(index)
        if len(sealed) != length or len(out) != length - TAG_LEN:
            raise IntegrityError("engine cache entry: chunk has the wrong length")
        try:
            self._aead.decrypt_into(
                stream_nonce(index, last=index == self.chunks - 1), sealed, self._aad, out
            )
        except InvalidTag as exc:
            raise IntegrityError("engine cache entry is not authentic") from exc

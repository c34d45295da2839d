"""Chunked, seekable STREAM AEAD (AES-256-GCM) for bundle payloads.

Layer: crypto. The construction is STREAM (Hoang, Reyhanitabar, Rogaway,
Vizar 2015) as used by age: the plaintext is cut into chunks of a fixed size
(the last one may be shorter, and is empty only when the whole plaintext is);
chunk *i* is sealed with AES-256-GCM under a per-stream key and the 12-byte
nonce ``i`` (11 bytes, big-endian) ``||`` ``0x01`` for the final chunk,
``0x00`` otherwise. Per-chunk tags detect modification; the counter detects
reordering and duplication; the final-chunk flag detects truncation and
extension. Every chunk can be decrypted on its own (seekable).

The per-stream key is derived with HKDF-SHA256 from the bundle's random data
key, the bundle salt and the member index, so no (key, nonce) pair repeats.
"""

from __future__ import annotations

from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgeguard.errors import IntegrityError, MalformedError

__all__ = [
    "CHUNK_MAX",
    "CHUNK_MIN",
    "TAG_LEN",
    "StreamDecryptor",
    "chunk_count",
    "ciphertext_size",
    "derive_stream_key",
    "encrypt_stream",
    "stream_nonce",
]

CHUNK_MIN = 64 * 1024
CHUNK_MAX = 1024 * 1024
TAG_LEN = 16
_MAX_COUNTER = 2**88 - 1
_STREAM_INFO = b"edgeguard/v1 payload stream key"


def check_chunk_size(chunk_size: int) -> int:
    """Return ``chunk_size`` if it is a power of two in [64 KiB, 1 MiB]."""
    if (
        not isinstance(chunk_size, int)
        or not CHUNK_MIN <= chunk_size <= CHUNK_MAX
        or chunk_size & (chunk_size - 1)
    ):
        raise MalformedError(
            f"chunk size {chunk_size!r} must be a power of two from {CHUNK_MIN} to {CHUNK_MAX}"
        )
    return chunk_size


def derive_stream_key(data_key: bytes, *, salt: bytes, index: int) -> bytes:
    """HKDF-SHA256(data_key, salt, info = label || u32 index) -> 32-byte key."""
    if len(data_key) != 32 or len(salt) != 32:
        raise ValueError("data key and salt must be 32 bytes")
    info = _STREAM_INFO + index.to_bytes(4, "big")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(data_key)


def stream_nonce(counter: int, *, last: bool) -> bytes:
    """The 12-byte nonce of chunk ``counter``."""
    if not 0 <= counter <= _MAX_COUNTER:
        raise ValueError("chunk counter out of range")
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def chunk_count(plaintext_size: int, chunk_size: int) -> int:
    """Number of chunks for a plaintext (at least one)."""
    return max(1, -(-plaintext_size // chunk_size))


def ciphertext_size(plaintext_size: int, chunk_size: int) -> int:
    """Ciphertext length of a stream: plaintext plus one tag per chunk."""
    return plaintext_size + TAG_LEN * chunk_count(plaintext_size, chunk_size)


def encrypt_stream(
    key: bytes, plaintext: bytes | bytearray | memoryview, chunk_size: int
) -> Iterator[bytes]:
    """Yield the sealed chunks of ``plaintext`` in order."""
    check_chunk_size(chunk_size)
    view = memoryview(plaintext).cast("B")
    aead = AESGCM(key)
    n = chunk_count(len(view), chunk_size)
    for i in range(n):
        chunk = view[i * chunk_size : (i + 1) * chunk_size]
        yield aead.encrypt(stream_nonce(i, last=i == n - 1), chunk, None)


class StreamDecryptor:
    """Decrypts one STREAM whose plaintext size is known from the signed header.

    Chunks may be fed in order with :meth:`decrypt_into` or opened at random
    with :meth:`decrypt_chunk` (seeking). Every failure raises the same
    :class:`IntegrityError`.
    """

    def __init__(self, key: bytes, *, plaintext_size: int, chunk_size: int) -> None:
        self._aead = AESGCM(key)
        self.chunk_size = check_chunk_size(chunk_size)
        self.plaintext_size = plaintext_size
        self.chunks = chunk_count(plaintext_size, chunk_size)

    def chunk_span(self, index: int) -> tuple[int, int]:
        """(offset, length) of sealed chunk ``index`` within the stream's ciphertext."""
        if not 0 <= index < self.chunks:
            raise IndexError(index)
        start = index * (self.chunk_size + TAG_LEN)
        plain = min(self.chunk_size, self.plaintext_size - index * self.chunk_size)
        return start, plain + TAG_LEN

    def decrypt_chunk(self, index: int, sealed: bytes | bytearray | memoryview) -> bytes:
        """Open sealed chunk ``index`` on its own (random access)."""
        _, length = self.chunk_span(index)
        if len(sealed) != length:
            raise IntegrityError("bundle is not authentic (payload chunk has the wrong length)")
        try:
            return self._aead.decrypt(
                stream_nonce(index, last=index == self.chunks - 1), sealed, None
            )
        except InvalidTag as exc:
            raise IntegrityError("bundle is not authentic (payload authentication failed)") from exc

    def decrypt_into(
        self, index: int, sealed: bytes | bytearray | memoryview, out: memoryview
    ) -> None:
        """Open sealed chunk ``index`` directly into ``out`` (its plaintext length)."""
        _, length = self.chunk_span(index)
        if len(sealed) != length or len(out) != length - TAG_LEN:
            raise IntegrityError("bundle is not authentic (payload chunk has the wrong length)")
        try:
            self._aead.decrypt_into(
                stream_nonce(index, last=index == self.chunks - 1), sealed, None, out
            )
        except InvalidTag as exc:
            raise IntegrityError("bundle is not authentic (payload authentication failed)") from exc

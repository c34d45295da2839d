"""Encoding and parsing of the bundle prefix (magic, header, signature).

Layer: bundle (no I/O: the parser pulls bytes through a ``read(n)`` callable
that the caller backs with a file or a buffer).

Byte layout of a v1 bundle (all integers big-endian)::

    MAGIC (16) | u32 H | header (H bytes, canonical CBOR) |
    u32 S | signature block (S bytes, canonical CBOR) | payload

The hybrid signature covers ``MAGIC || u32 H || header``. The header holds
the SHA-256 of the whole payload, so every byte of the file except the
signature block itself is covered by the signature; the signature block is
canonical (fixed-size, low-S) so it has exactly one valid encoding.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from edgeguard.bundle.model import (
    DEFAULT_LIMITS,
    MAGIC,
    Header,
    Limits,
    SignatureBlock,
)
from edgeguard.crypto.encoding import canonical_cbor, decode_canonical
from edgeguard.errors import MalformedError

__all__ = ["ParsedPrefix", "encode_prefix", "parse_prefix", "signed_region"]

_U32 = struct.Struct(">I")
SIGNATURE_CONTEXT = b"edgeguard-bundle-v1"


def signed_region(header_bytes: bytes) -> bytes:
    """The exact bytes the hybrid signature covers."""
    return MAGIC + _U32.pack(len(header_bytes)) + header_bytes


def encode_prefix(header_bytes: bytes, signature: SignatureBlock) -> bytes:
    """Magic, header and signature block, ready to be followed by the payload."""
    sig = canonical_cbor(signature.to_cbor())
    return signed_region(header_bytes) + _U32.pack(len(sig)) + sig


@dataclass(frozen=True)
class ParsedPrefix:
    """A parsed (not yet verified) bundle prefix.

    Attributes:
        header: The decoded header.
        header_bytes: The header exactly as stored (what the signature covers).
        signature: The decoded signature block.
        payload_offset: Where the payload starts in the file.
    """

    header: Header
    header_bytes: bytes
    signature: SignatureBlock
    payload_offset: int

    @property
    def signed_bytes(self) -> bytes:
        """Magic, length and header: the message the signature is over."""
        return signed_region(self.header_bytes)


def _read_exact(read: Callable[[int], bytes], n: int, what: str) -> bytes:
    data = read(n)
    if len(data) != n:
        raise MalformedError(f"malformed bundle: file ends inside the {what} (truncated)")
    return data


def parse_prefix(
    read: Callable[[int], bytes],
    *,
    file_size: int,
    limits: Limits = DEFAULT_LIMITS,
) -> ParsedPrefix:
    """Parse magic, header and signature block, checking every length first.

    Args:
        read: Returns up to ``n`` bytes from the current position.
        file_size: Total size of the bundle, used to bound lengths before
            anything is read or allocated.
        limits: Size limits.

    Raises:
        MalformedError: Not a v1 bundle, a length over a limit or past the end
            of the file, or a structure that does not validate.
    """
    magic = read(len(MAGIC))
    if magic != MAGIC:
        if magic[:10] == MAGIC[:10]:
            raise MalformedError("not a bundle of format v1 (unsupported format version)")
        raise MalformedError("not an edgeguard bundle (bad magic)")
    pos = len(MAGIC)
    (hlen,) = _U32.unpack(_read_exact(read, 4, "header length"))
    pos += 4
    if not 1 <= hlen <= limits.max_header or pos + hlen + 4 > file_size:
        raise MalformedError(
            f"malformed bundle: header length {hlen} exceeds the limit or the file size"
        )
    header_bytes = _read_exact(read, hlen, "header")
    pos += hlen
    (slen,) = _U32.unpack(_read_exact(read, 4, "signature length"))
    pos += 4
    if not 1 <= slen <= limits.max_signature or pos + slen > file_size:
        raise MalformedError(
            f"malformed bundle: signature length {slen} exceeds the limit or the file size"
        )
    sig_bytes = _read_exact(read, slen, "signature block")
    pos += slen
    header = Header.from_cbor(decode_canonical(header_bytes, what="bundle header"), limits)
    signature = SignatureBlock.from_cbor(decode_canonical(sig_bytes, what="signature block"))
    return ParsedPrefix(
        header=header, header_bytes=header_bytes, signature=signature, payload_offset=pos
    )

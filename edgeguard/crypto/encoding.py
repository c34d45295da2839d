"""Canonical CBOR and text armour shared by keys, bundles and signatures.

Layer: crypto (no I/O). Every structure edgeguard signs or hashes is encoded
as *deterministic* CBOR (RFC 8949 section 4.2.1, as produced by
``cbor2.dumps(..., canonical=True)``), and decoding insists on it: a
structure whose bytes are not the canonical encoding of what they decode to is
rejected, so every value has exactly one encoding and one digest.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import cbor2

from edgeguard.errors import MalformedError

__all__ = ["armor", "canonical_cbor", "decode_canonical", "unarmor"]


def canonical_cbor(obj: Any) -> bytes:
    """Encode ``obj`` as deterministic CBOR."""
    return cbor2.dumps(obj, canonical=True)


def decode_canonical(data: bytes | bytearray | memoryview, *, what: str) -> Any:
    """Decode deterministic CBOR, refusing anything else.

    Args:
        data: The encoded bytes.
        what: Name of the structure, for the error message.

    Returns:
        The decoded Python object (dicts, lists, str, bytes, int, float, None, bool).

    Raises:
        MalformedError: The bytes are not valid CBOR, have trailing bytes, use
            tags, or are not in canonical form.
    """
    raw = bytes(data)
    try:
        obj = cbor2.loads(raw, tag_hook=_refuse_tag)
    except MalformedError:
        raise
    except Exception as exc:  # cbor2 raises many types on hostile input
        raise MalformedError(f"{what}: not valid CBOR ({type(exc).__name__})") from exc
    try:
        again = canonical_cbor(obj)
    except Exception as exc:
        raise MalformedError(f"{what}: cannot be re-encoded ({type(exc).__name__})") from exc
    if again != raw:
        raise MalformedError(f"{what}: not in canonical CBOR form (or has trailing bytes)")
    return obj


def _refuse_tag(decoder: object, tag: object) -> object:
    raise MalformedError("CBOR tags are not allowed in edgeguard structures")


def armor(kind: str, payload: bytes) -> str:
    """Wrap ``payload`` in a PEM-style text block labelled ``EDGEGUARD <kind>``."""
    body = base64.encodebytes(payload).decode("ascii")
    return f"-----BEGIN EDGEGUARD {kind}-----\n{body}-----END EDGEGUARD {kind}-----\n"


def unarmor(text: str | bytes, *, kind: str, source: str) -> bytes:
    """Extract the payload of an ``EDGEGUARD <kind>`` text block.

    Raises:
        MalformedError: The label is different or the body is not base64.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError as exc:
            raise MalformedError(f"{source}: not an edgeguard text key file") from exc
    lines = [ln.strip() for ln in text.strip().splitlines()]
    begin, end = f"-----BEGIN EDGEGUARD {kind}-----", f"-----END EDGEGUARD {kind}-----"
    if len(lines) < 3 or lines[0] != begin or lines[-1] != end:
        found = lines[0] if lines else "an empty file"
        raise MalformedError(f"{source}: expected an EDGEGUARD {kind} block, found {found[:60]!r}")
    try:
        return base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedError(f"{source}: the key block is not valid base64") from exc

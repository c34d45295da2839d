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
import re
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
            tags (any tag, anywhere), or are not in canonical form.
    """
    raw = bytes(data)
    _refuse_tags(raw, what)
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


# Heads that are a whole item: integers 0..23 and -1..-24, empty strings, arrays and
# maps, simple values 0..23 (false, true, null among them).
_ONE_BYTE_ITEMS = re.compile(rb"[\x00-\x17\x20-\x37\x40\x60\x80\xa0\xe0-\xf7]+")
_ONE_BYTE_HEADS = frozenset([*range(0x18), *range(0x20, 0x38), 0x40, 0x60, 0x80, 0xA0])
_ONE_BYTE_HEADS |= frozenset(range(0xE0, 0xF8))


def _refuse_tags(raw: bytes, what: str) -> None:
    """Walk every data item of ``raw`` and refuse a tag (major type 6) anywhere.

    cbor2 decodes several tags itself (bignums, sets, date/times, decimal fractions,
    regular expressions, shared references) without calling its ``tag_hook``, and a
    decoded value can even re-encode to the same bytes, so tags are refused here,
    before cbor2 sees the bytes. The walk also refuses what canonical CBOR never holds
    (indefinite lengths, reserved additional information) and a truncated item, so it
    can follow every structure. It is iterative and linear in ``len(raw)``.
    """
    pos, end, todo = 0, len(raw), 1
    while todo:
        if pos >= end:
            raise MalformedError(f"{what}: not valid CBOR (truncated)")
        head = raw[pos]
        if head in _ONE_BYTE_HEADS:  # skip a run of one-byte items at once
            run = _ONE_BYTE_ITEMS.match(raw, pos, min(end, pos + todo))
            assert run is not None
            todo -= run.end() - pos
            pos = run.end()
            continue
        major, info = head >> 5, head & 0x1F
        pos += 1
        if info == 31:
            raise MalformedError(f"{what}: not in canonical CBOR form (indefinite length)")
        if info > 27:
            raise MalformedError(f"{what}: not valid CBOR (reserved additional information)")
        arg = info
        if info >= 24:
            size = 1 << (info - 24)
            if pos + size > end:
                raise MalformedError(f"{what}: not valid CBOR (truncated)")
            arg = int.from_bytes(raw[pos : pos + size], "big")
            pos += size
        todo -= 1
        if major == 6:
            raise MalformedError(f"{what}: CBOR tags are not allowed in edgeguard structures")
        if major in (2, 3):  # byte and text strings: skip the content
            if arg > end - pos:
                raise MalformedError(f"{what}: not valid CBOR (truncated)")
            pos += arg
        elif major == 4:
            todo += arg
        elif major == 5:
            todo += 2 * arg


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

"""Packaging: members in, one encrypted and signed bundle file out.

Layer: packaging. Streaming with constant memory beyond the inputs: the header's
length does not depend on the payload digest (a fixed 32-byte value), so the
payload is encrypted straight into a temporary file after a gap of exactly
the prefix length, hashed on the way, and the signed prefix is written into
the gap last. The temporary file is then fsynced and renamed into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import mmap
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeguard import __version__
from edgeguard.bundle.codec import SIGNATURE_CONTEXT, encode_prefix, signed_region
from edgeguard.bundle.model import (
    DEFAULT_LIMITS,
    FORMATS,
    ROLES,
    DeviceConstraints,
    Digest,
    Header,
    Manifest,
    Member,
    PayloadInfo,
    Recipient,
    SignatureBlock,
)
from edgeguard.crypto.encoding import canonical_cbor
from edgeguard.crypto.keys import DevicePublicKey, SignerKey
from edgeguard.crypto.sign import hybrid_sign
from edgeguard.crypto.stream import (
    CHUNK_MAX,
    check_chunk_size,
    ciphertext_size,
    derive_stream_key,
    encrypt_stream,
)
from edgeguard.crypto.wrap import wrap_data_key
from edgeguard.errors import InternalError, UsageError
from edgeguard.fsutil import fsync_dir
from edgeguard.policy.slots import read_slots

__all__ = ["DEFAULT_CHUNK", "MemberSource", "write_bundle"]

DEFAULT_CHUNK = CHUNK_MAX


@dataclass(frozen=True)
class MemberSource:
    """A plaintext member to package: in-memory bytes or a file path."""

    name: str
    data: bytes | Path
    role: str = "primary"
    format: str = "onnx"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise UsageError(f"member role {self.role!r} is not one of {', '.join(ROLES)}")
        if self.format not in FORMATS:
            raise UsageError(f"member format {self.format!r} is not one of {', '.join(FORMATS)}")


@contextlib.contextmanager
def _plaintext(src: MemberSource) -> Any:
    if isinstance(src.data, bytes):
        yield memoryview(src.data)
        return
    try:
        f = open(src.data, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"cannot read member {src.name!r} from {src.data}: {exc}") from exc
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            yield memoryview(b"")
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                yield view
            finally:
                view.release()


def _member_size(src: MemberSource) -> int:
    if isinstance(src.data, bytes):
        return len(src.data)
    try:
        return os.stat(src.data).st_size
    except OSError as exc:
        raise UsageError(f"cannot read member {src.name!r} from {src.data}: {exc}") from exc


def write_bundle(
    out: Path,
    members: Sequence[MemberSource],
    *,
    name: str,
    version: int,
    signer: SignerKey,
    recipients: Sequence[DevicePublicKey],
    profiles: Sequence[str],
    device_ids: Sequence[str] | None = None,
    expires: int | None = None,
    created: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    sanity: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    engine_recipe: dict[str, Any] | None = None,
) -> Header:
    """Encrypt, sign and write a bundle to ``out`` atomically.

    Args:
        out: Output path (replaced atomically).
        members: Plaintext members, in payload order.
        name: Bundle (product) name; anti-rollback is tracked per name, across signers.
        version: Monotonically increasing release version.
        signer: The hybrid signer key.
        recipients: Devices that can open the bundle (at least one).
        profiles: Allowed device profile ids (at least one).
        device_ids: Optional allow-list of device ids.
        expires: Optional expiry, Unix seconds.
        created: Creation time (default now), Unix seconds.
        chunk_size: STREAM chunk size (power of two, 64 KiB to 1 MiB).
        sanity: Input-sanity profile to embed (signed).
        policy: Runtime policy to embed (signed).
        engine_recipe: TensorRT engine recipe to embed (signed).

    Returns:
        The header that was signed.
    """
    if not members:
        raise UsageError("a bundle needs at least one member")
    if not recipients:
        raise UsageError("a bundle needs at least one recipient device (--recipient)")
    if not profiles:
        raise UsageError("a bundle needs at least one allowed device profile")
    if len({r.key_id for r in recipients}) != len(recipients):
        raise UsageError("the same recipient device was given twice")
    check_chunk_size(chunk_size)
    created = int(time.time()) if created is None else created
    if expires is not None and expires <= created:

        def iso(t: int) -> str:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

        raise UsageError(
            f"the expiry time {iso(expires)} must lie after the creation time {iso(created)}",
            hint="give a later --expires",
        )

    data_key, salt = os.urandom(32), os.urandom(32)
    sizes = [_member_size(m) for m in members]
    entries, offset = [], 0
    placeholder = Digest("sha256", bytes(32))
    for src, size in zip(members, sizes, strict=True):
        entries.append(Member(src.name, src.role, src.format, size, placeholder, offset))
        offset += ciphertext_size(size, chunk_size)
    payload_size = offset

    manifest = Manifest(
        name=name,
        version=version,
        created=created,
        expires=expires,
        signer=signer.public.key_id,
        devices=DeviceConstraints(
            tuple(profiles), None if device_ids is None else tuple(device_ids)
        ),
        members=tuple(entries),
        sanity=sanity,
        policy=policy,
        engine_recipe=engine_recipe,
        tool=f"edgeguard {__version__}",
    )
    recips = tuple(
        Recipient(r.key_id, r.kem, wrap_data_key(data_key, r, salt=salt)) for r in recipients
    )
    # Validate the would-be header against the same rules the parser applies, and the
    # signed slots against the reader the device uses: never sign what a device refuses.
    draft = Header(manifest, recips, PayloadInfo(chunk_size, salt, payload_size, placeholder))
    read_slots(Header.from_cbor(draft.to_cbor(), DEFAULT_LIMITS).manifest)
    draft_len = len(canonical_cbor(draft.to_cbor()))
    sig_len = len(
        canonical_cbor(
            SignatureBlock(
                signer.public.key_id, hybrid_sign(signer.ecdsa, signer.mldsa, b"", context=b"x")
            ).to_cbor()
        )
    )
    prefix_len = len(signed_region(b"\0" * draft_len)) + 4 + sig_len

    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent or ".")
    try:
        with os.fdopen(fd, "w+b") as f:
            f.seek(prefix_len)
            ct_hash = hashlib.sha256()
            final_members = []
            for index, (src, entry) in enumerate(zip(members, entries, strict=True)):
                key = derive_stream_key(data_key, salt=salt, index=index)
                pt_hash = hashlib.sha256()
                with _plaintext(src) as view:
                    if len(view) != entry.size:
                        raise UsageError(f"member {src.name!r} changed size while packaging")
                    pt_hash.update(view)
                    for sealed in encrypt_stream(key, view, chunk_size):
                        ct_hash.update(sealed)
                        f.write(sealed)
                final_members.append(
                    Member(
                        entry.name,
                        entry.role,
                        entry.format,
                        entry.size,
                        Digest("sha256", pt_hash.digest()),
                        entry.offset,
                    )
                )
            header = Header(
                manifest=dataclasses.replace(manifest, members=tuple(final_members)),
                recipients=recips,
                payload=PayloadInfo(
                    chunk_size, salt, payload_size, Digest("sha256", ct_hash.digest())
                ),
            )
            header_bytes = canonical_cbor(header.to_cbor())
            sig = hybrid_sign(
                signer.ecdsa, signer.mldsa, signed_region(header_bytes), context=SIGNATURE_CONTEXT
            )
            prefix = encode_prefix(header_bytes, SignatureBlock(signer.public.key_id, sig))
            if len(prefix) != prefix_len:
                raise InternalError("bundle prefix length changed between draft and final")
            if f.tell() != prefix_len + payload_size:
                raise InternalError("payload length does not match the header")
            f.seek(0)
            f.write(prefix)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
        fsync_dir(out.parent if str(out.parent) else Path("."))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return header

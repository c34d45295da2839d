"""Opening a bundle on a device: verify, decide, decrypt into memory.

Layer: runtime (file I/O). The order is fixed (``docs/bundle-format.md``,
"Opening a bundle"):

1. parse the prefix with hard limits (``MalformedError``);
2. verify the hybrid signature against the explicit trust store
   (``UntrustedSignerError`` / ``IntegrityError``), then the file length
   against the signed payload size (``IntegrityError``), then read the typed
   signed slots (:func:`~edgeguard.policy.slots.read_slots`, ``MalformedError``);
3. policy: expiry (at the wall clock, or at the device's time floor from the
   state store when the clock lies too far behind it), device profile and id,
   anti-rollback against the local
   :class:`~edgeguard.runtime.state.VersionStore`, recipient (``PolicyError``);
4. unwrap the data key with HPKE;
5. stream-decrypt every member into memory, hashing the ciphertext (signed
   payload digest) and, when asked, each plaintext (signed member digest) on the
   way, in one pass on two threads (:func:`~edgeguard.runtime.payload.decrypt_payload`);
6. only when every check passed: record the version in the state store and
   return the plaintext. Nothing is written to disk except the state store.
   Recording checks the version again under the store's lock (one critical
   section with the update), so a lower release whose open raced with a
   higher one is refused if the higher one was recorded first.

Plaintext is never written to any file. On any failure the partially
decrypted buffers are zeroed before the error propagates. Before the data key is
unwrapped, the process gives up core dumps for good
(:func:`~edgeguard.runtime.secmem.forbid_core_dumps`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from io import BufferedReader
from pathlib import Path
from types import MappingProxyType

from edgeguard.bundle.codec import ParsedPrefix, parse_prefix
from edgeguard.bundle.model import DEFAULT_LIMITS, Limits, Manifest
from edgeguard.bundle.verify import (
    ClockCheck,
    TrustStore,
    check_policy,
    clock_check,
    verify_signature,
)
from edgeguard.crypto.keys import DeviceKey, SignerPublicKey
from edgeguard.crypto.wrap import unwrap_data_key
from edgeguard.errors import IntegrityError, UsageError
from edgeguard.policy.slots import SignedSlots, read_slots
from edgeguard.runtime.payload import decrypt_payload
from edgeguard.runtime.secmem import SecretBuffer, forbid_core_dumps
from edgeguard.runtime.state import VersionStore, default_state_dir

__all__ = [
    "OpenedBundle",
    "VerifiedBundle",
    "open_bundle",
    "read_prefix",
    "record_opened",
    "verify_bundle",
]


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature, length and payload digest were checked.

    Attributes:
        path: The bundle file.
        prefix: The parsed, signature-checked prefix.
        signer: The trusted key that signed it.
        slots: The manifest's signed slots, typed and validated.
        clock: The time its policy was checked at (None when no policy was
            checked); ``clock.behind_floor`` is the warning that the clock lay
            too far behind the device's time floor, so the floor was used.
    """

    path: Path
    prefix: ParsedPrefix
    signer: SignerPublicKey
    slots: SignedSlots
    clock: ClockCheck | None = None

    @property
    def manifest(self) -> Manifest:
        """The signed manifest."""
        return self.prefix.header.manifest

    @property
    def manifest_digest(self) -> bytes:
        """SHA-256 of the signed header bytes (identifies this exact release)."""
        return hashlib.sha256(self.prefix.header_bytes).digest()


@dataclass(frozen=True)
class OpenedBundle(VerifiedBundle):
    """A verified, policy-approved bundle with its members decrypted in memory."""

    members: Mapping[str, SecretBuffer] = field(default_factory=dict, repr=False)

    def member_bytes(self, name: str | None = None) -> memoryview:
        """Read-only view of member ``name``'s plaintext (default: the first ``primary``)."""
        if name is None:
            primaries = [m.name for m in self.manifest.members if m.role == "primary"]
            if not primaries:
                raise UsageError("the bundle has no primary member; name one")
            name = primaries[0]
        try:
            return self.members[name].view().toreadonly()
        except KeyError:
            raise UsageError(f"the bundle has no member {name!r}") from None

    def wipe(self) -> None:
        """Zero and unmap every plaintext buffer."""
        for buf in self.members.values():
            buf.wipe()


def read_prefix(f: BufferedReader, *, limits: Limits = DEFAULT_LIMITS) -> tuple[ParsedPrefix, int]:
    """Parse the prefix of an open bundle file; returns it and the file size."""
    size = os.fstat(f.fileno()).st_size
    return parse_prefix(f.read, file_size=size, limits=limits), size


def _open_file(path: Path) -> BufferedReader:
    try:
        return open(path, "rb")
    except FileNotFoundError as exc:
        raise UsageError(f"bundle {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"bundle {path} is a directory") from exc
    except OSError as exc:
        raise UsageError(f"cannot read bundle {path}: {exc}") from exc


def _verify_prefix(
    f: BufferedReader, path: Path, trust: TrustStore, limits: Limits
) -> VerifiedBundle:
    prefix, size = read_prefix(f, limits=limits)
    signer = verify_signature(prefix, trust=trust)
    expected = prefix.payload_offset + prefix.header.payload.size
    if size != expected:
        what = "truncated" if size < expected else "extended with trailing bytes"
        raise IntegrityError(
            f"bundle {path} is {what}: the signed header says {expected} bytes, the file has {size}"
        )
    # Signed content is interpreted only once the signature holds.
    slots = read_slots(prefix.header.manifest)
    return VerifiedBundle(path=path, prefix=prefix, signer=signer, slots=slots)


def _check_payload_digest(f: BufferedReader, vb: VerifiedBundle) -> None:
    f.seek(vb.prefix.payload_offset)
    h = hashlib.sha256()
    remaining = vb.prefix.header.payload.size
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    while remaining:
        n = f.readinto(view[: min(len(buf), remaining)])
        if not n:
            raise IntegrityError(f"bundle {vb.path} is truncated")
        h.update(view[:n])
        remaining -= n
    if not hmac.compare_digest(h.digest(), vb.prefix.header.payload.digest.value):
        raise IntegrityError(f"bundle {vb.path} is not authentic (payload digest mismatch)")


def verify_bundle(
    path: Path | str, *, trust: TrustStore, limits: Limits = DEFAULT_LIMITS
) -> VerifiedBundle:
    """Check a bundle's signature, length and payload digest (no secrets needed).

    Raises:
        MalformedError, UntrustedSignerError, IntegrityError: see the module docstring.
    """
    path = Path(path)
    with _open_file(path) as f:
        vb = _verify_prefix(f, path, trust, limits)
        _check_payload_digest(f, vb)
    return vb


def open_bundle(
    path: Path | str,
    *,
    trust: TrustStore,
    device_key: DeviceKey,
    state_dir: Path | str | None = None,
    now: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    check_plaintext_digests: bool = False,
    record_version: bool = True,
) -> OpenedBundle:
    """Verify, check policy, decrypt in memory and record the release version.

    Args:
        path: The bundle file.
        trust: Trusted signer keys (required, never empty).
        device_key: This device's private key (recipient + identity).
        state_dir: Anti-rollback state directory; None means the documented
            default (:func:`~edgeguard.runtime.state.default_state_dir`), so
            rollback protection is never off by accident.
        now: Current time in Unix seconds (for tests); default the clock.
        limits: Parser limits.
        check_plaintext_digests: Also re-hash every decrypted member and compare
            with its signed digest. Redundant for integrity (the signed payload
            digest fixes the ciphertext, the signed recipient entry fixes the
            data key, and decryption is deterministic, so the plaintext is
            fixed; see docs/bundle-format.md, "Why one digest suffices") and it
            doubles the hashing work, so it is off by default; `edgeguard verify
            --device-key` turns it on.
        record_version: Record the release version in the state store after a
            successful open (False for read-only verification).

    Returns:
        The opened bundle with every member's plaintext in memory.
    """
    path = Path(path)
    store = VersionStore(Path(state_dir) if state_dir is not None else default_state_dir())
    now = int(time.time()) if now is None else now
    with _open_file(path) as f:
        vb = _verify_prefix(f, path, trust, limits)
        header = vb.prefix.header
        manifest = header.manifest
        state = store.read()
        clock = clock_check(now, state.time_floor)
        recipient = check_policy(
            manifest,
            header.recipients,
            device=device_key.public,
            now=now,
            stored_version=state.version(manifest.name),
            time_floor=state.time_floor,
        )
        forbid_core_dumps()  # before any secret of the bundle exists in this process
        data_key = unwrap_data_key(recipient.wrapped, device_key, salt=header.payload.salt)
        f.seek(vb.prefix.payload_offset)
        members = decrypt_payload(
            f,
            manifest.members,
            path=path,
            data_key=data_key,
            salt=header.payload.salt,
            chunk_size=header.payload.chunk_size,
            payload_digest=header.payload.digest.value,
            check_plaintext=check_plaintext_digests,
        )
    if record_version:
        try:
            store.record(
                manifest.name,
                manifest.version,
                manifest_digest=vb.manifest_digest,
                signer_key_id=vb.signer.key_id,
                now=now,
            )
        except BaseException:
            for buf in members.values():
                buf.wipe()
            raise
    return OpenedBundle(
        path=path,
        prefix=vb.prefix,
        signer=vb.signer,
        slots=vb.slots,
        clock=clock,
        members=MappingProxyType(members),
    )


def record_opened(vb: VerifiedBundle, state_dir: Path | str | None) -> None:
    """Record ``vb``'s release version in the anti-rollback store (after a successful start).

    The version is checked again under the store's lock: the caller must not use
    the bundle when this raises. The device's time floor is raised to the time the
    bundle was opened at (``vb.clock.now``).

    Raises:
        RollbackError: A higher version of the bundle was recorded since it was opened.
        StateStoreError: The store cannot be written.
    """
    store = VersionStore(Path(state_dir) if state_dir is not None else default_state_dir())
    m = vb.manifest
    store.record(
        m.name,
        m.version,
        manifest_digest=vb.manifest_digest,
        signer_key_id=vb.signer.key_id,
        now=vb.clock.now if vb.clock is not None else int(time.time()),
    )

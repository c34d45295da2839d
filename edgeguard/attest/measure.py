"""Measured load: the measurement log and its PCR-style hash chain.

Layer: attest (the data model is pure; the ``measure_*`` helpers read files).

Every input that decides how a device behaves is *measured* into an
append-only :class:`MeasurementLog`: one entry ``(index, kind, name,
digest)`` per input, where ``digest`` is ``"sha256:<hex>"``. The log is
folded into a register exactly like a TPM PCR::

    pcr_0 = 32 zero bytes
    pcr_{i+1} = SHA-256(pcr_i || SHA-256(canonical_cbor(entry_i)))

so the final value commits to every entry *and* their order. A verifier
replays the log and compares the result with the quoted value; with a TPM
the same entry digests are extended into a real PCR with ``TPM2_PCR_Extend``
(:mod:`edgeguard.attest.tpm`), which yields the identical value.

Entry kinds (in this order, see ``docs/attestation.md``):

``code``            ``edgeguard``: the installed package's ``.py`` files and
                    device profile TOMLs (:func:`code_digest`).
``bundle-manifest`` the bundle name; digest of the signed header bytes.
``bundle-signer``   ``signer``; the signer key id.
``member``          each member's name; its signed plaintext digest.
``sanity``          ``profile``; digest of the canonical sanity profile (or of CBOR null).
``policy``          ``sandbox``; digest of the canonical sandbox policy (or of CBOR null).
``kernel``          each kernel binary file name; its digest (``none`` when absent).
``device-profile``  the device's profile id; :func:`edgeguard.devices.profile_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeguard.crypto.encoding import canonical_cbor, decode_canonical
from edgeguard.errors import MalformedError

__all__ = [
    "KINDS",
    "MAX_LOG_ENTRIES",
    "PCR_ZERO",
    "LogEntry",
    "MeasurementLog",
    "build_log",
    "code_digest",
    "extend",
    "kernel_files",
    "sha256_tag",
    "struct_digest",
]

#: Entry kinds understood by log format v1.
KINDS = (
    "code",
    "bundle-manifest",
    "bundle-signer",
    "member",
    "sanity",
    "policy",
    "kernel",
    "device-profile",
)
#: Hard limit on entries in a log (checked before replay).
MAX_LOG_ENTRIES = 1024
#: Initial register value (a freshly reset PCR).
PCR_ZERO = bytes(32)
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+/-]{0,255}")
_KERNEL_SUFFIXES = (".cubin", ".fatbin", ".ptx", ".so")


def sha256_tag(data: bytes) -> str:
    """``"sha256:<hex>"`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def extend(pcr: bytes, measurement: bytes) -> bytes:
    """One PCR extend step: ``SHA-256(pcr || measurement)``."""
    if len(pcr) != 32 or len(measurement) != 32:
        raise MalformedError("PCR extend needs a 32-byte register and a 32-byte measurement")
    return hashlib.sha256(pcr + measurement).digest()


@dataclass(frozen=True)
class LogEntry:
    """One measurement.

    Attributes:
        index: Position in the log (0-based, strictly consecutive).
        kind: One of :data:`KINDS`.
        name: What was measured (member name, file name, profile id, ...).
        digest: ``"sha256:<hex>"`` of the measured bytes.
    """

    index: int
    kind: str
    name: str
    digest: str

    def __post_init__(self) -> None:
        if not isinstance(self.index, int) or isinstance(self.index, bool) or self.index < 0:
            raise MalformedError("measurement index must be a non-negative integer")
        if self.kind not in KINDS:
            raise MalformedError(f"unknown measurement kind {self.kind!r}")
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise MalformedError(f"invalid measurement name {self.name!r}")
        if not isinstance(self.digest, str) or not _DIGEST_RE.fullmatch(self.digest):
            raise MalformedError(f"measurement digest {self.digest!r} is not 'sha256:<hex>'")

    def to_cbor(self) -> dict[str, Any]:
        """The canonical structure."""
        return {"i": self.index, "kind": self.kind, "name": self.name, "digest": self.digest}

    def event_digest(self) -> bytes:
        """SHA-256 of the canonical encoding: the value extended into the PCR."""
        return hashlib.sha256(canonical_cbor(self.to_cbor())).digest()

    @classmethod
    def from_cbor(cls, obj: Any) -> LogEntry:
        """Parse one entry, refusing unknown or missing fields."""
        if not isinstance(obj, dict) or set(obj) != {"i", "kind", "name", "digest"}:
            raise MalformedError("measurement log entry must be a map of i, kind, name, digest")
        return cls(index=obj["i"], kind=obj["kind"], name=obj["name"], digest=obj["digest"])


@dataclass(frozen=True)
class MeasurementLog:
    """An ordered, append-only list of measurements (immutable; :meth:`add` copies)."""

    entries: tuple[LogEntry, ...] = ()

    def add(self, kind: str, name: str, digest: str) -> MeasurementLog:
        """A new log with one more entry at the next index."""
        entry = LogEntry(len(self.entries), kind, name, digest)
        return MeasurementLog((*self.entries, entry))

    def replay(self) -> bytes:
        """Fold every entry into a register starting from :data:`PCR_ZERO`.

        Raises:
            MalformedError: Indices are not 0, 1, 2, ... (entries dropped or reordered).
        """
        pcr = PCR_ZERO
        for position, entry in enumerate(self.entries):
            if entry.index != position:
                raise MalformedError(
                    f"measurement log entry at position {position} has index {entry.index} "
                    "(entries were removed or reordered)"
                )
            pcr = extend(pcr, entry.event_digest())
        return pcr

    def matches(self, pcr: bytes) -> bool:
        """Whether the replayed log equals ``pcr`` (constant time); False if malformed."""
        try:
            return hmac.compare_digest(self.replay(), pcr)
        except MalformedError:
            return False

    def encode(self) -> bytes:
        """Canonical CBOR array of the entries."""
        return canonical_cbor([e.to_cbor() for e in self.entries])

    @classmethod
    def decode(cls, data: bytes) -> MeasurementLog:
        """Parse an encoded log (canonical CBOR only, at most :data:`MAX_LOG_ENTRIES`)."""
        obj = decode_canonical(data, what="measurement log")
        if not isinstance(obj, list) or len(obj) > MAX_LOG_ENTRIES:
            raise MalformedError(
                f"measurement log must be an array of at most {MAX_LOG_ENTRIES} entries"
            )
        return cls(tuple(LogEntry.from_cbor(e) for e in obj))

    def to_json(self) -> list[dict[str, Any]]:
        """JSON-friendly list (for reports)."""
        return [e.to_cbor() for e in self.entries]


# --------------------------------------------------------------------------- measuring files


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_digest(
    *, package_dir: Path | None = None, profiles_dir: Path | None = None
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Digest of the running edgeguard code and device profiles.

    The digest is SHA-256 over the canonical CBOR of the sorted list of
    ``[relative path, sha256 hex]`` pairs for every ``*.py`` file of the
    package (paths relative to the package parent, so ``edgeguard/...``) and
    every ``*.toml`` profile (``profiles/<name>.toml``).

    Args:
        package_dir: The ``edgeguard`` package directory (default: the imported one).
        profiles_dir: Directory of device profile TOMLs (default:
            :func:`edgeguard.devices.profiles_dir` when it is a real directory).

    Returns:
        ``("sha256:<hex>", ((path, hex), ...))``.
    """
    if package_dir is None:
        package_dir = Path(__file__).resolve().parents[1]
    if profiles_dir is None:
        from edgeguard.devices import profiles_dir as _profiles_dir

        found = _profiles_dir()
        profiles_dir = Path(str(found)) if Path(str(found)).is_dir() else None
    files: list[tuple[str, str]] = []
    root = package_dir.parent
    for p in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in p.parts or not p.is_file():
            continue
        files.append((p.relative_to(root).as_posix(), _file_sha256(p)))
    if profiles_dir is not None:
        for p in sorted(profiles_dir.glob("*.toml")):
            files.append((f"profiles/{p.name}", _file_sha256(p)))
    files.sort()
    listing = tuple(files)
    return sha256_tag(canonical_cbor([list(x) for x in listing])), listing


def kernel_files(dirs: Iterable[Path] | None = None) -> list[tuple[str, str]]:
    """``(file name, "sha256:<hex>")`` of every kernel binary found, sorted by name.

    Looks in :func:`edgeguard.guard.sanity.cuda_cpp.kernel_search_dirs` by
    default; only the first directory holding a given file name counts (the
    one the loader would use). Returns an empty list when none was built.
    """
    if dirs is None:
        from edgeguard.guard.sanity.cuda_cpp import kernel_search_dirs

        dirs = kernel_search_dirs()
    seen: dict[str, str] = {}
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.is_file() and p.name.endswith(_KERNEL_SUFFIXES) and p.name not in seen:
                seen[p.name] = "sha256:" + _file_sha256(p)
    return sorted(seen.items())


def struct_digest(obj: dict[str, Any] | None) -> str:
    """``"sha256:<hex>"`` of the canonical CBOR of a manifest slot (None -> CBOR null)."""
    return sha256_tag(canonical_cbor(obj))


def build_log(
    *,
    code: str,
    manifest_name: str,
    manifest_digest: bytes,
    signer_key_id: bytes,
    members: Sequence[tuple[str, bytes]],
    sanity: dict[str, Any] | None,
    policy: dict[str, Any] | None,
    kernels: Sequence[tuple[str, str]],
    device_profile: tuple[str, str],
) -> MeasurementLog:
    """The measurement log of one bundle load, entries in the documented order.

    Args:
        code: :func:`code_digest` value.
        manifest_name: The bundle's name.
        manifest_digest: SHA-256 of the signed header bytes (32 bytes).
        signer_key_id: The signer's key id (32 bytes).
        members: ``(name, sha256 bytes)`` per member, in manifest order.
        sanity: The manifest's sanity slot.
        policy: The manifest's policy slot.
        kernels: :func:`kernel_files` result (empty -> one ``none`` entry).
        device_profile: ``(profile id, "sha256:<hex>")``.
    """
    log = MeasurementLog().add("code", "edgeguard", code)
    log = log.add("bundle-manifest", manifest_name, "sha256:" + manifest_digest.hex())
    log = log.add("bundle-signer", "signer", "sha256:" + signer_key_id.hex())
    for name, digest in members:
        log = log.add("member", name, "sha256:" + digest.hex())
    log = log.add("sanity", "profile", struct_digest(sanity))
    log = log.add("policy", "sandbox", struct_digest(policy))
    if kernels:
        for file_name, file_digest in kernels:
            log = log.add("kernel", file_name, file_digest)
    else:
        log = log.add("kernel", "none", sha256_tag(b""))
    return log.add("device-profile", device_profile[0], device_profile[1])

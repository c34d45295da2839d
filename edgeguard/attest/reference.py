"""Reference values (the RATS Reference Value Provider role) for one bundle.

Layer: attest (reads the bundle, writes one JSON file next to it).

``edgeguard build -o OUT.egb`` calls :func:`write_reference_values`, which
writes ``OUT.egb.rv.json``: the measurements a device running this bundle
with this edgeguard version must report, in log order (the code digest, the
manifest digest, the signer key id, each member digest, the sanity profile,
the sandbox policy, the kernel binaries found on the build host), plus the
allowed device profiles with their file digests. The document is signed with
the signer's hybrid key (ECDSA P-256 + ML-DSA-65) under the context
:data:`REFERENCE_CONTEXT`; the verifier checks it against ``--trust``
before using a single value (:func:`load_reference_values`).

The signed message is the canonical CBOR of the JSON document without its
``signature`` member (all values are text or integers, so JSON and CBOR
agree on them).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeguard import __version__
from edgeguard.attest.attester import SWNAME
from edgeguard.attest.measure import LogEntry, MeasurementLog, code_digest
from edgeguard.attest.tpm import ATTEST_PCR
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.encoding import canonical_cbor
from edgeguard.crypto.keys import SignerKey
from edgeguard.crypto.sign import HYBRID_ALG, HybridSignature, hybrid_sign, hybrid_verify
from edgeguard.errors import IntegrityError, MalformedError, UntrustedSignerError, UsageError
from edgeguard.fsutil import atomic_write

__all__ = [
    "REFERENCE_CONTEXT",
    "REFERENCE_SUFFIX",
    "ReferenceValues",
    "load_reference_values",
    "reference_path_for",
    "reference_values_for",
    "write_reference_values",
]

REFERENCE_CONTEXT = b"edgeguard reference values v1"
REFERENCE_SUFFIX = ".rv.json"
_TYPE = "edgeguard-reference-values"
_MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ReferenceValues:
    """What a verifier expects from a device running one bundle.

    Attributes:
        bundle_name: Manifest name.
        bundle_version: Manifest release version.
        manifest_digest: ``"sha256:<hex>"`` of the signed header.
        signer_key_id: Hex key id of the bundle signer (who also signed this document).
        swname: Expected software name.
        swversion: Expected edgeguard version.
        measurements: Expected log entries in order, without the device-profile entry.
        device_profiles: Allowed device profile ids and their file digests.
        pcr_index: The TPM PCR the log is extended into.
        created: When the reference was made (Unix seconds).
    """

    bundle_name: str
    bundle_version: int
    manifest_digest: str
    signer_key_id: str
    swname: str
    swversion: str
    measurements: tuple[LogEntry, ...]
    device_profiles: tuple[tuple[str, str], ...]
    pcr_index: int
    created: int

    def to_json(self) -> dict[str, Any]:
        """The unsigned document."""
        return {
            "type": _TYPE,
            "v": 1,
            "created": self.created,
            "bundle": {
                "name": self.bundle_name,
                "version": self.bundle_version,
                "manifest_digest": self.manifest_digest,
                "signer_key_id": self.signer_key_id,
            },
            "swname": self.swname,
            "swversion": self.swversion,
            "measurements": [
                {"kind": e.kind, "name": e.name, "digest": e.digest} for e in self.measurements
            ],
            "device_profiles": dict(self.device_profiles),
            "pcr_index": self.pcr_index,
        }

    @classmethod
    def from_json(cls, doc: Any, *, source: str) -> ReferenceValues:
        """Parse the unsigned document strictly."""
        keys = {"type", "v", "created", "bundle", "swname", "swversion", "measurements"}
        keys |= {"device_profiles", "pcr_index"}
        if not isinstance(doc, dict) or set(doc) != keys:
            raise MalformedError(f"{source}: not an edgeguard reference-value document")
        if doc["type"] != _TYPE or doc["v"] != 1 or isinstance(doc["v"], bool):
            raise MalformedError(f"{source}: unsupported reference-value type or version")
        b = doc["bundle"]
        if not isinstance(b, dict) or set(b) != {
            "name",
            "version",
            "manifest_digest",
            "signer_key_id",
        }:
            raise MalformedError(f"{source}: malformed bundle section")
        meas = doc["measurements"]
        profiles = doc["device_profiles"]
        if not isinstance(meas, list) or not isinstance(profiles, dict) or not profiles:
            raise MalformedError(f"{source}: measurements must be a list, device_profiles a map")
        entries = []
        for i, m in enumerate(meas):
            if not isinstance(m, dict) or set(m) != {"kind", "name", "digest"}:
                raise MalformedError(f"{source}: measurement {i} must hold kind, name, digest")
            entries.append(LogEntry(i, m["kind"], m["name"], m["digest"]))
        for name, digest in profiles.items():
            LogEntry(0, "device-profile", name, digest)  # validates both
        ints = (doc["created"], doc["pcr_index"], b["version"])
        strs = [doc["swname"], doc["swversion"], b["name"], b["manifest_digest"]]
        strs.append(b["signer_key_id"])
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in ints) or not all(
            isinstance(x, str) for x in strs
        ):
            raise MalformedError(f"{source}: reference-value fields have wrong types")
        return cls(
            bundle_name=b["name"],
            bundle_version=b["version"],
            manifest_digest=b["manifest_digest"],
            signer_key_id=b["signer_key_id"],
            swname=doc["swname"],
            swversion=doc["swversion"],
            measurements=tuple(entries),
            device_profiles=tuple(sorted(profiles.items())),
            pcr_index=doc["pcr_index"],
            created=doc["created"],
        )

    def expected_log(self, device_profile: tuple[str, str]) -> MeasurementLog:
        """The full log expected from a device with ``(profile id, digest)``."""
        log = MeasurementLog()
        for e in self.measurements:
            log = log.add(e.kind, e.name, e.digest)
        return log.add("device-profile", *device_profile)


def reference_path_for(bundle: Path) -> Path:
    """``OUT.egb`` -> ``OUT.egb.rv.json``."""
    bundle = Path(bundle)
    return bundle.with_name(bundle.name + REFERENCE_SUFFIX)


def reference_values_for(
    bundle: Path,
    *,
    signer: SignerKey,
    kernel_dirs: list[Path] | None = None,
    now: int | None = None,
) -> ReferenceValues:
    """Compute the reference values of a bundle this signer made.

    Raises:
        UntrustedSignerError, IntegrityError: The bundle was not signed by ``signer``.
    """
    from edgeguard.attest.attester import measure_bundle
    from edgeguard.devices import profile_digest
    from edgeguard.runtime.opener import verify_bundle

    vb = verify_bundle(bundle, trust=TrustStore.of([signer.public]))
    profiles = vb.manifest.devices.profiles
    log = measure_bundle(
        vb, device_profile=profiles[0], kernel_dirs=kernel_dirs, code=code_digest()[0]
    )
    return ReferenceValues(
        bundle_name=vb.manifest.name,
        bundle_version=vb.manifest.version,
        manifest_digest="sha256:" + vb.manifest_digest.hex(),
        signer_key_id=vb.signer.key_id.hex(),
        swname=SWNAME,
        swversion=__version__,
        measurements=tuple(e for e in log.entries if e.kind != "device-profile"),
        device_profiles=tuple(sorted((p, profile_digest(p)) for p in profiles)),
        pcr_index=ATTEST_PCR,
        created=int(time.time()) if now is None else now,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def write_reference_values(
    bundle: Path,
    *,
    signer: SignerKey,
    out: Path | None = None,
    kernel_dirs: list[Path] | None = None,
) -> Path:
    """Write the signed reference values of ``bundle`` (default ``BUNDLE.rv.json``).

    This is what ``edgeguard build`` calls right after writing the bundle.

    Args:
        bundle: The bundle just built.
        signer: The signer key that signed the bundle (signs the document too).
        out: Output path (default: :func:`reference_path_for`).
        kernel_dirs: Kernel binary directories to measure (default: the loader's).

    Returns:
        The path written.
    """
    rv = reference_values_for(bundle, signer=signer, kernel_dirs=kernel_dirs)
    doc = rv.to_json()
    sig = hybrid_sign(signer.ecdsa, signer.mldsa, canonical_cbor(doc), context=REFERENCE_CONTEXT)
    doc["signature"] = {
        "alg": HYBRID_ALG,
        "key_id": signer.public.key_id.hex(),
        "ecdsa": _b64(sig.ecdsa),
        "ml-dsa": _b64(sig.mldsa),
    }
    path = Path(out) if out is not None else reference_path_for(bundle)
    atomic_write(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    return path


def load_reference_values(path: Path, *, trust: TrustStore) -> ReferenceValues:
    """Read reference values and verify their signature against ``trust``.

    Raises:
        UsageError: The file does not exist.
        MalformedError: Not a reference-value document.
        UntrustedSignerError: Signed by a key that is not in ``trust``.
        IntegrityError: The signature does not verify (the document was altered).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise UsageError(f"reference values {path} do not exist") from exc
    if len(raw) > _MAX_BYTES:
        raise MalformedError(f"{path}: reference values larger than {_MAX_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedError(f"{path}: not JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("signature"), dict):
        raise MalformedError(f"{path}: reference values are not signed")
    s = doc.pop("signature")
    if set(s) != {"alg", "key_id", "ecdsa", "ml-dsa"} or s["alg"] != HYBRID_ALG:
        raise MalformedError(f"{path}: unsupported reference-value signature")
    try:
        kid = bytes.fromhex(s["key_id"])
        ecdsa_sig = base64.b64decode(s["ecdsa"], validate=True)
        sig = HybridSignature(ecdsa_sig, base64.b64decode(s["ml-dsa"], validate=True))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise MalformedError(f"{path}: malformed reference-value signature") from exc
    signer = trust.signers.get(kid)
    if signer is None:
        raise UntrustedSignerError(
            f"{path} is signed by key {kid.hex()[:16]}…, which is not in the trust store",
            hint="pass the bundle signer's key with --trust",
        )
    try:
        hybrid_verify(
            signer.ecdsa, signer.mldsa, sig, canonical_cbor(doc), context=REFERENCE_CONTEXT
        )
    except IntegrityError as exc:
        raise IntegrityError(f"{path}: reference values were altered ({exc})") from exc
    rv = ReferenceValues.from_json(doc, source=str(path))
    if rv.signer_key_id != kid.hex():
        raise IntegrityError(f"{path}: signed by a different key than the bundle signer")
    return rv

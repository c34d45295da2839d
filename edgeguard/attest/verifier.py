"""The verifier: appraise evidence against reference values and say why, claim by claim.

Layer: attest. :func:`appraise` is pure (bytes, keys and a nonce verdict in,
a result out); :func:`verify_evidence` adds the one side effect, consuming
the nonce in the verifier's :class:`~edgeguard.attest.nonce.NonceStore`.

Every check yields one :class:`ClaimResult` with an EAR status
(draft-ietf-rats-ear / AR4SI tiers): ``affirming`` (2), ``warning`` (32),
``contraindicated`` (96) or ``none`` (0, not evaluated because an earlier
check failed). The evidence passes only when no check is ``contraindicated``
or ``none``; a software-key attestation is a ``warning`` on the hardware
claim (lower assurance, shown in the result) unless the verifier requires a
TPM, which makes it ``contraindicated``.

Checks, in order: ``evidence-format``, ``device-identity`` (the COSE kid and
ueid name the enrolled device key, hwmodel its profile), ``signature``
(ES256 by the device attestation key), ``nonce`` (the challenge nonce,
issued by this verifier, single use, bounded age), ``log-integrity`` (the
log replays to the signed register value), ``hardware`` (assurance level;
for TPM evidence the quote: AK binding to the device, quote signature,
signer name, ``extraData == nonce``, selection ``sha256:23``, ``pcrDigest
== SHA-256(replayed log)``), ``software`` (swname, swversion),
``executables`` (code, kernel binaries, model members) and
``configuration`` (manifest, signer, sanity profile, sandbox policy, device
profile) against the signed reference values.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgeguard import __version__
from edgeguard.attest.eat import EatClaims, SignedEat, parse_eat, verify_eat_signature
from edgeguard.attest.measure import LogEntry
from edgeguard.attest.nonce import DEFAULT_MAX_AGE, NonceStore, NonceVerdict
from edgeguard.attest.reference import ReferenceValues
from edgeguard.attest.tpm import (
    ALG_SHA256,
    AkBinding,
    parse_attest,
    quote_signature_valid,
)
from edgeguard.crypto.keys import DevicePublicKey
from edgeguard.errors import IntegrityError, MalformedError

__all__ = [
    "CHECKS",
    "EAR_PROFILE",
    "TIERS",
    "AttestationResult",
    "ClaimResult",
    "Status",
    "appraise",
    "verify_evidence",
]

Status = Literal["affirming", "warning", "contraindicated", "none"]
TIERS: dict[str, int] = {"none": 0, "affirming": 2, "warning": 32, "contraindicated": 96}
EAR_PROFILE = "tag:github.com,2023:veraison/ear"
APPRAISAL_POLICY = "urn:edgeguard:appraisal-policy:1"
CHECKS = (
    "evidence-format",
    "device-identity",
    "signature",
    "nonce",
    "log-integrity",
    "hardware",
    "software",
    "executables",
    "configuration",
)
#: Which AR4SI trustworthiness claim each check feeds.
_VECTOR = {
    "evidence-format": "instance-identity",
    "device-identity": "instance-identity",
    "signature": "instance-identity",
    "hardware": "hardware",
    "software": "executables",
    "executables": "executables",
    "configuration": "configuration",
}
_EXECUTABLE_KINDS = {"code", "kernel", "member"}


@dataclass(frozen=True)
class ClaimResult:
    """The verdict on one claim: status and the specific reason."""

    name: str
    status: Status
    reason: str


def _worst(statuses: list[str]) -> Status:
    if "none" in statuses and "contraindicated" not in statuses:
        return "contraindicated"  # a check that could not run is a failure
    order: list[Status] = ["contraindicated", "warning", "affirming"]
    for s in order:
        if s in statuses:
            return s
    return "contraindicated"


@dataclass(frozen=True)
class AttestationResult:
    """An attestation result: every check with its status and reason.

    ``bool(result)`` is deliberately not defined; use :attr:`ok`.
    """

    checks: tuple[ClaimResult, ...]
    device_id: str
    device_key_id: str
    assurance: str | None
    issued: int
    bundle: dict[str, Any] = field(default_factory=dict)
    log: tuple[dict[str, Any], ...] = ()

    @property
    def ok(self) -> bool:
        """True only when every check is affirming or warning."""
        return all(c.status in ("affirming", "warning") for c in self.checks)

    @property
    def status(self) -> Status:
        """The worst status of all checks (``none`` counts as contraindicated)."""
        return _worst([c.status for c in self.checks])

    def check(self, name: str) -> ClaimResult:
        """The result of check ``name``."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def failures(self) -> list[ClaimResult]:
        """Checks that are contraindicated or were not evaluated."""
        return [c for c in self.checks if c.status in ("contraindicated", "none")]

    def to_ear(self) -> dict[str, Any]:
        """An EAR-style (draft-ietf-rats-ear) JSON attestation result."""
        vector: dict[str, list[str]] = {}
        for c in self.checks:
            if c.name in _VECTOR:
                vector.setdefault(_VECTOR[c.name], []).append(c.status)
        return {
            "eat_profile": EAR_PROFILE,
            "iat": self.issued,
            "ear.verifier-id": {"developer": "edgeguard", "build": f"edgeguard {__version__}"},
            "submods": {
                "edgeguard": {
                    "ear.status": self.status,
                    "ear.trustworthiness-vector": {
                        k: TIERS[_worst(v)] for k, v in sorted(vector.items())
                    },
                    "ear.appraisal-policy-id": APPRAISAL_POLICY,
                    "edgeguard.assurance": self.assurance,
                    "edgeguard.device": {"id": self.device_id, "key_id": self.device_key_id},
                    "edgeguard.bundle": self.bundle,
                    "edgeguard.claims": {
                        c.name: {"status": c.status, "reason": c.reason} for c in self.checks
                    },
                    "edgeguard.measurement-log": list(self.log),
                }
            },
            "ok": self.ok,
        }


class _Checks:
    def __init__(self) -> None:
        self.items: list[ClaimResult] = []

    def add(self, name: str, status: Status, reason: str) -> None:
        self.items.append(ClaimResult(name, status, reason))

    def skip_rest(self, why: str) -> None:
        done = {c.name for c in self.items}
        for name in CHECKS:
            if name not in done:
                self.add(name, "none", f"not evaluated: {why}")


def _entry_text(e: LogEntry) -> str:
    return f"{e.kind}/{e.name} {e.digest[:19]}…"


def _compare_log(
    claims: EatClaims, reference: ReferenceValues, device: DevicePublicKey
) -> tuple[list[str], list[str]]:
    """Mismatch reasons for (executables, configuration)."""
    exe: list[str] = []
    cfg: list[str] = []
    entries = list(claims.log.entries)
    profile_entries = [e for e in entries if e.kind == "device-profile"]
    body = [e for e in entries if e.kind != "device-profile"]
    if len(profile_entries) != 1 or (entries and entries[-1].kind != "device-profile"):
        cfg.append("the log must end with exactly one device-profile measurement")
    else:
        p = profile_entries[0]
        allowed = dict(reference.device_profiles)
        if p.name != device.profile:
            cfg.append(f"measured device profile {p.name!r} is not the enrolled {device.profile!r}")
        elif p.name not in allowed:
            cfg.append(f"device profile {p.name!r} is not allowed by the reference values")
        elif not hmac.compare_digest(p.digest, allowed[p.name]):
            cfg.append(f"device profile {p.name!r} file differs from the reference")
    expected = list(reference.measurements)
    for i in range(max(len(body), len(expected))):
        got = body[i] if i < len(body) else None
        exp = expected[i] if i < len(expected) else None
        if got is not None and exp is not None:
            if (got.kind, got.name, got.digest) == (exp.kind, exp.name, exp.digest):
                continue
            if (got.kind, got.name) == (exp.kind, exp.name):
                why = (
                    f"measurement {exp.kind}/{exp.name} differs: "
                    f"got {got.digest}, reference {exp.digest}"
                )
            else:
                why = f"log entry {i} is {_entry_text(got)}, reference expects {_entry_text(exp)}"
            kind = exp.kind
        elif got is not None:
            why = f"unexpected measurement {_entry_text(got)} (not in the reference)"
            kind = got.kind
        else:
            assert exp is not None
            why, kind = f"missing measurement {_entry_text(exp)}", exp.kind
        (exe if kind in _EXECUTABLE_KINDS else cfg).append(why)
    return exe, cfg


def _check_quote(
    claims: EatClaims,
    *,
    nonce: bytes,
    device: DevicePublicKey,
    ak: AkBinding | None,
    pcr_index: int,
    replayed: bytes | None,
) -> tuple[Status, str]:
    quote = claims.quote
    assert quote is not None
    if ak is None:
        return (
            "contraindicated",
            "TPM evidence but no TPM AK enrolled for the device (--ak-pub)",
        )
    try:
        ak_pub = ak.verify(device_key_id=device.key_id, attest_pub=device.attest)
    except (IntegrityError, MalformedError) as exc:
        return "contraindicated", f"enrolled TPM AK rejected: {exc}"
    if not quote_signature_valid(ak_pub, quote):
        return "contraindicated", "TPM quote signature does not verify under the enrolled AK"
    try:
        info = parse_attest(quote.attest)
    except MalformedError as exc:
        return "contraindicated", f"TPM quote is malformed: {exc}"
    if not hmac.compare_digest(info.qualified_signer, ak_pub.qualified_name):
        return "contraindicated", "TPM quote names a different signing key than the enrolled AK"
    if not hmac.compare_digest(info.extra_data, nonce):
        return "contraindicated", "TPM quote is over a different nonce (extraData)"
    wanted = ((ALG_SHA256, (pcr_index,)),)
    if info.selection != wanted:
        shown = ", ".join(f"alg {a:#06x}: {list(p)}" for a, p in info.selection) or "nothing"
        return (
            "contraindicated",
            f"TPM quote covers PCRs {shown}, expected sha256:{pcr_index} only",
        )
    if replayed is None:
        return "contraindicated", "TPM quote cannot be matched: the measurement log does not replay"
    if not hmac.compare_digest(info.pcr_digest, hashlib.sha256(replayed).digest()):
        return (
            "contraindicated",
            "TPM quoted PCR digest does not match the replayed measurement log",
        )
    return (
        "affirming",
        f"TPM2_Quote by the enrolled AK over the nonce and sha256:{pcr_index} matches the log",
    )


def appraise(
    evidence: bytes,
    *,
    nonce: bytes,
    nonce_verdict: NonceVerdict,
    device: DevicePublicKey,
    reference: ReferenceValues,
    ak: AkBinding | None = None,
    require_tpm: bool = False,
    now: int | None = None,
) -> AttestationResult:
    """Appraise ``evidence`` (pure: no I/O, no nonce store).

    Args:
        evidence: The COSE_Sign1 evidence bytes.
        nonce: The challenge nonce the evidence must answer.
        nonce_verdict: What the nonce store said when the nonce was consumed.
        device: The enrolled device public key.
        reference: Signature-checked reference values.
        ak: The device's enrolled TPM AK (needed for TPM evidence).
        require_tpm: Software-key evidence is contraindicated instead of a warning.
        now: Result issue time (tests).

    Returns:
        The result; check :attr:`AttestationResult.ok`.
    """
    checks = _Checks()
    issued = int(time.time()) if now is None else now

    def result(claims: EatClaims | None) -> AttestationResult:
        return AttestationResult(
            checks=tuple(checks.items),
            device_id=device.device_id,
            device_key_id=device.key_id.hex(),
            assurance=None if claims is None else claims.assurance,
            issued=issued,
            bundle={
                "name": reference.bundle_name,
                "version": reference.bundle_version,
                "manifest_digest": reference.manifest_digest,
            },
            log=() if claims is None else tuple(claims.log.to_json()),
        )

    try:
        token: SignedEat = parse_eat(evidence)
    except MalformedError as exc:
        checks.add("evidence-format", "contraindicated", f"evidence is malformed: {exc}")
        checks.skip_rest("malformed evidence")
        return result(None)
    if not hmac.compare_digest(token.kid, device.key_id):
        checks.add("evidence-format", "affirming", "COSE_Sign1 ES256 token")
        checks.add(
            "device-identity",
            "contraindicated",
            f"evidence is signed by unknown device key {token.kid.hex()[:16]}… "
            f"(enrolled: {device.device_id}, {device.key_id.hex()[:16]}…)",
        )
        checks.skip_rest("unknown device key")
        return result(None)
    try:
        verify_eat_signature(token, device.attest)
    except IntegrityError as exc:
        checks.add("evidence-format", "affirming", "COSE_Sign1 ES256 token")
        checks.add("device-identity", "affirming", "COSE kid is the enrolled device key")
        checks.add("signature", "contraindicated", str(exc))
        checks.skip_rest("the signature does not verify")
        return result(None)
    try:
        claims = token.claims()
    except MalformedError as exc:
        checks.add("evidence-format", "contraindicated", f"signed claims are malformed: {exc}")
        checks.skip_rest("malformed claims")
        return result(None)
    checks.add("evidence-format", "affirming", "COSE_Sign1 ES256 token with EAT claims")
    if not hmac.compare_digest(claims.device_key_id, device.key_id):
        checks.add("device-identity", "contraindicated", "ueid names a different device key")
    elif claims.hwmodel != device.profile:
        checks.add(
            "device-identity",
            "contraindicated",
            f"hwmodel {claims.hwmodel!r} is not the enrolled profile {device.profile!r}",
        )
    else:
        checks.add(
            "device-identity",
            "affirming",
            f"device {device.device_id} ({device.profile}), key {device.key_id.hex()[:16]}…",
        )
    checks.add("signature", "affirming", "ES256 signature by the device attestation key verifies")

    if not hmac.compare_digest(claims.nonce, nonce):
        checks.add("nonce", "contraindicated", "evidence answers a different nonce")
    elif not nonce_verdict:
        checks.add("nonce", "contraindicated", nonce_verdict.reason)
    else:
        checks.add("nonce", "affirming", nonce_verdict.reason)

    replayed: bytes | None
    try:
        replayed = claims.log.replay()
    except MalformedError as exc:
        replayed = None
        checks.add("log-integrity", "contraindicated", str(exc))
    if replayed is not None:
        if claims.pcr_index != reference.pcr_index:
            checks.add(
                "log-integrity",
                "contraindicated",
                f"log is bound to PCR {claims.pcr_index}, reference says {reference.pcr_index}",
            )
        elif not hmac.compare_digest(replayed, claims.pcr):
            checks.add(
                "log-integrity",
                "contraindicated",
                "replayed measurement log does not match the attested register value "
                "(log truncated, extended, reordered or altered)",
            )
        else:
            checks.add(
                "log-integrity",
                "affirming",
                f"{len(claims.log.entries)} entries replay to {replayed.hex()[:16]}…",
            )

    if claims.assurance == "software":
        if require_tpm:
            checks.add("hardware", "contraindicated", "software-key evidence but a TPM is required")
        else:
            checks.add(
                "hardware",
                "warning",
                "assurance: software (attestation key in a file, no hardware root of trust)",
            )
    else:
        status, reason = _check_quote(
            claims,
            nonce=nonce,
            device=device,
            ak=ak,
            pcr_index=reference.pcr_index,
            replayed=replayed,
        )
        checks.add("hardware", status, f"assurance: tpm; {reason}")

    if (claims.swname, claims.swversion) != (reference.swname, reference.swversion):
        checks.add(
            "software",
            "contraindicated",
            f"runs {claims.swname} {claims.swversion}, reference expects "
            f"{reference.swname} {reference.swversion}",
        )
    else:
        checks.add("software", "affirming", f"{claims.swname} {claims.swversion}")

    exe, cfg = _compare_log(claims, reference, device)
    for name, problems, what in (
        ("executables", exe, "code, kernel binaries and model members"),
        ("configuration", cfg, "manifest, signer, sanity profile, policy and device profile"),
    ):
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            checks.add(name, "contraindicated", problems[0] + more)
        else:
            checks.add(name, "affirming", f"{what} match the reference values")
    return result(claims)


def verify_evidence(
    evidence: bytes,
    *,
    nonce: bytes,
    device: DevicePublicKey,
    reference: ReferenceValues,
    store: NonceStore | None = None,
    state_dir: Path | None = None,
    max_age: int = DEFAULT_MAX_AGE,
    ak: AkBinding | None = None,
    require_tpm: bool = False,
    now: int | None = None,
) -> AttestationResult:
    """Consume ``nonce`` in the verifier store, then :func:`appraise`.

    The nonce is consumed whatever the outcome, so a challenge can be
    answered at most once.
    """
    store = store if store is not None else NonceStore(state_dir)
    verdict = store.consume(nonce, max_age=max_age, now=now)
    return appraise(
        evidence,
        nonce=nonce,
        nonce_verdict=verdict,
        device=device,
        reference=reference,
        ak=ak,
        require_tpm=require_tpm,
        now=now,
    )

"""``edgeguard attest``: remote attestation of what a device runs (RATS roles).

* ``challenge`` (verifier): draw a single-use nonce and record it.
* ``quote`` (attester, on the device): open the bundle read-only, measure it,
  and write signed evidence (EAT) for the nonce, optionally with a TPM quote.
* ``verify`` (verifier): appraise evidence against the signed reference
  values and print a per-claim result; exit 0 only when every claim passes.
* ``enroll-tpm`` (provisioning): export the device's TPM AK, bound to its key.
* ``reference`` (reference value provider): write ``BUNDLE.rv.json`` for an
  existing bundle (``edgeguard build`` writes it too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edgeguard.cli._common import add_passphrase_arg, emit_json, load_keys, passphrase

_EXIT_NOT_AFFIRMED = 4  # IntegrityError's code: the evidence did not authenticate


def register(sub: Any) -> None:
    """Add the ``attest`` parser and its subcommands."""
    p = sub.add_parser(
        "attest",
        help="remote attestation: challenge, quote, verify, enroll-tpm, reference",
        description=(
            "Prove to a verifier what a device runs: a measured load of the edgeguard code, "
            "the bundle (manifest, signer, members, sanity profile, policy), the kernel "
            "binaries and the device profile, as an Entity Attestation Token (RFC 9711) "
            "signed by the device attestation key, optionally with a TPM 2.0 quote. "
            "See docs/attestation.md."
        ),
    )
    a = p.add_subparsers(dest="attest_command", metavar="SUBCOMMAND")
    a.required = True

    c = a.add_parser("challenge", help="(verifier) make a single-use challenge nonce")
    c.add_argument("-o", "--output", type=Path, required=True, metavar="NONCE")
    _state_arg(c)
    c.set_defaults(func=run_challenge)

    q = a.add_parser(
        "quote",
        help="(device) measure a bundle and write evidence for a nonce",
        description=(
            "Open the bundle read-only (signature, policy, rollback check without recording, "
            "decryption, member digests), measure it, and write the evidence. Without --tpm "
            "the evidence is signed by the software attestation key and says "
            "'assurance: software'; with --tpm the log is extended into PCR 23 and a "
            "TPM2_Quote is embedded ('assurance: tpm')."
        ),
    )
    q.add_argument("bundle", type=Path, metavar="BUNDLE.egb")
    q.add_argument("--device-key", type=Path, required=True, metavar="device.key")
    q.add_argument("--trust", type=Path, action="append", metavar="signer.pub", required=True)
    q.add_argument("--nonce", type=Path, required=True, metavar="NONCE")
    q.add_argument("-o", "--output", type=Path, required=True, metavar="EVIDENCE")
    q.add_argument(
        "--tpm",
        metavar="TCTI",
        help="quote with a TPM 2.0, e.g. swtpm:path=/run/swtpm/sock or device:/dev/tpmrm0",
    )
    q.add_argument(
        "--state-dir", type=Path, metavar="DIR", help="anti-rollback state dir (read only)"
    )
    add_passphrase_arg(q)
    q.set_defaults(func=run_quote)

    v = a.add_parser(
        "verify",
        help="(verifier) appraise evidence; exit 0 only if every claim passes",
        description=(
            "Check the reference values' signature against --trust, consume the nonce "
            "(single use, at most --max-age seconds old), then the evidence: device key, "
            "signature, nonce, measurement log replay, TPM quote (TPM evidence), and every "
            "measurement against the reference values. Prints an EAR-style result per claim; "
            "exit 0 only when none is contraindicated (software-key evidence is a warning "
            "unless --require-tpm), else exit 4."
        ),
    )
    v.add_argument("evidence", type=Path, metavar="EVIDENCE")
    v.add_argument("--nonce", type=Path, required=True, metavar="NONCE")
    v.add_argument(
        "--reference",
        type=Path,
        required=True,
        metavar="REF",
        help="reference values written by `edgeguard build` (OUT.egb.rv.json)",
    )
    v.add_argument("--device-pub", type=Path, required=True, metavar="device.pub")
    v.add_argument(
        "--trust",
        type=Path,
        action="append",
        required=True,
        metavar="signer.pub",
        help="signer key that must have signed the reference values",
    )
    v.add_argument(
        "--ak-pub", type=Path, metavar="ak.pub", help="the device's TPM AK (from enroll-tpm)"
    )
    v.add_argument("--require-tpm", action="store_true", help="refuse software-key evidence")
    v.add_argument(
        "--max-age",
        type=int,
        default=300,
        metavar="SECONDS",
        help="oldest acceptable nonce (default 300)",
    )
    _state_arg(v)
    v.add_argument("--json", action="store_true", help="print the EAR-style result as JSON")
    v.set_defaults(func=run_verify)

    e = a.add_parser(
        "enroll-tpm",
        help="(provisioning) export the device's TPM attestation key, bound to the device key",
    )
    e.add_argument("--device-key", type=Path, required=True, metavar="device.key")
    e.add_argument("--tpm", required=True, metavar="TCTI")
    e.add_argument("-o", "--output", type=Path, required=True, metavar="ak.pub")
    add_passphrase_arg(e)
    e.set_defaults(func=run_enroll)

    r = a.add_parser(
        "reference",
        help="(builder) write the signed reference values of a bundle",
        description="Write BUNDLE.rv.json (or -o) signed by the bundle's signer key.",
    )
    r.add_argument("bundle", type=Path, metavar="BUNDLE.egb")
    r.add_argument("--sign-key", type=Path, required=True, metavar="signer.key")
    r.add_argument("-o", "--output", type=Path, metavar="REF")
    add_passphrase_arg(r)
    r.set_defaults(func=run_reference)


def _state_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="verifier state (nonce store); default $XDG_STATE_HOME/edgeguard-verifier",
    )


def run_challenge(args: argparse.Namespace) -> int:
    """Issue and write a challenge."""
    from edgeguard.attest.nonce import NonceStore
    from edgeguard.fsutil import atomic_write

    ch = NonceStore(args.state_dir).issue()
    atomic_write(args.output, ch.encode())
    print(f"wrote challenge {args.output} (nonce {ch.nonce.hex()[:16]}…, single use)")
    return 0


def run_quote(args: argparse.Namespace) -> int:
    """Measure the bundle and write evidence."""
    from edgeguard.attest.attester import quote_bundle
    from edgeguard.attest.nonce import Challenge
    from edgeguard.fsutil import atomic_write

    trust, device = load_keys(args)
    ch = Challenge.load(args.nonce)
    evidence = quote_bundle(
        args.bundle,
        trust=trust,
        device_key=device,
        nonce=ch.nonce,
        tcti=args.tpm,
        state_dir=args.state_dir,
    )
    atomic_write(args.output, evidence)
    level = "tpm" if args.tpm else "software"
    print(f"wrote evidence {args.output} ({len(evidence)} bytes, assurance: {level})")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Appraise evidence and print the result."""
    from edgeguard.attest.nonce import Challenge
    from edgeguard.attest.reference import load_reference_values
    from edgeguard.attest.tpm import AkBinding
    from edgeguard.attest.verifier import verify_evidence
    from edgeguard.errors import UsageError
    from edgeguard.keystore import load_device_public, load_trust_store

    trust = load_trust_store(args.trust)
    reference = load_reference_values(args.reference, trust=trust)
    device = load_device_public(args.device_pub)
    ak = None
    if args.ak_pub is not None:
        try:
            ak = AkBinding.decode(args.ak_pub.read_bytes(), source=str(args.ak_pub))
        except FileNotFoundError as exc:
            raise UsageError(f"AK public file {args.ak_pub} does not exist") from exc
    ch = Challenge.load(args.nonce)
    try:
        evidence = args.evidence.read_bytes()
    except FileNotFoundError as exc:
        raise UsageError(f"evidence file {args.evidence} does not exist") from exc
    result = verify_evidence(
        evidence,
        nonce=ch.nonce,
        device=device,
        reference=reference,
        state_dir=args.state_dir,
        max_age=args.max_age,
        ak=ak,
        require_tpm=args.require_tpm,
    )
    if args.json:
        emit_json(result.to_ear())
    else:
        width = max(len(c.name) for c in result.checks)
        for c in result.checks:
            print(f"{c.name:<{width}}  {c.status:<15}  {c.reason}")
        verdict = "PASS" if result.ok else "FAIL"
        print(
            f"{verdict}: {result.status} (assurance: {result.assurance or 'unknown'}), "
            f"device {result.device_id}, bundle {reference.bundle_name} "
            f"v{reference.bundle_version}"
        )
    if not result.ok:
        if args.json:
            failed = ", ".join(c.name for c in result.failures())
            print(f"edgeguard: attestation failed: {failed}", file=sys.stderr)
        return _EXIT_NOT_AFFIRMED
    return 0


def run_enroll(args: argparse.Namespace) -> int:
    """Derive the TPM AK and write it bound to the device key."""
    from edgeguard.attest.tpm import AkBinding, TpmAttester
    from edgeguard.fsutil import atomic_write
    from edgeguard.keystore import load_device_key

    device = load_device_key(args.device_key, passphrase=passphrase(args))
    kid = device.public.key_id
    with TpmAttester(args.tpm) as tpm:
        area = tpm.ak_public(device_key_id=kid)
    binding = AkBinding.create(area, device_key_id=kid, attest_key=device.attest)
    atomic_write(args.output, binding.encode().encode())
    print(f"wrote TPM AK public {args.output} for device {device.device_id}")
    return 0


def run_reference(args: argparse.Namespace) -> int:
    """Write the signed reference values of an existing bundle."""
    from edgeguard.attest.reference import write_reference_values
    from edgeguard.keystore import load_signer_key

    signer = load_signer_key(args.sign_key, passphrase=passphrase(args))
    path = write_reference_values(args.bundle, signer=signer, out=args.output)
    print(f"wrote reference values {path}")
    return 0

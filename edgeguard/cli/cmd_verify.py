"""``edgeguard verify``: check a bundle against a trust store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeguard.cli._common import add_passphrase_arg, emit_json, load_keys, warn_clock


def register(sub: Any) -> None:
    """Add the ``verify`` parser."""
    p = sub.add_parser(
        "verify",
        help="verify a bundle's signature and integrity (and, with a device key, everything)",
        description=(
            "Without --device-key: check the hybrid signature against --trust, the file length "
            "and the payload digest. With --device-key: also the device policy (expiry, "
            "profile, id, rollback against the state directory, read-only) and decrypt every "
            "member in memory, checking its digest. Nothing is written."
        ),
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE.egb")
    p.add_argument(
        "--trust", type=Path, action="append", metavar="signer.pub", help="trusted signer key"
    )
    p.add_argument("--device-key", type=Path, metavar="device.key")
    p.add_argument("--state-dir", type=Path, metavar="DIR", help="anti-rollback state directory")
    p.add_argument(
        "--isolation",
        choices=["sandbox", "threads"],
        default="sandbox",
        help="with --device-key: check the isolation the device would run with",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_passphrase_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Verify and report."""
    from edgeguard.keystore import load_trust_store
    from edgeguard.runtime.opener import verify_bundle
    from edgeguard.runtime.session import check_on_device

    if args.device_key is None:
        vb = verify_bundle(args.bundle, trust=load_trust_store(args.trust or []))
        level = "signature, length, payload digest and signed slots"
    else:
        trust, device = load_keys(args)
        vb = check_on_device(
            args.bundle,
            trust=trust,
            device_key=device,
            state_dir=args.state_dir,
            isolation=args.isolation,
        )
        level = (
            "signature, length, payload digest, signed slots, policy, decryption, member "
            f"digests and the isolation floor ({args.isolation} on this host)"
        )
        warn_clock(vb.clock)
    m = vb.manifest
    if args.json:
        emit_json(
            {
                "ok": True,
                "checked": level,
                "name": m.name,
                "version": m.version,
                "signer_key_id": vb.signer.key_id.hex(),
                "manifest_sha256": vb.manifest_digest.hex(),
            }
        )
    else:
        print(f"OK {args.bundle}: {m.name} v{m.version} signed by {vb.signer.key_id.hex()[:16]}…")
        print(f"checked: {level}")
    return 0

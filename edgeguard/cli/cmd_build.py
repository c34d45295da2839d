"""``edgeguard build``: package ONNX models into an encrypted, signed bundle."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeguard.cli._common import add_passphrase_arg, parse_time, passphrase


def register(sub: Any) -> None:
    """Add the ``build`` parser."""
    p = sub.add_parser(
        "build",
        help="package a model into an encrypted, signed bundle",
        description=(
            "Check the ONNX model, encrypt it with a fresh data key (AES-256-GCM STREAM), "
            "wrap the key to every --recipient device with HPKE, and sign the header with "
            "the hybrid signer key. The output is written atomically."
        ),
    )
    p.add_argument("model", type=Path, metavar="MODEL.onnx")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.egb")
    p.add_argument("--sign-key", type=Path, required=True, metavar="signer.key")
    p.add_argument(
        "--recipient",
        type=Path,
        action="append",
        required=True,
        metavar="device.pub",
        help="a device that may open the bundle (repeat for a fleet)",
    )
    p.add_argument(
        "--device-profile",
        action="append",
        required=True,
        metavar="NAME",
        help="an allowed device profile (repeat to allow several; see `edgeguard devices list`)",
    )
    p.add_argument(
        "--device-id",
        action="append",
        metavar="ID",
        help="restrict the bundle to these device ids (repeatable; default: any recipient)",
    )
    p.add_argument("--version", type=int, required=True, metavar="N", help="release version")
    p.add_argument("--name", help="bundle name (default: the model file's stem)")
    p.add_argument("--expires", metavar="ISO8601", help="expiry date-time (UTC if no zone)")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=1 << 20,
        metavar="BYTES",
        help="STREAM chunk size, a power of two from 65536 to 1048576 (default 1048576)",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        metavar="DATA",
        help=(
            "calibrate the input-sanity profile on this data (.npz keyed by input name, .npy, "
            "or a folder of images) and embed it in the signed manifest"
        ),
    )
    p.add_argument(
        "--target-far",
        type=float,
        default=0.005,
        metavar="RATE",
        help="target per-frame false-alarm rate of the calibrated envelope (default 0.005)",
    )
    add_passphrase_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the bundle."""
    from edgeguard.api import build_bundle
    from edgeguard.keystore import load_device_public, load_signer_key

    signer = load_signer_key(args.sign_key, passphrase=passphrase(args))
    recipients = [load_device_public(p) for p in args.recipient]
    header = build_bundle(
        [args.model],
        out=args.output,
        signer=signer,
        recipients=recipients,
        profiles=args.device_profile,
        device_ids=args.device_id,
        version=args.version,
        name=args.name,
        expires=None if args.expires is None else parse_time(args.expires),
        chunk_size=args.chunk_size,
        calibration=args.calibration,
        target_false_alarm=args.target_far,
    )
    m = header.manifest
    print(
        f"wrote {args.output}: {m.name} v{m.version}, {len(m.members)} member(s), "
        f"{len(header.recipients)} recipient(s), signer {m.signer.hex()[:16]}…"
        + (", sanity profile embedded" if m.sanity is not None else "")
    )
    return 0

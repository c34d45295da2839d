"""``edgeguard keygen signer|device``: make key pairs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeguard.cli._common import add_passphrase_arg, passphrase


def register(sub: Any) -> None:
    """Add the ``keygen`` parser."""
    p = sub.add_parser(
        "keygen",
        help="make a signer or device key pair",
        description=(
            "Make a hybrid signer key (ECDSA P-256 + ML-DSA-65) or a device key "
            "(HPKE recipient + ECDSA P-256 attestation key). Private keys are written "
            "with mode 0600, passphrase-protected when a passphrase is given."
        ),
    )
    p.add_argument("kind", choices=["signer", "device"])
    p.add_argument("-o", "--out-dir", dest="out", type=Path, required=True, metavar="DIR")
    p.add_argument("--id", dest="device_id", help="device id (required for device keys)")
    p.add_argument(
        "--profile",
        default="generic-cpu",
        help="device profile id of the device (default: generic-cpu)",
    )
    p.add_argument(
        "--kem",
        choices=["mlkem768-x25519", "x25519", "p256"],
        default="mlkem768-x25519",
        help="HPKE KEM of a device key (default: the post-quantum hybrid mlkem768-x25519)",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    add_passphrase_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate and write the key pair."""
    from edgeguard.crypto.keys import DeviceKey, SignerKey
    from edgeguard.errors import UsageError
    from edgeguard.keystore import write_keypair

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    key: SignerKey | DeviceKey
    if args.kind == "signer":
        if args.device_id:
            raise UsageError("--id is only for device keys")
        key, stem = SignerKey.generate(), "signer"
    else:
        if not args.device_id:
            raise UsageError("a device key needs --id ID")
        from edgeguard.devices import load_profile

        load_profile(args.profile)  # refuses unknown profiles
        key, stem = DeviceKey.generate(args.device_id, profile=args.profile, kem=args.kem), "device"
    priv, pub = out / f"{stem}.key", out / f"{stem}.pub"
    write_keypair(key, priv, pub, passphrase=passphrase(args), overwrite=args.force)
    print(f"wrote {priv} (private, mode 0600) and {pub}")
    print(f"key id: {key.public.key_id.hex()}")
    return 0

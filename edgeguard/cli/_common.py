"""Helpers shared by the CLI subcommands (argument types, key loading, output)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from edgeguard.errors import UsageError

__all__ = [
    "add_device_args",
    "add_passphrase_arg",
    "emit_json",
    "iso_time",
    "load_keys",
    "open_device_session",
    "parse_time",
    "passphrase",
]


def add_device_args(p: argparse.ArgumentParser) -> None:
    """``--trust``, ``--device-key``, ``--state-dir`` and ``--isolation`` for device commands."""
    p.add_argument("--trust", type=Path, action="append", required=True, metavar="signer.pub")
    p.add_argument("--device-key", type=Path, required=True, metavar="device.key")
    p.add_argument("--state-dir", type=Path, metavar="DIR", help="anti-rollback state directory")
    p.add_argument(
        "--isolation",
        choices=["sandbox", "threads"],
        default="sandbox",
        help="run the models in sandboxed worker processes (default) or in threads of this "
        "process; threads are refused when the bundle requires isolation",
    )
    p.add_argument(
        "--unsafe-in-process",
        action="store_true",
        help="development only: run in threads even though the bundle requires isolation "
        "(recorded in the event log)",
    )
    add_passphrase_arg(p)


def load_keys(args: argparse.Namespace) -> tuple[Any, Any]:
    """The trust store of ``--trust`` and the device key of ``--device-key``."""
    from edgeguard.keystore import load_device_key, load_trust_store

    trust = load_trust_store(args.trust or [])
    device = load_device_key(args.device_key, passphrase=passphrase(args))
    return trust, device


def open_device_session(args: argparse.Namespace, **options: Any) -> Any:
    """Load the keys named by :func:`add_device_args` and open the bundle's session.

    Returns:
        The :class:`~edgeguard.runtime.session.DeviceSession`.
    """
    from edgeguard.runtime.session import open_session

    trust, device = load_keys(args)
    session = open_session(
        args.bundle,
        trust=trust,
        device_key=device,
        state_dir=args.state_dir,
        isolation=args.isolation,
        unsafe_in_process=args.unsafe_in_process,
        **options,
    )
    if session.unsafe_in_process:
        print(
            "edgeguard: warning: the bundle requires isolation "
            f"({', '.join(session.slots.isolation.required_layers())}); its models run "
            "in this process because of --unsafe-in-process (recorded in the event log)",
            file=sys.stderr,
        )
    return session


def add_passphrase_arg(p: argparse.ArgumentParser) -> None:
    """``--passphrase-file`` (else ``$EDGEGUARD_PASSPHRASE``) for protected private keys."""
    p.add_argument(
        "--passphrase-file",
        type=Path,
        metavar="FILE",
        help="file holding the private key's passphrase (else $EDGEGUARD_PASSPHRASE)",
    )


def passphrase(args: argparse.Namespace) -> bytes | None:
    """Resolve the passphrase from the parsed arguments or the environment."""
    from edgeguard.keystore import read_passphrase

    return read_passphrase(getattr(args, "passphrase_file", None))


def parse_time(text: str) -> int:
    """ISO 8601 date or date-time to Unix seconds (naive times are UTC)."""
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"{text!r} is not an ISO 8601 date or date-time") from exc
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp())


def iso_time(ts: int | None) -> str | None:
    """Unix seconds to ISO 8601 UTC (None stays None)."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).isoformat().replace("+00:00", "Z")


def emit_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")

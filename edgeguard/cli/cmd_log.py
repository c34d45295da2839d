"""``edgeguard log``: inspect and verify tamper-evident event logs.

Layer: CLI. ``edgeguard log verify LOG --device-pub device.pub [--state-dir DIR]
[--tpm TCTI] [--json] [--allow-unclean]`` checks the hash chain and every signed
checkpoint of an event log written by the guarded runtime (format:
``docs/eventlog.md``), and the log against its anchor: ``eventlog.anchor`` in
``--state-dir``, or next to ``LOG`` when that option is not given, and the TPM
counter of ``--tpm`` (or ``$EDGEGUARD_TPM``). Exit 0 when the log
verifies and ends with a final checkpoint; exit 4 (IntegrityError) on any
edit, deletion, insertion, reordering or foreign key, and on a log behind its
anchor (cut back or rolled back to an earlier checkpoint); exit 13
(UncleanLogError) when the log verifies but its writer stopped without
closing it (crash, power loss, kill, or a cut tail: the log alone cannot tell
which), unless ``--allow-unclean`` is given, which accepts that and reports
it. With ``--json`` the report is printed on stdout whenever the log
verifies, also when the exit code is 13.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any

from edgeguard.errors import KeyFileError, UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

    from edgeguard.guard.loganchor import LogAnchor

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``log`` command and its ``verify`` subcommand."""
    p = subparsers.add_parser(
        "log", help="verify tamper-evident event logs", description="Event log tools."
    )
    sub = p.add_subparsers(dest="log_command", metavar="SUBCOMMAND")
    sub.required = True
    v = sub.add_parser(
        "verify",
        help="verify the hash chain and signed checkpoints of an event log",
        description=(
            "Verify an event log; exit 4 on any edit, deletion, insertion or reordering, "
            "exit 13 when its writer stopped without closing it (unless --allow-unclean)."
        ),
    )
    v.add_argument("log", metavar="LOG", help="event log file (JSON lines)")
    v.add_argument(
        "--device-pub",
        metavar="device.pub",
        help="the device's public key file (its attestation key signs the checkpoints)",
    )
    v.add_argument(
        "--pubkey-pem",
        metavar="FILE",
        help="alternatively: PEM SubjectPublicKeyInfo of the ECDSA P-256 key",
    )
    v.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the device's state directory: check the log against its eventlog.anchor "
        "(default: the anchor next to LOG, if there is one)",
    )
    v.add_argument(
        "--tpm",
        metavar="TCTI",
        help="check the anchor against the TPM NV counter (default: $EDGEGUARD_TPM), "
        "e.g. device:/dev/tpmrm0",
    )
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument(
        "--allow-unclean",
        action="store_true",
        help="accept a log whose writer stopped without closing it (exit 0); still reports it",
    )
    v.set_defaults(func=run)


# --------------------------------------------------------------------------------------------
# SEAM: the device public key file format is being designed; ``--device-pub`` will be added
# here. Everything else in this command only needs an ``ec.EllipticCurvePublicKey``.
# --------------------------------------------------------------------------------------------
def _load_verify_key(args: argparse.Namespace) -> ec.EllipticCurvePublicKey:
    """Load the key that verifies the log's checkpoints from the command line options.

    Raises:
        UsageError: No key option given or the file cannot be read.
        KeyFileError: The file is not a PEM P-256 public key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    device_pub = getattr(args, "device_pub", None)
    if device_pub:
        from pathlib import Path

        from edgeguard.keystore import load_device_public

        return load_device_public(Path(device_pub)).attest
    path = getattr(args, "pubkey_pem", None)
    if not path:
        raise UsageError("no verification key given", hint="pass --device-pub device.pub")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyFileError(f"{path} is not an ECDSA P-256 public key")
    return key


def _anchor(args: argparse.Namespace) -> tuple[LogAnchor | None, bool]:
    """The anchor to check the log against, and whether it must exist.

    ``--state-dir`` names it (it must then exist, unless the TPM counter says
    more); without it, an anchor next to ``LOG`` is used when there is one.
    """
    from pathlib import Path

    from edgeguard.guard.loganchor import ANCHOR_NAME, LogAnchor, TpmNvCounter, counter_from_env

    counter = TpmNvCounter(args.tpm) if getattr(args, "tpm", None) else counter_from_env()
    state_dir = getattr(args, "state_dir", None)
    if state_dir:
        return LogAnchor(state_dir, counter=counter), True
    beside = Path(args.log).parent
    if counter is not None or os.path.lexists(beside / ANCHOR_NAME):
        return LogAnchor(beside, counter=counter), False
    return None, False


def run(args: argparse.Namespace) -> int:
    """Run ``edgeguard log verify``."""
    from edgeguard.errors import EdgeguardError
    from edgeguard.guard.eventlog import verify

    key = _load_verify_key(args)
    anchor, required = _anchor(args)
    # An unclean end is checked after the report is out, so --json shows it with exit 13.
    report = verify(args.log, key, require_clean=False, anchor=anchor, require_anchor=required)
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=True))
        if not args.allow_unclean:
            try:
                report.raise_if_unclean()
            except EdgeguardError as exc:
                exc.reported_as_json = True  # the report says it
                raise
        return 0
    if not args.allow_unclean:
        report.raise_if_unclean()
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"event log {report.path}", show_header=False)
    table.add_row("status", report.status)
    table.add_row("log id", report.log_id)
    table.add_row("records", str(report.records))
    table.add_row("signed checkpoints", str(report.checkpoints))
    table.add_row("last checkpoint", f"record {report.last_checkpoint_seq}")
    table.add_row("unsigned tail", f"{report.unsigned_tail} record(s)")
    table.add_row("torn last write", f"{report.torn_tail_bytes} byte(s) ignored")
    table.add_row("sessions", str(report.sessions))
    if report.anchor is None:
        table.add_row("anchor", "none: a cut back to an earlier checkpoint cannot be seen")
    else:
        counter = "checked" if report.counter_checked else "not checked (no --tpm)"
        table.add_row(
            "anchor", f"record {report.anchor_seq} ({report.anchor}); TPM counter {counter}"
        )
    table.add_row("kinds", ", ".join(f"{k}={v}" for k, v in sorted(report.kinds.items())))
    Console().print(table)
    return 0

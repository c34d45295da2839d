"""``edgeguard run``: open a bundle on this device and run its model on inputs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeguard.cli._common import add_passphrase_arg, emit_json, passphrase


def register(sub: Any) -> None:
    """Add the ``run`` parser."""
    p = sub.add_parser(
        "run",
        help="open a bundle (verify, policy, decrypt in memory) and run its model",
        description=(
            "Open the bundle exactly as a device does - signature against --trust, expiry, "
            "device profile and id, anti-rollback, HPKE unwrap, in-memory decryption - then "
            "run the primary model on the arrays of --input (an .npz keyed by the model's "
            "input names) and write the outputs to --output (keyed by output names). The "
            "decrypted model never touches the disk. Without --state-dir the default state "
            "directory is used ($EDGEGUARD_STATE_DIR, else $XDG_STATE_HOME/edgeguard, else "
            "~/.local/state/edgeguard), so rollback protection is never off by accident."
        ),
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE.egb")
    p.add_argument("--trust", type=Path, action="append", required=True, metavar="signer.pub")
    p.add_argument("--device-key", type=Path, required=True, metavar="device.key")
    p.add_argument("--input", type=Path, required=True, metavar="IN.npz")
    p.add_argument("--output", type=Path, required=True, metavar="OUT.npz")
    p.add_argument("--state-dir", type=Path, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_passphrase_arg(p)
    p.set_defaults(func=run)


def load_inputs(path: Path) -> dict[str, Any]:
    """Arrays of an .npz file (no pickles), by name."""
    import zipfile

    import numpy as np

    from edgeguard.errors import MalformedError, UsageError

    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError as exc:
        raise UsageError(f"input file {path} does not exist") from exc
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise MalformedError(f"{path} is not a readable .npz file of arrays ({exc})") from exc


def run(args: argparse.Namespace) -> int:
    """Open, check, run, check, write outputs."""
    import io
    import time

    import numpy as np

    from edgeguard.api import open_bundle
    from edgeguard.fsutil import atomic_write
    from edgeguard.keystore import load_device_key, load_trust_store

    trust = load_trust_store(args.trust)
    device = load_device_key(args.device_key, passphrase=passphrase(args))
    feeds = load_inputs(args.input)
    t0 = time.perf_counter()
    with open_bundle(
        args.bundle, trust=trust, device_key=device, state_dir=args.state_dir
    ) as session:
        manifest = session.bundle.manifest
        guard = _sanity_guard(manifest.sanity)
        t1 = time.perf_counter()
        summary: dict[str, Any] = {"bundle": manifest.name, "version": manifest.version}
        if guard is not None:
            verdict = guard.check_inputs(feeds)
            summary["sanity"] = {"inputs": verdict.to_dict()}
            if verdict.rejected:
                summary["result"] = "rejected"
                if args.json:
                    emit_json(summary)
                verdict.raise_if_rejected()
        t2 = time.perf_counter()
        outputs = session.run(feeds)
        t3 = time.perf_counter()
        if guard is not None:
            out_verdict = guard.check_outputs(outputs)
            summary["sanity"]["outputs"] = out_verdict.to_dict()
            if out_verdict.rejected:
                summary["result"] = "rejected"
                if args.json:
                    emit_json(summary)
                out_verdict.raise_if_rejected()
        t4 = time.perf_counter()
    buf = io.BytesIO()
    np.savez(buf, **dict[str, Any](outputs))
    atomic_write(args.output, buf.getvalue())
    summary.update(
        {
            "result": "ok",
            "outputs": {k: list(v.shape) for k, v in outputs.items()},
            "latency_ms": {
                "open": (t1 - t0) * 1e3,
                "input_checks": (t2 - t1) * 1e3,
                "inference": (t3 - t2) * 1e3,
                "output_checks": (t4 - t3) * 1e3,
            },
            "output_file": str(args.output),
        }
    )
    if args.json:
        emit_json(summary)
    else:
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in outputs.items())
        status = summary.get("sanity", {}).get("inputs", {}).get("status", "no profile")
        print(
            f"ran {manifest.name} v{manifest.version}: wrote {shapes} to {args.output} "
            f"(input sanity: {status})"
        )
    return 0


def _sanity_guard(profile: dict[str, Any] | None) -> Any:
    """The SanityGuard for the manifest's signed profile, or None without one."""
    if profile is None:
        return None
    from edgeguard.guard.sanity import SanityGuard
    from edgeguard.guard.sanity.spec import SanityProfile

    return SanityGuard(SanityProfile.from_dict(profile))

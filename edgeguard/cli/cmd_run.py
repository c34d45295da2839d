"""``edgeguard run``: open a bundle on this device and run its model on inputs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeguard.cli._common import add_device_args, emit_json, passphrase


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
    p.add_argument("--input", type=Path, required=True, metavar="IN.npz")
    p.add_argument("--output", type=Path, required=True, metavar="OUT.npz")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_device_args(p)
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

    from edgeguard.api import BundleSession, GuardedSession
    from edgeguard.backends import load_backend
    from edgeguard.fsutil import atomic_write
    from edgeguard.keystore import load_device_key, load_trust_store
    from edgeguard.runtime.opener import open_bundle
    from edgeguard.runtime.state import default_state_dir

    trust = load_trust_store(args.trust)
    device = load_device_key(args.device_key, passphrase=passphrase(args))
    feeds = load_inputs(args.input)
    state = args.state_dir if args.state_dir is not None else default_state_dir()
    t0 = time.perf_counter()
    opened = open_bundle(args.bundle, trust=trust, device_key=device, state_dir=state)
    if opened.manifest.policy is not None:
        with GuardedSession(
            opened, device_key=device, state_dir=state, isolation=args.isolation
        ) as guarded:
            return _run_guarded(args, guarded, feeds, open_ms=(time.perf_counter() - t0) * 1e3)
    primary = next(m for m in opened.manifest.members if m.role == "primary")
    try:
        backend = load_backend(primary.format, opened.member_bytes(primary.name))
    except BaseException:
        opened.wipe()
        raise
    with BundleSession(bundle=opened, backend=backend) as session:
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


def _run_guarded(
    args: argparse.Namespace, guarded: Any, feeds: dict[str, Any], *, open_ms: float
) -> int:
    """Serve every frame (first axis) of the inputs through the guarded runtime."""
    import io
    import json
    import sys

    import numpy as np

    from edgeguard.errors import UsageError
    from edgeguard.fsutil import atomic_write

    counts = {len(v) for v in feeds.values() if getattr(v, "ndim", 0) > 0}
    if len(counts) != 1:
        raise UsageError("every input array must have the same number of frames (first axis)")
    (n,) = counts
    outputs: dict[str, list[Any]] = {}
    sources: dict[str, int] = {}
    for i in range(n):
        frame = {k: np.ascontiguousarray(v[i : i + 1]) for k, v in feeds.items()}
        res = guarded.infer(frame)
        for k, v in res.outputs.items():
            outputs.setdefault(k, []).append(np.asarray(v))
        sources[res.source.value] = sources.get(res.source.value, 0) + 1
        if args.json:
            line = {
                "frame": i,
                "source": res.source.value,
                "health": res.health.name,
                "reasons": list(res.reasons),
                "members": list(res.members),
                "latency_ms": {
                    k: round(v, 4)
                    for k, v in res.latency_ms.items()
                    if v == v  # drop NaN
                },
            }
            sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
    stacked = {k: np.concatenate(v, axis=0) for k, v in outputs.items()}
    buf = io.BytesIO()
    np.savez(buf, **dict[str, Any](stacked))
    atomic_write(args.output, buf.getvalue())
    manifest = guarded.bundle.manifest
    summary = {
        "bundle": manifest.name,
        "version": manifest.version,
        "frames": n,
        "sources": sources,
        "health": guarded.runtime.health.name,
        "isolation": guarded.isolation,
        "placement": {m.name: str(m.where) for m in guarded.policy.members},
        "open_ms": round(open_ms, 3),
        "event_log": str(guarded.log_path) if guarded.log_path else None,
        "output_file": str(args.output),
    }
    if args.json:
        sys.stdout.write(json.dumps({"summary": summary}, sort_keys=True) + "\n")
    else:
        parts = ", ".join(f"{k}={v}" for k, v in sorted(sources.items()))
        print(
            f"served {n} frame(s) of {manifest.name} v{manifest.version} through the guarded "
            f"runtime ({parts}); members in {guarded.isolation}; health {summary['health']}; "
            f"wrote {args.output}"
        )
    return 0


def _sanity_guard(profile: dict[str, Any] | None) -> Any:
    """The SanityGuard for the manifest's signed profile, or None without one."""
    if profile is None:
        return None
    from edgeguard.guard.sanity import SanityGuard
    from edgeguard.policy.sanity import SanityProfile

    # threads=1: the members' ONNX Runtime pools hold the other cores (docs/failsafe.md)
    return SanityGuard(SanityProfile.from_dict(profile), threads=1)

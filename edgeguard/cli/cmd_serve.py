"""``edgeguard serve``: a camera-style frame loop through the guarded runtime."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeguard.cli._common import add_device_args, emit_json, passphrase


def register(sub: Any) -> None:
    """Add the ``serve`` parser."""
    p = sub.add_parser(
        "serve",
        help="serve a frame sequence at a fixed rate through the guarded runtime",
        description=(
            "Open an ensemble bundle as this device, then feed the frames of FRAMES.npz (first "
            "axis) at --fps through the guarded runtime, showing the health state live. "
            "--inject schedules faults: member faults hang, crash, nan, slow (kind[:member]@a-b) "
            "and input faults freeze, nan, scale255, dead, noise (kind@a-b). Ends with a table "
            "of answer sources, accuracy per source (with --labels-key), deadline misses, "
            "latency percentiles and health transitions."
        ),
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE.egb")
    p.add_argument("--frames", type=Path, required=True, metavar="FRAMES.npz")
    p.add_argument("--input-name", help="model input the frames feed (default: the only one)")
    p.add_argument("--labels-key", help="array in FRAMES.npz holding the true labels")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate (default 30)")
    p.add_argument("--limit", type=int, help="serve at most this many frames")
    p.add_argument(
        "--inject", metavar="SPEC", help="fault schedule, e.g. hang@60-90,freeze@120-140"
    )
    p.add_argument(
        "--metrics",
        type=Path,
        metavar="FILE",
        help="write the metrics here (Prometheus text; JSON lines if FILE ends in .jsonl)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_device_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the loop."""
    from rich.console import Console

    from edgeguard.api import GuardedSession
    from edgeguard.cli.cmd_run import load_inputs
    from edgeguard.errors import UsageError
    from edgeguard.fieldtest.faults import FaultClock, FaultyMember, parse_faults
    from edgeguard.fsutil import atomic_write
    from edgeguard.keystore import load_device_key, load_trust_store
    from edgeguard.policy.runtime import RuntimePolicy
    from edgeguard.runtime.frameloop import print_report, run_frame_loop
    from edgeguard.runtime.opener import open_bundle
    from edgeguard.runtime.state import default_state_dir

    if args.fps <= 0:
        raise UsageError("--fps must be positive")
    trust = load_trust_store(args.trust)
    device = load_device_key(args.device_key, passphrase=passphrase(args))
    arrays = load_inputs(args.frames)
    labels = None
    if args.labels_key:
        if args.labels_key not in arrays:
            raise UsageError(f"{args.frames} has no array {args.labels_key!r}")
        labels = arrays.pop(args.labels_key)
    state = args.state_dir if args.state_dir is not None else default_state_dir()
    opened = open_bundle(args.bundle, trust=trust, device_key=device, state_dir=state)
    policy = (opened.manifest.policy or {}).get("runtime")
    if policy is None:
        opened.wipe()
        raise UsageError(
            "serve needs an ensemble bundle with a runtime policy (edgeguard build "
            "--voter/--variants/--fallback ...)"
        )
    clock = FaultClock()
    try:
        faults = parse_faults(args.inject, members=RuntimePolicy.from_dict(policy).member_names)
    except BaseException:
        opened.wipe()
        raise
    with GuardedSession(
        opened,
        device_key=device,
        state_dir=state,
        wrap=lambda name, member: FaultyMember(name, member, faults, clock),
    ) as session:
        specs = session.inputs
        name = args.input_name or (specs[0].name if len(specs) == 1 else None)
        if name is None or name not in arrays:
            raise UsageError(
                "say which array of FRAMES.npz feeds the model with --input-name",
                hint=f"it holds {sorted(arrays)}; the model wants {[s.name for s in specs]}",
            )
        frames = arrays[name][: args.limit] if args.limit else arrays[name]
        if labels is not None:
            labels = labels[: len(frames)]
        console = Console(stderr=args.json)
        report = run_frame_loop(
            session,
            frames,
            input_name=name,
            fps=args.fps,
            labels=labels,
            faults=faults,
            clock=clock,
            console=console,
            live=not args.json,
        )
        if args.metrics is not None:
            metrics = session.runtime.metrics
            text = (
                metrics.to_json_lines()
                if args.metrics.suffix in (".jsonl", ".json")
                else metrics.to_prometheus()
            )
            atomic_write(args.metrics, text.encode())
    if args.json:
        emit_json(report.to_dict())
    else:
        print_report(console, report)
    return 0

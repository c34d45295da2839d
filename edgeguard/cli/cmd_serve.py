"""``edgeguard serve``: a camera-style frame loop through the guarded runtime."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edgeguard.cli._common import (
    add_device_args,
    add_input_limit_arg,
    add_sandbox_io_arg,
    emit_json,
    open_device_session,
)


def register(sub: Any) -> None:
    """Add the ``serve`` parser."""
    p = sub.add_parser(
        "serve",
        help="serve a frame sequence at a fixed rate through the guarded runtime",
        description=(
            "Open a bundle as this device, then feed the frames of FRAMES.npz (first "
            "axis) at --fps through the guarded runtime, showing the health state live. "
            "--inject schedules faults: member faults hang, crash, nan, slow (kind[:member]@a-b) "
            "and input faults freeze, nan, scale255, div255, black, dead, noise, swap "
            "(kind@a-b), applied to the frames as the model takes them. A frame whose input "
            "is rejected (by the signed checks, or refused by the models: check "
            "model.refused) with no answer by policy is recorded as rejected, one no step of "
            "the fallback chain answers as unanswered; the loop goes on after both. Ends "
            "with a table of answer sources, accuracy per source (with --labels-key), "
            "inputs rejected (per failing check and per fault), deadline misses, latency "
            "percentiles and health transitions."
        ),
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE.egb")
    p.add_argument("--frames", type=Path, required=True, metavar="FRAMES.npz")
    p.add_argument("--input-name", help="model input the frames feed (default: the only one)")
    p.add_argument("--labels-key", help="array in FRAMES.npz holding the true labels")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate (default 30)")
    p.add_argument("--limit", type=int, help="serve at most this many frames")
    p.add_argument(
        "--inject",
        metavar="SPEC",
        help="fault schedule: kind[:member]@A[-B],... with half-open frame windows (@60-90 "
        "is frames 60 to 89, @5 is frame 5 alone), e.g. hang@60-90,freeze@120-140,nan@5",
    )
    p.add_argument(
        "--metrics",
        type=Path,
        metavar="FILE",
        help="write the metrics here (Prometheus text; JSON lines if FILE ends in .jsonl)",
    )
    p.add_argument(
        "--no-drop",
        action="store_true",
        help="send every frame, late if the loop fell behind (default: drop a frame whose "
        "time has passed, as a camera does after a stall, and count it)",
    )
    p.add_argument(
        "--records",
        type=Path,
        metavar="FILE.jsonl",
        help="write one JSON line per frame: source, health, latency, faults, reasons and "
        "the checks that rejected its input",
    )
    p.add_argument(
        "--max-unanswered",
        type=int,
        metavar="N",
        help="stop after more than N frames no step of the fallback chain answered "
        "(rejected inputs do not count; default: record them and go on); exit 10 then",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_input_limit_arg(p)
    add_device_args(p)
    add_sandbox_io_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the loop."""
    from rich.console import Console

    from edgeguard.arrayfile import contract_problem, open_arrays
    from edgeguard.cli._common import input_limits
    from edgeguard.errors import InputRejectedError, UsageError
    from edgeguard.fieldtest.faults import FaultClock, FaultyExecutor, parse_faults
    from edgeguard.fieldtest.frameloop import print_report, run_frame_loop
    from edgeguard.fsutil import atomic_write

    if args.fps <= 0:
        raise UsageError("--fps must be positive")
    if args.max_unanswered is not None and args.max_unanswered < 0:
        raise UsageError("--max-unanswered must be >= 0")
    frames_file = open_arrays(args.frames, limits=input_limits(args))  # headers, checked
    arrays = dict(frames_file.headers)  # the data is read once checked against the model
    labels_header = None
    if args.labels_key:
        if args.labels_key not in arrays:
            raise UsageError(f"{args.frames} has no array {args.labels_key!r}")
        labels_header = arrays.pop(args.labels_key)
    clock = FaultClock()
    faults: list[Any] = []

    def inject(executor: Any) -> Any:
        return FaultyExecutor(executor, faults, clock)

    with open_device_session(args, executor_wrapper=inject if args.inject else None) as session:
        faults.extend(parse_faults(args.inject, members=session.policy.member_names))
        specs = session.inputs
        name = args.input_name or (specs[0].name if len(specs) == 1 else None)
        if "" in arrays and name is not None:  # an .npy file holds the frames
            arrays = {name: arrays.pop("")}
        if name is None or name not in arrays:
            raise UsageError(
                "say which array of FRAMES.npz feeds the model with --input-name",
                hint=f"it holds {sorted(arrays)}; the model wants {[s.name for s in specs]}",
            )
        header = arrays[name]
        spec = next((s for s in specs if s.name == name), None)
        # an array no frame of which fits the model is not read past its first frame,
        # which the session refuses (and logs) as it refuses any such frame
        unfit = None if spec is None else contract_problem(header, spec, frames="first-axis")
        if not header.shape or header.shape[0] == 0:
            raise UsageError(f"{args.frames} holds no frames for {name!r}")
        data = frames_file.read(
            [header.name, *([labels_header.name] if labels_header else [])],
            first=None if unfit is None else 1,
        )
        frames = data[header.name][: args.limit] if args.limit else data[header.name]
        labels = data[labels_header.name] if labels_header else None
        late = [f for f in faults if f.start >= len(frames)]
        if late:
            print(
                "edgeguard: warning: fault(s) "
                + ", ".join(f"{f.kind}@{f.start}" for f in late)
                + f" start after the last of the {len(frames)} frames: never injected",
                file=sys.stderr,
            )
        if labels is not None:
            labels = labels[: len(frames)]
        console = Console(stderr=args.json)
        records: list[Any] = []
        try:
            report = run_frame_loop(
                session,
                frames,
                input_name=name,
                fps=args.fps,
                labels=labels,
                faults=faults,
                clock=clock,
                console=console,
                live=not args.json and console.is_terminal,
                max_unanswered=args.max_unanswered,
                drop=not args.no_drop,
                on_frame=records.append if args.records is not None else None,
            )
        finally:
            if args.records is not None:
                import json

                lines = "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in records)
                atomic_write(args.records, lines.encode())
            if args.metrics is not None:
                metrics = session.metrics
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
    if unfit is not None:
        raise InputRejectedError(
            f"{args.frames}: every frame would be rejected: {unfit}",
            hint="feed what the model takes (edgeguard inspect shows its inputs)",
        )
    if report.stopped_early:
        from edgeguard.errors import BackendError

        raise BackendError(
            f"stopped after {report.unanswered} unanswered frame(s) (--max-unanswered "
            f"{args.max_unanswered}); the last: {report.frames[-1].reasons[0]}"
        )
    return 0

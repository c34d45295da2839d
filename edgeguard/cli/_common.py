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
    "BuildDisplay",
    "add_calibration_args",
    "add_device_args",
    "add_input_limit_arg",
    "add_passphrase_arg",
    "add_sandbox_io_arg",
    "calibration_options",
    "emit_json",
    "input_limits",
    "iso_time",
    "load_keys",
    "open_device_session",
    "parse_time",
    "passphrase",
    "print_calibration_report",
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


def add_sandbox_io_arg(p: argparse.ArgumentParser) -> None:
    """``--sandbox-io-mb`` and ``--no-engine-cache`` for the commands that serve frames."""
    p.add_argument(
        "--sandbox-io-mb",
        type=float,
        metavar="MB",
        help="shared memory per sandboxed call, in MiB, for inputs and outputs whose size "
        "the bundle does not bound (dynamic axes without a calibrated maximum; default 32); "
        "at most half the bundle's signed memory limit of a worker",
    )
    p.add_argument(
        "--no-engine-cache",
        action="store_true",
        help="do not keep or load the models compiled on this device (sealed in the "
        "state directory's engines/; docs/engine-cache.md): compile nothing, every start "
        "loads the ONNX models",
    )
    p.add_argument(
        "--worker-user",
        metavar="USER",
        help="service user that sandboxed workers started by root run as (default "
        "$EDGEGUARD_WORKER_USER, else nobody; never root)",
    )
    p.add_argument(
        "--worker-groups",
        metavar="G1,G2",
        help="supplementary groups of GPU/DLA members' workers, e.g. video,render on a Jetson "
        "(default $EDGEGUARD_WORKER_GROUPS, else the groups owning the GPU device nodes; "
        "'' for none); CPU members' workers keep no group",
    )


def _worker_groups(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [g.strip() for g in text.split(",") if g.strip()]


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

    io_mb = getattr(args, "sandbox_io_mb", None)
    if io_mb is not None and not 0 < io_mb < 2**28:
        raise UsageError(f"--sandbox-io-mb must be a positive number of MiB, got {io_mb:g}")
    trust, device = load_keys(args)
    display = BuildDisplay()
    try:
        session = open_session(
            args.bundle,
            trust=trust,
            device_key=device,
            state_dir=args.state_dir,
            isolation=args.isolation,
            unsafe_in_process=args.unsafe_in_process,
            sandbox_io_bytes=None if io_mb is None else int(io_mb * 2**20),
            engine_cache=not getattr(args, "no_engine_cache", False),
            worker_user=getattr(args, "worker_user", None),
            worker_groups=_worker_groups(getattr(args, "worker_groups", None)),
            progress=display,
            **options,
        )
    finally:
        display.close()
    warn_clock(session.clock)
    check = session.deadline_check
    if check is not None and check.slow:
        print(
            f"edgeguard: warning: this device may be too slow for the signed deadline: "
            f"{check.describe()} (rebuild with a measured or larger --deadline-ms)",
            file=sys.stderr,
        )
    if session.unsafe_in_process:
        print(
            "edgeguard: warning: the bundle requires isolation "
            f"({', '.join(session.slots.isolation.required_layers())}); its models run "
            "in this process because of --unsafe-in-process (recorded in the event log)",
            file=sys.stderr,
        )
    return session


class BuildDisplay:
    """``progress`` of :func:`~edgeguard.runtime.session.open_session` for ``run`` and
    ``serve``: while a member's TensorRT engine is built on this device, a rich progress
    display on stderr ("building the TensorRT engine of MEMBER: PHASE i/n"); on a stderr
    that is not a terminal, one line per member when its build starts. Nothing at all
    when no build happens (the plan is sealed in the engine cache, or a CPU member).
    Called from the builder's or the supervisor's thread.
    """

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        self._closed = False

    def __call__(self, member: str, phase: str, done: int, total: int) -> None:
        with self._lock:
            if self._closed:  # a worker rebuilding after a restart: the session serves
                return
            if self._bar is None:
                self._bar = self._start()
            text = f"building the TensorRT engine of {member}: {phase}"
            if member not in self._tasks:
                if self._bar.disable:
                    print(
                        f"edgeguard: building the TensorRT engine of {member} on this device "
                        "(first start; this can take minutes)",
                        file=sys.stderr,
                    )
                self._tasks[member] = self._bar.add_task(text, total=total)
            self._bar.update(self._tasks[member], description=text, completed=done, total=total)

    @staticmethod
    def _start() -> Any:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
            disable=not sys.stderr.isatty(),
        )
        bar.start()
        return bar

    def close(self) -> None:
        """Remove the display (the session has started, or failed to)."""
        with self._lock:
            self._closed = True
            if self._bar is not None:
                self._bar.stop()
                self._bar = None


def warn_clock(clock: Any) -> None:
    """One warning line when expiry was checked at the time floor, not the clock."""
    if clock is not None and clock.behind_floor:
        print(
            f"edgeguard: warning: {clock.describe()} (check the device clock)",
            file=sys.stderr,
        )


def add_input_limit_arg(p: argparse.ArgumentParser) -> None:
    """``--max-input-mb``: the most an input .npz/.npy file's arrays may declare."""
    p.add_argument(
        "--max-input-mb",
        type=int,
        default=1024,
        metavar="MB",
        help="refuse an input file whose compressed arrays would inflate to more than this "
        "many MiB beyond their bytes in the file, before anything is allocated (default "
        "1024; arrays stored as is count only against the available memory)",
    )


def input_limits(args: argparse.Namespace) -> Any:
    """The :class:`~edgeguard.arrayfile.ArrayLimits` of ``--max-input-mb``."""
    from edgeguard.arrayfile import ArrayLimits

    mb = getattr(args, "max_input_mb", 1024)
    if mb < 1:
        raise UsageError("--max-input-mb must be at least 1")
    return ArrayLimits(max_bytes=mb << 20)


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


def add_calibration_args(p: argparse.ArgumentParser) -> None:
    """The calibration options ``calibrate`` and ``build --calibration`` share."""
    g = p.add_argument_group("calibration")
    g.add_argument(
        "--target-far",
        type=float,
        default=0.005,
        metavar="RATE",
        help="target per-frame WARN rate on clean frames (default 0.005)",
    )
    g.add_argument(
        "--margin",
        type=float,
        default=0.5,
        help="REJECT limits lie this many WARN-band widths beyond the band (default 0.5)",
    )
    g.add_argument(
        "--layout",
        choices=["NCHW", "NHWC"],
        help="layout of every image input (default: guessed from the model's shape)",
    )
    g.add_argument(
        "--sat-levels",
        metavar="LO,HI",
        help="saturation levels of the checked inputs (default: the calibration data's "
        "range; 0,255 for uint8)",
    )
    g.add_argument(
        "--check-input",
        action="append",
        metavar="NAME",
        help="check this input (repeatable; default: every image- or signal-like input)",
    )
    g.add_argument(
        "--sequence",
        action="store_true",
        help="the calibration frames are consecutive frames of one stream (frame-to-frame "
        "statistics from neighbours; default: from copies moved by 1-8 pixels, and scene cuts)",
    )


def calibration_options(args: argparse.Namespace, *, limit: int | None = None) -> Any:
    """The :class:`~edgeguard.packaging.calibrate.CalibrationOptions` of the arguments."""
    from edgeguard.packaging.calibrate import CalibrationOptions

    sat = None
    if args.sat_levels:
        try:
            lo_s, hi_s = args.sat_levels.split(",")
            sat = (float(lo_s), float(hi_s))
        except ValueError as exc:
            raise UsageError(f"--sat-levels {args.sat_levels!r} is not LO,HI") from exc
    if not 0.0 < args.target_far < 0.5:
        raise UsageError("--target-far must lie in (0, 0.5)")
    if not args.margin >= 0:
        raise UsageError("--margin must be a number >= 0")
    return CalibrationOptions(
        target_false_alarm=args.target_far,
        margin=args.margin,
        layout=args.layout,
        sat_levels=sat,
        check_inputs=tuple(args.check_input) if args.check_input else None,
        sequence=args.sequence,
        limit=limit,
    )


def warn_image_folder(data: Path | None) -> None:
    """Say, on stderr, what a folder of images becomes: edgeguard cannot know the model's
    own preprocessing, and frames that differ from the device's make a useless profile."""
    if data is not None and Path(data).is_dir():
        print(
            f"edgeguard: warning: the images in {data} are resized to the model's input and "
            "scaled to 0..1 as RGB; if the model expects other preprocessing (mean/std, BGR, "
            "0..255, letterboxing), give the frames as the device will feed them, in an .npz",
            file=sys.stderr,
        )


def print_calibration_report(report: Any, *, file: Any = None) -> None:
    """The calibration report as a short table and its warnings (on stderr by default)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stderr, highlight=False)
    k, n = report.false_reject
    lo, hi = report.interval
    console.print(
        f"calibrated on {report.frames} frames ({report.temporal}); cross-validated clean "
        f"false rejects {k}/{n} = {100 * report.rate:.1f} % (95 % interval "
        f"{100 * lo:.1f}-{100 * hi:.1f} %, {report.folds} folds)"
    )
    t = Table(title="checked inputs")
    for col in ("input", "layout", "saturation levels", "resolution", "widened to the floor"):
        t.add_column(col)
    for i in report.inputs:
        lo_s, hi_s, source = i.sat_levels
        floored = ", ".join(f"{s} (c{','.join(map(str, cs))})" for s, cs in i.floored.items())
        t.add_row(
            i.name,
            i.layout,
            f"{lo_s:.4g} .. {hi_s:.4g} ({source})",
            ", ".join(f"{r:.3g}" for r in i.resolution),
            floored or "-",
        )
    console.print(t)
    for name, why in report.unchecked:
        console.print(f"not checked: {name} ({why})")
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}")

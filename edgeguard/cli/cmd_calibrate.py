"""``edgeguard calibrate``: derive a sanity profile from a model and calibration data.

Layer: CLI. ``edgeguard calibrate MODEL.onnx --data DATA.npz -o profile.json``
runs the model over the data, records every sanity statistic and writes the
acceptance envelope (the JSON form embedded in a bundle's signed manifest).
Heavy modules (onnxruntime, numba) are imported inside :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgeguard.cli._common import (
    add_calibration_args,
    add_input_limit_arg,
    calibration_options,
    input_limits,
    print_calibration_report,
    warn_image_folder,
)

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``calibrate`` subcommand."""
    p = subparsers.add_parser(
        "calibrate",
        help="derive an input-sanity profile from calibration data",
        description=(
            "Run MODEL over calibration data, record the distribution of every sanity "
            "statistic and write the acceptance envelope and OOD thresholds as JSON."
        ),
    )
    p.add_argument("model", type=Path, metavar="MODEL.onnx", help="ONNX model file")
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DATA",
        help=".npz (arrays named after the inputs), .npy, or a folder of images",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="PROFILE.json",
        help="where to write the profile (atomically)",
    )
    p.add_argument(
        "--impl",
        default="auto",
        choices=["auto", "numpy", "numba", "numba-cuda", "cuda-cpp"],
        help="statistics implementation (default: auto = numba CPU)",
    )
    add_calibration_args(p)
    p.add_argument("--limit", type=int, default=None, help="use at most this many frames")
    add_input_limit_arg(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of a table")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.epilog = (
        "example: edgeguard calibrate det.onnx --data frames.npz -o profile.json; then "
        "edgeguard build det.onnx --calibration profile.json ... (or give the data to build)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Calibrate and write the profile; returns the exit code."""
    from edgeguard.backends.onnxruntime import OnnxRuntimeBackend
    from edgeguard.errors import UsageError
    from edgeguard.fsutil import atomic_write
    from edgeguard.packaging.calibrate import calibrate_with_report, load_calibration_data

    model_path: Path = args.model
    if not model_path.is_file():
        raise UsageError(f"model file {str(model_path)!r} does not exist")
    if args.limit is not None and args.limit < 2:
        raise UsageError("--limit must be at least 2")
    out_dir = args.output.parent if str(args.output.parent) else Path(".")
    if not out_dir.is_dir():
        raise UsageError(f"output directory {str(out_dir)!r} does not exist")
    options = calibration_options(args, limit=args.limit)
    model = model_path.read_bytes()
    from edgeguard.packaging.onnx_checks import check_onnx_model

    check_onnx_model(model, source=str(model_path))  # not a model: exit 3, as for build
    with OnnxRuntimeBackend.from_bytes(model) as backend:
        specs = backend.inputs()
    warn_image_folder(args.data)
    data = load_calibration_data(args.data, specs, limit=args.limit, limits=input_limits(args))
    profile, report = calibrate_with_report(
        model,
        data,
        **options.arguments(specs),
        impl=args.impl,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    doc = profile.to_dict()
    atomic_write(args.output, (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode())
    if args.json:
        print(
            json.dumps(
                {
                    "profile": str(args.output),
                    "samples": profile.calibration.samples,
                    "inputs": [i.name for i in profile.inputs],
                    "unchecked": list(profile.unchecked),
                    "ood": [o.to_dict() for o in profile.ood],
                    "report": report.to_dict(),
                },
                allow_nan=False,
            )
        )
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sanity profile -> {args.output}")
    for col in ("input", "statistic", "channel", "REJECT low", "WARN band", "REJECT high"):
        table.add_column(col)
    for inp in profile.inputs:
        for lim in inp.limits:
            for c in range(inp.channels):
                table.add_row(
                    inp.name,
                    lim.stat,
                    str(c),
                    f"{lim.reject_low[c]:.4g}",
                    f"[{lim.warn_low[c]:.4g}, {lim.warn_high[c]:.4g}]",
                    f"{lim.reject_high[c]:.4g}",
                )
    console = Console()
    console.print(table)
    print_calibration_report(report, file=sys.stdout)
    for o in profile.ood:
        console.print(
            f"OOD {o.output}: MSP >= {o.msp_min:.4g}, energy <= {o.energy_max:.4g} "
            f"(target false-alarm {profile.target_false_alarm})"
        )
    console.print(
        f"{profile.calibration.samples} calibration frames, impl "
        f"{profile.calibration.impl}, model sha256 {profile.calibration.model_sha256}"
    )
    return 0

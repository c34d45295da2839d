"""``edgeguard selftest``: exercise the device path on this host and report what ran."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edgeguard.cli._common import emit_json


def register(sub: Any) -> None:
    """Add the ``selftest`` parser."""
    p = sub.add_parser(
        "selftest",
        help="exercise the device path on this host (GPU parts on a Jetson) and report",
        description=(
            "Run the device path's parts on this host against their references: ONNX "
            "Runtime on the example model, the sanity kernels against the golden vectors "
            "(Numba CPU, the CUDA C++ kernel's host harness, the CUDA kernel on the GPU), "
            "the sealed engine cache (compile, seal, reload), a sandboxed worker, and on a "
            "GPU host a TensorRT engine built from a recipe, compared with ONNX Runtime, "
            "sealed, reloaded and run in a sandboxed GPU worker. Parts this host cannot run "
            "(no GPU, no TensorRT) are reported as 'not run' with the reason, and the "
            "command still exits 0; a part that ran and failed exits 15. Paste the --json "
            "report into a bug report."
        ),
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--discover-seccomp",
        action="store_true",
        help=(
            "also run a worker whose syscalls outside the sandbox allowlist are recorded, "
            "not killed, and list them (for a Jetson owner to report the GPU path's real list)"
        ),
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the checks, print the report, exit 15 when a check that ran failed."""
    from edgeguard.errors import SelftestFailedError
    from edgeguard.selftest import CHECKS, DISCOVERY_CHECKS, run_selftest

    checks = list(CHECKS) + (list(DISCOVERY_CHECKS) if args.discover_seccomp else [])
    if args.json:
        report = run_selftest(checks=checks)
        emit_json(report.to_dict())
    else:
        from rich.console import Console

        console = Console(stderr=True)
        with console.status("selftest") as status:
            report = run_selftest(
                checks=checks, progress=lambda name: status.update(f"selftest: {name}")
            )
        _print(report)
    failed = report.failed
    if failed:
        exc = SelftestFailedError(
            f"{len(failed)} selftest check(s) failed: {', '.join(c.name for c in failed)}",
            hint="the report above says what each compared; please send it with a bug report",
        )
        exc.reported_as_json = True
        raise exc
    return 0


def _print(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    host = report.host
    console = Console()
    where = host.get("jetson_model") or f"{host.get('machine')} ({host.get('cpu')})"
    t = Table(title=f"edgeguard {report.edgeguard} selftest on {where}")
    for col in ("check", "area", "status", "time", "detail"):
        t.add_column(col, overflow="fold")
    styles = {"passed": "green", "failed": "bold red", "not run": "yellow"}
    for c in report.checks:
        t.add_row(
            c.name,
            c.area,
            f"[{styles[c.status]}]{c.status}[/]",
            f"{c.seconds:.2f} s",
            c.detail,
        )
    console.print(t)
    libs = ", ".join(
        f"{k} {host[k] or 'missing'}" for k in ("onnxruntime", "numba", "tensorrt", "pycuda")
    )
    console.print(f"host: {host.get('machine')}, Linux {host.get('kernel')}; {libs}")
    if host.get("l4t_release"):
        console.print(f"L4T: {host['l4t_release']}")
    counts = report.counts()
    print(
        f"{counts['passed']} passed, {counts['failed']} failed, {counts['not run']} not run "
        "(not run: this host lacks what the check needs; see the detail)",
        file=sys.stdout,
    )

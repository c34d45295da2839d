"""``edgeguard devices``: list and show device profiles (CLI layer).

``edgeguard devices list [--json]`` prints a table (id, name, sm, DLA cores,
memory, JetPack / CUDA / TensorRT); ``edgeguard devices show NAME [--json]``
prints one profile with its file digest. ``--json`` writes machine-readable JSON
to stdout instead.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``devices`` command to the top-level subparsers."""
    parser = subparsers.add_parser(
        "devices",
        help="list and show device profiles",
        description="List the device profiles edgeguard knows, or show one in full.",
    )
    sub = parser.add_subparsers(dest="devices_command", metavar="ACTION")
    sub.required = True
    p_list = sub.add_parser("list", help="table of all device profiles")
    p_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_show = sub.add_parser("show", help="one device profile in full")
    p_show.add_argument("name", metavar="NAME", help="profile id, for example jetson-orin-nx")
    p_show.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``devices list`` or ``devices show``; returns the exit code."""
    from edgeguard import devices

    if args.devices_command == "list":
        profiles = [devices.load_profile(n) for n in devices.list_profiles()]
        if args.json:
            print(json.dumps([p.to_dict() for p in profiles], indent=2))
        else:
            _table(profiles)
        return 0
    profile = devices.load_profile(args.name)
    info = {**profile.to_dict(), "digest": devices.profile_digest(args.name)}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _show(info)
    return 0


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _mem(gb: float) -> str:
    return f"{gb:g} GB"


def _table(profiles: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="edgeguard device profiles")
    table.add_column("id", no_wrap=True)
    table.add_column("name", ratio=1)
    for col in ("sm", "DLA", "memory"):
        table.add_column(col, justify="right", no_wrap=True)
    for col in ("JetPack", "CUDA", "TensorRT"):
        table.add_column(col, no_wrap=True)
    for p in profiles:
        table.add_row(
            p.id,
            p.name.removeprefix("NVIDIA "),
            _dash(p.gpu.sm if p.gpu else None),
            str(p.dla_cores),
            _mem(p.memory_gb),
            _dash(p.software.jetpack),
            _dash(p.software.cuda),
            _dash(p.software.tensorrt),
        )
    Console(soft_wrap=False).print(table)


def _show(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{info['id']}: {info['name']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    gpu = info["gpu"]
    bandwidth = info["memory_bandwidth_gbps"]
    rows = [
        ("CPU", f"{info['cpu']} ({', '.join(info['cpu_arch'])})"),
        (
            "GPU",
            "none"
            if gpu is None
            else f"{gpu['architecture']}, compute capability {gpu['compute_capability']} "
            f"(sm_{gpu['sm']}), {gpu['cuda_cores']} CUDA cores",
        ),
        ("DLA cores", str(info["dla_cores"])),
        (
            "memory",
            _mem(info["memory_gb"]) + ("" if bandwidth is None else f", {bandwidth:g} GB/s"),
        ),
        ("JetPack", _dash(info["software"]["jetpack"])),
        ("CUDA", _dash(info["software"]["cuda"])),
        ("TensorRT", _dash(info["software"]["tensorrt"])),
        ("precisions", ", ".join(info["precisions"])),
        ("DLA precisions", ", ".join(info["dla_precisions"]) or "-"),
        ("backends", ", ".join(info["backends"])),
        ("notes", info["notes"]),
        ("digest", info["digest"]),
    ]
    for field, value in rows:
        table.add_row(field, value)
    Console().print(table)

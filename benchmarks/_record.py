"""The JSON record every benchmark writes (shared by ``benchmarks/bench_*.py``).

A record is one run of one benchmark::

    {"benchmark": "guarded_real", "date": "2026-12-02T10:28:54Z", "commit": "f571168",
     "host": {"machine": "x86_64", "cpus": {"count": 2, "affinity": [0, 1]},
              "python": "3.11.7", "onnxruntime": "1.32.0", "load_avg_1m": 1.4, ...},
     "params": {...}, "results": {...}}

Records go to ``benchmarks/results/`` by default (``--json-out PATH`` elsewhere); that
folder is committed: it is the history that ``benchmarks/results.py`` turns into
``benchmarks/RESULTS.md``. Records made from something other than a run of this
checkout carry ``"source"`` (``"docs history"``, ``"baseline run"``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_DIR",
    "add_json_out",
    "git_commit",
    "host_info",
    "machine_activity",
    "make_record",
    "utc_now",
    "write_record",
]

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


def _machine_snapshot() -> tuple[float, float, float, float] | None:
    """(wall s, busy CPU s of the whole machine, steal s, CPU s of this process and its
    reaped children), or None where /proc/stat is missing."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    return time.monotonic(), (user + nice + system + irq + softirq) / tick, steal / tick, own


#: Taken when a benchmark imports this module, before it measures anything.
_START = _machine_snapshot()
_STARTED_AT = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def machine_activity() -> dict[str, float] | None:
    """What the machine did besides this benchmark since it started: the mean number of
    cores busy with other processes, and the share of CPU time the hypervisor stole."""
    end = _machine_snapshot()
    if _START is None or end is None or end[0] <= _START[0]:
        return None
    wall = end[0] - _START[0]
    cpus = os.cpu_count() or 1
    others = (end[1] - _START[1]) - (end[3] - _START[3])
    return {
        "seconds": round(wall, 1),
        "other_busy_cores": round(max(0.0, others) / wall, 2),
        "steal_pct": round(100 * (end[2] - _START[2]) / (wall * cpus), 1),
    }


def utc_now() -> dt.datetime:
    """The current time in UTC, to the second."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def iso(t: dt.datetime) -> str:
    """ISO-8601 UTC with a ``Z``: ``2026-12-02T10:28:54Z``."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def add_json_out(parser: argparse.ArgumentParser) -> None:
    """Add ``--json-out PATH`` (default: ``benchmarks/results/<name>-<UTC date-time>.json``)."""
    parser.add_argument(
        "--json-out",
        type=Path,
        default=None,
        metavar="PATH",
        help="where to write the run's JSON record "
        "(default: benchmarks/results/<benchmark>-<UTC date-time>.json)",
    )


def git_commit(repo: Path = BENCH_DIR) -> str | None:
    """The short hash of the checkout's HEAD, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def host_info(libs: Iterable[str] = ()) -> dict[str, Any]:
    """The machine a run measured: architecture, CPUs (count and this process's
    affinity), Python, the versions of ``libs`` (distribution names), the load average
    at the end and what other processes did during the run (:func:`machine_activity`)."""
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    host: dict[str, Any] = {
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpus": {"count": os.cpu_count(), "affinity": affinity},
        "python": platform.python_version(),
    }
    for lib in libs:
        host[lib] = _version(lib)
    if hasattr(os, "getloadavg"):
        host["load_avg_1m"] = round(os.getloadavg()[0], 2)
    activity = machine_activity()
    if activity is not None:
        host["during_run"] = activity
    return host


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _plain(value: Any) -> Any:
    """JSON-ready: tuples to lists, NumPy scalars to Python, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # NumPy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def make_record(
    name: str,
    *,
    params: Mapping[str, Any],
    results: Mapping[str, Any],
    libs: Iterable[str] = (),
    date: dt.datetime | None = None,
    commit: str | None = None,
    host: Mapping[str, Any] | None = None,
    source: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """One run's record. ``date`` defaults to when the benchmark started, ``commit`` and
    ``host`` to this checkout and machine."""
    record: dict[str, Any] = {
        "benchmark": name,
        "date": iso(date or _STARTED_AT),
        "commit": commit if commit is not None else git_commit(),
        "host": dict(host) if host is not None else host_info(libs),
        "params": params,
        "results": results,
    }
    if source is not None:
        record["source"] = source
    if note is not None:
        record["note"] = note
    return _plain(record)  # type: ignore[no-any-return]


def default_path(record: Mapping[str, Any], suffix: str = "") -> Path:
    """``benchmarks/results/<benchmark>-<UTC date-time><suffix>.json``."""
    stamp = str(record["date"]).replace("-", "").replace(":", "")
    return RESULTS_DIR / f"{record['benchmark']}-{stamp}{suffix}.json"


def write_record(record: Mapping[str, Any], path: Path | None = None) -> Path:
    """Write ``record`` atomically (temp file, fsync, rename) and say where on stderr."""
    target = Path(path) if path is not None else default_path(record)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=1, sort_keys=True, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".rec-", suffix=".json", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # a record is public history, not a secret
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"record written to {target}", file=sys.stderr)
    return target


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/_record.py wrap NAME [options] -- COMMAND...``: run a command that
    prints a benchmark's figures as JSON on stdout (for example an older checkout's
    ``bench_guarded_real.py --json``) and write them as a record of this machine."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wrap", help="record the JSON stdout of a command")
    w.add_argument("name", help="benchmark name, e.g. guarded_real")
    w.add_argument("--commit", help="the commit the command measured (default: this checkout)")
    w.add_argument("--source", help='where the figures come from, e.g. "baseline run"')
    w.add_argument("--note", help="one line on what was measured")
    w.add_argument("--params", default="{}", help="the run's parameters, as a JSON object")
    w.add_argument("--libs", default="onnxruntime,numba,numpy", help="versions to record")
    w.add_argument("--out", type=Path, help="record path (default: benchmarks/results/)")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args, command = ap.parse_args(argv[:cut]), argv[cut + 1 :]
    if not command:
        ap.error("give the command after --")
    run = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    text = run.stdout
    results = json.loads(text[text.index("{") :])  # anything printed before the JSON
    record = make_record(
        args.name,
        params=json.loads(args.params),
        results=results,
        libs=[lib for lib in args.libs.split(",") if lib],
        commit=args.commit,
        source=args.source,
        note=args.note,
    )
    suffix = "-" + args.source.replace(" ", "-") if args.source else ""
    write_record(record, args.out or default_path(record, suffix))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

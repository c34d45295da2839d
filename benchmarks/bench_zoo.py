"""Benchmark: every zoo model with default settings, the figures of docs/models.md.

For each third-party model of the zoo (and the digits models), as a new user would
run it with no option beyond the keys:

* calibration: ``calibrate_with_report`` on ``--cal`` frames (default 200) of the
  calibration images at the model's default frame size; wall time and the
  cross-validated clean false-reject estimate (target: 200 frames of 640x640, the
  PP-OCRv4 detector, in under 30 s here);
* build: ``api.build_bundle`` with that profile, the deadline measured (``auto``);
* the guard on frames of images the calibration never saw, through the device
  session's own checks (``DeviceSession.check_inputs``, the path ``infer`` takes
  first): clean false rejects and the detection rate of each corruption class, each
  with its 95 % Wilson interval;
* latency: ``DeviceSession.infer`` over clean frames, sandboxed members (the default);
  p50 and p99 against the signed deadline.

    python benchmarks/bench_zoo.py [--models a,b] [--cal 200] [--held 100] [--frames 30]
        [--json] [--json-out PATH]

Prints one table, writes a JSON record (``benchmarks/_record.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_out, make_record, write_record

CAL_TARGET_S = 30.0


def _one(name: str, args: argparse.Namespace, keys: Any, work: Path) -> dict[str, Any]:
    from edgeguard import api
    from edgeguard.bundle.verify import TrustStore
    from edgeguard.data import zoo
    from edgeguard.fieldtest.quality import GATED, guard_quality
    from edgeguard.packaging.calibrate import calibrate_with_report

    signer, device = keys
    entry = zoo.info(name)
    model = zoo.model_path(name)
    cal = zoo.frames(name, args.cal)
    held = zoo.held_out(name, args.held)
    frame_shape = list(next(iter(cal.values())).shape[1:])

    t0 = time.perf_counter()
    profile, report = calibrate_with_report(model.read_bytes(), cal, progress=False)
    cal_s = time.perf_counter() - t0
    prof_path = work / f"{name}.profile.json"
    prof_path.write_text(json.dumps(profile.to_dict()))

    bundle = work / f"{name}.egb"
    t0 = time.perf_counter()
    api.build_bundle(
        [model],
        out=bundle,
        signer=signer,
        recipients=[device.public],
        profiles=["generic-cpu"],
        version=1,
        calibration=prof_path,
    )
    build_s = time.perf_counter() - t0

    with api.open_session(
        bundle,
        trust=TrustStore.of([signer.public]),
        device_key=device,
        state_dir=work / f"{name}.state",
    ) as session:
        quality = guard_quality(
            session.check_inputs,
            held[entry.input_name],
            input_name=entry.input_name,
            layout=entry.layout,
        )
        x = held[entry.input_name]
        lat = []
        for i in range(min(args.frames, len(x))):
            try:
                res = session.infer({entry.input_name: x[i : i + 1]})
            except Exception:  # a clean frame the guard refused: not a latency sample
                continue
            lat.append(res.latency_ms["total"])
        deadline = session.policy.deadline_ms

    clean = quality["clean"]
    return {
        "task": entry.task,
        "frame_shape": frame_shape,
        "calibration": {
            "frames": args.cal,
            "seconds": round(cal_s, 2),
            "false_reject_cv": {
                "rejected": report.false_reject[0],
                "frames": report.false_reject[1],
                "ci95": list(report.interval),
            },
            "warnings": list(report.warnings),
        },
        "build_s": round(build_s, 2),
        "clean_false_reject": clean.to_dict(),
        "detection": {k: v.to_dict() for k, v in quality.items() if k != "clean"},
        "min_gated_detection": min(quality[k].rate for k in GATED if k in quality),
        "latency_ms": {
            "frames": len(lat),
            "p50": float(np.percentile(lat, 50)) if lat else None,
            "p99": float(np.percentile(lat, 99)) if lat else None,
        },
        "deadline_ms": deadline,
    }


def _table(models: dict[str, dict[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title="Zoo models with default settings (generic-cpu, ONNX Runtime, sandboxed)")
    for h in (
        "model",
        "frame",
        "calibrate s",
        "CV false rejects",
        "held-out false rejects [95 %]",
        "gated corruptions (min)",
        "channel swap",
        "p50 / p99 ms",
        "deadline ms",
    ):
        t.add_column(h, justify="left" if h == "model" else "right")
    for name, r in models.items():
        cv = r["calibration"]["false_reject_cv"]
        fr = r["clean_false_reject"]
        swap = r["detection"].get("channel_swap")
        lat = r["latency_ms"]
        t.add_row(
            name,
            "x".join(str(d) for d in r["frame_shape"]),
            f"{r['calibration']['seconds']:.1f} ({r['calibration']['frames']})",
            f"{cv['rejected']}/{cv['frames']}",
            f"{fr['rejected']}/{fr['frames']} [{fr['ci95'][0]:.1%}, {fr['ci95'][1]:.1%}]",
            f"{r['min_gated_detection']:.0%}",
            "-" if swap is None else f"{swap['rate']:.0%}",
            "-" if lat["p50"] is None else f"{lat['p50']:.1f} / {lat['p99']:.1f}",
            f"{r['deadline_ms']:g}",
        )
    return t


def main(argv: list[str] | None = None) -> int:
    from edgeguard.data import zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(zoo.NAMES), help="comma-separated zoo names")
    ap.add_argument("--cal", type=int, default=200, help="calibration frames (default 200)")
    ap.add_argument("--held", type=int, default=100, help="held-out frames (default 100)")
    ap.add_argument("--frames", type=int, default=30, help="frames timed per model")
    ap.add_argument("--json", action="store_true", help="print the record as JSON")
    add_json_out(ap)
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]

    from rich.console import Console
    from rich.progress import Progress

    from edgeguard.crypto.keys import DeviceKey, SignerKey

    keys = (SignerKey.generate(), DeviceKey.generate("bench"))
    console = Console(stderr=True)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as td, Progress(console=console) as bar:
        task = bar.add_task("zoo models", total=len(names))
        for name in names:
            bar.update(task, description=name)
            results[name] = _one(name, args, keys, Path(td))
            bar.advance(task)
    det = results.get("ppocr_det")
    summary: dict[str, Any] = {"models": results}
    if det is not None:
        summary["ppocr_det_calibration_s"] = det["calibration"]["seconds"]
        summary["ppocr_det_calibration_target_s"] = CAL_TARGET_S
    record = make_record(
        "zoo",
        params={"models": names, "cal": args.cal, "held": args.held, "frames": args.frames},
        results=summary,
        libs=("onnxruntime", "numba", "numpy"),
    )
    write_record(record, args.json_out)
    if args.json:
        print(json.dumps(record, indent=1))
    else:
        console_out = Console()
        console_out.width = max(console_out.width, 140)  # a table people read whole
        console_out.print(_table(results))
        if det is not None:
            print(
                f"calibration of {args.cal} frames of {det['frame_shape']} (ppocr_det): "
                f"{det['calibration']['seconds']:.1f} s (target < {CAL_TARGET_S:g} s)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

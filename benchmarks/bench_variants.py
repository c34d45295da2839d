"""Benchmark: deriving and measuring ``--variants fp32,fp16,int8`` on real models.

For each model (default: PaddleOCR's PP-OCRv4 text detector, 640x640 frames of the
zoo), it times what ``edgeguard build --variants fp32,fp16,int8`` does with the
calibration frames: run fp32, derive fp16 and int8, run both and measure their
agreement with fp32 (:mod:`edgeguard.packaging.variants`). It prints each variant's
metric, the default threshold, whether the build would ship it, its size next to
fp32's, and the time of the step (target: under 60 s for the detector on 20-60 frames
on this 2-core host).

With ``--baseline`` it also measures the recipe builds used before variants were
measured (float16 conversion of the raw graph; int8 QDQ MinMax on the raw graph,
without reduce_range), for the before/after comparison in docs/variants.md.

Every variant is measured whatever its value (``min_agreement=0``); the default
thresholds decide the "ships" column, as ``build`` would.

    python benchmarks/bench_variants.py [--models ppocr_det,orientation] [--frames 20]
        [--baseline] [--json-out PATH]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_out, make_record, write_record


def _baseline(model: bytes, frames: dict[str, np.ndarray], task: str) -> dict[str, Any]:
    """The recipes before this change: raw-graph float16, raw-graph int8 MinMax."""
    import onnx
    from onnxruntime import quantization as q
    from onnxruntime.transformers import float16

    from edgeguard.packaging.agreement import measure
    from edgeguard.packaging.variants import _predict, _Reader

    ref = _predict(model, frames)
    out: dict[str, Any] = {}
    t = time.perf_counter()
    fp16 = float16.convert_float_to_float16(
        onnx.load_model_from_string(model), keep_io_types=True
    ).SerializeToString()
    a = measure(task, ref, _predict(fp16, frames))
    out["fp16"] = _row(a, len(fp16), len(model), time.perf_counter() - t)
    root = logging.getLogger()
    root.setLevel(logging.ERROR)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        src, dst = Path(td) / "m.onnx", Path(td) / "q.onnx"
        src.write_bytes(model)
        q.quantize_static(
            str(src),
            str(dst),
            _Reader(frames),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            activation_type=q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=q.CalibrationMethod.MinMax,
        )
        int8 = dst.read_bytes()
    try:
        a = measure(task, ref, _predict(int8, frames))
        out["int8"] = _row(a, len(int8), len(model), time.perf_counter() - t)
    except Exception as exc:  # the raw graph may not quantise into a loadable model
        out["int8"] = {"error": str(exc)[:200]}
    return out


def _row(a: Any, size: int, ref_size: int, seconds: float) -> dict[str, Any]:
    from edgeguard.packaging.agreement import DEFAULT_THRESHOLDS

    threshold = DEFAULT_THRESHOLDS[a.metric.name]
    return {
        "task": a.task,
        "metric": a.metric.name,
        "value": round(a.metric.value, 4),
        "default_threshold": threshold,
        "ships": a.metric.meets(threshold),
        "extra": {m.name: round(m.value, 4) for m in a.extra},
        "size": size,
        "size_vs_fp32": round(size / ref_size, 3),
        "seconds": round(seconds, 1),
        "frames": a.frames,
    }


def bench(name: str, n: int, baseline: bool) -> dict[str, Any]:
    from edgeguard.data import zoo
    from edgeguard.packaging.variants import VariantChecks, make_variants

    model = zoo.model_bytes(name)
    frames = zoo.frames(name, n)
    steps: list[tuple[float, int, int]] = []
    start = time.perf_counter()
    variants = make_variants(
        model,
        ["fp32", "fp16", "int8"],
        calibration=frames,
        checks=VariantChecks(
            min_agreement=0.0,
            progress=lambda _s, d, t: steps.append((time.perf_counter() - start, d, t)),
        ),
        name=name,
    )
    total = time.perf_counter() - start
    rows: dict[str, Any] = {"fp32": {"size": len(model)}}
    for v in variants[1:]:
        assert v.agreement is not None
        rows[v.kind] = _row(v.agreement, len(v.model), len(model), v.seconds)
        rows[v.kind]["kept_fp32"] = len(v.kept_fp32)
    result: dict[str, Any] = {"seconds": round(total, 1), "frames": n, "variants": rows}
    if baseline:
        task = variants[1].agreement.task if variants[1].agreement else "regression"
        result["baseline"] = _baseline(model, frames, task)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="ppocr_det", help="zoo names, comma-separated")
    ap.add_argument("--frames", type=int, default=20, help="calibration frames (default 20)")
    ap.add_argument("--baseline", action="store_true", help="also measure the old recipes")
    add_json_out(ap)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    for name in args.models.split(","):
        r = bench(name, args.frames, args.baseline)
        results[name] = r
        measured = next((v["frames"] for v in r["variants"].values() if "frames" in v), r["frames"])
        print(
            f"{name}: --variants fp32,fp16,int8 in {r['seconds']} s from {r['frames']} "
            f"calibration frames (measured on {measured})"
        )
        print(f"  fp32  size {r['variants']['fp32']['size']:>9}")
        for kind in ("fp16", "int8"):
            v = r["variants"][kind]
            print(
                f"  {kind}  size {v['size']:>9} ({v['size_vs_fp32']:.0%})  {v['metric']} "
                f"{v['value']:.4f} (default >= {v['default_threshold']:g}: "
                f"{'ships' if v['ships'] else 'refused'})  {v['extra']}  {v['seconds']} s"
                + (f"  {v['kept_fp32']} node(s) kept in fp32" if v["kept_fp32"] else "")
            )
        for kind, v in r.get("baseline", {}).items():
            if "error" in v:
                print(f"  before: {kind} {v['error']}")
            else:
                print(
                    f"  before: {kind} size {v['size']:>9} ({v['size_vs_fp32']:.0%})  "
                    f"{v['metric']} {v['value']:.4f}  {v['extra']}"
                )
    write_record(
        make_record(
            "variants",
            params={"models": args.models, "frames": args.frames, "baseline": args.baseline},
            results=results,
            libs=["onnxruntime", "onnx", "numpy"],
        ),
        args.json_out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

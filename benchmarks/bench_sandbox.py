"""Benchmark of sandboxed member workers: per-frame overhead, transport cost, restart time.

1. Per-frame overhead of running a member in a locked-down worker process
   (:class:`~edgeguard.runtime.sandbox.executor.ProcessMemberExecutor`) instead of
   in-process (:class:`~edgeguard.backends.onnxruntime.OnnxRuntimeBackend`), on a
   640x640x3 float32 input, interleaved frame by frame. Targets: median overhead
   <= 1 ms and <= 5 % of the model's inference time.
2. The pure transport cost: the same comparison on an ``Identity`` model with the same
   input (the 4.9 MB output also travels back through shared memory: the worst case).
3. Worker restart: time from killing the worker (as ``abandon`` does for a hung member)
   until it serves again (spawn, model load from the sealed memfd, warm-up, lockdown).

Real model ("ppocr_det"): PaddleOCR's PP-OCRv4 text detector (benchmarks/_real_models.py) on
640x640 crops of real photographs; the headline figure. Synthetic models ("conv640"): an ONNX
graph built here with onnx.helper (random weights; the cost curve only): Conv 3->16 3x3 stride 2,
ReLU, Conv 16->32 3x3 stride 2, ReLU, Conv 32->32 3x3 stride 2, ReLU, GlobalAveragePool,
Flatten, Gemm 32->10; input ``image`` [1,3,640,640] float32 (640x640x3 in NCHW);
"conv640x4" is the same graph with 4x the channels (closer to a small detector's cost).
Both sides use ONNX Runtime's CPU provider with one intra-op thread.

The members are model bytes handed to the executor directly, not bundles: this measures
the executor and its transport; the device session's cost on a real bundle, sandboxed
and in threads, is measured by ``benchmarks/bench_guarded_real.py``.

Run: ``.venv/bin/python benchmarks/bench_sandbox.py [--frames 200] [--json out.json]
[--json-out PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgeguard.backends import load_backend
from edgeguard.runtime.sandbox import SandboxPolicy, probe_host
from edgeguard.runtime.sandbox.executor import ProcessMemberExecutor, WorkerSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _real_models import det_model, photo_frames
from _record import add_json_out, make_record, write_record

SHAPE = (1, 3, 640, 640)


def conv640(width: int = 1) -> bytes:
    """The benchmark model; ``width`` multiplies the channel counts (1: ~3 ms, 4: ~30 ms)."""
    rng = np.random.default_rng(0)
    c1, c2 = 16 * width, 32 * width
    inits = []

    def w(name: str, shape: tuple[int, ...]) -> str:
        inits.append(
            numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)
        )
        return name

    nodes = [
        helper.make_node(
            "Conv", ["image", w("w1", (c1, 3, 3, 3))], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node(
            "Conv", ["r1", w("w2", (c2, c1, 3, 3))], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node(
            "Conv", ["r2", w("w3", (c2, c2, 3, 3))], ["c3"], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", w("wf", (10, c2)), w("bf", (10,))], ["logits"], transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "conv640",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m.SerializeToString()


def identity640() -> bytes:
    g = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["out"])],
        "identity640",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(SHAPE))],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m.SerializeToString()


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def compare(
    name: str,
    model: bytes,
    frames: int,
    ex: ProcessMemberExecutor,
    *,
    input_name: str = "image",
    xs: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    ref = load_backend("onnx", model, intra_op_threads=1, inter_op_threads=1)
    if xs is None:
        rng = np.random.default_rng(1)
        xs = [rng.random(SHAPE, dtype=np.float32) for _ in range(8)]
    for x in xs[:3]:  # warm both sides
        ref.run({input_name: x})
        c = ex.submit(name, {input_name: x})
        c.wait(60)
        c.result()
    inproc, sandboxed, diffs, worker = [], [], [], []
    for i in range(frames):
        x = xs[i % len(xs)]
        t = time.perf_counter_ns()
        a = ref.run({input_name: x})
        t1 = time.perf_counter_ns()
        c = ex.submit(name, {input_name: x})
        c.wait(60)
        b = c.result()
        t2 = time.perf_counter_ns()
        worker.append((c.run_ns or 0) / 1e6)
        if i < len(xs):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])  # results match exactly
        inproc.append((t1 - t) / 1e6)
        sandboxed.append((t2 - t1) / 1e6)
        diffs.append((t2 - t1 - (t1 - t)) / 1e6)
    med_in = statistics.median(inproc)
    med_sb = statistics.median(sandboxed)
    return {
        "model": name,
        "frames": frames,
        "inprocess_ms": {"p50": med_in, "p90": pct(inproc, 90)},
        "sandboxed_ms": {"p50": med_sb, "p90": pct(sandboxed, 90)},
        "worker_side_ms": {"p50": statistics.median(worker)},
        "overhead_ms_median": med_sb - med_in,
        "overhead_ms_median_of_paired_diffs": statistics.median(diffs),
        "overhead_ratio": (med_sb - med_in) / med_in,
    }


def restart(ex: ProcessMemberExecutor, name: str, rounds: int) -> dict[str, Any]:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        ex.abandon(name)
        if not ex.wait_ready(name, 60):
            raise RuntimeError("worker did not come back")
        times.append((time.perf_counter() - t) * 1e3)
    return {
        "rounds": rounds,
        "restart_ms": {"median": statistics.median(times), "min": min(times), "max": max(times)},
        "backoff_ms_included": 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    add_json_out(ap)
    args = ap.parse_args()
    caps = probe_host()
    det = det_model()
    photos = [photo_frames(1, seed=10 + i) for i in range(8)]
    specs = {
        "ppocr_det": WorkerSpec(det),
        "conv640": WorkerSpec(conv640()),
        "conv640x4": WorkerSpec(conv640(4)),
        "identity640": WorkerSpec(identity640()),
    }
    with ProcessMemberExecutor(
        specs, policy=SandboxPolicy(), caps=caps, restart_backoff_s=0.0
    ) as ex:
        layers = dict(ex.status("conv640").layers)
        res = {
            "host": {"cpus": os.cpu_count(), "kernel": caps.kernel, "loadavg": os.getloadavg()},
            "layers": layers,
            "real_model": compare(
                "ppocr_det", det, max(20, args.frames // 4), ex, input_name="x", xs=photos
            ),
            "synthetic_small": compare("conv640", conv640(), args.frames, ex),
            "larger_model": compare("conv640x4", conv640(4), max(20, args.frames // 4), ex),
            "transport_only": compare("identity640", identity640(), args.frames, ex),
            "restart": restart(ex, "conv640", args.restarts),
        }
    print(json.dumps(res, indent=2))
    r = res["real_model"]
    print(
        f"\nPP-OCRv4 det (real): in-process p50 {r['inprocess_ms']['p50']:.2f} ms, sandboxed p50 "
        f"{r['sandboxed_ms']['p50']:.2f} ms, overhead {r['overhead_ms_median']:.3f} ms "
        f"({100 * r['overhead_ratio']:.1f} %); targets <= 1 ms and <= 5 %: "
        f"{'MET' if r['overhead_ms_median'] <= 1 and r['overhead_ratio'] <= 0.05 else 'MISSED'}"
    )
    r = res["synthetic_small"]
    print(
        f"conv640 (synthetic): in-process p50 {r['inprocess_ms']['p50']:.2f} ms, sandboxed p50 "
        f"{r['sandboxed_ms']['p50']:.2f} ms, overhead {r['overhead_ms_median']:.3f} ms "
        f"({100 * r['overhead_ratio']:.1f} %); targets <= 1 ms and <= 5 %: "
        f"{'MET' if r['overhead_ms_median'] <= 1 and r['overhead_ratio'] <= 0.05 else 'MISSED'}"
    )
    r = res["larger_model"]
    print(
        f"conv640x4: in-process p50 {r['inprocess_ms']['p50']:.2f} ms, sandboxed p50 "
        f"{r['sandboxed_ms']['p50']:.2f} ms, overhead {r['overhead_ms_median']:.3f} ms "
        f"({100 * r['overhead_ratio']:.1f} %)"
    )
    r = res["transport_only"]
    print(f"identity640 (transport only): overhead {r['overhead_ms_median']:.3f} ms")
    print(f"restart to serving: median {res['restart']['restart_ms']['median']:.0f} ms")
    write_record(
        make_record(
            "sandbox",
            params={"frames": args.frames, "restarts": args.restarts},
            results=res,
            libs=("onnxruntime",),
        ),
        args.json_out,
    )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

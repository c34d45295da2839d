"""Benchmark: session start-up with the sealed engine cache, cold vs warm vs no cache.

For each zoo model (and the digits models), one single-model bundle; then, interleaved
round by round (the order rotating) so that a busy moment hits every mode alike,
``open_session`` until it returns (verify, decrypt, start the member, warm it up), then
closed:

* **no cache**: ``engine_cache=False`` (ONNX Runtime loads the ONNX model);
* **cold**: a fresh state directory: the member is compiled while it loads (ONNX
  Runtime writes its ORT-format model into a memfd), sealed and stored;
* **warm**: the state directory of a cold start: the sealed ORT-format model is opened
  into locked memory and loaded instead of the ONNX model.

Both isolation modes (``--isolation sandbox,threads``). Medians of ``--repeats`` rounds.
Beside it, the part the cache changes, measured alone: ONNX Runtime's session creation
(one intra-op thread) from the ONNX model, from the ONNX model while writing the ORT
format (the cold start's compile), and from the ORT-format model.

    python benchmarks/bench_engine_cache.py [--models a,b] [--repeats 5]
        [--isolation sandbox,threads] [--json-out PATH]

Prints one table with the ratios, writes a JSON record (``benchmarks/_record.py``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_out, make_record, write_record

MODES = ("none", "cold", "warm")


def _model(name: str) -> Path:
    from edgeguard import data
    from edgeguard.data import zoo

    if name.startswith("digits_"):
        return Path(data.model_path(name))
    return zoo.model_path(name)


def _start(bundle: Path, keys: Any, state: Path, isolation: str, cache: bool) -> float:
    from edgeguard import api
    from edgeguard.bundle.verify import TrustStore

    signer, device = keys
    t0 = time.perf_counter()
    session = api.open_session(
        bundle,
        trust=TrustStore.of([signer.public]),
        device_key=device,
        state_dir=state,
        isolation=isolation,
        engine_cache=cache,
        event_log=False,
    )
    took = time.perf_counter() - t0
    session.close()
    return took * 1e3


def _one(name: str, isolation: str, args: argparse.Namespace, keys: Any, work: Path) -> Any:
    from edgeguard import api

    signer, device = keys
    bundle = work / f"{name}.egb"
    if not bundle.exists():
        api.build_bundle(
            [_model(name)],
            out=bundle,
            signer=signer,
            recipients=[device.public],
            profiles=["generic-cpu"],
            version=1,
        )
    times: dict[str, list[float]] = {m: [] for m in MODES}
    warm = work / f"{name}-{isolation}-warm"
    _start(bundle, keys, warm, isolation, True)  # fills the warm state's cache
    entries = sorted((warm / "engines").glob("*.sealed"))
    if len(entries) != 1:
        raise SystemExit(f"{name} ({isolation}): the first start sealed {len(entries)} entries")
    for r in range(args.repeats):
        for mode in MODES[r % 3 :] + MODES[: r % 3]:  # no mode always first
            if mode == "warm":
                times[mode].append(_start(bundle, keys, warm, isolation, True))
                continue
            state = work / f"{name}-{isolation}-{mode}-{r}"
            times[mode].append(_start(bundle, keys, state, isolation, mode == "cold"))
            shutil.rmtree(state)
    med = {m: round(statistics.median(v), 1) for m, v in times.items()}
    return {
        "start_ms": med,
        "runs_ms": {m: [round(x, 1) for x in v] for m, v in times.items()},
        "warm_speedup": round(med["none"] / med["warm"], 2),
        "cold_over_none": round(med["cold"] / med["none"], 2),
        "sealed_bytes": entries[0].stat().st_size,
        "onnx_bytes": _model(name).stat().st_size,
    }


def _loads(name: str, repeats: int) -> dict[str, Any]:
    """Median ms of ONNX Runtime session creation: ONNX, ONNX + compile, ORT format."""
    import os

    from edgeguard.backends.onnxruntime import OnnxRuntimeBackend

    onnx = _model(name).read_bytes()
    fd = os.memfd_create("bench")
    OnnxRuntimeBackend.from_bytes(onnx, intra_op_threads=1, save_artifact_fd=fd).close()
    with open(fd, "rb", closefd=True) as f:
        ort = f.read()

    def once(kind: str) -> float:
        t0 = time.perf_counter()
        if kind == "onnx":
            b = OnnxRuntimeBackend.from_bytes(onnx, intra_op_threads=1)
        elif kind == "compile":
            out = os.memfd_create("bench")
            try:
                b = OnnxRuntimeBackend.from_bytes(onnx, intra_op_threads=1, save_artifact_fd=out)
            finally:
                os.close(out)
        else:
            b = OnnxRuntimeBackend.from_bytes(ort, intra_op_threads=1, model_format="ort")
        took = (time.perf_counter() - t0) * 1e3
        b.close()
        return took

    runs: dict[str, list[float]] = {"onnx": [], "compile": [], "ort": []}
    for r in range(repeats):
        kinds = list(runs)
        for kind in kinds[r % 3 :] + kinds[: r % 3]:
            runs[kind].append(once(kind))
    med = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    return {"load_ms": med, "load_speedup": round(med["onnx"] / med["ort"], 2)}


def main() -> int:
    from edgeguard.crypto.keys import DeviceKey, SignerKey
    from edgeguard.data import zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models",
        default="orientation,layout,yolov8n,ppocr_det,ppocr_cls,digits_mlp",
        help="comma-separated zoo names",
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--isolation", default="sandbox,threads")
    add_json_out(ap)
    args = ap.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    isolations = [i.strip() for i in args.isolation.split(",") if i.strip()]
    for n in names:
        if not n.startswith("digits_"):
            zoo.info(n)  # UsageError for an unknown name
    keys = (SignerKey.generate(), DeviceKey.generate("bench-01"))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="eg-bench-cache-") as tmp:
        work = Path(tmp)
        from edgeguard.errors import BackendError

        loads = {n: _loads(n, max(5, args.repeats)) for n in names}
        for isolation in isolations:
            for name in names:
                try:
                    results[f"{name} ({isolation})"] = _one(name, isolation, args, keys, work)
                except BackendError as exc:  # recorded, not hidden: the model does not start
                    results[f"{name} ({isolation})"] = {"error": str(exc)[:300]}
    print(
        f"{'ONNX Runtime session creation':32} {'onnx ms':>9} {'+compile':>9} "
        f"{'ort ms':>9} {'onnx/ort':>9}"
    )
    for n, r in loads.items():
        m = r["load_ms"]
        print(
            f"{n:32} {m['onnx']:9.1f} {m['compile']:9.1f} {m['ort']:9.1f} {r['load_speedup']:8.2f}x"
        )
    print()
    print(
        f"{'model (isolation)':32} {'no cache ms':>11} {'cold ms':>9} {'warm ms':>9} "
        f"{'none/warm':>9} {'cold/none':>9} {'sealed KiB':>10}"
    )
    for key, r in results.items():
        if "error" in r:
            print(f"{key:32} does not start: {r['error'][:120]}")
            continue
        s = r["start_ms"]
        print(
            f"{key:32} {s['none']:11.1f} {s['cold']:9.1f} {s['warm']:9.1f} "
            f"{r['warm_speedup']:8.2f}x {r['cold_over_none']:8.2f}x "
            f"{r['sealed_bytes'] / 1024:10.1f}"
        )
    record = make_record(
        "engine_cache",
        params={"models": names, "repeats": args.repeats, "isolation": isolations},
        results={"models": results, "loads": loads},
        libs=("onnxruntime", "cryptography"),
    )
    write_record(record, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

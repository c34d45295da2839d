"""Benchmark of the guarded runtime's overhead, concurrency and failover, side by side in one run.

1. Overhead: a single-member GuardedRuntime with input sanity checks versus plain
   ``onnxruntime`` ``session.run`` on the same session, interleaved call by call;
   median latencies and the ratio. Target: <= 3 % added.
2. Concurrency: a 2-member ensemble's wall time versus the sum of the members'
   individual times (medians). Target: <= 0.65x.
3. Failover: a member that hangs forever; the fallback answer's latency over 1000
   frames, p50/p99/max versus the deadline. Target: p99 <= deadline + 2 ms. Also the
   harsher case where the fallback model hangs too (safe default at the deadline).

Models: the shipped digits MLP (``edgeguard/data/digits_mlp.onnx``, microseconds
per call) and a larger MLP (64-1024-1024-10) trained on the same digits data with
scikit-learn inside this benchmark, converted with skl2onnx and given the same
``image`` [N,1,8,8] input. Every ONNX Runtime session uses one intra-op thread so
two members can really run side by side on a 2-core machine.

The models come as bytes, not bundles: this measures the runtime itself
(:class:`~edgeguard.runtime.guarded.GuardedRuntime` on bare sessions); the device
session's cost on a real bundle is measured by ``benchmarks/bench_guarded_real.py``.

Run: ``.venv/bin/python benchmarks/bench_runtime.py [--frames 1000] [--json out.json]
[--json-out PATH]`` (``--json`` writes the bare figures; every run also writes its record,
by default to ``benchmarks/results/``).
"""

from __future__ import annotations

import os

# Several thread pools share 2 cores here (ONNX Runtime, Numba/OpenMP in the sanity guard,
# OpenBLAS in scikit-learn): idle OpenMP/BLAS threads must not spin-wait and steal the core
# a member is running on. Set before numpy / numba are imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeguard.policy.runtime import (
    ChainStep,
    MemberSpec,
    QuarantinePolicy,
    RuntimePolicy,
    VoterKind,
    VoterSpec,
)
from edgeguard.runtime.guarded import GuardedRuntime, ResultSource

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_out, make_record, write_record

DATA = Path(__file__).resolve().parents[1] / "edgeguard" / "data"
RELEASE = threading.Event()


class OrtMember:
    """Tiny adapter: an ONNX Runtime session as a Runnable."""

    def __init__(self, model: bytes) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.sess.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.sess.run(None, dict(feeds)), strict=True))


class Hung(OrtMember):
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        RELEASE.wait()
        return {}


class NumpySanity:
    """Stand-in input/output checks (finite, range [0, 1], shape) when the
    calibrated SanityGuard is not available."""

    name = "numpy-finite-range"

    def check_inputs(self, feeds: Mapping[str, np.ndarray], prev: Any = None) -> Any:
        x = feeds["image"]
        ok = x.shape[1:] == (1, 8, 8) and bool(np.isfinite(x).all()) and x.min() >= 0
        return "PASS" if ok and x.max() <= 1 else "REJECT"

    def check_outputs(self, outputs: Mapping[str, np.ndarray]) -> Any:
        return "PASS"


def make_sanity(mlp: bytes, calib: np.ndarray) -> Any:
    try:
        from edgeguard.guard.sanity.check import SanityGuard
        from edgeguard.packaging.calibrate import calibrate

        profile = calibrate(mlp, {"image": calib}, progress=False)
        guard = SanityGuard(profile)
        guard.name = f"SanityGuard({guard.impl})"  # type: ignore[attr-defined]
        guard.check_inputs({"image": calib[:1]})  # compile / warm up
        return guard
    except Exception as exc:  # the sanity package is being built in parallel
        print(
            f"note: calibrated SanityGuard unavailable ({type(exc).__name__}: {exc}); "
            "using NumPy finite/range checks"
        )
        return NumpySanity()


def big_mlp(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Train a 64-1024-1024-10 MLP on digits and export it with an ``image`` input."""
    import onnx
    from onnx import TensorProto, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x = images.reshape(len(images), 64)
    clf = MLPClassifier(hidden_layer_sizes=(1024, 1024), max_iter=8, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, labels)
    onx = convert_sklearn(
        clf,
        initial_types=[("flat", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset=17,
    )
    g = onx.graph
    shape = helper.make_tensor("flat_shape", TensorProto.INT64, [2], [-1, 64])
    g.initializer.append(shape)
    g.node.insert(0, helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]))
    del g.input[:]
    g.input.append(helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8]))
    onnx.checker.check_model(onx)
    return onx.SerializeToString()


def median_us(xs: list[float]) -> float:
    return statistics.median(xs) * 1e6


def bench_overhead(
    model: bytes,
    out_name: str,
    feeds_list: list[dict[str, np.ndarray]],
    sanity: Any,
    n: int,
    logits: bool,
    speculative: bool,
) -> dict[str, float]:
    member = OrtMember(model)
    pol = RuntimePolicy(
        members=(MemberSpec("m"),),
        voter=VoterSpec(kind=VoterKind.PLURALITY, output=out_name, scores_are_logits=logits),
        deadline_ms=1000.0,
        fallback_chain=(ChainStep.ENSEMBLE, ChainStep.LAST_KNOWN_GOOD),
        speculative=speculative,
    )
    rt = GuardedRuntime({"m": member}, policy=pol, sanity=sanity)
    sess, names = member.sess, member.names
    for f in feeds_list[:50]:  # warm up both paths
        sess.run(None, f)
        rt.infer(f)
    plain: list[float] = []
    guarded: list[float] = []
    checks: list[float] = []
    pc = time.perf_counter
    for i in range(n):
        f = feeds_list[i % len(feeds_list)]
        order = (0, 1) if i % 2 == 0 else (1, 0)
        if sanity is not None:  # the sanity checker alone, for attribution
            t = pc()
            sanity.check_inputs(f, prev=feeds_list[(i - 1) % len(feeds_list)])
            checks.append(pc() - t)
        for which in order:
            if which == 0:
                t = pc()
                dict(zip(names, sess.run(None, f), strict=True))
                plain.append(pc() - t)
            else:
                t = pc()
                r = rt.infer(f)
                guarded.append(pc() - t)
                assert r.source is ResultSource.SINGLE_MEMBER
    rt.close()
    p, g = median_us(plain), median_us(guarded)
    c = median_us(checks) if checks else 0.0
    return {
        "plain_us": p,
        "guarded_us": g,
        "added_us": g - p,
        "overhead_pct": 100 * (g - p) / p,
        "input_check_alone_us": c,
    }


def bench_concurrency(
    model: bytes, out_name: str, feeds_list: list[dict[str, np.ndarray]], n: int, logits: bool
) -> dict[str, float]:
    a, b = OrtMember(model), OrtMember(model)
    pol = RuntimePolicy(
        members=(MemberSpec("a"), MemberSpec("b")),
        voter=VoterSpec(
            kind=VoterKind.SOFT, output=out_name, scores_are_logits=logits, agreement=0.5
        ),
        quorum=2,
        deadline_ms=1000.0,
        fallback_chain=(ChainStep.ENSEMBLE, ChainStep.LAST_KNOWN_GOOD),
    )
    rt = GuardedRuntime({"a": a, "b": b}, policy=pol)
    for f in feeds_list[:20]:
        a.run(f)
        b.run(f)
        rt.infer(f)
    ta: list[float] = []
    tb: list[float] = []
    te: list[float] = []
    tr: list[float] = []
    pc = time.perf_counter
    for i in range(n):
        f = feeds_list[i % len(feeds_list)]
        # the machine's own ceiling: the two sessions on two bare threads, no runtime
        t = pc()
        th = threading.Thread(target=b.run, args=(f,))
        th.start()
        a.run(f)
        th.join()
        tr.append(pc() - t)
        t = pc()
        a.run(f)
        ta.append(pc() - t)
        t = pc()
        b.run(f)
        tb.append(pc() - t)
        t = pc()
        r = rt.infer(f)
        te.append(pc() - t)
        assert r.source is ResultSource.ENSEMBLE
    rt.close()
    sa, sb, se, sr = median_us(ta), median_us(tb), median_us(te), median_us(tr)
    return {
        "member_a_us": sa,
        "member_b_us": sb,
        "ensemble_us": se,
        "ratio": se / (sa + sb),
        "bare_threads_us": sr,
        "bare_ratio": sr / (sa + sb),
    }


def bench_failover(
    model: bytes,
    fallback: bytes,
    feeds_list: list[dict[str, np.ndarray]],
    n: int,
    deadline_ms: float,
    fallback_hangs: bool,
) -> dict[str, float]:
    pol = RuntimePolicy(
        members=(MemberSpec("m"),),
        voter=VoterSpec(kind=VoterKind.PLURALITY, output="logits"),
        deadline_ms=deadline_ms,
        member_budget_ms=deadline_ms * 0.6,
        safe_default={"logits": np.zeros((1, 10), np.float32)},
        last_known_good_max_age_ms=0.0,
        # worst case on purpose: the hung member is retried (and waited for) on every frame
        quarantine=QuarantinePolicy(backoff_ms=0.0, max_abandoned_workers=10 * n),
    )
    fb: OrtMember = Hung(fallback) if fallback_hangs else OrtMember(fallback)
    rt = GuardedRuntime({"m": Hung(model)}, policy=pol, fallback=fb)
    if not fallback_hangs:
        for f in feeds_list[:20]:
            fb.run(f)
    lat: list[float] = []
    counts: dict[str, int] = {}
    pc = time.perf_counter
    for i in range(n):
        f = feeds_list[i % len(feeds_list)]
        t = pc()
        r = rt.infer(f)
        lat.append((pc() - t) * 1e3)
        counts[r.source.value] = counts.get(r.source.value, 0) + 1
    rt.close()
    lat.sort()
    return {
        "deadline_ms": deadline_ms,
        "p50_ms": lat[len(lat) // 2],
        "p99_ms": lat[int(len(lat) * 0.99) - 1],
        "max_ms": lat[-1],
        "p99_over_deadline_ms": lat[int(len(lat) * 0.99) - 1] - deadline_ms,
        "sources": counts,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000, help="frames per measurement")
    ap.add_argument("--deadline-ms", type=float, default=10.0)
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    add_json_out(ap)
    args = ap.parse_args()
    threading.stack_size(1 << 20)  # thousands of hung workers in the failover runs

    d = np.load(DATA / "digits_test.npz")
    images = d["image"].astype(np.float32)
    calib = np.load(DATA / "digits_calib.npz")
    calib_img = calib[calib.files[0]].astype(np.float32)
    mlp = (DATA / "digits_mlp.onnx").read_bytes()
    logreg = (DATA / "digits_logreg.onnx").read_bytes()
    from sklearn.datasets import load_digits

    dig = load_digits()
    t = time.perf_counter()
    big = big_mlp((dig.data / 16.0).astype(np.float32), dig.target)
    acc = float(
        np.mean(np.argmax(OrtMember(big).run({"image": images})["probabilities"], 1) == d["label"])
    )
    print(
        f"trained 64-1024-1024-10 MLP in {time.perf_counter() - t:.1f} s "
        f"(held-out accuracy {acc:.3f}; it saw these images in training too)"
    )
    sanity = make_sanity(mlp, calib_img)
    print(f"sanity checks: {getattr(sanity, 'name', type(sanity).__name__)}")

    single = [{"image": images[i : i + 1]} for i in range(len(images))]
    batch = [{"image": images[i : i + 256]} for i in range(0, len(images) - 256, 8)]
    batch += [{"image": calib_img[i : i + 256]} for i in range(0, len(calib_img) - 256, 8)]
    n = args.frames
    results: dict[str, Any] = {}
    sanity_big = make_sanity(big, calib_img)
    for label, model, out, feeds, san, lg in (
        ("digits_b1", mlp, "logits", single, sanity, True),
        ("big_b256", big, "probabilities", batch, sanity_big, False),
    ):
        frames = n if label == "digits_b1" else n // 2
        results[f"overhead_{label}_nosanity"] = bench_overhead(
            model, out, feeds, None, frames, lg, False
        )
        results[f"overhead_{label}_sanity"] = bench_overhead(
            model, out, feeds, san, frames, lg, False
        )
        results[f"overhead_{label}_sanity_speculative"] = bench_overhead(
            model, out, feeds, san, frames, lg, True
        )
    results["concurrency_digits_b1"] = bench_concurrency(mlp, "logits", single, n, True)
    results["concurrency_big_b256"] = bench_concurrency(big, "probabilities", batch, n // 2, False)
    results["failover_fallback_model"] = bench_failover(
        mlp, logreg, single, n, args.deadline_ms, False
    )
    results["failover_safe_default"] = bench_failover(
        mlp, logreg, single, n, args.deadline_ms, True
    )
    RELEASE.set()

    from rich.console import Console
    from rich.table import Table

    tab = Table(title="guarded runtime benchmark (medians unless stated)")
    for col in ("measurement", "figure", "target", "met"):
        tab.add_column(col)
    for key in [k for k in results if k.startswith("overhead_")]:
        r = results[key]
        tab.add_row(
            key,
            f"plain {r['plain_us']:.1f} us, guarded {r['guarded_us']:.1f} us, "
            f"+{r['added_us']:.1f} us = {r['overhead_pct']:+.1f} %"
            + (
                f" (input check alone {r['input_check_alone_us']:.1f} us)"
                if r["input_check_alone_us"]
                else ""
            ),
            "<= 3 %",
            "yes" if r["overhead_pct"] <= 3 else "NO",
        )
    for key in ("concurrency_digits_b1", "concurrency_big_b256"):
        r = results[key]
        tab.add_row(
            key,
            f"a {r['member_a_us']:.1f} us + b {r['member_b_us']:.1f} us; ensemble "
            f"{r['ensemble_us']:.1f} us = {r['ratio']:.2f}x (two bare threads, no runtime: "
            f"{r['bare_ratio']:.2f}x)",
            "<= 0.65x",
            "yes" if r["ratio"] <= 0.65 else "NO",
        )
    for key in ("failover_fallback_model", "failover_safe_default"):
        r = results[key]
        tab.add_row(
            key,
            f"deadline {r['deadline_ms']:.0f} ms: p50 {r['p50_ms']:.2f}, p99 "
            f"{r['p99_ms']:.2f}, max {r['max_ms']:.2f} ms",
            "p99 <= deadline + 2 ms",
            "yes" if r["p99_over_deadline_ms"] <= 2 else "NO",
        )
    Console(width=170).print(tab)
    write_record(
        make_record(
            "runtime",
            params={"frames": n, "deadline_ms": args.deadline_ms},
            results={"sanity": getattr(sanity, "name", type(sanity).__name__), **results},
            libs=("onnxruntime", "numba", "scikit-learn", "skl2onnx"),
        ),
        args.json_out,
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

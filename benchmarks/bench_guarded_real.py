"""The guarded runtime's costs on a real model, measured side by side in one run.

Model: PaddleOCR PP-OCRv4 text detector (see benchmarks/_real_models.py), on 640x640 crops
of real photographs, float32 NCHW.

1. Overhead: a single-member GuardedRuntime with input and output sanity checks (a profile
   calibrated on other crops) versus plain ``onnxruntime`` ``session.run`` on the same
   session, interleaved call by call; medians and the ratio. Target: <= 3 % added.
   The order alternates frame by frame (plain first, then guarded first) so that neither
   side always runs on a frame the other has just pulled into the cache; a bootstrap over
   frames gives a 95 % interval for both the ratio of medians and the paired median.
2. Through the device session: the same detector packaged as a real bundle (one model,
   its sanity profile calibrated on the calibration crops by ``build_bundle``), opened
   with ``open_session`` and served with ``session.infer``, once with
   ``isolation="threads"`` and once with ``isolation="sandbox"``, each interleaved frame
   by frame with a plain ``onnxruntime`` session of the member's own thread count (the
   placement rule: in threads mode an unpinned CPU member gets usable cores / CPU
   members; in a sandboxed worker it runs one intra-op thread). This is what a device
   pays: signed I/O contract and sanity checks, the member's executor (a thread, or a
   worker process with shared-memory I/O), the event log. The plain session and the
   member are two ONNX Runtime sessions here, and ONNX Runtime's pool threads keep
   spinning for tens of milliseconds after a run: back to back, two 2-thread sessions
   slow each other down about 1.8x on two cores. So each timed call starts after an
   untimed pause (``PAUSE_S``) in which the other side's pool goes idle, as it would on
   a device that runs only the session.
3. Concurrency: a 2-member ensemble (fp32 and fp16 variants of the detector, one intra-op
   thread each, median voter) versus the sum of the two members' individual times.
   Target: wall time <= 0.65x the sum. Measured twice, members unpinned and pinned to
   cores 0 and 1 (``cpu:0`` / ``cpu:1`` placements), next to two machine limits measured
   in the same loop: the same two sessions in two bare threads, and a pure-compute probe
   (a register-only loop in two threads against the same work run twice in one thread),
   which shows how much of a second core this VM gives at that moment.

(The failover figure - a hung member, p99 within deadline + 2 ms over 1000 frames - is in
benchmarks/bench_runtime.py.)

    .venv/bin/python benchmarks/bench_guarded_real.py [--frames 120] [--json] [--json-out PATH]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _real_models import det_model, photo_frames
from _record import add_json_out, make_record, write_record

STAGES = ("input_checks", "members", "vote", "output", "total")
#: Untimed pause before each timed call of section 2 (lets the other session's pool idle).
PAUSE_S = 0.05


class Ort:
    def __init__(self, model: bytes, threads: int) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        self.out = self.s.get_outputs()[0].name

    def run(self, feeds: Any) -> dict[str, np.ndarray]:
        return {self.out: self.s.run([self.out], dict(feeds))[0]}


def med(xs: list[float]) -> float:
    return statistics.median(xs) * 1e3


def bootstrap_ci(
    a: list[float], b: list[float], *, rounds: int = 2000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95 % intervals (percent added) of median(b)/median(a) - 1 and of median(b/a - 1).

    Frames are resampled as pairs, so the interval reflects the frame-to-frame noise of
    this run (not the drift between runs).
    """
    rng = np.random.default_rng(seed)
    x, y = np.asarray(a), np.asarray(b)
    idx = rng.integers(0, len(x), size=(rounds, len(x)))
    ratio = np.median(y[idx], axis=1) / np.median(x[idx], axis=1) - 1
    paired = np.median((y / x - 1)[idx], axis=1)
    q = (2.5, 97.5)
    return {
        "ratio_of_medians_pct": tuple(float(v) * 100 for v in np.percentile(ratio, q)),
        "paired_pct": tuple(float(v) * 100 for v in np.percentile(paired, q)),
    }


def paired_overhead(t_plain: list[float], t_guard: list[float]) -> dict[str, Any]:
    """Medians (ms), the added percentage (ratio of medians and paired) with 95 % intervals."""
    return {
        "plain_ms": med(t_plain),
        "guarded_ms": med(t_guard),
        "added_pct": (med(t_guard) / med(t_plain) - 1) * 100,
        "added_pct_paired": statistics.median(
            (g - p) / p for g, p in zip(t_guard, t_plain, strict=True)
        )
        * 100,
        "added_pct_ci95": bootstrap_ci(t_plain, t_guard),
    }


def session_overhead(
    model: bytes, calib: np.ndarray, frames: np.ndarray, warm: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Section 2: a real bundle served through ``open_session``, threads and sandbox."""
    import tempfile

    from edgeguard import api
    from edgeguard.bundle.verify import TrustStore
    from edgeguard.crypto.keys import DeviceKey, SignerKey
    from edgeguard.errors import InputRejectedError
    from edgeguard.runtime.placement import cpu_member_count, loader_options

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="eg-bench-real-") as td:
        d = Path(td)
        (d / "det.onnx").write_bytes(model)
        np.savez(d / "calib.npz", x=calib)
        signer, device = SignerKey.generate(), DeviceKey.generate("bench")
        t = time.perf_counter()
        api.build_bundle(
            [d / "det.onnx"],
            out=d / "det.egb",
            signer=signer,
            recipients=[device.public],
            profiles=["generic-cpu"],
            version=1,
            calibration=d / "calib.npz",
        )
        out["build_s"] = time.perf_counter() - t
        trust = TrustStore.of([signer.public])
        for isolation in ("threads", "sandbox"):
            t = time.perf_counter()
            session = api.open_session(
                d / "det.egb",
                trust=trust,
                device_key=device,
                state_dir=d / f"state-{isolation}",
                isolation=isolation,
            )
            open_s = time.perf_counter() - t
            with session:
                policy = session.policy
                member = policy.members[0]
                # The thread count the session gave its member (runtime/placement.py).
                threads = loader_options(
                    member,
                    "onnx",
                    cpu_members=cpu_member_count(policy),
                    sandboxed=isolation == "sandbox",
                )["intra_op_threads"]
                plain = Ort(model, threads=threads)
                plain.run(warm), session.infer(warm)
                t_plain: list[float] = []
                t_sess: list[float] = []
                stages: list[dict[str, float]] = []
                rejected = 0
                for i in range(len(frames)):
                    f = {"x": frames[i : i + 1]}
                    tp = ts = None
                    for side in ("plain", "session") if i % 2 == 0 else ("session", "plain"):
                        time.sleep(PAUSE_S)
                        t = time.perf_counter()
                        if side == "plain":
                            plain.run(f)
                            tp = time.perf_counter() - t
                            continue
                        try:
                            res = session.infer(f)
                        except InputRejectedError:
                            rejected += 1  # not a timing of the model path: left out
                            continue
                        ts = time.perf_counter() - t
                        assert res.source.value in ("ensemble", "single_member"), res.reasons
                        stages.append(dict(res.latency_ms))
                    if tp is not None and ts is not None:
                        t_plain.append(tp)
                        t_sess.append(ts)
                member_key = f"member:{member.name}"
                out[isolation] = {
                    **paired_overhead(t_plain, t_sess),
                    "intra_op_threads": threads,
                    "frames": len(t_plain),
                    "rejected_frames": rejected,
                    "open_s": open_s,
                    "stages_ms": {
                        k: statistics.median(s[k] for s in stages if k in s)
                        for k in (*STAGES, member_key)
                        if any(k in s for s in stages)
                    },
                    "member_key": member_key,
                }
                out[isolation].update(stage_overheads(stages, member_key))
    return out


def stage_overheads(stages: list[dict[str, float]], member_key: str) -> dict[str, float]:
    """Per-frame medians of what the runtime adds around its member: the members stage
    over the member's own run (hand-off, output checks) and the frame's total over its
    stages (bookkeeping). Medians of differences, not differences of medians: the
    member's run varies by milliseconds from frame to frame, the rest by microseconds."""
    out: dict[str, float] = {}
    both = [s for s in stages if "members" in s and s.get(member_key) == s.get(member_key)]
    if both:
        out["members_over_member_ms"] = statistics.median(
            s["members"] - s[member_key] for s in both
        )
    timed = [s for s in stages if "total" in s]
    if timed:
        out["total_over_stages_ms"] = statistics.median(
            s["total"] - sum(s.get(k, 0.0) for k in (*STAGES[:-1], "admission")) for s in timed
        )
    return out


def compute_probe() -> Any:
    """A register-only loop (no memory traffic, GIL released): two copies in two threads
    against the same two run back to back in one; returns a function giving that ratio."""
    import threading

    import numba

    @numba.njit(nogil=True, cache=False)
    def spin(n: int) -> float:
        acc = np.zeros(8, np.float32)
        for _ in range(n):
            for j in range(8):
                acc[j] = acc[j] * np.float32(0.9999) + np.float32(1.0)
        return float(acc.sum())

    spin(10)
    n = 2_000_000

    def ratio() -> float:
        t = time.perf_counter()
        spin(n), spin(n)
        serial = time.perf_counter() - t
        th = threading.Thread(target=spin, args=(n,))
        t = time.perf_counter()
        th.start()
        spin(n)
        th.join()
        return (time.perf_counter() - t) / serial

    return ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    add_json_out(ap)
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from edgeguard.guard.sanity import SanityGuard
    from edgeguard.packaging.calibrate import calibrate_stats_only
    from edgeguard.packaging.variants import make_variants
    from edgeguard.policy.runtime import ChainStep, MemberSpec, RuntimePolicy, VoterKind, VoterSpec
    from edgeguard.runtime.guarded import GuardedRuntime

    model = det_model()
    calib = photo_frames(160, seed=1)
    frames = photo_frames(args.frames, seed=2)
    profile = calibrate_stats_only({"x": calib}, target_false_alarm=0.01)
    sanity = SanityGuard(profile, threads=1)
    out: dict[str, Any] = {"model": "PP-OCRv4 det", "input": [1, 3, 640, 640]}

    # 1. Overhead: one member, sanity on, same session as the plain runs.
    plain = Ort(model, threads=2)
    policy1 = RuntimePolicy(
        members=(MemberSpec("det"),),
        voter=VoterSpec(VoterKind.MEDIAN, output=plain.out),
        deadline_ms=2000.0,
        fallback_chain=(ChainStep.ENSEMBLE, ChainStep.LAST_KNOWN_GOOD),
    )
    rt = GuardedRuntime({"det": plain}, policy=policy1, sanity=sanity)
    spec_policy = RuntimePolicy.from_dict({**policy1.to_dict(), "speculative": True})
    rt_spec = GuardedRuntime(
        {"det": plain}, policy=spec_policy, sanity=SanityGuard(profile, threads=1)
    )
    warm = {"x": calib[0:1]}  # not a benchmark frame: a repeat would be a frozen camera
    plain.run(warm), rt.infer(warm), rt_spec.infer(warm)
    t_plain, t_guard, t_check, t_spec = [], [], [], []
    stages: list[dict[str, float]] = []  # the runtime's own latency record per frame
    for i in range(args.frames):
        f = {"x": frames[i : i + 1]}
        for side in ("plain", "guard") if i % 2 == 0 else ("guard", "plain"):
            t = time.perf_counter()
            if side == "plain":
                plain.run(f)
                t_plain.append(time.perf_counter() - t)
            else:
                res = rt.infer(f)
                t_guard.append(time.perf_counter() - t)
                stages.append(dict(res.latency_ms))
        t = time.perf_counter()
        res2 = rt_spec.infer(f)
        t_spec.append(time.perf_counter() - t)
        t = time.perf_counter()
        sanity.check_inputs(f)
        t_check.append(time.perf_counter() - t)
        assert res.source.value in ("ensemble", "single_member"), res.reasons
        assert res2.source.value in ("ensemble", "single_member"), res2.reasons
    rt.close()
    rt_spec.close()
    out["overhead"] = {
        **paired_overhead(t_plain, t_guard),
        "speculative_ms": med(t_spec),
        "sanity_check_ms": med(t_check),
        "added_pct_speculative": (med(t_spec) / med(t_plain) - 1) * 100,
        # medians of the runtime's per-frame record (ms): where the added time goes
        "stages_ms": {
            k: statistics.median(d[k] for d in stages if k in d)
            for k in ("input_checks", "member:det", "members", "vote", "output", "total")
        },
        **stage_overheads(stages, "member:det"),
    }

    # 2. The same model through the device session: a real bundle, threads and sandbox.
    out["session"] = session_overhead(model, calib, frames, warm)

    # 3. Concurrency: fp32 + fp16 members, one thread each.
    # the fp16 variant as build derives it: measured on calibration frames (20 are enough)
    fp16 = make_variants(model, ["fp16"], calibration={"x": calib[:20]})[0].model
    a, b = Ort(model, 1), Ort(fp16, 1)
    policy2 = RuntimePolicy(
        members=(MemberSpec("fp32"), MemberSpec("fp16")),
        voter=VoterSpec(VoterKind.MEDIAN, output=a.out),
        quorum=2,
        deadline_ms=5000.0,
        fallback_chain=(ChainStep.ENSEMBLE, ChainStep.LAST_KNOWN_GOOD),
    )
    rt2 = GuardedRuntime({"fp32": a, "fp16": b}, policy=policy2)
    usable = sorted(os.sched_getaffinity(0))
    pin = (usable[0], usable[-1])
    pinned_policy = RuntimePolicy.from_dict(
        {
            **policy2.to_dict(),
            "members": [
                {"name": "fp32", "placement": f"cpu:{pin[0]}"},
                {"name": "fp16", "placement": f"cpu:{pin[1]}"},
            ],
        }
    )
    rt3 = GuardedRuntime({"fp32": a, "fp16": b}, policy=pinned_policy)
    a.run(warm), b.run(warm), rt2.infer(warm), rt3.infer(warm)
    import threading

    probe = compute_probe()
    ta, tb, te, tp, traw, tprobe = [], [], [], [], [], []
    n2 = max(5, args.frames // 2)
    for i in range(n2):
        f = {"x": frames[i : i + 1]}
        # The machine's own limit: the two sessions in two bare threads, no edgeguard.
        th = threading.Thread(target=b.run, args=(f,))
        t = time.perf_counter()
        th.start()
        a.run(f)
        th.join()
        traw.append(time.perf_counter() - t)
        t = time.perf_counter()
        a.run(f)
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        b.run(f)
        tb.append(time.perf_counter() - t)
        t = time.perf_counter()
        res = rt2.infer(f)
        te.append(time.perf_counter() - t)
        assert res.source.value == "ensemble", res.reasons
        t = time.perf_counter()
        res = rt3.infer(f)
        tp.append(time.perf_counter() - t)
        assert res.source.value == "ensemble", res.reasons
        tprobe.append(probe())
    rt2.close()
    rt3.close()
    sums = [x + y for x, y in zip(ta, tb, strict=True)]
    out["concurrency"] = {
        "fp32_ms": med(ta),
        "fp16_ms": med(tb),
        "ensemble_wall_ms": med(te),
        "pinned_wall_ms": med(tp),
        "bare_threads_wall_ms": med(traw),
        "ratio_to_sum": med(te) / (med(ta) + med(tb)),
        "ratio_to_sum_paired": statistics.median(e / s for e, s in zip(te, sums, strict=True)),
        "pinned_ratio_to_sum": med(tp) / (med(ta) + med(tb)),
        "pinned_ratio_to_sum_paired": statistics.median(
            e / s for e, s in zip(tp, sums, strict=True)
        ),
        "pinned_cores": list(pin),
        "bare_threads_ratio_to_sum": med(traw) / (med(ta) + med(tb)),
        "compute_probe_ratio": statistics.median(tprobe),
        "compute_probe_range": [min(tprobe), max(tprobe)],
    }
    # The same ratio over the frames whose probe (run right after them) found a full
    # second core, and over the others: how much of the miss is the machine's.
    full = [i for i, r in enumerate(tprobe) if r <= 0.55]
    rest = [i for i in range(n2) if i not in set(full)]
    for key, sel in (("full_core", full), ("shared_core", rest)):
        out["concurrency"][f"ratio_to_sum_paired_{key}"] = (
            statistics.median(te[i] / sums[i] for i in sel) if sel else None
        )
        out["concurrency"][f"frames_{key}"] = len(sel)
    params = {
        "frames": args.frames,
        "calibration_frames": len(calib),
        "probe_full_core": 0.55,
        "session_pause_s": PAUSE_S,
    }
    write_record(
        make_record(
            "guarded_real", params=params, results=out, libs=("onnxruntime", "numba", "numpy")
        ),
        args.json_out,
    )
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    c = Console()
    table = Table(
        title=f"guarded runtime on PP-OCRv4 det, 640x640x3 float32 ({args.frames} frames)"
    )
    for col in ("measure", "value", "target"):
        table.add_column(col, justify="right" if col != "measure" else "left")
    o, k = out["overhead"], out["concurrency"]
    table.add_row("plain session.run (2 threads), median", f"{o['plain_ms']:.2f} ms", "")
    table.add_row("GuardedRuntime + sanity, median", f"{o['guarded_ms']:.2f} ms", "")
    table.add_row("  of which the input sanity check", f"{o['sanity_check_ms']:.2f} ms", "")
    ci = o["added_pct_ci95"]
    lo, hi = ci["ratio_of_medians_pct"]
    table.add_row(
        "added (ratio of medians) [95 % interval]",
        f"{o['added_pct']:+.1f} % [{lo:+.1f}, {hi:+.1f}]",
        "<= 3 %",
    )
    lo, hi = ci["paired_pct"]
    table.add_row(
        "added (median of per-frame paired ratios) [95 %]",
        f"{o['added_pct_paired']:+.1f} % [{lo:+.1f}, {hi:+.1f}]",
        "",
    )
    table.add_row(
        "speculative policy (members start during the checks)", f"{o['speculative_ms']:.2f} ms", ""
    )
    table.add_row("added, speculative", f"{o['added_pct_speculative']:+.1f} %", "<= 3 %")
    st = o["stages_ms"]
    table.add_row(
        "guarded stages, medians: input checks / member / members stage / vote / output",
        f"{st['input_checks']:.2f} / {st['member:det']:.2f} / {st['members']:.2f} / "
        f"{st['vote']:.2f} / {st['output']:.2f} ms",
        "",
    )
    for iso, se in out["session"].items():
        if not isinstance(se, dict):
            continue
        lo, hi = se["added_pct_ci95"]["ratio_of_medians_pct"]
        table.add_row(
            f"open_session(isolation={iso!r}) vs plain session.run "
            f"({se['intra_op_threads']} thread{'s' if se['intra_op_threads'] > 1 else ''})",
            f"{se['plain_ms']:.2f} -> {se['guarded_ms']:.2f} ms, "
            f"{se['added_pct']:+.1f} % [{lo:+.1f}, {hi:+.1f}]",
            "<= 3 %",
        )
        lo, hi = se["added_pct_ci95"]["paired_pct"]
        st = se["stages_ms"]
        table.add_row(
            "  paired [95 %]; stages: input checks / member / members stage / vote / output",
            f"{se['added_pct_paired']:+.1f} % [{lo:+.1f}, {hi:+.1f}]; "
            + " / ".join(
                "-" if st.get(key) is None else f"{st[key]:.2f}"
                for key in ("input_checks", se["member_key"], "members", "vote", "output")
            )
            + f" ms ({se['rejected_frames']} rejected)",
            "",
        )
    table.add_row("member fp32 alone (1 thread)", f"{k['fp32_ms']:.2f} ms", "")
    table.add_row("member fp16 alone (1 thread)", f"{k['fp16_ms']:.2f} ms", "")
    table.add_row("2-member ensemble, wall", f"{k['ensemble_wall_ms']:.2f} ms", "")
    table.add_row(
        "ratio wall / sum of members (paired median)",
        f"{k['ratio_to_sum']:.2f}x ({k['ratio_to_sum_paired']:.2f}x)",
        "<= 0.65x",
    )
    table.add_row(
        f"same, members pinned to cores {k['pinned_cores'][0]} and {k['pinned_cores'][1]}",
        f"{k['pinned_wall_ms']:.2f} ms, {k['pinned_ratio_to_sum']:.2f}x "
        f"({k['pinned_ratio_to_sum_paired']:.2f}x)",
        "<= 0.65x",
    )
    table.add_row(
        "same two sessions in two bare threads (machine limit)",
        f"{k['bare_threads_wall_ms']:.2f} ms ({k['bare_threads_ratio_to_sum']:.2f}x)",
        "",
    )
    pr = k["compute_probe_range"]
    table.add_row(
        "pure-compute probe, 2 threads / serial (0.50 = a full second core)",
        f"{k['compute_probe_ratio']:.2f}x (range {pr[0]:.2f}-{pr[1]:.2f})",
        "",
    )
    for key, label in (("full_core", "<= 0.55"), ("shared_core", "> 0.55")):
        v = k[f"ratio_to_sum_paired_{key}"]
        table.add_row(
            f"  ensemble paired ratio over frames whose probe was {label}",
            "-" if v is None else f"{v:.2f}x ({k[f'frames_{key}']} frames)",
            "",
        )
    c.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

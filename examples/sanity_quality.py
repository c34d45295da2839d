"""Detection quality of the input-sanity guard (numbers for docs/sanity.md).

Calibrates the guard on the digits calibration split, then measures on the
held-out test split (360 frames, one frame per call, the previous frame of the
same stream passed as ``prev``):

* the false-reject (and WARN) rate on clean data;
* the REJECT rate and the flag rate (WARN or REJECT) for each corruption:
  NaN / Inf injection, saturation, frozen frame, wrong scale, Gaussian noise
  (unclipped and clipped to 0..1) at several sigmas, and a score-based
  black-box L-inf attack (random search on the logits) at several epsilons.

Channel corruptions (dropped channel, BGR/RGB swap) need 3-channel input: they
are measured on 32x32 RGB patches of the two photos shipped with scikit-learn
(``load_sample_images``), with a statistics-only envelope calibrated on half of
the patches and tested on the other half.

Run: ``.venv/bin/python examples/sanity_quality.py [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgeguard.backends.onnxruntime import OnnxRuntimeBackend
from edgeguard.data import load_split, model_bytes
from edgeguard.guard.sanity import corruptions as cor
from edgeguard.guard.sanity.check import SanityGuard
from edgeguard.packaging.calibrate import calibrate, calibrate_stats_only
from edgeguard.policy.sanity import Status

Row = dict[str, Any]
#: Side of the square RGB patches cut from the sample photos.
PATCH = 32


def stream_prev(frames: np.ndarray) -> list[np.ndarray | None]:
    """prev of frame i = frame i - 1 of the same stream (none for the first frame)."""
    return [None] + [frames[i - 1 : i] for i in range(1, frames.shape[0])]


def evaluate_stream(
    guard: SanityGuard,
    backend: OnnxRuntimeBackend | None,
    name: str,
    frames: np.ndarray,
    prevs: list[np.ndarray | None] | None,
) -> Row:
    """Check frames one call at a time; fraction REJECT and fraction flagged."""
    rej = flag = 0
    checks: dict[str, int] = {}
    for i in range(frames.shape[0]):
        x = np.ascontiguousarray(frames[i : i + 1])
        pv = None if prevs is None else prevs[i]
        v = guard.check_inputs({name: x}, None if pv is None else {name: np.ascontiguousarray(pv)})
        if backend is not None:
            v = v.merge(guard.check_outputs(backend.run({name: x})))
        rej += v.status is Status.REJECT
        flag += v.status is not Status.PASS
        for w in {w.check for w in v.violations if w.severity is Status.REJECT}:
            checks[w] = checks.get(w, 0) + 1
    n = frames.shape[0]
    top = sorted(checks.items(), key=lambda kv: -kv[1])[:3]
    return {
        "n": n,
        "reject": rej / n,
        "flagged": flag / n,
        "top_reject_checks": ", ".join(f"{k} ({v})" for k, v in top),
    }


def digits_rows(seed: int, attack_n: int, queries: int) -> tuple[list[Row], Row]:
    rng = np.random.default_rng(seed)
    xc, _ = load_split("calib")
    x, y = load_split("test")
    model = model_bytes("digits_mlp")
    t0 = time.perf_counter()
    profile = calibrate(model, {"image": xc}, progress=False)
    cal_s = time.perf_counter() - t0
    guard = SanityGuard(profile)
    backend = OnnxRuntimeBackend.from_bytes(model)
    rows: list[Row] = []

    def add(label: str, frames: np.ndarray, prevs: list[np.ndarray | None], note: str) -> None:
        r = evaluate_stream(guard, backend, "image", frames, prevs)
        r.update(corruption=label, data="digits", note=note)
        rows.append(r)
        print(f"  {label:32s} reject {r['reject']:.3f} flagged {r['flagged']:.3f}")

    add("clean (false-reject rate)", x, stream_prev(x), "prev = previous frame")
    conditions: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "NaN injection (2% of pixels)": lambda a: cor.inject(a, np.nan, fraction=0.02, rng=rng),
        "+Inf injection (2%)": lambda a: cor.inject(a, np.inf, fraction=0.02, rng=rng),
        "single NaN pixel": lambda a: cor.inject(a, np.nan, fraction=0.0, rng=rng),
        "saturation gain 2": lambda a: cor.saturate(a, gain=2.0),
        "saturation gain 4": lambda a: cor.saturate(a, gain=4.0),
        "wrong scale (0..255)": lambda a: cor.wrong_scale(a, factor=255.0),
        "dead sensor (all zero)": lambda a: np.zeros_like(a),
    }
    for sigma in (0.01, 0.03, 0.1, 0.3):
        conditions[f"Gaussian noise sigma {sigma}"] = lambda a, s=sigma: cor.gaussian_noise(
            a, sigma=s, rng=rng
        )
        conditions[f"Gaussian noise sigma {sigma}, clipped 0..1"] = lambda a, s=sigma: (
            cor.gaussian_noise(a, sigma=s, rng=rng, clip=(0.0, 1.0))
        )
    for label, fn in conditions.items():
        bad = fn(x.copy())
        add(label, bad, stream_prev(bad), "prev = previous corrupted frame")
    add(
        "frozen frame", x, [x[i : i + 1].copy() for i in range(x.shape[0])], "prev = the same frame"
    )

    # black-box adversarial (random search on logits), on correctly classified frames
    def predict(a: np.ndarray) -> np.ndarray:
        return backend.run({"image": np.ascontiguousarray(a, dtype=np.float32)})["logits"]

    pred = predict(x).argmax(axis=1)
    idx = np.flatnonzero(pred == y)[:attack_n]
    xa, ya = x[idx], y[idx]
    for eps in (0.05, 0.1, 0.2, 0.3):
        adv, fooled = cor.random_search_attack(
            predict, xa, ya.astype(np.int64), eps=eps, queries=queries, rng=rng
        )
        r_all = evaluate_stream(guard, backend, "image", adv, stream_prev(adv))
        r_succ = (
            evaluate_stream(guard, backend, "image", adv[fooled], stream_prev(adv[fooled]))
            if fooled.any()
            else {"reject": float("nan"), "flagged": float("nan")}
        )
        row = {
            **r_all,
            "corruption": f"black-box L-inf attack eps {eps}",
            "data": "digits",
            "note": (
                f"attack success {fooled.mean():.2f} ({queries} queries); on successful "
                f"ones: reject {r_succ['reject']:.2f}, flagged {r_succ['flagged']:.2f}"
            ),
            "attack_success": float(fooled.mean()),
            "reject_on_successful": r_succ["reject"],
            "flagged_on_successful": r_succ["flagged"],
        }
        rows.append(row)
        print(f"  eps {eps}: {row['note']}; all: reject {row['reject']:.3f}")
    backend.close()
    meta = {
        "calibration_frames": int(xc.shape[0]),
        "test_frames": int(x.shape[0]),
        "calibration_seconds": cal_s,
        "attack_frames": int(idx.size),
        "queries": queries,
        "profile": profile.to_dict(),
    }
    return rows, meta


def rgb_rows(seed: int) -> list[Row]:
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    patches = []
    for img in load_sample_images().images:
        h, w, _ = img.shape
        for r in range(0, h - PATCH + 1, PATCH):
            for c in range(0, w - PATCH + 1, PATCH):
                patches.append(img[r : r + PATCH, c : c + PATCH])
    arr = (np.stack(patches).astype(np.float32) / 255.0)[rng.permutation(len(patches))]
    half = arr.shape[0] // 2
    cal, test = arr[:half], arr[half:]
    profile = calibrate_stats_only({"rgb": cal}, layouts={"rgb": "NHWC"})
    guard = SanityGuard(profile)
    rows: list[Row] = []

    def add(label: str, frames: np.ndarray) -> None:
        r = evaluate_stream(guard, None, "rgb", frames, None)
        r.update(
            corruption=label,
            data=f"RGB patches ({cal.shape[0]} calib / {test.shape[0]} test)",
            note="statistics only, no tdiff (patches are not a sequence)",
        )
        rows.append(r)
        print(f"  {label:32s} reject {r['reject']:.3f} flagged {r['flagged']:.3f}")

    add("clean (false-reject rate)", test)
    add("BGR/RGB swap", cor.bgr_swap(test, layout="NHWC"))
    for ch, nm in enumerate("RGB"):
        add(f"dropped channel {nm}", cor.drop_channel(test, ch, layout="NHWC"))
    add("wrong scale (0..255)", cor.wrong_scale(test, factor=255.0))
    add("saturation gain 2", cor.saturate(test, gain=2.0))
    return rows


def main() -> int:
    """Run the evaluation and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--attack-frames", type=int, default=100)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    print("digits (digits_mlp.onnx):")
    rows, meta = digits_rows(args.seed, args.attack_frames, args.queries)
    print("RGB patches (sklearn sample images):")
    rows += rgb_rows(args.seed)
    print()
    print(
        "| data | corruption | frames | REJECT | flagged (WARN or REJECT) "
        "| main REJECT checks | note |"
    )
    print("| --- | --- | ---: | ---: | ---: | --- | --- |")
    for r in rows:
        print(
            f"| {r['data']} | {r['corruption']} | {r['n']} | {100 * r['reject']:.1f}% | "
            f"{100 * r['flagged']:.1f}% | {r['top_reject_checks']} | {r['note']} |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"rows": rows, "meta": meta}, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

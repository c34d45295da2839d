"""Every zoo model as a new user would run it: calibrate, build, run, serve, defaults only.

Per model (third-party models fetched from their PyPI wheels, real frames from
scikit-image's images): ``edgeguard calibrate`` on 100 frames of the calibration
images, ``edgeguard build`` with that profile and no runtime option (the deadline is
measured, the policy is the single-model default), then on frames of images the
calibration never saw:

* ``edgeguard serve`` at the default 30 fps (``--no-drop``: every frame is served, late
  where the model is slower) over 100 clean frames followed by windows of 40 frames per
  input fault (NaN, x255, /255, black, heavy noise, frozen, channel swap),
  with ``--records``: clean false rejects at most 2 % (the 95 % interval is printed),
  each gated corruption rejected in at least 95 % of its frames, channel swap measured
  and printed, and no frame unanswered;
* ``edgeguard run`` over clean frames the guard accepted: the answers are the model's
  own (ONNX Runtime, same frames), every output;
* ``edgeguard build --variants fp32,fp16,int8`` on the calibration frames: a variant
  below its task's threshold is refused with a one-line error (exit 2) naming it, the
  metric and the value, and the build is repeated without it; every shipped variant's
  signed agreement is at or above its signed threshold, and the ensemble serves 30
  held-out frames with the default voter and deadline, none unanswered.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeguard.data import zoo
from edgeguard.packaging.envelope import wilson_interval
from edgeguard.policy.slots import read_slots
from edgeguard.runtime.opener import read_prefix
from tests.helpers import build, eg, make_keys, run_bundle

pytestmark = pytest.mark.slow

N_CAL = 100
N_CLEAN = 100
N_FAULT = 40
#: serve's input faults, in schedule order, and whether the guard must catch them
FAULTS = (
    ("nan", True),
    ("scale255", True),
    ("div255", True),
    ("black", True),
    ("noise", True),
    ("freeze", True),
    ("swap", False),
)
MAX_CLEAN_REJECT = 0.02
MIN_DETECTION = 0.95


def _schedule(channels: int) -> tuple[str, list[str]]:
    kinds = [k for k, _ in FAULTS if k != "swap" or channels > 1]
    windows = [
        f"{k}@{N_CLEAN + i * N_FAULT}-{N_CLEAN + (i + 1) * N_FAULT}" for i, k in enumerate(kinds)
    ]
    return ",".join(windows), kinds


def _reference(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    n = len(next(iter(feeds.values())))
    per = [sess.run(names, {k: v[i : i + 1] for k, v in feeds.items()}) for i in range(n)]
    return {name: np.concatenate([p[j] for p in per]) for j, name in enumerate(names)}


@pytest.mark.parametrize("name", zoo.NAMES)
def test_a_zoo_model_works_end_to_end_with_default_settings(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = zoo.info(name)
    model = zoo.model_path(name)
    make_keys(tmp_path)
    cal = tmp_path / "cal.npz"
    np.savez(cal, **zoo.frames(name, N_CAL))

    # calibrate, then build with the profile it wrote (no runtime options)
    profile = tmp_path / "profile.json"
    r = eg("calibrate", model, "--data", cal, "-o", profile, "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)["report"]
    bundle = tmp_path / f"{name}.egb"
    r = build(tmp_path, bundle, model, extra=("--calibration", profile))
    assert r.returncode == 0, r.stderr
    assert "sanity profile embedded" in r.stdout
    assert "measured here" in r.stdout, r.stdout  # the deadline is measured, even on dynamic axes

    # serve: clean frames, then a window per input fault
    channels = entry.frame_shape[0] if entry.layout == "NCHW" else entry.frame_shape[-1]
    spec, kinds = _schedule(channels)
    n = N_CLEAN + N_FAULT * len(kinds)
    held = zoo.held_out(name, n)
    frames = tmp_path / "held.npz"
    np.savez(frames, **held)
    records = tmp_path / "records.jsonl"
    r = eg(
        "serve",
        bundle,
        "--trust",
        tmp_path / "signer.pub",
        "--device-key",
        tmp_path / "dev" / "device.key",
        "--state-dir",
        tmp_path / "state",
        "--frames",
        frames,
        "--input-name",
        entry.input_name,
        "--inject",
        spec,
        "--records",
        records,
        "--no-drop",  # every frame answered, late if the model is slower than 30 fps
        "--json",
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    lines = [json.loads(x) for x in records.read_text().splitlines()]
    assert len(lines) == n == summary["frames"]
    assert summary["unanswered"] == 0, [x["reasons"] for x in lines if x["source"] == "unanswered"]
    by_fault = summary["input_rejections"]["by_fault"]

    clean = by_fault["clean"]
    lo, hi = wilson_interval(clean["rejected"], clean["frames"])
    rates = {k: by_fault[k]["rejected"] / by_fault[k]["frames"] for k in kinds}
    p50 = float(np.median([x["total_ms"] for x in lines[:N_CLEAN]]))
    with capsys.disabled():
        cv = report["false_reject"]
        print(
            f"\n{name}: clean false rejects {clean['rejected']}/{clean['frames']} "
            f"(95 % interval {lo:.1%}-{hi:.1%}; calibration's cross-validated estimate "
            f"{cv['rejected']}/{cv['frames']}); detected: "
            + ", ".join(f"{k} {v:.0%}" for k, v in rates.items())
            + f"; clean-frame latency p50 {p50:.1f} ms, deadline {summary['deadline_ms']:g} ms"
        )
    assert clean["frames"] == N_CLEAN
    assert clean["rejected"] / clean["frames"] <= MAX_CLEAN_REJECT, summary["input_rejections"]
    for kind, gated in FAULTS:
        if gated:
            assert rates[kind] >= MIN_DETECTION, (kind, by_fault[kind], summary["input_rejections"])
    # a rejected single-model frame is refused, never answered with something else
    assert {x["source"] for x in lines} <= {"single_member", "rejected"}

    # run: the answers of accepted clean frames are the model's own, every output
    ok = [x["frame"] for x in lines[:N_CLEAN] if not x["rejected_by"]][:6]
    feeds = {k: v[ok] for k, v in held.items()}
    np.savez(tmp_path / "in.npz", **feeds)
    r = run_bundle(tmp_path, bundle, tmp_path / "in.npz", tmp_path / "out.npz", tmp_path / "state2")
    assert r.returncode == 0, r.stderr
    want = _reference(model, feeds)
    with np.load(tmp_path / "out.npz") as got:
        assert sorted(got.files) == sorted(want)
        for k, v in want.items():
            np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-5, err_msg=k)


def _serve_clean(tmp: Path, bundle: Path, frames: Path, input_name: str) -> dict:
    r = eg(
        "serve",
        bundle,
        "--trust",
        tmp / "signer.pub",
        "--device-key",
        tmp / "dev" / "device.key",
        "--state-dir",
        tmp / "state-variants",
        "--frames",
        frames,
        "--input-name",
        input_name,
        "--no-drop",
        "--json",
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr
    summary: dict = json.loads(r.stdout)
    return summary


@pytest.mark.parametrize("name", zoo.NAMES)
def test_a_zoo_models_variants_ship_within_their_signed_agreement_or_are_refused(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = zoo.info(name)
    model = zoo.model_path(name)
    make_keys(tmp_path)
    cal = tmp_path / "cal.npz"
    np.savez(cal, **zoo.frames(name, N_CAL))
    bundle = tmp_path / f"{name}-variants.egb"
    kinds = ["fp32", "fp16", "int8"]
    refused: list[str] = []
    while True:
        r = build(
            tmp_path, bundle, model, extra=("--calibration", cal, "--variants", ",".join(kinds))
        )
        if r.returncode == 0:
            break
        # a refusal: one line, exit 2, naming the variant, its metric and value
        assert r.returncode == 2, r.stderr
        line = r.stderr.strip().splitlines()[-1]  # after the calibration report
        assert line.startswith("edgeguard: error: variant "), r.stderr
        assert r.stderr.count("edgeguard: error") == 1, r.stderr
        bad = next((k for k in ("int8", "fp16") if f"-{k}" in line and k in kinds), None)
        assert bad is not None, line
        assert "threshold" in line, line
        refused.append(line)
        kinds.remove(bad)
        assert len(kinds) > 1, refused
    with open(bundle, "rb") as f:
        prefix, _ = read_prefix(f)
    slots = read_slots(prefix.header.manifest)
    shipped = {f"{model.stem}-{k}" for k in kinds if k != "fp32"}
    assert set(slots.variants) == shipped
    for member, check in slots.variants.items():
        assert check.value >= check.threshold, (member, check)
    held = tmp_path / "held.npz"
    np.savez(held, **zoo.held_out(name, 30))
    summary = _serve_clean(tmp_path, bundle, held, entry.input_name)
    with capsys.disabled():
        print(
            f"\n{name}: shipped {', '.join(kinds)} ("
            + ", ".join(
                f"{m.rsplit('-', 1)[1]} {c.metric} {c.value:.3f} >= {c.threshold:g}"
                for m, c in sorted(slots.variants.items())
            )
            + f"); refused: {len(refused)}"
            + "".join(f"\n    {x}" for x in refused)
            + f"\n    served 30 held-out frames: {summary['sources']}, "
            f"p50 {summary['latency_ms']['p50']:.4g} ms, deadline {summary['deadline_ms']:g} ms"
        )
    assert summary["frames"] == 30 and summary["unanswered"] == 0, summary

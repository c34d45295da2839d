"""Calibration that holds on real data: input selection, fixed batches, motion, the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgeguard.cli.main import main
from edgeguard.errors import UsageError
from edgeguard.guard.checks import FrameChecks
from edgeguard.guard.sanity import SanityGuard
from edgeguard.packaging.calibrate import MIN_FRAMES, calibrate_with_report
from edgeguard.policy.io import TensorSpec
from edgeguard.policy.sanity import Status


def _model(inputs: list, nodes: list, outputs: list) -> bytes:
    g = helper.make_graph(nodes, "m", inputs, outputs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def _photos(n: int, size: int = 48, seed: int = 0, step: int = 0) -> np.ndarray:
    """Crops of real photographs, [n, 3, size, size] float32 in [-1, 1]; with ``step``, a
    slow pan (the window moves ``step`` pixels per frame) instead of random crops."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32)
    y0, x0 = 100, 100
    for i in range(n):
        img = photos[i % 2 if not step else 0]
        if step:
            y, x = y0, x0 + i * step
        else:
            y = int(rng.integers(0, img.shape[0] - size))
            x = int(rng.integers(0, img.shape[1] - size))
        crop = img[y : y + size, x : x + size].astype(np.float32)
        out[i] = ((crop / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return out


FIXED = _model(
    [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 48, 48])],
    [helper.make_node("ReduceMean", ["images"], ["y"], axes=[2, 3], keepdims=0)],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
)
AUDIO = _model(
    [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, []),
    ],
    [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=0),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["m", "srf"], ["y"]),
    ],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
)


def test_a_fixed_batch_of_one_is_calibrated_frame_by_frame() -> None:
    data = {"images": _photos(40)}
    profile, report = calibrate_with_report(FIXED, data, progress=False)
    assert report.frames == 40 and profile.inputs[0].shape[0] == (1, 1)
    assert any("only 40 calibration frames" in w for w in report.warnings) and MIN_FRAMES > 40


def test_a_scalar_input_beside_a_signal_is_left_unchecked_and_said_so() -> None:
    rng = np.random.default_rng(0)
    x = np.sin(np.linspace(0, 60, 256))[None, :] * rng.uniform(0.2, 1.0, (120, 1))
    data = {"x": (x + 0.05 * rng.normal(size=x.shape)).astype(np.float32), "sr": np.array(16000)}
    profile, report = calibrate_with_report(AUDIO, data, progress=False)
    assert [i.name for i in profile.inputs] == ["x"] and profile.unchecked == ("sr",)
    assert report.unchecked[0][0] == "sr" and "int64" in report.unchecked[0][1]
    # the guard accepts the unchecked input; the I/O contract still checks its dtype
    guard = SanityGuard(profile, threads=1)
    frame = {"x": data["x"][:1], "sr": np.array(16000)}
    assert guard.check_inputs(frame).status is not Status.REJECT
    checks = FrameChecks(
        (TensorSpec("x", "float32", (None, 256)), TensorSpec("sr", "int64", ())), guard
    )
    assert checks.check_inputs({**frame, "sr": np.array(16000.0)}).violations[0].check == (
        "input.dtype"
    )
    with pytest.raises(UsageError, match="cannot be checked"):
        calibrate_with_report(AUDIO, data, check_inputs=["sr"], progress=False)
    with pytest.raises(UsageError, match="does not take"):
        calibrate_with_report(AUDIO, data, check_inputs=["y"], progress=False)


def test_synthetic_motion_accepts_a_slow_pan_and_rejects_a_repeated_frame() -> None:
    profile, report = calibrate_with_report(FIXED, {"images": _photos(120, seed=3)}, progress=False)
    assert report.temporal == "synthetic-motion" and profile.calibration.temporal == report.temporal
    guard = SanityGuard(profile, threads=1)
    pan = _photos(12, step=8)
    prev = None
    for i in range(len(pan)):
        frame = {"images": pan[i : i + 1]}
        assert not guard.check_inputs(frame, prev).rejected, i
        prev = frame
    frozen = guard.check_inputs({"images": pan[5:6]}, {"images": pan[5:6].copy()})
    assert frozen.rejected and any(v.check == "stat.tdiff" for v in frozen.violations)


def test_held_out_crops_pass_and_broken_frames_do_not() -> None:
    profile, report = calibrate_with_report(FIXED, {"images": _photos(120, seed=1)}, progress=False)
    k, n = report.false_reject
    assert n == 120 and k / n <= 0.02 and report.interval[1] < 0.06
    guard = SanityGuard(profile, threads=1)
    held = _photos(60, seed=99)
    assert sum(guard.check_inputs({"images": held[i : i + 1]}).rejected for i in range(60)) <= 1
    broken = {
        "x255": held[:20] * 255,
        "/255": held[:20] / 255,
        "black": np.full_like(held[:20], -1.0),
        "noise": held[:20] + np.random.default_rng(0).normal(0, 0.5, held[:20].shape),
    }
    for what, frames in broken.items():
        frames = frames.astype(np.float32)
        got = [guard.check_inputs({"images": frames[i : i + 1]}).rejected for i in range(20)]
        if what == "/255":
            # these calibration crops include nearly uniform patches of sky (std 0.004 in
            # -1..1 units), which a textured crop divided by 255 resembles: contrast alone
            # catches most, not all (on the zoo's scenes it catches every one)
            assert sum(got) >= 12, (what, sum(got))
        else:
            assert all(got), what


def test_the_cli_report_and_a_profile_given_to_build(tmp_path: Path, capsys) -> None:
    (tmp_path / "m.onnx").write_bytes(FIXED)
    np.savez(tmp_path / "cal.npz", images=_photos(30))
    out = tmp_path / "p.json"
    args = ["calibrate", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "cal.npz")]
    assert main([*args, "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["report"]
    assert report["frames"] == 30 and report["temporal"] == "synthetic-motion"
    assert report["false_reject"]["interval95"][1] > 0 and report["warnings"]
    assert main(["keygen", "signer", "-o", str(tmp_path / "k")]) == 0
    assert main(["keygen", "device", "-o", str(tmp_path / "k" / "d"), "--id", "d"]) == 0
    build = [
        "build",
        "-o",
        str(tmp_path / "b.egb"),
        "--sign-key",
        str(tmp_path / "k" / "signer.key"),
        "--recipient",
        str(tmp_path / "k" / "d" / "device.pub"),
        "--device-profile",
        "generic-cpu",
        "--version",
        "1",
        "--calibration",
        str(out),
    ]
    assert main(["build", str(tmp_path / "m.onnx"), *build[1:]]) == 0
    assert "sanity profile embedded" in capsys.readouterr().out
    other = tmp_path / "other.onnx"
    other.write_bytes(AUDIO)
    assert main(["build", str(other), *build[1:]]) == 2
    assert "calibrated for another model" in capsys.readouterr().err


def test_the_wilson_interval_has_exact_ends_and_covers_the_rate() -> None:
    from edgeguard.packaging.envelope import wilson_interval

    assert wilson_interval(0, 40)[0] == 0.0 and 0.05 < wilson_interval(0, 40)[1] < 0.1
    assert wilson_interval(40, 40)[1] == 1.0
    lo, hi = wilson_interval(3, 100)
    assert lo < 0.03 < hi and (round(lo, 4), round(hi, 4)) == (0.0103, 0.0845)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_a_model_without_logits_runs_on_one_frame_only() -> None:
    """No OOD thresholds to derive (a map output): the model runs once, on one frame, to
    show the data fits it, not over a whole batch of large frames."""
    from edgeguard.backends.onnxruntime import OnnxRuntimeBackend

    mapper = _model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 48, 48])],
        [helper.make_node("Sigmoid", ["x"], ["y"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 48, 48])],
    )
    batches: list[int] = []
    with OnnxRuntimeBackend.from_bytes(mapper) as backend:
        run = backend.run

        def counting(feeds, *a, **k):  # type: ignore[no-untyped-def]
            batches.append(len(feeds["x"]))
            return run(feeds, *a, **k)

        backend.run = counting  # type: ignore[method-assign]
        profile, _ = calibrate_with_report(
            backend, {"x": _photos(80)}, model_sha256="0" * 64, progress=False
        )
    assert batches == [1] and profile.ood == ()


def test_a_dynamic_image_size_is_accepted_from_half_to_twice_the_calibrated_one() -> None:
    dyn = _model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_node("Sigmoid", ["x"], ["y"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])],
    )
    profile, _ = calibrate_with_report(dyn, {"x": _photos(120, size=32)}, progress=False)
    assert profile.inputs[0].shape == ((1, None), (3, 3), (16, 64), (16, 64))
    guard = SanityGuard(profile, threads=1)
    for size, ok in ((16, True), (48, True), (64, True), (15, False), (80, False)):
        frame = _photos(1, size=size, seed=5)
        verdict = guard.check_inputs({"x": frame})
        assert verdict.rejected is not ok, (size, verdict)


def test_a_layout_that_makes_an_image_axis_the_channels_is_refused() -> None:
    with pytest.raises(UsageError, match="makes 48 the channel count") as info:
        calibrate_with_report(
            FIXED, {"images": _photos(20)}, layouts={"images": "NHWC"}, progress=False
        )
    assert "--layout NCHW" in (info.value.hint or "")

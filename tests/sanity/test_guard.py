"""SanityGuard verdicts on the digits example model: clean passes, corruptions reject."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from edgeguard.errors import InputRejectedError, MissingDependencyError, UsageError
from edgeguard.guard.sanity import corruptions as cor
from edgeguard.guard.sanity.check import SanityGuard, compute_stats
from edgeguard.packaging.calibrate import calibrate_stats_only
from edgeguard.packaging.envelope import EnvelopeParams, derive_limits, extrapolation
from edgeguard.policy.sanity import SanityProfile, Status


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    from edgeguard.data import load_split

    return load_split("test")


@pytest.fixture(scope="module")
def guard(digits_profile: SanityProfile) -> SanityGuard:
    return SanityGuard(digits_profile)


def test_clean_held_out_data_false_reject_rate(
    guard: SanityGuard, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = test_split
    rejected = 0
    for i in range(x.shape[0]):
        prev = {"image": x[i - 1 : i]} if i else None
        rejected += guard.check_inputs({"image": x[i : i + 1]}, prev).rejected
    assert rejected / x.shape[0] <= 0.01


def test_clean_batch_passes_or_warns_only(
    guard: SanityGuard, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = test_split
    v = guard.check_inputs({"image": x[:32]})
    assert v.status is not Status.REJECT, v.to_dict()


RNG = np.random.default_rng(11)
CORRUPTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "nan": lambda x: cor.inject(x, np.nan, fraction=0.02, rng=RNG),
    "inf": lambda x: cor.inject(x, np.inf, fraction=0.02, rng=RNG),
    "dropped_channel": lambda x: cor.drop_channel(x, 0),
    "wrong_scale": lambda x: cor.wrong_scale(x, factor=255.0),
    "noise_0.1": lambda x: cor.gaussian_noise(x, sigma=0.1, rng=RNG),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_is_rejected(
    guard: SanityGuard, test_split: tuple[np.ndarray, np.ndarray], name: str
) -> None:
    x, _ = test_split
    bad = CORRUPTIONS[name](x[:20].copy())
    for i in range(bad.shape[0]):
        v = guard.check_inputs({"image": bad[i : i + 1]})
        assert v.status is Status.REJECT, (name, i, v.to_dict())
        with pytest.raises(InputRejectedError):
            v.raise_if_rejected()


def test_saturation_mostly_rejected_and_almost_always_flagged(
    guard: SanityGuard, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    # Over-exposure (gain 4) keeps every value inside the range, so only the fraction
    # of saturated pixels shows it; bold digits over-expose gracefully (docs/sanity.md).
    x, _ = test_split
    bad = cor.saturate(x[:60], gain=4.0)
    verdicts = [guard.check_inputs({"image": bad[i : i + 1]}) for i in range(60)]
    assert sum(v.rejected for v in verdicts) >= 0.6 * 60
    assert sum(v.status is not Status.PASS for v in verdicts) >= 59
    assert any(w.check == "stat.sat_hi" for v in verdicts for w in v.violations)


def test_frozen_frame_is_rejected_through_tdiff(
    guard: SanityGuard, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = test_split
    for i in range(10):
        frame = x[i : i + 1]
        v = guard.check_inputs({"image": frame}, {"image": frame.copy()})
        assert v.status is Status.REJECT
        assert any(w.check == "stat.tdiff" and w.value == 0.0 for w in v.violations)


def test_structural_violations(guard: SanityGuard) -> None:
    ok = np.zeros((1, 1, 8, 8), np.float32) + 0.5
    v = guard.check_inputs({"image": ok.astype(np.float64)})
    assert v.status is Status.REJECT and v.violations[0].check == "dtype"
    assert guard.check_inputs({}).violations[0].check == "input.missing"
    v = guard.check_inputs({"image": ok, "other": ok})
    assert "input.unexpected" in {w.check for w in v.violations}


def test_outputs_checked(guard: SanityGuard) -> None:
    good = np.zeros((1, 10), np.float32)
    good[0, 3] = 20.0
    assert guard.check_outputs({"logits": good}).status is Status.PASS
    flat = np.zeros((1, 10), np.float32)
    assert guard.check_outputs({"logits": flat}).status is Status.WARN
    nan = good.copy()
    nan[0, 0] = np.nan
    assert guard.check_outputs({"logits": nan}).status is Status.REJECT


def test_rgb_channel_corruptions_on_stats_only_profile() -> None:
    rng = np.random.default_rng(5)
    # synthetic "scenes": a warm (red-dominant) gradient with texture
    base = np.linspace(0.2, 0.8, 16, dtype=np.float32)
    frames = np.empty((200, 16, 16, 3), np.float32)
    for n in range(200):
        g = base[None, :] * rng.uniform(0.8, 1.0) + 0.05 * rng.random((16, 16))
        frames[n, ..., 0] = np.clip(g + 0.15, 0, 1)
        frames[n, ..., 1] = np.clip(g * 0.7, 0, 1)
        frames[n, ..., 2] = np.clip(g * 0.4, 0, 1)
    profile = calibrate_stats_only({"rgb": frames[:150]}, layouts={"rgb": "NHWC"})
    g = SanityGuard(profile, impl="numba")
    held = frames[150:]
    assert sum(g.check_inputs({"rgb": held[i : i + 1]}).rejected for i in range(50)) == 0
    for fn in (
        lambda x: cor.bgr_swap(x, layout="NHWC"),
        lambda x: cor.drop_channel(x, 1, layout="NHWC"),
    ):
        bad = fn(held)
        assert all(g.check_inputs({"rgb": bad[i : i + 1]}).rejected for i in range(50))


def test_every_impl_gives_the_same_verdict(
    digits_profile: SanityProfile, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = test_split
    bad = cor.saturate(x[:5], gain=4.0)
    a = SanityGuard(digits_profile, impl="numpy").check_inputs({"image": bad})
    b = SanityGuard(digits_profile, impl="numba").check_inputs({"image": bad})
    assert a.status is b.status is Status.REJECT
    assert [v.check for v in a.violations] == [v.check for v in b.violations]


def test_unknown_impl_and_unbuilt_cuda_cpp(digits_profile: SanityProfile) -> None:
    with pytest.raises(UsageError):
        SanityGuard(digits_profile, impl="opencl")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        compute_stats(np.zeros((1, 1, 2, 2), np.float32), impl="fpga")  # type: ignore[arg-type]
    from edgeguard._optional import available

    if available("pycuda"):
        pytest.skip("pycuda present: the CUDA C++ refusal path depends on the device")
    with pytest.raises(MissingDependencyError) as exc:
        SanityGuard(digits_profile, impl="cuda-cpp")
    assert exc.value.exit_code == 7


def _params(n_channels: int = 1, resolution: float = 0.0) -> EnvelopeParams:
    return EnvelopeParams(
        tail=1e-3, margin=0.5, value_range=(0.0, 1.0), resolution=(resolution,) * n_channels
    )


def test_envelope_edges_zero_range_and_frozen_frames() -> None:
    rng = np.random.default_rng(0)
    p = _params()
    # tdiff: only an (almost) exact repeat is a frozen frame; a slow pan is not
    lim, _ = derive_limits("tdiff", rng.uniform(0.01, 0.2, (200, 1)), p)
    assert 0.0 < lim.reject_low[0] <= 1e-6 and lim.reject_high[0] > 0.2
    # std: an exact zero (a constant frame) stays outside
    lim, _ = derive_limits("std", rng.uniform(0.2, 0.3, (200, 1)), p)
    assert lim.reject_low[0] > 0.0
    # min: below the value range is a fault, a crop without black is not
    lim, info = derive_limits("min", np.zeros((200, 1)), _params(resolution=1 / 255))
    assert info.constant == (True,) and info.floored == (True,)
    assert lim.reject_low[0] == pytest.approx(-0.02) and lim.reject_high[0] >= 0.05
    # a channel without a finite value is unbounded
    empty, _ = derive_limits("mean", np.full((3, 1), np.nan), p)
    assert empty.reject_low == (-np.inf,)


def test_a_small_sample_gives_a_band_that_still_covers_the_distribution() -> None:
    rng = np.random.default_rng(1)
    population = rng.normal(0.5, 0.01, 200_000)
    assert extrapolation(20, 1e-3) > 1.5 and extrapolation(100_000, 1e-3) == 1.0
    warn, reject, raw = [], [], []
    for _ in range(200):
        v = rng.normal(0.5, 0.01, (20, 1))
        lim, _ = derive_limits("mean", v, EnvelopeParams(1e-3, 0.5, (0.0, 1.0), (0.0,)))
        warn.append(np.mean((population >= lim.warn_low[0]) & (population <= lim.warn_high[0])))
        reject.append(
            np.mean((population >= lim.reject_low[0]) & (population <= lim.reject_high[0]))
        )
        raw.append(np.mean((population >= v.min()) & (population <= v.max())))
    # 20 frames' own extremes miss about a tenth of the distribution; the bands do not
    assert np.mean(raw) < 0.93 and np.mean(warn) > 0.98 and np.mean(reject) > 0.9995


@pytest.mark.parametrize("impl", ["numba", "numpy"])  # compiled / NumPy envelope test
def test_fast_paths_give_the_full_verdict(
    digits_profile: SanityProfile, test_split: tuple[np.ndarray, np.ndarray], impl: str
) -> None:
    # The guard skips the per-value limit scan when the stacked envelope test says
    # "all inside", and the static checks for a (dtype, shape) that passed before.
    # Both must give exactly the verdict of the full path, clean or corrupted.
    from edgeguard.guard.sanity.check import input_violations
    from edgeguard.guard.sanity.layout import static_checks

    guard = SanityGuard(digits_profile, impl=impl)  # type: ignore[arg-type]
    assert guard._envelopes["image"] is not None
    assert guard._envelopes["image"].compiled == (impl == "numba")
    x, _ = test_split
    p = guard.profile.input("image")
    frames = [x[i : i + 1] for i in range(40)]
    frames += [CORRUPTIONS[n](x[40:41].copy()) for n in CORRUPTIONS]
    frames += [x[41:42] * 1.04, x[42:43] + 0.02, np.repeat(x[43:44], 2, axis=0)]
    prev = None
    statuses = set()
    for f in frames:
        pv = prev if prev is not None and prev.shape == f.shape else None
        fast = guard.check_inputs({"image": f}, {"image": pv} if pv is not None else None)
        full = static_checks("image", f, p) + input_violations(
            "image", guard.input_stats("image", f, pv), p
        )
        assert fast.violations == tuple(full)
        statuses.add(fast.status)
        prev = f
    assert statuses == {Status.PASS, Status.WARN, Status.REJECT}  # every branch taken
    # the static-check cache never lets a changed dtype, shape or layout through
    ok = x[0:1]
    assert guard.check_inputs({"image": ok}).status is not Status.REJECT
    for bad, check in (
        (ok.astype(np.float64), "dtype"),
        (np.asfortranarray(np.repeat(ok, 2, axis=3)), "shape"),
        (np.repeat(ok, 2, axis=3)[..., ::2], "contiguity"),
    ):
        v = guard.check_inputs({"image": bad})
        assert check in {w.check for w in v.violations}, (check, v.to_dict())


def test_warm_up_compiles_every_kernel_before_the_first_frame() -> None:
    """In a fresh process, warm_up leaves nothing for the first check to compile."""
    pytest.importorskip("numba")
    import subprocess
    import sys

    code = """
import numpy as np
from edgeguard.guard.sanity import _cpu as k
from edgeguard.packaging.calibrate import calibrate_stats_only
from edgeguard.guard.sanity.check import SanityGuard
calib = {"x": np.random.default_rng(0).random((16, 3, 8, 8)).astype(np.float32)}
g = SanityGuard(calibrate_stats_only(calib))
names = ("stats_f32_ser", "stats_f32_par", "env_inside", "nonfinite_count")
before = {n: len(getattr(k, n).signatures) for n in names}
g.warm_up()
after = {n: len(getattr(k, n).signatures) for n in names}
frame = {"x": calib["x"][:1]}
g.check_inputs(frame, prev=frame)
g.check_outputs({"y": np.zeros((1, 10), np.float32), "z": np.zeros(3)})
final = {n: len(getattr(k, n).signatures) for n in names}
print(before, after, final)
# calibration already ran the serial kernel; the others are first used by the checks
assert [before[n] for n in names[1:]] == [0, 0, 0], before
assert all(v >= 1 for v in after.values()), after
assert final == after, (after, final)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]

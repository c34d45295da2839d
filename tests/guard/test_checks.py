"""FrameChecks: the signed I/O contract first, then the sanity profile."""

from __future__ import annotations

import numpy as np
import pytest

from edgeguard.guard.checks import FrameChecks, contract_violations
from edgeguard.guard.sanity import SanityGuard
from edgeguard.packaging.calibrate import calibrate_stats_only
from edgeguard.policy.io import TensorSpec
from edgeguard.policy.sanity import Status
from edgeguard.runtime.session import split_frames

SPECS = (TensorSpec("x", "float32", (None, 1, 8, 8)), TensorSpec("sr", "int64", ()))
OK = {"x": np.zeros((2, 1, 8, 8), np.float32), "sr": np.array(16000, np.int64)}


@pytest.mark.parametrize(
    ("feeds", "checks"),
    [
        (OK, []),
        ({**OK, "y": OK["x"]}, ["input.unexpected"]),
        ({"x": OK["x"]}, ["input.missing"]),
        ({**OK, "x": [[1.0]]}, ["input.type"]),
        ({**OK, "x": OK["x"].astype(np.float64)}, ["input.dtype"]),
        ({**OK, "x": np.zeros((2, 8, 8), np.float32)}, ["input.rank"]),
        ({**OK, "x": np.zeros((2, 3, 8, 8), np.float32)}, ["input.shape"]),
        (
            {**OK, "x": np.zeros((2, 1, 8, 8), np.uint8), "sr": np.zeros(1)},
            ["input.dtype"] * 2 + ["input.rank"],
        ),
    ],
)
def test_contract_violations(feeds, checks) -> None:
    found = contract_violations(feeds, SPECS)
    assert sorted(v.check for v in found) == sorted(checks)
    assert all(v.severity is Status.REJECT and v.detail for v in found)


def test_contract_first_then_the_profile() -> None:
    rng = np.random.default_rng(0)
    calib = {"x": rng.random((64, 1, 8, 8)).astype(np.float32)}
    spec = (TensorSpec("x", "float32", (None, 1, 8, 8)),)
    checks = FrameChecks(spec, SanityGuard(calibrate_stats_only(calib), threads=1))
    checks.warm_up()
    assert checks.counts_nonfinite_outputs
    assert checks.check_inputs({"x": calib["x"][:1]}).status is Status.PASS
    assert checks.check_inputs({"x": calib["x"][:1]}).status is Status.PASS  # cached contract
    v = checks.check_inputs({"x": calib["x"][:1].astype(np.float64)})
    assert [x.check for x in v.violations] == ["input.dtype"]  # the profile is not consulted
    bad = calib["x"][:1] * 255
    assert any(x.check.startswith("stat.") for x in checks.check_inputs({"x": bad}).violations)
    plain = FrameChecks(spec, None)
    assert not plain.counts_nonfinite_outputs
    assert plain.check_inputs({"x": bad}).status is Status.PASS  # no profile: the contract only
    assert plain.check_outputs({"y": np.full(2, np.nan)}).status is Status.PASS
    assert FrameChecks(None, None).check_inputs({"anything": 1}).status is Status.PASS


def test_split_frames_cuts_batch_axes_and_keeps_the_rest_whole() -> None:
    feeds = {"x": np.arange(3 * 64, dtype=np.float32).reshape(3, 1, 8, 8), "sr": np.array(8000)}
    frames = list(split_frames(feeds, SPECS))
    assert len(frames) == 3 and all(f["x"].shape == (1, 1, 8, 8) for f in frames)
    assert all(f["sr"] is feeds["sr"] for f in frames) and frames[2]["x"][0, 0, 0, 0] == 128
    fixed = (TensorSpec("x", "float32", (4, 2)),)  # a fixed first axis other than 1: one request
    assert len(list(split_frames({"x": np.zeros((4, 2), np.float32)}, fixed))) == 1
    two = (TensorSpec("a", "float32", (None, 2)), TensorSpec("b", "float32", (None, 2)))
    with pytest.raises(Exception, match="different numbers of frames"):
        list(split_frames({"a": np.zeros((2, 2)), "b": np.zeros((3, 2))}, two))


def test_a_named_axis_has_one_size_across_the_inputs() -> None:
    specs = (
        TensorSpec("image", "float32", ("N", 3, "H", "W")),
        TensorSpec("scale", "float32", ("N", 2)),
        TensorSpec("mask", "float32", (None, "side", "side")),
    )
    ok = {
        "image": np.zeros((2, 3, 8, 6), np.float32),
        "scale": np.zeros((2, 2), np.float32),
        "mask": np.zeros((5, 4, 4), np.float32),
    }
    assert contract_violations(ok, specs) == []
    found = contract_violations({**ok, "scale": np.zeros((3, 2), np.float32)}, specs)
    assert [(v.check, v.tensor) for v in found] == [("input.shape", "scale")]
    assert found[0].detail == (
        "axis 0 ('N') is 3, but 'N' is 2 in axis 0 of 'image'; the model takes one size for it"
    )
    found = contract_violations({**ok, "mask": np.zeros((5, 4, 3), np.float32)}, specs)
    assert [(v.check, v.tensor) for v in found] == [("input.shape", "mask")]
    assert "axis 2 ('side') is 3, but 'side' is 4 in axis 1 of 'mask'" in found[0].detail

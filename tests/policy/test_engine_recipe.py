"""The engine recipe's prebuilt-plan tags and the device's compatibility rule."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from edgeguard.errors import MalformedError
from edgeguard.policy.engine import (
    EngineRecipe,
    MemberRecipe,
    PrebuiltEngine,
    prebuilt_mismatch,
)

TAG = PrebuiltEngine(
    member="det.plan",
    for_member="det",
    tensorrt="10.3.0",
    compute_capability="8.7",
    gpu_name="Orin",
    device_profile="jetson-agx-orin",
)
HERE = {"tensorrt": "10.3.0.30", "compute_capability": "8.7", "gpu_name": "Orin", "driver": "540"}


def test_same_device_matches_and_a_build_number_is_ignored() -> None:
    assert prebuilt_mismatch(TAG, HERE) is None
    assert prebuilt_mismatch(TAG, {**HERE, "tensorrt": "10.3.0"}) is None


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        ({"tensorrt": "10.3.1"}, "this device has TensorRT 10.3.1"),
        ({"tensorrt": "10.4.0"}, "a plan needs the same TensorRT version"),
        ({"tensorrt": "10.2.0"}, "10.2.0"),
        ({"tensorrt": "ten"}, "not a version"),
        ({"compute_capability": "8.6"}, "compute capability 8.6"),
        ({"compute_capability": "87"}, "not 'major.minor'"),
        ({"gpu_name": "Orin Nano"}, "the same GPU model"),
        ({"gpu_name": ""}, "does not report its gpu_name"),
        ({"tensorrt": ""}, "does not report its tensorrt"),
    ],
)
def test_default_plan_needs_the_same_trt_patch_and_gpu_model(
    identity: dict[str, str], expected: str
) -> None:
    why = prebuilt_mismatch(TAG, {**HERE, **identity})
    assert why is not None and expected in why and "\n" not in why


def test_missing_identity_keys_are_named() -> None:
    why = prebuilt_mismatch(TAG, {"driver": "540"})
    assert why == "this device does not report its tensorrt, compute_capability, gpu_name"


def test_version_compatible_runs_on_later_trt_of_the_same_major() -> None:
    vc = replace(TAG, version_compatible=True)
    assert prebuilt_mismatch(vc, {**HERE, "tensorrt": "10.3.0"}) is None
    assert prebuilt_mismatch(vc, {**HERE, "tensorrt": "10.3.2"}) is None
    assert prebuilt_mismatch(vc, {**HERE, "tensorrt": "10.8.0"}) is None
    for older_or_other in ("10.2.9", "11.0.0", "9.9.9"):
        why = prebuilt_mismatch(vc, {**HERE, "tensorrt": older_or_other})
        assert why is not None and "version-compatible" in why
    old = replace(vc, tensorrt="8.5.3")
    assert "before version-compatible plans existed" in str(
        prebuilt_mismatch(old, {**HERE, "tensorrt": "8.6.1"})
    )


def test_hardware_levels_relax_the_gpu_model() -> None:
    same_cc = replace(TAG, hardware_compatibility_level="same_compute_capability")
    assert prebuilt_mismatch(same_cc, {**HERE, "gpu_name": "Orin (nvgpu) 32GB"}) is None
    assert prebuilt_mismatch(same_cc, {**HERE, "compute_capability": "8.6"}) is not None
    ampere = replace(TAG, hardware_compatibility_level="ampere+")
    assert prebuilt_mismatch(ampere, {**HERE, "compute_capability": "8.6", "gpu_name": "A"}) is None
    assert prebuilt_mismatch(ampere, {**HERE, "compute_capability": "9.0"}) is None
    why = prebuilt_mismatch(ampere, {**HERE, "compute_capability": "7.2"})
    assert why is not None and "Ampere or newer" in why
    # a hardware level does not relax the TensorRT version
    assert prebuilt_mismatch(ampere, {**HERE, "tensorrt": "10.4.0"}) is not None


def _slot(**tag: Any) -> dict[str, Any]:
    recipe = EngineRecipe(members={"det": MemberRecipe(fp16=True)}, prebuilt=(TAG,)).to_dict()
    recipe["prebuilt"][0].update(tag)
    return recipe


def test_slot_round_trip_and_prebuilt_only_when_present() -> None:
    r = EngineRecipe.from_dict(_slot())
    assert r.prebuilt == (TAG,) and r.prebuilt_for("det") == TAG and r.prebuilt_for("x") is None
    assert EngineRecipe.from_dict(r.to_dict()) == r
    assert "prebuilt" not in EngineRecipe(members={"det": MemberRecipe()}).to_dict()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"for_member": "other"}, "has no recipe"),
        ({"member": "det"}, "must differ"),
        ({"tensorrt": "10.3"}, "not a TensorRT version"),
        ({"tensorrt": "10.3.0-rc1"}, "not a TensorRT version"),
        ({"compute_capability": "8"}, "not allowed"),
        ({"gpu_name": "Orin\n"}, "not allowed"),
        ({"device_profile": "../x"}, "not allowed"),
        ({"version_compatible": 1}, "true or false"),
        ({"version_compatible": True}, "must be those of the recipe"),
        ({"hardware_compatibility_level": "ampere+"}, "must be those of the recipe"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_prebuilt_refusals(change: dict[str, Any], match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        EngineRecipe.from_dict(_slot(**change))


def test_two_plans_for_one_member_and_a_plan_twice_are_refused() -> None:
    second = replace(TAG, member="det2.plan")
    with pytest.raises(MalformedError, match="two plans replace the same member"):
        EngineRecipe(members={"det": MemberRecipe()}, prebuilt=(TAG, second))
    with pytest.raises(MalformedError, match="appears twice"):
        EngineRecipe(members={"det": MemberRecipe()}, prebuilt=(TAG, TAG))


def test_calibration_member_needs_int8_and_timing_cache_round_trips() -> None:
    with pytest.raises(MalformedError, match="only meaningful with int8 or best"):
        MemberRecipe(fp16=True, int8_calibration_member="cal")
    for r in (
        MemberRecipe(int8=True, int8_calibration_member="int8-calibration", timing_cache=True),
        MemberRecipe(best=True, int8_calibration_member="cal"),
    ):
        assert MemberRecipe.from_dict(r.to_dict(), "m") == r
    with pytest.raises(MalformedError, match="not allowed"):
        MemberRecipe.from_dict({"int8": True, "int8_calibration_member": "../cal"}, "m")


def test_check_manifest() -> None:
    r = EngineRecipe(
        members={"det": MemberRecipe(int8=True, int8_calibration_member="cal")}, prebuilt=(TAG,)
    )
    good = {
        "det": ("primary", "onnx"),
        "det.plan": ("engine", "trt-engine"),
        "cal": ("aux", "npz"),
    }
    r.check_manifest(good)
    for name, entry, match in (
        ("det.plan", ("member", "trt-engine"), "role engine and format trt-engine"),
        ("det.plan", ("engine", "onnx"), "role engine and format trt-engine"),
        ("cal", ("aux", "json"), "role aux and format npz"),
        ("det", ("aux", "npz"), "recipes for members the manifest lacks"),
    ):
        with pytest.raises(MalformedError, match=match):
            r.check_manifest({**good, name: entry})
    with pytest.raises(MalformedError, match="role aux and format npz"):
        r.check_manifest({k: v for k, v in good.items() if k != "cal"})

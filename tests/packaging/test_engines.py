"""Engine recipes on build: parsing trtexec's syntax, the checks against the device
profiles and the I/O contract, the INT8 frames, and prebuilt plans (with a fake builder:
a test double returning fake bytes, never a GPU result)."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest

from edgeguard.devices import load_profile
from edgeguard.errors import BackendError, UsageError
from edgeguard.packaging import engines
from edgeguard.packaging.engines import (
    EngineOptions,
    build_prebuilt,
    calibration_npz,
    calibration_subset,
    check_identity,
    check_profiles,
    member_recipes,
    parse_mem_pool,
    parse_shapes,
    shape_ranges,
)
from edgeguard.policy.engine import MemberRecipe, ShapeRange
from edgeguard.policy.io import MemberIo, TensorSpec

ORIN = load_profile("jetson-agx-orin")
NANO = load_profile("jetson-nano")
ORIN_NANO = load_profile("jetson-orin-nano")
CPU = load_profile("generic-cpu")
MiB = 1 << 20


# -- --memPoolSize ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("workspace:1024", 1 << 30),
        ("workspace:1", MiB),
        ("workspace:0.5G", 512 * MiB),
        ("workspace:65536K", 64 * MiB),
        ("workspace:1048576B", MiB),
        ("workspace:1.5", MiB + MiB // 2),
        ("workspace:2.0000001M", 2 * MiB),  # rounded down to whole bytes, like trtexec
        ("workspace:1024G", 1 << 40),
    ],
)
def test_mem_pool_size_follows_trtexec(text: str, size: int) -> None:
    assert parse_mem_pool(text) == size


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "needs workspace:SIZE"),
        ("1024", "is not POOL:SIZE"),
        ("dlaSRAM:1", "only the workspace pool"),
        ("workspace:1,workspace:2", "twice"),
        ("workspace:abc", "SIZE is a number in MiB"),
        ("workspace:1T", "SIZE is a number in MiB"),
        ("workspace:-1", "SIZE is a number in MiB"),
        ("workspace:0.5K", "out of range"),
        ("workspace:0", "out of range"),
        ("workspace:1025G", "out of range"),
    ],
)
def test_mem_pool_size_refusals(text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        parse_mem_pool(text)


# -- shapes ----------------------------------------------------------------------------


def test_shapes_follow_trtexec_and_quoted_names_keep_colons() -> None:
    assert parse_shapes("images:1x3x640x640,mask:1x1", "--optShapes") == (
        ("images", (1, 3, 640, 640)),
        ("mask", (1, 1)),
    )
    assert parse_shapes("'input:0':1x3x224x224,x:0:2", "--minShapes") == (
        ("input:0", (1, 3, 224, 224)),
        ("x:0", (2,)),  # unquoted: the last colon splits, as trtexec does
    )
    assert parse_shapes("'a,b':4", "--maxShapes") == (("a,b", (4,)),)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("images", "is not INPUT:DIMS"),
        (":1x3", "has no input name"),
        ("im*:1x3", "wildcards"),
        ("images:1x0x3", "at least 1"),
        ("images:1x3,images:1x3", "twice"),
        ("images:1,3", "is not INPUT:DIMS"),
        ("images:1xx3", "positive integers joined by x"),
        ("images:", "positive integers joined by x"),
        ("'images:1x3", "not closed"),
        ("'images'1x3", "is not 'NAME':DIMS"),
    ],
)
def test_shape_refusals(text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        parse_shapes(text, "--optShapes")


IO = MemberIo(
    inputs=(
        TensorSpec("images", "float32", (None, 3, "H", "W")),
        TensorSpec("scale", "float32", (1, 2)),
    ),
    outputs=(TensorSpec("out", "float32", (None, 10)),),
)


def _opts(**kw: Any) -> EngineOptions:
    return EngineOptions(fp16=True, **kw)


def test_opt_only_expands_to_min_and_max_and_static_inputs_need_nothing() -> None:
    ranges, notes = shape_ranges(
        _opts(opt_shapes=(("images", (2, 3, 64, 64)),)), "m", IO, frames={}
    )
    assert ranges == (ShapeRange("images", (2, 3, 64, 64), (2, 3, 64, 64), (2, 3, 64, 64)),)
    assert notes == []


def test_full_range_and_fixed_input_given() -> None:
    opts = _opts(
        min_shapes=(("images", (1, 3, 32, 32)), ("scale", (1, 2))),
        opt_shapes=(("images", (1, 3, 64, 64)), ("scale", (1, 2))),
        max_shapes=(("images", (8, 3, 128, 96)), ("scale", (1, 2))),
    )
    ranges, _ = shape_ranges(opts, "m", IO, frames={})
    assert ranges[0] == ShapeRange("images", (1, 3, 32, 32), (1, 3, 64, 64), (8, 3, 128, 96))
    assert ranges[1].input == "scale"


def test_dynamic_input_defaults_to_one_frame_with_a_note() -> None:
    ranges, notes = shape_ranges(_opts(), "m", IO, frames={"images": (1, 3, 320, 320)})
    assert ranges == (ShapeRange("images", (1, 3, 320, 320), (1, 3, 320, 320), (1, 3, 320, 320)),)
    assert notes == [("images", (1, 3, 320, 320))]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({}, r"input images of member m has dynamic axes \(\?x3x\?x\?\): give --minShapes"),
        ({"opt_shapes": (("nope", (1,)),)}, "names input 'nope', which member m does not have"),
        ({"min_shapes": (("nope", (1,)),)}, "--minShapes names input 'nope'"),
        ({"opt_shapes": (("images", (1, 3, 64)),)}, "--optShapes images:1x3x64 has rank 3"),
        (
            {
                "min_shapes": (("images", (1, 3, 64, 64)),),
                "opt_shapes": (("images", (1, 3, 64, 64)),),
                "max_shapes": (("images", (1, 3, 64)),),
            },
            "--maxShapes images:1x3x64 has rank 3",
        ),
        ({"opt_shapes": (("images", (1, 4, 64, 64)),)}, "axis 1 is fixed at 3"),
        ({"opt_shapes": (("images", (1, 3, 64, 64)), ("scale", (1, 3)))}, "fixed at 2"),
        (
            {
                "min_shapes": (("images", (1, 2, 64, 64)),),
                "opt_shapes": (("images", (1, 3, 64, 64)),),
                "max_shapes": (("images", (1, 4, 64, 64)),),
            },
            "axis 1 is fixed at 3",  # a fixed axis inside min..max is still refused
        ),
        (
            {
                "min_shapes": (("images", (1, 3, 128, 64)),),
                "opt_shapes": (("images", (1, 3, 64, 64)),),
                "max_shapes": (("images", (1, 3, 256, 64)),),
            },
            "axis 2 has min 128, opt 64, max 256; TensorRT needs min <= opt <= max",
        ),
        (
            {
                "min_shapes": (("images", (1, 3, 64, 64)),),
                "opt_shapes": (("images", (1, 3, 64, 64)),),
                "max_shapes": (("images", (1, 3, 32, 64)),),
            },
            "min <= opt <= max",
        ),
        ({"min_shapes": (("images", (1, 3, 64, 64)),)}, "missing: max, opt"),
        (
            {
                "min_shapes": (("images", (1, 3, 64, 64)),),
                "max_shapes": (("images", (1, 3, 64, 64)),),
            },
            "missing: opt",
        ),
        ({"opt_shapes": (("images", (1, 3, 64, 1 << 32)),)}, "1 <= min <= opt <= max"),
    ],
)
def test_shape_refusals_against_the_contract(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        shape_ranges(_opts(**kw), "m", IO, frames={})


# -- device profiles -------------------------------------------------------------------


def test_good_options_pass_every_profile() -> None:
    check_profiles(EngineOptions(fp16=True, int8=True, dla_core=1, allow_gpu_fallback=True), [ORIN])
    check_profiles(EngineOptions(fp16=True, workspace_bytes=4 << 30), [ORIN, NANO])


@pytest.mark.parametrize(
    ("opts", "profiles", "match"),
    [
        (EngineOptions(fp16=True), [ORIN, CPU], "generic-cpu does not run TensorRT engines"),
        (EngineOptions(fp16=True, dla_core=0), [ORIN_NANO], "jetson-orin-nano has no DLA cores"),
        (EngineOptions(fp16=True, dla_core=2), [ORIN], "jetson-agx-orin has DLA cores 0 to 1"),
        (EngineOptions(fp16=True, dla_core=-1), [ORIN], "0 or more"),
        (EngineOptions(dla_core=0), [ORIN], "the DLA runs fp16 or int8 only, not fp32"),
        (
            EngineOptions(int8=True),
            [NANO],
            "the GPU of device profile jetson-nano does not run int8",
        ),
        (EngineOptions(best=True), [NANO], "--best includes int8"),
        (EngineOptions(fp16=True, allow_gpu_fallback=True), [ORIN], "--allowGPUFallback only"),
        (
            EngineOptions(fp16=True, workspace_bytes=5 << 30),
            [ORIN, NANO],
            "more than the 4 GB of memory of device profile jetson-nano",
        ),
        (EngineOptions(fp16=True, hardware_compatibility_level="turing+"), [ORIN], "not one of"),
        (EngineOptions(fp16=True, builder_optimization_level=6), [ORIN], "0 to 5"),
        (EngineOptions(fp16=True, builder_optimization_level=-1), [ORIN], "0 to 5"),
    ],
)
def test_profile_refusals(opts: EngineOptions, profiles: list[Any], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        check_profiles(opts, profiles)


def test_a_precision_the_profile_lacks_on_gpu_and_on_dla() -> None:
    no_fp16 = replace(ORIN, id="no-fp16", precisions=("fp32", "int8"))
    with pytest.raises(UsageError, match="the GPU of device profile no-fp16 does not run fp16"):
        check_profiles(EngineOptions(fp16=True), [no_fp16])
    dla_int8_only = replace(ORIN, id="dla-int8", dla_precisions=("int8",))
    check_profiles(EngineOptions(fp16=True), [dla_int8_only])  # GPU only: fine
    with pytest.raises(UsageError, match="the DLA of device profile dla-int8 does not run fp16"):
        check_profiles(EngineOptions(fp16=True, dla_core=0), [dla_int8_only])


# -- which members get a recipe --------------------------------------------------------

SIMPLE = MemberIo(
    inputs=(TensorSpec("x", "float32", (1, 3, 8, 8)),),
    outputs=(TensorSpec("y", "float32", (1, 2)),),
)


def test_recipes_go_to_gpu_and_dla_members_with_the_dla_core_of_their_placement() -> None:
    opts = EngineOptions(fp16=True, allow_gpu_fallback=True, dla_core=1, timing_cache_file=None)
    io_ = {"a": SIMPLE, "b": SIMPLE, "c": SIMPLE}
    recipes, notes = member_recipes(
        opts, {"a": "gpu", "b": "dla1", "c": "cpu:0-1"}, io_, frames={}, profile=ORIN
    )
    assert sorted(recipes) == ["a", "b"] and notes == []
    assert recipes["a"].dla_core is None and not recipes["a"].allow_gpu_fallback
    assert recipes["b"].dla_core == 1 and recipes["b"].allow_gpu_fallback
    assert recipes["b"].builder_optimization_level == 3
    assert recipes["b"].hardware_compatibility_level == "none"
    assert not recipes["b"].timing_cache and recipes["b"].int8_calibration_member is None


def test_recipe_fields_follow_the_options() -> None:
    from pathlib import Path

    opts = EngineOptions(
        int8=True,
        workspace_bytes=256 * MiB,
        builder_optimization_level=5,
        timing_cache_file=Path("tc.bin"),
        version_compatible=True,
        hardware_compatibility_level="same_compute_capability",
        engine_host_code=True,
    )
    recipes, _ = member_recipes(
        opts, {"a": "gpu0"}, {"a": SIMPLE}, frames={}, profile=ORIN, calibration_member="cal"
    )
    assert recipes["a"] == MemberRecipe(
        int8=True,
        workspace_bytes=256 * MiB,
        builder_optimization_level=5,
        version_compatible=True,
        hardware_compatibility_level="same_compute_capability",
        engine_host_code_allowed=True,
        int8_calibration_member="cal",
        timing_cache=True,
    )


def test_member_refusals() -> None:
    with pytest.raises(UsageError, match="none runs there on jetson-agx-orin \\(a=cpu\\)"):
        member_recipes(
            EngineOptions(fp16=True), {"a": "cpu"}, {"a": SIMPLE}, frames={}, profile=ORIN
        )
    with pytest.raises(UsageError, match="member a runs on dla0, and the DLA runs fp16 or int8"):
        member_recipes(
            EngineOptions(workspace_bytes=MiB),
            {"a": "dla0"},
            {"a": SIMPLE},
            frames={},
            profile=ORIN,
        )
    with pytest.raises(UsageError, match="--allowGPUFallback: no member runs on a DLA core"):
        member_recipes(
            EngineOptions(fp16=True, dla_core=0, allow_gpu_fallback=True),
            {"a": "gpu"},
            {"a": SIMPLE},
            frames={},
            profile=ORIN,
        )


# -- INT8 calibration frames -----------------------------------------------------------


def test_calibration_subset_is_bounded_evenly_spaced_and_deterministic() -> None:
    frames = {"x": np.arange(100, dtype=np.float32).reshape(100, 1), "y": np.arange(100)}
    sub = calibration_subset(frames)
    assert len(sub["x"]) == 32 and len(sub["y"]) == 32
    assert sub["x"][0, 0] == 0 and sub["x"][-1, 0] == 99
    assert (sub["x"][:, 0] == sub["y"]).all()  # the same frames for every input
    assert np.all(np.diff(sub["y"]) >= 3)
    again = calibration_subset({k: v.copy() for k, v in frames.items()})
    assert calibration_npz(sub) == calibration_npz(again)
    few = calibration_subset({"x": np.arange(5)})
    assert list(few["x"]) == [0, 1, 2, 3, 4]
    assert list(calibration_subset({"x": np.arange(10)}, limit=3)["x"]) == [0, 4, 9]


def test_calibration_npz_reads_back_without_pickle() -> None:
    sub = calibration_subset({"x": np.ones((40, 3), np.float32)})
    data = calibration_npz(sub)
    assert zipfile.is_zipfile(io.BytesIO(data))
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        assert z["x"].shape == (32, 3)


@pytest.mark.parametrize(
    "arrays", [{"x": np.ones((4, 2)), "y": np.ones((5, 2))}, {"x": np.ones((0, 2))}, {}]
)
def test_calibration_subset_refusals(arrays: dict[str, np.ndarray]) -> None:
    with pytest.raises(UsageError, match="needs calibration frames"):
        calibration_subset(arrays)


# -- prebuilt plans --------------------------------------------------------------------


def real_tensorrt() -> bool:
    """Whether TensorRT itself imports (``tensorrt-stubs`` alone is a bare namespace)."""
    import importlib

    try:
        return hasattr(importlib.import_module("tensorrt"), "Builder")
    except ImportError:
        return False


ORIN_HOST = {
    "tensorrt": "10.3.0.30",
    "compute_capability": "8.7",
    "gpu_name": "Orin",
    "driver": "540.4",
}


@dataclass
class FakeBuilt:
    """A test double for the backend's BuiltEngine: fake bytes, no GPU ran."""

    plan: bytes
    identity: dict[str, str]
    timing_cache: bytes | None


class FakeBuilder:
    """Records its calls and returns fake plans; stands in for TensorRT in tests."""

    def __init__(self, identity: dict[str, str] = ORIN_HOST) -> None:
        self.identity = identity
        self.calls: list[dict[str, Any]] = []

    def __call__(self, onnx: bytes, recipe: MemberRecipe, **kw: Any) -> FakeBuilt:
        self.calls.append({"onnx": onnx, "recipe": recipe, **kw})
        cache = (kw["timing_cache"] or b"") + b"+"
        return FakeBuilt(b"FAKE-PLAN:" + onnx, dict(self.identity), cache)


def test_build_prebuilt_tags_each_plan_and_threads_the_timing_cache(monkeypatch) -> None:
    fake = FakeBuilder()
    monkeypatch.setattr(engines, "_engine_builder", lambda: fake)
    recipes = {
        "b": MemberRecipe(int8=True, int8_calibration_member="cal"),
        "a": MemberRecipe(fp16=True, dla_core=0),
    }
    cal = {"x": np.zeros((2, 1))}
    built, cache = build_prebuilt(
        recipes, {"a": b"A", "b": b"B"}, profile=ORIN, calibration=cal, timing_cache=b"tc"
    )
    assert [(t.member, t.for_member, p) for t, p in built] == [
        ("a.plan", "a", b"FAKE-PLAN:A"),
        ("b.plan", "b", b"FAKE-PLAN:B"),
    ]
    tag = built[0][0]
    assert (tag.tensorrt, tag.compute_capability, tag.gpu_name, tag.device_profile) == (
        "10.3.0.30",
        "8.7",
        "Orin",
        "jetson-agx-orin",
    )
    assert [c["timing_cache"] for c in fake.calls] == [b"tc", b"tc+"] and cache == b"tc++"
    assert fake.calls[0]["calibration"] is None and fake.calls[1]["calibration"] is cal
    assert all(c["device_id"] == 0 for c in fake.calls)


@pytest.mark.parametrize(
    ("identity", "match"),
    [
        (
            {"compute_capability": "8.6", "gpu_name": "RTX 3090"},
            "RTX 3090 has compute capability 8.6",
        ),
        (
            {"tensorrt": "10.4.0"},
            "this host has TensorRT 10.4.0, device profile jetson-agx-orin runs 10.3",
        ),
        ({"tensorrt": "8.6.1"}, "runs 10.3"),
    ],
)
def test_build_prebuilt_refuses_a_host_that_is_not_the_profile(
    monkeypatch, identity, match
) -> None:
    monkeypatch.setattr(engines, "_engine_builder", lambda: FakeBuilder({**ORIN_HOST, **identity}))
    with pytest.raises(UsageError, match=match):
        build_prebuilt({"a": MemberRecipe(fp16=True)}, {"a": b"A"}, profile=ORIN, calibration=None)


def test_build_prebuilt_refuses_a_bad_identity_from_the_backend(monkeypatch) -> None:
    monkeypatch.setattr(
        engines, "_engine_builder", lambda: FakeBuilder({**ORIN_HOST, "gpu_name": ""})
    )
    with pytest.raises(BackendError, match="bad identity"):
        build_prebuilt({"a": MemberRecipe(fp16=True)}, {"a": b"A"}, profile=ORIN, calibration=None)


def test_check_identity_relaxations() -> None:
    vc = MemberRecipe(fp16=True, version_compatible=True)
    check_identity({**ORIN_HOST, "tensorrt": "10.1.0"}, ORIN, vc)  # older build, same major
    with pytest.raises(UsageError, match="version-compatible plan needs the same major"):
        check_identity({**ORIN_HOST, "tensorrt": "10.4.0"}, ORIN, vc)
    ampere = MemberRecipe(fp16=True, hardware_compatibility_level="ampere+")
    check_identity({**ORIN_HOST, "compute_capability": "8.6"}, ORIN, ampere)
    with pytest.raises(UsageError, match=r"compute capability 7\.5"):
        check_identity({**ORIN_HOST, "compute_capability": "7.5"}, ORIN, ampere)
    with pytest.raises(UsageError, match="names no GPU or TensorRT"):
        check_identity(ORIN_HOST, replace(ORIN, software=replace(ORIN.software, tensorrt=None)), vc)

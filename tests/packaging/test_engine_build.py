"""``build_bundle`` with engine options: the signed recipe, the encrypted INT8 frames,
prebuilt plans from a fake builder (a test double returning fake bytes: no GPU ran), and
the packager's read-back of the slot before it signs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from edgeguard import api, data
from edgeguard.crypto.keys import DeviceKey, SignerKey
from edgeguard.errors import MalformedError, MissingDependencyError, UsageError
from edgeguard.packaging import engines
from edgeguard.packaging.engines import EngineOptions, calibration_npz, calibration_subset
from edgeguard.packaging.packager import MemberSource, write_bundle
from edgeguard.policy.engine import EngineRecipe, MemberRecipe
from edgeguard.policy.slots import read_slots
from edgeguard.runtime.opener import read_prefix
from tests.packaging.test_engines import ORIN_HOST, FakeBuilder, real_tensorrt

SIGNER = SignerKey.generate()
DEVICE = DeviceKey.generate("cam-01", profile="jetson-agx-orin")


def _build(tmp: Path, engine: EngineOptions, **kw: Any) -> Any:
    notes: list[str] = []
    header = api.build_bundle(
        [data.model_path("digits_mlp")],
        out=tmp / "b.egb",
        signer=SIGNER,
        recipients=[DEVICE.public],
        profiles=kw.pop("profiles", ["jetson-agx-orin"]),
        version=1,
        ensemble=api.EnsembleOptions(deadline_ms=100.0, **kw.pop("ensemble", {})),
        engine=engine,
        on_note=notes.append,
        **kw,
    )
    return header.manifest, notes


def test_int8_frames_travel_encrypted_and_signed(tmp_path: Path) -> None:
    calib = data.split_path("calib")
    m, notes = _build(tmp_path, EngineOptions(int8=True, fp16=True, dla_core=0), calibration=calib)
    members = {x.name: x for x in m.members}
    cal = members["int8-calibration"]
    assert (cal.role, cal.format) == ("aux", "npz")
    slots = read_slots(m)
    assert slots.engines is not None
    recipe = slots.engines.members["digits_mlp"]
    assert recipe.int8 and recipe.dla_core == 0 and recipe.int8_calibration_member == cal.name
    assert [str(s.where) for s in slots.runtime.members] == ["dla0"]
    # the member is the evenly spaced subset of the frames the build calibrated on
    arrays = api.load_calibration_arrays(data.model_bytes("digits_mlp"), calib)
    plain = calibration_npz(calibration_subset(arrays))
    assert cal.digest.value == hashlib.sha256(plain).digest()
    assert any("32 of" in n and "int8-calibration" in n for n in notes)
    # never in plaintext in the bundle
    raw = (tmp_path / "b.egb").read_bytes()
    assert plain[:64] not in raw and b"image.npy" not in raw


def test_int8_without_calibration_frames_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--int8 needs calibration frames"):
        _build(tmp_path, EngineOptions(int8=True))
    with pytest.raises(UsageError, match="--best \\(which includes int8\\) needs calibration"):
        _build(tmp_path, EngineOptions(best=True))
    assert not (tmp_path / "b.egb").exists()


def test_use_dla_core_moves_unplaced_accelerator_members_only(tmp_path: Path) -> None:
    m, _ = _build(
        tmp_path,
        EngineOptions(fp16=True, dla_core=1, allow_gpu_fallback=True),
        calibration=data.split_path("calib"),
        ensemble={
            "variants": ("fp32", "fp16"),
            "placements": (("digits_mlp-fp32", "gpu"),),
            "fallback": data.model_path("digits_logreg"),
        },
    )
    slots = read_slots(m)
    assert {s.name: str(s.where) for s in slots.runtime.members} == {
        "digits_mlp-fp32": "gpu0",
        "digits_mlp-fp16": "dla1",
    }
    assert slots.engines is not None
    got = {n: (r.dla_core, r.allow_gpu_fallback) for n, r in slots.engines.members.items()}
    assert got == {"digits_mlp-fp32": (None, False), "digits_mlp-fp16": (1, True)}
    assert "digits_logreg-fallback" not in slots.engines.members


def test_prebuilt_plans_are_embedded_and_tagged(tmp_path: Path, monkeypatch) -> None:
    fake = FakeBuilder()
    monkeypatch.setattr(engines, "_engine_builder", lambda: fake)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    m, _ = _build(
        tmp_path,
        EngineOptions(fp16=True, on_this_host=True, timing_cache_file=cache),
    )
    members = {x.name: x for x in m.members}
    plan = members["digits_mlp.plan"]
    assert (plan.role, plan.format) == ("engine", "trt-engine")
    fake_plan = b"FAKE-PLAN:" + data.model_bytes("digits_mlp")
    assert plan.digest.value == hashlib.sha256(fake_plan).digest()
    slots = read_slots(m)
    assert slots.engines is not None
    tag = slots.engines.prebuilt_for("digits_mlp")
    assert tag is not None and tag.member == "digits_mlp.plan"
    assert (tag.tensorrt, tag.compute_capability, tag.gpu_name, tag.device_profile) == (
        ORIN_HOST["tensorrt"],
        "8.7",
        "Orin",
        "jetson-agx-orin",
    )
    assert slots.engines.members["digits_mlp"].timing_cache
    assert fake.calls[0]["timing_cache"] == b"old" and cache.read_bytes() == b"old+"
    assert cache.stat().st_mode & 0o777 == 0o600
    with open(tmp_path / "b.egb", "rb") as f:
        prefix, _ = read_prefix(f)
    assert prefix.header.manifest == m


def test_prebuilt_refused_on_a_host_unlike_the_profile(tmp_path: Path, monkeypatch) -> None:
    host = {**ORIN_HOST, "compute_capability": "8.9", "gpu_name": "RTX 4090"}
    monkeypatch.setattr(engines, "_engine_builder", lambda: FakeBuilder(host))
    with pytest.raises(UsageError, match=r"RTX 4090 has compute capability 8\.9"):
        _build(tmp_path, EngineOptions(fp16=True, on_this_host=True))
    assert not (tmp_path / "b.egb").exists()


def test_engine_on_this_host_without_tensorrt_names_the_trt_extra(tmp_path: Path) -> None:
    from edgeguard.backends import tensorrt

    if not hasattr(tensorrt, "build_engine"):
        pytest.skip("edgeguard.backends.tensorrt.build_engine is not in this tree yet")
    if real_tensorrt():
        pytest.skip("TensorRT is installed here")
    with pytest.raises(MissingDependencyError) as info:
        _build(tmp_path, EngineOptions(fp16=True, on_this_host=True))
    assert info.value.extra == "trt"


def test_the_packager_reads_the_recipe_back_before_signing(tmp_path: Path) -> None:
    recipe = EngineRecipe(
        members={"m": MemberRecipe(int8=True, int8_calibration_member="int8-calibration")}
    )
    with pytest.raises(MalformedError, match="no manifest member of role aux and format npz"):
        write_bundle(
            tmp_path / "x.egb",
            [MemberSource("m", data.model_bytes("digits_mlp"), "primary")],
            name="x",
            version=1,
            signer=SIGNER,
            recipients=[DEVICE.public],
            profiles=["jetson-agx-orin"],
            engine_recipe=recipe.to_dict(),
        )
    assert list(tmp_path.iterdir()) == []

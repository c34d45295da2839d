"""The TensorRT plan path of the engine cache, with a test double (no GPU here).

``tests/runtime/fake_trt.py`` (FakeTensorRT) stands in for TensorRT through the seams
``edgeguard.backends.TRT_BUILDER``, ``TRT_IDENTITY`` and ``TRT_PLAN_LOADER``: these tests
check the flow (a GPU member with a signed recipe is built on the device, its plan sealed
and loaded sealed next time, a changed driver rebuilds, the sandboxed worker writes the
plan into the supervisor's memfd), never anything about TensorRT or a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeguard import api, data
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.keys import DeviceKey, SignerKey
from edgeguard.packaging.packager import MemberSource, write_bundle
from edgeguard.policy.io import MemberIo, TensorSpec
from edgeguard.policy.runtime import RuntimePolicy
from edgeguard.policy.slots import policy_slot
from edgeguard.runtime.sandbox import SandboxPolicy, probe_host
from edgeguard.runtime.sandbox.executor import ProcessMemberExecutor, WorkerSpec
from tests.runtime import fake_trt, trt_bundles

ROOT = Path(__file__).resolve().parents[2]
FAKE = "tests.runtime.fake_trt"
RECIPE = {"fp16": True, "builder_optimization_level": 3}


@pytest.fixture()
def seams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edgeguard.backends.TRT_BUILDER", f"{FAKE}:build")
    monkeypatch.setattr("edgeguard.backends.TRT_IDENTITY", f"{FAKE}:identity")
    monkeypatch.setattr("edgeguard.backends.TRT_PLAN_LOADER", f"{FAKE}:load")
    fake_trt.BUILDS.clear()


@pytest.fixture(scope="module")
def gpu_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return trt_bundles.gpu_bundle(tmp_path_factory.mktemp("trt"), RECIPE, tag="gpu")


def _events(state: Path) -> list[tuple[str, dict[str, Any]]]:
    log = state / "events.log"
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    log.rename(state / f"events.{len(list(state.glob('events.*.log')))}.log")
    (state / "eventlog.anchor").unlink()
    return [(r["kind"], r["data"]) for r in recs if r["kind"].startswith("engine")]


def _open(w: dict[str, Any], state: Path, **kw: Any) -> Any:
    return api.open_session(
        w["bundle"],
        trust=w["trust"],
        device_key=w["device"],
        state_dir=state,
        isolation="threads",
        **kw,
    )


@pytest.mark.usefixtures("seams")
def test_gpu_member_is_built_sealed_then_loaded_sealed(
    gpu_bundle: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    x = {"image": np.ones((1, 1, 8, 8), np.float32)}
    with _open(gpu_bundle, state) as s:
        first = s.run(x)["logits"]
    ev = _events(state)
    kinds = [k for k, _ in ev]
    assert kinds == ["engine_cache_miss", "engine_build", "engine_cache_sealed"]
    assert ev[1][1]["member"] == "m" and ev[1][1]["ms"] >= 0
    assert ev[2][1]["kind"] == "trt-plan"
    assert len(fake_trt.BUILDS) == 1 and fake_trt.BUILDS[0]["recipe"]["fp16"] is True
    assert fake_trt.BUILDS[0]["device_id"] == 0
    with _open(gpu_bundle, state) as s:
        np.testing.assert_array_equal(s.run(x)["logits"], first)
    assert [k for k, _ in _events(state)] == ["engine_cache_hit"]
    assert len(fake_trt.BUILDS) == 1
    # another driver: a miss, a build, the old plan evicted
    monkeypatch.setitem(fake_trt.IDENTITY, "driver", "550.0.0")
    _open(gpu_bundle, state).close()
    assert [k for k, _ in _events(state)] == [
        "engine_cache_miss",
        "engine_build",
        "engine_cache_sealed",
        "engine_cache_evicted",
    ]
    assert len(fake_trt.BUILDS) == 2 and len(list((state / "engines").iterdir())) == 1


@pytest.mark.usefixtures("seams")
def test_without_the_cache_the_plan_is_built_every_start(
    gpu_bundle: dict[str, Any], tmp_path: Path
) -> None:
    for _ in range(2):
        _open(gpu_bundle, tmp_path / "s", engine_cache=False).close()
    assert len(fake_trt.BUILDS) == 2
    assert not (tmp_path / "s" / "engines").exists()


@pytest.mark.usefixtures("seams")
def test_a_plan_that_does_not_load_is_discarded_and_rebuilt(
    gpu_bundle: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    _open(gpu_bundle, state).close()
    _events(state)
    real = fake_trt.load
    calls = {"n": 0}

    def flaky(plan: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            from edgeguard.errors import BackendError

            raise BackendError("deserialisation failed (test double)")
        return real(plan, **kw)

    monkeypatch.setattr(fake_trt, "load", flaky)
    _open(gpu_bundle, state).close()
    kinds = [k for k, _ in _events(state)]
    assert kinds == [
        "engine_cache_hit",
        "engine_cache_discarded",
        "engine_build",
        "engine_cache_sealed",
    ]


@pytest.mark.skipif(not probe_host().available("seccomp"), reason="no seccomp on this host")
def test_sandboxed_worker_writes_the_built_plan_into_the_memfd() -> None:
    spec = WorkerSpec(
        Path(data.model_path("digits_mlp")).read_bytes(),
        fmt="trt-build",
        options={
            "recipe": RECIPE,
            "builder": f"{FAKE}:build",
            "plan_loader": f"{FAKE}:load",
            "device_id": 0,
            "dla_core": None,
        },
        python_path=(str(ROOT),),
        artifact_max=1 << 26,
    )
    with ProcessMemberExecutor({"m": spec}, policy=SandboxPolicy(), io_bytes=1 << 20) as ex:
        assert "after the model load" in ex.status("m").layers["seccomp"]
        fd, note, ms = ex.take_artifact("m")
        assert fd is not None and note is None and ms is not None
        with open(fd, "rb") as f:
            plan = f.read()
        out = ex.members()["m"].run({"image": np.ones((1, 1, 8, 8), np.float32)})
    assert plan.startswith(fake_trt.MAGIC)
    assert plan[len(fake_trt.MAGIC) :] == Path(data.model_path("digits_mlp")).read_bytes()
    assert out["logits"].shape == (1, 10)


class _Log:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def append(self, kind: str, data: dict[str, Any]) -> None:
        self.records.append((kind, data))


def _opened_with_tag() -> Any:
    from types import SimpleNamespace

    tag = SimpleNamespace(member="m.plan", for_member="m", tensorrt="10.3.0")
    return SimpleNamespace(slots=SimpleNamespace(engines=SimpleNamespace(prebuilt=(tag,))))


def test_prebuilt_plan_used_when_its_tag_matches_and_refused_before_loading_otherwise() -> None:
    """The choice between a prebuilt plan and a build here (``prebuilt_mismatch`` stubbed:
    the recipe's prebuilt tags are added to ``policy/engine.py`` on another branch)."""
    from edgeguard.runtime.session import _prebuilt_plan

    opened, log = _opened_with_tag(), _Log()
    ok = _prebuilt_plan(opened, "m", fake_trt.IDENTITY, log, mismatch=lambda t, i: None)  # type: ignore[arg-type]
    assert ok == "m.plan" and log.records == []
    assert _prebuilt_plan(opened, "other", {}, log, mismatch=lambda t, i: None) is None  # type: ignore[arg-type]
    why = "the plan m.plan was built with TensorRT 10.3.0; this device has TensorRT 10.4.0"
    assert _prebuilt_plan(opened, "m", fake_trt.IDENTITY, log, mismatch=lambda t, i: why) is None  # type: ignore[arg-type]
    assert log.records == [
        ("engine_prebuilt_refused", {"member": "m", "plan": "m.plan", "reason": why})
    ]


@pytest.mark.usefixtures("seams")
@pytest.mark.parametrize(
    ("recipe", "dla_core", "match"),
    [
        (
            {"fp16": True, "dla_core": 1},
            None,
            "placed on the GPU but its signed recipe builds for DLA core 1",
        ),
        ({"fp16": True}, 0, "placed on DLA core 0 but its signed recipe builds for the GPU"),
    ],
)
def test_a_placement_and_recipe_that_disagree_are_refused(
    recipe: dict[str, Any], dla_core: int | None, match: str
) -> None:
    from edgeguard.backends import build_plan
    from edgeguard.errors import BackendError

    with pytest.raises(BackendError, match=match):
        build_plan(b"onnx", recipe, dla_core=dla_core)
    assert fake_trt.BUILDS == []


def _prebuilt_bundle(d: Path, tensorrt: str) -> dict[str, Any]:
    signer, device = SignerKey.generate(), DeviceKey.generate("cam-01")
    onnx = Path(data.model_path("digits_mlp")).read_bytes()
    io = MemberIo(
        inputs=(TensorSpec("image", "float32", (None, 1, 8, 8)),),
        outputs=(TensorSpec("logits", "float32", (None, 10)),),
    )
    b = d / f"prebuilt-{tensorrt}.egb"
    tag = {
        "member": "m.plan",
        "for_member": "m",
        "tensorrt": tensorrt,
        "compute_capability": fake_trt.IDENTITY["compute_capability"],
        "gpu_name": fake_trt.IDENTITY["gpu_name"],
        "device_profile": "generic-cpu",
    }
    write_bundle(
        b,
        [
            MemberSource("m", onnx),
            MemberSource("m.plan", fake_trt.MAGIC + onnx, role="engine", format="trt-engine"),
        ],
        name="prebuilt-digits",
        version=1,
        signer=signer,
        recipients=[device.public],
        profiles=["generic-cpu"],
        policy=policy_slot(
            runtime=RuntimePolicy.single("m", placement="gpu0"),
            isolation=SandboxPolicy(),
            io={"m": io},
        ),
        engine_recipe={
            "format": "edgeguard-engine-recipe/1",
            "members": {"m": RECIPE},
            "prebuilt": [tag],
        },
    )
    return {"bundle": b, "trust": TrustStore.of([signer.public]), "device": device}


@pytest.mark.usefixtures("seams")
def test_a_prebuilt_plan_for_this_device_is_used_and_one_for_another_refused(
    tmp_path: Path,
) -> None:
    same = _prebuilt_bundle(tmp_path, fake_trt.IDENTITY["tensorrt"])
    with _open(same, tmp_path / "a") as s:
        assert s.run({"image": np.ones((1, 1, 8, 8), np.float32)})["logits"].shape == (1, 10)
    assert [k for k, _ in _events(tmp_path / "a")] == []  # no build, nothing cached
    assert fake_trt.BUILDS == []
    other = _prebuilt_bundle(tmp_path, "10.0.0")
    _open(other, tmp_path / "b").close()
    ev = _events(tmp_path / "b")
    assert [k for k, _ in ev] == [
        "engine_prebuilt_refused",
        "engine_cache_miss",
        "engine_build",
        "engine_cache_sealed",
    ]
    assert "TensorRT 10.0.0" in ev[0][1]["reason"] and ev[0][1]["plan"] == "m.plan"
    assert len(fake_trt.BUILDS) == 1

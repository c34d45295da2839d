"""The on-device TensorRT build: progress, INT8 calibration frames, the sealed timing cache.

With the test double ``tests/runtime/fake_trt.py`` through the seams (no GPU here): these
tests check what the device session hands the builder and what it does with what the
builder returns, never anything about TensorRT.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeguard import api, data
from edgeguard.crypto.keys import DeviceKey
from edgeguard.errors import BackendError, MalformedError
from edgeguard.runtime.sandbox import SandboxPolicy, probe_host
from edgeguard.runtime.sandbox.executor import ProcessMemberExecutor, WorkerSpec, _read_progress
from tests.runtime import fake_trt, trt_bundles

ROOT = Path(__file__).resolve().parents[2]
FAKE = "tests.runtime.fake_trt"
ONNX = Path(data.model_path("digits_mlp")).read_bytes()
FRAMES = np.arange(4 * 64, dtype=np.float32).reshape(4, 1, 8, 8)
X = {"image": np.ones((1, 1, 8, 8), np.float32)}
needs_seccomp = pytest.mark.skipif(
    not probe_host().available("seccomp"), reason="no seccomp on this host"
)


@pytest.fixture()
def seams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edgeguard.backends.TRT_BUILDER", f"{FAKE}:build")
    monkeypatch.setattr("edgeguard.backends.TRT_IDENTITY", f"{FAKE}:identity")
    monkeypatch.setattr("edgeguard.backends.TRT_PLAN_LOADER", f"{FAKE}:load")
    fake_trt.BUILDS.clear()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _open(w: dict[str, Any], state: Path, **kw: Any) -> Any:
    kw.setdefault("isolation", "threads")
    return api.open_session(
        w["bundle"], trust=w["trust"], device_key=w["device"], state_dir=state, **kw
    )


def _events(state: Path) -> list[tuple[str, dict[str, Any]]]:
    log = state / "events.log"
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    log.rename(state / f"events.{len(list(state.glob('events.*.log')))}.log")
    (state / "eventlog.anchor").unlink()
    return [(r["kind"], r["data"]) for r in recs if r["kind"].startswith("engine")]


def _expected_progress(member: str) -> list[tuple[str, str, int, int]]:
    return [
        (member, phase, done, total)
        for phase, total in fake_trt.PHASES
        for done in range(total + 1)
    ]


# -- 1. progress -------------------------------------------------------------------------


@pytest.mark.usefixtures("seams")
def test_threads_build_reports_progress_in_order_and_only_when_it_builds(tmp_path: Path) -> None:
    w = trt_bundles.gpu_bundle(tmp_path, {"fp16": True})
    got: list[tuple[str, str, int, int]] = []
    _open(w, tmp_path / "s", progress=lambda *a: got.append(a)).close()
    assert got == _expected_progress("m")
    got.clear()
    _open(w, tmp_path / "s", progress=lambda *a: got.append(a)).close()  # sealed: no build
    assert got == [] and len(fake_trt.BUILDS) == 1


def test_build_plan_passes_progress_only_when_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeguard.backends import build_plan

    seen: list[dict[str, Any]] = []

    def builder(onnx: Any, recipe: Any, **kw: Any) -> Any:
        seen.append(kw)
        return fake_trt.BuiltEngine(b"plan", {})

    monkeypatch.setattr(fake_trt, "recorder", builder, raising=False)
    build_plan(b"onnx", {"fp16": True}, builder=f"{FAKE}:recorder")
    calls: list[Any] = []
    build_plan(
        b"onnx",
        {"fp16": True},
        builder=f"{FAKE}:recorder",
        progress=lambda *a: calls.append(a),
    )
    assert seen[0] == {"device_id": 0}
    assert set(seen[1]) == {"device_id", "progress"}


def _trt_spec(builder: str, **kw: Any) -> WorkerSpec:
    return WorkerSpec(
        ONNX,
        fmt="trt-build",
        options={
            "recipe": kw.pop("recipe", {"fp16": True}),
            "builder": f"{FAKE}:{builder}",
            "plan_loader": f"{FAKE}:load",
            "device_id": 0,
            "dla_core": None,
        },
        python_path=(str(ROOT),),
        **kw,
    )


@needs_seccomp
def test_sandboxed_build_relays_its_progress() -> None:
    got: list[tuple[str, str, int, int]] = []
    spec = _trt_spec("build")
    with ProcessMemberExecutor(
        {"m": spec},
        policy=SandboxPolicy(),
        io_bytes=1 << 20,
        on_progress=lambda *a: got.append(a),
    ) as ex:
        assert ex.members()["m"].run(X)["logits"].shape == (1, 10)
    # rate-limited: every phase end arrives, in order; nothing else out of order
    ends = [e for e in got if e[2] == e[3]]
    assert ends == [("m", p, t, t) for p, t in fake_trt.PHASES]
    assert got == sorted(got, key=_expected_progress("m").index)


@needs_seccomp
def test_a_malformed_progress_message_fails_the_start() -> None:
    got: list[Any] = []
    with pytest.raises(
        BackendError,
        match=r"worker 'm' failed to start: malformed progress message from the TensorRT build",
    ):
        ProcessMemberExecutor(
            {"m": _trt_spec("build_with_bad_progress")},
            policy=SandboxPolicy(),
            io_bytes=1 << 20,
            on_progress=lambda *a: got.append(a),
        )
    assert got == []


@pytest.mark.parametrize(
    "msg",
    [
        {"op": "progress", "phase": "x", "done": -1, "total": 3},
        {"op": "progress", "phase": "x", "done": 4, "total": 3},
        {"op": "progress", "phase": "x", "done": 0, "total": 1 << 31},
        {"op": "progress", "phase": "x", "done": True, "total": 3},
        {"op": "progress", "phase": "x", "done": "1", "total": 3},
        {"op": "progress", "phase": "", "done": 0, "total": 3},
        {"op": "progress", "phase": "x" * 65, "done": 0, "total": 3},
        {"op": "progress", "phase": "a\nb", "done": 0, "total": 3},
        {"op": "progress", "phase": "é", "done": 0, "total": 3},
        {"op": "progress", "phase": 7, "done": 0, "total": 3},
        {"op": "progress", "phase": "x", "done": 0},
        {"op": "progress", "phase": "x", "done": 0, "total": 3, "extra": 1},
    ],
)
def test_progress_messages_are_read_strictly(msg: dict[str, Any]) -> None:
    assert _read_progress(msg) is None


def test_a_wellformed_progress_message_is_read() -> None:
    msg = {"op": "progress", "phase": "x" * 64, "done": 3, "total": 3}
    assert _read_progress(msg) == ("x" * 64, 3, 3)


@needs_seccomp
def test_progress_keeps_a_long_build_alive_and_silence_does_not() -> None:
    """Steps of 0.6 s for 3.6 s with a 1.5 s timeout: alive while it reports progress."""
    opts = {"policy": SandboxPolicy(), "io_bytes": 1 << 20, "start_timeout_s": 1.5}
    got: list[Any] = []
    with ProcessMemberExecutor(
        {"m": _trt_spec("build_slowly")},
        build_timeout_s=1.5,
        on_progress=lambda *a: got.append(a),
        **opts,  # type: ignore[arg-type]
    ) as ex:
        assert ex.members()["m"].run(X)["logits"].shape == (1, 10)
    assert got[-1] == ("m", "Tactic selection", fake_trt.SLOW_STEPS, fake_trt.SLOW_STEPS)
    with pytest.raises(BackendError, match=r"no ready message within 1.5 s of the last message"):
        ProcessMemberExecutor(
            {"m": _trt_spec("build_silently")},
            build_timeout_s=1.5,
            **opts,  # type: ignore[arg-type]
        )


@needs_seccomp
def test_a_build_worker_gets_the_longer_build_timeout() -> None:
    """A silent 3.6 s build under a 1.5 s start timeout: a ``trt-build`` worker waits up
    to BUILD_START_TIMEOUT_S (30 min) instead."""
    from edgeguard.runtime.sandbox.executor import BUILD_START_TIMEOUT_S

    assert BUILD_START_TIMEOUT_S >= 10 * fake_trt.SLOW_STEPS * fake_trt.SLOW_STEP_S
    with ProcessMemberExecutor(
        {"m": _trt_spec("build_silently")},
        policy=SandboxPolicy(),
        io_bytes=1 << 20,
        start_timeout_s=1.5,
    ) as ex:
        assert ex.members()["m"].run(X)["logits"].shape == (1, 10)


@pytest.mark.usefixtures("seams")
def test_cli_session_shows_the_build_only_when_one_happens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from edgeguard.cli import _common

    w = trt_bundles.gpu_bundle(tmp_path, {"fp16": True})
    monkeypatch.setattr(_common, "load_keys", lambda args: (w["trust"], w["device"]))
    args = argparse.Namespace(
        bundle=w["bundle"], state_dir=tmp_path / "s", isolation="threads", unsafe_in_process=False
    )
    _common.open_device_session(args).close()
    err = capsys.readouterr().err
    assert err.count("edgeguard: building the TensorRT engine of m on this device") == 1
    _common.open_device_session(args).close()  # sealed: no build, no display
    assert "TensorRT" not in capsys.readouterr().err


def test_build_display_follows_the_phases(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeguard.cli._common import BuildDisplay

    shown: list[dict[str, Any]] = []

    class Bar:
        disable = False

        def add_task(self, text: str, total: int) -> int:
            return 7

        def update(self, task: int, **kw: Any) -> None:
            shown.append(kw)

        def stop(self) -> None:
            shown.append({"stopped": True})

    monkeypatch.setattr(BuildDisplay, "_start", staticmethod(Bar))
    d = BuildDisplay()
    d("m", "Building engine", 1, 3)
    d("m", "Tactic selection", 2, 2)
    d.close()
    d("m", "Building engine", 1, 3)  # after the start (a restarted worker): nothing
    assert shown == [
        {
            "description": "building the TensorRT engine of m: Building engine",
            "completed": 1,
            "total": 3,
        },
        {
            "description": "building the TensorRT engine of m: Tactic selection",
            "completed": 2,
            "total": 2,
        },
        {"stopped": True},
    ]


# -- 2. INT8 calibration frames ----------------------------------------------------------

INT8 = {"int8": True, "int8_calibration_member": "calibration"}


@pytest.mark.usefixtures("seams")
def test_threads_build_gets_the_calibration_frames(tmp_path: Path) -> None:
    w = trt_bundles.gpu_bundle(tmp_path, INT8, cal=(_npz(image=FRAMES), "npz"))
    with _open(w, tmp_path / "s") as s:
        assert s.run(X)["logits"].shape == (1, 10)
    (got,) = fake_trt.BUILDS
    assert set(got["calibration"]) == {"image"}
    np.testing.assert_array_equal(got["calibration"]["image"], FRAMES)
    assert got["calibration"]["image"].dtype == np.float32


@pytest.mark.usefixtures("seams")
def test_a_build_without_a_calibration_member_gets_no_frames(tmp_path: Path) -> None:
    _open(trt_bundles.gpu_bundle(tmp_path, {"fp16": True}), tmp_path / "s").close()
    assert fake_trt.BUILDS[0]["calibration"] is None


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _opened(members: dict[str, str]) -> Any:
    from types import SimpleNamespace

    def member(name: str) -> Any:
        return SimpleNamespace(format=members[name])

    return SimpleNamespace(
        manifest=SimpleNamespace(member=member), member_bytes=lambda n: memoryview(b"x")
    )


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ({}, "names the INT8 calibration member 'calibration', which the bundle does not have"),
        ({"calibration": "onnx"}, "member 'calibration' is in format 'onnx', not npz"),
    ],
)
def test_a_recipe_naming_a_missing_or_non_npz_member_is_refused(
    members: dict[str, str], match: str
) -> None:
    from edgeguard.runtime.session import _calibration

    with pytest.raises(MalformedError, match=match):
        _calibration(_opened(members), INT8)
    assert _calibration(_opened({}), {"fp16": True}) is None


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (_npz(image=np.array([{"a": 1}], dtype=object)), "not a readable npz"),
        (b"PK\x03\x04 not a zip", "not a readable npz"),
        (_npy(FRAMES), "single .npy array, not an npz archive"),
        (b"", "is empty"),
    ],
)
def test_calibration_frames_are_read_strictly(blob: bytes, match: str) -> None:
    from edgeguard.backends import read_calibration

    with pytest.raises(MalformedError, match=match):
        read_calibration(blob)


@needs_seccomp
def test_sandboxed_build_reads_the_calibration_from_its_sealed_memfd() -> None:
    spec = _trt_spec("build_reporting_calibration", recipe=INT8, calibration=_npz(image=FRAMES))
    want = [("image", "float32", [4, 1, 8, 8], float(FRAMES.sum()))]
    with pytest.raises(BackendError, match=r"model load failed: BackendError: calibration: ") as e:
        ProcessMemberExecutor({"m": spec}, policy=SandboxPolicy(), io_bytes=1 << 20)
    assert str(want) in str(e.value)
    bad = _trt_spec("build", recipe=INT8, calibration=b"PK\x03\x04 not a zip")
    with pytest.raises(BackendError, match="the INT8 calibration member is not a readable npz"):
        ProcessMemberExecutor({"m": bad}, policy=SandboxPolicy(), io_bytes=1 << 20)


# -- 3. the sealed timing cache ----------------------------------------------------------

TIMED = {"fp16": True, "timing_cache": True}


@pytest.mark.usefixtures("seams")
def test_the_timing_cache_is_sealed_and_reused_by_any_later_build_on_this_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, dev = tmp_path / "s", DeviceKey.generate("cam-01")
    _open(trt_bundles.gpu_bundle(tmp_path, TIMED, tag="one", device=dev), state).close()
    ev = _events(state)
    assert fake_trt.BUILDS[0]["timing_cache"] is None  # nothing sealed yet
    timing = [d for k, d in ev if d.get("kind") == "trt-timing"]
    assert [k for k, d in ev if d.get("kind") == "trt-timing"] == [
        "engine_cache_miss",
        "engine_cache_sealed",
    ]
    assert timing[0]["member"] == ""
    # another bundle on the same device: its build gets the first one's cache
    _open(trt_bundles.gpu_bundle(tmp_path, TIMED, tag="two", device=dev), state).close()
    assert fake_trt.BUILDS[1]["timing_cache"] == b"cache+1"
    ev = [k for k, d in _events(state) if d.get("kind") == "trt-timing"]
    assert ev == ["engine_cache_hit", "engine_cache_sealed"]  # the same entry, replaced
    _open(trt_bundles.gpu_bundle(tmp_path, TIMED, tag="three", device=dev), state).close()
    assert fake_trt.BUILDS[2]["timing_cache"] == b"cache+1+1"
    _events(state)
    # another TensorRT version: the old cache is not given to the build
    monkeypatch.setitem(fake_trt.IDENTITY, "tensorrt", "10.4.0")
    _open(trt_bundles.gpu_bundle(tmp_path, TIMED, tag="four", device=dev), state).close()
    assert fake_trt.BUILDS[3]["timing_cache"] is None
    ev = [k for k, d in _events(state) if d.get("kind") == "trt-timing"]
    assert ev == ["engine_cache_miss", "engine_cache_sealed", "engine_cache_evicted"]


@pytest.mark.usefixtures("seams")
def test_no_timing_cache_without_the_recipe_or_the_engine_cache(tmp_path: Path) -> None:
    state = tmp_path / "s"
    _open(trt_bundles.gpu_bundle(tmp_path, {"fp16": True}, tag="off"), state).close()
    assert all(d.get("kind") != "trt-timing" for _, d in _events(state))
    w = trt_bundles.gpu_bundle(tmp_path, TIMED, tag="nocache")
    for _ in range(2):
        _open(w, tmp_path / "n", engine_cache=False).close()
    assert [b["timing_cache"] for b in fake_trt.BUILDS] == [None, None, None]
    assert not (tmp_path / "n" / "engines").exists()


def test_a_timing_cache_for_a_recipe_that_keeps_none_is_refused() -> None:
    from edgeguard.backends import build_plan
    from edgeguard.errors import UsageError

    with pytest.raises(UsageError, match="the signed recipe keeps none"):
        build_plan(b"onnx", {"fp16": True}, builder=f"{FAKE}:build", timing_cache=b"x")


def test_the_timing_cache_binding_is_device_wide() -> None:
    from edgeguard.crypto.enginecache import DEVICE_WIDE
    from edgeguard.runtime.session import _timing_binding

    b = _timing_binding(fake_trt.IDENTITY)
    assert (b.bundle, b.member, b.kind) == ("", "", "trt-timing")
    assert b.manifest_sha256 == b.member_sha256 == b.recipe_sha256 == DEVICE_WIDE
    assert b.library == "tensorrt 10.3.0"
    assert dict(b.hardware) == {
        k: fake_trt.IDENTITY[k] for k in ("compute_capability", "driver", "gpu_name")
    }
    other = _timing_binding({**fake_trt.IDENTITY, "driver": "550.0.0"})
    assert other.digest() != b.digest() and other.group() == b.group()


@needs_seccomp
@pytest.mark.parametrize(("given", "want"), [(b"old", b"old+1"), (None, b"cache+1")])
def test_sandboxed_build_gets_the_timing_cache_and_returns_the_new_one(
    given: bytes | None, want: bytes
) -> None:
    spec = _trt_spec(
        "build", recipe=TIMED, artifact_max=1 << 26, timing_cache=given, timing_cache_out=True
    )
    with ProcessMemberExecutor({"m": spec}, policy=SandboxPolicy(), io_bytes=1 << 20) as ex:
        fd, note, _ = ex.take_artifact("m")
        assert fd is not None and note is None
        os.close(fd)
        tfd = ex.take_timing_cache("m")
        assert tfd is not None
        with open(tfd, "rb") as f:
            assert f.read() == want
        assert ex.take_timing_cache("m") is None  # once
        assert ex.members()["m"].run(X)["logits"].shape == (1, 10)


@needs_seccomp
def test_a_sandboxed_build_without_the_engine_cache_keeps_no_timing_cache() -> None:
    spec = _trt_spec("build", recipe=TIMED, timing_cache_out=True)  # no artifact_max
    with ProcessMemberExecutor({"m": spec}, policy=SandboxPolicy(), io_bytes=1 << 20) as ex:
        assert ex.take_timing_cache("m") is None


@needs_seccomp
def test_a_worker_that_builds_nothing_may_not_send_progress() -> None:
    spec = WorkerSpec(ONNX, loader=f"{FAKE}:loader_sending_progress", python_path=(str(ROOT),))
    got: list[Any] = []
    with pytest.raises(BackendError, match="a progress message from a worker that builds no"):
        ProcessMemberExecutor(
            {"m": spec},
            policy=SandboxPolicy(),
            io_bytes=1 << 20,
            on_progress=lambda *a: got.append(a),
        )
    assert got == []


def test_a_plan_whose_recipe_allows_host_code_is_loaded_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A version-compatible plan carries TensorRT's lean runtime (host code): the device
    must load it with the signed recipe's permission, and without it otherwise."""
    from edgeguard.backends import load_backend
    from edgeguard.backends.tensorrt import TensorRTBackend
    from edgeguard.policy.engine import MemberRecipe

    seen: list[dict[str, object]] = []

    def loaded(cls: object, data: object, **kw: object) -> str:
        seen.append(kw)
        return "backend"

    monkeypatch.setattr(TensorRTBackend, "from_engine_bytes", classmethod(loaded))
    allowed = MemberRecipe(version_compatible=True, engine_host_code_allowed=True).to_dict()
    load_backend("trt-build", b"onnx", recipe=allowed, builder="tests.runtime.fake_trt:build")
    load_backend(
        "trt-build",
        b"onnx",
        recipe=MemberRecipe().to_dict(),
        builder="tests.runtime.fake_trt:build",
    )
    assert seen[0].get("allow_host_code") is True
    assert "allow_host_code" not in seen[1]
    from edgeguard.runtime.session import _trt_where

    class Where:
        unit, index = "gpu", 0

    assert _trt_where(Where(), allowed)["allow_host_code"] is True
    assert "allow_host_code" not in _trt_where(Where(), MemberRecipe().to_dict())

"""Sanity statistics computed next to a TensorRT member's model, with test doubles (no GPU).

``tests/runtime/fake_trt.py`` stands in for TensorRT (its plans run on ONNX Runtime) and for
the CUDA C++ kernel's device check (its statistics come from the NumPy reference, on the
host). These tests check the flow - who computes the statistics, who judges them, what a
rejected frame costs and how the event log says where they were computed - never
anything about a GPU: this path has never run on one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeguard import api, data
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.keys import DeviceKey, SignerKey
from edgeguard.errors import InputRejectedError
from edgeguard.guard.checks import FrameChecks, tdiff
from edgeguard.guard.sanity.check import SanityGuard
from edgeguard.guard.sanity.reference import reference_stats
from edgeguard.packaging.packager import MemberSource, write_bundle
from edgeguard.policy.io import MemberIo, TensorSpec
from edgeguard.policy.runtime import ChainStep, MemberSpec, RuntimePolicy, VoterKind, VoterSpec
from edgeguard.policy.sanity import CalibrationInfo, InputProfile, SanityProfile, StatLimits
from edgeguard.policy.slots import policy_slot
from edgeguard.runtime.devicestats import DeviceCheckedMember, DeviceCheckSpec
from edgeguard.runtime.guarded import GuardedRuntime, ResultSource
from edgeguard.runtime.sandbox import SandboxPolicy
from tests.runtime import fake_trt

FAKE = "tests.runtime.fake_trt"
RECIPE = {"fp16": True}
IO = MemberIo(
    inputs=(TensorSpec("image", "float32", (None, 1, 8, 8)),),
    outputs=(TensorSpec("logits", "float32", (None, 10)),),
)
GOOD = np.ones((1, 1, 8, 8), np.float32)
BAD = np.full((1, 1, 8, 8), 5.0, np.float32)  # mean 5: outside [-0.5, 1.5], REJECT


def profile(*, tdiff_limit: bool = True) -> SanityProfile:
    limits = [StatLimits("mean", (0.0,), (1.0,), (-0.5,), (1.5,))]
    if tdiff_limit:
        limits.append(StatLimits("tdiff", (0.0,), (0.5,), (0.0,), (0.9,)))
    return SanityProfile(
        inputs=(
            InputProfile(
                name="image",
                dtypes=("float32",),
                layout="NCHW",
                shape=((1, None), (1, 1), (8, 8), (8, 8)),
                sat_lo=0.0,
                sat_hi=1.0,
                channels=1,
                limits=tuple(limits),
            ),
        ),
        ood=(),
        target_false_alarm=0.01,
        calibration=CalibrationInfo(samples=8, model_sha256="0" * 64, impl="numpy", margin=0.5),
    )


@pytest.fixture()
def seams(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr("edgeguard.backends.TRT_BUILDER", f"{FAKE}:build")
    monkeypatch.setattr("edgeguard.backends.TRT_IDENTITY", f"{FAKE}:identity")
    monkeypatch.setattr("edgeguard.backends.TRT_PLAN_LOADER", f"{FAKE}:load")
    monkeypatch.setattr("edgeguard.runtime.devicestats.DEVICE_CHECK", f"{FAKE}:device_check")
    fake_trt.BUILDS.clear()
    fake_trt.CHECKS.clear()
    fake_trt.TAMPER.clear()
    yield
    fake_trt.TAMPER.clear()


def _bundle(d: Path, placement: str = "gpu0") -> dict[str, Any]:
    signer, device = SignerKey.generate(), DeviceKey.generate("cam-01")
    b = d / f"{placement}.egb"
    write_bundle(
        b,
        [MemberSource("m", Path(data.model_path("digits_mlp")))],
        name="gpu-digits",
        version=1,
        signer=signer,
        recipients=[device.public],
        profiles=["generic-cpu"],
        policy=policy_slot(
            runtime=RuntimePolicy.single("m", placement=placement),
            isolation=SandboxPolicy(),
            io={"m": IO},
        ),
        sanity=profile().to_dict(),
        engine_recipe={
            "format": "edgeguard-engine-recipe/1",
            "members": {"m": {**RECIPE, "dla_core": 0} if placement == "dla0" else RECIPE},
        },
    )
    return {"bundle": b, "trust": TrustStore.of([signer.public]), "device": device}


@pytest.fixture(scope="module")
def gpu_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _bundle(tmp_path_factory.mktemp("dev"))


def _open(w: dict[str, Any], state: Path, **kw: Any) -> Any:
    return api.open_session(
        w["bundle"],
        trust=w["trust"],
        device_key=w["device"],
        state_dir=state,
        isolation="threads",
        engine_cache=False,
        **kw,
    )


def _events(state: Path, kind: str) -> list[dict[str, Any]]:
    recs = [json.loads(x) for x in (state / "events.log").read_text().splitlines()]
    return [r["data"] for r in recs if r["kind"] == kind]


@pytest.fixture()
def cpu_stats(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statistics computation of the CPU guard, by input."""
    calls: list[str] = []
    real = SanityGuard.input_stats

    def counted(self: SanityGuard, name: str, x: Any, prev: Any = None) -> Any:
        calls.append(name)
        return real(self, name, x, prev)

    monkeypatch.setattr(SanityGuard, "input_stats", counted)
    return calls


# --------------------------------------------------------------------------- session, threads


@pytest.mark.usefixtures("seams")
def test_a_gpu_members_input_statistics_come_from_its_device_check_not_the_cpu(
    gpu_bundle: dict[str, Any], tmp_path: Path, cpu_stats: list[str]
) -> None:
    state = tmp_path / "s"
    with _open(gpu_bundle, state) as s:
        assert s.runtime.device_stats == frozenset({"image"})
        for _ in range(3):
            s.infer({"image": GOOD.copy()})
    assert fake_trt.CHECKS == ["image"] * 3
    assert cpu_stats == []  # the CPU guard computed no statistics
    assert _events(state, "sanity_on_device") == [
        {
            "on": True,
            "inputs": ["image"],
            "reason": "every member computes them next to its TensorRT model",
        }
    ]


@pytest.mark.usefixtures("seams")
def test_a_frame_the_device_statistics_reject_fails_exactly_as_on_the_cpu(
    gpu_bundle: dict[str, Any], tmp_path: Path, cpu_stats: list[str]
) -> None:
    def rejected(**kw: Any) -> tuple[InputRejectedError, dict[str, Any]]:
        state = tmp_path / str(len(list(tmp_path.iterdir())))
        with _open(gpu_bundle, state, **kw) as s:
            s.infer({"image": GOOD.copy()})
            with pytest.raises(InputRejectedError) as err:
                s.infer({"image": BAD.copy()})
        (event,) = _events(state, "input_rejected")
        return err.value, event

    on_cpu, cpu_event = rejected(sanity_on_device=False)
    assert fake_trt.CHECKS == [] and cpu_stats == ["image", "image"]
    cpu_stats.clear()
    on_device, dev_event = rejected()
    assert fake_trt.CHECKS == ["image", "image"] and cpu_stats == []
    assert str(on_device) == str(on_cpu) and on_device.hint == on_cpu.hint
    assert on_device.exit_code == on_cpu.exit_code
    assert on_device.verdict == on_cpu.verdict
    assert dev_event == {**cpu_event, "statistics": "device:m"}


@pytest.mark.usefixtures("seams")
def test_tdiff_is_computed_on_the_cpu_from_the_previous_accepted_frame(
    gpu_bundle: dict[str, Any], tmp_path: Path
) -> None:
    zeros = np.zeros((1, 1, 8, 8), np.float32)
    with _open(gpu_bundle, tmp_path / "s") as s:
        s.infer({"image": GOOD.copy()})
        with pytest.raises(InputRejectedError, match=r"stat\.tdiff"):
            s.infer({"image": zeros})  # |0 - 1| = 1 > 0.9
        with pytest.raises(InputRejectedError, match=r"stat\.mean"):
            s.infer({"image": BAD.copy()})
        # the previous ACCEPTED frame is still the ones: zeros are judged against it
        with pytest.raises(InputRejectedError, match=r"stat\.tdiff"):
            s.infer({"image": zeros})


@pytest.mark.usefixtures("seams")
def test_without_the_kernel_the_cpu_computes_them_and_the_log_says_why(
    gpu_bundle: dict[str, Any],
    tmp_path: Path,
    cpu_stats: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the real factory: the CUDA C++ kernel needs pycuda, which this host does not have
    monkeypatch.setattr(
        "edgeguard.runtime.devicestats.DEVICE_CHECK", "edgeguard.runtime.devicestats:cuda_cpp_check"
    )
    state = tmp_path / "s"
    with _open(gpu_bundle, state) as s:
        assert s.runtime.device_stats == frozenset()
        s.infer({"image": GOOD.copy()})
        with pytest.raises(InputRejectedError):
            s.infer({"image": BAD.copy()})
    assert cpu_stats == ["image", "image"] and fake_trt.CHECKS == []
    (ev,) = _events(state, "sanity_on_device")
    assert ev["on"] is False and ev["reason"] == "member 'm': device check unavailable"


@pytest.mark.usefixtures("seams")
@pytest.mark.parametrize(
    ("placement", "kw", "reason"),
    [
        ("gpu0", {"sanity_on_device": False}, "statistics on the CPU as asked"),
        ("cpu", {}, "member 'm' is not a TensorRT plan on a GPU (cpu)"),
        ("dla0", {}, "member 'm' is not a TensorRT plan on a GPU (dla0)"),
    ],
)
def test_where_the_device_cannot_or_may_not_the_cpu_computes_them(
    tmp_path: Path, cpu_stats: list[str], placement: str, kw: dict[str, Any], reason: str
) -> None:
    w = _bundle(tmp_path, placement)
    state = tmp_path / "s"
    with _open(w, state, **kw) as s:
        assert s.runtime.device_stats == frozenset()
        s.infer({"image": GOOD.copy()})
    assert cpu_stats == ["image"] and fake_trt.CHECKS == []
    (ev,) = _events(state, "sanity_on_device")
    assert ev["on"] is False and ev["reason"].startswith(reason)


@pytest.mark.usefixtures("seams")
def test_static_checks_still_run_before_any_model(
    gpu_bundle: dict[str, Any], tmp_path: Path
) -> None:
    with (
        _open(gpu_bundle, tmp_path / "s") as s,
        pytest.raises(InputRejectedError, match="dtype"),
    ):
        s.infer({"image": GOOD.astype(np.float64)})
    assert fake_trt.CHECKS == []  # no model (and no device check) ran


# --------------------------------------------------------------------------- the runtime


class _Call:
    def __init__(self, out: dict[str, np.ndarray], stats: Any) -> None:
        self._out, self.device_stats = out, stats

    def wait(self, timeout_s: float) -> bool:
        return True

    def result(self) -> dict[str, np.ndarray]:
        return self._out

    @property
    def run_ns(self) -> int | None:
        return 1000


class _Executor:
    """Members that answer ``out`` with the reference statistics of what they were fed,
    shifted by ``shift`` for the members named in ``liars``; ``silent``: send none."""

    def __init__(self, liars: tuple[str, ...] = (), silent: tuple[str, ...] = ()) -> None:
        self.liars, self.silent = liars, silent
        self.fed: list[str] = []

    def submit(self, name: str, feeds: Any) -> _Call:
        self.fed.append(name)
        x = feeds["image"]
        st = reference_stats(x, layout="NCHW", sat_lo=0.0, sat_hi=1.0)
        if name in self.liars:
            st = dataclasses.replace(st, mean=st.mean + 100.0)
        out = {"logits": np.full((1, 10), float(x.mean()), np.float32)}
        return _Call(out, None if name in self.silent else {"image": st})

    def abandon(self, name: str) -> None:
        pass

    def close(self) -> None:
        pass


class _Member:
    def run(self, feeds: Any) -> dict[str, np.ndarray]:
        raise AssertionError("called through the executor only")


def _runtime(ex: _Executor, **kw: Any) -> GuardedRuntime:
    names = ("a", "b")
    pol = RuntimePolicy(
        members=tuple(MemberSpec(n, "gpu0") for n in names),
        voter=VoterSpec(kind=VoterKind.MEDIAN, output="logits"),
        deadline_ms=1000.0,
        fallback_chain=(ChainStep.ENSEMBLE, ChainStep.LAST_KNOWN_GOOD),
        reject_action=kw.pop("reject_action", "fallback"),
        speculative=kw.pop("speculative", False),
    )
    checks = FrameChecks(IO.inputs, SanityGuard(profile(tdiff_limit=False), impl="numpy"))
    return GuardedRuntime(
        {n: _Member() for n in names},
        policy=pol,
        sanity=checks,
        executor=ex,
        device_stats={"image"},
        async_log=False,
        **kw,
    )


def test_the_answers_to_a_frame_rejected_on_the_device_are_never_delivered() -> None:
    with _runtime(_Executor()) as rt:
        first = rt.infer({"image": GOOD.copy()})
        assert first.source is ResultSource.ENSEMBLE
        r = rt.infer({"image": BAD.copy()})
    # the members ran (their answers said 5.0) but the answer is the last good one
    assert r.source is ResultSource.LAST_KNOWN_GOOD and r.rejection is not None
    np.testing.assert_array_equal(r.outputs["logits"], first.outputs["logits"])
    assert any("stat.mean" in x for x in r.reasons)


def test_one_members_statistics_that_reject_reject_the_frame() -> None:
    ex = _Executor(liars=("b",))
    with _runtime(ex) as rt, pytest.raises(InputRejectedError, match=r"stat\.mean") as err:
        rt.infer({"image": GOOD.copy()})  # no last-known-good answer yet: the error
    assert sorted(ex.fed) == ["a", "b"] and err.value.verdict["status"] == "REJECT"


def test_when_no_member_sent_statistics_the_cpu_computes_them(cpu_stats: list[str]) -> None:
    ex = _Executor(silent=("a", "b"))
    with _runtime(ex, reject_action="raise") as rt:
        rt.infer({"image": GOOD.copy()})
        assert cpu_stats == ["image"]
        with pytest.raises(InputRejectedError, match=r"stat\.mean"):
            rt.infer({"image": BAD.copy()})
    assert cpu_stats == ["image", "image"]


def test_device_stats_need_a_checker_that_judges_them() -> None:
    from edgeguard.errors import UsageError

    with pytest.raises(UsageError, match="device_stats"):
        GuardedRuntime(
            {"a": _Member()},
            policy=RuntimePolicy.single("a", placement="gpu0"),
            executor=_Executor(),
            device_stats={"image"},
        )


# --------------------------------------------------------------------------- the pieces


def test_tdiff_alone_equals_the_reference() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((3, 2, 5, 7)).astype(np.float32)
    p = rng.random((3, 2, 5, 7)).astype(np.float32)
    x[0, 0, 0, 0], p[1, 1, 2, 2], x[2, 1] = np.nan, np.inf, np.nan  # a channel with no pair
    want = reference_stats(x, layout="NCHW", prev=p).tdiff
    assert want is not None
    np.testing.assert_allclose(tdiff(x, p, "NCHW"), want, rtol=1e-12)
    assert np.isnan(tdiff(x, p, "NCHW")[2, 1])
    xh, ph = x.transpose(0, 2, 3, 1).copy(), p.transpose(0, 2, 3, 1).copy()
    np.testing.assert_allclose(tdiff(xh, ph, "NHWC"), want, rtol=1e-12)


def test_a_checked_member_returns_its_statistics_and_refuses_anything_else() -> None:
    from edgeguard.errors import BackendError, UsageError

    spec = DeviceCheckSpec("image", "NCHW", 0.0, 1.0)

    class Backend:
        def run(self, feeds: Any) -> dict[str, np.ndarray]:
            return {"y": np.zeros(1, np.float32)}

        def run_with_stats(self, feeds: Any, check: Any) -> Any:
            return self.run(feeds), "not statistics"

    with pytest.raises(UsageError, match="cannot run a device check"):
        DeviceCheckedMember(object(), fake_trt.device_check(spec))
    m = DeviceCheckedMember(Backend(), fake_trt.device_check(spec))
    with pytest.raises(BackendError, match="not FrameStats"):
        m.run_checked({"image": GOOD})


def test_the_spec_survives_the_init_message() -> None:
    spec = DeviceCheckSpec("image", "NHWC", None, 255.0, device_id=1, factory=f"{FAKE}:x")
    assert DeviceCheckSpec.from_init(json.loads(json.dumps(spec.to_init()))) == spec


def test_speculative_members_answers_are_discarded_when_their_statistics_reject() -> None:
    ex = _Executor()
    with _runtime(ex, speculative=True) as rt:
        first = rt.infer({"image": GOOD.copy()})
        r = rt.infer({"image": BAD.copy()})
    assert ex.fed == ["a", "b"] * 2  # asked before the checks, both frames
    assert r.source is ResultSource.LAST_KNOWN_GOOD and r.rejection is not None
    np.testing.assert_array_equal(r.outputs["logits"], first.outputs["logits"])


def test_a_sandboxed_member_whose_worker_has_no_kernel_keeps_the_session_on_the_cpu() -> None:
    from edgeguard.runtime.session import _device_check_missing

    class Ex:
        def __init__(self, notes: dict[str, str]) -> None:
            self.notes = notes

        def device_check(self, name: str) -> str:
            return self.notes[name]

    pol = RuntimePolicy(
        members=(MemberSpec("a", "gpu0"), MemberSpec("b", "gpu1")),
        voter=VoterSpec(kind=VoterKind.MEDIAN, output="logits"),
        deadline_ms=100.0,
        fallback_chain=(ChainStep.ENSEMBLE,),
    )
    ok = Ex({"a": "active", "b": "active"})
    assert _device_check_missing(ok, {}, pol, "sandbox") is None
    one = Ex({"a": "active", "b": "unavailable: MissingDependencyError: no pycuda"})
    assert _device_check_missing(one, {}, pol, "sandbox") == (
        "member 'b': device check unavailable: MissingDependencyError: no pycuda"
    )


class _Vouching(_Executor):
    """'a' (compromised worker) always sends the statistics of a good frame;
    'b' (honest, its worker restarted without the kernel: device_check unavailable)
    answers with no statistics - the supervisor accepts an answer without them."""

    def submit(self, name: str, feeds: Any) -> _Call:
        self.fed.append(name)
        x = feeds["image"]
        out = {"logits": np.full((1, 10), float(x.mean()), np.float32)}
        if name == "a":
            return _Call(
                out, {"image": reference_stats(GOOD, layout="NCHW", sat_lo=0.0, sat_hi=1.0)}
            )
        return _Call(out, None)


def test_a_bad_frame_is_not_accepted_on_one_members_word() -> None:
    with _runtime(_Vouching(), reject_action="raise") as rt:
        rt.infer({"image": GOOD.copy()})
        with pytest.raises(InputRejectedError):
            rt.infer({"image": BAD.copy()})  # b answered without statistics

"""Member placement is honoured at run time, or refused (never silently moved)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeguard import data
from edgeguard.backends.onnxruntime import OnnxRuntimeBackend, trt_providers
from edgeguard.errors import BackendError, PolicyError, UsageError
from edgeguard.policy.runtime import (
    ChainStep,
    MemberSpec,
    RuntimePolicy,
    VoterKind,
    VoterSpec,
    parse_placement,
)
from edgeguard.runtime.guarded import GuardedRuntime
from edgeguard.runtime.placement import (
    cpu_member_count,
    fallback_options,
    loader_options,
    member_cpus,
    usable_cpus,
)
from tests.helpers import build, eg, make_keys

USABLE = sorted(usable_cpus())
LAST = USABLE[-1]
BEYOND = max(USABLE) + 1  # a core this process may not use


def _policy(*members: MemberSpec) -> RuntimePolicy:
    return RuntimePolicy(
        members=members,
        voter=VoterSpec(VoterKind.MEDIAN, output="y"),
        quorum=len(members),
        deadline_ms=5000.0,
        fallback_chain=(ChainStep.ENSEMBLE, ChainStep.LAST_KNOWN_GOOD),
    )


class _Affinity:
    """A member that reports the CPU affinity of the thread calling it."""

    def __init__(self) -> None:
        self.seen: list[frozenset[int]] = []
        self.threads: set[int] = set()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.seen.append(frozenset(os.sched_getaffinity(0)))
        self.threads.add(threading.get_ident())
        return {"y": np.zeros(2, np.float32)}


def _task_affinities(pid: int | str = "self") -> dict[str, frozenset[int]]:
    """CPU affinity of every thread of a process, from /proc."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                cpus = parse_placement("cpu:" + line.split()[1]).cpus
                assert cpus is not None
                out[task.name] = cpus
    return out


# ------------------------------------------------------------------ loader options (pure)


def test_loader_options_map_each_placement() -> None:
    cpu, n = MemberSpec("a"), 2
    share = max(1, len(USABLE) // n)
    assert loader_options(cpu, "onnx", cpu_members=n, sandboxed=False) == {
        "intra_op_threads": share,
        "inter_op_threads": 1,
    }
    # in a sandboxed worker an unpinned member keeps one thread (Landlock covers only it)
    assert loader_options(cpu, "onnx", cpu_members=n, sandboxed=True)["intra_op_threads"] == 1
    pinned = MemberSpec("a", f"cpu:{LAST}")
    assert loader_options(pinned, "onnx", cpu_members=n, sandboxed=False) == {
        "intra_op_threads": 1,
        "inter_op_threads": 1,
        "cpus": [LAST],
    }
    # the worker process pins itself; the loader need not
    assert "cpus" not in loader_options(pinned, "onnx", cpu_members=n, sandboxed=True)
    assert loader_options(MemberSpec("a", "gpu1"), "onnx", cpu_members=n, sandboxed=False) == {
        "gpu": 1,
        "intra_op_threads": 1,
        "precisions": [],
    }
    assert loader_options(
        MemberSpec("a", "dla1"), "onnx", cpu_members=n, sandboxed=True, precisions=("int8",)
    ) == {"dla_core": 1, "intra_op_threads": 1, "precisions": ["int8"]}
    assert loader_options(MemberSpec("a", "gpu"), "trt-engine", cpu_members=n, sandboxed=False) == {
        "device_id": 0
    }
    assert loader_options(MemberSpec("a", "dla1"), "trt-engine", cpu_members=n, sandboxed=True) == {
        "dla_core": 1
    }
    assert fallback_options("onnx", cpu_members=n)["intra_op_threads"] == share
    assert fallback_options("trt-engine", cpu_members=n) == {}


def test_cpu_member_count_ignores_accelerator_members() -> None:
    p = _policy(MemberSpec("a"), MemberSpec("b", "cpu:0"), MemberSpec("c", "dla0"))
    assert cpu_member_count(p) == 2


def test_an_engine_on_the_cpu_is_refused() -> None:
    with pytest.raises(PolicyError, match="TensorRT engine"):
        loader_options(MemberSpec("a", "cpu"), "trt-engine", cpu_members=1, sandboxed=False)


def test_cores_this_process_may_not_use_are_refused() -> None:
    bad = MemberSpec("a", f"cpu:{BEYOND}")
    with pytest.raises(PolicyError, match=f"missing \\[{BEYOND}\\]"):
        loader_options(bad, "onnx", cpu_members=1, sandboxed=False)
    with pytest.raises(PolicyError, match="may use only CPUs"):
        member_cpus(_policy(MemberSpec("b"), bad))
    with pytest.raises(PolicyError, match="may use only CPUs"):
        GuardedRuntime({"a": _Affinity(), "b": _Affinity()}, policy=_policy(MemberSpec("b"), bad))


# ------------------------------------------------------------------ thread executor


def test_thread_executor_pins_each_members_worker_thread() -> None:
    a, b = _Affinity(), _Affinity()
    policy = _policy(MemberSpec("a", f"cpu:{LAST}"), MemberSpec("b"))
    with GuardedRuntime({"a": a, "b": b}, policy=policy) as rt:
        for _ in range(3):
            assert rt.infer({"x": np.zeros(2, np.float32)}).source.value == "ensemble"
        prom = rt.metrics.to_prometheus()
    assert f'edgeguard_member_info{{member="a",placement="cpu:{LAST}"}} 1' in prom
    assert 'edgeguard_member_info{member="b",placement="cpu"} 1' in prom
    assert a.seen == [frozenset({LAST})] * 3
    assert b.seen == [frozenset(USABLE)] * 3  # unpinned: left as the process has it
    assert threading.get_ident() not in a.threads
    assert frozenset(os.sched_getaffinity(0)) == frozenset(USABLE)  # the caller is untouched


# ------------------------------------------------------------------ ONNX Runtime backend


def test_onnxruntime_pool_threads_inherit_the_pinned_cores() -> None:
    before = _task_affinities()
    backend = OnnxRuntimeBackend.from_bytes(
        data.model_bytes("digits_mlp"), intra_op_threads=2, cpus=[LAST]
    )
    try:
        new = {k: v for k, v in _task_affinities().items() if k not in before}
        assert new, "ONNX Runtime created no pool thread for intra_op_threads=2"
        assert set(new.values()) == {frozenset({LAST})}
        assert frozenset(os.sched_getaffinity(0)) == frozenset(USABLE)  # restored
        assert backend.describe()["details"]["cpus"] == [LAST]
        x, _ = data.load_split("test")
        assert backend.run({"image": x[:2]})["logits"].shape == (2, 10)
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cpus": []}, "non-empty"),
        ({"cpus": [-1]}, "non-empty"),
        ({"cpus": [0], "gpu": 0}, "does not go with"),
    ],
)
def test_onnxruntime_placement_arguments_are_checked(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        OnnxRuntimeBackend.from_bytes(data.model_bytes("digits_mlp"), **kwargs)


def test_onnxruntime_cores_outside_the_affinity_are_refused() -> None:
    with pytest.raises(UsageError, match="cannot pin"):
        OnnxRuntimeBackend.from_bytes(data.model_bytes("digits_mlp"), cpus=[BEYOND])
    assert frozenset(os.sched_getaffinity(0)) == frozenset(USABLE)


@pytest.mark.parametrize("kwargs", [{"gpu": 0}, {"dla_core": 1}])
def test_accelerator_placement_without_tensorrt_provider_is_refused(
    kwargs: dict[str, int],
) -> None:
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the TensorRT provider; the refusal cannot be shown")
    with pytest.raises(BackendError, match="TensorrtExecutionProvider"):
        OnnxRuntimeBackend.from_bytes(data.model_bytes("digits_mlp"), **kwargs)


@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")
def test_a_silent_fall_back_to_the_cpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the provider is listed but cannot start, ONNX Runtime quietly uses the CPU."""
    import onnxruntime as ort

    real = ort.get_available_providers
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", *real()]
    )
    with pytest.raises(BackendError, match="not TensorrtExecutionProvider"):
        OnnxRuntimeBackend.from_bytes(data.model_bytes("digits_mlp"), gpu=0)


def test_tensorrt_provider_options_follow_the_models_precision() -> None:
    from edgeguard.packaging.onnx_checks import onnx_io
    from edgeguard.packaging.variants import make_variants

    x, _ = data.load_split("calib")
    fp32 = data.model_bytes("digits_mlp")
    variants = {
        v.kind: v.model for v in make_variants(fp32, ["fp16", "int8"], calibration={"image": x})
    }

    def opts(model: bytes, **kw: int | None) -> dict[str, Any]:
        # the precisions come from the signed I/O contract, read from the graph at build
        precisions = onnx_io(model, source="m").precisions
        providers = trt_providers(
            gpu=kw.get("gpu"), dla_core=kw.get("dla_core"), precisions=precisions
        )
        assert [p if isinstance(p, str) else p[0] for p in providers] == [
            "TensorrtExecutionProvider",
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ]
        first = providers[0]
        assert isinstance(first, tuple)
        # nothing of the model or its engine may reach the disk
        assert first[1]["trt_engine_cache_enable"] is False
        assert first[1]["trt_timing_cache_enable"] is False
        assert first[1]["trt_dump_subgraphs"] is False
        return first[1]

    g = opts(fp32, gpu=1)
    assert (g["device_id"], g["trt_fp16_enable"], g["trt_int8_enable"]) == (1, False, False)
    assert "trt_dla_enable" not in g
    assert opts(variants["fp16"], gpu=None)["trt_fp16_enable"] is True
    assert opts(variants["int8"], gpu=None)["trt_int8_enable"] is True
    d = opts(fp32, dla_core=1)  # DLA runs fp16 or int8 only
    assert (d["trt_dla_enable"], d["trt_dla_core"], d["trt_fp16_enable"]) == (True, 1, True)
    assert d["device_id"] == 0
    with pytest.raises(UsageError, match="dla_core"):
        trt_providers(gpu=None, dla_core=-1)
    with pytest.raises(UsageError, match="unknown precision"):
        trt_providers(gpu=0, dla_core=None, precisions=("fp8",))


# ------------------------------------------------------------------ end to end (bundle)


@pytest.fixture(scope="module")
def pinned_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("placement")
    make_keys(d)
    b = d / "pinned.egb"
    r = build(
        d,
        b,
        data.model_path("digits_mlp"),
        extra=(
            "--calibration",
            data.split_path("calib"),
            "--variants",
            "fp32,fp16",
            "--quorum",
            "2",
            "--deadline-ms",
            "2000",
            "--placement",
            f"digits_mlp-fp32=cpu:{LAST}",
        ),
    )
    assert r.returncode == 0, r.stderr
    return {"d": d, "bundle": b}


def _open(world: dict[str, Path], tmp: Path, **kw: Any) -> Any:
    from edgeguard.api import open_session
    from edgeguard.keystore import load_device_key, load_trust_store

    d = world["d"]
    return open_session(
        world["bundle"],
        trust=load_trust_store([d / "signer.pub"]),
        device_key=load_device_key(d / "dev" / "device.key"),
        state_dir=tmp / "state",
        event_log=False,
        **kw,
    )


def test_placement_is_signed_into_the_policy(pinned_bundle) -> None:
    from edgeguard.runtime.opener import read_prefix

    with open(pinned_bundle["bundle"], "rb") as f:
        prefix, _ = read_prefix(f)
    members = prefix.header.manifest.policy["runtime"]["members"]
    assert {m["name"]: m["placement"] for m in members} == {
        "digits_mlp-fp32": f"cpu:{LAST}",
        "digits_mlp-fp16": "cpu",
    }


def test_inspect_shows_the_placements_and_the_policy(pinned_bundle) -> None:
    r = eg("inspect", pinned_bundle["bundle"], "--json")
    assert r.returncode == 0, r.stderr
    rt = json.loads(r.stdout)["runtime"]
    assert rt["placement"] == {"digits_mlp-fp32": f"cpu:{LAST}", "digits_mlp-fp16": "cpu"}
    assert (rt["voter"], rt["quorum"], rt["deadline_ms"]) == ("plurality", 2, 2000.0)
    r = eg("inspect", pinned_bundle["bundle"])
    assert r.returncode == 0, r.stderr
    assert "placement" in r.stdout and f"cpu:{LAST}" in r.stdout
    assert "quorum 2 of 2, deadline 2000 ms" in r.stdout


def test_threads_isolation_pins_the_member_and_its_pool(pinned_bundle, tmp_path) -> None:
    x, _ = data.load_split("test")
    with _open(pinned_bundle, tmp_path, isolation="threads") as s:
        for i in range(3):
            assert s.infer({"image": x[i : i + 1]}).source.value == "ensemble"
        workers = s.runtime.executor._workers  # type: ignore[attr-defined]
        seen = {
            n: frozenset(os.sched_getaffinity(workers[n].thread.native_id))
            for n in ("digits_mlp-fp32", "digits_mlp-fp16")
        }
        described = sorted(str(b.describe()["details"]["cpus"]) for b in s._parts.backends)
    assert seen["digits_mlp-fp32"] == frozenset({LAST})
    assert seen["digits_mlp-fp16"] == frozenset(USABLE)
    assert described == ["None", str([LAST])]  # the fp32 backend's pool, not the fp16's


def test_sandboxed_worker_process_is_pinned(pinned_bundle, tmp_path) -> None:
    from edgeguard.runtime.sandbox import probe_host

    if not probe_host().available("seccomp"):
        pytest.skip("sandboxed workers need seccomp on this host")
    x, _ = data.load_split("test")
    with _open(pinned_bundle, tmp_path, isolation="sandbox") as s:
        assert s.infer({"image": x[:1]}).source.value == "ensemble"
        pinned = s.worker_status("digits_mlp-fp32").pid
        free = s.worker_status("digits_mlp-fp16").pid
        assert set(_task_affinities(pinned).values()) == {frozenset({LAST})}  # every thread
        assert set(_task_affinities(free).values()) == {frozenset(USABLE)}


def test_run_refuses_cores_the_device_does_not_have(tmp_path) -> None:
    make_keys(tmp_path)
    b = tmp_path / "far.egb"
    r = build(
        tmp_path,
        b,
        data.model_path("digits_mlp"),
        extra=(
            "--calibration",
            data.split_path("calib"),
            "--variants",
            "fp32,fp16",
            "--placement",
            f"digits_mlp-fp16=cpu:{BEYOND}",
        ),
    )
    assert r.returncode == 0, r.stderr
    x, _ = data.load_split("test")
    np.savez(tmp_path / "in.npz", image=x[:2])
    for isolation in ("threads", "sandbox"):
        r = eg(
            "run",
            b,
            "--trust",
            tmp_path / "signer.pub",
            "--device-key",
            tmp_path / "dev" / "device.key",
            "--input",
            tmp_path / "in.npz",
            "--output",
            tmp_path / "out.npz",
            "--state-dir",
            tmp_path / "state",
            "--isolation",
            isolation,
        )
        assert r.returncode == 6, (isolation, r.stderr)
        assert "may use only CPUs" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) <= 2


@pytest.mark.parametrize(
    ("placement", "match"),
    [
        ("nosuch=cpu", "not a member"),
        ("digits_mlp-fp16=dla0", "no GPU"),
        ("digits_mlp-fp16=cpu:3-1", "ascend"),
        ("digits_mlp-fp16", "MEMBER=WHERE"),
    ],
)
def test_build_refuses_bad_placements(tmp_path, placement: str, match: str) -> None:
    make_keys(tmp_path)
    r = build(
        tmp_path,
        tmp_path / "x.egb",
        data.model_path("digits_mlp"),
        extra=(
            "--calibration",
            data.split_path("calib"),
            "--variants",
            "fp32,fp16",
            "--placement",
            placement,
        ),
    )
    assert r.returncode == 2, r.stderr
    assert match in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.egb").exists()


def test_thread_executor_refuses_unknown_names_and_reports_a_failed_pin() -> None:
    from edgeguard.runtime.guarded import ThreadMemberExecutor

    with pytest.raises(UsageError, match="unknown members"):
        ThreadMemberExecutor({"a": _Affinity()}, cpus={"b": frozenset({LAST})})
    ex = ThreadMemberExecutor({"a": _Affinity()}, cpus={"a": frozenset({BEYOND})})
    try:
        job = ex.submit("a", {"x": np.zeros(1)})
        assert job.wait(5.0)
        with pytest.raises(PolicyError, match="cannot pin"):  # the member abstains
            job.result()
    finally:
        ex.close()


def test_plan_refuses_placements_the_profile_cannot_hold() -> None:
    from edgeguard.packaging.ensemble import EnsembleOptions, plan_ensemble

    model = [("m", data.model_bytes("digits_mlp"))]

    def plan(*placements: tuple[str, str], dla_cores: int = 2) -> dict[str, str]:
        policy = plan_ensemble(
            model,
            EnsembleOptions(variants=("fp32", "fp16"), placements=placements),
            calibration={"image": data.load_split("calib")[0][:32]},
            output_name="logits",
            dla_cores=dla_cores,
            has_gpu=True,
        )
        return {m.name: m.placement for m in policy.runtime.members}

    assert plan(("m-fp16", "gpu"), ("m-fp32", "cpu:0")) == {"m-fp32": "cpu:0", "m-fp16": "gpu0"}
    with pytest.raises(UsageError, match="1 DLA core"):
        plan(("m-fp16", "dla1"), dla_cores=1)
    with pytest.raises(UsageError, match="twice"):
        plan(("m-fp16", "gpu"), ("m-fp16", "dla0"))


def test_pinning_without_sched_setaffinity_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hosts without per-thread affinity (not Linux) refuse pinned placements up front."""
    from edgeguard.runtime.placement import pin_current_thread

    monkeypatch.delattr(os, "sched_setaffinity")
    with pytest.raises(PolicyError, match="sched_setaffinity"):
        pin_current_thread({LAST})
    with pytest.raises(PolicyError, match="needs Linux"):
        member_cpus(_policy(MemberSpec("a", f"cpu:{LAST}")))
    with pytest.raises(UsageError, match="sched_setaffinity"):
        OnnxRuntimeBackend.from_bytes(data.model_bytes("digits_mlp"), cpus=[LAST])

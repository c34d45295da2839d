"""ProcessMemberExecutor: exact results vs in-process ONNX Runtime, shared-memory framing,
sealed model memfd, killing hung workers, restart with backoff, refusal paths."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeguard.errors import BackendError, InputRefusedError, PolicyError, UsageError
from edgeguard.guard.eventlog import EventLog
from edgeguard.runtime.sandbox import REQUIRED, HostCapabilities, SandboxPolicy
from edgeguard.runtime.sandbox.executor import (
    FALLBACK_NAME,
    ProcessMemberExecutor,
    WorkerSpec,
    seal_model,
)
from edgeguard.runtime.sandbox.worker import pack_arrays, unpack_arrays
from tests.sandbox.conftest import HOSTILE, ROOT, need, records

pytest.importorskip("onnxruntime")


def conv_model(seed: int = 0, hw: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, hw, hw])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["logits"]),
    ]
    g = helper.make_graph(nodes, "conv", [x], [y], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return bytes(m.SerializeToString())


def hostile(action: str, **opts: object) -> WorkerSpec:
    return WorkerSpec(
        action.encode(), fmt="test", loader=HOSTILE, python_path=(str(ROOT),), options=opts
    )


@pytest.fixture()
def onnx_ex(caps: HostCapabilities) -> Iterator[ProcessMemberExecutor]:
    ex = ProcessMemberExecutor(
        {"a": WorkerSpec(conv_model())}, policy=SandboxPolicy(), caps=caps, io_bytes=1 << 20
    )
    yield ex
    ex.close()


def test_results_match_in_process_exactly(onnx_ex: ProcessMemberExecutor) -> None:
    from edgeguard.backends import load_backend

    ref = load_backend("onnx", conv_model(), intra_op_threads=1, inter_op_threads=1)
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = rng.random((1, 3, 32, 32), dtype=np.float32)
        call = onnx_ex.submit("a", {"image": x})
        assert call.wait(30)
        out = call.result()
        assert call.run_ns is not None and call.run_ns > 0
        np.testing.assert_array_equal(out["logits"], ref.run({"image": x})["logits"])
    st = onnx_ex.status("a")
    assert st.state == "ready" and st.pid is not None and st.pid != os.getpid()


def test_layers_reported(onnx_ex: ProcessMemberExecutor, caps: HostCapabilities) -> None:
    layers = onnx_ex.status("a").layers
    for layer, plan in onnx_ex.plan.items():
        if plan == "apply" and layer != "cgroup":
            assert layers[layer].startswith("active"), (layer, layers[layer])
        if plan == "skip":
            assert layers[layer] == "skipped"


def test_model_errors_fail_the_call_not_the_worker(onnx_ex: ProcessMemberExecutor) -> None:
    call = onnx_ex.submit("a", {"image": np.zeros((1, 3, 8, 8), np.float32)})
    assert call.wait(30)
    with pytest.raises(BackendError, match="shape"):
        call.result()
    call = onnx_ex.submit("a", {"image": np.zeros((1, 3, 32, 32), np.float32)})
    assert call.wait(30) and call.result()["logits"].shape == (1, 8)
    assert onnx_ex.status("a").deaths == 0


def test_refusals(onnx_ex: ProcessMemberExecutor) -> None:
    with pytest.raises(UsageError):
        onnx_ex.submit("nope", {})
    big = onnx_ex.submit("a", {"image": np.zeros((1, 3, 512, 512), np.float32)})
    assert big.wait(0)
    with pytest.raises(InputRefusedError, match="I/O region"):  # the request's fault
        big.result()
    with pytest.raises(UsageError):
        ProcessMemberExecutor({}, policy=SandboxPolicy())
    onnx_ex.close()
    with pytest.raises(UsageError):
        onnx_ex.submit("a", {})


def test_abandon_kills_a_hung_worker_and_it_restarts(
    caps: HostCapabilities, elog: EventLog
) -> None:
    with ProcessMemberExecutor(
        {"h": hostile("hang")},
        policy=SandboxPolicy(),
        caps=caps,
        event_log=elog,
        restart_backoff_s=0.01,
    ) as ex:
        pid = ex.status("h").pid
        assert pid is not None
        proc = ex._slots["h"].proc  # type: ignore[attr-defined]
        waited_in: list[str] = []
        real_wait = proc.wait

        def spy_wait(*a, **k):  # type: ignore[no-untyped-def]
            waited_in.append(threading.current_thread().name)
            return real_wait(*a, **k)

        proc.wait = spy_wait
        call = ex.submit("h", {"x": np.ones(2, np.float32)})
        assert not call.wait(0.2)
        ex.abandon("h")
        assert call.wait(0)  # failed at once: the frame never waits for the teardown
        with pytest.raises(BackendError, match="worker killed"):
            call.result()
        assert ex.submit("h", {"x": np.ones(2, np.float32)}).wait(0)  # restarting: fails fast
        assert ex.wait_ready("h", 30)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # really gone (reaped), unlike an abandoned thread
        # the supervisor, not the caller of abandon(), waited for the killed process
        assert waited_in and set(waited_in) == {"edgeguard-sandbox-supervisor"}
        st = ex.status("h")
        assert st.restarts == 1 and st.pid != pid and st.last_restart_ms is not None
    recs = records(elog)
    kinds = [r["kind"] for r in recs]
    assert "sandbox_worker_killed" in kinds and "sandbox_worker_restarted" in kinds
    killed = next(r["data"] for r in recs if r["kind"] == "sandbox_worker_killed")
    assert "SIGKILL" in json.dumps(killed)


def test_backoff_grows_and_member_retires(caps: HostCapabilities, elog: EventLog) -> None:
    with ProcessMemberExecutor(
        {"c": hostile("crash")},
        policy=SandboxPolicy(),
        caps=caps,
        event_log=elog,
        restart_backoff_s=0.02,
        max_restarts=2,
    ) as ex:
        for _ in range(3):
            assert ex.wait_ready("c", 30)
            call = ex.submit("c", {"x": np.ones(2, np.float32)})
            assert call.wait(30)
            with pytest.raises(BackendError, match="SIGSEGV"):
                call.result()
        assert not ex.wait_ready("c", 5)
        assert ex.status("c").state == "retired"
        with pytest.raises(BackendError, match="retired"):
            ex.submit("c", {"x": np.ones(2, np.float32)})
    died = [r["data"] for r in records(elog) if r["kind"] == "sandbox_worker_died"]
    assert [d["restart_in_ms"] for d in died[:2]] == [20.0, 40.0]
    assert any(r["kind"] == "sandbox_worker_retired" for r in records(elog))


def test_unsupported_output_dtype_fails_the_call(caps: HostCapabilities, elog: EventLog) -> None:
    with ProcessMemberExecutor(
        {"g": hostile("garbage")}, policy=SandboxPolicy(), caps=caps, event_log=elog
    ) as ex:
        call = ex.submit("g", {"x": np.ones(2, np.float32)})
        assert call.wait(30)
        with pytest.raises(BackendError, match="dtype"):
            call.result()
        assert ex.status("g").deaths == 0
    assert any(r["kind"] == "sandbox_call_failed" for r in records(elog))


def test_forged_reply_is_refused_and_the_worker_killed(
    caps: HostCapabilities, elog: EventLog
) -> None:
    with ProcessMemberExecutor(
        {"f": hostile("forge")}, policy=SandboxPolicy(), caps=caps, event_log=elog, io_bytes=1 << 16
    ) as ex:
        call = ex.submit("f", {"x": np.ones(2, np.float32)})
        assert call.wait(30)
        with pytest.raises(BackendError, match="bad reply"):
            call.result()
        assert ex.status("f").deaths == 1
    recs = records(elog)
    assert any(r["kind"] == "sandbox_bad_reply" for r in recs)
    assert any(
        r["kind"] == "sandbox_worker_killed" or r["kind"] == "sandbox_worker_died" for r in recs
    )


def test_required_layer_missing_refuses_to_start(caps: HostCapabilities) -> None:
    fake = HostCapabilities(**{**caps.__dict__, "landlock_abi": 0})
    with pytest.raises(PolicyError, match="landlock"):
        ProcessMemberExecutor(
            {"a": hostile("benign")}, policy=SandboxPolicy(landlock=REQUIRED), caps=fake
        )


def test_model_load_failure_is_a_backend_error(caps: HostCapabilities) -> None:
    with pytest.raises(BackendError, match="model load failed"):
        ProcessMemberExecutor({"a": WorkerSpec(b"not onnx")}, policy=SandboxPolicy(), caps=caps)


def test_worker_pinned_to_a_core_it_may_not_use_fails_to_start(caps: HostCapabilities) -> None:
    beyond = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(BackendError, match=f"cannot pin to CPUs \\[{beyond}\\]"):
        ProcessMemberExecutor(
            {"a": WorkerSpec(conv_model(), cpus=(beyond,))}, policy=SandboxPolicy(), caps=caps
        )


def test_seal_model() -> None:
    fd = seal_model(b"abc")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
        with pytest.raises(PermissionError):
            os.write(fd, b"x")
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
    finally:
        os.close(fd)
    with pytest.raises(UsageError):
        seal_model(b"")


def test_pack_unpack_validation() -> None:
    region = memoryview(bytearray(4096))
    arrays: dict[str, np.ndarray] = {
        "a": np.arange(6, dtype=np.int32).reshape(2, 3),
        "b": np.ones(3, np.float64),
    }
    desc = pack_arrays(arrays, region)
    assert all(d[3] % 64 == 0 for d in desc)
    back = unpack_arrays(desc, region, copy=True)
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)
    bad = [
        "x",
        [["a", "int32", [2, 3], 0, 25]],  # size mismatch
        [["a", "int32", [1024], 0, 4096], ["b", "int8", [1], 4096, 1]],  # outside
        [["a", "object", [1], 0, 8]],
        [["a", "int32", [-1], 0, 4]],
        [["a", "int32", [1], 3, 4]],  # misaligned
        [["a", "int32", [1], 0, 4], ["a", "int32", [1], 64, 4]],  # duplicate
        [["a", "int32", [True], 0, 4]],
    ]
    for d in bad:
        with pytest.raises(ValueError):
            unpack_arrays(d, region, copy=True)
    with pytest.raises(ValueError):
        pack_arrays({"z": np.zeros(2000, np.float32)}, region)


def test_fallback_proxy_names(caps: HostCapabilities) -> None:
    need(caps, "rlimits")
    with ProcessMemberExecutor(
        {"m": hostile("benign"), FALLBACK_NAME: hostile("benign")},
        policy=SandboxPolicy(),
        caps=caps,
    ) as ex:
        assert set(ex.members()) == {"m"}
        fb = ex.fallback()
        assert fb is not None
        t = time.perf_counter()
        np.testing.assert_array_equal(fb.run({"x": np.ones(3, np.float32)})["y"], np.full(3, 2.0))
        assert time.perf_counter() - t < 5


def test_the_shared_io_memfd_cannot_be_shrunk_or_grown(caps: HostCapabilities) -> None:
    """A worker that shrank the I/O memfd (ftruncate, or a reopen with O_TRUNC through
    /proc/self/fd) would make the supervisor's reads of its mapping fault: SIGBUS kills
    the supervisor, not the member. The memfd is sealed at its size before any worker."""
    import fcntl
    import os

    with ProcessMemberExecutor(
        {"a": WorkerSpec(conv_model())}, policy=SandboxPolicy(), caps=caps
    ) as ex:
        fd = ex._slots["a"].io_fd  # type: ignore[attr-defined]
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
        size = os.fstat(fd).st_size
        with pytest.raises(PermissionError):
            os.ftruncate(fd, size // 2)
        with pytest.raises(PermissionError):
            os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_TRUNC)
        assert os.fstat(fd).st_size == size

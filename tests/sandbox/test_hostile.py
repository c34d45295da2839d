"""A hostile member after lockdown: every attempt is denied or kills the worker, the guarded
runtime keeps answering through its fallback chain, and the event log records it.

Each attack runs twice where it matters: with the full policy (seccomp kills the worker
with SIGSYS) and with seccomp off (the deeper layers - Landlock, the network namespace,
rlimits - must deny it on their own). A control run with every layer off shows that the
payloads really do what they claim, so these tests can fail.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeguard.errors import BackendError
from edgeguard.guard.eventlog import EventLog
from edgeguard.policy.runtime import (
    ChainStep,
    MemberSpec,
    QuarantinePolicy,
    RuntimePolicy,
    VoterKind,
    VoterSpec,
)
from edgeguard.runtime.guarded import GuardedRuntime, ResultSource
from edgeguard.runtime.sandbox import OFF, REQUIRED, HostCapabilities, SandboxPolicy
from edgeguard.runtime.sandbox.executor import FALLBACK_NAME, ProcessMemberExecutor, WorkerSpec
from tests.sandbox.conftest import HOSTILE, ROOT, need, records

X = {"x": np.ones(4, np.float32)}
ATTACKS = ("open_passwd", "write_file", "socket", "exec", "ptrace", "fork")


@pytest.fixture()
def listener() -> Iterator[int]:
    """A TCP server on loopback in the test's own network namespace."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    yield srv.getsockname()[1]
    srv.close()


def spec(action: str, **opts: Any) -> WorkerSpec:
    return WorkerSpec(
        action.encode(), fmt="test", loader=HOSTILE, python_path=(str(ROOT),), options=opts
    )


def runtime_policy() -> RuntimePolicy:
    return RuntimePolicy(
        members=(MemberSpec("m"),),
        voter=VoterSpec(kind=VoterKind.MEDIAN, output="y"),
        deadline_ms=5000.0,
        member_budget_ms=3000.0,
        fallback_chain=(ChainStep.ENSEMBLE, ChainStep.FALLBACK_MODEL, ChainStep.SAFE_DEFAULT),
        safe_default={"y": np.zeros(4, np.float32)},
        quarantine=QuarantinePolicy(after_failures=1, backoff_ms=1.0, max_backoff_ms=2.0),
    )


def attack(
    action: str, policy: SandboxPolicy, caps: HostCapabilities, elog: EventLog, **opts: Any
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Run the hostile member twice under the guarded runtime; return results and records."""
    ex = ProcessMemberExecutor(
        {"m": spec(action, **opts), FALLBACK_NAME: spec("benign")},
        policy=policy,
        caps=caps,
        event_log=elog,
        restart_backoff_s=0.01,
    )
    results = []
    with GuardedRuntime(
        ex.members(),
        fallback=ex.fallback(),
        policy=runtime_policy(),
        executor=ex,
        event_log=elog,
        async_log=False,
    ) as rt:
        for _ in range(2):
            results.append(rt.infer(X))
            ex.wait_ready("m", 30)
            time.sleep(0.01)  # past the runtime's 1 ms quarantine backoff
    return results, records(elog)


def member_failed(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["data"] for r in recs if r["kind"] == "member_failed" and r["data"]["member"] == "m"]


def assert_fallback_answered(results: list[Any]) -> None:
    for res in results:
        assert res.source is ResultSource.FALLBACK_MODEL
        np.testing.assert_array_equal(res.outputs["y"], X["x"] * 2)


@pytest.mark.parametrize("action", [*ATTACKS, "write_stdout", "mmap_exec", "madvise_hwpoison"])
def test_seccomp_kills_the_hostile_worker(
    action: str, caps: HostCapabilities, elog: EventLog, tmp_path: Path, listener: int
) -> None:
    need(caps, "seccomp")
    target = tmp_path / "written"
    results, recs = attack(
        action, SandboxPolicy(seccomp=REQUIRED), caps, elog, path=str(target), port=listener
    )
    assert_fallback_answered(results)
    died = [r["data"] for r in recs if r["kind"] == "sandbox_worker_died"]
    assert len(died) == 2, died
    assert all(d["signal"] == "SIGSYS" and d["member"] == "m" for d in died)
    assert any("SIGSYS" in d["detail"] for d in member_failed(recs))
    assert any(r["kind"] == "sandbox_worker_restarted" for r in recs)
    assert not target.exists()


@pytest.mark.parametrize(
    ("action", "layers", "errno_text"),
    [
        ("open_passwd", ("landlock",), "PermissionError"),
        ("write_file", ("landlock",), "PermissionError"),
        ("exec", ("landlock",), "PermissionError"),
        ("ptrace", ("landlock",), "PermissionError"),
        ("socket", ("netns",), "unreachable"),
    ],
)
def test_deeper_layers_deny_without_seccomp(
    action: str,
    layers: tuple[str, ...],
    errno_text: str,
    caps: HostCapabilities,
    elog: EventLog,
    tmp_path: Path,
    listener: int,
) -> None:
    need(caps, *layers)
    target = tmp_path / "written"
    modes: dict[str, Any] = {"seccomp": OFF, "landlock": OFF, "netns": OFF}
    modes.update(dict.fromkeys(layers, REQUIRED))
    policy = SandboxPolicy(**modes)
    results, recs = attack(action, policy, caps, elog, path=str(target), port=listener)
    assert_fallback_answered(results)
    fails = [r["data"] for r in recs if r["kind"] == "sandbox_call_failed"]
    assert len(fails) == 2 and all(errno_text in f["error"] for f in fails), fails
    assert member_failed(recs)
    assert not any(r["kind"] == "sandbox_worker_died" for r in recs)  # denied, not killed
    assert not target.exists()


def test_rlimit_denies_fork_without_seccomp(caps: HostCapabilities, elog: EventLog) -> None:
    # binds even when the tests run as root: a worker gives up root and every capability
    policy = SandboxPolicy(seccomp=OFF, rlimits=REQUIRED)
    results, recs = attack("fork", policy, caps, elog)
    assert_fallback_answered(results)
    fails = [r["data"] for r in recs if r["kind"] == "sandbox_call_failed"]
    assert fails and all("BlockingIOError" in f["error"] for f in fails)


@pytest.mark.parametrize("action", ["open_passwd", "write_file", "socket"])
def test_control_without_sandbox_the_attack_succeeds(
    action: str, caps: HostCapabilities, elog: EventLog, tmp_path: Path, listener: int
) -> None:
    # the worker never runs as root, layers or not: give it a directory anyone may write
    shared = Path(tempfile.mkdtemp(prefix="edgeguard-control-"))
    shared.chmod(0o777)
    target = shared / "written"
    results, recs = attack(
        action, SandboxPolicy.all(OFF), caps, elog, path=str(target), port=listener
    )
    for res in results:  # the member answered: the payload ran unhindered
        assert res.source is ResultSource.SINGLE_MEMBER
    assert not member_failed(recs)
    assert target.exists() == (action == "write_file")
    shutil.rmtree(shared)


def test_chain_keeps_answering_when_the_fallback_is_hostile_too(
    caps: HostCapabilities, elog: EventLog
) -> None:
    need(caps, "seccomp")
    ex = ProcessMemberExecutor(
        {"m": spec("open_passwd"), FALLBACK_NAME: spec("exec")},
        policy=SandboxPolicy(seccomp=REQUIRED),
        caps=caps,
        event_log=elog,
    )
    with GuardedRuntime(
        ex.members(),
        fallback=ex.fallback(),
        policy=runtime_policy(),
        executor=ex,
        event_log=elog,
        async_log=False,
    ) as rt:
        res = rt.infer(X)
    assert res.source is ResultSource.SAFE_DEFAULT
    died = {r["data"]["member"] for r in records(elog) if r["kind"] == "sandbox_worker_died"}
    assert died == {"m", FALLBACK_NAME}


def test_retired_member_is_retired_by_the_runtime(caps: HostCapabilities, elog: EventLog) -> None:
    need(caps, "seccomp")
    ex = ProcessMemberExecutor(
        {"m": spec("socket"), FALLBACK_NAME: spec("benign")},
        policy=SandboxPolicy(seccomp=REQUIRED),
        caps=caps,
        event_log=elog,
        restart_backoff_s=0.01,
        max_restarts=0,
    )
    with GuardedRuntime(
        ex.members(),
        fallback=ex.fallback(),
        policy=runtime_policy(),
        executor=ex,
        event_log=elog,
        async_log=False,
    ) as rt:
        rt.infer(X)
        time.sleep(0.01)
        res = rt.infer(X)
        assert res.source is ResultSource.FALLBACK_MODEL
        with pytest.raises(BackendError, match="retired"):
            ex.submit("m", X)
    kinds = [r["kind"] for r in records(elog)]
    assert "sandbox_worker_retired" in kinds and "member_retired" in kinds

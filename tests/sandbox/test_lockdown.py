"""A worker gives up everything before it parses its model, as the kernel reports it; the
supervisor refuses a worker whose /proc files say otherwise.

Read from outside (``/proc/<pid>/status`` and ``/proc/<pid>/limits`` of a running worker)
and from inside at the moment the model loader runs (``tests/sandbox/loadprobe.py``):
no uid 0, no capability, ``no_new_privs``, not dumpable, no core dumps, no file access
and the load-time seccomp filter - all before a byte of the model is parsed. These tests
run as root here, which is the case that matters: a worker started by root. Also: the
worker's memory and the supervisor's sealed model memfd are locked in RAM, and memory
that cannot be locked is recorded, not fatal.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeguard import data
from edgeguard.errors import BackendError, PolicyError
from edgeguard.guard.eventlog import EventLog
from edgeguard.runtime.sandbox import OFF, REQUIRED, HostCapabilities, SandboxPolicy
from edgeguard.runtime.sandbox import _linux as linux_mod
from edgeguard.runtime.sandbox import executor as executor_mod
from edgeguard.runtime.sandbox._linux import proc_limits, proc_status
from edgeguard.runtime.sandbox.executor import ProcessMemberExecutor, WorkerSpec
from tests.sandbox.conftest import ROOT, need, records
from tests.sandbox.test_executor import conv_model, hostile

PROBE = "tests.sandbox.loadprobe:make"


def probe(**opts: Any) -> WorkerSpec:
    return WorkerSpec(b"m" * 100, fmt="test", loader=PROBE, python_path=(str(ROOT),), options=opts)


def no_privileges(status: dict[str, Any]) -> None:
    for field in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert int(status[field], 16) == 0, (field, status[field])
    assert "0" not in status["Uid"].split(), status["Uid"]
    if os.geteuid() == 0:  # started by root: switched to nobody, no groups
        assert "0" not in status["Gid"].split() and status["Groups"] == "", status
    assert status["NoNewPrivs"] == "1"


def test_a_running_worker_has_no_privileges_and_its_filter(caps: HostCapabilities) -> None:
    need(caps, "seccomp", "landlock")
    with ProcessMemberExecutor(
        {"a": WorkerSpec(conv_model())}, policy=SandboxPolicy(seccomp=REQUIRED), caps=caps
    ) as ex:
        pid = ex.status("a").pid
        assert pid is not None
        status = proc_status(pid)
        no_privileges(status)
        assert status["Seccomp"] == "2"
        assert int(status.get("Seccomp_filters", "2")) == 2  # load-time + run-time
        assert proc_limits(pid)["Max core file size"] == ("0", "0")
        # a non-dumpable process's /proc files belong to root, not to its own uid
        assert Path(f"/proc/{pid}/status").stat().st_uid == 0
        call = ex.submit("a", {"image": np.ones((1, 3, 32, 32), np.float32)})
        assert call.wait(30) and call.result()["logits"].shape == (1, 8)


def test_the_loader_runs_without_privileges_files_or_core_dumps(caps: HostCapabilities) -> None:
    need(caps, "landlock")
    policy = SandboxPolicy(seccomp=OFF, landlock=REQUIRED)  # so the probe may read /proc
    with ProcessMemberExecutor({"p": probe()}, policy=policy, caps=caps) as ex:
        call = ex.submit("p", {"x": np.zeros(1, np.float32)})
        assert call.wait(30)
        at_load = json.loads(call.result()["state"].tobytes())
    assert at_load["model_bytes"] == 100
    no_privileges(at_load)
    assert at_load["dumpable"] == 0 and at_load["core"] == [0, 0]
    assert at_load["files"] == "denied"  # Landlock before the model is parsed
    assert at_load["Threads"] == "1"  # so Landlock covers every thread created later


def test_the_load_time_filter_is_on_while_the_model_is_parsed(caps: HostCapabilities) -> None:
    need(caps, "seccomp")
    with pytest.raises(BackendError, match="SIGSYS"):
        ProcessMemberExecutor(
            {"p": probe(forbidden_syscall=True)}, policy=SandboxPolicy(seccomp=REQUIRED), caps=caps
        )


def test_a_loader_that_formats_local_time_is_not_killed(caps: HostCapabilities) -> None:
    """C libraries log with local time while a model loads (ONNX Runtime does for a model
    with unused initializers); with the time zone unread, glibc stats /etc/localtime at
    each call and the load-time filter killed the worker for it."""
    need(caps, "seccomp")
    policy = SandboxPolicy(seccomp=REQUIRED)
    with ProcessMemberExecutor({"p": probe(localtime=True)}, policy=policy, caps=caps) as ex:
        call = ex.submit("p", {"x": np.zeros(1, np.float32)})
        assert call.wait(30)
        hour = json.loads(call.result()["state"].tobytes())["hour"]
    assert hour == time.gmtime().tm_hour or hour == (time.gmtime().tm_hour + 1) % 24


LIAR = str(ROOT / "tests" / "sandbox" / "liar.py")


def fake_worker(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setattr(
        executor_mod, "_worker_command", lambda fd: [sys.executable, "-I", LIAR, mode, str(fd)]
    )


def test_a_worker_that_claims_layers_it_never_applied_is_refused(
    caps: HostCapabilities, elog: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    need(caps, "seccomp")
    fake_worker(monkeypatch, "nothing")
    with pytest.raises(PolicyError, match="not locked down") as err:
        ProcessMemberExecutor(
            {"a": WorkerSpec(b"m")}, policy=SandboxPolicy(), caps=caps, event_log=elog
        )
    text = str(err.value)
    assert "NoNewPrivs 0" in text and "Seccomp 0" in text
    if resource.getrlimit(resource.RLIMIT_CORE) != (0, 0):  # else the fake inherits 0
        assert "core file size" in text
    if os.geteuid() == 0:
        assert "CapEff 000001" in text and "Uid 0" in text
    (refused,) = [r["data"] for r in records(elog) if r["kind"] == "sandbox_worker_refused"]
    assert refused["member"] == "a" and refused["problems"]
    with pytest.raises(ProcessLookupError):
        os.kill(refused["pid"], 0)  # killed and reaped


def test_one_lie_is_enough(
    caps: HostCapabilities, elog: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker with every layer but the seccomp filter it claims: refused, best-effort or not."""
    need(caps, "seccomp")
    fake_worker(monkeypatch, "all-but-seccomp")
    with pytest.raises(PolicyError) as err:
        ProcessMemberExecutor({"a": WorkerSpec(b"m")}, policy=SandboxPolicy(), caps=caps)
    assert str(err.value).split("requires: ")[1] == "Seccomp 0, the policy asks for a filter"


def test_a_restarted_worker_is_checked_too(
    caps: HostCapabilities, elog: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real worker starts; its restarts are fakes: refused each time, then retired."""
    need(caps, "seccomp")
    with ProcessMemberExecutor(
        {"h": hostile("crash")},
        policy=SandboxPolicy(),
        caps=caps,
        event_log=elog,
        restart_backoff_s=0.01,
        max_restarts=2,
    ) as ex:
        started = [r["data"] for r in records(elog) if r["kind"] == "sandbox_worker_started"]
        assert started[0]["verified"]["seccomp"].startswith("mode 2")
        fake_worker(monkeypatch, "all-but-seccomp")
        call = ex.submit("h", {"x": np.ones(2, np.float32)})
        assert call.wait(30)
        with pytest.raises(BackendError):
            call.result()
        assert not ex.wait_ready("h", 10)
        assert ex.status("h").state == "retired"
    kinds = [r["kind"] for r in records(elog)]
    assert kinds.count("sandbox_worker_refused") == 2 and "sandbox_worker_restarted" not in kinds


def _vmlck_kb(pid: int | str = "self") -> int:
    return int(proc_status(pid)["VmLck"].split()[0])


def test_the_worker_and_the_sealed_model_memfd_are_locked_in_ram(
    caps: HostCapabilities, elog: EventLog
) -> None:
    model = data.model_bytes("digits_mlp")
    before = _vmlck_kb()
    with ProcessMemberExecutor(
        {"a": WorkerSpec(model)}, policy=SandboxPolicy(), caps=caps, event_log=elog
    ) as ex:
        pid = ex.status("a").pid
        assert pid is not None
        # the supervisor's mapping of the memfd (root here: CAP_IPC_LOCK)
        assert _vmlck_kb() - before >= len(model) // 1024
        # the worker: its mappings, on fault (at least the model and what it touched)
        assert _vmlck_kb(pid) >= 10 * 1024
        (started,) = [r["data"] for r in records(elog) if r["kind"] == "sandbox_worker_started"]
        assert started["memlock"]["model_memfd"] == "active"
        # all of it where root may raise RLIMIT_MEMLOCK (CAP_SYS_RESOURCE), else what was
        # mapped before the privilege drop; the log says which
        assert started["memlock"]["worker"].startswith(("active", "partial"))
        assert started["verified"]["locked_memory"].endswith(" kB")
    assert _vmlck_kb() <= before + 4  # unlocked and unmapped with the executor


def test_memory_that_cannot_be_locked_is_recorded_not_fatal(
    caps: HostCapabilities, elog: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A memory cap below what the worker maps: its mlockall fails, it serves, the log says so."""
    real = linux_mod.map_locked

    def no_memlock(fd: int, size: int) -> tuple[int, str | None]:
        addr, _ = real(fd, size)
        return addr, "mlock: Cannot allocate memory (RLIMIT_MEMLOCK 8 MiB, as a user would have)"

    monkeypatch.setattr(linux_mod, "map_locked", no_memlock)
    # where root may raise RLIMIT_MEMLOCK, it raises it to the memory cap: 16 MiB is less
    # than any worker maps, so its second mlockall fails everywhere
    policy = SandboxPolicy(cgroup=OFF, memory_max_bytes=16 * 2**20)
    with ProcessMemberExecutor(
        {"a": WorkerSpec(conv_model())}, policy=policy, caps=caps, event_log=elog
    ) as ex:
        call = ex.submit("a", {"image": np.ones((1, 3, 32, 32), np.float32)})
        assert call.wait(30) and call.result()["logits"].shape == (1, 8)
    unlocked = {
        r["data"]["where"]: r["data"]["detail"]
        for r in records(elog)
        if r["kind"] == "sandbox_memory_unlocked"
    }
    # root keeps what it locked before the privilege drop (CAP_IPC_LOCK); a user gets none
    assert unlocked["worker"].startswith("partial" if os.geteuid() == 0 else "failed")
    assert "Cannot allocate memory (RLIMIT_MEMLOCK" in unlocked["worker"]
    assert "RLIMIT_MEMLOCK" in unlocked["supervisor (sealed model memfd)"]


def test_an_accelerator_member_gives_up_privileges_first_and_files_after_its_load(
    caps: HostCapabilities,
) -> None:
    """GPU/DLA members open device nodes while loading: Landlock and seccomp come after it."""
    need(caps, "seccomp", "landlock")
    with ProcessMemberExecutor({"g": probe(gpu=0)}, policy=SandboxPolicy(), caps=caps) as ex:
        call = ex.submit("g", {"x": np.zeros(1, np.float32)})
        assert call.wait(30)
        at_load = json.loads(call.result()["state"].tobytes())
        status = proc_status(ex.status("g").pid)
        layers = ex.status("g").layers
    no_privileges(at_load)  # the same as any worker
    assert at_load["dumpable"] == 0 and at_load["core"] == [0, 0]
    assert at_load["files"] == "readable" and at_load["Seccomp"] == "0"  # not yet
    assert status["Seccomp"] == "2" and status.get("Seccomp_filters", "1") == "1"
    assert "after the model load" in layers["landlock"]
    assert "after the model load" in layers["seccomp"]

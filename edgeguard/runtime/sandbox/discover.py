"""Seccomp discovery: run a member with unlisted syscalls reported, not killed.

Layer: :mod:`edgeguard.runtime.sandbox` (supervisor side). For Jetson owners whose GPU
members die of SIGSYS, and for whoever extends the allowlist: :func:`run_discovery`
starts one worker exactly as the executor does (same user, same layers, same lockdown
point) except that its seccomp filter's default action is ``SECCOMP_RET_USER_NOTIF``
instead of "kill the process". The worker hands the filter's listener to the supervisor
over its control socket; a thread here receives each unlisted syscall, records its
number, name, phase and arguments, and lets it continue
(``SECCOMP_USER_NOTIF_FLAG_CONTINUE``). The worker serves a few requests and exits; the
:class:`DiscoveryReport` lists what it called outside the allowlist.

Needs Linux 5.5 (``FLAG_CONTINUE``) and 5.7 (a listener together with ``TSYNC``); L4T
r35 (5.10) and r36 (5.15) have both, L4T r32 (4.9) has neither. **Discovery mode is not
a sandbox**: every syscall the filter does not list goes through. Run it on a trusted
model, on a device you own. The CPU worker's notification filter is the load-time one
(one listener per process, so there is no second, run-time filter): a call that only
the load-time extras allow (``LOAD_EXTRAS``) is not reported while serving.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import select
import socket
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeguard._optional import require
from edgeguard.errors import BackendError, PolicyError
from edgeguard.policy.isolation import REQUIRED, SandboxPolicy
from edgeguard.runtime.sandbox import executor as _executor
from edgeguard.runtime.sandbox import seccomp as _seccomp
from edgeguard.runtime.sandbox.executor import ProcessMemberExecutor, WorkerSpec
from edgeguard.runtime.sandbox.probe import HostCapabilities, check_policy, probe_host

__all__ = ["DiscoveryReport", "SeenSyscall", "run_discovery"]

_NOTIF = struct.Struct("=QIIiIQ6Q")  # struct seccomp_notif (with seccomp_data): 80 bytes
_RESP = struct.Struct("=QqiI")  # struct seccomp_notif_resp: 24 bytes
_IOCTL_RECV = 0xC0000000 | (_NOTIF.size << 16) | (ord("!") << 8) | 0  # _IOWR('!', 0, ...)
_IOCTL_SEND = 0xC0000000 | (_RESP.size << 16) | (ord("!") << 8) | 1  # _IOWR('!', 1, ...)
_FLAG_CONTINUE = 1
_MAX_EXAMPLES = 3


@dataclass(frozen=True)
class SeenSyscall:
    """One syscall the worker made outside its filter's rules.

    Attributes:
        name: Syscall name on this architecture (``nr_<n>`` when libseccomp has none).
        number: Syscall number.
        count: How often it was made.
        phases: ``load`` (before the worker reported ready: model load and warm-up),
            ``serve`` (requests) and/or ``exit``.
        listed: ``no``, or why a listed call was reported anyway (its condition did
            not hold: ``write`` to another descriptor, ``ioctl`` on an unlisted one).
        examples: Up to three distinct argument tuples (six 64-bit values each).
    """

    name: str
    number: int
    count: int
    phases: tuple[str, ...]
    listed: str
    examples: tuple[tuple[int, ...], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-native form (arguments as hex strings)."""
        return {
            "name": self.name,
            "number": self.number,
            "count": self.count,
            "phases": list(self.phases),
            "listed": self.listed,
            "examples": [[hex(a) for a in ex] for ex in self.examples],
        }


@dataclass(frozen=True)
class DiscoveryReport:
    """What one discovery run saw.

    Attributes:
        member: The member's name.
        machine: ``platform.machine()`` (``aarch64`` on a Jetson).
        kernel: ``platform.release()``.
        profile: ``cpu`` or ``gpu`` (the filter's rule set).
        lockdown: When the filter went on (``before the model load`` / ``after ...``).
        unlisted: The syscalls seen outside the rules, by number.
        requests: Requests served successfully.
        errors: Requests that failed (their error text) or other problems.
        worker_alive: The worker was still serving after the last request.
        layers: The layer states the worker reported.
    """

    member: str
    machine: str
    kernel: str
    profile: str
    lockdown: str
    unlisted: tuple[SeenSyscall, ...]
    requests: int
    errors: tuple[str, ...] = ()
    worker_alive: bool = True
    layers: Mapping[str, str] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the unlisted syscalls."""
        return tuple(s.name for s in self.unlisted)

    def text(self) -> str:
        """A few lines for a terminal: one per unlisted syscall, then the verdict."""
        lines = [
            f"seccomp discovery: member {self.member}, {self.profile} profile, "
            f"{self.machine}, Linux {self.kernel}, lockdown {self.lockdown}"
        ]
        for s in self.unlisted:
            where = ",".join(s.phases)
            lines.append(f"  {s.name} ({s.number}) x{s.count} [{where}]: {s.listed}")
        if not self.unlisted:
            lines.append("  nothing outside the allowlist")
        lines.extend(f"  error: {e}" for e in self.errors)
        state = "kept serving" if self.worker_alive else "died"
        lines.append(f"  {self.requests} request(s) served; the worker {state}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-native form: what a Jetson owner sends back."""
        return {
            "member": self.member,
            "machine": self.machine,
            "kernel": self.kernel,
            "profile": self.profile,
            "lockdown": self.lockdown,
            "unlisted": [s.to_dict() for s in self.unlisted],
            "requests": self.requests,
            "errors": list(self.errors),
            "worker_alive": self.worker_alive,
            "layers": dict(self.layers),
        }


def _listed(name: str) -> str:
    for table, what in (
        (_seccomp.CONDITIONAL, "listed with a condition the arguments did not meet"),
        (_seccomp.GPU_CONDITIONAL, "GPU profile, condition not met"),
        (_seccomp.LOAD_EXTRAS, "load-time extra"),
        (_seccomp.ALLOWLIST, "listed"),
        (_seccomp.GPU_ALLOWLIST, "GPU profile only"),
    ):
        if name in table:
            return f"{what}: {table[name]}"
    return "no"


class _Recorder:
    """The supervisor's end of the listener(s): record, then continue, each call."""

    def __init__(self) -> None:
        self.phase = "load"
        self.lock = threading.Lock()
        self.seen: dict[int, dict[str, Any]] = {}
        self.threads: list[threading.Thread] = []
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._sc = require("pyseccomp", extra="sandbox", purpose="seccomp discovery")

    def _name(self, nr: int) -> str:
        try:
            raw = self._sc.resolve_syscall(self._sc.system_arch(), nr)
        except Exception:
            return f"nr_{nr}"
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def start(self, fd: int) -> None:
        t = threading.Thread(target=self._loop, args=(fd,), name="edgeguard-discovery", daemon=True)
        self.threads.append(t)
        t.start()

    def _loop(self, fd: int) -> None:
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.2)
                if not ready:
                    continue
                buf = bytearray(_NOTIF.size)
                try:
                    fcntl.ioctl(fd, _IOCTL_RECV, buf, True)
                except OSError:  # the worker is gone (or the call was interrupted)
                    if not _alive(fd):
                        return
                    continue
                nid, _pid, _flags, nr, _arch, _ip, *args = _NOTIF.unpack(buf)
                self._record(nr, tuple(args))
                with contextlib.suppress(OSError):  # ENOENT: the caller died meanwhile
                    fcntl.ioctl(fd, _IOCTL_SEND, bytearray(_RESP.pack(nid, 0, 0, _FLAG_CONTINUE)))
        finally:
            os.close(fd)

    def _record(self, nr: int, args: tuple[int, ...]) -> None:
        with self.lock:
            entry = self.seen.setdefault(nr, {"count": 0, "phases": [], "examples": []})
            entry["count"] += 1
            if self.phase not in entry["phases"]:
                entry["phases"].append(self.phase)
            if args not in entry["examples"] and len(entry["examples"]) < _MAX_EXAMPLES:
                entry["examples"].append(args)

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=5.0)

    def report(self) -> tuple[SeenSyscall, ...]:
        with self.lock:
            out = []
            for nr, e in sorted(self.seen.items()):
                name = self._name(nr)
                out.append(
                    SeenSyscall(
                        name=name,
                        number=nr,
                        count=e["count"],
                        phases=tuple(e["phases"]),
                        listed=_listed(name),
                        examples=tuple(e["examples"]),
                    )
                )
            return tuple(out)


def _alive(fd: int) -> bool:
    """Whether a listener still has a target (POLLHUP once every filter user is gone)."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return not any(ev & (select.POLLHUP | select.POLLERR) for _, ev in p.poll(0))


class _DiscoveryExecutor(ProcessMemberExecutor):
    """The executor, with the workers' filters in notification mode."""

    _init_extra: Mapping[str, Any] = {"seccomp_action": "notify"}

    def __init__(self, recorder: _Recorder, *args: Any, **kwargs: Any) -> None:
        self.recorder = recorder  # before the workers start
        super().__init__(*args, **kwargs)

    def _await_ready(self, s: Any) -> None:
        assert s.sock is not None and s.proc is not None
        ready, _, _ = select.select([s.sock], [], [], self._start_timeout)
        data, fds = b"", list[int]()
        if ready:
            with contextlib.suppress(OSError):
                data, fds, _flags, _addr = socket.recv_fds(s.sock, 1 << 16, 1)
        if data == b'{"op":"listener"}' and len(fds) == 1:
            self.recorder.start(fds[0])
            super()._await_ready(s)
            return
        for fd in fds:
            os.close(fd)
        s.proc.kill()
        s.proc.wait()
        s.sock.close()
        s.sock = None
        why = data[:500].decode(errors="replace") if data else "no listener from the worker"
        raise BackendError(f"discovery worker {s.name!r} did not hand over its listener: {why}")


def run_discovery(
    spec: WorkerSpec,
    *,
    name: str = "member",
    feeds: Mapping[str, np.ndarray] | None = None,
    requests: int = 3,
    policy: SandboxPolicy | None = None,
    caps: HostCapabilities | None = None,
    start_timeout_s: float = 120.0,
    call_timeout_s: float = 60.0,
    worker_stderr: bool = False,
    **executor_options: Any,
) -> DiscoveryReport:
    """Run ``spec`` in a worker whose unlisted syscalls are reported, not killed.

    Args:
        spec: The member, as the executor would run it (a GPU member gets the GPU
            profile, with its device descriptors).
        name: The member's name in the report.
        feeds: Inputs for the requests; None sends all-zero inputs of the shapes the
            worker reports (every dynamic axis 1).
        requests: Requests to serve after the warm-up.
        policy: The layers (default: every layer best-effort, seccomp required).
        caps: Host capabilities (probed when None).
        start_timeout_s: Time the worker may take to load, warm up and lock down.
        call_timeout_s: Time per request.
        worker_stderr: Let the worker write to our stderr.
        **executor_options: Passed to :class:`ProcessMemberExecutor` (``worker_user``,
            ``worker_groups``, ``device_root``, ``io_bytes``).

    Returns:
        The report; ``worker_alive`` False means the worker died anyway (a signal
        other than SIGSYS, or a failure the filter does not cause).

    Raises:
        PolicyError: seccomp is unavailable on this host (discovery needs it).
        BackendError: The worker could not start, or did not hand over its listener.
        MissingDependencyError: pyseccomp is not installed.
    """
    policy = policy if policy is not None else SandboxPolicy(seccomp=REQUIRED)
    caps = caps if caps is not None else probe_host()
    if check_policy(policy, caps).get("seccomp") != "apply":
        raise PolicyError(
            "seccomp discovery needs the seccomp layer, and this policy or host has none: "
            + caps.detail("seccomp"),
            hint="run it with seccomp required (the default policy of run_discovery)",
        )
    recorder = _Recorder()
    errors: list[str] = []
    served = 0
    try:
        ex = _DiscoveryExecutor(
            recorder,
            {name: spec},
            policy=policy,
            caps=caps,
            start_timeout_s=start_timeout_s,
            call_timeout_s=call_timeout_s,
            worker_stderr=worker_stderr,
            max_restarts=0,
            **executor_options,
        )
    except BaseException:
        recorder.stop()
        raise
    try:
        recorder.phase = "serve"
        status = ex.status(name)
        layers = dict(status.layers)
        if feeds is None:
            specs = ex.reported_inputs(name) or ()
            feeds = {t.name: t.zeros() for t in specs}
        for _ in range(requests):
            call = ex.submit(name, feeds)
            if not call.wait(call_timeout_s):
                errors.append("request timed out")
                break
            try:
                call.result()
                served += 1
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
        status = ex.status(name)
        alive = status.state == "ready" and status.deaths == 0
        if not alive and status.last_exit:
            errors.append(f"worker: {status.last_exit}")
        recorder.phase = "exit"
    finally:
        ex.close()
        recorder.stop()
    return DiscoveryReport(
        member=name,
        machine=platform.machine(),
        kernel=platform.release(),
        profile="gpu" if _executor._gpu_nodes(spec, ex._device_root) is not None else "cpu",
        lockdown=(
            "after the model load"
            if _executor._lockdown_point(spec) == "after_load"
            else "before the model load"
        ),
        unlisted=recorder.report(),
        requests=served,
        errors=tuple(errors),
        worker_alive=alive,
        layers=layers,
    )

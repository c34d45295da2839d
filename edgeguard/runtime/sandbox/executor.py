"""Run ensemble members in sandboxed child processes: :class:`ProcessMemberExecutor`.

Layer: :mod:`edgeguard.runtime` (parent side; numpy and the stdlib only - the inference
library lives in the workers). Implements the
:class:`~edgeguard.runtime.guarded.MemberExecutor` protocol, so::

    ex = ProcessMemberExecutor(specs, policy=SandboxPolicy(), event_log=log)
    rt = GuardedRuntime(ex.members(), fallback=ex.fallback(), policy=pol, executor=ex)

(the device session, :mod:`edgeguard.runtime.session`, does this from a bundle's signed
slots) runs every member (and the fallback model) in its own locked-down worker
(:mod:`edgeguard.runtime.sandbox.worker`).

Per worker the supervisor holds three things created before the worker starts: a
**sealed memfd** with the decrypted model (created once and handed to every restart;
never a file on disk), a shared I/O memfd (inputs in the first half, outputs in the
second) and a SOCK_SEQPACKET control socket. A call copies the feeds into shared
memory and sends a ~100-byte JSON request; the reply names the outputs' places in
shared memory and is read within bounds and validated strictly
(:mod:`~edgeguard.runtime.sandbox.replies`; the worker is untrusted) before the outputs
are copied out. A malformed reply is the worker's fault, never an exception here.

Faults: a worker that dies (SIGSYS from seccomp, a crash, the OOM killer) fails its
call, so the guarded runtime's fallback chain answers; the death is recorded in the
event log and a supervisor thread restarts the worker after an exponential backoff,
retiring it after ``max_restarts`` consecutive deaths. :meth:`abandon` really kills a
hung worker (SIGKILL), which threads could never do. One call at a time per worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeguard.errors import (
    BackendError,
    EdgeguardError,
    InputRefusedError,
    PolicyError,
    UsageError,
)
from edgeguard.policy.io import TensorSpec, normalize_dim
from edgeguard.policy.isolation import SandboxPolicy
from edgeguard.policy.runtime import FALLBACK_NAME
from edgeguard.runtime.sandbox import _cgroup, _linux, gpu
from edgeguard.runtime.sandbox._verify import check_worker
from edgeguard.runtime.sandbox.area import DEFAULT_IO_BYTES, MIN_IO_BYTES
from edgeguard.runtime.sandbox.identity import worker_identity
from edgeguard.runtime.sandbox.probe import HostCapabilities, check_policy, probe_host
from edgeguard.runtime.sandbox.replies import (
    DEFAULT_LIMITS,
    BadReplyError,
    read_message,
    read_outputs,
    read_run_reply,
    read_stats,
)
from edgeguard.runtime.sandbox.worker import (
    MAX_PHASE_CHARS,
    MAX_PROGRESS_INT,
    pack_arrays,
)

__all__ = [
    "DEFAULT_IO_BYTES",
    "FALLBACK_NAME",
    "EventSink",
    "ProcessMemberExecutor",
    "WorkerSpec",
    "WorkerStatus",
    "seal_model",
]

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
#: Start timeout of a worker that builds a TensorRT plan (``fmt="trt-build"``): a build on
#: a Jetson takes minutes, and some of its phases report no progress for long. Like every
#: start timeout it counts from the worker's last message (each progress message restarts
#: it), and it is never shorter than the executor's ``start_timeout_s``.
BUILD_START_TIMEOUT_S = 30 * 60.0
_PROGRESS_KEYS = frozenset({"op", "phase", "done", "total"})
_ENV_PASS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "LANG", "LC_ALL")
# The worker's whole environment. Single-threaded BLAS/OpenMP so the process stays
# single-threaded until the model loads; ORT_DISABLE_TELEMETRY stops ONNX Runtime's 1DS
# telemetry (its wheel otherwise creates an SQLite store under ~/.cache at import and
# keeps a background thread that writes to it at exit). TZ in POSIX form: glibc reads
# the time zone once, before lockdown, and never again (with TZ unset it stats
# /etc/localtime on every localtime(), e.g. each log line ONNX Runtime writes while it
# loads a model, and the seccomp filter kills the worker for that stat).
_WORKER_ENV = {
    "PATH": "/usr/bin:/bin",
    "TZ": "UTC0",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ORT_DISABLE_TELEMETRY": "1",
}


class EventSink(Protocol):
    """Where the executor records worker events (an :class:`~edgeguard.guard.eventlog.EventLog`)."""

    def append(self, kind: str, data: Mapping[str, Any]) -> object:
        """Record one event."""
        ...


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker runs.

    Attributes:
        model: The (decrypted) model bytes; copied into a sealed memfd at construction,
            so the caller may wipe its buffer afterwards.
        fmt: Member format for :func:`edgeguard.backends.load_backend` (``"onnx"``).
        options: Loader options; the default fixes ONNX Runtime to one intra-op thread
            so that no thread needs to be created after lockdown.
        loader: ``"module:function"`` called in the worker *before* lockdown as
            ``function(model: memoryview, fmt, options) -> Runnable``; None uses
            :func:`~edgeguard.backends.load_backend`. For custom loaders and tests.
        python_path: Directories prepended to the worker's ``sys.path`` (for ``loader``).
        cpus: Cores the worker process is pinned to, set while it is still one
            thread so every thread it creates inherits them (a member's
            ``cpu:LIST`` placement); None leaves the affinity as inherited.
        outputs: The member's signed outputs (its I/O contract): every reply must
            describe exactly these, with their element types, ranks and fixed
            dimensions. None (a bundle signed before I/O contracts) still bounds a
            reply's outputs by the shared region, never overlapping.
        artifact_max: Compile: the supervisor hands the worker an empty memfd that ONNX
            Runtime writes the optimised model into (at most this many bytes), for the
            engine cache (:meth:`ProcessMemberExecutor.take_artifact`). Only a worker
            under Landlock compiles (``docs/engine-cache.md``). None: no compiling.
        calibration: A ``trt-build`` worker's INT8 calibration frames (the recipe's
            ``npz`` member's plaintext): copied into a second sealed memfd at
            construction, like the model, and read in the worker by the strict array
            reader. None: no calibration frames.
        timing_cache: A ``trt-build`` worker's TensorRT timing cache to start from
            (copied into a sealed memfd, like the model). None: none.
        timing_cache_out: A ``trt-build`` worker that compiles (``artifact_max``) gets
            an empty memfd for the timing cache its build returns
            (:meth:`ProcessMemberExecutor.take_timing_cache`).
        device_check: The device sanity check the worker makes next to its TensorRT
            model (:class:`~edgeguard.runtime.devicestats.DeviceCheckSpec`); its answers
            then carry the statistics of that input, read strictly
            (:func:`~edgeguard.runtime.sandbox.replies.read_stats`). None: no check.
    """

    model: bytes | bytearray | memoryview = field(repr=False)
    fmt: str = "onnx"
    options: Mapping[str, Any] = field(
        default_factory=lambda: {"intra_op_threads": 1, "inter_op_threads": 1}
    )
    loader: str | None = None
    python_path: tuple[str, ...] = ()
    cpus: tuple[int, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None
    artifact_max: int | None = None
    device_check: Any = None
    calibration: bytes | bytearray | memoryview | None = field(default=None, repr=False)
    timing_cache: bytes | bytearray | memoryview | None = field(default=None, repr=False)
    timing_cache_out: bool = False


@dataclass(frozen=True)
class WorkerStatus:
    """Snapshot of one worker slot.

    Attributes:
        name: Member name.
        state: ``starting``, ``ready``, ``busy``, ``dead`` (restart pending),
            ``retired`` or ``closed``.
        pid: Process id of the current worker (None when there is none).
        layers: Layer states the worker reported after lockdown.
        restarts: Successful restarts so far.
        deaths: Worker deaths (and kills) so far.
        last_exit: Description of the last death, or None.
        last_restart_ms: Time from the last death to serving again, or None.
    """

    name: str
    state: str
    pid: int | None
    layers: Mapping[str, str]
    restarts: int
    deaths: int
    last_exit: str | None
    last_restart_ms: float | None


def seal_model(model: bytes | bytearray | memoryview, *, name: str = "edgeguard-model") -> int:
    """Copy ``model`` into a new memfd and seal it against any change; returns the fd.

    The fd is close-on-exec; pass it to a child explicitly (``pass_fds``).

    Raises:
        UsageError: ``model`` is empty or not bytes-like.
        BackendError: The kernel lacks memfd sealing.
    """
    if not isinstance(model, (bytes, bytearray, memoryview)) or len(model) == 0:
        raise UsageError("the model must be non-empty bytes, bytearray or memoryview")
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except (OSError, AttributeError) as exc:
        raise BackendError(f"memfd_create is unavailable: {exc}") from exc
    try:
        view = memoryview(model).cast("B")
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except OSError as exc:
        os.close(fd)
        raise BackendError(f"cannot seal the model memfd: {exc.strerror}") from exc
    return fd


def _lockdown_point(spec: WorkerSpec) -> str:
    """When a worker applies Landlock and seccomp: before parsing its model, if it can.

    An accelerator member (a TensorRT engine, or ONNX Runtime's TensorRT provider) opens
    device nodes and loads provider libraries while it loads the model, so its file and
    syscall layers wait until after the warm-up (``docs/isolation.md``).
    """
    opts = spec.options
    if (
        spec.fmt in ("trt-engine", "trt-plan", "trt-build")
        or opts.get("gpu") is not None
        or opts.get("dla_core") is not None
    ):
        return "after_load"
    return "before_load"


def _gpu_nodes(spec: WorkerSpec, root: Path) -> tuple[str, ...] | None:
    """A GPU member's device nodes below ``root`` (None for a CPU member).

    The GPU profile (``docs/isolation.md``, "GPU workers") goes with the accelerator
    lockdown point. Every family's globs are looked up: only nodes that exist count.
    """
    if _lockdown_point(spec) != "after_load":
        return None
    return gpu.select_device_nodes(root=root)


def _worker_command(ctl_fd: int) -> list[str]:
    """The worker's command line (tests put a fake worker here to check the supervisor)."""
    return [sys.executable, "-I", "-m", "edgeguard.runtime.sandbox.worker", str(ctl_fd)]


def _describe_exit(code: int | None) -> tuple[str, dict[str, Any]]:
    if code is None:
        return "still running", {}
    if code < 0:
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        cause = {
            "SIGSYS": "seccomp killed it: a forbidden system call",
            "SIGKILL": "killed (abandoned, out of memory, or externally)",
            "SIGXFSZ": "file size limit exceeded",
            "SIGSEGV": "crashed (segmentation fault)",
            "SIGABRT": "aborted",
        }.get(sig, "killed by a signal")
        return f"{sig}: {cause}", {"signal": sig, "exit_code": None, "cause": cause}
    cause = {
        0: "exited",
        4: "a required sandbox layer could not be applied",
        5: "the model could not be loaded",
    }.get(code, "exited with an error")
    return f"exit {code}: {cause}", {"signal": None, "exit_code": code, "cause": cause}


def _reported_inputs(raw: Any) -> tuple[TensorSpec, ...] | None:
    """The worker's list of input specs, or None when it is not one (the worker is untrusted)."""
    if not isinstance(raw, list) or not 0 < len(raw) <= 256:
        return None
    try:
        specs = []
        for i, d in enumerate(raw):
            if isinstance(d, dict) and isinstance(d.get("shape"), list):
                d = {**d, "shape": [normalize_dim(x) for x in d["shape"]]}
            specs.append(TensorSpec.from_dict(d, f"worker input {i}"))
        return tuple(specs)
    except EdgeguardError:
        return None


def _read_progress(msg: Mapping[str, Any]) -> tuple[str, int, int] | None:
    """``(phase, done, total)`` of a worker's progress message, or None when malformed."""
    if set(msg) != _PROGRESS_KEYS:
        return None
    phase, done, total = msg["phase"], msg["done"], msg["total"]
    if not isinstance(phase, str) or not 0 < len(phase) <= MAX_PHASE_CHARS:
        return None
    if not phase.isprintable() or not phase.isascii():
        return None
    for v in (done, total):
        if isinstance(v, bool) or not isinstance(v, int):
            return None
    if not 0 <= done <= total <= MAX_PROGRESS_INT:
        return None
    return phase, done, total


class _Failed:
    """A call that failed before it reached a worker."""

    def __init__(self, exc: EdgeguardError) -> None:
        self._exc = exc

    def wait(self, timeout_s: float) -> bool:
        return True

    def result(self) -> dict[str, np.ndarray]:
        raise self._exc

    @property
    def run_ns(self) -> int | None:
        return 0


class _Slot:
    def __init__(self, name: str, spec: WorkerSpec, io_bytes: int) -> None:
        self.name = name
        self.spec = spec
        self.model_size = len(memoryview(spec.model).cast("B"))
        self.model_fd = seal_model(spec.model, name=f"edgeguard-model-{name}")
        # The memfd outlives every worker (restarts): keep its pages out of swap here.
        try:
            self.model_map, self.model_lock = _linux.map_locked(self.model_fd, self.model_size)
        except OSError as exc:
            os.close(self.model_fd)
            raise BackendError(f"cannot map the sealed model memfd: {exc.strerror}") from exc
        self.calibration_fd: int | None = None
        self.calibration_size = 0
        if spec.calibration is not None:
            self.calibration_size = len(memoryview(spec.calibration).cast("B"))
            try:
                self.calibration_fd = seal_model(
                    spec.calibration, name=f"edgeguard-calibration-{name}"
                )
            except BaseException:
                _linux.unmap(self.model_map, self.model_size)
                os.close(self.model_fd)
                raise
        self.timing_fd: int | None = None  # the timing cache to start from (sealed)
        self.timing_size = 0
        self.timing_out_fd: int | None = None  # the one the build returns
        try:
            if spec.timing_cache is not None and len(memoryview(spec.timing_cache)):
                self.timing_size = len(memoryview(spec.timing_cache).cast("B"))
                self.timing_fd = seal_model(spec.timing_cache, name=f"edgeguard-timing-{name}")
            if spec.timing_cache_out and spec.artifact_max is not None:
                self.timing_out_fd = os.memfd_create(
                    f"edgeguard-timing-out-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
                )
        except BaseException:
            _linux.unmap(self.model_map, self.model_size)
            for fd in (self.model_fd, self.calibration_fd, self.timing_fd):
                if fd is not None:
                    os.close(fd)
            raise
        self.io_bytes = io_bytes
        self.io_fd = os.memfd_create(f"edgeguard-io-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.io_fd, 2 * io_bytes)  # sparse: pages appear when touched
        # its size is fixed for good: a worker that could shrink it (ftruncate, or a reopen
        # with O_TRUNC through /proc/self/fd) would make the supervisor's reads of its
        # mapping fault with SIGBUS and kill the supervisor, not the member
        fcntl.fcntl(
            self.io_fd,
            fcntl.F_ADD_SEALS,
            fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL,
        )
        self.io = mmap.mmap(self.io_fd, 2 * io_bytes)
        view = memoryview(self.io)
        self.inp = view[:io_bytes]
        self.out = view[io_bytes:]
        self.state = "starting"
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.gen = 0
        self.layers: dict[str, str] = {}
        self.inputs: tuple[TensorSpec, ...] | None = None  # as the worker reported them
        self.busy: _ProcCall | None = None
        self.restarts = 0
        self.deaths = 0
        self.consecutive = 0
        self.next_start = 0.0
        self.died_at: float | None = None
        self.last_exit: str | None = None
        self.last_restart_ms: float | None = None
        self.leaf: Path | None = None
        self.verified: dict[str, str] = {}  # what the supervisor read in /proc
        self.memlock = "not reported"  # the worker's mlockall, as it reported it
        # the engine cache: a memfd the first worker writes its compiled model into
        self.artifact_fd: int | None = None
        self.artifact_note: str | None = None  # the worker's word on it
        self.load_ms: float | None = None  # how long the worker's load (and compile) took
        if spec.artifact_max is not None:
            self.artifact_fd = os.memfd_create(
                f"edgeguard-artifact-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
            )
        self.gpu_nodes: tuple[str, ...] | None = None  # a GPU member's device nodes
        self.groups: tuple[int, ...] = ()  # its supplementary groups (started by root)
        self.device_check = "not requested"  # the worker's word on its device check

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self.inp.release()
            self.out.release()
            self.io.close()
        if self.model_map:
            _linux.unmap(self.model_map, self.model_size)
            self.model_map = 0
        for fd in (
            self.model_fd,
            self.io_fd,
            self.artifact_fd,
            self.calibration_fd,
            self.timing_fd,
            self.timing_out_fd,
        ):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.artifact_fd = None
        self.calibration_fd = self.timing_fd = self.timing_out_fd = None


class _ProcCall:
    """A call in flight in one worker."""

    def __init__(self, ex: ProcessMemberExecutor, slot: _Slot, sock: socket.socket) -> None:
        self._ex = ex
        self._slot = slot
        self._gen = slot.gen
        self._sock = sock
        self._done = False
        self._out: dict[str, np.ndarray] | None = None
        self._exc: EdgeguardError | None = None
        self._run_ns: int | None = None
        # (N, C, H*W, dtype) of the checked input sent, when the worker checks one
        self.frames: tuple[int, int, int, Any] | None = None
        self._stats: dict[str, Any] | None = None
        self.t0 = time.perf_counter_ns()
        self.roundtrip_ns: int | None = None

    def _finish(self, out: dict[str, np.ndarray] | None, exc: EdgeguardError | None) -> None:
        self._out, self._exc, self._done = out, exc, True
        if self.roundtrip_ns is None:
            self.roundtrip_ns = time.perf_counter_ns() - self.t0

    def wait(self, timeout_s: float) -> bool:
        if self._done:
            return True
        try:
            ready, _, _ = select.select([self._sock], [], [], max(0.0, timeout_s))
        except (OSError, ValueError):  # the socket was closed by abandon()/close()
            ready = [self._sock]
        if not ready:
            return False
        self._ex._complete(self)
        return True

    def result(self) -> dict[str, np.ndarray]:
        if not self._done:
            raise UsageError("member call has not finished")
        if self._exc is not None:
            raise self._exc
        assert self._out is not None
        return self._out

    @property
    def run_ns(self) -> int | None:
        return self._run_ns if self._done else None

    @property
    def device_stats(self) -> dict[str, Any] | None:
        """``{input: FrameStats}`` the worker's device check sent with its answer, or None."""
        return self._stats if self._done and self._exc is None else None


class _Proxy:
    """A Runnable that runs a member through the executor (for GuardedRuntime's members=)."""

    def __init__(self, ex: ProcessMemberExecutor, name: str) -> None:
        self._ex = ex
        self.name = name

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        call = self._ex.submit(self.name, feeds)
        if not call.wait(self._ex.call_timeout_s):
            self._ex.abandon(self.name)
            raise BackendError(f"sandboxed member {self.name!r} timed out")
        return call.result()


class ProcessMemberExecutor:
    """A :class:`~edgeguard.runtime.guarded.MemberExecutor` with one sandboxed process per member.

    Args:
        specs: What each member runs, by name; the fallback model under
            ``"__fallback__"`` (:data:`FALLBACK_NAME`).
        policy: Which isolation layers to use (normally ``policy["sandbox"]`` of the
            signed manifest).
        event_log: Receives ``sandbox_worker_*`` records, or None.
        caps: Host capabilities (probed when None).
        io_bytes: Size of each of the input and output halves of a worker's shared
            memory (sparse; only touched pages cost memory). The device session sizes
            it from the signed I/O contract (:func:`~edgeguard.runtime.sandbox.area.io_area`).
        start_timeout_s: Time a worker may take to load, warm up and lock down.
        restart_backoff_s: First restart delay; doubles per consecutive death.
        max_backoff_s: Upper bound of the restart delay.
        max_restarts: Consecutive deaths (without a successful call in between) after
            which a member is retired (:meth:`submit` then raises BackendError).
        call_timeout_s: Timeout of the :meth:`members` proxies' ``run``.
        worker_stderr: Let workers write to our stderr (debugging); default silent.
        worker_user: Service user (name or uid) of workers started by root; None reads
            ``EDGEGUARD_WORKER_USER``, else ``nobody``.
        worker_groups: Supplementary groups (names or gids) of GPU members started by
            root; None reads ``EDGEGUARD_WORKER_GROUPS``, else the groups that own the
            member's device nodes (:mod:`~edgeguard.runtime.sandbox.identity`).
        device_root: Where ``/dev`` is looked up for GPU members' device nodes (tests).
        on_progress: Called as ``on_progress(member, phase, done, total)`` for each
            progress message of a worker that builds a TensorRT plan, from the thread
            that awaits the worker (an exception it raises is ignored). Each message is
            read strictly: anything but a phase of 1 to ``MAX_PHASE_CHARS`` printable
            characters and counts ``0 <= done <= total <= MAX_PROGRESS_INT`` fails the
            worker's start.
        build_timeout_s: Start timeout of a ``trt-build`` worker
            (:data:`BUILD_START_TIMEOUT_S`); like ``start_timeout_s`` it counts from the
            worker's last message.

    Raises:
        PolicyError: The policy requires a layer the host or a worker lacks.
        BackendError: A worker could not start (model load, warm-up, memfd).
        UsageError: Bad arguments.
    """

    def __init__(
        self,
        specs: Mapping[str, WorkerSpec],
        *,
        policy: SandboxPolicy,
        event_log: EventSink | None = None,
        caps: HostCapabilities | None = None,
        io_bytes: int = DEFAULT_IO_BYTES,
        start_timeout_s: float = 60.0,
        restart_backoff_s: float = 0.05,
        max_backoff_s: float = 5.0,
        max_restarts: int = 8,
        call_timeout_s: float = 60.0,
        worker_stderr: bool = False,
        worker_user: str | None = None,
        worker_groups: Sequence[str] | None = None,
        device_root: Path = Path("/"),
        on_progress: Callable[[str, str, int, int], None] | None = None,
        build_timeout_s: float = BUILD_START_TIMEOUT_S,
    ) -> None:
        if not specs or not all(isinstance(s, WorkerSpec) for s in specs.values()):
            raise UsageError("specs must map member names to WorkerSpec objects")
        if io_bytes < MIN_IO_BYTES or restart_backoff_s < 0 or max_backoff_s < restart_backoff_s:
            raise UsageError(
                f"io_bytes >= {MIN_IO_BYTES} and 0 <= restart_backoff_s <= max_backoff_s"
            )
        if max_restarts < 0:
            raise UsageError("max_restarts must be >= 0")
        self._policy = policy
        self._caps = caps if caps is not None else probe_host()
        self._plan = check_policy(policy, self._caps)  # raises PolicyError
        self._log = event_log
        self.log_errors = 0
        self._start_timeout = start_timeout_s
        self._build_timeout = max(start_timeout_s, build_timeout_s)
        self._on_progress = on_progress
        self._backoff = restart_backoff_s
        self._max_backoff = max_backoff_s
        self._max_restarts = max_restarts
        self.call_timeout_s = call_timeout_s
        self._stderr = None if worker_stderr else subprocess.DEVNULL
        try:
            self._identity = worker_identity(user=worker_user, groups=worker_groups)
        except ValueError as exc:
            raise UsageError(f"worker identity: {exc}") from None
        self._device_root = device_root
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._tree: _cgroup.CgroupTree | None = None
        if self._plan["cgroup"] == "apply" and self._caps.cgroup_path is not None:
            self._tree = _cgroup.CgroupTree(Path(self._caps.cgroup_path))
        self._slots: dict[str, _Slot] = {}
        self._io_bytes = io_bytes
        try:
            for name, spec in specs.items():
                self._slots[name] = _Slot(name, spec, io_bytes)
                if self._slots[name].model_lock is not None:
                    self._event(
                        "sandbox_memory_unlocked",
                        {
                            "member": name,
                            "where": "supervisor (sealed model memfd)",
                            "detail": self._slots[name].model_lock,
                        },
                    )
            for slot in self._slots.values():
                self._launch(slot)
            for slot in self._slots.values():
                self._await_ready(slot)
                self._event("sandbox_worker_started", self._started_data(slot))
        except BaseException:
            self.close()
            raise
        self._supervisor = threading.Thread(
            target=self._supervise, name="edgeguard-sandbox-supervisor", daemon=True
        )
        self._supervisor.start()

    # -- public ---------------------------------------------------------------------------

    @property
    def plan(self) -> Mapping[str, str]:
        """The per-layer plan from :func:`~edgeguard.runtime.sandbox.probe.check_policy`."""
        return dict(self._plan)

    @property
    def io_bytes(self) -> int:
        """Bytes each worker's request (and reply) may occupy in shared memory."""
        return self._io_bytes

    def take_artifact(self, name: str) -> tuple[int | None, str | None, float | None]:
        """The memfd member ``name``'s worker compiled into, once; the caller closes it.

        Returns:
            ``(fd, None, load_ms)`` when the worker wrote it (``load_ms``: its load and
            compile, as it reported it), ``(None, why, None)`` when it did not,
            ``(None, None, None)`` when the spec asked for no compiling. Later restarts
            of the worker do not compile.
        """
        with self._lock:
            s = self._slot(name)
            fd, note, ms = s.artifact_fd, s.artifact_note, s.load_ms
            s.artifact_fd = None
        if fd is None:
            return None, None, None
        if note != "written":
            os.close(fd)
            return None, note or "the worker did not say", None
        return fd, None, ms

    def take_timing_cache(self, name: str) -> int | None:
        """The memfd member ``name``'s worker wrote its build's timing cache into, once,
        when it compiled (:meth:`take_artifact` said so); the caller closes it. None when
        nothing was asked or written. Later restarts of the worker get none."""
        with self._lock:
            s = self._slot(name)
            fd, written = s.timing_out_fd, s.artifact_note == "written"
            s.timing_out_fd = None
            if s.timing_fd is not None:  # restarts start from an empty cache
                os.close(s.timing_fd)
                s.timing_fd = None
        if fd is None:
            return None
        if not written or os.fstat(fd).st_size == 0:
            os.close(fd)
            return None
        return fd

    def device_check(self, name: str) -> str:
        """What member ``name``'s worker said of its device sanity check when it started:
        ``"active"``, ``"unavailable: <why>"`` or ``"not requested"``."""
        with self._lock:
            return self._slot(name).device_check

    def reported_inputs(self, name: str) -> tuple[TensorSpec, ...] | None:
        """The inputs member ``name``'s worker says its model takes (untrusted; strictly read)."""
        with self._lock:
            return self._slot(name).inputs

    def members(self) -> dict[str, _Proxy]:
        """Runnables for ``GuardedRuntime(members=...)`` (every name except the fallback)."""
        return {n: _Proxy(self, n) for n in self._slots if n != FALLBACK_NAME}

    def fallback(self) -> _Proxy | None:
        """Runnable for ``GuardedRuntime(fallback=...)``, or None without a fallback spec."""
        return _Proxy(self, FALLBACK_NAME) if FALLBACK_NAME in self._slots else None

    def status(self, name: str) -> WorkerStatus:
        """Snapshot of member ``name``'s worker."""
        with self._lock:
            s = self._slot(name)
            return WorkerStatus(
                name=name,
                state=s.state,
                pid=s.proc.pid if s.proc is not None else None,
                layers=dict(s.layers),
                restarts=s.restarts,
                deaths=s.deaths,
                last_exit=s.last_exit,
                last_restart_ms=s.last_restart_ms,
            )

    def wait_ready(self, name: str, timeout_s: float) -> bool:
        """Wait until ``name``'s worker serves (after a restart); False on timeout."""
        end = time.monotonic() + timeout_s
        with self._wake:
            while self._slot(name).state not in ("ready", "retired", "closed"):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(left)
            return self._slot(name).state == "ready"

    def submit(self, name: str, feeds: Mapping[str, np.ndarray]) -> _ProcCall | _Failed:
        """Send one call to member ``name``'s worker.

        A worker that is restarting gives an already-failed call (the runtime's chain
        answers meanwhile), and so does a request the worker cannot take: larger than its
        shared memory, or of an element type it cannot carry (the call then raises
        :class:`~edgeguard.errors.InputRefusedError`).

        Raises:
            UsageError: Unknown member, or the executor is closed.
            BackendError: The member is retired (too many consecutive deaths).
        """
        with self._lock:
            if self._closed:
                raise UsageError("executor is closed")
            s = self._slot(name)
            if s.state == "retired":
                raise BackendError(f"sandboxed member {name!r} retired: its worker keeps dying")
            if s.state == "ready" and s.proc is not None and s.proc.poll() is not None:
                self._reap(s, during="idle")
            if s.state != "ready" or s.sock is None:
                return _Failed(BackendError(f"sandboxed member {name!r} is {s.state}"))
            try:
                desc = pack_arrays(feeds, s.inp)
            except (ValueError, TypeError) as exc:  # the request's fault, not the worker's
                return _Failed(
                    InputRefusedError(
                        f"sandboxed member {name!r} cannot take the request: {exc}",
                        hint="a sandboxed member's shared memory per call is sized from the "
                        "bundle's signed I/O contract; what it does not bound gets "
                        "--sandbox-io-mb MB (open_session(sandbox_io_bytes=...); default 32)",
                    )
                )
            call = _ProcCall(self, s, s.sock)
            check = s.spec.device_check
            if check is not None and s.device_check == "active":
                x = feeds.get(check.input)
                if isinstance(x, np.ndarray):
                    from edgeguard.runtime.devicestats import frames_of

                    with contextlib.suppress(UsageError, ValueError):
                        call.frames = (*frames_of(x, check.layout), x.dtype)
            try:
                s.sock.send(json.dumps({"op": "run", "feeds": desc}).encode())
            except OSError:
                self._reap(s, during="call")
                return _Failed(BackendError(f"sandboxed member {name!r} died ({s.last_exit})"))
            s.state, s.busy = "busy", call
            return call

    def abandon(self, name: str) -> None:
        """Kill member ``name``'s worker (it missed its deadline); it is restarted later.

        The caller (a frame's deadline path) only sends SIGKILL and fails the call; the
        supervisor thread waits for the process, records it and schedules the restart, so
        a process's teardown never delays an answer.
        """
        with self._wake:
            s = self._slot(name)
            if s.proc is None or s.state not in ("ready", "busy"):
                return
            with contextlib.suppress(OSError):
                s.proc.kill()
            if s.busy is not None:
                s.busy._finish(
                    None, BackendError(f"sandboxed member {s.name!r}: worker killed (late)")
                )
                s.busy = None
            s.state = "dying"
            self._wake.notify_all()

    def close(self) -> None:
        """Stop every worker (politely, then SIGKILL) and release the memfds."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
            slots = list(self._slots.values())
        sup = getattr(self, "_supervisor", None)
        if sup is not None and sup is not threading.current_thread():
            sup.join(timeout=self._start_timeout + 5.0)
        for s in slots:
            if s.sock is not None:
                with contextlib.suppress(OSError):
                    s.sock.send(b'{"op":"exit"}')
        for s in slots:
            if s.proc is not None:
                try:
                    s.proc.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    s.proc.kill()
                    s.proc.wait()
            if s.sock is not None:
                s.sock.close()
            if s.leaf is not None:
                _cgroup.CgroupTree.remove(s.leaf)
            s.state = "closed"
            s.close()
        if self._tree is not None:
            self._tree.close()

    #: Extra ``init`` fields for every worker (discovery mode sets its seccomp action).
    _init_extra: Mapping[str, Any] = {}

    def __enter__(self) -> ProcessMemberExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------

    def _is_closed(self) -> bool:
        return self._closed

    def _slot(self, name: str) -> _Slot:
        try:
            return self._slots[name]
        except KeyError:
            raise UsageError(f"unknown member {name!r}") from None

    def _event(self, kind: str, data: Mapping[str, Any]) -> None:
        if self._log is None:
            return
        try:
            self._log.append(kind, data)
        except Exception:  # the log must never take inference down; counted
            self.log_errors += 1

    def _started_data(self, s: _Slot) -> dict[str, Any]:
        pid = s.proc.pid if s.proc else None
        memlock = {"worker": s.memlock, "model_memfd": s.model_lock or "active"}
        return {
            "member": s.name,
            "pid": pid,
            "layers": s.layers,
            "verified": s.verified,
            "memlock": memlock,
        }

    def _launch(self, s: _Slot) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(_WORKER_ENV)
        env.update({k: os.environ[k] for k in _ENV_PASS if k in os.environ})
        try:
            proc = subprocess.Popen(
                _worker_command(child.fileno()),
                pass_fds=(
                    child.fileno(),
                    s.model_fd,
                    s.io_fd,
                    *(
                        fd
                        for fd in (s.artifact_fd, s.calibration_fd, s.timing_fd, s.timing_out_fd)
                        if fd is not None
                    ),
                ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                env=env,
                close_fds=True,
            )
        except OSError as exc:
            parent.close()
            raise BackendError(f"cannot start a worker for {s.name!r}: {exc}") from exc
        finally:
            child.close()
        s.proc, s.sock, s.gen, s.state = proc, parent, s.gen + 1, "starting"
        # A GPU member's device nodes (and the groups that may open them), as /dev is now.
        s.gpu_nodes = _gpu_nodes(s.spec, self._device_root)
        s.groups = self._identity.groups_for(s.gpu_nodes)
        cg = None
        if self._tree is not None:
            s.leaf = self._tree.create(s.name, memory_max=self._policy.memory_max_bytes)
            self._tree.attach(s.leaf, proc.pid)
            cg = f"memory.max={self._policy.memory_max_bytes}"
        init = {
            "op": "init",
            "model_fd": s.model_fd,
            "model_size": s.model_size,
            "io_fd": s.io_fd,
            "io_bytes": s.io_bytes,
            "fmt": s.spec.fmt,
            "options": dict(s.spec.options),
            "loader": s.spec.loader,
            "python_path": list(s.spec.python_path),
            "cpus": None if s.spec.cpus is None else list(s.spec.cpus),
            "plan": self._plan,
            "required": list(self._policy.required_layers()),
            "netns_mode": self._caps.netns,
            "max_open_files": self._policy.max_open_files,
            "cgroup": cg,
            "user": [self._identity.uid, self._identity.gid],
            "groups": list(s.groups),
            "gpu": None if s.gpu_nodes is None else {"nodes": list(s.gpu_nodes)},
            "lockdown": _lockdown_point(s.spec),
            "memlock_bytes": self._policy.memory_max_bytes,
            "device_check": None if s.spec.device_check is None else s.spec.device_check.to_init(),
        }
        if s.artifact_fd is not None:
            init["artifact_fd"] = s.artifact_fd
            init["artifact_max"] = s.spec.artifact_max
        if s.calibration_fd is not None:
            init["calibration_fd"] = s.calibration_fd
            init["calibration_size"] = s.calibration_size
        if s.timing_fd is not None:
            init["timing_cache_fd"] = s.timing_fd
            init["timing_cache_size"] = s.timing_size
        if s.timing_out_fd is not None and s.artifact_fd is not None:
            init["timing_cache_out_fd"] = s.timing_out_fd
        init.update(self._init_extra)
        parent.send(json.dumps(init).encode())

    def _await_ready(self, s: _Slot) -> None:
        """Read the worker's start messages: any number of ``progress`` (a TensorRT
        build), then ``ready``; the timeout counts from the last message."""
        assert s.sock is not None and s.proc is not None
        timeout = self._build_timeout if s.spec.fmt == "trt-build" else self._start_timeout
        while True:
            ready, _, _ = select.select([s.sock], [], [], timeout)
            msg: Any = None
            if ready:
                data = s.sock.recv(DEFAULT_LIMITS.max_bytes + 1)  # one more: a cut message
                with contextlib.suppress(BadReplyError):
                    msg = read_message(data) if data else None
            if not (isinstance(msg, dict) and msg.get("op") == "progress"):
                break
            if s.spec.fmt != "trt-build":
                msg = {"error": "a progress message from a worker that builds no TensorRT plan"}
                break
            got = _read_progress(msg)
            if got is None:
                msg = {"error": "malformed progress message from the TensorRT build"}
                break
            if self._on_progress is not None:
                with contextlib.suppress(Exception):  # a display never stops a start
                    self._on_progress(s.name, *got)
        if (
            isinstance(msg, dict)
            and msg.get("op") == "ready"
            and isinstance(msg.get("layers"), dict)
        ):
            s.layers = {str(k): str(v)[:200] for k, v in msg["layers"].items()}
            s.inputs = _reported_inputs(msg.get("inputs"))
            self._refuse_unless_locked_down(s)
            s.memlock = str(msg.get("memlock", "not reported"))[:200]
            note = msg.get("device_check")
            s.device_check = (
                str(note)[:300]
                if s.spec.device_check is not None and isinstance(note, str)
                else "not requested"
            )
            if s.artifact_fd is not None:
                s.artifact_note = str(msg.get("artifact", "not reported"))[:200]
                ms = msg.get("load_ms")
                s.load_ms = float(ms) if isinstance(ms, int) and 0 <= ms < 1 << 31 else None
            if not s.memlock.startswith("active"):
                self._event(
                    "sandbox_memory_unlocked",
                    {"member": s.name, "where": "worker", "detail": s.memlock},
                )
            with self._wake:
                s.state = "ready"
                self._wake.notify_all()
            return
        s.proc.kill()
        code = s.proc.wait()
        s.sock.close()
        s.sock = None
        why = str(msg.get("error"))[:500] if isinstance(msg, dict) else _describe_exit(code)[0]
        if not ready:
            why = f"no ready message within {timeout:g} s of the last message"
        if isinstance(msg, dict) and "required layer" in why:
            raise PolicyError(f"sandboxed worker {s.name!r}: {why}")
        raise BackendError(f"sandboxed worker {s.name!r} failed to start: {why}")

    def _refuse_unless_locked_down(self, s: _Slot) -> None:
        """Check the ready worker's ``/proc`` files against the policy; kill it on a mismatch.

        The worker's own report of its layers is not taken on trust
        (:func:`~edgeguard.runtime.sandbox._verify.check_worker`).

        Raises:
            PolicyError: The worker is not locked down as the policy requires (it is
                killed; a restart goes the worker-fault way: backoff, then retirement).
        """
        assert s.proc is not None and s.sock is not None
        check = check_worker(
            s.proc.pid,
            plan=self._plan,
            required=self._policy.required_layers(),
            reported=s.layers,
            max_open_files=self._policy.max_open_files,
            started_by_root=os.geteuid() == 0,
            groups=s.groups,
        )
        s.verified = dict(check.facts)
        if not check.problems:
            return
        self._event(
            "sandbox_worker_refused",
            {"member": s.name, "pid": s.proc.pid, "problems": list(check.problems)},
        )
        s.proc.kill()
        s.proc.wait()
        s.sock.close()
        s.sock = None
        raise PolicyError(
            f"sandboxed worker {s.name!r} is not locked down as the policy requires: "
            + "; ".join(check.problems),
            hint="the kernel's view of the worker (/proc/<pid>/status and limits) is checked, "
            "not its own report; see docs/isolation.md",
        )

    def _reap(self, s: _Slot, *, during: str) -> None:
        """The current worker is dead or being killed: record it and schedule a restart."""
        assert s.proc is not None
        try:
            code: int | None = s.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            code = s.proc.wait()
        text, detail = _describe_exit(code)
        if s.sock is not None:
            s.sock.close()
            s.sock = None
        if s.leaf is not None:
            _cgroup.CgroupTree.remove(s.leaf)
            s.leaf = None
        if s.busy is not None:
            verb = "killed" if during == "abandoned" else "died"
            s.busy._finish(
                None, BackendError(f"sandboxed member {s.name!r}: worker {verb} ({text})")
            )
            s.busy = None
        s.deaths += 1
        s.consecutive += 1
        s.died_at = time.monotonic()
        s.last_exit = text
        kind = "sandbox_worker_killed" if during == "abandoned" else "sandbox_worker_died"
        data = {"member": s.name, "pid": s.proc.pid, "during": during, **detail, "deaths": s.deaths}
        if s.consecutive > self._max_restarts:
            s.state = "retired"
            self._event(kind, data)
            self._event("sandbox_worker_retired", {"member": s.name, "deaths": s.deaths})
        else:
            delay = min(self._max_backoff, self._backoff * 2 ** (s.consecutive - 1))
            s.state = "dead"
            s.next_start = s.died_at + delay
            self._event(kind, {**data, "restart_in_ms": round(delay * 1e3, 1)})
        self._wake.notify_all()

    def _bury(self, s: _Slot) -> None:
        """Wait (outside the lock) for a killed worker to exit, then record and reschedule it."""
        proc = s.proc
        if proc is not None:
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with self._wake:
            if s.state == "dying" and s.proc is proc:
                self._reap(s, during="abandoned")

    def _complete(self, call: _ProcCall) -> None:
        """Read the reply of ``call`` (its socket is readable) and finish it."""
        with self._lock:
            s = call._slot
            if call._done:
                return
            if s.gen != call._gen or s.busy is not call or s.sock is None:
                call._finish(None, BackendError(f"sandboxed member {s.name!r}: worker gone"))
                return
            try:
                # one byte more than a message may hold: a longer (cut) message shows
                data = s.sock.recv(DEFAULT_LIMITS.max_bytes + 1)
            except OSError:
                data = b""
            if not data:
                self._reap(s, during="call")  # finishes the call with the cause
                return
            s.busy, s.state = None, "ready"
            try:
                reply = read_run_reply(data)
                call._run_ns = reply.run_ns
                if reply.ok:
                    out = read_outputs(reply.outputs, s.out, specs=s.spec.outputs)
                    if reply.stats is not None:
                        call._stats = self._stats(s, call, reply.stats)
                    s.consecutive = 0
                    call._finish(out, None)
                else:
                    err = reply.error or "unknown error"
                    self._event("sandbox_call_failed", {"member": s.name, "error": err})
                    call._finish(None, BackendError(f"sandboxed member {s.name!r}: {err}"))
            except Exception as exc:  # any malformed reply: the worker is not trustworthy
                if isinstance(exc, BadReplyError):
                    detail = str(exc)
                elif isinstance(exc, ValueError):
                    detail = f"bad reply: {exc}"
                else:  # never raised to the caller: a reply is data, whatever it provokes
                    detail = f"bad reply: reading it raised {type(exc).__name__}"
                self._event("sandbox_bad_reply", {"member": s.name, "detail": detail[:300]})
                call._finish(None, BackendError(f"sandboxed member {s.name!r}: {detail[:300]}"))
                if s.proc is not None:
                    with contextlib.suppress(OSError):
                        s.proc.kill()
                    s.busy = None
                    self._reap(s, during="bad_reply")

    @staticmethod
    def _stats(s: _Slot, call: _ProcCall, raw: Any) -> dict[str, Any]:
        """The statistics an answer carries, read strictly against the input sent."""
        check = s.spec.device_check
        if check is None or call.frames is None:
            raise BadReplyError("bad reply: statistics nobody asked for")
        from edgeguard.runtime.devicestats import stats_from_record

        n, c, plane, dtype = call.frames
        record = read_stats(raw, frames=n, channels=c, plane=plane)
        return {check.input: stats_from_record(record, check, dtype)}

    def _supervise(self) -> None:
        while True:
            with self._wake:
                if self._closed:
                    return
                dying = next((x for x in self._slots.values() if x.state == "dying"), None)
                if dying is None:
                    now = time.monotonic()
                    due = [x for x in self._slots.values() if x.state == "dead"]
                    ready = [x for x in due if x.next_start <= now]
                    if not ready:
                        wait = min((x.next_start - now for x in due), default=None)
                        self._wake.wait(wait)
                        continue
                    s = ready[0]
                    s.state = "starting"
            if dying is not None:
                self._bury(dying)
                continue
            try:
                if self._is_closed():
                    return
                self._launch(s)
                self._await_ready(s)
            except EdgeguardError as exc:
                with self._wake:
                    s.deaths += 1
                    s.consecutive += 1
                    s.last_exit = f"restart failed: {exc}"[:300]
                    if s.consecutive > self._max_restarts or self._is_closed():
                        s.state = "retired"
                        self._event(
                            "sandbox_worker_retired", {"member": s.name, "detail": s.last_exit}
                        )
                    else:
                        s.state = "dead"
                        s.next_start = time.monotonic() + min(
                            self._max_backoff, self._backoff * 2 ** (s.consecutive - 1)
                        )
                    self._wake.notify_all()
                continue
            with self._wake:
                s.restarts += 1
                if s.died_at is not None:
                    s.last_restart_ms = (time.monotonic() - s.died_at) * 1e3
                if self._is_closed():
                    return
                self._event(
                    "sandbox_worker_restarted",
                    {
                        **self._started_data(s),
                        "restarts": s.restarts,
                        "restart_ms": round(s.last_restart_ms or 0.0, 1),
                    },
                )

"""Entry point of a sandboxed member worker: ``python -I -m edgeguard.runtime.sandbox.worker FD``.

Layer: :mod:`edgeguard.runtime.sandbox` (runs in the child process; imports numpy and,
through the model loader, the inference library).

Life of a worker:

0. before anything else: ``RLIMIT_CORE`` 0 and not dumpable (no core file, no ``ptrace``
   or ``/proc/<pid>/mem`` by a peer), since the sealed model memfd is already open;
1. read the ``init`` message from the control socket ``FD`` (a SOCK_SEQPACKET socket
   the supervisor created before spawning us);
2. while still single-threaded and privileged: pin to the placement's CPU cores (if
   any), enter a new network namespace (policy permitting);
3. while files can still be read: check the **sealed memfd**'s seals and map it, map the
   shared I/O memfd, import the loader and the inference library, build both seccomp
   filters, ask for Landlock's ABI;
4. lock its pages in RAM as they are touched (``mlockall``, again after the warm-up; a
   failure is reported, not fatal: :class:`_MemLock`), then give up privileges for good:
   a worker started by root switches to the service user, ``nobody`` by default (no
   supplementary groups; a GPU member keeps ``init["groups"]``, its nodes'); every
   worker empties its capability sets (and the bounding set where it may) and sets
   ``no_new_privs``;
5. lock down before the model is parsed: ``RLIMIT_NOFILE`` and ``RLIMIT_FSIZE``, Landlock
   (no filesystem; the worker is still one thread, so every thread ONNX Runtime creates
   later is covered) and the **load-time** seccomp filter;
6. load the model from the mapping (untrusted input from here on), close the memfd, run
   warm-up inferences through the exact serving path, so ONNX Runtime's threads exist
   and every lazy import has happened;
7. ``RLIMIT_NPROC`` 0 and the **run-time** seccomp filter stacked on the load-time one;
8. report ``ready`` with the layers it applied, then serve ``run`` requests: the inputs
   are read in place from shared memory, the outputs written back there, and only a
   small JSON message crosses the socket. The supervisor does not take the report on
   trust: it reads the worker's ``/proc`` files before the first request.

A member placed on an accelerator (``init["lockdown"] == "after_load"``) opens device
nodes and provider libraries while loading, so its Landlock and seccomp steps move from
5 to 7 (one filter); steps 0-4 are the same. With ``init["gpu"]`` (its device nodes, from
the supervisor) step 7 is, in this order: list the descriptors it holds on those nodes
(``/proc/self/fd``), build the GPU seccomp profile with ``ioctl`` on exactly those
descriptors, Landlock with a read/write rule per node, then the filter
(``docs/isolation.md``, "GPU workers"). With ``init["seccomp_action"] == "notify"``
(discovery) the first filter reports unlisted syscalls to the supervisor instead of
killing: the worker hands the listener over on the control socket and installs no
second filter.

After step 7 the worker can read and write the descriptors it holds, allocate memory
and compute; it cannot open a file, create a socket, run a program, create a process
or trace one. Exit codes: 0 on ``exit`` or EOF, 3 when the init is malformed, 4 when a
layer the policy requires (or the privilege drop) cannot be applied, 5 when the model
cannot be loaded.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import importlib
import json
import mmap
import os
import resource
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from edgeguard.policy.io import DTYPES
from edgeguard.runtime.sandbox import _linux, gpu

__all__ = [
    "ALIGN",
    "MAX_MESSAGE",
    "MAX_PHASE_CHARS",
    "MAX_PROGRESS_INT",
    "MAX_STATS_HEX",
    "PROGRESS_INTERVAL_S",
    "STATS_FLOATS",
    "STATS_INTS",
    "main",
    "pack_arrays",
    "pack_stats",
    "unpack_arrays",
]

#: Byte alignment of every tensor in the shared I/O region.
ALIGN = 64
#: Largest control message, either direction.
MAX_MESSAGE = 1 << 16
#: Longest statistics record in a reply (hex characters): what is left of a message for
#: the output descriptors is ample. A larger record (a batch of hundreds of frames) is
#: not sent, and the supervisor computes the statistics on its CPU instead.
MAX_STATS_HEX = MAX_MESSAGE - (1 << 14)
#: The statistics record of a reply, in order: per frame int64 ``[N]`` ...
STATS_INTS: tuple[str, ...] = ("nan", "posinf", "neginf")
#: ... then int64 ``count`` ``[N, C]``, then float64 ``[N, C]`` each of these
#: (IEEE-754 bits, little-endian: floats never appear as JSON numbers).
STATS_FLOATS: tuple[str, ...] = ("min", "max", "mean", "std", "sat_lo", "sat_hi", "hf")
#: A ``trt-build`` worker reports its build's progress (``{"op": "progress", "phase",
#: "done", "total"}``) at most this often, plus at the end of every phase.
PROGRESS_INTERVAL_S = 0.25
#: Longest phase name in a progress message (longer names are cut).
MAX_PHASE_CHARS = 64
#: Largest ``done`` or ``total`` of a progress message.
MAX_PROGRESS_INT = (1 << 31) - 1
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
Loader = Callable[[memoryview, str, Mapping[str, Any]], Any]


def pack_arrays(arrays: Mapping[str, np.ndarray], region: memoryview) -> list[list[Any]]:
    """Copy ``arrays`` into ``region`` (64-byte aligned); return their descriptors.

    Each descriptor is ``[name, dtype, shape, offset, nbytes]``, offsets relative to
    ``region``.

    Raises:
        ValueError: The arrays do not fit, or a dtype is not a plain numeric one.
    """
    desc: list[list[Any]] = []
    off = 0
    for name, arr in arrays.items():
        a = np.asarray(arr)
        if a.dtype.name not in DTYPES:
            raise ValueError(f"array {name!r} has unsupported dtype {a.dtype}")
        n = a.nbytes
        if off + n > len(region):
            raise ValueError(f"arrays need more than the {len(region)}-byte I/O region")
        dst: np.ndarray = np.ndarray(a.shape, dtype=a.dtype, buffer=region, offset=off)
        np.copyto(dst, a, casting="no")
        desc.append([str(name), a.dtype.name, list(a.shape), off, n])
        off += (n + ALIGN - 1) // ALIGN * ALIGN
    return desc


def pack_stats(stats: Any) -> dict[str, Any] | None:
    """A reply's form of one input's sanity statistics (a ``FrameStats``), or None.

    ``{"n": N, "c": C, "data": HEX}``: ``data`` is the little-endian int64 per-frame
    counts (:data:`STATS_INTS`), int64 ``count``, then the float64 bits of
    :data:`STATS_FLOATS`, each ``[N, C]``. ``tdiff`` is never sent (the supervisor
    computes it from the previous accepted frame). None when the record is longer
    than :data:`MAX_STATS_HEX`.
    """
    n, c = (int(v) for v in np.shape(stats.count))
    parts = [np.asarray(getattr(stats, k), dtype="<i8").reshape(n) for k in STATS_INTS]
    parts.append(np.asarray(stats.count, dtype="<i8").reshape(n * c))
    parts += [np.asarray(getattr(stats, k), dtype="<f8").reshape(n * c) for k in STATS_FLOATS]
    data = b"".join(p.tobytes() for p in parts).hex()
    if len(data) > MAX_STATS_HEX:
        return None
    return {"n": n, "c": c, "data": data}


def unpack_arrays(desc: Any, region: memoryview, *, copy: bool) -> dict[str, np.ndarray]:
    """Arrays described by ``desc`` (from :func:`pack_arrays`), validated strictly.

    Args:
        desc: The descriptor list as received (untrusted).
        region: The memory the offsets refer to.
        copy: Copy out of ``region`` (True) or return views into it.

    Raises:
        ValueError: A descriptor is malformed or points outside ``region``.
    """
    if not isinstance(desc, list) or len(desc) > 256:
        raise ValueError("array descriptors must be a list of at most 256 entries")
    out: dict[str, np.ndarray] = {}
    for d in desc:
        if not (isinstance(d, list) and len(d) == 5):
            raise ValueError("bad array descriptor")
        name, dtype, shape, off, n = d
        if not isinstance(name, str) or not name or name in out:
            raise ValueError("bad or duplicate array name")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ValueError(f"array {name!r}: bad dtype")
        if (
            not isinstance(shape, list)
            or len(shape) > 16
            or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 1 << 40 for s in shape
            )
        ):
            raise ValueError(f"array {name!r}: bad shape")
        for v in (off, n):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"array {name!r}: bad offset or size")
        dt = np.dtype(dtype)
        count = 1
        for s in shape:
            count *= s
        if count * dt.itemsize != n or off % ALIGN or off + n > len(region):
            raise ValueError(f"array {name!r}: size or offset does not fit the region")
        view: np.ndarray = np.ndarray(tuple(shape), dtype=dt, buffer=region, offset=off)
        out[name] = view.copy() if copy else view
    return out


def _send(fd: int, obj: Mapping[str, Any]) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        data = json.dumps({"ok": False, "error": "reply too large"}).encode()
    os.write(fd, data)


def _recv(fd: int) -> dict[str, Any] | None:
    data = os.read(fd, MAX_MESSAGE)
    if not data:
        return None
    msg = json.loads(data)
    if not isinstance(msg, dict):
        raise ValueError("control message is not an object")
    return msg


def _default_loader(model: memoryview, fmt: str, options: Mapping[str, Any]) -> Any:
    from edgeguard.backends import load_backend

    return load_backend(fmt, model, **dict(options))


def _resolve_loader(spec: str | None) -> Loader:
    if spec is None:
        return _default_loader
    mod, _, attr = spec.partition(":")
    fn = getattr(importlib.import_module(mod), attr)
    if not callable(fn):
        raise TypeError(f"loader {spec!r} is not callable")
    loader: Loader = fn
    return loader


def _device_check(want: Any, target: Any) -> tuple[Any, str]:
    """The device sanity check ``init["device_check"]`` asks for, and how it went.

    Made before the lockdown (the kernel image is a file). Any failure leaves the
    member serving without it: the supervisor then computes the statistics itself.
    """
    if not want:
        return None, "not requested"
    if not callable(getattr(target, "run_with_stats", None)):
        return None, "unavailable: the member's backend cannot run a device check"
    try:
        from edgeguard.runtime.devicestats import DeviceCheckSpec, make_device_check

        return make_device_check(DeviceCheckSpec.from_init(want)), "active"
    except Exception as exc:
        return None, "unavailable: " + _error_text(exc)[:300]


class _Progress:
    """Relays a TensorRT build's progress to the supervisor over the control socket.

    Called from the builder's threads: one message at a time, at most every
    :data:`PROGRESS_INTERVAL_S` and at every phase end (``done == total``), the phase cut
    to :data:`MAX_PHASE_CHARS` printable characters and the counts to
    ``0 <= done <= total <= MAX_PROGRESS_INT``.
    """

    def __init__(self, ctl: int) -> None:
        self._ctl = ctl
        self._lock = threading.Lock()
        self._last = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        total = min(max(int(total), 0), MAX_PROGRESS_INT)
        done = min(max(int(done), 0), total)
        name = "".join(c if " " <= c <= "~" else "?" for c in str(phase)[:MAX_PHASE_CHARS])
        with self._lock:
            now = time.monotonic()
            if done < total and now - self._last < PROGRESS_INTERVAL_S:
                return
            self._last = now
            _send(self._ctl, {"op": "progress", "phase": name or "?", "done": done, "total": total})


def _calibration_fd(init: Mapping[str, Any]) -> int | None:
    """The sealed memfd of a ``trt-build`` worker's INT8 calibration frames, or None."""
    if init.get("calibration_fd") is None:
        return None
    fd = int(init["calibration_fd"])
    if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & _SEALS != _SEALS:
        raise ValueError("the calibration memfd is not sealed")
    return fd


def _timing_cache(init: Mapping[str, Any]) -> bytes | None:
    """The timing cache a ``trt-build`` worker starts from (its sealed memfd), or None."""
    if init.get("timing_cache_fd") is None:
        return None
    fd, size = int(init["timing_cache_fd"]), int(init["timing_cache_size"])
    try:
        if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & _SEALS != _SEALS:
            raise ValueError("the timing cache memfd is not sealed")
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as m:
            return bytes(m)
    finally:
        os.close(fd)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


class _Server:
    """The serving half: one request at a time over shared memory."""

    def __init__(
        self, ctl: int, target: Any, io: mmap.mmap, io_bytes: int, check: Any = None
    ) -> None:
        self.ctl = ctl
        self.target = target
        self.view = memoryview(io)
        self.inp = self.view[:io_bytes]
        self.out = self.view[io_bytes:]
        self.check = check  # the device sanity check, with the model on its stream

    def handle(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter_ns()
        stats = None
        try:
            feeds = unpack_arrays(msg.get("feeds"), self.inp, copy=False)
            if self.check is not None and self.check.input_name in feeds:
                outputs, found = self.target.run_with_stats(feeds, self.check)
                stats = pack_stats(found)
            else:
                outputs = self.target.run(feeds)
            if not isinstance(outputs, Mapping):
                raise TypeError(f"the model returned {type(outputs).__name__}, not a mapping")
            desc = pack_arrays(outputs, self.out)
        except Exception as exc:  # reported to the supervisor, never raised here
            return {"ok": False, "error": _error_text(exc), "run_ns": time.perf_counter_ns() - t0}
        reply: dict[str, Any] = {"ok": True, "outputs": desc, "run_ns": time.perf_counter_ns() - t0}
        if stats is not None:
            reply["stats"] = stats
        return reply

    def warm_up(self, rounds: int) -> None:
        specs = self.target.inputs() if hasattr(self.target, "inputs") else ()
        feeds = {s.name: s.zeros() for s in specs}
        desc = pack_arrays(feeds, self.inp)
        for _ in range(rounds):
            json.dumps(self.handle({"feeds": desc}))
        # exercise the error path too (exception formatting, lazy imports)
        json.dumps(self.handle({"feeds": [["x", "float32", [1], 1, 4]]}))

    def serve(self) -> int:
        while True:
            msg = _recv(self.ctl)
            if msg is None or msg.get("op") == "exit":
                return 0
            if msg.get("op") != "run":
                _send(self.ctl, {"ok": False, "error": "unknown op"})
                continue
            _send(self.ctl, self.handle(msg))


class _RequiredLayerError(Exception):
    pass


class _Lockdown:
    """The planned layers of one worker, applied in steps, and each one's state."""

    def __init__(self, init: Mapping[str, Any], plan: Mapping[str, str]) -> None:
        self.init = init
        self.plan = plan
        self.required = set(init.get("required", ()))
        self.state = {k: "off" if v == "off" else "skipped" for k, v in plan.items()}
        self.load_filter: Any = None
        self.run_filter: Any = None
        self.abi = 0
        self.threads = 1
        self.compile_filter: Any = None
        # the engine cache: compile into the supervisor's memfd, only under Landlock
        self.artifact_fd: int | None = None
        if init.get("artifact_fd") is not None:
            self.artifact_fd = int(init["artifact_fd"])
        self.artifact = "not compiled: needs Landlock"
        nodes = init.get("gpu", {}).get("nodes") if isinstance(init.get("gpu"), dict) else None
        self.gpu_nodes = None if nodes is None else tuple(str(n) for n in nodes)
        self.action = "notify" if init.get("seccomp_action") == "notify" else "kill_process"
        self.profile = "cpu" if self.gpu_nodes is None else "gpu"
        self.device_fds: tuple[int, ...] = ()
        self.listener: socket.socket | None = None

    def failed(self, layer: str, why: str) -> None:
        if layer in self.required:
            raise _RequiredLayerError(f"{layer}: {why}")
        self.state[layer] = f"failed: {why}"

    def prepare(self, *, early: bool) -> None:
        """Everything that needs files: libseccomp, both BPF programs, Landlock's ABI."""
        if self.plan.get("seccomp") == "apply":
            try:
                from edgeguard.runtime.sandbox.seccomp import build_filter

                ctl, pid = int(self.init["ctl_fd"]), os.getpid()
                act = self.action
                if early:
                    self.load_filter = build_filter(
                        ctl_fd=ctl, pid=pid, kill_action=act, phase="load"
                    )
                self.run_filter = build_filter(
                    ctl_fd=ctl, pid=pid, kill_action=act, profile=self.profile
                )
                if self.action == "notify":
                    # one listener per process: discovery installs one filter only
                    if early:
                        self.run_filter = None
                    self.listener = socket.socket(fileno=ctl)  # its getsockopt calls now
                if early and self.wants_compile():
                    self.compile_filter = build_filter(
                        ctl_fd=ctl, pid=pid, kill_action=act, phase="load", compile_output=True
                    )
            except Exception as exc:
                self.load_filter = self.run_filter = None
                self.failed("seccomp", _error_text(exc))
        if self.plan.get("landlock") == "apply":
            self.abi = _linux.landlock_abi()

    def wants_compile(self) -> bool:
        """Compiling is planned: an artifact memfd, and either Landlock to apply before the
        load (ONNX Runtime opens the memfd by path), or a TensorRT build of an accelerator
        member (no layer is on while it loads; the plan goes in by ``pwrite``)."""
        if self.artifact_fd is None:
            return False
        if self.init.get("lockdown", "before_load") == "before_load":
            return self.plan.get("landlock") == "apply"
        return self.init.get("fmt") == "trt-build"

    def compiling(self) -> bool:
        """Compile now: before the load, only with Landlock in force (no file but memfds)."""
        if self.init.get("lockdown", "before_load") != "before_load":
            return self.wants_compile()
        return self.wants_compile() and self.state.get("landlock", "").startswith("active")

    def end_compile(self) -> None:
        """After the load: close the artifact memfd, file size back to 0."""
        if self.artifact_fd is None:
            return
        with contextlib.suppress(OSError):
            os.close(self.artifact_fd)
        self.artifact_fd = None
        if self.plan.get("rlimits") == "apply":
            try:
                _linux.set_rlimit(resource.RLIMIT_FSIZE, 0)
            except (OSError, ValueError) as exc:
                self.failed("rlimits", str(exc))

    def limits(self, *, nproc: bool) -> None:
        """Open files and file size (``nproc`` False), or no new processes (True).

        RLIMIT_NPROC waits until the warm-up has created ONNX Runtime's threads: the
        worker runs without root, so the limit binds its threads too.
        """
        if self.plan.get("rlimits") != "apply" or self.state["rlimits"].startswith("failed"):
            return
        try:
            if nproc:
                _linux.set_rlimit(resource.RLIMIT_NPROC, 0)
                self.state["rlimits"] = "active"
            else:
                _linux.set_rlimit(resource.RLIMIT_NOFILE, int(self.init["max_open_files"]))
                # a compiling worker writes at most artifact_max bytes, into its memfd
                fsize = int(self.init.get("artifact_max", 0)) if self.wants_compile() else 0
                _linux.set_rlimit(resource.RLIMIT_FSIZE, fsize)
        except (OSError, ValueError) as exc:
            self.failed("rlimits", str(exc))

    def landlock(self, *, when: str) -> None:
        if self.plan.get("landlock") != "apply":
            return
        self.threads = _linux.thread_count()
        try:
            res = _linux.landlock_restrict_self(self.abi, rules=self.gpu_nodes or ())
        except OSError as exc:
            self.failed("landlock", str(exc))
            return
        note = (
            f"; {self.threads - 1} earlier thread(s) not covered, seccomp covers them"
            if self.threads > 1
            else ""
        )
        nodes = f", rules for {len(res.paths)} device node(s)" if self.gpu_nodes is not None else ""
        self.state["landlock"] = f"active (ABI {res.abi}, {when}{nodes}{note})"

    def gpu_profile(self) -> None:
        """A GPU member, at lockdown: ioctl on the descriptors it holds on its nodes only.

        Reads ``/proc/self/fd``, so it runs before Landlock; rebuilds the run-time filter
        with those descriptor numbers.
        """
        if self.gpu_nodes is None or self.run_filter is None:
            return
        ctl = int(self.init["ctl_fd"])
        fds = gpu.device_fds(self.gpu_nodes)
        self.device_fds = tuple(fd for fd in fds if fd not in (0, 1, 2, ctl))
        try:
            from edgeguard.runtime.sandbox.seccomp import build_filter

            self.run_filter = build_filter(
                ctl_fd=ctl,
                pid=os.getpid(),
                kill_action=self.action,
                profile="gpu",
                device_fds=self.device_fds,
            )
        except Exception as exc:
            self.run_filter = None
            self.failed("seccomp", _error_text(exc))

    def seccomp(self, flt: Any, when: str) -> None:
        if flt is None:
            return
        try:
            flt.load()
            if self.listener is not None:
                self._hand_over_listener(flt)
        except Exception as exc:
            self.failed("seccomp", _error_text(exc))
            return
        what = (
            "discovery: unlisted syscalls reported to the supervisor and allowed"
            if self.action == "notify"
            else "allowlist, kill process"
        )
        if self.gpu_nodes is not None:
            what += f", GPU profile, ioctl on {len(self.device_fds)} device descriptor(s)"
        self.state["seccomp"] = f"active ({what}, all threads; {when})"

    def _hand_over_listener(self, flt: Any) -> None:
        """Send the filter's notification listener to the supervisor (discovery only).

        The worker keeps its own copy open: libseccomp owns the number, and the worker
        cannot use it (``ioctl`` is not allowed on it). Discovery is not a sandbox anyway.
        """
        from edgeguard.runtime.sandbox.seccomp import notify_fd

        assert self.listener is not None
        fd = array.array("i", [notify_fd(flt)])
        self.listener.sendmsg(
            [b'{"op":"listener"}'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.tobytes())]
        )
        self.listener.detach()  # the control socket stays the worker's, as a number


def _memlock_limit() -> str:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft / 2**20:g} MiB"


def _lock_memory() -> str | None:
    """Lock every page the worker has mapped, as it is touched (``MCL_ONFAULT``).

    No ``MCL_FUTURE``: under a finite ``RLIMIT_MEMLOCK`` it would turn ordinary
    allocations into failures. Returns None when locked, else why not.
    """
    try:
        _linux.mlockall(_linux.MCL_CURRENT | _linux.MCL_ONFAULT)
    except OSError as exc:
        return str(exc.strerror)
    return None


class _MemLock:
    """The worker's memory locking, in two steps, and what it achieved.

    Before the privilege drop (root still has ``CAP_IPC_LOCK``): every mapping that exists
    then, the sealed model's included, so the model's pages lock as the parser reads
    them. After the warm-up: again, for what ONNX Runtime allocated while loading (its
    initializers, its arena, the copies its load left in freed heap). A worker started
    by root first raises ``RLIMIT_MEMLOCK`` to the policy's memory cap, which takes
    ``CAP_SYS_RESOURCE``; without it the second step is refused once the worker is
    ``nobody``, and the report says ``partial``. The limit is read as text up front: the
    load-time seccomp filter allows no ``getrlimit`` of it.
    """

    def __init__(self, cap: int | None) -> None:
        if os.geteuid() == 0:
            value = resource.RLIM_INFINITY if cap is None else cap
            with contextlib.suppress(OSError, ValueError):  # needs CAP_SYS_RESOURCE
                resource.setrlimit(resource.RLIMIT_MEMLOCK, (value, value))
        self.limit = _memlock_limit()
        self.first = _lock_memory()
        self.second: str | None = "not attempted"

    def after_warm_up(self) -> None:
        if self.first is None:
            self.second = _lock_memory()

    def report(self) -> str:
        if self.first is not None:
            return f"failed: {self.first} (RLIMIT_MEMLOCK {self.limit})"
        if self.second is not None:
            return (
                "partial: what was mapped before the model load (the model, the I/O region), "
                f"not ONNX Runtime's allocations: {self.second} (RLIMIT_MEMLOCK {self.limit})"
            )
        return "active (all mappings, on fault)"


def _prepare(loader: Loader, fmt: str) -> None:
    """Import what loading ``fmt`` needs, while the worker can still read files."""
    if loader is _default_loader:
        import edgeguard.backends  # noqa: F401  (load_backend's own import)

        if fmt in ("onnx", "ort-model"):
            from edgeguard.backends.onnxruntime import preload

            preload()
        if fmt == "trt-build":  # the calibration frames' reader, and zip's name codec
            import encodings.cp437  # noqa: F401

            from edgeguard import arrayfile  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """Run the worker on the control socket given as the only argument."""
    # First of all: no core file and no peer (ptrace, /proc/<pid>/mem) ever gets at this
    # process's memory, before it so much as reads its instructions.
    try:
        _linux.set_rlimit(resource.RLIMIT_CORE, 0)
        _linux.set_dumpable(False)
    except (OSError, ValueError):
        return 4
    # The time zone is read now, while files may still be read: with TZ set (the
    # supervisor sets it) later localtime() calls (ONNX Runtime's log lines) make no
    # system call at all.
    time.tzset()
    time.localtime()
    args = sys.argv[1:] if argv is None else argv
    try:
        ctl = int(args[0])
        init = _recv(ctl)
        if init is None or init.get("op") != "init":
            return 3
        init["ctl_fd"] = ctl
        plan: dict[str, str] = dict(init["plan"])
        model_fd, io_fd, io_bytes = int(init["model_fd"]), int(init["io_fd"]), int(init["io_bytes"])
        model_size, fmt = int(init["model_size"]), str(init["fmt"])
        uid, gid = (int(v) for v in init.get("user") or (65534, 65534))
        groups = tuple(int(g) for g in init.get("groups") or ())
    except (IndexError, ValueError, KeyError, TypeError, OSError):
        return 3
    lock = _Lockdown(init, plan)
    # Accelerator members open device nodes and load provider libraries while they load
    # the model, so their Landlock and seccomp layers wait until after the warm-up.
    early = init.get("lockdown", "before_load") == "before_load"
    try:
        # 1. CPU placement while single-threaded, so every later thread inherits it
        if init.get("cpus") is not None:
            try:
                os.sched_setaffinity(0, {int(c) for c in init["cpus"]})
            except (OSError, TypeError, ValueError) as exc:
                _send(ctl, {"op": "error", "error": f"cannot pin to CPUs {init['cpus']}: {exc}"})
                return 4
        # 2. network namespace while single-threaded (unshare refuses otherwise for userns)
        #    and while still privileged (a new network namespace needs CAP_SYS_ADMIN)
        if plan.get("netns") == "apply":
            try:
                flags = _linux.CLONE_NEWNET
                if init.get("netns_mode") == "userns":
                    flags |= _linux.CLONE_NEWUSER
                _linux.unshare(flags)
                lock.state["netns"] = "active (" + str(init.get("netns_mode")) + ")"
            except OSError as exc:
                lock.failed("netns", str(exc))
        if init.get("cgroup"):
            lock.state["cgroup"] = "active (" + str(init["cgroup"]) + ")"
        # 3. map the shared memory and the sealed model (mmap needs fstat and dup), import
        #    the loader and the inference library, build the filters: all of it needs
        #    calls or files the model parser will not have
        try:
            seals = fcntl.fcntl(model_fd, fcntl.F_GET_SEALS)
            if seals & _SEALS != _SEALS:
                raise ValueError("the model memfd is not sealed")
            model = mmap.mmap(model_fd, model_size, prot=mmap.PROT_READ)
            io = mmap.mmap(io_fd, 2 * io_bytes)
            os.close(io_fd)
            sys.path[:0] = [str(p) for p in init.get("python_path", ())]
            loader = _resolve_loader(init.get("loader"))
            _prepare(loader, fmt)
            cal_fd = _calibration_fd(init)
            timing = _timing_cache(init) if fmt == "trt-build" else None
        except Exception as exc:
            _send(ctl, {"op": "error", "error": "model load failed: " + _error_text(exc)})
            return 5
        lock.prepare(early=early)
        cap = init.get("memlock_bytes")
        memlock = _MemLock(None if cap is None else int(cap))
        # 4. privileges, for good: no root, no capability, no way to gain either
        try:
            privileges = _linux.drop_privileges(uid, gid, groups)
            _linux.set_dumpable(False)  # a change of uid resets it to fs.suid_dumpable
            _linux.set_no_new_privs()
        except OSError as exc:
            raise _RequiredLayerError(f"privileges: {exc}") from exc
        lock.limits(nproc=False)
        options = dict(init.get("options", {}))
        out = init.get("timing_cache_out_fd")
        timing_out = None if out is None else int(out)  # closed after the load, always
        if fmt == "trt-build" and loader is _default_loader:
            options["progress"] = _Progress(ctl)
            if cal_fd is not None:  # read in the build, by the strict array reader
                options["calibration"] = cal_fd
        if early:
            lock.landlock(when="before the model load")
            compiling = lock.compiling() and lock.compile_filter is not None
            if compiling and loader is _default_loader and fmt == "onnx":
                options["save_artifact_fd"] = lock.artifact_fd
                lock.artifact = "written"
            else:
                lock.end_compile()
            lock.seccomp(
                lock.compile_filter if "save_artifact_fd" in options else lock.load_filter,
                "load-time filter before the model load",
            )
        elif lock.compiling() and loader is _default_loader and fmt == "trt-build":
            options["artifact_fd"] = lock.artifact_fd
            lock.artifact = "written"
            if timing is not None:
                options["timing_cache"] = timing
            if timing_out is not None:
                options["timing_cache_fd"] = timing_out
        else:
            lock.end_compile()
        # 5. the model: untrusted input from here on
        t_load = time.perf_counter()
        try:
            with model:
                target = loader(memoryview(model), fmt, options)
            os.close(model_fd)
            for fd in (cal_fd, timing_out):
                if fd is not None:
                    os.close(fd)
            lock.end_compile()
            load_ms = int((time.perf_counter() - t_load) * 1e3)  # no floats in replies
        except Exception as exc:
            # a loader's exception keeps its view of the mapping alive, so closing the
            # mapping raises BufferError: report the loader's error, not that one
            if isinstance(exc, BufferError) and isinstance(exc.__context__, Exception):
                exc = exc.__context__
            _send(ctl, {"op": "error", "error": "model load failed: " + _error_text(exc)})
            return 5
        check, check_note = _device_check(init.get("device_check"), target)
        server = _Server(ctl, target, io, io_bytes, check)
        # 6. warm-up through the serving path: ONNX Runtime's threads and lazy imports
        try:
            server.warm_up(int(init.get("warmup_rounds", 2)))
        except Exception as exc:
            _send(ctl, {"op": "error", "error": "warm-up failed: " + _error_text(exc)})
            return 5
        # 7. the rest of the lockdown
        memlock.after_warm_up()
        lock.limits(nproc=True)
        if not early:
            lock.gpu_profile()
            lock.landlock(when="after the model load")
        lock.seccomp(
            lock.run_filter,
            "load-time filter before the model load, run-time filter after the warm-up"
            if early and lock.load_filter is not None
            else "after the model load",
        )
    except _RequiredLayerError as exc:
        _send(ctl, {"op": "error", "error": f"required layer unavailable: {exc}"})
        return 4
    ins = [s.to_dict() for s in target.inputs()] if hasattr(target, "inputs") else []
    _send(
        ctl,
        {
            "op": "ready",
            "pid": os.getpid(),
            "layers": lock.state,
            "privileges": privileges,
            "memlock": memlock.report(),
            "lockdown": "before the model load" if early else "after the model load",
            "threads": lock.threads,
            "inputs": ins,
            "artifact": lock.artifact,
            "load_ms": load_ms,
            "device_check": check_note,
        },
    )
    return server.serve()


if __name__ == "__main__":
    sys.exit(main())

"""The seccomp-bpf syscall allowlist of a locked-down member worker.

Layer: :mod:`edgeguard.runtime.sandbox` (pure data plus one function that loads the
filter through the optional ``pyseccomp`` binding, imported lazily).

The filter is an **allowlist**: the default action is ``SCMP_ACT_KILL_PROCESS`` (the
whole worker dies with SIGSYS), and only the syscalls listed in :data:`ALLOWLIST` are
let through, each with the reason it is needed while the worker serves. The set was
found by running a locked-down ONNX Runtime worker under ``strace -f -c`` and is
documented, syscall by syscall, in ``docs/isolation.md``.

Two filters are stacked (the kernel runs every filter a process has installed and
applies the strictest answer). The **load-time** filter goes on before the untrusted
model is parsed: the run-time rules plus the few calls in :data:`LOAD_EXTRAS` the worker
makes between loading and serving (ONNX Runtime itself parses a model with nothing but
memory management and thread calls: ``strace`` of the load shows ``brk``, ``mmap``,
``futex`` and, with a thread pool, the thread-creation calls). The **run-time** filter,
installed after the warm-up, has only the run-time rules, so the extras end there.

Entries in :data:`CONDITIONAL` carry argument conditions, for example:

* ``clone`` is allowed only with ``CLONE_THREAD`` set (a new thread, never a new
  process: fork, vfork and ``posix_spawn`` all clone without it);
* ``clone3`` takes its flags in memory, which seccomp cannot inspect, so it fails with
  ``ENOSYS``; glibc then falls back to ``clone``, which the rule above checks;
* ``madvise`` is allowed only with the advice values in :data:`MADVISE_ADVICE` (hints
  about the caller's own pages); ``MADV_HWPOISON``, ``MADV_SOFT_OFFLINE``,
  ``MADV_REMOVE``, ``MADV_MERGEABLE``, ``MADV_PAGEOUT`` and the rest kill the worker.

The filter is loaded with ``SECCOMP_FILTER_FLAG_TSYNC`` so every existing thread of
the worker (ONNX Runtime's pool included) is covered, not just the calling one.

A **GPU member** (``profile="gpu"``; never run on a GPU) gets the run-time rules plus
:data:`GPU_ALLOWLIST` and :data:`GPU_CONDITIONAL`, installed once, after its warm-up.
Its ``ioctl`` rule compares ``arg0`` with each descriptor the worker held on its device
nodes at that moment (:func:`edgeguard.runtime.sandbox.gpu.device_fds`): one rule per
descriptor, no ``ioctl`` at all without one. Residual: seccomp compares numbers, not
files, so if such a descriptor is closed and its number reused by a later ``memfd_create``
or ``eventfd2``, ioctl on the new descriptor passes the filter (the worker can open no
file and no socket after lockdown, so the new descriptor is a memfd or an eventfd).

**Discovery** (``kill_action="notify"``): every syscall outside the rules goes to the
supervisor through ``SECCOMP_RET_USER_NOTIF`` (:mod:`~edgeguard.runtime.sandbox.discover`),
which records it and lets it continue.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Sequence
from typing import Any

from edgeguard._optional import require

__all__ = [
    "ALLOWLIST",
    "COMPILE_EXTRAS",
    "CONDITIONAL",
    "ENOSYS_LIST",
    "GPU_ALLOWLIST",
    "GPU_CONDITIONAL",
    "LOAD_EXTRAS",
    "MADVISE_ADVICE",
    "build_filter",
    "load_filter",
    "notify_fd",
]

#: Syscalls allowed unconditionally after lockdown, with the reason.
ALLOWLIST: dict[str, str] = {
    "close": "release descriptors the worker already owns (it cannot open new ones)",
    "munmap": "free large blocks (glibc malloc, ONNX Runtime's arena, NumPy)",
    "mremap": "realloc of large blocks",
    "brk": "glibc malloc's main heap",
    "futex": "locks and condition variables (GIL, ONNX Runtime's thread pool)",
    "sched_yield": "spin-then-yield loops of ONNX Runtime's thread pool",
    "rt_sigreturn": "return from a signal handler",
    "rt_sigprocmask": "glibc masks signals around thread exit and in abort()",
    "rt_sigaction": "CPython restores its signal handlers at interpreter exit",
    "getpid": "CPython asks for its pid at exit (fork-safety checks)",
    "gettid": "thread ids (ONNX Runtime's thread pool, glibc)",
    "clock_gettime": "timing; normally served by the vDSO, this is its fallback",
    "restart_syscall": "the kernel restarts a syscall interrupted by a signal",
    "set_robust_list": "glibc registers it in each new thread (see clone)",
    "rseq": "glibc registers restartable sequences in each new thread (see clone)",
    "exit": "a thread ends",
    "exit_group": "the worker ends",
}

#: Syscalls allowed only under an argument condition, with the condition and reason.
CONDITIONAL: dict[str, str] = {
    "read": "only on the control socket: receive requests",
    "write": "only on the control socket (replies) and fd 2 (stderr)",
    "mmap": "only without PROT_EXEC: malloc and NumPy allocate; no new code after lockdown",
    "mprotect": "only without PROT_EXEC: glibc grows malloc arenas; no new code (W^X)",
    "clone": "only with CLONE_THREAD: threads yes, processes never (fork, vfork, spawn)",
    "madvise": "only with an advice in MADVISE_ADVICE: hints about the caller's own pages",
    "tgkill": "only to the worker's own thread group: abort() and raise() signal themselves",
}

#: Syscalls that fail with ENOSYS instead of killing (so libc falls back to a checked one).
ENOSYS_LIST: dict[str, str] = {
    "clone3": "flags live in memory seccomp cannot read; glibc falls back to clone",
}

#: Allowed by the load-time filter only (between parsing the model and serving), with
#: the condition and reason; the run-time filter stacked on top ends them.
LOAD_EXTRAS: dict[str, str] = {
    "seccomp": "only SECCOMP_SET_MODE_FILTER, flags TSYNC/SPEC_ALLOW/TSYNC_ESRCH: "
    "install the run-time filter (a filter can only add restrictions)",
    "prlimit64": "only on the worker itself and RLIMIT_NPROC: NPROC goes to 0 once the "
    "warm-up created ONNX Runtime's threads",
    "mlockall": "only MCL_CURRENT|MCL_ONFAULT: lock what ONNX Runtime allocated while loading",
}

#: Added to the load-time filter of a worker that compiles its model for the engine cache
#: (ONNX Runtime writes the optimised model to ``/proc/self/fd/N`` of a memfd the
#: supervisor gave it). Only under Landlock, which leaves no file to open but such
#: internal ones: the worker never compiles without it (``docs/engine-cache.md``).
COMPILE_EXTRAS: dict[str, str] = {
    "openat": "only with flags O_WRONLY|O_CREAT|O_TRUNC (plus O_CLOEXEC/O_LARGEFILE): "
    "ONNX Runtime opens the artifact memfd by its /proc/self/fd path",
    "writev": "ONNX Runtime writes the artifact in one writev",
    "prlimit64": "only on the worker itself and RLIMIT_FSIZE: back to 0 once written",
}


#: Syscalls a GPU member may also make after lockdown, with the reason (never run on a
#: GPU: from NVIDIA's documentation, Chromium's GPU-process policy and gVisor's nvproxy;
#: to be corrected from a discovery run on the device).
GPU_ALLOWLIST: dict[str, str] = {
    "memfd_create": "the CUDA driver backs host-shared buffers with memfds (no path; "
    "Landlock does not mediate them, and need not)",
    "ftruncate": "size such a memfd (a device node or the socket refuses it: EINVAL)",
    "eventfd2": "CUDA's stream callbacks and its helper threads wake each other",
    "ppoll": "wait on syncpoint and fence descriptors and on those eventfds",
    "poll": "the same on x86_64 (aarch64 has only ppoll)",
    "nanosleep": "CUDA's spin-then-sleep synchronisation (cudaDeviceScheduleAuto)",
    "clock_nanosleep": "the same through glibc's nanosleep",
    "sched_getaffinity": "the CUDA driver reads the CPUs it may run on",
    "getcpu": "the CUDA driver asks which CPU a thread runs on",
    "fstat": "the CUDA driver checks descriptors it holds (a descriptor, never a path)",
}

#: GPU syscalls allowed only under an argument condition, with the condition and reason.
GPU_CONDITIONAL: dict[str, str] = {
    "ioctl": "only with fd equal to a descriptor the worker held on its device nodes at "
    "lockdown: CUDA's whole interface to the kernel driver; never on the socket or stderr",
    "sched_setaffinity": "only on the calling thread (pid 0): CUDA pins its own helper threads",
}

#: The ``madvise`` advice values the worker may give, with their value and reason. Any
#: other advice kills it: ``MADV_HWPOISON`` / ``MADV_SOFT_OFFLINE`` take pages out of
#: service (shared memory included), ``MADV_REMOVE`` punches holes in shared memory,
#: ``MADV_MERGEABLE`` opts pages into KSM deduplication (a cross-process side channel),
#: ``MADV_PAGEOUT`` / ``MADV_COLD`` push pages towards swap, ``MADV_DODUMP`` undoes
#: ``MADV_DONTDUMP``.
MADVISE_ADVICE: dict[str, tuple[int, str]] = {
    "MADV_NORMAL": (0, "reset an access hint on the caller's pages"),
    "MADV_RANDOM": (1, "access hint on the caller's pages"),
    "MADV_SEQUENTIAL": (2, "access hint on the caller's pages"),
    "MADV_WILLNEED": (3, "read-ahead hint on the caller's pages"),
    "MADV_DONTNEED": (4, "glibc returns freed memory and thread stacks; observed"),
    "MADV_FREE": (8, "lazy free of the caller's private pages (allocators other than glibc)"),
    "MADV_HUGEPAGE": (14, "NumPy asks for transparent huge pages on large arrays"),
    "MADV_NOHUGEPAGE": (15, "opt out of transparent huge pages"),
}

_CLONE_THREAD = 0x00010000
_PROT_EXEC = 0x4
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FLAGS_ALLOWED = 0x1 | 0x4 | 0x10  # TSYNC | SPEC_ALLOW | TSYNC_ESRCH
_RLIMIT_NPROC = 6
_RLIMIT_FSIZE = 1
_O_WRONLY_CREAT_TRUNC = 0o1 | 0o100 | 0o1000
_O_CLOEXEC_LARGEFILE = 0o2000000 | 0o100000
_MCL_CURRENT_ONFAULT = 0x1 | 0x4


def _resolvable(sc: Any, name: str) -> bool:
    try:
        sc.resolve_syscall(sc.system_arch(), name)
    except Exception:
        return False
    return True


def build_filter(
    *,
    ctl_fd: int,
    pid: int,
    kill_action: str = "kill_process",
    phase: str = "run",
    compile_output: bool = False,
    profile: str = "cpu",
    device_fds: Sequence[int] = (),
) -> Any:
    """Build (without loading) the allowlist filter for the native architecture.

    Args:
        ctl_fd: The worker's control socket (the only descriptor it may read; it may
            write there and to stderr).
        pid: The worker's pid (the only thread group ``tgkill`` may target).
        kill_action: ``"kill_process"`` (production), ``"log"`` (allow and log every
            unlisted syscall to the kernel's audit log) or ``"notify"`` (send every
            unlisted syscall to a listener, ``SECCOMP_RET_USER_NOTIF``, and allow
            ``sendmsg`` on the control socket so the worker can hand the listener to
            its supervisor; :mod:`~edgeguard.runtime.sandbox.discover`).
        phase: ``"run"`` (the run-time rules) or ``"load"`` (those plus
            :data:`LOAD_EXTRAS`, for parsing the model and warming up).
        compile_output: With ``phase="load"``, also :data:`COMPILE_EXTRAS` (a worker
            under Landlock that writes its compiled model to a memfd).
        profile: ``"cpu"`` or ``"gpu"`` (adds :data:`GPU_ALLOWLIST` and
            :data:`GPU_CONDITIONAL`).
        device_fds: For ``"gpu"``: the descriptors ``ioctl`` is allowed on.

    Returns:
        A ``pyseccomp.SyscallFilter``.

    Raises:
        MissingDependencyError: pyseccomp (or libseccomp.so.2) is not installed.
    """
    if phase not in ("run", "load"):
        raise ValueError(f"phase must be 'run' or 'load', got {phase!r}")
    if profile not in ("cpu", "gpu") or (device_fds and profile != "gpu"):
        raise ValueError(f"profile must be 'cpu' or 'gpu' (device_fds only for gpu): {profile!r}")
    if any(isinstance(fd, bool) or not isinstance(fd, int) or fd < 0 for fd in device_fds):
        raise ValueError(f"device_fds must be descriptor numbers, got {device_fds!r}")
    if {ctl_fd, 0, 1, 2} & set(device_fds):
        raise ValueError("ioctl is never allowed on the control socket or the standard streams")
    sc = require("pyseccomp", extra="sandbox", purpose="The seccomp layer of the sandbox")
    actions = {"kill_process": sc.KILL_PROCESS, "log": sc.LOG, "notify": sc.NOTIFY}
    if kill_action not in actions:
        raise ValueError(f"kill_action must be one of {sorted(actions)}, got {kill_action!r}")
    default = actions[kill_action]
    flt = sc.SyscallFilter(default)
    flt.set_attr(sc.Attr.CTL_TSYNC, 1)
    # The worker sets no_new_privs itself, before the first filter; libseccomp would
    # otherwise prctl() again, which the load-time filter does not allow.
    flt.set_attr(sc.Attr.CTL_NNP, 0)
    # Installing a filter makes Linux force the Speculative Store Bypass mitigation
    # (SSBD) on the task by default, which slowed model inference in the worker by
    # 10-20 % here. The worker holds nothing it may not read (its model, its I/O
    # buffers), so Spectre v4 inside it gains an attacker nothing: keep speculation.
    with contextlib.suppress(Exception):  # needs libseccomp >= 2.5 / kernel >= 4.17
        flt.set_attr(sc.Attr.CTL_SSB, 1)
    # A binary-tree filter: syscalls are matched in O(log n), not by a linear scan.
    with contextlib.suppress(Exception):
        flt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    for name in ALLOWLIST:
        if _resolvable(sc, name):
            flt.add_rule(sc.ALLOW, name)
    flt.add_rule(sc.ALLOW, "read", sc.Arg(0, sc.EQ, ctl_fd))
    flt.add_rule(sc.ALLOW, "write", sc.Arg(0, sc.EQ, ctl_fd))
    flt.add_rule(sc.ALLOW, "write", sc.Arg(0, sc.EQ, 2))
    flt.add_rule(sc.ALLOW, "mmap", sc.Arg(2, sc.MASKED_EQ, _PROT_EXEC, 0))
    flt.add_rule(sc.ALLOW, "mprotect", sc.Arg(2, sc.MASKED_EQ, _PROT_EXEC, 0))
    flt.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, _CLONE_THREAD))
    flt.add_rule(sc.ALLOW, "tgkill", sc.Arg(0, sc.EQ, pid))
    for advice, _reason in MADVISE_ADVICE.values():  # rules on one syscall are OR-ed
        flt.add_rule(sc.ALLOW, "madvise", sc.Arg(2, sc.EQ, advice))
    for name in ENOSYS_LIST:
        if _resolvable(sc, name):
            flt.add_rule(sc.ERRNO(errno.ENOSYS), name)
    if profile == "gpu":
        for name in GPU_ALLOWLIST:
            if _resolvable(sc, name):
                flt.add_rule(sc.ALLOW, name)
        for fd in sorted(set(device_fds)):  # rules on one syscall are OR-ed
            flt.add_rule(sc.ALLOW, "ioctl", sc.Arg(0, sc.EQ, fd))
        flt.add_rule(sc.ALLOW, "sched_setaffinity", sc.Arg(0, sc.EQ, 0))
    if kill_action == "notify":
        flt.add_rule(sc.ALLOW, "sendmsg", sc.Arg(0, sc.EQ, ctl_fd))
    if phase == "load":
        flt.add_rule(
            sc.ALLOW,
            "seccomp",
            sc.Arg(0, sc.EQ, _SECCOMP_SET_MODE_FILTER),
            sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF & ~_SECCOMP_FLAGS_ALLOWED, 0),
        )
        flt.add_rule(sc.ALLOW, "prlimit64", sc.Arg(0, sc.EQ, 0), sc.Arg(1, sc.EQ, _RLIMIT_NPROC))
        flt.add_rule(sc.ALLOW, "mlockall", sc.Arg(0, sc.EQ, _MCL_CURRENT_ONFAULT))
        if compile_output:
            mask = 0xFFFFFFFF & ~_O_CLOEXEC_LARGEFILE
            flt.add_rule(sc.ALLOW, "openat", sc.Arg(2, sc.MASKED_EQ, mask, _O_WRONLY_CREAT_TRUNC))
            flt.add_rule(sc.ALLOW, "writev")
            flt.add_rule(
                sc.ALLOW, "prlimit64", sc.Arg(0, sc.EQ, 0), sc.Arg(1, sc.EQ, _RLIMIT_FSIZE)
            )
    return flt


def notify_fd(flt: Any) -> int:
    """The notification listener of a loaded ``kill_action="notify"`` filter.

    Raises:
        OSError: The filter has no listener (not loaded, or another action).
    """
    sc = require("pyseccomp", extra="sandbox", purpose="The seccomp layer of the sandbox")
    fd = int(sc._libseccomp.seccomp_notify_fd(flt._filter))
    if fd < 0:
        raise OSError(errno.EINVAL, "the seccomp filter has no notification listener")
    return fd


def load_filter(*, ctl_fd: int) -> None:
    """Load the allowlist into the calling process, all threads (irreversible).

    Raises:
        MissingDependencyError: pyseccomp is not installed.
        OSError: The kernel refused the filter.
    """
    build_filter(ctl_fd=ctl_fd, pid=os.getpid()).load()

"""Raw Linux primitives of the sandbox: prctl, capabilities, Landlock, unshare, rlimits, mlock.

Layer: :mod:`edgeguard.runtime.sandbox` (private). Used by the host probe (read-only
questions) and by the worker's lockdown (irreversible changes to the *calling* process).
Nothing here imports numpy or an inference library.

Landlock is driven through its three system calls, which glibc does not wrap; the
syscall numbers are the same on x86_64 and aarch64 (the unified numbering of syscalls
added after 5.x). ctypes and the stdlib only.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import resource
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CLONE_NEWNET",
    "CLONE_NEWUSER",
    "MCL_CURRENT",
    "MCL_FUTURE",
    "MCL_ONFAULT",
    "LandlockResult",
    "drop_privileges",
    "get_dumpable",
    "get_no_new_privs",
    "landlock_abi",
    "landlock_file_rights",
    "landlock_restrict_self",
    "map_locked",
    "mlockall",
    "proc_limits",
    "proc_status",
    "seccomp_mode",
    "set_dumpable",
    "set_no_new_privs",
    "thread_count",
    "unmap",
    "unshare",
]

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000

MCL_CURRENT = 1
MCL_FUTURE = 2
MCL_ONFAULT = 4

_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4
_PR_GET_SECCOMP = 21
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_NO_NEW_PRIVS = 39
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapAmb")

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_RULE_PATH_BENEATH = 1
_LANDLOCK_CREATE_RULESET_VERSION = 1 << 0

# Filesystem access rights per Landlock ABI (include/uapi/linux/landlock.h).
_FS_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_NET_TCP = (1 << 0) | (1 << 1)  # BIND_TCP | CONNECT_TCP, ABI 4
_SCOPE_ALL = (1 << 0) | (1 << 1)  # ABSTRACT_UNIX_SOCKET | SIGNAL, ABI 6


_LITTLE = sys.byteorder == "little"


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    libc = _libc()
    res: int = libc.prctl(
        ctypes.c_int(option),
        ctypes.c_ulong(arg2),
        ctypes.c_ulong(arg3),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )
    if res < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return res


def set_no_new_privs() -> None:
    """Set ``no_new_privs`` on the calling thread (inherited by threads created later)."""
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)


def get_no_new_privs() -> bool:
    """Whether the calling thread has ``no_new_privs``."""
    return _prctl(_PR_GET_NO_NEW_PRIVS) == 1


def set_dumpable(on: bool) -> None:
    """PR_SET_DUMPABLE: non-dumpable processes dump no core and cannot be traced by peers."""
    _prctl(_PR_SET_DUMPABLE, 1 if on else 0)


def get_dumpable() -> bool:
    """Whether the calling process is dumpable."""
    return _prctl(_PR_GET_DUMPABLE) == 1


def proc_status(pid: int | str = "self") -> dict[str, str]:
    """The fields of ``/proc/<pid>/status`` (``Uid``, ``CapEff``, ``Seccomp`` ...), as text.

    Raises:
        OSError: The process is gone or the file cannot be read.
    """
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
    return out


def proc_limits(pid: int | str = "self") -> dict[str, tuple[str, str]]:
    """``/proc/<pid>/limits``: limit name (``Max core file size``) -> (soft, hard) as text.

    Raises:
        OSError: The process is gone or the file cannot be read.
    """
    out: dict[str, tuple[str, str]] = {}
    with open(f"/proc/{pid}/limits", encoding="ascii", errors="replace") as f:
        next(f, None)  # the header line
        for line in f:
            name, fields = line[:26].strip(), line[26:].split()
            if name and len(fields) >= 2:
                out[name] = (fields[0], fields[1])
    return out


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _capset_none() -> None:
    """Empty the effective, permitted and inheritable capability sets (always allowed)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc().capset(ctypes.byref(header), data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"capset: {os.strerror(e)}")


def _drop_bounding_set() -> None:
    """Drop every capability from the bounding set (needs CAP_SETPCAP; else left as is)."""
    for cap in range(64):
        try:
            _prctl(_PR_CAPBSET_DROP, cap)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # past the kernel's last capability
                return
            if exc.errno == errno.EPERM:  # no CAP_SETPCAP: nothing to gain with no_new_privs
                return
            raise


def drop_privileges(uid: int, gid: int, groups: Sequence[int] = ()) -> str:
    """Give up root and every capability, for good; returns what was done.

    A process running as root (any of its uids 0) switches all its uids to ``uid`` and
    all its gids to ``gid``, with exactly ``groups`` as supplementary groups (none by
    default; a GPU member keeps the groups that own its device nodes). Any process then empties its
    capability sets (effective, permitted, inheritable, ambient) and, where it may,
    the bounding set; a process in a user namespace of its own loses the capabilities
    it has there. Call it while single-threaded: the credentials of the calling thread
    change (glibc's set*id wrappers do broadcast them to every thread).

    Raises:
        OSError: A step failed, or ``/proc/self/status`` still shows a uid 0 or a
            capability afterwards.
    """
    before = proc_status()
    root = "0" in before.get("Uid", "").split()
    done = []
    if any(int(before.get(k, "0"), 16) for k in _CAP_FIELDS) or root:
        _drop_bounding_set()
    if root:
        if 0 in groups or uid == 0 or gid == 0:
            raise OSError(errno.EPERM, "refusing to keep uid 0, gid 0 or group 0")
        os.setgroups(sorted(set(groups)))
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        done.append(f"uid {uid}, gid {gid}")
        if groups:
            done.append("groups " + ",".join(str(g) for g in sorted(set(groups))))
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    _capset_none()
    after = proc_status()
    left = [k for k in _CAP_FIELDS if int(after.get(k, "0"), 16)]
    if left or "0" in after.get("Uid", "").split():
        raise OSError(
            errno.EPERM, f"still privileged: Uid {after.get('Uid')}, capabilities in {left}"
        )
    if root and {int(g) for g in after.get("Groups", "").split()} != set(groups):
        raise OSError(errno.EPERM, f"supplementary groups {after.get('Groups')!r}, not {groups}")
    done.append("no capabilities")
    return ", ".join(done)


_PROT_READ = 0x1
_MAP_SHARED = 0x01
_MADV_DONTDUMP = 16


def map_locked(fd: int, size: int) -> tuple[int, str | None]:
    """Map ``size`` bytes of ``fd`` read-only and shared, out of core dumps, locked in RAM.

    For a sealed memfd (no writable mapping is possible): its pages are shared memory
    that the kernel may swap out while nobody has them locked.

    Returns:
        The mapping's address (release it with :func:`unmap`) and None when the pages
        are locked, or why they are not (the mapping exists either way).

    Raises:
        OSError: The mapping itself failed.
    """
    libc = _libc()
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    )
    addr = libc.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        e = ctypes.get_errno()
        raise OSError(e, f"mmap: {os.strerror(e)}")
    libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(size), ctypes.c_int(_MADV_DONTDUMP))
    if libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(size)) != 0:
        e = ctypes.get_errno()
        soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft / 2**20:g} MiB"
        return addr, f"mlock: {os.strerror(e)} (RLIMIT_MEMLOCK {limit}, {size / 2**20:.1f} MiB)"
    return addr, None


def unmap(addr: int, size: int) -> None:
    """Unmap a mapping made by :func:`map_locked` (this unlocks it too)."""
    _libc().munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))


def mlockall(flags: int) -> None:
    """``mlockall(2)``: lock the process's pages (``MCL_*`` flags).

    Raises:
        OSError: ``RLIMIT_MEMLOCK`` is too small (ENOMEM), or EPERM.
    """
    if _libc().mlockall(ctypes.c_int(flags)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mlockall: {os.strerror(e)}")


def seccomp_mode() -> int | None:
    """The calling thread's seccomp mode (0 none, 2 filter), None if the kernel lacks it."""
    try:
        return _prctl(_PR_GET_SECCOMP)
    except OSError:
        return None


def _syscall(nr: int, *args: Any) -> int:
    res: int = _libc().syscall(ctypes.c_long(nr), *args)
    return res


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    res = _syscall(
        _SYS_LANDLOCK_CREATE_RULESET,
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
    )
    return res if res > 0 else 0


@dataclass(frozen=True)
class LandlockResult:
    """What :func:`landlock_restrict_self` handled.

    Attributes:
        abi: ABI version used.
        fs_rights: Bit mask of handled filesystem rights (all of the ABI's).
        net_rights: Bit mask of handled TCP rights (0 before ABI 4).
        scoped: Bit mask of scopes (abstract UNIX sockets, signals; 0 before ABI 6).
        paths: The paths a rule grants access to (read, write and, from ABI 5, device
            ioctl), in the order given; empty for "no filesystem at all".
        missing: Paths asked for that did not exist (no rule was added for them).
    """

    abi: int
    fs_rights: int
    net_rights: int
    scoped: int
    paths: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


def landlock_rights(abi: int) -> tuple[int, int, int]:
    """(fs, net, scoped) rights to handle for ``abi``: every right the ABI knows."""
    fs = _FS_ABI1
    if abi >= 2:
        fs |= _FS_REFER
    if abi >= 3:
        fs |= _FS_TRUNCATE
    if abi >= 5:
        fs |= _FS_IOCTL_DEV
    net = _NET_TCP if abi >= 4 else 0
    scoped = _SCOPE_ALL if abi >= 6 else 0
    return fs, net, scoped


def landlock_file_rights(abi: int) -> int:
    """The rights a rule of :func:`landlock_restrict_self` grants on one file or node."""
    return _FS_READ_FILE | _FS_WRITE_FILE | (_FS_IOCTL_DEV if abi >= 5 else 0)


def _add_path_rule(ruleset: int, path: str, rights: int) -> bool:
    """Add one PATH_BENEATH rule; False when ``path`` does not exist."""
    try:
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        # struct landlock_path_beneath_attr { __u64 allowed_access; __s32 parent_fd; } packed
        attr = ctypes.create_string_buffer(
            rights.to_bytes(8, "little" if _LITTLE else "big")
            + pfd.to_bytes(4, "little" if _LITTLE else "big", signed=True),
            12,
        )
        res = _syscall(
            _SYS_LANDLOCK_ADD_RULE,
            ctypes.c_int(ruleset),
            ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH),
            attr,
            ctypes.c_uint32(0),
        )
        if res < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"landlock_add_rule {path}: {os.strerror(e)}")
    finally:
        os.close(pfd)
    return True


def landlock_restrict_self(abi: int, *, rules: Sequence[str] = ()) -> LandlockResult:
    """Restrict the calling thread (and threads it creates later) to ``rules``' files only.

    Every filesystem right of ``abi`` is handled, so no path can be opened, created,
    removed or executed, except that each existing path in ``rules`` (a GPU member's
    device nodes) may be opened for reading and writing and, from ABI 5 on, take device
    ioctls (:func:`landlock_file_rights`); a path that does not exist gets no rule. From
    ABI 4 on TCP bind/connect are denied too, from ABI 6 on signals and abstract UNIX
    sockets outside the domain. Landlock does not mediate descriptors opened before, nor
    memfds. Requires ``no_new_privs`` (or CAP_SYS_ADMIN).

    Raises:
        OSError: The kernel refused (Landlock missing, disabled, or no_new_privs unset),
            or a rule could not be added.
    """
    if abi < 1:
        raise OSError(errno.EOPNOTSUPP, "Landlock is not available")
    fs, net, scoped = landlock_rights(abi)
    words = [fs] + ([net] if abi >= 4 else []) + ([scoped] if abi >= 6 else [])
    attr = (ctypes.c_uint64 * len(words))(*words)
    fd = _syscall(
        _SYS_LANDLOCK_CREATE_RULESET,
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
        ctypes.c_uint32(0),
    )
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"landlock_create_ruleset: {os.strerror(e)}")
    added: list[str] = []
    missing: list[str] = []
    try:
        for path in rules:
            (added if _add_path_rule(fd, path, landlock_file_rights(abi)) else missing).append(path)
        res = _syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(fd), ctypes.c_uint32(0))
        if res < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"landlock_restrict_self: {os.strerror(e)}")
    finally:
        os.close(fd)
    return LandlockResult(
        abi=abi,
        fs_rights=fs,
        net_rights=net,
        scoped=scoped,
        paths=tuple(added),
        missing=tuple(missing),
    )


def unshare(flags: int) -> None:
    """``unshare(2)`` through libc (``os.unshare`` exists only from Python 3.12).

    Raises:
        OSError: The kernel refused (EPERM without privilege, EINVAL when threaded).
    """
    if _libc().unshare(ctypes.c_int(flags)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"unshare: {os.strerror(e)}")


def thread_count() -> int:
    """Threads of the calling process (from ``/proc/self/task``)."""
    return len(os.listdir("/proc/self/task"))


def set_rlimit(which: int, value: int) -> None:
    """Lower both soft and hard limit of ``which`` to ``value`` (never raises them)."""
    _soft, hard = resource.getrlimit(which)
    new_hard = value if hard == resource.RLIM_INFINITY else min(hard, value)
    resource.setrlimit(which, (min(value, new_hard), new_hard))

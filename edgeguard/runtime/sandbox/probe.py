"""Which isolation layers this host offers, and whether a sandbox policy can be met.

Layer: :mod:`edgeguard.runtime.sandbox` (host inspection; stdlib only, plus the optional
``pyseccomp`` binding, imported lazily). :func:`probe_host` asks the kernel directly:

* seccomp: the ``Seccomp:`` field of ``/proc/self/status`` and ``PR_GET_SECCOMP``, and
  whether the ``pyseccomp`` binding imports (it needs the system ``libseccomp.so.2``);
* Landlock: the ABI version from ``landlock_create_ruleset(NULL, 0,
  LANDLOCK_CREATE_RULESET_VERSION)``;
* namespaces: a throwaway child process tries ``unshare(CLONE_NEWNET)`` and
  ``unshare(CLONE_NEWUSER)`` (the probing process itself is never changed);
* cgroup v2: whether our cgroup delegates the memory controller and is writable;
* ``no_new_privs``: whether ``PR_GET_NO_NEW_PRIVS`` works.

:func:`check_policy` turns a :class:`~edgeguard.policy.isolation.SandboxPolicy`
and the capabilities into a per-layer plan, raising
:class:`~edgeguard.errors.PolicyError` naming every required layer the host lacks.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeguard.errors import PolicyError
from edgeguard.policy.isolation import LAYERS, OFF, REQUIRED, SandboxPolicy
from edgeguard.runtime.sandbox import _cgroup, _linux

__all__ = ["HostCapabilities", "check_policy", "probe_host"]

_CAP_SYS_ADMIN = 21
_CAP_SYS_RESOURCE = 24

# Run in a throwaway interpreter: report whether unshare(NEWNET) / unshare(NEWUSER) work.
_NS_PROBE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def tryit(flags):
    if libc.unshare(ctypes.c_int(flags)) == 0:
        return "ok"
    return os.strerror(ctypes.get_errno())
print(tryit(0x40000000))
print(tryit(0x10000000))
"""


@dataclass(frozen=True)
class HostCapabilities:
    """Isolation features of this host, as probed.

    Attributes:
        kernel: ``uname -r``.
        machine: ``uname -m`` (x86_64, aarch64).
        euid: Effective user id of the probing process.
        seccomp_kernel: The kernel supports seccomp filters.
        seccomp_binding: The ``pyseccomp`` binding and ``libseccomp.so.2`` load.
        seccomp_detail: libseccomp API level, or why the binding failed.
        landlock_abi: Landlock ABI version (0: unavailable or disabled).
        netns: How a new network namespace can be had: ``"direct"`` (privileged),
            ``"userns"`` (inside a new user namespace) or None.
        userns: Unprivileged user namespaces work.
        netns_detail: The kernel's answers to the unshare attempts.
        cgroup_path: Our cgroup v2 directory, or None.
        cgroup_memory: Leaves with ``memory.max`` can be created under it.
        cgroup_detail: Why (not).
        no_new_privs: ``PR_SET_NO_NEW_PRIVS`` is supported.
        nproc_enforced: RLIMIT_NPROC binds the probing process (not for root or
            CAP_SYS_RESOURCE). Workers are bound either way: they give up root and
            every capability before they load a model.
    """

    kernel: str
    machine: str
    euid: int
    seccomp_kernel: bool
    seccomp_binding: bool
    seccomp_detail: str
    landlock_abi: int
    netns: str | None
    userns: bool
    netns_detail: str
    cgroup_path: str | None
    cgroup_memory: bool
    cgroup_detail: str
    no_new_privs: bool
    nproc_enforced: bool

    def available(self, layer: str) -> bool:
        """Whether ``layer`` (one of :data:`~edgeguard.policy.isolation.LAYERS`) works."""
        if layer == "seccomp":
            return self.seccomp_kernel and self.seccomp_binding and self.no_new_privs
        if layer == "landlock":
            return self.landlock_abi >= 1 and self.no_new_privs
        if layer == "netns":
            return self.netns is not None
        if layer == "rlimits":
            return True
        if layer == "cgroup":
            return self.cgroup_memory
        raise PolicyError(f"unknown sandbox layer {layer!r}")

    def detail(self, layer: str) -> str:
        """One line on ``layer`` for reports."""
        if layer == "seccomp":
            k = "kernel ok" if self.seccomp_kernel else "kernel lacks seccomp filters"
            return f"{k}; binding: {self.seccomp_detail}"
        if layer == "landlock":
            return f"ABI {self.landlock_abi}" if self.landlock_abi else "not available"
        if layer == "netns":
            return f"{self.netns or 'unavailable'} ({self.netns_detail})"
        if layer == "rlimits":
            return "RLIMIT_NOFILE, RLIMIT_NPROC=0, RLIMIT_FSIZE=0 (workers run without root)"
        if layer == "cgroup":
            return self.cgroup_detail
        raise PolicyError(f"unknown sandbox layer {layer!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form, with a per-layer summary under ``"layers"``."""
        return {
            "kernel": self.kernel,
            "machine": self.machine,
            "euid": self.euid,
            "seccomp_kernel": self.seccomp_kernel,
            "seccomp_binding": self.seccomp_binding,
            "seccomp_detail": self.seccomp_detail,
            "landlock_abi": self.landlock_abi,
            "netns": self.netns,
            "userns": self.userns,
            "netns_detail": self.netns_detail,
            "cgroup_path": self.cgroup_path,
            "cgroup_memory": self.cgroup_memory,
            "cgroup_detail": self.cgroup_detail,
            "no_new_privs": self.no_new_privs,
            "nproc_enforced": self.nproc_enforced,
            "layers": {
                layer: {"available": self.available(layer), "detail": self.detail(layer)}
                for layer in LAYERS
            },
        }


def _status_fields() -> dict[str, str]:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        out[k.strip()] = v.strip()
    return out


def _seccomp_binding() -> tuple[bool, str]:
    try:
        import pyseccomp
    except (ImportError, OSError) as exc:  # OSError: libseccomp.so.2 missing
        return False, f"pyseccomp unavailable: {type(exc).__name__}: {exc}"
    try:
        return True, f"pyseccomp with libseccomp API level {pyseccomp.get_api()}"
    except Exception as exc:  # an old libseccomp without seccomp_api_get
        return True, f"pyseccomp (API level unknown: {type(exc).__name__})"


def _probe_namespaces() -> tuple[str | None, bool, str]:
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _NS_PROBE],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, False, f"probe failed: {exc}"
    lines = proc.stdout.split("\n")
    if proc.returncode != 0 or len(lines) < 2:
        return None, False, f"probe failed: {proc.stderr.strip()[:200]}"
    net, user = lines[0], lines[1]
    detail = f"unshare(NEWNET): {net}; unshare(NEWUSER): {user}"
    if net == "ok":
        return "direct", user == "ok", detail
    if user == "ok":
        return "userns", True, detail
    return None, False, detail


def probe_host() -> HostCapabilities:
    """Probe this host's isolation features (takes ~50 ms: one throwaway child)."""
    status = _status_fields()
    seccomp_kernel = "Seccomp" in status and _linux.seccomp_mode() is not None
    binding, binding_detail = _seccomp_binding()
    try:
        _linux.get_no_new_privs()
        nnp = True
    except OSError:
        nnp = False
    netns, userns, ns_detail = _probe_namespaces()
    cg = _cgroup.find_own_cgroup2()
    if cg is None:
        cg_ok, cg_detail = False, "no cgroup v2 hierarchy mounted"
    else:
        cg_ok, cg_detail = _cgroup.cgroup_memory_delegated(cg)
    try:
        cap_eff = int(status.get("CapEff", "0"), 16)
    except ValueError:
        cap_eff = 0
    privileged = bool(cap_eff & ((1 << _CAP_SYS_ADMIN) | (1 << _CAP_SYS_RESOURCE)))
    return HostCapabilities(
        kernel=platform.release(),
        machine=platform.machine(),
        euid=os.geteuid(),
        seccomp_kernel=seccomp_kernel,
        seccomp_binding=binding,
        seccomp_detail=binding_detail,
        landlock_abi=_linux.landlock_abi(),
        netns=netns,
        userns=userns,
        netns_detail=ns_detail,
        cgroup_path=str(cg) if cg is not None else None,
        cgroup_memory=cg_ok,
        cgroup_detail=cg_detail,
        no_new_privs=nnp,
        nproc_enforced=os.geteuid() != 0 and not privileged,
    )


def check_policy(policy: SandboxPolicy, caps: HostCapabilities) -> dict[str, str]:
    """Plan the layers: ``"apply"``, ``"skip"`` (best effort, unavailable) or ``"off"``.

    Raises:
        PolicyError: A layer the policy requires is unavailable; the message lists all.
    """
    plan: dict[str, str] = {}
    missing: list[str] = []
    for layer in LAYERS:
        mode = policy.mode(layer)
        if mode == OFF:
            plan[layer] = "off"
        elif caps.available(layer):
            plan[layer] = "apply"
        elif mode == REQUIRED:
            missing.append(f"{layer} ({caps.detail(layer)})")
        else:
            plan[layer] = "skip"
    if missing:
        raise PolicyError(
            "the sandbox policy requires layers this host lacks: " + "; ".join(missing),
            hint="run 'edgeguard sandbox-check' on the device, or relax the bundle's policy",
        )
    return plan

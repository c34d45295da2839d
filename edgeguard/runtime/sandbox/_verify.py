"""What the supervisor checks of a worker before its first request: the kernel's word.

Layer: :mod:`edgeguard.runtime.sandbox` (private; supervisor side, stdlib only). A worker
reports the layers it applied, but a worker is exactly what the sandbox distrusts: a
fake or broken one could report layers it never applied. :func:`check_worker` reads
what the kernel says about the process instead:

* ``/proc/<pid>/status``: ``NoNewPrivs`` 1; ``CapInh``, ``CapPrm``, ``CapEff`` and
  ``CapAmb`` 0; no uid 0 (and, for a worker started by root, no gid 0 and exactly the
  supplementary groups it was given: none, or a GPU member's device-node groups);
  ``Seccomp`` 2 when the policy asks for seccomp or the worker says it applied it;
* the owner of ``/proc/<pid>/status``: root while the worker's uid is not, which is how
  the kernel shows a non-dumpable process;
* ``/proc/<pid>/limits``: core file size 0 always; when the rlimits layer is in force,
  open files at most the policy's limit, processes and file size 0;
* ``/proc/<pid>/ns/net``: another network namespace than the supervisor's, when the
  netns layer is in force (readable only with ``CAP_SYS_PTRACE`` over the worker, since
  it is non-dumpable: otherwise recorded as self-reported).

Landlock cannot be checked from outside: the kernel shows no process's Landlock domain,
so it stays self-reported (recorded as such). The checks hold for the worker's life
once they pass: none of these states can be undone by the process.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from edgeguard.runtime.sandbox import _linux

__all__ = ["WorkerCheck", "check_worker"]

_CAPS = ("CapInh", "CapPrm", "CapEff", "CapAmb")


@dataclass(frozen=True)
class WorkerCheck:
    """The kernel's view of one worker against the policy.

    Attributes:
        facts: What was verified (or is only self-reported), per item, for the event log.
        problems: Every mismatch; empty when the worker may serve.
    """

    facts: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def _active(reported: Mapping[str, str], layer: str) -> bool:
    return str(reported.get(layer, "")).startswith("active")


def _in_force(
    layer: str, plan: Mapping[str, str], required: Collection[str], reported: Mapping[str, str]
) -> bool:
    """Whether ``layer`` must show: planned, and required or claimed by the worker."""
    return plan.get(layer) == "apply" and (layer in required or _active(reported, layer))


def check_worker(
    pid: int,
    *,
    plan: Mapping[str, str],
    required: Collection[str],
    reported: Mapping[str, str],
    max_open_files: int,
    started_by_root: bool,
    groups: Collection[int] = (),
) -> WorkerCheck:
    """Compare what the kernel shows of worker ``pid`` with the policy and its report.

    Args:
        pid: The worker's process id (a child of the caller).
        plan: The per-layer plan (``apply``, ``skip``, ``off``).
        required: Layers the policy requires.
        reported: The layer states the worker reported in its ``ready`` message.
        max_open_files: The policy's ``RLIMIT_NOFILE``.
        started_by_root: The worker was started by root (it must have switched uid,
            gid and groups).
        groups: The supplementary groups it may keep (never gid 0).

    Returns:
        The facts and the problems; a problem means the worker must not serve.
    """
    facts: dict[str, str] = {}
    problems: list[str] = []
    try:
        status = _linux.proc_status(pid)
        limits = _linux.proc_limits(pid)
        owner = os.stat(f"/proc/{pid}/status").st_uid
    except OSError as exc:
        return WorkerCheck(problems=(f"cannot read /proc/{pid}: {exc.strerror or exc}",))

    if status.get("NoNewPrivs") != "1":
        problems.append(f"NoNewPrivs {status.get('NoNewPrivs')}")
    caps = {k: status.get(k, "?") for k in _CAPS}
    held = {k: v for k, v in caps.items() if v != "0" * len(v) or not v}
    if held:
        problems.append("capabilities " + ", ".join(f"{k} {v}" for k, v in held.items()))
    uids, gids = status.get("Uid", "").split(), status.get("Gid", "").split()
    if not uids or "0" in uids:
        problems.append(f"Uid {' '.join(uids) or '?'}")
    held_groups = status.get("Groups", "").split()
    if started_by_root and (
        not gids
        or "0" in gids
        or not all(g.isdigit() and g != "0" for g in held_groups)
        or {int(g) for g in held_groups} != set(groups)
    ):
        problems.append(f"Gid {' '.join(gids) or '?'}, Groups {status.get('Groups', '?')!r}")
    if not held and uids and "0" not in uids:
        facts["privileges"] = f"uid {uids[0]}, gid {gids[0] if gids else '?'}, no capabilities"
        if held_groups:
            facts["groups"] = " ".join(held_groups)
    if status.get("NoNewPrivs") == "1":
        facts["no_new_privs"] = "1"

    if uids and "0" not in uids and owner != 0:
        problems.append(f"dumpable (its /proc files belong to uid {owner})")
    elif uids and "0" not in uids:
        facts["dumpable"] = "no"
    core = limits.get("Max core file size")
    if core != ("0", "0"):
        problems.append(f"core file size {core}")
    else:
        facts["core"] = "0"

    mode = status.get("Seccomp", "?")
    if _in_force("seccomp", plan, required, reported):
        if mode != "2":
            problems.append(f"Seccomp {mode}, the policy asks for a filter")
        else:
            facts["seccomp"] = f"mode 2, {status.get('Seccomp_filters', '?')} filter(s)"

    if _in_force("rlimits", plan, required, reported):
        bad = []
        nofile = limits.get("Max open files", ("?", "?"))
        if not all(v.isdigit() and int(v) <= max_open_files for v in nofile):
            bad.append(f"open files {nofile}")
        for name in ("Max processes", "Max file size"):
            if limits.get(name) != ("0", "0"):
                bad.append(f"{name.lower()[4:]} {limits.get(name)}")
        if bad:
            problems.append("rlimits: " + ", ".join(bad))
        else:
            facts["rlimits"] = f"open files {nofile[0]}, processes 0, file size 0"

    if _in_force("netns", plan, required, reported):
        try:
            theirs, ours = os.readlink(f"/proc/{pid}/ns/net"), os.readlink("/proc/self/ns/net")
        except PermissionError:
            facts["netns"] = "self-reported (no CAP_SYS_PTRACE over the non-dumpable worker)"
        except OSError as exc:
            problems.append(f"network namespace unreadable: {exc.strerror}")
        else:
            if theirs == ours:
                problems.append("in the supervisor's network namespace")
            else:
                facts["netns"] = f"own ({theirs})"

    facts["locked_memory"] = status.get("VmLck", "?")
    if plan.get("landlock") == "apply":
        facts["landlock"] = "self-reported (the kernel shows no process's Landlock domain)"
    return WorkerCheck(facts=facts, problems=tuple(problems))

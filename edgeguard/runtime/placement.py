"""Honouring a member's placement on this host (runtime layer; no inference imports).

A policy's :class:`~edgeguard.policy.runtime.MemberSpec` says where each member
runs (``cpu``, ``cpu:LIST``, ``gpuN``, ``dlaN``; grammar in
:class:`~edgeguard.policy.runtime.Placement`). This module turns that into what
the backends and executors need, and refuses what this host cannot honour:
a silently moved member would break the diversity the ensemble was built for
(two members "on GPU and DLA" that both run on the same CPU share every
common-cause fault).

* :func:`member_cpus`: the pinned cores of each member, checked against the
  cores this process may use (:class:`~edgeguard.errors.PolicyError` otherwise).
* :func:`loader_options`: keyword options of
  :func:`edgeguard.backends.load_backend` for one member: ONNX Runtime thread
  count and pinning for CPU members, the TensorRT execution provider on a GPU
  or DLA core for ONNX members placed there, the device or DLA core of a
  TensorRT engine member.
* :func:`pin_current_thread`: used by the executors on the thread (or worker
  process) that calls the member.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

from edgeguard.errors import PolicyError
from edgeguard.policy.runtime import MemberSpec, Placement, RuntimePolicy

__all__ = [
    "cpu_member_count",
    "fallback_options",
    "loader_options",
    "member_cpus",
    "pin_current_thread",
    "usable_cpus",
]


def usable_cpus() -> frozenset[int]:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def pin_current_thread(cpus: Collection[int]) -> None:
    """Restrict the calling thread (and threads it creates later) to ``cpus``.

    Raises:
        PolicyError: The OS cannot pin threads, or refuses these cores.
    """
    if not hasattr(os, "sched_setaffinity"):
        raise PolicyError("pinning a member to CPU cores needs sched_setaffinity (Linux)")
    try:
        os.sched_setaffinity(0, frozenset(cpus))
    except OSError as exc:
        raise PolicyError(f"cannot pin to CPUs {sorted(cpus)}: {exc.strerror}") from exc


def _check_cpus(name: str, where: Placement, usable: frozenset[int]) -> None:
    assert where.cpus is not None
    missing = sorted(where.cpus - usable)
    if missing:
        raise PolicyError(
            f"member {name!r} is placed on {where} but this process may use only CPUs "
            f"{sorted(usable)} (missing {missing})",
            hint="rebuild the bundle with a placement this device has, or widen the "
            "process's CPU affinity (taskset, cpuset cgroup)",
        )
    if not hasattr(os, "sched_setaffinity"):
        raise PolicyError(f"member {name!r} is pinned to CPUs ({where}): needs Linux")


def member_cpus(policy: RuntimePolicy) -> dict[str, frozenset[int]]:
    """Pinned cores by member name (members placed on plain ``cpu`` are absent).

    Raises:
        PolicyError: A member is pinned to a core this process may not use.
    """
    usable = usable_cpus()
    out: dict[str, frozenset[int]] = {}
    for spec in policy.members:
        where = spec.where
        if where.cpus is not None:
            _check_cpus(spec.name, where, usable)
            out[spec.name] = where.cpus
    return out


def loader_options(
    spec: MemberSpec,
    fmt: str,
    *,
    cpu_members: int,
    sandboxed: bool,
    precisions: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Options of :func:`~edgeguard.backends.load_backend` that place one member.

    Args:
        spec: The member.
        fmt: Its format (``"onnx"`` or ``"trt-engine"``).
        cpu_members: How many members of the policy run on the CPU concurrently
            (their ONNX Runtime thread pools share the usable cores).
        sandboxed: The member runs in a sandboxed worker process. An unpinned
            member there gets one thread (the worker process is its own; a pinned
            member gets one per core, all inside the worker's Landlock domain,
            ``docs/isolation.md``).
        precisions: The member's reduced precisions from its signed I/O contract
            (accelerator placements set TensorRT's precision flags from them).

    Returns:
        Keyword options for the loader.

    Raises:
        PolicyError: The placement cannot be honoured for this format or host.
    """
    where = spec.where
    if fmt == "trt-engine":
        if not where.accelerator:
            raise PolicyError(
                f"member {spec.name!r} is a TensorRT engine but is placed on {where}",
                hint="an engine runs on a GPU or DLA core only",
            )
        if where.unit == "dla":
            return {"dla_core": where.index}
        return {"device_id": where.index}
    if fmt != "onnx":
        return {}
    if where.unit == "dla":
        return {"dla_core": where.index, "intra_op_threads": 1, "precisions": list(precisions)}
    if where.unit == "gpu":
        return {"gpu": where.index, "intra_op_threads": 1, "precisions": list(precisions)}
    if where.cpus is not None:
        _check_cpus(spec.name, where, usable_cpus())
        opts: dict[str, Any] = {"intra_op_threads": len(where.cpus), "inter_op_threads": 1}
        if not sandboxed:  # a sandboxed worker pins its whole process instead
            opts["cpus"] = sorted(where.cpus)
        return opts
    if sandboxed:
        return {"intra_op_threads": 1, "inter_op_threads": 1}
    share = max(1, len(usable_cpus()) // max(1, cpu_members))
    return {"intra_op_threads": share, "inter_op_threads": 1}


def fallback_options(fmt: str, *, cpu_members: int) -> dict[str, Any]:
    """Loader options of the fallback model in threads isolation (it has no placement).

    An ONNX fallback gets the same share of the usable cores as an unpinned member:
    it runs when members failed, and hung members may still hold their threads.
    """
    if fmt != "onnx":
        return {}
    share = max(1, len(usable_cpus()) // max(1, cpu_members))
    return {"intra_op_threads": share, "inter_op_threads": 1}


def cpu_member_count(policy: RuntimePolicy) -> int:
    """Members of ``policy`` that run on the CPU."""
    return sum(1 for s in policy.members if not s.where.accelerator)

"""Who a worker started by root runs as: its service user and supplementary groups.

Layer: :mod:`edgeguard.runtime.sandbox` (supervisor side, stdlib only).

A worker started by root switches to the service user (``nobody`` unless configured)
before it loads its model. A CPU member keeps no supplementary group. A GPU member keeps
the groups its device nodes need: the groups named by the operator (``--worker-groups``,
:envvar:`EDGEGUARD_WORKER_GROUPS`) or, by default, the groups that own its device nodes
(found by ``stat`` of the nodes, :func:`~edgeguard.runtime.sandbox.gpu.device_groups`),
never any other group of the supervisor and never gid 0. A worker started by a non-root
user cannot change its identity and keeps that user's.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgeguard.runtime.sandbox import gpu

__all__ = ["ENV_GROUPS", "ENV_USER", "WorkerIdentity", "worker_identity"]

#: Environment variable naming the service user (a name or a number).
ENV_USER = "EDGEGUARD_WORKER_USER"
#: Environment variable naming GPU members' supplementary groups (comma-separated).
ENV_GROUPS = "EDGEGUARD_WORKER_GROUPS"


@dataclass(frozen=True)
class WorkerIdentity:
    """The service user of workers started by root, and GPU members' groups.

    Attributes:
        uid: The user id every worker started by root switches to (never 0).
        gid: Its primary group (never 0).
        gpu_groups: Supplementary groups of GPU members, or None for "the groups that
            own the member's device nodes" (the default).
    """

    uid: int
    gid: int
    gpu_groups: tuple[int, ...] | None = None

    def groups_for(self, nodes: Sequence[str] | None) -> tuple[int, ...]:
        """The supplementary groups of a worker; ``nodes`` None for a CPU member (none)."""
        if nodes is None:
            return ()
        if self.gpu_groups is not None:
            return self.gpu_groups
        return gpu.device_groups(nodes)


def _user(name: str) -> tuple[int, int]:
    if name.isdigit():
        uid = int(name)
        try:
            return uid, pwd.getpwuid(uid).pw_gid
        except KeyError:
            return uid, uid
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if name == "nobody":
            return 65534, 65534
        raise ValueError(f"unknown user {name!r}") from None
    return entry.pw_uid, entry.pw_gid


def worker_identity(
    *,
    user: str | None = None,
    groups: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> WorkerIdentity:
    """The identity from the options, else the environment, else ``nobody`` and defaults.

    Args:
        user: Service user name or uid (``--worker-user``); :data:`ENV_USER` when None.
        groups: GPU members' groups, names or gids (``--worker-groups video,render``);
            :data:`ENV_GROUPS` (comma-separated) when None; an empty list means none.
        env: The environment to read (``os.environ`` when None).

    Raises:
        ValueError: An unknown user or group, or one that is root's (uid or gid 0).
    """
    env = os.environ if env is None else env
    name = user if user is not None else env.get(ENV_USER) or "nobody"
    uid, gid = _user(name.strip())
    if uid == 0 or gid == 0:
        raise ValueError(f"the worker user {name!r} is root or in root's group")
    if groups is None and env.get(ENV_GROUPS) is not None:
        groups = env[ENV_GROUPS].split(",")
    gids = None if groups is None else gpu.resolve_groups(groups)
    return WorkerIdentity(uid=uid, gid=gid, gpu_groups=gids)

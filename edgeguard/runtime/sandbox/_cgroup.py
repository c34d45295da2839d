"""cgroup v2 memory caps for member workers (private; stdlib only).

Layer: :mod:`edgeguard.runtime.sandbox`. The supervisor (parent side) creates one leaf
cgroup per worker under a sub-tree of its own cgroup, writes ``memory.max`` (and
``memory.swap.max = 0`` where present) and moves the worker into it before the worker
receives its model. cgroup v2's "no internal processes" rule is why the leaves live
under an intermediate ``edgeguard-<pid>`` directory: our own cgroup holds processes,
the intermediate one never does, so it may enable the memory controller for its leaves.

RLIMIT_AS is deliberately *not* used: CUDA reserves large virtual ranges up front.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

from edgeguard.errors import PolicyError

__all__ = ["CgroupTree", "cgroup_memory_delegated", "find_own_cgroup2"]


def find_own_cgroup2(mounts: str | None = None, self_cgroup: str | None = None) -> Path | None:
    """The calling process's cgroup v2 directory, or None without a cgroup2 mount.

    Args:
        mounts: Text of ``/proc/self/mounts`` (read when None).
        self_cgroup: Text of ``/proc/self/cgroup`` (read when None).
    """
    try:
        if mounts is None:
            mounts = Path("/proc/self/mounts").read_text()
        if self_cgroup is None:
            self_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    mount = next(
        (
            ln.split()[1]
            for ln in mounts.splitlines()
            if len(ln.split()) > 2 and ln.split()[2] == "cgroup2"
        ),
        None,
    )
    rel = next((ln[3:] for ln in self_cgroup.splitlines() if ln.startswith("0::")), None)
    if mount is None or rel is None:
        return None
    return Path(mount) / rel.lstrip("/")


def _words(path: Path) -> set[str]:
    try:
        return set(path.read_text().split())
    except OSError:
        return set()


def cgroup_memory_delegated(cg: Path) -> tuple[bool, str]:
    """Whether leaves under ``cg`` can get a memory controller; with the reason."""
    if not (cg / "cgroup.controllers").exists():
        return False, f"{cg} is not a cgroup v2 directory"
    if "memory" not in _words(cg / "cgroup.controllers"):
        return False, f"the memory controller is not available in {cg} (cgroup v1 or not delegated)"
    is_root = not (cg / "cgroup.type").exists()
    if not is_root and "memory" not in _words(cg / "cgroup.subtree_control"):
        return False, f"memory is not enabled in {cg}/cgroup.subtree_control"
    if not os.access(cg, os.W_OK):
        return False, f"{cg} is not writable (no delegation)"
    return True, f"memory controller delegated at {cg}"


class CgroupTree:
    """Leaf cgroups with ``memory.max`` under ``<base>/edgeguard-<pid>/``.

    Args:
        base: A cgroup v2 directory whose memory controller is delegated to us.

    Raises:
        PolicyError: The intermediate directory cannot be created or configured.
    """

    def __init__(self, base: Path) -> None:
        self._root = base / f"edgeguard-{os.getpid()}"
        self._n = itertools.count()
        try:
            self._root.mkdir(exist_ok=True)
            if "memory" not in _words(self._root / "cgroup.subtree_control"):
                (self._root / "cgroup.subtree_control").write_text("+memory")
        except OSError as exc:
            raise PolicyError(f"cannot set up cgroup {self._root}: {exc.strerror}") from exc

    @property
    def root(self) -> Path:
        """The intermediate directory."""
        return self._root

    def create(self, name: str, *, memory_max: int | None) -> Path:
        """A new leaf for worker ``name`` with the memory cap (None: no cap)."""
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]
        leaf = self._root / f"{safe}-{next(self._n)}"
        try:
            leaf.mkdir()
            if memory_max is not None:
                (leaf / "memory.max").write_text(str(memory_max))
                swap = leaf / "memory.swap.max"
                if swap.exists():
                    swap.write_text("0")
        except OSError as exc:
            raise PolicyError(f"cannot create cgroup {leaf}: {exc.strerror}") from exc
        return leaf

    @staticmethod
    def attach(leaf: Path, pid: int) -> None:
        """Move process ``pid`` into ``leaf``."""
        try:
            (leaf / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            raise PolicyError(f"cannot move worker {pid} into {leaf}: {exc.strerror}") from exc

    @staticmethod
    def remove(leaf: Path) -> None:
        """Remove an empty leaf (best effort: a leaf still holding a zombie stays)."""
        with contextlib.suppress(OSError):
            leaf.rmdir()

    def close(self) -> None:
        """Remove the intermediate directory if it is empty."""
        with contextlib.suppress(OSError):
            self._root.rmdir()

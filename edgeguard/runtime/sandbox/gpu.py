"""The sandbox profile of a GPU member: device nodes, their groups, their descriptors.

Layer: :mod:`edgeguard.runtime.sandbox` (stdlib only; used by the supervisor, which picks
the nodes and the worker's groups, and by the worker, which finds the descriptors it
holds on those nodes at lockdown). **Nothing here has run on a Jetson or any GPU**: the
lists come from NVIDIA's published device lists (the container runtime's L4T device
list, the CDI specs of the container toolkit) and are meant to be corrected from a
discovery run on the device (``docs/isolation.md``, "GPU workers").

What a GPU member may touch after lockdown is data, with a reason per entry:

* :data:`DEVICE_FAMILIES` - the device-node globs of each driver family (``nvgpu``: the
  integrated GPU of Jetson TX2 to Orin through L4T's nvgpu driver; ``openrm``: the
  ``/dev/nvidia*`` nodes of NVIDIA's kernel driver, on discrete GPUs and on Jetson Thor;
  ``nvdla``: the deep learning accelerators of Xavier and Orin);
* :data:`ARCH_FAMILIES` - which families a GPU architecture (the ``[gpu] architecture``
  field of ``devices/*.toml``) uses; an unknown architecture gets every family;
* :data:`EXCLUDED_NODES` - nodes that exist on a Jetson but are deliberately left out
  (debugger and trace interfaces), with the reason;
* :data:`ANON_INODE_PREFIXES` - descriptor targets that are not device nodes but are
  created *by* the GPU driver (channels, sync files, dma-bufs) and take ioctls too.

The worker opens its nodes while loading (CUDA's context creation and the warm-up do it,
before lockdown); at lockdown :func:`device_fds` lists the descriptors it holds on them,
and the seccomp profile allows ``ioctl`` on exactly those numbers.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import grp
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ANON_INODE_PREFIXES",
    "ARCH_FAMILIES",
    "DEVICE_FAMILIES",
    "EXCLUDED_NODES",
    "DeviceGlob",
    "device_fds",
    "device_groups",
    "families_for",
    "resolve_groups",
    "select_device_nodes",
]


@dataclass(frozen=True)
class DeviceGlob:
    """One device-node pattern a GPU member may open and ioctl.

    Attributes:
        pattern: Absolute glob below the device root (``/dev/nvhost-ctrl-nvdla*``).
        reason: Why CUDA / TensorRT needs it.
    """

    pattern: str
    reason: str


#: Device-node globs per driver family, each with the reason.
DEVICE_FAMILIES: dict[str, tuple[DeviceGlob, ...]] = {
    "nvgpu": (
        DeviceGlob("/dev/nvmap", "nvmap: the memory allocator of GPU, DLA and CPU (cudaMalloc)"),
        DeviceGlob("/dev/nvhost-ctrl", "host1x syncpoints: stream and event synchronisation"),
        DeviceGlob("/dev/nvhost-ctrl-gpu", "GPU characteristics, context and channel setup"),
        DeviceGlob("/dev/nvhost-gpu", "the GPU channel: command submission"),
        DeviceGlob("/dev/nvhost-as-gpu", "the GPU's virtual address space of the context"),
        DeviceGlob("/dev/nvhost-tsg-gpu", "time-slice groups of channels (L4T r32.5 and later)"),
        DeviceGlob(
            "/dev/nvhost-prof-gpu",
            "performance counters; libcuda opens it at init on L4T r32 (the container "
            "runtime's L4T list mounts it for CUDA)",
        ),
        DeviceGlob("/dev/nvgpu/igpu0/*", "the same interfaces under the newer nvgpu naming"),
        DeviceGlob("/dev/host1x-fence", "host1x fences on L4T r36 (upstream host1x driver)"),
        DeviceGlob("/dev/nvhost-nvdec", "video decoder; opened only by members that decode"),
        DeviceGlob("/dev/nvhost-vic", "video image compositor (colour conversion, scaling)"),
    ),
    "openrm": (
        DeviceGlob("/dev/nvidiactl", "the control node of NVIDIA's kernel driver"),
        DeviceGlob("/dev/nvidia[0-9]*", "one node per GPU"),
        DeviceGlob("/dev/nvidia-uvm", "unified memory (cudaMallocManaged, and CUDA init)"),
        DeviceGlob("/dev/nvidia-uvm-tools", "opened by CUDA's unified-memory init"),
        DeviceGlob("/dev/nvmap", "nvmap: the memory allocator on Jetson Thor"),
    ),
    "nvdla": (
        DeviceGlob("/dev/nvhost-ctrl-nvdla*", "DLA control: TensorRT engines built for DLA"),
        DeviceGlob("/dev/nvhost-nvdla*", "DLA task submission"),
    ),
}

#: Which families a GPU architecture (``[gpu] architecture`` of a device profile) uses.
ARCH_FAMILIES: dict[str, tuple[str, ...]] = {
    "Maxwell": ("nvgpu",),  # Jetson Nano, TX1
    "Pascal": ("nvgpu",),  # Jetson TX2
    "Volta": ("nvgpu", "nvdla"),  # Xavier
    "Ampere": ("nvgpu", "nvdla"),  # Orin
    "Blackwell": ("openrm",),  # Thor (NVIDIA's unified driver); discrete GPUs
}

#: Nodes that match nothing above on purpose, with the reason they stay closed.
EXCLUDED_NODES: dict[str, str] = {
    "/dev/nvhost-dbg-gpu": "the GPU debugger: reads and writes other contexts' state",
    "/dev/nvhost-ctxsw-gpu": "context-switch trace of every process on the GPU",
    "/dev/nvhost-sched-gpu": "GPU scheduling of every process (runlist control)",
    "/dev/nvhost-nvsched-gpu": "the same, newer naming",
    "/dev/nvgpu/*/dbg": "the GPU debugger under the nvgpu/igpu0 naming",
    "/dev/nvgpu/*/ctxsw": "the context-switch trace under the nvgpu/igpu0 naming",
    "/dev/nvgpu/*/sched": "GPU scheduling under the nvgpu/igpu0 naming",
    "/dev/nvgpu/*/nvsched": "the same, newer scheduler interface",
    "/dev/nvidia-modeset": "display mode setting: not needed for compute",
    "/dev/nvidia-caps/*": "MIG capability nodes: not needed on a single-tenant device",
}

#: ``readlink`` prefixes of descriptors the GPU driver creates itself (by ioctl on a
#: node above); they take ioctls too. Not verified on a device.
ANON_INODE_PREFIXES: dict[str, str] = {
    "anon_inode:nvhost-": "nvgpu channel, TSG and address-space descriptors",
    "anon_inode:nvgpu-": "the same under newer nvgpu names",
    "anon_inode:sync_file": "fences handed back by a submission",
    "anon_inode:dmabuf": "nvmap buffers exported as dma-bufs",
    "/dmabuf:": "dma-bufs on kernels that name them so",
}


def families_for(architecture: str | None) -> tuple[str, ...]:
    """The families of ``architecture``; every family when it is None or unknown."""
    if architecture is None or architecture not in ARCH_FAMILIES:
        return tuple(DEVICE_FAMILIES)
    return ARCH_FAMILIES[architecture]


def _under(root: Path, absolute: str) -> str:
    return str(root / absolute.lstrip("/"))


def _excluded(relative: str) -> bool:
    return any(fnmatch.fnmatchcase(relative, pat) for pat in EXCLUDED_NODES)


def select_device_nodes(
    *, root: Path = Path("/"), families: Iterable[str] | None = None
) -> tuple[str, ...]:
    """The device nodes of ``families`` that exist below ``root``, sorted, deduplicated.

    Args:
        root: Where ``/dev`` is (a fake tree in tests).
        families: Family names (keys of :data:`DEVICE_FAMILIES`); None for all.

    Returns:
        Absolute paths below ``root`` (``root`` itself prefixed). Only character devices
        count, except below a ``root`` other than ``/`` (a test's fake tree of regular
        files). Symlinks are followed; the nodes in :data:`EXCLUDED_NODES` never appear.

    Raises:
        KeyError: An unknown family.
    """
    fake = root.resolve() != Path("/")
    out: set[str] = set()
    for fam in families if families is not None else DEVICE_FAMILIES:
        for entry in DEVICE_FAMILIES[fam]:
            for path in glob.glob(_under(root, entry.pattern)):
                rel = "/" + os.path.relpath(path, root)
                if _excluded(rel):
                    continue
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if stat.S_ISCHR(st.st_mode) or (fake and stat.S_ISREG(st.st_mode)):
                    out.add(path)
    return tuple(sorted(out))


def device_groups(nodes: Iterable[str]) -> tuple[int, ...]:
    """The groups that own ``nodes`` and give their group read-write access; never gid 0.

    These are the supplementary groups a GPU member keeps by default (L4T's nodes are
    ``root:video`` or ``root:render``, mode 0660): only groups found on the nodes, never
    any other group of the user that started the supervisor, and never root's group.
    """
    gids: set[int] = set()
    for node in nodes:
        with contextlib.suppress(OSError):
            st = os.stat(node)
            if st.st_gid != 0 and st.st_mode & 0o060 == 0o060:
                gids.add(st.st_gid)
    return tuple(sorted(gids))


def resolve_groups(names: Sequence[str]) -> tuple[int, ...]:
    """Group names or numbers (``video``, ``44``) as gids, sorted; gid 0 refused.

    Raises:
        ValueError: An unknown group, or root's group.
    """
    gids: set[int] = set()
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name.isdigit():
            gid = int(name)
        else:
            try:
                gid = grp.getgrnam(name).gr_gid
            except KeyError:
                raise ValueError(f"unknown group {name!r}") from None
        if gid == 0:
            raise ValueError(f"group {name!r} is root's group: a worker never keeps it")
        gids.add(gid)
    return tuple(sorted(gids))


def _is_device_target(target: str, nodes: Mapping[str, str]) -> bool:
    return target in nodes or any(target.startswith(p) for p in ANON_INODE_PREFIXES)


def device_fds(nodes: Iterable[str], *, proc_fd: str = "/proc/self/fd") -> tuple[int, ...]:
    """The descriptors the calling process holds on ``nodes`` (or on GPU anon inodes).

    Read from ``proc_fd`` (``/proc/self/fd``), so call it before Landlock and seccomp:
    the worker does, at lockdown. A descriptor counts when its ``readlink`` target is one
    of ``nodes`` (after resolving symlinks of the nodes) or starts with one of
    :data:`ANON_INODE_PREFIXES`.
    """
    wanted = {os.path.realpath(n): n for n in nodes}
    fds: list[int] = []
    try:
        names = os.listdir(proc_fd)
    except OSError:
        return ()
    for name in names:
        if not name.isdigit():
            continue
        try:
            target = os.readlink(os.path.join(proc_fd, name))
        except OSError:  # the descriptor listdir used is closed again
            continue
        if _is_device_target(target, wanted):
            fds.append(int(name))
    return tuple(sorted(fds))

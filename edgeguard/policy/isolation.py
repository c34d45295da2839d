"""The isolation requirements: which layers a member worker must, may or must not use.

Layer: :mod:`edgeguard.policy` (pure data model, no I/O, stdlib only). The policy
travels inside the signed bundle manifest under ``policy["sandbox"]``, so
:meth:`SandboxPolicy.from_dict` is strict: unknown keys, wrong types and out-of-range
values raise :class:`~edgeguard.errors.MalformedError`, and :meth:`SandboxPolicy.to_dict`
produces only JSON/CBOR-native values (str, int).

Each layer is ``"required"`` (refuse to start a worker without it), ``"best-effort"``
(use it when the host supports it, record when it does not) or ``"off"``. A required
layer is a floor: the device session refuses to run the members with less
(in-process threads included) unless the caller names the ``unsafe_*`` bypass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from edgeguard._strict import as_int, as_str, check_fields, fail

__all__ = [
    "BEST_EFFORT",
    "LAYERS",
    "MODES",
    "OFF",
    "REQUIRED",
    "SandboxPolicy",
]

REQUIRED: Final = "required"
BEST_EFFORT: Final = "best-effort"
OFF: Final = "off"
#: Allowed values of a layer's mode.
MODES: tuple[str, ...] = (REQUIRED, BEST_EFFORT, OFF)
#: The isolation layers, in the order the worker applies them.
LAYERS: tuple[str, ...] = ("netns", "cgroup", "rlimits", "landlock", "seccomp")

_W = "sandbox policy: "
_MIN_MEMORY = 16 * 1024 * 1024  # below this not even the Python interpreter starts
_MAX_MEMORY = 1 << 48
_MIN_FILES = 8  # stdin/out/err, control socket, I/O memfd, ORT's internals
_MAX_FILES = 1 << 20


@dataclass(frozen=True)
class SandboxPolicy:
    """Isolation layers and limits for sandboxed member workers.

    Attributes:
        seccomp: seccomp-bpf syscall allowlist (default action: kill the process).
        landlock: Landlock ruleset with every filesystem right handled and no rule.
        netns: A new, empty network namespace.
        rlimits: Resource limits (open files, processes, file size, core dumps).
        cgroup: A cgroup v2 leaf per worker with ``memory.max``.
        memory_max_bytes: ``memory.max`` of the worker's cgroup (None: no memory cap).
        max_open_files: ``RLIMIT_NOFILE`` of the locked-down worker.
    """

    seccomp: str = BEST_EFFORT
    landlock: str = BEST_EFFORT
    netns: str = BEST_EFFORT
    rlimits: str = BEST_EFFORT
    cgroup: str = BEST_EFFORT
    memory_max_bytes: int | None = 2 * 1024**3
    max_open_files: int = 64

    def __post_init__(self) -> None:
        for layer in LAYERS:
            as_str(getattr(self, layer), f"{_W}{layer}", choices=MODES)
        if self.memory_max_bytes is not None:
            as_int(self.memory_max_bytes, f"{_W}memory_max_bytes", lo=_MIN_MEMORY, hi=_MAX_MEMORY)
        as_int(self.max_open_files, f"{_W}max_open_files", lo=_MIN_FILES, hi=_MAX_FILES)

    def mode(self, layer: str) -> str:
        """The mode of ``layer`` (one of :data:`LAYERS`)."""
        if layer not in LAYERS:
            raise fail(_W + "layer", f"unknown layer {layer!r}")
        value: str = getattr(self, layer)
        return value

    def required_layers(self) -> tuple[str, ...]:
        """Layers whose mode is ``"required"``, in :data:`LAYERS` order."""
        return tuple(layer for layer in LAYERS if getattr(self, layer) == REQUIRED)

    def to_dict(self) -> dict[str, Any]:
        """JSON/CBOR-native form; :meth:`from_dict` of it gives an equal policy."""
        d: dict[str, Any] = {layer: getattr(self, layer) for layer in LAYERS}
        d["memory_max_bytes"] = self.memory_max_bytes
        d["max_open_files"] = self.max_open_files
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SandboxPolicy:
        """Parse a policy; every key is optional and defaults as in the dataclass.

        Raises:
            MalformedError: ``d`` is not a mapping, has unknown keys or bad values.
        """
        fields = check_fields(
            d, "sandbox policy", (), (*LAYERS, "memory_max_bytes", "max_open_files")
        )
        return cls(**dict(fields))

    @classmethod
    def all(cls, mode: str) -> SandboxPolicy:
        """Every layer in the same ``mode`` (limits at their defaults)."""
        return cls(seccomp=mode, landlock=mode, netns=mode, rlimits=mode, cgroup=mode)

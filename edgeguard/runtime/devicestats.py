"""Sanity statistics computed on the device, next to a TensorRT member's model.

Layer: :mod:`edgeguard.runtime`. When every member of a session runs as a TensorRT plan
on a GPU and the CUDA C++ sanity kernel loads in each member's process, the statistics
of the checked input are computed by that kernel on the member's inference stream
(:meth:`edgeguard.backends.tensorrt.TensorRTBackend.run_with_stats`) instead of on the
CPU, and come back with each member's answer; the guard judges them
(:meth:`edgeguard.guard.checks.FrameChecks.check_stats`). ``docs/sanity.md``, "Where the
statistics are computed", says what runs where.

* :class:`DeviceCheckSpec` - what the check reads (input, layout, saturation levels),
  sent to a sandboxed worker in its ``init`` message;
* :func:`make_device_check` - the check in the member's process, through the seam
  :data:`DEVICE_CHECK` (tests point it at a double);
* :class:`DeviceCheckedMember` - a loaded backend and its check, for the thread
  executor;
* :func:`stats_from_record` - a worker's validated statistics record as a ``FrameStats``.

NOTE: the CUDA C++ kernel and the TensorRT backend have never run on a GPU in this
repository; this path is tested with test doubles only.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeguard.errors import BackendError, UsageError
from edgeguard.guard.sanity.spec import FrameStats

__all__ = [
    "DEVICE_CHECK",
    "DeviceCheckSpec",
    "DeviceCheckedMember",
    "cuda_cpp_check",
    "make_device_check",
    "stats_from_record",
]

#: ``module:function(spec: DeviceCheckSpec) -> DeviceCheck`` making the device check in a
#: member's process (the CUDA C++ kernel's :func:`cuda_cpp_check`). Only tests change it.
DEVICE_CHECK = "edgeguard.runtime.devicestats:cuda_cpp_check"


@dataclass(frozen=True)
class DeviceCheckSpec:
    """What the device check of one member reads.

    Attributes:
        input: The checked model input.
        layout: Its layout ("NCHW" or "NHWC"), from the signed profile.
        sat_lo: Low saturation level (None: the dtype default).
        sat_hi: High saturation level (None: the dtype default).
        device_id: The member's CUDA device.
        factory: ``module:function`` making the check (default :data:`DEVICE_CHECK`).
    """

    input: str
    layout: str
    sat_lo: float | None
    sat_hi: float | None
    device_id: int = 0
    factory: str | None = None

    def to_init(self) -> dict[str, Any]:
        """The form of a worker's ``init`` message."""
        return {
            "input": self.input,
            "layout": self.layout,
            "sat_lo": self.sat_lo,
            "sat_hi": self.sat_hi,
            "device_id": self.device_id,
            "factory": self.factory or DEVICE_CHECK,
        }

    @classmethod
    def from_init(cls, raw: Mapping[str, Any]) -> DeviceCheckSpec:
        """Inverse of :meth:`to_init` (from the supervisor, trusted)."""

        def level(v: Any) -> float | None:
            return None if v is None else float(v)

        return cls(
            input=str(raw["input"]),
            layout=str(raw["layout"]),
            sat_lo=level(raw.get("sat_lo")),
            sat_hi=level(raw.get("sat_hi")),
            device_id=int(raw.get("device_id", 0)),
            factory=None if raw.get("factory") is None else str(raw["factory"]),
        )


def cuda_cpp_check(spec: DeviceCheckSpec) -> Any:
    """The CUDA C++ kernel's device check (``DeviceSanityCheck``) for ``spec``.

    Raises:
        MissingDependencyError: pycuda is missing.
        UsageError: The kernel image was not built.
        BackendError: No usable CUDA device, or the image has no code for it.
    """
    from edgeguard.guard.sanity.cuda_cpp import CudaSanityKernel

    kernel = CudaSanityKernel(device=spec.device_id)
    return kernel.device_check(
        spec.input, layout=spec.layout, sat_lo=spec.sat_lo, sat_hi=spec.sat_hi
    )


def make_device_check(spec: DeviceCheckSpec) -> Any:
    """The device check of ``spec``, made by its factory (in the member's process).

    Raises:
        EdgeguardError: As the factory (the kernel cannot be loaded here).
        UsageError: The factory is not ``module:function`` or made no check of the input.
    """
    mod, _, attr = (spec.factory or DEVICE_CHECK).partition(":")
    fn = getattr(importlib.import_module(mod), attr, None)
    if not callable(fn):
        raise UsageError(f"device check factory {spec.factory!r} is not callable")
    check = fn(spec)
    if getattr(check, "input_name", None) != spec.input:
        raise UsageError(f"the device check does not read input {spec.input!r}")
    return check


class DeviceCheckedMember:
    """A member in this process whose frames run with the device check on its stream.

    Args:
        backend: The loaded backend (``run_with_stats(feeds, check)``).
        check: Its device check.
    """

    def __init__(self, backend: Any, check: Any) -> None:
        if not callable(getattr(backend, "run_with_stats", None)):
            raise UsageError("the member's backend cannot run a device check")
        self.backend = backend
        self.check = check

    @property
    def input_name(self) -> str:
        """The checked input."""
        return str(self.check.input_name)

    def inputs(self) -> Any:
        """The backend's inputs."""
        return self.backend.inputs()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run without the check (warm-up, timing)."""
        out: dict[str, np.ndarray] = self.backend.run(feeds)
        return out

    def run_checked(
        self, feeds: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, FrameStats]]:
        """Run one frame and the device check: the outputs and ``{input: FrameStats}``."""
        out, stats = self.backend.run_with_stats(feeds, self.check)
        if not isinstance(stats, FrameStats):  # the member's fault, not the input's
            raise BackendError(f"the device check returned {type(stats).__name__}, not FrameStats")
        return out, {self.input_name: stats}


def frames_of(x: np.ndarray, layout: str) -> tuple[int, int, int]:
    """``(N, C, H * W)`` of ``x`` viewed as frames (what a statistics record must fit)."""
    from edgeguard.guard.sanity.layout import frames_shape

    n, c, h, w = frames_shape(x.shape, layout)
    return n, c, h * w


def stats_from_record(
    record: Mapping[str, np.ndarray], spec: DeviceCheckSpec, dtype: Any
) -> FrameStats:
    """A validated statistics record (``replies.read_stats``) as a ``FrameStats``.

    ``tdiff`` is None: the guard computes it from the previous accepted frame.
    """
    lo, hi = (0.0, 255.0) if np.dtype(dtype) == np.uint8 else (0.0, 1.0)
    return FrameStats(
        layout=spec.layout,
        sat_lo_level=lo if spec.sat_lo is None else spec.sat_lo,
        sat_hi_level=hi if spec.sat_hi is None else spec.sat_hi,
        nan=record["nan"],
        posinf=record["posinf"],
        neginf=record["neginf"],
        count=record["count"],
        min=record["min"],
        max=record["max"],
        mean=record["mean"],
        std=record["std"],
        sat_lo=record["sat_lo"],
        sat_hi=record["sat_hi"],
        hf=record["hf"],
    )

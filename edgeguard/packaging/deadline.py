"""``--deadline-ms auto``: the per-frame deadline measured on the build host.

Layer: packaging. Each member (and the fallback model) runs alone, one intra-op thread
as in a sandboxed worker, on one calibration frame (or zeros of the I/O contract's
shape when every axis but the batch is fixed), a few times after a warm-up; the
deadline is ``factor`` times the slowest member's slowest run, and never below
:data:`MIN_AUTO_DEADLINE_MS`. The measurement and the
frame shapes are signed with the policy (:class:`~edgeguard.policy.runtime.DeadlineBasis`),
so the device can re-measure at start and warn when it is slower
(:mod:`edgeguard.runtime.session`). A model whose frames cannot be shaped without
calibration data (dynamic height and width) is not measured; the caller falls back to
a generous default and says so.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgeguard.policy.io import MemberIo
from edgeguard.policy.runtime import DeadlineBasis

__all__ = [
    "AUTO_FACTOR",
    "MIN_AUTO_DEADLINE_MS",
    "REPEATS",
    "frame_shapes",
    "measure_deadline",
    "profile_frame_shapes",
]

#: The deadline is this many times the slowest member's slowest run.
AUTO_FACTOR = 4.0
#: Timed runs per member, after two warm-up runs.
REPEATS = 8
#: No measured deadline is shorter: a tiny model's run says nothing about scheduler
#: jitter, thread hand-offs and sandbox transport, which cost milliseconds on a busy CPU.
MIN_AUTO_DEADLINE_MS = 25.0


def frame_shapes(
    io: MemberIo,
    calibration: Mapping[str, np.ndarray] | None,
    hints: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, tuple[int, ...]] | None:
    """The shape of one frame per input: from the calibration data, else from ``hints``
    (the frame shapes a sanity profile was calibrated on), else from the contract when
    every axis but the first is fixed; None when none says."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in io.inputs:
        if calibration is not None and spec.name in calibration:
            arr = np.asarray(calibration[spec.name])
            shapes[spec.name] = (1, *arr.shape[1:]) if arr.ndim else ()
            continue
        if hints is not None and spec.name in hints:
            shapes[spec.name] = tuple(hints[spec.name])
            continue
        dims = [d if isinstance(d, int) else None for d in spec.shape]
        if any(d is None for d in dims[1:]):
            return None
        shapes[spec.name] = tuple(1 if d is None else d for d in dims)
    return shapes


def _frame(
    io: MemberIo,
    shapes: Mapping[str, tuple[int, ...]],
    calibration: Mapping[str, np.ndarray] | None,
) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in io.inputs:
        if calibration is not None and spec.name in calibration:
            arr = np.asarray(calibration[spec.name])
            feeds[spec.name] = np.ascontiguousarray(arr[:1]) if arr.ndim else arr
        else:
            feeds[spec.name] = np.zeros(shapes[spec.name], dtype=spec.dtype)
    return feeds


def measure_deadline(
    members: Sequence[tuple[str, bytes, MemberIo]],
    calibration: Mapping[str, np.ndarray] | None,
    *,
    factor: float = AUTO_FACTOR,
    progress: Any = None,
    shape_hints: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[float, DeadlineBasis] | None:
    """Measure every member; returns ``(deadline_ms, basis)``, or None when unmeasurable.

    Args:
        members: ``(name, ONNX bytes, I/O contract)`` of every member and the fallback.
        calibration: Calibration frames keyed by input name, or None.
        factor: Deadline over the slowest member.
        progress: Called with ``(done, total)`` after each member (a progress bar).
        shape_hints: Frame shapes for inputs the calibration frames do not hold (from a
            sanity profile); such inputs are timed on zeros of that shape.
    """
    from edgeguard.backends.onnxruntime import OnnxRuntimeBackend

    shapes = frame_shapes(members[0][2], calibration, shape_hints)
    if shapes is None:
        return None
    measured: dict[str, float] = {}
    for i, (name, model, io) in enumerate(members):
        feeds = _frame(io, shapes, calibration)
        with OnnxRuntimeBackend.from_bytes(model, intra_op_threads=1) as backend:
            for _ in range(2):
                backend.run(feeds)
            runs = []
            for _ in range(REPEATS):
                t = time.perf_counter()
                backend.run(feeds)
                runs.append(time.perf_counter() - t)
        measured[name] = round(max(runs) * 1e3, 3)
        if progress is not None:
            progress(i + 1, len(members))
    slowest = max(measured.values())
    deadline = max(MIN_AUTO_DEADLINE_MS, float(math.ceil(factor * slowest)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    basis = DeadlineBasis(
        measured_ms=measured,
        shapes={k: tuple(v) for k, v in shapes.items()},
        factor=factor,
        host=f"{platform.machine()}, {cores} cores",
    )
    return deadline, basis


def profile_frame_shapes(sanity: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """One frame's shape per input a sanity profile (its dict form) was calibrated on, a
    batch of one: a fixed axis's size, and for a dynamic axis (accepted from half to twice
    the calibrated size) the calibrated size."""
    from edgeguard.packaging.calibrate import DYNAMIC_AXIS_SPAN

    out: dict[str, tuple[int, ...]] = {}
    for inp in sanity.get("inputs", ()):
        try:
            ranges = [(int(lo), None if hi is None else int(hi)) for lo, hi in inp["shape"]]
        except (KeyError, TypeError, ValueError):
            continue
        if not ranges:
            continue
        dims = [lo if hi is None or hi == lo else hi // DYNAMIC_AXIS_SPAN for lo, hi in ranges]
        out[str(inp["name"])] = (1, *dims[1:])
    return out

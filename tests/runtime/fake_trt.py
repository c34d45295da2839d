"""FakeTensorRT: a test double for building and loading TensorRT plans (no GPU here).

It stands in for ``edgeguard.backends.tensorrt.build_engine`` / ``platform_identity`` and
for the TensorRT backend's plan loader, through the seams
``edgeguard.backends.TRT_BUILDER``, ``TRT_IDENTITY`` and ``TRT_PLAN_LOADER``. Its "plan"
is a marker followed by the ONNX bytes, loaded with ONNX Runtime on the CPU: it checks
the engine cache's flow (build, seal, load sealed), never anything about TensorRT.

The device sanity check has a double too: :func:`device_check` (through the seam
``edgeguard.runtime.devicestats.DEVICE_CHECK``) makes a :class:`FakeDeviceCheck`, and the
loaded plan's ``run_with_stats`` answers with the statistics the **NumPy reference**
computes on the host (never a GPU result). ``CHECKS`` counts the device checks run in
this process; ``TAMPER`` may rewrite the statistics a check returns (tests of rejection).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeguard.backends.onnxruntime import OnnxRuntimeBackend
from edgeguard.errors import MissingDependencyError
from edgeguard.guard.sanity.reference import reference_stats
from edgeguard.guard.sanity.spec import FrameStats

MAGIC = b"FAKE-TRT-PLAN\x00"
BUILDS: list[dict[str, Any]] = []  # in this process only
IDENTITY = {
    "tensorrt": "10.3.0",
    "gpu_name": "Fake GPU (test double)",
    "compute_capability": "8.7",
    "driver": "540.4.0",
}


@dataclass(frozen=True)
class BuiltEngine:
    plan: bytes
    identity: Mapping[str, str]
    timing_cache: bytes | None = field(default=None, repr=False)


def identity(device_id: int) -> dict[str, str]:
    return dict(IDENTITY)


#: The progress phases the double reports, as ``(phase, total)``.
PHASES = (("Building engine", 3), ("Tactic selection", 2))


def build(
    onnx: Any,
    recipe: Any,
    *,
    device_id: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    calibration: Mapping[str, np.ndarray] | None = None,
    timing_cache: bytes | None = None,
    **_: Any,
) -> BuiltEngine:
    """Record what the build got; report :data:`PHASES`; with a recipe that keeps a timing
    cache, return the given one plus ``b"+1"`` (so each build's cache shows its history)."""
    BUILDS.append(
        {
            "recipe": recipe.to_dict(),
            "device_id": device_id,
            "calibration": None if calibration is None else dict(calibration),
            "timing_cache": timing_cache,
        }
    )
    if progress is not None:
        for phase, total in PHASES:
            for done in range(total + 1):
                progress(phase, done, total)
    out = (timing_cache or b"cache") + b"+1" if recipe.timing_cache else None
    return BuiltEngine(MAGIC + bytes(onnx), identity(device_id), timing_cache=out)


def build_slowly(onnx: Any, recipe: Any, *, progress: Any = None, **kw: Any) -> BuiltEngine:
    """A build of ``SLOW_STEPS`` steps of ``SLOW_STEP_S`` seconds, reporting each (in a worker)."""
    import time

    for i in range(SLOW_STEPS):
        time.sleep(SLOW_STEP_S)
        if progress is not None:
            progress("Tactic selection", i + 1, SLOW_STEPS)
    return build(onnx, recipe, **kw)


def build_silently(onnx: Any, recipe: Any, *, progress: Any = None, **kw: Any) -> BuiltEngine:
    """The same time as :func:`build_slowly`, without a word of progress."""
    import time

    time.sleep(SLOW_STEPS * SLOW_STEP_S)
    return build(onnx, recipe, **kw)


SLOW_STEPS = 6
SLOW_STEP_S = 0.6


def build_reporting_calibration(onnx: Any, recipe: Any, **kw: Any) -> BuiltEngine:
    """Fail with a description of the calibration frames it got (seen from a worker)."""
    from edgeguard.errors import BackendError

    cal = kw.get("calibration")
    if cal is None:
        raise BackendError("calibration: none")
    got = sorted((k, v.dtype.name, list(v.shape), float(v.sum())) for k, v in cal.items())
    raise BackendError(f"calibration: {got}")


CHECKS: list[str] = []  # inputs checked by FakeDeviceCheck in this process
TAMPER: list[Callable[[FrameStats], FrameStats]] = []  # applied to each check's result


class FakeDeviceCheck:
    """Test double of ``DeviceSanityCheck``: the NumPy reference on the host, not a GPU."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.input_name = spec.input
        self.device_id = spec.device_id

    def host_stats(self, x: np.ndarray) -> FrameStats:
        CHECKS.append(self.input_name)
        stats = reference_stats(
            x, layout=self.spec.layout, sat_lo=self.spec.sat_lo, sat_hi=self.spec.sat_hi
        )
        for fn in TAMPER:
            stats = fn(stats)
        return stats


class _Shifted(FakeDeviceCheck):
    def host_stats(self, x: np.ndarray) -> FrameStats:
        s = super().host_stats(x)
        return dataclasses.replace(s, mean=s.mean + 100.0)


class _TwoFrames(FakeDeviceCheck):
    def host_stats(self, x: np.ndarray) -> FrameStats:
        return super().host_stats(np.concatenate([x, x]))


class _Negative(FakeDeviceCheck):
    def host_stats(self, x: np.ndarray) -> FrameStats:
        s = super().host_stats(x)
        return dataclasses.replace(s, count=s.count - 10**6)


def device_check(spec: Any) -> FakeDeviceCheck:
    return FakeDeviceCheck(spec)


def shifted_check(spec: Any) -> FakeDeviceCheck:
    """Statistics whose mean is 100 higher than the input's (a frame to reject)."""
    return _Shifted(spec)


def two_frames_check(spec: Any) -> FakeDeviceCheck:
    """Statistics of two frames for an input of one (a malformed reply)."""
    return _TwoFrames(spec)


def negative_check(spec: Any) -> FakeDeviceCheck:
    """Negative finite counts (a malformed reply)."""
    return _Negative(spec)


def no_kernel(spec: Any) -> Any:
    raise MissingDependencyError(
        "pycuda", "cuda", purpose="The CUDA C++ sanity kernel (test double: absent)"
    )


class FakeTrtBackend:
    """A FakeTensorRT plan: ONNX Runtime, with ``run_with_stats`` like the TensorRT backend."""

    def __init__(self, ort: OnnxRuntimeBackend) -> None:
        self._ort = ort

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ort, name)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._ort.run(feeds)

    def run_with_stats(
        self, feeds: Mapping[str, np.ndarray], check: Any
    ) -> tuple[dict[str, np.ndarray], FrameStats]:
        if not isinstance(check, FakeDeviceCheck):
            raise TypeError("FakeTensorRT runs only its own device check double")
        out = self._ort.run(feeds)
        return out, check.host_stats(np.ascontiguousarray(feeds[check.input_name]))


def load(plan: Any, *, device_id: int = 0, dla_core: int | None = None) -> FakeTrtBackend:
    data = bytes(plan)
    if not data.startswith(MAGIC):
        raise ValueError("not a FakeTensorRT plan")
    return FakeTrtBackend(OnnxRuntimeBackend.from_bytes(data[len(MAGIC) :], intra_op_threads=1))


def build_with_bad_progress(onnx: Any, recipe: Any, **kw: Any) -> BuiltEngine:
    """Send a progress message the supervisor must refuse (a negative count), bypassing
    the worker's own sanitising relay: the control socket is the worker's argument."""
    import json
    import os
    import sys

    msg = {"op": "progress", "phase": "Building engine", "done": -1, "total": 3}
    os.write(int(sys.argv[1]), json.dumps(msg).encode())
    return build(onnx, recipe, **kw)


def loader_sending_progress(model: Any, fmt: str, options: Any) -> Any:
    """A CPU worker's loader that sends a well-formed progress message (it builds nothing)."""
    import json
    import os
    import sys

    msg = {"op": "progress", "phase": "Building engine", "done": 0, "total": 3}
    os.write(int(sys.argv[1]), json.dumps(msg).encode())
    return OnnxRuntimeBackend.from_bytes(model, intra_op_threads=1)

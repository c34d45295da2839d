"""FakeTensorRT: a test double for building and loading TensorRT plans (no GPU here).

It stands in for ``edgeguard.backends.tensorrt.build_engine`` / ``platform_identity`` and
for the TensorRT backend's plan loader, through the seams
``edgeguard.backends.TRT_BUILDER``, ``TRT_IDENTITY`` and ``TRT_PLAN_LOADER``. Its "plan"
is a marker followed by the ONNX bytes, loaded with ONNX Runtime on the CPU: it checks
the engine cache's flow (build, seal, load sealed), never anything about TensorRT.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeguard.backends.onnxruntime import OnnxRuntimeBackend

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


def build(onnx: Any, recipe: Any, *, device_id: int = 0, **_: Any) -> BuiltEngine:
    BUILDS.append({"recipe": recipe.to_dict(), "device_id": device_id})
    return BuiltEngine(MAGIC + bytes(onnx), identity(device_id))


def load(plan: Any, *, device_id: int = 0, dla_core: int | None = None) -> OnnxRuntimeBackend:
    data = bytes(plan)
    if not data.startswith(MAGIC):
        raise ValueError("not a FakeTensorRT plan")
    return OnnxRuntimeBackend.from_bytes(data[len(MAGIC) :], intra_op_threads=1)

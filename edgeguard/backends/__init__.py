"""Inference backends (backends layer): the only code that touches inference libraries.

* :mod:`edgeguard.backends.base` - the :class:`Backend` interface and :class:`TensorSpec`.
* :mod:`edgeguard.backends.onnxruntime` - ONNX Runtime, CPU execution provider (the
  embedded default).
* :mod:`edgeguard.backends.tensorrt` - TensorRT 10 engines on NVIDIA GPUs / Jetson.

:func:`load_backend` picks the backend from a bundle member's format string.
Importing this package imports neither onnxruntime nor tensorrt nor pycuda; the
concrete backend modules import them on first use.
"""

from __future__ import annotations

from typing import Any

from edgeguard.backends.base import Backend, TensorSpec
from edgeguard.errors import MalformedError

__all__ = ["ARTIFACT_FORMATS", "FORMATS", "Backend", "TensorSpec", "load_backend"]

#: Member formats understood by :func:`load_backend`.
FORMATS: tuple[str, ...] = ("onnx", "trt-engine")
#: Formats of artifacts compiled on this device (the engine cache), never bundle members:
#: an ONNX Runtime optimised model in ORT format, a TensorRT plan built here.
ARTIFACT_FORMATS: tuple[str, ...] = ("ort-model", "trt-plan")


def load_backend(fmt: str, data: bytes | bytearray | memoryview, **opts: Any) -> Backend:
    """Load model bytes into the backend for their format.

    Args:
        fmt: The member format: ``"onnx"`` (ONNX Runtime, CPU) or ``"trt-engine"``
            (a serialised TensorRT engine); or an artifact format of the engine
            cache: ``"ort-model"`` (ONNX Runtime's ORT format) or ``"trt-plan"`` (a
            TensorRT plan built on this device).
        data: The model bytes, kept in memory.
        **opts: Keyword options of the backend's loader
            (:meth:`~edgeguard.backends.onnxruntime.OnnxRuntimeBackend.from_bytes` or
            :meth:`~edgeguard.backends.tensorrt.TensorRTBackend.from_engine_bytes`).

    Returns:
        The loaded backend; close it when done.

    Raises:
        MalformedError: ``fmt`` is not a known format.
        MissingDependencyError: The backend's library is not installed.
        UsageError: Invalid options.
        BackendError: The library cannot load the model.
    """
    if fmt == "onnx":
        from edgeguard.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend.from_bytes(data, **opts)
    if fmt == "ort-model":
        from edgeguard.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend.from_bytes(data, model_format="ort", **opts)
    if fmt in ("trt-engine", "trt-plan"):
        from edgeguard.backends.tensorrt import TensorRTBackend

        return TensorRTBackend.from_engine_bytes(data, **opts)
    raise MalformedError(
        f"unknown model format {fmt!r}",
        hint=f"known formats: {', '.join(FORMATS + ARTIFACT_FORMATS)}",
    )

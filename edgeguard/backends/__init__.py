"""Inference backends (backends layer): the only code that touches inference libraries.

* :mod:`edgeguard.backends.base` - the :class:`Backend` interface and :class:`TensorSpec`.
* :mod:`edgeguard.backends.onnxruntime` - ONNX Runtime, CPU execution provider (the
  embedded default).
* :mod:`edgeguard.backends.tensorrt` - TensorRT 10 engines on NVIDIA GPUs / Jetson,
  and the on-device builder from a signed recipe.
* :mod:`edgeguard.backends.trt_frame` - the per-frame step plan of the TensorRT GPU
  path and the ``DeviceCheck`` interface (pure code).

:func:`load_backend` picks the backend from a bundle member's format string.
Importing this package imports neither onnxruntime nor tensorrt nor pycuda; the
concrete backend modules import them on first use.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from typing import Any

from edgeguard.backends.base import Backend, TensorSpec
from edgeguard.errors import BackendError, MalformedError, UsageError

__all__ = [
    "ARTIFACT_FORMATS",
    "FORMATS",
    "TRT_BUILDER",
    "TRT_IDENTITY",
    "TRT_PLAN_LOADER",
    "Backend",
    "TensorSpec",
    "build_plan",
    "device_identity",
    "load_backend",
]

#: ``module:function`` that builds a TensorRT plan on this device from a signed ONNX
#: member and its recipe: ``function(onnx, recipe: MemberRecipe, *, device_id)`` returning
#: an object with ``plan`` (bytes) and ``identity`` (the GPU and TensorRT it was built
#: for), as :func:`edgeguard.backends.tensorrt.build_engine` does (the recipe's
#: ``dla_core`` picks a DLA core). The seam through which tests put a test double.
TRT_BUILDER = "edgeguard.backends.tensorrt:build_engine"
#: ``module:function`` returning this device's TensorRT identity for a CUDA device:
#: ``function(device_id) -> {"tensorrt", "gpu_name", "compute_capability", "driver"}``
#: (:func:`edgeguard.backends.tensorrt.platform_identity`).
TRT_IDENTITY = "edgeguard.backends.tensorrt:platform_identity"
#: ``module:function`` loading a plan instead of the TensorRT backend (None: the TensorRT
#: backend). Only tests set it, to a test double.
TRT_PLAN_LOADER: str | None = None

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
    if fmt == "trt-build":
        return _build_and_load(data, **opts)
    if fmt == "ort-model":
        from edgeguard.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend.from_bytes(data, model_format="ort", **opts)
    if fmt in ("trt-engine", "trt-plan"):
        return _load_plan(data, **opts)
    raise MalformedError(
        f"unknown model format {fmt!r}",
        hint=f"known formats: {', '.join(FORMATS + ARTIFACT_FORMATS)}",
    )


def _resolve(spec: str) -> Callable[..., Any]:
    mod, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise BackendError(f"cannot find {spec!r}: {exc}") from exc
    if not callable(fn):
        raise UsageError(f"{spec!r} is not callable")
    return fn  # type: ignore[no-any-return]


def device_identity(*, device_id: int = 0, identity: str | None = None) -> dict[str, str]:
    """This device's TensorRT identity (the engine cache's hardware binding of a plan).

    Args:
        device_id: The CUDA device.
        identity: ``module:function`` (default :data:`TRT_IDENTITY`).

    Raises:
        MissingDependencyError: tensorrt or pycuda is missing.
        BackendError: The identity cannot be read.
    """
    got = _resolve(identity or TRT_IDENTITY)(device_id)
    if not isinstance(got, Mapping):
        raise BackendError("the device identity is not a mapping")
    return {str(k): str(v) for k, v in got.items()}


def build_plan(
    onnx: bytes | bytearray | memoryview,
    recipe: Mapping[str, Any],
    *,
    device_id: int = 0,
    dla_core: int | None = None,
    builder: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Build a TensorRT plan on this device from a signed ONNX member and its recipe.

    Args:
        onnx: The member's ONNX bytes.
        recipe: Its signed :class:`~edgeguard.policy.engine.MemberRecipe` as a mapping.
        device_id: The CUDA device.
        dla_core: The DLA core, or None for the GPU.
        builder: ``module:function`` (default :data:`TRT_BUILDER`).

    Returns:
        The plan and the identity it was built for.

    Raises:
        MissingDependencyError: tensorrt or pycuda is missing.
        BackendError: The build failed or returned no plan.
    """
    from edgeguard.policy.engine import MemberRecipe

    member_recipe = MemberRecipe.from_dict(dict(recipe), "engine recipe")
    if member_recipe.dla_core != dla_core:

        def on(core: int | None) -> str:
            return "the GPU" if core is None else f"DLA core {core}"

        raise BackendError(
            f"the member is placed on {on(dla_core)} but its signed recipe builds for "
            f"{on(member_recipe.dla_core)}",
            hint="rebuild the bundle with a placement and a recipe that agree",
        )
    built = _resolve(builder or TRT_BUILDER)(onnx, member_recipe, device_id=device_id)
    plan = getattr(built, "plan", None)
    if not isinstance(plan, (bytes, bytearray, memoryview)) or not memoryview(plan).nbytes:
        raise BackendError("the TensorRT build returned no plan")
    ident = getattr(built, "identity", {})
    return bytes(plan), {str(k): str(v) for k, v in dict(ident).items()}


def _load_plan(
    data: bytes | bytearray | memoryview, *, plan_loader: str | None = None, **opts: Any
) -> Backend:
    """A TensorRT plan through the TensorRT backend (or :data:`TRT_PLAN_LOADER`'s double)."""
    loader = plan_loader or TRT_PLAN_LOADER
    if loader is not None:  # a test double's loader (no GPU here)
        return _resolve(str(loader))(data, **opts)  # type: ignore[no-any-return]
    from edgeguard.backends.tensorrt import TensorRTBackend

    return TensorRTBackend.from_engine_bytes(data, **opts)


def _build_and_load(
    onnx: bytes | bytearray | memoryview,
    *,
    recipe: Mapping[str, Any],
    artifact_fd: int | None = None,
    builder: str | None = None,
    plan_loader: str | None = None,
    device_id: int = 0,
    dla_core: int | None = None,
    **opts: Any,
) -> Backend:
    """``load_backend("trt-build", ...)``: build the plan, write it to ``artifact_fd``
    (a memfd of the engine cache, written with ``pwrite`` on the descriptor the caller
    holds: nothing is opened), then load it."""
    plan, _identity = build_plan(
        onnx, recipe, device_id=device_id, dla_core=dla_core, builder=builder
    )
    if artifact_fd is not None:
        view, off = memoryview(plan), 0
        while off < len(view):
            off += os.pwrite(artifact_fd, view[off:], off)
    return _load_plan(plan, plan_loader=plan_loader, device_id=device_id, dla_core=dla_core, **opts)

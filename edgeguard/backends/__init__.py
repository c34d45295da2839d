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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgeguard.backends.base import Backend, TensorSpec
from edgeguard.errors import BackendError, MalformedError, UsageError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "ARTIFACT_FORMATS",
    "FORMATS",
    "TRT_BUILDER",
    "TRT_IDENTITY",
    "TRT_PLAN_LOADER",
    "Backend",
    "BuiltPlan",
    "TensorSpec",
    "build_plan",
    "device_identity",
    "load_backend",
    "read_calibration",
]

#: ``module:function`` that builds a TensorRT plan on this device from a signed ONNX
#: member and its recipe: ``function(onnx, recipe: MemberRecipe, *, device_id,
#: progress=..., calibration=..., timing_cache=...)`` (the last three only when there are
#: some) returning an object with ``plan`` (bytes), ``identity`` (the GPU and TensorRT it
#: was built for) and ``timing_cache`` (bytes or None), as
#: :func:`edgeguard.backends.tensorrt.build_engine` does (the recipe's ``dla_core`` picks
#: a DLA core). The seam through which tests put a test double.
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


@dataclass(frozen=True)
class BuiltPlan:
    """A TensorRT plan built on this device (:func:`build_plan`).

    Attributes:
        plan: The serialised plan.
        identity: The GPU and TensorRT it was built for.
        timing_cache: The builder's timing cache after the build, or None (the recipe
            keeps none, or the builder returned none).
    """

    plan: bytes = field(repr=False)
    identity: dict[str, str]
    timing_cache: bytes | None = field(default=None, repr=False)


def build_plan(
    onnx: bytes | bytearray | memoryview,
    recipe: Mapping[str, Any],
    *,
    device_id: int = 0,
    dla_core: int | None = None,
    builder: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    calibration: Mapping[str, np.ndarray] | None = None,
    timing_cache: bytes | None = None,
) -> BuiltPlan:
    """Build a TensorRT plan on this device from a signed ONNX member and its recipe.

    Args:
        onnx: The member's ONNX bytes.
        recipe: Its signed :class:`~edgeguard.policy.engine.MemberRecipe` as a mapping.
        device_id: The CUDA device.
        dla_core: The DLA core, or None for the GPU.
        builder: ``module:function`` (default :data:`TRT_BUILDER`).
        progress: ``progress(phase, done, total)``, passed to the builder (only when
            given): TensorRT's progress monitor.
        calibration: The INT8 calibration frames by input name (only when given).
        timing_cache: A timing cache of an earlier build on this device (only when
            given; only for a recipe with ``timing_cache: true``).

    Returns:
        The plan, the identity it was built for, and the updated timing cache.

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
    if timing_cache is not None and not member_recipe.timing_cache:
        raise UsageError("a timing cache was given but the signed recipe keeps none")
    kw: dict[str, Any] = {"device_id": device_id}
    if progress is not None:
        kw["progress"] = progress
    if calibration is not None:
        kw["calibration"] = calibration
    if timing_cache is not None:
        kw["timing_cache"] = timing_cache
    built = _resolve(builder or TRT_BUILDER)(onnx, member_recipe, **kw)
    plan = getattr(built, "plan", None)
    if not isinstance(plan, (bytes, bytearray, memoryview)) or not memoryview(plan).nbytes:
        raise BackendError("the TensorRT build returned no plan")
    ident = getattr(built, "identity", {})
    cache = getattr(built, "timing_cache", None)
    if not isinstance(cache, (bytes, bytearray, memoryview)) or not memoryview(cache).nbytes:
        cache = None
    return BuiltPlan(
        plan=bytes(plan),
        identity={str(k): str(v) for k, v in dict(ident).items()},
        timing_cache=None if cache is None else bytes(cache),
    )


def read_calibration(
    source: int | bytes | bytearray | memoryview,
) -> dict[str, np.ndarray]:
    """The INT8 calibration frames of an ``npz`` member, read with the strict array reader.

    Args:
        source: The member's plaintext (bytes-like, copied into a memfd) or a memfd
            holding it (a sandboxed worker's sealed calibration memfd). Nothing is
            written to a file; no pickle is ever loaded
            (:func:`~edgeguard.arrayfile.open_arrays`).

    Returns:
        Each array of the archive by name (the model's input names).

    Raises:
        MalformedError: Not an ``npz`` archive of numeric arrays, or over a limit.
    """
    from pathlib import Path

    from edgeguard.arrayfile import open_arrays

    own: int | None = None
    if isinstance(source, int):
        fd = source
    else:
        data = bytes(memoryview(source).cast("B"))
        if not data:
            raise MalformedError("the INT8 calibration member is empty")
        fd = own = os.memfd_create("edgeguard-calibration", os.MFD_CLOEXEC)
    try:
        if own is not None:
            _pwrite_all(own, data)
        path = Path(f"/proc/self/fd/{fd}")
        try:
            arrays = open_arrays(path)
            if "" in arrays.headers:
                raise MalformedError("is a single .npy array, not an npz archive")
            out = arrays.read()
        except (MalformedError, UsageError) as exc:
            raise MalformedError(
                "the INT8 calibration member is not a readable npz archive of frames: "
                + str(exc).replace(str(path), "the member"),
                hint="rebuild the bundle with `edgeguard build --int8`",
            ) from None
    finally:
        if own is not None:
            os.close(own)
    if not out:
        raise MalformedError("the INT8 calibration member holds no frames")
    return out


def _load_plan(
    data: bytes | bytearray | memoryview, *, plan_loader: str | None = None, **opts: Any
) -> Backend:
    """A TensorRT plan through the TensorRT backend (or :data:`TRT_PLAN_LOADER`'s double)."""
    loader = plan_loader or TRT_PLAN_LOADER
    if loader is not None:  # a test double's loader (no GPU here)
        return _resolve(str(loader))(data, **opts)  # type: ignore[no-any-return]
    from edgeguard.backends.tensorrt import TensorRTBackend

    return TensorRTBackend.from_engine_bytes(data, **opts)


def _pwrite_all(fd: int, data: bytes) -> None:
    view, off = memoryview(data), 0
    while off < len(view):
        off += os.pwrite(fd, view[off:], off)


def _build_and_load(
    onnx: bytes | bytearray | memoryview,
    *,
    recipe: Mapping[str, Any],
    artifact_fd: int | None = None,
    builder: str | None = None,
    plan_loader: str | None = None,
    device_id: int = 0,
    dla_core: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    calibration: int | bytes | bytearray | memoryview | None = None,
    timing_cache: bytes | bytearray | memoryview | None = None,
    timing_cache_fd: int | None = None,
    **opts: Any,
) -> Backend:
    """``load_backend("trt-build", ...)``: build the plan, write it to ``artifact_fd``
    (a memfd of the engine cache, written with ``pwrite`` on the descriptor the caller
    holds: nothing is opened), then load it.

    ``progress`` goes to the builder; ``calibration`` is the INT8 calibration member's
    ``npz`` (bytes, or a memfd holding them), read with :func:`read_calibration`;
    ``timing_cache`` is the sealed timing cache of earlier builds, and the updated one is
    written to ``timing_cache_fd`` (a memfd, like the plan) when the builder returns one.
    """
    frames = None if calibration is None else read_calibration(calibration)
    built = build_plan(
        onnx,
        recipe,
        device_id=device_id,
        dla_core=dla_core,
        builder=builder,
        progress=progress,
        calibration=frames,
        timing_cache=None if timing_cache is None else bytes(timing_cache),
    )
    if artifact_fd is not None:
        _pwrite_all(artifact_fd, built.plan)
    if timing_cache_fd is not None and built.timing_cache is not None:
        _pwrite_all(timing_cache_fd, built.timing_cache)
    if recipe.get("engine_host_code_allowed") is True:
        opts["allow_host_code"] = True  # the signed recipe built it with host code in
    return _load_plan(
        built.plan, plan_loader=plan_loader, device_id=device_id, dla_core=dla_core, **opts
    )

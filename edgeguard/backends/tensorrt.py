"""TensorRT backend and engine builder (backends layer; GPU hosts only).

Written against the TensorRT 10 Python API: engines are deserialised from
memory with ``trt.Runtime(logger).deserialize_cuda_engine(bytes)``, tensors are
addressed by name (``num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode``
/ ``set_input_shape`` / ``set_tensor_address``) and run with
``execute_async_v3`` on the backend's own CUDA stream. Device memory and pinned
host staging buffers come from pycuda, used in the device's *primary* context
(the one TensorRT's CUDA runtime calls use).

* :class:`TensorRTBackend` - the GPU member path: one stream per backend, each
  input copied to the device once, an optional device check (the CUDA C++ sanity
  kernel, :meth:`TensorRTBackend.run_with_stats`) on that device buffer before
  ``execute_async_v3``, one synchronisation per frame, optional CUDA graphs. The
  order of a frame is built by :mod:`edgeguard.backends.trt_frame` (pure code).
* :func:`build_engine` - an engine built on the device from a signed
  :class:`~edgeguard.policy.engine.MemberRecipe`; :func:`platform_identity`.
* :func:`build_engine_from_onnx` - the older one-input builder.

Security-relevant defaults: engines that embed host code (version-compatible
lean runtimes, plugins) are refused unless ``allow_host_code=True`` is passed,
which the runtime layer does only when the signed bundle policy allows it; the
builder excludes the lean runtime unless the recipe allows host code.

tensorrt and pycuda are imported lazily; without them every entry point raises
:class:`~edgeguard.errors.MissingDependencyError` naming the ``trt`` or ``cuda``
extra. NOTE: this module type-checks against ``tensorrt-stubs`` and its host-side
logic is tested with recording test doubles, but it has never run on a GPU
(see docs/backends.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from edgeguard._optional import require
from edgeguard.backends.base import Backend, Dim, TensorSpec
from edgeguard.backends.trt_frame import BufferPool, DeviceCheck, FramePlanner, Op, ShapeKey, Step
from edgeguard.errors import BackendError, InternalError, MissingDependencyError, UsageError
from edgeguard.policy.engine import MemberRecipe

if TYPE_CHECKING:
    import tensorrt as trt_t  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "IDENTITY_KEYS",
    "BuiltEngine",
    "Precision",
    "TensorRTBackend",
    "build_engine",
    "build_engine_from_onnx",
    "platform_identity",
]

Precision = Literal["fp32", "fp16", "int8"]
_PURPOSE = "The TensorRT backend"


def _require_trt() -> None:
    """Import tensorrt or raise MissingDependencyError(extra="trt")."""
    mod = require("tensorrt", extra="trt", purpose=_PURPOSE)
    # tensorrt-stubs installs a bare ``tensorrt/`` directory with only .pyi files,
    # which Python imports as an empty namespace package: that is not TensorRT.
    if not hasattr(mod, "Runtime") or not hasattr(mod, "Builder"):
        raise MissingDependencyError("tensorrt", "trt", purpose=_PURPOSE)


def _require_cuda() -> Any:
    """Import pycuda.driver (untyped) or raise MissingDependencyError(extra="cuda")."""
    return require("pycuda.driver", extra="cuda", purpose="TensorRT device memory (pycuda)")


def _np_dtype(trt: Any, dtype: Any, name: str) -> str:
    try:
        return str(np.dtype(trt.nptype(dtype)).name)
    except TypeError as exc:
        raise BackendError(f"TensorRT tensor {name!r} has unsupported type {dtype}") from exc


def _ints(dims: Any) -> tuple[int, ...]:
    """A ``trt.Dims`` (tuple-like: ``len`` and indexing) as a tuple of ints."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def _dims(dims: Any) -> tuple[Dim, ...]:
    return tuple(None if d < 0 else d for d in _ints(dims))


class _Device:
    """The primary CUDA context of one device, pushed around every CUDA call."""

    def __init__(self, cuda: Any, device_id: int) -> None:
        try:
            cuda.init()
            if device_id >= cuda.Device.count():
                raise UsageError(
                    f"CUDA device {device_id} does not exist ({cuda.Device.count()} found)"
                )
            self.device = cuda.Device(device_id)
            self.context = self.device.retain_primary_context()
        except UsageError:
            raise
        except Exception as exc:
            raise BackendError(f"cannot initialise CUDA device {device_id}: {exc}") from exc

    def __enter__(self) -> _Device:
        self.context.push()
        return self

    def __exit__(self, *exc: object) -> None:
        self.context.pop()

    def release(self) -> None:
        self.context.detach()


class _CudaGraphs:
    """CUDA graph capture through the driver API (``libcuda.so.1``, ctypes).

    pycuda has no stream-capture API, so the four calls the backend needs
    (``cuStreamBeginCapture_v2``, ``cuStreamEndCapture``, ``cuGraphInstantiateWithFlags``,
    ``cuGraphLaunch``) are made directly on the driver library pycuda itself uses.
    Capture mode is thread-local, as TensorRT's samples use. Never run on a GPU here.
    """

    _THREAD_LOCAL = 1

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
            self._begin = lib.cuStreamBeginCapture_v2
            self._end = lib.cuStreamEndCapture
            self._instantiate = lib.cuGraphInstantiateWithFlags
            self._launch = lib.cuGraphLaunch
            self._destroy_graph = lib.cuGraphDestroy
            self._destroy_exec = lib.cuGraphExecDestroy
        except (OSError, AttributeError) as exc:
            raise BackendError(
                f"CUDA graphs need the NVIDIA driver's libcuda.so.1 (CUDA 11.4 or later): {exc}"
            ) from exc
        for fn in (self._begin, self._end, self._instantiate, self._launch):
            fn.restype = ctypes.c_int
        self._begin.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self._end.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        self._instantiate.argtypes = [
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_void_p,
            ctypes.c_ulonglong,
        ]
        self._launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self._destroy_graph.argtypes = [ctypes.c_void_p]
        self._destroy_exec.argtypes = [ctypes.c_void_p]

    @staticmethod
    def _ok(rc: int, what: str) -> None:
        if rc != 0:
            raise BackendError(f"{what} failed (CUresult {rc})")

    def capture(self, stream: int, enqueue: Callable[[], None]) -> int:
        """Capture what ``enqueue`` puts on ``stream`` and return the instantiated graph."""
        self._ok(self._begin(ctypes.c_void_p(stream), self._THREAD_LOCAL), "cuStreamBeginCapture")
        graph = ctypes.c_void_p()
        try:
            enqueue()
        finally:
            rc = self._end(ctypes.c_void_p(stream), ctypes.byref(graph))
        self._ok(rc, "cuStreamEndCapture")
        executable = ctypes.c_void_p()
        try:
            self._ok(self._instantiate(ctypes.byref(executable), graph, 0), "cuGraphInstantiate")
        finally:
            self._destroy_graph(graph)
        return int(executable.value or 0)

    def launch(self, executable: int, stream: int) -> None:
        """Replay a captured graph on ``stream``."""
        self._ok(
            self._launch(ctypes.c_void_p(executable), ctypes.c_void_p(stream)), "cuGraphLaunch"
        )

    def destroy(self, executable: int) -> None:
        """Free an instantiated graph."""
        self._destroy_exec(ctypes.c_void_p(executable))


def _load_graph_api() -> _CudaGraphs:
    """The CUDA graph API (a seam: host tests replace it with a recording test double)."""
    return _CudaGraphs()


def _free_pinned(buf: Any) -> None:
    base = getattr(buf, "base", None)
    if base is not None and hasattr(base, "free"):
        base.free()


R = TypeVar("R")


class TensorRTBackend(Backend):
    """A deserialised TensorRT engine with one execution context and one CUDA stream.

    Create it with :meth:`from_engine_bytes`. Inputs with dynamic dimensions take
    any shape inside the engine's optimisation profile 0.

    Each frame: the feeds are copied into pinned host staging buffers, then on the
    backend's own stream each input goes to the device once (asynchronously), the
    optional device check (:meth:`run_with_stats`) runs on that device buffer, then
    ``execute_async_v3``, then the check's small result and the outputs come back
    (asynchronously); one synchronisation per frame. With ``cuda_graph=True`` the
    stream part is captured once per set of input shapes and replayed. The order is
    built by :class:`~edgeguard.backends.trt_frame.FramePlanner` (pure, host-tested).
    Never run on a GPU in this repository (see docs/backends.md).
    """

    name = "tensorrt"

    def __init__(
        self,
        *,
        engine: trt_t.ICudaEngine,
        runtime: trt_t.Runtime,
        logger: trt_t.ILogger,
        device: _Device,
        cuda: Any,
        dla_core: int | None,
        device_id: int = 0,
        cuda_graph: bool = False,
    ) -> None:
        """Wrap a deserialised engine; prefer :meth:`from_engine_bytes`."""
        super().__init__()
        import tensorrt as trt  # type: ignore[import-untyped, unused-ignore]

        self._trt_version = str(getattr(trt, "__version__", "unknown"))
        self._engine = engine
        self._runtime = runtime
        self._logger = logger
        self._device = device
        self._device_id = device_id
        self._cuda = cuda
        self._dla_core = dla_core
        ins: list[TensorSpec] = []
        outs: list[TensorSpec] = []
        for i in range(engine.num_io_tensors):
            tname = engine.get_tensor_name(i)
            spec = TensorSpec(
                name=tname,
                dtype=_np_dtype(trt, engine.get_tensor_dtype(tname), tname),
                shape=_dims(engine.get_tensor_shape(tname)),
            )
            mode = engine.get_tensor_mode(tname)
            if mode == trt.TensorIOMode.INPUT:
                ins.append(spec)
            elif mode == trt.TensorIOMode.OUTPUT:
                outs.append(spec)
        self._in = tuple(ins)
        self._out = tuple(outs)
        self._graphs: _CudaGraphs | None = _load_graph_api() if cuda_graph else None
        self._graph_exec: int | None = None
        self._graph_error: str | None = None
        self._graph_check: object = None
        with device:
            self._context = engine.create_execution_context()
            if self._context is None:
                raise BackendError("TensorRT could not create an execution context")
            self._stream = cuda.Stream()
        self._dev: BufferPool[Any] = BufferPool(cuda.mem_alloc, lambda a: a.free())
        self._pinned: BufferPool[Any] = BufferPool(
            lambda n: cuda.pagelocked_empty(n, np.uint8), _free_pinned
        )
        self._planner = FramePlanner(
            [s.name for s in ins], [s.name for s in outs], cuda_graph=cuda_graph
        )
        self._graph_generation = -1
        self._nbytes: dict[str, int] = {}
        self._out_shapes: dict[str, tuple[int, ...]] = {}
        self._check_bytes = (0, 0)
        self._syncs = 0

    @classmethod
    def from_engine_bytes(
        cls,
        engine: bytes | bytearray | memoryview,
        *,
        device_id: int = 0,
        dla_core: int | None = None,
        allow_host_code: bool = False,
        cuda_graph: bool = False,
    ) -> TensorRTBackend:
        """Deserialise a TensorRT engine from memory.

        Args:
            engine: The serialised engine (plan). Never written to disk.
            device_id: CUDA device ordinal.
            dla_core: DLA core the engine was built for (``runtime.DLA_core``), or
                None for the GPU.
            allow_host_code: Allow engines that embed host executable code. Off by
                default; only a signed bundle policy should turn it on.
            cuda_graph: Capture each frame's stream work in a CUDA graph once per set
                of input shapes and replay it (falls back to plain launches, recorded
                in :meth:`describe`, if TensorRT cannot be captured).

        Returns:
            The loaded backend.

        Raises:
            MissingDependencyError: tensorrt (extra ``trt``) or pycuda (extra ``cuda``)
                is not installed.
            UsageError: Bad argument types or values.
            BackendError: CUDA or TensorRT cannot load the engine.
        """
        if not isinstance(engine, (bytes, bytearray, memoryview)):
            raise UsageError(f"the engine must be bytes-like, got {type(engine).__name__}")
        if not isinstance(allow_host_code, bool):
            raise UsageError("allow_host_code must be a bool")
        if not isinstance(cuda_graph, bool):
            raise UsageError("cuda_graph must be a bool")
        _check_index(device_id, "device_id")
        if dla_core is not None:
            _check_index(dla_core, "dla_core")
        _require_trt()
        cuda = _require_cuda()
        import tensorrt as trt  # type: ignore[import-untyped, unused-ignore]

        logger = trt.Logger(trt.Logger.WARNING)
        device = _Device(cuda, device_id)
        try:
            with device:
                runtime = trt.Runtime(logger)
                runtime.engine_host_code_allowed = allow_host_code
                if dla_core is not None:
                    if dla_core >= runtime.num_DLA_cores:
                        raise UsageError(
                            f"DLA core {dla_core} does not exist "
                            f"({runtime.num_DLA_cores} DLA cores on this device)"
                        )
                    runtime.DLA_core = dla_core
                plan = engine if isinstance(engine, bytes) else bytes(engine)
                cuda_engine = runtime.deserialize_cuda_engine(plan)
                if cuda_engine is None:
                    raise BackendError(
                        "TensorRT cannot deserialise the engine (corrupt, built for another "
                        "GPU or TensorRT version, or it embeds host code that is not allowed)"
                    )
            return cls(
                engine=cuda_engine,
                runtime=runtime,
                logger=logger,
                device=device,
                cuda=cuda,
                dla_core=dla_core,
                device_id=device_id,
                cuda_graph=cuda_graph,
            )
        except BaseException:
            device.release()
            raise

    @classmethod
    def from_built(
        cls,
        plan: bytes | bytearray | memoryview,
        recipe: MemberRecipe,
        *,
        device_id: int = 0,
        cuda_graph: bool = False,
    ) -> TensorRTBackend:
        """Load a plan built from ``recipe`` on the recipe's placement.

        The DLA core and the host-code permission come from the signed recipe
        (``dla_core``, ``engine_host_code_allowed``); see :meth:`from_engine_bytes`.
        """
        return cls.from_engine_bytes(
            plan,
            device_id=device_id,
            dla_core=getattr(recipe, "dla_core", None),
            allow_host_code=bool(getattr(recipe, "engine_host_code_allowed", False)),
            cuda_graph=cuda_graph,
        )

    def _inputs(self) -> tuple[TensorSpec, ...]:
        return self._in

    def _outputs(self) -> tuple[TensorSpec, ...]:
        return self._out

    @property
    def synchronizations(self) -> int:
        """Stream synchronisations so far (one per frame)."""
        return self._syncs

    def run_with_stats(
        self, feeds: Mapping[str, np.ndarray], check: DeviceCheck[R]
    ) -> tuple[dict[str, np.ndarray], R]:
        """Run one frame and a device check of one input on the same stream.

        The check (for the sanity statistics: ``edgeguard.guard.sanity.cuda_cpp.
        DeviceSanityCheck``, whose result is a ``FrameStats``) reads the input's
        device buffer after the host-to-device copy and before ``execute_async_v3``;
        only its result buffer is copied back. The caller, not this backend, turns
        the result into a verdict.

        Args:
            feeds: One array per model input, by input name.
            check: The device check; it must live on this backend's device.

        Returns:
            The outputs (as :meth:`run`) and the check's decoded result.

        Raises:
            UsageError: As :meth:`run`; the check names no input of this model, or
                lives on another device, or cannot read the input.
            BackendError: A CUDA or TensorRT call failed.
        """
        self._check_open()
        specs = self._inputs()
        self._validate_feeds(feeds, specs)
        name = getattr(check, "input_name", None)
        if name not in {s.name for s in specs}:
            raise UsageError(
                f"the device check reads input {name!r}, which this model does not have"
            )
        if getattr(check, "device_id", None) != self._device_id:
            raise UsageError(
                f"the device check lives on CUDA device {getattr(check, 'device_id', None)}, "
                f"this backend on device {self._device_id}"
            )
        arrays = {s.name: np.ascontiguousarray(feeds[s.name]) for s in specs}
        outputs, raw = self._frame(arrays, check)
        self._validate_outputs(outputs)
        x = arrays[check.input_name]
        return outputs, check.finish(raw, shape=tuple(int(d) for d in x.shape), dtype=str(x.dtype))

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs, _ = self._frame(feeds, None)
        return outputs

    def _frame(
        self, feeds: dict[str, np.ndarray], check: DeviceCheck[Any] | None
    ) -> tuple[dict[str, np.ndarray], npt.NDArray[np.uint8]]:
        """Run one frame; returns the outputs and a copy of the check's result bytes."""
        arrays = {s.name: np.ascontiguousarray(feeds[s.name]) for s in self._in}
        key = self._planner.key(
            {n: tuple(int(d) for d in a.shape) for n, a in arrays.items()},
            None if check is None else check.input_name,
            id(check),
        )
        results: dict[str, np.ndarray] = {}
        raw = np.empty(0, np.uint8)
        step = Step(Op.STAGE)
        with self._device:
            try:
                for step in self._planner.plan(key):
                    if step.op is Op.CAPTURE:
                        self._capture(key, arrays, check)
                    else:
                        self._do(step, arrays, check, results)
                if check is not None:
                    raw = self._pinned.handle("check:result")[: self._check_bytes[1]].copy()
            except BaseException as exc:
                self._drain()
                if isinstance(exc, (UsageError, BackendError, MissingDependencyError)):
                    raise
                if not isinstance(exc, Exception):
                    raise  # KeyboardInterrupt, SystemExit
                raise BackendError(
                    f"TensorRT GPU path failed at {step.op.value} {step.tensor}: {exc}".rstrip()
                ) from exc
        return results, raw

    def _drain(self) -> None:
        """After a failed frame, wait for work already queued (best effort).

        The next frame overwrites the pinned staging buffers, which a copy still
        queued from the failed frame may be reading.
        """
        with contextlib.suppress(Exception):  # the original error is the one to report
            self._stream.synchronize()

    def _do(
        self,
        step: Step,
        arrays: dict[str, np.ndarray],
        check: DeviceCheck[Any] | None,
        results: dict[str, np.ndarray],
    ) -> None:
        """One pycuda or TensorRT call per step."""
        import tensorrt as trt  # type: ignore[import-untyped, unused-ignore]

        cuda, ctx, stream, name = self._cuda, self._context, self._stream, step.tensor
        op = step.op
        if op is Op.STAGE:
            arr = arrays[name]
            self._nbytes[name] = arr.nbytes
            pinned = self._pinned.get("in:" + name, arr.nbytes)
            pinned[: arr.nbytes] = arr.reshape(-1).view(np.uint8)
            self._dev.get("in:" + name, arr.nbytes)
        elif op is Op.SET_SHAPE:
            shape = arrays[name].shape
            if not bool(ctx.set_input_shape(name, trt.Dims(list(shape)))):
                lo, _, hi = self._engine.get_tensor_profile_shape(name, 0)
                raise UsageError(
                    f"input {name!r} shape {shape} is outside the engine's "
                    f"optimisation profile ({_ints(lo)} .. {_ints(hi)})"
                )
        elif op is Op.SET_ADDR:
            if name in arrays:
                address = int(self._dev.handle("in:" + name))
            else:
                shape = _ints(ctx.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise BackendError(f"TensorRT left output {name!r} shape {shape} open")
                spec = next(s for s in self._out if s.name == name)
                nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
                self._out_shapes[name] = shape
                self._nbytes[name] = nbytes
                self._pinned.get("out:" + name, nbytes)
                address = int(self._dev.get("out:" + name, nbytes))
            if not bool(ctx.set_tensor_address(name, address)):
                raise BackendError(f"TensorRT refused the device address of {name!r}")
        elif op is Op.H2D:
            n = self._nbytes[name]
            cuda.memcpy_htod_async(
                self._dev.handle("in:" + name), self._pinned.handle("in:" + name)[:n], stream
            )
        elif op is Op.CHECK:
            assert check is not None
            arr = arrays[name]
            shape, dtype = tuple(int(d) for d in arr.shape), str(arr.dtype)
            scratch, size = check.device_buffers(shape, dtype)
            self._check_bytes = (scratch, size)
            self._pinned.get("check:result", size)
            check.enqueue(
                x=int(self._dev.handle("in:" + name)),
                shape=shape,
                dtype=dtype,
                scratch=int(self._dev.get("check:scratch", scratch)),
                result=int(self._dev.get("check:result", size)),
                stream=stream,
            )
        elif op is Op.EXECUTE:
            if not ctx.execute_async_v3(stream.handle):
                raise BackendError("TensorRT execute_async_v3 failed")
        elif op is Op.D2H_CHECK:
            size = self._check_bytes[1]
            cuda.memcpy_dtoh_async(
                self._pinned.handle("check:result")[:size], self._dev.handle("check:result"), stream
            )
        elif op is Op.D2H:
            n = self._nbytes[name]
            cuda.memcpy_dtoh_async(
                self._pinned.handle("out:" + name)[:n], self._dev.handle("out:" + name), stream
            )
        elif op is Op.GRAPH_LAUNCH:
            if self._graph_exec is None or self._graph_generation != self._generation():
                raise BackendError("the captured CUDA graph refers to buffers that moved")
            assert self._graphs is not None
            self._graphs.launch(self._graph_exec, stream.handle)
        elif op is Op.SYNC:
            stream.synchronize()
            self._syncs += 1
        elif op is Op.UNSTAGE:
            spec = next(s for s in self._out if s.name == name)
            n = self._nbytes[name]
            raw = self._pinned.handle("out:" + name)[:n]
            results[name] = raw.view(spec.dtype).reshape(self._out_shapes[name]).copy()
        else:  # pragma: no cover - every Op is handled above
            raise InternalError(f"unknown frame step {op}")

    def _generation(self) -> int:
        return self._dev.generation * 1_000_003 + self._pinned.generation

    def _capture(
        self, key: ShapeKey, arrays: dict[str, np.ndarray], check: DeviceCheck[Any] | None
    ) -> None:
        """Capture the stream steps of the frame just run (its shapes and buffers)."""
        assert self._graphs is not None
        if self._graph_exec is not None:
            self._graphs.destroy(self._graph_exec)
            self._graph_exec = None
        self._planner.invalidate()
        steps = self._planner.stream_steps(key[1] or None)
        unused: dict[str, np.ndarray] = {}

        def enqueue() -> None:
            for s in steps:
                self._do(s, arrays, check, unused)

        try:
            self._graph_exec = self._graphs.capture(self._stream.handle, enqueue)
        except (UsageError, MissingDependencyError):
            raise
        except Exception as exc:
            # TensorRT cannot capture some engines (data-dependent shapes, loops):
            # keep running them eagerly and say why in describe().
            self._graph_error = str(exc)
            self._planner.disable_graph()
            return
        self._graph_generation = self._generation()
        self._graph_check = check  # keeps id(check) in the key unique while captured
        self._planner.captured(key)

    def _close_impl(self) -> None:
        try:
            with self._device:
                if self._graph_exec is not None and self._graphs is not None:
                    self._graphs.destroy(self._graph_exec)
                    self._graph_exec = None
                try:
                    self._dev.release()
                finally:
                    self._pinned.release()
                del self._context
                del self._engine
                del self._runtime
        finally:
            self._device.release()

    def _describe_impl(self) -> dict[str, Any]:
        return {
            "tensorrt": self._trt_version,
            "device": str(self._device.device.name()),
            "dla_core": self._dla_core,
            "cuda_graph": self._planner.cuda_graph,
            "graph_captures": self._planner.captures,
            "graph_error": self._graph_error,
        }


def build_engine_from_onnx(
    onnx_bytes: bytes | bytearray | memoryview,
    *,
    precision: Precision,
    dla_core: int | None,
    workspace_bytes: int,
    max_batch: int = 64,
    opt_batch: int = 1,
    calibration: np.ndarray | None = None,
    device_id: int = 0,
) -> bytes:
    """Build a serialised TensorRT engine from an ONNX model held in memory.

    The engine is built for the GPU this runs on (engines are not portable across
    GPU architectures or TensorRT versions): build it on the target Jetson.

    Args:
        onnx_bytes: The ONNX model.
        precision: ``"fp32"``, ``"fp16"`` (FP16 kernels allowed) or ``"int8"`` (INT8
            with FP16 fallback; needs ``calibration``). DLA needs fp16 or int8.
        dla_core: Build for this DLA core with GPU fallback, or None for the GPU only.
        workspace_bytes: Limit of the builder's workspace memory pool.
        max_batch: Largest batch size of the optimisation profile (dynamic first axis).
        opt_batch: Batch size TensorRT tunes for.
        calibration: INT8 calibration inputs for the (single) network input, float32
            with the input's shape; batches of ``opt_batch`` are fed to an entropy
            calibrator (deprecated in TensorRT 10.1 but still supported).
        device_id: CUDA device ordinal (used for INT8 calibration buffers).

    Returns:
        The serialised engine bytes.

    Raises:
        UsageError: Invalid argument combination.
        MissingDependencyError: tensorrt (or, for INT8, pycuda) is missing.
        BackendError: TensorRT cannot parse the model or build the engine.
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise UsageError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    if dla_core is not None:
        _check_index(dla_core, "dla_core")
        if precision == "fp32":
            raise UsageError("DLA runs fp16 or int8 only; choose precision fp16 or int8")
    if isinstance(workspace_bytes, bool) or not isinstance(workspace_bytes, int):
        raise UsageError("workspace_bytes must be an int")
    if workspace_bytes < 1 << 20:
        raise UsageError("workspace_bytes must be at least 1 MiB")
    if not (isinstance(opt_batch, int) and isinstance(max_batch, int)):
        raise UsageError("opt_batch and max_batch must be ints")
    if not 1 <= opt_batch <= max_batch:
        raise UsageError("need 1 <= opt_batch <= max_batch")
    if precision == "int8" and calibration is None:
        raise UsageError("int8 needs calibration data (for example edgeguard.data calib split)")
    if not isinstance(onnx_bytes, (bytes, bytearray, memoryview)):
        raise UsageError(f"the ONNX model must be bytes-like, got {type(onnx_bytes).__name__}")
    _require_trt()
    import tensorrt as trt  # type: ignore[import-untyped, unused-ignore]

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if dla_core is not None and dla_core >= builder.num_DLA_cores:
        raise UsageError(
            f"DLA core {dla_core} does not exist ({builder.num_DLA_cores} DLA cores here)"
        )
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not bool(parser.parse(bytes(onnx_bytes))):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse the ONNX model: {errors or 'unknown error'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = _ints(tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise UsageError(f"input {tensor.name!r} {shape}: only the first axis may be dynamic")
        rest = shape[1:]
        fixed_batch = shape[0] if shape and shape[0] >= 0 else None
        lo, opt, hi = (
            (fixed_batch, fixed_batch, fixed_batch)
            if fixed_batch is not None
            else (1, opt_batch, max_batch)
        )
        profile.set_shape(
            tensor.name, trt.Dims([lo, *rest]), trt.Dims([opt, *rest]), trt.Dims([hi, *rest])
        )
    config.add_optimization_profile(profile)

    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if precision != "int8":
        serialized = builder.build_serialized_network(network, config)
    else:
        assert calibration is not None
        if network.num_inputs != 1:
            raise UsageError("int8 calibration supports single-input models only")
        config.set_flag(trt.BuilderFlag.INT8)
        cuda = _require_cuda()
        device = _Device(cuda, device_id)
        try:
            with device:  # calibration buffers live in the primary context
                calibrator = _make_calibrator(cuda, np.asarray(calibration), opt_batch)
                try:
                    config.int8_calibrator = calibrator
                    config.set_calibration_profile(profile)
                    serialized = builder.build_serialized_network(network, config)
                finally:
                    calibrator.free()
        finally:
            device.release()
    if serialized is None:
        raise BackendError("TensorRT failed to build the engine (see the TensorRT log above)")
    return bytes(serialized)


def _make_calibrator(cuda: Any, data: np.ndarray, batch: int) -> Any:
    """An entropy calibrator feeding ``data`` in batches of ``batch`` (needs a CUDA context)."""
    import tensorrt as trt  # type: ignore[import-untyped, unused-ignore]

    if data.dtype != np.float32 or data.ndim < 1 or len(data) < batch:
        raise UsageError(f"calibration data must be float32 with >= {batch} samples")

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, unused-ignore]
        def __init__(self) -> None:
            super().__init__()
            self._data = np.ascontiguousarray(data)
            self._pos = 0
            self._dmem = cuda.mem_alloc(self._data[:batch].nbytes)

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int]:
            if self._pos + batch > len(self._data):
                return []  # no more batches
            chunk = np.ascontiguousarray(self._data[self._pos : self._pos + batch])
            self._pos += batch
            cuda.memcpy_htod(self._dmem, chunk)
            return [int(self._dmem)] * len(names)

        def read_calibration_cache(self) -> Any:
            return None  # always calibrate from the data; no cache files

        def write_calibration_cache(self, cache: Any) -> None:
            return None  # caches are not persisted (no files next to secret models)

        def free(self) -> None:
            self._dmem.free()

    return _Calibrator()


def _check_index(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"{what} must be a non-negative int, got {value!r}")


# --------------------------------------------------------------------------- builder from a recipe

#: Keys of :attr:`BuiltEngine.identity` and :func:`platform_identity`.
IDENTITY_KEYS = ("tensorrt", "compute_capability", "gpu_name", "driver")
#: Smallest compute capability of each hardware compatibility level (NVIDIA's docs:
#: AMPERE_PLUS needs an Ampere or later builder GPU, SAME_COMPUTE_CAPABILITY Turing).
_HW_LEVELS = {"none": ("NONE", (0, 0)), "ampere+": ("AMPERE_PLUS", (8, 0))}
_HW_LEVELS["same_compute_capability"] = ("SAME_COMPUTE_CAPABILITY", (7, 5))


@dataclass(frozen=True)
class BuiltEngine:
    """An engine built on this device from a signed recipe.

    Attributes:
        plan: The serialised engine. Specific to this GPU and TensorRT version
            (unless the recipe asked for version or hardware compatibility).
        identity: Where it was built: ``tensorrt`` (version), ``compute_capability``
            (``"8.7"``), ``gpu_name`` and ``driver`` (the CUDA driver API version,
            ``"12.6"``); the keys of :data:`IDENTITY_KEYS`. Compare it with
            :func:`platform_identity` before reusing a cached plan.
        timing_cache: The builder's timing cache after the build (to speed up the
            next build on the same GPU), or None when the recipe turns it off.
    """

    plan: bytes
    identity: dict[str, str]
    timing_cache: bytes | None


def platform_identity(device_id: int = 0) -> dict[str, str]:
    """The identity a plan built on this device would carry (nothing is built).

    Raises:
        MissingDependencyError: tensorrt (``trt``) or pycuda (``cuda``) is missing.
        UsageError: No such CUDA device.
        BackendError: CUDA cannot be initialised.
    """
    _check_index(device_id, "device_id")
    _require_trt()
    cuda = _require_cuda()
    import tensorrt as trt  # type: ignore[import-untyped, unused-ignore]

    return _identity(str(getattr(trt, "__version__", "unknown")), cuda, device_id)


def _identity(trt_version: str, cuda: Any, device_id: int) -> dict[str, str]:
    try:
        cuda.init()
        count = int(cuda.Device.count())
    except Exception as exc:
        raise BackendError(f"cannot initialise CUDA: {exc}") from exc
    if device_id >= count:
        raise UsageError(f"CUDA device {device_id} does not exist ({count} found)")
    try:
        dev = cuda.Device(device_id)
        major, minor = (int(v) for v in dev.compute_capability())
        name = str(dev.name())
        driver = int(cuda.get_driver_version())
    except Exception as exc:
        raise BackendError(f"cannot query CUDA device {device_id}: {exc}") from exc
    return {
        "tensorrt": trt_version,
        "compute_capability": f"{major}.{minor}",
        "gpu_name": name,
        "driver": f"{driver // 1000}.{driver % 1000 // 10}",
    }


@dataclass(frozen=True)
class _Settings:
    """The recipe fields the builder reads (fields added later read with defaults)."""

    fp16: bool
    int8: bool
    dla_core: int | None
    gpu_fallback: bool
    workspace: int | None
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
    opt_level: int
    version_compatible: bool
    hardware: str
    host_code: bool
    timing_cache: bool | None


def _settings(recipe: MemberRecipe) -> _Settings:
    if not isinstance(recipe, MemberRecipe):
        raise UsageError(f"recipe must be a MemberRecipe, got {type(recipe).__name__}")
    best = bool(getattr(recipe, "best", False))
    fp16 = bool(recipe.fp16) or best
    int8 = bool(recipe.int8) or best
    dla = recipe.dla_core
    if dla is not None and not (fp16 or int8):
        raise UsageError("the DLA runs fp16 or int8 only; the recipe sets neither")
    if dla is None and recipe.allow_gpu_fallback:
        raise UsageError("allow_gpu_fallback needs dla_core")
    hardware = str(recipe.hardware_compatibility_level)
    if hardware not in _HW_LEVELS:
        raise UsageError(f"unknown hardware_compatibility_level {hardware!r}")
    if dla is not None and hardware != "none":
        raise UsageError("hardware compatibility levels apply to GPU engines, not to the DLA")
    shapes = {s.input: (tuple(s.min), tuple(s.opt), tuple(s.max)) for s in recipe.shapes}
    if len(shapes) != len(recipe.shapes):
        raise UsageError("the recipe gives shapes for one input twice")
    flag = getattr(recipe, "timing_cache", None)
    return _Settings(
        fp16=fp16,
        int8=int8,
        dla_core=dla,
        gpu_fallback=bool(recipe.allow_gpu_fallback),
        workspace=recipe.workspace_bytes,
        shapes=shapes,
        opt_level=int(recipe.builder_optimization_level),
        version_compatible=bool(recipe.version_compatible),
        hardware=hardware,
        host_code=bool(recipe.engine_host_code_allowed),
        timing_cache=None if flag is None else bool(flag),
    )


def _profile_shapes(
    inputs: dict[str, tuple[int, ...]],
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """The optimisation profile of every input with a dynamic axis (pure; refuses gaps).

    Args:
        inputs: Network input name -> shape (-1 for a dynamic axis).
        shapes: The recipe's ``(min, opt, max)`` per input.

    Returns:
        ``(min, opt, max)`` of each input that has at least one dynamic axis.

    Raises:
        UsageError: A range for an input the model does not have, a dynamic input
            without a range, a rank mismatch, or a range that contradicts a fixed axis.
    """
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise UsageError(
            f"the recipe gives shapes for {', '.join(map(repr, unknown))}, "
            f"which the model does not take (inputs: {', '.join(sorted(inputs))})"
        )
    profile = {}
    for name, shape in inputs.items():
        rng = shapes.get(name)
        dynamic = any(d < 0 for d in shape)
        if rng is None:
            if dynamic:
                raise UsageError(
                    f"input {name!r} has dynamic axes {shape}; the recipe gives no shapes for it"
                )
            continue
        for label, dims in zip(("min", "opt", "max"), rng, strict=True):
            if len(dims) != len(shape):
                raise UsageError(
                    f"recipe shapes for {name!r}: {label} {dims} has rank {len(dims)}, "
                    f"the input has rank {len(shape)} {shape}"
                )
            for axis, (want, got) in enumerate(zip(shape, dims, strict=True)):
                if want >= 0 and want != got:
                    raise UsageError(
                        f"recipe shapes for {name!r}: {label} {dims} sets axis {axis} to {got}, "
                        f"the model fixes it at {want}"
                    )
        if dynamic:
            profile[name] = rng
    return profile


def _calibration_batches(
    calibration: Mapping[str, np.ndarray],
    shapes: dict[str, tuple[int, ...]],
    dtypes: dict[str, np.dtype[Any]],
) -> tuple[int, dict[str, np.ndarray]]:
    """Cut each input's calibration samples into batches of its calibration shape.

    ``calibration[name]`` holds ``k * B`` samples along axis 0, where ``(B, ...)`` is
    the input's calibration shape (the profile's ``opt`` shape, or the fixed shape).

    Returns:
        ``k`` and, per input, an array ``[k, B, ...]``.

    Raises:
        UsageError: Missing or unknown inputs, wrong dtype or shape, or a different
            number of batches per input.
    """
    if not isinstance(calibration, Mapping):
        raise UsageError("calibration must map input names to arrays")
    unknown = sorted(set(calibration) - set(shapes))
    missing = sorted(set(shapes) - set(calibration))
    if unknown or missing:
        raise UsageError(
            "calibration data must cover exactly the model inputs "
            f"(missing: {', '.join(missing) or 'none'}; unknown: {', '.join(unknown) or 'none'})"
        )
    batches: dict[str, np.ndarray] = {}
    counts = set()
    for name, shape in shapes.items():
        arr = calibration[name]
        if not isinstance(arr, np.ndarray):
            raise UsageError(f"calibration[{name!r}] must be a numpy.ndarray")
        if arr.dtype != dtypes[name]:
            raise UsageError(f"calibration[{name!r}] must be {dtypes[name]}, got {arr.dtype}")
        b, rest = shape[0], shape[1:]
        if arr.ndim != len(shape) or tuple(arr.shape[1:]) != rest or arr.shape[0] % b:
            raise UsageError(
                f"calibration[{name!r}] has shape {arr.shape}; it needs k * {b} samples "
                f"of {rest} (calibration shape {shape})"
            )
        k = arr.shape[0] // b
        if k == 0:
            raise UsageError(f"calibration[{name!r}] is empty")
        counts.add(k)
        batches[name] = np.ascontiguousarray(arr.reshape(k, *shape))
    if len(counts) != 1:
        raise UsageError(f"calibration inputs give different numbers of batches: {sorted(counts)}")
    return counts.pop(), batches


def build_engine(
    onnx_bytes: bytes | bytearray | memoryview,
    recipe: MemberRecipe,
    *,
    calibration: Mapping[str, np.ndarray] | None = None,
    device_id: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    timing_cache: bytes | None = None,
) -> BuiltEngine:
    """Build a TensorRT engine on this device from a signed ONNX member and its recipe.

    Every recipe field maps to the TensorRT 10 builder: ``fp16``/``int8`` to
    ``BuilderFlag.FP16``/``INT8`` (``best`` sets both), ``dla_core`` to
    ``default_device_type = DeviceType.DLA`` and ``DLA_core``, ``allow_gpu_fallback``
    to ``BuilderFlag.GPU_FALLBACK``, ``workspace_bytes`` to the ``WORKSPACE`` memory
    pool, ``shapes`` to one optimisation profile covering every dynamic axis of every
    input, ``builder_optimization_level`` and ``hardware_compatibility_level`` to the
    config attributes of those names, ``version_compatible`` to
    ``BuilderFlag.VERSION_COMPATIBLE`` plus ``EXCLUDE_LEAN_RUNTIME`` unless
    ``engine_host_code_allowed`` (the plan then carries no host code). Never run on
    a GPU in this repository; the mapping is tested with a recording test double.

    Args:
        onnx_bytes: The ONNX model (decrypted in memory; never written to disk).
        recipe: The member's signed builder settings.
        calibration: INT8 calibration inputs when the recipe asks for int8 or best:
            per input, ``k * B`` samples along axis 0 where ``(B, ...)`` is its
            calibration shape (the profile's ``opt`` shape, or the fixed shape).
            The calibration cache is never read or written.
        device_id: CUDA device ordinal to build on.
        progress: Called as ``progress(phase, done, total)`` from TensorRT's progress
            monitor (possibly from builder threads); an exception in it cancels the
            build and is raised from here.
        timing_cache: A timing cache from an earlier build; one from another GPU or
            TensorRT version is discarded and the build starts from an empty cache.
            Refused when the recipe turns the timing cache off (``timing_cache: false``).

    Returns:
        The plan, the platform identity and the updated timing cache.

    Raises:
        UsageError: Invalid arguments or a recipe this model or device cannot satisfy.
        MissingDependencyError: tensorrt (``trt``) or pycuda (``cuda``) is missing.
        BackendError: TensorRT cannot parse the model or build the engine.
    """
    if not isinstance(onnx_bytes, (bytes, bytearray, memoryview)):
        raise UsageError(f"the ONNX model must be bytes-like, got {type(onnx_bytes).__name__}")
    st = _settings(recipe)
    _check_index(device_id, "device_id")
    if progress is not None and not callable(progress):
        raise UsageError("progress must be callable")
    if timing_cache is not None and not isinstance(timing_cache, (bytes, bytearray)):
        raise UsageError("timing_cache must be bytes")
    if st.timing_cache is False and timing_cache is not None:
        raise UsageError("the recipe turns the timing cache off; do not pass one")
    use_cache = st.timing_cache if st.timing_cache is not None else timing_cache is not None
    if st.int8 and calibration is None:
        raise UsageError("the recipe asks for int8; pass calibration data")
    if not st.int8 and calibration is not None:
        raise UsageError("calibration data given but the recipe does not ask for int8")
    _require_trt()
    cuda = _require_cuda()
    import tensorrt as trt  # type: ignore[import-untyped, unused-ignore]

    identity = _identity(str(getattr(trt, "__version__", "unknown")), cuda, device_id)
    level_name, need = _HW_LEVELS[st.hardware]
    cc = tuple(int(v) for v in identity["compute_capability"].split("."))
    if cc < need:
        raise UsageError(
            f"hardware_compatibility_level {st.hardware!r} needs compute capability "
            f"{need[0]}.{need[1]} or later to build; this GPU is {identity['compute_capability']}"
        )
    device = _Device(cuda, device_id)
    try:
        with device:  # the builder and the calibration buffers use this device's context
            serialized, cache, monitor = _build(
                cuda,
                st,
                bytes(onnx_bytes),
                level_name,
                calibration=calibration,
                progress=progress,
                timing_cache=bytes(timing_cache or b"") if use_cache else None,
            )
    finally:
        device.release()
    if monitor is not None and monitor.error is not None:
        raise monitor.error
    if serialized is None:
        raise BackendError("TensorRT failed to build the engine (see the TensorRT log above)")
    out_cache = None if cache is None else bytes(cache.serialize())
    return BuiltEngine(plan=bytes(serialized), identity=identity, timing_cache=out_cache)


def _build(
    cuda: Any,
    st: _Settings,
    onnx: bytes,
    level_name: str,
    *,
    calibration: Mapping[str, np.ndarray] | None,
    progress: Callable[[str, int, int], None] | None,
    timing_cache: bytes | None,
) -> tuple[Any, Any, Any]:
    """The builder calls of :func:`build_engine` (run inside the device's primary context).

    Returns:
        The serialised network (None on failure), the timing cache (None when off)
        and the progress monitor (None without a callback).
    """
    import tensorrt as trt  # type: ignore[import-untyped, unused-ignore]

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if st.dla_core is not None and st.dla_core >= builder.num_DLA_cores:
        raise UsageError(
            f"DLA core {st.dla_core} does not exist ({builder.num_DLA_cores} DLA cores here)"
        )
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not bool(parser.parse(onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse the ONNX model: {errors or 'unknown error'}")
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    inputs = {t.name: _ints(t.shape) for t in tensors}
    ranges = _profile_shapes(inputs, st.shapes)

    config = builder.create_builder_config()
    if st.workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, st.workspace)
    profile = None
    if ranges:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in ranges.items():
            profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
        if config.add_optimization_profile(profile) < 0:
            raise BackendError("TensorRT refused the optimisation profile of the recipe's shapes")
    if st.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if st.int8:
        config.set_flag(trt.BuilderFlag.INT8)
    if st.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = st.dla_core
        if st.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    config.builder_optimization_level = st.opt_level
    config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, level_name)
    if st.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if not st.host_code:
            config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    cache = None if timing_cache is None else _attach_timing_cache(config, timing_cache)
    monitor = None
    if progress is not None:
        monitor = _progress_monitor(trt, progress)
        config.progress_monitor = monitor

    calibrator = None
    if st.int8:
        assert calibration is not None
        calib_shapes = {n: (ranges[n][1] if n in ranges else shape) for n, shape in inputs.items()}
        dtypes = {t.name: np.dtype(_np_dtype(trt, t.dtype, t.name)) for t in tensors}
        count, batches = _calibration_batches(calibration, calib_shapes, dtypes)
        calibrator = _multi_calibrator(trt, cuda, count, batches)
        config.int8_calibrator = calibrator
        if profile is not None and not config.set_calibration_profile(profile):
            raise BackendError("TensorRT refused the calibration profile")
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    return serialized, cache, monitor


def _attach_timing_cache(config: trt_t.IBuilderConfig, blob: bytes) -> trt_t.ITimingCache:
    """Give the builder a timing cache from ``blob``, or an empty one if TensorRT rejects it."""
    for data in (blob, b""):  # a cache of another GPU or version: start afresh
        cache = config.create_timing_cache(data)
        if cache is not None and bool(config.set_timing_cache(cache, False)):
            return cache
    raise BackendError("TensorRT cannot create a timing cache")


def _progress_monitor(trt: Any, progress: Callable[[str, int, int], None]) -> Any:
    """A ``trt.IProgressMonitor`` feeding ``progress(phase, done, total)``."""

    class _Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined, unused-ignore]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._totals: dict[str, int] = {}
            self.error: BaseException | None = None

        def _report(self, phase: str, done: int, total: int) -> bool:
            with self._lock:
                if self.error is not None:
                    return False
                try:
                    progress(phase, done, total)
                except BaseException as exc:  # cancel the build, raise it afterwards
                    self.error = exc
                    return False
                return True

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._totals[phase_name] = num_steps
            self._report(phase_name, 0, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return self._report(phase_name, step + 1, self._totals.get(phase_name, step + 1))

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                total = self._totals.pop(phase_name, 0)
            self._report(phase_name, total, total)

    return _Monitor()


def _multi_calibrator(trt: Any, cuda: Any, count: int, batches: dict[str, np.ndarray]) -> Any:
    """An entropy calibrator feeding one batch per input per call (needs a CUDA context).

    The calibration cache is neither read nor written: no files next to secret models.
    """

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined, unused-ignore]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._pos = 0
            self._dmem: dict[str, Any] = {}
            try:
                for name, arr in batches.items():
                    self._dmem[name] = cuda.mem_alloc(max(1, arr[0].nbytes))
            except BaseException:
                self.free()
                raise

        def get_batch_size(self) -> int:
            return 1  # explicit batch: the batch is in each input's shape

        def get_batch(self, names: list[str]) -> list[int]:
            if self._pos >= count:
                return []  # no more batches
            for name in names:
                cuda.memcpy_htod(self._dmem[name], batches[name][self._pos])
            self._pos += 1
            return [int(self._dmem[name]) for name in names]

        def read_calibration_cache(self) -> Any:
            return None  # always calibrate from the data

        def write_calibration_cache(self, cache: Any) -> None:
            return None  # never persisted

        def free(self) -> None:
            for mem in self._dmem.values():
                mem.free()
            self._dmem.clear()

    return _Calibrator()

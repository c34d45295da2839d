"""TensorRT backend and engine builder (backends layer; GPU hosts only).

Written against the TensorRT 10 Python API: engines are deserialised from
memory with ``trt.Runtime(logger).deserialize_cuda_engine(bytes)``, tensors are
addressed by name (``num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode``
/ ``set_input_shape`` / ``set_tensor_address``) and run with
``execute_async_v3`` on a CUDA stream. Device memory comes from pycuda, used in
the device's *primary* context (the one TensorRT's CUDA runtime calls use).

Security-relevant defaults: engines that embed host code (version-compatible
lean runtimes, plugins) are refused unless ``allow_host_code=True`` is passed,
which the runtime layer does only when the signed bundle policy allows it.

tensorrt and pycuda are imported lazily; without them every entry point raises
:class:`~edgeguard.errors.MissingDependencyError` naming the ``trt`` or ``cuda``
extra. NOTE: this module type-checks against ``tensorrt-stubs`` but has never
run on a GPU (see docs/backends.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edgeguard._optional import require
from edgeguard.backends.base import Backend, Dim, TensorSpec
from edgeguard.errors import BackendError, MissingDependencyError, UsageError

if TYPE_CHECKING:
    import tensorrt as trt_t  # type: ignore[import-untyped, unused-ignore]

__all__ = ["Precision", "TensorRTBackend", "build_engine_from_onnx"]

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


class TensorRTBackend(Backend):
    """A deserialised TensorRT engine with one execution context.

    Create it with :meth:`from_engine_bytes`. Inputs with dynamic dimensions take
    any shape inside the engine's optimisation profile 0.
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
    ) -> None:
        """Wrap a deserialised engine; prefer :meth:`from_engine_bytes`."""
        super().__init__()
        import tensorrt as trt  # type: ignore[import-untyped, unused-ignore]

        self._trt_version = str(getattr(trt, "__version__", "unknown"))
        self._engine = engine
        self._runtime = runtime
        self._logger = logger
        self._device = device
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
        with device:
            self._context = engine.create_execution_context()
            if self._context is None:
                raise BackendError("TensorRT could not create an execution context")
            self._stream = cuda.Stream()
        self._buffers: dict[str, tuple[Any, int]] = {}

    @classmethod
    def from_engine_bytes(
        cls,
        engine: bytes | bytearray | memoryview,
        *,
        device_id: int = 0,
        dla_core: int | None = None,
        allow_host_code: bool = False,
    ) -> TensorRTBackend:
        """Deserialise a TensorRT engine from memory.

        Args:
            engine: The serialised engine (plan). Never written to disk.
            device_id: CUDA device ordinal.
            dla_core: DLA core the engine was built for, or None for the GPU.
            allow_host_code: Allow engines that embed host executable code. Off by
                default; only a signed bundle policy should turn it on.

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
            )
        except BaseException:
            device.release()
            raise

    def _inputs(self) -> tuple[TensorSpec, ...]:
        return self._in

    def _outputs(self) -> tuple[TensorSpec, ...]:
        return self._out

    def _buffer(self, name: str, nbytes: int) -> Any:
        held = self._buffers.get(name)
        if held is not None and held[1] >= nbytes:
            return held[0]
        if held is not None:
            held[0].free()
        size = max(nbytes, 1)
        allocation = self._cuda.mem_alloc(size)
        self._buffers[name] = (allocation, size)
        return allocation

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorrt as trt  # type: ignore[import-untyped, unused-ignore]

        cuda = self._cuda
        ctx = self._context
        results: dict[str, np.ndarray] = {}
        with self._device:
            try:
                for spec in self._in:
                    arr = np.ascontiguousarray(feeds[spec.name])
                    if not bool(ctx.set_input_shape(spec.name, trt.Dims(list(arr.shape)))):
                        lo, _, hi = self._engine.get_tensor_profile_shape(spec.name, 0)
                        raise UsageError(
                            f"input {spec.name!r} shape {arr.shape} is outside the engine's "
                            f"optimisation profile ({_ints(lo)} .. {_ints(hi)})"
                        )
                    dmem = self._buffer(spec.name, arr.nbytes)
                    cuda.memcpy_htod(dmem, arr)
                    ctx.set_tensor_address(spec.name, int(dmem))
                for spec in self._out:
                    shape = _ints(ctx.get_tensor_shape(spec.name))
                    if any(d < 0 for d in shape):
                        raise BackendError(f"TensorRT left output {spec.name!r} shape {shape} open")
                    host = np.empty(shape, dtype=spec.dtype)
                    dmem = self._buffer(spec.name, host.nbytes)
                    ctx.set_tensor_address(spec.name, int(dmem))
                    results[spec.name] = host
                if not ctx.execute_async_v3(self._stream.handle):
                    raise BackendError("TensorRT execute_async_v3 failed")
                self._stream.synchronize()
                for name, host in results.items():
                    cuda.memcpy_dtoh(host, self._buffers[name][0])
            except (UsageError, BackendError):
                raise
            except Exception as exc:
                raise BackendError(f"TensorRT inference failed: {exc}") from exc
        return results

    def _close_impl(self) -> None:
        try:
            with self._device:
                for allocation, _ in self._buffers.values():
                    allocation.free()
                self._buffers.clear()
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

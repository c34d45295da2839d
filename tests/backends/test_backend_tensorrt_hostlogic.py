"""Host-side bookkeeping of the TensorRT backend, driven by in-memory test doubles.

The doubles below stand in for ``tensorrt`` and ``pycuda.driver``: a "device" is a
dict of NumPy byte buffers and the "engine" multiplies by a fixed matrix. This
proves nothing about TensorRT or a GPU (that is the ``gpu`` test's job); it checks
our own logic around them: I/O discovery by name, shape setting before output
allocation, buffer reuse and growth, copies in and out, profile refusals, host-code
policy, and that close() frees memory and releases the CUDA context.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from edgeguard.backends.tensorrt import TensorRTBackend
from edgeguard.errors import BackendError, UsageError

W = np.arange(64 * 10, dtype=np.float32).reshape(64, 10) / 640.0
MAX_BATCH = 8


class _Mem:
    """Test double of a pycuda DeviceAllocation: NumPy bytes in a dict keyed by id."""

    def __init__(self, dev: _Cuda, size: int) -> None:
        self.dev, self.size, self.buf = dev, size, np.zeros(size, np.uint8)
        dev.allocs[id(self)] = self

    def __int__(self) -> int:
        return id(self)

    def free(self) -> None:
        del self.dev.allocs[id(self)]


class _HostAllocation:
    """Test double of pycuda's page-locked HostAllocation (the ``base`` of the array)."""

    def __init__(self, dev: _Cuda, n: int) -> None:
        self._mem = np.zeros(n, np.uint8)
        self.__array_interface__ = self._mem.__array_interface__
        self.dev = dev
        dev.pinned += 1

    def free(self) -> None:
        self.dev.pinned -= 1


class _Cuda(types.ModuleType):
    """Test double of pycuda.driver: records every call; stream work can be captured.

    While ``capturing`` is a list, stream operations are recorded into it instead of
    running (as CUDA stream capture does); the graph double replays them.
    """

    def __init__(self) -> None:
        super().__init__("pycuda.driver")
        self.allocs: dict[int, _Mem] = {}
        self.pinned = 0
        self.events: list[str] = []
        self.capturing: list[tuple[str, Callable[[], None]]] | None = None
        self.fail_on: str | None = None
        self.functions: dict[str, _KernelFunction] = {}
        self.launched: dict[int, tuple[int, str, str, int, int, int, int]] = {}
        cuda = self

        class Ctx:
            def push(self) -> None:
                cuda.events.append("push")

            def pop(self) -> None:
                cuda.events.append("pop")

            def detach(self) -> None:
                cuda.events.append("detach")

        class Device:
            @staticmethod
            def count() -> int:
                return 1

            def __init__(self, i: int) -> None:
                self.i = i

            def retain_primary_context(self) -> Ctx:
                return Ctx()

            def name(self) -> str:
                return "test double"

            def compute_capability(self) -> tuple[int, int]:
                return (8, 7)

        class Stream:
            made = 0

            def __init__(self) -> None:
                Stream.made += 1
                self.handle = 1000 + Stream.made

            def synchronize(self) -> None:
                if cuda.capturing is not None:
                    raise RuntimeError("test double: synchronize during stream capture")
                cuda.events.append(f"sync@{self.handle}")

        self.Device, self.Stream = Device, Stream

    class Error(Exception):
        """pycuda.driver.Error."""

    def init(self) -> None:
        self.events.append("init")

    def module_from_file(self, path: str) -> Any:
        return _KernelModule(self)

    def get_driver_version(self) -> int:
        return 12060

    def op(self, label: str, run: Callable[[], None]) -> None:
        """Run (or, while capturing, record) one stream operation."""
        if self.fail_on is not None and label.startswith(self.fail_on):
            raise RuntimeError(f"test double: injected failure in {label}")
        if self.capturing is not None:
            self.events.append("capture:" + label)
            self.capturing.append((label, run))
        else:
            self.events.append(label)
            run()

    def mem_alloc(self, size: int) -> _Mem:
        self.events.append(f"alloc:{size}")
        return _Mem(self, size)

    def pagelocked_empty(self, n: int, dtype: Any) -> np.ndarray:
        assert np.dtype(dtype) == np.uint8
        return np.asarray(_HostAllocation(self, n))

    def memcpy_htod_async(self, dst: _Mem, src: np.ndarray, stream: Any) -> None:
        assert isinstance(src.base, np.ndarray | _HostAllocation), "source must be pinned"

        def run() -> None:
            dst.buf[: src.nbytes] = src.reshape(-1).view(np.uint8)

        self.op(f"htod:{id(dst)}@{stream.handle}", run)

    def memcpy_dtoh_async(self, dst: np.ndarray, src: _Mem, stream: Any) -> None:
        def run() -> None:
            dst.reshape(-1).view(np.uint8)[:] = src.buf[: dst.nbytes]

        self.op(f"dtoh:{id(src)}@{stream.handle}", run)


class _KernelFunction:
    """Test double of a pycuda Function for the sanity kernels.

    It does not run the CUDA code: when the stream reaches the merge launch it reads
    the input where the partials launch pointed, computes the statistics with the
    NumPy oracle and writes them as the kernel's ``EgStats`` records. What it checks
    is the glue: pointers, stream, launch shape, saturation levels, decoding.
    """

    def __init__(self, cuda: _Cuda, name: str) -> None:
        self.cuda, self.name = cuda, name
        self.launches: list[dict[str, Any]] = []

    def __call__(self, *args: Any, block: Any, grid: Any, stream: Any = None) -> None:
        from edgeguard.guard.sanity.cuda_cpp import STATS_DTYPE
        from edgeguard.guard.sanity.reference import reference_stats

        cuda = self.cuda
        self.launches.append({"args": args, "block": block, "grid": grid, "stream": stream})
        handle = "none" if stream is None else stream.handle
        if self.name != "eg_sanity_merge":
            x, _, partials, n0, c, h, w = (int(a) for a in args[:7])
            assert n0 == 0  # one launch covers every frame of these small tensors
            dt, lay = self.name.split("_")[-2:]
            cuda.launched[partials] = (x, dt, lay, int(grid[2]), c, h, w)
            cuda.op(f"kernel:{self.name}:{x}@{handle}", lambda: None)
            return
        partials, records, planes = int(args[0]), int(args[1]), int(args[2])
        lo, hi = float(args[4]), float(args[5])

        def run() -> None:
            x, dt, lay, n, c, h, w = cuda.launched[partials]
            dtype = {"u8": np.uint8, "f16": np.float16, "f32": np.float32, "f64": np.float64}[dt]
            count = n * c * h * w
            flat = cuda.allocs[x].buf[: count * np.dtype(dtype).itemsize].view(dtype)
            arr = flat.reshape((n, c, h, w) if lay == "nchw" else (n, h, w, c))
            ref = reference_stats(arr, layout=lay.upper(), sat_lo=lo, sat_hi=hi)
            out = np.zeros((n, c), STATS_DTYPE)
            for f in ("count", "min", "max", "mean", "std", "sat_lo", "sat_hi", "hf"):
                out[f] = getattr(ref, f)
            for f in ("nan", "posinf", "neginf"):
                out[f][:, 0] = getattr(ref, f)  # per frame; the decoder sums channels
            assert out.size == planes
            cuda.allocs[records].buf[: out.nbytes] = out.reshape(-1).view(np.uint8)

        cuda.op(f"kernel:{self.name}:{records}@{handle}", run)


class _KernelModule:
    def __init__(self, cuda: _Cuda) -> None:
        self.cuda = cuda

    def get_function(self, name: str) -> _KernelFunction:
        fn = _KernelFunction(self.cuda, name)
        self.cuda.functions[name] = fn
        return fn


class _Graphs:
    """Test double of the CUDA graph API: capture records closures, launch replays them."""

    def __init__(self, cuda: _Cuda, *, fail: bool = False) -> None:
        self.cuda, self.fail = cuda, fail
        self.graphs: dict[int, list[tuple[str, Callable[[], None]]]] = {}
        self.destroyed: list[int] = []

    def capture(self, stream: int, enqueue: Callable[[], None]) -> int:
        self.cuda.events.append(f"begin_capture@{stream}")
        self.cuda.capturing = []
        try:
            enqueue()
        finally:
            ops, self.cuda.capturing = self.cuda.capturing, None
            self.cuda.events.append(f"end_capture@{stream}")
        if self.fail:
            raise RuntimeError("test double: capture invalidated")
        handle = len(self.graphs) + 1
        self.graphs[handle] = ops
        return handle

    def launch(self, executable: int, stream: int) -> None:
        self.cuda.events.append(f"graph_launch:{executable}@{stream}")
        for _, run in self.graphs[executable]:
            run()

    def destroy(self, executable: int) -> None:
        self.destroyed.append(executable)


def _fake_trt(
    cuda: _Cuda, *, deserialize_ok: bool = True, execute_ok: bool = True
) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")

    class Mode:
        INPUT, OUTPUT = "in", "out"

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i: int) -> str:
            return ["image", "logits"][i]

        def get_tensor_mode(self, name: str) -> str:
            return Mode.INPUT if name == "image" else Mode.OUTPUT

        def get_tensor_dtype(self, name: str) -> str:
            return "FLOAT"

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (-1, 1, 8, 8) if name == "image" else (-1, 10)

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
            return [(1, 1, 8, 8), (1, 1, 8, 8), (MAX_BATCH, 1, 8, 8)]

        def create_execution_context(self) -> Context:
            return Context()

    class Context:
        def __init__(self) -> None:
            self.n: int | None = None
            self.addr: dict[str, int] = {}

        def set_input_shape(self, name: str, dims: list[int]) -> bool:
            if not 1 <= dims[0] <= MAX_BATCH:
                return False
            self.n = dims[0]
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (self.n if self.n is not None else -1, 10)

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addr[name] = ptr
            return True

        def execute_async_v3(self, stream: int) -> bool:
            n, addr = self.n, dict(self.addr)  # what a captured graph would bake in
            assert n is not None

            def run() -> None:
                src = cuda.allocs[addr["image"]].buf[: n * 64 * 4].view(np.float32)
                out = (src.reshape(n, 64) @ W).astype(np.float32)
                dst = cuda.allocs[addr["logits"]].buf
                dst[: out.nbytes] = np.frombuffer(out.tobytes(), np.uint8)

            cuda.op(f"execute@{stream}", run)
            return execute_ok

    class Runtime:
        def __init__(self, logger: object) -> None:
            self.engine_host_code_allowed: bool | None = None
            self.num_DLA_cores = 0
            trt.last_runtime = self  # type: ignore[attr-defined]

        def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
            return Engine() if deserialize_ok and plan == b"PLAN" else None

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    trt.Runtime, trt.Builder, trt.Logger = Runtime, object, Logger  # type: ignore[attr-defined]
    trt.TensorIOMode = Mode  # type: ignore[attr-defined]
    trt.Dims = list  # type: ignore[attr-defined]
    trt.nptype = lambda t: {"FLOAT": np.float32}[t]  # type: ignore[attr-defined]
    return trt


@pytest.fixture
def doubles(monkeypatch: pytest.MonkeyPatch) -> tuple[types.ModuleType, _Cuda]:
    cuda = _Cuda()
    trt = _fake_trt(cuda)
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    return trt, cuda


def test_io_discovery_run_and_buffer_reuse(doubles: tuple[Any, _Cuda]) -> None:
    trt, cuda = doubles
    backend = TensorRTBackend.from_engine_bytes(bytearray(b"PLAN"))
    assert trt.last_runtime.engine_host_code_allowed is False  # policy default applied
    assert [(s.name, s.dtype, s.shape) for s in backend.inputs()] == [
        ("image", "float32", (None, 1, 8, 8))
    ]
    assert [(s.name, s.shape) for s in backend.outputs()] == [("logits", (None, 10))]
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    out = backend.run({"image": x})["logits"]
    np.testing.assert_allclose(out, x.reshape(4, 64) @ W, rtol=1e-6)
    allocs = [e for e in cuda.events if e.startswith("alloc")]
    backend.run({"image": x[:2]})  # smaller batch: buffers reused
    assert [e for e in cuda.events if e.startswith("alloc")] == allocs
    backend.run({"image": np.ones((8, 1, 8, 8), np.float32)})  # larger: buffers grow
    assert len([e for e in cuda.events if e.startswith("alloc")]) == len(allocs) + 2
    assert len(cuda.allocs) == 2  # the outgrown buffers were freed
    assert cuda.events.count("push") == cuda.events.count("pop")
    backend.close()
    assert cuda.allocs == {} and cuda.events[-1] == "detach"


def test_batch_outside_profile_is_usage_error(doubles: tuple[Any, _Cuda]) -> None:
    backend = TensorRTBackend.from_engine_bytes(b"PLAN")
    with pytest.raises(UsageError, match=r"profile \(\(1, 1, 8, 8\) \.\. \(8, 1, 8, 8\)\)"):
        backend.run({"image": np.zeros((9, 1, 8, 8), np.float32)})
    with pytest.raises(UsageError, match="float32"):
        backend.run({"image": np.zeros((1, 1, 8, 8), np.float64)})
    backend.close()


def test_undeserialisable_engine_and_host_code_policy(doubles: tuple[Any, _Cuda]) -> None:
    trt, cuda = doubles
    with pytest.raises(BackendError, match="cannot deserialise"):
        TensorRTBackend.from_engine_bytes(b"garbage")
    assert cuda.events[-1] == "detach"  # context released on failure
    TensorRTBackend.from_engine_bytes(b"PLAN", allow_host_code=True).close()
    assert trt.last_runtime.engine_host_code_allowed is True


def test_missing_dla_core_refused(doubles: tuple[Any, _Cuda]) -> None:
    with pytest.raises(UsageError, match="DLA core 0 does not exist"):
        TensorRTBackend.from_engine_bytes(b"PLAN", dla_core=0)


class _BuildRecorder:
    """Doubles for Builder / OnnxParser / BuilderConfig that record what we configure."""

    def __init__(self, *, parse_ok: bool = True, dla_cores: int = 2) -> None:
        self.parse_ok, self.dla_cores = parse_ok, dla_cores
        self.flags: list[str] = []
        self.pool: tuple[str, int] | None = None
        self.shapes: dict[str, tuple[list[int], list[int], list[int]]] = {}
        self.device_type: str | None = None
        self.dla_core: int | None = None

    def module(self) -> types.ModuleType:
        rec = self
        trt = types.ModuleType("tensorrt")

        class Tensor:
            name, shape = "image", (-1, 1, 8, 8)

        class Network:
            num_inputs = 1

            def get_input(self, i: int) -> Tensor:
                return Tensor()

        class Parser:
            num_errors = 1

            def __init__(self, network: Network, logger: object) -> None:
                pass

            def parse(self, data: bytes) -> bool:
                return rec.parse_ok and data.startswith(b"\x08")  # ONNX: field 1 varint

            def get_error(self, i: int) -> str:
                return "unsupported operator FooBar"

        class Profile:
            def set_shape(self, name: str, lo: list[int], opt: list[int], hi: list[int]) -> None:
                rec.shapes[name] = (lo, opt, hi)

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                rec.pool = (pool, size)

            def add_optimization_profile(self, profile: Profile) -> int:
                return 0

            def set_flag(self, flag: str) -> None:
                rec.flags.append(flag)

            def __setattr__(self, key: str, value: Any) -> None:
                if key == "default_device_type":
                    rec.device_type = value
                elif key == "DLA_core":
                    rec.dla_core = value

        class Builder:
            num_DLA_cores = rec.dla_cores

            def __init__(self, logger: object) -> None:
                pass

            def create_network(self, flags: int) -> Network:
                assert flags == 0
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes:
                return b"SERIALIZED-PLAN"

        trt.Builder, trt.Runtime, trt.OnnxParser = Builder, object, Parser  # type: ignore[attr-defined]
        trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, lvl: None})  # type: ignore[attr-defined]
        trt.Dims = list  # type: ignore[attr-defined]
        trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")  # type: ignore[attr-defined]
        trt.BuilderFlag = types.SimpleNamespace(
            FP16="FP16", INT8="INT8", GPU_FALLBACK="GPU_FALLBACK"
        )  # type: ignore[attr-defined]
        trt.DeviceType = types.SimpleNamespace(DLA="DLA", GPU="GPU")  # type: ignore[attr-defined]
        return trt


def test_builder_configuration_for_dla_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeguard import data
    from edgeguard.backends.tensorrt import build_engine_from_onnx

    rec = _BuildRecorder()
    monkeypatch.setitem(sys.modules, "tensorrt", rec.module())
    plan = build_engine_from_onnx(
        data.model_bytes("digits_mlp"),
        precision="fp16",
        dla_core=1,
        workspace_bytes=1 << 26,
        max_batch=32,
        opt_batch=4,
    )
    assert plan == b"SERIALIZED-PLAN"
    assert rec.pool == ("WORKSPACE", 1 << 26)
    assert rec.shapes["image"] == ([1, 1, 8, 8], [4, 1, 8, 8], [32, 1, 8, 8])
    assert rec.flags == ["FP16", "GPU_FALLBACK"]
    assert (rec.device_type, rec.dla_core) == ("DLA", 1)


def test_builder_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeguard import data
    from edgeguard.backends.tensorrt import build_engine_from_onnx

    monkeypatch.setitem(sys.modules, "tensorrt", _BuildRecorder(dla_cores=1).module())
    with pytest.raises(UsageError, match="DLA core 1 does not exist"):
        build_engine_from_onnx(
            data.model_bytes("digits_mlp"),
            precision="int8",
            dla_core=1,
            workspace_bytes=1 << 26,
            calibration=np.zeros((8, 1, 8, 8), np.float32),
        )
    monkeypatch.setitem(sys.modules, "tensorrt", _BuildRecorder(parse_ok=False).module())
    with pytest.raises(BackendError, match="FooBar"):
        build_engine_from_onnx(
            data.model_bytes("digits_mlp"), precision="fp32", dla_core=None, workspace_bytes=1 << 26
        )


# --------------------------------------------------------------------------- the GPU member path


class _SumCheck:
    """Test double of a DeviceCheck: sums the float32 input where it lies on the device.

    It reads the device buffer when the stream reaches it, so launched before the
    host-to-device copy it would read stale bytes and the test would see it.
    """

    def __init__(
        self, cuda: _Cuda, *, input_name: str = "image", device_id: int = 0, scale: float = 1.0
    ) -> None:
        self.cuda, self.input_name, self.device_id = cuda, input_name, device_id
        self.scale = scale

    def device_buffers(self, shape: tuple[int, ...], dtype: str) -> tuple[int, int]:
        assert dtype == "float32"
        return 64, 16

    def enqueue(
        self,
        *,
        x: int,
        shape: tuple[int, ...],
        dtype: str,
        scratch: int,
        result: int,
        stream: Any,
    ) -> None:
        n = int(np.prod(shape))
        cuda = self.cuda

        def run() -> None:
            data = cuda.allocs[x].buf[: n * 4].view(np.float32)
            packed = np.array([data.sum(dtype=np.float64) * self.scale, n], np.float64)
            cuda.allocs[result].buf[:16] = packed.view(np.uint8)

        cuda.op(f"check:{x}->{result}@{stream.handle}", run)

    def finish(
        self, result: np.ndarray, *, shape: tuple[int, ...], dtype: str
    ) -> tuple[float, int]:
        total, n = result.view(np.float64)
        return float(total), int(n)


def _stream_events(events: list[str]) -> list[str]:
    return [e for e in events if "@" in e]


def test_check_runs_on_the_device_input_between_copy_and_execute(
    doubles: tuple[Any, _Cuda],
) -> None:
    _, cuda = doubles
    backend = TensorRTBackend.from_engine_bytes(b"PLAN")
    x = np.random.default_rng(1).random((4, 1, 8, 8), dtype=np.float32)
    check = _SumCheck(cuda)
    start = len(cuda.events)
    out, (total, n) = backend.run_with_stats({"image": x}, check)
    np.testing.assert_allclose(out["logits"], x.reshape(4, 64) @ W, rtol=1e-6)
    assert (round(total, 3), n) == (round(float(x.sum(dtype=np.float64)), 3), 256)
    ctx = backend._context
    x_dev, out_dev = ctx.addr["image"], ctx.addr["logits"]
    result_dev = int(backend._dev.handle("check:result"))
    s = backend._stream.handle
    assert _stream_events(cuda.events[start:]) == [
        f"htod:{x_dev}@{s}",  # the input goes to the device once
        f"check:{x_dev}->{result_dev}@{s}",  # the check reads that buffer, same stream
        f"execute@{s}",  # before TensorRT runs
        f"dtoh:{result_dev}@{s}",  # only the small result buffer comes back
        f"dtoh:{out_dev}@{s}",
        f"sync@{s}",  # one synchronisation per frame
    ]
    # the next frame reuses every buffer and still synchronises once
    allocs = cuda.events.count("alloc:256") + cuda.events.count("alloc:16")
    start = len(cuda.events)
    y = x[:2] * 2
    _, (total2, n2) = backend.run_with_stats({"image": y}, check)
    assert n2 == 128 and total2 == pytest.approx(float(y.sum(dtype=np.float64)), rel=1e-6)
    assert not [e for e in cuda.events[start:] if e.startswith("alloc")]
    assert [e for e in cuda.events[start:] if e.startswith("sync")] == [f"sync@{s}"]
    assert allocs >= 1 and backend.synchronizations == 2
    backend.close()
    assert cuda.allocs == {} and cuda.pinned == 0


def test_plain_run_copies_no_check_buffer(doubles: tuple[Any, _Cuda]) -> None:
    _, cuda = doubles
    backend = TensorRTBackend.from_engine_bytes(b"PLAN")
    start = len(cuda.events)
    backend.run({"image": np.ones((1, 1, 8, 8), np.float32)})
    kinds = [e.split(":")[0].split("@")[0] for e in _stream_events(cuda.events[start:])]
    assert kinds == ["htod", "execute", "dtoh", "sync"]
    backend.close()


@pytest.fixture
def graphs(doubles: tuple[Any, _Cuda], monkeypatch: pytest.MonkeyPatch) -> _Graphs:
    from edgeguard.backends import tensorrt as trt_backend

    g = _Graphs(doubles[1])
    monkeypatch.setattr(trt_backend, "_load_graph_api", lambda: g)
    return g


def test_cuda_graph_is_captured_replayed_and_recaptured_on_shape_change(
    doubles: tuple[Any, _Cuda], graphs: _Graphs
) -> None:
    _, cuda = doubles
    backend = TensorRTBackend.from_engine_bytes(b"PLAN", cuda_graph=True)
    check = _SumCheck(cuda)
    s = backend._stream.handle
    rng = np.random.default_rng(2)

    def frame(batch: int) -> list[str]:
        x = rng.random((batch, 1, 8, 8), dtype=np.float32)
        start = len(cuda.events)
        out, (total, n) = backend.run_with_stats({"image": x}, check)
        np.testing.assert_allclose(out["logits"], x.reshape(batch, 64) @ W, rtol=1e-6)
        assert n == batch * 64 and total == pytest.approx(float(x.sum(dtype=np.float64)))
        return cuda.events[start:]

    first = frame(4)  # eager (TensorRT's warm-up after a shape change), then captured
    assert first.index(f"sync@{s}") < first.index(f"begin_capture@{s}")
    captured = [e.removeprefix("capture:").split("@")[0].split(":")[0] for e in first]
    captured = captured[first.index(f"begin_capture@{s}") + 1 : first.index(f"end_capture@{s}")]
    assert captured == ["htod", "check", "execute", "dtoh", "dtoh"]
    assert [label for label, _ in graphs.graphs[1]][1].startswith("check:")
    replay = frame(4)  # new data, same shapes: staged, replayed, one sync
    assert _stream_events(replay) == [f"graph_launch:1@{s}", f"sync@{s}"]
    changed = frame(2)  # new shapes: eager again and a new capture
    assert f"begin_capture@{s}" in changed and graphs.destroyed == [1]
    assert _stream_events(frame(2)) == [f"graph_launch:2@{s}", f"sync@{s}"]
    # a plain run() is another sequence (no check): captured apart
    start = len(cuda.events)
    backend.run({"image": np.ones((2, 1, 8, 8), np.float32)})
    assert f"begin_capture@{s}" in cuda.events[start:]
    assert backend.synchronizations == 5
    details = backend.describe()["details"]
    assert details["cuda_graph"] is True and details["graph_captures"] == 3
    backend.close()
    assert graphs.destroyed == [1, 2, 3]


def test_capture_failure_falls_back_to_eager_and_says_why(
    doubles: tuple[Any, _Cuda], graphs: _Graphs
) -> None:
    _, cuda = doubles
    graphs.fail = True
    backend = TensorRTBackend.from_engine_bytes(b"PLAN", cuda_graph=True)
    x = np.ones((3, 1, 8, 8), np.float32)
    for _ in range(2):
        out = backend.run({"image": x})["logits"]
        np.testing.assert_allclose(out, x.reshape(3, 64) @ W, rtol=1e-6)
    assert sum(e.startswith("begin_capture") for e in cuda.events) == 1  # tried once
    details = backend.describe()["details"]
    assert details["cuda_graph"] is False and "invalidated" in details["graph_error"]
    backend.close()


def test_device_check_refusals(doubles: tuple[Any, _Cuda]) -> None:
    _, cuda = doubles
    backend = TensorRTBackend.from_engine_bytes(b"PLAN")
    x = np.ones((1, 1, 8, 8), np.float32)
    with pytest.raises(UsageError, match="input 'logits', which this model does not have"):
        backend.run_with_stats({"image": x}, _SumCheck(cuda, input_name="logits"))
    with pytest.raises(UsageError, match="CUDA device 1, this backend on device 0"):
        backend.run_with_stats({"image": x}, _SumCheck(cuda, device_id=1))
    with pytest.raises(UsageError, match="missing input"):
        backend.run_with_stats({}, _SumCheck(cuda))
    backend.close()
    with pytest.raises(UsageError, match="closed"):
        backend.run_with_stats({"image": x}, _SumCheck(cuda))


def test_cuda_and_tensorrt_failures_are_backend_errors(
    doubles: tuple[Any, _Cuda], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, cuda = doubles
    backend = TensorRTBackend.from_engine_bytes(b"PLAN")
    x = np.ones((1, 1, 8, 8), np.float32)
    cuda.fail_on = "htod"
    syncs = sum(e.startswith("sync@") for e in cuda.events)
    with pytest.raises(BackendError, match="failed at h2d image: test double: injected"):
        backend.run({"image": x})
    # the stream is drained before the error leaves (queued copies read the staging buffers)
    assert sum(e.startswith("sync@") for e in cuda.events) == syncs + 1
    assert backend.synchronizations == 0  # no frame completed
    cuda.fail_on = "check"
    with pytest.raises(BackendError, match="failed at check image"):
        backend.run_with_stats({"image": x}, _SumCheck(cuda))
    cuda.fail_on = None
    backend.run({"image": x})  # the backend is still usable
    assert cuda.events.count("push") == cuda.events.count("pop")
    backend.close()
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt(cuda, execute_ok=False))
    backend = TensorRTBackend.from_engine_bytes(b"PLAN")
    with pytest.raises(BackendError, match="execute_async_v3 failed"):
        backend.run({"image": x})
    backend.close()


def test_missing_pycuda_names_the_cuda_extra_with_tensorrt_present(
    doubles: tuple[Any, _Cuda], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeguard.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(MissingDependencyError) as info:
        TensorRTBackend.from_engine_bytes(b"PLAN")
    assert info.value.extra == "cuda" and "pycuda" in info.value.module


def test_cuda_graph_flag_must_be_bool(doubles: tuple[Any, _Cuda]) -> None:
    with pytest.raises(UsageError, match="cuda_graph must be a bool"):
        TensorRTBackend.from_engine_bytes(b"PLAN", cuda_graph=1)  # type: ignore[arg-type]


def test_dla_member_is_placed_on_its_core(doubles: tuple[Any, _Cuda]) -> None:
    from edgeguard.policy.engine import MemberRecipe

    trt, _ = doubles
    recipe = MemberRecipe(fp16=True, dla_core=1, allow_gpu_fallback=True)
    trt.Runtime.num_DLA_cores = 2  # the test double's device has two DLA cores

    class TwoCores(trt.Runtime):  # type: ignore[misc, name-defined]
        def __init__(self, logger: object) -> None:
            super().__init__(logger)
            self.num_DLA_cores = 2
            self.DLA_core: int | None = None

    trt.Runtime = TwoCores
    backend = TensorRTBackend.from_built(b"PLAN", recipe)
    assert trt.last_runtime.DLA_core == 1
    assert trt.last_runtime.engine_host_code_allowed is False
    assert backend.describe()["details"]["dla_core"] == 1
    backend.close()


def test_cuda_cpp_sanity_check_rides_the_inference_stream(
    doubles: tuple[Any, _Cuda], tmp_path: Any
) -> None:
    """The guard's DeviceSanityCheck through the backend, with kernel test doubles."""
    from edgeguard.guard.sanity.cuda_cpp import STATS_DTYPE, CudaSanityKernel
    from edgeguard.guard.sanity.reference import reference_stats
    from edgeguard.guard.sanity.vectors import stats_mismatches

    _, cuda = doubles
    image = tmp_path / "sanity_kernel.fatbin"
    image.write_bytes(b"test double: never loaded by a GPU")
    kernel = CudaSanityKernel(image)
    check = kernel.device_check("image", sat_lo=0.0, sat_hi=0.9)
    backend = TensorRTBackend.from_engine_bytes(b"PLAN")
    x = np.random.default_rng(3).random((5, 1, 8, 8), dtype=np.float32)
    x[2, 0, 3, 3] = np.nan
    start = len(cuda.events)
    out, stats = backend.run_with_stats({"image": x}, check)
    np.testing.assert_allclose(out["logits"], x.reshape(5, 64) @ W, rtol=1e-5)
    assert stats_mismatches(stats, reference_stats(x, sat_lo=0.0, sat_hi=0.9)) == []
    assert stats.tdiff is None and int(stats.nan.sum()) == 1
    s = backend._stream.handle
    kinds = [e.split("@")[0].split(":")[:2] for e in _stream_events(cuda.events[start:])]
    assert [k[0] for k in kinds] == ["htod", "kernel", "kernel", "execute", "dtoh", "dtoh", "sync"]
    assert kinds[1][1] == "eg_sanity_partials_f32_nchw" and kinds[2][1] == "eg_sanity_merge"
    partials = cuda.functions["eg_sanity_partials_f32_nchw"].launches[-1]
    assert (
        partials["stream"].handle == s
        and int(partials["args"][0]) == backend._context.addr["image"]
    )
    assert partials["grid"] == (1, 1, 5) and partials["block"] == (256, 1, 1)
    assert cuda.functions["eg_sanity_merge"].launches[-1]["stream"].handle == s
    assert backend._check_bytes[1] == 5 * STATS_DTYPE.itemsize  # only 5 records come back
    with pytest.raises(UsageError, match="unsupported dtype"):
        check.device_buffers((1, 1, 8, 8), "int32")
    backend.close()
    kernel.close()


def test_another_check_object_is_captured_apart(
    doubles: tuple[Any, _Cuda], graphs: _Graphs
) -> None:
    """A graph bakes in one check's launch; a different check on the same input recaptures."""
    _, cuda = doubles
    backend = TensorRTBackend.from_engine_bytes(b"PLAN", cuda_graph=True)
    x = np.ones((2, 1, 8, 8), np.float32)
    single, double = _SumCheck(cuda), _SumCheck(cuda, scale=2.0)
    for _ in range(2):
        assert backend.run_with_stats({"image": x}, single)[1] == (128.0, 128)
    assert backend.run_with_stats({"image": x}, double)[1] == (256.0, 128)
    assert backend.run_with_stats({"image": x}, double)[1] == (256.0, 128)
    assert backend.describe()["details"]["graph_captures"] == 2
    backend.close()


class _DriverLibDouble:
    """Test double of libcuda.so.1 for the CUDA graph calls (records them; no driver)."""

    def __init__(self, *, fail: str | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        lib = self

        class Fn:
            def __init__(self, name: str, rc: int = 0) -> None:
                self.name, self.rc = name, rc
                self.restype: Any = None
                self.argtypes: Any = None

            def __call__(self, *args: Any) -> int:
                lib.calls.append((self.name, *args))
                if self.name == "cuStreamEndCapture":
                    args[1]._obj.value = 0xA11  # the graph
                if self.name == "cuGraphInstantiateWithFlags":
                    args[0]._obj.value = 0xE11  # the executable
                return 700 if self.name == fail else self.rc

        for name in (
            "cuStreamBeginCapture_v2",
            "cuStreamEndCapture",
            "cuGraphInstantiateWithFlags",
            "cuGraphLaunch",
            "cuGraphDestroy",
            "cuGraphExecDestroy",
        ):
            setattr(self, name, Fn(name))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def test_cuda_graph_driver_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    from edgeguard.backends import tensorrt as trt_backend

    lib = _DriverLibDouble()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: lib if name == "libcuda.so.1" else None)
    graphs = trt_backend._load_graph_api()
    enqueued: list[str] = []
    executable = graphs.capture(0x5EED, lambda: enqueued.append("work"))
    assert executable == 0xE11 and enqueued == ["work"]
    assert lib.names() == [
        "cuStreamBeginCapture_v2",
        "cuStreamEndCapture",
        "cuGraphInstantiateWithFlags",
        "cuGraphDestroy",  # the graph is freed once instantiated
    ]
    begin = lib.calls[0]
    assert begin[1].value == 0x5EED and begin[2] == 1  # thread-local capture mode
    graphs.launch(executable, 0x5EED)
    graphs.destroy(executable)
    assert lib.names()[-2:] == ["cuGraphLaunch", "cuGraphExecDestroy"]


def test_cuda_graph_driver_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    from edgeguard.backends import tensorrt as trt_backend

    lib = _DriverLibDouble()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: lib)
    graphs = trt_backend._load_graph_api()

    def boom() -> None:
        raise RuntimeError("enqueue failed")

    with pytest.raises(RuntimeError, match="enqueue failed"):
        graphs.capture(1, boom)
    assert lib.names()[-1] == "cuStreamEndCapture"  # capture always ended
    for failing, match in (
        ("cuStreamBeginCapture_v2", "cuStreamBeginCapture failed"),
        ("cuGraphInstantiateWithFlags", "cuGraphInstantiate failed"),
        ("cuGraphLaunch", r"cuGraphLaunch failed \(CUresult 700\)"),
    ):
        lib = _DriverLibDouble(fail=failing)
        monkeypatch.setattr(ctypes, "CDLL", lambda name, lib=lib: lib)
        graphs = trt_backend._load_graph_api()
        with pytest.raises(BackendError, match=match):
            graphs.capture(1, lambda: None)
            graphs.launch(1, 1)
        if failing == "cuGraphInstantiateWithFlags":
            assert lib.names()[-1] == "cuGraphDestroy"

    def no_driver(name: str) -> Any:
        raise OSError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_driver)
    with pytest.raises(BackendError, match=r"CUDA graphs need the NVIDIA driver's libcuda\.so\.1"):
        trt_backend._load_graph_api()

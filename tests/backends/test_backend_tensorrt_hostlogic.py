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
from typing import Any

import numpy as np
import pytest

from edgeguard.backends.tensorrt import TensorRTBackend
from edgeguard.errors import BackendError, UsageError

W = np.arange(64 * 10, dtype=np.float32).reshape(64, 10) / 640.0
MAX_BATCH = 8


class _Mem:
    def __init__(self, dev: _Cuda, size: int) -> None:
        self.dev, self.size, self.buf = dev, size, np.zeros(size, np.uint8)
        dev.allocs[id(self)] = self

    def __int__(self) -> int:
        return id(self)

    def free(self) -> None:
        del self.dev.allocs[id(self)]


class _Cuda(types.ModuleType):
    def __init__(self) -> None:
        super().__init__("pycuda.driver")
        self.allocs: dict[int, _Mem] = {}
        self.events: list[str] = []
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

        class Stream:
            handle = 1234

            def synchronize(self) -> None:
                cuda.events.append("sync")

        self.Device, self.Stream = Device, Stream

    def init(self) -> None:
        self.events.append("init")

    def mem_alloc(self, size: int) -> _Mem:
        self.events.append(f"alloc:{size}")
        return _Mem(self, size)

    def memcpy_htod(self, dst: _Mem, src: np.ndarray) -> None:
        raw = np.frombuffer(src.tobytes(), np.uint8)
        dst.buf[: raw.size] = raw

    def memcpy_dtoh(self, dst: np.ndarray, src: _Mem) -> None:
        dst.reshape(-1).view(np.uint8)[:] = src.buf[: dst.nbytes]


def _fake_trt(cuda: _Cuda, *, deserialize_ok: bool = True) -> types.ModuleType:
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
            assert self.n is not None
            src = cuda.allocs[self.addr["image"]].buf[: self.n * 64 * 4].view(np.float32)
            out = (src.reshape(self.n, 64) @ W).astype(np.float32)
            dst = cuda.allocs[self.addr["logits"]].buf
            dst[: out.nbytes] = np.frombuffer(out.tobytes(), np.uint8)
            cuda.events.append("execute")
            return True

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

"""build_engine: every recipe field lands on the right TensorRT 10 builder call.

TensorRT and a GPU are not available here. The test doubles below stand in for
``tensorrt`` and ``pycuda.driver`` and record what the builder is told: flags,
config attributes, the optimisation profile, the calibrator's batches, the timing
cache, the progress monitor. They prove the mapping and the refusals, not that
TensorRT builds a good engine (that is the ``gpu``/``trt`` test in
test_backend_tensorrt.py).
"""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import pytest

from edgeguard.backends.tensorrt import IDENTITY_KEYS, build_engine, platform_identity
from edgeguard.errors import BackendError, MissingDependencyError, UsageError
from edgeguard.policy.engine import MemberRecipe, ShapeRange

ONNX = b"\x08\x07onnx model bytes (test double)"
IMAGE = ShapeRange("image", (1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 128, 128))
MASK = ShapeRange("mask", (1, 5), (2, 7), (4, 9))


class CudaDouble(types.ModuleType):
    """Test double of pycuda.driver: one device, memory as NumPy bytes."""

    def __init__(self, cc: tuple[int, int] = (8, 7)) -> None:
        super().__init__("pycuda.driver")
        self.allocs: dict[int, np.ndarray] = {}
        self.events: list[str] = []
        dev = self

        class Mem:
            def __init__(self, size: int) -> None:
                dev.allocs[id(self)] = np.zeros(size, np.uint8)

            def __int__(self) -> int:
                return id(self)

            def free(self) -> None:
                del dev.allocs[id(self)]

        class Ctx:
            def push(self) -> None:
                dev.events.append("push")

            def pop(self) -> None:
                dev.events.append("pop")

            def detach(self) -> None:
                dev.events.append("detach")

        class Device:
            @staticmethod
            def count() -> int:
                return 1

            def __init__(self, i: int) -> None:
                pass

            def compute_capability(self) -> tuple[int, int]:
                return cc

            def name(self) -> str:
                return "Orin (test double)"

            def retain_primary_context(self) -> Ctx:
                return Ctx()

        self.Device, self.Mem = Device, Mem

    def init(self) -> None:
        pass

    def get_driver_version(self) -> int:
        return 12060

    def mem_alloc(self, size: int) -> Any:
        return self.Mem(size)

    def memcpy_htod(self, dst: Any, src: np.ndarray) -> None:
        raw = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
        self.allocs[int(dst)][: raw.size] = raw


class BuilderRecorder:
    """Test double of the TensorRT 10 builder API that records what it is told."""

    def __init__(
        self,
        cuda: CudaDouble,
        inputs: dict[str, tuple[tuple[int, ...], str]] | None = None,
        *,
        dla_cores: int = 2,
        parse_ok: bool = True,
        build_ok: bool = True,
        foreign_cache: bytes = b"FOREIGN",
    ) -> None:
        self.cuda = cuda
        self.inputs = inputs or {"image": ((-1, 3, -1, -1), "FLOAT"), "mask": ((-1, -1), "FLOAT")}
        self.dla_cores, self.parse_ok, self.build_ok = dla_cores, parse_ok, build_ok
        self.foreign_cache = foreign_cache
        self.flags: list[str] = []
        self.attrs: dict[str, Any] = {}
        self.pool: dict[str, int] = {}
        self.profile: dict[str, tuple[list[int], list[int], list[int]]] = {}
        self.calibration_profile = False
        self.calibrated: list[dict[str, np.ndarray]] = []
        self.cache_calls: list[tuple[str, bytes]] = []
        self.cache_writes: list[Any] = []

    def module(self) -> types.ModuleType:
        rec = self
        trt = types.ModuleType("tensorrt")
        trt.__version__ = "10.13.0.35"  # type: ignore[attr-defined]

        class Tensor:
            def __init__(self, name: str, shape: tuple[int, ...], dtype: str) -> None:
                self.name, self.shape, self.dtype = name, shape, dtype

        class Network:
            def __init__(self) -> None:
                self.tensors = [Tensor(n, s, d) for n, (s, d) in rec.inputs.items()]
                self.num_inputs = len(self.tensors)

            def get_input(self, i: int) -> Tensor:
                return self.tensors[i]

        class Parser:
            num_errors = 1

            def __init__(self, network: Network, logger: object) -> None:
                pass

            def parse(self, data: bytes) -> bool:
                assert data == ONNX
                return rec.parse_ok

            def get_error(self, i: int) -> str:
                return "unsupported operator FooBar"

        class Profile:
            def set_shape(self, name: str, lo: list[int], opt: list[int], hi: list[int]) -> None:
                rec.profile[name] = (lo, opt, hi)

        class Cache:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def serialize(self) -> bytes:
                return b"TIMING:" + self.data

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                rec.pool[pool] = size

            def add_optimization_profile(self, profile: Profile) -> int:
                return 0

            def set_calibration_profile(self, profile: Profile) -> bool:
                rec.calibration_profile = True
                return True

            def set_flag(self, flag: str) -> None:
                rec.flags.append(flag)

            def create_timing_cache(self, data: bytes) -> Cache:
                rec.cache_calls.append(("create", bytes(data)))
                return Cache(bytes(data))

            def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
                assert ignore_mismatch is False
                rec.cache_calls.append(("set", cache.data))
                return cache.data != rec.foreign_cache

            def __setattr__(self, key: str, value: Any) -> None:
                rec.attrs[key] = value

            def __getattr__(self, key: str) -> Any:
                return rec.attrs[key]

        class Builder:
            num_DLA_cores = rec.dla_cores

            def __init__(self, logger: object) -> None:
                rec.cuda.events.append("builder")

            def create_network(self, flags: int) -> Network:
                assert flags == 0
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
                monitor = rec.attrs.get("progress_monitor")
                if monitor is not None:
                    monitor.phase_start("Building engine", None, 3)
                    for step in range(3):
                        if not monitor.step_complete("Building engine", step):
                            monitor.phase_finish("Building engine")
                            return None
                    monitor.phase_finish("Building engine")
                calibrator = rec.attrs.get("int8_calibrator")
                if calibrator is not None:
                    assert calibrator.read_calibration_cache() is None
                    names = [t.name for t in network.tensors]
                    while ptrs := calibrator.get_batch(names):
                        rec.calibrated.append(
                            {n: rec.cuda.allocs[p].copy() for n, p in zip(names, ptrs, strict=True)}
                        )
                    rec.cache_writes.append(calibrator.write_calibration_cache(b"calib-cache"))
                return b"SERIALIZED-PLAN" if rec.build_ok else None

        class Monitor:
            def __init__(self) -> None:
                pass

        class Calibrator:
            def __init__(self) -> None:
                pass

        trt.Builder, trt.OnnxParser = Builder, Parser  # type: ignore[attr-defined]
        trt.Runtime = object  # type: ignore[attr-defined]
        trt.IProgressMonitor = Monitor  # type: ignore[attr-defined]
        trt.IInt8EntropyCalibrator2 = Calibrator  # type: ignore[attr-defined]
        trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, lvl: None})  # type: ignore[attr-defined]
        trt.Dims = list  # type: ignore[attr-defined]
        trt.nptype = lambda t: {"FLOAT": np.float32, "HALF": np.float16}[t]  # type: ignore[attr-defined]
        trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")  # type: ignore[attr-defined]
        names = "FP16 INT8 GPU_FALLBACK VERSION_COMPATIBLE EXCLUDE_LEAN_RUNTIME"
        trt.BuilderFlag = types.SimpleNamespace(**{n: n for n in names.split()})  # type: ignore[attr-defined]
        trt.DeviceType = types.SimpleNamespace(DLA="DLA", GPU="GPU")  # type: ignore[attr-defined]
        trt.HardwareCompatibilityLevel = types.SimpleNamespace(  # type: ignore[attr-defined]
            NONE="NONE", AMPERE_PLUS="AMPERE_PLUS", SAME_COMPUTE_CAPABILITY="SAME_CC"
        )
        return trt


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> CudaDouble:
    dev = CudaDouble()
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = dev  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", dev)
    return dev


def _install(monkeypatch: pytest.MonkeyPatch, rec: BuilderRecorder) -> BuilderRecorder:
    monkeypatch.setitem(sys.modules, "tensorrt", rec.module())
    return rec


def test_every_recipe_field_lands_on_its_builder_call(
    cuda: CudaDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = _install(monkeypatch, BuilderRecorder(cuda))
    recipe = MemberRecipe(
        fp16=True,
        dla_core=1,
        allow_gpu_fallback=True,
        workspace_bytes=1 << 26,
        shapes=(IMAGE, MASK),
        builder_optimization_level=5,
        version_compatible=True,
    )
    built = build_engine(ONNX, recipe)
    assert built.plan == b"SERIALIZED-PLAN" and built.timing_cache is None
    assert rec.flags == ["FP16", "GPU_FALLBACK", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"]
    assert rec.pool == {"WORKSPACE": 1 << 26}
    assert rec.attrs["default_device_type"] == "DLA" and rec.attrs["DLA_core"] == 1
    assert rec.attrs["builder_optimization_level"] == 5
    assert rec.attrs["hardware_compatibility_level"] == "NONE"
    # one profile, every dynamic axis of every dynamic input
    assert rec.profile == {
        "image": ([1, 3, 32, 32], [2, 3, 64, 64], [4, 3, 128, 128]),
        "mask": ([1, 5], [2, 7], [4, 9]),
    }
    assert tuple(built.identity) == IDENTITY_KEYS
    assert built.identity == {
        "tensorrt": "10.13.0.35",
        "compute_capability": "8.7",
        "gpu_name": "Orin (test double)",
        "driver": "12.6",
    }
    assert "int8_calibrator" not in rec.attrs and "progress_monitor" not in rec.attrs
    assert cuda.events.count("push") == cuda.events.count("pop") and cuda.events[-1] == "detach"
    # the builder is created inside the chosen device's primary context
    assert cuda.events.index("push") < cuda.events.index("builder") < cuda.events.index("pop")


def test_gpu_defaults_set_nothing_optional(
    cuda: CudaDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = _install(monkeypatch, BuilderRecorder(cuda, {"x": ((1, 4), "FLOAT")}))
    build_engine(ONNX, MemberRecipe())
    assert rec.flags == [] and rec.pool == {} and rec.profile == {}
    assert "default_device_type" not in rec.attrs and "DLA_core" not in rec.attrs
    assert rec.attrs["builder_optimization_level"] == 3


def test_host_code_allowed_keeps_the_lean_runtime(
    cuda: CudaDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = _install(monkeypatch, BuilderRecorder(cuda))
    recipe = MemberRecipe(
        shapes=(IMAGE, MASK), version_compatible=True, engine_host_code_allowed=True
    )
    build_engine(ONNX, recipe)
    assert rec.flags == ["VERSION_COMPATIBLE"]


@pytest.mark.parametrize(
    ("level", "cc", "expected"),
    [
        ("ampere+", (8, 7), "AMPERE_PLUS"),
        ("same_compute_capability", (7, 5), "SAME_CC"),
        ("ampere+", (7, 2), None),  # Xavier cannot build Ampere+ engines
        ("same_compute_capability", (7, 2), None),
    ],
)
def test_hardware_compatibility_level(
    monkeypatch: pytest.MonkeyPatch, level: str, cc: tuple[int, int], expected: str | None
) -> None:
    dev = CudaDouble(cc)
    monkeypatch.setitem(sys.modules, "pycuda.driver", dev)
    rec = _install(monkeypatch, BuilderRecorder(dev))
    recipe = MemberRecipe(shapes=(IMAGE, MASK), hardware_compatibility_level=level)
    if expected is None:
        with pytest.raises(
            UsageError, match=rf"needs compute capability .* this GPU is {cc[0]}.{cc[1]}"
        ):
            build_engine(ONNX, recipe)
    else:
        build_engine(ONNX, recipe)
        assert rec.attrs["hardware_compatibility_level"] == expected


def test_int8_calibrates_every_input_without_a_cache(
    cuda: CudaDouble, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    rec = _install(monkeypatch, BuilderRecorder(cuda))
    rng = np.random.default_rng(0)
    image = rng.random((4, 3, 64, 64), dtype=np.float32)  # 2 batches of opt (2, 3, 64, 64)
    mask = rng.random((4, 7), dtype=np.float32)  # 2 batches of opt (2, 7)
    build_engine(
        ONNX,
        MemberRecipe(int8=True, shapes=(IMAGE, MASK)),
        calibration={"image": image, "mask": mask},
    )
    assert rec.flags == ["INT8"] and rec.calibration_profile
    assert len(rec.calibrated) == 2
    for k, batch in enumerate(rec.calibrated):
        np.testing.assert_array_equal(
            batch["image"].view(np.float32), image[2 * k : 2 * k + 2].reshape(-1)
        )
        np.testing.assert_array_equal(
            batch["mask"].view(np.float32), mask[2 * k : 2 * k + 2].reshape(-1)
        )
    assert rec.cache_writes == [None] and list(tmp_path.iterdir()) == []  # nothing persisted
    assert cuda.allocs == {}  # calibration buffers freed


def test_best_allows_fp16_and_int8(cuda: CudaDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _install(monkeypatch, BuilderRecorder(cuda, {"x": ((2, 4), "FLOAT")}))
    build_engine(ONNX, MemberRecipe(best=True), calibration={"x": np.zeros((6, 4), np.float32)})
    assert rec.flags == ["FP16", "INT8"] and len(rec.calibrated) == 3
    assert not rec.calibration_profile  # no dynamic input: no profile to calibrate with


def test_timing_cache_in_and_out(cuda: CudaDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _install(monkeypatch, BuilderRecorder(cuda))
    recipe = MemberRecipe(shapes=(IMAGE, MASK), timing_cache=True)
    built = build_engine(ONNX, recipe, timing_cache=b"earlier")
    assert rec.cache_calls == [("create", b"earlier"), ("set", b"earlier")]
    assert built.timing_cache == b"TIMING:earlier"
    rec.cache_calls.clear()
    built = build_engine(ONNX, recipe, timing_cache=b"FOREIGN")  # another GPU: start afresh
    assert rec.cache_calls == [
        ("create", b"FOREIGN"),
        ("set", b"FOREIGN"),
        ("create", b""),
        ("set", b""),
    ]
    assert built.timing_cache == b"TIMING:"
    # a recipe that asks for a timing cache gets a fresh one
    rec.cache_calls.clear()
    built = build_engine(ONNX, MemberRecipe(shapes=(IMAGE, MASK), timing_cache=True))
    assert rec.cache_calls == [("create", b""), ("set", b"")] and built.timing_cache == b"TIMING:"
    with pytest.raises(UsageError, match="turns the timing cache off"):
        build_engine(
            ONNX, MemberRecipe(shapes=(IMAGE, MASK), timing_cache=False), timing_cache=b"x"
        )
    rec.cache_calls.clear()
    assert (
        build_engine(ONNX, MemberRecipe(shapes=(IMAGE, MASK), timing_cache=False)).timing_cache
        is None
    )
    assert rec.cache_calls == []


def test_progress_monitor_feeds_the_callback(
    cuda: CudaDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(monkeypatch, BuilderRecorder(cuda))
    seen: list[tuple[str, int, int]] = []
    build_engine(ONNX, MemberRecipe(shapes=(IMAGE, MASK)), progress=lambda *a: seen.append(a))
    phase = "Building engine"
    assert seen == [(phase, 0, 3), (phase, 1, 3), (phase, 2, 3), (phase, 3, 3), (phase, 3, 3)]


def test_progress_callback_error_cancels_the_build(
    cuda: CudaDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(monkeypatch, BuilderRecorder(cuda))

    class Stop(Exception):
        pass

    calls: list[int] = []

    def progress(phase: str, done: int, total: int) -> None:
        calls.append(done)
        if done == 1:
            raise Stop("user cancelled")

    with pytest.raises(Stop, match="user cancelled"):
        build_engine(ONNX, MemberRecipe(shapes=(IMAGE, MASK)), progress=progress)
    assert calls == [0, 1]  # no callback after the failure


def _bypassing(recipe: MemberRecipe, **fields: Any) -> MemberRecipe:
    """A recipe whose fields were changed after its checks ran (a bypass)."""
    for key, value in fields.items():
        object.__setattr__(recipe, key, value)
    return recipe


@pytest.mark.parametrize(
    ("recipe", "kwargs", "match"),
    [
        (_bypassing(MemberRecipe(fp16=True, dla_core=0), fp16=False), {}, "DLA runs fp16 or int8"),
        (
            _bypassing(MemberRecipe(fp16=True), allow_gpu_fallback=True),
            {},
            "allow_gpu_fallback needs dla_core",
        ),
        (
            _bypassing(MemberRecipe(fp16=True, dla_core=0), hardware_compatibility_level="ampere+"),
            {},
            "not to the DLA",
        ),
        (MemberRecipe(int8=True, shapes=(IMAGE, MASK)), {}, "pass calibration data"),
        (
            MemberRecipe(shapes=(IMAGE, MASK)),
            {"calibration": {"image": np.zeros(1)}},
            "does not ask for int8",
        ),
        (MemberRecipe(), {"device_id": -1}, "device_id"),
        (MemberRecipe(), {"progress": "print"}, "progress must be callable"),
        (MemberRecipe(), {"timing_cache": "cache"}, "timing_cache must be bytes"),
    ],
)
def test_refusals_before_any_import(
    monkeypatch: pytest.MonkeyPatch, recipe: MemberRecipe, kwargs: dict[str, Any], match: str
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # never reached
    with pytest.raises(UsageError, match=match):
        build_engine(ONNX, recipe, **kwargs)


def test_not_a_recipe_or_not_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="MemberRecipe"):
        build_engine(ONNX, {"fp16": True})  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="bytes-like"):
        build_engine("model.onnx", MemberRecipe())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (
            (IMAGE, MASK, ShapeRange("depth", (1,), (1,), (1,))),
            "'depth', which the model does not take",
        ),
        ((IMAGE,), r"input 'mask' has dynamic axes \(-1, -1\); the recipe gives no shapes"),
        ((IMAGE, ShapeRange("mask", (1, 5, 1), (2, 7, 1), (4, 9, 1))), "min .* has rank 3"),
        (
            (ShapeRange("image", (1, 1, 32, 32), (2, 1, 64, 64), (4, 1, 128, 128)), MASK),
            "sets axis 1 to 1, the model fixes it at 3",
        ),
    ],
)
def test_shape_refusals(
    cuda: CudaDouble, monkeypatch: pytest.MonkeyPatch, shapes: tuple[ShapeRange, ...], match: str
) -> None:
    rec = _install(monkeypatch, BuilderRecorder(cuda))
    with pytest.raises(UsageError, match=match):
        build_engine(ONNX, MemberRecipe(shapes=shapes))
    assert rec.profile == {}


@pytest.mark.parametrize(
    ("calibration", "match"),
    [
        ({"image": np.zeros((2, 3, 64, 64), np.float32)}, "missing: mask"),
        (
            {
                "image": np.zeros((2, 3, 64, 64), np.float32),
                "mask": np.zeros((2, 7), np.float32),
                "extra": np.zeros(1),
            },
            "unknown: extra",
        ),
        (
            {"image": np.zeros((2, 3, 64, 64), np.float64), "mask": np.zeros((2, 7), np.float32)},
            r"calibration\['image'\] must be float32",
        ),
        (
            {"image": np.zeros((3, 3, 64, 64), np.float32), "mask": np.zeros((2, 7), np.float32)},
            r"k \* 2 samples",
        ),
        (
            {"image": np.zeros((4, 3, 64, 64), np.float32), "mask": np.zeros((2, 7), np.float32)},
            "different numbers of batches",
        ),
        ({"image": [], "mask": np.zeros((2, 7), np.float32)}, "must be a numpy.ndarray"),
    ],
)
def test_calibration_refusals(
    cuda: CudaDouble, monkeypatch: pytest.MonkeyPatch, calibration: dict[str, Any], match: str
) -> None:
    rec = _install(monkeypatch, BuilderRecorder(cuda))
    with pytest.raises(UsageError, match=match):
        build_engine(ONNX, MemberRecipe(int8=True, shapes=(IMAGE, MASK)), calibration=calibration)
    assert rec.calibrated == [] and cuda.allocs == {}


def test_builder_failures(cuda: CudaDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = MemberRecipe(fp16=True, dla_core=1, shapes=(IMAGE, MASK))
    _install(monkeypatch, BuilderRecorder(cuda, dla_cores=1))
    with pytest.raises(UsageError, match="DLA core 1 does not exist"):
        build_engine(ONNX, recipe)
    _install(monkeypatch, BuilderRecorder(cuda, parse_ok=False))
    with pytest.raises(BackendError, match="FooBar"):
        build_engine(ONNX, recipe)
    _install(monkeypatch, BuilderRecorder(cuda, build_ok=False))
    with pytest.raises(BackendError, match="failed to build"):
        build_engine(ONNX, recipe)


def test_missing_libraries_name_their_extras(
    cuda: CudaDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError) as info:
        build_engine(ONNX, MemberRecipe())
    assert info.value.extra == "trt"
    with pytest.raises(MissingDependencyError):
        platform_identity()
    _install(monkeypatch, BuilderRecorder(cuda))
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(MissingDependencyError) as info:
        build_engine(ONNX, MemberRecipe(shapes=(IMAGE, MASK)))
    assert info.value.extra == "cuda"


def test_platform_identity_without_building(
    cuda: CudaDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = _install(monkeypatch, BuilderRecorder(cuda))
    identity = platform_identity()
    assert tuple(identity) == IDENTITY_KEYS and identity["compute_capability"] == "8.7"
    assert rec.flags == [] and rec.attrs == {}
    with pytest.raises(UsageError, match="CUDA device 3 does not exist"):
        platform_identity(3)

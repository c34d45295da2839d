"""``edgeguard selftest``: what of the device path works on this host, with evidence.

Layer: beside :mod:`edgeguard.api` (it drives the runtime, the guard and the backends
the way the product does, on the example digits model shipped with edgeguard).

Each check returns a :class:`CheckResult` with one of three states:

* ``passed``: it ran and its result agreed with the reference it is compared against;
* ``failed``: it ran and disagreed, or raised; the detail says what;
* ``not run``: this host lacks what it needs (a GPU, TensorRT, pycuda, a built kernel,
  Landlock); the detail says exactly what, so a report from a CPU-only host is honest
  about the GPU parts it could not exercise.

On a Jetson with TensorRT and pycuda the GPU checks run: engine build from the signed
recipe form, seal and reload through the sealed engine cache, the CUDA C++ sanity kernel
against the NumPy reference on the golden vectors, TensorRT against ONNX Runtime on the
same frames, and a GPU member under its sandbox. The report (``--json``) is meant to be
pasted into a bug report as is.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeguard import __version__
from edgeguard.errors import EdgeguardError, MissingDependencyError

__all__ = [
    "CHECKS",
    "DISCOVERY_CHECKS",
    "CheckResult",
    "NotRun",
    "SelftestReport",
    "host_facts",
    "run_selftest",
]

Status = Literal["passed", "failed", "not run"]
#: ONNX Runtime vs TensorRT on the digits model: largest absolute difference of the
#: class probabilities allowed (fp32 engines; fp16 engines get 10x).
PARITY_ATOL = 1e-3
_JETSON_MODEL = Path("/proc/device-tree/model")
_TEGRA_RELEASE = Path("/etc/nv_tegra_release")


class NotRun(Exception):
    """Raised by a check that this host cannot run; the message says what is missing."""


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome.

    Attributes:
        name: Short identifier, stable across releases (for scripts).
        area: ``"host"``, ``"cpu"`` or ``"gpu"``.
        status: ``"passed"``, ``"failed"`` or ``"not run"``.
        detail: One line: what was compared and the outcome, or what is missing.
        seconds: Wall time of the check.
        data: Measurements (JSON-able).
    """

    name: str
    area: str
    status: Status
    detail: str
    seconds: float
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "name": self.name,
            "area": self.area,
            "status": self.status,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
            "data": dict(self.data),
        }


@dataclass(frozen=True)
class SelftestReport:
    """Everything :func:`run_selftest` found.

    Attributes:
        edgeguard: edgeguard's version.
        host: Facts about this host (:func:`host_facts`).
        checks: The checks, in the order they ran.
    """

    edgeguard: str
    host: Mapping[str, Any]
    checks: tuple[CheckResult, ...]

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        """The checks that ran and failed."""
        return tuple(c for c in self.checks if c.status == "failed")

    def counts(self) -> dict[str, int]:
        """How many checks passed, failed and were not run."""
        out = {"passed": 0, "failed": 0, "not run": 0}
        for c in self.checks:
            out[c.status] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the ``--json`` report)."""
        return {
            "format": "edgeguard-selftest/1",
            "edgeguard": self.edgeguard,
            "host": dict(self.host),
            "summary": self.counts(),
            "checks": [c.to_dict() for c in self.checks],
        }


# -- host facts -----------------------------------------------------------------------


def _read_text(path: Path, limit: int = 4096) -> str | None:
    try:
        with path.open("rb") as f:
            raw = f.read(limit)
    except OSError:
        return None
    return raw.replace(b"\x00", b"").decode("utf-8", "replace").strip() or None


def _version_of(module: str) -> str | None:
    from edgeguard._optional import available

    if not available(module):
        return None
    import importlib

    try:
        mod = importlib.import_module(module)
    except Exception:  # a broken install reports as missing, with the reason elsewhere
        return None
    version = getattr(mod, "__version__", None)
    return str(version) if version is not None else "installed"


def _tensorrt_version() -> str | None:
    """TensorRT's version, or None (``tensorrt-stubs`` alone is not TensorRT)."""
    from edgeguard._optional import available

    if not available("tensorrt"):
        return None
    import importlib

    try:
        trt = importlib.import_module("tensorrt")
    except Exception:
        return None
    if not hasattr(trt, "Builder"):
        return None
    return str(getattr(trt, "__version__", "unknown"))


def host_facts() -> dict[str, Any]:
    """What this host is: CPU, kernel, Jetson model and L4T release, libraries, GPU."""
    facts: dict[str, Any] = {
        "machine": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "jetson_model": _read_text(_JETSON_MODEL),
        "l4t_release": (_read_text(_TEGRA_RELEASE) or "").split("\n")[0] or None,
        "onnxruntime": _version_of("onnxruntime"),
        "numba": _version_of("numba"),
        "tensorrt": _tensorrt_version(),
        "pycuda": _version_of("pycuda"),
        "nvidia_driver": _nvidia_driver(),
        "device_nodes": _gpu_device_nodes(),
    }
    return facts


def _cpu_model() -> str | None:
    text = _read_text(Path("/proc/cpuinfo"), limit=1 << 16) or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware", "CPU part"):
            return value.strip() or None
    return platform.processor() or None


def _nvidia_driver() -> str | None:
    text = _read_text(Path("/proc/driver/nvidia/version"))
    if text:
        return text.splitlines()[0]
    return None


def _gpu_device_nodes() -> list[str]:
    dev = Path("/dev")
    found: list[str] = []
    for pattern in ("nvidia*", "nvmap", "nvhost-*", "nvgpu/*/*"):
        found.extend(str(p) for p in sorted(dev.glob(pattern)))
    return found[:64]


# -- the checks ------------------------------------------------------------------------


def _digits() -> tuple[bytes, np.ndarray]:
    from edgeguard.data import load_split, model_bytes

    x, _ = load_split("test")
    return model_bytes("digits_mlp"), np.ascontiguousarray(x[:64], dtype=np.float32)


def _ort_outputs(model: bytes, x: np.ndarray) -> np.ndarray:
    from edgeguard.backends.onnxruntime import OnnxRuntimeBackend

    with OnnxRuntimeBackend.from_bytes(model, intra_op_threads=1) as b:
        name = b.inputs()[0].name
        out = b.outputs()[0].name
        return np.concatenate([b.run({name: x[i : i + 1]})[out] for i in range(len(x))])


def _vectors_with(compute: Callable[..., Any]) -> tuple[str, dict[str, Any]]:
    from edgeguard.guard.sanity.vectors import check_stored, load_cases

    n = len(load_cases())
    bad = check_stored(compute=compute)
    if bad:
        first = next(iter(bad.items()))
        raise AssertionError(
            f"{len(bad)} of {n} golden vectors disagree; {first[0]}: {first[1][0]}"
        )
    return f"{n} golden vectors agree with the NumPy reference", {"vectors": n}


def check_sanity_numba() -> tuple[str, dict[str, Any]]:
    """The Numba CPU sanity kernel against the stored golden vectors."""
    from edgeguard._optional import available

    if not available("numba"):
        raise NotRun("numba is not installed (extra: numba)")
    from edgeguard.guard.sanity.cpu import numba_stats

    return _vectors_with(numba_stats)


def check_sanity_host_harness() -> tuple[str, dict[str, Any]]:
    """The CUDA C++ kernel's arithmetic, run on the CPU by its host harness."""
    from edgeguard.guard.sanity.cuda_cpp import HOST_LIBRARY, HostHarness

    try:
        harness = HostHarness()
    except EdgeguardError as exc:
        raise NotRun(f"{HOST_LIBRARY} is not built (run `make kernels`): {exc}") from exc
    detail, data = _vectors_with(harness.stats)
    return detail, {**data, "library": str(harness.path)}


def check_sanity_gpu() -> tuple[str, dict[str, Any]]:
    """The CUDA C++ sanity kernel on the GPU against the golden vectors."""
    kernel = _cuda_kernel()
    try:
        detail, data = _vectors_with(kernel.stats)
    finally:
        kernel.close()
    return detail, {**data, "kernel": str(kernel.path)}


def _cuda_kernel() -> Any:
    from edgeguard.guard.sanity.cuda_cpp import FATBIN, CudaSanityKernel

    try:
        return CudaSanityKernel()
    except MissingDependencyError as exc:
        raise NotRun("needs an NVIDIA GPU and pycuda (extra: cuda), not installed here") from exc
    except EdgeguardError as exc:
        raise NotRun(f"no GPU kernel to run ({FATBIN}, CUDA device): {exc}") from exc


def check_ort_inference() -> tuple[str, dict[str, Any]]:
    """ONNX Runtime on the CPU: the digits model's recorded held-out accuracy."""
    from edgeguard.backends.onnxruntime import OnnxRuntimeBackend
    from edgeguard.data import load_split, model_bytes, models_info

    x, y = load_split("test")
    t0 = time.perf_counter()
    with OnnxRuntimeBackend.from_bytes(model_bytes("digits_mlp"), intra_op_threads=1) as b:
        load_ms = (time.perf_counter() - t0) * 1e3
        name, out = b.inputs()[0].name, b.outputs()[0].name
        t1 = time.perf_counter()
        probs = b.run({name: np.ascontiguousarray(x, dtype=np.float32)})[out]
        run_ms = (time.perf_counter() - t1) * 1e3
    accuracy = float(np.mean(np.argmax(probs, axis=1) == y))
    recorded = _recorded_accuracy(models_info())
    if recorded is not None and abs(accuracy - recorded) > 1e-9:
        raise AssertionError(f"accuracy {accuracy:.4f} differs from the recorded {recorded:.4f}")
    return (
        f"digits MLP: accuracy {accuracy:.4f} on {len(x)} held-out images"
        + ("" if recorded is None else " (as recorded)"),
        {"accuracy": accuracy, "load_ms": round(load_ms, 2), "batch_run_ms": round(run_ms, 2)},
    )


def _recorded_accuracy(info: Mapping[str, Any]) -> float | None:
    entry = info.get("accuracy", {}).get("digits_mlp", {})
    value = entry.get("onnxruntime_test") if isinstance(entry, Mapping) else None
    return float(value) if isinstance(value, (int, float)) else None


def _digits_bundle(tmp: Path) -> tuple[Path, Any, Any]:
    """A digits bundle signed and encrypted for a throwaway device key, in ``tmp``."""
    from edgeguard.api import build_bundle
    from edgeguard.bundle.verify import TrustStore
    from edgeguard.crypto.keys import DeviceKey, SignerKey
    from edgeguard.data import model_path, split_path

    signer = SignerKey.generate()
    device = DeviceKey.generate("selftest")
    out = tmp / "digits.egb"
    build_bundle(
        [model_path("digits_mlp")],
        out=out,
        signer=signer,
        recipients=[device.public],
        profiles=["generic-cpu"],
        version=1,
        name="selftest-digits",
        calibration=split_path("calib"),
    )
    return out, TrustStore.of([signer.public]), device


def _log_kinds(path: Path) -> list[str]:
    """The record kinds of an event log, in order (its chain is checked elsewhere)."""
    import json

    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [str(json.loads(line).get("kind")) for line in lines if line.strip()]


def check_device_session() -> tuple[str, dict[str, Any]]:
    """A bundle built, verified, decrypted and served in sandboxed workers, like the CLI.

    The digits model is packaged for a throwaway device key, opened with
    :func:`~edgeguard.runtime.session.open_session` (sandboxed members, the signed
    sanity profile, the event log) twice in a fresh state directory, and its answers are
    compared with ONNX Runtime run directly on the same frames.
    """
    import tempfile

    from edgeguard.runtime.session import open_session

    model, x = _digits()
    frames = x[:16]
    expected = _ort_outputs(model, frames)
    starts: list[float] = []
    cache: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="edgeguard-selftest-") as tmp:
        bundle, trust, device = _digits_bundle(Path(tmp))
        layers: dict[str, Any] = {}
        for _ in range(2):
            seen = _log_kinds(Path(tmp) / "state" / "events.log")
            t0 = time.perf_counter()
            with open_session(
                bundle, trust=trust, device_key=device, state_dir=Path(tmp) / "state"
            ) as session:
                starts.append((time.perf_counter() - t0) * 1e3)
                got = [
                    next(iter(session.infer({"image": frames[i : i + 1]}).outputs.values()))
                    for i in range(len(frames))
                ]
                name = session.policy.members[0].name
                layers = dict(getattr(session.worker_status(name), "layers", {}) or {})
            cache.append(
                [
                    k
                    for k in _log_kinds(Path(tmp) / "state" / "events.log")[len(seen) :]
                    if k.startswith("engine_cache_")
                ]
            )
    diff = float(np.max(np.abs(np.concatenate(got) - expected)))
    if diff > 1e-5:
        raise AssertionError(f"the session's answers differ from ONNX Runtime's by {diff:.3g}")
    if "engine_cache_sealed" not in cache[0] or "engine_cache_hit" not in cache[1]:
        raise AssertionError(
            f"the engine cache did not seal at the first start and load at the second: {cache}"
        )
    applied = sorted(k for k, v in layers.items() if str(v).startswith("active"))
    return (
        f"{len(frames)} frames through open_session agree with ONNX Runtime; compiled, "
        f"sealed, reloaded from the engine cache; sandbox layers active: "
        f"{', '.join(applied) or 'none'}",
        {
            "start_ms": [round(v, 1) for v in starts],
            "engine_cache": cache,
            "layers": layers,
            "max_abs_diff": diff,
        },
    )


CheckFn = Callable[[], tuple[str, dict[str, Any]]]


def _need_gpu_stack() -> None:
    """Raise :class:`NotRun` unless TensorRT and pycuda import and a CUDA device answers."""
    missing = [
        label
        for label, present in (
            ("TensorRT (extra: trt)", _tensorrt_version() is not None),
            ("pycuda (extra: cuda)", _version_of("pycuda") is not None),
        )
        if not present
    ]
    if missing:
        raise NotRun(f"needs an NVIDIA GPU with {' and '.join(missing)}, not installed here")
    from edgeguard.backends.tensorrt import platform_identity

    try:
        platform_identity()
    except EdgeguardError as exc:
        raise NotRun(f"no usable CUDA device: {exc}") from exc


def _digits_recipe(*, fp16: bool) -> Any:
    from edgeguard.policy.engine import MemberRecipe, ShapeRange

    return MemberRecipe(
        fp16=fp16,
        shapes=(ShapeRange("image", (1, 1, 8, 8), (1, 1, 8, 8), (64, 1, 8, 8)),),
    )


_BUILT: dict[str, Any] = {}


def _built(precision: str) -> Any:
    """The digits engine of ``precision`` built once per selftest run."""
    if precision not in _BUILT:
        from edgeguard.backends.tensorrt import build_engine

        model, _ = _digits()
        t0 = time.perf_counter()
        built = build_engine(model, _digits_recipe(fp16=precision == "fp16"))
        _BUILT[precision] = (built, time.perf_counter() - t0)
    return _BUILT[precision]


def check_engine_build() -> tuple[str, dict[str, Any]]:
    """TensorRT builds the digits engine from a recipe, fp32 and fp16, on this GPU."""
    _need_gpu_stack()
    data: dict[str, Any] = {}
    for precision in ("fp32", "fp16"):
        built, seconds = _built(precision)
        data[precision] = {"build_s": round(seconds, 2), "plan_bytes": len(built.plan)}
        data["identity"] = dict(built.identity)
    ident = data["identity"]
    return (
        f"fp32 and fp16 plans built with TensorRT {ident.get('tensorrt')} on "
        f"{ident.get('gpu_name')} (sm {ident.get('compute_capability')})",
        data,
    )


def check_engine_parity() -> tuple[str, dict[str, Any]]:
    """The digits engines against ONNX Runtime on the same 64 frames."""
    _need_gpu_stack()
    from edgeguard.backends.tensorrt import TensorRTBackend

    model, x = _digits()
    expected = _ort_outputs(model, x)
    data: dict[str, Any] = {}
    for precision, tolerance in (("fp32", PARITY_ATOL), ("fp16", 10 * PARITY_ATOL)):
        built, _ = _built(precision)
        with TensorRTBackend.from_built(built.plan, _digits_recipe(fp16=precision == "fp16")) as b:
            out = b.outputs()[0].name
            t0 = time.perf_counter()
            got = np.concatenate([b.run({"image": x[i : i + 1]})[out] for i in range(len(x))])
            per_frame_ms = (time.perf_counter() - t0) * 1e3 / len(x)
        diff = float(np.max(np.abs(got - expected)))
        agree = float(np.mean(np.argmax(got, axis=1) == np.argmax(expected, axis=1)))
        data[precision] = {
            "max_abs_diff": diff,
            "top1_agreement": agree,
            "frame_ms": round(per_frame_ms, 3),
        }
        if diff > tolerance:
            raise AssertionError(
                f"{precision} engine differs from ONNX Runtime by {diff:.3g} (> {tolerance:g})"
            )
    return (
        f"64 frames: fp32 within {data['fp32']['max_abs_diff']:.2g}, fp16 within "
        f"{data['fp16']['max_abs_diff']:.2g} of ONNX Runtime",
        data,
    )


def check_sanity_on_stream() -> tuple[str, dict[str, Any]]:
    """The CUDA C++ sanity kernel on the engine's input buffer, on its stream, vs NumPy."""
    _need_gpu_stack()
    from edgeguard.backends.tensorrt import TensorRTBackend
    from edgeguard.guard.sanity.reference import reference_stats
    from edgeguard.guard.sanity.vectors import stats_mismatches

    kernel = _cuda_kernel()
    _, x = _digits()
    built, _ = _built("fp32")
    try:
        check = kernel.device_check("image", layout="NCHW")
        b = TensorRTBackend.from_built(built.plan, _digits_recipe(fp16=False))
        try:
            for i in range(16):
                frame = x[i : i + 1]
                _, stats = b.run_with_stats({"image": frame}, check)
                diffs = stats_mismatches(stats, reference_stats(frame, layout="NCHW"))
                if diffs:
                    raise AssertionError(f"frame {i}: {diffs[0]}")
            syncs = b.synchronizations
        finally:
            b.close()
    finally:
        kernel.close()
    return (
        "16 frames: statistics computed on the inference stream agree with the NumPy reference",
        {"frames": 16, "stream_synchronizations": syncs},
    )


def _discovery_verdict(report: Any, what: str) -> tuple[str, dict[str, Any]]:
    data = report.to_dict()
    if not report.worker_alive or report.errors:
        raise AssertionError(
            f"{what}: the worker "
            + ("died" if not report.worker_alive else "failed a request")
            + (f" ({report.errors[0]})" if report.errors else "")
        )
    if report.unlisted:
        raise AssertionError(
            f"{what}: syscalls outside the allowlist, which a production worker dies for: "
            + ", ".join(report.names)
            + " (the --json report lists them with their phase; please send it)"
        )
    return (
        f"{what}: nothing outside the allowlist in {report.requests} request(s) "
        f"({report.profile} profile, lockdown {report.lockdown})",
        data,
    )


def check_discovery_cpu() -> tuple[str, dict[str, Any]]:
    """A CPU worker whose syscalls outside the allowlist are recorded, not killed."""
    from edgeguard.runtime.sandbox.discover import run_discovery
    from edgeguard.runtime.sandbox.executor import WorkerSpec

    model, x = _digits()
    report = run_discovery(WorkerSpec(model), name="digits", feeds={"image": x[:1]}, requests=5)
    return _discovery_verdict(report, "CPU worker (ONNX Runtime)")


def check_discovery_gpu() -> tuple[str, dict[str, Any]]:
    """A GPU worker (TensorRT engine) under the GPU profile, syscalls recorded, not killed."""
    _need_gpu_stack()
    from edgeguard.runtime.sandbox.discover import run_discovery
    from edgeguard.runtime.sandbox.executor import WorkerSpec

    _, x = _digits()
    built, _ = _built("fp32")
    spec = WorkerSpec(built.plan, fmt="trt-engine", options={"device_id": 0})
    report = run_discovery(spec, name="digits-trt", feeds={"image": x[:1]}, requests=5)
    return _discovery_verdict(report, "GPU worker (TensorRT)")


#: (name, area, function) in the order they run; ``--discover-seccomp`` adds its own.
CHECKS: tuple[tuple[str, str, CheckFn], ...] = (
    ("ort-inference", "cpu", check_ort_inference),
    ("sanity-numba-cpu", "cpu", check_sanity_numba),
    ("sanity-host-harness", "cpu", check_sanity_host_harness),
    ("device-session", "cpu", check_device_session),
    ("sanity-cuda-kernel", "gpu", check_sanity_gpu),
    ("engine-build", "gpu", check_engine_build),
    ("engine-parity", "gpu", check_engine_parity),
    ("sanity-on-stream", "gpu", check_sanity_on_stream),
)
#: The checks ``--discover-seccomp`` adds.
DISCOVERY_CHECKS: tuple[tuple[str, str, CheckFn], ...] = (
    ("seccomp-discovery-cpu", "cpu", check_discovery_cpu),
    ("seccomp-discovery-gpu", "gpu", check_discovery_gpu),
)


def run_check(name: str, area: str, fn: CheckFn) -> CheckResult:
    """Run one check; every outcome, including an exception, becomes a result."""
    t0 = time.perf_counter()
    try:
        detail, data = fn()
        status: Status = "passed"
    except NotRun as exc:
        status, detail, data = "not run", str(exc), {}
    except Exception as exc:  # a report tool: every failure, even a bug, becomes a result
        text = str(exc).splitlines()[0] if str(exc) else ""
        status, detail, data = "failed", f"{type(exc).__name__}: {text}"[:500], {}
    return CheckResult(
        name=name,
        area=area,
        status=status,
        detail=detail,
        seconds=time.perf_counter() - t0,
        data=data,
    )


def run_selftest(
    *,
    checks: Sequence[tuple[str, str, CheckFn]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> SelftestReport:
    """Run the checks and collect the report.

    Args:
        checks: The checks to run (default :data:`CHECKS`).
        progress: Called with each check's name before it runs.

    Returns:
        The report; :attr:`SelftestReport.failed` lists what failed.
    """
    _BUILT.clear()
    results = []
    for name, area, fn in CHECKS if checks is None else checks:
        if progress is not None:
            progress(name)
        results.append(run_check(name, area, fn))
    _BUILT.clear()
    return SelftestReport(edgeguard=__version__, host=host_facts(), checks=tuple(results))

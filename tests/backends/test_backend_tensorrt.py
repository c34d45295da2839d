"""The TensorRT backend: refusal paths here, the real engine path only on a GPU host."""

from __future__ import annotations

import importlib.util
import inspect
import sys

import numpy as np
import pytest

from edgeguard import data
from edgeguard.backends import load_backend
from edgeguard.backends.tensorrt import TensorRTBackend, build_engine_from_onnx
from edgeguard.errors import MissingDependencyError, UsageError


def _real_tensorrt() -> bool:
    """True only for a real TensorRT install (tensorrt-stubs alone is a bare namespace)."""
    spec = importlib.util.find_spec("tensorrt")
    if spec is None or spec.origin is None:
        return False
    import tensorrt

    return hasattr(tensorrt, "Runtime")


def _gpu_stack() -> bool:
    if not _real_tensorrt() or importlib.util.find_spec("pycuda") is None:
        return False
    try:
        import pycuda.driver as cuda

        cuda.init()
        return bool(cuda.Device.count() > 0)
    except Exception:
        return False


def test_missing_tensorrt_names_the_trt_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(MissingDependencyError) as info:
        TensorRTBackend.from_engine_bytes(b"\x00" * 16)
    assert info.value.extra == "trt" and info.value.module == "tensorrt"
    assert "edgeguard[trt]" in info.value.one_line()
    with pytest.raises(MissingDependencyError, match="tensorrt"):
        load_backend("trt-engine", b"\x00" * 16)
    with pytest.raises(MissingDependencyError) as info2:
        build_engine_from_onnx(
            data.model_bytes("digits_mlp"), precision="fp16", dla_core=None, workspace_bytes=1 << 28
        )
    assert info2.value.extra == "trt"


@pytest.mark.skipif(_real_tensorrt(), reason="TensorRT is installed on this host")
def test_this_host_has_no_tensorrt_and_says_so() -> None:
    """Without monkeypatching: tensorrt-stubs' empty namespace package is not TensorRT."""
    with pytest.raises(MissingDependencyError) as info:
        TensorRTBackend.from_engine_bytes(b"plan")
    assert info.value.extra == "trt"


def test_missing_pycuda_names_the_cuda_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    if not _real_tensorrt():
        pytest.skip("needs a real TensorRT to get past the tensorrt check")
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(MissingDependencyError) as info:
        TensorRTBackend.from_engine_bytes(b"plan")
    assert info.value.extra == "cuda"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "fp8", "dla_core": None, "workspace_bytes": 1 << 28}, "precision"),
        ({"precision": "fp32", "dla_core": 0, "workspace_bytes": 1 << 28}, "DLA"),
        ({"precision": "fp16", "dla_core": -1, "workspace_bytes": 1 << 28}, "dla_core"),
        ({"precision": "fp16", "dla_core": None, "workspace_bytes": 1024}, "1 MiB"),
        ({"precision": "int8", "dla_core": None, "workspace_bytes": 1 << 28}, "calibration"),
        (
            {"precision": "fp16", "dla_core": None, "workspace_bytes": 1 << 28, "max_batch": 0},
            "opt_batch",
        ),
    ],
)
def test_builder_argument_refusals_before_any_import(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        build_engine_from_onnx(data.model_bytes("digits_mlp"), **kwargs)  # type: ignore[arg-type]


def test_loader_argument_refusals() -> None:
    with pytest.raises(UsageError, match="bytes"):
        TensorRTBackend.from_engine_bytes("model.plan")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="device_id"):
        TensorRTBackend.from_engine_bytes(b"plan", device_id=-1)
    with pytest.raises(UsageError, match="allow_host_code"):
        TensorRTBackend.from_engine_bytes(b"plan", allow_host_code=1)  # type: ignore[arg-type]


def test_security_knobs_are_keyword_only_and_off_by_default() -> None:
    load = inspect.signature(TensorRTBackend.from_engine_bytes).parameters
    assert load["allow_host_code"].kind is inspect.Parameter.KEYWORD_ONLY
    assert load["allow_host_code"].default is False
    build = inspect.signature(build_engine_from_onnx).parameters
    for name in ("precision", "dla_core", "workspace_bytes"):
        assert build[name].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.skipif(not _gpu_stack(), reason="needs TensorRT and an NVIDIA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_from_digits_mlp_matches_onnxruntime(precision: str) -> None:
    from edgeguard.backends.onnxruntime import OnnxRuntimeBackend

    onnx_bytes = data.model_bytes("digits_mlp")
    plan = build_engine_from_onnx(
        onnx_bytes,
        precision=precision,
        dla_core=None,
        workspace_bytes=1 << 28,  # type: ignore[arg-type]
    )
    x, y = data.load_split("test")
    with (
        TensorRTBackend.from_engine_bytes(plan) as trt_b,
        OnnxRuntimeBackend.from_bytes(onnx_bytes) as ort_b,
    ):
        assert [s.name for s in trt_b.inputs()] == ["image"]
        got = trt_b.run({"image": x[:64]})["logits"]
        want = ort_b.run({"image": x[:64]})["logits"]
        tol = 1e-4 if precision == "fp32" else 5e-2
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
        assert np.mean(got.argmax(1) == y[:64]) >= 0.95
        with pytest.raises(UsageError, match="profile"):
            trt_b.run({"image": np.zeros((65, 1, 8, 8), np.float32)})

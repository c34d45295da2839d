"""The TensorRT backend: refusal paths here, the real engine path only on a GPU host."""

from __future__ import annotations

import importlib.util
import inspect
import sys

import numpy as np
import pytest

from edgeguard import data
from edgeguard.backends import load_backend
from edgeguard.backends.tensorrt import (
    TensorRTBackend,
    build_engine,
    build_engine_from_onnx,
    platform_identity,
)
from edgeguard.errors import MissingDependencyError, UsageError
from edgeguard.policy.engine import MemberRecipe, ShapeRange


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


# --------------------------------------------------------------------------- GPU end to end
# These need TensorRT, pycuda and an NVIDIA GPU; they have never run in this repository.

DIGITS_SHAPES = (ShapeRange("image", (1, 1, 8, 8), (16, 1, 8, 8), (64, 1, 8, 8)),)


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.skipif(not _gpu_stack(), reason="needs TensorRT and an NVIDIA GPU")
@pytest.mark.parametrize(("fp16", "cuda_graph"), [(False, False), (True, False), (False, True)])
def test_engine_built_from_recipe_matches_onnxruntime(fp16: bool, cuda_graph: bool) -> None:
    from edgeguard.backends.onnxruntime import OnnxRuntimeBackend

    onnx_bytes = data.model_bytes("digits_mlp")
    recipe = MemberRecipe(fp16=fp16, workspace_bytes=1 << 28, shapes=DIGITS_SHAPES)
    built = build_engine(onnx_bytes, recipe)
    assert built.identity == platform_identity()
    x, y = data.load_split("test")
    tol = 5e-2 if fp16 else 1e-4
    with (
        TensorRTBackend.from_built(built.plan, recipe, cuda_graph=cuda_graph) as trt_b,
        OnnxRuntimeBackend.from_bytes(onnx_bytes) as ort_b,
    ):
        for batch in (x[:64], x[64:128], x[128:144], x[144:208]):  # shape changes: recapture
            got = trt_b.run({"image": batch})["logits"]
            want = ort_b.run({"image": batch})["logits"]
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
        assert np.mean(trt_b.run({"image": x[:64]})["logits"].argmax(1) == y[:64]) >= 0.95
        assert trt_b.synchronizations == 5
        if cuda_graph:
            assert trt_b.describe()["details"]["graph_captures"] >= 3


def _sanity_kernel_built() -> bool:
    from edgeguard.guard.sanity.cuda_cpp import FATBIN, find_kernel_file

    try:
        find_kernel_file(FATBIN)
    except UsageError:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.skipif(not _gpu_stack(), reason="needs TensorRT and an NVIDIA GPU")
def test_gpu_sanity_stats_on_the_inference_stream_match_the_references() -> None:
    if not _sanity_kernel_built():
        pytest.skip("the CUDA C++ sanity kernel is not built (make kernels)")
    from edgeguard.guard.sanity.cuda_cpp import (
        HOST_LIBRARY,
        CudaSanityKernel,
        HostHarness,
        find_kernel_file,
    )
    from edgeguard.guard.sanity.reference import reference_stats
    from edgeguard.guard.sanity.vectors import stats_mismatches

    onnx_bytes = data.model_bytes("digits_mlp")
    recipe = MemberRecipe(shapes=DIGITS_SHAPES)
    built = build_engine(onnx_bytes, recipe)
    kernel = CudaSanityKernel()
    harness = HostHarness(find_kernel_file(HOST_LIBRARY))
    x, _ = data.load_split("test")
    frames = x[:48].copy()
    frames[3, 0, 2, 2] = np.nan
    frames[7] = 1.0  # a saturated frame
    try:
        for cuda_graph in (False, True):
            check = kernel.device_check("image")
            with TensorRTBackend.from_built(built.plan, recipe, cuda_graph=cuda_graph) as trt_b:
                for batch in (frames[:16], frames[16:48], frames[:16]):
                    outputs, stats = trt_b.run_with_stats({"image": batch}, check)
                    assert stats_mismatches(stats, reference_stats(batch)) == []
                    assert stats_mismatches(stats, harness.stats(batch)) == []
                    plain = trt_b.run({"image": batch})
                    np.testing.assert_array_equal(outputs["logits"], plain["logits"])
    finally:
        kernel.close()

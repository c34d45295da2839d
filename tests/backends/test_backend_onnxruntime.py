"""The ONNX Runtime CPU backend on the committed digits models."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from edgeguard import data
from edgeguard.backends import load_backend
from edgeguard.backends.onnxruntime import OnnxRuntimeBackend
from edgeguard.errors import BackendError, MalformedError, UsageError


@pytest.fixture(scope="module")
def mlp() -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend.from_bytes(data.model_bytes("digits_mlp"), intra_op_threads=1)


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    return data.load_split("test")


def test_reports_model_io(mlp: OnnxRuntimeBackend) -> None:
    (inp,) = mlp.inputs()
    (out,) = mlp.outputs()
    assert (inp.name, inp.dtype, inp.shape) == ("image", "float32", ("N", 1, 8, 8))
    assert (out.name, out.dtype, out.shape) == ("logits", "float32", ("N", 10))


def test_reproduces_heldout_accuracy(
    mlp: OnnxRuntimeBackend, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = test_split
    logits = mlp.run({"image": x})["logits"]
    assert logits.shape == (len(x), 10) and logits.dtype == np.float32
    acc = float(np.mean(logits.argmax(axis=1) == y))
    assert acc == pytest.approx(data.models_info()["accuracy"]["digits_mlp"]["onnxruntime_test"])
    assert acc >= 0.95


def test_batch_sizes_are_consistent(
    mlp: OnnxRuntimeBackend, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = test_split
    whole = mlp.run({"image": x[:7]})["logits"]
    single = np.concatenate([mlp.run({"image": x[i : i + 1]})["logits"] for i in range(7)])
    np.testing.assert_allclose(whole, single, rtol=1e-5, atol=1e-5)


def test_fallback_model_via_load_backend(test_split: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = test_split
    with load_backend("onnx", memoryview(data.model_bytes("digits_logreg"))) as backend:
        acc = float(np.mean(backend.run({"image": x})["logits"].argmax(axis=1) == y))
    assert backend.closed
    assert 0.90 <= acc < 0.98


def test_describe_is_json(mlp: OnnxRuntimeBackend) -> None:
    desc = mlp.describe()
    text = json.dumps(desc)
    assert desc["backend"] == "onnxruntime"
    assert desc["details"]["providers"] == ["CPUExecutionProvider"]
    assert desc["details"]["model"]["metadata"]["name"] == "digits_mlp"
    assert desc["inputs"][0] == {"name": "image", "dtype": "float32", "shape": ["N", 1, 8, 8]}
    assert "digits_mlp" in text


@pytest.mark.parametrize(
    ("feeds", "match"),
    [
        ({}, "missing input"),
        ({"image": np.zeros((1, 1, 8, 8), np.float32), "mask": np.zeros(1)}, "unknown input"),
        ({"picture": np.zeros((1, 1, 8, 8), np.float32)}, "unknown input"),
        ({"image": np.zeros((1, 1, 8, 8), np.float64)}, "must be float32"),
        ({"image": np.zeros((1, 1, 8, 8), np.uint8)}, "must be float32"),
        ({"image": np.zeros((1, 64), np.float32)}, "rank 4"),
        ({"image": np.zeros((1, 1, 8, 8, 1), np.float32)}, "rank 4"),
        ({"image": np.zeros((1, 3, 8, 8), np.float32)}, "shape"),
        ({"image": np.zeros((2, 1, 8, 9), np.float32)}, "shape"),
        ({"image": [[[[0.0] * 8] * 8]]}, "numpy.ndarray"),
    ],
)
def test_input_validation_refusals(
    mlp: OnnxRuntimeBackend, feeds: dict[str, np.ndarray], match: str
) -> None:
    with pytest.raises(UsageError, match=match):
        mlp.run(feeds)


def test_feeds_must_be_a_mapping(mlp: OnnxRuntimeBackend) -> None:
    with pytest.raises(UsageError, match="mapping"):
        mlp.run([np.zeros((1, 1, 8, 8), np.float32)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not an onnx model at all",
        bytes(range(256)) * 8,
    ],
)
def test_corrupt_model_raises_backend_error(blob: bytes) -> None:
    with pytest.raises(BackendError):
        OnnxRuntimeBackend.from_bytes(blob)


def test_truncated_and_bitflipped_model_raise_backend_error() -> None:
    raw = data.model_bytes("digits_mlp")
    with pytest.raises(BackendError):
        OnnxRuntimeBackend.from_bytes(raw[: len(raw) // 3])
    # structurally broken graph: the first Gemm reads a weight that does not exist
    import onnx

    model = onnx.load_from_string(raw)
    model.graph.node[1].input[1] = "no_such_weight"
    with pytest.raises(BackendError, match="cannot load"):
        OnnxRuntimeBackend.from_bytes(model.SerializeToString())


def test_api_takes_bytes_not_paths() -> None:
    params = inspect.signature(OnnxRuntimeBackend.from_bytes).parameters
    assert next(iter(params)) == "model"  # bound classmethod: the model bytes come first
    for arg in (str(data.model_path("digits_mlp")), data.model_path("digits_mlp"), 42):
        with pytest.raises(UsageError, match="bytes"):
            OnnxRuntimeBackend.from_bytes(arg)  # type: ignore[arg-type]
    # security-relevant knobs are keyword-only
    for name in ("intra_op_threads", "inter_op_threads"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_thread_counts_validated(bad: object) -> None:
    with pytest.raises(UsageError, match="intra_op_threads"):
        OnnxRuntimeBackend.from_bytes(data.model_bytes("digits_logreg"), intra_op_threads=bad)  # type: ignore[arg-type]


def test_closed_backend_refuses() -> None:
    backend = OnnxRuntimeBackend.from_bytes(data.model_bytes("digits_logreg"))
    backend.close()
    backend.close()  # idempotent
    with pytest.raises(UsageError, match="closed"):
        backend.run({"image": np.zeros((1, 1, 8, 8), np.float32)})
    with pytest.raises(UsageError, match="closed"):
        backend.inputs()


def test_unknown_format_is_malformed() -> None:
    with pytest.raises(MalformedError, match="tflite"):
        load_backend("tflite", b"\x00")


def test_runtime_failure_maps_to_backend_error() -> None:
    """A model that validates but fails at run time (Reshape to an impossible shape)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([7, 5], dtype=np.int64), "s")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["y"])],
        "bad_reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7, 5])],
        initializer=[shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    backend = OnnxRuntimeBackend.from_bytes(model.SerializeToString())
    with pytest.raises(BackendError, match="failed to run"):
        backend.run({"x": np.zeros((3, 4), np.float32)})
    backend.close()


@pytest.mark.parametrize("kind", ["bytearray", "memoryview"])
def test_the_plaintext_copy_for_onnxruntime_is_zeroed(kind: str, monkeypatch) -> None:
    """ONNX Runtime takes only bytes: the copy made for it is zeroed once it has parsed it."""
    import onnxruntime as ort

    model = data.model_bytes("digits_mlp")
    given: list[bytes] = []
    sessions: list[object] = []
    real = ort.InferenceSession

    def spy(path_or_bytes, *a, **k):  # type: ignore[no-untyped-def]
        given.append(path_or_bytes)
        sessions.append(real(path_or_bytes, *a, **k))
        return sessions[-1]

    monkeypatch.setattr(ort, "InferenceSession", spy)
    src = bytearray(model) if kind == "bytearray" else memoryview(bytearray(model)).toreadonly()
    backend = OnnxRuntimeBackend.from_bytes(src, intra_op_threads=1)
    (copy,) = given
    assert isinstance(copy, bytes) and len(copy) == len(model)
    assert copy.count(0) == len(copy)  # zeroed in place
    assert getattr(sessions[0], "_model_bytes", None) is None  # and not kept alive
    assert bytes(src) == model  # the caller's buffer is the caller's to wipe
    ref = OnnxRuntimeBackend.from_bytes(model, intra_op_threads=1)
    x, _ = data.load_split("test")
    np.testing.assert_array_equal(
        backend.run({"image": x[:5]})["logits"], ref.run({"image": x[:5]})["logits"]
    )


def test_a_model_given_as_bytes_is_not_copied_or_touched(monkeypatch) -> None:
    import onnxruntime as ort

    model = data.model_bytes("digits_mlp")
    before = bytes(bytearray(model))
    given: list[bytes] = []
    real = ort.InferenceSession

    def spy(path_or_bytes, *a, **k):  # type: ignore[no-untyped-def]
        given.append(path_or_bytes)
        return real(path_or_bytes, *a, **k)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    OnnxRuntimeBackend.from_bytes(model, intra_op_threads=1)
    assert given[0] is model and model == before


def test_the_copy_is_zeroed_when_the_load_fails(monkeypatch) -> None:
    import onnxruntime as ort

    given: list[bytes] = []
    real = ort.InferenceSession

    def spy(path_or_bytes, *a, **k):  # type: ignore[no-untyped-def]
        given.append(path_or_bytes)
        return real(path_or_bytes, *a, **k)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    with pytest.raises(BackendError, match="cannot load"):
        OnnxRuntimeBackend.from_bytes(bytearray(b"\x08\x07not a model" * 100))
    assert len(given) == 1 and given[0].count(0) == len(given[0])  # parsed once, no fallback

"""The committed example models and data splits (edgeguard/data)."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest

from edgeguard import data
from edgeguard.errors import UsageError

FILES = ("digits_mlp.onnx", "digits_logreg.onnx", "digits_calib.npz", "digits_test.npz")


def _ort_accuracy(name: str) -> float:
    import onnxruntime as ort

    x, y = data.load_split("test")
    sess = ort.InferenceSession(data.model_bytes(name), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"image": x})
    return float(np.mean(np.asarray(logits).argmax(axis=1) == y))


def test_files_exist_are_small_and_match_recorded_digests() -> None:
    info = data.models_info()
    assert set(info["sha256"]) == set(FILES)
    for fname in FILES:
        path = data.model_path("digits_mlp").parent / fname
        raw = path.read_bytes()
        assert 0 < len(raw) < 300_000, fname
        assert hashlib.sha256(raw).hexdigest() == info["sha256"][fname], fname


def test_splits_shapes_dtypes_and_sizes() -> None:
    info = data.models_info()
    for split in ("calib", "test"):
        x, y = data.load_split(split)  # type: ignore[arg-type]
        assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8)
        assert y.dtype == np.int64 and y.shape == (x.shape[0],)
        assert x.shape[0] == info["split"][split]
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert set(np.unique(y).tolist()) == set(range(10))  # stratified: every class present
    # the splits are disjoint samples (no image of the test split appears in calib)
    xc, _ = data.load_split("calib")
    xt, _ = data.load_split("test")
    calib_rows = {row.tobytes() for row in xc.reshape(len(xc), -1)}
    overlap = sum(row.tobytes() in calib_rows for row in xt.reshape(len(xt), -1))
    assert overlap < 5  # digits has a handful of exact duplicate images, nothing more


def test_models_are_valid_onnx_with_documented_io() -> None:
    for name in data.MODEL_NAMES:
        model = onnx.load_from_string(data.model_bytes(name))
        onnx.checker.check_model(model)
        assert model.opset_import[0].version == 17
        assert model.doc_string
        props = {p.key: p.value for p in model.metadata_props}
        assert props["name"] == name and "digits" in props["dataset"]
        (inp,) = model.graph.input
        (out,) = model.graph.output
        assert inp.name == "image" and out.name == "logits"
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert dims == ["N", 1, 8, 8]


def test_heldout_accuracy_with_onnxruntime() -> None:
    mlp = _ort_accuracy("digits_mlp")
    logreg = _ort_accuracy("digits_logreg")
    assert mlp >= 0.95
    assert 0.90 <= logreg <= mlp
    recorded = data.models_info()["accuracy"]
    assert mlp == pytest.approx(recorded["digits_mlp"]["onnxruntime_test"])
    assert logreg == pytest.approx(recorded["digits_logreg"]["onnxruntime_test"])


def test_models_differ() -> None:
    a, b = (data.model_bytes(n) for n in data.MODEL_NAMES)
    assert hashlib.sha256(a).digest() != hashlib.sha256(b).digest()
    ops = [{n.op_type for n in onnx.load_from_string(m).graph.node} for m in (a, b)]
    assert "Relu" in ops[0] and "Relu" not in ops[1]


def test_unknown_names_refused() -> None:
    with pytest.raises(UsageError, match="resnet50") as info:
        data.model_path("resnet50")
    assert "digits_mlp" in info.value.one_line()
    with pytest.raises(UsageError):
        data.model_bytes("../digits_mlp")
    with pytest.raises(UsageError):
        data.load_split("train")  # type: ignore[arg-type]

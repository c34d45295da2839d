"""Train the two example digit classifiers and export them to ONNX (example / tooling layer).

The models are trained on scikit-learn's copy of the UCI "Optical Recognition of
Handwritten Digits" data (1797 grey 8x8 images, pixel values 0..16):

* ``digits_mlp.onnx`` - the *primary* model: an MLP (64 -> 128 -> 64 -> 10, ReLU);
* ``digits_logreg.onnx`` - the *fallback* model: multinomial logistic regression.

The ONNX graphs are written by hand with :mod:`onnx.helper` from the trained
weights (no converter): ``Reshape -> Gemm -> Relu -> ... -> Gemm``. Input ``image``
is float32 ``[N, 1, 8, 8]`` with pixels scaled to 0..1 (divide by 16); output
``logits`` is float32 ``[N, 10]`` (raw logits, no softmax). Opset 17, IR version 8,
so older ONNX Runtime and TensorRT builds on JetPack can read them.

The script is deterministic: fixed seed, fixed stratified 60/20/20 split, and the
``.npz`` archives are written with a fixed zip timestamp, so re-running it on the
same software stack reproduces the same bytes. Outputs go to ``edgeguard/data/``
(or ``--out``) together with ``digits_models.json`` (accuracies, split sizes,
seed, SHA-256 of every file). Re-running is an explicit act: the test suite only
*checks* these files, it never regenerates them.

Usage::

    .venv/bin/python examples/models/train_digits.py [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pathlib
import sys
import warnings
import zipfile
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import sklearn
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

SEED = 20240517
OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17
PIXEL_MAX = 16.0
DEFAULT_OUT = pathlib.Path(__file__).resolve().parents[2] / "edgeguard" / "data"
_ZIP_DATE = (2024, 1, 1, 0, 0, 0)


def split_digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Load digits and split them 60/20/20 (stratified, fixed seed).

    Returns:
        ``{"train"|"calib"|"test": (images float32 [N,1,8,8] in 0..1, labels int64 [N])}``.
    """
    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(PIXEL_MAX)).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, test_size=0.4, stratify=y, random_state=SEED
    )
    x_calib, x_test, y_calib, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=SEED
    )
    return {
        "train": (x_train, y_train),
        "calib": (x_calib, y_calib),
        "test": (x_test, y_test),
    }


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


def _graph(
    name: str, layers: list[tuple[np.ndarray, np.ndarray, bool]], *, doc: str, meta: dict[str, str]
) -> onnx.ModelProto:
    """Build ``Reshape -> (Gemm [-> Relu])* -> logits`` from ``(W [in,out], b, relu)`` layers."""
    inits = [numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "flatten_shape")]
    nodes = [helper.make_node("Reshape", ["image", "flatten_shape"], ["flat"], name="flatten")]
    current = "flat"
    for i, (w, b, relu) in enumerate(layers):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w, dtype=np.float32), f"W{i}"))
        inits.append(numpy_helper.from_array(np.ascontiguousarray(b, dtype=np.float32), f"b{i}"))
        last = i == len(layers) - 1
        out = "logits" if last and not relu else f"z{i}"
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"b{i}"], [out], name=f"fc{i}"))
        current = out
        if relu:
            act = f"h{i}"
            nodes.append(helper.make_node("Relu", [out], [act], name=f"relu{i}"))
            current = act
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgeguard-train-digits",
        producer_version="1",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    model.model_version = 1
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` archive with a fixed timestamp (np.savez stamps the current time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def _ort_predict(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"image": x})
    return np.asarray(logits).argmax(axis=1)


def train(out: pathlib.Path) -> dict[str, Any]:
    """Train both models, export and check them, write every artifact to ``out``."""
    splits = split_digits()
    x_train, y_train = splits["train"]
    x_test, y_test = splits["test"]

    mlp = MLPClassifier(
        hidden_layer_sizes=(128, 64),
        activation="relu",
        alpha=1e-3,
        max_iter=600,
        random_state=SEED,
    )
    logreg = LogisticRegression(C=0.05, max_iter=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        mlp.fit(_flat(x_train), y_train)
        logreg.fit(_flat(x_train), y_train)
    assert list(mlp.classes_) == list(range(10)) and list(logreg.classes_) == list(range(10))

    sk_pred = {"mlp": mlp.predict(_flat(x_test)), "logreg": logreg.predict(_flat(x_test))}
    sk_acc = {k: float(np.mean(v == y_test)) for k, v in sk_pred.items()}

    common = {"dataset": "sklearn.datasets.load_digits (UCI optdigits 8x8)", "seed": str(SEED)}
    mlp_layers = [
        (w, b, i < len(mlp.coefs_) - 1)
        for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_, strict=True))
    ]
    models = {
        "mlp": _graph(
            "digits_mlp",
            mlp_layers,
            doc="Primary digits classifier: MLP 64-128-64-10 (ReLU). Input image [N,1,8,8] "
            "float32 in 0..1 (pixel/16); output raw logits [N,10].",
            meta={
                **common,
                "name": "digits_mlp",
                "role": "primary",
                "test_accuracy": f"{sk_acc['mlp']:.4f}",
            },
        ),
        "logreg": _graph(
            "digits_logreg",
            [(logreg.coef_.T, logreg.intercept_, False)],
            doc="Fallback digits classifier: multinomial logistic regression. Input image "
            "[N,1,8,8] float32 in 0..1 (pixel/16); output raw logits [N,10].",
            meta={
                **common,
                "name": "digits_logreg",
                "role": "fallback",
                "test_accuracy": f"{sk_acc['logreg']:.4f}",
            },
        ),
    }

    files: dict[str, bytes] = {}
    ort_acc: dict[str, float] = {}
    for key, model in models.items():
        data = model.SerializeToString(deterministic=True)
        pred = _ort_predict(data, x_test)
        if not np.array_equal(pred, sk_pred[key]):
            n = int(np.sum(pred != sk_pred[key]))
            raise SystemExit(f"{key}: ONNX Runtime disagrees with scikit-learn on {n} samples")
        ort_acc[key] = float(np.mean(pred == y_test))
        files[f"digits_{key}.onnx"] = data
    for split in ("calib", "test"):
        x, y = splits[split]
        files[f"digits_{split}.npz"] = _npz_bytes({"image": x, "label": y})

    out.mkdir(parents=True, exist_ok=True)
    for fname, data in files.items():
        (out / fname).write_bytes(data)
    info: dict[str, Any] = {
        "dataset": common["dataset"],
        "seed": SEED,
        "split": {k: len(v[1]) for k, v in splits.items()},
        "input": {"name": "image", "dtype": "float32", "shape": ["N", 1, 8, 8], "scale": "1/16"},
        "output": {"name": "logits", "dtype": "float32", "shape": ["N", 10]},
        "accuracy": {
            f"digits_{k}": {"sklearn_test": sk_acc[k], "onnxruntime_test": ort_acc[k]}
            for k in models
        },
        "versions": {
            "scikit-learn": sklearn.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
        },
        "opset": OPSET,
        "ir_version": IR_VERSION,
        "sha256": {fname: hashlib.sha256(data).hexdigest() for fname, data in files.items()},
    }
    (out / "digits_models.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    info = train(args.out)
    print(f"split sizes: {info['split']}")
    for name, acc in info["accuracy"].items():
        print(
            f"{name}: held-out accuracy sklearn={acc['sklearn_test']:.4f} "
            f"onnxruntime={acc['onnxruntime_test']:.4f}"
        )
    for fname, digest in info["sha256"].items():
        size = (args.out / fname).stat().st_size
        print(f"  {fname:20s} {size:7d} B  sha256={digest[:16]}...")
    return 0


if __name__ == "__main__":
    sys.exit(main())

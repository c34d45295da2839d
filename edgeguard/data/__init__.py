"""Example models and data shipped with edgeguard (data layer, no inference libraries).

The files are produced by ``examples/models/train_digits.py`` from scikit-learn's
digits data (8x8 grey images, 1797 samples) and committed, so tests, demos and
benchmarks need neither scikit-learn nor a network:

* ``digits_mlp.onnx`` - primary classifier (MLP), ``digits_logreg.onnx`` - fallback
  classifier (logistic regression). Input ``image`` float32 ``[N, 1, 8, 8]`` with
  pixels in 0..1; output ``logits`` float32 ``[N, 10]``.
* ``digits_calib.npz`` / ``digits_test.npz`` - calibration and held-out test splits
  (keys ``image`` float32 ``[N, 1, 8, 8]``, ``label`` int64 ``[N]``).
* ``digits_models.json`` - split sizes, seed, accuracies and the SHA-256 of each file.

Files are located with :mod:`importlib.resources`, so the helpers work from an
installed wheel as well as from a source checkout.

Real third-party models (pinned ONNX files from PyPI wheels, cached on first use) and
real frames preprocessed for each of them are in :mod:`edgeguard.data.zoo`.
"""

from __future__ import annotations

import io
import json
import pathlib
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edgeguard.errors import MalformedError, UsageError

if TYPE_CHECKING:
    from importlib.abc import Traversable

__all__ = ["MODEL_NAMES", "load_split", "model_bytes", "model_path", "models_info"]

MODEL_NAMES: tuple[str, ...] = ("digits_mlp", "digits_logreg")
_SPLITS: tuple[str, ...] = ("calib", "test")


def _resource(filename: str) -> Traversable:
    return resources.files(__name__) / filename


def _model_file(name: str) -> str:
    stem = name.removesuffix(".onnx")
    if stem not in MODEL_NAMES:
        raise UsageError(
            f"unknown example model {name!r}",
            hint=f"known models: {', '.join(MODEL_NAMES)}",
        )
    return f"{stem}.onnx"


def model_path(name: str) -> pathlib.Path:
    """Filesystem path of an example ONNX model.

    Args:
        name: ``"digits_mlp"`` or ``"digits_logreg"`` (a trailing ``.onnx`` is accepted).

    Returns:
        The path of the model file inside the installed package.

    Raises:
        UsageError: ``name`` is not an example model, or the package is not installed
            as plain files (zip import); use :func:`model_bytes` then.
    """
    res = _resource(_model_file(name))
    if not isinstance(res, pathlib.Path):
        raise UsageError(
            "edgeguard.data is not installed as plain files",
            hint="use edgeguard.data.model_bytes() instead",
        )
    return res


def model_bytes(name: str) -> bytes:
    """The serialised ONNX model ``name`` (works from any installation layout).

    Args:
        name: ``"digits_mlp"`` or ``"digits_logreg"``.

    Raises:
        UsageError: ``name`` is not an example model.
    """
    raw: bytes = _resource(_model_file(name)).read_bytes()
    return raw


def split_path(name: Literal["calib", "test"]) -> pathlib.Path:
    """Filesystem path of a data split's ``.npz`` (keys ``image`` and ``label``)."""
    if name not in _SPLITS:
        raise UsageError(f"unknown data split {name!r}", hint="use 'calib' or 'test'")
    return pathlib.Path(str(_resource(f"digits_{name}.npz")))


def load_split(name: Literal["calib", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """Load a data split.

    Args:
        name: ``"calib"`` (calibration, 359 samples) or ``"test"`` (held out, 360 samples).

    Returns:
        ``(images, labels)``: float32 ``[N, 1, 8, 8]`` in 0..1 and int64 ``[N]``.

    Raises:
        UsageError: Unknown split name.
        MalformedError: The archive does not hold the expected arrays.
    """
    if name not in _SPLITS:
        raise UsageError(f"unknown data split {name!r}", hint="use 'calib' or 'test'")
    raw = _resource(f"digits_{name}.npz").read_bytes()
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        if set(npz.files) != {"image", "label"}:
            raise MalformedError(f"digits_{name}.npz holds {sorted(npz.files)}")
        images = np.asarray(npz["image"])
        labels = np.asarray(npz["label"])
    if (
        images.dtype != np.float32
        or labels.dtype != np.int64
        or images.ndim != 4
        or images.shape[1:] != (1, 8, 8)
        or labels.shape != (images.shape[0],)
    ):
        raise MalformedError(
            f"digits_{name}.npz has image {images.dtype}{images.shape}, "
            f"label {labels.dtype}{labels.shape}"
        )
    return images, labels


def models_info() -> dict[str, Any]:
    """The parsed ``digits_models.json`` (accuracies, split sizes, seed, SHA-256 digests)."""
    info = json.loads(_resource("digits_models.json").read_text(encoding="utf-8"))
    if not isinstance(info, dict):
        raise MalformedError("digits_models.json is not a JSON object")
    return info

"""Precision-diverse variants of one ONNX model: fp32, fp16 and static int8.

Layer: packaging. Redundant members that differ in numeric precision fail
differently (different rounding, different kernels, on Jetson different
compute units), so an ensemble of variants of one model catches faults a
single model cannot. The fp16 variant keeps float32 inputs and outputs
(ONNX Runtime's float16 converter with ``keep_io_types``); the int8 variant
is statically quantized (QDQ, per-channel weights) on the calibration data.

Each variant is checked on the calibration data against the fp32 model: the
build reports the fraction of frames where the variant's argmax agrees, so a
variant that broke the model is visible before it ships.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeguard._optional import require
from edgeguard.errors import BackendError, UsageError

__all__ = ["VARIANTS", "Variant", "make_variants"]

VARIANTS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Variant:
    """One derived model and how well it agrees with the fp32 original."""

    kind: str
    model: bytes
    agreement: float | None


def _fp16(model: bytes) -> bytes:
    onnx = require("onnx", extra="build", purpose="Deriving an fp16 variant")
    float16 = require(
        "onnxruntime.transformers.float16", extra="ort", purpose="Deriving an fp16 variant"
    )
    proto = onnx.load_model_from_string(model)
    converted = float16.convert_float_to_float16(proto, keep_io_types=True)
    return bytes(converted.SerializeToString())


class _Reader:
    """ONNX Runtime CalibrationDataReader over in-memory arrays, one frame at a time."""

    def __init__(self, data: Mapping[str, np.ndarray]) -> None:
        n = min(len(v) for v in data.values())
        self._it: Iterator[dict[str, np.ndarray]] = (
            {k: np.ascontiguousarray(v[i : i + 1]) for k, v in data.items()} for i in range(n)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _int8(model: bytes, calibration: Mapping[str, np.ndarray]) -> bytes:
    q = require("onnxruntime.quantization", extra="ort", purpose="Deriving an int8 variant")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer warns on the root logger about pre-processing
    try:
        return _quantize(q, model, calibration)
    finally:
        root.setLevel(level)


def _quantize(q: Any, model: bytes, calibration: Mapping[str, np.ndarray]) -> bytes:
    with tempfile.TemporaryDirectory(prefix="edgeguard-int8-") as td:
        src, dst = Path(td) / "fp32.onnx", Path(td) / "int8.onnx"
        src.write_bytes(model)
        q.quantize_static(
            str(src),
            str(dst),
            _Reader(calibration),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            activation_type=q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=q.CalibrationMethod.MinMax,
        )
        return dst.read_bytes()


def _predict(model: bytes, data: Mapping[str, np.ndarray]) -> np.ndarray:
    from edgeguard.backends.onnxruntime import OnnxRuntimeBackend

    with OnnxRuntimeBackend.from_bytes(model) as backend:
        first = backend.outputs()[0].name
        out: np.ndarray = backend.run(dict(data))[first]
    return out


def _agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    if reference.ndim >= 2 and reference.shape[-1] > 1:
        return float(np.mean(np.argmax(reference, -1) == np.argmax(candidate, -1)))
    scale = float(np.max(np.abs(reference))) or 1.0
    return float(np.mean(np.abs(reference - candidate) <= 0.05 * scale))


def make_variants(
    model: bytes,
    kinds: Sequence[str],
    *,
    calibration: Mapping[str, np.ndarray] | None,
) -> list[Variant]:
    """Derive the requested precision variants of ``model``.

    Args:
        model: The fp32 ONNX model.
        kinds: Any of ``fp32``, ``fp16``, ``int8`` (each at most once).
        calibration: Input arrays keyed by input name; required for ``int8`` and
            used to measure each variant's agreement with fp32.

    Raises:
        UsageError: Unknown or repeated kinds, or int8 without calibration data.
        BackendError: A variant cannot be produced or does not load.
    """
    bad = [k for k in kinds if k not in VARIANTS]
    if bad or len(set(kinds)) != len(kinds) or not kinds:
        raise UsageError(f"--variants takes distinct values from {', '.join(VARIANTS)}")
    if "int8" in kinds and calibration is None:
        raise UsageError("the int8 variant needs --calibration data for static quantization")
    reference = _predict(model, calibration) if calibration is not None else None
    out = []
    for kind in kinds:
        try:
            derived = (
                model
                if kind == "fp32"
                else _fp16(model)
                if kind == "fp16"
                else _int8(model, calibration or {})
            )
        except UsageError:
            raise
        except Exception as exc:
            raise BackendError(f"cannot derive the {kind} variant: {exc}") from exc
        agreement = None
        if reference is not None and calibration is not None:
            agreement = _agreement(reference, _predict(derived, calibration))
        out.append(Variant(kind, derived, agreement))
    return out

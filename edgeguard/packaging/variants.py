"""Precision-diverse variants of one ONNX model: fp32, fp16 and static int8, right or refused.

Layer: packaging. Redundant members that differ in numeric precision fail
differently (different rounding, different kernels, on Jetson different
compute units), so an ensemble of variants of one model catches faults a
single model cannot, but only when every variant still computes the model.
So every derived variant is measured against the fp32 original on the
calibration frames with the metric of the model's task
(:mod:`edgeguard.packaging.agreement`), and one below its threshold is refused
with a :class:`~edgeguard.errors.UsageError`; without calibration data a
reduced-precision variant cannot be measured and is refused too.

How the variants are made (docs/variants.md has the measurements):

* Both start from the fp32 graph with ONNX Runtime's basic graph optimisations
  applied offline (constant folding, BatchNormalization folded into Conv): a
  folded graph has no fp16-unsafe constants such as a BatchNormalization
  variance above the float16 range, and int8 weights are real initializers.
* **fp16**: ONNX Runtime's float16 converter with float32 inputs and outputs;
  nodes that read a constant beyond the float16 range stay in float32.
* **int8**: static QDQ quantisation, signed 8-bit activations and per-channel
  weights, MinMax ranges on the calibration frames, ``reduce_range`` (7-bit
  weights, no overflow in the u8s8 kernels of CPUs without VNNI); the nodes that
  produce the graph's outputs stay in float.
* When the fp16 variant misses its threshold, a search keeps the nodes where the
  float16 error starts (the largest error a node adds to its inputs' error, on two
  calibration frames) in float32: 1, then 4, 16 and 64 nodes in all, measuring after
  each round; the first variant that passes ships. int8 is one recipe, no search.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeguard._optional import require
from edgeguard.errors import BackendError, UsageError
from edgeguard.packaging.agreement import (
    DEFAULT_THRESHOLDS,
    METRIC_OF_TASK,
    TASK_CHOICES,
    Agreement,
    Decoder,
    detect_task,
    measure,
)
from edgeguard.policy.variants import VariantCheck

__all__ = ["VARIANTS", "Variant", "VariantChecks", "make_variants"]

VARIANTS = ("fp32", "fp16", "int8")
#: Nodes kept in float32 per search round, added up (0 = the plain conversion).
_SEARCH = (0, 1, 4, 16, 64)
_FP16_MAX = 65504.0
#: Frames used to locate where the error starts (all intermediate tensors are kept).
_DIAGNOSE_FRAMES = 2
#: Variants are measured on at most this many calibration frames (evenly spaced): enough
#: for a threshold of 0.98 to tolerate one disagreement, few enough that deriving
#: fp32,fp16,int8 of a 640x640 detector stays within a minute on two CPU cores.
MAX_MEASURE_FRAMES = 64
#: int8 ranges (MinMax) are taken on at most this many of those frames.
MAX_INT8_CALIBRATION_FRAMES = 32

#: Progress callback: ``(what is being done, steps done, steps in all)``.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class VariantChecks:
    """How derived variants are checked against their fp32 original.

    Attributes:
        task: ``classifier``, ``detector``, ``map``, ``regression`` or ``auto``
            (see :func:`edgeguard.packaging.agreement.detect_task`).
        min_agreement: The threshold of the task's metric; None for its default
            (:data:`edgeguard.packaging.agreement.DEFAULT_THRESHOLDS`).
        decoder: For ``detector``: the boxes of each frame from the first output
            (default: the YOLOv8 decoder).
        progress: Called as the variants are derived and measured.
    """

    task: str = "auto"
    min_agreement: float | None = None
    decoder: Decoder | None = None
    progress: Progress | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.task not in TASK_CHOICES:
            raise UsageError(f"--task must be one of {', '.join(TASK_CHOICES)}, not {self.task!r}")
        m = self.min_agreement
        if m is not None and (isinstance(m, bool) or not 0.0 <= float(m) <= 1.0):
            raise UsageError(f"--min-agreement must be a number from 0 to 1, got {m!r}")


@dataclass(frozen=True)
class Variant:
    """One derived model and how well it agrees with the fp32 original.

    Attributes:
        kind: ``fp32``, ``fp16`` or ``int8``.
        model: The ONNX model.
        agreement: Its measured agreement with fp32 (None for fp32 itself).
        threshold: The threshold the agreement met (None for fp32).
        kept_fp32: Names of the nodes kept in float: for fp16 those reading a constant
            beyond float16 and those the search kept; for int8 the output producers.
        seconds: How long deriving and measuring it took.
    """

    kind: str
    model: bytes
    agreement: Agreement | None = None
    threshold: float | None = None
    kept_fp32: tuple[str, ...] = ()
    seconds: float = 0.0

    def check(self, reference: str) -> VariantCheck:
        """The signed form of this variant's measurement against member ``reference``."""
        a = self.agreement
        if a is None or self.threshold is None or self.kind == "fp32":
            raise UsageError(f"the {self.kind} variant carries no measurement")
        return VariantCheck(
            kind=self.kind,
            reference=reference,
            task=a.task,
            frames=a.frames,
            metric=a.metric.name,
            direction=a.metric.direction,
            value=a.metric.value,
            threshold=self.threshold,
            extra=tuple((m.name, m.value) for m in a.extra),
        )


class _Reader:
    """ONNX Runtime CalibrationDataReader over in-memory arrays, one frame at a time."""

    def __init__(self, data: Mapping[str, np.ndarray]) -> None:
        n = min(len(v) for v in data.values())
        self._it: Iterator[dict[str, np.ndarray]] = (
            {k: np.ascontiguousarray(v[i : i + 1]) for k, v in data.items()} for i in range(n)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _onnx() -> Any:
    return require("onnx", extra="build", purpose="Deriving precision variants")


def _ort() -> Any:
    return require("onnxruntime", extra="ort", purpose="Deriving precision variants")


def _frames(data: Mapping[str, np.ndarray]) -> int:
    return min(len(v) for v in data.values())


def _subsample(data: Mapping[str, np.ndarray], most: int) -> dict[str, np.ndarray]:
    """At most ``most`` frames of ``data``, evenly spaced over it (all when fewer)."""
    n = _frames(data)
    if n <= most:
        return dict(data)
    keep = np.unique(np.linspace(0, n - 1, most).round().astype(np.intp))
    return {k: np.ascontiguousarray(v[keep]) for k, v in data.items()}


def _predict(model: bytes, data: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Every output of ``model`` on ``data``, in output order (batches of 8 frames, or one
    at a time for a model whose batch axis is fixed)."""
    from edgeguard.backends.onnxruntime import OnnxRuntimeBackend

    with OnnxRuntimeBackend.from_bytes(model) as backend:
        names = [o.name for o in backend.outputs()]
        fixed = any(s.shape and s.shape[0] == 1 for s in backend.inputs())
        step = 1 if fixed else 8
        parts: list[list[np.ndarray]] = [[] for _ in names]
        for i in range(0, _frames(data), step):
            out = backend.run({k: v[i : i + step] for k, v in data.items()})
            for j, name in enumerate(names):
                parts[j].append(np.asarray(out[name]))
    return [np.concatenate(p) for p in parts]


# ------------------------------------------------------------------ graph preparation


def _prepared(model: bytes) -> Any:
    """The fp32 graph with ONNX Runtime's basic optimisations applied, every node named,
    opset imports limited to the domains the graph uses."""
    onnx, ort = _onnx(), _ort()
    with tempfile.TemporaryDirectory(prefix="edgeguard-variant-") as td:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(Path(td) / "basic.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        proto = onnx.load(so.optimized_model_filepath)
    used = {n.domain for n in proto.graph.node} | {""}
    keep = [o for o in proto.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    seen: set[str] = set()
    for i, node in enumerate(proto.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return proto


def _constants(proto: Any) -> dict[str, np.ndarray]:
    numpy_helper = _onnx().numpy_helper
    out = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


def _fp16_unsafe(proto: Any) -> list[str]:
    """Nodes reading a float constant beyond the float16 range (it would be clamped)."""
    consts = _constants(proto)
    unsafe = {
        k
        for k, v in consts.items()
        if v.dtype.kind == "f" and v.size and float(np.max(np.abs(v))) > _FP16_MAX
    }
    return [n.name for n in proto.graph.node if n.op_type != "Constant" and unsafe & set(n.input)]


def _output_producers(proto: Any) -> list[str]:
    """Nodes that produce a graph output: int8 keeps them in float, since one output
    tensor may concatenate values of very different ranges (YOLOv8: box coordinates up
    to the input size next to class scores in [0, 1]) that one int8 scale cannot hold."""
    outputs = {o.name for o in proto.graph.output}
    return [n.name for n in proto.graph.node if outputs & set(n.output)]


def _to_fp16(proto: Any, keep_fp32: Sequence[str]) -> bytes:
    float16 = require(
        "onnxruntime.transformers.float16", extra="ort", purpose="Deriving an fp16 variant"
    )
    copy = _onnx().ModelProto()
    copy.CopyFrom(proto)
    converted = float16.convert_float_to_float16(
        copy,
        keep_io_types=True,
        max_finite_val=_FP16_MAX,
        node_block_list=list(keep_fp32) or None,
    )
    return bytes(converted.SerializeToString())


def _opset13(proto: Any) -> Any:
    """Per-channel Q/DQ needs opset 13; convert older graphs (unchanged if that fails)."""
    onnx = _onnx()
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    if version >= 13:
        return proto
    try:
        return onnx.version_converter.convert_version(proto, 13)
    except Exception:  # the quantizer then works per tensor on what it can
        return proto


def _to_int8(proto: Any, calibration: Mapping[str, np.ndarray], keep_fp32: Sequence[str]) -> bytes:
    q = require("onnxruntime.quantization", extra="ort", purpose="Deriving an int8 variant")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer warns on the root logger about pre-processing
    try:
        with tempfile.TemporaryDirectory(prefix="edgeguard-int8-") as td:
            src, dst = Path(td) / "fp32.onnx", Path(td) / "int8.onnx"
            src.write_bytes(proto.SerializeToString())
            q.quantize_static(
                str(src),
                str(dst),
                _Reader(_subsample(calibration, MAX_INT8_CALIBRATION_FRAMES)),
                quant_format=q.QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,
                activation_type=q.QuantType.QInt8,
                weight_type=q.QuantType.QInt8,
                calibrate_method=q.CalibrationMethod.MinMax,
                nodes_to_exclude=list(keep_fp32),
            )
            return dst.read_bytes()
    finally:
        root.setLevel(level)


# ------------------------------------------------------------------ where the error starts


def _all_tensors(
    model: bytes, names: Sequence[str], feed: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Run ``model`` exposing every tensor in ``names`` that its graph produces."""
    onnx, ort = _onnx(), _ort()
    m = onnx.load_model_from_string(model)
    produced = {o for n in m.graph.node for o in n.output}
    have = {o.name for o in m.graph.output}
    wanted = [n for n in names if n in produced and n not in have]
    for n in wanted:
        m.graph.output.append(onnx.ValueInfoProto(name=n))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = sess.run(None, dict(feed))
    return {o.name: v for o, v in zip(sess.get_outputs(), outs, strict=True)}


def _error_origins(
    proto: Any, candidate: bytes, feed: Mapping[str, np.ndarray], skip: set[str]
) -> list[str]:
    """Nodes ranked by the relative error they add (their output's minus their inputs')."""
    names = [o for n in proto.graph.node for o in n.output if o]
    ref = _all_tensors(proto.SerializeToString(), names, feed)
    got = _all_tensors(candidate, names, feed)
    err: dict[str, float] = {}
    for name, a in ref.items():
        b = got.get(name)
        if b is None or not isinstance(a, np.ndarray) or a.dtype.kind != "f" or not a.size:
            continue
        if b.shape != a.shape:
            continue
        b32 = b.astype(np.float64)
        if not np.isfinite(b32).all():
            err[name] = float("inf")
            continue
        scale = float(np.max(np.abs(a))) or 1.0
        err[name] = float(np.max(np.abs(b32 - a))) / scale
    ranked: list[tuple[float, str]] = []
    for node in proto.graph.node:
        if node.name in skip or node.op_type == "Constant":
            continue
        out_err = max((err.get(o, 0.0) for o in node.output), default=0.0)
        in_err = max((err.get(i, 0.0) for i in node.input), default=0.0)
        added = out_err - in_err if np.isfinite(in_err) else 0.0
        if out_err > 1e-3 and added > 0:
            ranked.append((added, node.name))
    ranked.sort(key=lambda t: -t[0])
    return [name for _, name in ranked]


# ------------------------------------------------------------------ variants


def _refusal(name: str, kind: str, a: Agreement, threshold: float) -> UsageError:
    default = DEFAULT_THRESHOLDS[a.metric.name]
    return UsageError(
        f"variant {name}-{kind} agrees with {name}-fp32 at {a.metric.name} "
        f"{a.metric.value:.4f} on {a.frames} calibration frame(s), below the threshold "
        f"{threshold:g}",
        hint=f"drop {kind} from --variants, or lower --min-agreement "
        f"(default {default:g} for {a.metric.name}, task {a.task})",
    )


def make_variants(
    model: bytes,
    kinds: Sequence[str],
    *,
    calibration: Mapping[str, np.ndarray] | None,
    checks: VariantChecks | None = None,
    name: str = "model",
) -> list[Variant]:
    """Derive the requested precision variants of ``model``, each measured or refused.

    Args:
        model: The fp32 ONNX model.
        kinds: Any of ``fp32``, ``fp16``, ``int8`` (each at most once).
        calibration: Input arrays keyed by input name: the int8 calibration and the
            frames every derived variant is measured on.
        checks: Task, threshold, decoder and progress callback.
        name: The model's name: its variants are the members ``NAME-KIND``.

    Raises:
        UsageError: Unknown or repeated kinds, a reduced-precision variant without
            calibration data, or one whose agreement is below the threshold.
        BackendError: A variant cannot be produced or does not load.
    """
    checks = checks or VariantChecks()
    bad = [k for k in kinds if k not in VARIANTS]
    if bad or len(set(kinds)) != len(kinds) or not kinds:
        raise UsageError(f"--variants takes distinct values from {', '.join(VARIANTS)}")
    derived = [k for k in kinds if k != "fp32"]
    if derived and (calibration is None or not calibration or _frames(calibration) == 0):
        raise UsageError(
            f"the {' and '.join(derived)} variant(s) of {name} cannot be measured without "
            "calibration data, and an unmeasured variant may not compute the model",
            hint="give --calibration with an .npz/.npy file or a folder of images (a sanity "
            f"profile holds no frames), or drop {', '.join(derived)} from --variants",
        )
    if not derived:
        return [Variant("fp32", model)]
    assert calibration is not None
    calibration = _subsample(calibration, MAX_MEASURE_FRAMES)
    report = checks.progress or (lambda _step, _done, _total: None)
    step = f"variants of {name}"
    # steps: the fp32 reference run, then per derived variant and search round two
    # (derive, measure); a search round adds two more
    done, total = 0, 1 + 2 * len(derived)
    report(step, done, total)
    try:
        reference = _predict(model, calibration)
    except (UsageError, BackendError):
        raise
    except Exception as exc:
        raise BackendError(f"cannot run {name} on the calibration data: {exc}") from exc
    done += 1
    report(step, done, total)
    task = detect_task(reference) if checks.task == "auto" else checks.task
    metric = METRIC_OF_TASK[task]
    threshold = (
        DEFAULT_THRESHOLDS[metric] if checks.min_agreement is None else float(checks.min_agreement)
    )
    try:
        proto = _prepared(model)
    except Exception as exc:
        raise BackendError(f"cannot prepare {name} for its variants: {exc}") from exc
    feed = {k: v[:_DIAGNOSE_FRAMES] for k, v in calibration.items()}
    out: list[Variant] = []
    for kind in kinds:
        if kind == "fp32":
            out.append(Variant("fp32", model))
            continue
        start = time.perf_counter()
        base = proto if kind == "fp16" else _opset13(proto)
        keep: list[str] = _fp16_unsafe(base) if kind == "fp16" else _output_producers(base)
        best: tuple[bytes, Agreement, tuple[str, ...]] | None = None
        last = b""
        for rnd, upto in enumerate(_SEARCH if kind == "fp16" else _SEARCH[:1]):
            try:
                if rnd:
                    total += 2
                    origins = _error_origins(base, last, feed, set(keep))
                    added = [n for n in origins if n not in keep][: upto - _SEARCH[rnd - 1]]
                    if not added:
                        total -= 2
                        break
                    keep.extend(added)
                last = _to_fp16(base, keep) if kind == "fp16" else _to_int8(base, calibration, keep)
                done += 1
                report(step, done, total)
                candidate_out = _predict(last, calibration)
            except (UsageError, BackendError):
                raise
            except Exception as exc:
                raise BackendError(f"cannot derive the {kind} variant of {name}: {exc}") from exc
            agreement = measure(task, reference, candidate_out, decoder=checks.decoder)
            done += 1
            report(step, done, total)
            if best is None or agreement.metric.value > best[1].metric.value:
                best = (last, agreement, tuple(keep))
            if agreement.metric.meets(threshold):
                break
        assert best is not None
        chosen, agreement, kept = best
        if not agreement.metric.meets(threshold):
            raise _refusal(name, kind, agreement, threshold)
        seconds = time.perf_counter() - start
        out.append(Variant(kind, chosen, agreement, threshold, kept, seconds))
    report(step, total, total)
    return out

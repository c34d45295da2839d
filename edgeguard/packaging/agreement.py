"""How well a derived variant agrees with its fp32 original, measured per task.

Layer: packaging (pure NumPy). ``edgeguard build --variants`` runs the fp32 model and
each derived variant (fp16, int8) on the calibration frames and compares their outputs
with the metric of the model's task; a variant below the threshold is refused
(:mod:`edgeguard.packaging.variants`) and the measurement is signed into the manifest
(:mod:`edgeguard.policy.variants`).

Tasks and their metrics (the first is the one a threshold applies to; every metric has
a name, a value and a direction: ``higher`` or ``lower`` is better):

* ``classifier``: ``top1``, the fraction of rows whose argmax over the last axis is the
  same; also ``max_rel_error``.
* ``detector``: ``box_f1``, the F1 score of the variant's boxes against the original's
  (same class, IoU >= 0.5, greedy by score, pooled over all frames; 1.0 when neither
  finds a box); also ``max_rel_error``. The boxes come from a decoder: the built-in
  :func:`decode_yolov8` understands YOLOv8-style outputs ``[N, 4 + classes, anchors]``
  (rows ``cx, cy, w, h`` then one score per class, no objectness row; score >= 0.25,
  class-wise NMS at IoU 0.45); other layouts need a :data:`Decoder` of your own.
* ``map``: ``pixel_iou``, the intersection over union of the pixels above 0.5 in both
  maps, pooled over all frames (1.0 when neither has any); also ``max_abs_error``.
* ``regression`` (also every multi-output model): ``within_1pct``, the fraction of output
  values whose difference is at most 1 % of that output's range on the original
  (``max - min``; the smallest fraction over the outputs); also ``max_rel_error``, the
  largest difference relative to the range.

``classifier``, ``detector`` and ``map`` look at the model's first output,
``regression`` at every output. ``auto`` picks the task from the original's outputs on
the calibration frames (:func:`detect_task`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgeguard.errors import UsageError

__all__ = [
    "DEFAULT_THRESHOLDS",
    "METRIC_OF_TASK",
    "TASKS",
    "TASK_CHOICES",
    "Agreement",
    "Decoder",
    "Metric",
    "box_f1",
    "decode_yolov8",
    "detect_task",
    "measure",
    "pixel_iou",
    "top1",
    "within_1pct",
]

#: The tasks an agreement can be measured for.
TASKS = ("classifier", "detector", "map", "regression")
#: What ``--task`` accepts.
TASK_CHOICES = (*TASKS, "auto")
#: The metric a threshold applies to, per task.
METRIC_OF_TASK = {
    "classifier": "top1",
    "detector": "box_f1",
    "map": "pixel_iou",
    "regression": "within_1pct",
}
#: Default thresholds (``--min-agreement``) per metric; docs/variants.md says why.
DEFAULT_THRESHOLDS = {"top1": 0.98, "box_f1": 0.9, "pixel_iou": 0.9, "within_1pct": 0.99}

#: A decoder turns one output batch ``[N, ...]`` into the boxes of each of the N frames:
#: one ``(M, 6)`` float array ``x1, y1, x2, y2, score, class`` per frame.
Decoder = Callable[[np.ndarray], Sequence[np.ndarray]]


@dataclass(frozen=True)
class Metric:
    """One measured number: its name, value and which direction is better."""

    name: str
    value: float
    direction: str = "higher"

    def meets(self, threshold: float) -> bool:
        """Whether the value is on the good side of ``threshold`` (or on it)."""
        if self.direction == "higher":
            return self.value >= threshold
        return self.value <= threshold


@dataclass(frozen=True)
class Agreement:
    """A variant's agreement with its original on the calibration frames.

    Attributes:
        task: The task the metric belongs to.
        metric: The metric a threshold applies to.
        extra: Further metrics, shown and signed but not gated (an error bound).
        frames: How many calibration frames it was measured on.
    """

    task: str
    metric: Metric
    extra: tuple[Metric, ...]
    frames: int


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def detect_task(outputs: Sequence[np.ndarray]) -> str:
    """The task of a model from its outputs on the calibration frames (``--task auto``).

    The rule, on the model's only output (several outputs: ``regression``):

    * rank 2 ``[N, C]`` with ``C > 1``: ``classifier``;
    * rank 3 ``[N, C, A]`` with ``5 <= C < A`` (``4 + classes`` rows, more anchors than
      rows): ``detector``;
    * rank 4 ``[N, C, H, W]`` with every value in ``[0, 1]``: ``map``;
    * anything else: ``regression``.
    """
    if len(outputs) != 1:
        return "regression"
    out = np.asarray(outputs[0])
    if out.ndim == 2 and out.shape[1] > 1:
        return "classifier"
    if out.ndim == 3 and 5 <= out.shape[1] < out.shape[2]:
        return "detector"
    if out.ndim == 4 and out.size and np.issubdtype(out.dtype, np.floating):
        finite = bool(np.isfinite(out).all())
        if finite and float(out.min()) >= 0.0 and float(out.max()) <= 1.0:
            return "map"
    return "regression"


def _rel_error(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per-element |difference| / the reference's range (a non-finite candidate: inf)."""
    ref, cand = _f64(reference), _f64(candidate)
    finite = np.isfinite(ref)
    span = float(ref[finite].max() - ref[finite].min()) if finite.any() else 0.0
    if span == 0.0 and finite.any():
        span = float(np.abs(ref[finite]).max())
    span = span or 1.0
    with np.errstate(invalid="ignore", over="ignore"):
        err: np.ndarray = np.abs(cand - ref) / span
    err[~np.isfinite(err)] = np.inf
    err[~finite] = 0.0  # the original's own NaN/inf says nothing about the variant
    return err


def top1(reference: np.ndarray, candidate: np.ndarray) -> Metric:
    """Fraction of rows whose argmax over the last axis agrees (a non-finite row: no)."""
    ref, cand = _f64(reference), _f64(candidate)
    if ref.shape != cand.shape or ref.ndim < 1 or ref.size == 0:
        return Metric("top1", 0.0)
    bad = ~np.isfinite(cand).all(axis=-1)
    same = (np.argmax(ref, axis=-1) == np.argmax(cand, axis=-1)) & ~bad
    return Metric("top1", float(np.mean(same)))


def pixel_iou(reference: np.ndarray, candidate: np.ndarray, threshold: float = 0.5) -> Metric:
    """IoU of the pixels above ``threshold`` in both maps, pooled (1.0 when both are empty).

    A NaN in the candidate counts as a pixel above the threshold (a false positive).
    """
    ref, cand = _f64(reference), _f64(candidate)
    if ref.shape != cand.shape:
        return Metric("pixel_iou", 0.0)
    a = ref > threshold
    b = np.where(np.isnan(cand), np.inf, cand) > threshold
    union = int(np.count_nonzero(a | b))
    inter = int(np.count_nonzero(a & b))
    return Metric("pixel_iou", 1.0 if union == 0 else inter / union)


def within_1pct(
    references: Sequence[np.ndarray], candidates: Sequence[np.ndarray]
) -> tuple[Metric, Metric]:
    """``within_1pct`` (the smallest over the outputs) and ``max_rel_error`` (the largest)."""
    fractions, worst = [], 0.0
    for ref, cand in zip(references, candidates, strict=True):
        if np.shape(ref) != np.shape(cand):
            return Metric("within_1pct", 0.0), Metric("max_rel_error", float("inf"), "lower")
        if np.size(ref) == 0:
            continue
        err = _rel_error(ref, cand)
        fractions.append(float(np.mean(err <= 0.01)))
        worst = max(worst, float(err.max()))
    return (
        Metric("within_1pct", min(fractions) if fractions else 1.0),
        Metric("max_rel_error", worst, "lower"),
    )


# ----------------------------------------------------------------- detector


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``x1, y1, x2, y2`` boxes, ``(len(a), len(b))``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return np.asarray(iou, dtype=np.float64)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(i)
        if order:
            ious = _iou_matrix(boxes[i : i + 1], boxes[order])[0]
            order = [j for j, v in zip(order, ious, strict=True) if v <= iou_threshold]
    return keep


def decode_yolov8(
    output: np.ndarray, *, score_threshold: float = 0.25, iou_threshold: float = 0.45
) -> list[np.ndarray]:
    """Boxes of each frame of a YOLOv8-style output ``[N, 4 + classes, anchors]``.

    Rows 0-3 are ``cx, cy, w, h``, the others one score per class (no objectness row).
    An anchor is kept when its best class score is at least ``score_threshold``; then
    non-maximum suppression per class at ``iou_threshold``.

    Returns:
        One ``(M, 6)`` array per frame: ``x1, y1, x2, y2, score, class``, best first.

    Raises:
        UsageError: The output is not ``[N, 4 + classes, anchors]``.
    """
    out = _f64(output)
    if out.ndim != 3 or out.shape[1] < 5:
        raise UsageError(
            f"the built-in detector decoder reads [N, 4 + classes, anchors] outputs, "
            f"not {list(out.shape)}",
            hint="give --task regression, or a decoder of your own through the Python API",
        )
    frames = []
    for raw in out:
        rows = np.where(np.isfinite(raw), raw, 0.0)
        scores_all = rows[4:].T  # (anchors, classes)
        cls = np.argmax(scores_all, axis=1)
        score = scores_all[np.arange(len(cls)), cls]
        keep = score >= score_threshold
        cx, cy, w, h = rows[0, keep], rows[1, keep], rows[2, keep], rows[3, keep]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        score, cls = score[keep], cls[keep]
        chosen: list[int] = []
        for c in np.unique(cls):
            idx = np.flatnonzero(cls == c)
            chosen.extend(int(idx[k]) for k in _nms(boxes[idx], score[idx], iou_threshold))
        chosen.sort(key=lambda k: -score[k])
        frames.append(
            np.column_stack([boxes[chosen], score[chosen], cls[chosen].astype(np.float64)])
            if chosen
            else np.zeros((0, 6))
        )
    return frames


def _as_boxes(b: np.ndarray, where: str) -> np.ndarray:
    arr = _f64(b)
    if arr.size == 0:
        return np.zeros((0, 6))
    if arr.ndim != 2 or arr.shape[1] < 6:
        raise UsageError(f"{where}: a decoder must give (M, 6) arrays, got {list(arr.shape)}")
    return arr


def box_f1(
    reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], iou: float = 0.5
) -> Metric:
    """F1 of the candidate's boxes against the reference's, pooled over frames.

    Per frame, candidate boxes in descending score each take the unmatched reference
    box of the same class with the highest IoU, when that IoU is at least ``iou``.
    1.0 when neither side has a box.
    """
    if len(reference) != len(candidate):
        return Metric("box_f1", 0.0)
    tp = n_ref = n_cand = 0
    for ref_raw, cand_raw in zip(reference, candidate, strict=True):
        ref = _as_boxes(ref_raw, "reference boxes")
        cand = _as_boxes(cand_raw, "candidate boxes")
        n_ref += len(ref)
        n_cand += len(cand)
        if not len(ref) or not len(cand):
            continue
        ious = _iou_matrix(cand[:, :4], ref[:, :4])
        ious = np.where(cand[:, None, 5] == ref[None, :, 5], ious, -1.0)
        taken = np.zeros(len(ref), bool)
        for i in np.argsort(-cand[:, 4], kind="stable"):
            row = np.where(taken, -1.0, ious[i])
            j = int(np.argmax(row))
            if row[j] >= iou:
                taken[j] = True
                tp += 1
    total = n_ref + n_cand
    return Metric("box_f1", 1.0 if total == 0 else 2.0 * tp / total)


# ----------------------------------------------------------------- measure


def measure(
    task: str,
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    *,
    decoder: Decoder | None = None,
) -> Agreement:
    """The agreement of ``candidate``'s outputs with ``reference``'s for ``task``.

    Args:
        task: One of :data:`TASKS` (resolve ``auto`` with :func:`detect_task` first).
        reference: The original's outputs on the calibration frames, in output order,
            the frames on axis 0.
        candidate: The variant's outputs on the same frames.
        decoder: For ``detector``: turns the first output into per-frame boxes
            (default :func:`decode_yolov8`).

    Raises:
        UsageError: Unknown task, or a decoder that does not fit the output.
    """
    if task not in TASKS:
        raise UsageError(f"--task must be one of {', '.join(TASK_CHOICES)}, not {task!r}")
    if not reference or len(reference) != len(candidate):
        raise UsageError("the variant's outputs do not match the original's")
    frames = int(np.shape(reference[0])[0]) if np.ndim(reference[0]) else 1
    within, rel = within_1pct(reference, candidate)
    ref0, cand0 = reference[0], candidate[0]
    if task == "classifier":
        return Agreement(task, top1(ref0, cand0), (rel,), frames)
    if task == "map":
        worst = float("inf")
        if np.shape(ref0) == np.shape(cand0):
            diff = np.abs(_f64(cand0) - _f64(ref0))
            worst = float(diff.max()) if diff.size and np.isfinite(diff).all() else worst
        return Agreement(
            task, pixel_iou(ref0, cand0), (Metric("max_abs_error", worst, "lower"),), frames
        )
    if task == "detector":
        decode = decoder or decode_yolov8
        ref_boxes = list(decode(np.asarray(ref0)))
        cand_boxes = list(decode(np.asarray(cand0)))
        return Agreement(task, box_f1(ref_boxes, cand_boxes), (rel,), frames)
    return Agreement(task, within, (rel,), frames)

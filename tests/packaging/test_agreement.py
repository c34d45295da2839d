"""The task-aware agreement metrics on hand-made arrays, and the task detection rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeguard.errors import UsageError
from edgeguard.packaging.agreement import (
    DEFAULT_THRESHOLDS,
    METRIC_OF_TASK,
    Metric,
    box_f1,
    decode_yolov8,
    detect_task,
    measure,
    pixel_iou,
    top1,
    within_1pct,
)


def test_top1_counts_rows_whose_argmax_agrees() -> None:
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32)
    cand = ref.copy()
    cand[1] = [0.2, 0.8]  # flipped
    cand[3] = [np.nan, 0.0]  # a non-finite row never agrees
    m = top1(ref, cand)
    assert (m.name, m.direction) == ("top1", "higher")
    assert m.value == pytest.approx(0.5)
    assert top1(ref, ref[:2]).value == 0.0  # shapes differ


def test_pixel_iou_pools_frames_and_counts_nan_as_text() -> None:
    ref = np.zeros((2, 1, 4, 4), np.float32)
    ref[0, 0, :2, :2] = 0.9  # 4 pixels
    ref[1, 0, 3, 3] = 0.8  # 1 pixel
    cand = ref.copy()
    cand[0, 0, 0, 0] = 0.4  # one lost
    cand[1, 0, 0, 0] = 0.7  # one gained
    assert pixel_iou(ref, cand).value == pytest.approx(4 / 6)
    cand[1, 0, 1, 1] = np.nan
    assert pixel_iou(ref, cand).value == pytest.approx(4 / 7)
    empty = np.zeros_like(ref)
    assert pixel_iou(empty, empty).value == 1.0  # both empty: nothing to disagree on
    agreement = measure("map", [ref], [cand])
    assert agreement.metric.name == "pixel_iou" and agreement.frames == 2
    assert agreement.extra[0].name == "max_abs_error"
    assert math.isinf(agreement.extra[0].value)  # the NaN


def test_within_1pct_is_relative_to_each_outputs_range_and_takes_the_worst() -> None:
    a = np.linspace(0, 100, 200).reshape(2, 100)
    b = np.linspace(-1, 1, 20).reshape(2, 10)
    a2 = a.copy()
    a2[0, :10] += 0.5  # 0.5 % of the range 100: within
    b2 = b.copy()
    b2[0, :5] += 0.1  # 5 % of the range 2: 5 of 20 values out
    within, rel = within_1pct([a, b], [a2, b2])
    assert (within.name, within.direction) == ("within_1pct", "higher")
    assert within.value == pytest.approx(0.75)
    assert (rel.name, rel.direction) == ("max_rel_error", "lower")
    assert rel.value == pytest.approx(0.05)
    assert rel.meets(0.1) and not rel.meets(0.01)


def _yolo(
    boxes: list[tuple[float, float, float, float, int, float]], classes: int = 3
) -> np.ndarray:
    """One frame [1, 4 + classes, anchors] with a box per anchor (cx, cy, w, h, cls, score)
    and 10 empty anchors."""
    anchors = len(boxes) + 10
    out = np.zeros((1, 4 + classes, anchors), np.float32)
    for i, (cx, cy, w, h, c, s) in enumerate(boxes):
        out[0, :4, i] = (cx, cy, w, h)
        out[0, 4 + c, i] = s
    return out


def test_yolov8_decoder_thresholds_scores_and_suppresses_per_class() -> None:
    out = _yolo(
        [
            (50, 50, 20, 20, 0, 0.9),
            (51, 50, 20, 20, 0, 0.8),  # overlaps the first, same class: suppressed
            (51, 50, 20, 20, 1, 0.7),  # overlaps, other class: kept
            (150, 150, 10, 10, 2, 0.2),  # below 0.25: dropped
        ]
    )
    (boxes,) = decode_yolov8(out)
    assert boxes.shape == (2, 6)
    np.testing.assert_allclose(boxes[0], [40, 40, 60, 60, 0.9, 0], rtol=1e-6)
    assert boxes[1, 5] == 1
    with pytest.raises(UsageError, match="4 \\+ classes"):
        decode_yolov8(np.zeros((1, 10)))


def test_box_f1_on_known_boxes() -> None:
    ref = [np.array([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 1]], float)]
    same = [ref[0].copy()]
    assert box_f1(ref, same).value == 1.0
    moved = [np.array([[0, 0, 10, 10, 0.9, 0], [25, 25, 35, 35, 0.8, 1]], float)]  # IoU 1/7
    assert box_f1(ref, moved).value == pytest.approx(0.5)
    relabelled = [np.array([[0, 0, 10, 10, 0.9, 2], [20, 20, 30, 30, 0.8, 1]], float)]
    assert box_f1(ref, relabelled).value == pytest.approx(0.5)
    extra = [np.vstack([ref[0], [[50, 50, 60, 60, 0.5, 0]]])]  # 2 TP, 3 candidates
    assert box_f1(ref, extra).value == pytest.approx(2 * 2 / 5)
    assert box_f1([np.zeros((0, 6))], [np.zeros((0, 6))]).value == 1.0


def test_detector_measure_decodes_both_outputs() -> None:
    ref = _yolo([(50, 50, 20, 20, 0, 0.9), (150, 150, 40, 40, 1, 0.6)])
    lost = ref.copy()
    lost[0, 5, 1] = 0.1  # the second box's score falls below 0.25
    a = measure("detector", [ref], [lost])
    assert a.task == "detector" and a.metric.name == "box_f1"
    assert a.metric.value == pytest.approx(2 * 1 / 3)

    def only_first(out: np.ndarray) -> list[np.ndarray]:  # a decoder of the user's own
        return [np.array([[0, 0, 1, 1, float(f[4, 0]), 0]]) for f in out]

    assert measure("detector", [ref], [lost], decoder=only_first).metric.value == 1.0


@pytest.mark.parametrize(
    ("outputs", "task"),
    [
        ([np.zeros((4, 10))], "classifier"),
        ([np.zeros((4, 1))], "regression"),
        ([np.zeros((2, 22, 2100))], "detector"),
        ([np.zeros((2, 84, 8400))], "detector"),
        ([np.zeros((2, 2100, 22))], "regression"),  # anchors first: not the YOLOv8 layout
        ([np.full((2, 1, 8, 8), 0.5, np.float32)], "map"),
        ([np.full((2, 3, 8, 8), 0.5, np.float32)], "map"),
        ([np.full((2, 1, 8, 8), 3.0, np.float32)], "regression"),  # not a probability map
        ([np.zeros((4, 10)), np.zeros((4, 10))], "regression"),  # multi-output
    ],
)
def test_task_detection_rule(outputs: list[np.ndarray], task: str) -> None:
    assert detect_task(outputs) == task


def test_every_task_has_a_default_threshold_and_metrics_have_directions() -> None:
    assert set(METRIC_OF_TASK.values()) == set(DEFAULT_THRESHOLDS)
    assert Metric("top1", 0.98).meets(0.98) and not Metric("top1", 0.97).meets(0.98)
    with pytest.raises(UsageError, match="--task"):
        measure("vibes", [np.zeros((1, 2))], [np.zeros((1, 2))])

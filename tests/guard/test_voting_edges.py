"""Voters at their edges: the boundaries and refusals a changed comparison would break.

Each case pins one rule of :mod:`edgeguard.guard.voting` with a hand-computed value, so a
flipped comparison, a swapped box axis or a dropped output fails a test.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeguard.guard.voting import (
    iou,
    required_outputs,
    softmax,
    vote,
    vote_classification,
    vote_detection,
    vote_passthrough,
    vote_regression,
)
from edgeguard.policy.runtime import VoterKind, VoterSpec


def rows(*labels: int, c: int = 3) -> np.ndarray:
    out = np.zeros((len(labels), c), np.float32)
    out[np.arange(len(labels)), list(labels)] = 4.0
    return out


# ----------------------------------------------------------------------------- regression


@pytest.mark.parametrize("kind", [VoterKind.MEDIAN, VoterKind.MID_VALUE])
@pytest.mark.parametrize(
    "shapes", [((2,), (3,)), ((2, 3), (3, 2)), ((1, 4), (4,))], ids=["len", "swap", "rank"]
)
def test_regression_refuses_members_of_different_shapes(kind, shapes) -> None:
    spec = VoterSpec(kind=kind, output="y")
    members = {f"m{i}": {"y": np.zeros(s, np.float32)} for i, s in enumerate(shapes)}
    v = vote(members, spec)
    assert not v.ok and v.reason == "members disagree on output shape"
    assert v.outputs == {}


def test_regression_max_deviation_is_inclusive_and_quorum_counts_the_kept() -> None:
    spec = VoterSpec(kind=VoterKind.MEDIAN, output="y", max_deviation=1.0)
    values = {"a": 0.0, "b": 1.0, "c": 2.0, "d": 1.0, "e": 9.0}  # median 1.0
    members = {n: {"y": np.array([v], np.float32)} for n, v in values.items()}
    v = vote(members, spec)
    # a and c are exactly max_deviation away: kept; e is outvoted
    assert v.ok and v.dissenters == ("e",) and v.backers == ("a", "b", "c", "d")
    assert v.outputs["y"].tolist() == [1.0] and v.agreement == 0.8
    assert vote(members, spec, quorum=4).ok
    refused = vote(members, spec, quorum=5)
    assert not refused.ok and refused.reason == "only 4 of 5 members within max_deviation"
    assert refused.dissenters == ("e",) and refused.outputs == {}


def test_regression_mid_value_picks_a_members_value() -> None:
    spec = VoterSpec(kind=VoterKind.MID_VALUE, output="y")
    two = {"a": {"y": np.array([5.0, 1.0])}, "b": {"y": np.array([2.0, 4.0])}}
    assert vote(two, spec).outputs["y"].tolist() == [2.0, 1.0]
    four = {n: {"y": np.array([v])} for n, v in zip("abcd", [8.0, 1.0, 4.0, 6.0], strict=True)}
    assert vote(four, spec).outputs["y"].tolist() == [4.0]  # lower middle of 1, 4, 6, 8
    med = VoterSpec(kind=VoterKind.MEDIAN, output="y")
    assert vote(four, med).outputs["y"].tolist() == [5.0]


def test_regression_of_integer_outputs_is_float64() -> None:
    spec = VoterSpec(kind=VoterKind.MEDIAN, output="y")
    v = vote({"a": {"y": np.array([1], np.int32)}, "b": {"y": np.array([2], np.int32)}}, spec)
    assert v.outputs["y"].dtype == np.float64 and v.outputs["y"].tolist() == [1.5]


# ----------------------------------------------------------------------------- classification


def test_majority_needs_more_than_half() -> None:
    spec = VoterSpec(kind=VoterKind.MAJORITY, output="s", agreement=0.0)
    half = {"a": {"s": rows(0)}, "b": {"s": rows(0)}, "c": {"s": rows(1)}, "d": {"s": rows(2)}}
    v = vote(half, spec)
    assert not v.ok and v.reason == "no majority: 2 of 4 members agree"
    half["d"] = {"s": rows(0)}
    assert vote(half, spec).ok


def test_agreement_threshold_is_inclusive() -> None:
    members = {"a": {"s": rows(0)}, "b": {"s": rows(0)}, "c": {"s": rows(1)}, "d": {"s": rows(1)}}
    at = VoterSpec(kind=VoterKind.PLURALITY, output="s", agreement=0.5)
    v = vote(members, at)
    assert v.ok and v.outputs["label"].tolist() == [0]  # tie to the lowest label
    above = VoterSpec(kind=VoterKind.PLURALITY, output="s", agreement=0.51)
    refused = vote(members, above)
    assert not refused.ok and refused.reason == "agreement 0.50 below 0.51"
    assert refused.backers == ("a", "b") and refused.dissenters == ("c", "d")


def test_fused_scores_are_the_mean_of_each_rows_backers() -> None:
    a = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 0.0]], np.float32)
    b = np.array([[5.0, 1.0, 0.0], [0.0, 0.0, 6.0]], np.float32)
    c = np.array([[0.0, 9.0, 0.0], [0.0, 0.0, 2.0]], np.float32)
    spec = VoterSpec(kind=VoterKind.PLURALITY, output="s", agreement=0.0)
    v = vote({"a": {"s": a}, "b": {"s": b}, "c": {"s": c}}, spec)
    assert v.outputs["label"].tolist() == [0, 2]
    assert v.outputs["s"].dtype == np.float32
    np.testing.assert_allclose(v.outputs["s"], [[4.0, 1.0, 0.0], [0.0, 0.0, 4.0]])
    assert v.backers == ("b",) and v.dissenters == ("a", "c")


def test_soft_vote_outputs_mean_probabilities() -> None:
    a = np.array([[2.0, 0.0, 0.0]], np.float32)
    b = np.array([[0.0, 1.0, 0.0]], np.float32)
    logits = VoterSpec(kind=VoterKind.SOFT, output="s", agreement=0.0, scores_are_logits=True)
    v = vote_classification({"a": {"s": a}, "b": {"s": b}}, logits)
    expect = (softmax(a) + softmax(b)) / 2
    assert v.outputs["probabilities"].dtype == np.float32
    assert v.outputs["probabilities"].shape == (1, 3)
    np.testing.assert_allclose(v.outputs["probabilities"], expect, rtol=1e-6)
    assert v.outputs["label"].tolist() == [int(np.argmax(expect))] == [0]
    probs = VoterSpec(kind=VoterKind.SOFT, output="s", agreement=0.0, scores_are_logits=False)
    pa = np.array([[0.2, 0.5, 0.3]], np.float32)
    pb = np.array([[0.6, 0.1, 0.3]], np.float32)
    v = vote_classification({"a": {"s": pa}, "b": {"s": pb}}, probs)
    np.testing.assert_allclose(v.outputs["probabilities"], [[0.4, 0.3, 0.3]], rtol=1e-6)
    # a lone member: its own probabilities, the same way
    lone = vote_classification({"a": {"s": a}}, logits)
    np.testing.assert_allclose(lone.outputs["probabilities"], softmax(a), rtol=1e-6)
    assert lone.outputs["label"].tolist() == [0] and lone.backers == ("a",)
    plain = vote_classification({"a": {"s": pa}}, probs)
    np.testing.assert_allclose(plain.outputs["probabilities"], pa)
    hard = VoterSpec(kind=VoterKind.PLURALITY, output="s", agreement=0.0)
    assert "probabilities" not in vote_classification({"a": {"s": a}, "b": {"s": a}}, hard).outputs
    assert "probabilities" not in vote_classification({"a": {"s": a}}, hard).outputs


# ----------------------------------------------------------------------------- IoU


def test_iou_of_non_square_normalised_boxes() -> None:
    a = np.array([0.1, 0.2, 0.5, 0.3])  # 0.4 wide, 0.1 high
    b = np.array([0.2, 0.1, 0.4, 0.6])  # 0.2 wide, 0.5 high
    # intersection 0.2 x 0.1 = 0.02; union 0.04 + 0.10 - 0.02 = 0.12
    assert iou(a, b) == pytest.approx(1 / 6)
    assert iou(b, a) == pytest.approx(1 / 6)
    assert iou(a, a) == pytest.approx(1.0)
    # the same box with x and y swapped overlaps only where the two agree
    swapped = a[[1, 0, 3, 2]]  # 0.2..0.3 in x, 0.1..0.5 in y
    # intersection x 0.2..0.3, y 0.2..0.3 -> 0.01; union 0.04 + 0.04 - 0.01
    assert iou(a, swapped) == pytest.approx(0.01 / 0.07)
    # inverted boxes have no area
    assert iou(np.array([0.5, 0.5, 0.1, 0.1]), np.array([0.0, 0.0, 1.0, 1.0])) == 0.0


# ----------------------------------------------------------------------------- detection


def det(boxes: list[list[float]], scores: list[float], classes: list[int]) -> dict[str, np.ndarray]:
    return {
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "scores": np.array(scores, np.float32),
        "classes": np.array(classes, np.int64),
    }


DET = VoterSpec(kind=VoterKind.DETECTION, output="boxes", iou_threshold=0.5, min_confirmations=2)


def test_detection_equal_scores_order_by_class_then_coordinates() -> None:
    boxes = [[50, 50, 60, 60], [0, 0, 10, 10], [20, 0, 30, 10]]
    a = det(boxes, [0.5, 0.5, 0.5], [2, 2, 1])
    want_classes, want_first = [1, 2, 2], [[20, 0, 30, 10], [0, 0, 10, 10], [50, 50, 60, 60]]
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        b = det([boxes[i] for i in order], [0.5] * 3, [[2, 2, 1][i] for i in order])
        for members in ({"a": a, "b": b}, {"b": a, "a": b}):
            v = vote_detection(members, DET)
            assert v.outputs["classes"].tolist() == want_classes
            assert v.outputs["boxes"].tolist() == want_first
            assert v.outputs["confirmations"].tolist() == [2, 2, 2]


def test_detection_boundaries() -> None:
    # IoU exactly at the threshold joins the cluster: [0,0,2,1] vs [0,0,1,1] is 0.5
    at = {"a": det([[0, 0, 2, 1]], [0.9], [0]), "b": det([[0, 0, 1, 1]], [0.3], [0])}
    v = vote_detection(at, DET)
    assert v.outputs["confirmations"].tolist() == [2]
    np.testing.assert_allclose(v.outputs["boxes"][0], [0, 0, (2 * 0.9 + 0.3) / 1.2, 1], rtol=1e-6)
    # one member cannot confirm its own box twice
    twice = {"a": det([[0, 0, 1, 1], [0, 0, 1, 1]], [0.9, 0.8], [0, 0]), "b": det([], [], [])}
    assert vote_detection(twice, DET).outputs["boxes"].shape == (0, 4)
    # exactly k confirmations are enough; the score divides by every answering member
    three = {**at, "c": det([], [], [])}
    v = vote_detection(three, DET)
    assert v.outputs["scores"].tolist() == pytest.approx([1.2 / 3])
    assert v.agreement == 1.0 and v.backers == ("a", "b")
    # zero scores: plain mean of the coordinates
    zero = {"a": det([[0, 0, 2, 2]], [0.0], [0]), "b": det([[0, 0, 2, 4]], [0.0], [0])}
    np.testing.assert_allclose(vote_detection(zero, DET).outputs["boxes"][0], [0, 0, 2, 3])
    # an unconfirmed cluster lowers the agreement
    lone = {
        "a": det([[0, 0, 1, 1], [5, 5, 6, 6]], [0.9, 0.9], [0, 0]),
        "b": det([[0, 0, 1, 1]], [0.9], [0]),
    }
    assert vote_detection(lone, DET).agreement == 0.5


def test_detection_refuses_ragged_members() -> None:
    bad = {"a": {"boxes": np.zeros((2, 4)), "scores": np.zeros(1), "classes": np.zeros(2)}}
    v = vote_detection(bad, DET)
    assert not v.ok and v.reason == "member a: boxes/scores/classes lengths differ"


# ----------------------------------------------------------------------------- exact outcomes


def assert_refused(v, reason: str, backers=(), dissenters=(), agreement: float = 0.0) -> None:
    assert v.ok is False and v.reason == reason and v.outputs == {}
    assert (v.backers, v.dissenters, v.agreement) == (backers, dissenters, agreement)


def test_every_voter_refuses_an_empty_vote_the_same_way() -> None:
    spec = VoterSpec(kind=VoterKind.MEDIAN, output="y")
    assert_refused(vote_classification({}, CLS3), "no member answered")
    assert_refused(vote_regression({}, spec), "no member answered")
    assert_refused(vote_detection({}, DET), "no member answered")
    assert_refused(vote({}, CLS3), "0 member(s) answered, quorum is 1")
    assert_refused(vote({}, CLS3, quorum=0), "no member answered")


CLS3 = VoterSpec(kind=VoterKind.PLURALITY, output="s", agreement=0.5)


def test_refusals_carry_who_backed_and_who_dissented() -> None:
    shapes = {"a": {"s": rows(0)}, "b": {"s": rows(0, 1)}}
    assert_refused(vote_classification(shapes, CLS3), "members disagree on output shape")
    split = {"a": {"s": rows(0)}, "b": {"s": rows(1)}, "c": {"s": rows(2)}}
    assert_refused(
        vote(split, CLS3), "agreement 0.33 below 0.50", ("a",), ("b", "c"), pytest.approx(1 / 3)
    )
    major = VoterSpec(kind=VoterKind.MAJORITY, output="s", agreement=0.0)
    assert_refused(
        vote(split, major), "no majority: 1 of 3 members agree", ("a",), ("b", "c"), 1 / 3
    )
    reg = VoterSpec(kind=VoterKind.MEDIAN, output="y", max_deviation=0.1)
    far = {"a": {"y": np.array([0.0])}, "b": {"y": np.array([5.0])}}
    assert_refused(
        vote_regression(far, reg, quorum=1),
        "only 0 of 2 members within max_deviation",
        (),
        ("a", "b"),
    )
    ragged = {"a": det([[0, 0, 1, 1]], [0.5, 0.4], [0])}
    assert_refused(vote(ragged, DET), "member a: boxes/scores/classes lengths differ")
    pas = VoterSpec(kind=VoterKind.PASSTHROUGH, output="y")
    assert_refused(vote({"a": {}, "b": {}}, pas), "passthrough needs one answer, got 2")
    assert_refused(vote_passthrough({}), "passthrough needs one answer, got 0")


def test_passthrough_returns_every_output_unchanged() -> None:
    outs = {"y": np.arange(3, dtype=np.float16), "n": np.array([7], np.int64)}
    v = vote({"only": outs}, VoterSpec(kind=VoterKind.PASSTHROUGH, output="y"))
    assert v.ok is True and v.backers == ("only",) and v.agreement == 1.0 and v.reason == ""
    assert list(v.outputs) == ["y", "n"] and v.outputs is not outs
    assert v.outputs["y"] is outs["y"] and v.outputs["n"] is outs["n"]
    assert required_outputs(VoterSpec(kind=VoterKind.PASSTHROUGH, output="y")) == ()
    assert tuple(required_outputs(DET)) == ("boxes", "scores", "classes")
    assert tuple(required_outputs(CLS3)) == ("s",)


def test_a_lone_member_decides_with_full_agreement() -> None:
    v = vote({"a": {"s": np.array([0.1, 0.7, 0.2], np.float32)}}, CLS3)
    assert v.ok is True and v.agreement == 1.0 and v.backers == ("a",)
    assert v.outputs["label"].dtype == np.int64 and v.outputs["label"].tolist() == [1]
    assert v.outputs["s"].shape == (3,)


def test_score_rows_of_any_rank() -> None:
    one_d = {n: {"s": np.array([0.0, 2.0, 1.0], np.float32)} for n in "ab"}
    v = vote(one_d, CLS3)
    assert v.outputs["label"].tolist() == [1] and v.outputs["s"].shape == (3,)
    three_d = np.zeros((2, 2, 3), np.float32)
    three_d[0, 0, 2] = three_d[0, 1, 0] = three_d[1, 0, 1] = three_d[1, 1, 2] = 3.0
    v = vote({"a": {"s": three_d}, "b": {"s": three_d.copy()}}, CLS3)
    assert v.outputs["label"].tolist() == [2, 0, 1, 2]
    assert v.outputs["s"].shape == (2, 2, 3) and v.outputs["s"].dtype == np.float32
    soft = VoterSpec(kind=VoterKind.SOFT, output="s", agreement=0.0)
    v = vote({"a": {"s": three_d}, "b": {"s": three_d.copy()}}, soft)
    assert v.outputs["probabilities"].shape == (2, 2, 3)
    assert v.outputs["label"].tolist() == [2, 0, 1, 2]
    lone = vote({"a": {"s": three_d}}, CLS3)
    assert lone.outputs["label"].tolist() == [2, 0, 1, 2]


def test_softmax_is_stable_and_per_row() -> None:
    p = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]], np.float32))
    assert p.dtype == np.float64 and np.isfinite(p).all()
    np.testing.assert_allclose(p, [[1.0, 0.0], [0.5, 0.5]])
    q = softmax(np.array([[0.0, 1.0], [0.0, 3.0]]), axis=0)
    np.testing.assert_allclose(q.sum(axis=0), [1.0, 1.0])
    np.testing.assert_allclose(q[:, 1], [1 / (1 + np.e**2), np.e**2 / (1 + np.e**2)])


def test_one_backer_row_keeps_its_raw_scores() -> None:
    # every member picks another label: the lowest label wins with one backer
    a = np.array([[6.0, 0.0, 0.0]], np.float32)
    b = np.array([[0.0, 5.0, 0.0]], np.float32)
    c = np.array([[0.0, 0.0, 4.0]], np.float32)
    spec = VoterSpec(kind=VoterKind.PLURALITY, output="s", agreement=0.0)
    v = vote({"a": {"s": a}, "b": {"s": b}, "c": {"s": c}}, spec)
    np.testing.assert_array_equal(v.outputs["s"], a)
    assert v.outputs["label"].tolist() == [0] and v.backers == ("a",)


def test_unvoted_outputs_come_from_the_backer_closest_to_the_result() -> None:
    # three backers of label 1; the fused score row is their mean, nearest to "c"
    members = {
        "a": {"s": np.array([[0.0, 2.0]], np.float32), "box": np.array([1.0], np.float32)},
        "b": {"s": np.array([[0.0, 9.0]], np.float32), "box": np.array([2.0], np.float32)},
        "c": {"s": np.array([[0.0, 5.0]], np.float32), "box": np.array([3.0], np.float32)},
    }
    v = vote(members, CLS3)
    assert v.outputs["box"].tolist() == [3.0]
    assert list(v.outputs) == ["s", "box", "label"]
    assert (v.backers, v.dissenters, v.agreement, v.reason) == (("a", "b", "c"), (), 1.0, "")
    # the fused extra of a mid-value vote is a member's value, in the members' dtype
    mid = VoterSpec(kind=VoterKind.MID_VALUE, output="y")
    pair = {
        "a": {"y": np.array([1.0]), "z": np.array([4.0, 1.0], np.float16)},
        "b": {"y": np.array([3.0]), "z": np.array([2.0, 3.0], np.float16)},
    }
    v = vote(pair, mid)
    assert v.outputs["y"].tolist() == [1.0]
    assert v.outputs["z"].dtype == np.float16 and v.outputs["z"].tolist() == [2.0, 1.0]
    med = vote(pair, VoterSpec(kind=VoterKind.MEDIAN, output="y"))
    assert med.outputs["z"].tolist() == [3.0, 2.0] and med.outputs["z"].dtype == np.float16
    # an extra output that not every backer has is taken whole from the closest backer
    pair["b"] = {"y": np.array([3.0])}
    v = vote(pair, mid)
    assert v.outputs["z"].tolist() == [4.0, 1.0]


def test_detection_through_vote_keeps_extra_outputs_from_a_confirming_member() -> None:
    a = {**det([[0, 0, 10, 10]], [0.9], [1]), "mask": np.array([1.0], np.float32)}
    b = {**det([[1, 1, 11, 11]], [0.8], [1]), "mask": np.array([2.0], np.float32)}
    c = {**det([[50, 50, 60, 60]], [0.7], [1]), "mask": np.array([3.0], np.float32)}
    v = vote({"a": a, "b": b, "c": c}, DET)
    assert v.ok is True and v.backers == ("a", "b") and v.dissenters == ()
    assert v.outputs["mask"].tolist() in ([1.0], [2.0])
    assert v.outputs["boxes"].dtype == np.float32 and v.outputs["scores"].dtype == np.float32
    assert v.outputs["classes"].dtype == np.int64
    assert v.outputs["confirmations"].dtype == np.int64
    assert v.agreement == 0.5


def test_detection_seeds_clusters_from_the_highest_score() -> None:
    # seeded by b's box, a's joins (IoU 0.54) and c's (IoU 0.25 with b's) starts its own;
    # seeded from the lowest score the pairs would be c+a instead
    members = {
        "a": det([[3, 0, 13, 10]], [0.9], [0]),
        "b": det([[0, 0, 10, 10]], [0.95], [0]),
        "c": det([[6, 0, 16, 10]], [0.5], [0]),
    }
    v = vote_detection(members, DET)
    assert v.outputs["confirmations"].tolist() == [2]
    x1 = (0 * 0.95 + 3 * 0.9) / 1.85
    np.testing.assert_allclose(v.outputs["boxes"][0], [x1, 0, x1 + 10, 10], rtol=1e-6)
    assert v.backers == ("a", "b")
    # output ordered by fused score, highest first
    two = {
        "a": det([[0, 0, 10, 10], [50, 50, 60, 60]], [0.3, 0.9], [0, 0]),
        "b": det([[0, 0, 10, 10], [50, 50, 60, 60]], [0.3, 0.9], [0, 0]),
    }
    assert vote_detection(two, DET).outputs["boxes"][:, 0].tolist() == [50.0, 0.0]


def test_detection_weights_scores_below_one_and_agrees_fully_on_nothing() -> None:
    low = {"a": det([[0, 0, 2, 2]], [0.6], [0]), "b": det([[0, 0, 2, 4]], [0.2], [0])}
    np.testing.assert_allclose(vote_detection(low, DET).outputs["boxes"][0], [0, 0, 2, 2.5])
    empty = vote_detection({"a": det([], [], []), "b": det([], [], [])}, DET)
    assert empty.ok is True and empty.agreement == 1.0 and empty.backers == ()
    assert empty.outputs["boxes"].shape == (0, 4) and empty.outputs["boxes"].dtype == np.float32
    assert empty.outputs["classes"].dtype == np.int64


def test_fused_extras_come_from_the_kept_members_only() -> None:
    spec = VoterSpec(kind=VoterKind.MEDIAN, output="y", max_deviation=1.0)
    members = {
        "a": {"y": np.array([0.0], np.float32), "z": np.array([0.0], np.float32), "n": np.int64(4)},
        "b": {"y": np.array([1.0], np.float32), "z": np.array([1.0], np.float32), "n": np.int64(5)},
        "e": {
            "y": np.array([9.0], np.float32),
            "z": np.array([100.0], np.float32),
            "n": np.int64(6),
        },
    }
    v = vote(members, spec)
    assert v.dissenters == ("e",) and v.backers == ("a", "b") and v.agreement == 2 / 3
    assert v.outputs["y"].dtype == np.float32 and v.outputs["y"].tolist() == [0.5]
    assert v.outputs["z"].tolist() == [0.5]  # the median of a and b, not of all three
    assert v.outputs["n"].dtype == np.int64 and int(v.outputs["n"]) in (4, 5)
    refused = vote(members, spec, quorum=3)
    assert_refused(refused, "only 2 of 3 members within max_deviation", ("a", "b"), ("e",), 2 / 3)
    # direct calls default to a quorum of one
    assert vote_regression({"a": members["a"]}, spec).ok is True
    half = {"a": {"y": np.array([1.0], np.float16)}, "b": {"y": np.array([2.0], np.float16)}}
    assert vote_regression(half, spec).outputs["y"].dtype == np.float16


def test_classification_keeps_integer_extras_whole_and_reports_dissent() -> None:
    members = {
        "a": {"s": rows(1), "count": np.array([3], np.int64)},
        "b": {"s": rows(1), "count": np.array([3], np.int64)},
        "c": {"s": rows(2), "count": np.array([8], np.int64)},
    }
    v = vote(members, CLS3)
    assert v.outputs["count"].dtype == np.int64 and v.outputs["count"].tolist() == [3]
    assert (v.backers, v.dissenters) == (("a", "b"), ("c",))
    med = vote(members, VoterSpec(kind=VoterKind.MEDIAN, output="s"))
    assert med.outputs["count"].dtype == np.int64
    lone = vote_classification(
        {"a": {"s": np.array([2.0, 0.0], np.float32)}},
        VoterSpec(kind=VoterKind.SOFT, output="s", agreement=0.0),
    )
    assert lone.outputs["probabilities"].dtype == np.float32


def test_detection_orders_within_a_class_by_score_not_coordinates() -> None:
    # the highest score sits at the largest x: a coordinate order would seed from "c"
    members = {
        "a": det([[3, 0, 13, 10]], [0.9], [0]),
        "b": det([[6, 0, 16, 10]], [0.95], [0]),
        "c": det([[0, 0, 10, 10]], [0.5], [0]),
    }
    v = vote_detection(members, DET)
    x1 = (6 * 0.95 + 3 * 0.9) / 1.85
    np.testing.assert_allclose(v.outputs["boxes"][0], [x1, 0, x1 + 10, 10], rtol=1e-6)
    assert v.backers == ("a", "b")


def test_detection_keeps_confirmed_clusters_after_an_unconfirmed_one() -> None:
    members = {
        "a": det([[0, 0, 1, 1], [5, 5, 6, 6]], [0.9, 0.8], [0, 0]),
        "b": det([[5, 5, 6, 6]], [0.8], [0]),
    }
    v = vote_detection(members, DET)
    assert v.outputs["boxes"].tolist() == [[5, 5, 6, 6]] and v.agreement == 0.5


def test_detection_output_is_sorted_by_fused_score() -> None:
    # the first cluster is seeded by the single highest score but fuses to less
    members = {
        "a": det([[0, 0, 1, 1], [5, 5, 6, 6]], [0.9, 0.8], [0, 0]),
        "b": det([[0, 0, 1, 1], [5, 5, 6, 6]], [0.1, 0.8], [0, 0]),
    }
    v = vote_detection(members, DET)
    assert v.outputs["boxes"][:, 0].tolist() == [5.0, 0.0]
    assert v.outputs["scores"].tolist() == pytest.approx([0.8, 0.5])

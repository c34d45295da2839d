"""Voters: unit cases and Hypothesis properties (permutation invariance, quorum, fusion)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeguard.guard.voting import iou, vote, vote_detection
from edgeguard.policy.runtime import VoterKind, VoterSpec

CLS = VoterSpec(kind=VoterKind.PLURALITY, output="logits", agreement=0.5)


def onehot(labels: list[int], c: int = 4, hi: float = 5.0) -> np.ndarray:
    out = np.zeros((len(labels), c), np.float32)
    out[np.arange(len(labels)), labels] = hi
    return out


def test_plurality_outvotes_a_dissenter() -> None:
    members = {
        "a": {"logits": onehot([1, 2])},
        "b": {"logits": onehot([1, 2])},
        "c": {"logits": onehot([3, 2])},
    }
    v = vote(members, CLS)
    assert v.ok and v.outputs["label"].tolist() == [1, 2]
    assert v.dissenters == ("c",) and v.backers == ("a", "b")
    assert abs(v.agreement - 2 / 3) < 1e-9
    # the fused probabilities come from the backers of each row only
    assert int(np.argmax(v.outputs["logits"][0])) == 1


def test_a_multi_output_models_other_outputs_are_kept() -> None:
    """The voted output decides; the other outputs come from the backers (fused by the
    median voters, otherwise from the backer closest to the result), in the model's order."""
    members = {
        n: {
            "boxes": np.full((1, 3), v, np.float32),
            "logits": onehot([lab]),
            "count": np.array([i], np.int64),
        }
        for i, (n, v, lab) in enumerate([("a", 1.0, 1), ("b", 2.0, 1), ("c", 9.0, 3)])
    }
    v = vote(members, CLS)
    assert v.ok and list(v.outputs)[:3] == ["boxes", "logits", "count"]
    assert v.outputs["label"].tolist() == [1]
    # both from the same backer ("a" or "b"), never from the outvoted "c"
    pair = (v.outputs["boxes"].tolist(), v.outputs["count"].tolist())
    assert pair in (([[1.0] * 3], [0]), ([[2.0] * 3], [1]))
    med = vote(members, VoterSpec(kind=VoterKind.MEDIAN, output="boxes"))
    assert med.ok and med.outputs["boxes"].tolist() == [[2.0, 2.0, 2.0]]
    # other float outputs are fused the same way; other dtypes come from the first backer
    assert np.allclose(med.outputs["logits"], np.median([m["logits"] for m in members.values()], 0))
    assert med.outputs["count"].tolist() in ([0], [1])


def test_agreement_threshold_and_majority() -> None:
    members = {
        "a": {"logits": onehot([0])},
        "b": {"logits": onehot([1])},
        "c": {"logits": onehot([2])},
    }
    assert not vote(members, CLS).ok  # 1/3 < 0.5
    maj = VoterSpec(kind=VoterKind.MAJORITY, output="logits", agreement=0.01)
    v = vote(members, maj)
    assert not v.ok and "majority" in v.reason
    two = {"a": {"logits": onehot([0])}, "b": {"logits": onehot([1])}}
    assert not vote(two, maj).ok  # 1 of 2 is not more than half


def test_soft_vote_uses_confidence() -> None:
    a = np.array([[0.0, 3.0, 0.0]], np.float32)  # confident 1
    b = np.array([[0.6, 0.5, 0.0]], np.float32)  # unsure 0
    c = np.array([[0.6, 0.5, 0.0]], np.float32)
    soft = VoterSpec(kind=VoterKind.SOFT, output="logits", agreement=0.3)
    v = vote({"a": {"logits": a}, "b": {"logits": b}, "c": {"logits": c}}, soft)
    assert v.ok and v.outputs["label"].tolist() == [1]
    assert vote({"a": {"logits": a}, "b": {"logits": b}, "c": {"logits": c}}, CLS).outputs[
        "label"
    ].tolist() == [0]


def test_quorum_and_shape_disagreement() -> None:
    members = {"a": {"logits": onehot([1])}}
    assert not vote(members, CLS, quorum=2).ok
    assert vote(members, CLS, quorum=1).ok
    bad = {"a": {"logits": onehot([1])}, "b": {"logits": onehot([1, 1])}}
    assert not vote(bad, CLS).ok
    assert not vote({}, CLS).ok


def test_regression_median_mid_value_and_deviation() -> None:
    med = VoterSpec(kind=VoterKind.MEDIAN, output="y", max_deviation=0.5)
    members = {
        "a": {"y": np.array([1.0, 2.0])},
        "b": {"y": np.array([1.1, 2.1])},
        "c": {"y": np.array([9.0, 2.0])},
    }
    v = vote(members, med, quorum=2)
    assert v.ok and v.dissenters == ("c",)
    assert np.allclose(v.outputs["y"], [1.05, 2.05])
    assert not vote(members, med, quorum=3).ok
    mid = VoterSpec(kind=VoterKind.MID_VALUE, output="y")
    v = vote(
        {"a": {"y": np.array([1.0])}, "b": {"y": np.array([5.0])}, "c": {"y": np.array([3.0])}}, mid
    )
    assert v.outputs["y"].tolist() == [3.0]


DET = VoterSpec(kind=VoterKind.DETECTION, output="boxes", iou_threshold=0.5, min_confirmations=2)


def det(boxes: list[list[float]], scores: list[float], classes: list[int]) -> dict[str, np.ndarray]:
    return {
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "scores": np.array(scores, np.float32),
        "classes": np.array(classes, np.int64),
    }


def test_detection_keeps_confirmed_boxes_and_fuses() -> None:
    members = {
        "a": det([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8], [1, 2]),
        "b": det([[1, 1, 11, 11]], [0.7], [1]),
        "c": det([[0, 0, 10, 10]], [0.6], [3]),  # same place, other class: no confirmation
    }
    v = vote_detection(members, DET)
    assert v.ok
    assert v.outputs["boxes"].shape == (1, 4)
    assert v.outputs["classes"].tolist() == [1]
    assert v.outputs["confirmations"].tolist() == [2]
    expected = (np.array([0, 0, 10, 10]) * 0.9 + np.array([1, 1, 11, 11]) * 0.7) / 1.6
    assert np.allclose(v.outputs["boxes"][0], expected, atol=1e-5)
    assert np.isclose(v.outputs["scores"][0], 1.6 / 3)


def test_iou() -> None:
    assert iou(np.array([0, 0, 2, 2]), np.array([1, 1, 3, 3])) == 1 / 7
    assert iou(np.array([0, 0, 1, 1]), np.array([2, 2, 3, 3])) == 0.0
    assert iou(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 0])) == 0.0


# ----------------------------------------------------------------------------- properties

label_rows = st.lists(st.integers(0, 3), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(label_rows, min_size=1, max_size=5).filter(lambda ms: len({len(m) for m in ms}) == 1),
    st.randoms(use_true_random=False),
    st.sampled_from([VoterKind.PLURALITY, VoterKind.MAJORITY, VoterKind.SOFT]),
)
def test_classification_permutation_invariant(ms, rnd, kind) -> None:
    spec = VoterSpec(kind=kind, output="logits", agreement=0.3)
    arrays = [onehot(m) + 0.01 * i for i, m in enumerate(ms)]
    names = [f"m{i}" for i in range(len(ms))]
    perm = names[:]
    rnd.shuffle(perm)
    # permuted: the same values under shuffled names (and dict order)
    # a second output, not voted on, differs per member: the one kept must not depend on names
    extra = [np.array([i % 2], np.int64) for i in range(len(ms))]
    a = vote(
        {n: {"logits": x, "extra": e} for n, x, e in zip(names, arrays, extra, strict=True)}, spec
    )
    b = vote(
        {
            p: {"logits": arrays[names.index(p)], "extra": extra[names.index(p)]}
            for p in reversed(perm)
        },
        spec,
    )
    assert a.ok == b.ok and a.reason == b.reason
    if a.ok:
        assert a.outputs["label"].tolist() == b.outputs["label"].tolist()
        assert np.allclose(a.outputs["logits"], b.outputs["logits"])
        assert a.outputs["extra"].tolist() == b.outputs["extra"].tolist()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=7), st.integers(1, 7))
def test_quorum_rule(labels, quorum) -> None:
    members = {f"m{i}": {"logits": onehot([lab])} for i, lab in enumerate(labels)}
    v = vote(
        members, VoterSpec(kind=VoterKind.PLURALITY, output="logits", agreement=0.01), quorum=quorum
    )
    assert v.ok == (len(labels) >= quorum)
    if v.ok:
        counts = np.bincount(labels, minlength=4)
        assert counts[v.outputs["label"][0]] == counts.max()
        mv = vote(members, VoterSpec(kind=VoterKind.MAJORITY, output="logits", agreement=0.01))
        assert mv.ok == (counts.max() * 2 > len(labels))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.floats(-100, 100), min_size=3, max_size=3), min_size=1, max_size=6),
    st.randoms(use_true_random=False),
)
def test_regression_permutation_invariant_and_bounded(vals, rnd) -> None:
    for kind in (VoterKind.MEDIAN, VoterKind.MID_VALUE):
        spec = VoterSpec(kind=kind, output="y")
        arrs = [np.array(v) for v in vals]
        names = [f"m{i}" for i in range(len(arrs))]
        a = vote(dict(zip(names, ({"y": x} for x in arrs), strict=True)), spec)
        order = list(range(len(arrs)))
        rnd.shuffle(order)
        b = vote({names[i]: {"y": arrs[order[i]]} for i in range(len(arrs))}, spec)
        assert np.array_equal(a.outputs["y"], b.outputs["y"])
        stack = np.stack(arrs)
        assert (a.outputs["y"] >= stack.min(0) - 1e-9).all()
        assert (a.outputs["y"] <= stack.max(0) + 1e-9).all()
        if kind is VoterKind.MID_VALUE:  # an actual member value, per element
            assert all(a.outputs["y"][j] in stack[:, j] for j in range(3))


coord = st.floats(0, 100, allow_nan=False, width=32)
box_st = st.tuples(coord, coord, st.floats(1, 30, width=32), st.floats(1, 30, width=32)).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]]
)
member_dets = st.lists(
    st.tuples(box_st, st.floats(0.125, 1.0, width=32), st.integers(0, 2)), max_size=5
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(member_dets, min_size=1, max_size=4),
    st.integers(1, 4),
    st.randoms(use_true_random=False),
)
def test_detection_fusion_invariants(ms, k, rnd) -> None:
    k = min(k, len(ms))
    spec = VoterSpec(
        kind=VoterKind.DETECTION, output="boxes", min_confirmations=k, iou_threshold=0.5
    )
    outs = [det([d[0] for d in m], [d[1] for d in m], [d[2] for d in m]) for m in ms]
    names = [f"m{i}" for i in range(len(outs))]
    a = vote_detection(dict(zip(names, outs, strict=True)), spec)
    order = list(range(len(outs)))
    rnd.shuffle(order)
    b = vote_detection({names[i]: outs[order[i]] for i in range(len(outs))}, spec)
    assert a.ok and b.ok
    for key in ("boxes", "scores", "classes", "confirmations"):
        assert np.allclose(a.outputs[key], b.outputs[key]), key
    total = sum(len(m) for m in ms)
    n_out = len(a.outputs["scores"])
    assert n_out * k <= total
    assert (a.outputs["confirmations"] >= k).all()
    assert (a.outputs["confirmations"] <= len(ms)).all()
    assert (a.outputs["scores"] <= 1.0 + 1e-6).all()
    if total:
        allb = np.concatenate([o["boxes"] for o in outs])
        assert (a.outputs["boxes"] >= allb.min(0) - 1e-3).all()
        assert (a.outputs["boxes"] <= allb.max(0) + 1e-3).all()
    if k == 1 and len(ms) == 1:  # a lone member is its own ensemble
        assert n_out == len(ms[0])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_fast_median_and_mid_value_match_numpy(n: int, seed: int) -> None:
    from edgeguard.guard.voting import _median, _mid_value

    rng = np.random.default_rng(seed)
    arrays = [rng.normal(size=(3, 5)) for _ in range(n)]
    stack = np.stack(arrays)
    np.testing.assert_allclose(_median(arrays), np.median(stack, axis=0), rtol=1e-12)
    np.testing.assert_array_equal(_mid_value(arrays), np.sort(stack, axis=0)[(n - 1) // 2])

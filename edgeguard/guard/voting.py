"""Voters: combine the answers of redundant members into one answer or a fault.

Layer: :mod:`edgeguard.guard` (pure NumPy logic, no I/O, no threads).

A voter receives the outputs of the members that answered in time and passed
their checks (a member that timed out or failed a check abstains, so it is
simply absent from the mapping). It returns a :class:`Vote`: the combined
outputs, who backed the result and who dissented, and ``ok=False`` with a
reason when the disagreement exceeds the policy (a fault for the caller's
fallback chain). Every voter is invariant under permutation of the members:
results depend on member *values*, never on names or dict order.

Rules:

* classification (``[N, C]`` scores per member, one label per row):
  plurality (most votes, ties to the lowest label), majority (more than half
  of the answering members), soft vote (argmax of the mean probability), each
  with an agreement threshold (minimum fraction backing the winner per row);
* regression: element-wise median, or mid-value select (the lower middle
  member value), with an optional max-deviation bound that outvotes outliers;
* passthrough (a one-model policy): the member's outputs, all of them, unchanged;
* object detection (``boxes [M, 4]`` as x1, y1, x2, y2, ``scores [M]``,
  ``classes [M]`` per member): greedy clustering across members by class and
  IoU, keep clusters confirmed by at least k distinct members, fuse the
  coordinates (score-weighted mean) and scores (sum / answering members).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgeguard.policy.runtime import VoterKind, VoterSpec

__all__ = [
    "Vote",
    "iou",
    "required_outputs",
    "softmax",
    "vote",
    "vote_classification",
    "vote_detection",
    "vote_passthrough",
    "vote_regression",
]

Outputs = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Vote:
    """Outcome of one vote.

    Attributes:
        ok: False when the members' disagreement exceeds the policy (a fault).
        outputs: The combined outputs (empty when ``ok`` is False).
        backers: Members whose answer agrees with the result, sorted.
        dissenters: Members outvoted in at least one row or element, sorted.
        agreement: Smallest per-row fraction of answering members backing the result.
        reason: Why the vote failed, or "" when ok.
    """

    ok: bool
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    backers: tuple[str, ...] = ()
    dissenters: tuple[str, ...] = ()
    agreement: float = 0.0
    reason: str = ""


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64."""
    z = np.asarray(x, dtype=np.float64)
    z = z - np.max(z, axis=axis, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / np.sum(e, axis=axis, keepdims=True)
    return out


def _as_rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 1:
        return a.reshape(1, -1)
    return a.reshape(-1, a.shape[-1])


def vote_classification(members: Mapping[str, Outputs], spec: VoterSpec) -> Vote:
    """Vote on class labels (plurality / majority / soft).

    Args:
        members: ``name -> outputs`` of the answering members (each holding
            ``spec.output`` with shape ``[N, C]`` or ``[C]``; all the same shape).
        spec: Voter parameters (kind, output, agreement, scores_are_logits).

    Returns:
        The vote; outputs hold ``"label"`` (``[N]`` int64, the decision),
        ``spec.output`` (per row, the mean of the raw scores of the members
        that back that row's winner, same shape and dtype as the members'),
        and for the soft vote ``"probabilities"`` (mean member probabilities).
    """
    names = sorted(members)
    if not names:
        return Vote(ok=False, reason="no member answered")
    if len(names) == 1:  # fast path: a lone member is its own plurality
        raw = np.asarray(members[names[0]][spec.output])
        label = np.argmax(_as_rows(raw), axis=-1).astype(np.int64)
        single = {spec.output: raw, "label": label}
        if spec.kind is VoterKind.SOFT:
            p1 = softmax(raw) if spec.scores_are_logits else raw
            single["probabilities"] = np.asarray(p1, dtype=np.float32)
        return Vote(ok=True, outputs=single, backers=(names[0],), agreement=1.0)
    scores = [_as_rows(members[n][spec.output]) for n in names]
    shape = scores[0].shape
    if any(s.shape != shape for s in scores):
        return Vote(ok=False, reason="members disagree on output shape")
    stack = np.stack(scores)  # [M, N, C]
    probs = softmax(stack) if spec.scores_are_logits else stack.astype(np.float64)
    m, n_rows, n_cls = stack.shape
    labels = np.argmax(stack, axis=-1)  # [M, N]
    if spec.kind is VoterKind.SOFT:
        winner = np.argmax(probs.mean(axis=0), axis=-1)  # [N]
    else:
        counts = np.zeros((n_rows, n_cls), dtype=np.int64)
        for i in range(m):
            counts[np.arange(n_rows), labels[i]] += 1
        winner = np.argmax(counts, axis=-1)  # ties -> lowest label
    backing = labels == winner[None, :]  # [M, N]
    support = backing.sum(axis=0)  # [N]
    frac = support / m
    agreement = float(frac.min())
    dissent = tuple(n for i, n in enumerate(names) if not bool(backing[i].all()))
    backers = tuple(n for i, n in enumerate(names) if bool(backing[i].all()))
    if spec.kind is VoterKind.MAJORITY and bool((support * 2 <= m).any()):
        return Vote(
            ok=False,
            backers=backers,
            dissenters=dissent,
            agreement=agreement,
            reason=f"no majority: {int(support.min())} of {m} members agree",
        )
    if agreement < spec.agreement:
        return Vote(
            ok=False,
            backers=backers,
            dissenters=dissent,
            agreement=agreement,
            reason=f"agreement {agreement:.2f} below {spec.agreement:.2f}",
        )
    w = backing[:, :, None].astype(np.float64)
    wsum = np.maximum(w.sum(axis=0), 1.0)
    first = np.asarray(members[names[0]][spec.output])
    fused = (stack.astype(np.float64) * w).sum(axis=0) / wsum
    outputs = {
        spec.output: fused.reshape(first.shape).astype(first.dtype, copy=False),
        "label": winner.astype(np.int64),
    }
    if spec.kind is VoterKind.SOFT:
        outputs["probabilities"] = probs.mean(axis=0).reshape(first.shape).astype(np.float32)
    return Vote(ok=True, outputs=outputs, backers=backers, dissenters=dissent, agreement=agreement)


def vote_regression(members: Mapping[str, Outputs], spec: VoterSpec, *, quorum: int = 1) -> Vote:
    """Element-wise median or mid-value select with an optional max-deviation bound.

    Members deviating from the median by more than ``spec.max_deviation`` in any
    element are dissenters and are dropped; the result is recomputed from the
    rest, which must still number at least ``quorum``.
    """
    names = sorted(members)
    if not names:
        return Vote(ok=False, reason="no member answered")
    raw = [np.asarray(members[n][spec.output]) for n in names]
    shape = raw[0].shape
    if any(a.shape != shape for a in raw):
        return Vote(ok=False, reason="members disagree on output shape")
    dtype = raw[0].dtype
    out_dtype = dtype if np.issubdtype(dtype, np.floating) else np.float64
    # Work in the members' own float precision (no float64 copies of large maps).
    arrays = [a.astype(out_dtype, copy=False) for a in raw]
    keep = list(range(len(names)))
    if spec.max_deviation is not None and len(names) > 1:
        med = _median(arrays)
        keep = [
            i
            for i in range(len(names))
            if arrays[i].size == 0 or float(np.max(np.abs(arrays[i] - med))) <= spec.max_deviation
        ]
    backers = tuple(names[i] for i in keep)
    dissent = tuple(n for i, n in enumerate(names) if i not in keep)
    agreement = len(keep) / len(names)
    if len(keep) < quorum or not keep:
        return Vote(
            ok=False,
            backers=backers,
            dissenters=dissent,
            agreement=agreement,
            reason=f"only {len(keep)} of {len(names)} members within max_deviation",
        )
    sub = [arrays[i] for i in keep]
    result = _mid_value(sub) if spec.kind is VoterKind.MID_VALUE else _median(sub)
    return Vote(
        ok=True,
        outputs={spec.output: np.asarray(result, dtype=out_dtype)},
        backers=backers,
        dissenters=dissent,
        agreement=agreement,
    )


def _median(arrays: list[np.ndarray]) -> np.ndarray:
    """Element-wise median; closed forms for 1-3 members (np.median sorts: slow on big maps)."""
    n = len(arrays)
    if n == 1:
        return arrays[0]
    if n == 2:
        return np.asarray((arrays[0] + arrays[1]) / 2)
    if n == 3:
        a, b, c = arrays
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        return np.asarray(np.maximum(lo, np.minimum(hi, c)))
    return np.asarray(np.median(np.stack(arrays), axis=0))


def _mid_value(arrays: list[np.ndarray]) -> np.ndarray:
    """Element-wise lower-middle member value (an actual member's value)."""
    n = len(arrays)
    if n == 1:
        return arrays[0]
    if n == 2:
        return np.asarray(np.minimum(arrays[0], arrays[1]))
    if n == 3:
        return _median(arrays)
    return np.asarray(np.sort(np.stack(arrays), axis=0)[(n - 1) // 2])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (x1, y1, x2, y2)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


def vote_detection(members: Mapping[str, Outputs], spec: VoterSpec) -> Vote:
    """Fuse detections across members; keep objects confirmed by k members.

    Boxes from all members are visited in a member-independent total order
    (score descending, then class, then coordinates). Each joins the first
    existing cluster of its class whose seed box overlaps it with IoU at least
    ``spec.iou_threshold`` and that has no box of the same member yet;
    otherwise it seeds a new cluster. Clusters with at least
    ``spec.min_confirmations`` distinct members are kept, fused by
    score-weighted mean coordinates, and scored ``sum(scores) / answering``.

    Returns:
        Outputs ``spec.output`` (``[K, 4]`` float32), ``spec.scores_output``
        (``[K]`` float32), ``spec.classes_output`` (``[K]`` int64), plus
        ``"confirmations"`` (``[K]`` int64), sorted by score descending.
    """
    names = sorted(members)
    if not names:
        return Vote(ok=False, reason="no member answered")
    items: list[tuple[float, int, tuple[float, ...], int]] = []
    for mi, n in enumerate(names):
        out = members[n]
        boxes = np.asarray(out[spec.output], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(out[spec.scores_output], dtype=np.float64).reshape(-1)
        classes = np.asarray(out[spec.classes_output]).reshape(-1).astype(np.int64)
        if not (len(boxes) == len(scores) == len(classes)):
            return Vote(ok=False, reason=f"member {n}: boxes/scores/classes lengths differ")
        for box, score, cls_id in zip(
            boxes.tolist(), scores.tolist(), classes.tolist(), strict=True
        ):
            items.append((float(score), int(cls_id), tuple(float(x) for x in box), mi))
    items.sort(key=lambda t: (-t[0], t[1], t[2]))
    clusters: list[tuple[int, np.ndarray, list[tuple[float, tuple[float, ...], int]]]] = []
    for s, c, b, mi in items:
        barr = np.asarray(b)
        for cls, seed, entries in clusters:
            if (
                cls == c
                and all(e[2] != mi for e in entries)
                and iou(seed, barr) >= (spec.iou_threshold)
            ):
                entries.append((s, b, mi))
                break
        else:
            clusters.append((c, barr, [(s, b, mi)]))
    k = spec.min_confirmations
    out_boxes: list[np.ndarray] = []
    out_scores: list[float] = []
    out_classes: list[int] = []
    out_conf: list[int] = []
    confirmed_members: set[int] = set()
    for cls, _seed, entries in clusters:
        if len(entries) < k:
            continue
        ss = np.asarray([e[0] for e in entries])
        bb = np.asarray([e[1] for e in entries])
        wsum = float(ss.sum())
        fused = (bb * ss[:, None]).sum(axis=0) / wsum if wsum > 0 else bb.mean(axis=0)
        out_boxes.append(fused)
        out_scores.append(wsum / len(names))
        out_classes.append(cls)
        out_conf.append(len(entries))
        confirmed_members.update(e[2] for e in entries)
    order = sorted(
        range(len(out_scores)), key=lambda i: (-out_scores[i], out_classes[i], tuple(out_boxes[i]))
    )
    boxes_arr = np.asarray([out_boxes[i] for i in order], dtype=np.float32).reshape(-1, 4)
    outputs: dict[str, np.ndarray] = {
        spec.output: boxes_arr,
        spec.scores_output: np.asarray([out_scores[i] for i in order], dtype=np.float32),
        spec.classes_output: np.asarray([out_classes[i] for i in order], dtype=np.int64),
        "confirmations": np.asarray([out_conf[i] for i in order], dtype=np.int64),
    }
    unconfirmed = sum(1 for _c, _s, e in clusters if len(e) < k)
    total = len(clusters)
    agreement = 1.0 if total == 0 else (total - unconfirmed) / total
    return Vote(
        ok=True,
        outputs=outputs,
        backers=tuple(names[i] for i in sorted(confirmed_members)),
        dissenters=(),
        agreement=agreement,
    )


def vote(members: Mapping[str, Outputs], spec: VoterSpec, *, quorum: int = 1) -> Vote:
    """Dispatch to the voter named by ``spec.kind``; fail when fewer than ``quorum`` answered.

    A member's other outputs (a multi-output model) are not dropped: the median and
    mid-value voters fuse every float output the backers share the same way as the voted
    one; the other voters take them from the backer whose voted output is closest to the
    result (ties broken by value, never by name).
    """
    if len(members) < quorum:
        return Vote(ok=False, reason=f"{len(members)} member(s) answered, quorum is {quorum}")
    if spec.kind in (VoterKind.PLURALITY, VoterKind.MAJORITY, VoterKind.SOFT):
        return _complete(vote_classification(members, spec), members, spec)
    if spec.kind in (VoterKind.MEDIAN, VoterKind.MID_VALUE):
        return _complete(vote_regression(members, spec, quorum=quorum), members, spec)
    if spec.kind is VoterKind.PASSTHROUGH:
        return vote_passthrough(members)
    return _complete(vote_detection(members, spec), members, spec)


def _closeness(outputs: Outputs, result: Outputs, voted: str) -> tuple[float, bytes]:
    """Sort key of a backer: how close its voted output is to the result, then its values
    (never its name, so the choice is invariant under permutation of the members)."""
    mine, theirs = outputs.get(voted), result.get(voted)
    dist = 0.0
    if mine is not None and theirs is not None and np.shape(mine) == np.shape(theirs):
        with np.errstate(invalid="ignore"):
            diff = np.abs(np.asarray(mine, np.float64) - np.asarray(theirs, np.float64))
        dist = float(np.nansum(diff))
    return dist, b"".join(np.ascontiguousarray(outputs[k]).tobytes() for k in sorted(outputs))


def _complete(v: Vote, members: Mapping[str, Outputs], spec: VoterSpec) -> Vote:
    """``v`` with the outputs the voter did not decide on, from its backers."""
    if not v.ok or not members:
        return v
    # no member backs every row (each row had its own majority): any answering member
    backers = sorted(v.backers) or sorted(members)
    first = members[min(backers, key=lambda b: _closeness(members[b], v.outputs, spec.output))]
    extra: dict[str, np.ndarray] = {}
    fuse = spec.kind in (VoterKind.MEDIAN, VoterKind.MID_VALUE)
    for name, value in first.items():
        if name in v.outputs:
            continue
        arrays = [np.asarray(members[b].get(name)) for b in backers if name in members[b]]
        if (
            fuse
            and len(arrays) == len(backers)
            and np.issubdtype(arrays[0].dtype, np.floating)
            and all(a.shape == arrays[0].shape for a in arrays)
        ):
            fused = _mid_value(arrays) if spec.kind is VoterKind.MID_VALUE else _median(arrays)
            extra[name] = np.asarray(fused, dtype=arrays[0].dtype)
        else:
            extra[name] = np.asarray(value)
    if not extra:
        return v
    ordered = {n: v.outputs[n] if n in v.outputs else extra[n] for n in first}
    ordered.update((n, a) for n, a in v.outputs.items() if n not in ordered)
    return Vote(
        ok=v.ok,
        outputs=ordered,
        backers=v.backers,
        dissenters=v.dissenters,
        agreement=v.agreement,
        reason=v.reason,
    )


def vote_passthrough(members: Mapping[str, Outputs]) -> Vote:
    """A single member's answer, every output unchanged (a one-model policy)."""
    if len(members) != 1:
        return Vote(ok=False, reason=f"passthrough needs one answer, got {len(members)}")
    ((name, outputs),) = members.items()
    return Vote(ok=True, outputs=dict(outputs), backers=(name,), agreement=1.0)


def required_outputs(spec: VoterSpec) -> Sequence[str]:
    """Names of the outputs the voter reads from every member."""
    if spec.kind is VoterKind.DETECTION:
        return (spec.output, spec.scores_output, spec.classes_output)
    if spec.kind is VoterKind.PASSTHROUGH:
        return ()
    return (spec.output,)

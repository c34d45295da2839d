"""The acceptance envelope of one input, derived from calibration statistics.

Layer: packaging (pure NumPy; no model, no I/O). ``docs/sanity.md``, "Calibration",
is the normative description; in short, per statistic and channel, with ``n``
calibration values and a two-sided tail ``a = target / (2k)`` for ``k`` checks per frame:

* the WARN band is the empirical ``[q(a), q(1 - a)]``, each side stretched away from
  the median by how far a sample of ``n`` values under-reaches the ``a`` tail
  (:func:`extrapolation`: 1 for large ``n``, about 2.2 for 20 frames), so few frames
  give a wider band, never a narrower one;
* the band is never narrower than the statistic's *floor*: a width tied to the
  data's resolution (the smallest step between its values) and span, so a statistic
  that is constant over the calibration frames (a crop that always holds a black
  pixel) does not become a needle that any other clean frame misses;
* the REJECT limits widen the band by ``margin`` times its width on each side, except
  where the value range decides: a frame whose ``min`` lies below the range (or
  ``max`` above it) by more than a small tolerance holds values the input never takes
  (noise, a wrong offset or scale), while a frame without black or white pixels is
  normal; a never-negative statistic of contrast or texture (``std``, ``hf``) is
  rejected only below 0.15 times its smallest calibration value, so a dead, constant
  or scaled-down frame is caught and a foggy or dark one is not, and ``tdiff``'s
  lower REJECT limit is a hair above zero: only an (almost) exact repeat is a frozen
  frame, a slow pan or a static scene is not.

:func:`fold_rejections` estimates the clean false-reject rate of the procedure by
K-fold cross-validation over the calibration frames.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from edgeguard.policy.sanity import StatLimits

__all__ = [
    "EnvelopeParams",
    "FloorInfo",
    "derive_limits",
    "extrapolation",
    "fold_rejections",
    "frames_rejected",
    "wilson_interval",
]

F64 = npt.NDArray[np.float64]

#: Statistics measured in the input's value units (their floors scale with its span).
VALUE_STATS = frozenset({"min", "max", "mean", "std", "tdiff"})
#: Statistics that are never negative (their band stops at 0).
_NONNEG_STATS = frozenset({"std", "sat_lo", "sat_hi", "hf", "tdiff"})
#: Never-negative statistics whose exact zero is a fault (constant or dead frames).
_POSITIVE_STATS = frozenset({"std", "hf"})
#: Minimum WARN width per statistic: a fraction of the span (``min``/``max`` also at
#: least ``_FLOOR_STEPS`` quantisation steps), or an absolute width for the statistics
#: that are fractions or ratios.
_FLOOR_SPAN = {"min": 0.10, "max": 0.10, "mean": 0.02, "std": 0.02, "tdiff": 0.02}
_FLOOR_STEPS = 2.0
_FLOOR_ABS = {"sat_lo": 0.20, "sat_hi": 0.20, "hf": 0.02}
#: A positive statistic (contrast, texture) is a fault only far below anything the
#: calibration saw: a dead or constant frame, a signal scaled down by orders of
#: magnitude; fog, night and plain walls have a fraction of the usual contrast.
_POSITIVE_FLOOR = 0.15
#: tdiff below this fraction of the span (times the resolution floor) is a repeated frame.
_FROZEN = 1e-6


@dataclass(frozen=True)
class EnvelopeParams:
    """What the derivation needs besides the values.

    Attributes:
        tail: Two-sided tail probability per check, ``target / (2k)``.
        margin: REJECT widening, a multiple of the WARN width on each side.
        value_range: The range the input's values keep to (``sat_lo, sat_hi``: the
            calibration data's range, the dtype's, or as declared).
        resolution: The smallest step between the input's values (per channel).
    """

    tail: float
    margin: float
    value_range: tuple[float, float]
    resolution: tuple[float, ...]

    @property
    def span(self) -> float:
        """Width of the value range."""
        return self.value_range[1] - self.value_range[0]

    def range_tolerance(self, channel: int) -> float:
        """How far beyond its value range an input may reach before that is a fault."""
        res = self.resolution[min(channel, len(self.resolution) - 1)]
        return max(0.02 * self.span, res)


@dataclass(frozen=True)
class FloorInfo:
    """How one statistic's band came about, per channel (for the calibration report)."""

    stat: str
    floored: tuple[bool, ...]
    constant: tuple[bool, ...]
    width: tuple[float, ...]


def extrapolation(n: int, tail: float) -> float:
    """How far beyond the sample's own extremes the ``tail`` quantiles are expected to lie.

    With ``n`` values the empirical ``tail`` quantile of a small sample is about its
    extreme, which lies near the ``1 / (n + 1)`` quantile; for a normal-like statistic
    the ``tail`` quantile is ``z(1 - tail) / z(1 - 1 / (n + 1))`` times as far from the
    median. The factor is 1 once ``n`` is large enough to see the tail itself, and the
    band keeps the sample's skew (each side is scaled on its own).
    """
    if n < 2:
        return math.inf
    nd = NormalDist()
    seen = nd.inv_cdf(1.0 - 1.0 / (n + 1))
    want = nd.inv_cdf(1.0 - tail)
    return max(1.0, want / seen)


def _floor(stat: str, params: EnvelopeParams, channel: int) -> float:
    if stat in _FLOOR_ABS:
        return _FLOOR_ABS[stat]
    width = _FLOOR_SPAN[stat] * params.span
    if stat in ("min", "max"):  # single values: never finer than the data's steps
        width = max(
            width, _FLOOR_STEPS * params.resolution[min(channel, len(params.resolution) - 1)]
        )
    return width


def derive_limits(stat: str, values: F64, params: EnvelopeParams) -> tuple[StatLimits, FloorInfo]:
    """Limits of one statistic from its calibration values ``[frames, C]`` (NaN ignored).

    Returns:
        The limits (unbounded on a channel without a finite value) and how they came about.
    """
    wl: list[float] = []
    wh: list[float] = []
    rl: list[float] = []
    rh: list[float] = []
    floored, constant, width = [], [], []
    for c in range(values.shape[1]):
        v = values[:, c]
        v = v[np.isfinite(v)]
        if v.size == 0:
            wl.append(-math.inf)
            wh.append(math.inf)
            rl.append(-math.inf)
            rh.append(math.inf)
            floored.append(False)
            constant.append(False)
            width.append(math.inf)
            continue
        q_lo, q_hi = (float(q) for q in np.quantile(v, [params.tail, 1.0 - params.tail]))
        med = float(np.median(v))
        f = extrapolation(int(v.size), params.tail)
        lo, hi = med - f * (med - q_lo), med + f * (q_hi - med)
        if stat in _NONNEG_STATS:
            lo = max(lo, 0.0)
        floor = _floor(stat, params, c)
        is_floored = hi - lo < floor
        if is_floored:
            centre = 0.5 * (lo + hi)
            lo, hi = centre - 0.5 * floor, centre + 0.5 * floor
        pad = params.margin * (hi - lo)
        low, high = lo - pad, hi + pad
        data_lo = float(v.min())
        if stat in _POSITIVE_STATS and data_lo > 0:
            floor_low = _POSITIVE_FLOOR * data_lo
            low = low if 0.0 < low < floor_low else floor_low
            lo = max(lo, low)
        tol = params.range_tolerance(c)
        if stat == "min":  # below the range is a fault; a crop without black is not
            low, high = params.value_range[0] - tol, max(high, params.value_range[1] + tol)
            lo = max(lo, low)
        elif stat == "max":  # above the range is a fault; a crop without white is not
            low, high = min(low, params.value_range[0] - tol), params.value_range[1] + tol
            hi = min(hi, high)
        if stat == "tdiff":
            # only an (almost) exact repeat is a frozen frame, unless the calibration
            # stream itself repeats frames
            frozen = _FROZEN * params.span
            if data_lo > frozen:
                low = frozen
                lo = max(lo, frozen)
        wl.append(lo)
        wh.append(hi)
        rl.append(low)
        rh.append(high)
        floored.append(is_floored)
        constant.append(bool(v.max() == v.min()))
        width.append(hi - lo)
    limits = StatLimits(
        stat=stat,
        warn_low=tuple(wl),
        warn_high=tuple(wh),
        reject_low=tuple(rl),
        reject_high=tuple(rh),
    )
    return limits, FloorInfo(stat, tuple(floored), tuple(constant), tuple(width))


def frames_rejected(
    limits: Sequence[StatLimits], values: Mapping[str, F64]
) -> npt.NDArray[np.bool_]:
    """Per frame: does any statistic of any channel fall outside its REJECT limits?

    ``values[stat]`` is ``[frames, C]``; every statistic must have the same frame count.
    """
    out: npt.NDArray[np.bool_] | None = None
    for lim in limits:
        v = values.get(lim.stat)
        if v is None:
            continue
        lo = np.asarray(lim.reject_low)
        hi = np.asarray(lim.reject_high)
        with np.errstate(invalid="ignore"):
            bad: npt.NDArray[np.bool_] = np.asarray(((v < lo) | (v > hi)).any(axis=1))
        out = bad if out is None else out | bad
    if out is None:
        return np.zeros(0, dtype=bool)
    return out


def fold_rejections(
    values: Mapping[str, F64],
    params: EnvelopeParams,
    *,
    folds: int = 5,
    seed: int = 0,
) -> npt.NDArray[np.bool_]:
    """K-fold cross-validation of :func:`derive_limits` over the calibration frames.

    Args:
        values: Statistic -> ``[frames, C]``, one row per calibration frame (``tdiff`` of
            the frame against its predecessor or a moved copy of itself).
        params: The derivation parameters.
        folds: Number of folds (at most the frame count).
        seed: Seed of the fold assignment.

    Returns:
        Per frame, whether the envelope derived without its fold rejects it.
    """
    n = min(v.shape[0] for v in values.values())
    k = max(2, min(folds, n))
    order = np.random.default_rng(seed).permutation(n)
    out = np.zeros(n, dtype=bool)
    for f in range(k):
        test = order[f::k]
        train = np.setdiff1d(order, test)
        if train.size < 2 or test.size == 0:
            continue
        limits = [derive_limits(stat, v[train], params)[0] for stat, v in values.items()]
        out[test] = frames_rejected(limits, {s: v[test] for s, v in values.items()})
    return out


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n``."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact ends: none rejected starts at 0, all rejected ends at 1 (no rounding residue)
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi

"""Compiled helpers of the guard's checks: the envelope test and the non-finite count.

Layer: :mod:`edgeguard.guard`. Private to :mod:`edgeguard.guard.sanity._cpu`.
``env_inside`` is the guard's "every statistic inside its envelope" test
(``check.SanityGuard``): one compiled call instead of a dozen NumPy calls, which
cost tens of microseconds each when inference has just evicted the
interpreter's working set from the caches. ``nonfinite_count`` counts NaN and
infinite values of a float array.
"""

# numba compiles these functions from their unannotated source.
# mypy: disable-error-code="no-untyped-def"

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["env_inside", "nonfinite_count"]


@njit(cache=True, nogil=True)
def env_inside(vals, codes, lo, hi, nan, posinf, neginf, count, allow_nonfinite):
    # vals: the statistics in ENVELOPE_STATS order, each [N, C]; limit row l applies
    # to vals[codes[l]] (rows with a negative code are skipped). lo, hi [L, C]. NaN
    # statistics (undefined here) compare False: inside.
    if not allow_nonfinite:
        for n in range(nan.shape[0]):
            if nan[n] != 0 or posinf[n] != 0 or neginf[n] != 0:
                return False
    for n in range(count.shape[0]):
        for c in range(count.shape[1]):
            if count[n, c] == 0:
                return False
    for ell in range(codes.shape[0]):
        k = codes[ell]
        if k < 0:
            continue
        v = vals[k]
        if v.shape[1] != lo.shape[1]:
            return False
        for n in range(v.shape[0]):
            for c in range(v.shape[1]):
                if v[n, c] < lo[ell, c] or v[n, c] > hi[ell, c]:
                    return False
    return True


@njit(fastmath={"reassoc"}, cache=True, nogil=True)
def nonfinite_count(flat):
    # NaN / +-inf values of a float array (1-D, C). First one vectorised pass: v - v is
    # 0 for a finite v and NaN otherwise (reassoc only lets the sum be vectorised; it
    # does not fold v - v away); the exact count only when that sum is not 0.
    s = flat.dtype.type(0.0)
    for i in range(flat.size):
        s += flat[i] - flat[i]
    if s == 0.0:
        return 0
    bad = 0
    for i in range(flat.size):
        if not abs(flat[i]) < np.inf:
            bad += 1
    return bad

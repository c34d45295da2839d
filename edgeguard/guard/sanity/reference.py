"""NumPy reference implementation (the oracle) of the one-pass sanity statistics.

Layer: :mod:`edgeguard.guard`. Kept deliberately simple: a loop over frames
and channels, exact conversion to float64, two-pass mean and variance. It is
slow; every other implementation is tested against it on the golden vectors
(``tests/vectors/sanity/``) and on random inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from edgeguard.guard.sanity.layout import frames_view, hf_eps, resolve_stats_args
from edgeguard.guard.sanity.spec import FrameStats

__all__ = ["reference_stats"]


def reference_stats(
    x: npt.NDArray[Any],
    *,
    layout: str = "NCHW",
    sat_lo: float | None = None,
    sat_hi: float | None = None,
    prev: npt.NDArray[Any] | None = None,
) -> FrameStats:
    """Compute the sanity statistics of ``x`` with plain NumPy.

    Args:
        x: Input tensor (float32, float16, uint8 or float64; rank 2, 3 or 4).
        layout: "NCHW" or "NHWC".
        sat_lo: Low saturation level (default 0).
        sat_hi: High saturation level (default 255 for uint8, else 1).
        prev: Previous frame batch of the same shape and dtype, for ``tdiff``.

    Returns:
        The statistics.

    Raises:
        UsageError: Invalid arguments (see ``resolve_stats_args``).
    """
    lo, hi = resolve_stats_args(x, layout, sat_lo, sat_hi, prev)
    eps = hf_eps(lo, hi)
    f = frames_view(x, layout).astype(np.float64)  # exact for every supported dtype
    p = None if prev is None else frames_view(prev, layout).astype(np.float64)
    n_frames, channels = f.shape[0], f.shape[1]

    nan = np.zeros(n_frames, dtype=np.int64)
    posinf = np.zeros(n_frames, dtype=np.int64)
    neginf = np.zeros(n_frames, dtype=np.int64)
    count = np.zeros((n_frames, channels), dtype=np.int64)
    shape2 = (n_frames, channels)
    mn = np.full(shape2, np.inf)
    mx = np.full(shape2, -np.inf)
    mean = np.full(shape2, np.nan)
    std = np.full(shape2, np.nan)
    slo = np.zeros(shape2)
    shi = np.zeros(shape2)
    hf = np.zeros(shape2)
    tdiff = None if p is None else np.full(shape2, np.nan)

    with np.errstate(invalid="ignore", over="ignore"):
        for n in range(n_frames):
            frame = f[n]
            nan[n] = int(np.isnan(frame).sum())
            posinf[n] = int(np.isposinf(frame).sum())
            neginf[n] = int(np.isneginf(frame).sum())
            for c in range(channels):
                a = frame[c]  # [H, W]
                fin = np.isfinite(a)
                v = a[fin]
                k = int(v.size)
                count[n, c] = k
                if k:
                    mn[n, c] = v.min()
                    mx[n, c] = v.max()
                    m = v.sum() / k
                    d = v - m
                    m = m + d.sum() / k  # second-pass correction
                    mean[n, c] = m
                    std[n, c] = np.sqrt(((v - m) ** 2).sum() / k)
                    slo[n, c] = float((v <= lo).sum()) / k
                    shi[n, c] = float((v >= hi).sum()) / k
                    pair = fin[:, 1:] & fin[:, :-1]
                    npairs = int(pair.sum())
                    if npairs:
                        diff = np.abs(a[:, 1:] - a[:, :-1])[pair]
                        hf[n, c] = (diff.sum() / npairs) / (std[n, c] + eps)
                if p is not None and tdiff is not None:
                    b = p[n, c]
                    both = fin & np.isfinite(b)
                    nb = int(both.sum())
                    if nb:
                        tdiff[n, c] = np.abs(a - b)[both].sum() / nb
    return FrameStats(
        layout=layout,
        sat_lo_level=lo,
        sat_hi_level=hi,
        nan=nan,
        posinf=posinf,
        neginf=neginf,
        count=count,
        min=mn,
        max=mx,
        mean=mean,
        std=std,
        sat_lo=slo,
        sat_hi=shi,
        hf=hf,
        tdiff=tdiff,
    )

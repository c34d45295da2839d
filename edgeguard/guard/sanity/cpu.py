"""Numba CPU implementation of the one-pass sanity statistics (the default on hosts).

Layer: :mod:`edgeguard.guard`. numba is imported lazily at first use through
:func:`edgeguard._optional.require`.

Design: the ``[N, C, H, W]`` frames view is cut into work items (frame, block
of rows); ``prange`` runs the items in parallel. An item reads its rows once
per channel (for NHWC the rows of the other channels are then in L1/L2) and
keeps per-channel partial accumulators in float64: count, shift (the first
finite value the item saw), shifted sums ``sum(x - shift)`` and
``sum((x - shift)^2)``, min, max, saturation counts, horizontal-difference
and temporal-difference sums. The partials of a frame's items are then merged
with Chan's parallel formula. float16 input is widened to float32 first
(exact); uint8 and float32 are read as they are and widened per element.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeguard._optional import require
from edgeguard.guard.sanity.layout import hf_eps, resolve_stats_args
from edgeguard.guard.sanity.spec import FrameStats

__all__ = ["NACC", "NKEY", "as_kernel_input", "merge_partials", "numba_stats", "plan_blocks"]

#: Float64 accumulators per (item, channel): count, shift, s1, s2, sat_lo, sat_hi,
#: hf sum, hf pairs, tdiff sum, tdiff pairs.
NACC = 10
#: Integer accumulators per (item, channel): min key, max key (order-preserving bit keys).
NKEY = 2
A_CNT, A_SHIFT, A_S1, A_S2, A_SLO, A_SHI, A_HS, A_HC, A_TS, A_TC = range(NACC)
#: Kinds of input the kernels distinguish (how min/max keys map back to values).
KIND_U8, KIND_F32, KIND_F64 = 0, 1, 2


def plan_blocks(n_frames: int, height: int, workers: int) -> int:
    """Row blocks per frame so that there are at least ``4 * workers`` items in all."""
    if height <= 0:
        return 1
    want = max(1, math.ceil(4 * workers / max(n_frames, 1)))
    # Keep blocks at least 8 rows high unless the frame is smaller.
    return max(1, min(want, max(1, height // 8)))


def _kind(dtype: np.dtype[Any]) -> int:
    if dtype == np.uint8:
        return KIND_U8
    return KIND_F32 if dtype == np.float32 else KIND_F64


def _kernels() -> tuple[Callable[..., None], Callable[..., None], Callable[..., None]]:
    require("numba", extra="numba", purpose="The Numba CPU sanity kernel")
    from edgeguard.guard.sanity import _cpu_kernels as k

    return k.partials_float, k.partials_u8, k.merge


def merge_partials(
    part: npt.NDArray[np.float64],
    kpart: npt.NDArray[np.int64],
    fcnt: npt.NDArray[np.int64],
    nb: int,
    n_frames: int,
    *,
    kind: int,
    layout: str,
    lo: float,
    hi: float,
    has_prev: bool,
) -> FrameStats:
    """Merge per-item partials into :class:`FrameStats` (Chan's formula for mean/variance).

    Args:
        part: Float accumulators ``[N * nb, C, NACC]``.
        kpart: Min/max keys ``[N * nb, C, NKEY]``.
        fcnt: NaN, +inf, -inf counts ``[N * nb, 3]``.
        nb: Items (row blocks) per frame.
        n_frames: N.
        kind: KIND_U8, KIND_F32 or KIND_F64 (how keys map back to values).
        layout: Layout name to record.
        lo: Low saturation level.
        hi: High saturation level.
        has_prev: Whether tdiff was accumulated.

    Shared with the Numba CUDA implementation, whose blocks produce the same partials.
    """
    _, _, merge = _kernels()
    channels = part.shape[1]
    out = np.empty((n_frames, channels, 9), dtype=np.float64)
    merge(part, kpart, nb, kind, hf_eps(lo, hi), out)
    nff = fcnt.reshape(n_frames, nb, 3).sum(axis=1)
    return FrameStats(
        layout=layout,
        sat_lo_level=lo,
        sat_hi_level=hi,
        nan=nff[:, 0].copy(),
        posinf=nff[:, 1].copy(),
        neginf=nff[:, 2].copy(),
        count=out[..., 0].astype(np.int64),
        min=out[..., 1].copy(),
        max=out[..., 2].copy(),
        mean=out[..., 3].copy(),
        std=out[..., 4].copy(),
        sat_lo=out[..., 5].copy(),
        sat_hi=out[..., 6].copy(),
        hf=out[..., 7].copy(),
        tdiff=out[..., 8].copy() if has_prev else None,
    )


def as_kernel_input(x: npt.NDArray[Any], layout: str) -> tuple[npt.NDArray[Any], bool]:
    """C-contiguous rank-4 array in its memory order, and whether it is NHWC."""
    if x.dtype == np.float16:  # exact widening; numba has no CPU float16 arithmetic
        x = x.astype(np.float32)
    x = np.ascontiguousarray(x)
    if x.ndim == 2:
        return x.reshape(x.shape[0], 1, 1, x.shape[1]), False
    if x.ndim == 3:
        x = x[None]
    return x, layout == "NHWC"


def numba_stats(
    x: npt.NDArray[Any],
    *,
    layout: str = "NCHW",
    sat_lo: float | None = None,
    sat_hi: float | None = None,
    prev: npt.NDArray[Any] | None = None,
) -> FrameStats:
    """Compute the sanity statistics with the fused Numba CPU kernel.

    Same arguments, result and errors as
    :func:`~edgeguard.guard.sanity.reference.reference_stats`.

    Raises:
        UsageError: Invalid arguments.
        MissingDependencyError: numba is not installed.
    """
    lo, hi = resolve_stats_args(x, layout, sat_lo, sat_hi, prev)
    numba = require("numba", extra="numba", purpose="The Numba CPU sanity kernel")
    partials_float, partials_u8, _ = _kernels()
    kx, nhwc = as_kernel_input(x, layout)
    kp = kx if prev is None else as_kernel_input(prev, layout)[0]
    if nhwc:
        n_frames, height, width, channels = kx.shape
    else:
        n_frames, channels, height, width = kx.shape
    nb = plan_blocks(n_frames, height, int(numba.get_num_threads()))
    rows = max(1, math.ceil(height / nb)) if height > 0 else 1
    items = n_frames * nb
    part = np.zeros((items, channels, NACC), dtype=np.float64)
    kpart = np.zeros((items, channels, NKEY), dtype=np.int64)
    fcnt = np.zeros((items, 3), dtype=np.int64)
    kind = _kind(kx.dtype)
    if items and width > 0:
        if kind == KIND_U8:
            lo_i = int(min(max(math.floor(lo), -1), 256))
            hi_i = int(min(max(math.ceil(hi), -1), 256))
            partials_u8(kx, kp, nhwc, prev is not None, lo_i, hi_i, nb, rows, part, kpart, fcnt)
        else:
            ik = np.int32 if kind == KIND_F32 else np.int64
            maxkey = ik(np.iinfo(ik).max)
            minkey = ik(np.iinfo(ik).min)
            partials_float(
                kx,
                kx.view(ik),
                kp,
                nhwc,
                prev is not None,
                lo,
                hi,
                nb,
                rows,
                part,
                kpart,
                fcnt,
                maxkey,
                minkey,
                ik(31 if kind == KIND_F32 else 63),
            )
    return merge_partials(
        part,
        kpart,
        fcnt,
        nb,
        n_frames,
        kind=kind,
        layout=layout,
        lo=lo,
        hi=hi,
        has_prev=prev is not None,
    )

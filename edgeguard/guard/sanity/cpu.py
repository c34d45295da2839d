"""Numba CPU implementation of the one-pass sanity statistics (the default on hosts).

Layer: :mod:`edgeguard.guard`. numba is imported lazily at first use through
:func:`edgeguard._optional.require`.

Design: the ``[N, C, H, W]`` frames view is cut into work items (frame, block
of rows); ``prange`` runs the items in parallel (tensors of at most
:data:`SERIAL_MAX_ELEMENTS` elements run in the calling thread, one item per
frame). An item reads each row once from memory (NHWC rows are de-interleaved
into an L1-resident ``[C, W]`` buffer) and keeps per-channel partials:

* float input: float64 count, shift (the first finite value the item saw),
  shifted sums ``sum(x - shift)`` and ``sum((x - shift)^2)``, saturation counts,
  horizontal- and temporal-difference sums, and float min/max. Each row segment
  runs a branch-free vectorised loop; only a segment that turns out to hold a
  non-finite value is read again (from L1) by a careful scalar loop. The items
  of a frame are merged with Chan's parallel formula.
* uint8 input: exact int64 sums of ``x`` and ``x^2``, counts, min/max and the
  absolute-difference sums; mean and variance come from the exact integer
  moments at the end.

The whole computation, partials and merge, is one compiled call. float16 input
is widened to float32 first (exact). The kernels are in the ``_cpu`` package.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeguard._optional import require
from edgeguard.errors import UsageError
from edgeguard.guard.sanity._kernel_layout import (
    FC_NAN,
    FC_NEGINF,
    FC_POSINF,
    KIND_F32,
    KIND_F64,
    KIND_U8,
    NACC,
    NFC,
    NKEY,
    NREC,
    O_HF,
    O_MAX,
    O_MEAN,
    O_MIN,
    O_SHI,
    O_SLO,
    O_STD,
    O_TD,
    R_CNT,
    R_HF,
    R_MAX,
    R_MEAN,
    R_MIN,
    R_SHI,
    R_SLO,
    R_STD,
    R_TD,
)
from edgeguard.guard.sanity.layout import hf_eps, resolve_stats_args
from edgeguard.guard.sanity.spec import FrameStats

__all__ = [
    "KIND_F32",
    "KIND_F64",
    "KIND_U8",
    "NACC",
    "NKEY",
    "SERIAL_MAX_ELEMENTS",
    "as_kernel_input",
    "merge_partials",
    "numba_stats",
    "plan_blocks",
    "sat_bounds_f32",
]

#: Tensors with at most this many elements run serially in the calling thread: below
#: it the parallel launch costs more than it saves (measured, see docs/sanity.md).
SERIAL_MAX_ELEMENTS = 8192


def plan_blocks(n_frames: int, height: int, workers: int) -> int:
    """Row blocks per frame so that there are at least ``4 * workers`` items in all."""
    if height <= 0:
        return 1
    want = max(1, math.ceil(4 * workers / max(n_frames, 1)))
    # Keep blocks at least 8 rows high unless the frame is smaller.
    return max(1, min(want, max(1, height // 8)))


_KMOD: Any = None
_ONE64 = np.float64(1.0)


def _kmod() -> Any:
    """The compiled-kernel module, imported once (numba is checked on first use)."""
    global _KMOD
    if _KMOD is None:
        require("numba", extra="numba", purpose="The Numba CPU sanity kernel")
        from edgeguard.guard.sanity import _cpu

        _KMOD = _cpu
    return _KMOD


_DEFAULT_LEVELS: dict[np.dtype[Any], tuple[float, float]] = {
    np.dtype(np.uint8): (0.0, 255.0),
    np.dtype(np.float16): (0.0, 1.0),
    np.dtype(np.float32): (0.0, 1.0),
    np.dtype(np.float64): (0.0, 1.0),
}


def _stats_args(x: Any, layout: str, sat_lo: Any, sat_hi: Any, prev: Any) -> tuple[float, float]:
    """:func:`resolve_stats_args` with a shortcut for the common, valid call.

    The shortcut accepts only what ``resolve_stats_args`` accepts (exact ndarray
    of a supported dtype and rank, known layout, matching ``prev``, levels None or
    Python floats, finite, lo < hi); anything else goes through
    ``resolve_stats_args``, which raises the errors.
    """
    if (
        type(x) is np.ndarray
        and (layout == "NCHW" or layout == "NHWC")
        and 2 <= x.ndim <= 4
        and (
            prev is None
            or (type(prev) is np.ndarray and prev.shape == x.shape and prev.dtype == x.dtype)
        )
    ):
        levels = _DEFAULT_LEVELS.get(x.dtype)
        if levels is not None:
            lo = levels[0] if sat_lo is None else sat_lo
            hi = levels[1] if sat_hi is None else sat_hi
            if (
                type(lo) is float
                and type(hi) is float
                and math.isfinite(lo)
                and math.isfinite(hi)
                and lo < hi
            ):
                return lo, hi
    return resolve_stats_args(x, layout, sat_lo, sat_hi, prev)


def _threads() -> int:
    numba = require("numba", extra="numba", purpose="The Numba CPU sanity kernel")
    return int(numba.get_num_threads())


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
        fcnt: NaN, +inf, -inf counts ``[N * nb, NFC]``.
        nb: Items (row blocks) per frame.
        n_frames: N.
        kind: KIND_U8, KIND_F32 or KIND_F64 (how keys map back to values).
        layout: Layout name to record.
        lo: Low saturation level.
        hi: High saturation level.
        has_prev: Whether tdiff was accumulated.

    Shared with the Numba CUDA implementation, whose blocks produce the same partials.
    """
    merge = _kmod().merge
    channels = part.shape[1]
    out = np.empty((n_frames, channels, NREC), dtype=np.float64)
    merge(part, kpart, nb, kind, hf_eps(lo, hi), out)
    nff = fcnt.reshape(n_frames, nb, NFC).sum(axis=1)
    return FrameStats(
        layout=layout,
        sat_lo_level=lo,
        sat_hi_level=hi,
        nan=nff[:, FC_NAN].copy(),
        posinf=nff[:, FC_POSINF].copy(),
        neginf=nff[:, FC_NEGINF].copy(),
        count=out[..., R_CNT].astype(np.int64),
        min=out[..., R_MIN].copy(),
        max=out[..., R_MAX].copy(),
        mean=out[..., R_MEAN].copy(),
        std=out[..., R_STD].copy(),
        sat_lo=out[..., R_SLO].copy(),
        sat_hi=out[..., R_SHI].copy(),
        hf=out[..., R_HF].copy(),
        tdiff=out[..., R_TD].copy() if has_prev else None,
    )


def as_kernel_input(x: npt.NDArray[Any], layout: str) -> tuple[npt.NDArray[Any], bool]:
    """C-contiguous rank-4 array in its memory order, and whether it is NHWC."""
    if x.dtype == np.float16:  # exact widening; numba has no CPU float16 arithmetic
        x = x.astype(np.float32)
    elif not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    if x.ndim == 2:
        return x.reshape(x.shape[0], 1, 1, x.shape[1]), False
    if x.ndim == 3:
        x = x[None]
    if layout == "NHWC" and x.shape[3] == 1:  # one channel: same memory as NCHW
        return x.reshape(x.shape[0], 1, x.shape[1], x.shape[2]), False
    return x, layout == "NHWC"


@functools.lru_cache(maxsize=64)
def sat_bounds_f32(lo: float, hi: float) -> tuple[np.float32, np.float32]:
    """float32 saturation bounds equivalent to the float64 levels for float32 values.

    For a float32 ``v``: ``v <= lo`` iff ``v <= lo32`` with ``lo32`` the largest
    float32 not above ``lo``, and ``v >= hi`` iff ``v >= hi32`` with ``hi32`` the
    smallest float32 not below ``hi``, so the kernel compares in float32 exactly.
    """
    with np.errstate(over="ignore"):
        lo32 = np.float32(lo)
        hi32 = np.float32(hi)
    if float(lo32) > lo:
        lo32 = np.nextafter(lo32, np.float32(-np.inf))
    if float(hi32) < hi:
        hi32 = np.nextafter(hi32, np.float32(np.inf))
    return lo32, hi32


def _int_level(level: float, *, upper: bool) -> int:
    """Integer saturation level for uint8 values: ``v <= lo`` iff ``v <= floor(lo)``."""
    v = math.ceil(level) if upper else math.floor(level)
    return min(max(v, -1), 256)


def numba_stats(
    x: npt.NDArray[Any],
    *,
    layout: str = "NCHW",
    sat_lo: float | None = None,
    sat_hi: float | None = None,
    prev: npt.NDArray[Any] | None = None,
    serial: bool | None = None,
    simd: bool | None = None,
) -> FrameStats:
    """Compute the sanity statistics with the fused Numba CPU kernel.

    Same arguments, result and errors as
    :func:`~edgeguard.guard.sanity.reference.reference_stats`. Tensors with at
    most :data:`SERIAL_MAX_ELEMENTS` elements run in the calling thread (no
    parallel launch); larger ones are split into (frame, row block) work items
    run in parallel. ``serial=True`` forces the calling thread, ``False`` the
    parallel path. ``simd`` chooses the uint8 loop: ``None`` takes the AVX-512
    (BW + VNNI) loop where the CPU has it and the portable integer loop elsewhere,
    ``False`` forces the portable loop, ``True`` requires the SIMD loop. Both give
    identical results; other dtypes ignore it.

    Raises:
        UsageError: Invalid arguments.
        MissingDependencyError: numba is not installed.
    """
    lo, hi = _stats_args(x, layout, sat_lo, sat_hi, prev)
    k = _kmod()
    kx, nhwc = as_kernel_input(x, layout)
    has_prev = prev is not None
    kp = as_kernel_input(prev, layout)[0] if prev is not None else kx
    eps = hf_eps(lo, hi)
    shape = kx.shape
    height = shape[1] if nhwc else shape[2]
    if serial is None:
        serial = kx.size <= SERIAL_MAX_ELEMENTS
    blk, pf = k.BLOCK, k.PF_BLOCKS  # passed explicitly: numba's default-argument path is slow
    if not serial:
        nb = plan_blocks(shape[0], height, _threads())
        rows = max(1, -(-height // nb)) if height > 0 else 1
    if kx.dtype == np.uint8:
        lo_i = np.int32(_int_level(lo, upper=False))
        hi_i = np.int32(_int_level(hi, upper=True))
        if simd is None:
            simd = k.U8_SIMD
        elif simd and not k.U8_SIMD:
            raise UsageError("simd=True: this CPU lacks AVX-512 BW + VNNI (the uint8 SIMD loop)")
        if serial:
            fo, count, ff = k.stats_u8_ser(kx, kp, nhwc, has_prev, lo_i, hi_i, eps, blk, pf, simd)
        else:
            fo, count, ff = k.stats_u8_par(
                kx, kp, nhwc, has_prev, lo_i, hi_i, nb, rows, eps, blk, pf, simd
            )
    elif kx.dtype == np.float32:
        lo_t, hi_t = sat_bounds_f32(lo, hi)
        if serial:
            fo, count, ff = k.stats_f32_ser(
                kx, kp, nhwc, has_prev, lo, hi, lo_t, hi_t, eps, k.BLOCK32
            )
        else:
            fo, count, ff = k.stats_f32_par(
                kx, kp, nhwc, has_prev, lo, hi, lo_t, hi_t, nb, rows, eps, k.BLOCK32
            )
    else:
        lo64, hi64 = np.float64(lo), np.float64(hi)
        if serial:
            fo, count, ff = k.stats_float_ser(
                kx, kp, nhwc, has_prev, lo, hi, lo64, hi64, _ONE64, eps, blk, pf
            )
        else:
            fo, count, ff = k.stats_float_par(
                kx, kp, nhwc, has_prev, lo, hi, lo64, hi64, _ONE64, nb, rows, eps, blk, pf
            )
    return FrameStats(
        layout=layout,
        sat_lo_level=lo,
        sat_hi_level=hi,
        nan=ff[FC_NAN],
        posinf=ff[FC_POSINF],
        neginf=ff[FC_NEGINF],
        count=count,
        min=fo[O_MIN],
        max=fo[O_MAX],
        mean=fo[O_MEAN],
        std=fo[O_STD],
        sat_lo=fo[O_SLO],
        sat_hi=fo[O_SHI],
        hf=fo[O_HF],
        tdiff=fo[O_TD] if has_prev else None,
    )


def count_nonfinite(arr: npt.NDArray[Any]) -> int:
    """Number of NaN / +-inf values in a float array (compiled for float32 / float64).

    One vectorised pass when every value is finite (the common case), a counting
    pass otherwise. Other dtypes go to NumPy.
    """
    if arr.dtype in (np.float32, np.float64):
        return int(_kmod().nonfinite_count(np.ascontiguousarray(arr).reshape(-1)))
    return int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))


def envelope_inside(
    vals: tuple[npt.NDArray[np.float64], ...],
    codes: npt.NDArray[np.int64],
    lo: npt.NDArray[np.float64],
    hi: npt.NDArray[np.float64],
    stats: FrameStats,
    allow_nonfinite: bool,
) -> bool:
    """Whether every statistic lies inside its limits (compiled; see check._Envelope).

    Args:
        vals: The statistics in ``ENVELOPE_STATS`` order, each float64 ``[N, C]``.
        codes: Per limit row, the index into ``vals`` (negative: skip the row).
        lo: Lower limits ``[L, C]``.
        hi: Upper limits ``[L, C]``.
        stats: The statistics (for the non-finite counts and the channel counts).
        allow_nonfinite: Whether NaN/inf values are tolerated.
    """
    return bool(
        _kmod().env_inside(
            vals, codes, lo, hi, stats.nan, stats.posinf, stats.neginf, stats.count, allow_nonfinite
        )
    )

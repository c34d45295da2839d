"""The compiled entry points: the parallel and serial drivers of each datapath.

Layer: :mod:`edgeguard.guard`. Private to :mod:`edgeguard.guard.sanity._cpu`.
``stats_*_par`` run the work items with ``prange``, ``stats_*_ser`` in a plain
loop (small tensors, where the parallel launch costs more than the work). Each
allocates the items' partials, runs the items of its datapath (:mod:`.f64`,
:mod:`.f32`, :mod:`.u8`) and merges them (:mod:`.merge`) in the same compiled
call, so a Python caller pays one dispatch. They live at module level with
``cache=True`` so that numba's on-disk cache keys them reliably.
"""

# numba compiles these functions from their unannotated source.
# mypy: disable-error-code="no-untyped-def"

from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgeguard.guard.sanity._cpu.common import fm
from edgeguard.guard.sanity._cpu.f32 import item_f32
from edgeguard.guard.sanity._cpu.f64 import item_float
from edgeguard.guard.sanity._cpu.merge import merge_float, merge_u8
from edgeguard.guard.sanity._cpu.u8 import item_u8
from edgeguard.guard.sanity._kernel_layout import (
    NACC,
    NFC,
    NKEY,
    NOUT,
    NUACC,
)

__all__ = [
    "stats_f32_par",
    "stats_f32_ser",
    "stats_float_par",
    "stats_float_ser",
    "stats_u8_par",
    "stats_u8_ser",
]


@njit(nogil=True)
def _float_setup(x, nhwc, nb):
    n_frames = x.shape[0]
    channels = x.shape[3] if nhwc else x.shape[1]
    items = n_frames * nb
    part = np.zeros((items, channels, NACC))
    mm = np.empty((items, channels, NKEY))
    fcnt = np.zeros((items, NFC), dtype=np.int64)
    fo = np.empty((NOUT, n_frames, channels))
    count = np.empty((n_frames, channels), dtype=np.int64)
    ff = np.empty((NFC, n_frames), dtype=np.int64)
    return part, mm, fcnt, fo, count, ff


@njit(parallel=True, fastmath=fm, cache=True, nogil=True)
def stats_float_par(x, px, nhwc, has_prev, lo, hi, lo_t, hi_t, one, nb, rows, eps, blk_len, pf):
    """Float statistics, work items in parallel: returns (fo [NOUT,N,C], count, ff [NFC,N])."""
    height = x.shape[1] if nhwc else x.shape[2]
    part, mm, fcnt, fo, count, ff = _float_setup(x, nhwc, nb)
    for it in prange(x.shape[0] * nb):
        n = it // nb
        r0 = (it % nb) * rows
        r1 = min(height, r0 + rows)
        item_float(
            x,
            px,
            nhwc,
            has_prev,
            lo,
            hi,
            lo_t,
            hi_t,
            one,
            n,
            r0,
            r1,
            part[it],
            mm[it],
            fcnt[it],
            blk_len,
            pf,
        )
    merge_float(part, mm, fcnt, nb, eps, fo, count, ff)
    return fo, count, ff


@njit(fastmath=fm, cache=True, nogil=True)
def stats_float_ser(x, px, nhwc, has_prev, lo, hi, lo_t, hi_t, one, eps, blk_len, pf):
    """Float statistics in one thread, one work item per frame (small tensors)."""
    height = x.shape[1] if nhwc else x.shape[2]
    part, mm, fcnt, fo, count, ff = _float_setup(x, nhwc, 1)
    for n in range(x.shape[0]):
        item_float(
            x,
            px,
            nhwc,
            has_prev,
            lo,
            hi,
            lo_t,
            hi_t,
            one,
            n,
            0,
            height,
            part[n],
            mm[n],
            fcnt[n],
            blk_len,
            pf,
        )
    merge_float(part, mm, fcnt, 1, eps, fo, count, ff)
    return fo, count, ff


@njit(nogil=True)
def _u8_setup(x, nhwc, nb):
    n_frames = x.shape[0]
    channels = x.shape[3] if nhwc else x.shape[1]
    part = np.zeros((n_frames * nb, channels, NUACC), dtype=np.int64)
    fo = np.empty((NOUT, n_frames, channels))
    count = np.empty((n_frames, channels), dtype=np.int64)
    ff = np.empty((NFC, n_frames), dtype=np.int64)
    return part, fo, count, ff


@njit(parallel=True, cache=True, nogil=True)
def stats_u8_par(x, px, nhwc, has_prev, lo_i, hi_i, nb, rows, eps, blk_len, pf, simd):
    """uint8 statistics, work items in parallel: returns (fo [NOUT,N,C], count, ff [NFC,N])."""
    height, width = (x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3])
    part, fo, count, ff = _u8_setup(x, nhwc, nb)
    for it in prange(x.shape[0] * nb):
        n = it // nb
        r0 = (it % nb) * rows
        r1 = min(height, r0 + rows)
        item_u8(x, px, nhwc, has_prev, lo_i, hi_i, n, r0, r1, part[it], blk_len, pf, simd)
    merge_u8(part, nb, height, width, has_prev, eps, fo, count, ff)
    return fo, count, ff


@njit(cache=True, nogil=True)
def stats_u8_ser(x, px, nhwc, has_prev, lo_i, hi_i, eps, blk_len, pf, simd):
    """uint8 statistics in one thread (small tensors)."""
    height, width = (x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3])
    part, fo, count, ff = _u8_setup(x, nhwc, 1)
    for n in range(x.shape[0]):
        item_u8(x, px, nhwc, has_prev, lo_i, hi_i, n, 0, height, part[n], blk_len, pf, simd)
    merge_u8(part, 1, height, width, has_prev, eps, fo, count, ff)
    return fo, count, ff


@njit(parallel=True, fastmath=fm, cache=True, nogil=True)
def stats_f32_par(x, px, nhwc, has_prev, lo, hi, lo_t, hi_t, nb, rows, eps, blk_len):
    """float32 statistics, work items in parallel: returns (fo [NOUT,N,C], count, ff [NFC,N]).

    Items: (frame, row block) for NHWC; (frame, channel, row block) for NCHW, so that
    every item reads one contiguous stream.
    """
    height = x.shape[1] if nhwc else x.shape[2]
    channels = x.shape[3] if nhwc else x.shape[1]
    per = nb if nhwc else nb * channels  # items per frame
    part, mm, fcnt, fo, count, ff = _float_setup(x, nhwc, per)
    for it in prange(x.shape[0] * per):
        n = it // per
        c = -1 if nhwc else (it // nb) % channels
        r0 = (it % nb) * rows
        r1 = min(height, r0 + rows)
        item_f32(
            x,
            px,
            nhwc,
            has_prev,
            lo,
            hi,
            lo_t,
            hi_t,
            n,
            c,
            r0,
            r1,
            part[it],
            mm[it],
            fcnt[it],
            blk_len,
        )
    merge_float(part, mm, fcnt, per, eps, fo, count, ff)
    return fo, count, ff


@njit(fastmath=fm, cache=True, nogil=True)
def stats_f32_ser(x, px, nhwc, has_prev, lo, hi, lo_t, hi_t, eps, blk_len):
    """float32 statistics in one thread (small tensors)."""
    height = x.shape[1] if nhwc else x.shape[2]
    channels = x.shape[3] if nhwc else x.shape[1]
    per = 1 if nhwc else channels
    part, mm, fcnt, fo, count, ff = _float_setup(x, nhwc, per)
    for it in range(x.shape[0] * per):
        n = it // per
        c = -1 if nhwc else it % channels
        item_f32(
            x,
            px,
            nhwc,
            has_prev,
            lo,
            hi,
            lo_t,
            hi_t,
            n,
            c,
            0,
            height,
            part[it],
            mm[it],
            fcnt[it],
            blk_len,
        )
    merge_float(part, mm, fcnt, per, eps, fo, count, ff)
    return fo, count, ff

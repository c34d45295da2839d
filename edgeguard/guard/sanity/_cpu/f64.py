"""The float datapath (float64 input): branch-free segment passes and the careful loops.

Layer: :mod:`edgeguard.guard`. Private to :mod:`edgeguard.guard.sanity._cpu`:
``item_float`` computes one work item's float partials (``A_*`` slots of
:mod:`edgeguard.guard.sanity._kernel_layout`): a branch-free pass per segment
that LLVM vectorises (``seg_fast``), and, only for a block holding a NaN or
inf, the careful scalar loops (``seg_careful``, ``tdiff_careful``), which the
float32 datapath (:mod:`.f32`) uses too.
"""

# numba compiles these functions from their unannotated source.
# mypy: disable-error-code="no-untyped-def"

from __future__ import annotations

import numpy as np
from numba import njit

from edgeguard.guard.sanity._cpu.common import block_rows, fm, prefetch_block
from edgeguard.guard.sanity._cpu.ir import fmax_finite, fmin_finite
from edgeguard.guard.sanity._kernel_layout import (
    A_CNT,
    A_HC,
    A_HS,
    A_S1,
    A_S2,
    A_SHI,
    A_SHIFT,
    A_SLO,
    A_TC,
    A_TS,
    FC_NAN,
    FC_NEGINF,
    FC_POSINF,
    K_MAX,
    K_MIN,
    SEG_F,
)

__all__ = [
    "deinterleave",
    "item_float",
    "row_hs",
    "seg_careful",
    "seg_fast",
    "tdiff_careful",
    "tdiff_fast",
]


@njit(fastmath=fm, nogil=True)
def seg_fast(blk, a, b, shift, lo_t, hi_t, one):
    # Branch-free statistics of blk[a:b] (b > a). Valid only when s2 comes back finite
    # (then every value read was finite). Two loops over the L1-resident segment:
    # min/max/counts in the input type (16 float32 lanes on AVX-512), then the float64
    # shifted sums and the horizontal differences (8 lanes; a first-order recurrence),
    # the latter valid when blk is one image row.
    zero = one - one
    seg = blk[a:b]  # loops from 0: LLVM then knows the index is >= 0 (no gathers)
    slo = zero
    shi = zero
    mn = seg[0]
    mx = seg[0]
    for w in range(seg.size):
        v = seg[w]
        mn = fmin_finite(mn, v)
        mx = fmax_finite(mx, v)
        slo += one if v <= lo_t else zero
        shi += one if v >= hi_t else zero
    s1 = 0.0
    s2 = 0.0
    hs = 0.0  # pairs (w-1, w) for w in [max(a, 1), b) of blk, as if blk were one row
    pf = np.float64(blk[a - 1]) if a > 0 else np.float64(seg[0])
    for w in range(seg.size):
        f = np.float64(seg[w])
        d = f - shift
        s1 += d
        s2 += d * d
        hs += abs(f - pf)
        pf = f
    return s1, s2, np.float64(slo), np.float64(shi), np.float64(mn), np.float64(mx), hs


@njit(fastmath=fm, nogil=True)
def row_hs(row):
    # Sum of |row[w] - row[w-1]| in float64 (every value finite).
    hs = 0.0
    if row.size > 1:
        pf = np.float64(row[0])
        for w in range(row.size):
            f = np.float64(row[w])
            hs += abs(f - pf)
            pf = f
    return hs


@njit(nogil=True)
def seg_careful(row, a, b, shift, lo, hi, acc, mm, fc):
    # Per-element scalar loop over row[a:b] for segments holding a non-finite value.
    cnt = 0.0
    s1 = 0.0
    s2 = 0.0
    slo = 0.0
    shi = 0.0
    hs = 0.0
    hc = 0.0
    mn = mm[K_MIN]
    mx = mm[K_MAX]
    for w in range(a, b):
        f = np.float64(row[w])
        if abs(f) < np.inf:
            cnt += 1.0
            d = f - shift
            s1 += d
            s2 += d * d
            if f < mn:
                mn = f
            if f > mx:
                mx = f
            if f <= lo:
                slo += 1.0
            if f >= hi:
                shi += 1.0
            if w > 0:
                u = np.float64(row[w - 1])
                if abs(u) < np.inf:
                    hs += abs(f - u)
                    hc += 1.0
        elif f != f:
            fc[FC_NAN] += 1
        elif f > 0.0:
            fc[FC_POSINF] += 1
        else:
            fc[FC_NEGINF] += 1
    acc[A_CNT] += cnt
    acc[A_S1] += s1
    acc[A_S2] += s2
    acc[A_SLO] += slo
    acc[A_SHI] += shi
    acc[A_HS] += hs
    acc[A_HC] += hc
    mm[K_MIN] = mn
    mm[K_MAX] = mx


@njit(fastmath=fm, nogil=True)
def tdiff_fast(row, prow, a, b):
    ts = 0.0
    seg = row[a:b]
    pseg = prow[a:b]
    for w in range(seg.size):
        ts += abs(np.float64(seg[w]) - np.float64(pseg[w]))
    return ts


@njit(nogil=True)
def tdiff_careful(row, prow, a, b):
    ts = 0.0
    tc = 0.0
    for w in range(a, b):
        v = np.float64(row[w])
        q = np.float64(prow[w])
        if abs(v) < np.inf and abs(q) < np.inf:
            ts += abs(v - q)
            tc += 1.0
    return ts, tc


@njit(nogil=True)
def deinterleave(src, dst):
    # src [W, C] -> dst [C, W]
    width, channels = src.shape
    if channels == 3:
        flat = src.reshape(-1)
        d0 = dst[0]
        d1 = dst[1]
        d2 = dst[2]
        for w in range(width):
            d0[w] = flat[3 * w]
            d1[w] = flat[3 * w + 1]
            d2[w] = flat[3 * w + 2]
    else:
        for w in range(width):
            for c in range(channels):
                dst[c, w] = src[w, c]


@njit(fastmath=fm, nogil=True)
def item_float(x, px, nhwc, has_prev, lo, hi, lo_t, hi_t, one, n, r0, r1, acc, mm, fc, blk_len, pf):
    # One work item: rows [r0, r1) of frame n, every channel. acc [C, NACC] zeroed,
    # mm [C, NKEY], fc [NFC] zeroed by the caller. Rows are taken in blocks of R rows
    # (R * W ~ blk_len elements per channel, at least one row): NCHW blocks are
    # contiguous in x, NHWC blocks are de-interleaved into buf first. The block pf
    # blocks ahead is prefetched. A block whose fast pass meets a non-finite value is
    # redone (from cache) by the careful loop, row by row.
    if nhwc:
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    else:
        channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    for c in range(channels):
        mm[c, K_MIN] = np.inf
        mm[c, K_MAX] = -np.inf
    if width == 0 or r1 <= r0:
        return
    rb = block_rows(width, blk_len)
    bw = rb * width if nhwc else 0
    buf = np.empty((channels, bw), dtype=x.dtype)
    pbuf = np.empty((channels, bw if has_prev else 0), dtype=x.dtype)
    have = np.zeros(channels, dtype=np.bool_)
    flat = x.reshape(-1)
    pflat = px.reshape(-1)
    plane = height * width  # NCHW channel plane
    fbase = n * channels * plane  # first element of frame n
    if pf > 1:  # blocks 1 .. pf - 1 of the item
        e0 = min(r1, r0 + rb)
        e1 = min(r1, r0 + pf * rb)
        if nhwc:
            prefetch_block(flat, fbase + e0 * width * channels, fbase + e1 * width * channels)
        else:
            for c in range(channels):
                prefetch_block(flat, fbase + c * plane + e0 * width, fbase + c * plane + e1 * width)
    for h0 in range(r0, r1, rb):
        h1 = min(r1, h0 + rb)
        m = (h1 - h0) * width
        # prefetch the next block of this item
        p0 = min(r1, h1 + (pf - 1) * rb)  # the block pf ahead
        p1 = min(r1, h1 + pf * rb)
        if nhwc:
            prefetch_block(flat, fbase + p0 * width * channels, fbase + p1 * width * channels)
            if has_prev:
                prefetch_block(pflat, fbase + p0 * width * channels, fbase + p1 * width * channels)
            deinterleave(
                flat[fbase + h0 * width * channels : fbase + h1 * width * channels].reshape(
                    m, channels
                ),
                buf,
            )
            if has_prev:
                deinterleave(
                    pflat[fbase + h0 * width * channels : fbase + h1 * width * channels].reshape(
                        m, channels
                    ),
                    pbuf,
                )
        else:
            for c in range(channels):
                cb = fbase + c * plane
                prefetch_block(flat, cb + p0 * width, cb + p1 * width)
                if has_prev:
                    prefetch_block(pflat, cb + p0 * width, cb + p1 * width)
        for c in range(channels):
            if nhwc:
                blk = buf[c, :m]
                pblk = pbuf[c, :m] if has_prev else blk
            else:
                cb = fbase + c * plane
                blk = flat[cb + h0 * width : cb + h1 * width]
                pblk = pflat[cb + h0 * width : cb + h1 * width]
            ac = acc[c]
            if not have[c]:
                for w in range(m):
                    v0 = np.float64(blk[w])
                    if abs(v0) < np.inf:
                        ac[A_SHIFT] = v0
                        have[c] = True
                        break
            shift = ac[A_SHIFT]
            s1 = 0.0
            s2 = 0.0
            slo = 0.0
            shi = 0.0
            mn = np.inf
            mx = -np.inf
            hs = 0.0
            for a in range(0, m, SEG_F):
                q1, q2, qlo, qhi, qmn, qmx, qhs = seg_fast(
                    blk, a, min(m, a + SEG_F), shift, lo_t, hi_t, one
                )
                s1 += q1
                s2 += q2
                slo += qlo
                shi += qhi
                mn = min(mn, qmn)
                mx = max(mx, qmx)
                hs += qhs
            if s2 < np.inf:  # every value of the block is finite
                if h1 - h0 > 1:  # several rows: the recurrence crossed row starts
                    hs = 0.0
                    for j in range(h1 - h0):
                        hs += row_hs(blk[j * width : (j + 1) * width])
                ac[A_CNT] += m
                ac[A_S1] += s1
                ac[A_S2] += s2
                ac[A_SLO] += slo
                ac[A_SHI] += shi
                ac[A_HS] += hs
                ac[A_HC] += (h1 - h0) * (width - 1)
                mm[c, K_MIN] = min(mm[c, K_MIN], mn)
                mm[c, K_MAX] = max(mm[c, K_MAX], mx)
            else:  # rare: classify every value of the block's rows
                for j in range(h1 - h0):
                    seg_careful(
                        blk[j * width : (j + 1) * width], 0, width, shift, lo, hi, ac, mm[c], fc
                    )
            if has_prev:
                ts = tdiff_fast(blk, pblk, 0, m)
                if ts < np.inf:
                    ac[A_TS] += ts
                    ac[A_TC] += m
                else:
                    tsum, tcnt = tdiff_careful(blk, pblk, 0, m)
                    ac[A_TS] += tsum
                    ac[A_TC] += tcnt

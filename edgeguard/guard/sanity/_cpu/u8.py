"""The uint8 datapath: exact integer statistics of one work item.

Layer: :mod:`edgeguard.guard`. Private to :mod:`edgeguard.guard.sanity._cpu`:
``item_u8`` reads an item's rows front to back with the uint8 loops of
:mod:`.u8_ir` (the AVX-512 ones where the target has them, else the portable
ones; both give identical results) and adds their records into the item's
int64 partials (``U_*`` slots of :mod:`edgeguard.guard.sanity._kernel_layout`).
Mean and variance come from the exact integer moments in the merge.
"""

# numba compiles these functions from their unannotated source.
# mypy: disable-error-code="no-untyped-def"

from __future__ import annotations

import numpy as np
from numba import njit

from edgeguard.guard.sanity._cpu.common import block_rows, prefetch_block
from edgeguard.guard.sanity._cpu.u8_ir import (
    u8_gen_stats,
    u8_gen_stats_c3,
    u8_simd_stats,
    u8_simd_stats_c3,
)
from edgeguard.guard.sanity._kernel_layout import (
    NUACC,
    SEG_U8GEN,
    SEG_U8SIMD,
    U_HS,
    U_MAX,
    U_MIN,
    U_S1,
    U_S2,
    U_SHI,
    U_SLO,
    U_TS,
)

__all__ = ["item_u8"]


@njit(nogil=True, inline="always")
def deinterleave_u8(flat, s0, npix, channels, dflat, dstride):
    # dflat[c * dstride + w] = flat[s0 + w * channels + c] for w < npix (uint8; only
    # for channel counts other than 3, which the 3-channel loops read in place).
    for w in range(npix):
        for c in range(channels):
            dflat[c * dstride + w] = flat[s0 + w * channels + c]


@njit(nogil=True, inline="always")
def drop_row_pairs(ac, c, flat, start, row, step, rows):
    # The SIMD segments summed |v[w] - v[w-1]| over `rows` image rows of channel c as
    # if they were one row (v[w] = flat[start + w * step], `row` apart in flat); take
    # out the pairs across a row start.
    hs = np.int64(0)
    for j in range(1, rows):
        e = start + j * row
        hs += abs(np.int64(flat[e]) - np.int64(flat[e - step]))
    ac[c, U_HS] -= hs


@njit(nogil=True, inline="always")
def add_sv(ac, c, sv, at, lo_i, hi_i):
    # ac[c] += the uint8 loop's record sv[at:at+NUACC] (same U_* slots)
    ac[c, U_S1] += sv[at + U_S1]
    ac[c, U_S2] += sv[at + U_S2]
    if lo_i >= 0:  # lo_i = -1: nothing is <= lo (the loop's lo8 was clamped)
        ac[c, U_SLO] += sv[at + U_SLO]
    if hi_i <= 255:  # hi_i = 256: nothing is >= hi
        ac[c, U_SHI] += sv[at + U_SHI]
    ac[c, U_HS] += sv[at + U_HS]
    ac[c, U_TS] += sv[at + U_TS]
    ac[c, U_MIN] = min(ac[c, U_MIN], sv[at + U_MIN])
    ac[c, U_MAX] = max(ac[c, U_MAX], sv[at + U_MAX])


@njit(nogil=True, inline="always")
def add_run(ac, c, arr, parr, a, b, has_prev, lo_i, hi_i, sv, simd):
    # ac[c] += the integer statistics of the block arr.flat[a:b], one call of the
    # uint8 loop per SEG_U8SIMD (x86) or SEG_U8GEN (portable) values.
    lo8 = np.uint8(min(max(lo_i, 0), 255))
    hi8 = np.uint8(min(max(hi_i, 0), 255))
    seg = SEG_U8SIMD if simd else SEG_U8GEN
    for s in range(a, b, seg):
        e = min(b, s + seg)
        if simd:
            u8_simd_stats(arr, parr, s, e, s == a, lo8, hi8, has_prev, sv)
        else:
            u8_gen_stats(arr, parr, s, e, s == a, lo8, hi8, has_prev, sv)
        add_sv(ac, c, sv, 0, lo_i, hi_i)


@njit(nogil=True, inline="always")
def u8_item_start(x, nhwc, acc):
    # (height, width, channels) of x; acc's min/max start at their identities
    if nhwc:
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    else:
        channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    for c in range(channels):
        acc[c, U_MIN] = 255
        acc[c, U_MAX] = 0
    return height, width, channels


@njit(nogil=True)
def item_u8(x, px, nhwc, has_prev, lo_i, hi_i, n, r0, r1, acc, blk_len, pf, simd):
    # One work item of the uint8 path; acc [C, NUACC] int64, zeroed by the caller.
    # simd: the AVX-512 loops (U8_SIMD targets only), else the portable ones. The
    # item's rows [r0, r1) are read front to back as one contiguous run per channel
    # (NCHW) or one run of interleaved pixels (NHWC, 3 channels), which the hardware
    # prefetcher follows; other NHWC widths are de-interleaved into an L1 buffer a
    # block of rows at a time, the block pf ahead prefetched.
    height, width, channels = u8_item_start(x, nhwc, acc)
    if width == 0 or r1 <= r0:
        return
    flat = x.reshape(-1)
    plane = height * width
    fbase = n * channels * plane
    sv = np.zeros(3 * NUACC, dtype=np.int64)  # one record per channel, 3 channels at most
    if not nhwc:
        m = (r1 - r0) * width
        for c in range(channels):
            cb = fbase + c * plane + r0 * width
            add_run(acc, c, x, px, cb, cb + m, has_prev, lo_i, hi_i, sv, simd)
            drop_row_pairs(acc, c, flat, cb, width, 1, r1 - r0)
        return
    row = width * channels
    if channels == 3:
        lo8 = np.uint8(min(max(lo_i, 0), 255))
        hi8 = np.uint8(min(max(hi_i, 0), 255))
        e0 = fbase + r0 * row
        npix = (r1 - r0) * width
        seg = SEG_U8SIMD if simd else SEG_U8GEN
        for s in range(0, npix, seg):
            k = min(npix - s, seg)
            if simd:
                u8_simd_stats_c3(x, px, e0 + 3 * s, k, s == 0, lo8, hi8, has_prev, sv)
            else:
                u8_gen_stats_c3(x, px, e0 + 3 * s, k, s == 0, lo8, hi8, has_prev, sv)
            for c in range(3):
                add_sv(acc, c, sv, NUACC * c, lo_i, hi_i)
        for c in range(3):
            drop_row_pairs(acc, c, flat, e0 + c, row, 3, r1 - r0)
        return
    rb = block_rows(width, blk_len)
    bw = rb * width
    buf = np.empty((channels, bw), dtype=np.uint8)
    pbuf = np.empty((channels, bw if has_prev else 0), dtype=np.uint8)
    bflat = buf.reshape(-1)
    pbflat = pbuf.reshape(-1)
    pflat = px.reshape(-1)
    if pf > 1:  # blocks 1 .. pf - 1 of the item
        prefetch_block(flat, fbase + min(r1, r0 + rb) * row, fbase + min(r1, r0 + pf * rb) * row)
    for h0 in range(r0, r1, rb):
        h1 = min(r1, h0 + rb)
        m = (h1 - h0) * width
        e0 = fbase + h0 * row
        p0 = fbase + min(r1, h1 + (pf - 1) * rb) * row  # the block pf ahead
        p1 = fbase + min(r1, h1 + pf * rb) * row
        prefetch_block(flat, p0, p1)
        deinterleave_u8(flat, e0, m, channels, bflat, bw)
        if has_prev:
            prefetch_block(pflat, p0, p1)
            deinterleave_u8(pflat, e0, m, channels, pbflat, bw)
        for c in range(channels):
            pb = pbuf if has_prev else buf
            add_run(acc, c, buf, pb, c * bw, c * bw + m, has_prev, lo_i, hi_i, sv, simd)
            drop_row_pairs(acc, c, bflat, c * bw, width, 1, h1 - h0)

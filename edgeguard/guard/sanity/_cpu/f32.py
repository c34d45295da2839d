"""The float32 datapath: float32 arithmetic inside short segments, float64 between them.

Layer: :mod:`edgeguard.guard`. Private to :mod:`edgeguard.guard.sanity._cpu`:
``item_f32`` computes one work item's float partials (``A_*`` slots of
:mod:`edgeguard.guard.sanity._kernel_layout`, in the merged form: count, mean,
0, M2) with the float32 segment loops of :mod:`.f32_ir`, keeping a running
state per channel (``ST_*`` slots); a block holding a NaN or inf goes to the
careful float64 loops of :mod:`.f64`.
"""

# numba compiles these functions from their unannotated source.
# mypy: disable-error-code="no-untyped-def"

from __future__ import annotations

import numpy as np
from numba import njit

from edgeguard.guard.sanity._cpu.common import block_rows, fm, prefetch_block
from edgeguard.guard.sanity._cpu.f32_ir import f32_c1_seg, f32_c3_seg
from edgeguard.guard.sanity._cpu.f64 import seg_careful, seg_fast, tdiff_careful
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
    F32_HS,
    F32_MAX,
    F32_MIN,
    F32_S1,
    F32_S2,
    F32_SHI,
    F32_SLO,
    F32_TS,
    K_MAX,
    K_MIN,
    NF32,
    NST,
    NST_RUN,
    PF32,
    SEG32,
    SEG_C3,
    ST_CNT,
    ST_HS,
    ST_M2,
    ST_MAX,
    ST_MEAN,
    ST_MIN,
    ST_SHI,
    ST_SLO,
    ST_TS,
    ST_TSOK,
    TINY32,
)

__all__ = ["block_f32", "block_f32_c3", "chan_add", "item_f32", "run_into"]

# A segment is at most SEG32 consecutive elements of one channel (they may span image
# rows; the pairs that cross a row start are taken out afterwards), or SEG_C3 pixels
# of interleaved 3-channel NHWC data read in place. Inside a segment, one loop written
# in LLVM IR (f32_c1_seg / f32_c3_seg: three 16-lane float32 vectors per step, so each
# lane sums at most SEG32 / 48 values) computes, in float32, the shifted sums
# s1 = sum(d), s2 = sum(d*d) with d = v - shift, the horizontal |v[w] - v[w-1]|,
# |v - prev|, the saturation counts (int32), min and max. Each segment's float64 sums
# go into a run (one channel) or become (n, mean, M2) merged with Chan's formula
# (3 channels), so rounding does not grow with the frame size. The shift of a segment
# is the previous segment's mean, and a segment whose mean lies far from its shift
# relative to its own spread
# (s1^2 / n > 4 M2: the cancellation would amplify float32 rounding) is recomputed,
# from L1, with its own mean as shift. A segment whose deviations are all below 1e-14
# (float32 squares would underflow) is recomputed in float64; a segment whose float32
# sums are not finite (a NaN or inf in the data, or squares above 3.4e38) sends its
# block of rows to the careful float64 loop. docs/sanity.md, section 9, states the
# resulting error bound.


@njit(nogil=True)
def chan_add(cnt, mean, m2, n, mb, m2b):
    # Chan's formula: (cnt, mean, m2) merged with a part of n values, mean mb, M2 m2b.
    tot = cnt + n
    delta = mb - mean
    return tot, mean + delta * (n / tot), m2 + m2b + delta * delta * (cnt * n / tot)


@njit(nogil=True)
def run_into(cnt, mean, m2, rn, sh, r1, r2):
    # The Chan state (cnt, mean, m2) with a run of rn values merged in; the run holds
    # r1 = sum(v - sh) and r2 = sum((v - sh)^2). An empty run changes nothing.
    if rn <= 0.0:
        return cnt, mean, m2
    return chan_add(cnt, mean, m2, rn, sh + r1 / rn, max(r2 - r1 * (r1 / rn), 0.0))


@njit(fastmath=fm, nogil=True)
def block_f32(blk, pblk, has_prev, shift, lo_t, hi_t, st, width, rows):
    # Fast statistics of one channel's block of `rows` image rows (blk contiguous,
    # rows * width elements; pblk the previous frame's, read when has_prev). st [NST]
    # (ST_* slots): running cnt, mean, m2, slo, shi, hs, min, max, then this block's ts
    # and ts-ok (0.0 when a segment's ts was not finite), updated only when the block's values
    # are all finite (returns True). shift is the float32 shift to start with; returns
    # (ok, next shift). Segments sum deviations from one shift into a float64 run;
    # a run goes into the Chan state only when a segment's mean is more than two of
    # its standard deviations from the shift (then that segment is redone around its
    # own mean, which starts the next run). Segments are SEG32 values of the one-channel
    # loop f32_c1_seg, which also prefetches ahead.
    m = blk.size
    cnt = st[ST_CNT]
    mean = st[ST_MEAN]
    m2 = st[ST_M2]
    sh = np.float64(shift)
    rn = 0.0  # the current run: count, sums of deviations from sh and of their squares
    r1 = 0.0
    r2 = 0.0
    slo = 0.0
    shi = 0.0
    hs = 0.0
    ts = 0.0
    ts_ok = 1.0
    mn = st[ST_MIN]
    mx = st[ST_MAX]
    hh = np.empty(1, dtype=np.float32)
    out = np.empty((1, NF32), dtype=np.float32)
    out2 = np.empty((1, NF32), dtype=np.float32)
    for a in range(0, m, SEG32):
        b = min(m, a + SEG32)
        hh[0] = shift
        f32_c1_seg(blk, pblk, a, b - a, has_prev, a == 0, hh, lo_t, hi_t, out)
        r = out[0]
        if not (abs(r[F32_S2]) < np.inf and abs(r[F32_S1]) < np.inf and abs(r[F32_HS]) < np.inf):
            return False, shift
        n = np.float64(b - a)
        s1 = np.float64(r[F32_S1])
        s2 = np.float64(r[F32_S2])
        smn = np.float64(r[F32_MIN])
        smx = np.float64(r[F32_MAX])
        if smn == smx:  # constant segment: exact (a new run at the value unless it is sh)
            if smn != sh:
                cnt, mean, m2 = run_into(cnt, mean, m2, rn, sh, r1, r2)
                rn = 0.0
                r1 = 0.0
                r2 = 0.0
                shift = np.float32(smn)
                sh = smn
            s1 = 0.0
            s2 = 0.0
        else:
            redo = False
            if 5.0 * s1 * s1 > 4.0 * n * s2:  # mean more than 2 std from the shift
                cnt, mean, m2 = run_into(cnt, mean, m2, rn, sh, r1, r2)
                rn = 0.0
                r1 = 0.0
                r2 = 0.0
                shift = np.float32(sh + s1 / n)
                sh = np.float64(shift)
                redo = True
            if max(smx - sh, sh - smn) < TINY32:  # float32 squares would underflow
                s1, s2, _, _, _, _, _ = seg_fast(
                    blk[a:b], 0, b - a, sh, lo_t, hi_t, np.float32(1.0)
                )
            elif redo:
                hh[0] = shift  # into out2: r (a view of out) is read below
                f32_c1_seg(blk, blk, a, b - a, False, a == 0, hh, lo_t, hi_t, out2)
                s1 = np.float64(out2[0, F32_S1])
                s2 = np.float64(out2[0, F32_S2])
        rn += n
        r1 += s1
        r2 += s2
        slo += np.float64(r[F32_SLO])
        shi += np.float64(r[F32_SHI])
        hs += np.float64(r[F32_HS])
        if has_prev:
            if abs(r[F32_TS]) < np.inf:
                ts += np.float64(r[F32_TS])
            else:
                ts_ok = 0.0
        mn = min(mn, smn)
        mx = max(mx, smx)
    cnt, mean, m2 = run_into(cnt, mean, m2, rn, sh, r1, r2)
    for j in range(1, rows):  # take out the pairs that cross a row start
        hs -= abs(np.float64(blk[j * width]) - np.float64(blk[j * width - 1]))
    st[ST_CNT] = cnt
    st[ST_MEAN] = mean
    st[ST_M2] = m2
    st[ST_SLO] += slo
    st[ST_SHI] += shi
    st[ST_HS] += max(hs, 0.0)
    st[ST_MIN] = mn
    st[ST_MAX] = mx
    st[ST_TS] = ts
    st[ST_TSOK] = ts_ok
    return True, shift


@njit(fastmath=fm, nogil=True)
def block_f32_c3(flat, pflat, has_prev, start, npix, width, rows, shifts, st, lo_t, hi_t):
    # block_f32 for a block of `rows` rows of a 3-channel NHWC frame read in place:
    # flat[start : start + 3 * npix] (pflat the previous frame, read when has_prev).
    # shifts [3] float32 (updated), st [3, NST] as block_f32's st for each channel.
    # Returns False (st untouched) when a segment's float32 sums are not finite.
    loc = np.empty((3, NST_RUN))
    r = np.empty((3, NF32), dtype=np.float32)
    ts = np.zeros(3)
    ts_ok = True
    for c in range(3):
        for j in range(NST_RUN):
            loc[c, j] = st[c, j]
        loc[c, ST_SLO] = 0.0
        loc[c, ST_SHI] = 0.0
        loc[c, ST_HS] = 0.0
    step = SEG_C3
    for w0 in range(0, npix, step):
        w1 = min(npix, w0 + step)
        base = start + 3 * w0
        f32_c3_seg(flat, pflat, base, w1 - w0, has_prev, w0 == 0, shifts, lo_t, hi_t, r)
        for c in range(3):
            if not (
                abs(r[c, F32_S1]) < np.inf
                and abs(r[c, F32_S2]) < np.inf
                and abs(r[c, F32_HS]) < np.inf
            ):
                return False
        n = np.float64(w1 - w0)
        redo = False
        for c in range(3):
            s1 = np.float64(r[c, F32_S1])
            s2 = np.float64(r[c, F32_S2])
            if r[c, F32_MIN] != r[c, F32_MAX] and s1 * s1 > 4.0 * n * max(s2 - s1 * s1 / n, 0.0):
                shifts[c] = np.float32(np.float64(shifts[c]) + s1 / n)
                redo = True
        if redo:  # mean far from the shift relative to the spread: redo around the mean
            f32_c3_seg(flat, pflat, base, w1 - w0, has_prev, w0 == 0, shifts, lo_t, hi_t, r)
        for c in range(3):
            if has_prev:
                if not abs(r[c, F32_TS]) < np.inf:  # a NaN or inf in the previous frame
                    ts_ok = False
                ts[c] += np.float64(r[c, F32_TS])
            sh = np.float64(shifts[c])
            s1 = np.float64(r[c, F32_S1])
            s2 = np.float64(r[c, F32_S2])
            smn = np.float64(r[c, F32_MIN])
            smx = np.float64(r[c, F32_MAX])
            dmax = max(smx - sh, sh - smn)
            if smn == smx:  # constant segment: exact
                sh = smn
                s1 = 0.0
                s2 = 0.0
            elif dmax < TINY32:  # float32 squares would underflow: float64 for this one
                s1 = 0.0
                s2 = 0.0
                for w in range(w1 - w0):
                    d = np.float64(flat[base + 3 * w + c]) - sh
                    s1 += d
                    s2 += d * d
            mb = sh + s1 / n
            m2b = max(s2 - s1 * (s1 / n), 0.0)
            loc[c, ST_CNT], loc[c, ST_MEAN], loc[c, ST_M2] = chan_add(
                loc[c, ST_CNT], loc[c, ST_MEAN], loc[c, ST_M2], n, mb, m2b
            )
            loc[c, ST_SLO] += np.float64(r[c, F32_SLO])
            loc[c, ST_SHI] += np.float64(r[c, F32_SHI])
            loc[c, ST_HS] += np.float64(r[c, F32_HS])
            loc[c, ST_MIN] = min(loc[c, ST_MIN], smn)
            loc[c, ST_MAX] = max(loc[c, ST_MAX], smx)
            shifts[c] = np.float32(mb)
    for c in range(3):
        hs = loc[c, ST_HS]
        for j in range(1, rows):  # take out the pairs that cross a row start
            i = start + 3 * j * width + c
            hs -= abs(np.float64(flat[i]) - np.float64(flat[i - 3]))
        st[c, ST_CNT] = loc[c, ST_CNT]
        st[c, ST_MEAN] = loc[c, ST_MEAN]
        st[c, ST_M2] = loc[c, ST_M2]
        st[c, ST_SLO] += loc[c, ST_SLO]
        st[c, ST_SHI] += loc[c, ST_SHI]
        st[c, ST_HS] += max(hs, 0.0)
        st[c, ST_MIN] = loc[c, ST_MIN]
        st[c, ST_MAX] = loc[c, ST_MAX]
        st[c, ST_TS] = ts[c]
        st[c, ST_TSOK] = 1.0 if ts_ok else 0.0
    return True


@njit(nogil=True)
def deinterleave_pf(flat, start, npix, channels, dst):
    # dst[c, w] = flat[start + w * channels + c] for w < npix, in chunks, prefetching the
    # source PF32 elements ahead of each chunk.
    step = 256
    src = flat[start : start + npix * channels]
    for w0 in range(0, npix, step):
        w1 = min(npix, w0 + step)
        prefetch_block(flat, start + w1 * channels + PF32, start + (w1 + step) * channels + PF32)
        if channels == 3:
            d0 = dst[0, w0:w1]
            d1 = dst[1, w0:w1]
            d2 = dst[2, w0:w1]
            sc = src[3 * w0 : 3 * w1]
            for w in range(w1 - w0):
                d0[w] = sc[3 * w]
                d1[w] = sc[3 * w + 1]
                d2[w] = sc[3 * w + 2]
        else:
            for w in range(w0, w1):
                for c in range(channels):
                    dst[c, w] = src[w * channels + c]


@njit(fastmath=fm, nogil=True)
def item_f32(x, px, nhwc, has_prev, lo, hi, lo_t, hi_t, n, c_only, r0, r1, acc, mm, fc, blk_len):
    # One work item of the float32 path. NCHW: channel c_only, rows [r0, r1): one
    # contiguous run, read as one stream. NHWC (c_only = -1): rows [r0, r1) of every
    # channel, in blocks of rows de-interleaved into buf. acc [C, NACC] zeroed by the
    # caller; on return each processed channel holds (cnt, mean in the shift slot, 0, M2)
    # and sums, the form merge_float expects; the other channels stay empty.
    if nhwc:
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    else:
        channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    for c in range(channels):
        mm[c, K_MIN] = np.inf
        mm[c, K_MAX] = -np.inf
    if width == 0 or r1 <= r0:
        return
    flat = x.reshape(-1)
    pflat = px.reshape(-1)
    plane = height * width
    fbase = n * channels * plane
    c0 = 0 if nhwc else c_only
    c1 = channels if nhwc else c_only + 1
    c3 = nhwc and channels == 3
    rb = block_rows(width, blk_len) if nhwc and not c3 else r1 - r0
    bw = rb * width if nhwc and not c3 else 0
    buf = np.empty((channels, bw), dtype=x.dtype)
    pbuf = np.empty((channels, bw if has_prev else 0), dtype=x.dtype)
    have = np.zeros(channels, dtype=np.bool_)
    shifts = np.zeros(channels, dtype=np.float32)
    st = np.zeros((channels, NST))
    for c in range(channels):
        st[c, ST_MIN] = np.inf
        st[c, ST_MAX] = -np.inf
    if nhwc:
        prefetch_block(flat, fbase + r0 * width * channels, fbase + r0 * width * channels + PF32)
    else:
        cb = fbase + c_only * plane + r0 * width
        prefetch_block(flat, cb, cb + PF32)
    for h0 in range(r0, r1, rb):
        h1 = min(r1, h0 + rb)
        m = (h1 - h0) * width
        src0 = fbase + h0 * width * channels
        if c3:  # read in place, three channels at once
            for c in range(3):
                if not have[c]:
                    for w in range(m):
                        v0 = flat[src0 + 3 * w + c]
                        if abs(v0) < np.inf:
                            shifts[c] = v0
                            acc[c, A_SHIFT] = np.float64(v0)
                            have[c] = True
                            break
            ok = block_f32_c3(
                flat, pflat, has_prev, src0, m, width, h1 - h0, shifts, st, lo_t, hi_t
            )
            if ok:
                for c in range(3):
                    acc[c, A_HC] += (h1 - h0) * (width - 1)
            else:  # rare: de-interleave and classify every value, in float64
                buf = np.empty((channels, m), dtype=x.dtype)
                deinterleave_pf(flat, src0, m, channels, buf)
                for c in range(3):
                    for j in range(h1 - h0):
                        seg_careful(
                            buf[c, j * width : (j + 1) * width],
                            0,
                            width,
                            acc[c, A_SHIFT],
                            lo,
                            hi,
                            acc[c],
                            mm[c],
                            fc,
                        )
            if has_prev:
                if ok and st[0, ST_TSOK] != 0.0:
                    for c in range(3):
                        acc[c, A_TS] += st[c, ST_TS]
                        acc[c, A_TC] += m
                else:  # a NaN or inf in either frame: only pairs of finite values count
                    buf = np.empty((channels, m), dtype=x.dtype)
                    pbuf = np.empty((channels, m), dtype=x.dtype)
                    deinterleave_pf(flat, src0, m, channels, buf)
                    deinterleave_pf(pflat, src0, m, channels, pbuf)
                    for c in range(3):
                        tsum, tcnt = tdiff_careful(buf[c, :m], pbuf[c, :m], 0, m)
                        acc[c, A_TS] += tsum
                        acc[c, A_TC] += tcnt
            continue
        if nhwc:
            deinterleave_pf(flat, src0, m, channels, buf)
            if has_prev:
                deinterleave_pf(pflat, src0, m, channels, pbuf)
        for c in range(c0, c1):
            if nhwc:
                blk = buf[c, :m]
                pblk = pbuf[c, :m] if has_prev else blk
            else:
                off = fbase + c * plane + h0 * width
                blk = flat[off : off + m]
                pblk = pflat[off : off + m]
            ac = acc[c]
            if not have[c]:
                for w in range(m):
                    v0 = blk[w]
                    if abs(v0) < np.inf:
                        shifts[c] = v0
                        ac[A_SHIFT] = np.float64(v0)
                        have[c] = True
                        break
            ok, nxt = block_f32(blk, pblk, has_prev, shifts[c], lo_t, hi_t, st[c], width, h1 - h0)
            if ok:
                shifts[c] = nxt
                ac[A_HC] += (h1 - h0) * (width - 1)
            else:  # rare: classify every value of the block's rows, in float64
                for j in range(h1 - h0):
                    seg_careful(
                        blk[j * width : (j + 1) * width],
                        0,
                        width,
                        ac[A_SHIFT],
                        lo,
                        hi,
                        ac,
                        mm[c],
                        fc,
                    )
            if has_prev:
                if ok and st[c, ST_TSOK] != 0.0:
                    ac[A_TS] += st[c, ST_TS]
                    ac[A_TC] += m
                else:  # a NaN or inf in either frame
                    tsum, tcnt = tdiff_careful(blk, pblk, 0, m)
                    ac[A_TS] += tsum
                    ac[A_TC] += tcnt
    # fold the fast blocks' Chan state into acc (shifted sums of the careful blocks)
    for c in range(c0, c1):
        ac = acc[c]
        s = st[c]
        # the careful blocks' shifted sums are a run around A_SHIFT
        cnt, mean, m2 = run_into(
            s[ST_CNT], s[ST_MEAN], s[ST_M2], ac[A_CNT], ac[A_SHIFT], ac[A_S1], ac[A_S2]
        )
        ac[A_CNT] = cnt
        ac[A_SHIFT] = mean
        ac[A_S1] = 0.0
        ac[A_S2] = m2
        ac[A_SLO] += s[ST_SLO]
        ac[A_SHI] += s[ST_SHI]
        ac[A_HS] += s[ST_HS]
        mm[c, K_MIN] = min(mm[c, K_MIN], s[ST_MIN])
        mm[c, K_MAX] = max(mm[c, K_MAX], s[ST_MAX])

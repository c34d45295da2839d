"""Numba CPU kernels of the sanity statistics (private; imported lazily by ``cpu.py``).

Layer: :mod:`edgeguard.guard`. This module imports numba at import time, so only
:mod:`edgeguard.guard.sanity.cpu` imports it, inside functions, after checking
that numba is installed. The kernels live at module level so that numba's
on-disk cache (``cache=True``) can key them reliably.
"""

# mypy: disable-error-code="no-untyped-def"

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = ["merge", "partials_float", "partials_u8"]

# fastmath subset that lets LLVM vectorise the float64 reductions; never nnan/ninf,
# which would fold away the finiteness tests.
fm = {"reassoc", "contract", "nsz", "arcp"}


@njit(fastmath=fm, inline="always", nogil=True)
def row_float(row, keys, shift, lo, hi, maxkey, minkey, sbits):
    width = row.size
    cnt = 0.0
    s1 = 0.0
    s2 = 0.0
    slo = 0.0
    shi = 0.0
    hs = 0.0
    hc = 0.0
    nn = 0.0
    pi = 0.0
    kmin = maxkey
    kmax = minkey
    for w in range(width):
        v = np.float64(row[w])
        fin = abs(v) < np.inf
        vn = v if fin else np.nan  # non-finite -> NaN: fails every comparison below
        d = (v - shift) if fin else 0.0
        cnt += np.float64(fin)
        s1 += d
        s2 += d * d
        slo += np.float64(vn <= lo)
        shi += np.float64(vn >= hi)
        k = keys[w]
        key = k ^ ((k >> sbits) & maxkey)
        kmin = min(kmin, key if fin else maxkey)
        kmax = max(kmax, key if fin else minkey)
    if cnt < width:  # rare: split the non-finite values into NaN / +inf / -inf
        for w in range(width):
            v = np.float64(row[w])
            if v != v:
                nn += 1.0
            elif v == np.inf:
                pi += 1.0
    for w in range(1, width):
        v = np.float64(row[w])
        u = np.float64(row[w - 1])
        ok = (abs(v) < np.inf) and (abs(u) < np.inf)
        hs += abs(v - u) if ok else 0.0
        hc += np.float64(ok)
    return cnt, s1, s2, slo, shi, hs, hc, nn, pi, kmin, kmax


@njit(fastmath=fm, inline="always", nogil=True)
def row_u8(row, shift, lo_i, hi_i):
    width = row.size
    s1 = np.int64(0)
    s2 = np.int64(0)
    slo = np.int64(0)
    shi = np.int64(0)
    hs = np.int64(0)
    kmin = np.int64(255)
    kmax = np.int64(0)
    for w in range(width):
        v = np.int64(row[w])
        d = v - shift
        s1 += d
        s2 += d * d
        slo += np.int64(v <= lo_i)
        shi += np.int64(v >= hi_i)
        kmin = min(kmin, v)
        kmax = max(kmax, v)
    for w in range(1, width):
        hs += abs(np.int64(row[w]) - np.int64(row[w - 1]))
    return s1, s2, slo, shi, hs, kmin, kmax


@njit(fastmath=fm, inline="always", nogil=True)
def row_tdiff(row, prow):
    ts = 0.0
    tc = 0.0
    for w in range(row.size):
        v = np.float64(row[w])
        q = np.float64(prow[w])
        ok = (abs(v) < np.inf) and (abs(q) < np.inf)
        ts += abs(v - q) if ok else 0.0
        tc += np.float64(ok)
    return ts, tc


@njit(nogil=True)
def deinterleave(src, dst):
    # src [W, C] -> dst [C, W]
    width, channels = src.shape
    if channels == 3:
        d0 = dst[0]
        d1 = dst[1]
        d2 = dst[2]
        for w in range(width):
            d0[w] = src[w, 0]
            d1[w] = src[w, 1]
            d2[w] = src[w, 2]
    else:
        for w in range(width):
            for c in range(channels):
                dst[c, w] = src[w, c]


@njit(parallel=True, fastmath=fm, cache=True, nogil=True)
def partials_float(
    x, xk, px, nhwc, has_prev, lo, hi, nb, rows, part, kpart, fcnt, maxkey, minkey, sbits
):
    # x: [N, C, H, W] (nhwc False) or [N, H, W, C] (nhwc True), C-contiguous.
    n_frames = x.shape[0]
    if nhwc:
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    else:
        channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    for it in prange(n_frames * nb):
        n = it // nb
        r0 = (it % nb) * rows
        r1 = min(height, r0 + rows)
        buf = np.empty((channels, width), dtype=x.dtype)
        kbuf = np.empty((channels, width), dtype=xk.dtype)
        pbuf = np.empty((channels, width), dtype=x.dtype)
        have = np.zeros(channels, dtype=np.bool_)
        shift = np.zeros(channels)
        kmn = np.full(channels, maxkey)
        kmx = np.full(channels, minkey)
        acc = part[it]
        acc[:, :] = 0.0
        nn = 0.0
        pi = 0.0
        tot = 0.0
        for h in range(r0, r1):
            if nhwc:
                deinterleave(x[n, h], buf)
                deinterleave(xk[n, h], kbuf)
                if has_prev:
                    deinterleave(px[n, h], pbuf)
            for c in range(channels):
                if nhwc:
                    row = buf[c]
                    krow = kbuf[c]
                    prow = pbuf[c]
                else:
                    row = x[n, c, h]
                    krow = xk[n, c, h]
                    prow = px[n, c, h]
                if not have[c]:
                    for w in range(width):
                        v0 = np.float64(row[w])
                        if abs(v0) < np.inf:
                            shift[c] = v0
                            have[c] = True
                            break
                r = row_float(row, krow, shift[c], lo, hi, maxkey, minkey, sbits)
                acc[c, 0] += r[0]
                acc[c, 2] += r[1]
                acc[c, 3] += r[2]
                acc[c, 4] += r[3]
                acc[c, 5] += r[4]
                acc[c, 6] += r[5]
                acc[c, 7] += r[6]
                nn += r[7]
                pi += r[8]
                tot += width - r[0]
                kmn[c] = min(kmn[c], r[9])
                kmx[c] = max(kmx[c], r[10])
                if has_prev:
                    t = row_tdiff(row, prow)
                    acc[c, 8] += t[0]
                    acc[c, 9] += t[1]
        for c in range(channels):
            acc[c, 1] = shift[c]
            kpart[it, c, 0] = kmn[c]
            kpart[it, c, 1] = kmx[c]
        fcnt[it, 0] = np.int64(nn)
        fcnt[it, 1] = np.int64(pi)
        fcnt[it, 2] = np.int64(tot - nn - pi)


@njit(parallel=True, fastmath=fm, cache=True, nogil=True)
def partials_u8(x, px, nhwc, has_prev, lo_i, hi_i, nb, rows, part, kpart, fcnt):
    n_frames = x.shape[0]
    if nhwc:
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    else:
        channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    for it in prange(n_frames * nb):
        n = it // nb
        r0 = (it % nb) * rows
        r1 = min(height, r0 + rows)
        buf = np.empty((channels, width), dtype=np.uint8)
        pbuf = np.empty((channels, width), dtype=np.uint8)
        acc = part[it]
        acc[:, :] = 0.0
        for c in range(channels):
            kpart[it, c, 0] = 255
            kpart[it, c, 1] = 0
            if r1 > r0 and width > 0:
                acc[c, 1] = np.float64(x[n, r0, 0, c] if nhwc else x[n, c, r0, 0])
        for h in range(r0, r1):
            if nhwc:
                deinterleave(x[n, h], buf)
                if has_prev:
                    deinterleave(px[n, h], pbuf)
            for c in range(channels):
                if nhwc:
                    row = buf[c]
                    prow = pbuf[c]
                else:
                    row = x[n, c, h]
                    prow = px[n, c, h]
                r = row_u8(row, np.int64(acc[c, 1]), lo_i, hi_i)
                acc[c, 0] += width
                acc[c, 2] += np.float64(r[0])
                acc[c, 3] += np.float64(r[1])
                acc[c, 4] += np.float64(r[2])
                acc[c, 5] += np.float64(r[3])
                acc[c, 6] += np.float64(r[4])
                acc[c, 7] += max(width - 1, 0)
                kpart[it, c, 0] = min(kpart[it, c, 0], r[5])
                kpart[it, c, 1] = max(kpart[it, c, 1], r[6])
                if has_prev:
                    t = row_tdiff(row, prow)
                    acc[c, 8] += t[0]
                    acc[c, 9] += t[1]
        fcnt[it, 0] = 0
        fcnt[it, 1] = 0
        fcnt[it, 2] = 0


@njit(cache=True, nogil=True)
def merge(part, kpart, nb, kind, eps, out):
    # out[n, c, :] = count, min, max, mean, std, sat_lo, sat_hi, hf, tdiff
    n_frames = out.shape[0]
    channels = out.shape[1]
    t32 = np.empty(1, dtype=np.int32)
    f32 = t32.view(np.float32)
    t64 = np.empty(1, dtype=np.int64)
    f64 = t64.view(np.float64)
    for n in range(n_frames):
        for c in range(channels):
            cnt = 0.0
            mean = 0.0
            m2 = 0.0
            kmn = np.int64(0)
            kmx = np.int64(0)
            slo = 0.0
            shi = 0.0
            hs = 0.0
            hc = 0.0
            ts = 0.0
            tc = 0.0
            for b in range(nb):
                acc = part[n * nb + b, c]
                k = acc[0]
                if k > 0.0:
                    mb = acc[1] + acc[2] / k
                    m2b = max(acc[3] - acc[2] * acc[2] / k, 0.0)
                    tot = cnt + k
                    delta = mb - mean
                    mean = mean + delta * (k / tot)
                    m2 = m2 + m2b + delta * delta * (cnt * k / tot)
                    if cnt == 0.0:
                        kmn = kpart[n * nb + b, c, 0]
                        kmx = kpart[n * nb + b, c, 1]
                    else:
                        kmn = min(kmn, kpart[n * nb + b, c, 0])
                        kmx = max(kmx, kpart[n * nb + b, c, 1])
                    cnt = tot
                slo += acc[4]
                shi += acc[5]
                hs += acc[6]
                hc += acc[7]
                ts += acc[8]
                tc += acc[9]
            o = out[n, c]
            o[0] = cnt
            if cnt > 0.0:
                if kind == 0:
                    o[1] = np.float64(kmn)
                    o[2] = np.float64(kmx)
                elif kind == 1:
                    t32[0] = np.int32(kmn ^ ((kmn >> 31) & 0x7FFFFFFF))
                    o[1] = np.float64(f32[0])
                    t32[0] = np.int32(kmx ^ ((kmx >> 31) & 0x7FFFFFFF))
                    o[2] = np.float64(f32[0])
                else:
                    t64[0] = kmn ^ ((kmn >> 63) & 0x7FFFFFFFFFFFFFFF)
                    o[1] = f64[0]
                    t64[0] = kmx ^ ((kmx >> 63) & 0x7FFFFFFFFFFFFFFF)
                    o[2] = f64[0]
                std = math.sqrt(m2 / cnt)
                o[3] = mean
                o[4] = std
                o[5] = slo / cnt
                o[6] = shi / cnt
                o[7] = (hs / hc) / (std + eps) if hc > 0.0 else 0.0
            else:
                o[1] = np.inf
                o[2] = -np.inf
                o[3] = np.nan
                o[4] = np.nan
                o[5] = 0.0
                o[6] = 0.0
                o[7] = 0.0
            o[8] = ts / tc if tc > 0.0 else np.nan

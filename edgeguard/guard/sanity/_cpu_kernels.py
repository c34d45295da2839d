"""Numba CPU kernels of the sanity statistics (private; imported lazily by ``cpu.py``).

Layer: :mod:`edgeguard.guard`. This module imports numba at import time, so only
:mod:`edgeguard.guard.sanity.cpu` imports it, inside functions, after checking
that numba is installed. The kernels live at module level so that numba's
on-disk cache (``cache=True``) can key them reliably.

Fast paths (see ``docs/sanity.md``, section 9, for the measurements):

* Work items are (frame, block of rows); inside an item, image rows are taken
  in blocks of about :data:`BLOCK` elements per channel (at least one row).
  NCHW blocks are contiguous in memory; NHWC blocks are de-interleaved into an
  L1-resident ``[C, R*W]`` buffer first. The block :data:`PF_BLOCKS` ahead is
  software-prefetched (``llvm.prefetch``), so memory and arithmetic overlap.
* float32 / float64: a branch-free pass per segment that LLVM vectorises
  (AVX-512: 16 float32 lanes for min/max (``llvm.minnum``/``llvm.maxnum``) and
  the saturation counts, 8 float64 lanes for the shifted sums and the
  horizontal differences). The pass does not test finiteness per element: a
  non-finite value makes the float64 sum of squares non-finite, and only then
  is the block, now in cache, read again by the careful scalar loop, which
  classifies every value; the fast pass's results for that block are discarded.
* uint8: exact integer arithmetic (int16 counts and int32 sums per segment of
  at most :data:`SEG_U8` elements, int64 per work item): sums of x and x*x,
  saturation counts, byte min/max, sums of |x[w] - x[w-1]| and |x - prev|;
  mean and variance come from the exact integer moments at the end (no NaN or
  Inf is possible).

``stats_*_par`` runs the items with ``prange``, ``stats_*_ser`` in a plain loop
(small tensors, where the parallel launch costs more than the work). Both merge
the items' partials (Chan's formula for the float path) in the same compiled
call, so a Python caller pays one dispatch.
"""

# mypy: disable-error-code="no-untyped-def,no-untyped-call,call-arg"

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "merge",
    "stats_float_par",
    "stats_float_ser",
    "stats_u8_par",
    "stats_u8_ser",
]

# fastmath subset that lets LLVM vectorise the float64 reductions; never nnan/ninf,
# which would fold away the finiteness tests.
fm = {"reassoc", "contract", "nsz", "arcp"}

#: Default elements per channel in a block of image rows (at least one row). Measured
#: (benchmarks/bench_sanity.py, docs/sanity.md): one row per block for camera frames
#: streams best; narrow frames get several rows per block (less per-row overhead).
BLOCK = 1 << 10
#: Elements per float fast-path segment (16 KiB of float32: stays in L1 between the
#: two loops; the float32 saturation counts stay exact).
SEG_F = 1 << 12
#: Blocks prefetched ahead of the block being read (software prefetch).
PF_BLOCKS = 2
#: Elements per uint8 segment: the int32 sum of squares and the int16 counts stay exact.
SEG_U8 = 1 << 14

# Float64 accumulators per (item, channel), as in cpu.NACC.
A_CNT, A_SHIFT, A_S1, A_S2, A_SLO, A_SHI, A_HS, A_HC, A_TS, A_TC = range(10)
NACC = 10
# Integer accumulators per (item, channel) of the uint8 path.
U_S1, U_S2, U_SLO, U_SHI, U_HS, U_TS, U_MIN, U_MAX = range(8)
NUACC = 8
# Rows of the float output: min, max, mean, std, sat_lo, sat_hi, hf, tdiff.
O_MIN, O_MAX, O_MEAN, O_STD, O_SLO, O_SHI, O_HF, O_TD = range(8)


def _minmax_intrinsic(name):
    @intrinsic
    def impl(typingctx, a, b):
        if not isinstance(a, types.Float) or a != b:
            return None
        sig = a(a, a)

        def codegen(context, builder, signature, args):
            ty = context.get_value_type(signature.return_type)
            suffix = "f32" if ty == ir.FloatType() else "f64"
            fnty = ir.FunctionType(ty, [ty, ty])
            fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.{name}.{suffix}")
            # nnan nsz: lowered to vminps / vmaxps. Only meaningful when neither value is
            # NaN; the callers discard the result of any segment that holds a NaN.
            return builder.call(fn, args, fastmath=("nnan", "nsz"))

        return sig, codegen

    return impl


fmin_finite = _minmax_intrinsic("minnum")
fmax_finite = _minmax_intrinsic("maxnum")


@intrinsic
def prefetch_row(typingctx, arr):
    """Ask the CPU to bring a contiguous 1-D array into cache (no-op semantically)."""
    if not isinstance(arr, types.Array) or arr.ndim != 1 or arr.layout != "C":
        return None
    sig = types.void(arr)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, ir.IntType(32), ir.IntType(32), ir.IntType(32)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        base = builder.bitcast(ary.data, i8p)
        itemsize = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
        nbytes = builder.mul(ary.nitems, context.get_constant(types.intp, itemsize))
        with cgutils.for_range_slice(
            builder,
            context.get_constant(types.intp, 0),
            nbytes,
            context.get_constant(types.intp, 64),
        ) as (off, _):
            ptr = builder.gep(base, [off])
            i32 = ir.IntType(32)
            builder.call(fn, [ptr, i32(0), i32(2), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


# ----------------------------------------------------------------------------------
# float path: per-segment loops


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
    mn = mm[0]
    mx = mm[1]
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
            fc[0] += 1
        elif f > 0.0:
            fc[1] += 1
        else:
            fc[2] += 1
    acc[A_CNT] += cnt
    acc[A_S1] += s1
    acc[A_S2] += s2
    acc[A_SLO] += slo
    acc[A_SHI] += shi
    acc[A_HS] += hs
    acc[A_HC] += hc
    mm[0] = mn
    mm[1] = mx


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


@njit(nogil=True)
def prefetch_block(flat, start, stop):
    # Ask for flat[start:stop] (clipped) to be brought into cache.
    start = max(start, 0)
    stop = min(stop, flat.size)
    if stop > start:
        prefetch_row(flat[start:stop])


@njit(nogil=True)
def block_rows(width, limit):
    # Image rows per block: blocks of about `limit` elements per channel, at least one row.
    return max(1, limit // max(width, 1))


@njit(fastmath=fm, nogil=True)
def item_float(x, px, nhwc, has_prev, lo, hi, lo_t, hi_t, one, n, r0, r1, acc, mm, fc, blk_len, pf):
    # One work item: rows [r0, r1) of frame n, every channel. acc [C, NACC] zeroed,
    # mm [C, 2], fc [3] zeroed by the caller. Rows are taken in blocks of R rows
    # (R * W ~ blk_len elements per channel, at least one row): NCHW blocks are
    # contiguous in x, NHWC blocks are de-interleaved into buf first. The block pf
    # blocks ahead is prefetched. A block whose fast pass meets a non-finite value is
    # redone (from cache) by the careful loop, row by row.
    if nhwc:
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    else:
        channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    for c in range(channels):
        mm[c, 0] = np.inf
        mm[c, 1] = -np.inf
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
                r = seg_fast(blk, a, min(m, a + SEG_F), shift, lo_t, hi_t, one)
                s1 += r[0]
                s2 += r[1]
                slo += r[2]
                shi += r[3]
                mn = min(mn, r[4])
                mx = max(mx, r[5])
                hs += r[6]
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
                mm[c, 0] = min(mm[c, 0], mn)
                mm[c, 1] = max(mm[c, 1], mx)
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
                    t = tdiff_careful(blk, pblk, 0, m)
                    ac[A_TS] += t[0]
                    ac[A_TC] += t[1]


@njit(nogil=True)
def merge_float(part, mm, fcnt, nb, eps, fo, count, ff):
    # Chan merge of the items of each frame. fo [8, N, C], count [N, C], ff [3, N].
    n_frames = count.shape[0]
    channels = count.shape[1]
    for n in range(n_frames):
        ff[0, n] = 0
        ff[1, n] = 0
        ff[2, n] = 0
        for b in range(nb):
            ff[0, n] += fcnt[n * nb + b, 0]
            ff[1, n] += fcnt[n * nb + b, 1]
            ff[2, n] += fcnt[n * nb + b, 2]
        for c in range(channels):
            cnt = 0.0
            mean = 0.0
            m2 = 0.0
            mn = np.inf
            mx = -np.inf
            slo = 0.0
            shi = 0.0
            hs = 0.0
            hc = 0.0
            ts = 0.0
            tc = 0.0
            for b in range(nb):
                acc = part[n * nb + b, c]
                k = acc[A_CNT]
                if k > 0.0:
                    mb = acc[A_SHIFT] + acc[A_S1] / k
                    m2b = max(acc[A_S2] - acc[A_S1] * acc[A_S1] / k, 0.0)
                    tot = cnt + k
                    delta = mb - mean
                    mean = mean + delta * (k / tot)
                    m2 = m2 + m2b + delta * delta * (cnt * k / tot)
                    cnt = tot
                    mn = min(mn, mm[n * nb + b, c, 0])
                    mx = max(mx, mm[n * nb + b, c, 1])
                slo += acc[A_SLO]
                shi += acc[A_SHI]
                hs += acc[A_HS]
                hc += acc[A_HC]
                ts += acc[A_TS]
                tc += acc[A_TC]
            count[n, c] = np.int64(cnt)
            fo[O_TD, n, c] = ts / tc if tc > 0.0 else np.nan
            if cnt > 0.0:
                std = math.sqrt(m2 / cnt)
                fo[O_MIN, n, c] = mn
                fo[O_MAX, n, c] = mx
                fo[O_MEAN, n, c] = mean
                fo[O_STD, n, c] = std
                fo[O_SLO, n, c] = slo / cnt
                fo[O_SHI, n, c] = shi / cnt
                fo[O_HF, n, c] = (hs / hc) / (std + eps) if hc > 0.0 else 0.0
            else:
                fo[O_MIN, n, c] = np.inf
                fo[O_MAX, n, c] = -np.inf
                fo[O_MEAN, n, c] = np.nan
                fo[O_STD, n, c] = np.nan
                fo[O_SLO, n, c] = 0.0
                fo[O_SHI, n, c] = 0.0
                fo[O_HF, n, c] = 0.0


@njit(nogil=True)
def _float_setup(x, nhwc, nb):
    n_frames = x.shape[0]
    channels = x.shape[3] if nhwc else x.shape[1]
    items = n_frames * nb
    part = np.zeros((items, channels, NACC))
    mm = np.empty((items, channels, 2))
    fcnt = np.zeros((items, 3), dtype=np.int64)
    fo = np.empty((8, n_frames, channels))
    count = np.empty((n_frames, channels), dtype=np.int64)
    ff = np.empty((3, n_frames), dtype=np.int64)
    return part, mm, fcnt, fo, count, ff


@njit(parallel=True, fastmath=fm, cache=True, nogil=True)
def stats_float_par(x, px, nhwc, has_prev, lo, hi, lo_t, hi_t, one, nb, rows, eps, blk_len, pf):
    """Float statistics, work items in parallel: returns (fo [8,N,C], count, ff [3,N])."""
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


# ----------------------------------------------------------------------------------
# uint8 path: exact integer arithmetic


@njit(nogil=True)
def seg_u8(blk, a, b, lo_i, hi_i):
    # Integer statistics of blk[a:b] except the horizontal pairs; b - a <= SEG_U8 keeps
    # the int32 sum of squares and the int16 counts exact. Two loops over the
    # L1-resident segment: byte-wide min/max and saturation counts, then int32 sums.
    seg = blk[a:b]
    mn = np.uint8(255)
    mx = np.uint8(0)
    lo8 = np.uint8(min(max(lo_i, 0), 255))
    hi8 = np.uint8(min(max(hi_i, 0), 255))
    slo = np.int16(0)
    shi = np.int16(0)
    for w in range(seg.size):
        u = seg[w]
        mn = min(mn, u)
        mx = max(mx, u)
        slo = np.int16(slo + np.int16(u <= lo8))
        shi = np.int16(shi + np.int16(u >= hi8))
    z = np.int32(0)
    s1 = z
    s2 = z
    hs = z  # pairs (w-1, w) for w in [max(a, 1), b) of blk, as if blk were one row
    pv = np.int32(blk[a - 1]) if a > 0 else np.int32(seg[0])
    for w in range(seg.size):
        v = np.int32(seg[w])
        s1 = np.int32(s1 + v)
        s2 = np.int32(s2 + np.int32(v * v))
        hs = np.int32(hs + np.int32(abs(v - pv)))
        pv = v
    # lo_i = -1: nothing is <= lo; hi_i = 256: nothing is >= hi (lo8 / hi8 were clamped).
    nlo = np.int32(slo) if lo_i >= 0 else z
    nhi = np.int32(shi) if hi_i <= 255 else z
    return s1, s2, nlo, nhi, mn, mx, hs


@njit(nogil=True)
def row_hs_u8(row):
    # Sum of |row[w] - row[w-1]| (int64; int32 per SEG_U8 chunk).
    hs = np.int64(0)
    if row.size > 1:
        for a in range(0, row.size, SEG_U8):
            seg = row[a : min(row.size, a + SEG_U8)]
            pv = np.int32(row[a - 1]) if a > 0 else np.int32(row[0])
            t = np.int32(0)
            for w in range(seg.size):
                v = np.int32(seg[w])
                t = np.int32(t + np.int32(abs(v - pv)))
                pv = v
            hs += t
    return hs


@njit(nogil=True)
def tdiff_u8(row, prow, a, b):
    ts = np.int32(0)
    seg = row[a:b]
    pseg = prow[a:b]
    for w in range(seg.size):
        ts = np.int32(ts + np.int32(abs(np.int32(seg[w]) - np.int32(pseg[w]))))
    return ts


@njit(nogil=True)
def item_u8(x, px, nhwc, has_prev, lo_i, hi_i, n, r0, r1, acc, blk_len, pf):
    # acc [C, NUACC] int64, zeroed by the caller. Blocks of rows as in item_float.
    if nhwc:
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    else:
        channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    for c in range(channels):
        acc[c, U_MIN] = 255
        acc[c, U_MAX] = 0
    if width == 0 or r1 <= r0:
        return
    rb = block_rows(width, blk_len)
    bw = rb * width if nhwc else 0
    buf = np.empty((channels, bw), dtype=np.uint8)
    pbuf = np.empty((channels, bw if has_prev else 0), dtype=np.uint8)
    flat = x.reshape(-1)
    pflat = px.reshape(-1)
    plane = height * width
    fbase = n * channels * plane
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
            for a in range(0, m, SEG_U8):
                b = min(m, a + SEG_U8)
                r = seg_u8(blk, a, b, lo_i, hi_i)
                ac[U_S1] += r[0]
                ac[U_S2] += r[1]
                ac[U_SLO] += r[2]
                ac[U_SHI] += r[3]
                ac[U_MIN] = min(ac[U_MIN], np.int64(r[4]))
                ac[U_MAX] = max(ac[U_MAX], np.int64(r[5]))
                if has_prev:
                    ac[U_TS] += tdiff_u8(blk, pblk, a, b)
                if h1 - h0 == 1:
                    ac[U_HS] += r[6]
            if h1 - h0 > 1:  # several rows: the recurrence crossed row starts
                for j in range(h1 - h0):
                    ac[U_HS] += row_hs_u8(blk[j * width : (j + 1) * width])


@njit(nogil=True)
def merge_u8(part, nb, height, width, has_prev, eps, fo, count, ff):
    # Exact integer moments -> float64 at the end.
    n_frames = count.shape[0]
    channels = count.shape[1]
    k = np.int64(height) * np.int64(width)
    pairs = np.int64(height) * np.int64(max(width - 1, 0))
    kf = np.float64(k)
    for n in range(n_frames):
        ff[0, n] = 0
        ff[1, n] = 0
        ff[2, n] = 0
        for c in range(channels):
            s1 = np.int64(0)
            s2 = np.int64(0)
            slo = np.int64(0)
            shi = np.int64(0)
            hs = np.int64(0)
            ts = np.int64(0)
            mn = np.int64(255)
            mx = np.int64(0)
            for b in range(nb):
                acc = part[n * nb + b, c]
                s1 += acc[U_S1]
                s2 += acc[U_S2]
                slo += acc[U_SLO]
                shi += acc[U_SHI]
                hs += acc[U_HS]
                ts += acc[U_TS]
                mn = min(mn, acc[U_MIN])
                mx = max(mx, acc[U_MAX])
            count[n, c] = k
            if k > 0:
                # sum((x - q)^2) with q = round(mean) is exact in int64; then
                # M2 = T - r^2 / k with r = S1 - q k, |r| <= k / 2.
                q = (2 * s1 + k) // (2 * k)
                r = s1 - q * k
                t = s2 - 2 * q * s1 + k * q * q
                rf = np.float64(r)
                m2 = max(np.float64(t) - rf * (rf / kf), 0.0)
                std = math.sqrt(m2 / kf)
                fo[O_MIN, n, c] = np.float64(mn)
                fo[O_MAX, n, c] = np.float64(mx)
                fo[O_MEAN, n, c] = np.float64(s1) / kf
                fo[O_STD, n, c] = std
                fo[O_SLO, n, c] = np.float64(slo) / kf
                fo[O_SHI, n, c] = np.float64(shi) / kf
                fo[O_HF, n, c] = (
                    (np.float64(hs) / np.float64(pairs)) / (std + eps) if pairs else 0.0
                )
                fo[O_TD, n, c] = np.float64(ts) / kf if has_prev else np.nan
            else:
                fo[O_MIN, n, c] = np.inf
                fo[O_MAX, n, c] = -np.inf
                fo[O_MEAN, n, c] = np.nan
                fo[O_STD, n, c] = np.nan
                fo[O_SLO, n, c] = 0.0
                fo[O_SHI, n, c] = 0.0
                fo[O_HF, n, c] = 0.0
                fo[O_TD, n, c] = np.nan


@njit(nogil=True)
def _u8_setup(x, nhwc, nb):
    n_frames = x.shape[0]
    channels = x.shape[3] if nhwc else x.shape[1]
    part = np.zeros((n_frames * nb, channels, NUACC), dtype=np.int64)
    fo = np.empty((8, n_frames, channels))
    count = np.empty((n_frames, channels), dtype=np.int64)
    ff = np.empty((3, n_frames), dtype=np.int64)
    return part, fo, count, ff


@njit(parallel=True, cache=True, nogil=True)
def stats_u8_par(x, px, nhwc, has_prev, lo_i, hi_i, nb, rows, eps, blk_len, pf):
    """uint8 statistics, work items in parallel: returns (fo [8,N,C], count, ff [3,N])."""
    height, width = (x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3])
    part, fo, count, ff = _u8_setup(x, nhwc, nb)
    for it in prange(x.shape[0] * nb):
        n = it // nb
        r0 = (it % nb) * rows
        r1 = min(height, r0 + rows)
        item_u8(x, px, nhwc, has_prev, lo_i, hi_i, n, r0, r1, part[it], blk_len, pf)
    merge_u8(part, nb, height, width, has_prev, eps, fo, count, ff)
    return fo, count, ff


@njit(cache=True, nogil=True)
def stats_u8_ser(x, px, nhwc, has_prev, lo_i, hi_i, eps, blk_len, pf):
    """uint8 statistics in one thread (small tensors)."""
    height, width = (x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3])
    part, fo, count, ff = _u8_setup(x, nhwc, 1)
    for n in range(x.shape[0]):
        item_u8(x, px, nhwc, has_prev, lo_i, hi_i, n, 0, height, part[n], blk_len, pf)
    merge_u8(part, 1, height, width, has_prev, eps, fo, count, ff)
    return fo, count, ff


# ----------------------------------------------------------------------------------
# Shared with the Numba CUDA implementation (cpu.merge_partials): merges partials
# whose min/max are order-preserving integer keys.


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

"""Numba CUDA implementation of the one-pass sanity statistics.

Layer: :mod:`edgeguard.guard`. ``numba.cuda`` is imported lazily at first use.
On CPU-only hosts the kernel runs under the CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, which numba reads when ``numba.cuda`` is first
imported); the tests do that in a subprocess. It has never run on a real GPU
in this project's CI (see ``docs/sanity.md``).

Design: one thread block per work item (frame n, channel c, block of rows b).
Each thread strides over the item's elements, accumulating float64 shifted
sums (shift = the first finite value *that thread* saw), min/max as
order-preserving integer keys, saturation counts, horizontal pairs
``(w, w+1)`` it owns and temporal differences. The block then merges its
threads' partials in shared memory with Chan's parallel formula and thread 0
writes one partial per item; the host merges the row blocks of a frame with
the same code as the Numba CPU implementation
(:func:`edgeguard.guard.sanity.cpu.merge_partials`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeguard._optional import require
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
    KIND_F32,
    KIND_F64,
    KIND_U8,
    NACC,
    NFC,
    NKEY,
)
from edgeguard.guard.sanity.cpu import as_kernel_input, merge_partials
from edgeguard.guard.sanity.layout import resolve_stats_args
from edgeguard.guard.sanity.spec import FrameStats

__all__ = ["THREADS_PER_BLOCK", "cuda_available", "numba_cuda_stats"]

#: Threads per block (a power of two; the shared-memory reduction relies on it).
THREADS_PER_BLOCK = 128
#: Rows per work item (block).
ROWS_PER_BLOCK = 16

# numba.cuda, bound at first use. The kernel must see it as a module global: the
# CUDA simulator swaps module globals named after numba.cuda for its fake module.
cuda: Any = None


def cuda_available() -> bool:
    """Whether numba.cuda reports a usable device (or the simulator is enabled)."""
    try:
        cuda = require("numba.cuda", extra="numba", purpose="The Numba CUDA sanity kernel")
        return bool(cuda.is_available())
    except Exception:
        return False


@functools.lru_cache(maxsize=4)
def _kernel(tpb: int) -> Callable[..., Any]:
    global cuda
    cuda = require("numba.cuda", extra="numba", purpose="The Numba CUDA sanity kernel")
    f64 = np.float64

    @cuda.jit
    def stats_kernel(  # type: ignore[no-untyped-def]
        x, xk, px, kind, nhwc, has_prev, lo, hi, nb, rows, part, kpart, fcnt
    ):
        # x, px: input and previous batch, [N, C, H, W] (nhwc == 0) or [N, H, W, C];
        # xk: order-preserving integer view of x (int32 / int64 bits, uint8 values).
        s_cnt = cuda.shared.array(tpb, dtype=f64)
        s_mean = cuda.shared.array(tpb, dtype=f64)
        s_m2 = cuda.shared.array(tpb, dtype=f64)
        s_f = cuda.shared.array((6, tpb), dtype=f64)  # slo, shi, hs, hc, ts, tc
        s_k = cuda.shared.array((5, tpb), dtype=np.int64)  # kmin, kmax, nan, +inf, -inf
        tid = cuda.threadIdx.x
        item = cuda.blockIdx.x
        if nhwc:
            channels = x.shape[3]
            height = x.shape[1]
            width = x.shape[2]
        else:
            channels = x.shape[1]
            height = x.shape[2]
            width = x.shape[3]
        c = item % channels
        nb_idx = item // channels
        n = nb_idx // nb
        b = nb_idx % nb
        r0 = b * rows
        r1 = min(height, r0 + rows)
        if kind == KIND_F32:
            maxkey = np.int64(2147483647)
            minkey = np.int64(-2147483648)
        elif kind == KIND_F64:
            maxkey = np.int64(9223372036854775807)
            minkey = np.int64(-9223372036854775807 - 1)
        else:
            maxkey = np.int64(255)
            minkey = np.int64(0)
        cnt = 0.0
        shift = 0.0
        s1 = 0.0
        s2 = 0.0
        slo = 0.0
        shi = 0.0
        hs = 0.0
        hc = 0.0
        ts = 0.0
        tc = 0.0
        kmin = maxkey
        kmax = minkey
        nn = 0
        pi = 0
        ni = 0
        total = (r1 - r0) * width if r1 > r0 else 0
        e = tid
        while e < total:
            h = r0 + e // width
            w = e % width
            if nhwc:
                v = f64(x[n, h, w, c])
                k = np.int64(xk[n, h, w, c])
            else:
                v = f64(x[n, c, h, w])
                k = np.int64(xk[n, c, h, w])
            if abs(v) < math.inf:
                if cnt == 0.0:
                    shift = v
                cnt += 1.0
                d = v - shift
                s1 += d
                s2 += d * d
                if v <= lo:
                    slo += 1.0
                if v >= hi:
                    shi += 1.0
                if kind == KIND_F32:
                    key = k ^ ((k >> 31) & 2147483647)
                elif kind == KIND_F64:
                    key = k ^ ((k >> 63) & 9223372036854775807)
                else:
                    key = k
                kmin = min(kmin, key)
                kmax = max(kmax, key)
                if w + 1 < width:
                    u = f64(x[n, h, w + 1, c]) if nhwc else f64(x[n, c, h, w + 1])
                    if abs(u) < math.inf:
                        hs += abs(u - v)
                        hc += 1.0
                if has_prev:
                    q = f64(px[n, h, w, c]) if nhwc else f64(px[n, c, h, w])
                    if abs(q) < math.inf:
                        ts += abs(v - q)
                        tc += 1.0
            elif v != v:
                nn += 1
            elif v > 0:
                pi += 1
            else:
                ni += 1
            e += tpb
        s_cnt[tid] = cnt
        if cnt > 0.0:
            s_mean[tid] = shift + s1 / cnt
            s_m2[tid] = max(s2 - s1 * s1 / cnt, 0.0)
        else:
            s_mean[tid] = 0.0
            s_m2[tid] = 0.0
        s_f[0, tid] = slo
        s_f[1, tid] = shi
        s_f[2, tid] = hs
        s_f[3, tid] = hc
        s_f[4, tid] = ts
        s_f[5, tid] = tc
        s_k[0, tid] = kmin
        s_k[1, tid] = kmax
        s_k[2, tid] = nn
        s_k[3, tid] = pi
        s_k[4, tid] = ni
        cuda.syncthreads()
        stride = tpb // 2
        while stride > 0:
            if tid < stride:
                o = tid + stride
                na = s_cnt[tid]
                nb2 = s_cnt[o]
                tot = na + nb2
                if nb2 > 0.0:
                    delta = s_mean[o] - s_mean[tid]
                    s_mean[tid] = s_mean[tid] + delta * (nb2 / tot)
                    s_m2[tid] = s_m2[tid] + s_m2[o] + delta * delta * (na * nb2 / tot)
                    s_cnt[tid] = tot
                for j in range(6):
                    s_f[j, tid] += s_f[j, o]
                s_k[0, tid] = min(s_k[0, tid], s_k[0, o])
                s_k[1, tid] = max(s_k[1, tid], s_k[1, o])
                s_k[2, tid] += s_k[2, o]
                s_k[3, tid] += s_k[3, o]
                s_k[4, tid] += s_k[4, o]
            cuda.syncthreads()
            stride //= 2
        if tid == 0:
            it = n * nb + b
            part[it, c, A_CNT] = s_cnt[0]
            part[it, c, A_SHIFT] = s_mean[0]  # shift = mean, s1 = 0, s2 = M2
            part[it, c, A_S1] = 0.0
            part[it, c, A_S2] = s_m2[0]
            part[it, c, A_SLO] = s_f[0, 0]
            part[it, c, A_SHI] = s_f[1, 0]
            part[it, c, A_HS] = s_f[2, 0]
            part[it, c, A_HC] = s_f[3, 0]
            part[it, c, A_TS] = s_f[4, 0]
            part[it, c, A_TC] = s_f[5, 0]
            kpart[it, c, K_MIN] = s_k[0, 0]
            kpart[it, c, K_MAX] = s_k[1, 0]
            fcnt[it, c, FC_NAN] = s_k[2, 0]
            fcnt[it, c, FC_POSINF] = s_k[3, 0]
            fcnt[it, c, FC_NEGINF] = s_k[4, 0]

    return stats_kernel  # type: ignore[no-any-return]


def numba_cuda_stats(
    x: npt.NDArray[Any],
    *,
    layout: str = "NCHW",
    sat_lo: float | None = None,
    sat_hi: float | None = None,
    prev: npt.NDArray[Any] | None = None,
    rows_per_block: int = ROWS_PER_BLOCK,
    threads_per_block: int = THREADS_PER_BLOCK,
) -> FrameStats:
    """Compute the sanity statistics with the Numba CUDA kernel.

    Same arguments, result and errors as
    :func:`~edgeguard.guard.sanity.reference.reference_stats`, plus
    ``rows_per_block`` (rows of one frame channel handled by one thread block) and
    ``threads_per_block`` (a power of two; small values keep the simulator fast).

    Raises:
        UsageError: Invalid arguments.
        MissingDependencyError: numba is not installed.
        BackendError: No CUDA device (and the simulator is not enabled).
    """
    from edgeguard.errors import BackendError, UsageError

    lo, hi = resolve_stats_args(x, layout, sat_lo, sat_hi, prev)
    if rows_per_block < 1:
        raise UsageError("rows_per_block must be >= 1")
    tpb = threads_per_block
    if tpb < 1 or tpb > 1024 or tpb & (tpb - 1):
        raise UsageError("threads_per_block must be a power of two in [1, 1024]")
    cuda = require("numba.cuda", extra="numba", purpose="The Numba CUDA sanity kernel")
    if not cuda.is_available():
        raise BackendError(
            "no CUDA device is available for the numba-cuda sanity kernel",
            hint="use impl='numba' on hosts, or set NUMBA_ENABLE_CUDASIM=1 to simulate",
        )
    kx, nhwc = as_kernel_input(x, layout)
    kp = kx if prev is None else as_kernel_input(prev, layout)[0]
    if nhwc:
        n_frames, height, width, channels = kx.shape
    else:
        n_frames, channels, height, width = kx.shape
    nb = max(1, math.ceil(height / rows_per_block)) if height > 0 else 1
    rows = rows_per_block
    items = n_frames * nb
    kind = KIND_U8 if kx.dtype == np.uint8 else (KIND_F32 if kx.dtype == np.float32 else KIND_F64)
    xk = kx if kind == KIND_U8 else kx.view(np.int32 if kind == KIND_F32 else np.int64)
    part = np.zeros((items, channels, NACC), dtype=np.float64)
    kpart = np.zeros((items, channels, NKEY), dtype=np.int64)
    fcnt = np.zeros((items, channels, NFC), dtype=np.int64)
    if items and channels and width > 0:
        d_part = cuda.to_device(part)
        d_kpart = cuda.to_device(kpart)
        d_fcnt = cuda.to_device(fcnt)
        kernel: Any = _kernel(tpb)
        kernel[items * channels, tpb](
            cuda.to_device(kx),
            cuda.to_device(xk),
            cuda.to_device(kp),
            kind,
            nhwc,
            prev is not None,
            lo,
            hi,
            nb,
            rows,
            d_part,
            d_kpart,
            d_fcnt,
        )
        part = d_part.copy_to_host()
        kpart = d_kpart.copy_to_host()
        fcnt = d_fcnt.copy_to_host()
    return merge_partials(
        part,
        kpart,
        fcnt.sum(axis=1),
        nb,
        n_frames,
        kind=kind,
        layout=layout,
        lo=lo,
        hi=hi,
        has_prev=prev is not None,
    )

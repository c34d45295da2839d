"""The merges: an input's work-item partials into per-frame, per-channel statistics.

Layer: :mod:`edgeguard.guard`. Private to :mod:`edgeguard.guard.sanity._cpu`.
``merge_float`` (float partials, Chan's formula) and ``merge_u8`` (exact
integer moments) write the drivers' result rows (``O_*``); ``merge`` merges
partials whose min/max are order-preserving integer keys into records
(``R_*``) and is shared with the Numba CUDA implementation
(``cpu.merge_partials``). Every slot is named in
:mod:`edgeguard.guard.sanity._kernel_layout`.
"""

# numba compiles these functions from their unannotated source.
# mypy: disable-error-code="no-untyped-def"

from __future__ import annotations

import math

import numpy as np
from numba import njit

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
    KIND_U8,
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
    U_HS,
    U_MAX,
    U_MIN,
    U_S1,
    U_S2,
    U_SHI,
    U_SLO,
    U_TS,
)

__all__ = ["merge", "merge_float", "merge_u8"]


@njit(nogil=True)
def merge_float(part, mm, fcnt, nb, eps, fo, count, ff):
    # Chan merge of the items of each frame. fo [NOUT, N, C], count [N, C], ff [NFC, N].
    n_frames = count.shape[0]
    channels = count.shape[1]
    for n in range(n_frames):
        ff[FC_NAN, n] = 0
        ff[FC_POSINF, n] = 0
        ff[FC_NEGINF, n] = 0
        for b in range(nb):
            ff[FC_NAN, n] += fcnt[n * nb + b, FC_NAN]
            ff[FC_POSINF, n] += fcnt[n * nb + b, FC_POSINF]
            ff[FC_NEGINF, n] += fcnt[n * nb + b, FC_NEGINF]
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
                    mn = min(mn, mm[n * nb + b, c, K_MIN])
                    mx = max(mx, mm[n * nb + b, c, K_MAX])
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
def merge_u8(part, nb, height, width, has_prev, eps, fo, count, ff):
    # Exact integer moments -> float64 at the end.
    n_frames = count.shape[0]
    channels = count.shape[1]
    k = np.int64(height) * np.int64(width)
    pairs = np.int64(height) * np.int64(max(width - 1, 0))
    kf = np.float64(k)
    for n in range(n_frames):
        ff[FC_NAN, n] = 0
        ff[FC_POSINF, n] = 0
        ff[FC_NEGINF, n] = 0
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


@njit(cache=True, nogil=True)
def merge(part, kpart, nb, kind, eps, out):
    # out[n, c, :] = count, min, max, mean, std, sat_lo, sat_hi, hf, tdiff (R_* slots);
    # kind: KIND_U8, KIND_F32, or KIND_F64 (how the min/max keys map back to values)
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
                k = acc[A_CNT]
                if k > 0.0:
                    mb = acc[A_SHIFT] + acc[A_S1] / k
                    m2b = max(acc[A_S2] - acc[A_S1] * acc[A_S1] / k, 0.0)
                    tot = cnt + k
                    delta = mb - mean
                    mean = mean + delta * (k / tot)
                    m2 = m2 + m2b + delta * delta * (cnt * k / tot)
                    if cnt == 0.0:
                        kmn = kpart[n * nb + b, c, K_MIN]
                        kmx = kpart[n * nb + b, c, K_MAX]
                    else:
                        kmn = min(kmn, kpart[n * nb + b, c, K_MIN])
                        kmx = max(kmx, kpart[n * nb + b, c, K_MAX])
                    cnt = tot
                slo += acc[A_SLO]
                shi += acc[A_SHI]
                hs += acc[A_HS]
                hc += acc[A_HC]
                ts += acc[A_TS]
                tc += acc[A_TC]
            o = out[n, c]
            o[R_CNT] = cnt
            if cnt > 0.0:
                if kind == KIND_U8:
                    o[R_MIN] = np.float64(kmn)
                    o[R_MAX] = np.float64(kmx)
                elif kind == KIND_F32:
                    t32[0] = np.int32(kmn ^ ((kmn >> 31) & 0x7FFFFFFF))
                    o[R_MIN] = np.float64(f32[0])
                    t32[0] = np.int32(kmx ^ ((kmx >> 31) & 0x7FFFFFFF))
                    o[R_MAX] = np.float64(f32[0])
                else:
                    t64[0] = kmn ^ ((kmn >> 63) & 0x7FFFFFFFFFFFFFFF)
                    o[R_MIN] = f64[0]
                    t64[0] = kmx ^ ((kmx >> 63) & 0x7FFFFFFFFFFFFFFF)
                    o[R_MAX] = f64[0]
                std = math.sqrt(m2 / cnt)
                o[R_MEAN] = mean
                o[R_STD] = std
                o[R_SLO] = slo / cnt
                o[R_SHI] = shi / cnt
                o[R_HF] = (hs / hc) / (std + eps) if hc > 0.0 else 0.0
            else:
                o[R_MIN] = np.inf
                o[R_MAX] = -np.inf
                o[R_MEAN] = np.nan
                o[R_STD] = np.nan
                o[R_SLO] = 0.0
                o[R_SHI] = 0.0
                o[R_HF] = 0.0
            o[R_TD] = ts / tc if tc > 0.0 else np.nan

"""Layout of the sanity kernels' accumulators and records, and their shared constants.

Layer: :mod:`edgeguard.guard`. The single source of every slot index, record
width and size constant that the Numba CPU kernels (the :mod:`._cpu` package:
compiled loops, loops written in LLVM IR, merges), the Numba CUDA kernel
(:mod:`.cuda`) and the host code that reads their results (:mod:`.cpu`) must
agree on. Plain Python integers, no import: :mod:`.cpu` and :mod:`.cuda` read
it at import time without importing numba, and numba freezes the values into
the compiled kernels as constants.

Arrays, by the name the kernels give them:

* ``part [items, C, NACC]`` float64: an item's float partials (``A_*``).
* ``mm`` / ``kpart [items, C, NKEY]``: an item's min and max (``K_*``), float64
  values (CPU float paths) or order-preserving integer keys (CUDA, ``merge``).
* ``fcnt [items, NFC]`` (CUDA: ``[items, C, NFC]``) / ``ff [NFC, N]`` int64: NaN,
  +inf, -inf counts (``FC_*``).
* ``acc [C, NUACC]`` int64: an item's uint8 partials (``U_*``); each call of a
  uint8 loop (LLVM IR) writes one record of ``NUACC`` values per channel in the
  same order, channel ``c`` at offset ``NUACC * c``.
* ``fo [NOUT, N, C]`` float64: the compiled drivers' result rows (``O_*``).
* ``out [N, C, NREC]`` float64: what ``merge`` writes per frame and channel (``R_*``).
* ``out [c, NF32]`` float32: what a float32 segment loop (LLVM IR) writes per
  channel (``F32_*``).
* ``st [C, NST]`` float64: the float32 path's running state per channel (``ST_*``).
"""

from __future__ import annotations

# --- partials shared by the CPU kernels, the CUDA kernel and the merge -------------

#: Float64 partials per (item, channel): count, shift, sum(x - shift),
#: sum((x - shift)^2), saturation counts low/high, horizontal-difference sum and
#: pairs, temporal-difference sum and pairs. After the float32 path and the CUDA
#: kernel an item holds (count, mean in A_SHIFT, 0, M2) instead of shifted sums.
A_CNT, A_SHIFT, A_S1, A_S2, A_SLO, A_SHI, A_HS, A_HC, A_TS, A_TC = range(10)
NACC = 10

#: Min and max per (item, channel) (``mm``: float values; ``kpart``: integer keys).
K_MIN, K_MAX = range(2)
NKEY = 2

#: Non-finite counts per item (``fcnt``) or per frame (``ff``): NaN, +inf, -inf.
FC_NAN, FC_POSINF, FC_NEGINF = range(3)
NFC = 3

#: Kinds of input ``merge`` distinguishes (how min/max keys map back to values).
KIND_U8, KIND_F32, KIND_F64 = 0, 1, 2

# --- results -----------------------------------------------------------------------

#: Rows of the drivers' float64 result ``fo``: min, max, mean, std, sat_lo, sat_hi,
#: hf, tdiff.
O_MIN, O_MAX, O_MEAN, O_STD, O_SLO, O_SHI, O_HF, O_TD = range(8)
NOUT = 8

#: Slots of ``merge``'s record per (frame, channel): count, min, max, mean, std,
#: sat_lo, sat_hi, hf, tdiff.
R_CNT, R_MIN, R_MAX, R_MEAN, R_STD, R_SLO, R_SHI, R_HF, R_TD = range(9)
NREC = 9

# --- uint8 path ----------------------------------------------------------------------

#: int64 partials per (item, channel) of the uint8 path, and the record a uint8 loop
#: call writes per channel: sum(x), sum(x^2), #(x <= lo), #(x >= hi), horizontal and
#: temporal absolute-difference sums, min, max.
U_S1, U_S2, U_SLO, U_SHI, U_HS, U_TS, U_MIN, U_MAX = range(8)
NUACC = 8

# --- float32 path --------------------------------------------------------------------

#: float32 record per channel of a float32 segment loop: sum(x - h), sum((x - h)^2),
#: horizontal difference sum, #(x <= lo), #(x >= hi), min, max, temporal difference sum.
F32_S1, F32_S2, F32_HS, F32_SLO, F32_SHI, F32_MIN, F32_MAX, F32_TS = range(8)
NF32 = 8

#: Running state per channel of the float32 path: Chan state (count, mean, M2),
#: saturation counts, horizontal difference sum, min, max; then the last block's
#: temporal difference sum and whether it was finite (1.0) or not (0.0).
ST_CNT, ST_MEAN, ST_M2, ST_SLO, ST_SHI, ST_HS, ST_MIN, ST_MAX, ST_TS, ST_TSOK = range(10)
NST = 10
#: Slots [0, NST_RUN) carry over from block to block; ST_TS and ST_TSOK describe one block.
NST_RUN = 8

# --- sizes of blocks, segments and loop calls ----------------------------------------

#: Default elements per channel in a block of image rows (at least one row). Measured
#: (benchmarks/bench_sanity.py, docs/sanity.md): one row per block for camera frames
#: streams best; narrow frames get several rows per block (less per-row overhead).
BLOCK = 1 << 10
#: Elements per float fast-path segment (16 KiB of float32: stays in L1 between the
#: two loops; the float32 saturation counts stay exact).
SEG_F = 1 << 12
#: Blocks prefetched ahead of the block being read (software prefetch).
PF_BLOCKS = 2
#: Values (pixels, for 3 interleaved channels) per call of the portable uint8 loops:
#: their 16-bit sums and 8-bit counts stay exact for 128 vectors of 64 values.
SEG_U8GEN = 1 << 13
#: Values (pixels, for 3 interleaved channels) per call of a SIMD uint8 loop: its int32
#: lanes (sums of x and of x*(x-128), at most 4 * 255 * 128 per vector) stay exact up to
#: 2^31 / 130560 = 16448 vectors per accumulator (the planar loop has two), 1 MiB.
SEG_U8SIMD = 1 << 18
#: Elements per float32 segment.
SEG32 = 1 << 11
#: Software-prefetch distance of the float32 path, in elements (16 KiB ahead).
PF32 = 1 << 12
#: Elements per channel in a block of rows of the float32 path (at least one row).
BLOCK32 = 1 << 11
#: Pixels per segment of the in-place 3-channel NHWC path.
SEG_C3 = 1 << 10
#: Deviations below this (in magnitude) are handled in float64 (float32 squares underflow).
TINY32 = 1e-14

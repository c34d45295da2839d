"""Layout of the Numba CPU kernels' accumulators and records, and their size constants.

Layer: :mod:`edgeguard.guard`. The single source of the slot indices, record
widths and block, segment and loop-call sizes that the modules of the
:mod:`._cpu` package (compiled loops, loops written in LLVM IR, merges) must
agree on. Plain Python integers, no import (it can be read without importing
numba); numba freezes the values into the compiled kernels as constants.

Arrays, by the name the kernels give them:

* ``part [items, C, NACC]`` float64: an item's float partials (``A_*``).
* ``acc [C, NUACC]`` int64: an item's uint8 partials (``U_*``); each call of a
  uint8 loop (LLVM IR) writes one record of ``NUACC`` values per channel in the
  same order, channel ``c`` at offset ``NUACC * c``.
* ``fo [8, N, C]`` float64: the compiled drivers' result rows (``O_*``).
"""

from __future__ import annotations

# --- partials ----------------------------------------------------------------------

#: Float64 partials per (item, channel): count, shift, sum(x - shift),
#: sum((x - shift)^2), saturation counts low/high, horizontal-difference sum and
#: pairs, temporal-difference sum and pairs. After the float32 path and the CUDA
#: kernel an item holds (count, mean in A_SHIFT, 0, M2) instead of shifted sums.
A_CNT, A_SHIFT, A_S1, A_S2, A_SLO, A_SHI, A_HS, A_HC, A_TS, A_TC = range(10)
NACC = 10

# --- results -----------------------------------------------------------------------

#: Rows of the drivers' float64 result ``fo``: min, max, mean, std, sat_lo, sat_hi,
#: hf, tdiff.
O_MIN, O_MAX, O_MEAN, O_STD, O_SLO, O_SHI, O_HF, O_TD = range(8)

# --- uint8 path ----------------------------------------------------------------------

#: int64 partials per (item, channel) of the uint8 path, and the record a uint8 loop
#: call writes per channel: sum(x), sum(x^2), #(x <= lo), #(x >= hi), horizontal and
#: temporal absolute-difference sums, min, max.
U_S1, U_S2, U_SLO, U_SHI, U_HS, U_TS, U_MIN, U_MAX = range(8)
NUACC = 8

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

"""Numba CPU kernels of the sanity statistics (private; imported lazily by ``cpu.py``).

Layer: :mod:`edgeguard.guard`. This package imports numba at import time, so only
:mod:`edgeguard.guard.sanity.cpu` imports it, inside functions, after checking
that numba is installed. It re-exports what ``cpu.py`` (and the tests) use. The
compiled entry points live at module level (:mod:`.drivers`, :mod:`.merge`,
:mod:`.checks`) so that numba's on-disk cache (``cache=True``) can key them
reliably.

Modules, by datapath (each imports only the ones listed before it):

* :mod:`edgeguard.guard.sanity._kernel_layout` (outside this package, numba-free):
  the slots of every accumulator and record, and the block, segment and loop-call
  sizes.
* :mod:`.ir`: LLVM IR building blocks and small intrinsics (min/max, prefetch).
* :mod:`.common`: the fastmath subset, the block prefetch, rows per block.
* :mod:`.u8_ir`: the uint8 loops in LLVM IR (AVX-512 BW + VNNI, and portable).
* :mod:`.f32_ir`: the float32 segment loops in LLVM IR.
* :mod:`.f64`: the float (float64) datapath and the careful loops.
* :mod:`.f32`: the float32 datapath.
* :mod:`.u8`: the uint8 datapath.
* :mod:`.merge`: the merges of the items' partials (one shared with CUDA).
* :mod:`.drivers`: the parallel and serial entry points.
* :mod:`.checks`: the guard's envelope test and the non-finite count.

numba keys a cached kernel on its own source file: editing a module that a
cached kernel calls (or :mod:`._kernel_layout`) does not invalidate that cache
entry. After such an edit, clear the cache (``__pycache__/*.nbi`` and ``*.nbc``
beside these modules, or ``NUMBA_CACHE_DIR``).

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
* uint8: exact integer arithmetic: sums of x and x*x, saturation counts, byte
  min/max, sums of |x[w] - x[w-1]| and |x - prev|; mean and variance come from
  the exact integer moments at the end (no NaN or Inf is possible). On x86-64
  with AVX-512 BW + VNNI (:data:`U8_SIMD`) a loop written in LLVM IR with
  ``psadbw`` / ``vpdpbusd`` reads each channel's rows (NCHW) or the interleaved
  3-channel pixels (NHWC, de-interleaved in registers) once, front to back;
  elsewhere (aarch64, older x86) the same loops run with target-independent
  widening sums (16-bit lanes, at most :data:`SEG_U8GEN` values per call; int64
  per work item). Both give identical results.

``stats_*_par`` runs the items with ``prange``, ``stats_*_ser`` in a plain loop
(small tensors, where the parallel launch costs more than the work). Both merge
the items' partials (Chan's formula for the float path) in the same compiled
call, so a Python caller pays one dispatch.
"""

from __future__ import annotations

from edgeguard.guard.sanity._cpu.checks import env_inside, nonfinite_count
from edgeguard.guard.sanity._cpu.common import block_rows
from edgeguard.guard.sanity._cpu.drivers import (
    stats_f32_par,
    stats_f32_ser,
    stats_float_par,
    stats_float_ser,
    stats_u8_par,
    stats_u8_ser,
)
from edgeguard.guard.sanity._cpu.merge import merge
from edgeguard.guard.sanity._cpu.u8_ir import U8_SIMD
from edgeguard.guard.sanity._kernel_layout import (
    BLOCK,
    BLOCK32,
    PF_BLOCKS,
    SEG32,
    SEG_C3,
    SEG_F,
    SEG_U8GEN,
    SEG_U8SIMD,
)

__all__ = [
    "BLOCK",
    "BLOCK32",
    "PF_BLOCKS",
    "SEG32",
    "SEG_C3",
    "SEG_F",
    "SEG_U8GEN",
    "SEG_U8SIMD",
    "U8_SIMD",
    "block_rows",
    "env_inside",
    "merge",
    "nonfinite_count",
    "stats_f32_par",
    "stats_f32_ser",
    "stats_float_par",
    "stats_float_ser",
    "stats_u8_par",
    "stats_u8_ser",
]

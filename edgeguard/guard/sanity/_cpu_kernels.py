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

# numba's intrinsic objects raise when called from Python, so mypy takes every line
# after a call of one for unreachable: "unreachable" is off in this module.
# mypy: disable-error-code="no-untyped-def,no-untyped-call,call-arg,unreachable"

from __future__ import annotations

import functools
import math
import platform

import numpy as np
from llvmlite import binding as llvm_binding
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
#: Values (pixels, for 3 interleaved channels) per call of the portable uint8 loops:
#: their 16-bit sums and 8-bit counts stay exact for 128 vectors of 64 values.
SEG_U8GEN = 1 << 13
#: Values (pixels, for 3 interleaved channels) per call of a SIMD uint8 loop: its int32
#: lanes (sums of x and of x*(x-128), at most 4 * 255 * 128 per vector) stay exact up to
#: 2^31 / 130560 = 16448 vectors per accumulator (the planar loop has two), 1 MiB.
SEG_U8SIMD = 1 << 18

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
def prefetch_span(typingctx, arr, start, stop):
    """Ask the CPU to bring ``arr[start:stop]`` (1-D, C) into cache; no-op semantically.

    Offsets, not a slice: see ``_u8_intrinsics``.
    """
    if not isinstance(arr, types.Array) or arr.ndim != 1 or arr.layout != "C":
        return None
    sig = types.void(arr, start, stop)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, ir.IntType(32), ir.IntType(32), ir.IntType(32)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        base = builder.bitcast(ary.data, i8p)
        itemsize = context.get_constant(
            types.intp, context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
        )
        lo, hi = (
            builder.mul(context.cast(builder, args[i], signature.args[i], types.intp), itemsize)
            for i in (1, 2)
        )
        with cgutils.for_range_slice(builder, lo, hi, context.get_constant(types.intp, 64)) as (
            off,
            _,
        ):
            i32 = ir.IntType(32)
            builder.call(fn, [builder.gep(base, [off]), i32(0), i32(2), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


# ----------------------------------------------------------------------------------
# uint8 SIMD path (x86-64 with AVX-512 BW and VNNI)
#
# One 64-byte vector of a channel's values x costs a handful of instructions:
#   sum x          vpdpbusd(acc, x, 1)                       (int32 lanes)
#   sum x^2        vpdpbusd(acc, x, x ^ 0x80) + 128 * sum x
#                  (u8 * s8 products: x * (x - 128) = x^2 - 128 x; int32 lanes)
#   sum |x - x'|   psadbw(x, x')  with x' the values one place earlier (horizontal
#                  pairs) or the previous frame's values (tdiff)  (int64 lanes)
#   counts         popcnt of the compare masks (x <= lo, x >= hi)
#   min, max       vpminub, vpmaxub
# LLVM's auto-vectoriser finds neither psadbw nor vpdpbusd in scalar loops (a plain
# numba loop cost ~3x more per byte), so the loop is written in LLVM IR with the x86
# intrinsics. It is compiled only where the target has the instructions (U8_SIMD).
# Elsewhere (aarch64 Jetson, older x86) the same loop structure runs with
# target-independent sums (_U8AccGen: widening adds into 16-bit lanes, squares into
# 32-bit lanes, 8-bit counters), and the x86 intrinsics lower to a trap that the
# dispatch in cpu.py never reaches. Both give identical integer results
# (tests/sanity run both on every uint8 case).

_I8, _I32, _I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
_V8 = ir.VectorType(_I8, 64)
_VQ = ir.VectorType(_I64, 8)
_VD = ir.VectorType(_I32, 16)
_V1 = ir.VectorType(ir.IntType(1), 64)
_V16 = ir.VectorType(ir.IntType(16), 64)


def _target_features() -> frozenset[str]:
    # The features numba compiles for, as numba decides them (CPUCodegen): the
    # NUMBA_CPU_FEATURES list when it is set, else the host's, whatever
    # NUMBA_CPU_NAME says. An empty list means the named CPU's own defaults, which
    # are not known here: no feature is assumed then (the portable loops run).
    from numba.core import config

    spec = getattr(config, "CPU_FEATURES", None)
    if spec is not None:
        return frozenset(f[1:] for f in spec.split(",") if f.startswith("+"))
    feats = llvm_binding.get_host_cpu_features()
    return frozenset(k for k, on in feats.items() if on)


#: True when this machine's numba target has AVX-512 BW and VNNI (the uint8 SIMD loop).
U8_SIMD = platform.machine().lower() in ("x86_64", "amd64") and {
    "avx512bw",
    "avx512vnni",
}.issubset(_target_features())
# LLVM 22 declares vpdpbusd's byte operands as <64 x i8> (older: <16 x i32>).
_DP_BYTES = llvm_binding.llvm_version_info >= (22,)


def _decl(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


class _U8IR:
    """LLVM IR pieces of the uint8 loops (codegen time only; x86: the AVX-512 intrinsics)."""

    def __init__(self, builder, lo8, hi8, x86):
        self.b = builder
        if x86:
            self.psad = _decl(builder, "llvm.x86.avx512.psad.bw.512", _VQ, [_V8, _V8])
            dp_t = [_VD, _V8, _V8] if _DP_BYTES else [_VD, _VD, _VD]
            self.dp = _decl(builder, "llvm.x86.avx512.vpdpbusd.512", _VD, dp_t)
            self.popcnt = _decl(builder, "llvm.ctpop.i64", _I64, [_I64])
        self.umin = _decl(builder, "llvm.umin.v64i8", _V8, [_V8, _V8])
        self.umax = _decl(builder, "llvm.umax.v64i8", _V8, [_V8, _V8])
        self.mload = _decl(
            builder, "llvm.masked.load.v64i8.p0", _V8, [_V8.as_pointer(), _I32, _V1, _V8]
        )
        self.zero = ir.Constant(_V8, None)
        self.lo, self.hi = self.splat(lo8), self.splat(hi8)

    def splat(self, v):
        u = self.b.insert_element(ir.Constant(_V8, ir.Undefined), v, _I32(0))
        return self.shuffle(u, ir.Constant(_V8, ir.Undefined), [0] * 64)

    def shuffle(self, v, w, idx):
        return _shuffle(self.b, v, w, idx)

    def load(self, base, off, kx=None):
        # 64 bytes at base[off]; with a lane mask kx, masked-off lanes read nothing, are 0.
        ptr = self.b.bitcast(self.b.gep(base, [off]), _V8.as_pointer())
        if kx is None:
            return self.b.load(ptr, align=1)
        return self.b.call(self.mload, [ptr, _I32(1), kx, self.zero])

    def first_lanes(self, n):  # lanes [0, n), 0 < n <= 64 (i64)
        lanes = ir.Constant(_V8, list(range(64)))
        return self.b.icmp_unsigned("<", lanes, self.splat(self.b.trunc(n, _I8)))

    def left_shift_in(self, carry, x):
        # [carry[63], x[0], ..., x[62]]: each lane's left neighbour
        return self.shuffle(carry, x, [63, *range(64, 127)])


class _U8Acc:
    """Vector accumulators of one channel: see _u8_intrinsics for what they sum (x86 AVX-512)."""

    def __init__(self, e):
        self.e = e
        b = e.b
        self.v = {k: cgutils.alloca_once_value(b, ir.Constant(_VQ, None)) for k in ("hs", "ts")}
        for k in ("s1", "s2"):
            self.v[k] = cgutils.alloca_once_value(b, ir.Constant(_VD, None))
        for k in ("slo", "shi"):
            self.v[k] = cgutils.alloca_once_value(b, _I64(0))
        self.v["mn"] = cgutils.alloca_once_value(b, ir.Constant(_V8, [255] * 64))
        self.v["mx"] = cgutils.alloca_once_value(b, e.zero)

    def _set(self, key, fn):
        self.e.b.store(fn(self.e.b.load(self.v[key])), self.v[key])

    def feed(self, x, xm, p, kx=None):
        # x: 64 values (lanes off kx are 0); xm: their left neighbours (0 off kx);
        # p: the previous frame's values (None: no tdiff).
        e, b = self.e, self.e.b
        self._set("hs", lambda a: b.add(a, b.call(e.psad, [x, xm])))
        if p is not None:
            self._set("ts", lambda a: b.add(a, b.call(e.psad, [x, p])))
        y = b.xor(x, ir.Constant(_V8, [0x80] * 64))
        for key, w in (("s1", ir.Constant(_V8, [1] * 64)), ("s2", y)):
            ops = [x, w] if _DP_BYTES else [b.bitcast(x, _VD), b.bitcast(w, _VD)]
            self._set(key, lambda a, ops=ops: b.call(e.dp, [a, *ops]))
        for key, hit in self._minmax_and_hits(x, kx):
            # kmov + popcnt: the scalar ports are idle in this loop
            self._set(key, lambda a, hit=hit: b.add(a, b.call(e.popcnt, [b.bitcast(hit, _I64)])))

    def _minmax_and_hits(self, x, kx):
        # min/max of the lanes inside kx; returns the saturation compare masks by key
        e, b = self.e, self.e.b
        xmin = x if kx is None else b.select(kx, x, ir.Constant(_V8, [255] * 64))
        self._set("mn", lambda a: b.call(e.umin, [a, xmin]))
        self._set("mx", lambda a: b.call(e.umax, [a, x]))
        hits = []
        for key, cmp, lvl in (("slo", "<=", e.lo), ("shi", ">=", e.hi)):
            hit = b.icmp_unsigned(cmp, x, lvl)
            hits.append((key, hit if kx is None else b.and_(hit, kx)))
        return hits

    @staticmethod
    def store(parts, out, at):
        # out[at:at+8] = the totals of the accumulator sets `parts` (one channel).
        e = parts[0].e
        b = e.b
        v16 = ir.VectorType(_I64, 16)

        def tot(key, vty, width):
            s = None
            for acc in parts:
                v = b.load(acc.v[key])
                v = b.sext(v, v16) if vty is _VD else v
                s = v if s is None else b.add(s, v)
            name = f"llvm.vector.reduce.add.v{width}i64"
            return b.call(_decl(b, name, _I64, [v16 if width == 16 else _VQ]), [s])

        s1 = tot("s1", _VD, 16)
        vals = (
            s1,
            b.add(tot("s2", _VD, 16), b.mul(s1, _I64(128))),
            *(functools.reduce(b.add, [b.load(acc.v[k]) for acc in parts]) for k in ("slo", "shi")),
            tot("hs", _VQ, 8),
            tot("ts", _VQ, 8),
            *_U8Acc.minmax(parts),
        )
        for i, v in enumerate(vals):
            b.store(v, b.gep(out, [_I64(at + i)]))

    @staticmethod
    def minmax(parts):
        # (min, max) over the accumulator sets `parts`, as i64
        e = parts[0].e
        b = e.b
        res = []
        for key, name, fn in (("mn", "umin", e.umin), ("mx", "umax", e.umax)):
            s = b.load(parts[0].v[key])
            for acc in parts[1:]:
                s = b.call(fn, [s, b.load(acc.v[key])])
            red = _decl(b, f"llvm.vector.reduce.{name}.v64i8", _I8, [_V8])
            res.append(b.zext(b.call(red, [s]), _I64))
        return res


class _U8AccGen(_U8Acc):
    """The same sums in target-independent IR (any CPU numba runs on).

    x, its neighbour differences and its counts go into 16-bit (8-bit for the
    counts) lanes, exact for at most 128 vectors per accumulator set, which the
    callers guarantee (SEG_U8GEN); x^2 into 32-bit lanes (four 16-lane quarters
    added). LLVM picks the target's widening adds and multiplies for them.
    """

    def __init__(self, e):
        self.e = e
        b = e.b
        z16 = ir.Constant(_V16, None)
        self.v = {k: cgutils.alloca_once_value(b, z16) for k in ("s1", "hs", "ts")}
        self.v["s2"] = cgutils.alloca_once_value(b, ir.Constant(_VD, None))
        for k in ("slo", "shi"):
            self.v[k] = cgutils.alloca_once_value(b, e.zero)
        self.v["mn"] = cgutils.alloca_once_value(b, ir.Constant(_V8, [255] * 64))
        self.v["mx"] = cgutils.alloca_once_value(b, e.zero)

    def feed(self, x, xm, p, kx=None):
        e, b = self.e, self.e.b

        def absdiff(u, w):
            return b.sub(b.call(e.umax, [u, w]), b.call(e.umin, [u, w]))

        self._set("s1", lambda a: b.add(a, b.zext(x, _V16)))
        self._set("hs", lambda a: b.add(a, b.zext(absdiff(x, xm), _V16)))
        if p is not None:
            self._set("ts", lambda a: b.add(a, b.zext(absdiff(x, p), _V16)))
        z = b.zext(x, ir.VectorType(_I32, 64))
        sq = b.mul(z, z)
        quarters = [
            b.shuffle_vector(
                sq, sq, ir.Constant(ir.VectorType(_I32, 16), list(range(16 * q, 16 * q + 16)))
            )
            for q in range(4)
        ]
        self._set(
            "s2",
            lambda a: b.add(
                a, b.add(b.add(quarters[0], quarters[1]), b.add(quarters[2], quarters[3]))
            ),
        )
        for key, hit in self._minmax_and_hits(x, kx):
            self._set(key, lambda a, hit=hit: b.sub(a, b.sext(hit, _V8)))

    @staticmethod
    def store(parts, out, at):
        e = parts[0].e
        b = e.b
        v32 = ir.VectorType(_I32, 64)
        red64 = _decl(b, "llvm.vector.reduce.add.v64i32", _I32, [v32])
        red16 = _decl(b, "llvm.vector.reduce.add.v16i32", _I32, [_VD])

        def tot(key):  # exact: every lane total is below 2^31
            s = None
            for acc in parts:
                v = b.load(acc.v[key])
                if key == "s2":
                    v = b.zext(b.call(red16, [v]), _I64)
                else:
                    v = b.zext(b.call(red64, [b.zext(v, v32)]), _I64)
                s = v if s is None else b.add(s, v)
            return s

        vals = (*(tot(k) for k in ("s1", "s2", "slo", "shi", "hs", "ts")), *_U8Acc.minmax(parts))
        for i, v in enumerate(vals):
            b.store(v, b.gep(out, [_I64(at + i)]))


def _shuffle(builder, v, w, idx):
    return builder.shuffle_vector(v, w, ir.Constant(ir.VectorType(_I32, 64), idx))


def _deint3(builder, v):
    # Three 64-byte vectors of interleaved pixels -> three channel vectors: two
    # two-source byte shuffles each (vpermt2b on AVX-512 VBMI; plain IR, any target).
    out = []
    for c in range(3):
        pick = [3 * j + c for j in range(64)]  # bytes of channel c in v0|v1|v2
        t = _shuffle(builder, v[0], v[1], [i if i < 128 else 0 for i in pick])
        out.append(
            _shuffle(builder, t, v[2], [j if i < 128 else i - 64 for j, i in enumerate(pick)])
        )
    return out


def _emit_run(b, n, width, head, step):
    # The steps over a run of n pixels, `width` per step: step(pos, r, first) with r
    # None for a full step, else the r < width pixels left (masked loads); first: the
    # step starts the run and the run starts a row (`head`).
    pos = cgutils.alloca_once_value(b, _I64(0))
    with b.if_then(b.and_(head, b.icmp_signed(">=", n, _I64(width)))):
        step(_I64(0), None, True)
        b.store(_I64(width), pos)
    p0 = b.load(pos)
    nfull = b.sdiv(b.sub(n, p0), _I64(width))
    with cgutils.for_range(b, nfull) as loop:
        step(b.add(p0, b.mul(loop.index, _I64(width))), None, False)
    p1 = b.add(p0, b.mul(nfull, _I64(width)))
    rest = b.sub(n, p1)
    first_step = b.and_(head, b.icmp_signed("==", p1, _I64(0)))
    with b.if_then(b.icmp_signed(">", rest, _I64(0))), b.if_else(first_step) as (first, other):
        with first:
            step(p1, rest, True)
        with other:
            step(p1, rest, False)


def _with_and_without(b, flag, body):
    # body(True) where the runtime flag is set, body(False) elsewhere: two loops, each
    # without the flag's test inside
    with b.if_else(flag) as (then, other):
        with then:
            body(True)
        with other:
            body(False)


def _u8_simd_typer(blk, pblk, out):
    return (
        isinstance(blk, types.Array)
        and blk.layout == "C"
        and blk.dtype == types.uint8
        and blk == pblk
        and isinstance(out, types.Array)
        and out.layout == "C"
        and out.dtype == types.int64
    )


def _u8_simd_args(context, builder, signature, args):
    # data pointers of blk, pblk, out; a, n (int64); head, has_prev (i1); lo8, hi8 (i8)
    xb, pb, ob = (
        builder.bitcast(context.make_array(signature.args[i])(context, builder, args[i]).data, t)
        for i, t in ((0, _I8.as_pointer()), (1, _I8.as_pointer()), (8, _I64.as_pointer()))
    )
    a, n = (context.cast(builder, args[i], signature.args[i], types.int64) for i in (2, 3))
    head, has_prev = (
        context.cast(builder, args[i], signature.args[i], types.boolean) for i in (4, 7)
    )
    lo8, hi8 = (
        builder.trunc(context.cast(builder, args[i], signature.args[i], types.int64), _I8)
        for i in (5, 6)
    )
    return xb, pb, ob, a, n, head, has_prev, lo8, hi8


def _trap(context, builder):
    # The SIMD intrinsics' body on targets without AVX-512 BW + VNNI: never executed,
    # because cpu.py selects the portable loops there (U8_SIMD is False).
    builder.call(_decl(builder, "llvm.trap", ir.VoidType(), []), [])
    return context.get_dummy_value()


def _u8_intrinsics(x86):
    """The uint8 loops as numba intrinsics: ``(planar, c3)``.

    ``planar(blk, pblk, a, b, head, lo8, hi8, has_prev, out)``: integer statistics of
    ``v = blk.flat[a:b]`` into ``out[0:8]``: s1, s2, #(v <= lo8), #(v >= hi8), the sum
    of |blk.flat[w] - blk.flat[w-1]| for w in [a + head, b), the sum of |v -
    pblk.flat[a:b]| (0 without ``has_prev``), min and max. ``head``: blk.flat[a]
    starts a block (has no left neighbour). Full 64-value vectors run unmasked, two
    per iteration; a last partial vector uses masked loads, whose masked-off lanes
    read no memory and add nothing.

    ``c3(blk, pblk, a, npix, head, lo8, hi8, has_prev, out)``: the same for each
    channel of ``npix`` interleaved 3-channel pixels ``blk.flat[a + 3 w + c]``, into
    ``out[8 c : 8 c + 8]``; a value's left neighbour is the same channel of the pixel
    before (none for the first pixel when ``head``; ``a >= 3`` otherwise). 64 pixels
    per step: three loads, de-interleaved in registers by byte shuffles
    (``vpermt2b`` on AVX-512 VBMI), each neighbour vector shifted in from the
    previous step's, so the frame is read once, with no buffer.

    ``x86``: the AVX-512 BW + VNNI sums (``_U8Acc``; only where U8_SIMD, any length
    up to SEG_U8SIMD); else target-independent IR (``_U8AccGen``; at most SEG_U8GEN
    values or pixels per call). Offsets into any C-contiguous array, not slices: a
    slice handed to a compiled call costs a reference-count round trip, which per
    image row is more than the row's arithmetic.
    """
    acc_cls = _U8Acc if x86 else _U8AccGen

    def make(loop):
        @intrinsic
        def f(typingctx, blk, pblk, a, n, head, lo8, hi8, has_prev, out):
            if not _u8_simd_typer(blk, pblk, out):
                return None
            sig = types.void(blk, pblk, a, n, head, lo8, hi8, has_prev, out)

            def codegen(context, builder, signature, args):
                if x86 and not U8_SIMD:
                    return _trap(context, builder)
                xb, pb, ob, a_, n_, head_, has_prev_, lo8_, hi8_ = _u8_simd_args(
                    context, builder, signature, args
                )
                e = _U8IR(builder, lo8_, hi8_, x86)
                loop(builder, e, xb, pb, ob, a_, n_, head_, has_prev_)
                return context.get_dummy_value()

            return sig, codegen

        return f

    def planar(builder, e, xb, pb, ob, a_, b_, head_, has_prev_):
        accs = (acc_cls(e), acc_cls(e))  # two sets: alternate vectors, independent chains
        pos = cgutils.alloca_once_value(builder, a_)

        def vec(off, u, with_prev, kx=None, head=False):
            # One vector at blk[off:off+64]; kx masks the lanes inside [a, b) (None: all).
            # At the block start (head) lane 0 is its own left neighbour (a lane shift,
            # no load before the array).
            x = e.load(xb, off, kx)
            if head:
                xm = e.shuffle(x, x, [0, *range(63)])
                if kx is not None:  # lanes past b: x = 0, so xm must be 0 too
                    xm = builder.select(kx, xm, x)
            else:
                xm = e.load(xb, builder.sub(off, _I64(1)), kx)
            accs[u].feed(x, xm, e.load(pb, off, kx) if with_prev else None, kx)

        def body(with_prev):
            c64, c128 = _I64(64), _I64(128)
            builder.store(a_, pos)
            n = builder.sub(b_, a_)
            with builder.if_then(builder.and_(head_, builder.icmp_signed(">", n, _I64(0)))):
                short = builder.icmp_signed("<", n, c64)
                with builder.if_else(short) as (part, full):
                    with part:
                        vec(a_, 0, with_prev, e.first_lanes(n), head=True)
                    with full:
                        vec(a_, 0, with_prev, head=True)
                builder.store(builder.add(a_, builder.select(short, n, c64)), pos)
            p0 = builder.load(pos)
            n2 = builder.sdiv(builder.sub(b_, p0), c128)
            with cgutils.for_range(builder, n2) as loop:
                off = builder.add(p0, builder.mul(loop.index, c128))
                vec(off, 0, with_prev)
                vec(builder.add(off, c64), 1, with_prev)
            builder.store(builder.add(p0, builder.mul(n2, c128)), pos)
            p1 = builder.load(pos)
            with builder.if_then(builder.icmp_signed(">=", builder.sub(b_, p1), c64)):
                vec(p1, 0, with_prev)
                builder.store(builder.add(p1, c64), pos)
            p2 = builder.load(pos)
            rest = builder.sub(b_, p2)
            with builder.if_then(builder.icmp_signed(">", rest, _I64(0))):
                vec(p2, 1, with_prev, e.first_lanes(rest))

        _with_and_without(builder, has_prev_, body)
        acc_cls.store(accs, ob, 0)

    def c3(builder, e, xb, pb, ob, a_, n_, head_, has_prev_):
        accs = [acc_cls(e) for _ in range(3)]
        carry = [cgutils.alloca_once_value(builder, e.zero) for _ in range(3)]
        with builder.if_then(builder.not_(head_)):  # neighbours of the first pixel
            for c in range(3):
                v = builder.load(builder.gep(xb, [builder.add(a_, _I64(c - 3))]))
                builder.store(builder.insert_element(e.zero, v, _I32(63)), carry[c])

        def group(px, with_prev, r=None, head=False):
            # Pixels [px, px + 64), or [px, px + r) with r < 64 (masked loads).
            off = builder.add(a_, builder.mul(px, _I64(3)))
            masks = [None] * 3
            kx = None
            if r is not None:
                kx = e.first_lanes(r)
                for k in range(3):  # bytes [0, 3r) of the 192
                    nb = builder.sub(builder.mul(r, _I64(3)), _I64(64 * k))
                    nb = builder.select(builder.icmp_signed("<", nb, _I64(0)), _I64(0), nb)
                    nb = builder.select(builder.icmp_signed(">", nb, _I64(64)), _I64(64), nb)
                    masks[k] = e.first_lanes(nb)
            offs = [builder.add(off, _I64(64 * k)) for k in range(3)]
            xs = _deint3(builder, [e.load(xb, offs[k], masks[k]) for k in range(3)])
            ps = None
            if with_prev:
                ps = _deint3(builder, [e.load(pb, offs[k], masks[k]) for k in range(3)])
            for c in range(3):
                x = xs[c]
                if head:
                    xm = e.shuffle(x, x, [0, *range(63)])
                else:
                    xm = e.left_shift_in(builder.load(carry[c]), x)
                if kx is not None:  # lanes past r: x = 0, so xm must be 0 too
                    xm = builder.select(kx, xm, x)
                accs[c].feed(x, xm, None if ps is None else ps[c], kx)
                builder.store(x, carry[c])

        def body(with_prev):
            _emit_run(builder, n_, 64, head_, lambda px, r, first: group(px, with_prev, r, first))

        _with_and_without(builder, has_prev_, body)
        for c in range(3):
            acc_cls.store([accs[c]], ob, 8 * c)

    return make(planar), make(c3)


u8_simd_stats, u8_simd_stats_c3 = _u8_intrinsics(True)
u8_gen_stats, u8_gen_stats_c3 = _u8_intrinsics(False)


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


@njit(nogil=True, inline="always")
def deinterleave_u8(flat, s0, npix, channels, dflat, dstride):
    # dflat[c * dstride + w] = flat[s0 + w * channels + c] for w < npix (uint8; only
    # for channel counts other than 3, which the 3-channel loops read in place).
    for w in range(npix):
        for c in range(channels):
            dflat[c * dstride + w] = flat[s0 + w * channels + c]


@njit(nogil=True, inline="always")
def prefetch_block(flat, start, stop):
    # Ask for flat[start:stop] (clipped) to be brought into cache.
    start = max(start, 0)
    stop = min(stop, flat.size)
    if stop > start:
        prefetch_span(flat, start, stop)


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
    # ac[c] += the SIMD loop's results sv[at:at+8]
    ac[c, U_S1] += sv[at]
    ac[c, U_S2] += sv[at + 1]
    if lo_i >= 0:  # lo_i = -1: nothing is <= lo (the loop's lo8 was clamped)
        ac[c, U_SLO] += sv[at + 2]
    if hi_i <= 255:  # hi_i = 256: nothing is >= hi
        ac[c, U_SHI] += sv[at + 3]
    ac[c, U_HS] += sv[at + 4]
    ac[c, U_TS] += sv[at + 5]
    ac[c, U_MIN] = min(ac[c, U_MIN], sv[at + 6])
    ac[c, U_MAX] = max(ac[c, U_MAX], sv[at + 7])


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
    sv = np.zeros(24, dtype=np.int64)
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
                add_sv(acc, c, sv, 8 * c, lo_i, hi_i)
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
def stats_u8_par(x, px, nhwc, has_prev, lo_i, hi_i, nb, rows, eps, blk_len, pf, simd):
    """uint8 statistics, work items in parallel: returns (fo [8,N,C], count, ff [3,N])."""
    height, width = (x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3])
    part, fo, count, ff = _u8_setup(x, nhwc, nb)
    for it in prange(x.shape[0] * nb):
        n = it // nb
        r0 = (it % nb) * rows
        r1 = min(height, r0 + rows)
        item_u8(x, px, nhwc, has_prev, lo_i, hi_i, n, r0, r1, part[it], blk_len, pf, simd)
    merge_u8(part, nb, height, width, has_prev, eps, fo, count, ff)
    return fo, count, ff


@njit(cache=True, nogil=True)
def stats_u8_ser(x, px, nhwc, has_prev, lo_i, hi_i, eps, blk_len, pf, simd):
    """uint8 statistics in one thread (small tensors)."""
    height, width = (x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3])
    part, fo, count, ff = _u8_setup(x, nhwc, 1)
    for n in range(x.shape[0]):
        item_u8(x, px, nhwc, has_prev, lo_i, hi_i, n, 0, height, part[n], blk_len, pf, simd)
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


# ----------------------------------------------------------------------------------
# float32 path: float32 arithmetic inside short segments, float64 between them
#
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
    # rows * width elements; pblk the previous frame's, read when has_prev). st [10]:
    # running cnt, mean, m2, slo, shi, hs, min, max, then this block's ts and ts-ok
    # (0.0 when a segment's ts was not finite), updated only when the block's values
    # are all finite (returns True). shift is the float32 shift to start with; returns
    # (ok, next shift). Segments sum deviations from one shift into a float64 run;
    # a run goes into the Chan state only when a segment's mean is more than two of
    # its standard deviations from the shift (then that segment is redone around its
    # own mean, which starts the next run). Segments are SEG32 values of the one-channel
    # loop f32_c1_seg, which also prefetches ahead.
    m = blk.size
    cnt = st[0]
    mean = st[1]
    m2 = st[2]
    sh = np.float64(shift)
    rn = 0.0  # the current run: count, sums of deviations from sh and of their squares
    r1 = 0.0
    r2 = 0.0
    slo = 0.0
    shi = 0.0
    hs = 0.0
    ts = 0.0
    ts_ok = 1.0
    mn = st[6]
    mx = st[7]
    hh = np.empty(1, dtype=np.float32)
    out = np.empty((1, 8), dtype=np.float32)
    out2 = np.empty((1, 8), dtype=np.float32)
    for a in range(0, m, SEG32):
        b = min(m, a + SEG32)
        hh[0] = shift
        f32_c1_seg(blk, pblk, a, b - a, has_prev, a == 0, hh, lo_t, hi_t, out)
        r = out[0]
        if not (abs(r[1]) < np.inf and abs(r[0]) < np.inf and abs(r[2]) < np.inf):
            return False, shift
        n = np.float64(b - a)
        s1 = np.float64(r[0])
        s2 = np.float64(r[1])
        smn = np.float64(r[5])
        smx = np.float64(r[6])
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
                q = seg_fast(blk[a:b], 0, b - a, sh, lo_t, hi_t, np.float32(1.0))
                s1 = q[0]
                s2 = q[1]
            elif redo:
                hh[0] = shift  # into out2: r (a view of out) is read below
                f32_c1_seg(blk, blk, a, b - a, False, a == 0, hh, lo_t, hi_t, out2)
                s1 = np.float64(out2[0, 0])
                s2 = np.float64(out2[0, 1])
        rn += n
        r1 += s1
        r2 += s2
        slo += np.float64(r[3])
        shi += np.float64(r[4])
        hs += np.float64(r[2])
        if has_prev:
            if abs(r[7]) < np.inf:
                ts += np.float64(r[7])
            else:
                ts_ok = 0.0
        mn = min(mn, smn)
        mx = max(mx, smx)
    cnt, mean, m2 = run_into(cnt, mean, m2, rn, sh, r1, r2)
    for j in range(1, rows):  # take out the pairs that cross a row start
        hs -= abs(np.float64(blk[j * width]) - np.float64(blk[j * width - 1]))
    st[0] = cnt
    st[1] = mean
    st[2] = m2
    st[3] += slo
    st[4] += shi
    st[5] += max(hs, 0.0)
    st[6] = mn
    st[7] = mx
    st[8] = ts
    st[9] = ts_ok
    return True, shift


_F32 = ir.FloatType()
_VF = ir.VectorType(_F32, 16)
_VB16 = ir.VectorType(ir.IntType(1), 16)


def _f32_seg_intrinsic(C):
    """The float32 segment loop for C interleaved channels (C = 1: one channel's run).

    The intrinsic ``f32_seg(arr, parr, off, npix, has_prev, head, h, lo_t, hi_t, out)``
    reads pixels ``arr.flat[off + C w + c]``, w < npix; ``head``: the first pixel starts
    a row (it is its own left neighbour; otherwise the pixel before it is read);
    ``h[c]``: the shifts. It fills ``out[c, :]`` (float32) with s1 = sum(x - h), s2 =
    sum((x - h)^2), hs = sum |x - left|, #(x <= lo_t), #(x >= hi_t), min, max and ts =
    sum |x - prev| (0 without ``has_prev``). The sums are only meaningful when they
    come back finite (min/max assume no NaN): the caller then takes the careful path.

    A step is 48 values in three 16-float vectors (three independent chains). No
    de-interleaving: every statistic is element-wise, so each vector position keeps
    its own accumulators (its lanes hold a fixed pattern of channels); a value's left
    neighbour is the load C floats earlier; the channels are separated once, at the
    end, by constant lane masks. The last partial step uses masked loads. The data
    PF32 values ahead is prefetched one line per vector, spread through the loop, so
    the miss queues stay busy but never overflow (a hint: it never faults, also past
    the end of the array). Plain LLVM IR (vector float ops, no target intrinsic), so
    it should compile wherever numba runs; compiled and run only on x86-64 so far.
    """
    step_px = 48 // C

    @intrinsic
    def f32_seg(typingctx, arr, parr, off, npix, has_prev, head, h, lo_t, hi_t, out):
        if not (
            isinstance(arr, types.Array)
            and arr.layout == "C"
            and arr.dtype == types.float32
            and arr == parr
            and all(isinstance(t, types.Array) and t.dtype == types.float32 for t in (h, out))
        ):
            return None
        sig = types.void(arr, parr, off, npix, has_prev, head, h, lo_t, hi_t, out)
        return sig, functools.partial(_f32_seg_codegen, C, step_px)

    return f32_seg


def _f32_seg_codegen(C, step_px, context, builder, signature, args):
    b = builder
    fp = _F32.as_pointer()
    xb, pb, hb, ob = (
        b.bitcast(context.make_array(signature.args[i])(context, b, args[i]).data, fp)
        for i in (0, 1, 6, 9)
    )
    off_, n_ = (context.cast(b, args[i], signature.args[i], types.int64) for i in (2, 3))
    has_prev_, head_ = (context.cast(b, args[i], signature.args[i], types.boolean) for i in (4, 5))
    lo_, hi_ = (context.cast(b, args[i], signature.args[i], types.float32) for i in (7, 8))
    idx16 = ir.VectorType(_I32, 16)
    undef = ir.Constant(_VF, ir.Undefined)

    def pattern(k):  # channel of each lane of vector position k
        return [(16 * k + j) % C for j in range(16)]

    def splat(v):
        u = b.insert_element(undef, v, _I32(0))
        return b.shuffle_vector(u, undef, ir.Constant(idx16, [0] * 16))

    fabs = _decl(b, "llvm.fabs.v16f32", _VF, [_VF])
    prefetch = _decl(b, "llvm.prefetch.p0", ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32])
    vmin = _decl(b, "llvm.minnum.v16f32", _VF, [_VF, _VF])
    vmax = _decl(b, "llvm.maxnum.v16f32", _VF, [_VF, _VF])
    mload = _decl(b, "llvm.masked.load.v16f32.p0", _VF, [_VF.as_pointer(), _I32, _VB16, _VF])
    nn = ("nnan", "nsz")
    zf = ir.Constant(_VF, None)
    inf = ir.Constant(_VF, [float("inf")] * 16)
    ninf = ir.Constant(_VF, [float("-inf")] * 16)
    lo_v, hi_v = splat(lo_), splat(hi_)
    hc = undef
    for c in range(C):
        hc = b.insert_element(hc, b.load(b.gep(hb, [_I64(c)])), _I32(c))
    hpat = [b.shuffle_vector(hc, undef, ir.Constant(idx16, pattern(k))) for k in range(3)]
    zi = ir.Constant(idx16, None)
    one_i = ir.Constant(idx16, [1] * 16)
    init = {"s1": zf, "s2": zf, "hs": zf, "ts": zf, "lo": zi, "hi": zi, "mn": inf, "mx": ninf}
    acc = [{k: cgutils.alloca_once_value(b, v) for k, v in init.items()} for _ in range(3)]

    def upd(a, key, fn):
        b.store(fn(b.load(a[key])), a[key])

    def load(base, at, mask=None, passthru=zf):
        ptr = b.bitcast(b.gep(base, [at]), _VF.as_pointer())
        if mask is None:
            return b.load(ptr, align=4)
        return b.call(mload, [ptr, _I32(4), mask, passthru])

    def lanes_below(nv):  # <16 x i1>: lanes [0, nv), nv in [0, 16] (i64)
        t = b.insert_element(ir.Constant(idx16, ir.Undefined), b.trunc(nv, _I32), _I32(0))
        t = b.shuffle_vector(t, ir.Constant(idx16, ir.Undefined), ir.Constant(idx16, [0] * 16))
        return b.icmp_signed("<", ir.Constant(idx16, list(range(16))), t)

    def step(px, with_prev, r=None, first=False):
        # pixels [px, px + step_px); r: only the first r (< step_px) are inside
        nvals = None if r is None else b.mul(r, _I64(C))
        base = b.add(off_, b.mul(px, _I64(C)))
        for k in range(3):
            a = acc[k]
            at = b.add(base, _I64(16 * k))
            for base_ptr in (xb, pb) if with_prev else (xb,):
                ahead = b.bitcast(b.gep(base_ptr, [b.add(at, _I64(PF32))]), _I8.as_pointer())
                b.call(prefetch, [ahead, _I32(0), _I32(3), _I32(1)])
            kx = None
            if nvals is not None:
                nv = b.sub(nvals, _I64(16 * k))
                nv = b.select(b.icmp_signed("<", nv, _I64(0)), _I64(0), nv)
                nv = b.select(b.icmp_signed(">", nv, _I64(16)), _I64(16), nv)
                kx = lanes_below(nv)
            # lanes outside: x = h, so that d, |x - left|, |x - prev| are 0
            x = load(xb, at, kx, hpat[k])
            left_at = b.sub(at, _I64(C))
            if first and k == 0:  # the first pixel (lanes < C) is its own neighbour
                keep = ir.Constant(_VB16, [0] * C + [1] * (16 - C))
                xm = load(xb, left_at, keep if kx is None else b.and_(keep, kx), x)
            else:
                xm = load(xb, left_at, kx, x)
            d = b.fsub(x, hpat[k])
            sq = b.fmul(d, d, flags=("contract",))
            upd(a, "s1", lambda s, d=d: b.fadd(s, d))
            upd(a, "s2", lambda s, sq=sq: b.fadd(s, sq, flags=("contract",)))
            upd(a, "hs", lambda s, x=x, xm=xm: b.fadd(s, b.call(fabs, [b.fsub(x, xm)])))
            if with_prev:
                p = load(pb, at, kx, x)
                upd(a, "ts", lambda s, x=x, p=p: b.fadd(s, b.call(fabs, [b.fsub(x, p)])))
            xn = x if kx is None else b.select(kx, x, inf)
            xx = x if kx is None else b.select(kx, x, ninf)
            upd(a, "mn", lambda s, xn=xn: b.call(vmin, [s, xn], fastmath=nn))
            upd(a, "mx", lambda s, xx=xx: b.call(vmax, [s, xx], fastmath=nn))
            for key, cmp, lvl in (("lo", "<=", lo_v), ("hi", ">=", hi_v)):
                hit = b.fcmp_ordered(cmp, x, lvl)
                if kx is not None:
                    hit = b.and_(hit, kx)
                # int32 counters (vpmovm2d + vpsubd): the float adders are the busy ports
                upd(a, key, lambda s, hit=hit: b.select(hit, b.add(s, one_i), s))

    def body(with_prev):
        _emit_run(b, n_, step_px, head_, lambda px, r, first: step(px, with_prev, r, first))

    _with_and_without(b, has_prev_, body)
    radd = _decl(b, "llvm.vector.reduce.fadd.v16f32", _F32, [_F32, _VF])
    raddi = _decl(b, "llvm.vector.reduce.add.v16i32", _I32, [idx16])
    rmin = _decl(b, "llvm.vector.reduce.fmin.v16f32", _F32, [_VF])
    rmax = _decl(b, "llvm.vector.reduce.fmax.v16f32", _F32, [_VF])
    for c in range(C):
        masks = [ir.Constant(_VB16, [int(ch == c) for ch in pattern(k)]) for k in range(3)]

        def pick(key, fill, fn, masks=masks):
            v = None
            for k in range(3):
                w = b.select(masks[k], b.load(acc[k][key]), fill)
                v = w if v is None else fn(v, w)
            return v

        def tot(key, pick=pick):
            v = pick(key, zf, b.fadd)
            return b.call(radd, [ir.Constant(_F32, 0.0), v], fastmath=("reassoc",))

        def count(key, pick=pick):
            return b.uitofp(b.call(raddi, [pick(key, zi, b.add)]), _F32)

        mn = pick("mn", inf, lambda v, w: b.call(vmin, [v, w], fastmath=nn))
        mx = pick("mx", ninf, lambda v, w: b.call(vmax, [v, w], fastmath=nn))
        vals = (
            tot("s1"),
            tot("s2"),
            tot("hs"),
            count("lo"),
            count("hi"),
            b.call(rmin, [mn], fastmath=nn),
            b.call(rmax, [mx], fastmath=nn),
            tot("ts"),
        )
        for i, v in enumerate(vals):
            b.store(v, b.gep(ob, [_I64(8 * c + i)]))
    return context.get_dummy_value()


#: The float32 segment loops: 3 interleaved channels (NHWC) and one channel's run.
f32_c3_seg = _f32_seg_intrinsic(3)
f32_c1_seg = _f32_seg_intrinsic(1)


@njit(fastmath=fm, nogil=True)
def block_f32_c3(flat, pflat, has_prev, start, npix, width, rows, shifts, st, lo_t, hi_t):
    # block_f32 for a block of `rows` rows of a 3-channel NHWC frame read in place:
    # flat[start : start + 3 * npix] (pflat the previous frame, read when has_prev).
    # shifts [3] float32 (updated), st [3, 10] as block_f32's st for each channel.
    # Returns False (st untouched) when a segment's float32 sums are not finite.
    loc = np.empty((3, 8))
    r = np.empty((3, 8), dtype=np.float32)
    ts = np.zeros(3)
    ts_ok = True
    for c in range(3):
        for j in range(8):
            loc[c, j] = st[c, j]
        loc[c, 3] = 0.0
        loc[c, 4] = 0.0
        loc[c, 5] = 0.0
    step = SEG_C3
    for w0 in range(0, npix, step):
        w1 = min(npix, w0 + step)
        base = start + 3 * w0
        f32_c3_seg(flat, pflat, base, w1 - w0, has_prev, w0 == 0, shifts, lo_t, hi_t, r)
        for c in range(3):
            if not (abs(r[c, 0]) < np.inf and abs(r[c, 1]) < np.inf and abs(r[c, 2]) < np.inf):
                return False
        n = np.float64(w1 - w0)
        redo = False
        for c in range(3):
            s1 = np.float64(r[c, 0])
            s2 = np.float64(r[c, 1])
            if r[c, 5] != r[c, 6] and s1 * s1 > 4.0 * n * max(s2 - s1 * s1 / n, 0.0):
                shifts[c] = np.float32(np.float64(shifts[c]) + s1 / n)
                redo = True
        if redo:  # mean far from the shift relative to the spread: redo around the mean
            f32_c3_seg(flat, pflat, base, w1 - w0, has_prev, w0 == 0, shifts, lo_t, hi_t, r)
        for c in range(3):
            if has_prev:
                if not abs(r[c, 7]) < np.inf:  # a NaN or inf in the previous frame
                    ts_ok = False
                ts[c] += np.float64(r[c, 7])
            sh = np.float64(shifts[c])
            s1 = np.float64(r[c, 0])
            s2 = np.float64(r[c, 1])
            smn = np.float64(r[c, 5])
            smx = np.float64(r[c, 6])
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
            loc[c, 0], loc[c, 1], loc[c, 2] = chan_add(loc[c, 0], loc[c, 1], loc[c, 2], n, mb, m2b)
            loc[c, 3] += np.float64(r[c, 3])
            loc[c, 4] += np.float64(r[c, 4])
            loc[c, 5] += np.float64(r[c, 2])
            loc[c, 6] = min(loc[c, 6], smn)
            loc[c, 7] = max(loc[c, 7], smx)
            shifts[c] = np.float32(mb)
    for c in range(3):
        hs = loc[c, 5]
        for j in range(1, rows):  # take out the pairs that cross a row start
            i = start + 3 * j * width + c
            hs -= abs(np.float64(flat[i]) - np.float64(flat[i - 3]))
        st[c, 0] = loc[c, 0]
        st[c, 1] = loc[c, 1]
        st[c, 2] = loc[c, 2]
        st[c, 3] += loc[c, 3]
        st[c, 4] += loc[c, 4]
        st[c, 5] += max(hs, 0.0)
        st[c, 6] = loc[c, 6]
        st[c, 7] = loc[c, 7]
        st[c, 8] = ts[c]
        st[c, 9] = 1.0 if ts_ok else 0.0
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
        mm[c, 0] = np.inf
        mm[c, 1] = -np.inf
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
    st = np.zeros((channels, 10))
    for c in range(channels):
        st[c, 6] = np.inf
        st[c, 7] = -np.inf
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
                if ok and st[0, 9] != 0.0:
                    for c in range(3):
                        acc[c, A_TS] += st[c, 8]
                        acc[c, A_TC] += m
                else:  # a NaN or inf in either frame: only pairs of finite values count
                    buf = np.empty((channels, m), dtype=x.dtype)
                    pbuf = np.empty((channels, m), dtype=x.dtype)
                    deinterleave_pf(flat, src0, m, channels, buf)
                    deinterleave_pf(pflat, src0, m, channels, pbuf)
                    for c in range(3):
                        t2 = tdiff_careful(buf[c, :m], pbuf[c, :m], 0, m)
                        acc[c, A_TS] += t2[0]
                        acc[c, A_TC] += t2[1]
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
                if ok and st[c, 9] != 0.0:
                    ac[A_TS] += st[c, 8]
                    ac[A_TC] += m
                else:  # a NaN or inf in either frame
                    t2 = tdiff_careful(blk, pblk, 0, m)
                    ac[A_TS] += t2[0]
                    ac[A_TC] += t2[1]
    # fold the fast blocks' Chan state into acc (shifted sums of the careful blocks)
    for c in range(c0, c1):
        ac = acc[c]
        s = st[c]
        # the careful blocks' shifted sums are a run around A_SHIFT
        cnt, mean, m2 = run_into(s[0], s[1], s[2], ac[A_CNT], ac[A_SHIFT], ac[A_S1], ac[A_S2])
        ac[A_CNT] = cnt
        ac[A_SHIFT] = mean
        ac[A_S1] = 0.0
        ac[A_S2] = m2
        ac[A_SLO] += s[3]
        ac[A_SHI] += s[4]
        ac[A_HS] += s[5]
        mm[c, 0] = min(mm[c, 0], s[6])
        mm[c, 1] = max(mm[c, 1], s[7])


@njit(parallel=True, fastmath=fm, cache=True, nogil=True)
def stats_f32_par(x, px, nhwc, has_prev, lo, hi, lo_t, hi_t, nb, rows, eps, blk_len):
    """float32 statistics, work items in parallel: returns (fo [8,N,C], count, ff [3,N]).

    Items: (frame, row block) for NHWC; (frame, channel, row block) for NCHW, so that
    every item reads one contiguous stream.
    """
    height = x.shape[1] if nhwc else x.shape[2]
    channels = x.shape[3] if nhwc else x.shape[1]
    per = nb if nhwc else nb * channels  # items per frame
    part, mm, fcnt, fo, count, ff = _float_setup(x, nhwc, per)
    for it in prange(x.shape[0] * per):
        n = it // per
        c = -1 if nhwc else (it // nb) % channels
        r0 = (it % nb) * rows
        r1 = min(height, r0 + rows)
        item_f32(
            x,
            px,
            nhwc,
            has_prev,
            lo,
            hi,
            lo_t,
            hi_t,
            n,
            c,
            r0,
            r1,
            part[it],
            mm[it],
            fcnt[it],
            blk_len,
        )
    merge_float(part, mm, fcnt, per, eps, fo, count, ff)
    return fo, count, ff


@njit(fastmath=fm, cache=True, nogil=True)
def stats_f32_ser(x, px, nhwc, has_prev, lo, hi, lo_t, hi_t, eps, blk_len):
    """float32 statistics in one thread (small tensors)."""
    height = x.shape[1] if nhwc else x.shape[2]
    channels = x.shape[3] if nhwc else x.shape[1]
    per = 1 if nhwc else channels
    part, mm, fcnt, fo, count, ff = _float_setup(x, nhwc, per)
    for it in range(x.shape[0] * per):
        n = it // per
        c = -1 if nhwc else it % channels
        item_f32(
            x,
            px,
            nhwc,
            has_prev,
            lo,
            hi,
            lo_t,
            hi_t,
            n,
            c,
            0,
            height,
            part[it],
            mm[it],
            fcnt[it],
            blk_len,
        )
    merge_float(part, mm, fcnt, per, eps, fo, count, ff)
    return fo, count, ff


# ----------------------------------------------------------------------------------
# The guard's "every statistic inside its envelope" test (check.SanityGuard): one
# compiled call instead of a dozen NumPy calls, which cost tens of microseconds each
# when inference has just evicted the interpreter's working set from the caches.


@njit(cache=True, nogil=True)
def env_inside(vals, codes, lo, hi, nan, posinf, neginf, count, allow_nonfinite):
    # vals: the statistics in ENVELOPE_STATS order, each [N, C]; limit row l applies
    # to vals[codes[l]] (rows with a negative code are skipped). lo, hi [L, C]. NaN
    # statistics (undefined here) compare False: inside.
    if not allow_nonfinite:
        for n in range(nan.shape[0]):
            if nan[n] != 0 or posinf[n] != 0 or neginf[n] != 0:
                return False
    for n in range(count.shape[0]):
        for c in range(count.shape[1]):
            if count[n, c] == 0:
                return False
    for ell in range(codes.shape[0]):
        k = codes[ell]
        if k < 0:
            continue
        v = vals[k]
        if v.shape[1] != lo.shape[1]:
            return False
        for n in range(v.shape[0]):
            for c in range(v.shape[1]):
                if v[n, c] < lo[ell, c] or v[n, c] > hi[ell, c]:
                    return False
    return True


@njit(fastmath={"reassoc"}, cache=True, nogil=True)
def nonfinite_count(flat):
    # NaN / +-inf values of a float array (1-D, C). First one vectorised pass: v - v is
    # 0 for a finite v and NaN otherwise (reassoc only lets the sum be vectorised; it
    # does not fold v - v away); the exact count only when that sum is not 0.
    s = flat.dtype.type(0.0)
    for i in range(flat.size):
        s += flat[i] - flat[i]
    if s == 0.0:
        return 0
    bad = 0
    for i in range(flat.size):
        if not abs(flat[i]) < np.inf:
            bad += 1
    return bad

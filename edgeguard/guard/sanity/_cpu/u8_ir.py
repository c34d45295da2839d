"""The uint8 loops written in LLVM IR: AVX-512 BW + VNNI (SIMD) and portable.

Layer: :mod:`edgeguard.guard`. Private to :mod:`edgeguard.guard.sanity._cpu`:
the numba intrinsics ``u8_simd_stats`` / ``u8_simd_stats_c3`` (x86-64 with
AVX-512 BW and VNNI only, see :data:`U8_SIMD`) and ``u8_gen_stats`` /
``u8_gen_stats_c3`` (target-independent IR, any CPU numba runs on), called by
the uint8 datapath (:mod:`.u8`). Each call writes one record of ``NUACC``
int64 values per channel, in the order of the ``U_*`` slots of
:mod:`edgeguard.guard.sanity._kernel_layout`.
"""

# numba's codegen callbacks and cgutils helpers carry no annotations.
# mypy: disable-error-code="no-untyped-def,no-untyped-call"

from __future__ import annotations

import functools
import platform

from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from edgeguard.guard.sanity._cpu.ir import I8, I32, I64, decl, emit_run, with_and_without
from edgeguard.guard.sanity._kernel_layout import (
    NUACC,
    U_HS,
    U_MAX,
    U_MIN,
    U_S1,
    U_S2,
    U_SHI,
    U_SLO,
    U_TS,
)

__all__ = [
    "U8_SIMD",
    "u8_gen_stats",
    "u8_gen_stats_c3",
    "u8_simd_stats",
    "u8_simd_stats_c3",
]

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

_V8 = ir.VectorType(I8, 64)
_VQ = ir.VectorType(I64, 8)
_VD = ir.VectorType(I32, 16)
_V1 = ir.VectorType(ir.IntType(1), 64)
_V16 = ir.VectorType(ir.IntType(16), 64)

#: The record slot of each vector accumulator of a channel (_U8Acc, _U8AccGen).
_SLOT = {
    "s1": U_S1,
    "s2": U_S2,
    "slo": U_SLO,
    "shi": U_SHI,
    "hs": U_HS,
    "ts": U_TS,
    "mn": U_MIN,
    "mx": U_MAX,
}


def _store_record(b, out, at, vals):
    # out[at + slot] = vals[slot] (i64) for each slot of a channel's record, in slot order
    for slot in sorted(vals):
        b.store(vals[slot], b.gep(out, [I64(at + slot)]))


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


class _U8IR:
    """LLVM IR pieces of the uint8 loops (codegen time only; x86: the AVX-512 intrinsics)."""

    def __init__(self, builder, lo8, hi8, x86):
        self.b = builder
        if x86:
            self.psad = decl(builder, "llvm.x86.avx512.psad.bw.512", _VQ, [_V8, _V8])
            dp_t = [_VD, _V8, _V8] if _DP_BYTES else [_VD, _VD, _VD]
            self.dp = decl(builder, "llvm.x86.avx512.vpdpbusd.512", _VD, dp_t)
            self.popcnt = decl(builder, "llvm.ctpop.i64", I64, [I64])
        self.umin = decl(builder, "llvm.umin.v64i8", _V8, [_V8, _V8])
        self.umax = decl(builder, "llvm.umax.v64i8", _V8, [_V8, _V8])
        self.mload = decl(
            builder, "llvm.masked.load.v64i8.p0", _V8, [_V8.as_pointer(), I32, _V1, _V8]
        )
        self.zero = ir.Constant(_V8, None)
        self.lo, self.hi = self.splat(lo8), self.splat(hi8)

    def splat(self, v):
        u = self.b.insert_element(ir.Constant(_V8, ir.Undefined), v, I32(0))
        return self.shuffle(u, ir.Constant(_V8, ir.Undefined), [0] * 64)

    def shuffle(self, v, w, idx):
        return _shuffle(self.b, v, w, idx)

    def load(self, base, off, kx=None):
        # 64 bytes at base[off]; with a lane mask kx, masked-off lanes read nothing, are 0.
        ptr = self.b.bitcast(self.b.gep(base, [off]), _V8.as_pointer())
        if kx is None:
            return self.b.load(ptr, align=1)
        return self.b.call(self.mload, [ptr, I32(1), kx, self.zero])

    def first_lanes(self, n):  # lanes [0, n), 0 < n <= 64 (i64)
        lanes = ir.Constant(_V8, list(range(64)))
        return self.b.icmp_unsigned("<", lanes, self.splat(self.b.trunc(n, I8)))

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
            self.v[k] = cgutils.alloca_once_value(b, I64(0))
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
            self._set(key, lambda a, hit=hit: b.add(a, b.call(e.popcnt, [b.bitcast(hit, I64)])))

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
        # out[at:at+NUACC] = the totals of the accumulator sets `parts` (one channel).
        e = parts[0].e
        b = e.b
        v16 = ir.VectorType(I64, 16)

        def tot(key, vty, width):
            s = None
            for acc in parts:
                v = b.load(acc.v[key])
                v = b.sext(v, v16) if vty is _VD else v
                s = v if s is None else b.add(s, v)
            name = f"llvm.vector.reduce.add.v{width}i64"
            return b.call(decl(b, name, I64, [v16 if width == 16 else _VQ]), [s])

        s1 = tot("s1", _VD, 16)
        vals = {U_S1: s1, U_S2: b.add(tot("s2", _VD, 16), b.mul(s1, I64(128)))}
        for k in ("slo", "shi"):
            vals[_SLOT[k]] = functools.reduce(b.add, [b.load(acc.v[k]) for acc in parts])
        vals[U_HS] = tot("hs", _VQ, 8)
        vals[U_TS] = tot("ts", _VQ, 8)
        vals[U_MIN], vals[U_MAX] = _U8Acc.minmax(parts)
        _store_record(b, out, at, vals)

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
            red = decl(b, f"llvm.vector.reduce.{name}.v64i8", I8, [_V8])
            res.append(b.zext(b.call(red, [s]), I64))
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
        z = b.zext(x, ir.VectorType(I32, 64))
        sq = b.mul(z, z)
        quarters = [
            b.shuffle_vector(
                sq, sq, ir.Constant(ir.VectorType(I32, 16), list(range(16 * q, 16 * q + 16)))
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
        v32 = ir.VectorType(I32, 64)
        red64 = decl(b, "llvm.vector.reduce.add.v64i32", I32, [v32])
        red16 = decl(b, "llvm.vector.reduce.add.v16i32", I32, [_VD])

        def tot(key):  # exact: every lane total is below 2^31
            s = None
            for acc in parts:
                v = b.load(acc.v[key])
                if key == "s2":
                    v = b.zext(b.call(red16, [v]), I64)
                else:
                    v = b.zext(b.call(red64, [b.zext(v, v32)]), I64)
                s = v if s is None else b.add(s, v)
            return s

        vals = {_SLOT[k]: tot(k) for k in ("s1", "s2", "slo", "shi", "hs", "ts")}
        vals[U_MIN], vals[U_MAX] = _U8Acc.minmax(parts)
        _store_record(b, out, at, vals)


def _shuffle(builder, v, w, idx):
    return builder.shuffle_vector(v, w, ir.Constant(ir.VectorType(I32, 64), idx))


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
        for i, t in ((0, I8.as_pointer()), (1, I8.as_pointer()), (8, I64.as_pointer()))
    )
    a, n = (context.cast(builder, args[i], signature.args[i], types.int64) for i in (2, 3))
    head, has_prev = (
        context.cast(builder, args[i], signature.args[i], types.boolean) for i in (4, 7)
    )
    lo8, hi8 = (
        builder.trunc(context.cast(builder, args[i], signature.args[i], types.int64), I8)
        for i in (5, 6)
    )
    return xb, pb, ob, a, n, head, has_prev, lo8, hi8


def _trap(context, builder):
    # The SIMD intrinsics' body on targets without AVX-512 BW + VNNI: never executed,
    # because cpu.py selects the portable loops there (U8_SIMD is False).
    builder.call(decl(builder, "llvm.trap", ir.VoidType(), []), [])
    return context.get_dummy_value()


def _u8_intrinsics(x86):
    """The uint8 loops as numba intrinsics: ``(planar, c3)``.

    ``planar(blk, pblk, a, b, head, lo8, hi8, has_prev, out)``: integer statistics of
    ``v = blk.flat[a:b]`` into ``out[0:NUACC]`` (``U_*`` slots): s1, s2, #(v <= lo8),
    #(v >= hi8), the sum
    of |blk.flat[w] - blk.flat[w-1]| for w in [a + head, b), the sum of |v -
    pblk.flat[a:b]| (0 without ``has_prev``), min and max. ``head``: blk.flat[a]
    starts a block (has no left neighbour). Full 64-value vectors run unmasked, two
    per iteration; a last partial vector uses masked loads, whose masked-off lanes
    read no memory and add nothing.

    ``c3(blk, pblk, a, npix, head, lo8, hi8, has_prev, out)``: the same for each
    channel of ``npix`` interleaved 3-channel pixels ``blk.flat[a + 3 w + c]``, into
    ``out[NUACC c : NUACC (c + 1)]``; a value's left neighbour is the same channel of the pixel
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
                xm = e.load(xb, builder.sub(off, I64(1)), kx)
            accs[u].feed(x, xm, e.load(pb, off, kx) if with_prev else None, kx)

        def body(with_prev):
            c64, c128 = I64(64), I64(128)
            builder.store(a_, pos)
            n = builder.sub(b_, a_)
            with builder.if_then(builder.and_(head_, builder.icmp_signed(">", n, I64(0)))):
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
            with builder.if_then(builder.icmp_signed(">", rest, I64(0))):
                vec(p2, 1, with_prev, e.first_lanes(rest))

        with_and_without(builder, has_prev_, body)
        acc_cls.store(accs, ob, 0)

    def c3(builder, e, xb, pb, ob, a_, n_, head_, has_prev_):
        accs = [acc_cls(e) for _ in range(3)]
        carry = [cgutils.alloca_once_value(builder, e.zero) for _ in range(3)]
        with builder.if_then(builder.not_(head_)):  # neighbours of the first pixel
            for c in range(3):
                v = builder.load(builder.gep(xb, [builder.add(a_, I64(c - 3))]))
                builder.store(builder.insert_element(e.zero, v, I32(63)), carry[c])

        def group(px, with_prev, r=None, head=False):
            # Pixels [px, px + 64), or [px, px + r) with r < 64 (masked loads).
            off = builder.add(a_, builder.mul(px, I64(3)))
            masks = [None] * 3
            kx = None
            if r is not None:
                kx = e.first_lanes(r)
                for k in range(3):  # bytes [0, 3r) of the 192
                    nb = builder.sub(builder.mul(r, I64(3)), I64(64 * k))
                    nb = builder.select(builder.icmp_signed("<", nb, I64(0)), I64(0), nb)
                    nb = builder.select(builder.icmp_signed(">", nb, I64(64)), I64(64), nb)
                    masks[k] = e.first_lanes(nb)
            offs = [builder.add(off, I64(64 * k)) for k in range(3)]
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
            emit_run(builder, n_, 64, head_, lambda px, r, first: group(px, with_prev, r, first))

        with_and_without(builder, has_prev_, body)
        for c in range(3):
            acc_cls.store([accs[c]], ob, NUACC * c)

    return make(planar), make(c3)


u8_simd_stats, u8_simd_stats_c3 = _u8_intrinsics(True)
u8_gen_stats, u8_gen_stats_c3 = _u8_intrinsics(False)

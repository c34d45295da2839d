"""The float32 segment loops written in LLVM IR (one channel's run; 3 interleaved channels).

Layer: :mod:`edgeguard.guard`. Private to :mod:`edgeguard.guard.sanity._cpu`:
the numba intrinsics ``f32_c1_seg`` and ``f32_c3_seg`` that the float32
datapath (:mod:`.f32`) calls once per segment. Each call writes one float32
record of ``NF32`` values per channel, in the order of the ``F32_*`` slots of
:mod:`edgeguard.guard.sanity._kernel_layout`. Plain vector IR, no target
intrinsic.
"""

# numba's codegen callbacks and cgutils helpers carry no annotations.
# mypy: disable-error-code="no-untyped-def,no-untyped-call"

from __future__ import annotations

import functools

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from edgeguard.guard.sanity._cpu.ir import I8, I32, I64, decl, emit_run, with_and_without
from edgeguard.guard.sanity._kernel_layout import (
    F32_HS,
    F32_MAX,
    F32_MIN,
    F32_S1,
    F32_S2,
    F32_SHI,
    F32_SLO,
    F32_TS,
    NF32,
    PF32,
)

__all__ = ["f32_c1_seg", "f32_c3_seg"]

_F32 = ir.FloatType()
_VF = ir.VectorType(_F32, 16)
_VB16 = ir.VectorType(ir.IntType(1), 16)


def _f32_seg_intrinsic(C):
    """The float32 segment loop for C interleaved channels (C = 1: one channel's run).

    The intrinsic ``f32_seg(arr, parr, off, npix, has_prev, head, h, lo_t, hi_t, out)``
    reads pixels ``arr.flat[off + C w + c]``, w < npix; ``head``: the first pixel starts
    a row (it is its own left neighbour; otherwise the pixel before it is read);
    ``h[c]``: the shifts. It fills ``out[c, :]`` (float32, ``F32_*`` slots) with s1 =
    sum(x - h), s2 = sum((x - h)^2), hs = sum |x - left|, #(x <= lo_t), #(x >= hi_t),
    min, max and ts = sum |x - prev| (0 without ``has_prev``). The sums are only
    meaningful when they come back finite (min/max assume no NaN): the caller then
    takes the careful path.

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
    idx16 = ir.VectorType(I32, 16)
    undef = ir.Constant(_VF, ir.Undefined)

    def pattern(k):  # channel of each lane of vector position k
        return [(16 * k + j) % C for j in range(16)]

    def splat(v):
        u = b.insert_element(undef, v, I32(0))
        return b.shuffle_vector(u, undef, ir.Constant(idx16, [0] * 16))

    fabs = decl(b, "llvm.fabs.v16f32", _VF, [_VF])
    prefetch = decl(b, "llvm.prefetch.p0", ir.VoidType(), [I8.as_pointer(), I32, I32, I32])
    vmin = decl(b, "llvm.minnum.v16f32", _VF, [_VF, _VF])
    vmax = decl(b, "llvm.maxnum.v16f32", _VF, [_VF, _VF])
    mload = decl(b, "llvm.masked.load.v16f32.p0", _VF, [_VF.as_pointer(), I32, _VB16, _VF])
    nn = ("nnan", "nsz")
    zf = ir.Constant(_VF, None)
    inf = ir.Constant(_VF, [float("inf")] * 16)
    ninf = ir.Constant(_VF, [float("-inf")] * 16)
    lo_v, hi_v = splat(lo_), splat(hi_)
    hc = undef
    for c in range(C):
        hc = b.insert_element(hc, b.load(b.gep(hb, [I64(c)])), I32(c))
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
        return b.call(mload, [ptr, I32(4), mask, passthru])

    def lanes_below(nv):  # <16 x i1>: lanes [0, nv), nv in [0, 16] (i64)
        t = b.insert_element(ir.Constant(idx16, ir.Undefined), b.trunc(nv, I32), I32(0))
        t = b.shuffle_vector(t, ir.Constant(idx16, ir.Undefined), ir.Constant(idx16, [0] * 16))
        return b.icmp_signed("<", ir.Constant(idx16, list(range(16))), t)

    def step(px, with_prev, r=None, first=False):
        # pixels [px, px + step_px); r: only the first r (< step_px) are inside
        nvals = None if r is None else b.mul(r, I64(C))
        base = b.add(off_, b.mul(px, I64(C)))
        for k in range(3):
            a = acc[k]
            at = b.add(base, I64(16 * k))
            for base_ptr in (xb, pb) if with_prev else (xb,):
                ahead = b.bitcast(b.gep(base_ptr, [b.add(at, I64(PF32))]), I8.as_pointer())
                b.call(prefetch, [ahead, I32(0), I32(3), I32(1)])
            kx = None
            if nvals is not None:
                nv = b.sub(nvals, I64(16 * k))
                nv = b.select(b.icmp_signed("<", nv, I64(0)), I64(0), nv)
                nv = b.select(b.icmp_signed(">", nv, I64(16)), I64(16), nv)
                kx = lanes_below(nv)
            # lanes outside: x = h, so that d, |x - left|, |x - prev| are 0
            x = load(xb, at, kx, hpat[k])
            left_at = b.sub(at, I64(C))
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
        emit_run(b, n_, step_px, head_, lambda px, r, first: step(px, with_prev, r, first))

    with_and_without(b, has_prev_, body)
    radd = decl(b, "llvm.vector.reduce.fadd.v16f32", _F32, [_F32, _VF])
    raddi = decl(b, "llvm.vector.reduce.add.v16i32", I32, [idx16])
    rmin = decl(b, "llvm.vector.reduce.fmin.v16f32", _F32, [_VF])
    rmax = decl(b, "llvm.vector.reduce.fmax.v16f32", _F32, [_VF])
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
            (F32_S1, tot("s1")),
            (F32_S2, tot("s2")),
            (F32_HS, tot("hs")),
            (F32_SLO, count("lo")),
            (F32_SHI, count("hi")),
            (F32_MIN, b.call(rmin, [mn], fastmath=nn)),
            (F32_MAX, b.call(rmax, [mx], fastmath=nn)),
            (F32_TS, tot("ts")),
        )
        for slot, v in vals:
            b.store(v, b.gep(ob, [I64(NF32 * c + slot)]))
    return context.get_dummy_value()


#: The float32 segment loops: 3 interleaved channels (NHWC) and one channel's run.
f32_c3_seg = _f32_seg_intrinsic(3)
f32_c1_seg = _f32_seg_intrinsic(1)

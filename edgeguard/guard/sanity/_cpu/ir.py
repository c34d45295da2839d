"""LLVM IR building blocks and small numba intrinsics shared by the CPU datapaths.

Layer: :mod:`edgeguard.guard`. Private to :mod:`edgeguard.guard.sanity._cpu`:
the integer IR types, function declarations, the run-of-steps and
two-loop emitters that the uint8 (:mod:`.u8_ir`) and float32 (:mod:`.f32_ir`)
loops are written with, and the intrinsics the numba-compiled loops call
(``llvm.minnum`` / ``llvm.maxnum`` and ``llvm.prefetch``). Codegen-time code only;
no compiled function lives here.
"""

# numba's codegen callbacks and cgutils helpers carry no annotations.
# mypy: disable-error-code="no-untyped-def,no-untyped-call"

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "I8",
    "I32",
    "I64",
    "decl",
    "emit_run",
    "fmax_finite",
    "fmin_finite",
    "prefetch_span",
    "with_and_without",
]

I8, I32, I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)


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

    Offsets, not a slice: see ``u8_ir._u8_intrinsics``.
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


def decl(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def emit_run(b, n, width, head, step):
    # The steps over a run of n pixels, `width` per step: step(pos, r, first) with r
    # None for a full step, else the r < width pixels left (masked loads); first: the
    # step starts the run and the run starts a row (`head`).
    pos = cgutils.alloca_once_value(b, I64(0))
    with b.if_then(b.and_(head, b.icmp_signed(">=", n, I64(width)))):
        step(I64(0), None, True)
        b.store(I64(width), pos)
    p0 = b.load(pos)
    nfull = b.sdiv(b.sub(n, p0), I64(width))
    with cgutils.for_range(b, nfull) as loop:
        step(b.add(p0, b.mul(loop.index, I64(width))), None, False)
    p1 = b.add(p0, b.mul(nfull, I64(width)))
    rest = b.sub(n, p1)
    first_step = b.and_(head, b.icmp_signed("==", p1, I64(0)))
    with b.if_then(b.icmp_signed(">", rest, I64(0))), b.if_else(first_step) as (first, other):
        with first:
            step(p1, rest, True)
        with other:
            step(p1, rest, False)


def with_and_without(b, flag, body):
    # body(True) where the runtime flag is set, body(False) elsewhere: two loops, each
    # without the flag's test inside
    with b.if_else(flag) as (then, other):
        with then:
            body(True)
        with other:
            body(False)

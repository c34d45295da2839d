"""Compiled helpers and compile options shared by the CPU datapaths.

Layer: :mod:`edgeguard.guard`. Private to :mod:`edgeguard.guard.sanity._cpu`:
the fastmath subset of the vectorised loops, the software prefetch of a span
of a flat array, and the rows-per-block rule.
"""

# numba compiles these functions from their unannotated source. mypy checks a call
# of an intrinsic against the Python signature of its typer (typingctx first), which
# the compiled call does not have: "call-arg" is off in this module.
# mypy: disable-error-code="no-untyped-def,call-arg"

from __future__ import annotations

from numba import njit

from edgeguard.guard.sanity._cpu.ir import prefetch_span

__all__ = ["block_rows", "fm", "prefetch_block"]

# fastmath subset that lets LLVM vectorise the float64 reductions; never nnan/ninf,
# which would fold away the finiteness tests.
fm = {"reassoc", "contract", "nsz", "arcp"}


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

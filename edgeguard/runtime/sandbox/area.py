"""The size of a sandboxed worker's shared I/O area, from what the bundle signed.

Layer: :mod:`edgeguard.runtime.sandbox` (pure: reads the typed signed slots, no I/O).

Each worker shares one memfd with the supervisor: the request's inputs in the first half,
the outputs in the second, both halves the same size. :func:`io_area` sizes a half from
the members' signed I/O contracts, every member and the fallback model alike:

* a fixed dimension is taken as signed;
* a dynamic dimension of an input is bounded by the smallest maximum the bundle signed
  for that input's axis: the calibrated sanity profile's shape range, a TensorRT engine
  recipe's ``max`` shape; an input's dynamic first axis with no such bound is the batch
  of one frame (the frame loops send one frame per request);
* an output's dynamic dimension named like an input's (``"N"``, ``"H"``) takes that
  input's size; any other dynamic dimension is *unbounded*;
* a half holds every input (or every output) of a call, each 64-byte aligned; what is
  unbounded is given the **floor**: :data:`DEFAULT_IO_BYTES` (32 MiB), or what the device
  asks for (``open_session(sandbox_io_bytes=...)``, ``--sandbox-io-mb``).

The two halves together stay within the signed memory limit of a worker
(``policy["sandbox"]["memory_max_bytes"]``): a contract that needs more is refused, a floor
asked for beyond it is refused, and the default floor is cut to fit. The area is a sparse
memfd: only the pages a call touches cost memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from edgeguard.errors import PolicyError, UsageError
from edgeguard.policy.io import Dim, TensorSpec
from edgeguard.policy.slots import SignedSlots

__all__ = ["DEFAULT_IO_BYTES", "MIN_IO_BYTES", "IoArea", "io_area"]

#: What a half of the area holds for tensors whose size nothing signed bounds.
DEFAULT_IO_BYTES = 32 * 1024 * 1024
#: The smallest half the executor takes.
MIN_IO_BYTES = 4096
_ALIGN = 64


@dataclass(frozen=True)
class IoArea:
    """The shared memory of each sandboxed worker, and how it was sized.

    Attributes:
        half_bytes: Bytes of the input half, and of the output half.
        contract_bytes: What the signed shapes and bounds need (the larger half).
        floor_bytes: What a half holds at least: the size given to what nothing bounds.
        unbounded: Tensors (``member.tensor``) with a dimension nothing signed bounds.
        memory_max_bytes: The signed memory limit of a worker (None: unlimited).
    """

    half_bytes: int
    contract_bytes: int
    floor_bytes: int
    unbounded: tuple[str, ...]
    memory_max_bytes: int | None

    def describe(self) -> str:
        """One line for people: the size and where it came from."""
        mib = self.half_bytes / 2**20
        if not self.unbounded:
            return f"{mib:.1f} MiB per call, sized from the signed I/O contract"
        names = ", ".join(self.unbounded[:3]) + (", ..." if len(self.unbounded) > 3 else "")
        return (
            f"{mib:.1f} MiB per call; tensors with a dimension nothing signed bounds "
            f"({names}) get {self.floor_bytes / 2**20:.0f} MiB"
        )


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _input_maxima(slots: SignedSlots) -> dict[str, list[int | None]]:
    """Input name -> per axis the smallest maximum the bundle signed (None: none)."""
    maxima: dict[str, list[int | None]] = {}

    def bound(name: str, axis_max: Iterable[int | None]) -> None:
        known = maxima.setdefault(name, [])
        for axis, hi in enumerate(axis_max):
            if axis == len(known):
                known.append(None)
            old = known[axis]
            if hi is not None and (old is None or hi < old):
                known[axis] = hi

    if slots.sanity is not None:
        for p in slots.sanity.inputs:
            bound(p.name, (hi for _, hi in p.shape))
    if slots.engines is not None:
        for recipe in slots.engines.members.values():
            for r in recipe.shapes:
                bound(r.input, r.max)
    return maxima


def _axis(
    d: Dim, axis: int, *, bounds: list[int | None], dims: Mapping[str, int], is_input: bool
) -> int | None:
    """The size one axis may take at most, or None when nothing signed bounds it."""
    if isinstance(d, int):
        return d
    if is_input and axis < len(bounds) and bounds[axis] is not None:
        return bounds[axis]
    if isinstance(d, str) and d in dims:
        return dims[d]
    if is_input and axis == 0:
        return 1  # a batch axis nothing bounds: one frame per request
    return None


def _named_dims(
    inputs: Iterable[TensorSpec], maxima: Mapping[str, list[int | None]]
) -> dict[str, int]:
    """Named dynamic dimensions of the inputs -> the largest size any input allows them."""
    dims: dict[str, int] = {}
    for s in inputs:
        for axis, d in enumerate(s.shape):
            if isinstance(d, str):
                hi = _axis(None, axis, bounds=maxima.get(s.name, []), dims={}, is_input=True)
                if hi is not None:
                    dims[d] = max(dims.get(d, 0), hi)
    return dims


def _tensor_bytes(
    spec: TensorSpec, *, bounds: list[int | None], dims: Mapping[str, int], is_input: bool
) -> int | None:
    """Bytes of ``spec`` at its largest, or None when a dimension is unbounded."""
    count = 1
    for axis, d in enumerate(spec.shape):
        size = _axis(d, axis, bounds=bounds, dims=dims, is_input=is_input)
        if size is None:
            return None
        count *= size
    return count * np.dtype(spec.dtype).itemsize


def io_area(slots: SignedSlots, *, names: Iterable[str], floor_bytes: int | None = None) -> IoArea:
    """Size the shared I/O area of the sandboxed workers of ``names``.

    Args:
        slots: The bundle's signed slots (I/O contracts, sanity profile, engine
            recipe, isolation policy).
        names: The members (and the fallback member) that run in workers.
        floor_bytes: What a half holds at least, for the tensors nothing signed bounds
            (None: :data:`DEFAULT_IO_BYTES`, cut to the memory limit).

    Returns:
        The size of each half and how it was chosen.

    Raises:
        UsageError: ``floor_bytes`` is below :data:`MIN_IO_BYTES`.
        PolicyError: The area the contract needs, or the floor asked for, exceeds the
            signed memory limit of a worker (both halves must fit in it).
    """
    limit = slots.isolation.memory_max_bytes
    if floor_bytes is not None and floor_bytes < MIN_IO_BYTES:
        raise UsageError(f"the sandbox's shared memory per call must be at least {MIN_IO_BYTES} B")
    maxima = _input_maxima(slots)
    need = 0
    unbounded: list[str] = []
    for name in names:
        io = slots.member_io(name)
        if io is None:  # a bundle signed before I/O contracts: nothing bounds anything
            unbounded.append(f"{name}.*")
            continue
        dims = _named_dims(io.inputs, maxima)
        for group, is_input in ((io.inputs, True), (io.outputs, False)):
            total = 0
            for spec in group:
                bounds = maxima.get(spec.name, []) if is_input else []
                n = _tensor_bytes(spec, bounds=bounds, dims=dims, is_input=is_input)
                if n is None:
                    unbounded.append(f"{name}.{spec.name}")
                else:
                    total += _aligned(n)
            need = max(need, total)
    floor = DEFAULT_IO_BYTES if floor_bytes is None else floor_bytes
    mib = 2**20
    if limit is not None:
        if 2 * need > limit:
            raise PolicyError(
                f"the models' signed inputs or outputs need {need / mib:.1f} MiB of shared "
                f"memory per call in each direction, more than half the {limit / mib:.0f} MiB "
                "a sandboxed worker may use (the signed memory_max_bytes)",
                hint="sign a larger sandbox memory limit at build, or run with "
                "--isolation threads where the bundle allows it",
            )
        if floor_bytes is None:
            floor = min(floor, limit // 2)
        elif 2 * max(floor, need) > limit:
            raise PolicyError(
                f"{floor / mib:.0f} MiB of shared memory per call in each direction is more "
                f"than half the {limit / mib:.0f} MiB a sandboxed worker may use (the signed "
                "memory_max_bytes)",
                hint=f"ask for at most {limit // 2 // mib} MiB (--sandbox-io-mb)",
            )
    half = max(need, floor, MIN_IO_BYTES)
    return IoArea(
        half_bytes=_aligned(half),
        contract_bytes=need,
        floor_bytes=floor,
        unbounded=tuple(unbounded),
        memory_max_bytes=limit,
    )

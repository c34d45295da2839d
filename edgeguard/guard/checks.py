"""Per-request checks: the signed I/O contract first, then the calibrated sanity profile.

Layer: :mod:`edgeguard.guard` (pure logic over NumPy arrays; no I/O). One
:class:`FrameChecks` guards every request of a device session, whatever the bundle:

1. the **I/O contract** (the member's signed input names, element types, ranks and
   fixed dimensions): a request the model cannot take is rejected here, the same way
   for a bundle with or without a sanity profile;
2. the **sanity profile** when the bundle has one
   (:class:`~edgeguard.guard.sanity.check.SanityGuard`): static checks, the one-pass
   statistics against the calibrated envelope, and output checks.

It implements the runtime's checker protocol
(:class:`~edgeguard.runtime.guarded.SanityChecker`).

When a session computes an input's statistics on the device, next to a TensorRT
member's model (``docs/sanity.md``, "Where the statistics are computed"), the
contract and the static checks still run here before any model does
(``check_inputs(..., stats_elsewhere=...)``), and the statistics each member sends
back are judged by :meth:`FrameChecks.check_stats` with the same envelope; ``tdiff``
(the previous accepted frame) is then computed here, on the CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeguard.errors import UsageError
from edgeguard.guard.sanity.check import SanityGuard
from edgeguard.guard.sanity.layout import frames_view
from edgeguard.guard.sanity.spec import FrameStats, Verdict, Violation
from edgeguard.policy.io import TensorSpec
from edgeguard.policy.sanity import Status

__all__ = ["FrameChecks", "contract_violations", "tdiff"]


def tdiff(x: npt.NDArray[Any], prev: npt.NDArray[Any], layout: str) -> npt.NDArray[np.float64]:
    """The ``tdiff`` statistic alone, ``[N, C]``: mean ``|x - prev|`` over the positions
    finite in both (NaN where there is none), as every statistics implementation
    computes it."""
    a = frames_view(x, layout).astype(np.float64)
    b = frames_view(prev, layout).astype(np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    with np.errstate(invalid="ignore", over="ignore"):
        total = np.where(both, np.abs(a - b), 0.0).sum(axis=(2, 3))
    pairs = both.sum(axis=(2, 3))
    out = np.full(pairs.shape, np.nan)
    np.divide(total, pairs, out=out, where=pairs > 0)
    return out


def contract_violations(feeds: Mapping[str, Any], specs: Sequence[TensorSpec]) -> list[Violation]:
    """Where ``feeds`` break the signed input contract ``specs`` (every violation REJECT)."""
    out: list[Violation] = []

    def bad(check: str, tensor: str, detail: str) -> None:
        out.append(Violation(check=check, tensor=tensor, severity=Status.REJECT, detail=detail))

    names = {s.name for s in specs}
    for extra in sorted(set(feeds) - names):
        bad("input.unexpected", extra, f"not an input of the model (it takes {sorted(names)})")
    for spec in specs:
        if spec.name not in feeds:
            bad("input.missing", spec.name, f"not fed; the model takes {spec.describe()}")
            continue
        x = feeds[spec.name]
        if not isinstance(x, np.ndarray):
            bad("input.type", spec.name, f"a {type(x).__name__}, not a numpy array")
            continue
        if x.dtype.name != spec.dtype:
            bad("input.dtype", spec.name, f"dtype {x.dtype.name}; the model takes {spec.dtype}")
        if x.ndim != spec.rank:
            bad(
                "input.rank",
                spec.name,
                f"shape {list(x.shape)} has rank {x.ndim}; the model takes {spec.describe()}",
            )
        elif not spec.matches_shape(x.shape):
            bad(
                "input.shape",
                spec.name,
                f"shape {list(x.shape)}; the model takes {spec.describe()}",
            )
    if not out:
        out.extend(_named_axes_disagree(feeds, specs))
    return out


def _named_axes_disagree(feeds: Mapping[str, Any], specs: Sequence[TensorSpec]) -> list[Violation]:
    """A dynamic axis named alike in several places (``N`` of two inputs) has one size:
    ONNX gives one symbolic name one value, and a model fed otherwise fails inside the
    inference library instead of at the contract."""
    seen: dict[str, tuple[int, str, int]] = {}
    for spec in specs:
        for axis, (dim, size) in enumerate(zip(spec.shape, feeds[spec.name].shape, strict=True)):
            if not isinstance(dim, str):
                continue
            first = seen.setdefault(dim, (int(size), spec.name, axis))
            if first[0] != size:
                return [
                    Violation(
                        check="input.shape",
                        tensor=spec.name,
                        severity=Status.REJECT,
                        detail=f"axis {axis} ({dim!r}) is {size}, but {dim!r} is {first[0]} "
                        f"in axis {first[2]} of {first[1]!r}; the model takes one size for it",
                    )
                ]
    return []


class FrameChecks:
    """The checks of one device session: the I/O contract, then the sanity profile.

    Args:
        inputs: The signed input contract of the members (None: the bundle has none,
            and only the sanity profile, if any, checks inputs).
        sanity: The guard of the signed sanity profile, or None.
    """

    def __init__(self, inputs: Sequence[TensorSpec] | None, sanity: SanityGuard | None) -> None:
        self._inputs = tuple(inputs) if inputs is not None else None
        self._sanity = sanity
        # (dtype, shape) per input that passed the contract: a camera repeats them
        self._ok: dict[str, tuple[np.dtype[Any], tuple[int, ...]]] = {}

    @property
    def sanity(self) -> SanityGuard | None:
        """The sanity guard, or None when the bundle has no profile."""
        return self._sanity

    @property
    def counts_nonfinite_outputs(self) -> bool:
        """Whether :meth:`check_outputs` reports NaN/inf (so the runtime need not scan)."""
        return self._sanity is not None

    def warm_up(self) -> None:
        """Compile the sanity kernels now, not inside the first frame's deadline."""
        if self._sanity is not None:
            self._sanity.warm_up()

    def _contract(self, feeds: Mapping[str, Any]) -> list[Violation]:
        specs = self._inputs
        if specs is None:
            return []
        if len(feeds) == len(specs) and all(
            type(x := feeds.get(s.name)) is np.ndarray
            and (seen := self._ok.get(s.name)) is not None
            and x.dtype == seen[0]
            and x.shape == seen[1]
            for s in specs
        ):
            return []
        found = contract_violations(feeds, specs)
        if not found:
            for s in specs:
                x = feeds[s.name]
                self._ok[s.name] = (x.dtype, x.shape)
        return found

    def check_inputs(
        self,
        feeds: Mapping[str, Any],
        prev: Mapping[str, Any] | None = None,
        *,
        stats_elsewhere: frozenset[str] = frozenset(),
    ) -> Verdict:
        """Check one request (``prev``: the previous accepted request, for ``tdiff``).

        ``stats_elsewhere``: inputs whose statistics the members compute on the device
        (judged by :meth:`check_stats` when they arrive): only the contract and their
        static checks run here.
        """
        broken = self._contract(feeds)
        if broken:
            return Verdict.of(broken)
        if self._sanity is None:
            return Verdict.of(())
        if stats_elsewhere:
            return self._sanity.check_inputs(feeds, prev, stats_elsewhere=stats_elsewhere)
        return self._sanity.check_inputs(feeds, prev)

    def needs_tdiff(self, name: str) -> bool:
        """Whether the profile limits ``tdiff`` of input ``name``."""
        if self._sanity is None:
            return False
        return any(lim.stat == "tdiff" for lim in self._sanity.profile.input(name).limits)

    def check_stats(
        self,
        name: str,
        stats: FrameStats,
        x: npt.NDArray[Any],
        prev: npt.NDArray[Any] | None = None,
    ) -> Verdict:
        """Judge statistics of input ``name`` computed on the device (without ``tdiff``).

        Args:
            name: The input.
            stats: Its statistics, as a member's device check computed them.
            x: The input as fed (for ``tdiff``, computed here).
            prev: The same input of the previous accepted request, or None.

        Raises:
            UsageError: No sanity profile, or ``stats`` do not fit the profile.
            KeyError: ``name`` is not a checked input.
        """
        if self._sanity is None:
            raise UsageError("no sanity profile: there are no statistics to judge")
        if (
            stats.tdiff is None
            and prev is not None
            and isinstance(prev, np.ndarray)
            and prev.shape == x.shape
            and prev.dtype == x.dtype
            and self.needs_tdiff(name)
        ):
            layout = self._sanity.profile.input(name).layout
            stats = dataclasses.replace(stats, tdiff=tdiff(x, prev, layout))
        return self._sanity.check_stats(name, stats)

    def check_outputs(self, outputs: Mapping[str, Any]) -> Verdict:
        """Check one member's answer: NaN/inf and OOD scores (with a sanity profile)."""
        if self._sanity is None:
            return Verdict.of(())
        return self._sanity.check_outputs(outputs)

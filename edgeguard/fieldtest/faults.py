"""Fault injection for frame loops and field tests.

Layer: fieldtest (no file formats, no GPU imports). A fault schedule is a
list of :class:`Fault` windows over frame indices, parsed from a compact
spec such as ``"hang:digits_mlp-fp16@60-100,freeze@120-140,nan@160-170"``:

* member faults act on a member's (or ``fallback``'s) calls through a
  :class:`FaultyExecutor` wrapped around the session's executor, sandboxed or
  not: ``hang`` (never answers), ``crash`` (fails), ``nan`` (NaN outputs),
  ``slow`` (``slow_ms`` late);
* input faults corrupt the camera frame before it reaches the runtime, the
  corruption classes of :mod:`edgeguard.fieldtest.quality` acting on the frames as
  the model takes them: ``freeze`` (the previous frame again), ``nan`` (one NaN
  pixel), ``scale255`` (x255: 0..255 delivered where the model expects its
  normalised range), ``div255`` (/255: normalised twice), ``black`` (each
  channel's lowest value in the sequence, what a black pixel becomes after
  preprocessing), ``dead`` (all zeros, whatever the preprocessing), ``noise``
  (Gaussian noise of a quarter of the sequence's value range) and ``swap``
  (channels reversed: BGR for RGB).

Member faults without a target hit the first member.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeguard.errors import BackendError, UsageError
from edgeguard.fieldtest.quality import FrameRange, corrupt, frame_range
from edgeguard.policy.runtime import FALLBACK_NAME

__all__ = [
    "FAULT_CLASS",
    "INPUT_FAULTS",
    "MEMBER_FAULTS",
    "Fault",
    "FaultClock",
    "FaultyExecutor",
    "corrupt_frame",
    "parse_faults",
]

MEMBER_FAULTS = ("hang", "crash", "nan", "slow")
INPUT_FAULTS = ("freeze", "nan", "scale255", "div255", "black", "dead", "noise", "swap")
#: The quality module's corruption class of each input fault.
FAULT_CLASS = {
    "freeze": "frozen",
    "nan": "nan",
    "scale255": "scale_x255",
    "div255": "scale_div255",
    "black": "black",
    "dead": "dead",
    "noise": "noise",
    "swap": "channel_swap",
}
_SPEC = re.compile(
    r"(?P<kind>[a-z0-9]+)(?::(?P<target>[A-Za-z0-9._:+-]+))?@(?P<a>\d+)(?:-(?P<b>\d+))?"
)


@dataclass(frozen=True)
class Fault:
    """One fault active for frames ``start <= i < end``.

    ``target`` names a member for member faults; None means an input fault
    (for ``nan``, which exists in both families, a target makes it a member fault).
    """

    kind: str
    start: int
    end: int
    target: str | None = None

    @property
    def on_member(self) -> bool:
        """Whether this fault wraps a member (else it corrupts the input)."""
        return self.target is not None or self.kind in ("hang", "crash", "slow")

    def active(self, frame: int) -> bool:
        """Whether the fault applies to ``frame``."""
        return self.start <= frame < self.end


def parse_faults(spec: str | None, *, members: Sequence[str] = ()) -> list[Fault]:
    """Parse ``kind[:member]@start[-end],...``; member faults default to the first member.

    Windows are half-open: ``@60-90`` is frames 60 to 89, ``@5`` is frame 5 alone.
    """
    if not spec:
        return []
    out = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        m = _SPEC.fullmatch(part)
        if m is None:
            raise UsageError(
                f"bad fault {part!r}", hint="use kind[:member]@start[-end], e.g. hang@60-100"
            )
        kind, target = m["kind"], m["target"]
        start = int(m["a"])
        end = int(m["b"]) if m["b"] else start + 1
        if end <= start:
            raise UsageError(
                f"fault {part!r}: the window is empty",
                hint=f"ranges are half-open: {kind}@{start}-{start + 1} or {kind}@{start} is "
                f"frame {start} alone, {kind}@{start}-{start + 10} frames {start} to {start + 9}",
            )
        member_kind = kind in MEMBER_FAULTS and (target is not None or kind != "nan")
        if target is not None and not member_kind:
            raise UsageError(
                f"fault {part!r}: {kind} is an input fault; it acts on the frame, not on a member",
                hint=f"write {kind}@{m['a']}" + (f"-{m['b']}" if m["b"] else ""),
            )
        if not member_kind and kind not in INPUT_FAULTS:
            raise UsageError(
                f"unknown fault {kind!r}",
                hint=f"member faults: {', '.join(MEMBER_FAULTS)}; input faults: "
                f"{', '.join(INPUT_FAULTS)}",
            )
        if member_kind and target is None:
            if not members:
                raise UsageError(f"fault {part!r} needs a member name")
            target = members[0]
        if target is not None and members and target not in (*members, "fallback"):
            raise UsageError(f"fault {part!r}: no member {target!r} (have {', '.join(members)})")
        out.append(Fault(kind, start, end, target))
    return out


class FaultClock:
    """The frame index the loop is on, shared with the member wrappers."""

    def __init__(self) -> None:
        self.frame = -1


class _InjectedCall:
    """A member call as a fault makes it look: hung, crashed, slow or NaN."""

    def __init__(self, kind: str, inner: Any, message: str, slow_s: float) -> None:
        self._kind = kind
        self._inner = inner
        self._message = message
        self._ready_at = time.monotonic() + (slow_s if kind == "slow" else 0.0)

    def wait(self, timeout_s: float) -> bool:
        if self._kind == "hang":
            time.sleep(max(0.0, timeout_s))  # never answers: the runtime abandons the call
            return False
        if self._kind == "crash":
            return True
        end = time.monotonic() + max(0.0, timeout_s)
        if self._kind == "slow":
            delay = self._ready_at - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, max(0.0, timeout_s)))
                if time.monotonic() < self._ready_at:
                    return False
        ok: bool = self._inner.wait(max(0.0, end - time.monotonic()))
        return ok

    def result(self) -> dict[str, np.ndarray]:
        if self._kind == "crash":
            raise BackendError(self._message)
        out: dict[str, np.ndarray] = self._inner.result()
        if self._kind == "nan":
            return {
                k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in out.items()
            }
        return out

    @property
    def run_ns(self) -> int | None:
        if self._kind in ("hang", "crash"):
            return None
        inner: int | None = self._inner.run_ns
        return inner


class FaultyExecutor:
    """Wraps the session's member executor and misbehaves during scheduled fault windows.

    Works the same on sandboxed worker processes and on threads: a ``hang`` never
    answers (the runtime abandons the call, which kills a sandboxed worker), ``crash``
    fails the call, ``slow`` delays the answer by ``slow_ms``, ``nan`` replaces float
    outputs with NaN. Pass ``lambda ex: FaultyExecutor(ex, faults, clock)`` as the
    session's ``executor_wrapper``.
    """

    def __init__(
        self,
        inner: Any,
        faults: Sequence[Fault],
        clock: FaultClock,
        *,
        slow_ms: float = 150.0,
    ) -> None:
        self._inner = inner
        self._faults = faults  # read at every call: the schedule may be filled in later
        self._clock = clock
        self._slow_s = slow_ms / 1e3

    def _active(self, name: str) -> Fault | None:
        target = "fallback" if name == FALLBACK_NAME else name
        frame = self._clock.frame
        return next(
            (f for f in self._faults if f.on_member and f.target == target and f.active(frame)),
            None,
        )

    def submit(self, name: str, feeds: Mapping[str, np.ndarray]) -> Any:
        """Start the call; a scheduled fault decides how it looks to the runtime."""
        fault = self._active(name)
        if fault is None:
            return self._inner.submit(name, feeds)
        message = f"injected crash in {name} at frame {self._clock.frame}"
        inner = None if fault.kind in ("hang", "crash") else self._inner.submit(name, feeds)
        return _InjectedCall(fault.kind, inner, message, self._slow_s)

    def abandon(self, name: str) -> None:
        """Give up the member's late call (the inner executor kills or writes it off)."""
        self._inner.abandon(name)

    def close(self) -> None:
        """Close the inner executor."""
        self._inner.close()


def corrupt_frame(
    frame: np.ndarray,
    previous: np.ndarray | None,
    faults: Sequence[Fault],
    index: int,
    rng: np.random.Generator,
    *,
    basis: FrameRange | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Apply the input faults active at ``index``; returns the frame and their names.

    Args:
        frame: The clean frame (a batch of one).
        previous: The frame sent before it (``freeze`` repeats it), or None.
        faults: The schedule.
        index: The frame's index.
        rng: Random source (``nan`` position, ``noise``).
        basis: What black and the value range are for this sequence (default: this
            frame's own, with the layout guessed from its shape).
    """
    applied = []
    out = frame
    for f in faults:
        if f.on_member or not f.active(index):
            continue
        applied.append(f.kind)
        if f.kind == "freeze":
            if previous is not None:
                out = previous.copy()
        elif f.kind == "dead":
            out = np.zeros_like(out)
        else:
            if basis is None:
                basis = frame_range(frame)
            if f.kind == "swap" and basis.channels < 2:
                continue  # nothing to swap: the fault is recorded, the frame unchanged
            out = corrupt(
                FAULT_CLASS[f.kind],
                out,
                layout=basis.layout,
                black=basis.black,
                span=basis.span,
                rng=rng,
            )
    return out, applied

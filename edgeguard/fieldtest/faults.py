"""Fault injection for frame loops and field tests.

Layer: fieldtest (no file formats, no GPU imports). A fault schedule is a
list of :class:`Fault` windows over frame indices, parsed from a compact
spec such as ``"hang:digits_mlp-fp16@60-100,freeze@120-140,nan@160-170"``:

* member faults wrap an ensemble member (or ``fallback``) in a
  :class:`FaultyMember`: ``hang`` (blocks far past any deadline), ``crash``
  (raises), ``nan`` (returns NaN outputs), ``slow`` (adds 3x the deadline
  worth of latency, see ``slow_ms``);
* input faults corrupt the camera frame before it reaches the runtime:
  ``freeze`` (the previous frame again), ``nan`` (one NaN pixel), ``scale255``
  (0..255 instead of 0..1), ``dead`` (all zeros), ``noise`` (Gaussian,
  sigma 0.3).

Member faults without a target hit the first member.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeguard.errors import BackendError, UsageError

__all__ = [
    "INPUT_FAULTS",
    "MEMBER_FAULTS",
    "Fault",
    "FaultClock",
    "FaultyMember",
    "corrupt_frame",
    "parse_faults",
]

MEMBER_FAULTS = ("hang", "crash", "nan", "slow")
INPUT_FAULTS = ("freeze", "nan", "scale255", "dead", "noise")
_SPEC = re.compile(
    r"^(?P<kind>[a-z0-9]+)(?::(?P<target>[A-Za-z0-9._:+-]+))?@(?P<a>\d+)(?:-(?P<b>\d+))?$"
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
    """Parse ``kind[:member]@start[-end],...``; member faults default to the first member."""
    if not spec:
        return []
    out = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        m = _SPEC.match(part)
        if m is None:
            raise UsageError(
                f"bad fault {part!r}", hint="use kind[:member]@start[-end], e.g. hang@60-100"
            )
        kind, target = m["kind"], m["target"]
        start = int(m["a"])
        end = int(m["b"]) if m["b"] else start + 1
        if end <= start:
            raise UsageError(f"fault {part!r}: the end frame must come after the start")
        member_kind = kind in MEMBER_FAULTS and (target is not None or kind != "nan")
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


class FaultyMember:
    """Wraps a member and misbehaves during its scheduled fault windows."""

    def __init__(
        self,
        name: str,
        inner: Any,
        faults: Sequence[Fault],
        clock: FaultClock,
        *,
        slow_ms: float = 150.0,
    ) -> None:
        self.name = name
        self._inner = inner
        self._faults = [f for f in faults if f.on_member and f.target == name]
        self._clock = clock
        self._slow_s = slow_ms / 1e3
        self._never = threading.Event()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the member, unless a fault is active for the current frame."""
        frame = self._clock.frame
        for f in self._faults:
            if not f.active(frame):
                continue
            if f.kind == "hang":
                self._never.wait(3600.0)  # far past any deadline; the runtime abandons it
            elif f.kind == "crash":
                raise BackendError(f"injected crash in {self.name} at frame {frame}")
            elif f.kind == "slow":
                time.sleep(self._slow_s)
            elif f.kind == "nan":
                out = self._inner.run(feeds)
                return {
                    k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in out.items()
                }
        result: dict[str, np.ndarray] = self._inner.run(feeds)
        return result


def corrupt_frame(
    frame: np.ndarray,
    previous: np.ndarray | None,
    faults: Sequence[Fault],
    index: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[str]]:
    """Apply the input faults active at ``index``; returns the frame and their names."""
    applied = []
    out = frame
    for f in faults:
        if f.on_member or not f.active(index):
            continue
        applied.append(f.kind)
        if f.kind == "freeze" and previous is not None:
            out = previous.copy()
        elif f.kind == "nan":
            out = out.copy()
            flat = out.reshape(-1)
            flat[rng.integers(flat.size)] = np.nan
        elif f.kind == "scale255":
            out = out * 255.0
        elif f.kind == "dead":
            out = np.zeros_like(out)
        elif f.kind == "noise":
            out = (out + rng.normal(0.0, 0.3, out.shape)).astype(out.dtype)
    return out, applied

"""Health state machine NOMINAL -> DEGRADED -> FAILSAFE with hysteresis.

Layer: :mod:`edgeguard.guard` (pure logic, no I/O; thread-safe).

Every frame is graded with the state it *would* justify on its own (a
:class:`HealthState`). The machine steps down (towards FAILSAFE) at once when
a frame is worse than the current state, and steps up one level only after
``recover_frames`` consecutive frames that are all better than the current
state. Each change is a :class:`Transition` handed to the registered
callbacks (exceptions raised by a callback are caught and counted, never
propagated into the inference path). See ``docs/failsafe.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

__all__ = ["HealthMonitor", "HealthState", "Transition", "TransitionCallback"]


class HealthState(IntEnum):
    """Health levels, ordered from best to worst."""

    NOMINAL = 0
    DEGRADED = 1
    FAILSAFE = 2


@dataclass(frozen=True)
class Transition:
    """One change of health state.

    Attributes:
        frame: Frame sequence number that caused the change.
        old: State before.
        new: State after.
        reason: Why (the frame's reasons, or "recovered after N good frames").
    """

    frame: int
    old: HealthState
    new: HealthState
    reason: str

    def to_dict(self) -> dict[str, object]:
        """Plain-dict form for the event log."""
        return {
            "frame": self.frame,
            "from": self.old.name,
            "to": self.new.name,
            "reason": self.reason,
        }


TransitionCallback = Callable[[Transition], None]


class HealthMonitor:
    """Hysteresis state machine over per-frame grades.

    Args:
        recover_frames: Consecutive better frames needed to step up one level.
        initial: Starting state.
    """

    def __init__(self, *, recover_frames: int, initial: HealthState = HealthState.NOMINAL) -> None:
        if recover_frames < 1:
            raise ValueError("recover_frames must be >= 1")
        self._recover = recover_frames
        self._state = initial
        self._good_run = 0
        self._callbacks: list[TransitionCallback] = []
        self._lock = threading.Lock()
        self.callback_errors = 0

    @property
    def state(self) -> HealthState:
        """Current state."""
        return self._state

    def on_transition(self, callback: TransitionCallback) -> None:
        """Register ``callback(transition)``, called after each state change."""
        with self._lock:
            self._callbacks.append(callback)

    def observe(self, grade: HealthState, *, frame: int, reason: str = "") -> Transition | None:
        """Feed one frame's grade; return the transition it caused, if any."""
        with self._lock:
            old = self._state
            if grade > old:
                self._state = grade
                self._good_run = 0
                tr: Transition | None = Transition(frame, old, grade, reason or "fault")
            elif grade < old:
                self._good_run += 1
                if self._good_run >= self._recover:
                    self._state = HealthState(old - 1)
                    self._good_run = 0
                    tr = Transition(
                        frame, old, self._state, f"recovered after {self._recover} better frame(s)"
                    )
                else:
                    tr = None
            else:
                self._good_run = 0
                tr = None
            callbacks = list(self._callbacks) if tr is not None else []
        if tr is not None:
            for cb in callbacks:
                try:
                    cb(tr)
                except Exception:  # a host callback must never break inference
                    self.callback_errors += 1
        return tr

"""Health state machine: step down at once, step up after N better frames."""

from __future__ import annotations

import pytest

from edgeguard.guard.health import HealthMonitor, HealthState, Transition

N, D, F = HealthState.NOMINAL, HealthState.DEGRADED, HealthState.FAILSAFE


def test_steps_down_at_once_and_up_with_hysteresis() -> None:
    seen: list[Transition] = []
    h = HealthMonitor(recover_frames=3)
    h.on_transition(seen.append)
    assert h.observe(F, frame=0, reason="all members failed") is not None
    assert h.state is F
    for i in range(2):
        assert h.observe(N, frame=1 + i) is None
    assert h.state is F
    tr = h.observe(N, frame=3)
    assert tr is not None and tr.new is D and h.state is D  # one level at a time
    for i in range(3):
        h.observe(N, frame=4 + i)
    assert h.state is N
    assert [(t.old, t.new) for t in seen] == [(N, F), (F, D), (D, N)]
    assert seen[0].to_dict() == {
        "frame": 0,
        "from": "NOMINAL",
        "to": "FAILSAFE",
        "reason": "all members failed",
    }


def test_bad_frame_resets_recovery_count() -> None:
    h = HealthMonitor(recover_frames=3)
    h.observe(D, frame=0)
    h.observe(N, frame=1)
    h.observe(N, frame=2)
    h.observe(D, frame=3)  # equal grade: not better, resets
    h.observe(N, frame=4)
    h.observe(N, frame=5)
    assert h.state is D
    h.observe(N, frame=6)
    assert h.state is N


def test_callback_errors_do_not_propagate() -> None:
    h = HealthMonitor(recover_frames=1)

    def boom(t: Transition) -> None:
        raise RuntimeError("host bug")

    h.on_transition(boom)
    h.observe(F, frame=0)
    assert h.state is F and h.callback_errors == 1


def test_refuses_bad_config() -> None:
    with pytest.raises(ValueError):
        HealthMonitor(recover_frames=0)

"""A camera-style frame loop over a device session: fixed rate, live health, summary.

Layer: fieldtest (above the runtime). ``edgeguard serve`` and ``examples/camera_loop.py`` use it:
frames arrive at a fixed rate (like a camera), each goes through the guarded
runtime by its deadline, the health state is shown live, scheduled faults
(:mod:`edgeguard.fieldtest.faults`) are injected into the inputs and the
members, and the loop ends with a table of where the answers came from,
deadline misses, latency percentiles and accuracy per source when labels are
known. A frame whose input the checks rejected and the policy has no answer for
is recorded as ``rejected`` (a deliberate refusal: a single model's bundle with no
fallback); a frame no step of the chain answers is recorded as ``unanswered``
(with the reason). The loop goes on after both, unless ``max_unanswered`` says to
stop. Every frame whose input the checks rejected, answered or not, counts in the
summary's ``input_rejections`` with the failing checks, and per input fault.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeguard.errors import BackendError, InputRejectedError
from edgeguard.fieldtest.faults import Fault, FaultClock, corrupt_frame
from edgeguard.fieldtest.quality import frame_range

__all__ = [
    "DROPPED",
    "REJECTED",
    "UNANSWERED",
    "FrameRecord",
    "LoopReport",
    "print_report",
    "run_frame_loop",
]

#: The source recorded for a frame no step of the fallback chain answered.
UNANSWERED = "unanswered"
#: The source recorded for a frame whose input was rejected with no answer by policy.
REJECTED = "rejected"
#: The source recorded for a frame the loop skipped because its time had passed (a camera
#: does not queue frames behind a stall).
DROPPED = "dropped"


@dataclass(frozen=True)
class FrameRecord:
    """What happened to one frame."""

    index: int
    source: str
    health: str
    total_ms: float
    faults: tuple[str, ...]
    reasons: tuple[str, ...]
    correct: bool | None
    rejected_by: tuple[str, ...] = ()
    """The checks that rejected the frame's input (empty when it passed)."""

    @property
    def rejected(self) -> bool:
        """Whether the input checks rejected the frame (answered by a later step or not)."""
        return bool(self.rejected_by)

    def to_dict(self) -> dict[str, Any]:
        """One JSON line of ``serve --records``."""
        return {
            "frame": self.index,
            "source": self.source,
            "health": self.health,
            "total_ms": _ms(self.total_ms),
            "faults": list(self.faults),
            "reasons": list(self.reasons),
            "correct": self.correct,
            "rejected_by": list(self.rejected_by),
        }


def _failing_checks(verdict: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The rejecting checks of a verdict's dict form, each once, in order."""
    if verdict is None:
        return ()
    names = [
        str(v.get("check", "?"))
        for v in verdict.get("violations", ())
        if isinstance(v, dict) and v.get("severity") != "WARN"
    ]
    if not names:
        names = ["checker_error" if verdict.get("error") else "rejected"]
    return tuple(dict.fromkeys(names))


@dataclass
class LoopReport:
    """The whole run."""

    frames: list[FrameRecord] = field(default_factory=list)
    transitions: list[str] = field(default_factory=list)
    deadline_ms: float = 0.0
    fps: float = 0.0
    overruns: int = 0
    stopped_early: bool = False

    @property
    def unanswered(self) -> int:
        """Frames no step of the fallback chain answered."""
        return sum(1 for f in self.frames if f.source == UNANSWERED)

    @property
    def rejected(self) -> int:
        """Frames whose input the checks rejected (answered by a later step or not)."""
        return sum(1 for f in self.frames if f.rejected)

    @property
    def dropped(self) -> int:
        """Frames skipped because the loop fell behind (never sent to the runtime)."""
        return sum(1 for f in self.frames if f.source == DROPPED)

    def _served(self) -> list[FrameRecord]:
        return [f for f in self.frames if f.source != DROPPED]

    def input_rejections(self) -> dict[str, Any]:
        """Rejected inputs: in all, by failing check, and per input fault ("clean": frames
        without one); frames the loop dropped are not counted."""
        by_check: Counter[str] = Counter()
        per: dict[str, list[int]] = {"clean": [0, 0]}
        for f in self._served():
            by_check.update(f.rejected_by)
            kinds = [k for k in f.faults if ":" not in k] or ["clean"]
            for k in dict.fromkeys(kinds):
                seen = per.setdefault(k, [0, 0])
                seen[0] += f.rejected
                seen[1] += 1
        return {
            "total": self.rejected,
            "by_check": dict(by_check),
            "by_fault": {k: {"rejected": r, "frames": n} for k, (r, n) in per.items() if n},
        }

    def member_faults(self) -> dict[str, dict[str, Any]]:
        """Per injected member fault (``kind:member``): its frames and where their answers
        came from."""
        out: dict[str, dict[str, Any]] = {}
        for f in self._served():
            for k in dict.fromkeys(x for x in f.faults if ":" in x):
                entry = out.setdefault(k, {"frames": 0, "sources": Counter()})
                entry["frames"] += 1
                entry["sources"][f.source] += 1
        return {k: {"frames": v["frames"], "sources": dict(v["sources"])} for k, v in out.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible summary."""
        served = self._served()
        totals = np.array([f.total_ms for f in served]) if served else np.zeros(1)
        by_source = Counter(f.source for f in self.frames)
        acc: dict[str, float] = {}
        for src in by_source:
            marks = [f.correct for f in self.frames if f.source == src and f.correct is not None]
            if marks:
                acc[src] = float(np.mean(marks))
        return {
            "frames": len(self.frames),
            "fps": self.fps,
            "deadline_ms": self.deadline_ms,
            "sources": dict(by_source),
            "accuracy_by_source": acc,
            "deadline_misses": int(np.sum(totals > self.deadline_ms)),
            "latency_ms": {
                "p50": _ms(float(np.percentile(totals, 50))),
                "p99": _ms(float(np.percentile(totals, 99))),
                "max": _ms(float(np.max(totals))),
            },
            "loop_overruns": self.overruns,
            "dropped": self.dropped,
            "unanswered": self.unanswered,
            "input_rejections": self.input_rejections(),
            "member_faults": self.member_faults(),
            "stopped_early": self.stopped_early,
            "transitions": self.transitions,
        }


def _ms(v: float) -> float:
    """A latency for people and JSON: 4 significant digits."""
    return float(f"{v:.4g}")


def _profile_layout(session: Any, input_name: str) -> str | None:
    """The layout the bundle's sanity profile calibrated ``input_name`` with, if any."""
    profile = getattr(getattr(session, "slots", None), "sanity", None)
    for p in getattr(profile, "inputs", ()):
        if p.name == input_name:
            return str(p.layout)
    return None


def _status_line(rec: FrameRecord, n: int) -> str:
    colour = {"NOMINAL": "green", "DEGRADED": "yellow", "FAILSAFE": "red"}.get(rec.health, "white")
    fault = f" [magenta]fault: {', '.join(rec.faults)}[/]" if rec.faults else ""
    ok = "" if rec.correct is None else (" correct" if rec.correct else " [red]wrong[/]")
    return (
        f"frame {rec.index + 1:>4}/{n}  [{colour}]{rec.health:<8}[/]  "
        f"source {rec.source:<15} {rec.total_ms:6.2f} ms{ok}{fault}"
    )


def run_frame_loop(
    session: Any,
    frames: np.ndarray,
    *,
    input_name: str,
    fps: float,
    labels: np.ndarray | None = None,
    faults: Sequence[Fault] = (),
    clock: FaultClock | None = None,
    console: Any = None,
    live: bool = True,
    seed: int = 0,
    max_unanswered: int | None = None,
    layout: str | None = None,
    on_frame: Callable[[FrameRecord], None] | None = None,
    drop: bool = True,
) -> LoopReport:
    """Serve ``frames`` (first axis) at ``fps`` through ``session.infer``.

    Args:
        session: A :class:`~edgeguard.runtime.session.DeviceSession`.
        frames: The frame sequence, ``[N, ...]`` (each frame is sent as a batch of one).
        input_name: The model input the frames feed.
        fps: Frame rate; the loop sleeps until each frame's slot.
        labels: Optional true labels, to report accuracy per answer source.
        faults: Scheduled faults; member faults act through ``clock``.
        clock: The clock shared with :class:`~edgeguard.fieldtest.faults.FaultyExecutor`.
        console: A rich Console for the live view (None: quiet).
        live: Show the live status line.
        seed: Seed of the input-fault randomness.
        max_unanswered: Stop after more than this many unanswered frames (None: never;
            rejected frames do not count).
        layout: The frames' layout, for the input faults (default: the layout the
            bundle's sanity profile calibrated the input with, else guessed).
        on_frame: Called with each frame's record as it is made.
        drop: Skip a frame whose slot has passed by more than one period, as a camera
            does after a stall (recorded as ``dropped``); False sends every frame, late
            if need be (a field test that must see each frame answered).
    """
    from edgeguard.guard.health import Transition

    report = LoopReport(deadline_ms=session.policy.deadline_ms, fps=fps)

    def on_transition(t: Transition) -> None:
        report.transitions.append(f"frame {t.frame}: {t.old.name} -> {t.new.name} ({t.reason})")

    session.on_transition(on_transition)
    rng = np.random.default_rng(seed)
    period = 1.0 / fps
    basis = None
    if any(not f.on_member for f in faults):
        basis = frame_range(frames, layout=layout or _profile_layout(session, input_name))
    previous: np.ndarray | None = None
    view = None
    if console is not None and live:
        from rich.live import Live

        view = Live("", console=console, refresh_per_second=12, transient=False)
        view.start()
    try:
        start = time.perf_counter()
        for i in range(len(frames)):
            slot = start + i * period
            delay = slot - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:
                report.overruns += 1
                if drop:
                    rec = FrameRecord(
                        index=i,
                        source=DROPPED,
                        health=session.health.name,
                        total_ms=0.0,
                        faults=(),
                        reasons=(f"{-delay * 1e3:.0f} ms late: the loop fell behind",),
                        correct=None,
                    )
                    report.frames.append(rec)
                    if on_frame is not None:
                        on_frame(rec)
                    continue
            if clock is not None:
                clock.frame = i
            frame, applied = corrupt_frame(frames[i : i + 1], previous, faults, i, rng, basis=basis)
            member_faults = [f"{f.kind}:{f.target}" for f in faults if f.on_member and f.active(i)]
            t0 = time.perf_counter()
            try:
                res = session.infer({input_name: np.ascontiguousarray(frame)})
            except (InputRejectedError, BackendError) as exc:
                previous = frame
                refused = isinstance(exc, InputRejectedError)
                rec = FrameRecord(
                    index=i,
                    source=REJECTED if refused else UNANSWERED,
                    health=session.health.name,
                    total_ms=(time.perf_counter() - t0) * 1e3,
                    faults=tuple(applied + member_faults),
                    reasons=(f"{type(exc).__name__}: {exc}",),
                    correct=None,
                    rejected_by=_failing_checks(getattr(exc, "verdict", None)) or ("rejected",)
                    if refused
                    else (),
                )
                report.frames.append(rec)
                if on_frame is not None:
                    on_frame(rec)
                if view is not None:
                    view.update(_status_line(rec, len(frames)))
                if max_unanswered is not None and report.unanswered > max_unanswered:
                    report.stopped_early = True
                    break
                continue
            previous = frame
            correct = None
            if labels is not None and "label" in res.outputs:
                correct = bool(np.asarray(res.outputs["label"]).reshape(-1)[0] == labels[i])
            rec = FrameRecord(
                index=i,
                source=res.source.value,
                health=res.health.name,
                total_ms=float(res.latency_ms.get("total", 0.0)),
                faults=tuple(applied + member_faults),
                reasons=tuple(res.reasons),
                correct=correct,
                rejected_by=_failing_checks(res.rejection),
            )
            report.frames.append(rec)
            if on_frame is not None:
                on_frame(rec)
            if view is not None:
                view.update(_status_line(rec, len(frames)))
    finally:
        if view is not None:
            view.stop()
    return report


def print_report(console: Any, report: LoopReport) -> None:
    """A summary table of the run."""
    from rich.table import Table

    d = report.to_dict()
    t = Table(title=f"{d['frames']} frames at {d['fps']:g} fps, deadline {d['deadline_ms']:g} ms")
    t.add_column("answer source")
    t.add_column("frames", justify="right")
    t.add_column("accuracy", justify="right")
    for src, n in sorted(d["sources"].items(), key=lambda kv: -kv[1]):
        acc = d["accuracy_by_source"].get(src)
        t.add_row(src, str(n), "-" if acc is None else f"{acc:.1%}")
    console.print(t)
    lat = d["latency_ms"]
    console.print(
        f"latency p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms; "
        f"deadline misses {d['deadline_misses']}; loop overruns {d['loop_overruns']}"
    )
    if d["dropped"]:
        console.print(
            f"[yellow]the loop fell behind {d['fps']:g} fps (p50 {lat['p50']:.4g} ms a frame, "
            f"{1e3 / d['fps']:.4g} ms between frames): {d['dropped']} frame(s) dropped[/] "
            "(--no-drop sends every frame, late)"
        )
    elif lat["p50"] > 1e3 / d["fps"]:
        console.print(
            f"[yellow]frames take longer (p50 {lat['p50']:.4g} ms) than the "
            f"{1e3 / d['fps']:.4g} ms between them at {d['fps']:g} fps: they were served late[/]"
        )
    rej = d["input_rejections"]
    if rej["total"] or any(k != "clean" for k in rej["by_fault"]):
        checks = ", ".join(f"{k} {v}" for k, v in sorted(rej["by_check"].items()))
        console.print(f"inputs rejected: {rej['total']}" + (f" ({checks})" if checks else ""))
        order = sorted(rej["by_fault"], key=lambda k: (k != "clean", k))
        for kind in order:
            c = rej["by_fault"][kind]
            what = "clean frames" if kind == "clean" else f"input fault {kind}"
            console.print(f"  {what}: {c['rejected']}/{c['frames']} rejected")
    for kind, c in sorted(d["member_faults"].items()):
        srcs = ", ".join(f"{k} {v}" for k, v in sorted(c["sources"].items()))
        console.print(f"  member fault {kind}: {c['frames']} frame(s) answered by: {srcs}")
    for line in d["transitions"]:
        console.print(f"  health: {line}")

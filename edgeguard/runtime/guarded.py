"""The guarded runtime: sanity -> concurrent members -> output checks -> voter, under a deadline.

Layer: :mod:`edgeguard.runtime` (composes :mod:`edgeguard.guard`; knows no
bundle files and no inference library: members are anything with ``run``).

Per frame, :meth:`GuardedRuntime.infer`:

1. admission: per-client rate limit and the PRADA-style query monitor;
2. input sanity (optional checker): a REJECT skips every model step;
3. members run concurrently, each on its own worker thread, until the
   members' budget; a member that is late, raises, or returns missing,
   non-finite or wrongly shaped outputs (or fails ``check_outputs``) abstains;
4. the fallback chain of the policy is walked in order: ``ensemble`` (every
   member answered and the vote met the policy), ``quorum`` (enough members
   answered), ``fallback_model`` (a different, smaller model, until the
   frame deadline), ``last_known_good`` (not older than the policy allows),
   ``safe_default``;
5. output hardening, metrics, health grading and event-log records.

A late call is abandoned, never waited for: its worker thread is written off
and the member is quarantined; when the backoff has elapsed it is retried on
a fresh worker. A Python thread cannot be killed, so a member hung in native
code keeps one thread busy until process isolation (the
:class:`MemberExecutor` seam) replaces threads; see ``docs/failsafe.md``.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgeguard.errors import BackendError, InputRejectedError, PolicyError, UsageError
from edgeguard.guard.abuse import QueryMonitor, RateLimitedError, RateLimiter, harden_outputs
from edgeguard.guard.eventlog import EventLog
from edgeguard.guard.health import HealthMonitor, HealthState, Transition, TransitionCallback
from edgeguard.guard.metrics import Metrics
from edgeguard.guard.sanity.check import SanityGuard
from edgeguard.guard.voting import Vote, required_outputs, vote
from edgeguard.policy.runtime import ChainStep, RuntimePolicy, VoterKind
from edgeguard.runtime.placement import member_cpus, pin_current_thread

__all__ = [
    "FALLBACK_NAME",
    "GuardedResult",
    "GuardedRuntime",
    "MemberCall",
    "MemberExecutor",
    "ResultSource",
    "Runnable",
    "SanityChecker",
    "SanityVerdict",
    "ThreadMemberExecutor",
]

FALLBACK_NAME = "__fallback__"
Outputs = dict[str, np.ndarray]


# --------------------------------------------------------------------------- interfaces


@runtime_checkable
class Runnable(Protocol):
    """Anything that runs a model: ``run(feeds) -> outputs`` (the Backend interface)."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once."""
        ...


class SanityVerdict(Protocol):
    """A sanity verdict: ``status`` is an Enum or str named PASS, WARN or REJECT."""

    @property
    def status(self) -> object:
        """PASS / WARN / REJECT."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible detail for the event log."""
        ...


class SanityChecker(Protocol):
    """Input and output sanity checks (implemented in :mod:`edgeguard.guard.sanity`)."""

    def check_inputs(
        self, feeds: Mapping[str, np.ndarray], prev: Mapping[str, np.ndarray] | None = None
    ) -> SanityVerdict:
        """Check one request's inputs (``prev``: the previous accepted request)."""
        ...

    def check_outputs(self, outputs: Mapping[str, np.ndarray]) -> SanityVerdict:
        """Check one member's outputs."""
        ...


class MemberCall(Protocol):
    """A submitted member call."""

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s``; True when the call finished."""
        ...

    def result(self) -> dict[str, np.ndarray]:
        """The outputs, or raise what the member raised (only after ``wait`` returned True)."""
        ...

    @property
    def run_ns(self) -> int | None:
        """Time the member itself took, once finished."""
        ...


class MemberExecutor(Protocol):
    """Where member calls run. Threads now; a process pool or sandbox can replace it."""

    def submit(self, name: str, feeds: Mapping[str, np.ndarray]) -> MemberCall:
        """Start a call of member ``name``.

        Raises:
            BackendError: The member cannot take calls any more (too many hung workers).
        """
        ...

    def abandon(self, name: str) -> None:
        """Give up the member's current (late) call; the next submit gets a fresh worker."""
        ...

    def close(self) -> None:
        """Stop idle workers; hung ones are left behind (they cannot be killed)."""
        ...


# --------------------------------------------------------------------------- thread executor


class _Job:
    """One call; completion is signalled through a pre-acquired lock (cheaper than an Event)."""

    __slots__ = ("_done", "_exc", "_finished", "_out", "end_ns", "feeds", "start_ns")

    def __init__(self, feeds: Mapping[str, np.ndarray]) -> None:
        self.feeds = feeds
        self._done = threading.Lock()
        self._done.acquire()
        self._finished = False
        self._out: dict[str, np.ndarray] | None = None
        self._exc: BaseException | None = None
        self.start_ns = 0
        self.end_ns = 0

    def _finish(self) -> None:
        self._finished = True
        self._done.release()

    def wait(self, timeout_s: float) -> bool:
        if self._finished:
            return True
        if self._done.acquire(timeout=max(0.0, timeout_s)):
            self._done.release()
            return True
        return self._finished

    def result(self) -> dict[str, np.ndarray]:
        if not self._finished:
            raise UsageError("member call has not finished")
        if self._exc is not None:
            raise self._exc
        assert self._out is not None
        return self._out

    @property
    def run_ns(self) -> int | None:
        return self.end_ns - self.start_ns if self._finished else None


class _Worker:
    def __init__(
        self, name: str, target: Runnable, generation: int, cpus: frozenset[int] | None
    ) -> None:
        self.q: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.target = target
        self.cpus = cpus
        self.thread = threading.Thread(
            target=self._loop, name=f"edgeguard-member-{name}-{generation}", daemon=True
        )
        self.thread.start()

    def _loop(self) -> None:
        pin_error: BaseException | None = None
        if self.cpus is not None:
            try:
                pin_current_thread(self.cpus)
            except PolicyError as exc:  # every call then fails: the member abstains
                pin_error = exc
        while True:
            job = self.q.get()
            if job is None:
                return
            job.start_ns = time.perf_counter_ns()
            try:
                if pin_error is not None:
                    raise pin_error
                out = self.target.run(job.feeds)
                job._out = out if isinstance(out, dict) else dict(out)
            except BaseException as exc:  # the member's failure is reported, not raised here
                job._exc = exc
            job.end_ns = time.perf_counter_ns()
            job._finish()


class ThreadMemberExecutor:
    """One single-worker thread per member; a hung worker is abandoned and replaced.

    Args:
        runnables: Members (and the fallback model) by name.
        max_abandoned: Hung workers tolerated per member before ``submit`` refuses.
        cpus: Cores to pin each named member's worker thread to (the thread that
            calls ``run``; its backend pins its own pool threads), from the
            members' ``cpu:LIST`` placements.
    """

    def __init__(
        self,
        runnables: Mapping[str, Runnable],
        *,
        max_abandoned: int = 4,
        cpus: Mapping[str, frozenset[int]] | None = None,
    ) -> None:
        self._targets = dict(runnables)
        self._cpus = dict(cpus or {})
        unknown = sorted(set(self._cpus) - set(self._targets))
        if unknown:
            raise UsageError(f"cpus given for unknown members {unknown}")
        self._max_abandoned = max_abandoned
        self._workers: dict[str, _Worker | None] = dict.fromkeys(self._targets)
        self._abandoned: dict[str, int] = dict.fromkeys(self._targets, 0)
        self._lock = threading.Lock()
        self._closed = False

    def abandoned(self, name: str) -> int:
        """Worker threads written off for ``name`` so far."""
        return self._abandoned[name]

    def submit(self, name: str, feeds: Mapping[str, np.ndarray]) -> _Job:
        """Queue a call on the member's worker (starting a fresh worker if needed)."""
        with self._lock:
            if self._closed:
                raise UsageError("executor is closed")
            if name not in self._targets:
                raise UsageError(f"unknown member {name!r}")
            w = self._workers[name]
            if w is None:
                if self._abandoned[name] > self._max_abandoned:
                    raise BackendError(f"member {name!r} retired: too many hung calls")
                w = _Worker(name, self._targets[name], self._abandoned[name], self._cpus.get(name))
                self._workers[name] = w
            job = _Job(feeds)
            w.q.put(job)
            return job

    def abandon(self, name: str) -> None:
        """Write off the member's worker (it exits if its call ever returns)."""
        with self._lock:
            w = self._workers.get(name)
            if w is not None:
                w.q.put(None)
                self._workers[name] = None
                self._abandoned[name] += 1

    def close(self) -> None:
        """Ask all workers to exit after their current call."""
        with self._lock:
            self._closed = True
            for name, w in self._workers.items():
                if w is not None:
                    w.q.put(None)
                    self._workers[name] = None


# --------------------------------------------------------------------------- results


class ResultSource(str, Enum):
    """Where a frame's answer came from."""

    ENSEMBLE = "ensemble"
    SINGLE_MEMBER = "single_member"
    FALLBACK_MODEL = "fallback_model"
    LAST_KNOWN_GOOD = "last_known_good"
    SAFE_DEFAULT = "safe_default"


@dataclass(frozen=True)
class GuardedResult:
    """One frame's answer.

    Attributes:
        seq: Frame sequence number (from 0).
        outputs: The answer (hardened when the policy says so).
        source: Which step of the chain produced it.
        health: Health state after this frame.
        reasons: Why the answer is not a plain ensemble answer (abstentions,
            disagreement, rejection, fallbacks), in order.
        latency_ms: Stage and member latencies in milliseconds (``total``,
            ``admission``, ``input_checks``, ``members``, ``member:<name>``,
            ``vote``, ``fallback_model``, ``output``).
        members: Members whose answers formed the result.
    """

    seq: int
    outputs: dict[str, np.ndarray]
    source: ResultSource
    health: HealthState
    reasons: tuple[str, ...] = ()
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    members: tuple[str, ...] = ()


@dataclass
class _MemberState:
    failures: int = 0
    quarantined: bool = False
    retry_at_ns: int = 0
    backoff_ms: float = 0.0
    retired: bool = False


@dataclass
class _Round:
    valid: dict[str, Outputs]
    asked: tuple[str, ...]
    single: bool


def _status_name(verdict: object) -> str:
    s = getattr(verdict, "status", verdict)
    name = s.name if isinstance(s, Enum) else str(s)
    return name.upper()


def _verdict_dict(verdict: object) -> dict[str, Any]:
    try:
        d = verdict.to_dict()  # type: ignore[attr-defined]
        return d if isinstance(d, dict) else {"status": _status_name(verdict)}
    except Exception:
        return {"status": _status_name(verdict)}


def _shape_ok(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    return len(shape) == len(expected) and all(
        e == -1 or e == s for s, e in zip(shape, expected, strict=True)
    )


# --------------------------------------------------------------------------- runtime


class GuardedRuntime:
    """Guarded inference over redundant members with a deadline and a fallback chain.

    Args:
        members: Member runnables by name; names must equal the policy's members.
        policy: The runtime policy.
        fallback: The fallback model (needed when the chain has ``fallback_model``
            and meant to be used; without it that step is skipped).
        sanity: Input/output sanity checker, or None.
        event_log: Event log receiving refusals, fallbacks, state changes,
            quarantines and alerts, or None.
        metrics: Metric registry to update, or None (a private one is created).
        clock: Monotonic clock in nanoseconds (deadlines, ages, backoff).
        monitor: PRADA-style query monitor applied to requests with a client id.
        rng: Random source for model switching (default: ``random.SystemRandom``).
        executor: Where member calls run (default: :class:`ThreadMemberExecutor`).
        async_log: Write event-log records on a background thread so an fsync never
            delays an answer (default). With False, :meth:`infer` returns only after
            its records are durable.

    Raises:
        UsageError: Members do not match the policy.
        PolicyError: A member's ``cpu:LIST`` placement names cores this process may
            not use (the default executor pins each member's worker thread to them).
    """

    def __init__(
        self,
        members: Mapping[str, Runnable],
        *,
        policy: RuntimePolicy,
        fallback: Runnable | None = None,
        sanity: SanityChecker | None = None,
        event_log: EventLog | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        monitor: QueryMonitor | None = None,
        rng: random.Random | None = None,
        executor: MemberExecutor | None = None,
        async_log: bool = True,
    ) -> None:
        if set(members) != set(policy.member_names):
            raise UsageError(
                f"members {sorted(members)} do not match the policy's {list(policy.member_names)}"
            )
        bad = [n for n, m in members.items() if not isinstance(m, Runnable)]
        if bad or (fallback is not None and not isinstance(fallback, Runnable)):
            raise UsageError(f"not runnable (no run(feeds) method): {bad or ['fallback']}")
        if FALLBACK_NAME in members:
            raise UsageError(f"member name {FALLBACK_NAME!r} is reserved")
        self._policy = policy
        self._names = policy.member_names
        self._fallback = fallback
        self._sanity = sanity
        # edgeguard's own checker counts NaN/inf in outputs; any other gets the runtime's scan
        self._sanity_scans_outputs = isinstance(sanity, SanityGuard)
        if isinstance(sanity, SanityGuard):
            sanity.warm_up()  # compile now, not inside the first frame's deadline
        self._log = event_log
        self.metrics = metrics if metrics is not None else Metrics()
        self._clock = clock
        self._monitor = monitor
        self._rng = rng if rng is not None else random.SystemRandom()
        runnables: dict[str, Runnable] = dict(members)
        if fallback is not None:
            runnables[FALLBACK_NAME] = fallback
        pinned = member_cpus(policy)  # refuses cores this process may not use
        self._executor: MemberExecutor = executor or ThreadMemberExecutor(
            runnables, max_abandoned=policy.quarantine.max_abandoned_workers, cpus=pinned
        )
        self._limiter = (
            RateLimiter(policy.rate_limit, clock=lambda: self._clock() / 1e9)
            if policy.rate_limit is not None
            else None
        )
        self._health = HealthMonitor(recover_frames=policy.health.recover_frames)
        self._health.on_transition(self._on_health)
        self._states = {n: _MemberState() for n in (*self._names, FALLBACK_NAME)}
        self._required = tuple(required_outputs(policy.voter))
        self._lkg: tuple[int, Outputs] | None = None
        self._prev_feeds: Mapping[str, np.ndarray] | None = None
        self._seq = 0
        self._lock = threading.Lock()
        self._closed = False
        self._log_q: queue.SimpleQueue[tuple[str, dict[str, Any]] | None] | None = None
        self._log_thread: threading.Thread | None = None
        self._pending_logs = 0
        self._log_cv = threading.Condition()
        self.log_errors = 0
        if event_log is not None and async_log:
            self._log_q = queue.SimpleQueue()
            self._log_thread = threading.Thread(
                target=self._log_loop, name="edgeguard-eventlog", daemon=True
            )
            self._log_thread.start()
        self.metrics.state.set(0)
        for spec in policy.members:
            self.metrics.member_info.set(1, member=spec.name, placement=str(spec.where))

    # -- public -------------------------------------------------------------------------------

    @property
    def policy(self) -> RuntimePolicy:
        """The policy in force."""
        return self._policy

    @property
    def health(self) -> HealthState:
        """Current health state."""
        return self._health.state

    def on_transition(self, callback: TransitionCallback) -> None:
        """Call ``callback(transition)`` after every health state change."""
        self._health.on_transition(callback)

    def quarantined(self) -> tuple[str, ...]:
        """Members currently quarantined or retired."""
        return tuple(n for n in self._names if self._states[n].quarantined)

    def infer(
        self, feeds: Mapping[str, np.ndarray], *, client_id: str | None = None
    ) -> GuardedResult:
        """Answer one request by the deadline.

        Args:
            feeds: Input arrays by name. An accepted frame is kept, by reference, as
                the previous frame of the next call's ``tdiff`` (frozen camera)
                check, so pass a new array per frame: refilling one buffer in place
                makes the previous frame the current one, and ``tdiff`` zero.
            client_id: Caller identity for rate limiting and the query monitor
                (None for the local, trusted pipeline).

        Returns:
            The answer with its source, health state, reasons and latencies.

        Raises:
            RateLimitedError: The client exceeded its rate (nothing was run).
            InputRejectedError: Sanity rejected the input and the policy says ``raise``.
            BackendError: Every step of the chain failed (only possible when the
                chain ends with ``last_known_good`` and none is fresh enough).
            UsageError: The runtime is closed.
        """
        if self._closed:
            raise UsageError("guarded runtime is closed")
        pol = self._policy
        t0 = self._clock()
        r0 = time.perf_counter_ns()
        with self._lock:
            seq = self._seq
            self._seq += 1
        deadline_ns = int(pol.deadline_ms * 1e6)
        member_ns = int(pol.effective_member_budget_ms * 1e6)
        lat: dict[str, float] = {}
        reasons: list[str] = []

        def remaining(budget_ns: int) -> float:
            # the injected clock may only shorten a wait, never extend it past the real budget
            a = (t0 + budget_ns - self._clock()) / 1e9
            b = (r0 + budget_ns - time.perf_counter_ns()) / 1e9
            return max(0.0, min(a, b))

        def overran() -> bool:
            return self._clock() - t0 > deadline_ns or time.perf_counter_ns() - r0 > deadline_ns

        # 1. admission
        s = time.perf_counter_ns()
        if client_id is not None:
            self._admit(seq, client_id, feeds)
        lat["admission"] = (time.perf_counter_ns() - s) / 1e6

        # 2. input sanity (in speculative mode the members already run meanwhile)
        pending: tuple[dict[str, MemberCall], bool] | None = None
        if pol.speculative and self._sanity is not None:
            pending = self._submit_members(seq, feeds, reasons)
        s = time.perf_counter_ns()
        rejected = False
        if self._sanity is not None:
            verdict: object = None
            detail: dict[str, Any] | None = None
            try:
                verdict = self._sanity.check_inputs(feeds, prev=self._prev_feeds)
                status = _status_name(verdict)
            except Exception as exc:  # a broken checker must not let inputs through
                status, detail = "REJECT", {"error": f"{type(exc).__name__}: {exc}"}
            if status == "REJECT":
                if detail is None:  # built only for the log record, not on every frame
                    detail = _verdict_dict(verdict)
                rejected = True
                reasons.append("input rejected by sanity checks")
                self.metrics.rejects.inc(reason="input_sanity")
                self._event("input_rejected", {"frame": seq, "verdict": detail})
                if pending is not None:  # discard the speculative answers, keep bookkeeping
                    self._collect_members(seq, pending, lambda: remaining(member_ns), lat, [])
                    pending = None
                if pol.reject_action == "raise":
                    self._grade(HealthState.DEGRADED, seq, "input rejected")
                    raise InputRejectedError(f"frame {seq}: input rejected by sanity checks")
            else:
                if status == "WARN":
                    reasons.append("input sanity warning")
                self._prev_feeds = feeds
        lat["input_checks"] = (time.perf_counter_ns() - s) / 1e6

        # 3./4. chain
        rnd: _Round | None = None
        answer: Outputs | None = None
        source: ResultSource | None = None
        backers: tuple[str, ...] = ()
        grade = HealthState.FAILSAFE
        for step in pol.fallback_chain:
            if step in (ChainStep.ENSEMBLE, ChainStep.QUORUM):
                if rejected:
                    continue
                if rnd is None:
                    s = time.perf_counter_ns()
                    if pending is None:
                        pending = self._submit_members(seq, feeds, reasons)
                    rnd = self._collect_members(
                        seq, pending, lambda: remaining(member_ns), lat, reasons
                    )
                    lat["members"] = (time.perf_counter_ns() - s) / 1e6
                    if rnd.valid and overran():
                        # e.g. the clock jumped forward (suspend/resume): the answers are stale
                        reasons.append("member answers arrived after the frame deadline")
                        rnd.valid.clear()
                need = (
                    len(rnd.asked)
                    if rnd.single
                    else (len(self._names) if step is ChainStep.ENSEMBLE else pol.quorum)
                )
                if len(rnd.valid) < need or not rnd.valid:
                    continue
                s = time.perf_counter_ns()
                v: Vote = vote(rnd.valid, pol.voter, quorum=min(need, len(rnd.valid)))
                lat["vote"] = lat.get("vote", 0.0) + (time.perf_counter_ns() - s) / 1e6
                if not v.ok:
                    msg = f"{step.value}: {v.reason}"
                    if msg not in reasons:
                        reasons.append(msg)
                        self._event(
                            "disagreement",
                            {
                                "frame": seq,
                                "step": step.value,
                                "reason": v.reason,
                                "members": sorted(rnd.valid),
                            },
                        )
                    continue
                answer, backers = v.outputs, tuple(sorted(rnd.valid))
                if v.dissenters:
                    reasons.append(f"outvoted: {', '.join(v.dissenters)}")
                if rnd.single:
                    source = ResultSource.SINGLE_MEMBER
                else:
                    source = (
                        ResultSource.ENSEMBLE if len(rnd.valid) > 1 else ResultSource.SINGLE_MEMBER
                    )
                full = len(rnd.valid) == len(rnd.asked) and (
                    rnd.single or len(rnd.asked) == len(self._names)
                )
                grade = (
                    HealthState.NOMINAL
                    if full and not self.quarantined()
                    else (HealthState.DEGRADED)
                )
                break
            if step is ChainStep.FALLBACK_MODEL:
                if rejected or self._fallback is None:
                    continue
                s = time.perf_counter_ns()
                out = self._run_fallback(seq, feeds, lambda: remaining(deadline_ns), reasons)
                lat["fallback_model"] = (time.perf_counter_ns() - s) / 1e6
                if out is not None and overran():
                    reasons.append("fallback answer arrived after the frame deadline")
                    out = None
                if out is not None:
                    answer, source, backers = out, ResultSource.FALLBACK_MODEL, (FALLBACK_NAME,)
                    break
            elif step is ChainStep.LAST_KNOWN_GOOD:
                if self._lkg is not None:
                    age_ms = (self._clock() - self._lkg[0]) / 1e6
                    if 0 <= age_ms <= pol.last_known_good_max_age_ms:
                        answer = {k: v.copy() for k, v in self._lkg[1].items()}
                        source = ResultSource.LAST_KNOWN_GOOD
                        break
                    reasons.append(f"last-known-good too old ({age_ms:.1f} ms)")
                else:
                    reasons.append("no last-known-good output")
            elif step is ChainStep.SAFE_DEFAULT:
                assert pol.safe_default is not None
                answer = {k: np.array(v) for k, v in pol.safe_default.items()}
                source = ResultSource.SAFE_DEFAULT
                break

        if answer is None or source is None:
            self.metrics.fallbacks.inc(source="none")
            self._event("chain_exhausted", {"frame": seq, "reasons": reasons})
            self._grade(HealthState.FAILSAFE, seq, "; ".join(reasons) or "chain exhausted")
            raise BackendError(f"frame {seq}: no step of the fallback chain produced an answer")

        # 5. output
        s = time.perf_counter_ns()
        if source in (
            ResultSource.ENSEMBLE,
            ResultSource.SINGLE_MEMBER,
            ResultSource.FALLBACK_MODEL,
        ):
            self._lkg = (self._clock(), {k: np.array(v, copy=True) for k, v in answer.items()})
        if source is not ResultSource.ENSEMBLE and not (
            source is ResultSource.SINGLE_MEMBER and grade is HealthState.NOMINAL
        ):
            self.metrics.fallbacks.inc(source=source.value)
            self._event("fallback", {"frame": seq, "source": source.value, "reasons": reasons})
        if pol.hardening is not None and pol.hardening.output in answer:
            answer = harden_outputs(answer, pol.hardening)
        state = self._grade(grade, seq, "; ".join(reasons) or source.value)
        lat["output"] = (time.perf_counter_ns() - s) / 1e6
        total = (time.perf_counter_ns() - r0) / 1e6
        lat["total"] = total
        self.metrics.frames.inc(source=source.value)
        self.metrics.frame_latency.observe(total / 1e3)
        return GuardedResult(
            seq=seq,
            outputs=answer,
            source=source,
            health=state,
            reasons=tuple(reasons),
            latency_ms=lat,
            members=backers,
        )

    def flush_events(self, timeout_s: float = 5.0) -> bool:
        """Wait until queued event records are written; False on timeout."""
        end = time.monotonic() + timeout_s
        with self._log_cv:
            while self._pending_logs:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._log_cv.wait(left)
        return True

    def close(self) -> None:
        """Stop the workers and flush the event log queue (the log itself stays open)."""
        if self._closed:
            return
        self._closed = True
        self._executor.close()
        if self._log_q is not None and self._log_thread is not None:
            self._log_q.put(None)
            self._log_thread.join(timeout=10.0)

    def __enter__(self) -> GuardedRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- stages -------------------------------------------------------------------------------

    def _admit(self, seq: int, client_id: str, feeds: Mapping[str, np.ndarray]) -> None:
        if self._limiter is not None and not self._limiter.allow(client_id):
            self.metrics.rejects.inc(reason="rate_limited")
            self._event("rate_limited", {"frame": seq, "client": client_id})
            raise RateLimitedError(
                f"client {client_id!r} exceeded its request rate", hint="retry later"
            )
        if self._monitor is not None:
            parts = [np.asarray(feeds[k], dtype=np.float64).reshape(-1) for k in sorted(feeds)]
            mv = self._monitor.observe(client_id, np.concatenate(parts) if parts else np.zeros(0))
            if mv.new_alert:
                self.metrics.alerts.inc()
                self._event(
                    "abuse_alert",
                    {
                        "frame": seq,
                        "client": client_id,
                        "queries": mv.queries,
                        "shapiro_w": mv.statistic,
                    },
                )

    def _submit_members(
        self, seq: int, feeds: Mapping[str, np.ndarray], reasons: list[str]
    ) -> tuple[dict[str, MemberCall], bool]:
        now = self._clock()
        eligible: list[str] = []
        for n in self._names:
            st = self._states[n]
            if st.retired or (st.quarantined and now < st.retry_at_ns):
                reasons.append(f"{n}: quarantined")
                continue
            eligible.append(n)
        single = False
        if self._policy.model_switching and eligible:
            healthy = [n for n in eligible if not self._states[n].quarantined] or eligible
            eligible = [self._rng.choice(sorted(healthy))]
            single = True
        calls: dict[str, MemberCall] = {}
        for n in eligible:
            try:
                calls[n] = self._executor.submit(n, feeds)
            except BackendError as exc:
                self._retire(seq, n, str(exc))
                reasons.append(f"{n}: retired")
        return calls, single

    def _collect_members(
        self,
        seq: int,
        pending: tuple[dict[str, MemberCall], bool],
        remaining: Callable[[], float],
        lat: dict[str, float],
        reasons: list[str],
    ) -> _Round:
        calls, single = pending
        valid: dict[str, Outputs] = {}
        for n, call in calls.items():
            if not call.wait(remaining()):
                self._executor.abandon(n)
                lat[f"member:{n}"] = float("nan")
                self.metrics.deadline_misses.inc(member=n)
                self._member_failed(seq, n, "timeout", "missed the deadline", reasons)
                continue
            run_ns = call.run_ns
            if run_ns is not None:
                lat[f"member:{n}"] = run_ns / 1e6
                self.metrics.member_latency.observe(run_ns / 1e9, member=n)
            try:
                out = call.result()
            except Exception as exc:
                self._member_failed(seq, n, "error", f"{type(exc).__name__}: {exc}", reasons)
                continue
            problem = self._check_outputs(out)
            if problem is not None:
                self._member_failed(seq, n, problem[0], problem[1], reasons)
                continue
            valid[n] = out
        if (
            not single
            and self._policy.output_shapes is None
            and self._policy.voter.kind is not VoterKind.DETECTION
            and len(valid) > 1
        ):
            self._drop_shape_outliers(seq, valid, reasons)
        for n in valid:
            self._member_ok(seq, n)
        return _Round(valid=valid, asked=tuple(calls), single=single)

    def _run_fallback(
        self,
        seq: int,
        feeds: Mapping[str, np.ndarray],
        remaining: Callable[[], float],
        reasons: list[str],
    ) -> Outputs | None:
        st = self._states[FALLBACK_NAME]
        if st.retired or (st.quarantined and self._clock() < st.retry_at_ns):
            reasons.append("fallback model: quarantined")
            return None
        try:
            call = self._executor.submit(FALLBACK_NAME, feeds)
        except BackendError as exc:
            self._retire(seq, FALLBACK_NAME, str(exc))
            reasons.append("fallback model: retired")
            return None
        if not call.wait(remaining()):
            self._executor.abandon(FALLBACK_NAME)
            self.metrics.deadline_misses.inc(member=FALLBACK_NAME)
            self._member_failed(seq, FALLBACK_NAME, "timeout", "missed the deadline", reasons)
            return None
        try:
            out = call.result()
        except Exception as exc:
            self._member_failed(
                seq, FALLBACK_NAME, "error", f"{type(exc).__name__}: {exc}", reasons
            )
            return None
        problem = self._check_outputs(out)
        if problem is not None:
            self._member_failed(seq, FALLBACK_NAME, problem[0], problem[1], reasons)
            return None
        self._member_ok(seq, FALLBACK_NAME)
        return out

    def _check_outputs(self, out: object) -> tuple[str, str] | None:
        if not isinstance(out, Mapping):
            return "bad_output", f"returned {type(out).__name__}, not a mapping"
        shapes = self._policy.output_shapes or {}
        for name in self._required:
            if name not in out:
                return "missing_output", f"no output {name!r}"
        for name, arr in out.items():
            if not isinstance(arr, np.ndarray):
                return "bad_output", f"output {name!r} is not an array"
            if arr.dtype.kind not in "biuf":
                return "bad_output", f"output {name!r} has dtype {arr.dtype}"
            # SanityGuard's output check counts NaN/inf itself (one pass over the output)
            scanned = self._sanity_scans_outputs
            if not scanned and arr.dtype.kind == "f" and not np.isfinite(arr).all():
                return "nonfinite", f"output {name!r} has NaN or infinity"
            if name in shapes and not _shape_ok(arr.shape, shapes[name]):
                return "shape", f"output {name!r} has shape {list(arr.shape)}"
        if self._policy.voter.kind is VoterKind.DETECTION:
            boxes = out[self._policy.voter.output]
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                return "shape", f"boxes have shape {list(boxes.shape)}"
        if self._sanity is not None:
            try:
                verdict = self._sanity.check_outputs(out)
                if _status_name(verdict) == "REJECT":
                    detail = _verdict_dict(verdict)
                    checks = {v.get("check") for v in detail.get("violations", ())}
                    kind = "nonfinite" if "output.nonfinite" in checks else "output_check"
                    return kind, f"output sanity: {detail}"
            except Exception as exc:
                return "output_check", f"output checker failed: {type(exc).__name__}"
        return None

    def _drop_shape_outliers(self, seq: int, valid: dict[str, Outputs], reasons: list[str]) -> None:
        key = self._policy.voter.output
        counts: dict[tuple[int, ...], int] = {}
        for out in valid.values():
            counts[out[key].shape] = counts.get(out[key].shape, 0) + 1
        if len(counts) == 1:
            return
        best = max(counts.values())
        winners = [s for s, c in counts.items() if c == best]
        keep = winners[0] if len(winners) == 1 else None
        for n in sorted(valid):
            if valid[n][key].shape != keep:
                shape = list(valid.pop(n)[key].shape)
                self._member_failed(
                    seq, n, "shape", f"output shape {shape} is the odd one out", reasons
                )

    # -- member bookkeeping -------------------------------------------------------------------

    def _label(self, name: str) -> str:
        return "fallback model" if name == FALLBACK_NAME else name

    def _member_failed(
        self, seq: int, name: str, kind: str, detail: str, reasons: list[str]
    ) -> None:
        q = self._policy.quarantine
        st = self._states[name]
        st.failures += 1
        reasons.append(f"{self._label(name)}: {kind}")
        self.metrics.member_failures.inc(member=name, kind=kind)
        self._event(
            "member_failed", {"frame": seq, "member": name, "kind": kind, "detail": detail[:500]}
        )
        now = self._clock()
        if st.quarantined:  # a retry failed: back off further
            st.backoff_ms = min(q.max_backoff_ms, max(st.backoff_ms * 2, q.backoff_ms))
        elif kind == "timeout" or st.failures >= q.after_failures:
            st.quarantined = True
            st.backoff_ms = q.backoff_ms
        else:
            return
        st.retry_at_ns = now + int(st.backoff_ms * 1e6)
        self.metrics.quarantined.set(1, member=name)
        self._event(
            "member_quarantined",
            {
                "frame": seq,
                "member": name,
                "kind": kind,
                "failures": st.failures,
                "retry_in_ms": st.backoff_ms,
            },
        )

    def _member_ok(self, seq: int, name: str) -> None:
        st = self._states[name]
        st.failures = 0
        if st.quarantined:
            st.quarantined = False
            st.backoff_ms = 0.0
            self.metrics.quarantined.set(0, member=name)
            self._event("member_released", {"frame": seq, "member": name})

    def _retire(self, seq: int, name: str, detail: str) -> None:
        st = self._states[name]
        if not st.retired:
            st.retired = True
            st.quarantined = True
            self.metrics.quarantined.set(1, member=name)
            self._event("member_retired", {"frame": seq, "member": name, "detail": detail})

    # -- health and events --------------------------------------------------------------------

    def _grade(self, grade: HealthState, seq: int, reason: str) -> HealthState:
        self._health.observe(grade, frame=seq, reason=reason)
        return self._health.state

    def _on_health(self, tr: Transition) -> None:
        self.metrics.state.set(int(tr.new))
        self._event("state_change", tr.to_dict())

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        if self._log is None:
            return
        if self._log_q is None:
            self._log.append(kind, data)
            return
        with self._log_cv:
            self._pending_logs += 1
        self._log_q.put((kind, data))

    def _log_loop(self) -> None:
        assert self._log_q is not None and self._log is not None
        while True:
            item = self._log_q.get()
            if item is None:
                return
            try:
                self._log.append(*item)
            except Exception:  # the log must never take inference down; counted
                self.log_errors += 1
            finally:
                with self._log_cv:
                    self._pending_logs -= 1
                    self._log_cv.notify_all()

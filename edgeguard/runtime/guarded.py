"""The guarded runtime: sanity -> concurrent members -> output checks -> voter, under a deadline.

Layer: :mod:`edgeguard.runtime` (composes :mod:`edgeguard.guard`; knows no
bundle files and no inference library: members are anything with ``run``).

Per frame, :meth:`GuardedRuntime.infer`:

1. admission: per-client rate limit and the PRADA-style query monitor;
2. input checks (the I/O contract and the sanity profile): a REJECT skips every
   model step. With ``device_stats`` (the members compute the statistics of those
   inputs on the device, next to the model: TensorRT members with the CUDA C++
   kernel), only the contract and the static checks run here; the statistics arrive
   with the members' answers and are judged as soon as the members are collected,
   before any vote: a REJECT then discards the answers (the model did run on the
   frame) and the frame is rejected exactly as before. When no member sent them, the
   statistics are computed here instead, before any later step uses the frame;
3. members run concurrently (sandboxed worker processes or threads, through the
   :class:`MemberExecutor`) until the members' budget; a member that is late,
   raises, or returns missing, non-finite or wrongly shaped outputs (or fails
   ``check_outputs``) abstains;
4. the fallback chain of the policy is walked in order: ``ensemble`` (every
   member answered and the vote met the policy), ``quorum`` (enough members
   answered), ``fallback_model`` (a different, smaller model, until the
   frame deadline), ``last_known_good`` (not older than the policy allows),
   ``safe_default``;
5. output hardening, metrics, health grading and event-log records.

Each step of the chain has one handler (``_step_*``); members and the fallback
model are called through the same submit/collect path. A late call is
abandoned, never waited for, and the member quarantined; when the backoff has
elapsed it is retried (a killed and restarted worker process, or a fresh
thread). A frame no step answers raises: :class:`~edgeguard.errors.InputRejectedError`
when its input was rejected, :class:`~edgeguard.errors.InputRefusedError` when every
model asked refused the input itself, else :class:`~edgeguard.errors.BackendError`
naming the deadline and every step's failure. See ``docs/failsafe.md``.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NoReturn, Protocol, cast, runtime_checkable

import numpy as np

from edgeguard.errors import (
    BackendError,
    EdgeguardError,
    InputRefusedError,
    InputRejectedError,
    UsageError,
)
from edgeguard.guard.abuse import QueryMonitor, RateLimitedError, RateLimiter, harden_outputs
from edgeguard.guard.eventlog import EventLog
from edgeguard.guard.health import HealthMonitor, HealthState, Transition, TransitionCallback
from edgeguard.guard.metrics import Metrics
from edgeguard.guard.voting import Vote, required_outputs, vote
from edgeguard.policy.runtime import FALLBACK_NAME, ChainStep, RuntimePolicy, VoterKind
from edgeguard.runtime.placement import member_cpus
from edgeguard.runtime.threads import ThreadMemberExecutor

__all__ = [
    "FALLBACK_NAME",
    "DeviceStatsChecker",
    "GuardedResult",
    "GuardedRuntime",
    "MemberCall",
    "MemberExecutor",
    "ResultSource",
    "Runnable",
    "SanityChecker",
    "SanityVerdict",
    "describe_verdict",
]

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
    """Input and output checks (:class:`~edgeguard.guard.checks.FrameChecks`)."""

    @property
    def counts_nonfinite_outputs(self) -> bool:
        """True when :meth:`check_outputs` reports NaN/inf (the runtime then does not scan)."""
        ...

    def warm_up(self) -> None:
        """Prepare (compile kernels) before the first frame."""
        ...

    def check_inputs(
        self, feeds: Mapping[str, np.ndarray], prev: Mapping[str, np.ndarray] | None = None
    ) -> SanityVerdict:
        """Check one request's inputs (``prev``: the previous accepted request)."""
        ...

    def check_outputs(self, outputs: Mapping[str, np.ndarray]) -> SanityVerdict:
        """Check one member's outputs."""
        ...


class DeviceStatsChecker(SanityChecker, Protocol):
    """A checker that judges statistics computed elsewhere (:class:`~edgeguard.guard.
    checks.FrameChecks`), for inputs whose statistics the members send back."""

    def check_inputs(
        self,
        feeds: Mapping[str, np.ndarray],
        prev: Mapping[str, np.ndarray] | None = None,
        *,
        stats_elsewhere: frozenset[str] = frozenset(),
    ) -> SanityVerdict:
        """The contract and static checks; statistics only of the other inputs."""
        ...

    def check_stats(
        self, name: str, stats: Any, x: np.ndarray, prev: np.ndarray | None = None
    ) -> SanityVerdict:
        """Judge one input's statistics sent by a member (``tdiff`` computed here)."""
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
        rejection: The verdict of the input checks when they rejected this frame's
            input and a later step of the chain answered anyway (None otherwise).
    """

    seq: int
    outputs: dict[str, np.ndarray]
    source: ResultSource
    health: HealthState
    reasons: tuple[str, ...] = ()
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    members: tuple[str, ...] = ()
    rejection: Mapping[str, Any] | None = None


@dataclass
class _MemberState:
    failures: int = 0
    quarantined: bool = False
    retry_at_ns: int = 0
    backoff_ms: float = 0.0
    retired: bool = False


@dataclass
class _Round:
    """The members' answers of one frame (asked once, voted on by every voting step)."""

    valid: dict[str, Outputs]
    asked: tuple[str, ...]
    single: bool


@dataclass(frozen=True)
class _Answer:
    outputs: Outputs
    source: ResultSource
    backers: tuple[str, ...]
    grade: HealthState


@dataclass
class _Frame:
    """One request on its way through the chain."""

    seq: int
    t0: int  # injected clock at the start
    r0: int  # perf_counter_ns at the start
    feeds: Mapping[str, np.ndarray]
    lat: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    rejection: dict[str, Any] | None = None  # the verdict of a rejected input
    pending: dict[str, MemberCall] | None = None  # member calls started, not yet collected
    single: bool = False  # model switching: one member asked
    round: _Round | None = None
    refused: dict[str, EdgeguardError] = field(default_factory=dict)  # model -> its refusal
    other: bool = False  # a model call ended otherwise: answered, late, failed, retired
    stats_pending: bool = False  # statistics to judge: from the members' answers, or here
    stats: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # member -> its stats
    unchecked: set[str] = field(default_factory=set)  # answered without statistics


_CLASSIFIERS = (VoterKind.PLURALITY, VoterKind.MAJORITY, VoterKind.SOFT)


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


def describe_verdict(detail: Mapping[str, Any], limit: int = 3, severity: str = "REJECT") -> str:
    """The first violations of a verdict's dict form of ``severity`` ("REJECT": every
    violation that is not a warning), as one line."""
    bad = [
        v
        for v in detail.get("violations", ())
        if isinstance(v, dict) and ((v.get("severity") == "WARN") == (severity == "WARN"))
    ]
    if not bad:
        return str(detail.get("error", ""))
    parts = []
    for v in bad[:limit]:
        where = str(v.get("tensor", "?"))
        if v.get("frame") is not None:
            where += (
                f"[{v['frame']}]"
                if v.get("channel") is None
                else f"[{v['frame']}, c{v['channel']}]"
            )
        if v.get("detail"):
            parts.append(f"{v.get('check')} {where}: {v['detail']}")
        else:
            parts.append(
                f"{v.get('check')} {where}: {_num(v.get('value'))} outside "
                f"[{_num(v.get('low'))}, {_num(v.get('high'))}]"
            )
    more = f" (+{len(bad) - limit} more)" if len(bad) > limit else ""
    return "; ".join(parts) + more


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


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
        sanity: Input/output checker (the device session passes its
            :class:`~edgeguard.guard.checks.FrameChecks`), or None.
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
        device_stats: Inputs whose sanity statistics the members compute on the device
            and send with their answers (``call.device_stats``); ``sanity`` must then
            be a :class:`DeviceStatsChecker`. Empty: every statistic is computed by
            ``sanity`` before the members run.

    Raises:
        UsageError: Members do not match the policy; ``device_stats`` without a checker
            that can judge them.
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
        device_stats: Collection[str] = (),
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
        self._device = frozenset(device_stats)
        self._dev: DeviceStatsChecker | None = None
        if self._device:
            if sanity is None or not callable(getattr(sanity, "check_stats", None)):
                raise UsageError("device_stats needs a checker that judges statistics")
            self._dev = cast(DeviceStatsChecker, sanity)
        if sanity is not None:
            sanity.warm_up()  # compile now, not inside the first frame's deadline
        self._scan_outputs = sanity is None or not sanity.counts_nonfinite_outputs
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
        self._steps: dict[ChainStep, Callable[[_Frame, ChainStep], _Answer | None]] = {
            ChainStep.ENSEMBLE: self._step_vote,
            ChainStep.QUORUM: self._step_vote,
            ChainStep.FALLBACK_MODEL: self._step_fallback_model,
            ChainStep.LAST_KNOWN_GOOD: self._step_last_known_good,
            ChainStep.SAFE_DEFAULT: self._step_safe_default,
        }
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

    @property
    def device_stats(self) -> frozenset[str]:
        """Inputs whose statistics the members compute on the device."""
        return self._device

    @property
    def executor(self) -> MemberExecutor:
        """Where the member calls run."""
        return self._executor

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
            InputRejectedError: The input was rejected (I/O contract or sanity
                profile) and either the policy says ``raise`` or no step of the
                chain has an answer for a rejected input.
            InputRefusedError: The input passed the checks, but every model asked
                refused it before running (it does not fit a sandboxed member's
                shared memory; an in-process model's input validation), and no
                later step answered.
            BackendError: No step of the chain answered an accepted input; the
                message names the deadline and why each step failed.
            UsageError: The runtime is closed.
        """
        if self._closed:
            raise UsageError("guarded runtime is closed")
        with self._lock:
            seq = self._seq
            self._seq += 1
        f = _Frame(seq=seq, t0=self._clock(), r0=time.perf_counter_ns(), feeds=feeds)
        s = time.perf_counter_ns()
        if client_id is not None:
            self._admit(seq, client_id, feeds)
        f.lat["admission"] = (time.perf_counter_ns() - s) / 1e6
        if self._policy.speculative and self._sanity is not None:
            f.pending = self._submit(f, self._eligible_members(f))
        self._check_inputs(f)
        for step in self._policy.fallback_chain:
            if f.stats_pending and step not in (ChainStep.ENSEMBLE, ChainStep.QUORUM):
                self._settle_stats(f)  # before a step that answers without the members
            answer = self._steps[step](f, step)
            if answer is not None:
                return self._finish(f, answer)
        self._exhausted(f)

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

    # -- budget -------------------------------------------------------------------------------

    def _remaining(self, f: _Frame, budget_ms: float) -> float:
        """Seconds left of ``budget_ms`` from the frame's start.

        The injected clock may only shorten a wait, never extend it past the real budget.
        """
        budget_ns = int(budget_ms * 1e6)
        a = (f.t0 + budget_ns - self._clock()) / 1e9
        b = (f.r0 + budget_ns - time.perf_counter_ns()) / 1e9
        return max(0.0, min(a, b))

    def _overran(self, f: _Frame) -> bool:
        deadline_ns = self._policy.deadline_ms * 1e6
        return self._clock() - f.t0 > deadline_ns or time.perf_counter_ns() - f.r0 > deadline_ns

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

    def _check_inputs(self, f: _Frame) -> None:
        """Input checks; a rejected frame skips every model step (or raises, by policy)."""
        if self._sanity is None:
            f.lat["input_checks"] = 0.0
            return
        s = time.perf_counter_ns()
        verdict: object = None
        detail: dict[str, Any] | None = None
        try:
            if self._dev is not None:
                verdict = self._dev.check_inputs(
                    f.feeds, prev=self._prev_feeds, stats_elsewhere=self._device
                )
            else:
                verdict = self._sanity.check_inputs(f.feeds, prev=self._prev_feeds)
            status = _status_name(verdict)
        except Exception as exc:  # a broken checker must not let inputs through
            status, detail = "REJECT", {"error": f"{type(exc).__name__}: {exc}"}
        if status == "REJECT":
            self._reject(f, detail if detail is not None else _verdict_dict(verdict), {})
            if f.pending is not None:  # discard the speculative answers, keep bookkeeping
                self._collect(f, f.pending, self._policy.effective_member_budget_ms, [])
                f.pending = None
            self._raise_if_policy(f, s)
        else:
            self._warn(f, status, verdict)
            if self._dev is not None:
                f.stats_pending = True  # accepted once the statistics are judged
            else:
                self._prev_feeds = f.feeds
        f.lat["input_checks"] = (time.perf_counter_ns() - s) / 1e6

    def _reject(self, f: _Frame, detail: dict[str, Any], extra: Mapping[str, Any]) -> None:
        """Record the rejection of the frame's input (the same record wherever it was found)."""
        f.rejection = detail
        why = describe_verdict(f.rejection, limit=1)
        f.reasons.append(f"input rejected: {why}" if why else "input rejected")
        self.metrics.rejects.inc(reason="input_sanity")
        self._event("input_rejected", {"frame": f.seq, "verdict": f.rejection, **extra})

    def _raise_if_policy(self, f: _Frame, s: int) -> None:
        if self._policy.reject_action == "raise":
            f.lat["input_checks"] = (
                f.lat.get("input_checks", 0.0) + (time.perf_counter_ns() - s) / 1e6
            )
            self._grade(HealthState.DEGRADED, f.seq, "input rejected")
            raise self._rejected_error(f)

    def _warn(self, f: _Frame, status: str, verdict: object) -> None:
        if status == "WARN":
            why = describe_verdict(_verdict_dict(verdict), limit=2, severity="WARN")
            f.reasons.append(f"input sanity warning: {why}" if why else "input sanity warning")

    def _settle_stats(self, f: _Frame) -> bool:
        """Judge the statistics the members sent (or compute them here when none did).

        Every member's statistics are judged; the frame takes the worst verdict (a
        member cannot vouch for an input another member's check rejects). A REJECT
        is recorded and raised exactly as one found before the members ran; the
        members' answers to the frame are discarded by the caller.

        Returns:
            True when the statistics judged here rejected the frame.
        """
        if not f.stats_pending:
            return False
        f.stats_pending = False
        assert self._dev is not None
        s = time.perf_counter_ns()
        prev = self._prev_feeds
        detail: dict[str, Any] | None = None
        worst: tuple[int, object, str] = (-1, None, "cpu")
        rank = {"PASS": 0, "WARN": 1, "REJECT": 2}
        covered = {name for found in f.stats.values() for name in found}
        try:
            for member in sorted(f.stats):
                for name, stats in sorted(f.stats[member].items()):
                    if name not in self._device:
                        continue
                    pv = None if prev is None else prev.get(name)
                    v = self._dev.check_stats(name, stats, f.feeds[name], pv)
                    r = rank.get(_status_name(v), 2)
                    if r > worst[0]:
                        worst = (r, v, f"device:{member}")
            if not f.stats or not self._device <= covered or f.unchecked:
                # no member sent them, or one answered without them: computed here too,
                # so no answer is delivered on another member's word, and none unchecked
                v = self._dev.check_inputs(f.feeds, prev=prev)
                r = rank.get(_status_name(v), 2)
                if r > worst[0]:
                    worst = (r, v, "cpu")
            status = _status_name(worst[1])
        except Exception as exc:  # a broken checker must not let inputs through
            status, detail = "REJECT", {"error": f"{type(exc).__name__}: {exc}"}
        if status == "REJECT":
            where = worst[2] if detail is None else "device" if covered else "cpu"
            # where the statistics were computed: "device:<member>" or "cpu"
            self._reject(
                f, detail if detail is not None else _verdict_dict(worst[1]), {"statistics": where}
            )
            f.lat["input_checks"] = (
                f.lat.get("input_checks", 0.0) + (time.perf_counter_ns() - s) / 1e6
            )
            self._raise_if_policy(f, time.perf_counter_ns())
            return True
        self._warn(f, status, worst[1])
        self._prev_feeds = f.feeds
        f.lat["input_checks"] = f.lat.get("input_checks", 0.0) + (time.perf_counter_ns() - s) / 1e6
        return False

    def _rejected_error(self, f: _Frame) -> InputRejectedError:
        assert f.rejection is not None
        why = describe_verdict(f.rejection)
        checks = [
            v.get("check", "") for v in f.rejection.get("violations", ()) if isinstance(v, dict)
        ]
        contract = bool(checks) and all(str(c).startswith("input.") for c in checks)
        return InputRejectedError(
            f"frame {f.seq}: input rejected" + (f": {why}" if why else ""),
            hint="feed what the model takes (edgeguard inspect shows its inputs)"
            if contract
            else "inspect the input source (camera, preprocessing) or recalibrate",
            verdict=f.rejection,
        )

    def _refused_error(self, f: _Frame) -> InputRefusedError:
        """Every model the frame asked refused its input, and no later step answered."""
        name, first = next(iter(f.refused.items()))
        more = f" (+{len(f.refused) - 1} more)" if len(f.refused) > 1 else ""
        verdict: dict[str, object] = {
            "status": "REJECT",
            "violations": [
                {"check": "model.refused", "tensor": self._label(n), "detail": str(e)[:300]}
                for n, e in f.refused.items()
            ],
        }
        return InputRefusedError(
            f"frame {f.seq}: the input passed the signed checks, but the models refused it: "
            f"{self._label(name)}: {first}{more}",
            hint=first.hint or "feed what the models take (edgeguard inspect shows it)",
            verdict=verdict,
        )

    # -- the chain: one handler per step ------------------------------------------------------

    def _step_vote(self, f: _Frame, step: ChainStep) -> _Answer | None:
        """``ensemble`` (every member answered) and ``quorum`` (enough did): vote."""
        if f.rejection is not None:
            return None
        if f.round is None:
            s = time.perf_counter_ns()
            calls = (
                f.pending if f.pending is not None else self._submit(f, self._eligible_members(f))
            )
            f.pending = None
            valid = self._collect(f, calls, self._policy.effective_member_budget_ms, f.reasons)
            if not f.single and len(valid) > 1:
                self._drop_shape_outliers(f.seq, valid, f.reasons)
            for n in valid:
                self._member_ok(f.seq, n)
            f.round = _Round(valid=valid, asked=tuple(calls), single=f.single)
            f.lat["members"] = (time.perf_counter_ns() - s) / 1e6
            if self._settle_stats(f):  # may raise: the policy says so for a rejected input
                valid.clear()  # the answers to a rejected input are never delivered
                return None
            if valid and self._overran(f):
                # e.g. the clock jumped forward (suspend/resume): the answers are stale
                f.reasons.append("member answers arrived after the frame deadline")
                valid.clear()
        rnd, pol = f.round, self._policy
        if rnd.single:
            need = len(rnd.asked)
        else:
            need = len(self._names) if step is ChainStep.ENSEMBLE else pol.quorum
        if len(rnd.valid) < need or not rnd.valid:
            return None
        s = time.perf_counter_ns()
        v: Vote = vote(rnd.valid, pol.voter, quorum=min(need, len(rnd.valid)))
        f.lat["vote"] = f.lat.get("vote", 0.0) + (time.perf_counter_ns() - s) / 1e6
        if not v.ok:
            msg = f"{step.value}: {v.reason}"
            if msg not in f.reasons:
                f.reasons.append(msg)
                self._event(
                    "disagreement",
                    {
                        "frame": f.seq,
                        "step": step.value,
                        "reason": v.reason,
                        "members": sorted(rnd.valid),
                    },
                )
            return None
        if v.dissenters:
            f.reasons.append(f"outvoted: {', '.join(v.dissenters)}")
        several = not rnd.single and len(rnd.valid) > 1
        full = len(rnd.valid) == len(rnd.asked) and (
            rnd.single or len(rnd.asked) == len(self._names)
        )
        return _Answer(
            outputs=v.outputs,
            source=ResultSource.ENSEMBLE if several else ResultSource.SINGLE_MEMBER,
            backers=tuple(sorted(rnd.valid)),
            grade=HealthState.NOMINAL if full and not self.quarantined() else HealthState.DEGRADED,
        )

    def _step_fallback_model(self, f: _Frame, step: ChainStep) -> _Answer | None:
        """The smaller fallback model, until the frame's deadline."""
        if f.rejection is not None or self._fallback is None:
            return None
        s = time.perf_counter_ns()
        calls = self._submit(f, [FALLBACK_NAME])
        valid = self._collect(f, calls, self._policy.deadline_ms, f.reasons)
        f.lat["fallback_model"] = (time.perf_counter_ns() - s) / 1e6
        out = valid.get(FALLBACK_NAME)
        if out is None:
            return None
        self._member_ok(f.seq, FALLBACK_NAME)
        if self._overran(f):
            f.reasons.append("fallback answer arrived after the frame deadline")
            return None
        voter = self._policy.voter
        if voter.kind in _CLASSIFIERS and voter.output in out and "label" not in out:
            # the same outputs as a voted answer, "label" included, whoever answers
            alone = vote({FALLBACK_NAME: out}, voter)
            if alone.ok:
                out = alone.outputs
        return _Answer(out, ResultSource.FALLBACK_MODEL, (FALLBACK_NAME,), HealthState.FAILSAFE)

    def _step_last_known_good(self, f: _Frame, step: ChainStep) -> _Answer | None:
        """The last model answer, if it is young enough."""
        if self._lkg is None:
            f.reasons.append("no last-known-good output")
            return None
        age_ms = (self._clock() - self._lkg[0]) / 1e6
        if not 0 <= age_ms <= self._policy.last_known_good_max_age_ms:
            f.reasons.append(
                f"last-known-good too old ({age_ms:.1f} ms, at most "
                f"{self._policy.last_known_good_max_age_ms:g} ms)"
            )
            return None
        outputs = {k: v.copy() for k, v in self._lkg[1].items()}
        return _Answer(outputs, ResultSource.LAST_KNOWN_GOOD, (), HealthState.FAILSAFE)

    def _step_safe_default(self, f: _Frame, step: ChainStep) -> _Answer | None:
        """The signed safe default."""
        assert self._policy.safe_default is not None
        outputs = {k: np.array(v) for k, v in self._policy.safe_default.items()}
        return _Answer(outputs, ResultSource.SAFE_DEFAULT, (), HealthState.FAILSAFE)

    def _exhausted(self, f: _Frame) -> NoReturn:
        """No step answered: record it, then raise the error that says why."""
        self._settle_stats(f)  # an unjudged input is never reported as merely unanswered
        self.metrics.fallbacks.inc(source="none")
        self._event("chain_exhausted", {"frame": f.seq, "reasons": f.reasons})
        if f.rejection is not None:
            self._grade(HealthState.DEGRADED, f.seq, "input rejected; no answer for it")
            raise self._rejected_error(f)
        if f.refused and not f.other:  # every model asked refused the input itself
            self._grade(HealthState.DEGRADED, f.seq, "input refused by the models; no answer")
            raise self._refused_error(f)
        self._grade(HealthState.FAILSAFE, f.seq, "; ".join(f.reasons) or "chain exhausted")
        pol = self._policy
        budget = (
            f" (members {pol.effective_member_budget_ms:g} ms of it)"
            if pol.member_budget_ms is not None
            else ""
        )
        took = ", ".join(
            f"{k.removeprefix('member:')} {v:.1f} ms"
            for k, v in sorted(f.lat.items())
            if k.startswith("member:") and v == v
        )
        missed = any(k.startswith("member:") and v != v for k, v in f.lat.items())
        why = "; ".join(f.reasons) or "no step applies"
        if missed:
            raise BackendError(
                f"frame {f.seq}: no step of the fallback chain answered within the "
                f"{pol.deadline_ms:g} ms deadline{budget}: {why}"
                + (f" (member run times: {took})" if took else ""),
                hint="see the event log for every step; a deadline too short for this device "
                "is set with build --deadline-ms",
            )
        raise BackendError(
            f"frame {f.seq}: no step of the fallback chain could answer: {why}"
            + (f" (member run times: {took})" if took else ""),
            hint="see the event log for every step",
        )

    def _finish(self, f: _Frame, a: _Answer) -> GuardedResult:
        s = time.perf_counter_ns()
        outputs, source = a.outputs, a.source
        if source in (
            ResultSource.ENSEMBLE,
            ResultSource.SINGLE_MEMBER,
            ResultSource.FALLBACK_MODEL,
        ):
            self._lkg = (self._clock(), {k: np.array(v, copy=True) for k, v in outputs.items()})
        if source is not ResultSource.ENSEMBLE and not (
            source is ResultSource.SINGLE_MEMBER and a.grade is HealthState.NOMINAL
        ):
            self.metrics.fallbacks.inc(source=source.value)
            self._event("fallback", {"frame": f.seq, "source": source.value, "reasons": f.reasons})
        hardening = self._policy.hardening
        if hardening is not None and hardening.output in outputs:
            outputs = harden_outputs(outputs, hardening)
        state = self._grade(a.grade, f.seq, "; ".join(f.reasons) or source.value)
        f.lat["output"] = (time.perf_counter_ns() - s) / 1e6
        total = (time.perf_counter_ns() - f.r0) / 1e6
        f.lat["total"] = total
        self.metrics.frames.inc(source=source.value)
        self.metrics.frame_latency.observe(total / 1e3)
        return GuardedResult(
            seq=f.seq,
            outputs=outputs,
            source=source,
            health=state,
            reasons=tuple(f.reasons),
            latency_ms=f.lat,
            members=a.backers,
            rejection=f.rejection,
        )

    # -- member calls: one path for members and the fallback model ----------------------------

    def _eligible_members(self, f: _Frame) -> list[str]:
        """Members to ask this frame: not quarantined (or due a retry); one with switching."""
        now = self._clock()
        eligible: list[str] = []
        waiting: list[str] = []
        for n in self._names:
            st = self._states[n]
            if st.retired or (st.quarantined and now < st.retry_at_ns):
                if not st.retired:
                    waiting.append(n)
                continue
            eligible.append(n)
        if not eligible and waiting and self._fallback is None:
            # Every member is quarantined and no fallback model could answer instead:
            # skipping them all is a certain miss, so ask the one due back first (the
            # half-open state of a circuit breaker) and give it the frame's budget.
            probe = min(waiting, key=lambda n: (self._states[n].retry_at_ns, n))
            waiting.remove(probe)
            eligible.append(probe)
            f.reasons.append(f"{probe}: quarantined, asked anyway (no other member answers)")
        f.reasons.extend(f"{n}: quarantined" for n in waiting)
        if self._policy.model_switching and eligible:
            healthy = [n for n in eligible if not self._states[n].quarantined] or eligible
            eligible = [self._rng.choice(sorted(healthy))]
            f.single = True
        return eligible

    def _submit(self, f: _Frame, names: list[str]) -> dict[str, MemberCall]:
        calls: dict[str, MemberCall] = {}
        now = self._clock()
        for n in names:
            st = self._states[n]
            if n == FALLBACK_NAME and (st.retired or (st.quarantined and now < st.retry_at_ns)):
                f.reasons.append("fallback model: quarantined")
                continue
            try:
                calls[n] = self._executor.submit(n, f.feeds)
            except BackendError as exc:
                f.other = True
                self._retire(f.seq, n, str(exc))
                f.reasons.append(f"{self._label(n)}: retired")
        return calls

    def _collect(
        self, f: _Frame, calls: Mapping[str, MemberCall], budget_ms: float, reasons: list[str]
    ) -> dict[str, Outputs]:
        """Wait for each call within the budget; a late, failed or bad answer abstains.

        A call that refused the input before the model ran (``InputRefusedError``, or an
        in-process model's input validation: ``UsageError``) abstains too, but as the
        input's fault: it is noted in ``f.refused`` and does not count towards quarantine.
        Every other outcome sets ``f.other``.
        """
        valid: dict[str, Outputs] = {}
        for n, call in calls.items():
            try:
                finished = call.wait(self._remaining(f, budget_ms))
            except Exception as exc:  # an executor's fault is the member's, never the frame's
                f.other = True
                self._executor.abandon(n)
                self._member_failed(
                    f.seq, n, "error", f"waiting raised {type(exc).__name__}: {exc}", reasons
                )
                continue
            if not finished:
                f.other = True
                self._executor.abandon(n)
                f.lat[f"member:{n}"] = float("nan")
                self.metrics.deadline_misses.inc(member=n)
                self._member_failed(
                    f.seq, n, "timeout", f"no answer within {budget_ms:g} ms", reasons
                )
                continue
            run_ns = call.run_ns
            if run_ns is not None:
                f.lat[f"member:{n}"] = run_ns / 1e6
                self.metrics.member_latency.observe(run_ns / 1e9, member=n)
            try:
                out = call.result()
                found = getattr(call, "device_stats", None)
                if self._device and isinstance(found, Mapping) and found:
                    f.stats[n] = found
                elif self._device:
                    f.unchecked.add(n)  # its answer is judged by statistics computed here
            except (InputRefusedError, UsageError) as exc:  # refused before it ran: the input
                f.refused[n] = exc
                self._member_failed(f.seq, n, "input_refused", str(exc), reasons)
                continue
            except Exception as exc:
                f.other = True
                self._member_failed(f.seq, n, "error", f"{type(exc).__name__}: {exc}", reasons)
                continue
            f.other = True
            problem = self._check_outputs(out)
            if problem is not None:
                self._member_failed(f.seq, n, problem[0], problem[1], reasons)
                continue
            valid[n] = out
        return valid

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
            # a checker that counts NaN/inf itself spares the runtime a second pass
            if self._scan_outputs and arr.dtype.kind == "f" and not np.isfinite(arr).all():
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
        reasons.append(f"{self._label(name)}: {kind}")
        self.metrics.member_failures.inc(member=name, kind=kind)
        self._event(
            "member_failed", {"frame": seq, "member": name, "kind": kind, "detail": detail[:500]}
        )
        if kind == "input_refused":  # the input's fault: the member stays as healthy as it was
            return
        st.failures += 1
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

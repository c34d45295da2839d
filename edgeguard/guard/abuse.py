"""Extraction and abuse resistance for devices that expose an inference API.

Layer: :mod:`edgeguard.guard` (pure logic, injectable clock; no I/O).

* :class:`RateLimiter`: a token bucket per client id, bounded memory (least
  recently seen clients are forgotten first), monotonic injectable clock.
* :func:`harden_outputs`: return only the hardened scores (softmax, top-k,
  rounded) and the label, so each answer leaks as little as possible about
  the decision surface.
* :class:`QueryMonitor`: in the spirit of PRADA (Juuti et al., 2019): for each
  client, the minimum L2 distance of every new query to the client's earlier
  queries is recorded; natural inputs give a roughly normal distribution of
  these distances, while synthetic extraction queries (small perturbations
  of seeds) do not. When the Shapiro-Wilk statistic W of the distances drops
  below a threshold after a minimum number of queries, the monitor raises an
  alert (once per client) that the runtime writes to the event log.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from edgeguard._optional import require
from edgeguard.errors import PolicyError, UsageError
from edgeguard.guard.voting import softmax
from edgeguard.policy.runtime import HardeningPolicy, RateLimitPolicy

__all__ = [
    "MonitorVerdict",
    "QueryMonitor",
    "RateLimitedError",
    "RateLimiter",
    "harden_outputs",
]


class RateLimitedError(PolicyError):
    """A client exceeded its request rate; the request was refused."""


class RateLimiter:
    """Token bucket per client id.

    Args:
        policy: Rate, burst and the number of clients tracked.
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(
        self, policy: RateLimitPolicy, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = policy.rate_per_s
        self._burst = float(policy.burst)
        self._max = policy.max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, client_id: str) -> bool:
        """Take one token for ``client_id``; False when its bucket is empty."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(client_id, (self._burst, now))
            # a clock that goes backwards never creates tokens
            tokens = min(self._burst, tokens + max(0.0, now - last) * self._rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[client_id] = (tokens, max(now, last))
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
            return allowed

    def check(self, client_id: str) -> None:
        """Like :meth:`allow` but raise.

        Raises:
            RateLimitedError: The client's bucket is empty.
        """
        if not self.allow(client_id):
            raise RateLimitedError(
                f"client {client_id!r} exceeded its request rate", hint="slow down and retry later"
            )


def harden_outputs(
    outputs: Mapping[str, np.ndarray], policy: HardeningPolicy
) -> dict[str, np.ndarray]:
    """Reduce an answer to hardened scores and the label.

    Only ``policy.output`` (converted with softmax if configured, all but the
    top-k per row set to 0, rounded) and ``"label"`` (when present, else the
    argmax) are returned; every other output is dropped.

    Raises:
        UsageError: The output named by the policy is missing.
    """
    if policy.output not in outputs:
        raise UsageError(f"hardening: output {policy.output!r} missing")
    raw = np.asarray(outputs[policy.output])
    rows = raw.reshape(-1, raw.shape[-1]) if raw.ndim else raw.reshape(1, 1)
    scores = softmax(rows) if policy.softmax else rows.astype(np.float64)
    if policy.top_k is not None and policy.top_k < scores.shape[-1]:
        # stable order: ties keep the lower index
        order = np.argsort(-scores, axis=-1, kind="stable")
        mask = np.zeros_like(scores, dtype=bool)
        np.put_along_axis(mask, order[:, : policy.top_k], True, axis=-1)
        scores = np.where(mask, scores, 0.0)
    if policy.decimals is not None:
        scores = np.round(scores, policy.decimals)
    label = outputs.get("label")
    if label is None:
        label = np.argmax(rows, axis=-1).astype(np.int64)
    return {policy.output: scores.reshape(raw.shape).astype(np.float32), "label": np.asarray(label)}


@dataclass(frozen=True)
class MonitorVerdict:
    """Result of observing one query.

    Attributes:
        client_id: The client.
        queries: Queries seen from this client.
        statistic: Latest Shapiro-Wilk W, or None before ``min_queries``.
        alert: The client is flagged (now or earlier).
        new_alert: This query raised the flag.
    """

    client_id: str
    queries: int
    statistic: float | None
    alert: bool
    new_alert: bool


class _ClientState:
    __slots__ = ("alerted", "distances", "history", "queries", "statistic")

    def __init__(self, history: int, window: int) -> None:
        self.history: deque[np.ndarray] = deque(maxlen=history)
        self.distances: deque[float] = deque(maxlen=window)
        self.queries = 0
        self.alerted = False
        self.statistic: float | None = None


class QueryMonitor:
    """PRADA-style per-client query-distribution monitor.

    Args:
        threshold: Alert when Shapiro-Wilk W falls below this (PRADA uses ~0.9-0.96).
        min_queries: Distances needed before testing.
        window: Most recent distances tested.
        history: Earlier queries kept per client for the distance search.
        max_clients: Clients tracked (least recently seen forgotten first).
    """

    def __init__(
        self,
        *,
        threshold: float = 0.90,
        min_queries: int = 50,
        window: int = 256,
        history: int = 1024,
        max_clients: int = 1000,
    ) -> None:
        if not 0 < threshold < 1 or min_queries < 3 or window < min_queries or history < 1:
            raise UsageError("QueryMonitor: need 0 < threshold < 1, 3 <= min_queries <= window")
        self._threshold = threshold
        self._min = min_queries
        self._window = window
        self._history = history
        self._max_clients = max_clients
        self._clients: OrderedDict[str, _ClientState] = OrderedDict()
        self._lock = threading.Lock()

    def observe(self, client_id: str, query: np.ndarray) -> MonitorVerdict:
        """Record one query of ``client_id`` and test its distance distribution.

        Raises:
            MissingDependencyError: scipy is not installed (needed for Shapiro-Wilk).
        """
        x = np.asarray(query, dtype=np.float64).reshape(-1)
        with self._lock:
            st = self._clients.pop(client_id, None) or _ClientState(self._history, self._window)
            self._clients[client_id] = st
            while len(self._clients) > self._max_clients:
                self._clients.popitem(last=False)
            if st.history:
                hist = np.stack([h for h in st.history if h.shape == x.shape] or [x])
                d = float(np.sqrt(((hist - x[None]) ** 2).sum(axis=1)).min())
                st.distances.append(d)
            st.history.append(x)
            st.queries += 1
            new_alert = False
            if len(st.distances) >= self._min:
                st.statistic = _shapiro_w(np.fromiter(st.distances, dtype=np.float64))
                if st.statistic < self._threshold and not st.alerted:
                    st.alerted = True
                    new_alert = True
            return MonitorVerdict(client_id, st.queries, st.statistic, st.alerted, new_alert)

    def reset(self, client_id: str) -> None:
        """Forget a client (for example after an operator cleared its alert)."""
        with self._lock:
            self._clients.pop(client_id, None)


def _shapiro_w(values: np.ndarray) -> float:
    if float(np.ptp(values)) == 0.0:
        return 0.0  # identical distances: as far from natural as it gets
    stats = require("scipy.stats", extra="monitor", purpose="The PRADA query monitor")
    return float(stats.shapiro(values).statistic)

"""Counters, gauges and histograms with Prometheus text and JSON-lines export.

Layer: :mod:`edgeguard.guard` (pure logic, thread-safe, no I/O).

Exposition follows the Prometheus text format 0.0.4: ``# HELP`` and
``# TYPE`` lines, label values escaped (backslash, double quote, newline),
histograms as cumulative ``_bucket{le=...}`` series plus ``_sum`` and
``_count``. :meth:`Metrics.to_json_lines` gives one JSON object per sample.
:class:`Metrics` pre-declares the series the guarded runtime updates.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence

__all__ = ["Counter", "Gauge", "Histogram", "Metrics", "Registry"]

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
LabelValues = tuple[str, ...]

DEFAULT_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"bad metric name {name!r}")
        for ln in labelnames:
            if not _LABEL_RE.fullmatch(ln) or ln.startswith("__") or ln == "le":
                raise ValueError(f"bad label name {ln!r}")
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        try:
            if len(labels) == len(self.labelnames):
                return tuple(str(labels[n]) for n in self.labelnames)
        except KeyError:
            pass
        raise ValueError(f"{self.name}: labels must be exactly {self.labelnames}")

    def _labelstr(self, key: LabelValues, extra: tuple[tuple[str, str], ...] = ()) -> str:
        pairs = [*zip(self.labelnames, key, strict=True), *extra]
        if not pairs:
            return ""
        return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        raise NotImplementedError

    def exposition(self) -> str:
        help_text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        lines = [f"# HELP {self.name} {help_text}", f"# TYPE {self.name} {self.kind}"]
        for name, labels, value in self.samples():
            extra = tuple((k, v) for k, v in labels.items() if k not in self.labelnames)
            key = tuple(labels[n] for n in self.labelnames)
            lines.append(f"{name}{self._labelstr(key, extra)} {_fmt(value)}")
        return "\n".join(lines) + "\n"


class Counter(_Metric):
    """Monotonically increasing counter."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(
            name if name.endswith("_total") else f"{name}_total", help_text, labelnames
        )
        self._values: dict[LabelValues, float] = {}
        if not self.labelnames:
            self._values[()] = 0.0

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (>= 0)."""
        if amount < 0:
            raise ValueError("counters only go up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """Current value (0 for a label set never incremented)."""
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        with self._lock:
            items = sorted(self._values.items())
        for key, v in items:
            yield self.name, dict(zip(self.labelnames, key, strict=True)), v


class Gauge(_Metric):
    """Value that goes up and down."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[LabelValues, float] = {}
        if not self.labelnames:
            self._values[()] = 0.0

    def set(self, value: float, **labels: str) -> None:
        """Set the value."""
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def value(self, **labels: str) -> float:
        """Current value (0 when never set)."""
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        with self._lock:
            items = sorted(self._values.items())
        for key, v in items:
            yield self.name, dict(zip(self.labelnames, key, strict=True)), v


class Histogram(_Metric):
    """Cumulative-bucket histogram (seconds by convention)."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        b = sorted(float(x) for x in buckets)
        if not b or any(math.isnan(x) for x in b):
            raise ValueError("histogram needs finite buckets")
        self._bounds = tuple(x for x in b if not math.isinf(x))
        self._data: dict[LabelValues, tuple[list[int], float, int]] = {}

    def observe(self, value: float, **labels: str) -> None:
        """Record one observation."""
        key = self._key(labels)
        i = bisect.bisect_left(self._bounds, value)
        with self._lock:
            counts, total, n = self._data.get(key) or ([0] * (len(self._bounds) + 1), 0.0, 0)
            counts[i] += 1
            self._data[key] = (counts, total + value, n + 1)

    def count(self, **labels: str) -> int:
        """Number of observations."""
        with self._lock:
            d = self._data.get(self._key(labels))
            return 0 if d is None else d[2]

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        with self._lock:
            items = sorted((k, (list(c), s, n)) for k, (c, s, n) in self._data.items())
        for key, (counts, total, n) in items:
            base = dict(zip(self.labelnames, key, strict=True))
            acc = 0
            for bound, c in zip((*self._bounds, math.inf), counts, strict=True):
                acc += c
                yield f"{self.name}_bucket", {**base, "le": _fmt(bound)}, float(acc)
            yield f"{self.name}_sum", base, total
            yield f"{self.name}_count", base, float(n)


class Registry:
    """A set of metrics exported together."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def _add(self, m: _Metric) -> None:
        with self._lock:
            if m.name in self._metrics:
                raise ValueError(f"metric {m.name} already registered")
            self._metrics[m.name] = m

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        """Create and register a counter."""
        c = Counter(name, help_text, labelnames)
        self._add(c)
        return c

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Gauge:
        """Create and register a gauge."""
        g = Gauge(name, help_text, labelnames)
        self._add(g)
        return g

    def histogram(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
    ) -> Histogram:
        """Create and register a histogram."""
        h = Histogram(name, help_text, labelnames, buckets)
        self._add(h)
        return h

    def to_prometheus(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        with self._lock:
            metrics = list(self._metrics.values())
        return "".join(m.exposition() for m in metrics)

    def to_json_lines(self) -> str:
        """One JSON object per sample: ``{"time", "name", "type", "labels", "value"}``."""
        now = self._clock()
        with self._lock:
            metrics = list(self._metrics.values())
        out = []
        for m in metrics:
            for name, labels, value in m.samples():
                out.append(
                    json.dumps(
                        {
                            "time": now,
                            "name": name,
                            "type": m.kind,
                            "labels": labels,
                            "value": value,
                        },
                        sort_keys=True,
                    )
                )
        return "".join(line + "\n" for line in out)


class Metrics(Registry):
    """The guarded runtime's metric set (prefix ``edgeguard_``)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock=clock)
        self.frames = self.counter("edgeguard_frames", "Frames processed", ["source"])
        self.rejects = self.counter("edgeguard_rejects", "Refused requests by reason", ["reason"])
        self.fallbacks = self.counter(
            "edgeguard_fallbacks", "Frames not answered by the full ensemble", ["source"]
        )
        self.deadline_misses = self.counter(
            "edgeguard_deadline_misses",
            "Member or fallback calls abandoned at the deadline",
            ["member"],
        )
        self.member_failures = self.counter(
            "edgeguard_member_failures", "Member abstentions by kind", ["member", "kind"]
        )
        self.state = self.gauge(
            "edgeguard_health_state", "Health state (0 NOMINAL, 1 DEGRADED, 2 FAILSAFE)"
        )
        self.quarantined = self.gauge(
            "edgeguard_member_quarantined", "1 while the member is quarantined", ["member"]
        )
        self.member_latency = self.histogram(
            "edgeguard_member_latency_seconds", "Member inference latency", ["member"]
        )
        self.frame_latency = self.histogram(
            "edgeguard_frame_latency_seconds", "End-to-end frame latency"
        )
        self.alerts = self.counter("edgeguard_abuse_alerts", "Query-pattern monitor alerts")
        self.member_info = self.gauge(
            "edgeguard_member_info",
            "Always 1: each member's signed placement (join on member)",
            ["member", "placement"],
        )

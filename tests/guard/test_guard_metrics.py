"""Metrics: Prometheus text format 0.0.4 and JSON lines, thread safety."""

from __future__ import annotations

import json
import re
import threading

import pytest

from edgeguard.guard.metrics import Metrics, Registry

SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? '
    r"(-?[0-9.e+-]+|NaN|\+Inf|-Inf)$"
)


def test_prometheus_exposition() -> None:
    m = Metrics(clock=lambda: 1.5)
    m.frames.inc(source="ensemble")
    m.frames.inc(2, source="safe_default")
    m.rejects.inc(reason='bad "quote"\nnewline\\')
    m.member_latency.observe(0.0007, member="a")
    m.member_latency.observe(0.3, member="a")
    m.state.set(2)
    text = m.to_prometheus()
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or SAMPLE.match(line), line
    assert "# TYPE edgeguard_frames_total counter" in text
    assert 'edgeguard_frames_total{source="safe_default"} 2' in text
    assert r'edgeguard_rejects_total{reason="bad \"quote\"\nnewline\\"} 1' in text
    assert 'edgeguard_member_latency_seconds_bucket{member="a",le="0.001"} 1' in text
    assert 'edgeguard_member_latency_seconds_bucket{member="a",le="0.2"} 1' in text
    assert 'edgeguard_member_latency_seconds_bucket{member="a",le="+Inf"} 2' in text
    assert 'edgeguard_member_latency_seconds_count{member="a"} 2' in text
    assert "edgeguard_health_state 2" in text
    rows = [json.loads(x) for x in m.to_json_lines().splitlines()]
    assert {
        "time": 1.5,
        "name": "edgeguard_frames_total",
        "type": "counter",
        "labels": {"source": "ensemble"},
        "value": 1.0,
    } in rows


def test_refusals() -> None:
    r = Registry()
    c = r.counter("x", "help", ["a"])
    with pytest.raises(ValueError):
        c.inc(-1, a="1")
    with pytest.raises(ValueError):
        c.inc(b="1")
    with pytest.raises(ValueError):
        r.counter("x", "again")
    with pytest.raises(ValueError):
        r.gauge("bad name", "h")
    with pytest.raises(ValueError):
        r.histogram("h", "h", ["le"])


def test_thread_safe_counts() -> None:
    m = Metrics()

    def work() -> None:
        for _ in range(2000):
            m.frames.inc(source="ensemble")
            m.member_latency.observe(0.001, member="a")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.frames.value(source="ensemble") == 8000
    assert m.member_latency.count(member="a") == 8000

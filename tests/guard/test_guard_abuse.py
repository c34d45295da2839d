"""Rate limiting, output hardening and the PRADA-style query monitor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeguard.errors import PolicyError, UsageError
from edgeguard.guard.abuse import QueryMonitor, RateLimitedError, RateLimiter, harden_outputs
from edgeguard.policy.runtime import HardeningPolicy, RateLimitPolicy

DATA = Path(__file__).resolve().parents[2] / "edgeguard" / "data" / "digits_test.npz"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_per_client() -> None:
    clk = FakeClock()
    rl = RateLimiter(RateLimitPolicy(rate_per_s=2.0, burst=3), clock=clk)
    assert [rl.allow("a") for _ in range(4)] == [True, True, True, False]
    assert rl.allow("b")  # other clients have their own bucket
    clk.t += 0.5  # one token back
    assert rl.allow("a") and not rl.allow("a")
    clk.t += 100.0  # never more than the burst
    assert sum(rl.allow("a") for _ in range(10)) == 3
    with pytest.raises(RateLimitedError) as ei:
        rl.check("a")
    assert isinstance(ei.value, PolicyError)


def test_clock_going_backwards_creates_no_tokens() -> None:
    clk = FakeClock()
    rl = RateLimiter(RateLimitPolicy(rate_per_s=1.0, burst=1), clock=clk)
    assert rl.allow("a") and not rl.allow("a")
    clk.t -= 3600.0
    assert not rl.allow("a")
    clk.t += 3600.0  # back where we were: still nothing accrued
    assert not rl.allow("a")
    clk.t += 1.0
    assert rl.allow("a")


def test_client_table_is_bounded() -> None:
    clk = FakeClock()
    rl = RateLimiter(RateLimitPolicy(rate_per_s=1.0, burst=1, max_clients=2), clock=clk)
    for c in ("a", "b", "c"):
        assert rl.allow(c)
    assert len(rl._buckets) == 2


def test_hardening_top_k_and_rounding() -> None:
    logits = np.array([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 1.0]], np.float32)
    out = harden_outputs(
        {"logits": logits, "secret": np.ones(3)},
        HardeningPolicy(output="logits", top_k=2, decimals=2),
    )
    assert set(out) == {"logits", "label"}
    p = out["logits"]
    assert ((p > 0).sum(axis=1) == 2).all()
    assert p[0, 0] == 0 and p[0, 3] == 0 and p[0, 1] > p[0, 2]
    assert np.allclose(p, np.round(p, 2))
    assert out["label"].tolist() == [1, 2]
    full = harden_outputs(
        {"logits": logits}, HardeningPolicy(output="logits", top_k=None, decimals=None)
    )
    assert np.allclose(full["logits"].sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(UsageError):
        harden_outputs({"x": logits}, HardeningPolicy(output="logits"))


def test_prada_flags_synthetic_queries_not_natural_ones() -> None:
    pytest.importorskip("scipy")
    images = np.load(DATA)["image"].reshape(-1, 64).astype(np.float64)
    mon = QueryMonitor(threshold=0.9, min_queries=60, window=200)
    honest = [mon.observe("honest", x) for x in images[:150]]
    assert not any(v.alert for v in honest)
    assert honest[-1].statistic is not None and honest[-1].statistic > 0.9
    # extraction: a few seeds, then many small perturbations of the seeds (Jacobian-style)
    rng = np.random.default_rng(0)
    verdicts = []
    for i in range(150):
        seed = images[i % 10] if i < 10 else images[rng.integers(0, 10)]
        x = seed + (0 if i < 10 else rng.normal(0, 0.02, 64))
        verdicts.append(mon.observe("attacker", x))
    new = [v for v in verdicts if v.new_alert]
    assert len(new) == 1 and verdicts[-1].alert
    assert new[0].statistic is not None and new[0].statistic < 0.9
    assert new[0].queries >= 61
    mon.reset("attacker")
    assert not mon.observe("attacker", images[0]).alert


def test_monitor_refuses_bad_config() -> None:
    with pytest.raises(UsageError):
        QueryMonitor(threshold=1.5)
    with pytest.raises(UsageError):
        QueryMonitor(min_queries=2)

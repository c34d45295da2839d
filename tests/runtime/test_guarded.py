"""GuardedRuntime: the fault matrix (hang, raise, NaN, shape, disagreement, all fail,
fallback fails, rejected input, clock jumps), quarantine, health, log, abuse, metrics,
and the real digits models through ONNX Runtime."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from edgeguard.errors import BackendError, InputRefusedError, InputRejectedError, UsageError
from edgeguard.guard.abuse import QueryMonitor, RateLimitedError
from edgeguard.guard.eventlog import EventLog, verify
from edgeguard.guard.health import HealthState, Transition
from edgeguard.policy.runtime import (
    ChainStep,
    HardeningPolicy,
    HealthPolicy,
    MemberSpec,
    QuarantinePolicy,
    RateLimitPolicy,
    RuntimePolicy,
    VoterKind,
    VoterSpec,
)
from edgeguard.runtime.guarded import FALLBACK_NAME, GuardedRuntime, ResultSource

N, D, F = HealthState.NOMINAL, HealthState.DEGRADED, HealthState.FAILSAFE
DATA = Path(__file__).resolve().parents[2] / "edgeguard" / "data"
SAFE = {"logits": np.full((1, 10), -1.0, np.float32)}
X = {"image": np.zeros((1, 1, 8, 8), np.float32)}
RELEASE = threading.Event()  # set at teardown so hung worker threads can exit


@pytest.fixture(autouse=True, scope="module")
def _release_hung_threads() -> Iterator[None]:
    yield
    RELEASE.set()


def logits_for(label: int) -> np.ndarray:
    out = np.zeros((1, 10), np.float32)
    out[0, label] = 4.0
    return out


class Good:
    def __init__(self, label: int = 3, delay_s: float = 0.0) -> None:
        self.label, self.delay_s, self.calls = label, delay_s, 0

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        return {"logits": logits_for(self.label)}


class Hang:
    def __init__(self) -> None:
        self.calls = 0

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        RELEASE.wait()
        return {"logits": logits_for(0)}


class Raise:
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


class NaN:
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"logits": np.full((1, 10), np.nan, np.float32)}


class WrongShape:
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"logits": np.zeros((1, 7), np.float32)}


class Flaky:
    """Fails while ``broken`` is set."""

    def __init__(self) -> None:
        self.broken = True

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.broken:
            raise RuntimeError("transient")
        return {"logits": logits_for(3)}


@dataclass(frozen=True)
class FakeVerdict:
    status: str

    def to_dict(self) -> dict[str, Any]:
        if self.status != "WARN":
            return {"status": self.status}
        warning = {"check": "stat.mean", "tensor": "image", "severity": "WARN", "value": 1.0}
        return {"status": self.status, "violations": [{**warning, "low": 0.2, "high": 0.6}]}


class RangeSanity:
    """Rejects inputs outside [0, 1] or non-finite; warns on exactly 1.0 everywhere."""

    counts_nonfinite_outputs = False

    def warm_up(self) -> None:
        pass

    def check_inputs(self, feeds, prev=None) -> FakeVerdict:
        x = feeds["image"]
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            return FakeVerdict("REJECT")
        return FakeVerdict("WARN" if (x == 1).all() else "PASS")

    def check_outputs(self, outputs) -> FakeVerdict:
        return FakeVerdict("REJECT" if outputs["logits"].max() > 100 else "PASS")


def policy(n: int = 3, **kw: Any) -> RuntimePolicy:
    base: dict[str, Any] = dict(
        members=tuple(MemberSpec(f"m{i}") for i in range(n)),
        voter=VoterSpec(kind=VoterKind.PLURALITY, output="logits", agreement=0.5),
        quorum=min(2, n),
        deadline_ms=60.0,
        member_budget_ms=40.0,
        safe_default=SAFE,
        health=HealthPolicy(recover_frames=3),
        quarantine=QuarantinePolicy(after_failures=2, backoff_ms=50.0, max_backoff_ms=400.0),
    )
    base.update(kw)
    return RuntimePolicy(**base)


@pytest.fixture()
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture()
def elog(tmp_path: Path, key) -> Iterator[EventLog]:
    log = EventLog(tmp_path / "events.log", signing_key=key, checkpoint_every=16)
    yield log
    log.close()


def kinds(log: EventLog, key) -> list[dict[str, Any]]:
    recs = [json.loads(x) for x in log.path.read_bytes().splitlines()]
    verify(log.path, key.public_key())
    return [r for r in recs if r["kind"] not in ("log_open", "checkpoint")]


def make(members: dict[str, Any], pol: RuntimePolicy | None = None, **kw: Any) -> GuardedRuntime:
    return GuardedRuntime(members, policy=pol or policy(len(members)), **kw)


MARGIN_MS = 25.0  # scheduling slack on a shared 2-core CI machine; measured figures in the bench


def timed(rt: GuardedRuntime, feeds: Mapping[str, np.ndarray] = X, **kw: Any):
    t = time.perf_counter()
    r = rt.infer(feeds, **kw)
    return r, (time.perf_counter() - t) * 1e3


# ----------------------------------------------------------------------------- nominal


def test_nominal_ensemble(elog, key) -> None:
    with make({"m0": Good(), "m1": Good(), "m2": Good()}, event_log=elog, async_log=False) as rt:
        r = rt.infer(X)
    assert r.source is ResultSource.ENSEMBLE and r.health is N and r.reasons == ()
    assert r.outputs["label"].tolist() == [3] and r.members == ("m0", "m1", "m2")
    for k in ("admission", "input_checks", "members", "member:m0", "vote", "total"):
        assert k in r.latency_ms
    assert r.seq == 0
    assert kinds(elog, key) == []  # nothing to report on a nominal frame


def test_members_must_match_policy() -> None:
    with pytest.raises(UsageError):
        make({"m0": Good(), "x": Good()}, policy(2))
    with pytest.raises(UsageError, match="not runnable"):
        make({"m0": Good(), "m1": object()}, policy(2))
    with pytest.raises(UsageError, match="not runnable"):
        make({"m0": Good(), "m1": Good()}, policy(2), fallback=lambda feeds: feeds)


# ----------------------------------------------------------------------------- faults


def test_member_hangs_forever(elog, key) -> None:
    hang = Hang()
    rt = make({"m0": Good(), "m1": Good(), "m2": hang}, event_log=elog, async_log=False)
    r, ms = timed(rt)
    assert ms < 60.0 + MARGIN_MS
    assert r.source is ResultSource.ENSEMBLE and r.members == ("m0", "m1")
    assert r.health is D and "m2: timeout" in r.reasons
    assert rt.quarantined() == ("m2",)
    # quarantined: skipped, no waiting
    r2, ms2 = timed(rt)
    assert ms2 < 30.0 and "m2: quarantined" in r2.reasons and hang.calls == 1
    time.sleep(0.06)  # backoff 50 ms elapses: retried on a fresh worker, hangs again
    r3, _ = timed(rt)
    assert hang.calls == 2 and "m2: timeout" in r3.reasons
    assert rt._executor.abandoned("m2") == 2  # type: ignore[attr-defined]
    recs = kinds(elog, key)
    q = [x for x in recs if x["kind"] == "member_quarantined"]
    assert q[0]["data"]["member"] == "m2" and q[1]["data"]["retry_in_ms"] == 100.0
    assert any(x["kind"] == "state_change" and x["data"]["to"] == "DEGRADED" for x in recs)
    assert rt.metrics.deadline_misses.value(member="m2") == 2
    rt.close()


def test_member_raises_then_quarantined(elog, key) -> None:
    rt = make({"m0": Good(), "m1": Good(), "m2": Raise()}, event_log=elog, async_log=False)
    r = rt.infer(X)
    assert r.source is ResultSource.ENSEMBLE and r.health is D and "m2: error" in r.reasons
    assert rt.quarantined() == ()
    rt.infer(X)
    assert rt.quarantined() == ("m2",)  # after_failures = 2
    detail = next(x for x in kinds(elog, key) if x["kind"] == "member_failed")["data"]["detail"]
    assert "illegal memory access" in detail
    rt.close()


@pytest.mark.parametrize(("bad", "kind"), [(NaN(), "nonfinite"), (WrongShape(), "shape")])
def test_bad_outputs_abstain(bad: Any, kind: str) -> None:
    rt = make({"m0": Good(), "m1": Good(), "m2": bad})
    r = rt.infer(X)
    assert r.source is ResultSource.ENSEMBLE and f"m2: {kind}" in r.reasons
    assert r.members == ("m0", "m1") and r.health is D
    rt.close()
    # with declared output shapes the check needs no majority
    rt = make(
        {"m0": Good(), "m1": WrongShape()}, policy(2, quorum=1, output_shapes={"logits": (-1, 10)})
    )
    r = rt.infer(X)
    assert r.source is ResultSource.SINGLE_MEMBER and "m1: shape" in r.reasons
    rt.close()


def test_disagreement_is_a_fault(elog, key) -> None:
    pol = policy(3, voter=VoterSpec(kind=VoterKind.MAJORITY, output="logits"))
    rt = make(
        {"m0": Good(1), "m1": Good(2), "m2": Good(3)},
        pol,
        fallback=Good(7),
        event_log=elog,
        async_log=False,
    )
    r = rt.infer(X)
    assert r.source is ResultSource.FALLBACK_MODEL and r.outputs["logits"][0, 7] == 4.0
    # the fallback's answer has the voted answer's outputs: "label" too
    assert r.outputs["label"].tolist() == [7]
    assert r.health is F and any("no majority" in x for x in r.reasons)
    assert any(x["kind"] == "disagreement" for x in kinds(elog, key))
    rt.close()


def test_all_members_fail_fallback_model_answers(elog, key) -> None:
    rt = make(
        {"m0": Raise(), "m1": NaN(), "m2": Hang()},
        fallback=Good(5),
        event_log=elog,
        async_log=False,
    )
    r, ms = timed(rt)
    assert r.source is ResultSource.FALLBACK_MODEL and r.members == (FALLBACK_NAME,)
    assert r.health is F and ms < 60.0 + MARGIN_MS
    assert rt.metrics.fallbacks.value(source="fallback_model") == 1
    assert [x["data"]["source"] for x in kinds(elog, key) if x["kind"] == "fallback"] == [
        "fallback_model"
    ]
    rt.close()


def test_fallback_also_fails_last_known_good_then_safe_default(elog, key) -> None:
    flaky = Flaky()
    flaky.broken = False
    pol = policy(
        1,
        quorum=1,
        last_known_good_max_age_ms=150.0,
        quarantine=QuarantinePolicy(after_failures=1, backoff_ms=0.0),
    )
    # ages read an injected clock that stands still unless the test moves it (deadlines
    # still run on real time): a loaded machine cannot age the answer by itself
    now = [time.monotonic_ns()]
    rt = make(
        {"m0": flaky}, pol, fallback=Hang(), event_log=elog, async_log=False, clock=lambda: now[0]
    )
    first = rt.infer(X)
    assert first.source is ResultSource.SINGLE_MEMBER
    flaky.broken = True
    r, ms = timed(rt)
    assert r.source is ResultSource.LAST_KNOWN_GOOD and ms < 60.0 + MARGIN_MS
    assert np.array_equal(r.outputs["logits"], first.outputs["logits"])
    assert "fallback model: timeout" in r.reasons and r.health is F
    now[0] += 160_000_000  # last-known-good now too old
    r, ms = timed(rt)
    assert r.source is ResultSource.SAFE_DEFAULT and np.array_equal(
        r.outputs["logits"], SAFE["logits"]
    )
    assert any("too old" in x for x in r.reasons) and ms < 60.0 + MARGIN_MS
    rt.close()


def test_chain_without_safe_default_can_be_exhausted() -> None:
    pol = policy(1, quorum=1, fallback_chain=(ChainStep.ENSEMBLE, ChainStep.LAST_KNOWN_GOOD))
    rt = make({"m0": Raise()}, pol)
    with pytest.raises(BackendError, match="no step"):
        rt.infer(X)
    assert rt.health is F
    rt.close()


def test_input_rejected_by_sanity(elog, key) -> None:
    members = {"m0": Good(), "m1": Good(), "m2": Good()}
    rt = make(members, sanity=RangeSanity(), fallback=Good(9), event_log=elog, async_log=False)
    ok = rt.infer(X)
    bad = {"image": np.full((1, 1, 8, 8), 7.0, np.float32)}
    r = rt.infer(bad)
    assert r.source is ResultSource.LAST_KNOWN_GOOD  # no model ran on the bad input
    assert np.array_equal(r.outputs["logits"], ok.outputs["logits"])
    assert members["m0"].calls == 1 and r.health is F
    assert "input rejected" in r.reasons
    assert rt.metrics.rejects.value(reason="input_sanity") == 1
    assert [x["kind"] for x in kinds(elog, key)][:1] == ["input_rejected"]
    warn = rt.infer({"image": np.ones((1, 1, 8, 8), np.float32)})
    # the warning names the check, like a rejection does
    assert "input sanity warning: stat.mean image: 1 outside [0.2, 0.6]" in warn.reasons
    assert warn.source is ResultSource.ENSEMBLE
    rt.close()
    rt = make(dict(members), policy(3, reject_action="raise"), sanity=RangeSanity())
    with pytest.raises(InputRejectedError):
        rt.infer(bad)
    assert rt.health is D
    rt.close()


def test_speculative_members_run_during_input_checks() -> None:
    members = {"m0": Good(), "m1": Good(), "m2": Good()}
    rt = make(members, policy(3, speculative=True), sanity=RangeSanity())
    assert rt.infer(X).source is ResultSource.ENSEMBLE
    r = rt.infer({"image": np.full((1, 1, 8, 8), np.nan, np.float32)})
    # the models saw the bad input, but their answers were discarded
    assert members["m0"].calls == 2 and r.source is ResultSource.LAST_KNOWN_GOOD
    assert r.reasons == ("input rejected",)
    rt.close()


def test_output_sanity_reject_abstains() -> None:
    class Huge:
        def run(self, feeds):
            return {"logits": np.full((1, 10), 1e6, np.float32)}

    rt = make({"m0": Good(), "m1": Good(), "m2": Huge()}, sanity=RangeSanity())
    r = rt.infer(X)
    assert "m2: output_check" in r.reasons and r.members == ("m0", "m1")
    rt.close()


# ----------------------------------------------------------------------------- clocks


class JumpClock:
    """A monotonic-ns clock that can be made to jump (suspend/resume, bad injection)."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return time.monotonic_ns() + self.offset


def test_wall_clock_jump_does_not_matter(tmp_path: Path, key) -> None:
    wall = [1_700_000_000.0]
    log = EventLog(tmp_path / "j.log", signing_key=key, clock=lambda: wall[0])
    rt = make({"m0": Good(), "m1": Good(), "m2": Raise()}, event_log=log, async_log=False)
    rt.infer(X)
    wall[0] -= 86400 * 365  # wall clock jumps a year back
    r, ms = timed(rt)
    assert r.source is ResultSource.ENSEMBLE and ms < 60.0 + MARGIN_MS
    rt.close()
    log.close()
    assert verify(log.path, key.public_key(), require_clean=True).kinds["member_failed"] == 2


def test_monotonic_clock_jump_backwards_cannot_extend_a_wait() -> None:
    clk = JumpClock()

    class JumpThenHang:
        def run(self, feeds):
            clk.offset -= 3600 * 10**9  # clock jumps an hour back during the frame
            RELEASE.wait()
            return {}

    rt = make({"m0": Good(), "m1": JumpThenHang()}, policy(2, quorum=1), clock=clk)
    r, ms = timed(rt)
    assert ms < 60.0 + MARGIN_MS and r.source is ResultSource.SINGLE_MEMBER
    rt.close()


def test_monotonic_clock_jump_forward_fails_safe() -> None:
    clk = JumpClock()

    class JumpForward:
        def run(self, feeds):
            clk.offset += 3600 * 10**9  # e.g. resume after suspend mid-frame
            time.sleep(0.005)
            return {"logits": logits_for(3)}

    rt = make(
        {"m0": Good(delay_s=0.01), "m1": JumpForward()},
        policy(2, quorum=2),
        clock=clk,
        fallback=Good(4),
    )
    rt.infer({"image": X["image"]})  # warm: sets last-known-good? (may or may not)
    r, ms = timed(rt)
    assert ms < 60.0 + MARGIN_MS
    assert r.source in (
        ResultSource.FALLBACK_MODEL,
        ResultSource.SAFE_DEFAULT,
        ResultSource.LAST_KNOWN_GOOD,
    )
    assert r.health is F
    rt.close()


# ----------------------------------------------------------------------------- health, quarantine


def test_health_hysteresis_and_callbacks(elog, key) -> None:
    seen: list[Transition] = []
    flaky = Flaky()
    rt = make(
        {"m0": flaky},
        policy(1, quorum=1, quarantine=QuarantinePolicy(after_failures=100)),
        event_log=elog,
        async_log=False,
    )
    rt.on_transition(seen.append)
    assert rt.infer(X).source is ResultSource.SAFE_DEFAULT and rt.health is F
    flaky.broken = False
    states = [rt.infer(X).health for _ in range(6)]
    assert states == [F, F, D, D, D, N]
    assert [(t.old, t.new) for t in seen] == [(N, F), (F, D), (D, N)]
    sc = [x["data"] for x in kinds(elog, key) if x["kind"] == "state_change"]
    assert [(s["from"], s["to"]) for s in sc] == [
        ("NOMINAL", "FAILSAFE"),
        ("FAILSAFE", "DEGRADED"),
        ("DEGRADED", "NOMINAL"),
    ]
    assert rt.metrics.state.value() == 0
    rt.close()


def test_quarantine_backoff_and_release(elog, key) -> None:
    flaky = Flaky()
    rt = make({"m0": Good(), "m1": Good(), "m2": flaky}, event_log=elog, async_log=False)
    rt.infer(X)
    rt.infer(X)
    assert rt.quarantined() == ("m2",)
    time.sleep(0.06)
    rt.infer(X)  # retry fails: backoff doubles
    flaky.broken = False
    rt.infer(X)
    assert rt.quarantined() == ("m2",)  # still waiting out 100 ms
    time.sleep(0.11)
    r = rt.infer(X)
    assert rt.quarantined() == () and r.members == ("m0", "m1", "m2")
    recs = kinds(elog, key)
    assert [x["data"]["retry_in_ms"] for x in recs if x["kind"] == "member_quarantined"] == [
        50.0,
        100.0,
    ]
    assert any(x["kind"] == "member_released" for x in recs)
    rt.close()


def test_member_retired_after_too_many_hung_workers(elog, key) -> None:
    pol = policy(
        2,
        quorum=1,
        quarantine=QuarantinePolicy(backoff_ms=0.0, max_abandoned_workers=1),
        deadline_ms=20.0,
        member_budget_ms=15.0,
    )
    rt = make({"m0": Good(), "m1": Hang()}, pol, event_log=elog, async_log=False)
    for _ in range(4):
        rt.infer(X)
    assert rt._states["m1"].retired  # type: ignore[attr-defined]
    assert rt._executor.abandoned("m1") == 2  # type: ignore[attr-defined]
    assert any(x["kind"] == "member_retired" for x in kinds(elog, key))
    rt.close()


# ----------------------------------------------------------------------------- switching, abuse


def test_model_switching_spreads_over_healthy_members() -> None:
    import random

    members = {"m0": Good(), "m1": Good(), "m2": Raise()}
    rt = make(
        members,
        policy(
            3,
            model_switching=True,
            quarantine=QuarantinePolicy(after_failures=1, backoff_ms=10_000.0),
        ),
        rng=random.Random(7),
    )
    sources = [rt.infer(X) for _ in range(60)]
    assert members["m0"].calls > 10 and members["m1"].calls > 10
    ok = [r for r in sources if r.source is ResultSource.SINGLE_MEMBER]
    assert len(ok) >= 59 and all(len(r.members) == 1 for r in ok)
    assert rt.quarantined() == ("m2",)
    rt.close()


def test_rate_limit_and_hardening(elog, key) -> None:
    pol = policy(
        3,
        rate_limit=RateLimitPolicy(rate_per_s=0.001, burst=2),
        hardening=HardeningPolicy(output="logits", top_k=1, decimals=1),
    )
    rt = make({"m0": Good(), "m1": Good(), "m2": Good()}, pol, event_log=elog, async_log=False)
    r = rt.infer(X, client_id="c1")
    assert set(r.outputs) == {"logits", "label"} and (r.outputs["logits"] > 0).sum() == 1
    assert np.allclose(r.outputs["logits"], np.round(r.outputs["logits"], 1))
    rt.infer(X, client_id="c1")
    with pytest.raises(RateLimitedError):
        rt.infer(X, client_id="c1")
    rt.infer(X)  # the local pipeline is not rate limited
    assert rt.metrics.rejects.value(reason="rate_limited") == 1
    assert [x["data"]["client"] for x in kinds(elog, key) if x["kind"] == "rate_limited"] == ["c1"]
    rt.close()


def test_query_monitor_alert_goes_to_log(elog, key) -> None:
    pytest.importorskip("scipy")
    mon = QueryMonitor(threshold=0.9, min_queries=20, window=60)
    rt = make({"m0": Good(), "m1": Good(), "m2": Good()}, monitor=mon, event_log=elog)
    rng = np.random.default_rng(1)
    seed = rng.random((1, 1, 8, 8)).astype(np.float32)
    for _ in range(40):
        rt.infer(
            {"image": seed + rng.normal(0, 1e-3, seed.shape).astype(np.float32)}, client_id="thief"
        )
    rt.infer({"image": rng.random((1, 1, 8, 8)).astype(np.float32)}, client_id="thief")
    assert rt.flush_events()
    alerts = [x for x in kinds(elog, key) if x["kind"] == "abuse_alert"]
    assert len(alerts) == 1 and alerts[0]["data"]["client"] == "thief"
    assert rt.metrics.alerts.value() == 1
    rt.close()


def test_async_log_flush_and_metrics_export(elog, key) -> None:
    rt = make({"m0": Raise(), "m1": Good(), "m2": Good()}, event_log=elog)
    for _ in range(5):
        rt.infer(X)
    assert rt.flush_events()
    assert sum(x["kind"] == "member_failed" for x in kinds(elog, key)) == 2  # then quarantined
    text = rt.metrics.to_prometheus()
    assert 'edgeguard_member_failures_total{member="m0",kind="error"} 2' in text
    assert 'edgeguard_frames_total{source="ensemble"} 5' in text
    rt.close()
    with pytest.raises(UsageError):
        rt.infer(X)


# ----------------------------------------------------------------------------- real models


class OrtMember:
    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(
            path.read_bytes(), opts, providers=["CPUExecutionProvider"]
        )
        self.names = [o.name for o in self.sess.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.sess.run(None, dict(feeds)), strict=True))


@pytest.mark.skipif(not (DATA / "digits_mlp.onnx").exists(), reason="digits models not built")
def test_real_digits_ensemble_with_a_hung_member(elog, key) -> None:
    pytest.importorskip("onnxruntime")
    d = np.load(DATA / "digits_test.npz")
    images, labels = d["image"][:120], d["label"][:120]
    mlp = DATA / "digits_mlp.onnx"
    logreg = DATA / "digits_logreg.onnx"
    pol = policy(
        3,
        voter=VoterSpec(kind=VoterKind.SOFT, output="logits", agreement=0.3),
        output_shapes={"logits": (-1, 10)},
    )
    rt = make(
        {"m0": OrtMember(mlp), "m1": OrtMember(mlp), "m2": OrtMember(logreg)},
        pol,
        fallback=OrtMember(logreg),
        event_log=elog,
    )
    res = [rt.infer({"image": images[i : i + 1]}) for i in range(len(images))]
    acc = np.mean([r.outputs["label"][0] == y for r, y in zip(res, labels, strict=True)])
    assert acc >= 0.95 and all(r.source is ResultSource.ENSEMBLE for r in res)
    rt.close()

    class HangingOrt(OrtMember):
        def run(self, feeds):
            RELEASE.wait()
            return {}

    pol1 = policy(
        1,
        quorum=1,
        deadline_ms=60.0,
        member_budget_ms=20.0,  # the fallback model gets 40 ms: room on a busy shared CPU
        quarantine=QuarantinePolicy(backoff_ms=0.0, max_abandoned_workers=100),
    )
    rt = make({"m0": HangingOrt(mlp)}, pol1, fallback=OrtMember(logreg), event_log=elog)
    times = []
    for i in range(20):
        r, ms = timed(rt, {"image": images[i : i + 1]})
        times.append(ms)
        assert r.source is ResultSource.FALLBACK_MODEL
        assert r.outputs["logits"].shape == (1, 10)
    assert max(times) < 60.0 + MARGIN_MS
    rt.close()


@pytest.mark.parametrize("checker", ["edgeguard", "foreign"])
def test_nonfinite_outputs_caught_with_any_checker(checker: str) -> None:
    # SanityGuard counts NaN/inf itself (the runtime skips its own scan); any other
    # checker, here one that passes everything, gets the runtime's scan.
    from edgeguard.guard.sanity import SanityGuard
    from edgeguard.packaging.calibrate import calibrate_stats_only

    class PassAll:
        counts_nonfinite_outputs = False

        def warm_up(self) -> None:
            pass

        def check_inputs(self, feeds, prev=None) -> FakeVerdict:
            return FakeVerdict("PASS")

        def check_outputs(self, outputs) -> FakeVerdict:
            return FakeVerdict("PASS")

    rng = np.random.default_rng(0)
    calib = {"image": rng.random((64, 1, 8, 8)).astype(np.float32)}
    sanity: Any = (
        SanityGuard(calibrate_stats_only(calib), threads=1) if checker == "edgeguard" else PassAll()
    )
    assert isinstance(sanity, SanityGuard) == (checker == "edgeguard")
    rt = make({"m0": Good(), "m1": Good(), "m2": NaN()}, sanity=sanity)
    r = rt.infer({"image": calib["image"][:1]})
    assert r.source is ResultSource.ENSEMBLE and "m2: nonfinite" in r.reasons, r.reasons
    assert r.members == ("m0", "m1")
    rt.close()


# ----------------------------------------------------------------------------- single model


def test_a_single_model_policy_passes_every_output_through() -> None:
    class Two:
        def run(self, feeds):
            return {"logits": logits_for(4), "embedding": np.ones((1, 3), np.float32)}

    pol = RuntimePolicy.single("m")
    assert (pol.voter.kind, pol.fallback_chain, pol.reject_action) == (
        VoterKind.PASSTHROUGH,
        (ChainStep.ENSEMBLE,),
        "raise",
    )
    rt = make({"m": Two()}, pol)
    r = rt.infer(X)
    assert set(r.outputs) == {"logits", "embedding"}  # no "label", nothing dropped
    assert (r.source, r.health, r.reasons) == (ResultSource.SINGLE_MEMBER, N, ())
    rt.close()
    rt = make({"m": Raise()}, pol)
    with pytest.raises(BackendError, match="could answer: m: error") as info:
        rt.infer(X)
    assert "deadline" not in str(info.value)  # nothing waited: the deadline is not the cause
    rt.close()
    import dataclasses

    rt = make({"m": Hang()}, dataclasses.replace(pol, deadline_ms=40.0))
    with pytest.raises(BackendError, match="within the 40 ms deadline: m: timeout"):
        rt.infer(X)
    rt.close()


def test_a_rejected_frame_no_step_answers_is_an_input_error(elog, key) -> None:
    """Nothing for a rejected input: the error says the input, not the backend, was at fault."""
    pol = policy(
        3, fallback_chain=(ChainStep.ENSEMBLE, ChainStep.QUORUM, ChainStep.LAST_KNOWN_GOOD)
    )
    rt = make(
        {"m0": Good(), "m1": Good(), "m2": Good()},
        pol,
        sanity=RangeSanity(),
        event_log=elog,
        async_log=False,
    )
    with pytest.raises(InputRejectedError, match="frame 0: input rejected") as info:
        rt.infer({"image": np.full((1, 1, 8, 8), 7.0, np.float32)})
    assert info.value.verdict == {"status": "REJECT"}
    assert rt.health is D  # the input was bad, not the system
    assert [x["kind"] for x in kinds(elog, key)][:2] == ["input_rejected", "chain_exhausted"]
    rt.close()


def test_describe_verdict_names_the_first_violations_in_four_digits() -> None:
    from edgeguard.runtime.guarded import describe_verdict

    v = {"check": "stat.mean", "tensor": "x", "severity": "REJECT", "frame": 2, "channel": 1}
    detail = {
        "violations": [
            {**v, "value": 0.123456789, "low": 0.0, "high": 0.1},
            {"check": "input.dtype", "tensor": "x", "severity": "REJECT", "detail": "dtype f8"},
            {"check": "stat.hf", "tensor": "x", "severity": "WARN", "detail": "ignored"},
        ]
    }
    assert describe_verdict(detail) == (
        "stat.mean x[2, c1]: 0.1235 outside [0, 0.1]; input.dtype x: dtype f8"
    )
    assert describe_verdict(detail, limit=1).endswith("(+1 more)")
    assert describe_verdict({"status": "REJECT"}) == ""


def test_a_sole_quarantined_member_is_asked_anyway_when_nothing_else_could_answer() -> None:
    """One model, no fallback model: skipping the quarantined member is a certain miss,
    so it is asked (half-open) and answers as soon as it works again; with a fallback
    model it waits out its backoff."""
    flaky = Flaky()
    single = RuntimePolicy(
        members=(MemberSpec("m0"),),
        voter=VoterSpec(kind=VoterKind.PASSTHROUGH, output=""),
        quorum=1,
        deadline_ms=60.0,
        fallback_chain=(ChainStep.ENSEMBLE,),
        quarantine=QuarantinePolicy(after_failures=1, backoff_ms=10_000.0),
    )
    with make({"m0": flaky}, single) as rt:
        with pytest.raises(BackendError):
            rt.infer(X)
        assert rt.quarantined() == ("m0",)
        flaky.broken = False
        r = rt.infer(X)
        assert r.source is ResultSource.SINGLE_MEMBER and r.outputs["logits"][0, 3] == 4.0
        assert "m0: quarantined, asked anyway (no other member answers)" in r.reasons
        assert rt.quarantined() == ()
    flaky.broken = True
    pol = policy(1, quorum=1, quarantine=QuarantinePolicy(after_failures=1, backoff_ms=10_000.0))
    with make({"m0": flaky}, pol, fallback=Good(5)) as rt:
        assert rt.infer(X).source is ResultSource.FALLBACK_MODEL
        flaky.broken = False
        r = rt.infer(X)  # the fallback answers; the member waits out its backoff
        assert r.source is ResultSource.FALLBACK_MODEL and "m0: quarantined" in r.reasons


class _RaisingWait:
    """A call whose wait raises, as a broken or hostile executor's might."""

    def wait(self, timeout_s: float) -> bool:
        raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")

    def result(self) -> dict[str, np.ndarray]:
        raise AssertionError("never asked")

    @property
    def run_ns(self) -> int | None:
        return None


class _OneBrokenMember:
    """Threads for every call but member m0's, whose call raises when waited on."""

    def __init__(self, runnables: dict[str, Any]) -> None:
        from edgeguard.runtime.threads import ThreadMemberExecutor

        self.inner = ThreadMemberExecutor(runnables)
        self.abandoned: list[str] = []

    def submit(self, name: str, feeds: Mapping[str, np.ndarray]) -> Any:
        return _RaisingWait() if name == "m0" else self.inner.submit(name, feeds)

    def abandon(self, name: str) -> None:
        self.abandoned.append(name)
        self.inner.abandon(name)

    def close(self) -> None:
        self.inner.close()


def test_a_call_that_raises_while_waited_on_is_the_members_fault(elog, key) -> None:
    members = {"m0": Good(), "m1": Good()}
    ex = _OneBrokenMember({**members, FALLBACK_NAME: Good(5)})
    rt = make(
        members,
        policy(2, quorum=1),
        fallback=Good(5),
        executor=ex,
        event_log=elog,
        async_log=False,
    )
    r = rt.infer(X)
    assert r.source is ResultSource.SINGLE_MEMBER and r.members == ("m1",)
    assert r.health is D and "m0: error" in r.reasons and ex.abandoned == ["m0"]
    failed = [x["data"] for x in kinds(elog, key) if x["kind"] == "member_failed"]
    assert [(f["member"], f["kind"]) for f in failed] == [("m0", "error")]
    assert "RecursionError" in failed[0]["detail"]
    rt.close()


class RefuseInput:
    """An in-process model whose own input validation refuses the request."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        raise UsageError("input 'image' must have shape (1, 1, 8, 8), got (1, 1, 9, 9)")


def test_an_input_every_model_refuses_is_the_inputs_fault(elog, key) -> None:
    """Not a backend error: its own class and exit code, the members stay healthy."""
    pol = policy(
        2,
        quorum=1,
        quarantine=QuarantinePolicy(after_failures=1, backoff_ms=50.0),
        fallback_chain=(ChainStep.ENSEMBLE, ChainStep.FALLBACK_MODEL, ChainStep.LAST_KNOWN_GOOD),
    )
    members = {"m0": RefuseInput(), "m1": RefuseInput()}
    rt = make(members, pol, fallback=RefuseInput(), event_log=elog, async_log=False)
    with pytest.raises(InputRefusedError, match=r"frame 0: .* the models refused it: m0: ") as info:
        rt.infer(X)
    assert info.value.exit_code == 14 and isinstance(info.value, InputRejectedError)
    assert info.value.verdict is not None
    assert [(v["check"], v["tensor"]) for v in info.value.verdict["violations"]] == [
        ("model.refused", "m0"),
        ("model.refused", "m1"),
        ("model.refused", "fallback model"),
    ]
    assert rt.health is D and rt.quarantined() == ()  # the input was bad, not the models
    assert rt.metrics.member_failures.value(member="m0", kind="input_refused") == 1
    assert [x["kind"] for x in kinds(elog, key)][-2:] == ["chain_exhausted", "state_change"]
    with pytest.raises(InputRefusedError):
        rt.infer(X)
    assert members["m0"].calls == 2  # asked again: a refusal is no quarantine
    rt.close()


def test_a_refusal_with_another_failure_is_a_backend_error_and_a_safe_default_answers() -> None:
    pol = policy(
        2,
        quorum=1,
        fallback_chain=(ChainStep.ENSEMBLE, ChainStep.QUORUM, ChainStep.LAST_KNOWN_GOOD),
    )
    rt = make({"m0": RefuseInput(), "m1": Raise()}, pol)
    with pytest.raises(BackendError, match="no step of the fallback chain") as info:
        rt.infer(X)
    assert not isinstance(info.value, InputRejectedError)
    rt.close()
    rt = make({"m0": RefuseInput(), "m1": RefuseInput()}, policy(2, quorum=1))
    r = rt.infer(X)
    assert r.source is ResultSource.SAFE_DEFAULT and "m0: input_refused" in r.reasons
    rt.close()

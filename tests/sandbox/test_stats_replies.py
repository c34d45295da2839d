"""A worker's device sanity statistics: the record in its answer is read as strictly as the
rest of the reply, and a malformed one is a worker fault (the call fails, the worker is
killed and restarted), never a crash and never statistics the guard believes.

The workers run FakeTensorRT (``tests/runtime/fake_trt.py``): its plans run on ONNX Runtime
and its device check is the NumPy reference on the host. Nothing here ran on a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeguard import data
from edgeguard.errors import BackendError, InputRejectedError
from edgeguard.guard.checks import FrameChecks
from edgeguard.guard.eventlog import EventLog
from edgeguard.guard.sanity.check import SanityGuard
from edgeguard.guard.sanity.reference import reference_stats
from edgeguard.policy.runtime import RuntimePolicy
from edgeguard.runtime.devicestats import DeviceCheckSpec, stats_from_record
from edgeguard.runtime.guarded import GuardedRuntime
from edgeguard.runtime.sandbox import HostCapabilities, SandboxPolicy
from edgeguard.runtime.sandbox.executor import ProcessMemberExecutor, WorkerSpec
from edgeguard.runtime.sandbox.replies import BadReplyError, read_run_reply, read_stats
from edgeguard.runtime.sandbox.worker import MAX_STATS_HEX, pack_stats
from tests.runtime.test_devicestats import BAD, GOOD, IO, profile
from tests.sandbox.conftest import ROOT, need, records

FAKE = "tests.runtime.fake_trt"
X = np.random.default_rng(1).random((2, 3, 4, 5)).astype(np.float32)  # N=2, C=3, plane 20


def record() -> dict[str, Any]:
    got = pack_stats(reference_stats(X, layout="NCHW"))
    assert got is not None
    return got


def read(raw: Any) -> dict[str, np.ndarray]:
    return read_stats(raw, frames=2, channels=3, plane=20)


def test_a_record_round_trips_bit_for_bit() -> None:
    want = reference_stats(X, layout="NCHW")
    got = stats_from_record(read(record()), DeviceCheckSpec("x", "NCHW", None, None), X.dtype)
    for k in ("nan", "posinf", "neginf", "count", "min", "max", "mean", "std", "hf"):
        np.testing.assert_array_equal(getattr(got, k), getattr(want, k))
    assert got.tdiff is None and got.sat_hi_level == 1.0


def _hex(arr: np.ndarray) -> str:
    return arr.tobytes().hex()


def _with(**parts: Any) -> dict[str, Any]:
    """The record of X with some int64/float64 sections replaced."""
    st = reference_stats(X, layout="NCHW")
    sec = {
        "nan": st.nan,
        "posinf": st.posinf,
        "neginf": st.neginf,
        "count": st.count,
        **{k: getattr(st, k) for k in ("min", "max", "mean", "std", "sat_lo", "sat_hi", "hf")},
    }
    sec.update(parts)
    ints = [np.asarray(sec[k], "<i8").ravel() for k in ("nan", "posinf", "neginf", "count")]
    fl = [
        np.asarray(sec[k], "<f8").ravel()
        for k in ("min", "max", "mean", "std", "sat_lo", "sat_hi", "hf")
    ]
    return {"n": 2, "c": 3, "data": "".join(_hex(a) for a in ints + fl)}


MALFORMED: dict[str, tuple[Any, str]] = {
    "not an object": ([1, 2], "not exactly"),
    "extra key": ({**record(), "tdiff": None}, "not exactly"),
    "missing key": ({"n": 2, "c": 3}, "not exactly"),
    "other frames": ({**record(), "n": 3}, "not 2x3"),
    "other channels": ({**record(), "c": 1}, "not 2x3"),
    "bool frames": ({**record(), "n": True, "c": 3}, "not 2x3"),
    "short data": ({**record(), "data": record()["data"][:-2]}, "input's size"),
    "long data": ({**record(), "data": record()["data"] + "00"}, "input's size"),
    "data not a string": ({**record(), "data": 7}, "input's size"),
    "upper-case hex": ({**record(), "data": record()["data"].upper()}, "lowercase hex"),
    "not hex": ({**record(), "data": "zz" + record()["data"][2:]}, "lowercase hex"),
    "negative count": (_with(count=np.full((2, 3), -1)), "counts do not fit"),
    "count above the plane": (_with(count=np.full((2, 3), 21)), "counts do not fit"),
    "huge NaN counts": (
        _with(nan=np.full(2, 2**62), posinf=np.full(2, 2**62)),
        "counts do not fit",
    ),
    "more values than the frame": (_with(nan=np.full(2, 1)), "counts do not fit"),
    "sat above 1": (_with(sat_hi=np.full((2, 3), 1.5)), "sat_hi is not a fraction"),
    "sat NaN": (_with(sat_lo=np.full((2, 3), np.nan)), "sat_lo is not a fraction"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_every_malformed_record_is_refused_with_one_error(kind: str) -> None:
    raw, match = MALFORMED[kind]
    with pytest.raises(BadReplyError, match=match):
        read(raw)


def test_a_record_no_message_could_hold_is_refused_unread() -> None:
    n = MAX_STATS_HEX // (16 * 27) + 1  # C=3: 27 words per frame
    raw = {"n": n, "c": 3, "data": "0" * (16 * 27 * n)}
    with pytest.raises(BadReplyError, match="input's size"):
        read_stats(raw, frames=n, channels=3, plane=20)


def test_the_worker_sends_no_record_a_message_cannot_hold() -> None:
    big = np.zeros((2000, 3, 2, 2), np.float32)
    assert pack_stats(reference_stats(big, layout="NCHW")) is None


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        ({"ok": True, "outputs": [], "stats": [1]}, "'stats' is not an object"),
        ({"ok": False, "error": "x", "stats": {}}, "no 'outputs' or 'stats'"),
        ({"ok": True, "outputs": [], "stats": {"n": 1.5}}, "fraction or an exponent"),
    ],
)
def test_the_reply_schema_places_the_record(reply: dict[str, Any], match: str) -> None:
    with pytest.raises(BadReplyError, match=match):
        read_run_reply(json.dumps(reply).encode())


# --------------------------------------------------------------------------- live workers


def spec(factory: str = "device_check", **kw: Any) -> WorkerSpec:
    return WorkerSpec(
        fake_plan(),
        fmt="trt-engine",
        options={"plan_loader": f"{FAKE}:load", "device_id": 0, "dla_core": None},
        python_path=(str(ROOT),),
        outputs=IO.outputs,
        device_check=DeviceCheckSpec("image", "NCHW", 0.0, 1.0, factory=f"{FAKE}:{factory}"),
        **kw,
    )


def fake_plan() -> bytes:
    from tests.runtime import fake_trt

    return fake_trt.MAGIC + Path(data.model_path("digits_mlp")).read_bytes()


def test_a_worker_sends_the_statistics_of_what_it_was_fed(caps: HostCapabilities) -> None:
    need(caps, "seccomp")
    with ProcessMemberExecutor({"m": spec()}, policy=SandboxPolicy(), io_bytes=1 << 20) as ex:
        assert ex.device_check("m") == "active"
        call = ex.submit("m", {"image": GOOD})
        assert call.wait(30.0)
        assert call.result()["logits"].shape == (1, 10)
        stats = call.device_stats
    assert stats is not None
    want = reference_stats(GOOD, layout="NCHW", sat_lo=0.0, sat_hi=1.0)
    np.testing.assert_array_equal(stats["image"].mean, want.mean)
    np.testing.assert_array_equal(stats["image"].count, want.count)


def test_a_worker_without_the_kernel_says_why_and_sends_none(caps: HostCapabilities) -> None:
    need(caps, "seccomp")
    s = spec(factory="no_kernel")
    with ProcessMemberExecutor({"m": s}, policy=SandboxPolicy(), io_bytes=1 << 20) as ex:
        note = ex.device_check("m")
        call = ex.submit("m", {"image": GOOD})
        assert call.wait(30.0) and call.result()["logits"].shape == (1, 10)
        assert call.device_stats is None
    assert note.startswith("unavailable: MissingDependencyError") and "pycuda" in note


@pytest.mark.parametrize(
    ("factory", "match"),
    [("two_frames_check", "not 1x1"), ("negative_check", "counts do not fit")],
)
def test_a_worker_whose_statistics_are_malformed_is_a_faulty_member(
    caps: HostCapabilities, elog: EventLog, factory: str, match: str
) -> None:
    need(caps, "seccomp")
    with ProcessMemberExecutor(
        {"m": spec(factory)}, policy=SandboxPolicy(), io_bytes=1 << 20, event_log=elog
    ) as ex:
        call = ex.submit("m", {"image": GOOD})
        assert call.wait(30.0)
        with pytest.raises(BackendError, match=match):
            call.result()
        assert call.device_stats is None
    bad = [r["data"] for r in records(elog) if r["kind"] == "sandbox_bad_reply"]
    assert len(bad) == 1 and bad[0]["member"] == "m"


def test_the_guard_judges_a_sandboxed_members_statistics(
    caps: HostCapabilities, elog: EventLog
) -> None:
    need(caps, "seccomp")
    checks = FrameChecks(IO.inputs, SanityGuard(profile(), impl="numpy"))
    calls: list[str] = []
    real = SanityGuard.input_stats
    SanityGuard.input_stats = lambda self, *a, **k: calls.append(a[0]) or real(self, *a, **k)  # type: ignore[method-assign]
    try:
        with ProcessMemberExecutor({"m": spec()}, policy=SandboxPolicy(), io_bytes=1 << 20) as ex:
            rt = GuardedRuntime(
                ex.members(),
                policy=RuntimePolicy.single("m", placement="gpu0"),
                sanity=checks,
                executor=ex,
                device_stats={"image"},
                event_log=elog,
                async_log=False,
            )
            assert rt.infer({"image": GOOD.copy()}).outputs["logits"].shape == (1, 10)
            with pytest.raises(InputRejectedError, match=r"stat\.mean"):
                rt.infer({"image": BAD.copy()})
    finally:
        SanityGuard.input_stats = real  # type: ignore[method-assign]
    assert calls == []
    (ev,) = [r["data"] for r in records(elog) if r["kind"] == "input_rejected"]
    assert ev["statistics"] == "device:m" and ev["verdict"]["status"] == "REJECT"


def test_a_malformed_statistics_reply_leaves_the_frame_to_the_cpu(
    caps: HostCapabilities, elog: EventLog
) -> None:
    """The faulty member abstains; its frame's statistics are computed on the CPU."""
    need(caps, "seccomp")
    checks = FrameChecks(IO.inputs, SanityGuard(profile(), impl="numpy"))
    with ProcessMemberExecutor(
        {"m": spec("two_frames_check")}, policy=SandboxPolicy(), io_bytes=1 << 20
    ) as ex:
        rt = GuardedRuntime(
            ex.members(),
            policy=RuntimePolicy.single("m", placement="gpu0"),
            sanity=checks,
            executor=ex,
            device_stats={"image"},
            event_log=elog,
            async_log=False,
        )
        with pytest.raises(InputRejectedError, match=r"stat\.mean"):
            rt.infer({"image": BAD.copy()})
    kinds = [r["kind"] for r in records(elog)]
    assert "member_failed" in kinds
    (ev,) = [r["data"] for r in records(elog) if r["kind"] == "input_rejected"]
    assert ev["statistics"] == "cpu"

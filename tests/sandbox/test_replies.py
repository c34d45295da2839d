"""A hostile worker's replies: whatever bytes a worker sends back, the supervisor reads them
within bounds, refuses a malformed one as a worker fault (the call fails, the worker is
killed and restarted) and the guarded runtime answers from its fallback chain. Nothing a
worker sends is raised in the supervisor."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import numpy as np
import pytest

from edgeguard.errors import BackendError
from edgeguard.guard.eventlog import EventLog
from edgeguard.policy.io import TensorSpec
from edgeguard.runtime.guarded import GuardedRuntime, ResultSource
from edgeguard.runtime.sandbox import HostCapabilities, SandboxPolicy
from edgeguard.runtime.sandbox.executor import FALLBACK_NAME, ProcessMemberExecutor, WorkerSpec
from edgeguard.runtime.sandbox.replies import (
    DEFAULT_LIMITS,
    BadReplyError,
    read_message,
    read_outputs,
    read_run_reply,
)
from tests.sandbox.conftest import HOSTILE, ROOT, records
from tests.sandbox.hostile import REPLIES
from tests.sandbox.test_hostile import runtime_policy

#: Every forged reply but the one that is well-formed (brackets inside a string).
BAD = [k for k in REPLIES if k != "deep_in_string"]
#: The ones a live worker sends (each costs a restart): too deep and too long, not UTF-8,
#: a valid prefix of an over-long message, a wrong type.
LIVE = ["deep", "not_utf8", "huge", "float_dim"]


def spec(action: str, **opts: Any) -> WorkerSpec:
    return WorkerSpec(
        action.encode(), fmt="test", loader=HOSTILE, python_path=(str(ROOT),), options=opts
    )


def received(data: bytes) -> bytes:
    """What the executor's recv returns for ``data``: one byte more than a message may hold."""
    return data[: DEFAULT_LIMITS.max_bytes + 1]


@pytest.mark.parametrize("kind", BAD)
def test_the_reader_refuses_every_forged_reply_with_one_error(kind: str) -> None:
    with pytest.raises(BadReplyError, match="bad reply"):
        read_run_reply(received(REPLIES[kind]))


def test_brackets_inside_a_string_are_not_nesting() -> None:
    reply = read_run_reply(REPLIES["deep_in_string"])
    assert not reply.ok and reply.error == "[" * DEFAULT_LIMITS.max_error
    assert reply.outputs is None and reply.run_ns is None
    escaped = b'{"ok":false,"error":"a\\\\\\"[[[[[[\\\\"}'  # \\ \" inside, then \\ at the end
    assert read_run_reply(escaped).error == 'a\\"[[[[[[\\'


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 65536,
        b"[" + b"[]," * 21800 + b"[]]",
        b'"' + b'\\"' * 32767,  # a string that never ends, full of escaped quotes
        b'"' * 65536,
        b'"' + b'\\"' * 32766 + b"\\",  # ... ending in a backslash
        b"{" + b'"a":{},' * 9000 + b'"b":1}',
    ],
    ids=["deep", "flat", "unterminated", "quotes", "backslash", "many_keys"],
)
def test_reading_a_hostile_message_takes_linear_time(data: bytes) -> None:
    """A message of the largest size costs milliseconds, not seconds (no quadratic scan)."""
    t = time.perf_counter()
    with pytest.raises(BadReplyError):
        read_run_reply(data)
    assert time.perf_counter() - t < 0.5


def test_the_protocols_deepest_message_is_read() -> None:
    ready = b'{"op":"ready","layers":{},"inputs":[{"name":"x","dtype":"float32","shape":[1]}]}'
    assert read_message(ready)["inputs"][0]["shape"] == [1]
    ok = read_run_reply(b'{"ok":true,"outputs":[["y","float32",[4],0,16]],"run_ns":7}')
    assert ok.ok and ok.outputs == [["y", "float32", [4], 0, 16]] and ok.run_ns == 7


def test_guarded_runtime_answers_from_the_fallback_whatever_the_worker_replies(
    caps: HostCapabilities, elog: EventLog
) -> None:
    """One hostile worker forges a bad reply per call (the call's ``x`` picks which)."""
    ex = ProcessMemberExecutor(
        {"m": spec("reply"), FALLBACK_NAME: spec("benign")},
        policy=SandboxPolicy(),
        caps=caps,
        event_log=elog,
        restart_backoff_s=0.01,
        max_restarts=len(LIVE) + 1,
    )
    index = {k: i for i, k in enumerate(REPLIES)}
    with GuardedRuntime(
        ex.members(),
        fallback=ex.fallback(),
        policy=runtime_policy(),
        executor=ex,
        event_log=elog,
        async_log=False,
    ) as rt:
        for kind in LIVE:
            assert ex.wait_ready("m", 30), kind
            time.sleep(0.01)  # past the runtime's 1 ms quarantine backoff
            x = np.full(4, index[kind], np.float32)
            res = rt.infer({"x": x})
            assert res.source is ResultSource.FALLBACK_MODEL, (kind, res.reasons)
            np.testing.assert_array_equal(res.outputs["y"], x * 2)
        assert ex._supervisor.is_alive()
        assert ex.status("m").deaths == len(LIVE)
    recs = records(elog)
    bad = [r["data"] for r in recs if r["kind"] == "sandbox_bad_reply"]
    assert len(bad) == len(LIVE) and all(b["member"] == "m" for b in bad), bad
    failed: list[dict[str, Any]] = [
        r["data"] for r in recs if r["kind"] == "member_failed" and r["data"]["member"] == "m"
    ]
    assert len(failed) == len(LIVE)
    assert all(f["kind"] == "error" and "bad reply" in f["detail"] for f in failed), failed


def test_a_forged_ready_message_is_a_start_failure(caps: HostCapabilities) -> None:
    with pytest.raises(BackendError, match="failed to start"):
        ProcessMemberExecutor({"m": spec("ready_deep")}, policy=SandboxPolicy(), caps=caps)


# ----------------------------------------------------------------------------- outputs

AREA = 1 << 20  # the output region of the tests' workers


def region() -> memoryview:
    return memoryview(bytearray(4096))


Y = TensorSpec("y", "float32", ("N", 4))
LABEL = TensorSpec("label", "int64", (1,))


def test_outputs_matching_the_signed_contract_are_copied_out() -> None:
    r = region()
    r[:16] = np.arange(4, dtype=np.float32).tobytes()
    desc = [["y", "float32", [1, 4], 0, 16], ["label", "int64", [1], 64, 8]]
    out = read_outputs(desc, r, specs=(Y, LABEL))
    np.testing.assert_array_equal(out["y"], [[0, 1, 2, 3]])
    assert out["label"].shape == (1,) and out["y"].base is not r  # copies
    # a dynamic axis takes any size the region holds; an empty output may sit anywhere
    out = read_outputs(
        [["y", "float32", [0, 4], 4096, 0], ["label", "int64", [1], 0, 8]], r, specs=(Y, LABEL)
    )
    assert out["y"].shape == (0, 4)


@pytest.mark.parametrize(
    ("desc", "why"),
    [
        ([["y", "float32", [1, 4], 0, 16]], "1 outputs; the signed contract declares 2"),
        (
            [["y", "float32", [1, 4], 0, 16], ["z", "int64", [1], 64, 8]],
            "not one the signed contract declares",
        ),
        ([["y", "float64", [1, 4], 0, 32], ["label", "int64", [1], 64, 8]], "declares y float32"),
        ([["y", "float32", [4], 0, 16], ["label", "int64", [1], 64, 8]], "declares y float32"),
        ([["y", "float32", [1, 4], 0, 16], ["label", "int64", [2], 64, 16]], "declares label"),
        ([["y", "float32", [1, 4], 0, 16], ["label", "int64", [1], 0, 8]], "overlap"),
        ([["y", "float32", [1, 4], 0, 16], ["label", "int64", [1], 8, 8]], "does not fit"),
        ([["y", "float32", [1, 4], 0, 16], ["label", "int64", [1], 4096, 8]], "does not fit"),
        ([["y", "float32", [2000, 4], 0, 32000], ["label", "int64", [1], 0, 8]], "does not fit"),
        (  # an empty output whose other axes are absurd: bounded too
            [["y", "float32", [0, 1 << 40], 0, 0], ["label", "int64", [1], 64, 8]],
            "declares y float32",
        ),
    ],
)
def test_outputs_against_the_signed_contract_are_refused(desc: list[Any], why: str) -> None:
    with pytest.raises(BadReplyError, match=why):
        read_outputs(desc, region(), specs=(Y, LABEL))


def test_without_a_contract_outputs_are_still_bounded_by_the_region_once() -> None:
    whole = [[f"o{i}", "uint8", [4096], 0, 4096] for i in range(256)]
    with pytest.raises(BadReplyError, match="overlap"):
        read_outputs(whole, region(), specs=None)
    with pytest.raises(BadReplyError, match="more than 256 outputs"):
        read_outputs([[f"o{i}", "uint8", [0], 0, 0] for i in range(257)], region(), specs=None)
    with pytest.raises(BadReplyError, match="does not fit"):
        read_outputs([["y", "float32", [0, 1 << 40, 1 << 40], 0, 0]], region(), specs=None)
    tiled = [[f"o{i}", "uint8", [64], 64 * i, 64] for i in range(64)]
    assert len(read_outputs(tiled, region(), specs=None)) == 64


def test_overlapping_outputs_cost_the_supervisor_nothing(
    caps: HostCapabilities, elog: EventLog
) -> None:
    """A ~10 KB reply describing 256 outputs that each cover the whole output region."""
    ex = ProcessMemberExecutor(
        {"m": spec("amplify", area=AREA), FALLBACK_NAME: spec("benign")},
        policy=SandboxPolicy(),
        caps=caps,
        event_log=elog,
        io_bytes=AREA,
    )
    with GuardedRuntime(
        ex.members(),
        fallback=ex.fallback(),
        policy=runtime_policy(),
        executor=ex,
        event_log=elog,
        async_log=False,
    ) as rt:
        x = np.ones(4, np.float32)
        tracemalloc.start()
        try:
            res = rt.infer({"x": x})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert res.source is ResultSource.FALLBACK_MODEL, res.reasons
        np.testing.assert_array_equal(res.outputs["y"], x * 2)
        assert peak < AREA, f"the supervisor allocated {peak / 2**20:.0f} MiB"
        assert ex.status("m").deaths == 1
    bad = [r["data"] for r in records(elog) if r["kind"] == "sandbox_bad_reply"]
    assert len(bad) == 1 and "overlap" in bad[0]["detail"], bad


def test_a_reply_that_breaks_the_signed_outputs_is_refused(
    caps: HostCapabilities, elog: EventLog
) -> None:
    """The benign worker answers y float32; the member's contract signed y as float64."""
    signed = (TensorSpec("y", "float64", (4,)),)
    with ProcessMemberExecutor(
        {
            "m": WorkerSpec(
                b"benign", fmt="test", loader=HOSTILE, python_path=(str(ROOT),), outputs=signed
            )
        },
        policy=SandboxPolicy(),
        caps=caps,
        event_log=elog,
    ) as ex:
        call = ex.submit("m", {"x": np.ones(4, np.float32)})
        assert call.wait(30)
        with pytest.raises(BackendError, match="signed contract declares y float64"):
            call.result()
        assert ex.status("m").deaths == 1

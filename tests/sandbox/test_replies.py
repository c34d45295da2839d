"""A hostile worker's replies: whatever bytes a worker sends back, the supervisor reads them
within bounds, refuses a malformed one as a worker fault (the call fails, the worker is
killed and restarted) and the guarded runtime answers from its fallback chain. Nothing a
worker sends is raised in the supervisor."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from edgeguard.errors import BackendError
from edgeguard.guard.eventlog import EventLog
from edgeguard.runtime.guarded import GuardedRuntime, ResultSource
from edgeguard.runtime.sandbox import HostCapabilities, SandboxPolicy
from edgeguard.runtime.sandbox.executor import FALLBACK_NAME, ProcessMemberExecutor, WorkerSpec
from edgeguard.runtime.sandbox.replies import (
    DEFAULT_LIMITS,
    BadReplyError,
    read_message,
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


def spec(action: str) -> WorkerSpec:
    return WorkerSpec(action.encode(), fmt="test", loader=HOSTILE, python_path=(str(ROOT),))


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

"""The per-frame plan of the TensorRT GPU path (pure code: no TensorRT, no GPU)."""

from __future__ import annotations

import pytest

from edgeguard.backends.trt_frame import BufferPool, FramePlanner, Op, Step
from edgeguard.errors import BackendError


def _ops(steps: tuple[Step, ...]) -> list[str]:
    return [f"{s.op.value}:{s.tensor}" if s.tensor else s.op.value for s in steps]


def test_eager_frame_order() -> None:
    planner = FramePlanner(["a", "b"], ["y"], cuda_graph=False)
    key = planner.key({"b": (1, 2), "a": (3,)}, "b")
    assert _ops(planner.plan(key)) == [
        "stage:a",
        "stage:b",
        "set_shape:a",
        "set_shape:b",
        "set_addr:a",
        "set_addr:b",
        "set_addr:y",
        "h2d:a",
        "h2d:b",
        "check:b",  # after every input copy, before the engine
        "execute",
        "d2h_check:b",
        "d2h:y",
        "sync",
        "unstage:y",
    ]
    assert _ops(planner.plan(planner.key({"a": (3,), "b": (1, 2)}, None))).count("check:b") == 0
    assert all(s.on_stream for s in planner.stream_steps("b"))
    assert not any(s.on_stream for s in planner.plan(key) if s.op in (Op.SYNC, Op.STAGE))


def test_exactly_one_sync_per_frame_in_every_mode() -> None:
    for graph in (False, True):
        planner = FramePlanner(["x"], ["y", "z"], cuda_graph=graph)
        key = planner.key({"x": (1,)}, "x", 7)
        for _ in range(3):
            steps = planner.plan(key)
            assert [s.op for s in steps].count(Op.SYNC) == 1
            if Op.CAPTURE in [s.op for s in steps]:
                planner.captured(key)


def test_graph_capture_replay_and_recapture() -> None:
    planner = FramePlanner(["x"], ["y"], cuda_graph=True)
    small, large = planner.key({"x": (1, 4)}, "x", 1), planner.key({"x": (2, 4)}, "x", 1)
    first = planner.plan(small)
    assert first[-1] == Step(Op.CAPTURE)  # after the eager frame (TensorRT's warm-up)
    assert [s.op for s in first].index(Op.SYNC) < len(first) - 1
    planner.captured(small)
    assert _ops(planner.plan(small)) == ["stage:x", "graph_launch", "sync", "unstage:y"]
    assert planner.plan(large)[-1] == Step(Op.CAPTURE)  # shapes changed
    assert planner.plan(planner.key({"x": (1, 4)}, "x", 2))[-1] == Step(Op.CAPTURE)  # other check
    assert planner.plan(planner.key({"x": (1, 4)}, None, 1))[-1] == Step(Op.CAPTURE)  # no check
    planner.invalidate()
    assert planner.plan(small)[-1] == Step(Op.CAPTURE)
    planner.disable_graph()
    assert Op.CAPTURE not in [s.op for s in planner.plan(small)] and not planner.cuda_graph
    assert planner.captures == 1


def test_key_ignores_the_token_without_a_check() -> None:
    planner = FramePlanner(["x"], ["y"], cuda_graph=True)
    assert planner.key({"x": (1,)}, None, 5) == planner.key({"x": (1,)}, None, 9)


def test_buffer_pool_reuses_grows_and_frees() -> None:
    live: dict[int, int] = {}
    made: list[int] = []

    def alloc(n: int) -> int:
        handle = len(made) + 1
        made.append(n)
        live[handle] = n
        return handle

    pool: BufferPool[int] = BufferPool(alloc, lambda h: live.pop(h) and None)
    a = pool.get("in:x", 100)
    assert pool.get("in:x", 60) == a and pool.generation == 1  # reused
    b = pool.get("in:x", 200)
    assert b != a and a not in live and pool.generation == 2  # grown, old freed
    assert pool.get("empty", 0) in live and made[-1] == 1  # never a zero-byte allocation
    assert "in:x" in pool and len(pool) == 2 and pool.handle("in:x") == b
    with pytest.raises(BackendError, match="negative buffer size"):
        pool.get("bad", -1)
    pool.release()
    assert live == {} and len(pool) == 0


def test_buffer_pool_release_frees_all_then_raises_the_first_error() -> None:
    freed: list[int] = []

    def free(h: int) -> None:
        freed.append(h)
        if h == 1:
            raise RuntimeError("first")

    pool: BufferPool[int] = BufferPool(lambda n: n, free)
    pool.get("a", 1)
    pool.get("b", 2)
    with pytest.raises(RuntimeError, match="first"):
        pool.release()
    assert freed == [1, 2] and len(pool) == 0

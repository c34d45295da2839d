"""Members in threads of this process: :class:`ThreadMemberExecutor`.

Layer: :mod:`edgeguard.runtime`. One single-worker thread per member; a late call
is abandoned (a Python thread cannot be killed), its thread written off and the next
call gets a fresh one. The device session uses it only when the signed isolation
requirements allow in-process members (``isolation="threads"``); the default is
:class:`~edgeguard.runtime.sandbox.executor.ProcessMemberExecutor`.

An abandoned call keeps running in native code (ONNX Runtime, a driver). If the
interpreter shuts down meanwhile, the inference library's static objects are destroyed
under it and the process aborts (``terminate called without an active exception``,
SIGABRT). So :meth:`ThreadMemberExecutor.drain` waits, with a bound, for the calls still
running (the device session does when it closes), and :func:`running_calls` tells a
program whether any call is still running anywhere: then it must end the process with
``os._exit`` after flushing its output, as the ``edgeguard`` command does, because
nothing can stop that call.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgeguard.errors import BackendError, PolicyError, UsageError
from edgeguard.runtime.placement import pin_current_thread

__all__ = ["ThreadMemberExecutor", "running_calls"]

_running = 0  # member calls inside a member's run, in every executor of this process
_running_lock = threading.Lock()


def running_calls() -> int:
    """Member calls still running in threads of this process (abandoned ones included).

    Non-zero at exit means a call is inside native code that nothing can stop: end the
    process with ``os._exit`` after flushing, or the interpreter's shutdown may abort it.
    """
    with _running_lock:
        return _running


def _count(delta: int) -> None:
    global _running
    with _running_lock:
        _running += delta


class _Job:
    """One call; completion is signalled through a pre-acquired lock (cheaper than an Event)."""

    __slots__ = ("_done", "_exc", "_finished", "_out", "_stats", "end_ns", "feeds", "start_ns")

    def __init__(self, feeds: Mapping[str, np.ndarray]) -> None:
        self.feeds = feeds
        self._done = threading.Lock()
        self._done.acquire()
        self._finished = False
        self._out: dict[str, np.ndarray] | None = None
        self._exc: BaseException | None = None
        self._stats: dict[str, Any] | None = None
        self.start_ns = 0
        self.end_ns = 0

    def _finish(self) -> None:
        self._finished = True
        self._done.release()

    def wait(self, timeout_s: float) -> bool:
        if self._finished:
            return True
        if self._done.acquire(timeout=max(0.0, timeout_s)):
            self._done.release()
            return True
        return self._finished

    def result(self) -> dict[str, np.ndarray]:
        if not self._finished:
            raise UsageError("member call has not finished")
        if self._exc is not None:
            raise self._exc
        assert self._out is not None
        return self._out

    @property
    def run_ns(self) -> int | None:
        return self.end_ns - self.start_ns if self._finished else None

    @property
    def device_stats(self) -> dict[str, Any] | None:
        """``{input: FrameStats}`` from a member's device check, or None."""
        return self._stats if self._finished and self._exc is None else None


class _Worker:
    def __init__(
        self, name: str, target: Any, generation: int, cpus: frozenset[int] | None
    ) -> None:
        self.q: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.target = target
        self.checked = callable(getattr(target, "run_checked", None))
        self.cpus = cpus
        self.thread = threading.Thread(
            target=self._loop, name=f"edgeguard-member-{name}-{generation}", daemon=True
        )
        self.thread.start()

    def _loop(self) -> None:
        pin_error: BaseException | None = None
        if self.cpus is not None:
            try:
                pin_current_thread(self.cpus)
            except PolicyError as exc:  # every call then fails: the member abstains
                pin_error = exc
        while True:
            job = self.q.get()
            if job is None:
                return
            job.start_ns = time.perf_counter_ns()
            _count(+1)
            try:
                if pin_error is not None:
                    raise pin_error
                if self.checked:  # a TensorRT member with the device sanity check
                    out, job._stats = self.target.run_checked(job.feeds)
                else:
                    out = self.target.run(job.feeds)
                job._out = out if isinstance(out, dict) else dict(out)
            except BaseException as exc:  # the member's failure is reported, not raised here
                job._exc = exc
            finally:
                _count(-1)
            job.end_ns = time.perf_counter_ns()
            job._finish()


class ThreadMemberExecutor:
    """One single-worker thread per member; a hung worker is abandoned and replaced.

    Args:
        runnables: Members (and the fallback model) by name.
        max_abandoned: Hung workers tolerated per member before ``submit`` refuses.
        cpus: Cores to pin each named member's worker thread to (the thread that
            calls ``run``; its backend pins its own pool threads), from the
            members' ``cpu:LIST`` placements.
    """

    def __init__(
        self,
        runnables: Mapping[str, Any],
        *,
        max_abandoned: int = 4,
        cpus: Mapping[str, frozenset[int]] | None = None,
    ) -> None:
        self._targets = dict(runnables)
        self._cpus = dict(cpus or {})
        unknown = sorted(set(self._cpus) - set(self._targets))
        if unknown:
            raise UsageError(f"cpus given for unknown members {unknown}")
        self._max_abandoned = max_abandoned
        self._workers: dict[str, _Worker | None] = dict.fromkeys(self._targets)
        self._threads: list[threading.Thread] = []  # every worker thread, abandoned ones too
        self._abandoned: dict[str, int] = dict.fromkeys(self._targets, 0)
        self._lock = threading.Lock()
        self._closed = False

    def abandoned(self, name: str) -> int:
        """Worker threads written off for ``name`` so far."""
        return self._abandoned[name]

    def submit(self, name: str, feeds: Mapping[str, np.ndarray]) -> _Job:
        """Queue a call on the member's worker (starting a fresh worker if needed)."""
        with self._lock:
            if self._closed:
                raise UsageError("executor is closed")
            if name not in self._targets:
                raise UsageError(f"unknown member {name!r}")
            w = self._workers[name]
            if w is None:
                if self._abandoned[name] > self._max_abandoned:
                    raise BackendError(f"member {name!r} retired: too many hung calls")
                w = _Worker(name, self._targets[name], self._abandoned[name], self._cpus.get(name))
                self._workers[name] = w
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(w.thread)
            job = _Job(feeds)
            w.q.put(job)
            return job

    def abandon(self, name: str) -> None:
        """Write off the member's worker (it exits if its call ever returns)."""
        with self._lock:
            w = self._workers.get(name)
            if w is not None:
                w.q.put(None)
                self._workers[name] = None
                self._abandoned[name] += 1

    def close(self) -> None:
        """Ask all workers to exit after their current call."""
        with self._lock:
            self._closed = True
            for name, w in self._workers.items():
                if w is not None:
                    w.q.put(None)
                    self._workers[name] = None

    def drain(self, timeout_s: float) -> int:
        """Close, then wait up to ``timeout_s`` for calls still running (abandoned ones too).

        Returns:
            The number of worker threads still running a call afterwards (0: none is left
            inside a member, and the backends may be closed and the process may exit).
        """
        self.close()
        end = time.monotonic() + max(0.0, timeout_s)
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        return sum(t.is_alive() for t in threads)

"""The per-frame sequence of the TensorRT GPU path, as pure data (backends layer; no GPU).

:class:`~edgeguard.backends.tensorrt.TensorRTBackend` runs every frame as a list of
:class:`Step` s that :class:`FramePlanner` builds from names and shapes alone; a thin
layer in ``tensorrt.py`` turns each step into one pycuda or TensorRT call. Keeping
the order here, in code that imports neither library, lets the host tests check it
with recording test doubles: the input is copied to the device once, the device
check (the CUDA C++ sanity kernel) runs on that device buffer on the same stream
after the copy and before ``execute_async_v3``, only the check's small result buffer
and the outputs come back, and there is exactly one synchronisation per frame.

With CUDA graphs on, the first frame of each set of input shapes runs eagerly (it is
also TensorRT's required warm-up call after a shape change) and is then captured;
later frames with the same shapes replay the graph. A change of shapes, or of any
device buffer address, captures again.

The device check is a structural interface (:class:`DeviceCheck`): the guard layer's
``edgeguard.guard.sanity.cuda_cpp.DeviceSanityCheck`` implements it without importing
this package, and this package never imports the guard (the layers are siblings).
The backend hands the check's decoded result back to its caller unchanged.

Nothing in this module has run on a GPU; it is tested on the host only.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from edgeguard.errors import BackendError

__all__ = [
    "BufferPool",
    "DeviceCheck",
    "FramePlanner",
    "Op",
    "ShapeKey",
    "Step",
]

R_co = TypeVar("R_co", covariant=True)
H = TypeVar("H")


class DeviceCheck(Protocol[R_co]):
    """A statistic computed on the device copy of one input, on the inference stream.

    Attributes:
        input_name: The model input the check reads.
        device_id: The CUDA device whose primary context holds the check's kernels.
    """

    @property
    def input_name(self) -> str:
        """The model input the check reads."""
        ...

    @property
    def device_id(self) -> int:
        """CUDA device ordinal of the check's kernels."""
        ...

    def device_buffers(self, shape: tuple[int, ...], dtype: str) -> tuple[int, int]:
        """``(scratch bytes, result bytes)`` the check needs for an input of this shape.

        Raises:
            UsageError: The check cannot read such an input.
        """
        ...

    def enqueue(
        self,
        *,
        x: int,
        shape: tuple[int, ...],
        dtype: str,
        scratch: int,
        result: int,
        stream: Any,
    ) -> None:
        """Launch the check's kernels on ``stream`` (device pointers as ints)."""
        ...

    def finish(self, result: npt.NDArray[np.uint8], *, shape: tuple[int, ...], dtype: str) -> R_co:
        """Decode the result buffer, copied back after the frame's synchronisation."""
        ...


class Op(enum.Enum):
    """One operation of a frame.

    Host-side: ``STAGE`` (copy a feed into its pinned staging buffer), ``SET_SHAPE``,
    ``SET_ADDR`` (execution-context calls), ``CAPTURE`` (record :attr:`FramePlanner.
    stream_steps` into a CUDA graph; executes nothing). On the stream: ``H2D``,
    ``CHECK``, ``EXECUTE``, ``D2H_CHECK``, ``D2H``, ``GRAPH_LAUNCH``. ``SYNC`` waits
    for the stream; ``UNSTAGE`` copies pinned outputs into the returned arrays.
    """

    STAGE = "stage"
    SET_SHAPE = "set_shape"
    SET_ADDR = "set_addr"
    H2D = "h2d"
    CHECK = "check"
    EXECUTE = "execute"
    D2H_CHECK = "d2h_check"
    D2H = "d2h"
    GRAPH_LAUNCH = "graph_launch"
    SYNC = "sync"
    UNSTAGE = "unstage"
    CAPTURE = "capture"


_ON_STREAM = frozenset({Op.H2D, Op.CHECK, Op.EXECUTE, Op.D2H_CHECK, Op.D2H, Op.GRAPH_LAUNCH})


@dataclass(frozen=True)
class Step:
    """One operation, on one tensor when it has one."""

    op: Op
    tensor: str = ""

    @property
    def on_stream(self) -> bool:
        """Whether the step is enqueued on the CUDA stream (and captured in a graph)."""
        return self.op in _ON_STREAM


#: Input name -> shape, sorted by name; the checked input (or ""); which check object
#: (a captured graph bakes in that check's launch parameters).
ShapeKey = tuple[tuple[tuple[str, tuple[int, ...]], ...], str, int]


class FramePlanner:
    """Builds each frame's steps and remembers which shapes the CUDA graph holds.

    Args:
        inputs: Input names, in engine order.
        outputs: Output names, in engine order.
        cuda_graph: Capture the stream steps once per set of input shapes and replay
            them.
    """

    def __init__(self, inputs: Sequence[str], outputs: Sequence[str], *, cuda_graph: bool) -> None:
        self._inputs = tuple(inputs)
        self._outputs = tuple(outputs)
        self._graph = bool(cuda_graph)
        self._captured: ShapeKey | None = None
        self.captures = 0

    @property
    def cuda_graph(self) -> bool:
        """Whether graphs are in use (turned off by :meth:`disable_graph`)."""
        return self._graph

    def key(
        self, shapes: dict[str, tuple[int, ...]], check: str | None, check_token: int = 0
    ) -> ShapeKey:
        """The graph key of one frame.

        Args:
            shapes: Input name -> shape.
            check: The input the device check reads, or None.
            check_token: Identifies the check object (the caller keeps it alive while
                a graph holds it, so the token cannot be reused).
        """
        return (tuple(sorted(shapes.items())), check or "", check_token if check else 0)

    def stream_steps(self, check: str | None) -> tuple[Step, ...]:
        """The stream part of a frame, in order (what a graph captures)."""
        steps = [Step(Op.H2D, name) for name in self._inputs]
        if check is not None:
            steps.append(Step(Op.CHECK, check))
        steps.append(Step(Op.EXECUTE))
        if check is not None:
            steps.append(Step(Op.D2H_CHECK, check))
        steps += [Step(Op.D2H, name) for name in self._outputs]
        return tuple(steps)

    def plan(self, key: ShapeKey) -> tuple[Step, ...]:
        """The steps of one frame with this key.

        Eager: stage, set shapes and addresses, the stream steps, sync, unstage.
        Graph, key captured: stage, launch, sync, unstage. Graph, new key: the
        eager frame, then a capture of its stream steps for the next frames.
        """
        check = key[1] or None
        stage = tuple(Step(Op.STAGE, name) for name in self._inputs)
        tail = (Step(Op.SYNC), *(Step(Op.UNSTAGE, name) for name in self._outputs))
        if self._graph and self._captured == key:
            return (*stage, Step(Op.GRAPH_LAUNCH), *tail)
        eager = (
            *stage,
            *(Step(Op.SET_SHAPE, name) for name in self._inputs),
            *(Step(Op.SET_ADDR, name) for name in (*self._inputs, *self._outputs)),
            *self.stream_steps(check),
            *tail,
        )
        if self._graph:
            return (*eager, Step(Op.CAPTURE))
        return eager

    def captured(self, key: ShapeKey) -> None:
        """Record that the graph now holds ``key``'s frame."""
        self._captured = key
        self.captures += 1

    def invalidate(self) -> None:
        """Forget the captured graph (a buffer moved, or the capture failed)."""
        self._captured = None

    def disable_graph(self) -> None:
        """Stop using graphs (the engine cannot be captured)."""
        self._graph = False
        self._captured = None


@dataclass(eq=False)
class _Held(Generic[H]):
    handle: H
    size: int


class BufferPool(Generic[H]):
    """Named buffers that are reused while big enough and replaced when they must grow.

    Args:
        alloc: Allocates ``nbytes`` (at least 1) and returns a handle.
        free: Frees a handle.
    """

    def __init__(self, alloc: Callable[[int], H], free: Callable[[H], None]) -> None:
        self._alloc = alloc
        self._free = free
        self._held: dict[str, _Held[H]] = {}
        #: Bumped whenever a buffer is (re)allocated: addresses in a graph are stale.
        self.generation = 0

    def get(self, name: str, nbytes: int) -> H:
        """A buffer of at least ``nbytes`` for ``name``."""
        if nbytes < 0:
            raise BackendError(f"negative buffer size {nbytes} for {name!r}")
        held = self._held.get(name)
        if held is not None and held.size >= nbytes:
            return held.handle
        if held is not None:
            del self._held[name]
            self._free(held.handle)
        size = max(nbytes, 1)
        handle = self._alloc(size)
        self._held[name] = _Held(handle, size)
        self.generation += 1
        return handle

    def handle(self, name: str) -> H:
        """The buffer already allocated for ``name``."""
        return self._held[name].handle

    def __contains__(self, name: object) -> bool:
        return name in self._held

    def __len__(self) -> int:
        return len(self._held)

    def release(self) -> None:
        """Free every buffer (the first failure is raised after trying all)."""
        first: BaseException | None = None
        held, self._held = self._held, {}
        for h in held.values():
            try:
                self._free(h.handle)
            except Exception as exc:  # keep freeing the rest
                first = first or exc
        if first is not None:
            raise first

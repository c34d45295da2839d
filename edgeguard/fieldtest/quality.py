"""How well a bundle's signed checks tell clean frames from broken ones, with numbers.

Layer: fieldtest (above the runtime). Given an open device session and held-out clean
frames (frames its calibration never saw), :func:`guard_quality` measures, through the
session's own checks (the signed I/O contract and sanity profile, no model run):

* the clean false-reject rate;
* the detection rate of each corruption class a camera pipeline produces:
  one NaN pixel, the wrong scale (x255: 0..255 delivered where the model expects its
  normalised range; /255: normalised twice), a black frame, heavy noise, a frozen
  frame (the same frame again), and a channel swap (BGR for RGB);

each with its 95 % Wilson interval. Corruptions act on the preprocessed frames the
model takes: "black" is the value a black pixel becomes (each channel's lowest value
in the clean frames), "noise" adds Gaussian noise of a quarter of the value range.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeguard.packaging.envelope import wilson_interval

__all__ = [
    "CORRUPTIONS",
    "GATED",
    "FrameRange",
    "Rate",
    "corrupt",
    "frame_range",
    "guard_quality",
    "guess_layout",
]

#: The corruption classes, in report order.
CORRUPTIONS = ("nan", "scale_x255", "scale_div255", "black", "noise", "frozen", "channel_swap")
#: The classes the guard is expected to catch nearly always (channel swap is measured
#: and reported: a colour-balanced scene looks much the same with its channels swapped).
GATED = ("nan", "scale_x255", "scale_div255", "black", "noise", "frozen")

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class Rate:
    """How many of ``frames`` were rejected, with its 95 % interval."""

    rejected: int
    frames: int

    @property
    def rate(self) -> float:
        """The fraction rejected."""
        return self.rejected / self.frames if self.frames else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        """95 % Wilson interval of the rate."""
        return wilson_interval(self.rejected, self.frames)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        lo, hi = self.interval
        return {
            "rejected": self.rejected,
            "frames": self.frames,
            "rate": self.rate,
            "ci95": [lo, hi],
        }


def _channel_axis(layout: str, ndim: int) -> int | None:
    if ndim != 4:
        return None
    return 1 if layout == "NCHW" else 3


def guess_layout(shape: tuple[int, ...]) -> str:
    """ "NHWC" when only the last axis of a rank-4 shape looks like channels, else "NCHW"."""
    if len(shape) == 4 and shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return "NHWC"
    return "NCHW"


@dataclass(frozen=True, eq=False)
class FrameRange:
    """What "black" and "heavy" mean for a frame sequence, for its corruptions.

    Attributes:
        layout: "NCHW" or "NHWC".
        black: Per-channel value of a black pixel: each channel's lowest value in the
            clean frames (shape broadcastable to one frame).
        span: The width of the clean frames' value range.
    """

    layout: str
    black: Array
    span: float

    @property
    def channels(self) -> int:
        """Channels of the frames (1 when they have no channel axis)."""
        return int(self.black.size)


def frame_range(frames: Array, *, layout: str | None = None) -> FrameRange:
    """The :class:`FrameRange` of clean ``frames`` (``[N, ...]``; NaNs ignored).

    Args:
        frames: Clean frames.
        layout: Their layout (default: guessed from the shape).
    """
    layout = layout or guess_layout(tuple(frames.shape))
    axis = _channel_axis(layout, frames.ndim)
    if axis is None:
        black = np.asarray(np.nanmin(frames)).reshape(1)
    else:
        moved = np.moveaxis(frames, axis, 0).reshape(frames.shape[axis], -1)
        shape = [1] * frames.ndim
        shape[axis] = frames.shape[axis]
        black = np.nanmin(moved, axis=1).reshape(shape)
    span = float(np.nanmax(frames) - np.nanmin(frames)) or 1.0
    return FrameRange(layout, black, span)


def corrupt(
    kind: str,
    frame: Array,
    *,
    layout: str,
    black: Array,
    span: float,
    rng: np.random.Generator,
) -> Array:
    """``frame`` (a batch of one) as the corruption ``kind`` makes it (a new array).

    Args:
        kind: One of :data:`CORRUPTIONS` except ``frozen`` (that one is a repeat).
        frame: The clean frame.
        layout: "NCHW" or "NHWC".
        black: Per-channel value of a black pixel (shape broadcastable to ``frame``).
        span: The width of the frames' value range.
        rng: Random source.
    """
    x = frame.astype(np.float64)
    if kind == "nan":
        y = x.copy()
        y.reshape(-1)[int(rng.integers(y.size))] = np.nan
    elif kind == "scale_x255":
        y = x * 255.0
    elif kind == "scale_div255":
        y = x / 255.0
    elif kind == "black":
        y = np.broadcast_to(black, x.shape).copy()
    elif kind == "noise":
        y = x + rng.normal(0.0, 0.25 * span, x.shape)
    elif kind == "channel_swap":
        axis = _channel_axis(layout, x.ndim)
        if axis is None or x.shape[axis] < 2:
            raise ValueError("a channel swap needs a channel axis with at least 2 channels")
        y = np.flip(x, axis=axis).copy()
    else:
        raise ValueError(f"unknown corruption {kind!r}")
    return np.ascontiguousarray(y.astype(frame.dtype))


def guard_quality(
    check: Callable[[Mapping[str, Array], Mapping[str, Array] | None], Any],
    frames: Array,
    *,
    input_name: str,
    layout: str,
    extra: Mapping[str, Array] | None = None,
    seed: int = 0,
) -> dict[str, Rate]:
    """Clean false rejects and corruption detection, per class.

    Args:
        check: ``check(feeds, prev) -> verdict`` with ``verdict.rejected`` (for example
            :meth:`~edgeguard.runtime.session.DeviceSession.check_inputs`).
        frames: Held-out clean frames, ``[N, ...]`` (each is fed as a batch of one).
        input_name: The input they feed.
        layout: Their layout.
        extra: Other inputs fed unchanged with every frame.
        seed: Seed of the corruptions.

    Returns:
        ``"clean"`` and every class of :data:`CORRUPTIONS` a frame can have.
    """
    rng = np.random.default_rng(seed)
    extra = dict(extra or {})
    basis = frame_range(frames, layout=layout)
    black, span = basis.black, basis.span
    kinds = [k for k in CORRUPTIONS if k != "channel_swap" or basis.channels > 1]
    counts = {k: 0 for k in ("clean", *kinds)}
    n = len(frames)

    def rejected(x: Array, prev: Array | None) -> bool:
        feeds = {input_name: x, **extra}
        return bool(check(feeds, None if prev is None else {input_name: prev, **extra}).rejected)

    prev: Array | None = None
    for i in range(n):
        f = np.ascontiguousarray(frames[i : i + 1])
        counts["clean"] += rejected(f, prev)
        for k in kinds:
            if k == "frozen":
                counts[k] += rejected(f, f.copy())
            else:
                counts[k] += rejected(
                    corrupt(k, f, layout=layout, black=black, span=span, rng=rng), prev
                )
        prev = f
    return {k: Rate(v, n) for k, v in counts.items()}

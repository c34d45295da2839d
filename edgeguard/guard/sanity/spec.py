"""Data model of the input-sanity checks: statistics and verdicts.

Layer: :mod:`edgeguard.guard` (pure data, no I/O, no inference libraries).

* :class:`FrameStats` holds the per-frame / per-channel statistics that every
  implementation (NumPy oracle, Numba CPU, Numba CUDA, CUDA C++) computes in
  one pass over an input tensor (see ``docs/sanity.md``).
* :class:`Verdict` is the result of a check: PASS / WARN / REJECT with the
  list of violated checks, measured values and limits.

The calibrated profile the checks compare against is signed data and lives in
:mod:`edgeguard.policy.sanity`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeguard.errors import InputRejectedError, MalformedError
from edgeguard.policy.sanity import Status

__all__ = [
    "CHANNEL_STATS",
    "FRAME_STATS",
    "FrameStats",
    "Verdict",
    "Violation",
    "decode_floats",
    "encode_floats",
]

FRAME_STATS: tuple[str, ...] = ("nan", "posinf", "neginf")
#: Statistics with one value per frame and channel (shape ``[N, C]``).
CHANNEL_STATS: tuple[str, ...] = (
    "count",
    "min",
    "max",
    "mean",
    "std",
    "sat_lo",
    "sat_hi",
    "hf",
    "tdiff",
)
#: Statistics that calibration derives an acceptance envelope for.

F64Array = npt.NDArray[np.float64]
I64Array = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class FrameStats:
    """Statistics of one input tensor, viewed as frames ``[N, C, H, W]``.

    Attributes:
        layout: Layout the tensor was read with ("NCHW" or "NHWC").
        sat_lo_level: Low saturation level ``lo`` used for ``sat_lo``.
        sat_hi_level: High saturation level ``hi`` used for ``sat_hi``.
        nan: NaN count per frame, int64 ``[N]``.
        posinf: +inf count per frame, int64 ``[N]``.
        neginf: -inf count per frame, int64 ``[N]``.
        count: Finite values per frame and channel, int64 ``[N, C]``.
        min: Minimum finite value, +inf when ``count`` is 0, float64 ``[N, C]``.
        max: Maximum finite value, -inf when ``count`` is 0.
        mean: Mean of finite values, NaN when ``count`` is 0.
        std: Population standard deviation of finite values, NaN when ``count`` is 0.
        sat_lo: Fraction of finite values ``<= sat_lo`` (0 when ``count`` is 0).
        sat_hi: Fraction of finite values ``>= sat_hi``.
        hf: Mean absolute horizontal neighbour difference over ``std + eps``.
        tdiff: Mean ``|x - prev|`` over positions finite in both, or None when no
            previous frame batch was given (NaN where no such position exists).
    """

    layout: str
    sat_lo_level: float
    sat_hi_level: float
    nan: I64Array
    posinf: I64Array
    neginf: I64Array
    count: I64Array
    min: F64Array
    max: F64Array
    mean: F64Array
    std: F64Array
    sat_lo: F64Array
    sat_hi: F64Array
    hf: F64Array
    tdiff: F64Array | None = None

    @property
    def frames(self) -> int:
        """Number of frames N."""
        return int(self.count.shape[0])

    @property
    def channels(self) -> int:
        """Number of channels C."""
        return int(self.count.shape[1])

    def get(self, name: str) -> npt.NDArray[Any] | None:
        """The array of statistic ``name`` (one of FRAME_STATS or CHANNEL_STATS)."""
        if name not in FRAME_STATS and name not in CHANNEL_STATS:
            raise KeyError(name)
        value: npt.NDArray[Any] | None = getattr(self, name)
        return value

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict: NaN as None, infinities as the strings "inf"/"-inf"."""
        out: dict[str, Any] = {
            "layout": self.layout,
            "sat_lo_level": self.sat_lo_level,
            "sat_hi_level": self.sat_hi_level,
        }
        for name in (*FRAME_STATS, *CHANNEL_STATS):
            arr = self.get(name)
            out[name] = None if arr is None else encode_floats(arr)
        return out


def encode_floats(arr: npt.NDArray[Any]) -> Any:
    """Nested lists with NaN as None and +/-inf as "inf"/"-inf" (exact float repr)."""
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64).tolist()

    def enc(v: Any) -> Any:
        if isinstance(v, list):
            return [enc(e) for e in v]
        f = float(v)
        if math.isnan(f):
            return None
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f

    return enc(arr.astype(np.float64).tolist())


def decode_floats(obj: Any) -> F64Array:
    """Inverse of :func:`encode_floats` for float arrays."""

    def dec(v: Any) -> Any:
        if isinstance(v, list):
            return [dec(e) for e in v]
        if v is None:
            return math.nan
        if v == "inf":
            return math.inf
        if v == "-inf":
            return -math.inf
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise MalformedError(f"expected a number, null, 'inf' or '-inf', got {v!r}")
        return float(v)

    return np.asarray(dec(obj), dtype=np.float64)


# --------------------------------------------------------------------------- verdicts
# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Violation:
    """One violated check.

    Attributes:
        check: Check name, e.g. ``"dtype"``, ``"nonfinite"``, ``"stat.mean"``, ``"ood.msp"``.
        tensor: Input or output name the check applies to.
        severity: WARN or REJECT.
        value: Measured value (None for non-numeric checks such as dtype).
        low: Lower limit (None: unbounded or not numeric).
        high: Upper limit (None: unbounded or not numeric).
        frame: Frame index, or None for tensor-level checks.
        channel: Channel index, or None for frame- or tensor-level checks.
        detail: Human-readable detail, e.g. ``"dtype int32 not in ['float32']"``.
    """

    check: str
    tensor: str
    severity: Status
    value: float | None = None
    low: float | None = None
    high: float | None = None
    frame: int | None = None
    channel: int | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (NaN as None, infinities as strings)."""

        def num(v: float | None) -> Any:
            if v is None or math.isnan(v):
                return None
            if math.isinf(v):
                return "inf" if v > 0 else "-inf"
            return v

        return {
            "check": self.check,
            "tensor": self.tensor,
            "severity": self.severity.name,
            "value": num(self.value),
            "low": num(self.low),
            "high": num(self.high),
            "frame": self.frame,
            "channel": self.channel,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Verdict:
    """Result of a sanity check on one call.

    Attributes:
        status: Overall status: the most severe violation, or PASS.
        violations: Every violated check.
    """

    status: Status
    violations: tuple[Violation, ...] = ()

    @classmethod
    def of(cls, violations: Sequence[Violation]) -> Verdict:
        """Verdict whose status is the most severe of ``violations``."""
        if not violations:
            return _PASS  # the common case; a Verdict is immutable, so one instance serves
        status = max((v.severity for v in violations), default=Status.PASS)
        return cls(status=Status(status), violations=tuple(violations))

    def merge(self, other: Verdict) -> Verdict:
        """Combined verdict of two checks (e.g. inputs and outputs)."""
        return Verdict.of((*self.violations, *other.violations))

    @property
    def rejected(self) -> bool:
        """True when the status is REJECT."""
        return self.status is Status.REJECT

    def raise_if_rejected(self) -> None:
        """Raise InputRejectedError naming the first violations when REJECT."""
        if self.status is not Status.REJECT:
            return
        bad = [v for v in self.violations if v.severity is Status.REJECT]
        shown = "; ".join(_describe(v) for v in bad[:3])
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise InputRejectedError(
            f"input rejected by the sanity guard: {shown}{more}",
            hint="inspect the input source (camera, preprocessing) or recalibrate",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        return {"status": self.status.name, "violations": [v.to_dict() for v in self.violations]}


def _describe(v: Violation) -> str:
    where = v.tensor
    if v.frame is not None:
        where += f"[{v.frame}]" if v.channel is None else f"[{v.frame}, c{v.channel}]"
    if v.detail:
        return f"{v.check} {where}: {v.detail}"
    return f"{v.check} {where}: {v.value!r} outside [{v.low!r}, {v.high!r}]"


_PASS = Verdict(status=Status.PASS)

"""Data model of the input-sanity guard: statistics, profiles and verdicts.

Layer: :mod:`edgeguard.guard` (pure data, no I/O, no inference libraries).

* :class:`FrameStats` holds the per-frame / per-channel statistics that every
  implementation (NumPy oracle, Numba CPU, Numba CUDA, CUDA C++) computes in
  one pass over an input tensor (see ``docs/sanity.md``).
* :class:`SanityProfile` is the calibrated acceptance envelope of a model. Its
  :meth:`SanityProfile.to_dict` form is JSON-compatible and is embedded in the
  bundle's signed manifest; :meth:`SanityProfile.from_dict` validates strictly
  and raises :class:`~edgeguard.errors.MalformedError` on anything unexpected.
* :class:`Verdict` is the result of a check: PASS / WARN / REJECT with the
  list of violated checks, measured values and limits.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeguard.errors import InputRejectedError, MalformedError

__all__ = [
    "CHANNEL_STATS",
    "ENVELOPE_STATS",
    "FRAME_STATS",
    "LAYOUTS",
    "PROFILE_FORMAT",
    "PROFILE_VERSION",
    "SUPPORTED_DTYPES",
    "CalibrationInfo",
    "FrameStats",
    "InputProfile",
    "OodThresholds",
    "SanityProfile",
    "StatLimits",
    "Status",
    "Verdict",
    "Violation",
    "default_sat_levels",
]

#: Layout names understood by every implementation.
LAYOUTS: tuple[str, ...] = ("NCHW", "NHWC")
#: Input dtypes the one-pass statistics accept.
SUPPORTED_DTYPES: tuple[str, ...] = ("float32", "float16", "uint8", "float64")
#: Statistics with one value per frame (shape ``[N]``).
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
ENVELOPE_STATS: tuple[str, ...] = ("min", "max", "mean", "std", "sat_lo", "sat_hi", "hf", "tdiff")

PROFILE_FORMAT = "edgeguard.sanity-profile"
PROFILE_VERSION = 1

F64Array = npt.NDArray[np.float64]
I64Array = npt.NDArray[np.int64]


def default_sat_levels(dtype: np.dtype[Any] | str) -> tuple[float, float]:
    """Default saturation levels ``(lo, hi)`` for a dtype: 0/255 for uint8, else 0/1."""
    return (0.0, 255.0) if np.dtype(dtype) == np.uint8 else (0.0, 1.0)


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


class Status(enum.IntEnum):
    """Verdict status, ordered by severity (max() gives the overall status)."""

    PASS = 0
    WARN = 1
    REJECT = 2


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


# --------------------------------------------------------------------------- profile


def _opt_float(v: float | None) -> Any:
    if v is None:
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


_PASS = Verdict(status=Status.PASS)


@dataclass(frozen=True)
class StatLimits:
    """Per-channel acceptance limits of one statistic.

    Values outside ``[warn_low, warn_high]`` give WARN, outside
    ``[reject_low, reject_high]`` REJECT. Each tuple has one entry per channel.

    Attributes:
        stat: Statistic name, one of :data:`ENVELOPE_STATS`.
        warn_low: Lower WARN limit per channel.
        warn_high: Upper WARN limit per channel.
        reject_low: Lower REJECT limit per channel.
        reject_high: Upper REJECT limit per channel.
    """

    stat: str
    warn_low: tuple[float, ...]
    warn_high: tuple[float, ...]
    reject_low: tuple[float, ...]
    reject_high: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.stat not in ENVELOPE_STATS:
            raise MalformedError(f"unknown statistic {self.stat!r} in profile limits")
        n = len(self.warn_low)
        if not (len(self.warn_high) == len(self.reject_low) == len(self.reject_high) == n):
            raise MalformedError(f"limits of {self.stat!r} have inconsistent channel counts")
        for i in range(n):
            vals = (self.reject_low[i], self.warn_low[i], self.warn_high[i], self.reject_high[i])
            if any(math.isnan(x) for x in vals):
                raise MalformedError(f"limits of {self.stat!r} contain NaN")
            if not (vals[0] <= vals[1] <= vals[2] <= vals[3]):
                raise MalformedError(
                    f"limits of {self.stat!r} channel {i} must satisfy "
                    "reject_low <= warn_low <= warn_high <= reject_high"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (infinities as "inf"/"-inf")."""
        return {
            "warn": [
                [_opt_float(v) for v in self.warn_low],
                [_opt_float(v) for v in self.warn_high],
            ],
            "reject": [
                [_opt_float(v) for v in self.reject_low],
                [_opt_float(v) for v in self.reject_high],
            ],
        }


@dataclass(frozen=True)
class OodThresholds:
    """Out-of-distribution thresholds on one logits output.

    Attributes:
        output: Output name holding logits ``[N, K]``.
        msp_min: Max-softmax probability below this gives ``severity``.
        energy_max: Energy score ``-T*logsumexp(logits/T)`` above this gives ``severity``.
        temperature: T of the energy score (1.0).
        severity: Status an OOD violation yields (WARN by default).
    """

    output: str
    msp_min: float
    energy_max: float
    temperature: float = 1.0
    severity: Status = Status.WARN

    def __post_init__(self) -> None:
        if not (math.isfinite(self.msp_min) and math.isfinite(self.energy_max)):
            raise MalformedError("OOD thresholds must be finite numbers")
        if not (0.0 <= self.msp_min <= 1.0):
            raise MalformedError("OOD msp_min must lie in [0, 1]")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise MalformedError("OOD temperature must be a positive number")
        if self.severity is Status.PASS:
            raise MalformedError("OOD severity must be WARN or REJECT")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        return {
            "output": self.output,
            "msp_min": self.msp_min,
            "energy_max": self.energy_max,
            "temperature": self.temperature,
            "severity": self.severity.name,
        }


@dataclass(frozen=True)
class InputProfile:
    """Static and statistical acceptance envelope of one model input.

    Attributes:
        name: Input name.
        dtypes: Allowed dtype names.
        layout: "NCHW" or "NHWC" (ignored for rank-2 inputs).
        shape: Per dimension ``(min, max)``; ``max`` None means unbounded.
        sat_lo: Low saturation level.
        sat_hi: High saturation level.
        channels: Channel count C of the frames view.
        limits: Per-statistic limits.
        allow_nonfinite: Whether NaN/Inf values are tolerated (default False: REJECT).
    """

    name: str
    dtypes: tuple[str, ...]
    layout: str
    shape: tuple[tuple[int, int | None], ...]
    sat_lo: float
    sat_hi: float
    channels: int
    limits: tuple[StatLimits, ...] = ()
    allow_nonfinite: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise MalformedError("input profile needs a name")
        if not self.dtypes or any(d not in SUPPORTED_DTYPES for d in self.dtypes):
            raise MalformedError(f"input {self.name!r}: dtypes must be among {SUPPORTED_DTYPES}")
        if self.layout not in LAYOUTS:
            raise MalformedError(f"input {self.name!r}: layout must be one of {LAYOUTS}")
        if not 2 <= len(self.shape) <= 4:
            raise MalformedError(f"input {self.name!r}: rank must be 2, 3 or 4")
        for lo, hi in self.shape:
            if lo < 0 or (hi is not None and hi < lo):
                raise MalformedError(f"input {self.name!r}: bad shape range ({lo}, {hi})")
        if not (math.isfinite(self.sat_lo) and math.isfinite(self.sat_hi)):
            raise MalformedError(f"input {self.name!r}: saturation levels must be finite")
        if self.sat_lo >= self.sat_hi:
            raise MalformedError(f"input {self.name!r}: sat_lo must be below sat_hi")
        if self.channels < 1:
            raise MalformedError(f"input {self.name!r}: channels must be >= 1")
        seen: set[str] = set()
        for lim in self.limits:
            if lim.stat in seen:
                raise MalformedError(f"input {self.name!r}: duplicate limits for {lim.stat!r}")
            seen.add(lim.stat)
            if len(lim.warn_low) != self.channels:
                raise MalformedError(
                    f"input {self.name!r}: limits of {lim.stat!r} need {self.channels} channels"
                )

    def limit(self, stat: str) -> StatLimits | None:
        """The limits of ``stat`` or None when the profile has none."""
        for lim in self.limits:
            if lim.stat == stat:
                return lim
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        return {
            "name": self.name,
            "dtypes": list(self.dtypes),
            "layout": self.layout,
            "shape": [[lo, hi] for lo, hi in self.shape],
            "sat_lo": self.sat_lo,
            "sat_hi": self.sat_hi,
            "channels": self.channels,
            "allow_nonfinite": self.allow_nonfinite,
            "limits": {lim.stat: lim.to_dict() for lim in self.limits},
        }


@dataclass(frozen=True)
class CalibrationInfo:
    """Where a profile came from.

    Attributes:
        samples: Number of calibration frames.
        model_sha256: Hex SHA-256 of the ONNX model bytes calibrated against.
        impl: Statistics implementation used ("numpy", "numba", ...).
        margin: Margin factor applied to the inter-quantile range.
    """

    samples: int
    model_sha256: str
    impl: str
    margin: float

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise MalformedError("calibration sample count must be >= 0")
        if len(self.model_sha256) != 64 or any(
            c not in "0123456789abcdef" for c in self.model_sha256
        ):
            raise MalformedError("calibration model_sha256 must be 64 lowercase hex digits")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise MalformedError("calibration margin must be a finite number >= 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        return {
            "samples": self.samples,
            "model_sha256": self.model_sha256,
            "impl": self.impl,
            "margin": self.margin,
        }


@dataclass(frozen=True)
class SanityProfile:
    """Calibrated sanity profile of a model (embedded in the signed bundle manifest).

    Attributes:
        inputs: One profile per model input.
        ood: OOD thresholds per logits output (may be empty).
        target_false_alarm: Target per-frame false-alarm rate the envelope was derived for.
        calibration: Calibration metadata.
    """

    inputs: tuple[InputProfile, ...]
    ood: tuple[OodThresholds, ...]
    target_false_alarm: float
    calibration: CalibrationInfo
    version: int = field(default=PROFILE_VERSION)

    def __post_init__(self) -> None:
        if self.version != PROFILE_VERSION:
            raise MalformedError(f"unsupported sanity profile version {self.version!r}")
        if not self.inputs:
            raise MalformedError("sanity profile has no inputs")
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise MalformedError("sanity profile has duplicate input names")
        if not (0.0 < self.target_false_alarm < 0.5):
            raise MalformedError("target_false_alarm must lie in (0, 0.5)")

    def input(self, name: str) -> InputProfile:
        """The profile of input ``name`` (KeyError when absent)."""
        for i in self.inputs:
            if i.name == name:
                return i
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (the form embedded in the bundle manifest)."""
        return {
            "format": PROFILE_FORMAT,
            "version": self.version,
            "target_false_alarm": self.target_false_alarm,
            "calibration": self.calibration.to_dict(),
            "inputs": [i.to_dict() for i in self.inputs],
            "ood": [o.to_dict() for o in self.ood],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SanityProfile:
        """Parse and strictly validate a profile dict.

        Raises:
            MalformedError: Unknown or missing keys, wrong types, inconsistent limits.
        """
        try:
            return _parse_profile(data)
        except MalformedError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedError(f"malformed sanity profile: {exc!r}") from exc


# --------------------------------------------------------------------------- strict parsing


def _keys(obj: Any, what: str, required: set[str], optional: frozenset[str] = frozenset()) -> None:
    if not isinstance(obj, Mapping):
        raise MalformedError(f"{what} must be an object")
    keys = set(obj)
    missing = required - keys
    unknown = keys - required - optional
    if missing:
        raise MalformedError(f"{what} lacks {sorted(missing)}")
    if unknown:
        raise MalformedError(f"{what} has unknown keys {sorted(unknown)}")


def _num(v: Any, what: str, *, allow_inf: bool = False) -> float:
    if allow_inf and v in ("inf", "-inf"):
        return math.inf if v == "inf" else -math.inf
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise MalformedError(f"{what} must be a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise MalformedError(f"{what} must be finite")
    return f


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise MalformedError(f"{what} must be an integer, got {v!r}")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise MalformedError(f"{what} must be a string, got {v!r}")
    return v


def _list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise MalformedError(f"{what} must be a list")
    return v


def _pair_of_lists(v: Any, what: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pair = _list(v, what)
    if len(pair) != 2:
        raise MalformedError(f"{what} must be [low, high]")
    lows = tuple(_num(x, what, allow_inf=True) for x in _list(pair[0], what))
    highs = tuple(_num(x, what, allow_inf=True) for x in _list(pair[1], what))
    return lows, highs


def _parse_profile(data: Mapping[str, Any]) -> SanityProfile:
    _keys(
        data,
        "sanity profile",
        {"format", "version", "target_false_alarm", "calibration", "inputs", "ood"},
    )
    if data["format"] != PROFILE_FORMAT:
        raise MalformedError(f"not a sanity profile (format {data['format']!r})")
    version = _int(data["version"], "version")
    cal = data["calibration"]
    _keys(cal, "calibration", {"samples", "model_sha256", "impl", "margin"})
    calibration = CalibrationInfo(
        samples=_int(cal["samples"], "calibration.samples"),
        model_sha256=_str(cal["model_sha256"], "calibration.model_sha256"),
        impl=_str(cal["impl"], "calibration.impl"),
        margin=_num(cal["margin"], "calibration.margin"),
    )
    inputs = []
    for i, raw in enumerate(_list(data["inputs"], "inputs")):
        what = f"inputs[{i}]"
        _keys(
            raw,
            what,
            {
                "name",
                "dtypes",
                "layout",
                "shape",
                "sat_lo",
                "sat_hi",
                "channels",
                "allow_nonfinite",
                "limits",
            },
        )
        shape: list[tuple[int, int | None]] = []
        for dim in _list(raw["shape"], f"{what}.shape"):
            d = _list(dim, f"{what}.shape")
            if len(d) != 2:
                raise MalformedError(f"{what}.shape entries must be [min, max]")
            hi = None if d[1] is None else _int(d[1], f"{what}.shape")
            shape.append((_int(d[0], f"{what}.shape"), hi))
        if not isinstance(raw["allow_nonfinite"], bool):
            raise MalformedError(f"{what}.allow_nonfinite must be a boolean")
        limits_raw = raw["limits"]
        if not isinstance(limits_raw, Mapping):
            raise MalformedError(f"{what}.limits must be an object")
        limits = []
        for stat, lim in limits_raw.items():
            _keys(lim, f"{what}.limits.{stat}", {"warn", "reject"})
            wl, wh = _pair_of_lists(lim["warn"], f"{what}.limits.{stat}.warn")
            rl, rh = _pair_of_lists(lim["reject"], f"{what}.limits.{stat}.reject")
            limits.append(
                StatLimits(
                    stat=_str(stat, "stat"),
                    warn_low=wl,
                    warn_high=wh,
                    reject_low=rl,
                    reject_high=rh,
                )
            )
        inputs.append(
            InputProfile(
                name=_str(raw["name"], f"{what}.name"),
                dtypes=tuple(_str(d, f"{what}.dtypes") for d in _list(raw["dtypes"], "dtypes")),
                layout=_str(raw["layout"], f"{what}.layout"),
                shape=tuple(shape),
                sat_lo=_num(raw["sat_lo"], f"{what}.sat_lo"),
                sat_hi=_num(raw["sat_hi"], f"{what}.sat_hi"),
                channels=_int(raw["channels"], f"{what}.channels"),
                limits=tuple(limits),
                allow_nonfinite=raw["allow_nonfinite"],
            )
        )
    ood = []
    for i, raw in enumerate(_list(data["ood"], "ood")):
        what = f"ood[{i}]"
        _keys(raw, what, {"output", "msp_min", "energy_max", "temperature", "severity"})
        sev = _str(raw["severity"], f"{what}.severity")
        if sev not in ("WARN", "REJECT"):
            raise MalformedError(f"{what}.severity must be WARN or REJECT")
        ood.append(
            OodThresholds(
                output=_str(raw["output"], f"{what}.output"),
                msp_min=_num(raw["msp_min"], f"{what}.msp_min"),
                energy_max=_num(raw["energy_max"], f"{what}.energy_max"),
                temperature=_num(raw["temperature"], f"{what}.temperature"),
                severity=Status[sev],
            )
        )
    return SanityProfile(
        inputs=tuple(inputs),
        ood=tuple(ood),
        target_false_alarm=_num(data["target_false_alarm"], "target_false_alarm"),
        calibration=calibration,
        version=version,
    )

"""The input-sanity profile: the calibrated acceptance envelope signed into a bundle.

Layer: :mod:`edgeguard.policy` (pure data, no I/O, no inference libraries). The
profile travels in the signed manifest's ``sanity`` slot; :meth:`SanityProfile.from_dict`
reads it strictly (:mod:`edgeguard._strict`) when the bundle is verified, so a malformed
profile is refused before any model runs. The checks that use it live in
:mod:`edgeguard.guard.sanity`; ``docs/sanity.md`` is the normative description.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeguard._strict import (
    Table,
    as_bool,
    as_float,
    as_int,
    as_list,
    as_map,
    as_str,
    check_fields,
    fail,
)
from edgeguard.errors import MalformedError

__all__ = [
    "ENVELOPE_STATS",
    "LAYOUTS",
    "PROFILE_FORMAT",
    "PROFILE_VERSION",
    "SUPPORTED_DTYPES",
    "TEMPORAL_SOURCES",
    "CalibrationInfo",
    "InputProfile",
    "OodThresholds",
    "SanityProfile",
    "StatLimits",
    "Status",
    "default_sat_levels",
]

#: Layout names understood by every implementation.
LAYOUTS: tuple[str, ...] = ("NCHW", "NHWC")
#: Input dtypes the one-pass statistics accept.
SUPPORTED_DTYPES: tuple[str, ...] = ("float32", "float16", "uint8", "float64")
#: Statistics that calibration derives an acceptance envelope for.
ENVELOPE_STATS: tuple[str, ...] = ("min", "max", "mean", "std", "sat_lo", "sat_hi", "hf", "tdiff")

#: Where a profile's ``tdiff`` envelope may come from.
TEMPORAL_SOURCES = ("sequence", "synthetic-motion")
PROFILE_FORMAT = "edgeguard.sanity-profile"
PROFILE_VERSION = 1
_W = "sanity profile"


def default_sat_levels(dtype: np.dtype[Any] | str) -> tuple[float, float]:
    """Default saturation levels ``(lo, hi)`` for a dtype: 0/255 for uint8, else 0/1."""
    return (0.0, 255.0) if np.dtype(dtype) == np.uint8 else (0.0, 1.0)


class Status(enum.IntEnum):
    """Verdict status, ordered by severity (max() gives the overall status)."""

    PASS = 0
    WARN = 1
    REJECT = 2


def _opt_float(v: float | None) -> Any:
    if v is None:
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


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
        margin: REJECT widening factor.
        temporal: Where the ``tdiff`` envelope came from: ``"sequence"`` (consecutive
            calibration frames) or ``"synthetic-motion"`` (each frame against a copy
            moved by a few pixels, and against the next, unrelated frame).
        false_reject: ``(rejected, frames)`` of the cross-validated clean false-reject
            estimate, or None when it was not measured.
    """

    samples: int
    model_sha256: str
    impl: str
    margin: float
    temporal: str = "sequence"
    false_reject: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise MalformedError("calibration sample count must be >= 0")
        if len(self.model_sha256) != 64 or any(
            c not in "0123456789abcdef" for c in self.model_sha256
        ):
            raise MalformedError("calibration model_sha256 must be 64 lowercase hex digits")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise MalformedError("calibration margin must be a finite number >= 0")
        if self.temporal not in TEMPORAL_SOURCES:
            raise MalformedError(f"calibration temporal must be one of {TEMPORAL_SOURCES}")
        if self.false_reject is not None:
            k, n = self.false_reject
            if not 0 <= k <= n:
                raise MalformedError("calibration false_reject must be [rejected, frames]")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        return {
            "samples": self.samples,
            "model_sha256": self.model_sha256,
            "impl": self.impl,
            "margin": self.margin,
            "temporal": self.temporal,
            "false_reject": None if self.false_reject is None else list(self.false_reject),
        }


@dataclass(frozen=True)
class SanityProfile:
    """Calibrated sanity profile of a model (embedded in the signed bundle manifest).

    Attributes:
        inputs: One profile per checked model input.
        unchecked: Model inputs deliberately not checked (not image- or signal-like:
            scalars, integer codes, state tensors); the I/O contract still checks them.
        ood: OOD thresholds per logits output (may be empty).
        target_false_alarm: Target per-frame false-alarm rate the envelope was derived for.
        calibration: Calibration metadata.
    """

    inputs: tuple[InputProfile, ...]
    ood: tuple[OodThresholds, ...]
    target_false_alarm: float
    calibration: CalibrationInfo
    version: int = field(default=PROFILE_VERSION)
    unchecked: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.version != PROFILE_VERSION:
            raise MalformedError(f"unsupported sanity profile version {self.version!r}")
        if not self.inputs:
            raise MalformedError("sanity profile has no inputs")
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise MalformedError("sanity profile has duplicate input names")
        if set(self.unchecked) & set(names) or len(set(self.unchecked)) != len(self.unchecked):
            raise MalformedError("sanity profile: an unchecked input is named twice")
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
            "unchecked": list(self.unchecked),
            "ood": [o.to_dict() for o in self.ood],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SanityProfile:
        """Parse and strictly validate a profile dict.

        Raises:
            MalformedError: Unknown or missing keys, wrong types, inconsistent limits.
        """
        return _parse_profile(data)


# --------------------------------------------------------------------------- strict parsing


def _pair_of_lists(v: Any, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pair = as_list(v, where, min_len=2, max_len=2)
    lows = tuple(as_float(x, where, allow_inf=True) for x in as_list(pair[0], where))
    highs = tuple(as_float(x, where, allow_inf=True) for x in as_list(pair[1], where))
    return lows, highs


def _parse_input(raw: Any, where: str) -> InputProfile:
    t = Table(raw, where)
    shape: list[tuple[int, int | None]] = []
    for dim in as_list(t.required("shape"), t.at("shape"), max_len=4):
        lo, hi = as_list(dim, t.at("shape"), min_len=2, max_len=2)
        shape.append(
            (as_int(lo, t.at("shape"), lo=0), None if hi is None else as_int(hi, t.at("shape")))
        )
    limits = []
    where_limits = t.at("limits")
    for stat, raw_lim in as_map(t.required("limits"), where_limits).items():
        where = f"{where_limits}.{stat}"
        lim = check_fields(raw_lim, where, {"warn", "reject"})
        wl, wh = _pair_of_lists(lim["warn"], f"{where}.warn")
        rl, rh = _pair_of_lists(lim["reject"], f"{where}.reject")
        limits.append(
            StatLimits(
                stat=as_str(stat, where, choices=ENVELOPE_STATS),
                warn_low=wl,
                warn_high=wh,
                reject_low=rl,
                reject_high=rh,
            )
        )
    profile = InputProfile(
        name=as_str(t.required("name"), t.at("name"), max_len=256),
        dtypes=tuple(
            as_str(d, t.at("dtypes"), choices=SUPPORTED_DTYPES)
            for d in as_list(t.required("dtypes"), t.at("dtypes"), min_len=1, max_len=8)
        ),
        layout=as_str(t.required("layout"), t.at("layout"), choices=LAYOUTS),
        shape=tuple(shape),
        sat_lo=as_float(t.required("sat_lo"), t.at("sat_lo")),
        sat_hi=as_float(t.required("sat_hi"), t.at("sat_hi")),
        channels=as_int(t.required("channels"), t.at("channels"), lo=1, hi=1 << 16),
        limits=tuple(limits),
        allow_nonfinite=as_bool(t.required("allow_nonfinite"), t.at("allow_nonfinite")),
    )
    t.done()
    return profile


def _parse_ood(raw: Any, where: str) -> OodThresholds:
    t = Table(raw, where)
    sev = as_str(t.required("severity"), t.at("severity"), choices=("WARN", "REJECT"))
    ood = OodThresholds(
        output=as_str(t.required("output"), t.at("output"), max_len=256),
        msp_min=as_float(t.required("msp_min"), t.at("msp_min")),
        energy_max=as_float(t.required("energy_max"), t.at("energy_max")),
        temperature=as_float(t.required("temperature"), t.at("temperature")),
        severity=Status[sev],
    )
    t.done()
    return ood


def _parse_profile(data: Any) -> SanityProfile:
    t = Table(data, _W)
    fmt = t.required("format")
    if fmt != PROFILE_FORMAT:
        raise fail(t.at("format"), f"not a sanity profile (format {fmt!r})")
    cal = Table(t.required("calibration"), t.at("calibration"))
    fr = cal.optional("false_reject")
    if fr is not None:
        k, n = as_list(fr, cal.at("false_reject"), min_len=2, max_len=2)
        fr = (as_int(k, cal.at("false_reject"), lo=0), as_int(n, cal.at("false_reject"), lo=0))
    calibration = CalibrationInfo(
        samples=as_int(cal.required("samples"), cal.at("samples"), lo=0),
        model_sha256=as_str(cal.required("model_sha256"), cal.at("model_sha256"), max_len=64),
        impl=as_str(cal.required("impl"), cal.at("impl"), max_len=64),
        margin=as_float(cal.required("margin"), cal.at("margin")),
        temporal=as_str(
            cal.optional("temporal", "sequence"), cal.at("temporal"), choices=TEMPORAL_SOURCES
        ),
        false_reject=fr,
    )
    cal.done()
    inputs = tuple(
        _parse_input(raw, f"{t.at('inputs')}[{i}]")
        for i, raw in enumerate(as_list(t.required("inputs"), t.at("inputs"), max_len=256))
    )
    ood = tuple(
        _parse_ood(raw, f"{t.at('ood')}[{i}]")
        for i, raw in enumerate(as_list(t.required("ood"), t.at("ood"), max_len=256))
    )
    profile = SanityProfile(
        inputs=inputs,
        unchecked=tuple(
            as_str(u, t.at("unchecked"), max_len=256)
            for u in as_list(t.optional("unchecked", []), t.at("unchecked"), max_len=256)
        ),
        ood=ood,
        target_false_alarm=as_float(t.required("target_false_alarm"), t.at("target_false_alarm")),
        calibration=calibration,
        version=as_int(t.required("version"), t.at("version")),
    )
    t.done()
    return profile

"""The signed agreement of each precision variant with its reference member.

Layer: :mod:`edgeguard.policy` (pure data). ``edgeguard build --variants`` measures
every derived variant (fp16, int8) against the fp32 original on the calibration
frames (``edgeguard.packaging.agreement``), refuses one below its threshold and signs
the measurement into the manifest's ``policy`` slot under ``"variants"``: a map from
the variant's member name to::

    {"kind": "fp16", "reference": "det-fp32", "task": "map", "frames": 20,
     "metric": "pixel_iou", "direction": "higher", "value": 0.9992, "threshold": 0.9,
     "extra": {"max_abs_error": 0.175}}

The reader refuses unknown keys, a metric that is not the task's, a direction that is
not the metric's and a value on the wrong side of its own threshold: a signed variant
is one that met the threshold it names. ``read_slots`` checks that every key and every
reference is a model member of the manifest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeguard._strict import Table, as_float, as_int, as_map, as_str, fail

__all__ = [
    "DIRECTIONS",
    "KINDS",
    "METRICS",
    "TASK_METRICS",
    "VariantCheck",
    "read_variants",
    "variants_dict",
]

#: The reduced-precision kinds a variant may be.
KINDS = ("fp16", "int8")
#: Each task's gated metric.
TASK_METRICS = {
    "classifier": "top1",
    "detector": "box_f1",
    "map": "pixel_iou",
    "regression": "within_1pct",
}
#: Every metric a check may name, with its direction (which way is better).
METRICS = {
    "top1": "higher",
    "box_f1": "higher",
    "pixel_iou": "higher",
    "within_1pct": "higher",
    "max_abs_error": "lower",
    "max_rel_error": "lower",
}
DIRECTIONS = ("higher", "lower")
_MAX_FRAMES = 1 << 31
_NAME = 128


def _number(v: float) -> float | str:
    """JSON/CBOR-safe: infinity spelled ``"inf"``."""
    return "inf" if math.isinf(v) and v > 0 else v


@dataclass(frozen=True)
class VariantCheck:
    """How one variant member agreed with its reference when it was built.

    Attributes:
        kind: ``fp16`` or ``int8``.
        reference: The member it was measured against (its fp32 original).
        task: ``classifier``, ``detector``, ``map`` or ``regression``.
        frames: The number of calibration frames it was measured on.
        metric: The task's metric (:data:`TASK_METRICS`).
        direction: ``higher`` (every gated metric: a fraction, higher is better).
        value: The measured value, from 0 to 1.
        threshold: The threshold it met, from 0 to 1.
        extra: Further measured values by metric name (error bounds, ``lower`` is
            better; ``inf`` allowed), not gated.
    """

    kind: str
    reference: str
    task: str
    frames: int
    metric: str
    direction: str
    value: float
    threshold: float
    extra: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON/CBOR-native form."""
        return {
            "kind": self.kind,
            "reference": self.reference,
            "task": self.task,
            "frames": self.frames,
            "metric": self.metric,
            "direction": self.direction,
            "value": self.value,
            "threshold": self.threshold,
            "extra": {k: _number(v) for k, v in self.extra},
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> VariantCheck:
        """Read one variant's check strictly.

        Raises:
            MalformedError: Unknown or missing fields, values out of range, a metric
                that is not the task's, a direction that is not the metric's, or a
                value that does not meet its threshold.
        """
        t = Table(d, where)
        kind = as_str(t.required("kind"), t.at("kind"), choices=KINDS)
        reference = as_str(t.required("reference"), t.at("reference"), max_len=_NAME)
        task = as_str(t.required("task"), t.at("task"), choices=TASK_METRICS)
        frames = as_int(t.required("frames"), t.at("frames"), lo=1, hi=_MAX_FRAMES)
        metric = as_str(t.required("metric"), t.at("metric"), choices=METRICS)
        if metric != TASK_METRICS[task]:
            raise fail(
                t.at("metric"), f"a {task} is measured by {TASK_METRICS[task]}, not {metric}"
            )
        direction = as_str(t.required("direction"), t.at("direction"), choices=DIRECTIONS)
        if direction != METRICS[metric]:
            raise fail(t.at("direction"), f"{metric} is better {METRICS[metric]}, not {direction}")
        value = as_float(t.required("value"), t.at("value"), lo=0.0, hi=1.0)
        threshold = as_float(t.required("threshold"), t.at("threshold"), lo=0.0, hi=1.0)
        if value < threshold:
            raise fail(t.at("value"), f"{metric} {value:g} is below its threshold {threshold:g}")
        extra: list[tuple[str, float]] = []
        raw_extra = as_map(t.optional("extra", {}), t.at("extra"))
        for name, v in sorted(raw_extra.items()):
            at = f"{t.at('extra')}.{name}"
            if METRICS.get(name) != "lower":
                raise fail(at, f"unknown error metric {name!r} (max_abs_error, max_rel_error)")
            extra.append((name, as_float(v, at, lo=0.0, allow_inf=True)))
        t.done()
        return cls(
            kind=kind,
            reference=reference,
            task=task,
            frames=frames,
            metric=metric,
            direction=direction,
            value=value,
            threshold=threshold,
            extra=tuple(extra),
        )


def read_variants(d: Any, where: str) -> dict[str, VariantCheck]:
    """Read the ``variants`` map (member name -> check) strictly.

    A variant's reference must not itself be a checked variant, nor the variant.
    """
    out = {
        as_str(name, where, max_len=_NAME): VariantCheck.from_dict(v, f"{where}.{name}")
        for name, v in as_map(d, where).items()
    }
    for name, check in out.items():
        if check.reference == name or check.reference in out:
            raise fail(
                f"{where}.{name}.reference",
                f"{check.reference!r} is a checked variant; the reference is its original",
            )
    return out


def variants_dict(checks: Mapping[str, VariantCheck]) -> dict[str, Any]:
    """The signed form of ``checks``, sorted by member name."""
    return {k: v.to_dict() for k, v in sorted(checks.items())}

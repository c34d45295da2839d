"""Calibration: derive the input-sanity profile of a model from real frames.

Layer: packaging (build side: the profile is signed into the bundle). Runs the
statistics implementation over the calibration frames (and the model, for the OOD
thresholds of its logits outputs); the data loaders at the end read ``.npz`` /
``.npy`` files or a folder of images (Pillow, imported lazily).

What makes an envelope that holds on real data (``docs/sanity.md``, "Calibration"):

* **which inputs**: image- and signal-like inputs (rank 2 to 4, a dtype the
  statistics take) are checked; scalars, integer codes and the like are listed as
  unchecked (the I/O contract still checks their dtype and shape); ``check_inputs``
  chooses explicitly;
* **saturation levels** from the data's range (float inputs: normalised, mean/std
  standardised or 0..255 alike), 0 and 255 for uint8, or as declared;
* **temporal statistics** from consecutive frames when the data is a sequence,
  else from *synthetic motion*: each frame against a copy of itself moved by 1 to 8
  pixels, and against the next, unrelated frame (a scene cut), so that a slow pan is
  not a fault and a repeated frame is;
* **envelopes** from :mod:`edgeguard.packaging.envelope`: empirical quantiles and a
  robust tolerance band sized by the number of frames, never narrower than the
  data's resolution; a K-fold cross-validated false-reject estimate with its
  interval, and warnings when the data is too small or an envelope degenerate;
* **fixed batch sizes**: a model whose batch axis is fixed runs on that many
  frames at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgeguard.arrayfile import DEFAULT_ARRAY_LIMITS, ArrayLimits, contract_problem, open_arrays
from edgeguard.errors import MalformedError, UsageError
from edgeguard.guard.sanity.check import Impl, resolve_impl
from edgeguard.guard.sanity.layout import frames_shape, frames_view
from edgeguard.guard.sanity.output import energy_score, max_softmax_prob
from edgeguard.guard.sanity.spec import FrameStats
from edgeguard.packaging.envelope import (
    VALUE_STATS,
    EnvelopeParams,
    FloorInfo,
    derive_limits,
    fold_rejections,
    wilson_interval,
)
from edgeguard.policy.sanity import (
    ENVELOPE_STATS,
    SUPPORTED_DTYPES,
    CalibrationInfo,
    InputProfile,
    OodThresholds,
    SanityProfile,
    StatLimits,
)

if TYPE_CHECKING:
    from edgeguard.backends.base import Backend, TensorSpec

__all__ = [
    "DEFAULT_MARGIN",
    "MIN_FRAMES",
    "NO_MODEL_SHA256",
    "CalibrationOptions",
    "CalibrationReport",
    "InputReport",
    "calibrate",
    "calibrate_stats_only",
    "calibrate_with_report",
    "guess_layout",
    "is_profile_file",
    "load_calibration_data",
    "load_profile_for",
]

#: Default margin: the REJECT limits lie this many WARN widths beyond the band.
DEFAULT_MARGIN = 0.5
#: Below this many frames the calibration report warns (the envelope is wide and the
#: false-reject estimate uncertain).
MIN_FRAMES = 100
#: A dynamic axis of the model accepts sizes from 1/2 to 2x the calibrated size.
DYNAMIC_AXIS_SPAN = 2
#: ``model_sha256`` of a statistics-only profile (SHA-256 of the empty string: no model).
NO_MODEL_SHA256 = hashlib.sha256(b"").hexdigest()
#: Largest shift of the synthetic motion, in pixels (samples for signals).
MAX_SHIFT = 8
_FOLDS = 5


def _check_layout(spec: TensorSpec, layout: str, *, given: bool) -> None:
    """Refuse a layout that makes a fixed non-channel-like axis the channels of a rank-4
    input (``--layout NHWC`` for ``[N, 3, 224, 224]``)."""
    if spec.rank != 4 or not given:
        return
    axis = 1 if layout == "NCHW" else 3
    other, other_axis = ("NHWC", 3) if layout == "NCHW" else ("NCHW", 1)
    dim, alt = spec.shape[axis], spec.shape[other_axis]
    if isinstance(dim, int) and dim not in (1, 2, 3, 4) and alt in (1, 3, 4):
        raise UsageError(
            f"--layout {layout} makes {dim} the channel count of input {spec.name!r} "
            f"{list(spec.shape)}",
            hint=f"its channels are axis {other_axis}: --layout {other} (or leave --layout out)",
        )


def guess_layout(shape: Sequence[Any]) -> str:
    """Guess "NCHW" or "NHWC" from a rank-4 model shape (channel axis of size 1, 3 or 4)."""
    if len(shape) == 4:
        c1, c3 = shape[1], shape[3]
        if (
            isinstance(c3, int)
            and c3 in (1, 3, 4)
            and not (isinstance(c1, int) and c1 in (1, 3, 4))
        ):
            return "NHWC"
    if len(shape) == 3:
        c0, c2 = shape[0], shape[2]
        if (
            isinstance(c2, int)
            and c2 in (1, 3, 4)
            and not (isinstance(c0, int) and c0 in (1, 3, 4))
        ):
            return "NHWC"
    return "NCHW"


@dataclass(frozen=True)
class CalibrationOptions:
    """How to calibrate (``edgeguard calibrate`` and ``build --calibration`` share them).

    Attributes:
        target_false_alarm: Target per-frame WARN rate on clean data.
        margin: REJECT widening, in WARN widths on each side.
        layout: Layout of every image input (default: guessed from the model shape).
        sat_levels: Saturation levels of every checked input (default: the data's range).
        check_inputs: The inputs to check (default: every image- or signal-like input).
        sequence: The calibration frames are consecutive frames of one stream.
        limit: Use at most this many frames.
    """

    target_false_alarm: float = 0.005
    margin: float = 0.5
    layout: str | None = None
    sat_levels: tuple[float, float] | None = None
    check_inputs: tuple[str, ...] | None = None
    sequence: bool = False
    limit: int | None = None

    def arguments(self, specs: Sequence[TensorSpec]) -> dict[str, Any]:
        """Keyword arguments of :func:`calibrate_with_report` for a model's inputs."""
        names = [s.name for s in specs]
        return {
            "target_false_alarm": self.target_false_alarm,
            "margin": self.margin,
            "layouts": dict.fromkeys(names, self.layout) if self.layout else None,
            "sat_levels": dict.fromkeys(names, self.sat_levels) if self.sat_levels else None,
            "check_inputs": self.check_inputs,
            "sequence": self.sequence,
        }


@dataclass(frozen=True)
class InputReport:
    """What calibration found for one checked input.

    Attributes:
        name: The input.
        layout: Its layout.
        sat_levels: The saturation levels used, and where they came from.
        resolution: The smallest step between its values, per channel.
        floored: Statistic -> channels whose band was widened to the floor.
        constant: Statistic -> channels whose calibration values were all equal.
        widths: Statistic -> WARN width per channel.
    """

    name: str
    layout: str
    sat_levels: tuple[float, float, str]
    resolution: tuple[float, ...]
    floored: dict[str, tuple[int, ...]] = field(default_factory=dict)
    constant: dict[str, tuple[int, ...]] = field(default_factory=dict)
    widths: dict[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class CalibrationReport:
    """How much to trust a profile, for the person who builds the bundle.

    Attributes:
        frames: Calibration frames.
        temporal: ``"sequence"`` or ``"synthetic-motion"``.
        false_reject: ``(rejected, frames)`` of the K-fold cross-validated estimate.
        interval: Its 95 % Wilson interval.
        folds: K.
        inputs: Per checked input.
        unchecked: ``(input, why)`` of the inputs left unchecked.
        warnings: What the builder should look at.
    """

    frames: int
    temporal: str
    false_reject: tuple[int, int]
    interval: tuple[float, float]
    folds: int
    inputs: tuple[InputReport, ...]
    unchecked: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...]

    @property
    def rate(self) -> float:
        """The estimated clean false-reject rate."""
        k, n = self.false_reject
        return k / n if n else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {
            "frames": self.frames,
            "temporal": self.temporal,
            "false_reject": {
                "rejected": self.false_reject[0],
                "frames": self.false_reject[1],
                "rate": self.rate,
                "interval95": list(self.interval),
                "folds": self.folds,
            },
            "inputs": [
                {
                    "name": i.name,
                    "layout": i.layout,
                    "sat_levels": {
                        "lo": i.sat_levels[0],
                        "hi": i.sat_levels[1],
                        "from": i.sat_levels[2],
                    },
                    "resolution": list(i.resolution),
                    "floored": {k: list(v) for k, v in i.floored.items()},
                    "constant": {k: list(v) for k, v in i.constant.items()},
                    "widths": {k: list(v) for k, v in i.widths.items()},
                }
                for i in self.inputs
            ],
            "unchecked": [{"name": n, "why": w} for n, w in self.unchecked],
            "warnings": list(self.warnings),
        }


def _shape_ranges(
    spec: TensorSpec, observed: tuple[int, ...]
) -> tuple[tuple[int, int | None], ...]:
    out: list[tuple[int, int | None]] = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int):
            out.append((dim, dim))
        elif axis == 0:
            out.append((1, None))
        else:
            # a dynamic axis (an image's height or width): sizes from half to twice the
            # calibrated one, where the statistics' envelope still describes the scenes
            size = observed[axis]
            out.append((max(1, size // DYNAMIC_AXIS_SPAN), size * DYNAMIC_AXIS_SPAN))
    return tuple(out)


def _why_unchecked(spec: TensorSpec) -> str | None:
    """Why an input is not image- or signal-like, or None when it is."""
    if spec.dtype not in SUPPORTED_DTYPES:
        return f"dtype {spec.dtype} is not one the statistics take ({', '.join(SUPPORTED_DTYPES)})"
    if spec.rank not in (2, 4):
        return f"rank {spec.rank}: not a batch of images (rank 4) or of signals (rank 2)"
    return None


def calibrate(
    model: Backend | bytes,
    data: Mapping[str, npt.NDArray[Any]],
    **options: Any,
) -> SanityProfile:
    """:func:`calibrate_with_report` without the report."""
    return calibrate_with_report(model, data, **options)[0]


def calibrate_with_report(
    model: Backend | bytes,
    data: Mapping[str, npt.NDArray[Any]],
    *,
    target_false_alarm: float = 0.005,
    margin: float = DEFAULT_MARGIN,
    impl: Impl = "auto",
    layouts: Mapping[str, str] | None = None,
    sat_levels: Mapping[str, tuple[float, float]] | None = None,
    check_inputs: Sequence[str] | None = None,
    sequence: bool = False,
    logits: Sequence[str] | None = None,
    model_sha256: str | None = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> tuple[SanityProfile, CalibrationReport]:
    """Run the statistics (and the model) over calibration frames; derive the profile.

    Args:
        model: ONNX model bytes (loaded into ONNX Runtime) or an open backend.
        data: Input name -> calibration frames (axis 0 = frames).
        target_false_alarm: Target per-frame WARN rate on clean data.
        margin: REJECT widening, in WARN widths on each side.
        impl: Statistics implementation.
        layouts: Input name -> "NCHW"/"NHWC" (default: guessed from the model shape).
        sat_levels: Input name -> (lo, hi) (default: the data's range; 0, 255 for uint8).
        check_inputs: The inputs to check (default: every image- or signal-like input).
        sequence: The frames are consecutive frames of one stream (``tdiff`` from
            neighbours); else each frame is paired with a moved copy of itself and the
            next frame (synthetic motion and scene cuts).
        logits: Outputs to derive OOD thresholds for (default: every float rank-2
            output with at least two columns).
        model_sha256: Hex digest of the model; required when ``model`` is a backend.
        batch_size: Frames per model call (a fixed batch axis overrides it).
        seed: Seed of the synthetic motion and the cross-validation folds.
        progress: Show a rich progress bar.

    Returns:
        The profile and the calibration report.

    Raises:
        UsageError: Bad arguments, missing inputs, wrong data shapes or dtypes, constant data.
        BackendError: The model cannot be loaded or run.
    """
    if not 0.0 < target_false_alarm < 0.5:
        raise UsageError("target_false_alarm must lie in (0, 0.5)")
    if not (np.isfinite(margin) and margin >= 0):
        raise UsageError("margin must be a finite number >= 0")
    if batch_size < 1:
        raise UsageError("batch_size must be >= 1")
    impl_name, stats_fn = resolve_impl(impl)
    if isinstance(model, bytes | bytearray | memoryview):
        from edgeguard.backends.onnxruntime import OnnxRuntimeBackend

        digest = hashlib.sha256(bytes(model)).hexdigest()
        backend: Backend = OnnxRuntimeBackend.from_bytes(bytes(model))
        owned = True
    else:
        if model_sha256 is None:
            raise UsageError("calibrate(backend, ...) needs model_sha256=")
        digest, backend, owned = model_sha256.lower(), model, False
    try:
        return _Calibration(
            backend,
            data,
            stats_fn=stats_fn,
            target=target_false_alarm,
            margin=margin,
            layouts=layouts or {},
            sat_levels=sat_levels or {},
            check_inputs=check_inputs,
            sequence=sequence,
            seed=seed,
        ).run(
            digest=digest,
            impl_name=impl_name,
            logits=logits,
            batch_size=batch_size,
            progress=progress,
        )
    finally:
        if owned:
            backend.close()


def _edge_shift(x: npt.NDArray[Any], axis: int, by: int) -> npt.NDArray[Any]:
    """``x`` moved ``by`` places along ``axis``, the vacated edge repeating its last line."""
    if by == 0:
        return x
    n = x.shape[axis]
    by = max(-(n - 1), min(n - 1, by))
    idx = np.clip(np.arange(n) - by, 0, n - 1)
    return np.take(x, idx, axis=axis)


def _spatial_axes(rank: int, layout: str) -> tuple[int, ...]:
    """The axes of a batch a camera pan moves along: H, W of images; F of signals."""
    if rank == 2:
        return (1,)
    return (2, 3) if layout == "NCHW" else (1, 2)


class _Calibration:
    """One calibration run (kept in an object so each step stays short)."""

    def __init__(
        self,
        backend: Backend,
        data: Mapping[str, npt.NDArray[Any]],
        *,
        stats_fn: Any,
        target: float,
        margin: float,
        layouts: Mapping[str, str],
        sat_levels: Mapping[str, tuple[float, float]],
        check_inputs: Sequence[str] | None,
        sequence: bool,
        seed: int,
    ) -> None:
        self.backend = backend
        self.data = data
        self.stats_fn = stats_fn
        self.target = target
        self.margin = margin
        self.sequence = sequence
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.specs = backend.inputs()
        self.frames = self._validate()
        self.checked, self.unchecked = self._select(check_inputs)
        self.layout = {s.name: layouts.get(s.name, guess_layout(s.shape)) for s in self.checked}
        for s in self.checked:
            _check_layout(s, self.layout[s.name], given=s.name in layouts)
        self.sat = {s.name: self._sat(s, sat_levels.get(s.name)) for s in self.checked}

    # -- setup --------------------------------------------------------------------------

    def _validate(self) -> int:
        missing = [s.name for s in self.specs if s.name not in self.data]
        if missing:
            raise UsageError(
                f"calibration data lacks inputs {missing}",
                hint=f"provide arrays named {[s.name for s in self.specs]}",
            )
        counts = set()
        for s in self.specs:
            arr = self.data[s.name]
            if not isinstance(arr, np.ndarray) or arr.ndim != s.rank:
                raise UsageError(
                    f"calibration data {s.name!r} must be an array of rank {s.rank} "
                    f"(frames first), got shape {list(getattr(arr, 'shape', []))}"
                )
            if str(arr.dtype) != s.dtype:
                raise UsageError(
                    f"calibration data {s.name!r} has dtype {arr.dtype}, the model takes {s.dtype}"
                )
            for axis, dim in enumerate(s.shape[1:], start=1):
                if isinstance(dim, int) and arr.shape[axis] != dim:
                    raise UsageError(
                        f"calibration data {s.name!r} has shape {list(arr.shape)}; the model "
                        f"takes {s.describe()} (axis {axis} must be {dim})"
                    )
            if s.rank:
                counts.add(arr.shape[0])
        if len(counts) > 1:
            raise UsageError("every calibration input needs the same number of frames")
        total = counts.pop() if counts else 0
        if total < 2:
            raise UsageError("calibration needs at least 2 frames")
        return int(total)

    def _select(
        self, names: Sequence[str] | None
    ) -> tuple[list[TensorSpec], list[tuple[str, str]]]:
        by_name = {s.name: s for s in self.specs}
        if names is not None:
            unknown = sorted(set(names) - set(by_name))
            if unknown:
                raise UsageError(
                    f"--check-input names {unknown}, which the model does not take",
                    hint=f"its inputs: {', '.join(by_name)}",
                )
            for n in names:
                why = _why_unchecked(by_name[n])
                if why is not None:
                    raise UsageError(f"input {n!r} cannot be checked: {why}")
            chosen = [by_name[n] for n in names]
            skipped = [
                (s.name, "not chosen with --check-input") for s in self.specs if s.name not in names
            ]
            return chosen, skipped
        chosen, skipped = [], []
        for s in self.specs:
            why = _why_unchecked(s)
            if why is None:
                chosen.append(s)
            else:
                skipped.append((s.name, why))
        if not chosen:
            raise UsageError(
                "no input of the model is image- or signal-like; nothing to calibrate",
                hint="; ".join(f"{n}: {w}" for n, w in skipped),
            )
        return chosen, skipped

    def _sat(self, spec: TensorSpec, given: tuple[float, float] | None) -> tuple[float, float, str]:
        if given is not None:
            lo, hi = float(given[0]), float(given[1])
            if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                raise UsageError(f"saturation levels of {spec.name!r} must be finite with lo < hi")
            return lo, hi, "declared"
        if spec.dtype == "uint8":
            return 0.0, 255.0, "uint8 range"
        x = self.data[spec.name]
        finite = x[np.isfinite(x)] if np.issubdtype(x.dtype, np.floating) else x
        if finite.size == 0:
            raise UsageError(f"calibration data {spec.name!r} holds no finite value")
        lo, hi = float(finite.min()), float(finite.max())
        if not lo < hi:
            raise UsageError(f"calibration data {spec.name!r} is constant ({lo:.4g})")
        return lo, hi, "data range"

    def _resolution(self, name: str) -> tuple[float, ...]:
        """Smallest positive step between the values of each channel (a sample of them)."""
        view = frames_view(self.data[name], self.layout[name])  # [N, C, H, W]
        out = []
        for c in range(view.shape[1]):
            v = np.asarray(view[:, c], dtype=np.float64).reshape(-1)
            if v.size > 200_000:
                v = v[self.rng.choice(v.size, 200_000, replace=False)]
            u = np.unique(v[np.isfinite(v)])
            d = np.diff(u)
            d = d[d > 0]
            out.append(float(d.min()) if d.size else 0.0)
        return tuple(out)

    # -- statistics ---------------------------------------------------------------------

    def _stats(
        self, name: str, x: npt.NDArray[Any], prev: npt.NDArray[Any] | None = None
    ) -> FrameStats:
        lo, hi, _ = self.sat[name]
        stats: FrameStats = self.stats_fn(
            np.ascontiguousarray(x),
            layout=self.layout[name],
            sat_lo=lo,
            sat_hi=hi,
            prev=None if prev is None else np.ascontiguousarray(prev),
        )
        return stats

    def _moved(self, name: str, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Each frame of ``x`` moved by 1 to MAX_SHIFT pixels (samples) in a random direction."""
        axes = _spatial_axes(x.ndim, self.layout[name])
        out = np.empty_like(x)
        for i in range(x.shape[0]):
            frame = x[i : i + 1]
            shifts = [int(self.rng.integers(-MAX_SHIFT, MAX_SHIFT + 1)) for _ in axes]
            if not any(shifts):
                shifts[-1] = 1
            for ax, by in zip(axes, shifts, strict=True):
                frame = _edge_shift(frame, ax, by)
            out[i] = frame[0]
        return out

    def _collect(self, name: str, batch: int) -> dict[str, npt.NDArray[np.float64]]:
        """Every envelope statistic of every frame, ``[frames, C]``; ``tdiff`` per frame."""
        x = self.data[name]
        parts: dict[str, list[npt.NDArray[np.float64]]] = {s: [] for s in ENVELOPE_STATS}
        for start in range(0, self.frames, batch):
            cur = x[start : start + batch]
            st = self._stats(name, cur)
            for stat in ENVELOPE_STATS:
                if stat != "tdiff":
                    parts[stat].append(np.asarray(st.get(stat), dtype=np.float64))
            if self.sequence:
                prev = x[max(start - 1, 0) : start + len(cur) - 1]
                if start == 0:  # the first frame has no predecessor: pair it with the next
                    prev = np.concatenate([x[1:2], prev], axis=0)
            else:
                prev = self._moved(name, cur)
            td = self._stats(name, cur, prev).tdiff
            assert td is not None
            parts["tdiff"].append(np.asarray(td, dtype=np.float64))
        values = {s: np.concatenate(v, axis=0) for s, v in parts.items()}
        if not self.sequence:
            # scene cuts: the next, unrelated frame (the upper end of tdiff)
            cuts = self._stats(name, x[1:], x[:-1]).tdiff
            assert cuts is not None
            values["tdiff_cuts"] = np.asarray(cuts, dtype=np.float64)
        return values

    def _model_outputs(
        self, names: list[str], batch: int, bar: Any, task: Any
    ) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
        """MSP and energy of the logits outputs over every frame (a fixed batch kept).

        Without logits outputs the model runs once, to show the data fits it.
        """
        fixed = [s.shape[0] for s in self.specs if s.rank and isinstance(s.shape[0], int)]
        step = int(fixed[0]) if fixed else batch
        msp: dict[str, list[Any]] = {o: [] for o in names}
        energy: dict[str, list[Any]] = {o: [] for o in names}
        if not names:
            starts = range(1)  # one call on one frame (or fixed batch): the data fits the model
            step = int(fixed[0]) if fixed else 1
        elif fixed:
            starts = range(0, self.frames - step + 1, step)  # whole fixed batches only
        else:
            starts = range(0, self.frames, step)
        for start in starts:
            feeds = {
                s.name: np.ascontiguousarray(self.data[s.name][start : start + step])
                if s.rank
                else self.data[s.name]
                for s in self.specs
            }
            outs = self.backend.run(feeds)
            for o in names:
                if o not in outs:
                    raise UsageError(f"model has no output {o!r}")
                msp[o].append(max_softmax_prob(outs[o]))
                energy[o].append(energy_score(outs[o]))
            bar.update(task, advance=step)
        return msp, energy

    # -- the profile --------------------------------------------------------------------

    def run(
        self,
        *,
        digest: str,
        impl_name: str,
        logits: Sequence[str] | None,
        batch_size: int,
        progress: bool,
    ) -> tuple[SanityProfile, CalibrationReport]:
        from rich.progress import Progress

        out_specs = self.backend.outputs()
        ood_names = (
            list(logits)
            if logits is not None
            else [
                o.name
                for o in out_specs
                if o.dtype in ("float32", "float64", "float16")
                and o.rank == 2
                and (not isinstance(o.shape[1], int) or o.shape[1] >= 2)
            ]
        )
        stats: dict[str, dict[str, npt.NDArray[np.float64]]] = {}
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("calibrating: statistics", total=len(self.checked) * self.frames)
            for s in self.checked:
                stats[s.name] = self._collect(s.name, batch_size)
                bar.update(task, advance=self.frames)
            mtask = bar.add_task("calibrating: model", total=self.frames if ood_names else 1)
            msp, energy = self._model_outputs(ood_names, batch_size, bar, mtask)
        inputs: list[InputProfile] = []
        reports: list[InputReport] = []
        all_values: dict[str, dict[str, npt.NDArray[np.float64]]] = {}
        params_of: dict[str, EnvelopeParams] = {}
        warnings: list[str] = []
        for s in self.checked:
            profile_input, input_report, values, params = self._input_profile(
                s, stats[s.name], warnings
            )
            inputs.append(profile_input)
            reports.append(input_report)
            all_values[s.name] = values
            params_of[s.name] = params
        rejected, n = self._cross_validate(all_values, params_of)
        interval = wilson_interval(rejected, n)
        if self.frames < MIN_FRAMES:
            warnings.insert(
                0,
                f"only {self.frames} calibration frames: the envelope is widened for the "
                f"small sample and the false-reject estimate is uncertain; {MIN_FRAMES * 2}+ "
                "frames of the deployment's own scenes are recommended",
            )
        if interval[0] > 0.02:
            warnings.append(
                f"cross-validated false rejects {rejected}/{n} ({100 * rejected / n:.1f} %): the "
                "calibration frames are too diverse for their number, or hold broken frames"
            )
        ood = self._ood(ood_names, msp, energy)
        temporal = "sequence" if self.sequence else "synthetic-motion"
        profile = SanityProfile(
            inputs=tuple(inputs),
            unchecked=tuple(n for n, _ in self.unchecked),
            ood=tuple(ood),
            target_false_alarm=self.target,
            calibration=CalibrationInfo(
                samples=self.frames,
                model_sha256=digest,
                impl=impl_name,
                margin=self.margin,
                temporal=temporal,
                false_reject=(rejected, n),
            ),
        )
        report = CalibrationReport(
            frames=self.frames,
            temporal=temporal,
            false_reject=(rejected, n),
            interval=interval,
            folds=min(_FOLDS, n),
            inputs=tuple(reports),
            unchecked=tuple(self.unchecked),
            warnings=tuple(warnings),
        )
        return profile, report

    def _params(self, name: str, channels: int) -> EnvelopeParams:
        lo, hi, _ = self.sat[name]
        checks = len(ENVELOPE_STATS) * max(channels, 1)
        return EnvelopeParams(
            tail=self.target / (2.0 * checks),
            margin=self.margin,
            value_range=(lo, hi),
            resolution=self._resolution(name),
        )

    def _input_profile(
        self,
        spec: TensorSpec,
        values: dict[str, npt.NDArray[np.float64]],
        warnings: list[str],
    ) -> tuple[InputProfile, InputReport, dict[str, npt.NDArray[np.float64]], EnvelopeParams]:
        name = spec.name
        _, channels, _, _ = frames_shape(self.data[name].shape, self.layout[name])
        params = self._params(name, channels)
        limits: list[StatLimits] = []
        infos: list[FloorInfo] = []
        env_values = {k: v for k, v in values.items() if k in ENVELOPE_STATS}
        if "tdiff_cuts" in values:  # both ends of tdiff: moved copies and scene cuts
            env_values["tdiff"] = np.concatenate([values["tdiff"], values["tdiff_cuts"]], axis=0)
        for stat in ENVELOPE_STATS:
            lim, info = derive_limits(stat, env_values[stat], params)
            limits.append(lim)
            infos.append(info)
        lo, hi, source = self.sat[name]
        at_level = {"min": lo, "max": hi}  # a crop that always holds a black pixel is normal
        for info in infos:
            for c, const in enumerate(info.constant):
                value = env_values[info.stat][0, c]
                if const and info.stat in VALUE_STATS | {"hf"} and at_level.get(info.stat) != value:
                    warnings.append(
                        f"{name}: {info.stat} is the same on every calibration frame"
                        + (f" (channel {c})" if channels > 1 else "")
                        + "; its envelope is the floor width around it: check that the frames "
                        "vary as the deployment's will"
                    )
        profile_input = InputProfile(
            name=name,
            dtypes=(spec.dtype,),
            layout=self.layout[name],
            shape=_shape_ranges(spec, tuple(self.data[name].shape)),
            sat_lo=lo,
            sat_hi=hi,
            channels=channels,
            limits=tuple(limits),
        )
        report = InputReport(
            name=name,
            layout=self.layout[name],
            sat_levels=(lo, hi, source),
            resolution=params.resolution,
            floored={
                i.stat: tuple(c for c, f in enumerate(i.floored) if f)
                for i in infos
                if any(i.floored)
            },
            constant={
                i.stat: tuple(c for c, f in enumerate(i.constant) if f)
                for i in infos
                if any(i.constant)
            },
            widths={i.stat: i.width for i in infos},
        )
        return profile_input, report, {k: values[k] for k in ENVELOPE_STATS}, params

    def _cross_validate(
        self,
        values: Mapping[str, Mapping[str, npt.NDArray[np.float64]]],
        params: Mapping[str, EnvelopeParams],
    ) -> tuple[int, int]:
        """Frames any checked input rejects under an envelope derived without them."""
        rejected = np.zeros(self.frames, dtype=bool)
        for name, vals in values.items():
            rejected |= fold_rejections(vals, params[name], folds=_FOLDS, seed=self.seed)
        return int(rejected.sum()), self.frames

    def _ood(
        self, names: list[str], msp: dict[str, list[Any]], energy: dict[str, list[Any]]
    ) -> list[OodThresholds]:
        result = []
        for o in names:
            m = np.concatenate(msp[o]) if msp[o] else np.zeros(0)
            e = np.concatenate(energy[o]) if energy[o] else np.zeros(0)
            m = m[np.isfinite(m)]
            e = e[np.isfinite(e)]
            if m.size == 0 or e.size == 0:
                raise MalformedError(f"output {o!r} produced no finite logits on calibration data")
            result.append(
                OodThresholds(
                    output=o,
                    msp_min=float(np.quantile(m, self.target)),
                    energy_max=float(np.quantile(e, 1.0 - self.target)),
                )
            )
        return result


def calibrate_stats_only(
    data: Mapping[str, npt.NDArray[Any]],
    *,
    target_false_alarm: float = 0.005,
    margin: float = DEFAULT_MARGIN,
    impl: Impl = "auto",
    layouts: Mapping[str, str] | None = None,
    sat_levels: Mapping[str, tuple[float, float]] | None = None,
    batch_size: int = 256,
) -> SanityProfile:
    """Input envelope from data alone (no model, no OOD thresholds).

    For inputs that no model in hand consumes (evaluation, pre-filters). The
    profile records :data:`NO_MODEL_SHA256` as its model digest and accepts any
    batch size on axis 0; other axes are fixed to the data's shape.
    """
    from edgeguard.backends.base import Backend, TensorSpec

    specs = tuple(
        TensorSpec(name=k, dtype=str(v.dtype), shape=(None, *v.shape[1:])) for k, v in data.items()
    )

    class _NoModel(Backend):
        name = "stats-only"

        def _inputs(self) -> tuple[TensorSpec, ...]:
            return specs

        def _outputs(self) -> tuple[TensorSpec, ...]:
            return ()

        def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {}

        def _close_impl(self) -> None:
            return None

    with _NoModel() as backend:
        return calibrate(
            backend,
            data,
            target_false_alarm=target_false_alarm,
            margin=margin,
            impl=impl,
            layouts=layouts,
            sat_levels=sat_levels,
            model_sha256=NO_MODEL_SHA256,
            batch_size=batch_size,
            progress=False,
        )


# --------------------------------------------------------------------------- data loading


def load_calibration_data(
    path: Path,
    specs: Sequence[TensorSpec],
    *,
    limit: int | None = None,
    limits: ArrayLimits = DEFAULT_ARRAY_LIMITS,
) -> dict[str, npt.NDArray[Any]]:
    """Load calibration frames for a model's inputs.

    Args:
        path: ``.npz`` (arrays named after the inputs; a single-input model also
            accepts an archive whose only non-label array is the data), ``.npy``
            (single input) or a folder of images (single rank-4 input; needs Pillow;
            images are resized to the model's H, W, converted to grey or RGB and
            scaled to 0..1 for float inputs).
        specs: The model's input specs.
        limit: Keep at most this many frames.
        limits: Size limits of an .npz/.npy file, checked (with every array's declared
            dtype and shape against ``specs``) before anything is read.

    Returns:
        Input name -> array.

    Raises:
        UsageError: Missing file, unknown format, or data not matching the inputs.
        MalformedError: Not a readable array file, or over ``limits``.
        MissingDependencyError: Pillow is needed for an image folder.
    """
    if not path.exists():
        raise UsageError(f"calibration data {str(path)!r} does not exist")
    names = [s.name for s in specs]
    out: dict[str, npt.NDArray[Any]] = {}
    if path.is_dir():
        if len(specs) != 1:
            raise UsageError("an image folder can only calibrate a single-input model")
        out[names[0]] = _load_images(path, specs[0], limit)
    elif path.suffix in (".npy", ".npz"):
        if path.suffix == ".npy" and len(specs) != 1:
            raise UsageError("a .npy file can only calibrate a single-input model")
        arrays = open_arrays(path, limits=limits)  # headers only, checked
        keys = list(arrays.headers)
        if all(n in keys for n in names):
            chosen = {n: n for n in names}
        else:
            data_keys = [k for k in keys if k not in ("label", "labels", "y")]
            if len(specs) == 1 and len(data_keys) == 1:
                chosen = {names[0]: data_keys[0]}
            else:
                raise UsageError(f"{path.name} holds {keys}, expected arrays named {names}")
        for s in specs:  # before any data is read
            problem = contract_problem(arrays.headers[chosen[s.name]], s, frames="first-axis")
            if problem is not None:
                raise UsageError(f"calibration data does not fit the model: {problem}")
        data = arrays.read(chosen.values())
        out = {n: data[k] for n, k in chosen.items()}
    else:
        raise UsageError(
            f"unsupported calibration data {path.name!r}",
            hint="use a .npz, a .npy or a folder of images",
        )
    for s in specs:
        arr = out[s.name]
        if arr.dtype != np.dtype(s.dtype):
            raise UsageError(
                f"calibration data {s.name!r} has dtype {arr.dtype}, model expects {s.dtype}"
            )
        if limit is not None:
            out[s.name] = arr[:limit]
    return out


def _load_images(folder: Path, spec: TensorSpec, limit: int | None) -> npt.NDArray[Any]:
    from edgeguard._optional import require

    image_mod = require("PIL.Image", extra="images", purpose="Calibrating from an image folder")
    if len(spec.shape) != 4:
        raise UsageError("an image folder needs a rank-4 model input")
    layout = guess_layout(spec.shape)
    ch, hh, ww = (
        (spec.shape[1], spec.shape[2], spec.shape[3])
        if layout == "NCHW"
        else (spec.shape[3], spec.shape[1], spec.shape[2])
    )
    if not (isinstance(ch, int) and isinstance(hh, int) and isinstance(ww, int)) or ch not in (
        1,
        3,
    ):
        raise UsageError("an image folder needs fixed H, W and 1 or 3 channels in the model")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm")
    )
    if limit is not None:
        files = files[:limit]
    if not files:
        raise UsageError(f"no images in {str(folder)!r}")
    frames = []
    for f in files:
        with image_mod.open(f) as im:
            im = im.convert("L" if ch == 1 else "RGB").resize((ww, hh))
            a = np.asarray(im, dtype=np.uint8).reshape(hh, ww, ch)
        frames.append(a)
    hwc = np.stack(frames)
    arr = hwc if layout == "NHWC" else hwc.transpose(0, 3, 1, 2)
    if spec.dtype == "uint8":
        return np.ascontiguousarray(arr)
    return np.ascontiguousarray(arr.astype(spec.dtype) / np.asarray(255.0, dtype=spec.dtype))


def is_profile_file(path: Path) -> bool:
    """Whether ``path`` is a profile written by ``edgeguard calibrate`` (JSON), not data."""
    return path.is_file() and path.suffix.lower() == ".json"


def load_profile_for(model: bytes, path: Path) -> SanityProfile:
    """A profile from ``edgeguard calibrate``, checked to belong to ``model``.

    Raises:
        UsageError: The file cannot be read.
        MalformedError: It is not a sanity profile.
        UsageError: It was calibrated for another model.
    """
    import json

    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read profile {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise MalformedError(f"{path} is not JSON ({exc})") from exc
    profile = SanityProfile.from_dict(raw)
    digest = hashlib.sha256(bytes(model)).hexdigest()
    if profile.calibration.model_sha256 not in (digest, NO_MODEL_SHA256):
        raise UsageError(
            f"the profile {path} was calibrated for another model "
            f"(sha256 {profile.calibration.model_sha256[:16]}…, this one {digest[:16]}…)",
            hint="calibrate this model, or give its calibration data to build --calibration",
        )
    return profile

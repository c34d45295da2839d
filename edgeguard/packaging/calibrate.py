"""Calibration: derive a :class:`SanityProfile` from a model and calibration data.

Layer: packaging (build side: the profile is signed into the bundle). Runs the
model through a backend (ONNX Runtime by default, imported lazily) and the
statistics implementation over the calibration frames; the data loaders at the
end read ``.npz`` / ``.npy`` files or a folder of images (Pillow, imported lazily).

Envelope per statistic and channel (docs/sanity.md, "Calibration"): with
``k`` envelope checks per frame (statistics x channels), the WARN band is the
empirical quantile range ``[q(a), q(1 - a)]`` with ``a = target / (2k)``
(a union bound, so a clean frame WARNs with probability about ``target``); the
REJECT limits widen that band by ``margin * max(q(1-a) - q(a), floor)`` on
each side (for never-negative statistics the lower limit stays at or above
``q(a) / (1 + margin)``). OOD thresholds: MSP below its ``target`` quantile, energy above its
``1 - target`` quantile (severity WARN).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgeguard.errors import MalformedError, UsageError
from edgeguard.guard.sanity.check import Impl, resolve_impl
from edgeguard.guard.sanity.layout import frames_shape
from edgeguard.guard.sanity.output import energy_score, max_softmax_prob
from edgeguard.guard.sanity.spec import FrameStats
from edgeguard.policy.sanity import (
    ENVELOPE_STATS,
    SUPPORTED_DTYPES,
    CalibrationInfo,
    InputProfile,
    OodThresholds,
    SanityProfile,
    StatLimits,
    default_sat_levels,
)

if TYPE_CHECKING:
    from edgeguard.backends.base import Backend, TensorSpec

__all__ = [
    "DEFAULT_MARGIN",
    "NO_MODEL_SHA256",
    "calibrate",
    "calibrate_stats_only",
    "derive_limits",
    "guess_layout",
    "load_calibration_data",
]

#: Default margin factor (fraction of the quantile range added on each side for REJECT).
DEFAULT_MARGIN = 0.5
#: ``model_sha256`` of a statistics-only profile (SHA-256 of the empty string: no model).
NO_MODEL_SHA256 = hashlib.sha256(b"").hexdigest()
#: Statistics whose scale is the saturation range (their floor scales with |hi - lo|).
_VALUE_STATS = frozenset({"min", "max", "mean", "std", "tdiff"})
#: Statistics that are never negative: their lower REJECT limit stays above
#: ``q_lo / (1 + margin)``, so a positive calibrated floor keeps exact zeros
#: (frozen frame, constant frame) outside the envelope.
_NONNEG_STATS = frozenset({"std", "sat_lo", "sat_hi", "hf", "tdiff"})


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


def derive_limits(
    stat: str,
    values: npt.NDArray[np.float64],
    *,
    alpha: float,
    margin: float,
    scale: float,
) -> StatLimits:
    """Limits of one statistic from its calibration values ``[frames, C]``.

    Args:
        stat: Statistic name.
        values: Calibration values; NaN entries are ignored.
        alpha: Tail probability of each side of the WARN band.
        margin: Widening factor of the REJECT limits.
        scale: Saturation range |hi - lo| (sets the floor of value statistics).

    Returns:
        The limits (unbounded on a channel without any finite calibration value).
    """
    floor = 1e-3 * (scale if stat in _VALUE_STATS else 1.0)
    wl, wh, rl, rh = [], [], [], []
    for c in range(values.shape[1]):
        v = values[:, c]
        v = v[np.isfinite(v)]
        if v.size == 0:
            wl.append(-np.inf)
            wh.append(np.inf)
            rl.append(-np.inf)
            rh.append(np.inf)
            continue
        q_lo, q_hi = (float(q) for q in np.quantile(v, [alpha, 1.0 - alpha]))
        pad = margin * max(q_hi - q_lo, floor)
        wl.append(q_lo)
        wh.append(q_hi)
        low = q_lo - pad
        if stat in _NONNEG_STATS:
            low = max(low, q_lo / (1.0 + margin))
        rl.append(low)
        rh.append(q_hi + pad)
    return StatLimits(
        stat=stat,
        warn_low=tuple(wl),
        warn_high=tuple(wh),
        reject_low=tuple(rl),
        reject_high=tuple(rh),
    )


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
            out.append((observed[axis], observed[axis]))
    return tuple(out)


def _stack_stats(parts: list[FrameStats], stat: str) -> npt.NDArray[np.float64] | None:
    arrs = [p.get(stat) for p in parts]
    got = [np.asarray(a, dtype=np.float64) for a in arrs if a is not None]
    return np.concatenate(got, axis=0) if got else None


def calibrate(
    model: Backend | bytes,
    data: Mapping[str, npt.NDArray[Any]],
    *,
    target_false_alarm: float = 0.005,
    margin: float = DEFAULT_MARGIN,
    impl: Impl = "auto",
    layouts: Mapping[str, str] | None = None,
    sat_levels: Mapping[str, tuple[float, float]] | None = None,
    logits: Sequence[str] | None = None,
    model_sha256: str | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> SanityProfile:
    """Run the model over calibration data and derive a sanity profile.

    Args:
        model: ONNX model bytes (loaded into ONNX Runtime) or an open backend.
        data: Input name -> calibration frames (axis 0 = frames, consecutive
            frames are treated as a sequence for ``tdiff``).
        target_false_alarm: Target per-frame false-alarm (WARN) rate on clean data.
        margin: REJECT widening factor (see module docstring).
        impl: Statistics implementation.
        layouts: Input name -> "NCHW"/"NHWC" (default: guessed from the model shape).
        sat_levels: Input name -> (lo, hi) (default: per dtype).
        logits: Outputs to derive OOD thresholds for (default: every float rank-2
            output with at least two columns).
        model_sha256: Hex digest of the model; required when ``model`` is a backend.
        batch_size: Frames per model call.
        progress: Show a rich progress bar.

    Returns:
        The profile.

    Raises:
        UsageError: Bad arguments, missing inputs, wrong data shapes or dtypes.
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
        return _calibrate(
            backend,
            data,
            digest,
            stats_fn,
            impl_name,
            target=target_false_alarm,
            margin=margin,
            layouts=layouts or {},
            sat_levels=sat_levels or {},
            logits=logits,
            batch_size=batch_size,
            progress=progress,
        )
    finally:
        if owned:
            backend.close()


def _calibrate(
    backend: Backend,
    data: Mapping[str, npt.NDArray[Any]],
    digest: str,
    stats_fn: Any,
    impl_name: str,
    *,
    target: float,
    margin: float,
    layouts: Mapping[str, str],
    sat_levels: Mapping[str, tuple[float, float]],
    logits: Sequence[str] | None,
    batch_size: int,
    progress: bool,
) -> SanityProfile:
    specs = backend.inputs()
    missing = [s.name for s in specs if s.name not in data]
    if missing:
        raise UsageError(
            f"calibration data lacks inputs {missing}",
            hint=f"provide arrays named {[s.name for s in specs]}",
        )
    counts = set()
    for s in specs:
        arr = data[s.name]
        if not isinstance(arr, np.ndarray) or arr.ndim != len(s.shape):
            raise UsageError(f"calibration data {s.name!r} must be an array of rank {len(s.shape)}")
        if str(arr.dtype) != s.dtype:
            raise UsageError(
                f"calibration data {s.name!r} has dtype {arr.dtype}, model expects {s.dtype}"
            )
        if s.dtype not in SUPPORTED_DTYPES:
            raise UsageError(f"input {s.name!r} has dtype {s.dtype}, which the guard cannot check")
        counts.add(arr.shape[0])
    if len(counts) != 1:
        raise UsageError("every calibration input needs the same number of frames")
    total = counts.pop()
    if total < 2:
        raise UsageError("calibration needs at least 2 frames")
    lay = {s.name: layouts.get(s.name, guess_layout(s.shape)) for s in specs}
    sat = {s.name: sat_levels.get(s.name, default_sat_levels(s.dtype)) for s in specs}
    out_specs = backend.outputs()
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
    stats: dict[str, list[FrameStats]] = {s.name: [] for s in specs}
    tstats: dict[str, list[FrameStats]] = {s.name: [] for s in specs}
    msp: dict[str, list[npt.NDArray[np.float64]]] = {o: [] for o in ood_names}
    energy: dict[str, list[npt.NDArray[np.float64]]] = {o: [] for o in ood_names}

    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("calibrating", total=total)
        for start in range(0, total, batch_size):
            stop = min(total, start + batch_size)
            feeds = {s.name: np.ascontiguousarray(data[s.name][start:stop]) for s in specs}
            for s in specs:
                x = feeds[s.name]
                lo, hi = sat[s.name]
                stats[s.name].append(stats_fn(x, layout=lay[s.name], sat_lo=lo, sat_hi=hi))
                p0 = max(start - 1, 0)
                cur = np.ascontiguousarray(data[s.name][p0 + 1 : stop])
                prv = np.ascontiguousarray(data[s.name][p0 : stop - 1])
                if cur.shape[0]:
                    tstats[s.name].append(
                        stats_fn(cur, layout=lay[s.name], sat_lo=lo, sat_hi=hi, prev=prv)
                    )
            outs = backend.run(feeds)
            for o in ood_names:
                if o not in outs:
                    raise UsageError(f"model has no output {o!r}")
                msp[o].append(max_softmax_prob(outs[o]))
                energy[o].append(energy_score(outs[o]))
            bar.update(task, advance=stop - start)

    inputs = []
    for s in specs:
        layout = lay[s.name]
        lo, hi = sat[s.name]
        _, channels, _, _ = frames_shape(data[s.name].shape, layout)
        per_frame_checks = len(ENVELOPE_STATS) * max(channels, 1)
        alpha = target / (2.0 * per_frame_checks)
        limits = []
        for stat in ENVELOPE_STATS:
            src = tstats[s.name] if stat == "tdiff" else stats[s.name]
            vals = _stack_stats(src, stat)
            if vals is None:
                continue
            limits.append(derive_limits(stat, vals, alpha=alpha, margin=margin, scale=abs(hi - lo)))
        inputs.append(
            InputProfile(
                name=s.name,
                dtypes=(s.dtype,),
                layout=layout,
                shape=_shape_ranges(s, tuple(data[s.name].shape)),
                sat_lo=lo,
                sat_hi=hi,
                channels=channels,
                limits=tuple(limits),
            )
        )
    ood = []
    for o in ood_names:
        m = np.concatenate(msp[o])
        e = np.concatenate(energy[o])
        m = m[np.isfinite(m)]
        e = e[np.isfinite(e)]
        if m.size == 0 or e.size == 0:
            raise MalformedError(f"output {o!r} produced no finite logits on calibration data")
        ood.append(
            OodThresholds(
                output=o,
                msp_min=float(np.quantile(m, target)),
                energy_max=float(np.quantile(e, 1.0 - target)),
            )
        )
    return SanityProfile(
        inputs=tuple(inputs),
        ood=tuple(ood),
        target_false_alarm=target,
        calibration=CalibrationInfo(
            samples=total, model_sha256=digest, impl=impl_name, margin=margin
        ),
    )


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

    Returns:
        Input name -> array.

    Raises:
        UsageError: Missing file, unknown format, or data not matching the inputs.
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
    elif path.suffix == ".npy":
        if len(specs) != 1:
            raise UsageError("a .npy file can only calibrate a single-input model")
        out[names[0]] = np.load(path, allow_pickle=False)
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            if all(n in keys for n in names):
                out = {n: z[n] for n in names}
            else:
                data_keys = [k for k in keys if k not in ("label", "labels", "y")]
                if len(specs) == 1 and len(data_keys) == 1:
                    out[names[0]] = z[data_keys[0]]
                else:
                    raise UsageError(f"{path.name} holds {keys}, expected arrays named {names}")
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

"""Golden vectors of the sanity statistics, shared by every implementation.

Layer: :mod:`edgeguard.guard` (test support; imports only NumPy and the oracle).

Each case is stored in ``tests/vectors/sanity/`` as ``<case>.npz`` (arrays
``x`` and, when present, ``prev``) plus ``<case>.json`` (layout, saturation
levels and the oracle's expected statistics; NaN as null, infinities as the
strings "inf"/"-inf"). The files are regenerated only on request::

    python -m edgeguard.guard.sanity.vectors --regenerate [--dir DIR]

Without ``--regenerate`` the command checks the stored files against the
oracle and exits non-zero on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeguard.guard.sanity.reference import reference_stats
from edgeguard.guard.sanity.spec import CHANNEL_STATS, FRAME_STATS, FrameStats, decode_floats

__all__ = [
    "ATOL",
    "EXACT_STATS",
    "RTOL",
    "VectorCase",
    "build_cases",
    "default_dir",
    "load_case",
    "load_cases",
    "stats_mismatches",
    "write_cases",
]

#: Statistics that must match the oracle exactly (-0.0 == +0.0).
EXACT_STATS: frozenset[str] = frozenset({"nan", "posinf", "neginf", "count", "min", "max"})
#: Relative tolerance of the float statistics against the oracle. The mean is compared
#: relative to ``|mean| + std`` (its rounding scales with the data's spread, not with a
#: mean that may be near zero). 1e-5 covers the Numba CPU float32 path, which sums in
#: float32 within segments of at most 512 elements (docs/sanity.md, section 9).
RTOL = 1e-5
#: Absolute tolerance of the float statistics against the oracle.
ATOL = 1e-9

FORMAT = "edgeguard.sanity-vector"


@dataclass(frozen=True, eq=False)
class VectorCase:
    """One golden vector.

    Attributes:
        name: Case name (file stem).
        description: What the case exercises.
        x: Input tensor.
        layout: "NCHW" or "NHWC".
        sat_lo: Low saturation level.
        sat_hi: High saturation level.
        prev: Previous frame batch or None.
        expected: Expected statistics as stored (the ``FrameStats.to_dict`` form).
    """

    name: str
    description: str
    x: npt.NDArray[Any]
    layout: str
    sat_lo: float
    sat_hi: float
    prev: npt.NDArray[Any] | None = None
    expected: dict[str, Any] | None = None


def default_dir() -> Path:
    """``tests/vectors/sanity`` of the source tree this module lives in."""
    return Path(__file__).resolve().parents[3] / "tests" / "vectors" / "sanity"


def _sprinkle(rng: np.random.Generator, x: npt.NDArray[Any], frac: float) -> npt.NDArray[Any]:
    y: npt.NDArray[Any] = x.copy()
    flat = y.reshape(-1)
    k = max(1, int(frac * flat.size))
    idx = rng.choice(flat.size, size=k, replace=False)
    specials = np.array([np.nan, np.inf, -np.inf], dtype=y.dtype)
    flat[idx] = specials[rng.integers(0, 3, size=k)]
    return y


def build_cases() -> list[VectorCase]:
    """The golden cases, deterministic (fixed seeds), without expected values."""
    rng = np.random.default_rng(20261123)
    f32, f16, u8 = np.float32, np.float16, np.uint8
    cases: list[VectorCase] = []

    def add(
        name: str,
        desc: str,
        x: npt.NDArray[Any],
        layout: str = "NCHW",
        lo: float | None = None,
        hi: float | None = None,
        prev: npt.NDArray[Any] | None = None,
    ) -> None:
        dlo, dhi = (0.0, 255.0) if x.dtype == np.uint8 else (0.0, 1.0)
        cases.append(
            VectorCase(
                name,
                desc,
                np.ascontiguousarray(x),
                layout,
                dlo if lo is None else lo,
                dhi if hi is None else hi,
                None if prev is None else np.ascontiguousarray(prev),
            )
        )

    add("f32_nchw_basic", "float32 NCHW uniform 0..1", rng.random((2, 3, 5, 7)).astype(f32))
    add("f32_nhwc_basic", "float32 NHWC uniform 0..1", rng.random((2, 5, 7, 3)).astype(f32), "NHWC")
    sat = rng.random((2, 3, 6, 9)).astype(f32) * 1.4 - 0.2
    add("f32_nchw_saturating", "float32 with values below 0 and above 1", np.clip(sat, 0.0, 1.0))
    add("u8_nchw", "uint8 NCHW with 0 and 255", rng.integers(0, 256, (2, 3, 4, 6)).astype(u8))
    add("u8_nhwc", "uint8 NHWC", rng.integers(0, 256, (1, 6, 5, 3)).astype(u8), "NHWC")
    add("u8_all_255", "uint8 fully saturated", np.full((1, 3, 3, 4), 255, dtype=u8))
    add(
        "f16_nchw",
        "float16 NCHW incl. values > 1",
        (rng.standard_normal((2, 2, 4, 5)) * 2).astype(f16),
    )
    add(
        "f16_nhwc_specials",
        "float16 NHWC with NaN/inf, subnormals, 65504",
        _sprinkle(rng, np.array(rng.standard_normal((1, 4, 6, 3)), dtype=f16), 0.1).copy(),
        "NHWC",
    )
    f16s = np.zeros((1, 1, 2, 4), dtype=f16)
    f16s[0, 0] = [[6e-8, -6e-8, 65504, -65504], [1e-7, 0.0, -0.0, 3.0]]
    add("f16_extremes", "float16 subnormals and +/-max", f16s)
    add("f64_nchw", "float64 NCHW", rng.standard_normal((2, 2, 3, 4)))
    add("all_nan", "all NaN (count 0)", np.full((1, 2, 3, 3), np.nan, dtype=f32))
    add(
        "all_inf",
        "only +inf and -inf",
        np.where(rng.random((1, 2, 3, 3)) < 0.5, np.inf, -np.inf).astype(f32),
    )
    add("empty_n0", "no frames", np.zeros((0, 3, 4, 4), dtype=f32))
    add("empty_h0", "frames with zero rows", np.zeros((2, 3, 0, 4), dtype=f32))
    add("empty_w0_nhwc", "NHWC frames with zero columns", np.zeros((1, 2, 0, 3), dtype=u8), "NHWC")
    add("single_element", "one value", np.array([[[[0.5]]]], dtype=f32))
    add("single_column", "W = 1: no horizontal pairs", rng.random((2, 2, 3, 1)).astype(f32))
    den = np.array([1e-45, -1e-45, 1e-40, -1e-39, 1.1754942e-38, 0.0], dtype=f32)
    add("denormals_f32", "float32 subnormal values", np.resize(den, (1, 1, 3, 6)).astype(f32))
    zeros = np.array([0.0, -0.0, -0.0, 0.0, -0.0, 0.0], dtype=f32).reshape(1, 1, 2, 3)
    add("signed_zeros", "+0.0 and -0.0 only", zeros)
    huge = np.array([3.4e38, -3.4e38, 1e38, -1e30, 3.4028235e38, -3.4028235e38], dtype=f32)
    add("huge_f32", "float32 near +/-max", np.resize(huge, (1, 2, 2, 3)).astype(f32))
    add(
        "nan_inf_nchw",
        "float32 NCHW with 10% NaN/+inf/-inf",
        _sprinkle(rng, rng.random((3, 2, 5, 6)).astype(f32), 0.1),
    )
    add(
        "nan_inf_nhwc",
        "float32 NHWC with 10% NaN/+inf/-inf",
        _sprinkle(rng, rng.random((2, 4, 5, 3)).astype(f32), 0.1),
        "NHWC",
    )
    add(
        "large_offset",
        "float32 1000 + small noise (std soundness)",
        (1000.0 + 1e-2 * rng.standard_normal((1, 2, 8, 8))).astype(f32),
        lo=999.0,
        hi=1001.0,
    )
    add("constant", "constant frame (std 0, hf 0)", np.full((1, 3, 4, 4), 0.25, dtype=f32))
    add(
        "custom_sat",
        "sat levels -1 and 2",
        (rng.random((1, 2, 4, 4)) * 5 - 2).astype(f32),
        lo=-1.0,
        hi=2.0,
    )
    add("rank2", "rank-2 [N, F] features", rng.standard_normal((4, 10)).astype(f32))
    add("rank3_chw", "rank-3 CHW single frame", rng.random((3, 4, 5)).astype(f32))
    add(
        "rank3_hwc_u8",
        "rank-3 HWC uint8 single frame",
        rng.integers(0, 256, (4, 5, 3)).astype(u8),
        "NHWC",
    )
    px = rng.random((2, 3, 4, 5)).astype(f32)
    pp = _sprinkle(rng, (px + 0.1 * rng.standard_normal(px.shape)).astype(f32), 0.1)
    add("prev_nchw", "tdiff with NaN/inf in prev", _sprinkle(rng, px, 0.05), prev=pp)
    pu = rng.integers(0, 256, (2, 4, 5, 3)).astype(u8)
    add(
        "prev_u8_nhwc",
        "tdiff uint8 NHWC",
        pu,
        "NHWC",
        prev=np.clip(pu.astype(np.int64) + rng.integers(-5, 6, pu.shape), 0, 255).astype(u8),
    )
    pn = np.full((1, 1, 2, 2), np.nan, dtype=f32)
    add(
        "prev_all_nan",
        "tdiff with no finite pair (NaN)",
        rng.random((1, 1, 2, 2)).astype(f32),
        prev=pn,
    )
    add("prev_frozen", "prev equals x (tdiff 0)", px, prev=px.copy())
    return cases


def _expected_dict(stats: FrameStats) -> dict[str, Any]:
    d = stats.to_dict()
    return {k: d[k] for k in (*FRAME_STATS, *CHANNEL_STATS)}


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_cases(directory: Path, cases: Sequence[VectorCase] | None = None) -> list[Path]:
    """Compute the oracle's statistics and write every case to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for case in build_cases() if cases is None else cases:
        stats = reference_stats(
            case.x, layout=case.layout, sat_lo=case.sat_lo, sat_hi=case.sat_hi, prev=case.prev
        )
        arrays: dict[str, npt.NDArray[Any]] = {"x": case.x}
        if case.prev is not None:
            arrays["prev"] = case.prev
        npz_path = directory / f"{case.name}.npz"
        import io

        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        _atomic_write(npz_path, buf.getvalue())
        meta = {
            "format": FORMAT,
            "case": case.name,
            "description": case.description,
            "dtype": str(case.x.dtype),
            "shape": list(case.x.shape),
            "layout": case.layout,
            "sat_lo": case.sat_lo,
            "sat_hi": case.sat_hi,
            "has_prev": case.prev is not None,
            "tolerance": {"rtol": RTOL, "atol": ATOL, "exact": sorted(EXACT_STATS)},
            "expected": _expected_dict(stats),
        }
        json_path = directory / f"{case.name}.json"
        _atomic_write(json_path, (json.dumps(meta, indent=1, allow_nan=False) + "\n").encode())
        written += [npz_path, json_path]
    return written


def load_case(json_path: Path) -> VectorCase:
    """Load one stored case (its ``.json`` and ``.npz``)."""
    meta = json.loads(json_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{json_path} is not a sanity vector")
    with np.load(json_path.with_suffix(".npz"), allow_pickle=False) as z:
        x = z["x"]
        prev = z["prev"] if "prev" in z.files else None
    return VectorCase(
        meta["case"],
        meta["description"],
        x,
        meta["layout"],
        float(meta["sat_lo"]),
        float(meta["sat_hi"]),
        prev,
        meta["expected"],
    )


def load_cases(directory: Path | None = None) -> list[VectorCase]:
    """Every stored case of ``directory`` (default :func:`default_dir`), sorted by name."""
    d = default_dir() if directory is None else directory
    return [load_case(p) for p in sorted(d.glob("*.json"))]


def _close(a: float, e: float, exact: bool, rtol: float, atol: float) -> bool:
    if math.isnan(e) or math.isnan(a):
        return math.isnan(e) and math.isnan(a)
    if exact or math.isinf(e) or math.isinf(a):
        return a == e
    return abs(a - e) <= atol + rtol * abs(e)


def stats_mismatches(
    actual: FrameStats,
    expected: dict[str, Any] | FrameStats,
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
    limit: int = 10,
) -> list[str]:
    """Differences between ``actual`` and ``expected`` beyond the stated tolerances.

    Counts, min and max must match exactly (-0.0 equals +0.0); the other float
    statistics within ``atol + rtol * |expected|`` (the mean within
    ``atol + rtol * (|expected| + expected std)``); NaN must match NaN.

    Returns:
        Up to ``limit`` human-readable mismatch descriptions (empty: agreement).
    """
    exp = expected.to_dict() if isinstance(expected, FrameStats) else expected
    out: list[str] = []
    for name in (*FRAME_STATS, *CHANNEL_STATS):
        a_arr = actual.get(name)
        e_raw = exp.get(name)
        if a_arr is None or e_raw is None:
            if (a_arr is None) != (e_raw is None):
                out.append(f"{name}: present in only one of actual/expected")
            continue
        e_arr = decode_floats(e_raw) if not isinstance(e_raw, np.ndarray) else e_raw
        e_arr = np.asarray(e_arr, dtype=np.float64)
        a64 = np.asarray(a_arr, dtype=np.float64)
        if a64.shape != e_arr.shape and not (a64.size == 0 and e_arr.size == 0):
            out.append(f"{name}: shape {a64.shape} != expected {e_arr.shape}")
            continue
        exact = name in EXACT_STATS
        scale = None
        if name == "mean" and exp.get("std") is not None:
            s_raw = exp["std"]
            scale = np.abs(
                np.asarray(
                    decode_floats(s_raw) if not isinstance(s_raw, np.ndarray) else s_raw,
                    dtype=np.float64,
                )
            )
        for idx in np.ndindex(*a64.shape):
            a, e = float(a64[idx]), float(e_arr[idx])
            at = atol
            if scale is not None and scale.shape == e_arr.shape and math.isfinite(scale[idx]):
                at = atol + rtol * float(scale[idx])
            if not _close(a, e, exact, rtol, at):
                out.append(f"{name}{list(idx)}: {a!r} != expected {e!r}")
                if len(out) >= limit:
                    return out
    return out


def check_stored(
    directory: Path | None = None,
    compute: Callable[..., FrameStats] = reference_stats,
) -> dict[str, list[str]]:
    """Recompute every stored case with ``compute``; mismatches per case (empty: all agree)."""
    bad: dict[str, list[str]] = {}
    for case in load_cases(directory):
        stats = compute(
            case.x, layout=case.layout, sat_lo=case.sat_lo, sat_hi=case.sat_hi, prev=case.prev
        )
        assert case.expected is not None
        diffs = stats_mismatches(stats, case.expected)
        if diffs:
            bad[case.name] = diffs
    return bad


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: check the stored vectors, or regenerate them with --regenerate."""
    parser = argparse.ArgumentParser(prog="python -m edgeguard.guard.sanity.vectors")
    parser.add_argument(
        "--regenerate",
        action="store_true",
        help="rewrite the golden vectors from the oracle (never automatic)",
    )
    parser.add_argument("--dir", type=Path, default=None, help="vector directory")
    args = parser.parse_args(argv)
    directory = default_dir() if args.dir is None else args.dir
    if args.regenerate:
        written = write_cases(directory)
        print(f"wrote {len(written) // 2} cases to {directory}")
        return 0
    bad = check_stored(directory)
    n = len(load_cases(directory))
    for name, diffs in bad.items():
        print(f"{name}: " + "; ".join(diffs))
    print(f"{n - len(bad)} of {n} stored cases agree with the oracle")
    return 1 if bad or n == 0 else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Golden vectors: stored files agree with the oracle, and every host implementation agrees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeguard.errors import UsageError
from edgeguard.guard.sanity import vectors
from edgeguard.guard.sanity.cpu import numba_stats
from edgeguard.guard.sanity.reference import reference_stats

CASES = vectors.load_cases()
IDS = [c.name for c in CASES]


def test_vector_set_is_complete() -> None:
    stored = {c.name for c in CASES}
    defined = {c.name for c in vectors.build_cases()}
    assert stored == defined, (
        "regenerate with: python -m edgeguard.guard.sanity.vectors --regenerate"
    )
    dtypes = {str(c.x.dtype) for c in CASES}
    assert {"float32", "float16", "uint8"} <= dtypes
    assert {"NCHW", "NHWC"} <= {c.layout for c in CASES}
    assert any(c.x.size == 0 for c in CASES)
    assert any(c.x.size == 1 for c in CASES)
    assert any(np.isnan(c.x.astype(np.float64)).all() and c.x.size for c in CASES)
    assert (Path(vectors.default_dir()) / "README.md").is_file()


def test_stored_vectors_match_the_oracle() -> None:
    assert vectors.check_stored(compute=reference_stats) == {}


def test_stored_inputs_match_the_generator() -> None:
    built = {c.name: c for c in vectors.build_cases()}
    for case in CASES:
        np.testing.assert_array_equal(case.x, built[case.name].x)


@pytest.mark.parametrize("simd", [False, None], ids=["portable", "default"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_numba_cpu_matches_vector(case: vectors.VectorCase, simd: bool | None) -> None:
    # uint8: simd=None takes the AVX-512 loop where the CPU has it, False the portable one
    stats = numba_stats(
        case.x,
        layout=case.layout,
        sat_lo=case.sat_lo,
        sat_hi=case.sat_hi,
        prev=case.prev,
        simd=simd,
    )
    assert case.expected is not None
    assert vectors.stats_mismatches(stats, case.expected) == []


def test_mismatch_detection_is_not_vacuous() -> None:
    case = next(c for c in CASES if c.name == "f32_nchw_basic")
    stats = reference_stats(case.x, layout=case.layout)
    assert case.expected is not None
    broken = dict(case.expected)
    broken["mean"] = [[m + 1e-3 for m in row] for row in case.expected["mean"]]
    broken["count"] = [[k + 1 for k in row] for row in case.expected["count"]]
    diffs = vectors.stats_mismatches(stats, broken)
    assert any(d.startswith("mean") for d in diffs)
    assert any(d.startswith("count") for d in diffs)
    # within tolerance is accepted
    near = dict(case.expected)
    near["mean"] = [[m * (1 + 1e-8) for m in row] for row in case.expected["mean"]]
    assert vectors.stats_mismatches(stats, near) == []


def test_cli_checks_and_regenerates_only_on_request(tmp_path: Path) -> None:
    assert vectors.main(["--dir", str(tmp_path)]) == 1  # nothing stored: failure
    assert not list(tmp_path.iterdir())
    assert vectors.main(["--dir", str(tmp_path), "--regenerate"]) == 0
    assert vectors.main(["--dir", str(tmp_path)]) == 0
    meta_path = tmp_path / "single_element.json"
    meta = json.loads(meta_path.read_text())
    assert meta["expected"]["mean"] == [[0.5]]
    meta["expected"]["mean"] = [[0.25]]
    meta_path.write_text(json.dumps(meta))
    assert vectors.main(["--dir", str(tmp_path)]) == 1


def test_json_encoding_of_special_values() -> None:
    case = next(c for c in CASES if c.name == "all_nan")
    assert case.expected is not None
    assert case.expected["mean"][0] == [None, None]
    assert case.expected["min"][0] == ["inf", "inf"]
    assert case.expected["max"][0] == ["-inf", "-inf"]
    assert case.expected["nan"] == [18]
    assert case.expected["tdiff"] is None


@pytest.mark.parametrize(
    ("x", "kwargs"),
    [
        (np.zeros((2, 3), dtype=np.int32), {}),
        (np.zeros(5, dtype=np.float32), {}),
        (np.zeros((1, 1, 1, 1, 1), dtype=np.float32), {}),
        (np.zeros((1, 1, 2, 2), dtype=np.float32), {"layout": "CHWN"}),
        (np.zeros((1, 1, 2, 2), dtype=np.float32), {"sat_lo": 1.0, "sat_hi": 0.0}),
        (np.zeros((1, 1, 2, 2), dtype=np.float32), {"sat_hi": float("nan")}),
        (np.zeros((1, 1, 2, 2), dtype=np.float32), {"prev": np.zeros((1, 1, 2, 3), np.float32)}),
        (np.zeros((1, 1, 2, 2), dtype=np.float32), {"prev": np.zeros((1, 1, 2, 2), np.uint8)}),
    ],
)
@pytest.mark.parametrize("fn", [reference_stats, numba_stats])
def test_invalid_arguments_are_refused(
    fn: object, x: np.ndarray, kwargs: dict[str, object]
) -> None:
    with pytest.raises(UsageError):
        fn(x, **kwargs)  # type: ignore[operator]

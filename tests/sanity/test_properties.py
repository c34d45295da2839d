"""Property tests: the Numba CPU kernel agrees with the oracle on random inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeguard.guard.sanity.cpu import numba_stats
from edgeguard.guard.sanity.reference import reference_stats
from edgeguard.guard.sanity.vectors import stats_mismatches


@st.composite
def tensors(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray | None, str, float, float]:
    dtype = draw(st.sampled_from(["float32", "float16", "uint8", "float64"]))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    rank = draw(st.sampled_from([2, 3, 4, 4]))
    dims = draw(st.lists(st.integers(0, 9), min_size=rank, max_size=rank))
    if rank == 4 and draw(st.booleans()):
        dims[1 if layout == "NCHW" else 3] = 3
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shape = tuple(dims)
    if dtype == "uint8":
        x: Any = rng.integers(0, 256, shape).astype(np.uint8)
    else:
        scale = draw(st.sampled_from([1e-3, 1.0, 100.0, 1e4]))
        offset = draw(st.sampled_from([0.0, 0.5, -3.0, 1000.0]))
        x = (offset + scale * rng.standard_normal(shape)).astype(dtype)
        if x.size and draw(st.booleans()):
            k = draw(st.integers(1, max(1, x.size)))
            idx = rng.choice(x.size, size=k, replace=True)
            specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype=dtype)
            x.reshape(-1)[idx] = specials[rng.integers(0, 5, size=k)]
    prev = None
    if draw(st.booleans()):
        prev = x.copy()
        if x.size and dtype != "uint8":
            prev = (prev + rng.standard_normal(shape)).astype(dtype)
            prev.reshape(-1)[rng.integers(0, x.size)] = np.nan
        elif x.size:
            prev = rng.integers(0, 256, shape).astype(np.uint8)
    lo, hi = (
        (0.0, 255.0)
        if dtype == "uint8"
        else draw(st.sampled_from([(0.0, 1.0), (-1.0, 2.0), (999.0, 1001.0)]))
    )
    return x, prev, layout, lo, hi


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensors())
def test_numba_cpu_agrees_with_oracle(case: tuple[Any, Any, str, float, float]) -> None:
    x, prev, layout, lo, hi = case
    kw: dict[str, Any] = {"layout": layout, "sat_lo": lo, "sat_hi": hi, "prev": prev}
    expected = reference_stats(x, **kw)
    got = numba_stats(x, **kw)
    assert stats_mismatches(got, expected) == []
    # shape of every statistic: [N] and [N, C]
    assert got.count.shape == expected.count.shape
    assert got.nan.shape == (expected.count.shape[0],)


def test_large_frames_use_several_row_blocks() -> None:
    rng = np.random.default_rng(3)
    x = (rng.random((1, 3, 200, 64)) + 500).astype(np.float32)
    x[0, 1, 150, 7] = np.nan
    got = numba_stats(x, sat_lo=500.0, sat_hi=501.0)
    assert stats_mismatches(got, reference_stats(x, sat_lo=500.0, sat_hi=501.0)) == []
    assert got.nan.tolist() == [1]

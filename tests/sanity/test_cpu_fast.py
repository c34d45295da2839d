"""Fast paths of the Numba CPU sanity kernel against the NumPy oracle.

Covers the uint8 integer path, the float branch-free path with and without
non-finite values (including values at segment and row boundaries), the serial
path for small tensors and the argument shortcut's refusals.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeguard.errors import UsageError
from edgeguard.guard.sanity import cpu
from edgeguard.guard.sanity.cpu import numba_stats, sat_bounds_f32
from edgeguard.guard.sanity.reference import reference_stats
from edgeguard.guard.sanity.vectors import stats_mismatches

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _u8_simd() -> bool:
    from edgeguard.guard.sanity import _cpu as k

    return bool(k.U8_SIMD)


#: Both uint8 loops: the portable one runs everywhere; the AVX-512 one where the CPU has it.
U8_LOOPS = [
    pytest.param(False, id="portable"),
    pytest.param(
        True,
        id="simd",
        marks=pytest.mark.skipif(not _u8_simd(), reason="CPU lacks AVX-512 BW + VNNI"),
    ),
]


def _agree(x: Any, *, simd: bool | None = None, serial: bool | None = None, **kw: Any) -> None:
    got = numba_stats(x, simd=simd, serial=serial, **kw)
    exp = reference_stats(x, **kw)
    assert stats_mismatches(got, exp) == []
    assert got.count.shape == exp.count.shape


def _shape(draw: st.DrawFn, layout: str) -> tuple[int, ...]:
    n = draw(st.integers(0, 3))
    c = draw(st.sampled_from([1, 2, 3, 4]))
    h = draw(st.integers(0, 40))
    w = draw(st.integers(0, 70))
    return (n, c, h, w) if layout == "NCHW" else (n, h, w, c)


@st.composite
def u8_cases(draw: st.DrawFn) -> tuple[Any, Any, str, float, float]:
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    shape = _shape(draw, layout)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["uniform", "narrow", "extremes"]))
    if kind == "uniform":
        x = rng.integers(0, 256, shape).astype(np.uint8)
    elif kind == "narrow":  # nearly constant: variance from exact moments must not cancel
        base = int(rng.integers(0, 256))
        x = np.clip(base + rng.integers(-1, 2, shape), 0, 255).astype(np.uint8)
    else:
        x = rng.choice(np.array([0, 1, 254, 255], dtype=np.uint8), size=shape)
    prev = rng.integers(0, 256, shape).astype(np.uint8) if draw(st.booleans()) else None
    lo, hi = draw(st.sampled_from([(0.0, 255.0), (0.5, 254.5), (-3.0, 300.0), (10.0, 11.0)]))
    return x, prev, layout, lo, hi


@pytest.mark.parametrize("simd", U8_LOOPS)
@SETTINGS
@given(u8_cases(), st.booleans())
def test_uint8_integer_path_agrees(
    simd: bool, case: tuple[Any, Any, str, float, float], serial: bool
) -> None:
    x, prev, layout, lo, hi = case
    _agree(x, layout=layout, sat_lo=lo, sat_hi=hi, prev=prev, simd=simd, serial=serial)


@pytest.mark.parametrize("simd", U8_LOOPS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_uint8_vector_edges_and_long_runs(simd: bool, layout: str, channels: int) -> None:
    """Widths around the 64-value vectors and the 128-value loop step; runs longer
    than one call of either loop (SEG_U8GEN, SEG_U8SIMD), with a neighbour pair
    across each call boundary."""
    from edgeguard.guard.sanity import _cpu as k

    rng = np.random.default_rng(channels)
    for w in (1, 2, 63, 64, 65, 127, 128, 129, 191, 192, 193, 640):
        shape = (2, channels, 5, w) if layout == "NCHW" else (2, 5, w, channels)
        x = rng.integers(0, 256, shape).astype(np.uint8)
        prev = rng.integers(0, 256, shape).astype(np.uint8)
        for serial in (True, False):
            _agree(x, layout=layout, prev=prev, simd=simd, serial=serial)
            _agree(x, layout=layout, sat_lo=9.5, sat_hi=200.0, simd=simd, serial=serial)
    h = k.SEG_U8SIMD // 512 + 3  # one channel's run (NCHW) or pixels (NHWC) > SEG_U8SIMD
    shape = (1, channels, h, 512) if layout == "NCHW" else (1, h, 512, channels)
    x = rng.integers(0, 256, shape).astype(np.uint8)
    flat = x.reshape(-1)
    step = 1 if layout == "NCHW" else channels
    for seg in (k.SEG_U8GEN, k.SEG_U8SIMD):  # one call of the portable / SIMD loop
        s = seg * step  # the first value of the second call, channel 0
        flat[s - step], flat[s] = 0, 255  # the pair across the calls: |255 - 0| counts
    _agree(x, layout=layout, prev=x[:, ::-1].copy(), simd=simd, serial=True)


def test_uint8_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """simd=None takes the SIMD loop exactly where the target has it; False never."""
    from edgeguard.guard.sanity import _cpu as k

    seen: list[bool] = []
    real = k.stats_u8_ser

    def spy(*args: Any) -> Any:
        seen.append(bool(args[-1]))  # the loop choice is the last argument
        return real(*args)

    monkeypatch.setattr(k, "stats_u8_ser", spy)
    x = np.arange(3 * 16 * 16, dtype=np.int64).astype(np.uint8).reshape(1, 3, 16, 16)
    numba_stats(x, serial=True)
    numba_stats(x, serial=True, simd=False)
    assert seen == [bool(k.U8_SIMD), False]
    monkeypatch.setattr(k, "U8_SIMD", False)  # a target without AVX-512 BW + VNNI
    numba_stats(x, serial=True)
    assert seen[-1] is False
    with pytest.raises(UsageError, match="AVX-512"):
        numba_stats(x, serial=True, simd=True)


def test_uint8_simd_needs_the_target_features(monkeypatch: pytest.MonkeyPatch) -> None:
    from llvmlite import binding as llvm_binding
    from numba.core import config

    from edgeguard.guard.sanity import _cpu as k
    from edgeguard.guard.sanity._cpu.u8_ir import _target_features

    # as numba decides: NUMBA_CPU_FEATURES when set (portable caches), else the host's
    # features, whatever NUMBA_CPU_NAME says
    monkeypatch.setattr(config, "CPU_NAME", "generic")
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,-avx512bw,+avx512vnni")
    assert _target_features() == frozenset({"avx2", "avx512vnni"})
    monkeypatch.setattr(config, "CPU_FEATURES", "")
    assert _target_features() == frozenset()
    monkeypatch.setattr(config, "CPU_NAME", "haswell")
    monkeypatch.setattr(config, "CPU_FEATURES", None)
    host = llvm_binding.get_host_cpu_features()
    assert _target_features() == frozenset(f for f, on in host.items() if on)
    monkeypatch.setattr(k, "U8_SIMD", False)
    x = np.zeros((1, 1, 4, 4), np.uint8)
    with pytest.raises(UsageError, match="AVX-512"):
        numba_stats(x, simd=True)
    assert numba_stats(x, simd=False).mean.tolist() == [[0.0]]


@st.composite
def float_cases(draw: st.DrawFn) -> tuple[Any, Any, str, float, float]:
    dtype = draw(st.sampled_from(["float32", "float64", "float16"]))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    shape = _shape(draw, layout)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    offset = draw(st.sampled_from([0.0, 0.5, 1000.0, -7.0]))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    x = (offset + scale * rng.standard_normal(shape)).astype(dtype)
    if x.size and draw(st.booleans()):  # non-finite values: careful fallback per segment
        k = draw(st.integers(1, 4))
        idx = rng.integers(0, x.size, size=k)
        specials = np.array([np.nan, np.inf, -np.inf], dtype=dtype)
        x.reshape(-1)[idx] = specials[rng.integers(0, 3, size=k)]
    prev = None
    if draw(st.booleans()):
        prev = (x + rng.standard_normal(shape)).astype(dtype)
        if prev.size and draw(st.booleans()):
            prev.reshape(-1)[rng.integers(0, prev.size)] = np.nan
    lo, hi = draw(st.sampled_from([(0.0, 1.0), (0.1, 0.7), (-1.0, 2.0), (999.5, 1000.5)]))
    return x, prev, layout, lo, hi


@SETTINGS
@given(float_cases())
def test_float_path_agrees_with_and_without_nonfinite(
    case: tuple[Any, Any, str, float, float],
) -> None:
    x, prev, layout, lo, hi = case
    _agree(x, layout=layout, sat_lo=lo, sat_hi=hi, prev=prev)


@SETTINGS
@given(float_cases(), st.booleans())
def test_serial_and_parallel_paths_agree(
    case: tuple[Any, Any, str, float, float], serial: bool
) -> None:
    x, prev, layout, lo, hi = case
    old = cpu.SERIAL_MAX_ELEMENTS
    cpu.SERIAL_MAX_ELEMENTS = 1 << 62 if serial else -1
    try:
        _agree(x, layout=layout, sat_lo=lo, sat_hi=hi, prev=prev)
    finally:
        cpu.SERIAL_MAX_ELEMENTS = old


@pytest.mark.parametrize("dtype", ["float32", "uint8", "float64"])
def test_tiny_frames_use_the_serial_path(dtype: str) -> None:
    rng = np.random.default_rng(1)
    x = (rng.random((1, 1, 8, 8)) * (255 if dtype == "uint8" else 1)).astype(dtype)
    assert x.size <= cpu.SERIAL_MAX_ELEMENTS
    _agree(x, prev=x[::-1].copy())
    _agree(x[0, 0, 0:1, 0:1].copy())  # single element
    _agree(x[:, :, :, :1].copy())  # W = 1: no horizontal pair


def test_nonfinite_at_segment_and_row_boundaries() -> None:
    from edgeguard.guard.sanity import _cpu as k

    w = k.SEG_F + 7  # two fast segments per row
    x = np.full((1, 1, 3, w), 0.25, dtype=np.float32)
    x[0, 0, 0, k.SEG_F - 1] = np.nan  # last value of segment 1: pair into segment 2
    x[0, 0, 1, 0] = np.inf  # first value of a row (the shift must skip it)
    x[0, 0, 2, w - 1] = -np.inf
    x[0, 0, 2, 3] = 1.0
    got = numba_stats(x)
    _agree(x)
    assert got.nan.tolist() == [1] and got.posinf.tolist() == [1] and got.neginf.tolist() == [1]
    assert got.count.tolist() == [[3 * w - 3]]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_float32_values_at_segment_edges(layout: str) -> None:
    """float32 loops: NaN / inf / outliers at the edges of SEG32 / SEG_C3 segments and of
    the 48-value vector steps, widths that leave partial steps, with and without prev."""
    from edgeguard.guard.sanity import _cpu as k

    seg = k.SEG32 if layout == "NCHW" else k.SEG_C3
    rng = np.random.default_rng(11)
    for w in (seg - 1, seg, seg + 5, 2 * seg + 17):
        shape = (1, 3, 3, w) if layout == "NCHW" else (1, 3, w, 3)
        x = (0.5 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        prev = (x + 0.01 * rng.standard_normal(shape)).astype(np.float32)
        _agree(x, layout=layout, prev=prev)
        flat = x.reshape(-1)
        step = 1 if layout == "NCHW" else 3
        for i, v in ((seg - 1, 40.0), (seg, -3.0), (47, 9.0), (48, 0.0)):
            if i * step < flat.size:
                flat[i * step] = v  # outliers at the last / first value of a segment or step
        _agree(x, layout=layout, prev=prev, sat_lo=0.0, sat_hi=1.0)
        flat[(seg - 1) * step] = np.nan
        _agree(x, layout=layout, prev=prev)
        pflat = prev.reshape(-1)
        pflat[seg * step if seg * step < pflat.size else 0] = np.inf  # only prev non-finite
        flat[(seg - 1) * step] = 0.25
        got = numba_stats(x, layout=layout, prev=prev)
        _agree(x, layout=layout, prev=prev)
        assert got.nan.tolist() == [0]


@pytest.mark.parametrize("simd", U8_LOOPS)
def test_uint8_rows_longer_than_a_segment_and_near_constant(simd: bool) -> None:
    from edgeguard.guard.sanity import _cpu as k

    x = np.full((1, 2, 2, 2 * k.SEG_U8GEN + 5), 255, dtype=np.uint8)
    x[0, 0, 1, k.SEG_U8GEN] = 254  # one value off: M2 = 1 - 1/n, no cancellation allowed
    _agree(x, simd=simd)
    got = numba_stats(x, simd=simd)
    n = x[0, 0].size
    assert got.std[0, 0] == pytest.approx(np.sqrt((1 - 1 / n) / n), rel=1e-12)
    assert got.std[0, 1] == 0.0


def test_float32_saturation_levels_compare_exactly() -> None:
    lo, hi = 0.1, 0.7  # not representable in float32
    lo32, hi32 = sat_bounds_f32(lo, hi)
    assert float(lo32) <= lo < float(np.nextafter(lo32, np.float32(np.inf)))
    assert float(hi32) >= hi > float(np.nextafter(hi32, np.float32(-np.inf)))
    vals = [lo32, np.nextafter(lo32, np.float32(1)), hi32, np.nextafter(hi32, np.float32(0))]
    x = np.array(vals * 4, dtype=np.float32).reshape(1, 1, 2, 8)
    got = numba_stats(x, sat_lo=lo, sat_hi=hi)
    _agree(x, sat_lo=lo, sat_hi=hi)
    assert got.sat_lo[0, 0] == 0.25 and got.sat_hi[0, 0] == 0.25
    # levels beyond the float32 range
    big = sat_bounds_f32(-1e39, 1e39)
    assert big[0] == -np.inf and big[1] == np.inf
    _agree(x, sat_lo=-1e39, sat_hi=1e39)


@pytest.mark.parametrize(
    ("x", "kwargs"),
    [
        (np.zeros((1, 1, 2, 2), np.float32), {"sat_lo": np.float64("nan")}),
        (np.zeros((1, 1, 2, 2), np.float32), {"sat_lo": float("inf")}),
        (np.zeros((1, 1, 2, 2), np.float32), {"sat_lo": 2.0, "sat_hi": 2.0}),
        (np.zeros((1, 1, 2, 2), np.float32), {"layout": "nchw"}),
        (np.zeros((1, 1, 2, 2), np.float32), {"prev": np.zeros((1, 1, 2, 2), np.float64)}),
        (np.zeros((1, 1, 2, 2), np.float32), {"prev": [[0.0]]}),
        (np.zeros((1, 1, 2, 2), np.int16), {}),
        (np.zeros((2,), np.float32), {}),
        ([[0.0, 1.0]], {}),
    ],
)
def test_argument_shortcut_still_refuses(x: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        numba_stats(x, **kwargs)


def test_non_contiguous_input_is_read_correctly() -> None:
    rng = np.random.default_rng(5)
    base = rng.random((1, 3, 20, 40)).astype(np.float32)
    x = base[:, :, :, ::2]
    assert not x.flags.c_contiguous
    _agree(x)
    _agree(base.transpose(0, 2, 3, 1), layout="NHWC")  # NHWC view, not contiguous


@st.composite
def multi_block_cases(draw: st.DrawFn) -> tuple[Any, str]:
    """Frames taller than one block of rows (several blocks per work item)."""
    from edgeguard.guard.sanity import _cpu as k

    dtype = draw(st.sampled_from(["float32", "uint8", "float64"]))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    w = draw(st.sampled_from([1, 2, 3, 63, 64, 65, 700]))
    rows = k.block_rows(w, k.BLOCK)
    h = draw(st.integers(rows, 3 * rows + 1))
    c = draw(st.sampled_from([1, 3]))
    shape = (1, c, h, w) if layout == "NCHW" else (1, h, w, c)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype == "uint8":
        x = rng.integers(0, 256, shape).astype(np.uint8)
    else:
        x = (3.0 + rng.standard_normal(shape)).astype(dtype)
        if draw(st.booleans()):
            idx = rng.integers(0, x.size, size=3)
            x.reshape(-1)[idx] = np.array([np.nan, np.inf, -np.inf], dtype=dtype)
    return x, layout


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(multi_block_cases())
def test_blocks_of_rows_agree(case: tuple[Any, str]) -> None:
    x, layout = case
    _agree(x, layout=layout, prev=x[:, ::-1].copy())


def test_nonfinite_in_a_middle_block_is_classified() -> None:
    from edgeguard.guard.sanity import _cpu as k

    w = 64
    h = 3 * k.block_rows(w, k.BLOCK)
    x = np.full((1, 1, h, w), 0.5, dtype=np.float32)
    x[0, 0, h // 2, 0] = np.nan  # first value of a row inside the second block
    x[0, 0, h // 2, 1] = 2.0
    got = numba_stats(x)
    _agree(x)
    assert got.nan.tolist() == [1]
    assert got.count.tolist() == [[h * w - 1]]


# --- float32 path: float32 sums inside segments, float64 between them -----------------


def _f32_frames(kind: str, layout: str, rng: np.random.Generator) -> np.ndarray:
    h, w, c = 130, 97, 3  # segments of SEG32 values (NCHW) / SEG_C3 pixels span row starts
    if kind == "offset":  # mean far from zero, tiny spread: cancellation if unshifted
        x = 1000.0 + 1e-3 * rng.standard_normal((2, c, h, w))
    elif kind == "outlier_first":  # first value far from the rest: the shift is redone
        x = 0.5 + 0.01 * rng.standard_normal((2, c, h, w))
        x[:, :, 0, 0] = 250.0
    elif kind == "bars":  # constant rows after varying ones: std of constant parts exact
        x = rng.random((2, c, h, w))
        x[:, :, 40:90, :] = 0.25
    elif kind == "tiny":  # deviations whose float32 squares underflow
        x = 1e-22 * rng.standard_normal((2, c, h, w))
    elif kind == "huge":  # squares overflow float32: the float64 careful loop
        x = 1e30 * rng.standard_normal((2, c, h, w))
    else:  # "nonfinite": NaN / inf inside one block
        x = rng.random((2, c, h, w))
        x[1, 1, 77, 5] = np.nan
        x[0, 2, 3, 96] = -np.inf
    x = x.astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kind", ["offset", "outlier_first", "bars", "tiny", "huge", "nonfinite"])
def test_float32_segments_agree_with_oracle(kind: str, layout: str) -> None:
    rng = np.random.default_rng(7)
    x = _f32_frames(kind, layout, rng)
    prev = _f32_frames(kind, layout, rng)
    _agree(x, layout=layout, sat_lo=0.0, sat_hi=1.0)
    _agree(x, layout=layout, sat_lo=0.0, sat_hi=1.0, prev=prev)
    # serial path (one thread) gives the same answer
    cpu_serial = cpu.SERIAL_MAX_ELEMENTS
    try:
        cpu.SERIAL_MAX_ELEMENTS = x.size
        _agree(x, layout=layout, sat_lo=0.0, sat_hi=1.0, prev=prev)
    finally:
        cpu.SERIAL_MAX_ELEMENTS = cpu_serial


def test_float32_constant_parts_have_exact_zero_spread() -> None:
    x = np.full((1, 3, 64, 640), 0.25, dtype=np.float32)
    x[:, 1] = np.linspace(0, 1, 64 * 640, dtype=np.float32).reshape(64, 640)
    got = numba_stats(x, layout="NCHW")
    assert got.std[0, 0] == 0.0 and got.std[0, 2] == 0.0
    assert got.hf[0, 0] == 0.0
    assert got.std[0, 1] > 0.0


def test_float32_tolerance_is_not_vacuous() -> None:
    # An error of 1e-4 of the spread in the mean is caught by the stated tolerance.
    rng = np.random.default_rng(3)
    x = (5.0 + rng.standard_normal((1, 3, 64, 64))).astype(np.float32)
    got = numba_stats(x)
    exp = reference_stats(x)
    assert stats_mismatches(got, exp) == []
    bad = exp.to_dict()
    bad["mean"] = [
        [m + 1e-4 * s for m, s in zip(mr, sr, strict=True)]
        for mr, sr in zip(exp.mean.tolist(), exp.std.tolist(), strict=True)
    ]
    assert any(d.startswith("mean") for d in stats_mismatches(got, bad))


def test_serial_flag_and_guard_threads() -> None:
    from edgeguard.guard.sanity import SanityGuard
    from edgeguard.packaging.calibrate import calibrate_stats_only

    rng = np.random.default_rng(5)
    x = rng.random((2, 3, 96, 128), dtype=np.float32)
    assert x.size > cpu.SERIAL_MAX_ELEMENTS
    a = numba_stats(x, serial=True)
    b = numba_stats(x, serial=False)
    assert stats_mismatches(a, reference_stats(x)) == []
    assert stats_mismatches(b, reference_stats(x)) == []
    profile = calibrate_stats_only({"x": x}, target_false_alarm=0.01)
    one = SanityGuard(profile, threads=1)
    v1, v2 = one.check_inputs({"x": x}), SanityGuard(profile).check_inputs({"x": x})
    assert v1.status == v2.status
    assert [v.check for v in v1.violations] == [v.check for v in v2.violations]
    with pytest.raises(UsageError):
        SanityGuard(profile, threads=2)


@pytest.mark.slow
def test_kernels_compile_and_agree_for_a_cpu_without_avx512(tmp_path: Any) -> None:
    """The fallback a Jetson-class or older x86 CPU gets: compiled for an AVX2-only
    target (NUMBA_CPU_NAME=haswell with its own features: NUMBA_CPU_FEATURES empty;
    fresh cache), the SIMD loop is off and every kernel still agrees with the
    oracle."""
    import os
    import subprocess
    import sys

    code = """
import numpy as np
from edgeguard.guard.sanity import _cpu as k
from edgeguard.guard.sanity.cpu import numba_stats
from edgeguard.guard.sanity.reference import reference_stats
from edgeguard.guard.sanity.vectors import stats_mismatches
assert not k.U8_SIMD
rng = np.random.default_rng(0)
x = np.zeros((1, 3, 8, 64), np.float32)
numba_stats(x, prev=x, serial=True)
asm = "".join(k.stats_f32_ser.inspect_asm().values())
assert "ymm" in asm and "zmm" not in asm  # AVX2 code, no AVX-512 register
bad = []
for shape, lay in (((2, 3, 37, 131), "NCHW"), ((2, 37, 131, 3), "NHWC"), ((1, 9, 70, 4), "NHWC")):
    for dt in ("float32", "uint8", "float64"):
        x = (rng.random(shape) * (255 if dt == "uint8" else 1)).astype(dt)
        p = (rng.random(shape) * (255 if dt == "uint8" else 1)).astype(dt)
        for serial in (True, False):
            got = numba_stats(x, layout=lay, prev=p, serial=serial)
            bad += stats_mismatches(got, reference_stats(x, layout=lay, prev=p))
assert bad == [], bad[:5]
"""
    # without NUMBA_CPU_FEATURES numba would add the host's features (AVX-512 here)
    env = dict(
        os.environ,
        NUMBA_CPU_NAME="haswell",
        NUMBA_CPU_FEATURES="",
        NUMBA_CACHE_DIR=str(tmp_path),
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]

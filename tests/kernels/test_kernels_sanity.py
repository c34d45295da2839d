"""CUDA C++ sanity kernel: CMake build, ctest, host harness vs. oracle, cubin checks.

The host harness (``libedgeguard_sanity_host.so``) runs the device algorithm on
the CPU through the same ``kernels/sanity_math.cuh``; it is compared with the
NumPy oracle on every golden vector and on random inputs. The CUDA part checks
the cubins and ptxas report the build produced; launching the kernel needs a
GPU and pycuda (``gpu`` marker, skipped here with the reason).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from edgeguard.errors import MissingDependencyError, UsageError
from edgeguard.guard.sanity import cuda_cpp
from edgeguard.guard.sanity.cuda_cpp import (
    STATS_DTYPE,
    CudaSanityKernel,
    HostHarness,
    find_kernel_file,
    plan_launch,
)
from edgeguard.guard.sanity.reference import reference_stats
from edgeguard.guard.sanity.vectors import default_dir, load_case, stats_mismatches

REPO = Path(__file__).resolve().parents[2]
ENTRIES = [
    f"eg_sanity_partials_{dt}_{lay}"
    for dt in ("u8", "f16", "f32", "f64")
    for lay in ("nchw", "nhwc")
] + ["eg_sanity_merge"]
REQUIRED_ARCHS = ("87", "110")


@dataclass(frozen=True)
class Build:
    """A CMake build of the repository's kernels."""

    dir: Path
    kernels: Path
    configure_log: str
    cuda: bool
    seconds: float


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600, **kw)


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """Configure and build once per session (CUDA too when nvcc is on PATH)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler (c++ / g++) on PATH")
    cuda = shutil.which("nvcc") is not None
    out = tmp_path_factory.mktemp("cmake-build")
    t0 = time.perf_counter()
    cfg = _run(
        [
            "cmake",
            "-S",
            str(REPO),
            "-B",
            str(out),
            f"-DEDGEGUARD_BUILD_CUDA={'ON' if cuda else 'OFF'}",
        ]
    )
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    jobs = str(max(1, min(2, os.cpu_count() or 1)))
    res = _run(["cmake", "--build", str(out), "-j", jobs])
    assert res.returncode == 0, res.stdout + res.stderr
    return Build(out, out / "kernels", cfg.stdout, cuda, time.perf_counter() - t0)


@pytest.fixture(scope="session")
def harness(build: Build) -> HostHarness:
    return HostHarness(build.kernels / cuda_cpp.HOST_LIBRARY)


# --------------------------------------------------------------------------- ctest


def test_ctest_host_harness_passes(build: Build) -> None:
    res = _run(["ctest", "--test-dir", str(build.dir), "-R", "sanity_host_test", "-V"])
    assert res.returncode == 0, res.stdout + res.stderr
    m = re.search(r"sanity_host_test: (\d+) checks, (\d+) failures", res.stdout)
    assert m is not None, res.stdout
    assert int(m.group(1)) > 300 and m.group(2) == "0"


# --------------------------------------------------------------------------- host vs oracle

CASES = sorted(p.stem for p in default_dir().glob("*.json"))


def test_golden_vectors_exist() -> None:
    assert len(CASES) >= 20, f"expected the shared golden vectors in {default_dir()}"


@pytest.mark.parametrize("case", CASES)
def test_host_harness_matches_golden_vector(harness: HostHarness, case: str) -> None:
    c = load_case(default_dir() / f"{case}.json")
    assert c.expected is not None
    for threads, rows in ((256, None), (32, 1)):
        got = harness.stats(
            c.x,
            layout=c.layout,
            sat_lo=c.sat_lo,
            sat_hi=c.sat_hi,
            prev=c.prev,
            block_threads=threads,
            rows_per_tile=rows,
        )
        assert stats_mismatches(got, c.expected) == [], (case, threads, rows)
        assert got.layout == c.layout
        assert (got.tdiff is None) == (c.prev is None)


def _values(dtype: str) -> st.SearchStrategy[Any]:
    special = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0])
    if dtype == "uint8":
        return st.integers(0, 255)
    if dtype == "float16":
        finite = st.floats(-65504, 65504, width=16, allow_subnormal=True)
    elif dtype == "float32":
        # |x| <= 1e6 keeps the random cases well conditioned (the oracle's and
        # the kernel's summation orders differ); extremes are golden vectors.
        finite = st.floats(-1e6, 1e6, width=32, allow_subnormal=True)
    else:
        finite = st.floats(-1e6, 1e6, width=64, allow_subnormal=True)
    return st.one_of(finite, finite, finite, special)


@st.composite
def _inputs(draw: st.DrawFn) -> dict[str, Any]:
    dtype = draw(st.sampled_from(["uint8", "float16", "float32", "float64"]))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    rank = draw(st.sampled_from([2, 3, 4]))
    n, c, h, w = (
        draw(st.integers(0, 3)),
        draw(st.integers(1, 4)),
        draw(st.integers(0, 9)),
        draw(st.integers(0, 40)),
    )
    if rank == 2:
        shape: tuple[int, ...] = (n, w)
    elif rank == 3:
        shape = (c, h, w) if layout == "NCHW" else (h, w, c)
    else:
        shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    elems = _values(dtype)
    x = draw(hnp.arrays(np.dtype(dtype), shape, elements=elems))
    prev = draw(st.none() | hnp.arrays(np.dtype(dtype), shape, elements=elems))
    sat: tuple[float | None, float | None] = draw(
        st.sampled_from([(None, None), (10.0, 200.0), (-0.5, 0.5)])
    )
    threads = draw(st.sampled_from([32, 64, 256]))
    rows = draw(st.none() | st.integers(1, 4))
    return dict(
        x=x,
        layout=layout,
        sat_lo=sat[0],
        sat_hi=sat[1],
        prev=prev,
        block_threads=threads,
        rows_per_tile=rows,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=_inputs())
def test_host_harness_matches_oracle_on_random_inputs(
    harness: HostHarness, args: dict[str, Any]
) -> None:
    expected = reference_stats(
        args["x"],
        layout=args["layout"],
        sat_lo=args["sat_lo"],
        sat_hi=args["sat_hi"],
        prev=args["prev"],
    )
    got = harness.stats(**args)
    assert stats_mismatches(got, expected) == []


def test_launch_shape_does_not_change_results(harness: HostHarness) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(0.5, 0.2, size=(2, 3, 50, 70)).astype(np.float32)
    x[0, 1, 3, 4] = np.nan
    x[1, 2, 10, :] = np.inf
    prev = (x + rng.normal(0, 0.01, size=x.shape)).astype(np.float32)
    ref = reference_stats(x, prev=prev)
    base = harness.stats(x, prev=prev)
    assert stats_mismatches(base, ref) == []
    for threads, rows in ((32, 1), (64, 7), (256, 50), (128, 3)):
        got = harness.stats(x, prev=prev, block_threads=threads, rows_per_tile=rows)
        assert stats_mismatches(got, ref) == []
        np.testing.assert_array_equal(got.count, base.count)
        np.testing.assert_array_equal(got.nan, base.nan)
        np.testing.assert_allclose(got.std, base.std, rtol=1e-12)


def test_layouts_agree_and_noncontiguous_input_is_read_correctly(harness: HostHarness) -> None:
    rng = np.random.default_rng(3)
    nchw = rng.integers(0, 256, size=(2, 3, 11, 13), dtype=np.uint8)
    nhwc = np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))
    a = harness.stats(nchw, layout="NCHW")
    b = harness.stats(nhwc, layout="NHWC")
    c = harness.stats(nchw.transpose(0, 2, 3, 1), layout="NHWC")  # strided view
    for got in (b, c):
        assert stats_mismatches(got, a.to_dict(), rtol=1e-12, atol=0.0) == []


def test_default_rows_per_tile_matches_the_library(harness: HostHarness) -> None:
    for h, w in ((640, 640), (1080, 1920), (1, 10), (5, 0), (100000, 3), (2, 9000)):
        assert harness.default_rows_per_tile(h, w) == cuda_cpp.default_rows_per_tile(h, w)


def test_records_match_the_c_struct(harness: HostHarness) -> None:
    assert STATS_DTYPE.itemsize == 96
    assert list(STATS_DTYPE.names or ()) == [
        "count",
        "nan",
        "posinf",
        "neginf",
        "min",
        "max",
        "mean",
        "std",
        "sat_lo",
        "sat_hi",
        "hf",
        "tdiff",
    ]


# --------------------------------------------------------------------------- refusals


def test_refuses_bad_arguments(harness: HostHarness) -> None:
    x = np.zeros((1, 3, 4, 4), dtype=np.float32)
    with pytest.raises(UsageError, match="dtype"):
        harness.stats(x.astype(np.int32))
    with pytest.raises(UsageError, match="layout"):
        harness.stats(x, layout="CHWN")
    with pytest.raises(UsageError, match="prev"):
        harness.stats(x, prev=np.zeros((1, 3, 4, 5), dtype=np.float32))
    with pytest.raises(UsageError, match="prev"):
        harness.stats(x, prev=x.astype(np.float64))
    with pytest.raises(UsageError, match="block_threads"):
        harness.stats(x, block_threads=48)
    with pytest.raises(UsageError, match="block_threads"):
        harness.stats(x, block_threads=512)
    with pytest.raises(UsageError, match="rows_per_tile"):
        harness.stats(x, rows_per_tile=0)
    with pytest.raises(UsageError, match="saturation"):
        harness.stats(x, sat_lo=1.0, sat_hi=0.0)
    with pytest.raises(UsageError, match="rank"):
        harness.stats(np.zeros((2, 2, 2, 2, 2), dtype=np.float32))


def test_refuses_missing_or_foreign_library(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        HostHarness(tmp_path / "nope.so")
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not an ELF file")
    with pytest.raises(UsageError, match="not an edgeguard sanity host library"):
        HostHarness(junk)
    with pytest.raises(UsageError, match=r"no_such_kernel\.cubin not found") as err:
        find_kernel_file("no_such_kernel.cubin", directory=tmp_path)
    assert err.value.hint is not None and "cmake -S . -B build" in err.value.hint


def test_kernel_dir_env_is_searched_first(build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cuda_cpp.KERNEL_DIR_ENV, str(build.kernels))
    assert cuda_cpp.kernel_search_dirs()[0] == build.kernels
    assert find_kernel_file(cuda_cpp.HOST_LIBRARY) == build.kernels / cuda_cpp.HOST_LIBRARY


def test_launch_plan() -> None:
    p = plan_launch((1, 640, 640, 3), np.uint8, "NHWC")
    assert (p.frames, p.channels, p.height, p.width) == (1, 3, 640, 640)
    assert p.rows_per_tile == 13 and p.tiles == 50  # ceil(8192/640) rows, ceil(640/13) tiles
    assert p.bytes_read(with_prev=False) == 640 * 640 * 3
    assert p.bytes_read(with_prev=True) == 2 * 640 * 640 * 3
    p = plan_launch((1080, 1920, 3), np.float32, "NHWC")
    assert p.bytes_read(with_prev=False) == 1920 * 1080 * 3 * 4
    big = plan_launch((70000, 8), np.float32, "NHWC")
    assert big.layout == "NCHW"  # rank 2: C = H = 1, any layout reads the same
    assert big.frame_chunks() == [(0, 65535), (65535, 70000 - 65535)]
    assert plan_launch((2, 3, 0, 5), np.float32, "NCHW").tiles == 0
    wide = plan_launch((1, 2, 2, 70000), np.uint8, "NHWC")  # C = 70000 > 65535 is fine
    assert wide.channels == 70000 and wide.tiles == 1
    with pytest.raises(UsageError, match="grid limit"):  # planned only, never allocated
        plan_launch((1, 2**31, 9000, 2), np.uint8, "NHWC")
    with pytest.raises(UsageError, match="rank"):
        plan_launch((5,), np.uint8, "NCHW")


# --------------------------------------------------------------------------- CUDA build


def _have_pycuda() -> bool:
    return importlib.util.find_spec("pycuda") is not None


def _cuda_device_count() -> int:
    """CUDA devices visible to pycuda (0 on any driver error; Jetson has no nvidia-smi)."""
    try:
        import pycuda.driver as drv

        drv.init()
        return int(drv.Device.count())
    except Exception:
        return 0


def _need_cuda(build: Build) -> None:
    if not build.cuda:
        pytest.skip("nvcc is not on PATH: the CUDA kernel was not built")


def _profile_archs() -> set[str]:
    archs: set[str] = set()
    for path in sorted((REPO / "devices").glob("*.toml")):
        gpu = tomllib.loads(path.read_text()).get("gpu", {})
        if "sm" in gpu:
            archs.add(str(gpu["sm"]))
    return archs


def test_cmake_reads_architectures_from_device_profiles(build: Build) -> None:
    _need_cuda(build)
    m = re.search(r"requested GPU archs ([0-9;]+)", build.configure_log)
    assert m is not None, build.configure_log
    requested = set(m.group(1).split(";"))
    expected = _profile_archs() or set(REQUIRED_ARCHS)
    assert requested == expected
    if "72" in requested:
        assert re.search(r"skipping sm_72: .*CUDA <= 12", build.configure_log)


def test_cubins_and_fatbin_exist_for_orin_and_thor(build: Build) -> None:
    _need_cuda(build)
    for arch in REQUIRED_ARCHS:
        cubin = build.kernels / f"sanity_kernel_sm_{arch}.cubin"
        data = cubin.read_bytes()
        assert data[:4] == b"\x7fELF"
        assert int.from_bytes(data[18:20], "little") == 190  # e_machine = EM_CUDA
        for entry in ENTRIES:
            assert entry.encode() in data, (arch, entry)
    fatbin = (build.kernels / "sanity_kernel.fatbin").read_bytes()
    assert len(fatbin) > 1000
    log = (build.kernels / "ptxas_fatbin.txt").read_text()
    for arch in REQUIRED_ARCHS:
        assert f"for 'sm_{arch}'" in log


def test_resource_report_shows_no_local_memory(build: Build) -> None:
    _need_cuda(build)
    report = (build.kernels / "sanity_kernel_resources.txt").read_text()
    rows = [r for r in report.splitlines() if r.startswith("| eg_")]
    for arch in REQUIRED_ARCHS:
        names = {r.split("|")[1].strip() for r in rows if f"| sm_{arch} |" in r}
        assert names == set(ENTRIES), arch
    for row in rows:
        m = re.search(
            r"(\d+) regs \| (\d+) B smem \| stack (\d+) B, spill stores (\d+) B, "
            r"spill loads (\d+) B",
            row,
        )
        assert m is not None, row
        regs, smem, stack, st_, ld = map(int, m.groups())
        assert 0 < regs <= 255 and smem < 48 * 1024
        assert (stack, st_, ld) == (0, 0, 0), row
    res = _run(["ctest", "--test-dir", str(build.dir), "-R", "sanity_kernel_no_spills"])
    assert res.returncode == 0, res.stdout + res.stderr


def test_spill_check_fails_on_a_report_with_spills(build: Build, tmp_path: Path) -> None:
    _need_cuda(build)
    script = REPO / "kernels" / "cmake" / "resource_report.cmake"
    good = (build.kernels / "sanity_kernel_resources.txt").read_text()
    bad = tmp_path / "bad.txt"
    bad.write_text(good.replace("spill stores 0 B", "spill stores 16 B", 1))
    res = _run(["cmake", f"-DREPORT={bad}", "-DCHECK=ON", "-P", str(script)])
    assert res.returncode != 0
    assert "eg_sanity_merge | sm_87" in " ".join(res.stderr.split())
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    res = _run(["cmake", f"-DREPORT={empty}", "-DCHECK=ON", "-P", str(script)])
    assert res.returncode != 0


# --------------------------------------------------------------------------- GPU launch


def test_cuda_kernel_without_pycuda_names_the_extra() -> None:
    if _have_pycuda():
        pytest.skip("pycuda is installed here; the refusal path cannot be exercised")
    with pytest.raises(MissingDependencyError, match="pycuda") as err:
        CudaSanityKernel()
    assert err.value.extra == "cuda"


@pytest.mark.gpu
def test_cuda_kernel_matches_golden_vectors(build: Build) -> None:
    if not _have_pycuda() or _cuda_device_count() == 0:
        pytest.skip("needs an NVIDIA GPU and pycuda")
    _need_cuda(build)
    kernel = CudaSanityKernel(build.kernels / "sanity_kernel.fatbin")
    try:
        for case in CASES:
            c = load_case(default_dir() / f"{case}.json")
            assert c.expected is not None
            got = kernel.stats(c.x, layout=c.layout, sat_lo=c.sat_lo, sat_hi=c.sat_hi, prev=c.prev)
            assert stats_mismatches(got, c.expected) == [], case
        rng = np.random.default_rng(11)
        x = rng.normal(size=(3, 37, 301, 4)).astype(np.float32)
        x[1, 5, 7, 2] = np.nan
        prev = rng.normal(size=x.shape).astype(np.float32)
        ref = reference_stats(x, layout="NHWC", prev=prev)
        for threads in (32, 256):
            got = kernel.stats(x, layout="NHWC", prev=prev, block_threads=threads)
            assert stats_mismatches(got, ref) == []
    finally:
        kernel.close()

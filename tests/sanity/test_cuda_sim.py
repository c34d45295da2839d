"""Numba CUDA kernel vs the oracle, under the CUDA simulator (in a subprocess).

numba reads NUMBA_ENABLE_CUDASIM when numba.cuda is first imported, so the
simulated runs happen in a fresh interpreter. The real-GPU test is marked
``gpu`` and skips on hosts without a CUDA device.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import functools, sys
    import numpy as np
    from numba import cuda
    assert cuda.simulator_init if hasattr(cuda, "simulator_init") else True
    from edgeguard.guard.sanity import vectors
    from edgeguard.guard.sanity.cuda import numba_cuda_stats
    from edgeguard.guard.sanity.reference import reference_stats
    fn = functools.partial(numba_cuda_stats, rows_per_block=3, threads_per_block=4)
    bad = vectors.check_stored(compute=fn)
    for name, diffs in bad.items():
        print("VECTOR", name, diffs)
    rng = np.random.default_rng(7)
    rand_bad = 0
    for i in range(6):
        dtype = [np.float32, np.uint8, np.float64][i % 3]
        layout = ["NCHW", "NHWC"][i % 2]
        shape = (2, 3, 5, 6) if layout == "NCHW" else (2, 5, 6, 3)
        if dtype == np.uint8:
            x = rng.integers(0, 256, shape).astype(np.uint8)
        else:
            x = rng.standard_normal(shape).astype(dtype)
            x.reshape(-1)[rng.choice(x.size, 5, replace=False)] = np.nan
        prev = x[::-1].copy()
        kw = dict(layout=layout, prev=prev)
        d = vectors.stats_mismatches(fn(x, **kw), reference_stats(x, **kw))
        if d:
            rand_bad += 1
            print("RANDOM", i, d)
    n = len(vectors.load_cases())
    print(f"cuda-sim: {n - len(bad)} of {n} vectors agree; random failures {rand_bad}")
    sys.exit(1 if bad or rand_bad else 0)
    """
)


def test_numba_cuda_kernel_matches_oracle_under_simulator() -> None:
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "random failures 0" in proc.stdout


def _have_gpu() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _have_gpu(), reason="no CUDA device visible to numba on this host")
def test_numba_cuda_kernel_on_real_gpu() -> None:  # pragma: no cover - needs a GPU
    import numpy as np

    from edgeguard.guard.sanity import vectors
    from edgeguard.guard.sanity.cuda import numba_cuda_stats

    assert vectors.check_stored(compute=numba_cuda_stats) == {}
    x = np.random.default_rng(1).random((2, 1080, 1920, 3)).astype(np.float32)
    from edgeguard.guard.sanity.reference import reference_stats

    got = numba_cuda_stats(x, layout="NHWC")
    assert vectors.stats_mismatches(got, reference_stats(x, layout="NHWC")) == []


def test_numba_cuda_refuses_without_device() -> None:
    if _have_gpu():
        pytest.skip("a CUDA device is present")
    code = (
        "import numpy as np\n"
        "from edgeguard.errors import BackendError\n"
        "from edgeguard.guard.sanity.cuda import numba_cuda_stats\n"
        "try:\n"
        "    numba_cuda_stats(np.zeros((1,1,2,2), np.float32))\n"
        "except BackendError as e:\n"
        "    print('refused:', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert "refused:" in proc.stdout, proc.stdout + proc.stderr

"""The CPU kernels' portable code lowers to the Jetsons' ARM cores (compiled, not run).

There is no ARM machine here. This checks what can be checked on x86: numba's
LLVM IR of the serial kernels, generated for a target without AVX-512 (so the
uint8 loops take the portable sums, as on a Jetson), compiles for aarch64
(cortex-a78, the Orin's cores) with LLVM's own code generator, and the vector
loops come out as NEON instructions.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_GEN = """
import numpy as np
from edgeguard.guard.sanity.cpu import numba_stats
for dt, shape, lay in (("float32", (1, 3, 64, 64), "NCHW"), ("float32", (1, 64, 64, 3), "NHWC"),
                       ("uint8", (1, 3, 64, 64), "NCHW"), ("uint8", (1, 64, 64, 3), "NHWC")):
    x = np.zeros(shape, dt)
    numba_stats(x, layout=lay, prev=x, serial=True)
"""


def test_serial_kernels_compile_for_aarch64(tmp_path: Path) -> None:
    pytest.importorskip("numba")
    import llvmlite.binding as llvm

    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    try:
        target = llvm.Target.from_triple("aarch64-unknown-linux-gnu")
    except RuntimeError as exc:
        pytest.skip(f"this llvmlite has no AArch64 back end: {exc}")
    tm = target.create_target_machine(cpu="cortex-a78", features="+neon,+dotprod", opt=2)
    env = dict(
        os.environ,
        NUMBA_CPU_NAME="generic",
        NUMBA_CPU_FEATURES="",
        NUMBA_DUMP_LLVM="1",
        NUMBA_CACHE_DIR=str(tmp_path),
    )
    r = subprocess.run(
        [sys.executable, "-c", _GEN], capture_output=True, text=True, timeout=900, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    parts = re.split(r"^-+LLVM DUMP <function descriptor '([^']+)'>-+$", r.stdout, flags=re.M)
    assert len(parts) > 20
    failed, neon = [], {}
    for name, dump in zip(parts[1::2], parts[2::2], strict=True):
        body = dump.split("\n====", 1)[0]  # each dump ends with a line of "="
        body = re.sub(
            r"^target triple = .*$", 'target triple = "aarch64-unknown-linux-gnu"', body, flags=re.M
        )
        body = re.sub(
            r"^target datalayout = .*$", f'target datalayout = "{tm.target_data}"', body, flags=re.M
        )
        body = re.sub(r'"target-(cpu|features)"="[^"]*"', "", body)
        try:
            module = llvm.parse_assembly(body)
            module.verify()
            asm = tm.emit_assembly(module)
        except RuntimeError as exc:
            failed.append((name, str(exc).splitlines()[0]))
            continue
        neon[name.split("$")[0]] = set(re.findall(r"^\t([a-z][a-z0-9.]*)\s", asm, re.M))
    assert failed == []
    assert {"fabd", "fmla", "fminnm", "fmaxnm", "prfm"} <= neon["block_f32"]  # float32 loop
    assert {"fabd", "fmla"} <= neon["block_f32_c3"]  # 3-channel float32 loop
    assert {"uabd", "umull", "ld3"} <= neon["item_u8"]  # portable uint8 sums, de-interleave
    assert not any(n.startswith("llvm.x86") for names in neon.values() for n in names)

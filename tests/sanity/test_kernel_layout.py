"""The kernels' accumulator and record layout (``_kernel_layout``) is self-consistent.

Every record's slots are distinct and cover its width, every slot constant
belongs to a record, the loop-call sizes keep the integer lanes of the uint8
loops exact, and the module stays importable without numba (``cpu.py`` and
``cuda.py`` read it at import time).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgeguard.guard.sanity import _kernel_layout as L

#: Each record: the name of its width constant and the names of its slots.
RECORDS = {
    "float partials": ("NACC", "A_CNT A_SHIFT A_S1 A_S2 A_SLO A_SHI A_HS A_HC A_TS A_TC"),
    "min/max": ("NKEY", "K_MIN K_MAX"),
    "non-finite counts": ("NFC", "FC_NAN FC_POSINF FC_NEGINF"),
    "uint8 partials and loop record": ("NUACC", "U_S1 U_S2 U_SLO U_SHI U_HS U_TS U_MIN U_MAX"),
    "driver result rows": ("NOUT", "O_MIN O_MAX O_MEAN O_STD O_SLO O_SHI O_HF O_TD"),
    "merge record": ("NREC", "R_CNT R_MIN R_MAX R_MEAN R_STD R_SLO R_SHI R_HF R_TD"),
    "float32 segment record": (
        "NF32",
        "F32_S1 F32_S2 F32_HS F32_SLO F32_SHI F32_MIN F32_MAX F32_TS",
    ),
    "float32 running state": (
        "NST",
        "ST_CNT ST_MEAN ST_M2 ST_SLO ST_SHI ST_HS ST_MIN ST_MAX ST_TS ST_TSOK",
    ),
}
PREFIXES = ("A_", "K_", "FC_", "U_", "O_", "R_", "F32_", "ST_")


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_slots_are_distinct_and_cover_the_width(name: str) -> None:
    width, slots = RECORDS[name]
    values = [getattr(L, s) for s in slots.split()]
    assert sorted(values) == list(range(getattr(L, width))), (name, values)


def test_every_slot_constant_belongs_to_a_record() -> None:
    constants = {k for k in vars(L) if k.startswith(PREFIXES)}
    listed = {s for _, slots in RECORDS.values() for s in slots.split()}
    assert constants == listed


def test_kinds_are_distinct() -> None:
    assert sorted([L.KIND_U8, L.KIND_F32, L.KIND_F64]) == [0, 1, 2]


def test_float32_running_state_carries_over_its_first_slots() -> None:
    # block_f32_c3 keeps slots [0, NST_RUN) in a local copy; ST_TS and ST_TSOK describe
    # one block and come last.
    run = [L.ST_CNT, L.ST_MEAN, L.ST_M2, L.ST_SLO, L.ST_SHI, L.ST_HS, L.ST_MIN, L.ST_MAX]
    assert sorted(run) == list(range(L.NST_RUN))
    assert {L.ST_TS, L.ST_TSOK} == set(range(L.NST_RUN, L.NST))


def test_uint8_loop_calls_keep_the_lanes_exact() -> None:
    vec = 64  # values (or pixels, one per lane per channel) per vector
    # portable loops: 16-bit lane sums of values and of differences (each <= 255) and
    # 8-bit counters, one vector per step
    assert L.SEG_U8GEN % vec == 0
    steps = L.SEG_U8GEN // vec
    assert steps * 255 < 2**16
    assert steps < 2**8
    # SIMD loops: an int32 lane gains at most 4 * 255 * 128 per vector (x * (x - 128))
    assert L.SEG_U8SIMD % vec == 0
    assert (L.SEG_U8SIMD // vec) * 4 * 255 * 128 < 2**31


def test_layout_and_cpu_modules_import_no_numba() -> None:
    code = (
        "import sys\n"
        "import edgeguard.guard.sanity._kernel_layout, edgeguard.guard.sanity.cpu\n"
        "assert 'numba' not in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]

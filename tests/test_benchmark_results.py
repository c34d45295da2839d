"""benchmarks/RESULTS.md is generated from the benchmark records, never edited by hand.

Fast: no benchmark runs here. The generator (``benchmarks/results.py``) is checked on two
small records, then the committed RESULTS.md against the committed records.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_results", ROOT / "benchmarks/results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def _record(date: str, commit: str, results: dict[str, object], **extra: object) -> dict:
    return {
        "benchmark": "open",
        "date": date,
        "commit": commit,
        "host": {"machine": "x86_64", "cpus": {"count": 2, "affinity": [0, 1]}},
        "params": {"size_mib": 256, "repeats": 5},
        "results": results,
        **extra,
    }


def _write(folder: Path, name: str, record: dict) -> None:
    (folder / name).write_text(json.dumps(record), encoding="utf-8")


def _table_rows(text: str) -> list[list[str]]:
    """The data rows of the markdown tables in ``text``, as lists of cells."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith(("| date", "| ---")):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_runs_sorted_by_date_missing_figures_shown_as_dash(
    results: ModuleType, tmp_path: Path
) -> None:
    later = _record(
        "2026-12-02T10:00:00Z",
        "bbbbbbb",
        {
            "open_gb_per_s": 1.5,
            "ratio_open_vs_read_sha256": 1.1,
            "ratio_open_plaintext_digests_vs_read_sha256": 1.4,
            "peak_rss_over_payload_mib": 20.0,
        },
        host={"during_run": {"other_busy_cores": 0.25}},
    )
    earlier = _record(
        "2026-11-23T01:00:00Z",
        "aaaaaaa",
        {"open_gb_per_s": 1.25, "ratio_open_vs_read_sha256": 1.2},
        source="docs history",
        note="no memory figure",
    )
    # file names in the opposite order of the dates: the output must not follow them
    _write(tmp_path, "a.json", later)
    _write(tmp_path, "b.json", earlier)
    text = results.render(results.load_records(tmp_path))
    rows = _table_rows(text)
    assert [r[1] for r in rows] == ["aaaaaaa", "bbbbbbb"]
    first, second = rows
    assert first[:4] == ["2026-11-23 01:00", "aaaaaaa", "docs history", "-"]
    assert first[5:10] == ["1.25", "1.20x", "-", "-", "no memory figure"]
    assert second[:4] == ["2026-12-02 10:00", "bbbbbbb", "run", "0.25"]
    assert second[5:9] == ["1.50", "1.10x", "1.40x", "20"]
    assert f"`{results.COMMAND}`" in text.splitlines()[2]


def test_a_table_with_a_row_per_model(results: ModuleType, tmp_path: Path) -> None:
    rec = {
        **_record("2026-12-02T10:00:00Z", "ccccccc", {}),
        "benchmark": "zoo",
        "results": {
            "models": {
                "yolov8n": {
                    "calibration": {"seconds": 4.24, "frames": 200},
                    "clean_false_reject": {"rate": 0.01, "ci95": [0.002, 0.054]},
                    "min_gated_detection": 1.0,
                },
                "layout": {"calibration": {"seconds": 20.0, "frames": 200}},
            }
        },
    }
    _write(tmp_path, "z.json", rec)
    text = results.render(results.load_records(tmp_path))
    assert "| date (UTC) | commit | source | others busy | model | calibrate s |" in text
    rows = _table_rows(text)
    assert [r[4] for r in rows] == ["yolov8n", "layout"]  # the record's order
    assert rows[0][5:10] == ["4.2", "200", "-", "1.0 % [0.2, 5.4]", "100 %"]
    assert rows[1][5:7] == ["20.0", "200"]


def test_output_is_deterministic(results: ModuleType, tmp_path: Path) -> None:
    recs = [
        _record("2026-11-23T01:00:00Z", "aaaaaaa", {"open_gb_per_s": 1.25}),
        _record("2026-12-02T10:00:00Z", "bbbbbbb", {"open_gb_per_s": 1.5}),
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    _write(one, "x.json", recs[0])
    _write(one, "y.json", recs[1])
    _write(two, "x.json", recs[1])
    _write(two, "y.json", recs[0])
    a = results.render(results.load_records(one))
    assert a == results.render(results.load_records(one))
    assert a == results.render(results.load_records(two))
    out = tmp_path / "RESULTS.md"
    assert results.main(["--results", str(one), "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == a
    assert results.main(["--results", str(one), "--out", str(out), "--check"]) == 0
    out.write_text(a + "hand edit\n", encoding="utf-8")
    assert results.main(["--results", str(one), "--out", str(out), "--check"]) == 1


def test_committed_results_md_is_generated(results: ModuleType) -> None:
    committed = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    made = results.render(results.load_records(ROOT / "benchmarks" / "results"))
    assert committed == made, "regenerate it: python benchmarks/results.py"

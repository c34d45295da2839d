"""Generate ``benchmarks/RESULTS.md`` from the JSON records in ``benchmarks/results/``.

    python benchmarks/results.py [--results DIR] [--out FILE] [--check]

Every benchmark writes one record per run (``benchmarks/_record.py``). This script reads
them all and writes, per benchmark, tables of the runs in date order with the headline
figures and their targets; a figure a record lacks shows as ``-``. The output depends on
the records only (no clock, no paths), so ``--check`` (and the test suite) can tell
whether the committed RESULTS.md is what the records make.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
MISSING = "-"
COMMAND = "python benchmarks/results.py"

Getter = Callable[[Mapping[str, Any]], Any]
Formatter = Callable[[Any], str]


# -- getting figures out of a record's results ----------------------------------------------


def at(path: str) -> Getter:
    """The value at a dotted path of ``results`` (None when any step is missing)."""
    keys = path.split(".")

    def get(results: Mapping[str, Any]) -> Any:
        value: Any = results
        for k in keys:
            if not isinstance(value, Mapping) or k not in value:
                return None
            value = value[k]
        return value

    return get


def both(value: Getter, interval: Getter) -> Getter:
    """A figure and its interval, for :func:`pct_ci` (None when the figure is missing)."""

    def get(results: Mapping[str, Any]) -> Any:
        v = value(results)
        return None if v is None else (v, interval(results))

    return get


def minus(a: Getter, b: Getter) -> Getter:
    """``a - b`` when both exist."""

    def get(results: Mapping[str, Any]) -> Any:
        x, y = a(results), b(results)
        return None if x is None or y is None else x - y

    return get


def first(*getters: Getter) -> Getter:
    """The first getter that finds a value."""

    def get(results: Mapping[str, Any]) -> Any:
        for g in getters:
            v = g(results)
            if v is not None:
                return v
        return None

    return get


def member_stage(section: str) -> Getter:
    """Members stage minus the member's own time, from the medians in ``stages_ms`` (older
    records; newer ones carry the per-frame median ``members_over_member_ms``)."""

    def get(results: Mapping[str, Any]) -> Any:
        st = at(f"{section}.stages_ms")(results)
        if not isinstance(st, Mapping) or st.get("members") is None:
            return None
        own = [v for k, v in st.items() if k.startswith("member:") and v is not None]
        return st["members"] - own[0] if own else None

    return get


def frame_range(field: str, dtype: str) -> Getter:
    """(min, max) of ``field`` over the sanity benchmark's frame rows of ``dtype``; from
    its ``summary`` when the record has no rows (figures kept only as a range)."""

    def get(results: Mapping[str, Any]) -> Any:
        rows = results.get("frames")
        if isinstance(rows, list):
            vals = [r[field] for r in rows if r.get("dtype") == dtype and r.get(field) is not None]
            if vals:
                return (min(vals), max(vals))
        lo = at(f"summary.{field}_{dtype}_min")(results)
        hi = at(f"summary.{field}_{dtype}_max")(results)
        return None if lo is None or hi is None else (lo, hi)

    return get


def overall_range(field: str) -> Getter:
    """(min, max) of ``field`` over every frame row, or from the summary."""

    def get(results: Mapping[str, Any]) -> Any:
        rows = results.get("frames")
        if isinstance(rows, list):
            vals = [r[field] for r in rows if r.get(field) is not None]
            if vals:
                return (min(vals), max(vals))
        lo, hi = at(f"summary.{field}_min")(results), at(f"summary.{field}_max")(results)
        return None if lo is None or hi is None else (lo, hi)

    return get


def tiny(frame: str, dtype: str) -> Getter:
    """The per-call cost (µs) of the Numba check on one tiny frame."""

    def get(results: Mapping[str, Any]) -> Any:
        for row in results.get("tiny") or ():
            if row.get("frame") == frame and row.get("dtype") == dtype:
                return row.get("numba_us")
        return None

    return get


# -- formatting ------------------------------------------------------------------------------


def num(digits: int, unit: str = "") -> Formatter:
    def fmt(v: Any) -> str:
        return f"{float(v):.{digits}f}{unit}"

    return fmt


def signed_pct(v: Any) -> str:
    return f"{float(v):+.1f} %"


def pct_ci(v: Any) -> str:
    """``+2.1 % [+1.1, +4.3]`` from (value, (lo, hi)); the interval may be missing."""
    value, ci = v
    text = signed_pct(value)
    if isinstance(ci, Sequence) and len(ci) == 2 and None not in ci:
        text += f" [{float(ci[0]):+.1f}, {float(ci[1]):+.1f}]"
    return text


def span(digits: int, unit: str = "") -> Formatter:
    """``0.75-1.13`` from (lo, hi)."""

    def fmt(v: Any) -> str:
        lo, hi = v
        if round(lo, digits) == round(hi, digits):
            return f"{lo:.{digits}f}{unit}"
        return f"{lo:.{digits}f}-{hi:.{digits}f}{unit}"

    return fmt


def pct0(v: Any) -> str:
    """``97 %`` from a fraction."""
    return f"{100 * float(v):.0f} %"


def pct1(v: Any) -> str:
    """``92.7 %`` from a fraction."""
    return f"{100 * float(v):.1f} %"


def rate_ci(v: Any) -> str:
    """``1.0 % [0.2, 5.4]`` from (fraction, (lo, hi)) fractions."""
    value, ci = v
    text = f"{100 * float(value):.1f} %"
    if isinstance(ci, Sequence) and len(ci) == 2 and None not in ci:
        text += f" [{100 * float(ci[0]):.1f}, {100 * float(ci[1]):.1f}]"
    return text


def text(v: Any) -> str:
    return str(v)


def _figure(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "-".join(_figure(x) for x in v)
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def figures(v: Any) -> str:
    """``key value; key lo-hi; ...`` for a flat mapping of named figures."""
    return "; ".join(f"{k} {_figure(x)}" for k, x in sorted(v.items()) if k != "params")


def everything(results: Mapping[str, Any]) -> Any:
    return {k: v for k, v in results.items() if k != "params"} or None


# -- what each benchmark's tables show -------------------------------------------------------


@dataclass(frozen=True)
class Col:
    header: str
    get: Getter
    fmt: Formatter


@dataclass(frozen=True)
class Table:
    title: str
    target: str
    cols: tuple[Col, ...]
    each: str | None = None
    """A dotted path to a mapping in the results: one row per entry (its key first)."""


@dataclass(frozen=True)
class Bench:
    title: str
    command: str
    tables: tuple[Table, ...]


def _ms(path: str, header: str) -> Col:
    return Col(header, at(path), num(2))


def _overhead_cols(section: str) -> tuple[Col, ...]:
    return (
        _ms(f"{section}.plain_ms", "plain ms"),
        _ms(f"{section}.guarded_ms", "guarded ms"),
        Col(
            "added, ratio of medians [95 %]",
            both(at(f"{section}.added_pct"), at(f"{section}.added_pct_ci95.ratio_of_medians_pct")),
            pct_ci,
        ),
        Col(
            "added, paired [95 %]",
            both(at(f"{section}.added_pct_paired"), at(f"{section}.added_pct_ci95.paired_pct")),
            pct_ci,
        ),
    )


BENCHES: dict[str, Bench] = {
    "guarded_real": Bench(
        "Guarded runtime on a real model (PP-OCRv4 detector, 640x640 float32)",
        "python benchmarks/bench_guarded_real.py",
        (
            Table(
                "Guard overhead on a bare ONNX Runtime session "
                "(GuardedRuntime + sanity vs session.run, same session)",
                "added <= 3 %",
                (
                    Col("frames", at("params.frames"), text),
                    *_overhead_cols("overhead"),
                    Col("speculative", at("overhead.added_pct_speculative"), signed_pct),
                    _ms("overhead.stages_ms.input_checks", "input checks ms"),
                    Col(
                        "members stage over member ms",
                        first(
                            at("overhead.members_over_member_ms"),
                            member_stage("overhead"),
                            at("overhead.members_stage_over_member_ms"),
                        ),
                        num(2),
                    ),
                ),
            ),
            Table(
                "Through the device session, threads (open_session(isolation='threads') vs "
                "session.run at the member's thread count)",
                "added <= 3 %",
                (
                    Col("threads", at("session.threads.intra_op_threads"), text),
                    *_overhead_cols("session.threads"),
                    _ms("session.threads.stages_ms.input_checks", "input checks ms"),
                    Col(
                        "members stage over member ms",
                        first(
                            at("session.threads.members_over_member_ms"),
                            member_stage("session.threads"),
                        ),
                        num(2),
                    ),
                    Col("rejected", at("session.threads.rejected_frames"), text),
                ),
            ),
            Table(
                "Through the device session, sandboxed (open_session(isolation='sandbox') vs "
                "session.run at the member's thread count)",
                "added <= 3 %",
                (
                    Col("threads", at("session.sandbox.intra_op_threads"), text),
                    *_overhead_cols("session.sandbox"),
                    _ms("session.sandbox.stages_ms.input_checks", "input checks ms"),
                    Col(
                        "members stage over member ms",
                        first(
                            at("session.sandbox.members_over_member_ms"),
                            member_stage("session.sandbox"),
                        ),
                        num(2),
                    ),
                    Col("rejected", at("session.sandbox.rejected_frames"), text),
                ),
            ),
            Table(
                "2-member ensemble (fp32 + fp16, one thread each): wall time / sum of members",
                "<= 0.65x",
                (
                    Col("unpinned", at("concurrency.ratio_to_sum"), num(2, "x")),
                    Col("pinned", at("concurrency.pinned_ratio_to_sum"), num(2, "x")),
                    Col("bare threads", at("concurrency.bare_threads_ratio_to_sum"), num(2, "x")),
                    Col("compute probe", at("concurrency.compute_probe_ratio"), num(2, "x")),
                    _ms("concurrency.fp32_ms", "fp32 ms"),
                    _ms("concurrency.fp16_ms", "fp16 ms"),
                    _ms("concurrency.ensemble_wall_ms", "wall ms"),
                ),
            ),
        ),
    ),
    "runtime": Bench(
        "Guarded runtime on the digits models: overhead, concurrency, failover",
        "python benchmarks/bench_runtime.py",
        (
            Table(
                "Overhead (digits b1: a model of microseconds, so the fixed cost shows) and "
                "concurrency",
                "overhead <= 3 %, ensemble <= 0.65x",
                (
                    Col(
                        "digits b1 + sanity, added µs",
                        at("overhead_digits_b1_sanity.added_us"),
                        num(0),
                    ),
                    Col(
                        "digits b1 + sanity",
                        at("overhead_digits_b1_sanity.overhead_pct"),
                        signed_pct,
                    ),
                    Col(
                        "big MLP b256 + sanity",
                        at("overhead_big_b256_sanity.overhead_pct"),
                        signed_pct,
                    ),
                    Col(
                        "big MLP b256, no sanity",
                        at("overhead_big_b256_nosanity.overhead_pct"),
                        signed_pct,
                    ),
                    Col("ensemble digits b1", at("concurrency_digits_b1.ratio"), num(2, "x")),
                    Col("ensemble big b256", at("concurrency_big_b256.ratio"), num(2, "x")),
                    Col(
                        "bare threads big b256", at("concurrency_big_b256.bare_ratio"), num(2, "x")
                    ),
                ),
            ),
            Table(
                "Failover: a member that hangs on every frame (ms)",
                "p99 <= deadline + 2 ms",
                (
                    Col("deadline", at("failover_fallback_model.deadline_ms"), num(0)),
                    _ms("failover_fallback_model.p50_ms", "fallback p50"),
                    _ms("failover_fallback_model.p99_ms", "fallback p99"),
                    _ms("failover_fallback_model.max_ms", "fallback max"),
                    _ms("failover_safe_default.p50_ms", "safe default p50"),
                    _ms("failover_safe_default.p99_ms", "safe default p99"),
                    _ms("failover_safe_default.max_ms", "safe default max"),
                ),
            ),
        ),
    ),
    "sandbox": Bench(
        "Sandboxed member workers",
        "python benchmarks/bench_sandbox.py",
        (
            Table(
                "Per-frame overhead of a sandboxed worker over in-process (medians)",
                "PP-OCRv4 det: <= 1 ms and <= 5 %",
                (
                    _ms("real_model.inprocess_ms.p50", "PP-OCRv4 in-process ms"),
                    _ms("real_model.overhead_ms_median", "PP-OCRv4 added ms"),
                    Col(
                        "PP-OCRv4 added",
                        lambda r: (
                            None
                            if at("real_model.overhead_ratio")(r) is None
                            else 100 * at("real_model.overhead_ratio")(r)
                        ),
                        signed_pct,
                    ),
                    _ms("synthetic_small.overhead_ms_median", "conv640 added ms"),
                    _ms("larger_model.overhead_ms_median", "conv640x4 added ms"),
                    _ms("transport_only.overhead_ms_median", "transport only ms"),
                    Col("restart ms", at("restart.restart_ms.median"), num(0)),
                ),
            ),
        ),
    ),
    "sanity": Bench(
        "Input-sanity statistics: Numba CPU kernel vs NumPy and the read-bandwidth floor",
        "python benchmarks/bench_sanity.py --rounds 4",
        (
            Table(
                "Fraction of the one-pass read bandwidth and speed-up over NumPy "
                "(640x640x3 and 1920x1080x3, NHWC and NCHW)",
                "fraction (batch) >= 0.60, speed-up >= 10x",
                (
                    Col("float32 batch", frame_range("bw_fraction_batch", "float32"), span(2)),
                    Col("uint8 batch", frame_range("bw_fraction_batch", "uint8"), span(2)),
                    Col("float32 cold", frame_range("bw_fraction_cold", "float32"), span(2)),
                    Col("uint8 cold", frame_range("bw_fraction_cold", "uint8"), span(2)),
                    Col("speed-up vs NumPy", overall_range("speedup_vs_numpy"), span(0, "x")),
                    Col("8x8 float32 µs", tiny("1x1x8x8", "float32"), num(1)),
                    Col("8x8 uint8 µs", tiny("1x1x8x8", "uint8"), num(1)),
                ),
            ),
        ),
    ),
    "open": Bench(
        "Opening a bundle (verify + decrypt into memory)",
        "python benchmarks/bench_open.py",
        (
            Table(
                "Open path on a 256 MiB payload",
                ">= 1 GB/s, <= 1.3x read + SHA-256, peak RSS <= payload + 64 MiB",
                (
                    Col("payload MiB", at("params.size_mib"), text),
                    Col("GB/s", at("open_gb_per_s"), num(2)),
                    Col("open / (read + SHA-256)", at("ratio_open_vs_read_sha256"), num(2, "x")),
                    Col(
                        "with plaintext re-hash",
                        at("ratio_open_plaintext_digests_vs_read_sha256"),
                        num(2, "x"),
                    ),
                    Col("peak RSS over payload MiB", at("peak_rss_over_payload_mib"), num(0)),
                ),
            ),
            Table(
                "edgeguard verify --device-key of a 256 MiB bundle (child process, start-up "
                "excluded) vs read + SHA-256 of the file, medians of one run",
                "<= 1.6x read + SHA-256, >= 1 GB/s, peak RSS unchanged",
                (
                    Col("read + SHA-256 s", at("verify.read_sha256_s"), num(3)),
                    Col("verify s", at("verify.seconds"), num(3)),
                    Col(
                        "verify / (read + SHA-256)", at("verify.ratio_vs_read_sha256"), num(2, "x")
                    ),
                    Col("GB/s", at("verify.gb_per_s"), num(2)),
                    Col(
                        "CPU time / read + SHA-256's",
                        at("verify.cpu_ratio_vs_read_sha256"),
                        num(2, "x"),
                    ),
                    Col("peak RSS MiB", at("verify.peak_rss_mib"), num(0)),
                    Col(
                        "baseline tree's verify / (read + SHA-256), same run",
                        at("verify.baseline_tree.ratio_vs_read_sha256"),
                        num(2, "x"),
                    ),
                    Col(
                        "baseline tree's peak RSS MiB",
                        at("verify.baseline_tree.peak_rss_mib"),
                        num(0),
                    ),
                    Col(
                        "floor on two idle cores",
                        at("verify.floor_ratio_vs_read_sha256"),
                        num(2, "x"),
                    ),
                    Col(
                        "floor on this run's parallelism",
                        at("verify.floor_this_run_ratio_vs_read_sha256"),
                        num(2, "x"),
                    ),
                    Col("load 1 min", at("load_avg_1m_start"), num(2)),
                ),
            ),
        ),
    ),
    "attest": Bench(
        "Attestation evidence (medians, ms)",
        "python benchmarks/bench_attest.py",
        (
            Table(
                "Software attestation key and swtpm",
                "",
                (
                    _ms("measure_ms", "measure"),
                    _ms("quote_software_ms", "quote sw"),
                    _ms("verify_software_ms", "verify sw"),
                    _ms("appraise_software_ms", "appraise sw"),
                    _ms("quote_swtpm_ms", "quote swtpm"),
                    _ms("verify_swtpm_ms", "verify swtpm"),
                    _ms("appraise_swtpm_ms", "appraise swtpm"),
                ),
            ),
        ),
    ),
    "zoo": Bench(
        "Zoo models with default settings (calibrate, build, guard, latency; generic-cpu)",
        "python benchmarks/bench_zoo.py",
        (
            Table(
                "Per model: calibration, the guard on held-out frames, latency",
                "calibration of 200 frames of 640x640 (ppocr_det) < 30 s; held-out clean "
                "false rejects <= 2 %; gated corruptions >= 95 %",
                (
                    Col("calibrate s", at("calibration.seconds"), num(1)),
                    Col("cal frames", at("calibration.frames"), text),
                    Col(
                        "CV false rejects",
                        both(
                            at("calibration.false_reject_cv.rejected"),
                            at("calibration.false_reject_cv.frames"),
                        ),
                        lambda v: f"{v[0]}/{v[1]}",
                    ),
                    Col(
                        "held-out false rejects [95 %]",
                        both(at("clean_false_reject.rate"), at("clean_false_reject.ci95")),
                        rate_ci,
                    ),
                    Col("gated corruptions (min)", at("min_gated_detection"), pct0),
                    Col("channel swap", at("detection.channel_swap.rate"), pct0),
                    _ms("latency_ms.p50", "p50 ms"),
                    _ms("latency_ms.p99", "p99 ms"),
                    Col("deadline ms", at("deadline_ms"), num(0)),
                ),
                each="models",
            ),
        ),
    ),
    "variants": Bench(
        "Precision variants: agreement with fp32 on the calibration frames, size, time",
        "python benchmarks/bench_variants.py --models ppocr_det,orientation,yolov8n --baseline",
        tuple(
            Table(
                f"{model}: --variants fp32,fp16,int8",
                ("the whole step < 60 s on 20-60 frames; " if model == "ppocr_det" else "")
                + "each variant at or above its metric's default threshold, or refused",
                (
                    Col("frames", at(f"{model}.frames"), text),
                    Col("step s", at(f"{model}.seconds"), num(1)),
                    Col("fp16 " + metric, at(f"{model}.variants.fp16.value"), num(4)),
                    Col("fp16 size", at(f"{model}.variants.fp16.size_vs_fp32"), num(2, "x")),
                    Col("int8 " + metric, at(f"{model}.variants.int8.value"), num(4)),
                    Col("int8 size", at(f"{model}.variants.int8.size_vs_fp32"), num(2, "x")),
                    Col("fp16 before", at(f"{model}.baseline.fp16.value"), num(4)),
                    Col("int8 before", at(f"{model}.baseline.int8.value"), num(4)),
                    Col("int8 size before", at(f"{model}.baseline.int8.size_vs_fp32"), num(2, "x")),
                ),
            )
            for model, metric in (
                ("ppocr_det", "pixel_iou"),
                ("orientation", "top1"),
                ("yolov8n", "box_f1"),
            )
        ),
    ),
    "mutation": Bench(
        "Mutation score of the security modules (mutmut; killed / all mutants)",
        "make mutation",
        (
            Table(
                "All modules",
                ">= 90 % of non-equivalent mutants killed (the survivors listed in the record)",
                (
                    Col("mutants", at("overall.mutants"), text),
                    Col("killed", at("overall.killed"), text),
                    Col("survived", at("overall.survived"), text),
                    Col("no tests", at("overall.no_tests"), text),
                    Col("score", at("overall.score"), pct1),
                    Col("minutes", at("seconds"), lambda v: f"{float(v) / 60:.0f}"),
                ),
            ),
            Table(
                "Per module",
                "",
                (
                    Col("mutants", at("mutants"), text),
                    Col("killed", at("killed"), text),
                    Col("survived", at("survived"), text),
                    Col("score", at("score"), pct1),
                ),
                each="modules",
            ),
        ),
    ),
    "engine_cache": Bench(
        "Session start-up with the sealed engine cache (medians, ms)",
        "python benchmarks/bench_engine_cache.py",
        (
            Table(
                "Per model and isolation: no cache, cold (compile + seal), warm (sealed load)",
                "warm faster than no cache",
                (
                    _ms("start_ms.none", "no cache"),
                    _ms("start_ms.cold", "cold"),
                    _ms("start_ms.warm", "warm"),
                    Col("no cache / warm", at("warm_speedup"), num(2, "x")),
                    Col("cold / no cache", at("cold_over_none"), num(2, "x")),
                    Col("sealed bytes", at("sealed_bytes"), text),
                ),
                each="models",
            ),
            Table(
                "ONNX Runtime session creation alone (one intra-op thread)",
                "",
                (
                    _ms("load_ms.onnx", "from ONNX"),
                    _ms("load_ms.compile", "from ONNX, writing ORT format"),
                    _ms("load_ms.ort", "from ORT format"),
                    Col("ONNX / ORT", at("load_speedup"), num(2, "x")),
                ),
                each="loads",
            ),
        ),
    ),
    "side_measurements": Bench(
        "Side measurements quoted by the docs (one-off scripts, no benchmark of their own)",
        "(none: the scripts were not kept; the note says what was measured)",
        (Table("Figures", "", (Col("figures", everything, figures),)),),
    ),
}


# -- reading and rendering -------------------------------------------------------------------


def load_records(folder: Path) -> list[dict[str, Any]]:
    """Every ``*.json`` record in ``folder`` (sorted by file name; rendering sorts by date)."""
    out = []
    for path in sorted(folder.glob("*.json")):
        rec = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rec, dict) or "benchmark" not in rec:
            raise SystemExit(f"{path}: not a benchmark record (no 'benchmark' key)")
        rec["_file"] = path.name
        out.append(rec)
    return out


def _scope(rec: Mapping[str, Any]) -> dict[str, Any]:
    """What the getters see: the results, plus ``params`` for the parameters."""
    results = rec.get("results")
    scope = dict(results) if isinstance(results, Mapping) else {}
    scope.setdefault("params", rec.get("params") or {})
    return scope


def _scopes(rec: Mapping[str, Any], table: Table) -> list[tuple[str | None, Mapping[str, Any]]]:
    """The scopes of a record's rows: the record's, or one per entry of ``table.each``."""
    scope = _scope(rec)
    if table.each is None:
        return [(None, scope)]
    entries = at(table.each)(scope)
    if not isinstance(entries, Mapping):
        return []
    return [
        (str(k), {**v, "params": scope.get("params", {})})
        for k, v in entries.items()
        if isinstance(v, Mapping)
    ]


def _cell(col: Col, scope: Mapping[str, Any]) -> str | None:
    try:
        value = col.get(scope)
        return None if value is None else col.fmt(value)
    except (TypeError, ValueError, KeyError, IndexError):
        return None


def _others(rec: Mapping[str, Any]) -> str:
    busy = at("host.during_run.other_busy_cores")(rec)
    return MISSING if busy is None else f"{float(busy):.2f}"


def _date(rec: Mapping[str, Any]) -> str:
    d = str(rec.get("date") or "")
    return d[:16].replace("T", " ") if d else MISSING


def _sort_key(rec: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(rec.get("date") or ""), str(rec.get("commit") or ""), str(rec.get("_file", "")))


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _generic(records: Sequence[Mapping[str, Any]]) -> Table:
    """A table of the top-level numbers, for a benchmark this script has no spec for."""
    keys = sorted(
        {
            k
            for r in records
            for k, v in _scope(r).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )[:8]
    return Table("Top-level figures", "", tuple(Col(k, at(k), num(3)) for k in keys))


def render(records: Sequence[Mapping[str, Any]]) -> str:
    """RESULTS.md for ``records``: deterministic, runs sorted by date."""
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `{COMMAND}` from the JSON records in `benchmarks/results/`; do not",
        "edit by hand (a test checks that this file is what the records make). Every",
        "benchmark writes one record per run (`--json-out PATH`, default",
        "`benchmarks/results/<benchmark>-<UTC date-time>.json`).",
        "",
        "Columns common to every table: *source* is `run` (a run of the benchmark at that",
        "commit), `baseline run` (an older commit's benchmark run on the same day as the",
        "runs it is compared with) or `docs history` (figures the docs once quoted, dated by",
        "the commit that added them; the machine's state during those runs is unknown);",
        "*others busy* is the mean number of cores other processes kept busy during the run",
        "(2 cores on the development machine). Figures move by 10-30 % between runs on this",
        "shared VM: compare runs made side by side, not across days.",
    ]
    by_bench: dict[str, list[Mapping[str, Any]]] = {}
    for rec in records:
        by_bench.setdefault(str(rec["benchmark"]), []).append(rec)
    order = [b for b in BENCHES if b in by_bench] + sorted(b for b in by_bench if b not in BENCHES)
    for name in order:
        recs = sorted(by_bench[name], key=_sort_key)
        spec = BENCHES.get(name) or Bench(name, f"python benchmarks/bench_{name}.py", ())
        tables = spec.tables or (_generic(recs),)
        lines += ["", f"## {name}: {spec.title}", "", f"Reproduce: `{spec.command}`"]
        for table in tables:
            rows = []
            for rec in recs:
                for key, scope in _scopes(rec, table):
                    cells = [_cell(c, scope) for c in table.cols]
                    if all(c is None for c in cells):
                        continue  # this record has none of this table's figures
                    rows.append(
                        [
                            _date(rec),
                            str(rec.get("commit") or MISSING),
                            str(rec.get("source") or "run"),
                            _others(rec),
                            *([] if key is None else [key]),
                            *[MISSING if c is None else c for c in cells],
                            str(rec.get("note") or ""),
                        ]
                    )
            if not rows:
                continue
            target = f" (target: {table.target})" if table.target else ""
            lines += ["", f"### {table.title}{target}", ""]
            header = [
                "date (UTC)",
                "commit",
                "source",
                "others busy",
                *([] if table.each is None else [table.each.rsplit(".", 1)[-1].rstrip("s")]),
                *[c.header for c in table.cols],
            ]
            lines.append(_md_row([*header, "note"]))
            lines.append(_md_row(["---"] * (len(header) + 1)))
            lines += [_md_row(r) for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "RESULTS.md")
    ap.add_argument(
        "--check", action="store_true", help="exit 1 if --out differs from what the records make"
    )
    args = ap.parse_args(argv)
    text_out = render(load_records(args.results))
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text_out:
            print(f"{args.out} is not what {COMMAND} makes from {args.results}", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text_out, encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

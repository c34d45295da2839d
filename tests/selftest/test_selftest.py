"""edgeguard selftest: honest about what ran, exit codes, JSON report."""

from __future__ import annotations

import json

import pytest

from edgeguard import selftest
from edgeguard.cli.main import main
from edgeguard.selftest import NotRun, run_check, run_selftest


def test_on_this_host_the_cpu_parts_pass_and_the_gpu_parts_are_not_run() -> None:
    report = run_selftest()
    by_name = {c.name: c for c in report.checks}
    for name in ("ort-inference", "sanity-numba-cpu", "device-session"):
        assert by_name[name].status == "passed", by_name[name]
    gpu = [c for c in report.checks if c.area == "gpu"]
    assert gpu, "the GPU checks are listed even where they cannot run"
    if report.host["tensorrt"] is None or report.host["pycuda"] is None:
        for c in gpu:
            assert c.status == "not run"
            assert "GPU" in c.detail or "pycuda" in c.detail or "TensorRT" in c.detail
    assert not report.failed


def test_every_outcome_of_a_check_becomes_a_result() -> None:
    def ok() -> tuple[str, dict[str, object]]:
        return "agrees", {"n": 1}

    def missing() -> tuple[str, dict[str, object]]:
        raise NotRun("needs a Jetson")

    def wrong() -> tuple[str, dict[str, object]]:
        raise AssertionError("3 of 32 vectors disagree\nsecond line")

    def bug() -> tuple[str, dict[str, object]]:
        raise TypeError("oops")

    results = [
        run_check(n, "cpu", f) for n, f in (("a", ok), ("b", missing), ("c", wrong), ("d", bug))
    ]
    assert [r.status for r in results] == ["passed", "not run", "failed", "failed"]
    assert results[0].data == {"n": 1}
    assert results[1].detail == "needs a Jetson"
    assert results[2].detail == "AssertionError: 3 of 32 vectors disagree"
    assert results[3].detail.startswith("TypeError: oops")


def test_json_report_and_exit_0_when_nothing_failed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["selftest", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "edgeguard-selftest/1"
    assert report["summary"]["failed"] == 0
    assert {c["status"] for c in report["checks"]} <= {"passed", "not run"}
    assert report["host"]["machine"]


def test_a_failed_check_exits_15_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def wrong() -> tuple[str, dict[str, object]]:
        raise AssertionError("kernel and reference disagree")

    monkeypatch.setattr(selftest, "CHECKS", (("sanity-cuda-kernel", "gpu", wrong),))
    assert main(["selftest", "--json"]) == 15
    out, err = capsys.readouterr()
    report = json.loads(out)  # the report only: the error is not appended as a second object
    assert report["checks"][0]["status"] == "failed"
    assert err.strip().count("\n") == 0
    assert "1 selftest check(s) failed: sanity-cuda-kernel" in err
    assert main(["selftest"]) == 15
    out, _ = capsys.readouterr()
    assert "1 failed" in out

"""Fault schedules, fault-injecting members, and `edgeguard serve` under faults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeguard import data
from edgeguard.cli.main import main
from edgeguard.errors import BackendError, UsageError
from edgeguard.fieldtest.faults import (
    Fault,
    FaultClock,
    FaultyExecutor,
    corrupt_frame,
    parse_faults,
)
from edgeguard.fieldtest.quality import frame_range
from edgeguard.policy.runtime import FALLBACK_NAME
from edgeguard.runtime.threads import ThreadMemberExecutor


def test_parse_faults() -> None:
    got = parse_faults("hang@3-5,crash:b@7,freeze@10-12,nan@1,nan:b@2-4", members=["a", "b"])
    assert got == [
        Fault("hang", 3, 5, "a"),
        Fault("crash", 7, 8, "b"),
        Fault("freeze", 10, 12, None),
        Fault("nan", 1, 2, None),
        Fault("nan", 2, 4, "b"),
    ]
    assert [f.on_member for f in got] == [True, True, False, False, True]
    for bad in ("explode@1", "hang@5-3", "hang:zz@1", "freeze", "@1-2"):
        with pytest.raises(UsageError):
            parse_faults(bad, members=["a", "b"])
    assert parse_faults(None) == [] and parse_faults("") == []


class _Echo:
    def run(self, feeds):  # type: ignore[no-untyped-def]
        return {"y": np.asarray(feeds["x"], dtype=np.float32) + 1}


def test_faulty_executor_windows() -> None:
    clock = FaultClock()
    faults = parse_faults("crash@2-3,nan:m@4-5,hang:m@6,slow:m@7,crash:fallback@8", members=["m"])
    inner = ThreadMemberExecutor({"m": _Echo(), FALLBACK_NAME: _Echo()})
    ex = FaultyExecutor(inner, faults, clock, slow_ms=80.0)
    x = {"x": np.zeros((1, 2), np.float32)}

    def call(name: str = "m", timeout: float = 1.0) -> tuple[bool, object]:
        c = ex.submit(name, x)
        if not c.wait(timeout):
            return False, None
        try:
            return True, c.result()["y"]
        except BackendError as exc:
            return True, exc

    clock.frame = 0
    done, y = call()
    assert done and np.array_equal(y, np.ones((1, 2)))
    clock.frame = 2
    done, err = call()
    assert done and isinstance(err, BackendError) and "injected crash" in str(err)
    clock.frame = 4
    assert np.isnan(call()[1]).all()
    clock.frame = 5
    assert not np.isnan(call()[1]).any()
    clock.frame = 6
    assert call(timeout=0.05) == (False, None)  # a hang never answers
    ex.abandon("m")
    clock.frame = 7
    assert call(timeout=0.02) == (False, None)  # slow: late for a short budget
    ex.abandon("m")
    done, y = call(timeout=1.0)
    assert done and np.array_equal(y, np.ones((1, 2)))  # and on time for a long one
    clock.frame = 8  # "fallback" targets the fallback model's calls
    assert isinstance(call(FALLBACK_NAME)[1], BackendError)
    assert call("m")[0]
    ex.close()


def test_corrupt_frame_kinds() -> None:
    rng = np.random.default_rng(0)
    f = np.full((1, 1, 4, 4), 0.5, np.float32)
    prev = np.zeros_like(f)
    faults = parse_faults("freeze@0,nan@1,scale255@2,dead@3,noise@4")
    assert np.array_equal(corrupt_frame(f, prev, faults, 0, rng)[0], prev)
    assert np.isnan(corrupt_frame(f, prev, faults, 1, rng)[0]).sum() == 1
    assert corrupt_frame(f, prev, faults, 2, rng)[0].max() == pytest.approx(127.5)
    assert not corrupt_frame(f, prev, faults, 3, rng)[0].any()
    assert corrupt_frame(f, prev, faults, 4, rng)[0].std() > 0.05
    out, applied = corrupt_frame(f, prev, faults, 9, rng)
    assert out is f and applied == []


def test_input_faults_act_on_the_frames_as_the_model_takes_them() -> None:
    """Black is each channel's lowest value in the sequence (not 0), noise scales with the
    value range, swap reverses the channels, in the layout given."""
    rng = np.random.default_rng(0)
    seq = rng.uniform(-2.0, 2.0, (8, 3, 6, 6)).astype(np.float32)
    seq[:, 1] += 10.0  # channel 1 lives in 8..12
    basis = frame_range(seq)
    assert basis.layout == "NCHW" and basis.channels == 3
    faults = parse_faults("black@0,div255@1,swap@2,noise@3")
    f = seq[:1]
    black, _ = corrupt_frame(f, None, faults, 0, rng, basis=basis)
    assert black[0, 1].min() == black[0, 1].max() == pytest.approx(seq[:, 1].min())
    assert black[0, 0].max() == pytest.approx(seq[:, 0].min())
    assert np.allclose(corrupt_frame(f, None, faults, 1, rng, basis=basis)[0], f / 255.0)
    assert np.array_equal(corrupt_frame(f, None, faults, 2, rng, basis=basis)[0], f[:, ::-1])
    noisy = corrupt_frame(f, None, faults, 3, rng, basis=basis)[0]
    assert 0.15 * basis.span < float(np.std(noisy - f)) < 0.35 * basis.span
    nhwc = np.ascontiguousarray(seq.transpose(0, 2, 3, 1))
    assert frame_range(nhwc).layout == "NHWC"
    swapped = corrupt_frame(nhwc[:1], None, faults, 2, rng, basis=frame_range(nhwc))[0]
    assert np.array_equal(swapped, nhwc[:1, ..., ::-1])
    # a frame without channels to swap: the fault is recorded, the frame unchanged
    gray = rng.uniform(0, 1, (1, 1, 4, 4)).astype(np.float32)
    out, applied = corrupt_frame(gray, None, faults, 2, rng)
    assert applied == ["swap"] and np.array_equal(out, gray)


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("serve")
    assert main(["keygen", "signer", "-o", str(d)]) == 0
    assert main(["keygen", "device", "-o", str(d / "dev"), "--id", "cam-01"]) == 0
    np.savez(d / "safe.npz", logits=np.zeros((1, 10), np.float32))
    rc = main(
        [
            "build",
            str(data.model_path("digits_mlp")),
            "-o",
            str(d / "e.egb"),
            "--sign-key",
            str(d / "signer.key"),
            "--recipient",
            str(d / "dev" / "device.pub"),
            "--device-profile",
            "generic-cpu",
            "--version",
            "1",
            "--calibration",
            str(data.split_path("calib")),
            "--variants",
            "fp32,fp16,int8",
            "--fallback",
            str(data.model_path("digits_logreg")),
            "--deadline-ms",
            "100",
            "--safe-default",
            str(d / "safe.npz"),
        ]
    )
    assert rc == 0
    return {"d": d, "bundle": d / "e.egb"}


def _serve(ensemble, tmp_path, inject: str, limit: int = 60, fps: int = 200) -> dict:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeguard.cli.main",
            "serve",
            str(ensemble["bundle"]),
            "--trust",
            str(ensemble["d"] / "signer.pub"),
            "--device-key",
            str(ensemble["d"] / "dev" / "device.key"),
            "--frames",
            str(data.split_path("test")),
            "--labels-key",
            "label",
            "--fps",
            str(fps),
            "--limit",
            str(limit),
            "--inject",
            inject,
            "--state-dir",
            str(tmp_path / "state"),
            "--metrics",
            str(tmp_path / "m.prom"),
            "--no-drop",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_serve_keeps_answering_through_member_faults(ensemble, tmp_path) -> None:
    rep = _serve(
        ensemble,
        tmp_path,
        "hang:digits_mlp-fp16@10-20,crash:digits_mlp-int8@15-25",
        limit=100,
        fps=100,
    )
    assert rep["frames"] == 100
    assert sum(rep["sources"].values()) == 100  # every frame answered
    assert rep["deadline_misses"] <= 2  # the hung calls are cut at the member budget
    # One member down: the two survivors (a quorum of 2) still answer as the ensemble.
    assert rep["sources"].get("quorum", 0) + rep["sources"].get("ensemble", 0) >= 60
    good = [a for s, a in rep["accuracy_by_source"].items() if s in ("ensemble", "quorum")]
    assert min(good) >= 0.9
    # Two members down: below quorum, the fallback model answers.
    assert rep["sources"].get("fallback_model", 0) >= 5
    assert any("DEGRADED" in t for t in rep["transitions"])
    prom = (tmp_path / "m.prom").read_text()
    assert "edgeguard_frames" in prom and "edgeguard_health_state" in prom


def test_serve_rejects_broken_camera_frames(ensemble, tmp_path) -> None:
    rep = _serve(ensemble, tmp_path, "nan@5-8,scale255@15-18,freeze@30-33")
    non_model = rep["sources"].get("last_known_good", 0) + rep["sources"].get("safe_default", 0)
    assert non_model >= 9  # 3 + 3 + 3 broken frames answered without the models
    log = tmp_path / "state" / "events.log"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeguard.cli.main",
            "log",
            "verify",
            str(log),
            "--device-pub",
            str(ensemble["d"] / "dev" / "device.pub"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kinds"].get("input_rejected", 0) >= 9


def _plain_bundle(tmp_path: Path) -> Path:
    assert main(["keygen", "signer", "-o", str(tmp_path)]) == 0
    assert main(["keygen", "device", "-o", str(tmp_path / "dev"), "--id", "x"]) == 0
    rc = main(
        [
            "build",
            str(data.model_path("digits_mlp")),
            "-o",
            str(tmp_path / "p.egb"),
            "--sign-key",
            str(tmp_path / "signer.key"),
            "--recipient",
            str(tmp_path / "dev" / "device.pub"),
            "--device-profile",
            "generic-cpu",
            "--version",
            "1",
            "--calibration",
            str(data.split_path("calib")),
        ]
    )
    assert rc == 0
    return tmp_path / "p.egb"


def _serve_cli(tmp_path: Path, bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``edgeguard serve`` of the digits test split as the device of ``_plain_bundle``."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeguard.cli.main",
            "serve",
            str(bundle),
            "--trust",
            str(tmp_path / "signer.pub"),
            "--device-key",
            str(tmp_path / "dev" / "device.key"),
            "--frames",
            str(data.split_path("test")),
            "--input-name",
            "image",
            "--state-dir",
            str(tmp_path / "s"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _serve_plain(tmp_path: Path, bundle: Path, *extra: str) -> tuple[int, dict]:
    r = _serve_cli(tmp_path, bundle, "--fps", "500", "--no-drop", "--limit", "20", "--json", *extra)
    return r.returncode, (json.loads(r.stdout) if r.returncode == 0 else {"stderr": r.stderr})


def test_serve_runs_a_plain_bundle_and_goes_on_past_rejected_and_unanswered_frames(
    tmp_path,
) -> None:
    bundle = _plain_bundle(tmp_path)
    records = tmp_path / "records.jsonl"
    rc, rep = _serve_plain(
        tmp_path, bundle, "--inject", "nan@5-7,crash@10-12", "--records", str(records)
    )
    assert rc == 0, rep
    # one model, no fallback chain: the two broken inputs are refused (rejected), the two
    # frames the crashed member could not answer are unanswered, the rest are answered
    assert rep["frames"] == 20 and not rep["stopped_early"]
    assert rep["sources"] == {"single_member": 16, "rejected": 2, "unanswered": 2}
    assert rep["unanswered"] == 2
    rej = rep["input_rejections"]
    assert rej["total"] == 2 and rej["by_check"] == {"nonfinite": 2}
    assert rej["by_fault"]["nan"] == {"rejected": 2, "frames": 2}
    assert rej["by_fault"]["clean"] == {"rejected": 0, "frames": 18}  # no input fault
    lines = [json.loads(x) for x in records.read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(20))
    assert lines[5]["source"] == "rejected" and lines[5]["rejected_by"] == ["nonfinite"]
    assert lines[10]["source"] == "unanswered" and lines[10]["faults"] == ["crash:digits_mlp"]
    assert rep["member_faults"] == {"crash:digits_mlp": {"frames": 2, "sources": {"unanswered": 2}}}
    assert lines[0]["source"] == "single_member" and lines[0]["rejected_by"] == []
    # rejected inputs are refusals by policy, not failures: they do not count as unanswered
    rc, rep = _serve_plain(tmp_path, bundle, "--inject", "nan@5-7", "--max-unanswered", "0")
    assert rc == 0 and rep["sources"]["rejected"] == 2
    rc, rep = _serve_plain(tmp_path, bundle, "--inject", "crash@5-7", "--max-unanswered", "0")
    assert rc == 10 and "stopped after 1 unanswered frame" in rep["stderr"]


def test_fault_windows_are_half_open_and_an_empty_one_says_how_to_write_it() -> None:
    (one,) = parse_faults("nan@5")
    assert (one.start, one.end) == (5, 6) and one.active(5) and not one.active(6)
    (win,) = parse_faults("freeze@60-90")
    assert win.active(60) and win.active(89) and not win.active(90)
    with pytest.raises(UsageError, match="empty") as info:
        parse_faults("nan@5-5")
    assert "half-open" in (info.value.hint or "") and "nan@5" in (info.value.hint or "")


def test_serve_drops_frames_after_a_stall_like_a_camera(tmp_path) -> None:
    """A member that takes 150 ms at 50 fps: the frames whose time passed meanwhile are
    dropped (counted, never sent), not queued and sent back to back."""
    bundle = _plain_bundle(tmp_path)
    records = tmp_path / "r.jsonl"
    r = _serve_cli(
        tmp_path,
        bundle,
        "--fps",
        "50",
        "--limit",
        "30",
        "--inject",
        "slow@5",
        "--records",
        str(records),
    )
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in records.read_text().splitlines()]
    dropped = [x["frame"] for x in lines if x["source"] == "dropped"]
    # frame 5 stalls for the slow fault; about the next 150 ms / 20 ms of frames are dropped
    assert dropped and min(dropped) == 6 and len(dropped) >= 5, dropped
    assert "frame(s) dropped" in r.stdout and "--no-drop" in r.stdout
    assert all(x["source"] != "unanswered" for x in lines)


def test_an_input_fault_aimed_at_a_member_is_refused() -> None:
    with pytest.raises(UsageError, match="input fault") as info:
        parse_faults("swap:m0@2", members=["m0"])
    assert info.value.hint == "write swap@2"
    (member_nan,) = parse_faults("nan:m0@2", members=["m0"])  # nan exists in both families
    assert member_nan.on_member and member_nan.target == "m0"

"""CLI contract of ensembles: members and policy in the bundle, guarded `run`, log verify."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeguard import data
from edgeguard.runtime.opener import read_prefix
from tests.helpers import build, eg, make_keys, run_bundle


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ensemble-cli")
    make_keys(d)
    np.savez(d / "safe.npz", logits=np.zeros((1, 10), np.float32))
    b = d / "ens.egb"
    r = build(
        d,
        b,
        data.model_path("digits_mlp"),
        version=1,
        extra=(
            "--calibration",
            data.split_path("calib"),
            "--variants",
            "fp32,fp16,int8",
            "--fallback",
            data.model_path("digits_logreg"),
            "--voter",
            "plurality",
            "--quorum",
            2,
            "--deadline-ms",
            200,
            "--safe-default",
            d / "safe.npz",
        ),
    )
    assert r.returncode == 0, r.stderr
    return {"d": d, "bundle": b}


def _run(world, tmp: Path, images: np.ndarray) -> subprocess.CompletedProcess[str]:
    np.savez(tmp / "in.npz", image=images)
    return run_bundle(
        world["d"], world["bundle"], tmp / "in.npz", tmp / "out.npz", tmp / "state", "--json"
    )


def test_policy_and_members_are_signed(world) -> None:
    with open(world["bundle"], "rb") as f:
        prefix, _ = read_prefix(f)
    m = prefix.header.manifest
    roles = {x.name: x.role for x in m.members}
    assert roles == {
        "digits_mlp-fp32": "primary",
        "digits_mlp-fp16": "member",
        "digits_mlp-int8": "member",
        "digits_logreg-fallback": "fallback",
    }
    rt = m.policy["runtime"]
    assert rt["voter"]["kind"] == "plurality" and rt["quorum"] == 2 and rt["deadline_ms"] == 200
    assert rt["fallback_chain"] == [
        "ensemble",
        "quorum",
        "fallback_model",
        "last_known_good",
        "safe_default",
    ]
    assert m.sanity is not None


def test_guarded_run_serves_every_frame_with_json_lines(world, tmp_path) -> None:
    images, labels = data.load_split("test")
    r = _run(world, tmp_path, images[:40])
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    frames, summary = lines[:-1], lines[-1]["summary"]
    assert len(frames) == 40 and summary["frames"] == 40
    for f in frames:
        assert {"source", "health", "reasons", "latency_ms", "frame"} <= set(f)
        assert f["latency_ms"]["total"] > 0
    assert summary["sources"].get("ensemble", 0) >= 38
    assert summary["placement"] == dict.fromkeys(
        ("digits_mlp-fp32", "digits_mlp-fp16", "digits_mlp-int8"), "cpu"
    )
    out = np.load(tmp_path / "out.npz")
    assert out["logits"].shape == (40, 10)
    assert np.mean(out["label"] == labels[:40]) >= 0.95


def test_rejected_frames_get_the_declared_fallback_and_are_logged(world, tmp_path) -> None:
    images, _ = data.load_split("test")
    x = images[:6].copy()
    x[3] = np.nan  # a broken frame in the middle of the stream
    r = _run(world, tmp_path, x)
    assert r.returncode == 0, r.stderr
    frames = [json.loads(x) for x in r.stdout.splitlines()][:-1]
    bad = frames[3]
    assert bad["source"] in ("last_known_good", "safe_default")
    assert any("reject" in reason for reason in bad["reasons"])
    assert bad["health"] != "NOMINAL"
    log = tmp_path / "state" / "events.log"
    v = eg("log", "verify", log, "--device-pub", world["d"] / "dev" / "device.pub", "--json")
    assert v.returncode == 0, v.stderr
    report = json.loads(v.stdout)
    assert report["records"] > 3 and report["checkpoints"] >= 1
    kinds = " ".join(report["kinds"])
    assert "reject" in kinds or "fallback" in kinds


def test_log_tampering_is_detected(world, tmp_path) -> None:
    images, _ = data.load_split("test")
    x = images[:4].copy()
    x[1] = np.nan
    assert _run(world, tmp_path, x).returncode == 0
    log = tmp_path / "state" / "events.log"
    lines = log.read_text().splitlines()
    assert len(lines) >= 4
    edited = list(lines)
    edited[2] = edited[2].replace('"kind":"', '"kind":"x', 1)
    assert edited[2] != lines[2]
    for variant in (edited, lines[:1] + lines[2:], [lines[0], lines[2], lines[1], *lines[3:]]):
        log.write_text("\n".join(variant) + "\n")
        v = eg("log", "verify", log, "--device-pub", world["d"] / "dev" / "device.pub")
        assert v.returncode == 4, (v.returncode, v.stderr)
        assert "Traceback" not in v.stderr


def test_int8_without_calibration_is_refused(world, tmp_path) -> None:
    d = world["d"]
    r = build(
        d,
        tmp_path / "x.egb",
        data.model_path("digits_mlp"),
        version=1,
        extra=(
            "--variants",
            "fp32,int8",
        ),
    )
    assert r.returncode == 2 and "calibration" in r.stderr


def test_variant_placement_uses_dla_on_orin(tmp_path) -> None:
    from edgeguard.packaging.ensemble import EnsembleOptions, plan_ensemble

    x, _ = data.load_split("calib")
    policy = plan_ensemble(
        [("m", data.model_bytes("digits_mlp"))],
        EnsembleOptions(variants=("fp32", "fp16", "int8")),
        calibration={"image": x},
        output_name="logits",
        dla_cores=2,
        has_gpu=True,
    )
    places = {m.name: m.placement for m in policy.runtime.members}
    assert places == {"m-fp32": "gpu", "m-fp16": "dla0", "m-int8": "dla1"}


def test_required_isolation_layer_missing_refuses_to_start(world, tmp_path) -> None:
    """cgroup memory delegation is absent on CI hosts: a bundle that requires it must not run."""
    from edgeguard.runtime.sandbox import probe_host

    if probe_host().available("cgroup"):
        pytest.skip("this host offers cgroup v2 memory delegation; the refusal cannot be shown")
    d = world["d"]
    b = tmp_path / "strict.egb"
    r = build(
        d,
        b,
        data.model_path("digits_mlp"),
        data.model_path("digits_logreg"),
        version=1,
        extra=(
            "--require-isolation",
            "cgroup",
            "--require-isolation",
            "seccomp",
        ),
    )
    assert r.returncode == 0, r.stderr
    with open(b, "rb") as f:
        prefix, _ = read_prefix(f)
    assert prefix.header.manifest.policy["sandbox"]["cgroup"] == "required"
    images, _ = data.load_split("test")
    np.savez(tmp_path / "in.npz", image=images[:2])
    r = run_bundle(d, b, tmp_path / "in.npz", tmp_path / "o.npz", tmp_path / "s")
    assert r.returncode == 6 and "cgroup" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = build(
        d,
        tmp_path / "x.egb",
        data.model_path("digits_mlp"),
        version=1,
        extra=(
            "--require-isolation",
            "magic",
        ),
    )
    assert r.returncode == 2


def test_hardening_rate_limit_and_switching_are_signed_and_applied(world, tmp_path) -> None:
    d = world["d"]
    b = tmp_path / "hard.egb"
    r = build(
        d,
        b,
        data.model_path("digits_mlp"),
        data.model_path("digits_logreg"),
        version=1,
        extra=(
            "--top-k",
            3,
            "--round",
            2,
            "--rate-limit",
            "50/100",
            "--model-switching",
            "--voter",
            "soft",
            "--quorum",
            1,
        ),
    )
    assert r.returncode == 0, r.stderr
    with open(b, "rb") as f:
        prefix, _ = read_prefix(f)
    rt = prefix.header.manifest.policy["runtime"]
    assert rt["hardening"]["top_k"] == 3 and rt["hardening"]["decimals"] == 2
    assert rt["rate_limit"]["rate_per_s"] == 50 and rt["rate_limit"]["burst"] == 100
    assert rt["model_switching"] is True
    images, _ = data.load_split("test")
    np.savez(tmp_path / "in.npz", image=images[:8])
    r = run_bundle(
        d, b, tmp_path / "in.npz", tmp_path / "o.npz", tmp_path / "s", "--isolation", "threads"
    )
    assert r.returncode == 0, r.stderr
    out = np.load(tmp_path / "o.npz")
    scores = out["logits"]
    assert (np.count_nonzero(scores, axis=1) <= 3).all()
    assert np.allclose(scores, np.round(scores, 2))
    r = build(
        d,
        tmp_path / "x.egb",
        data.model_path("digits_mlp"),
        version=1,
        extra=(
            "--rate-limit",
            "fast",
        ),
    )
    assert r.returncode == 2 and "rate-limit" in r.stderr

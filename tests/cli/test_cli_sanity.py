"""CLI contract: the calibrated profile in the signed bundle is checked on every frame."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeguard import data
from edgeguard.runtime.opener import read_prefix
from tests.helpers import build, make_keys, run_bundle


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sanity-cli")
    make_keys(d)
    b = d / "guarded.egb"
    r = build(
        d,
        b,
        data.model_path("digits_mlp"),
        version=1,
        extra=(
            "--calibration",
            data.model_path("digits_mlp").parent / "digits_calib.npz",
        ),
    )
    assert r.returncode == 0, r.stderr
    assert "sanity profile embedded" in r.stdout
    return {"d": d, "bundle": b}


def _run(world: dict[str, Path], tmp: Path, image: np.ndarray) -> subprocess.CompletedProcess[str]:
    np.savez(tmp / "in.npz", image=image)
    return run_bundle(
        world["d"], world["bundle"], tmp / "in.npz", tmp / "out.npz", tmp / "state", "--json"
    )


def test_profile_is_inside_the_signed_manifest(world) -> None:
    with open(world["bundle"], "rb") as f:
        prefix, _ = read_prefix(f)
    sanity = prefix.header.manifest.sanity
    assert sanity is not None and "image" in json.dumps(sanity)


def _lines(r: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_clean_input_passes(world, tmp_path) -> None:
    images, _ = data.load_split("test")
    r = _run(world, tmp_path, images[:16])
    assert r.returncode == 0, r.stderr
    *frames, summary = _lines(r)
    assert len(frames) == 16 and summary["summary"]["frames"] == 16
    assert all(f["source"] == "single_member" and f["health"] == "NOMINAL" for f in frames)
    # the checks are warmed up: no kernel compiles inside a frame
    assert max(f["latency_ms"]["input_checks"] for f in frames) < 50.0
    assert (tmp_path / "out.npz").exists()


@pytest.mark.parametrize("corruption", ["nan", "scale255", "dead", "inf"])
def test_corrupted_input_is_rejected_with_exit_8(world, tmp_path, corruption) -> None:
    images, _ = data.load_split("test")
    x = images[:4].copy()
    bad = 0
    if corruption == "nan":
        x[0, 0, 3, 3] = np.nan
    elif corruption == "inf":
        x[1, 0, 0, 0] = np.inf
        bad = 1
    elif corruption == "scale255":
        x = x * 255.0
    else:
        x[:] = 0.0
    r = _run(world, tmp_path, x)
    assert r.returncode == 8, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith(f"edgeguard: error: frame {bad}: input rejected")
    *answered, err = _lines(r)
    assert len(answered) == bad and err["frame"] == bad
    assert (err["error"], err["exit_code"]) == ("InputRejectedError", 8)
    assert err["verdict"]["status"] == "REJECT"
    v = err["verdict"]["violations"][0]
    assert {"check", "tensor", "value", "low", "high"} <= set(v)
    assert not (tmp_path / "out.npz").exists()


def test_wrong_dtype_is_rejected(world, tmp_path) -> None:
    images, _ = data.load_split("test")
    r = _run(world, tmp_path, images[:2].astype(np.float64))
    assert r.returncode == 8, r.stderr
    assert "input.dtype image: dtype float64; the model takes float32" in r.stderr


def test_a_frozen_repeat_between_frames_is_rejected(world, tmp_path) -> None:
    """Frames are checked one by one, so a frozen camera repeat is seen (tdiff 0)."""
    images, _ = data.load_split("test")
    x = images[:4].copy()
    x[2] = x[1]
    r = _run(world, tmp_path, x)
    assert r.returncode == 8, r.stderr
    assert "frame 2: input rejected: stat.tdiff image" in r.stderr

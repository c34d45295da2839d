"""Issue 3 CLI contract: calibrated profile in the signed bundle, checked on every run."""

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


def test_clean_input_passes(world, tmp_path) -> None:
    images, _ = data.load_split("test")
    r = _run(world, tmp_path, images[:16])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["result"] == "ok"
    assert out["sanity"]["inputs"]["status"] in ("PASS", "WARN")
    assert (tmp_path / "out.npz").exists()


@pytest.mark.parametrize("corruption", ["nan", "scale255", "dead", "inf"])
def test_corrupted_input_is_rejected_with_exit_8(world, tmp_path, corruption) -> None:
    images, _ = data.load_split("test")
    x = images[:4].copy()
    if corruption == "nan":
        x[0, 0, 3, 3] = np.nan
    elif corruption == "inf":
        x[1, 0, 0, 0] = np.inf
    elif corruption == "scale255":
        x = x * 255.0
    else:
        x[:] = 0.0
    r = _run(world, tmp_path, x)
    assert r.returncode == 8, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.startswith("edgeguard: error: input rejected")
    verdict = json.loads(r.stdout)
    assert verdict["result"] == "rejected"
    assert verdict["sanity"]["inputs"]["status"] == "REJECT"
    v = verdict["sanity"]["inputs"]["violations"][0]
    assert {"check", "tensor", "value", "low", "high"} <= set(v)
    assert not (tmp_path / "out.npz").exists()


def test_wrong_dtype_is_rejected(world, tmp_path) -> None:
    images, _ = data.load_split("test")
    r = _run(world, tmp_path, images[:2].astype(np.float64))
    assert r.returncode == 8, r.stderr
    assert "dtype float64 not in ['float32']" in r.stderr

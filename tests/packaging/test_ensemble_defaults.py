"""Defaults of an ensemble's runtime policy that depend on what the model computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgeguard import api, data
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.keys import DeviceKey, SignerKey
from edgeguard.runtime.opener import read_prefix


def _map_model(path: Path, scale: float) -> Path:
    """x [N, 3, H, W] -> sigmoid(scale * x) [N, 3, H, W] and its channel mean [N, 3]."""
    s = helper.make_tensor("s", TensorProto.FLOAT, [], [scale])
    g = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "s"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["prob"]),
            helper.make_node("ReduceMean", ["prob"], ["mean"], axes=[2, 3], keepdims=0),
        ],
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [
            helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 3, 16, 16]),
            helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N", 3]),
        ],
        [s],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path.write_bytes(m.SerializeToString())
    return path


@pytest.fixture(scope="module")
def keys() -> tuple[SignerKey, DeviceKey]:
    return SignerKey.generate(), DeviceKey.generate("cam")


def _build(tmp: Path, models: list[Path], keys: Any) -> Path:
    signer, dev = keys
    out = tmp / "e.egb"
    api.build_bundle(
        models,
        out=out,
        signer=signer,
        recipients=[dev.public],
        profiles=["generic-cpu"],
        version=1,
    )
    return out


def _voter(bundle: Path) -> dict[str, Any]:
    with open(bundle, "rb") as f:
        prefix, _ = read_prefix(f)
    voter: dict[str, Any] = prefix.header.manifest.policy["runtime"]["voter"]
    return voter


def test_a_map_ensemble_votes_by_median_on_every_output(tmp_path, keys) -> None:
    a = _map_model(tmp_path / "a.onnx", 1.0)
    b = _map_model(tmp_path / "b.onnx", 1.1)
    c = _map_model(tmp_path / "c.onnx", 5.0)
    bundle = _build(tmp_path, [a, b, c], keys)
    assert _voter(bundle)["kind"] == "median"
    signer, dev = keys
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    with api.open_session(
        bundle, trust=TrustStore.of([signer.public]), device_key=dev, state_dir=tmp_path / "s"
    ) as s:
        r = s.infer({"x": x})
    probs = [1 / (1 + np.exp(-k * x)) for k in (1.0, 1.1, 5.0)]
    assert set(r.outputs) == {"prob", "mean"}
    # element by element, the middle of the three members, on every output
    assert np.allclose(r.outputs["prob"], np.median(probs, axis=0), atol=1e-5)
    means = [p.mean(axis=(2, 3)) for p in probs]
    assert np.allclose(r.outputs["mean"], np.median(means, axis=0), atol=1e-5)


def test_a_classifier_ensemble_votes_by_plurality(tmp_path, keys) -> None:
    bundle = _build(
        tmp_path, [data.model_path("digits_mlp"), data.model_path("digits_logreg")], keys
    )
    assert _voter(bundle)["kind"] == "plurality"


def test_a_variant_a_device_profile_cannot_run_is_refused_or_warned(tmp_path, keys) -> None:
    from edgeguard.errors import UsageError
    from edgeguard.packaging.ensemble import EnsembleOptions
    from edgeguard.packaging.variants import VariantChecks

    signer, dev = keys
    cal = tmp_path / "cal.npz"
    np.savez(cal, image=data.load_split("calib")[0][:80])
    common: dict[str, Any] = dict(
        signer=signer, recipients=[dev.public], version=1, calibration=cal
    )
    notes: list[Any] = []
    api.build_bundle(
        [data.model_path("digits_mlp")],
        out=tmp_path / "cpu.egb",
        profiles=["generic-cpu"],
        ensemble=EnsembleOptions(variants=("fp32", "fp16")),
        on_plan=notes.append,
        **common,
    )
    (plan,) = notes
    assert plan.warnings == (
        "digits_mlp-fp16: generic-cpu does not list fp16 among the precisions it runs "
        "natively (fp32); on the CPU, ONNX Runtime runs the graph as it is, without the "
        "speed fp16 is for",
    )
    with pytest.raises(UsageError, match="GPU of jetson-nano does not run int8") as info:
        api.build_bundle(
            [data.model_path("digits_mlp")],
            out=tmp_path / "nano.egb",
            profiles=["jetson-nano"],
            ensemble=EnsembleOptions(
                variants=("fp32", "int8"), placements=(("digits_mlp-int8", "gpu0"),)
            ),
            variant_checks=VariantChecks(),
            **common,
        )
    assert "--placement digits_mlp-int8=cpu" in (info.value.hint or "")

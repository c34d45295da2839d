"""The measured deadline (``build --deadline-ms auto``, the default) and its check on the device."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeguard import api, data
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.keys import DeviceKey, SignerKey
from edgeguard.packaging.deadline import (
    MIN_AUTO_DEADLINE_MS,
    measure_deadline,
    profile_frame_shapes,
)
from edgeguard.packaging.ensemble import EnsembleOptions, MemberPlan, member_io
from edgeguard.policy.runtime import FALLBACK_NAME, DeadlineBasis
from edgeguard.runtime.opener import read_prefix
from edgeguard.runtime.session import _check_deadline


def _dynamic_conv() -> bytes:
    """x [N, 3, H, W] -> 3x3 conv -> y [N, 4, H-2, W-2]: every spatial axis dynamic."""
    w = numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w"
    )
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H2", "W2"])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return bytes(m.SerializeToString())


def _io(model: bytes) -> Any:
    return member_io(MemberPlan("m", model, "primary"))


def test_dynamic_axes_are_measured_from_frames_or_profile_shapes_and_not_guessed() -> None:
    model = _dynamic_conv()
    io = _io(model)
    assert measure_deadline([("m", model, io)], None) is None  # nothing says H and W
    frames = {"x": np.zeros((5, 3, 40, 48), np.float32)}
    deadline, basis = measure_deadline([("m", model, io)], frames)  # type: ignore[misc]
    assert basis.shapes == {"x": (1, 3, 40, 48)} and set(basis.measured_ms) == {"m"}
    assert deadline == max(MIN_AUTO_DEADLINE_MS, math.ceil(4 * basis.measured_ms["m"]))
    hinted = measure_deadline([("m", model, io)], None, shape_hints={"x": (1, 3, 24, 24)})
    assert hinted is not None and hinted[1].shapes == {"x": (1, 3, 24, 24)}


def test_profile_frame_shapes_take_the_calibrated_size() -> None:
    sanity = {"inputs": [{"name": "x", "shape": [[1, None], [3, 3], [20, 80], [48, 48]]}]}
    assert profile_frame_shapes(sanity) == {"x": (1, 3, 40, 48)}  # dynamic H: 1/2 to 2x
    assert profile_frame_shapes({"inputs": [{"name": "x"}]}) == {}


@pytest.fixture(scope="module")
def keys() -> tuple[SignerKey, DeviceKey]:
    return SignerKey.generate(), DeviceKey.generate("cam")


def _policy(bundle: Path) -> dict[str, Any]:
    with open(bundle, "rb") as f:
        prefix, _ = read_prefix(f)
    rt: dict[str, Any] = prefix.header.manifest.policy["runtime"]
    return rt


def test_a_profile_from_calibrate_shapes_the_timing_of_a_dynamic_model(tmp_path, keys) -> None:
    """build --calibration profile.json: the deadline is measured on the profile's frame
    size, not left at the unmeasured default."""
    signer, dev = keys
    model = tmp_path / "dyn.onnx"
    model.write_bytes(_dynamic_conv())
    frames = {"x": np.random.default_rng(1).uniform(0, 1, (40, 3, 32, 32)).astype(np.float32)}
    profile, _ = api.calibrate_profile(model.read_bytes(), frames)
    prof = tmp_path / "profile.json"
    prof.write_text(json.dumps(profile.to_dict()))
    out = tmp_path / "b.egb"
    api.build_bundle(
        [model],
        out=out,
        signer=signer,
        recipients=[dev.public],
        profiles=["generic-cpu"],
        version=1,
        calibration=prof,
    )
    basis = _policy(out)["deadline_basis"]
    assert basis is not None and basis["shapes"] == {"x": [1, 3, 32, 32]}


def test_single_model_and_ensemble_deadlines(tmp_path, keys) -> None:
    signer, dev = keys
    common = dict(signer=signer, recipients=[dev.public], profiles=["generic-cpu"], version=1)
    single = tmp_path / "one.egb"
    api.build_bundle([data.model_path("digits_mlp")], out=single, **common)  # type: ignore[arg-type]
    rt = _policy(single)
    assert rt["deadline_ms"] == 1000.0  # a single model's deadline is a hang guard
    assert set(rt["deadline_basis"]["measured_ms"]) == {"digits_mlp"}
    ens = tmp_path / "ens.egb"
    api.build_bundle(
        [data.model_path("digits_mlp"), data.model_path("digits_logreg")],
        out=ens,
        ensemble=EnsembleOptions(fallback=data.model_path("digits_logreg")),
        **common,  # type: ignore[arg-type]
    )
    rt = _policy(ens)
    measured = rt["deadline_basis"]["measured_ms"]
    assert set(measured) == {"digits_mlp", "digits_logreg", FALLBACK_NAME}
    assert rt["deadline_ms"] == max(MIN_AUTO_DEADLINE_MS, math.ceil(4 * max(measured.values())))
    # the fallback keeps 40 % of the deadline
    assert rt["member_budget_ms"] == pytest.approx(0.6 * rt["deadline_ms"])


class _Call:
    def __init__(self, ms: float) -> None:
        self.run_ns = int(ms * 1e6)

    def wait(self, timeout: float) -> bool:
        return True

    def result(self) -> dict[str, np.ndarray]:
        return {}


class _Exec:
    def __init__(self, ms: dict[str, float]) -> None:
        self.ms = ms

    def submit(self, name: str, feeds: Any) -> _Call:
        return _Call(self.ms[name])

    def abandon(self, name: str) -> None:  # pragma: no cover - never hangs here
        pass


def test_the_session_times_the_members_again_and_flags_a_slow_device() -> None:
    basis = DeadlineBasis(
        measured_ms={"a": 5.0, "b": 6.0}, shapes={"x": (1, 4)}, factor=4.0, host="x86_64"
    )
    policy = SimpleNamespace(deadline_basis=basis, deadline_ms=25.0)
    inputs = [SimpleNamespace(name="x", dtype="float32")]
    fast = _check_deadline(_Exec({"a": 5.0, "b": 6.0}), policy, inputs)  # type: ignore[arg-type]
    assert fast is not None and not fast.slow and fast.build_ms == {"a": 5.0, "b": 6.0}
    slow = _check_deadline(_Exec({"a": 5.0, "b": 14.0}), policy, inputs)  # type: ignore[arg-type]
    assert slow is not None and slow.slow and slow.device_ms["b"] == 14.0
    assert "b 14.0 ms here (6.0 ms at build)" in slow.describe()
    # no basis (a deadline given at build): nothing to compare
    given = SimpleNamespace(deadline_basis=None, deadline_ms=25.0)
    assert _check_deadline(_Exec({}), given, inputs) is None  # type: ignore[arg-type]


def test_a_session_logs_its_deadline_check(tmp_path, keys) -> None:
    signer, dev = keys
    out = tmp_path / "b.egb"
    api.build_bundle(
        [data.model_path("digits_mlp")],
        out=out,
        signer=signer,
        recipients=[dev.public],
        profiles=["generic-cpu"],
        version=1,
    )
    with api.open_session(
        out, trust=TrustStore.of([signer.public]), device_key=dev, state_dir=tmp_path / "s"
    ) as s:
        check = s.deadline_check
        assert check is not None and not check.slow
        assert set(check.device_ms) == {"digits_mlp"} and check.deadline_ms == 1000.0
        log = s.log_path
    assert log is not None and '"deadline_check"' in log.read_text()

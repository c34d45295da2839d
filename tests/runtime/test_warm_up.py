"""The warm-up run of in-process members: signed shapes, guessed shapes, real failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeguard import api
from edgeguard.errors import BackendError
from edgeguard.keystore import load_device_key, load_trust_store
from edgeguard.policy.io import TensorSpec
from edgeguard.runtime.session import _warm_up
from tests.helpers import build, make_keys


class _Member:
    """Test double of a loaded member: records its feeds, fails below a size."""

    def __init__(self, shape: tuple[Any, ...], min_hw: int) -> None:
        self.spec = TensorSpec("x", "float32", shape)
        self.min_hw = min_hw
        self.feeds: list[tuple[int, ...]] = []

    def inputs(self) -> tuple[TensorSpec, ...]:
        return (self.spec,)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shape = feeds["x"].shape
        self.feeds.append(shape)
        if min(shape[2:]) < self.min_hw:
            raise RuntimeError("Invalid input shape")
        return {"y": feeds["x"]}


def test_signed_shapes_are_used_when_they_name_every_input() -> None:
    m = _Member((None, 3, None, None), min_hw=3)
    _warm_up(m, {"x": (1, 3, 40, 48)})
    assert m.feeds == [(1, 3, 40, 48)]


def test_without_signed_shapes_a_model_with_dynamic_image_axes_is_not_guessed_at() -> None:
    m = _Member((None, 3, None, None), min_hw=3)
    _warm_up(m, None)  # a 1x1 frame is no frame a detector runs: its first real frame warms it
    assert m.feeds == []


def test_a_batch_of_one_is_a_safe_guess_and_its_failure_does_not_stop_the_start() -> None:
    m = _Member((None, 3, 8, 8), min_hw=3)
    _warm_up(m, None)
    assert m.feeds == [(1, 3, 8, 8)]
    _warm_up(_Member((None, 3, 2, 2), min_hw=3), None)  # fails on the guessed batch: tolerated


def test_a_model_that_fails_on_its_own_fixed_shape_or_the_signed_one_is_an_error() -> None:
    with pytest.raises(BackendError, match="warm-up"):
        _warm_up(_Member((1, 3, 2, 2), min_hw=3), None)
    with pytest.raises(BackendError, match="warm-up"):
        _warm_up(_Member((None, 3, None, None), min_hw=3), {"x": (1, 3, 2, 2)})


def _dynamic_conv(path: Path) -> Path:
    """x [N, 3, H, W] -> 3x3 conv, no padding: cannot run 1x1 frames (like YOLOv8n)."""
    from tests.packaging.test_deadline import _dynamic_conv as model

    path.write_bytes(model())
    return path


def test_a_detector_with_dynamic_image_axes_starts_in_threads(tmp_path: Path) -> None:
    make_keys(tmp_path)
    bundle = tmp_path / "det.egb"
    r = build(tmp_path, bundle, _dynamic_conv(tmp_path / "det.onnx"))
    assert r.returncode == 0, r.stderr
    with api.open_session(
        bundle,
        trust=load_trust_store([tmp_path / "signer.pub"]),
        device_key=load_device_key(tmp_path / "dev" / "device.key"),
        state_dir=tmp_path / "s",
        isolation="threads",
    ) as s:
        out = s.run({"x": np.ones((1, 3, 16, 16), np.float32)})
    assert next(iter(out.values())).shape == (1, 4, 14, 14)

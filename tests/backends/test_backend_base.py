"""The Backend interface: validation happens in the public methods, for every backend."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edgeguard.backends import Backend, TensorSpec
from edgeguard.errors import BackendError, UsageError


class _Affine(Backend):
    """A NumPy test backend: y = x @ w, optionally returning a wrong output."""

    name = "numpy-affine"

    def __init__(self, *, corrupt: str | None = None) -> None:
        super().__init__()
        self.w = np.arange(12, dtype=np.float32).reshape(4, 3)
        self.corrupt = corrupt
        self.calls = 0
        self.closed_count = 0

    def _inputs(self) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec("x", "float32", (None, 4)),
            TensorSpec("scale", "float32", ()),
        )

    def _outputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("y", "float32", ("batch", 3)),)

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        y = (feeds["x"] @ self.w) * feeds["scale"]
        if self.corrupt == "dtype":
            return {"y": y.astype(np.float64)}
        if self.corrupt == "shape":
            return {"y": y[:, :2]}
        if self.corrupt == "missing":
            return {}
        return {"y": y}

    def _close_impl(self) -> None:
        self.closed_count += 1

    def _describe_impl(self) -> dict[str, Any]:
        return {"weights": int(self.w.size)}


def _feeds(n: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.ones((n, 4), np.float32), "scale": np.array(2.0, np.float32)}


def test_run_passes_validated_feeds() -> None:
    b = _Affine()
    out = b.run(_feeds(5))
    np.testing.assert_array_equal(out["y"], np.ones((5, 4), np.float32) @ b.w * 2)
    assert b.calls == 1


def test_invalid_requests_never_reach_the_implementation() -> None:
    b = _Affine()
    bad = [
        {"x": np.ones((2, 4), np.float32)},
        {**_feeds(), "z": np.ones(1)},
        {**_feeds(), "scale": np.array([2.0], np.float32)},
        {**_feeds(), "x": np.ones((2, 5), np.float32)},
        {**_feeds(), "x": np.ones((2, 4), np.float16)},
    ]
    for feeds in bad:
        with pytest.raises(UsageError):
            b.run(feeds)
    assert b.calls == 0


@pytest.mark.parametrize("corrupt", ["dtype", "shape", "missing"])
def test_bad_backend_outputs_raise_backend_error(corrupt: str) -> None:
    with pytest.raises(BackendError, match="'y'"):
        _Affine(corrupt=corrupt).run(_feeds())


def test_close_once_and_context_manager() -> None:
    with _Affine() as b:
        b.run(_feeds())
    assert b.closed
    b.close()
    assert isinstance(b, _Affine) and b.closed_count == 1
    with pytest.raises(UsageError, match="closed"):
        b.describe()


def test_describe_is_plain_json() -> None:
    desc = _Affine().describe()
    assert json.loads(json.dumps(desc)) == {
        "backend": "numpy-affine",
        "inputs": [
            {"name": "x", "dtype": "float32", "shape": [None, 4]},
            {"name": "scale", "dtype": "float32", "shape": []},
        ],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 3]}],
        "details": {"weights": 12},
    }


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", "float32", (1,)), "non-empty"),
        (("t", "floaty", (1,)), "unknown dtype"),
        (("t", "f4", (1,)), "spelled 'float32'"),
        (("t", "float32", (-1,)), "negative"),
        (("t", "float32", (1.5,)), "bad dimension"),
        (("t", "float32", (True,)), "bad dimension"),
    ],
)
def test_tensorspec_validation(args: tuple[Any, Any, Any], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        TensorSpec(*args)


def test_tensorspec_shape_matching() -> None:
    spec = TensorSpec("image", "float32", ("N", 1, None, 8))
    assert spec.rank == 4
    assert spec.matches_shape((3, 1, 99, 8))
    assert not spec.matches_shape((3, 2, 8, 8))
    assert not spec.matches_shape((3, 1, 8))

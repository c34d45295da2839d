"""The inference backend interface (backends layer; NumPy only).

A :class:`Backend` wraps one loaded model in one inference library. After
Polygraphy's runners, the public :meth:`Backend.run` validates the feeds
(names, dtypes, ranks, fixed dimensions) and only then calls the subclass's
:meth:`Backend._run_impl`; a backend implementation therefore never sees a
malformed request, and every backend refuses the same requests with the same
errors:

* a caller mistake (missing or unknown input name, not an array, wrong
  dtype/rank/dimension) raises :class:`~edgeguard.errors.UsageError`;
* a failure inside the inference library, or outputs that do not match what
  the model declared, raise :class:`~edgeguard.errors.BackendError`.

This module imports no inference library; concrete backends import theirs lazily.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import numpy as np

from edgeguard.errors import BackendError, UsageError
from edgeguard.policy.io import Dim, TensorSpec

__all__ = ["Backend", "Dim", "TensorSpec"]


class Backend(abc.ABC):
    """One loaded model, ready to run.

    Subclasses implement :meth:`_inputs`, :meth:`_outputs`, :meth:`_run_impl` and
    :meth:`_close_impl`; callers use :meth:`inputs`, :meth:`outputs`, :meth:`run`
    and :meth:`close` (or the object as a context manager).

    Attributes:
        name: Short backend identifier, for example ``"onnxruntime"``.
    """

    name: str = "abstract"

    def __init__(self) -> None:
        self._closed = False

    # -- public API -----------------------------------------------------------------

    def inputs(self) -> tuple[TensorSpec, ...]:
        """The model inputs, in model order."""
        self._check_open()
        return self._inputs()

    def outputs(self) -> tuple[TensorSpec, ...]:
        """The model outputs, in model order."""
        self._check_open()
        return self._outputs()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model once.

        Args:
            feeds: One array per model input, by input name.

        Returns:
            One array per model output, by output name.

        Raises:
            UsageError: The backend is closed, an input is missing, a name is unknown,
                or an array has the wrong type, dtype, rank or fixed dimension.
            BackendError: The inference library failed, or returned outputs that do
                not match the declared outputs.
        """
        self._check_open()
        specs = self._inputs()
        self._validate_feeds(feeds, specs)
        outputs = self._run_impl({s.name: feeds[s.name] for s in specs})
        self._validate_outputs(outputs)
        return outputs

    def close(self) -> None:
        """Release the model and any device memory. Idempotent."""
        if not self._closed:
            self._closed = True
            self._close_impl()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def describe(self) -> dict[str, Any]:
        """JSON-able description (no NumPy objects): backend name, inputs, outputs, details."""
        self._check_open()
        return {
            "backend": self.name,
            "inputs": [s.to_dict() for s in self._inputs()],
            "outputs": [s.to_dict() for s in self._outputs()],
            "details": self._describe_impl(),
        }

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- for subclasses -------------------------------------------------------------

    @abc.abstractmethod
    def _inputs(self) -> tuple[TensorSpec, ...]:
        """The model inputs (called only while open)."""

    @abc.abstractmethod
    def _outputs(self) -> tuple[TensorSpec, ...]:
        """The model outputs (called only while open)."""

    @abc.abstractmethod
    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run with feeds already validated against :meth:`_inputs`."""

    @abc.abstractmethod
    def _close_impl(self) -> None:
        """Release resources (called once)."""

    def _describe_impl(self) -> dict[str, Any]:
        """Backend-specific JSON-able details (providers, precision, device)."""
        return {}

    # -- validation -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"the {self.name} backend is closed")

    @staticmethod
    def _validate_feeds(feeds: Mapping[str, np.ndarray], specs: tuple[TensorSpec, ...]) -> None:
        if not isinstance(feeds, Mapping):
            raise UsageError(f"feeds must be a mapping of input name to array, got {type(feeds)}")
        expected = {s.name for s in specs}
        unknown = sorted(str(k) for k in feeds if k not in expected)
        if unknown:
            raise UsageError(
                f"unknown input name(s) {', '.join(map(repr, unknown))}",
                hint=f"the model takes: {', '.join(sorted(expected))}",
            )
        missing = sorted(expected - set(feeds))
        if missing:
            raise UsageError(f"missing input(s) {', '.join(map(repr, missing))}")
        for spec in specs:
            arr = feeds[spec.name]
            if not isinstance(arr, np.ndarray):
                raise UsageError(f"input {spec.name!r} must be a numpy.ndarray, got {type(arr)}")
            if arr.dtype.name != spec.dtype:
                raise UsageError(f"input {spec.name!r} must be {spec.dtype}, got {arr.dtype.name}")
            if arr.ndim != spec.rank:
                raise UsageError(
                    f"input {spec.name!r} must have rank {spec.rank} {_fmt(spec.shape)}, "
                    f"got rank {arr.ndim} {tuple(arr.shape)}"
                )
            if not spec.matches_shape(tuple(arr.shape)):
                raise UsageError(
                    f"input {spec.name!r} must have shape {_fmt(spec.shape)}, "
                    f"got {tuple(arr.shape)}"
                )

    def _validate_outputs(self, outputs: dict[str, np.ndarray]) -> None:
        for spec in self._outputs():
            arr = outputs.get(spec.name)
            if not isinstance(arr, np.ndarray):
                raise BackendError(f"the {self.name} backend returned no array for {spec.name!r}")
            if arr.dtype.name != spec.dtype or not spec.matches_shape(tuple(arr.shape)):
                raise BackendError(
                    f"the {self.name} backend returned {spec.name!r} as "
                    f"{arr.dtype.name}{tuple(arr.shape)}, declared {spec.dtype}{_fmt(spec.shape)}"
                )


def _fmt(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"

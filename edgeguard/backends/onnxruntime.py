"""ONNX Runtime CPU backend (backends layer; imports onnxruntime lazily).

The embedded default path: the decrypted model is handed to ONNX Runtime **as
bytes in memory** and never written to a file (an ``InferenceSession`` accepts
the serialised model directly; ``optimized_model_filepath`` is left unset so ORT
does not write the optimised graph either). Only the CPU execution provider is
used, with all graph optimisations enabled.

Errors raised by ONNX Runtime while loading or running are mapped to
:class:`~edgeguard.errors.BackendError`; request validation happens in
:meth:`edgeguard.backends.base.Backend.run`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeguard._optional import require
from edgeguard.backends.base import Backend, Dim, TensorSpec
from edgeguard.errors import BackendError, UsageError

__all__ = ["OnnxRuntimeBackend"]

PROVIDER = "CPUExecutionProvider"

# ONNX Runtime type strings -> NumPy dtype names.
_ORT_TYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


def _ort() -> Any:
    return require("onnxruntime", extra="ort", purpose="The ONNX Runtime backend")


def _threads(value: int | None, what: str) -> int:
    if value is None:
        return 0  # ORT picks
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{what} must be a positive integer or None, got {value!r}")
    return value


def _spec(arg: Any) -> TensorSpec:
    dtype = _ORT_TYPES.get(str(arg.type))
    if dtype is None:
        raise BackendError(f"tensor {arg.name!r} has unsupported type {arg.type}")
    shape: tuple[Dim, ...] = tuple(
        d if isinstance(d, (int, str)) and not isinstance(d, bool) else None for d in arg.shape
    )
    return TensorSpec(name=str(arg.name), dtype=dtype, shape=shape)


class OnnxRuntimeBackend(Backend):
    """A model loaded into an ONNX Runtime CPU session.

    Create it with :meth:`from_bytes`.
    """

    name = "onnxruntime"

    def __init__(self, session: Any, *, intra_op_threads: int, inter_op_threads: int) -> None:
        """Wrap an existing session; prefer :meth:`from_bytes`."""
        super().__init__()
        self._session = session
        self._in = tuple(_spec(a) for a in session.get_inputs())
        self._out = tuple(_spec(a) for a in session.get_outputs())
        self._intra = intra_op_threads
        self._inter = inter_op_threads

    @classmethod
    def from_bytes(
        cls,
        model: bytes | bytearray | memoryview,
        *,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = 1,
    ) -> OnnxRuntimeBackend:
        """Load a serialised ONNX model from memory.

        Args:
            model: The ONNX model bytes. Never written to disk.
            intra_op_threads: Threads inside one operator (None: ONNX Runtime decides).
            inter_op_threads: Threads across operators (None: ONNX Runtime decides).

        Returns:
            The loaded backend.

        Raises:
            UsageError: ``model`` is not a bytes-like object, or a thread count is invalid.
            MissingDependencyError: onnxruntime is not installed.
            BackendError: ONNX Runtime cannot load the model.
        """
        if not isinstance(model, (bytes, bytearray, memoryview)):
            raise UsageError(
                f"the model must be bytes, bytearray or memoryview, got {type(model).__name__}",
                hint="pass the model bytes, not a path; edgeguard never loads models from files",
            )
        intra = _threads(intra_op_threads, "intra_op_threads")
        inter = _threads(inter_op_threads, "inter_op_threads")
        data = bytes(model)
        if not data:
            raise BackendError("the ONNX model is empty")
        ort = _ort()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = intra
        opts.inter_op_num_threads = inter
        opts.log_severity_level = 3  # errors only; failures surface as exceptions
        try:
            session = ort.InferenceSession(data, sess_options=opts, providers=[PROVIDER])
        except Exception as exc:
            raise BackendError(f"ONNX Runtime cannot load the model: {_short(exc)}") from exc
        if session.get_providers() != [PROVIDER]:
            raise BackendError(f"ONNX Runtime chose providers {session.get_providers()}")
        return cls(session, intra_op_threads=intra, inter_op_threads=inter)

    def _inputs(self) -> tuple[TensorSpec, ...]:
        return self._in

    def _outputs(self) -> tuple[TensorSpec, ...]:
        return self._out

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [s.name for s in self._out]
        try:
            results = self._session.run(names, feeds)
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed to run the model: {_short(exc)}") from exc
        return {n: np.asarray(r) for n, r in zip(names, results, strict=True)}

    def _close_impl(self) -> None:
        self._session = None

    def _describe_impl(self) -> dict[str, Any]:
        ort = _ort()
        meta = self._session.get_modelmeta()
        return {
            "onnxruntime": str(ort.__version__),
            "providers": list(self._session.get_providers()),
            "graph_optimization": "all",
            "intra_op_threads": self._intra,
            "inter_op_threads": self._inter,
            "model": {
                "graph_name": str(meta.graph_name),
                "producer": str(meta.producer_name),
                "version": int(meta.version),
                "metadata": {str(k): str(v) for k, v in meta.custom_metadata_map.items()},
            },
        }


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

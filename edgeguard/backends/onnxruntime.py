"""ONNX Runtime backend (backends layer; imports onnxruntime lazily).

The embedded default path: the decrypted model is handed to ONNX Runtime **as
bytes in memory** and never written to a file (an ``InferenceSession`` accepts
the serialised model directly; ``optimized_model_filepath`` is left unset so ORT
does not write the optimised graph either). All graph optimisations are on.

Copies of the plaintext: ONNX Runtime's Python API takes a model only as a path or
as a ``bytes`` object (``InferenceSession.__init__`` checks ``isinstance(..., bytes)``;
a ``memoryview`` or ``bytearray`` is refused), so a model given as a ``bytearray`` or
``memoryview`` (edgeguard's locked, wiped buffers and sealed memfd mappings are) is
copied once into a ``bytes`` object this module owns. That copy is zeroed in place as
soon as the session exists (or failed to), and the wrapper's reference to it is
dropped; the session is created with ``enable_fallback=0`` so ONNX Runtime never
re-reads it. A model passed as ``bytes`` is the caller's object and is left alone.
What ONNX Runtime copies internally (a ``std::string`` of the whole model, the parsed
protobuf, the initializers it computes with) is out of our reach: see
``docs/threat-model.md``, "Plaintext inside ONNX Runtime".

Where it runs:

* by default, the CPU execution provider, with ``intra_op_threads`` threads;
  ``cpus`` pins the session's thread pool to those cores (Linux);
* with ``gpu`` or ``dla_core``, ONNX Runtime's TensorRT execution provider on
  that CUDA device or DLA core (the GPU build of onnxruntime, for example the
  Jetson Zoo wheels), CUDA and then CPU for any node TensorRT does not take.
  The engine cache, timing cache and subgraph dumps stay off, so no engine or
  model bytes reach the disk. A DLA member is built in fp16 (int8 when the
  model carries Q/DQ nodes), since DLA runs nothing else; a GPU member in the
  precision the model itself is in. **This path has never run on a GPU**: the
  provider options are checked on the host only
  (``tests/runtime/test_placement.py``).

Errors raised by ONNX Runtime while loading or running are mapped to
:class:`~edgeguard.errors.BackendError`; request validation happens in
:meth:`edgeguard.backends.base.Backend.run`.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Collection
from typing import Any

import numpy as np

from edgeguard._optional import require
from edgeguard.backends.base import Backend, Dim, TensorSpec
from edgeguard.errors import BackendError, UsageError

__all__ = [
    "ARTIFACT_RECIPE",
    "OnnxRuntimeBackend",
    "library_version",
    "preload",
    "trt_providers",
]

PROVIDER = "CPUExecutionProvider"
TRT_PROVIDER = "TensorrtExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"

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


#: The session options that shape the optimised model this backend writes (its engine
#: cache recipe: ``docs/engine-cache.md``). Thread counts and pinning do not change it.
ARTIFACT_RECIPE: dict[str, Any] = {
    "compiler": "onnxruntime",
    "graph_optimization": "all",
    "providers": [PROVIDER],
    "save_model_format": "ORT",
}


def library_version() -> str:
    """``"onnxruntime <version>"`` of the installed distribution, without importing it."""
    from importlib import metadata

    for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"):
        try:
            return f"onnxruntime {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return f"onnxruntime {_ort().__version__}"


def _ort() -> Any:
    return require("onnxruntime", extra="ort", purpose="The ONNX Runtime backend")


def preload() -> None:
    """Import ONNX Runtime now, not at the first load.

    A sandboxed worker calls this while it may still read files: it loses all file
    access (Landlock) before it parses a model.

    Raises:
        MissingDependencyError: onnxruntime is not installed.
    """
    _ort()


def _scrub(data: bytes) -> None:
    """Zero, in place, a ``bytes`` object that this module created and alone refers to.

    ``bytes`` are immutable to Python code; this writes through the object's buffer
    (``c_char_p`` points into it, no copy). Never call it on an object anyone else
    may hold: small ``bytes`` are shared singletons, and a caller's object is theirs.
    """
    if data:
        ctypes.memset(ctypes.c_char_p(data), 0, len(data))


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

    def __init__(
        self,
        session: Any,
        *,
        intra_op_threads: int,
        inter_op_threads: int,
        cpus: frozenset[int] | None = None,
        accelerator: dict[str, Any] | None = None,
    ) -> None:
        """Wrap an existing session; prefer :meth:`from_bytes`."""
        super().__init__()
        self._session = session
        self._in = tuple(_spec(a) for a in session.get_inputs())
        self._out = tuple(_spec(a) for a in session.get_outputs())
        self._intra = intra_op_threads
        self._inter = inter_op_threads
        self._cpus = cpus
        self._accel = accelerator

    @classmethod
    def from_bytes(
        cls,
        model: bytes | bytearray | memoryview,
        *,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = 1,
        cpus: Collection[int] | None = None,
        gpu: int | None = None,
        dla_core: int | None = None,
        precisions: Collection[str] = (),
        model_format: str = "onnx",
        save_artifact_fd: int | None = None,
    ) -> OnnxRuntimeBackend:
        """Load a serialised ONNX model (or ORT-format optimised model) from memory.

        Args:
            model: The ONNX model bytes. Never written to disk.
            intra_op_threads: Threads inside one operator (None: ONNX Runtime decides).
            inter_op_threads: Threads across operators (None: ONNX Runtime decides).
            cpus: Pin the session's pool threads to these cores (they are created
                while the calling thread is pinned so, and inherit it). The thread
                that later calls :meth:`run` runs one share of the work itself:
                pin it too (the guarded runtime's executors do).
            gpu: Run on this CUDA device through the TensorRT execution provider.
            dla_core: Run on this DLA core (of ``gpu``, default 0) through the
                TensorRT execution provider.
            precisions: The reduced precisions the model's graph uses (``"fp16"``,
                ``"int8"``), from its signed I/O contract; they set TensorRT's
                precision flags on an accelerator.
            model_format: ``"onnx"``, or ``"ort"``: an optimised model this backend
                wrote with ``save_artifact_fd`` on this device (the engine cache).
            save_artifact_fd: A descriptor of a memfd (never a file) that ONNX Runtime
                writes the optimised model into, in ORT format, while it creates the
                session (``/proc/self/fd/N``); CPU only. The model is specific to this
                CPU (NCHWc layouts), hence the engine cache's hardware binding.

        Returns:
            The loaded backend.

        Raises:
            UsageError: ``model`` is not a bytes-like object, a thread count, core
                or device number is invalid, or ``cpus`` is given with an accelerator.
            MissingDependencyError: onnxruntime is not installed.
            BackendError: ONNX Runtime cannot load the model, or has no TensorRT
                execution provider when an accelerator is asked for.
        """
        if not isinstance(model, (bytes, bytearray, memoryview)):
            raise UsageError(
                f"the model must be bytes, bytearray or memoryview, got {type(model).__name__}",
                hint="pass the model bytes, not a path; edgeguard never loads models from files",
            )
        intra = _threads(intra_op_threads, "intra_op_threads")
        inter = _threads(inter_op_threads, "inter_op_threads")
        if memoryview(model).nbytes == 0:
            raise BackendError("the ONNX model is empty")
        pinned = _cpu_set(cpus)
        accel = gpu is not None or dla_core is not None
        if accel and pinned is not None:
            raise UsageError("cpus pins CPU threads; it does not go with gpu or dla_core")
        if model_format not in ("onnx", "ort"):
            raise UsageError(f"model_format must be 'onnx' or 'ort', got {model_format!r}")
        if accel and (model_format != "onnx" or save_artifact_fd is not None):
            raise UsageError("an ORT-format model is a CPU artifact; not with gpu or dla_core")
        if save_artifact_fd is not None and (
            isinstance(save_artifact_fd, bool)
            or not isinstance(save_artifact_fd, int)
            or save_artifact_fd < 0
            or model_format != "onnx"
        ):
            raise UsageError("save_artifact_fd must be a descriptor, with an ONNX model")
        ort = _ort()
        providers: list[Any] = [PROVIDER]
        if accel:
            available = list(ort.get_available_providers())
            if TRT_PROVIDER not in available:
                raise BackendError(
                    f"placement on {'DLA core' if dla_core is not None else 'GPU'} needs ONNX "
                    f"Runtime's {TRT_PROVIDER}; this onnxruntime has {available}",
                    hint="install the GPU build of onnxruntime for this JetPack "
                    "(the Jetson Zoo wheels), or place the member on the CPU",
                )
            providers = trt_providers(gpu=gpu, dla_core=dla_core, precisions=precisions)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = intra
        opts.inter_op_num_threads = inter
        opts.log_severity_level = 3  # errors only; failures surface as exceptions
        if model_format == "ort":
            opts.add_session_config_entry("session.load_model_format", "ORT")
        if save_artifact_fd is not None:
            # ORT opens this path itself (O_WRONLY|O_CREAT|O_TRUNC) and writes once; its
            # warning that the NCHWc layouts are specific to this CPU is silenced above
            opts.optimized_model_filepath = f"/proc/self/fd/{save_artifact_fd}"
            opts.add_session_config_entry("session.save_model_format", "ORT")
        saved = os.sched_getaffinity(0) if pinned is not None else None
        if pinned is not None:
            try:
                os.sched_setaffinity(0, pinned)  # the pool threads inherit it
            except OSError as exc:
                raise UsageError(f"cannot pin to CPUs {sorted(pinned)}: {exc.strerror}") from exc
        # ONNX Runtime takes bytes only: a model in a buffer we do not own as bytes is
        # copied once, and that copy is zeroed as soon as ONNX Runtime has parsed it.
        data: bytes = model if isinstance(model, bytes) else bytes(model)
        owned = data is not model
        try:
            session = ort.InferenceSession(
                data, sess_options=opts, providers=providers, enable_fallback=0
            )
            # the wrapper keeps the bytes to re-create the session on a provider
            # fallback (off here); do not keep a zeroed model-sized buffer alive
            if hasattr(session, "_model_bytes"):
                session._model_bytes = None
        except Exception as exc:
            raise BackendError(f"ONNX Runtime cannot load the model: {_short(exc)}") from exc
        finally:
            if owned:
                _scrub(data)
            del data
            if saved is not None:
                os.sched_setaffinity(0, saved)
        chosen = list(session.get_providers())
        want = TRT_PROVIDER if accel else PROVIDER
        if not chosen or chosen[0] != want or (not accel and chosen != [PROVIDER]):
            raise BackendError(f"ONNX Runtime chose providers {chosen}, not {want}")
        return cls(
            session,
            intra_op_threads=intra,
            inter_op_threads=inter,
            cpus=pinned,
            accelerator=None if not accel else dict(providers[0][1]),
        )

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
            "cpus": None if self._cpus is None else sorted(self._cpus),
            "tensorrt_options": self._accel,
            "model": {
                "graph_name": str(meta.graph_name),
                "producer": str(meta.producer_name),
                "version": int(meta.version),
                "metadata": {str(k): str(v) for k, v in meta.custom_metadata_map.items()},
            },
        }


def _cpu_set(cpus: Collection[int] | None) -> frozenset[int] | None:
    if cpus is None:
        return None
    out = frozenset(cpus)
    if not out or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in out):
        raise UsageError(f"cpus must be a non-empty set of CPU numbers, got {sorted(cpus)!r}")
    if not hasattr(os, "sched_setaffinity"):
        raise UsageError("pinning to CPUs needs sched_setaffinity (Linux)")
    return out


def trt_providers(
    *, gpu: int | None, dla_core: int | None, precisions: Collection[str] = ()
) -> list[str | tuple[str, dict[str, Any]]]:
    """ONNX Runtime providers that place a model on a GPU or DLA core through TensorRT.

    The TensorRT provider comes first, then CUDA (same device), then the CPU for
    any node neither takes. Engine cache, timing cache and subgraph dumps are
    off, so nothing is written to disk. Precision: a DLA core runs fp16 (int8 when
    the model has Q/DQ nodes); a GPU keeps the model's own precision: the signed
    I/O contract's ``precisions`` (``"fp16"`` when the graph has float16 tensors,
    ``"int8"`` when it has Q/DQ nodes; none for fp32), read at build time.

    Raises:
        UsageError: A device or core number is negative, or an unknown precision.
    """
    device = 0 if gpu is None else gpu
    for v, what in ((device, "gpu"), (dla_core, "dla_core")):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise UsageError(f"{what} must be a non-negative integer, got {v!r}")
    unknown = sorted(set(precisions) - {"fp16", "int8"})
    if unknown:
        raise UsageError(f"unknown precision(s) {unknown}; expected fp16, int8")
    fp16, qdq = "fp16" in precisions, "int8" in precisions
    trt: dict[str, Any] = {
        "device_id": device,
        "trt_fp16_enable": fp16 or dla_core is not None,
        "trt_int8_enable": qdq,
        "trt_engine_cache_enable": False,
        "trt_timing_cache_enable": False,
        "trt_dump_subgraphs": False,
    }
    if dla_core is not None:
        trt["trt_dla_enable"] = True
        trt["trt_dla_core"] = dla_core
    return [(TRT_PROVIDER, trt), (CUDA_PROVIDER, {"device_id": device}), PROVIDER]


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""Checks an ONNX model must pass before it is packaged.

Layer: packaging. Uses the ``onnx`` package (imported lazily): the model must
parse, pass ``onnx.checker`` (with shape inference), keep all weights inside
the file (external data would reference files the bundle does not carry),
and declare named inputs and outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeguard._optional import require
from edgeguard.errors import MalformedError

__all__ = ["OnnxInfo", "check_onnx_model", "onnx_io"]

#: Reduced precisions a graph may use, as the I/O contract names them.
PRECISIONS = ("fp16", "int8")


@dataclass(frozen=True)
class OnnxInfo:
    """What the checks learned about the model.

    ``precisions``: the reduced precisions the graph uses: ``"fp16"`` (float16
    tensors) and ``"int8"`` (Q/DQ nodes); empty for fp32.
    """

    ir_version: int
    opsets: dict[str, int]
    inputs: tuple[tuple[str, str, tuple[int | str | None, ...]], ...]
    outputs: tuple[tuple[str, str, tuple[int | str | None, ...]], ...]
    precisions: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {
            "ir_version": self.ir_version,
            "opsets": dict(self.opsets),
            "inputs": [{"name": n, "dtype": d, "shape": list(s)} for n, d, s in self.inputs],
            "outputs": [{"name": n, "dtype": d, "shape": list(s)} for n, d, s in self.outputs],
        }


def _value_info(vi: Any, onnx: Any) -> tuple[str, str, tuple[int | str | None, ...]]:
    t = vi.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "?"
    dims: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(str(d.dim_param))
        else:
            dims.append(None)
    return vi.name, dtype, tuple(dims)


def check_onnx_model(data: bytes, *, source: str) -> OnnxInfo:
    """Validate an ONNX model held in memory.

    Raises:
        MalformedError: The model does not parse or fails a check.
        MissingDependencyError: ``onnx`` is not installed.
    """
    onnx = require("onnx", extra="build", purpose="Checking ONNX models")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:
        raise MalformedError(f"{source} is not an ONNX model ({type(exc).__name__})") from exc
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise MalformedError(
                f"{source} keeps weights in external data files; edgeguard packages "
                "self-contained models only",
                hint="re-save with onnx.save_model(m, path, save_as_external_data=False)",
            )
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise MalformedError(f"{source} fails the ONNX checker: {msg}") from exc
    return _info(model, onnx, source)


def onnx_io(data: bytes, *, source: str) -> OnnxInfo:
    """Inputs and outputs of a model that was checked or derived here (no checker run).

    Derived variants (fp16, int8) come from converters whose graphs the checker may
    refuse for node order alone; their I/O is read as declared.

    Raises:
        MalformedError: The bytes do not parse as an ONNX model, or it declares no inputs
            or outputs.
    """
    onnx = require("onnx", extra="build", purpose="Reading an ONNX model's inputs and outputs")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:
        raise MalformedError(f"{source} is not an ONNX model ({type(exc).__name__})") from exc
    return _info(model, onnx, source)


def _info(model: Any, onnx: Any, source: str) -> OnnxInfo:
    init_names = {t.name for t in model.graph.initializer}
    inputs = tuple(_value_info(v, onnx) for v in model.graph.input if v.name not in init_names)
    outputs = tuple(_value_info(v, onnx) for v in model.graph.output)
    if not inputs or not outputs:
        raise MalformedError(f"{source} declares no graph inputs or no outputs")
    g = model.graph
    f16 = onnx.TensorProto.FLOAT16
    fp16 = any(t.data_type == f16 for t in g.initializer) or any(
        v.type.tensor_type.elem_type == f16 for v in (*g.input, *g.output, *g.value_info)
    )
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node)
    return OnnxInfo(
        ir_version=int(model.ir_version),
        opsets={(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        inputs=inputs,
        outputs=outputs,
        precisions=tuple(p for p, used in zip(PRECISIONS, (fp16, qdq), strict=True) if used),
    )

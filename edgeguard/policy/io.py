"""The members' I/O contracts: names, element types and shapes of inputs and outputs.

Layer: :mod:`edgeguard.policy` (pure data). ``edgeguard build`` reads each member's
inputs and outputs from its ONNX graph and signs them into the manifest's ``policy``
slot under ``"io"``; the device learns them from there, so the device path needs
neither ``onnx`` nor the packaging code, and a member's answer can be checked against
what the builder declared. The backends describe a loaded model with the same
:class:`TensorSpec`.

Dimensions are normalised once, at build (:func:`normalize_dim`): a fixed size is a
positive integer; a dynamic axis is its name (``"N"``) or ``None`` for an anonymous
one, whatever the exporter wrote (``-1``, ``0``, ``"?"``, a name, or nothing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeguard._strict import Table, as_int, as_list, as_map, as_str, fail
from edgeguard.errors import UsageError

__all__ = ["DTYPES", "PRECISIONS", "Dim", "MemberIo", "TensorSpec", "normalize_dim", "read_io"]

Dim = int | str | None
#: Reduced precisions a contract may name.
PRECISIONS = ("fp16", "int8")
_DIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:+-]{0,63}")
_MAX_TENSORS = 256
_MAX_RANK = 16
_MAX_DIM = 1 << 31
#: Element types a signed I/O contract may name and a sandboxed call may carry (NumPy spelling).
DTYPES = frozenset(
    {
        "bool",
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
    }
)


def normalize_dim(d: Any) -> Dim:
    """One dimension as a contract states it: a positive int, a name, or None (dynamic).

    ``-1``, ``0`` and other non-positive sizes, ``"?"``, empty and unusable names and
    ``None`` all mean "dynamic"; names are kept when they are plain identifiers.
    """
    if isinstance(d, bool):
        return None
    if isinstance(d, int):
        return d if d > 0 else None
    if isinstance(d, str) and _DIM_NAME.fullmatch(d):
        return d
    return None


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of one model input or output.

    Attributes:
        name: Tensor name in the model.
        dtype: NumPy dtype name, for example ``"float32"``.
        shape: One entry per axis: an ``int`` for a fixed size, a ``str`` for a
            named dynamic axis (``"N"``) or ``None`` for an anonymous dynamic axis.
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise UsageError(f"tensor name must be a non-empty string, got {self.name!r}")
        try:
            canonical = np.dtype(self.dtype).name
        except TypeError as exc:
            raise UsageError(f"tensor {self.name!r}: unknown dtype {self.dtype!r}") from exc
        if canonical != self.dtype:
            raise UsageError(f"tensor {self.name!r}: dtype must be spelled {canonical!r}")
        for dim in self.shape:
            if isinstance(dim, bool) or not (dim is None or isinstance(dim, (int, str))):
                raise UsageError(f"tensor {self.name!r}: bad dimension {dim!r}")
            if isinstance(dim, int) and dim < 0:
                raise UsageError(f"tensor {self.name!r}: negative dimension {dim}")

    @property
    def rank(self) -> int:
        """Number of axes."""
        return len(self.shape)

    def matches_shape(self, shape: tuple[int, ...]) -> bool:
        """Whether a concrete shape fits: same rank and every fixed dimension equal."""
        if len(shape) != self.rank:
            return False
        return all(not isinstance(d, int) or d == s for d, s in zip(self.shape, shape, strict=True))

    def zeros(self) -> np.ndarray:
        """An all-zero array this tensor takes (every dynamic axis of size 1): a warm-up feed."""
        return np.zeros(tuple(d if isinstance(d, int) else 1 for d in self.shape), self.dtype)

    def describe(self) -> str:
        """``name dtype[d0, d1, ...]``; a dynamic axis shows its name when short, else ``?``."""
        dims = ", ".join(
            str(d) if isinstance(d, int) or (d is not None and len(d) <= 8) else "?"
            for d in self.shape
        )
        return f"{self.name} {self.dtype}[{dims}]"

    def to_dict(self) -> dict[str, Any]:
        """JSON/CBOR-native form: ``{"name", "dtype", "shape"}`` (shape as a list)."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> TensorSpec:
        """Read one signed tensor spec strictly (dimensions already normalised).

        Raises:
            MalformedError: Unknown or missing fields, a dtype outside the contract's
                set, a non-positive size, a bad axis name, too many axes.
        """
        t = Table(d, where)
        name = as_str(t.required("name"), t.at("name"), max_len=1024)
        dtype = as_str(t.required("dtype"), t.at("dtype"), choices=DTYPES)
        dims: list[Dim] = []
        for dim in as_list(t.required("shape"), t.at("shape"), max_len=_MAX_RANK):
            if dim is None:
                dims.append(None)
            elif isinstance(dim, str):
                dims.append(as_str(dim, t.at("shape"), max_len=64, pattern=_DIM_NAME))
            else:
                dims.append(as_int(dim, t.at("shape"), lo=1, hi=_MAX_DIM))
        t.done()
        return cls(name=name, dtype=dtype, shape=tuple(dims))


@dataclass(frozen=True)
class MemberIo:
    """The signed I/O contract of one member.

    Attributes:
        inputs: What the model takes.
        outputs: What it answers.
        precisions: The reduced precisions its graph uses (``"fp16"``: float16 tensors,
            ``"int8"``: Q/DQ nodes; empty for fp32), which decide an accelerator's
            precision flags on the device without reading the graph there.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    precisions: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON/CBOR-native form."""
        return {
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "precisions": list(self.precisions),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> MemberIo:
        """Read one member's contract strictly."""
        t = Table(d, where)
        precisions = tuple(
            as_str(p, t.at("precisions"), choices=PRECISIONS)
            for p in as_list(t.optional("precisions", []), t.at("precisions"), max_len=2)
        )
        if len(set(precisions)) != len(precisions):
            raise fail(t.at("precisions"), "names a precision twice")
        io = cls(
            inputs=_specs(t.required("inputs"), t.at("inputs")),
            outputs=_specs(t.required("outputs"), t.at("outputs")),
            precisions=precisions,
        )
        t.done()
        return io


def _specs(v: Any, where: str) -> tuple[TensorSpec, ...]:
    specs = tuple(
        TensorSpec.from_dict(s, f"{where}[{i}]")
        for i, s in enumerate(as_list(v, where, min_len=1, max_len=_MAX_TENSORS))
    )
    if len({s.name for s in specs}) != len(specs):
        raise fail(where, "tensor names must be unique")
    return specs


def read_io(d: Any, where: str) -> dict[str, MemberIo]:
    """Read the ``io`` map (member name -> contract) strictly."""
    return {
        as_str(name, where, max_len=128): MemberIo.from_dict(v, f"{where}.{name}")
        for name, v in as_map(d, where).items()
    }

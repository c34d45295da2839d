"""The engine recipe: how a device turns a signed ONNX member into a TensorRT engine.

Layer: :mod:`edgeguard.policy` (pure data). A TensorRT plan is specific to the GPU and
the TensorRT version that built it, so a bundle carries the signed ONNX model and, in
the manifest's ``engine_recipe`` slot, the builder settings for each member that runs
as an engine. Field names follow ``trtexec`` where it has one. The recipe is read
strictly when the bundle is verified, so a malformed recipe fails at ``verify``.

Slot form::

    {"format": "edgeguard-engine-recipe/1",
     "members": {"det-fp16": {"fp16": true, "dla_core": 0, "allow_gpu_fallback": true,
                              "shapes": [{"input": "x", "min": [1, 3, 320, 320],
                                          "opt": [1, 3, 640, 640],
                                          "max": [1, 3, 960, 960]}], ...}}}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeguard._strict import Table, as_bool, as_int, as_list, as_map, as_str, fail

__all__ = ["FORMAT", "HARDWARE_LEVELS", "EngineRecipe", "MemberRecipe", "ShapeRange"]

FORMAT = "edgeguard-engine-recipe/1"
#: ``--hardwareCompatibilityLevel`` values.
HARDWARE_LEVELS = ("none", "ampere+", "same_compute_capability")
_W = "engine recipe"
_TENSOR = re.compile(r"[^\x00-\x1f]{1,1024}")
_MAX_DIM = 1 << 31
_MAX_WORKSPACE = 1 << 40
_MAX_DLA = 15


@dataclass(frozen=True)
class ShapeRange:
    """``--minShapes/--optShapes/--maxShapes`` of one dynamic input."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        where = f"{_W}: shapes[{self.input!r}]"
        if not (len(self.min) == len(self.opt) == len(self.max)) or not self.min:
            raise fail(where, "min, opt and max must have the same, non-zero rank")
        for lo, mid, hi in zip(self.min, self.opt, self.max, strict=True):
            if not 1 <= lo <= mid <= hi <= _MAX_DIM:
                raise fail(where, "every axis needs 1 <= min <= opt <= max")

    def to_dict(self) -> dict[str, Any]:
        """JSON/CBOR-native form."""
        return {
            "input": self.input,
            "min": list(self.min),
            "opt": list(self.opt),
            "max": list(self.max),
        }


@dataclass(frozen=True)
class MemberRecipe:
    """The TensorRT builder settings for one member.

    Attributes:
        fp16: Allow FP16 kernels (``--fp16``).
        int8: Allow INT8 kernels calibrated on the bundle's calibration data (``--int8``).
        best: Allow every precision (``--best``).
        dla_core: Build for this DLA core (``--useDLACore``); None builds for the GPU.
        allow_gpu_fallback: Layers the DLA cannot run go to the GPU (``--allowGPUFallback``).
        workspace_bytes: Builder workspace pool (``--memPoolSize workspace:``); None: default.
        shapes: Optimisation profile of the dynamic inputs.
        builder_optimization_level: 0 to 5 (``--builderOptimizationLevel``; TensorRT's
            default is 3).
        version_compatible: Build a version-compatible plan (``--versionCompatible``).
        hardware_compatibility_level: One of :data:`HARDWARE_LEVELS`.
        engine_host_code_allowed: Let the plan carry host code that runs on load. Off
            unless the signer allows it: such code runs with the runtime's privileges.
    """

    fp16: bool = False
    int8: bool = False
    best: bool = False
    dla_core: int | None = None
    allow_gpu_fallback: bool = False
    workspace_bytes: int | None = None
    shapes: tuple[ShapeRange, ...] = ()
    builder_optimization_level: int = 3
    version_compatible: bool = False
    hardware_compatibility_level: str = "none"
    engine_host_code_allowed: bool = False

    def __post_init__(self) -> None:
        if self.dla_core is not None:
            as_int(self.dla_core, f"{_W}: dla_core", lo=0, hi=_MAX_DLA)
            if not (self.fp16 or self.int8 or self.best):
                raise fail(f"{_W}: dla_core", "the DLA runs fp16 or int8 only; set fp16 or int8")
        elif self.allow_gpu_fallback:
            raise fail(f"{_W}: allow_gpu_fallback", "only meaningful with dla_core")
        if self.workspace_bytes is not None:
            as_int(self.workspace_bytes, f"{_W}: workspace_bytes", lo=1 << 20, hi=_MAX_WORKSPACE)
        as_int(self.builder_optimization_level, f"{_W}: builder_optimization_level", lo=0, hi=5)
        as_str(
            self.hardware_compatibility_level,
            f"{_W}: hardware_compatibility_level",
            choices=HARDWARE_LEVELS,
        )
        if len({s.input for s in self.shapes}) != len(self.shapes):
            raise fail(f"{_W}: shapes", "an input appears twice")

    def to_dict(self) -> dict[str, Any]:
        """JSON/CBOR-native form."""
        return {
            "fp16": self.fp16,
            "int8": self.int8,
            "best": self.best,
            "dla_core": self.dla_core,
            "allow_gpu_fallback": self.allow_gpu_fallback,
            "workspace_bytes": self.workspace_bytes,
            "shapes": [s.to_dict() for s in self.shapes],
            "builder_optimization_level": self.builder_optimization_level,
            "version_compatible": self.version_compatible,
            "hardware_compatibility_level": self.hardware_compatibility_level,
            "engine_host_code_allowed": self.engine_host_code_allowed,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> MemberRecipe:
        """Read one member's recipe strictly (every field optional, defaults as above)."""
        t = Table(d, where)
        dla = t.optional("dla_core")
        ws = t.optional("workspace_bytes")
        shapes = []
        for i, raw in enumerate(as_list(t.optional("shapes", []), t.at("shapes"), max_len=64)):
            s = Table(raw, f"{t.at('shapes')}[{i}]")
            dims = {
                k: tuple(
                    as_int(x, s.at(k), lo=1, hi=_MAX_DIM)
                    for x in as_list(s.required(k), s.at(k), min_len=1, max_len=16)
                )
                for k in ("min", "opt", "max")
            }
            shapes.append(
                ShapeRange(
                    input=as_str(s.required("input"), s.at("input"), pattern=_TENSOR),
                    **dims,
                )
            )
            s.done()
        recipe = cls(
            fp16=as_bool(t.optional("fp16", False), t.at("fp16")),
            int8=as_bool(t.optional("int8", False), t.at("int8")),
            best=as_bool(t.optional("best", False), t.at("best")),
            dla_core=None if dla is None else as_int(dla, t.at("dla_core")),
            allow_gpu_fallback=as_bool(
                t.optional("allow_gpu_fallback", False), t.at("allow_gpu_fallback")
            ),
            workspace_bytes=None if ws is None else as_int(ws, t.at("workspace_bytes")),
            shapes=tuple(shapes),
            builder_optimization_level=as_int(
                t.optional("builder_optimization_level", 3), t.at("builder_optimization_level")
            ),
            version_compatible=as_bool(
                t.optional("version_compatible", False), t.at("version_compatible")
            ),
            hardware_compatibility_level=as_str(
                t.optional("hardware_compatibility_level", "none"),
                t.at("hardware_compatibility_level"),
            ),
            engine_host_code_allowed=as_bool(
                t.optional("engine_host_code_allowed", False), t.at("engine_host_code_allowed")
            ),
        )
        t.done()
        return recipe


@dataclass(frozen=True)
class EngineRecipe:
    """The ``engine_recipe`` slot: one :class:`MemberRecipe` per member built as an engine."""

    members: Mapping[str, MemberRecipe]

    def to_dict(self) -> dict[str, Any]:
        """JSON/CBOR-native form."""
        return {
            "format": FORMAT,
            "members": {k: v.to_dict() for k, v in sorted(self.members.items())},
        }

    @classmethod
    def from_dict(cls, d: Any) -> EngineRecipe:
        """Read the slot strictly.

        Raises:
            MalformedError: Unknown format or fields, bad values, contradictory settings.
        """
        t = Table(d, _W)
        if t.required("format") != FORMAT:
            raise fail(t.at("format"), f"expected {FORMAT!r}")
        members = {
            as_str(name, t.at("members"), max_len=128): MemberRecipe.from_dict(
                raw, f"{t.at('members')}.{name}"
            )
            for name, raw in as_map(t.required("members"), t.at("members")).items()
        }
        t.done()
        return cls(members=members)

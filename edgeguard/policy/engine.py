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
                                          "max": [1, 3, 960, 960]}], ...}},
     "prebuilt": [{"member": "det-fp16.plan", "for_member": "det-fp16",
                   "tensorrt": "10.3.0", "compute_capability": "8.7",
                   "gpu_name": "Orin", "device_profile": "jetson-agx-orin", ...}]}

A ``prebuilt`` entry tags a ``trt-engine`` member that ``edgeguard build
--engine-on-this-host`` built on the build machine: the device runs it instead of
building from the ONNX member when :func:`prebuilt_mismatch` finds nothing against it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeguard._strict import Table, as_bool, as_int, as_list, as_map, as_str, fail

__all__ = [
    "FORMAT",
    "HARDWARE_LEVELS",
    "IDENTITY_KEYS",
    "EngineRecipe",
    "MemberRecipe",
    "PrebuiltEngine",
    "ShapeRange",
    "prebuilt_mismatch",
]

FORMAT = "edgeguard-engine-recipe/1"
#: ``--hardwareCompatibilityLevel`` values.
HARDWARE_LEVELS = ("none", "ampere+", "same_compute_capability")
_W = "engine recipe"
_TENSOR = re.compile(r"[^\x00-\x1f]{1,1024}")
_MAX_DIM = 1 << 31
_MAX_WORKSPACE = 1 << 40
_MAX_DLA = 15
_MEMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")
_TRT_VERSION = re.compile(r"([0-9]{1,4})\.([0-9]{1,4})\.([0-9]{1,4})(?:\.[0-9]{1,6})?")
_CC = re.compile(r"([1-9][0-9]?)\.([0-9])")
_GPU_NAME = re.compile(r"[\x20-\x7e]{1,256}")
_PROFILE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


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
        int8_calibration_member: The ``npz`` member holding the INT8 calibration frames
            (needs ``int8`` or ``best``); None: no calibration data in the bundle.
        timing_cache: The device keeps a (sealed) timing cache for this member
            (``--timingCacheFile`` on build).
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
    int8_calibration_member: str | None = None
    timing_cache: bool = False

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
        if self.int8_calibration_member is not None:
            as_str(
                self.int8_calibration_member,
                f"{_W}: int8_calibration_member",
                pattern=_MEMBER,
            )
            if not (self.int8 or self.best):
                raise fail(f"{_W}: int8_calibration_member", "only meaningful with int8 or best")

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
            "int8_calibration_member": self.int8_calibration_member,
            "timing_cache": self.timing_cache,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> MemberRecipe:
        """Read one member's recipe strictly (every field optional, defaults as above)."""
        t = Table(d, where)
        dla = t.optional("dla_core")
        ws = t.optional("workspace_bytes")
        cal = t.optional("int8_calibration_member")
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
            int8_calibration_member=None
            if cal is None
            else as_str(cal, t.at("int8_calibration_member"), pattern=_MEMBER),
            timing_cache=as_bool(t.optional("timing_cache", False), t.at("timing_cache")),
        )
        t.done()
        return recipe


def _version(text: str, where: str) -> tuple[int, int, int]:
    m = _TRT_VERSION.fullmatch(text)
    if m is None:
        raise fail(where, f"{text!r} is not a TensorRT version like '10.3.0'")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


@dataclass(frozen=True)
class PrebuiltEngine:
    """The tag of a TensorRT plan built on the build host (``--engine-on-this-host``).

    A plan runs only where TensorRT and the GPU match what built it, so the device
    compares this tag with its own identity (:func:`prebuilt_mismatch`) before it
    loads the plan, and builds from the ONNX member when they differ.

    Attributes:
        member: The ``trt-engine`` member (role ``engine``) holding the plan.
        for_member: The ONNX member it replaces; it has a recipe in the same slot.
        tensorrt: The TensorRT version that built it, ``major.minor.patch[.build]``.
        compute_capability: The build GPU's compute capability, ``"major.minor"``.
        gpu_name: The build GPU's name as CUDA reports it.
        device_profile: The device profile the build checked it against.
        version_compatible: Built with ``--versionCompatible`` (as its recipe).
        hardware_compatibility_level: As its recipe (:data:`HARDWARE_LEVELS`).
    """

    member: str
    for_member: str
    tensorrt: str
    compute_capability: str
    gpu_name: str
    device_profile: str
    version_compatible: bool = False
    hardware_compatibility_level: str = "none"

    def __post_init__(self) -> None:
        where = f"{_W}: prebuilt[{self.member!r}]"
        as_str(self.member, f"{where}.member", pattern=_MEMBER)
        as_str(self.for_member, f"{where}.for_member", pattern=_MEMBER)
        if self.member == self.for_member:
            raise fail(where, "the plan and the ONNX member it replaces must differ")
        _version(as_str(self.tensorrt, f"{where}.tensorrt", max_len=32), f"{where}.tensorrt")
        as_str(self.compute_capability, f"{where}.compute_capability", pattern=_CC)
        as_str(self.gpu_name, f"{where}.gpu_name", pattern=_GPU_NAME)
        as_str(self.device_profile, f"{where}.device_profile", pattern=_PROFILE)
        as_bool(self.version_compatible, f"{where}.version_compatible")
        as_str(
            self.hardware_compatibility_level,
            f"{where}.hardware_compatibility_level",
            choices=HARDWARE_LEVELS,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON/CBOR-native form."""
        return {
            "member": self.member,
            "for_member": self.for_member,
            "tensorrt": self.tensorrt,
            "compute_capability": self.compute_capability,
            "gpu_name": self.gpu_name,
            "device_profile": self.device_profile,
            "version_compatible": self.version_compatible,
            "hardware_compatibility_level": self.hardware_compatibility_level,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> PrebuiltEngine:
        """Read one tag strictly (``version_compatible`` and the level are optional)."""
        t = Table(d, where)
        tag = cls(
            member=as_str(t.required("member"), t.at("member"), pattern=_MEMBER),
            for_member=as_str(t.required("for_member"), t.at("for_member"), pattern=_MEMBER),
            tensorrt=as_str(t.required("tensorrt"), t.at("tensorrt"), max_len=32),
            compute_capability=as_str(
                t.required("compute_capability"), t.at("compute_capability"), pattern=_CC
            ),
            gpu_name=as_str(t.required("gpu_name"), t.at("gpu_name"), pattern=_GPU_NAME),
            device_profile=as_str(
                t.required("device_profile"), t.at("device_profile"), pattern=_PROFILE
            ),
            version_compatible=as_bool(
                t.optional("version_compatible", False), t.at("version_compatible")
            ),
            hardware_compatibility_level=as_str(
                t.optional("hardware_compatibility_level", "none"),
                t.at("hardware_compatibility_level"),
                choices=HARDWARE_LEVELS,
            ),
        )
        t.done()
        return tag


#: The identity keys :func:`prebuilt_mismatch` compares.
IDENTITY_KEYS = ("tensorrt", "compute_capability", "gpu_name")


def prebuilt_mismatch(tag: PrebuiltEngine, identity: Mapping[str, str]) -> str | None:
    """Why the plan ``tag`` describes cannot run on the device ``identity`` describes.

    TensorRT's rules (NVIDIA, "Engine Compatibility"): by default a plan runs only with
    the TensorRT version that built it (compared here at major.minor.patch; a build
    number is ignored) and on the GPU model that built it. A version-compatible plan
    (``--versionCompatible``, TensorRT 8.6 or later) also runs with later TensorRT
    versions of the same major version (compared conservatively: NVIDIA's pages differ
    on crossing a major version). ``--hardwareCompatibilityLevel
    same_compute_capability`` relaxes the GPU model to any GPU of the same compute
    capability, ``ampere+`` to any GPU of compute capability 8.0 or newer.

    Args:
        tag: The signed tag of the plan.
        identity: What the device reports: ``"tensorrt"`` (its version),
            ``"compute_capability"`` (``"major.minor"``) and ``"gpu_name"``; other keys
            (``"driver"``) are ignored.

    Returns:
        One line saying what differs, or None when the plan may run here.
    """
    missing = [k for k in IDENTITY_KEYS if not identity.get(k)]
    if missing:
        return f"this device does not report its {', '.join(missing)}"
    built = _version(tag.tensorrt, "prebuilt tensorrt")
    here_text = identity["tensorrt"]
    m = _TRT_VERSION.fullmatch(here_text)
    if m is None:
        return f"this device reports TensorRT {here_text!r}, not a version like '10.3.0'"
    here = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    plan = f"the plan {tag.member} was built with TensorRT {tag.tensorrt}"
    if tag.version_compatible:
        if built < (8, 6, 0):
            return f"{plan}, before version-compatible plans existed (8.6)"
        if here[0] != built[0] or here < built:
            return (
                f"{plan} (version-compatible: runs on {built[0]}.x from {tag.tensorrt} on); "
                f"this device has TensorRT {here_text}"
            )
    elif here != built:
        return (
            f"{plan}; this device has TensorRT {here_text} (a plan needs the same TensorRT "
            "version unless built with --versionCompatible)"
        )
    cc_text = identity["compute_capability"]
    cc = _CC.fullmatch(cc_text)
    if cc is None:
        return f"this device reports compute capability {cc_text!r}, not 'major.minor'"
    gpu = f"{identity['gpu_name']} (compute capability {cc_text})"
    built_on = f"the plan {tag.member} was built on {tag.gpu_name} (compute capability " + (
        f"{tag.compute_capability})"
    )
    level = tag.hardware_compatibility_level
    if level == "ampere+":
        if int(cc.group(1)) < 8:
            return f"{built_on} for Ampere or newer GPUs; this device has {gpu}"
    elif cc_text != tag.compute_capability:
        return f"{built_on}; this device has {gpu}"
    elif level == "none" and identity["gpu_name"] != tag.gpu_name:
        return (
            f"{built_on}; this device has {gpu} (a plan needs the same GPU model unless "
            "built with --hardwareCompatibilityLevel)"
        )
    return None


@dataclass(frozen=True)
class EngineRecipe:
    """The ``engine_recipe`` slot: one :class:`MemberRecipe` per member built as an engine,
    and the tags of the plans built ahead of time (:class:`PrebuiltEngine`)."""

    members: Mapping[str, MemberRecipe]
    prebuilt: tuple[PrebuiltEngine, ...] = ()

    def __post_init__(self) -> None:
        where = f"{_W}: prebuilt"
        if len({p.member for p in self.prebuilt}) != len(self.prebuilt):
            raise fail(where, "a plan member appears twice")
        if len({p.for_member for p in self.prebuilt}) != len(self.prebuilt):
            raise fail(where, "two plans replace the same member")
        for p in self.prebuilt:
            recipe = self.members.get(p.for_member)
            if recipe is None:
                raise fail(f"{where}[{p.member!r}]", f"{p.for_member!r} has no recipe")
            if p.member in self.members:
                raise fail(f"{where}[{p.member!r}]", "a plan member cannot have a recipe")
            if (p.version_compatible, p.hardware_compatibility_level) != (
                recipe.version_compatible,
                recipe.hardware_compatibility_level,
            ):
                raise fail(
                    f"{where}[{p.member!r}]",
                    "version_compatible and hardware_compatibility_level must be those of "
                    f"the recipe of {p.for_member!r}",
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON/CBOR-native form (``prebuilt`` only when there are any)."""
        d: dict[str, Any] = {
            "format": FORMAT,
            "members": {k: v.to_dict() for k, v in sorted(self.members.items())},
        }
        if self.prebuilt:
            d["prebuilt"] = [p.to_dict() for p in self.prebuilt]
        return d

    def prebuilt_for(self, member: str) -> PrebuiltEngine | None:
        """The tag of the plan built ahead of time for ``member``, if any."""
        return next((p for p in self.prebuilt if p.for_member == member), None)

    def check_manifest(self, members: Mapping[str, tuple[str, str]]) -> None:
        """Cross-check the recipe with the manifest's members (``name -> (role, format)``).

        Every recipe belongs to a model member; every plan member is a ``trt-engine``
        member of role ``engine``; every calibration member an ``npz`` of role ``aux``.

        Raises:
            MalformedError: One of those does not hold.
        """
        stray = sorted(
            n for n in self.members if members.get(n, ("", ""))[1] not in ("onnx", "trt-engine")
        )
        if stray:
            raise fail(f"{_W}: members", f"recipes for members the manifest lacks: {stray}")
        for p in self.prebuilt:
            if members.get(p.member) != ("engine", "trt-engine"):
                raise fail(
                    f"{_W}: prebuilt[{p.member!r}]",
                    "names no manifest member of role engine and format trt-engine",
                )
        for name, r in sorted(self.members.items()):
            cal = r.int8_calibration_member
            if cal is not None and members.get(cal) != ("aux", "npz"):
                raise fail(
                    f"{_W}: members.{name}.int8_calibration_member",
                    f"{cal!r} is no manifest member of role aux and format npz",
                )

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
        prebuilt = tuple(
            PrebuiltEngine.from_dict(raw, f"{t.at('prebuilt')}[{i}]")
            for i, raw in enumerate(
                as_list(t.optional("prebuilt", []), t.at("prebuilt"), max_len=64)
            )
        )
        t.done()
        return cls(members=members, prebuilt=prebuilt)

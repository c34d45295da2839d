"""Engine recipes on build: ``edgeguard build``'s TensorRT options become the signed
``engine_recipe`` slot.

Layer: packaging. The options carry ``trtexec``'s names (``--fp16``, ``--useDLACore``,
``--memPoolSize workspace:SIZE``, ``--minShapes`` ...). Which members get a recipe:
every model member (role ``primary`` or ``member``) that runs on a GPU or a DLA core
after placement; the fallback model runs on the CPU and never gets one.
``--useDLACore N`` places every such member that has no ``--placement`` on ``dlaN``;
each member's recipe takes its DLA core from its placement. Everything here is a pure
function of the options, the device profiles and each member's signed I/O contract,
except :func:`build_prebuilt`, which runs TensorRT on the build host through the
backend (``--engine-on-this-host``). Every refusal is one line, a
:class:`~edgeguard.errors.UsageError` (exit 2).
"""

from __future__ import annotations

import io as _io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgeguard.errors import BackendError, MalformedError, UsageError
from edgeguard.policy.engine import HARDWARE_LEVELS, MemberRecipe, PrebuiltEngine, ShapeRange
from edgeguard.policy.io import MemberIo
from edgeguard.policy.runtime import parse_placement

if TYPE_CHECKING:
    from edgeguard.devices import DeviceProfile

__all__ = [
    "CALIBRATION_MEMBER",
    "MAX_CALIBRATION_FRAMES",
    "MAX_WORKSPACE",
    "MIN_WORKSPACE",
    "EngineOptions",
    "build_prebuilt",
    "calibration_npz",
    "calibration_subset",
    "check_identity",
    "check_profiles",
    "frame_shapes_per_input",
    "member_recipes",
    "parse_mem_pool",
    "parse_shapes",
    "plan_member_name",
    "shape_ranges",
]

#: The ``npz`` member (role ``aux``) holding the INT8 calibration frames.
CALIBRATION_MEMBER = "int8-calibration"
#: At most this many calibration frames travel in the bundle for INT8.
MAX_CALIBRATION_FRAMES = 32
#: The builder workspace pool's bounds (the recipe's own: 1 MiB .. 1 TiB).
MIN_WORKSPACE = 1 << 20
MAX_WORKSPACE = 1 << 40
_UNITS = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([BKMG]?)")
_DIMS = re.compile(r"[0-9]+(?:x[0-9]+)*")

Shapes = tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True)
class EngineOptions:
    """``edgeguard build``'s TensorRT engine options (``trtexec``'s names in brackets).

    Attributes:
        fp16: ``--fp16``.
        int8: ``--int8``: carries up to :data:`MAX_CALIBRATION_FRAMES` calibration frames.
        best: ``--best``: every precision the unit runs (int8 included, so it needs
            calibration frames too).
        dla_core: ``--useDLACore N``.
        allow_gpu_fallback: ``--allowGPUFallback``.
        workspace_bytes: ``--memPoolSize workspace:SIZE``.
        min_shapes: ``--minShapes``, ``(input, dims)`` pairs.
        opt_shapes: ``--optShapes``.
        max_shapes: ``--maxShapes``.
        builder_optimization_level: ``--builderOptimizationLevel`` (None: TensorRT's 3).
        timing_cache_file: ``--timingCacheFile``: the device keeps a sealed timing cache;
            with ``on_this_host`` the build host's cache is read from and written to it.
        version_compatible: ``--versionCompatible``.
        hardware_compatibility_level: ``--hardwareCompatibilityLevel``.
        engine_host_code: ``--allowEngineHostCode``: the plan may carry host code.
        on_this_host: ``--engine-on-this-host``: build the plans here and embed them.
    """

    fp16: bool = False
    int8: bool = False
    best: bool = False
    dla_core: int | None = None
    allow_gpu_fallback: bool = False
    workspace_bytes: int | None = None
    min_shapes: Shapes = ()
    opt_shapes: Shapes = ()
    max_shapes: Shapes = ()
    builder_optimization_level: int | None = None
    timing_cache_file: Path | None = None
    version_compatible: bool = False
    hardware_compatibility_level: str | None = None
    engine_host_code: bool = False
    on_this_host: bool = False

    @property
    def active(self) -> bool:
        """Whether any engine option was given (the bundle then gets a recipe)."""
        return self != EngineOptions()

    @property
    def needs_calibration(self) -> bool:
        """INT8 (``--int8`` or ``--best``) needs calibration frames."""
        return self.int8 or self.best


# -- parsing (trtexec syntax) -----------------------------------------------------------


def parse_mem_pool(text: str) -> int:
    """``workspace:SIZE`` as trtexec reads it: SIZE in MiB unless it ends in ``B``, ``K``,
    ``M`` or ``G`` (base 2); decimals allowed, rounded down to whole bytes.

    Raises:
        UsageError: Another pool, a malformed size, or a workspace out of range.
    """
    pools = [p.strip() for p in text.split(",") if p.strip()]
    if not pools:
        raise UsageError("--memPoolSize needs workspace:SIZE (e.g. workspace:1024 for 1 GiB)")
    size: int | None = None
    for spec in pools:
        pool, colon, value = spec.partition(":")
        if not colon:
            raise UsageError(f"--memPoolSize {spec!r} is not POOL:SIZE (e.g. workspace:1024)")
        if pool != "workspace":
            raise UsageError(
                f"--memPoolSize {pool}: only the workspace pool is part of a recipe",
                hint="give --memPoolSize workspace:SIZE",
            )
        if size is not None:
            raise UsageError("--memPoolSize gives the workspace twice")
        m = _SIZE.fullmatch(value.strip())
        if m is None:
            raise UsageError(
                f"--memPoolSize workspace:{value}: SIZE is a number in MiB, or ends in B, K, "
                "M or G (e.g. 512, 0.5G, 65536K)"
            )
        size = int(float(m.group(1)) * _UNITS[m.group(2) or "M"])
    assert size is not None
    if not MIN_WORKSPACE <= size <= MAX_WORKSPACE:
        raise UsageError(
            f"--memPoolSize workspace: {size} bytes is out of range (1M to 1024G)",
        )
    return size


def _split_top(text: str) -> list[str]:
    """Split on commas outside single quotes."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == "'":
            quoted = not quoted
        if ch == "," and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quoted:
        raise UsageError(f"{text!r}: a quote is not closed")
    out.append("".join(cur))
    return out


def parse_shapes(text: str, flag: str) -> Shapes:
    """trtexec's shape spec: ``input:1x3x224x224,other:1x10``; a name with colons is
    quoted, ``'input:0':1x3x224x224``.

    Raises:
        UsageError: A malformed entry, a zero dimension, or an input given twice.
    """
    out: list[tuple[str, tuple[int, ...]]] = []
    for entry in _split_top(text):
        entry = entry.strip()
        if entry.startswith("'"):
            end = entry.find("'", 1)
            name, rest = entry[1:end], entry[end + 1 :]
            if not rest.startswith(":"):
                raise UsageError(f"{flag} {entry!r} is not 'NAME':DIMS")
            dims = rest[1:]
        else:
            name, colon, dims = entry.rpartition(":")
            if not colon:
                raise UsageError(
                    f"{flag} {entry!r} is not INPUT:DIMS (e.g. images:1x3x640x640; quote a "
                    "name with colons: 'input:0':1x3x224x224)"
                )
        if not name:
            raise UsageError(f"{flag} {entry!r} has no input name")
        if "*" in name:
            raise UsageError(f"{flag} {entry!r}: wildcards are not supported; name each input")
        if not _DIMS.fullmatch(dims):
            raise UsageError(f"{flag} {entry!r}: DIMS are positive integers joined by x")
        shape = tuple(int(d) for d in dims.split("x"))
        if any(d < 1 for d in shape):
            raise UsageError(f"{flag} {entry!r}: every dimension must be at least 1")
        if any(n == name for n, _ in out):
            raise UsageError(f"{flag} gives input {name!r} twice")
        out.append((name, shape))
    return tuple(out)


# -- checks against the device profiles -------------------------------------------------


def _precisions(opts: EngineOptions) -> list[str]:
    return [p for p, on in (("fp16", opts.fp16), ("int8", opts.int8)) if on]


def check_profiles(opts: EngineOptions, profiles: Sequence[DeviceProfile]) -> None:
    """Refuse engine options an allowed device profile cannot honour.

    Checked for every allowed profile: it runs ``trt-engine`` members; ``--useDLACore N``
    names one of its DLA cores; ``--fp16``/``--int8`` are among the precisions of its
    GPU (``precisions``) and, with ``--useDLACore``, of its DLA (``dla_precisions``); a
    DLA build has ``--fp16``, ``--int8`` or ``--best`` (the DLA runs no fp32);
    ``--allowGPUFallback`` comes with a DLA; the workspace fits in its memory.

    Raises:
        UsageError: The first option a profile cannot honour, naming both.
    """
    if opts.allow_gpu_fallback and opts.dla_core is None:
        raise UsageError(
            "--allowGPUFallback only means something on a DLA: give --useDLACore N",
        )
    if opts.dla_core is not None and not (opts.fp16 or opts.int8 or opts.best):
        raise UsageError(
            f"--useDLACore {opts.dla_core}: the DLA runs fp16 or int8 only, not fp32",
            hint="add --fp16 (or --int8 with --calibration frames)",
        )
    if opts.dla_core is not None and opts.dla_core < 0:
        raise UsageError(f"--useDLACore {opts.dla_core}: a DLA core number is 0 or more")
    level = opts.hardware_compatibility_level
    if level is not None and level not in HARDWARE_LEVELS:
        raise UsageError(
            f"--hardwareCompatibilityLevel {level!r} is not one of {', '.join(HARDWARE_LEVELS)}"
        )
    if (
        opts.builder_optimization_level is not None
        and not 0 <= opts.builder_optimization_level <= 5
    ):
        raise UsageError("--builderOptimizationLevel must be 0 to 5 (TensorRT's default is 3)")
    for p in profiles:
        if "trt-engine" not in p.backends:
            raise UsageError(
                f"device profile {p.id} does not run TensorRT engines (its backends: "
                f"{', '.join(p.backends)}); the engine options need a profile with trt-engine",
                hint=f"leave the engine options out, or drop --device-profile {p.id}",
            )
        if opts.dla_core is not None:
            if p.dla_cores == 0:
                raise UsageError(
                    f"--useDLACore {opts.dla_core}: device profile {p.id} has no DLA cores",
                )
            if opts.dla_core >= p.dla_cores:
                raise UsageError(
                    f"--useDLACore {opts.dla_core}: device profile {p.id} has DLA cores 0 to "
                    f"{p.dla_cores - 1}",
                )
        for prec in _precisions(opts):
            if prec not in p.precisions:
                raise UsageError(
                    f"--{prec}: the GPU of device profile {p.id} does not run {prec} (it runs "
                    f"{', '.join(p.precisions)})",
                )
            if opts.dla_core is not None and prec not in p.dla_precisions:
                raise UsageError(
                    f"--{prec}: the DLA of device profile {p.id} does not run {prec} (it runs "
                    f"{', '.join(p.dla_precisions)})",
                )
        if opts.best and "int8" not in p.precisions:
            raise UsageError(
                f"--best includes int8, which the GPU of device profile {p.id} does not run "
                f"(it runs {', '.join(p.precisions)})",
                hint="give --fp16 instead",
            )
        memory = int(p.memory_gb * (1 << 30))
        if opts.workspace_bytes is not None and opts.workspace_bytes > memory:
            raise UsageError(
                f"--memPoolSize workspace: {opts.workspace_bytes >> 20} MiB is more than the "
                f"{p.memory_gb:g} GB of memory of device profile {p.id}",
            )


# -- recipes per member -----------------------------------------------------------------


def frame_shapes_per_input(
    contract: MemberIo,
    calibration: Mapping[str, np.ndarray] | None,
    hints: Mapping[str, tuple[int, ...]] | None,
) -> dict[str, tuple[int, ...]]:
    """One frame's shape (a batch of one) for each input that can be shaped: from the
    calibration frames, else the sanity profile's frames, else the contract when only
    the first axis is dynamic (as the measured deadline does)."""
    from edgeguard.packaging.deadline import frame_shapes

    out: dict[str, tuple[int, ...]] = {}
    for spec in contract.inputs:
        one = frame_shapes(MemberIo(inputs=(spec,), outputs=()), calibration, hints)
        if one is not None and spec.name in one and one[spec.name]:
            out[spec.name] = one[spec.name]
    return out


def _fmt(shape: Sequence[Any]) -> str:
    return "x".join("?" if not isinstance(d, int) else str(d) for d in shape)


def shape_ranges(
    opts: EngineOptions,
    member: str,
    contract: MemberIo,
    frames: Mapping[str, tuple[int, ...]],
    *,
    frames_later: bool = False,
) -> tuple[tuple[ShapeRange, ...], list[tuple[str, tuple[int, ...]]]]:
    """The optimisation profile of one member's inputs, and the inputs it fixed at one
    frame's shape (``(input, shape)``, for the build's output).

    Given shapes follow trtexec: all of min, opt and max for an input, or only opt
    (then min = max = opt). Every named input must be one of the member's; the rank must
    be the model's; a fixed axis must have its fixed size in min, opt and max; and
    ``min <= opt <= max`` on every axis. An input with a dynamic axis and no given
    shapes gets min = opt = max = one frame's shape (``frames``: a batch of one
    calibration frame, else of the frames the sanity profile was calibrated on, else
    the contract's fixed axes with a batch of 1), and is listed in the second value; with
    none of these it is refused. ``frames_later`` skips such an input instead (the
    early check of ``build``, before the calibration frames are loaded).

    Raises:
        UsageError: Any of the above does not hold.
    """
    by_name = {s.name: s for s in contract.inputs}
    given: dict[str, dict[str, tuple[int, ...]]] = {}
    for flag, pairs in (
        ("--minShapes", opts.min_shapes),
        ("--optShapes", opts.opt_shapes),
        ("--maxShapes", opts.max_shapes),
    ):
        for name, dims in pairs:
            if name not in by_name:
                raise UsageError(
                    f"{flag} names input {name!r}, which member {member} does not have "
                    f"(its inputs: {', '.join(by_name)})",
                )
            given.setdefault(name, {})[flag[2:5]] = dims
    ranges: list[ShapeRange] = []
    defaults: list[tuple[str, tuple[int, ...]]] = []
    for spec in contract.inputs:
        model = _fmt(spec.shape)
        g = given.get(spec.name)
        if g is None:
            if all(isinstance(d, int) for d in spec.shape):
                continue
            frame = frames.get(spec.name)
            if frame is None and frames_later:
                continue
            if frame is None:
                raise UsageError(
                    f"input {spec.name} of member {member} has dynamic axes ({model}): give "
                    "--minShapes/--optShapes/--maxShapes, or --calibration frames to shape it",
                )
            g = {"min": frame, "opt": frame, "max": frame}
            flags = dict.fromkeys(g, "the calibration frames' shape")
            defaults.append((spec.name, frame))
        elif set(g) == {"opt"}:
            g = {"min": g["opt"], "opt": g["opt"], "max": g["opt"]}
            flags = dict.fromkeys(g, "--optShapes")
        elif set(g) != {"min", "opt", "max"}:
            missing = sorted({"min", "opt", "max"} - set(g))
            raise UsageError(
                f"input {spec.name}: give all of --minShapes, --optShapes and --maxShapes, or "
                f"only --optShapes (trtexec's rule); missing: {', '.join(missing)}",
            )
        else:
            flags = {k: f"--{k}Shapes" for k in g}
        for key in ("min", "opt", "max"):
            if len(g[key]) != len(spec.shape):
                raise UsageError(
                    f"{flags[key]} {spec.name}:{_fmt(g[key])} has rank {len(g[key])}; input "
                    f"{spec.name} of member {member} has rank {len(spec.shape)} ({model})",
                )
        for axis, dim in enumerate(spec.shape):
            lo, mid, hi = g["min"][axis], g["opt"][axis], g["max"][axis]
            if isinstance(dim, int) and not lo == mid == hi == dim:
                raise UsageError(
                    f"input {spec.name}: axis {axis} is fixed at {dim} in member {member} "
                    f"({model}); min, opt and max must all be {dim} there, not {lo}, {mid}, {hi}",
                )
            if not lo <= mid <= hi:
                raise UsageError(
                    f"input {spec.name}: axis {axis} has min {lo}, opt {mid}, max {hi}; "
                    "TensorRT needs min <= opt <= max",
                )
        try:
            ranges.append(ShapeRange(spec.name, g["min"], g["opt"], g["max"]))
        except MalformedError as exc:  # a dimension beyond the recipe's bounds
            raise UsageError(f"input {spec.name}: {exc}") from exc
    return tuple(ranges), defaults


def member_recipes(
    opts: EngineOptions,
    placements: Mapping[str, str],
    io: Mapping[str, MemberIo],
    *,
    frames: Mapping[str, Mapping[str, tuple[int, ...]]],
    profile: DeviceProfile,
    calibration_member: str | None = None,
) -> tuple[dict[str, MemberRecipe], list[str]]:
    """One recipe per model member placed on a GPU or DLA, and notes for the build output.

    Args:
        opts: The engine options (already checked by :func:`check_profiles`).
        placements: Each model member's placement (``primary`` and ``member`` roles).
        io: Each member's signed I/O contract.
        frames: Per member, one frame's shape per input (see :func:`shape_ranges`).
        profile: The target device profile (the first allowed one), for messages.
        calibration_member: The ``npz`` member holding the INT8 frames, if any.

    Raises:
        UsageError: No member runs on a GPU or DLA; ``--allowGPUFallback`` without a member
            on a DLA; a DLA member without fp16/int8; a shape the member refuses.
    """
    recipes: dict[str, MemberRecipe] = {}
    defaulted: dict[tuple[str, tuple[int, ...]], list[str]] = {}
    for name, text in placements.items():
        where = parse_placement(text)
        if where.unit not in ("gpu", "dla"):
            continue
        dla = where.index if where.unit == "dla" else None
        if dla is not None and not (opts.fp16 or opts.int8 or opts.best):
            raise UsageError(
                f"member {name} runs on {text}, and the DLA runs fp16 or int8 only, not fp32",
                hint="add --fp16, or --int8 with --calibration frames",
            )
        shapes, more = shape_ranges(opts, name, io[name], frames.get(name, {}))
        for entry in more:
            defaulted.setdefault(entry, []).append(name)
        recipes[name] = MemberRecipe(
            fp16=opts.fp16,
            int8=opts.int8,
            best=opts.best,
            dla_core=dla,
            allow_gpu_fallback=opts.allow_gpu_fallback and dla is not None,
            workspace_bytes=opts.workspace_bytes,
            shapes=shapes,
            builder_optimization_level=3
            if opts.builder_optimization_level is None
            else opts.builder_optimization_level,
            version_compatible=opts.version_compatible,
            hardware_compatibility_level=opts.hardware_compatibility_level or "none",
            engine_host_code_allowed=opts.engine_host_code,
            int8_calibration_member=calibration_member,
            timing_cache=opts.timing_cache_file is not None,
        )
    if not recipes:
        placed = ", ".join(f"{n}={p}" for n, p in placements.items())
        raise UsageError(
            f"the engine options apply to members on a GPU or DLA, and none runs there on "
            f"{profile.id} ({placed})",
            hint="place one with --placement MEMBER=gpu or --useDLACore N",
        )
    if opts.allow_gpu_fallback and not any(r.dla_core is not None for r in recipes.values()):
        raise UsageError(
            "--allowGPUFallback: no member runs on a DLA core (--placement puts them elsewhere)"
        )
    notes = [
        f"engine profile of {', '.join(names)}: input {inp} fixed at {_fmt(frame)} (one "
        "frame); give --minShapes/--optShapes/--maxShapes for a range"
        for (inp, frame), names in defaulted.items()
    ]
    return recipes, notes


# -- INT8 calibration frames ------------------------------------------------------------


def calibration_subset(
    arrays: Mapping[str, np.ndarray], limit: int = MAX_CALIBRATION_FRAMES
) -> dict[str, np.ndarray]:
    """At most ``limit`` frames, the same for every input: evenly spaced over the build's
    calibration frames (first and last included), so the same frames in the same order
    always give the same subset.

    Raises:
        UsageError: No frames, or inputs with different frame counts.
    """
    counts = {len(a) if np.ndim(a) else 0 for a in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise UsageError("--int8 needs calibration frames, the same number for every input")
    n = counts.pop()
    index = np.unique(np.linspace(0, n - 1, num=min(n, limit)).round().astype(np.int64))
    return {k: np.ascontiguousarray(np.asarray(v)[index]) for k, v in sorted(arrays.items())}


def calibration_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The frames as ``.npz`` bytes, in memory (the packager encrypts them; no file)."""
    buf = _io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    return buf.getvalue()


# -- prebuilt plans (--engine-on-this-host) ---------------------------------------------


class BuiltEngineLike(Protocol):
    """What the backend's ``build_engine`` returns."""

    plan: bytes
    identity: dict[str, str]
    timing_cache: bytes | None


EngineBuilder = Callable[..., BuiltEngineLike]


def _engine_builder() -> EngineBuilder:
    """The backend's engine builder (the seam tests replace).

    Raises:
        MissingDependencyError: TensorRT is not installed (raised by the backend).
    """
    from edgeguard.backends import tensorrt as backend
    from edgeguard.errors import InternalError

    build = getattr(backend, "build_engine", None)
    if build is None:
        raise InternalError("this edgeguard's TensorRT backend has no build_engine")
    return build  # type: ignore[no-any-return]


def _major_minor(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"[0-9]+", text)[:2])


def check_identity(
    identity: Mapping[str, str], profile: DeviceProfile, recipe: MemberRecipe
) -> None:
    """Refuse a plan built on a host that is not a device of ``profile``.

    The host's GPU must have the profile's compute capability (``ampere+`` plans: both
    8.0 or newer) and its TensorRT the profile's major.minor (version-compatible plans:
    the same major, not newer than the profile's).

    Raises:
        UsageError: The host differs, or the profile does not say what it runs.
    """
    hint = "build on a device of that profile, or leave --engine-on-this-host out"
    if profile.gpu is None or profile.software.tensorrt is None:
        raise UsageError(
            f"--engine-on-this-host: device profile {profile.id} names no GPU or TensorRT "
            "version to check this host against"
        )
    cc, want_cc = identity.get("compute_capability", "?"), profile.gpu.compute_capability
    gpu = identity.get("gpu_name", "?")
    if recipe.hardware_compatibility_level == "ampere+":
        ok = _major_minor(cc) >= (8, 0) and _major_minor(want_cc) >= (8, 0)
    else:
        ok = cc == want_cc
    if not ok:
        raise UsageError(
            f"--engine-on-this-host: this host's GPU {gpu} has compute capability {cc}, "
            f"device profile {profile.id}'s has {want_cc}",
            hint=hint,
        )
    trt, want = identity.get("tensorrt", "?"), profile.software.tensorrt
    have_mm, want_mm = _major_minor(trt), _major_minor(want)
    if recipe.version_compatible:
        ok = bool(have_mm) and have_mm[0] == want_mm[0] and have_mm <= want_mm
    else:
        ok = have_mm == want_mm
    if not ok:
        raise UsageError(
            f"--engine-on-this-host: this host has TensorRT {trt}, device profile "
            f"{profile.id} runs {want}"
            + (
                " (a version-compatible plan needs the same major, not newer)"
                if recipe.version_compatible
                else ""
            ),
            hint=hint,
        )


def plan_member_name(member: str) -> str:
    """The name of the ``trt-engine`` member holding ``member``'s prebuilt plan."""
    return f"{member}.plan"


def build_prebuilt(
    recipes: Mapping[str, MemberRecipe],
    models: Mapping[str, bytes],
    *,
    profile: DeviceProfile,
    calibration: Mapping[str, np.ndarray] | None,
    timing_cache: bytes | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[list[tuple[PrebuiltEngine, bytes]], bytes | None]:
    """Build each recipe's plan with TensorRT on this host and tag it.

    Args:
        recipes: The members to build and how.
        models: Each member's ONNX bytes.
        profile: The device profile the plans are for (checked with :func:`check_identity`).
        calibration: The INT8 calibration frames (the bundle's subset), or None.
        timing_cache: The timing cache to start from (``--timingCacheFile``), or None.
        progress: ``(step, done, total)`` during the builds.

    Returns:
        ``(tag, plan bytes)`` per member, and the timing cache after the builds.

    Raises:
        MissingDependencyError: TensorRT is not installed here (exit 7).
        UsageError: This host is not a device of ``profile``.
    """
    build = _engine_builder()
    out: list[tuple[PrebuiltEngine, bytes]] = []
    for name, recipe in sorted(recipes.items()):
        built = build(
            models[name],
            recipe,
            calibration=calibration if (recipe.int8 or recipe.best) else None,
            device_id=0,
            progress=progress,
            timing_cache=timing_cache,
        )
        identity = dict(built.identity)
        check_identity(identity, profile, recipe)
        if built.timing_cache is not None:
            timing_cache = built.timing_cache
        try:
            tag = PrebuiltEngine(
                member=plan_member_name(name),
                for_member=name,
                tensorrt=identity.get("tensorrt", ""),
                compute_capability=identity.get("compute_capability", ""),
                gpu_name=identity.get("gpu_name", ""),
                device_profile=profile.id,
                version_compatible=recipe.version_compatible,
                hardware_compatibility_level=recipe.hardware_compatibility_level,
            )
        except MalformedError as exc:
            raise BackendError(f"the TensorRT builder reported a bad identity: {exc}") from exc
        out.append((tag, bytes(built.plan)))
    return out, timing_cache

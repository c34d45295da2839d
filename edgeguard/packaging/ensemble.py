"""Turning build options into members, a runtime policy and isolation requirements.

Layer: packaging. ``edgeguard build A.onnx [B.onnx ...] [--variants fp32,fp16,int8]
[--fallback SMALL.onnx] [--voter ...] [--quorum K] [--deadline-ms D]
[--safe-default SAFE.npz]`` becomes: one member per model and variant, a
fallback member, a :class:`~edgeguard.policy.runtime.RuntimePolicy` and a
:class:`~edgeguard.policy.isolation.SandboxPolicy`, which the manifest's ``policy``
slot carries with each member's I/O contract (:func:`member_io`). Every bundle gets
a runtime policy; one model is a single-model policy.

Placement comes from the first allowed device profile: on a profile with DLA
cores the reduced-precision variants are spread over the DLA cores and the
rest run on the GPU (compute-unit diversity); on a GPU-less profile
everything runs on the CPU. ``--placement MEMBER=WHERE`` overrides a member's
placement. The fallback model always runs on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeguard.arrayfile import open_arrays
from edgeguard.errors import MalformedError, UsageError
from edgeguard.policy.io import MemberIo, TensorSpec, normalize_dim
from edgeguard.policy.isolation import LAYERS, REQUIRED, SandboxPolicy
from edgeguard.policy.runtime import (
    FALLBACK_NAME,
    SINGLE_MODEL_DEADLINE_MS,
    ChainStep,
    DeadlineBasis,
    HardeningPolicy,
    MemberSpec,
    RateLimitPolicy,
    RuntimePolicy,
    VoterKind,
    VoterSpec,
    parse_placement,
)

if TYPE_CHECKING:
    from edgeguard.devices import DeviceProfile
    from edgeguard.packaging.variants import VariantChecks

__all__ = [
    "UNMEASURED_DEADLINE_MS",
    "VOTERS",
    "EnsembleOptions",
    "EnsemblePlan",
    "MemberPlan",
    "member_io",
    "plan_ensemble",
]

#: An ensemble's deadline when it cannot be measured (no calibration frames and
#: dynamic height and width): generous, and ``build`` says so.
UNMEASURED_DEADLINE_MS = 1000.0
#: A single model's deadline is a hang guard: never tighter than this.
SINGLE_MODEL_MIN_DEADLINE_MS = 1000.0

#: CLI voter names; ``boxes`` is object-detection fusion.
VOTERS = ("plurality", "majority", "soft", "median", "mid_value", "boxes")


@dataclass(frozen=True)
class EnsembleOptions:
    """Ensemble-related build options (all optional)."""

    variants: tuple[str, ...] = ()
    fallback: Path | None = None
    voter: str | None = None
    quorum: int | None = None
    deadline_ms: float | None = None
    """The per-frame deadline; None measures it on this host (``--deadline-ms auto``)."""
    last_good_max_age_ms: float | None = None
    safe_default: Path | None = None
    require_isolation: tuple[str, ...] = ()
    model_switching: bool = False
    top_k: int | None = None
    decimals: int | None = None
    rate_limit: tuple[float, int] | None = None
    placements: tuple[tuple[str, str], ...] = ()
    """``(member name, placement)`` overrides, for example ``("m-fp32", "cpu:0-3")``."""
    dla_core: int | None = None
    """``--useDLACore N``: every member placed on a GPU or DLA without ``--placement``
    runs on ``dlaN`` instead (the fallback model stays on the CPU)."""


@dataclass(frozen=True)
class EnsemblePlan:
    """What ``build`` packages and signs.

    Attributes:
        members: The members in payload order (the fallback last).
        runtime: The runtime policy.
        isolation: The isolation requirements.
        io: Each member's I/O contract.
        deadline_note: How the deadline was chosen, for the build's output.
        warnings: What the build should warn about (a precision an allowed device
            profile does not run natively).
    """

    members: tuple[MemberPlan, ...]
    runtime: RuntimePolicy
    isolation: SandboxPolicy
    io: Mapping[str, MemberIo]
    deadline_note: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class MemberPlan:
    """One member to package: its bytes, role and placement."""

    name: str
    data: bytes
    role: str
    placement: str = "cpu"
    note: dict[str, Any] = field(default_factory=dict)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not Path(path).is_file():
        raise UsageError(f"safe default file {path} does not exist")
    return open_arrays(path).read()


def _placements(kinds: Sequence[str], dla_cores: int, has_gpu: bool) -> list[str]:
    if not has_gpu:
        return ["cpu"] * len(kinds)
    out, next_dla = [], 0
    for kind in kinds:
        if kind in ("fp16", "int8") and dla_cores > 0:
            out.append(f"dla{next_dla % dla_cores}")
            next_dla += 1
        else:
            out.append("gpu")
    return out


def _override_placements(
    members: list[MemberPlan],
    overrides: Sequence[tuple[str, str]],
    dla_cores: int,
    has_gpu: bool,
) -> list[MemberPlan]:
    from edgeguard.policy.runtime import parse_placement

    by_name = {m.name: i for i, m in enumerate(members)}
    seen: set[str] = set()
    out = list(members)
    for name, text in overrides:
        if name not in by_name:
            raise UsageError(
                f"--placement names {name!r}, which is not a member",
                hint=f"members: {', '.join(by_name)}",
            )
        if name in seen:
            raise UsageError(f"--placement gives {name!r} twice")
        seen.add(name)
        try:
            where = parse_placement(text)
        except MalformedError as exc:
            raise UsageError(f"--placement {name}={text}: {exc}") from exc
        if where.accelerator and not has_gpu:
            raise UsageError(f"--placement {name}={text}: the device profile has no GPU")
        if where.unit == "dla" and where.index >= dla_cores:
            raise UsageError(
                f"--placement {name}={text}: the device profile has {dla_cores} DLA core(s)"
            )
        m = out[by_name[name]]
        out[by_name[name]] = MemberPlan(m.name, m.data, m.role, str(where), m.note)
    return out


def plan_ensemble(
    models: Sequence[tuple[str, bytes]],
    opts: EnsembleOptions,
    *,
    calibration: Mapping[str, np.ndarray] | None,
    output_name: str,
    dla_cores: int = 0,
    has_gpu: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    shape_hints: Mapping[str, tuple[int, ...]] | None = None,
    checks: VariantChecks | None = None,
    profiles: Sequence[DeviceProfile] = (),
) -> EnsemblePlan:
    """Members, runtime policy, I/O contracts and isolation for the given models and options.

    One model without ``--voter`` is a single-model policy: its answer, every output
    unchanged (passthrough), with a chain of the model, the fallback model and the
    safe default where given. Several models or variants vote.

    Args:
        models: ``(name, onnx bytes)`` of each model given on the command line.
        opts: The ensemble options.
        calibration: Calibration inputs (needed by the int8 variant).
        output_name: The output the voter decides on (the primary's first output).
        dla_cores: DLA cores of the target device profile.
        has_gpu: Whether the target device profile has a GPU.
        progress: Called with ``(step, done, total)`` during the long steps.
        shape_hints: One frame's shape per input, for timing the members when no
            calibration frames are given (from the sanity profile).
        checks: How derived variants are measured and refused (task, threshold,
            decoder); each variant member's ``note["check"]`` holds its measurement.
        profiles: The allowed device profiles: a reduced-precision variant placed on a
            unit of one that does not run it is refused, on its CPU warned about.

    Returns:
        The plan.
    """
    from edgeguard.packaging.variants import VariantChecks, make_variants

    unknown = [x for x in opts.require_isolation if x not in LAYERS]
    if unknown:
        raise UsageError(
            f"unknown isolation layer {', '.join(unknown)}",
            hint=f"layers: {', '.join(LAYERS)}",
        )
    checks = checks or VariantChecks()
    if checks.progress is None and progress is not None:
        checks = replace(checks, progress=progress)
    members: list[MemberPlan] = []
    for name, data in models:
        if opts.variants:
            if "fp32" not in opts.variants and set(opts.variants) & {"fp16", "int8"}:
                raise UsageError(
                    "--variants needs fp32 too: each variant's agreement is measured against, "
                    "and signed relative to, the fp32 member",
                    hint="for example --variants fp32," + ",".join(opts.variants),
                )
            variants = make_variants(
                data, opts.variants, calibration=calibration, checks=checks, name=name
            )
            places = _placements([v.kind for v in variants], dla_cores, has_gpu)
            for v, place in zip(variants, places, strict=True):
                check = None if v.kind == "fp32" else v.check(f"{name}-fp32")
                members.append(
                    MemberPlan(
                        f"{name}-{v.kind}",
                        v.model,
                        "member",
                        place,
                        {"variant": v.kind, "check": check},
                    )
                )
        else:
            members.append(MemberPlan(name, data, "member", "gpu" if has_gpu else "cpu"))
    members[0] = MemberPlan(
        members[0].name, members[0].data, "primary", members[0].placement, members[0].note
    )
    if len({m.name for m in members}) != len(members):
        raise UsageError("two models have the same file name; rename one")
    overrides = list(opts.placements)
    if opts.dla_core is not None:
        named = {n for n, _ in overrides}
        overrides += [
            (m.name, f"dla{opts.dla_core}")
            for m in members
            if m.name not in named and parse_placement(m.placement).accelerator
        ]
    members = _override_placements(members, overrides, dla_cores, has_gpu)

    fallback = None
    if opts.fallback is not None:
        from edgeguard.packaging.onnx_checks import check_onnx_model

        try:
            fb = Path(opts.fallback).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read fallback model {opts.fallback}: {exc}") from exc
        check_onnx_model(fb, source=str(opts.fallback))
        # The fallback runs on the CPU, unpinned (docs/failsafe.md, "Placement"): a
        # different compute unit from GPU/DLA members, and no placement in the policy.
        fallback = MemberPlan(f"{Path(opts.fallback).stem}-fallback", fb, "fallback", "cpu")
    safe = _load_npz(opts.safe_default) if opts.safe_default else None
    n = len(members)
    single = n == 1 and opts.voter is None
    voter_name = opts.voter or ("passthrough" if single else _default_voter(members))
    if voter_name not in (*VOTERS, "passthrough"):
        raise UsageError(f"--voter must be one of {', '.join(VOTERS)}")
    kind = VoterKind.DETECTION if voter_name == "boxes" else VoterKind(voter_name)
    quorum = opts.quorum if opts.quorum is not None else n // 2 + 1
    if not 1 <= quorum <= n:
        raise UsageError(f"--quorum must be between 1 and the number of members ({n})")
    chain = [ChainStep.ENSEMBLE]
    if not single:
        chain.append(ChainStep.QUORUM)
    if fallback is not None:
        chain.append(ChainStep.FALLBACK_MODEL)
    if not single:
        chain.append(ChainStep.LAST_KNOWN_GOOD)
    if safe is not None:
        chain.append(ChainStep.SAFE_DEFAULT)
    voter = VoterSpec(
        kind=kind,
        output="" if single else output_name,
        min_confirmations=min(2, n) if kind is VoterKind.DETECTION else 2,
    )
    io = {m.name: member_io(m) for m in members}
    if fallback is not None:
        io[fallback.name] = member_io(fallback)
    deadline, basis, note = _deadline(
        opts, members, fallback, io, calibration, single, progress, shape_hints
    )
    try:
        policy = RuntimePolicy(
            members=tuple(MemberSpec(m.name, m.placement) for m in members),
            voter=voter,
            quorum=quorum,
            deadline_ms=deadline,
            # Leave 40% of the deadline for the fallback model when members run late.
            member_budget_ms=round(0.6 * deadline, 3) if fallback is not None else None,
            fallback_chain=tuple(chain),
            safe_default=safe,
            model_switching=opts.model_switching,
            hardening=HardeningPolicy(output=output_name, top_k=opts.top_k, decimals=opts.decimals)
            if opts.top_k is not None or opts.decimals is not None
            else None,
            rate_limit=RateLimitPolicy(rate_per_s=opts.rate_limit[0], burst=opts.rate_limit[1])
            if opts.rate_limit is not None
            else None,
            reject_action="raise" if single and safe is None else "fallback",
            last_known_good_max_age_ms=200.0
            if opts.last_good_max_age_ms is None
            else float(opts.last_good_max_age_ms),
            deadline_basis=basis,
        )
    except MalformedError as exc:  # option values the policy refuses: the user's mistake
        raise UsageError(str(exc).removeprefix("runtime policy: ")) from exc
    if fallback is not None:
        members.append(fallback)
    isolation = SandboxPolicy.from_dict({layer: REQUIRED for layer in opts.require_isolation})
    return EnsemblePlan(
        members=tuple(members),
        runtime=policy,
        isolation=isolation,
        io=io,
        deadline_note=note,
        warnings=tuple(dict.fromkeys(_precision_checks(members, profiles))),
    )


def _precision_checks(
    members: Sequence[MemberPlan], profiles: Sequence[DeviceProfile]
) -> list[str]:
    """Warnings for reduced precisions a profile does not run natively; refusals where
    a member is placed on a unit that cannot run its precision.

    A variant on the GPU or a DLA core of an allowed profile whose unit does not run its
    precision is refused: TensorRT cannot build it there. A variant on the CPU of a
    profile that does not list its precision is a warning: ONNX Runtime runs the graph
    as it is, without the speed the precision is for.
    """
    out: list[str] = []
    for m in members:
        kind = m.note.get("variant")
        if kind not in ("fp16", "int8"):
            continue
        unit = parse_placement(m.placement).unit
        for p in profiles:
            if (unit == "dla" and p.dla_cores == 0) or (unit == "gpu" and p.gpu is None):
                continue  # the runtime refuses a placement the device lacks
            native = p.dla_precisions if unit == "dla" else p.precisions
            if kind in native:
                continue
            if unit != "cpu":
                raise UsageError(
                    f"{m.name} is an {kind} variant placed on {m.placement}, and the "
                    f"{unit.upper()} of {p.id} does not run {kind} (it runs "
                    f"{', '.join(native) or 'nothing'})",
                    hint=f"leave {kind} out of --variants, or place it elsewhere with "
                    f"--placement {m.name}=cpu",
                )
            out.append(
                f"{m.name}: {p.id} does not list {kind} among the precisions it runs "
                f"natively ({', '.join(native)}); on the CPU, ONNX Runtime runs the graph as "
                f"it is, without the speed {kind} is for"
            )
    return out


def _deadline(
    opts: EnsembleOptions,
    members: Sequence[MemberPlan],
    fallback: MemberPlan | None,
    io: Mapping[str, MemberIo],
    calibration: Mapping[str, np.ndarray] | None,
    single: bool,
    progress: Callable[[str, int, int], None] | None,
    shape_hints: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[float, DeadlineBasis | None, str]:
    """The deadline, how it was measured, and a line that says so."""
    if opts.deadline_ms is not None:
        return float(opts.deadline_ms), None, f"deadline {opts.deadline_ms:g} ms (given)"
    from edgeguard.packaging.deadline import AUTO_FACTOR, MIN_AUTO_DEADLINE_MS, measure_deadline

    runs = [(m.name, m.data, io[m.name]) for m in members]
    if fallback is not None:
        runs.append((FALLBACK_NAME, fallback.data, io[fallback.name]))
    measured = measure_deadline(
        runs,
        calibration,
        progress=None if progress is None else lambda d, t: progress("timing members", d, t),
        shape_hints=shape_hints,
    )
    if measured is None:
        value = SINGLE_MODEL_DEADLINE_MS if single else UNMEASURED_DEADLINE_MS
        return (
            value,
            None,
            (
                f"deadline {value:g} ms: not measured (the inputs have dynamic axes and neither "
                "calibration frames nor a sanity profile shape them); give --calibration or "
                "--deadline-ms"
            ),
        )
    value, basis = measured
    slowest = max(basis.measured_ms, key=lambda k: basis.measured_ms[k])
    timing = (
        f"{slowest.replace(FALLBACK_NAME, 'fallback')} {basis.measured_ms[slowest]:.1f} ms for "
        f"one frame on one thread ({basis.host})"
    )
    if single and value < SINGLE_MODEL_MIN_DEADLINE_MS:
        note = (
            f"deadline {SINGLE_MODEL_MIN_DEADLINE_MS:g} ms, a single model's minimum (with no "
            f"fallback model the deadline only catches a hang); measured here: {timing}, "
            f"{AUTO_FACTOR:g}x is {value:g} ms"
        )
        return SINGLE_MODEL_MIN_DEADLINE_MS, basis, note
    note = (
        f"deadline {value:g} ms: measured here, {AUTO_FACTOR:g}x the slowest member "
        f"(at least {MIN_AUTO_DEADLINE_MS:g} ms): {timing}"
    )
    return value, basis, note


def _default_voter(members: Sequence[MemberPlan]) -> str:
    """The voter when ``--voter`` is not given: ``plurality`` for classifiers, ``median``
    (element-wise, every output) for anything else, a detector's raw heads and dense
    maps included. The task is the one the variants were measured with, else read from
    the primary's first output (``[N, C]``: a classifier)."""
    for m in members:
        check = m.note.get("check")
        task = getattr(check, "task", None)
        if task is not None:
            return "plurality" if task == "classifier" else "median"
    outputs = member_io(members[0]).outputs
    if outputs and outputs[0].rank == 2:
        return "plurality"
    return "median"


def member_io(plan: MemberPlan) -> MemberIo:
    """The I/O contract of one planned member, read from its ONNX graph (dims normalised)."""
    from edgeguard.packaging.onnx_checks import onnx_io

    info = onnx_io(plan.data, source=f"member {plan.name}")

    def specs(entries: Sequence[tuple[str, str, tuple[Any, ...]]]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(name, dtype, tuple(normalize_dim(d) for d in dims))
            for name, dtype, dims in entries
        )

    return MemberIo(
        inputs=specs(info.inputs), outputs=specs(info.outputs), precisions=info.precisions
    )

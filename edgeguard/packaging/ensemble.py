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

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeguard.errors import MalformedError, UsageError
from edgeguard.policy.io import MemberIo, TensorSpec, normalize_dim
from edgeguard.policy.isolation import LAYERS, REQUIRED, SandboxPolicy
from edgeguard.policy.runtime import (
    SINGLE_MODEL_DEADLINE_MS,
    ChainStep,
    HardeningPolicy,
    MemberSpec,
    RateLimitPolicy,
    RuntimePolicy,
    VoterKind,
    VoterSpec,
)

__all__ = ["VOTERS", "EnsembleOptions", "MemberPlan", "member_io", "plan_ensemble"]

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
    safe_default: Path | None = None
    require_isolation: tuple[str, ...] = ()
    model_switching: bool = False
    top_k: int | None = None
    decimals: int | None = None
    rate_limit: tuple[float, int] | None = None
    placements: tuple[tuple[str, str], ...] = ()
    """``(member name, placement)`` overrides, for example ``("m-fp32", "cpu:0-3")``."""


@dataclass(frozen=True)
class MemberPlan:
    """One member to package: its bytes, role and placement."""

    name: str
    data: bytes
    role: str
    placement: str = "cpu"
    note: dict[str, Any] = field(default_factory=dict)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: np.asarray(npz[k]) for k in npz.files}
    except FileNotFoundError as exc:
        raise UsageError(f"safe default file {path} does not exist") from exc
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise MalformedError(f"{path} is not a readable .npz file of arrays") from exc


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
) -> tuple[list[MemberPlan], RuntimePolicy, SandboxPolicy]:
    """Members, runtime policy and isolation requirements for the given models and options.

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

    Returns:
        The members in payload order (the fallback last), the runtime policy and the
        isolation requirements.
    """
    from edgeguard.packaging.variants import make_variants

    members: list[MemberPlan] = []
    for name, data in models:
        if opts.variants:
            variants = make_variants(data, opts.variants, calibration=calibration)
            places = _placements([v.kind for v in variants], dla_cores, has_gpu)
            for v, place in zip(variants, places, strict=True):
                members.append(
                    MemberPlan(
                        f"{name}-{v.kind}",
                        v.model,
                        "member",
                        place,
                        {"variant": v.kind, "agreement_with_fp32": v.agreement},
                    )
                )
        else:
            members.append(MemberPlan(name, data, "member", "gpu" if has_gpu else "cpu"))
    members[0] = MemberPlan(
        members[0].name, members[0].data, "primary", members[0].placement, members[0].note
    )
    if len({m.name for m in members}) != len(members):
        raise UsageError("two models have the same file name; rename one")
    members = _override_placements(members, opts.placements, dla_cores, has_gpu)

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
    voter_name = opts.voter or ("passthrough" if single else "plurality")
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
    default_deadline = SINGLE_MODEL_DEADLINE_MS if single else 50.0
    deadline = default_deadline if opts.deadline_ms is None else float(opts.deadline_ms)
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
        )
    except MalformedError as exc:  # option values the policy refuses: the user's mistake
        raise UsageError(str(exc).removeprefix("runtime policy: ")) from exc
    if fallback is not None:
        members.append(fallback)
    unknown = [x for x in opts.require_isolation if x not in LAYERS]
    if unknown:
        raise UsageError(
            f"unknown isolation layer {', '.join(unknown)}",
            hint=f"layers: {', '.join(LAYERS)}",
        )
    isolation = SandboxPolicy.from_dict({layer: REQUIRED for layer in opts.require_isolation})
    return members, policy, isolation


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

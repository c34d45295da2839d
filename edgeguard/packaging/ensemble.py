"""Turning build options into ensemble members and a signed runtime policy.

Layer: packaging. ``edgeguard build A.onnx [B.onnx ...] [--variants fp32,fp16,int8]
[--fallback SMALL.onnx] [--voter ...] [--quorum K] [--deadline-ms D]
[--safe-default SAFE.npz]`` becomes: one member per model and variant, a
fallback member, and a :class:`~edgeguard.guard.policy.RuntimePolicy` that is
embedded in the manifest's ``policy`` slot as ``{"runtime": ...}``.

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

__all__ = ["VOTERS", "EnsembleOptions", "MemberPlan", "plan_ensemble"]

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

    @property
    def requested(self) -> bool:
        """Whether any ensemble option was given."""
        return bool(
            self.variants
            or self.fallback
            or self.voter
            or self.quorum is not None
            or self.deadline_ms is not None
            or self.safe_default
            or self.require_isolation
            or self.model_switching
            or self.top_k is not None
            or self.decimals is not None
            or self.rate_limit is not None
            or bool(self.placements)
        )


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
    from edgeguard.guard.policy import parse_placement

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
) -> tuple[list[MemberPlan], dict[str, Any] | None]:
    """Members and the runtime policy dict for the given models and options.

    Args:
        models: ``(name, onnx bytes)`` of each model given on the command line.
        opts: The ensemble options.
        calibration: Calibration inputs (needed by the int8 variant).
        output_name: The output the voter decides on (the primary's first output).
        dla_cores: DLA cores of the target device profile.
        has_gpu: Whether the target device profile has a GPU.

    Returns:
        The members in payload order and the ``policy`` slot (None when no
        ensemble option was given and there is a single model).
    """
    from edgeguard.guard.policy import (
        ChainStep,
        HardeningPolicy,
        MemberSpec,
        RateLimitPolicy,
        RuntimePolicy,
        VoterKind,
        VoterSpec,
    )
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
    if not opts.requested and len(members) == 1:
        return members, None

    fallback = None
    if opts.fallback is not None:
        try:
            fb = Path(opts.fallback).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read fallback model {opts.fallback}: {exc}") from exc
        from edgeguard.packaging.onnx_checks import check_onnx_model

        check_onnx_model(fb, source=str(opts.fallback))
        # The fallback runs on the CPU, unpinned (docs/failsafe.md, "Placement"): a
        # different compute unit from GPU/DLA members, and no placement in the policy.
        fallback = MemberPlan(f"{Path(opts.fallback).stem}-fallback", fb, "fallback", "cpu")
    safe = _load_npz(opts.safe_default) if opts.safe_default else None
    voter_name = opts.voter or "plurality"
    if voter_name not in VOTERS:
        raise UsageError(f"--voter must be one of {', '.join(VOTERS)}")
    kind = VoterKind.DETECTION if voter_name == "boxes" else VoterKind(voter_name)
    n = len(members)
    quorum = opts.quorum if opts.quorum is not None else n // 2 + 1
    if not 1 <= quorum <= n:
        raise UsageError(f"--quorum must be between 1 and the number of members ({n})")
    chain = [ChainStep.ENSEMBLE, ChainStep.QUORUM]
    if fallback is not None:
        chain.append(ChainStep.FALLBACK_MODEL)
    chain.append(ChainStep.LAST_KNOWN_GOOD)
    if safe is not None:
        chain.append(ChainStep.SAFE_DEFAULT)
    voter = VoterSpec(
        kind=kind,
        output=output_name,
        min_confirmations=min(2, n) if kind is VoterKind.DETECTION else 2,
    )
    deadline = 50.0 if opts.deadline_ms is None else float(opts.deadline_ms)
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
    )
    if fallback is not None:
        members.append(fallback)
    from edgeguard.runtime.sandbox.policy import LAYERS, REQUIRED, SandboxPolicy

    unknown = [x for x in opts.require_isolation if x not in LAYERS]
    if unknown:
        raise UsageError(
            f"unknown isolation layer {', '.join(unknown)}",
            hint=f"layers: {', '.join(LAYERS)}",
        )
    default = SandboxPolicy().to_dict()
    sandbox = SandboxPolicy.from_dict(
        {**default, **{layer: REQUIRED for layer in opts.require_isolation}}
    )
    return members, {"runtime": policy.to_dict(), "sandbox": sandbox.to_dict()}

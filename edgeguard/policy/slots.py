"""The typed signed slots of a manifest, read in one place.

Layer: :mod:`edgeguard.policy` (pure data; imports the bundle model, nothing above).
The bundle format only requires the ``sanity``, ``policy`` and ``engine_recipe`` slots
to be maps or null; :func:`read_slots` gives them their types, strictly, right after
the signature is verified (``edgeguard verify`` included), so a malformed signed slot
is refused with :class:`~edgeguard.errors.MalformedError` (exit 3) before anything
runs. The ``policy`` slot holds three parts:

* ``runtime``: the :class:`~edgeguard.policy.runtime.RuntimePolicy`;
* ``sandbox``: the :class:`~edgeguard.policy.isolation.SandboxPolicy` (isolation floor);
* ``io``: each model member's :class:`~edgeguard.policy.io.MemberIo` contract;
* ``variants``: each precision variant's measured agreement with its reference member
  (:class:`~edgeguard.policy.variants.VariantCheck`).

A bundle without a runtime policy is one model: it runs under
:meth:`RuntimePolicy.single` (``runtime_signed`` is then False).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeguard._strict import Table, fail
from edgeguard.bundle.model import Manifest
from edgeguard.policy.engine import EngineRecipe
from edgeguard.policy.io import MemberIo, read_io
from edgeguard.policy.isolation import SandboxPolicy
from edgeguard.policy.runtime import RuntimePolicy
from edgeguard.policy.sanity import SanityProfile
from edgeguard.policy.variants import VariantCheck, read_variants, variants_dict

__all__ = ["MODEL_FORMATS", "SignedSlots", "policy_slot", "read_slots"]

#: Member formats that hold a model a member can run.
MODEL_FORMATS = ("onnx", "trt-engine")
_W = "policy slot"


@dataclass(frozen=True)
class SignedSlots:
    """What the signer decided about running this bundle, typed and validated.

    Attributes:
        runtime: The runtime policy (members, voter, deadline, fallback chain).
        runtime_signed: False when the bundle carries no runtime policy and the
            single-model default applies.
        isolation: The isolation requirements of the member workers.
        sanity: The calibrated input-sanity profile, or None.
        io: Each model member's I/O contract (empty for bundles built without one).
        engines: The TensorRT engine recipe, or None.
        fallback: The name of the ``fallback`` member, or None.
        variants: Each precision variant's signed agreement with its reference.
    """

    runtime: RuntimePolicy
    runtime_signed: bool
    isolation: SandboxPolicy
    sanity: SanityProfile | None = None
    io: Mapping[str, MemberIo] = field(default_factory=dict)
    engines: EngineRecipe | None = None
    fallback: str | None = None
    variants: Mapping[str, VariantCheck] = field(default_factory=dict)

    def member_io(self, name: str) -> MemberIo | None:
        """The signed contract of member ``name``, if the bundle has one."""
        return self.io.get(name)


def policy_slot(
    *,
    runtime: RuntimePolicy,
    isolation: SandboxPolicy,
    io: Mapping[str, MemberIo],
    variants: Mapping[str, VariantCheck] | None = None,
) -> dict[str, Any]:
    """The manifest's ``policy`` slot for these parts (what ``build`` signs); ``variants``
    only when there are any."""
    slot: dict[str, Any] = {
        "runtime": runtime.to_dict(),
        "sandbox": isolation.to_dict(),
        "io": {k: v.to_dict() for k, v in sorted(io.items())},
    }
    if variants:
        slot["variants"] = variants_dict(variants)
    return slot


def read_slots(manifest: Manifest) -> SignedSlots:
    """Type and cross-check the manifest's signed slots.

    Checks beyond each slot's own reader: the runtime policy names exactly the
    ``primary``/``member`` entries of the manifest, in any order, and the manifest has
    at most one ``fallback``; every I/O contract belongs to a model member; members and
    the fallback model accept the same inputs; every variant check and its reference
    are model members.

    Raises:
        MalformedError: A slot does not follow its format or contradicts the manifest.
    """
    models = [m for m in manifest.members if m.format in MODEL_FORMATS]
    fallbacks = [m.name for m in models if m.role == "fallback"]
    if len(fallbacks) > 1:
        raise fail(_W, f"the manifest has {len(fallbacks)} fallback members; at most one")
    fallback = fallbacks[0] if fallbacks else None
    sanity = None if manifest.sanity is None else SanityProfile.from_dict(manifest.sanity)
    engines = (
        None if manifest.engine_recipe is None else EngineRecipe.from_dict(manifest.engine_recipe)
    )
    raw = manifest.policy
    io: dict[str, MemberIo] = {}
    variants: dict[str, VariantCheck] = {}
    isolation = SandboxPolicy()
    runtime: RuntimePolicy | None = None
    if raw is not None:
        t = Table(raw, _W)
        if t.optional("runtime") is not None:
            runtime = RuntimePolicy.from_dict(t.optional("runtime"))
        if t.optional("sandbox") is not None:
            isolation = SandboxPolicy.from_dict(t.optional("sandbox"))
        if t.optional("io") is not None:
            io = read_io(t.optional("io"), t.at("io"))
        if t.optional("variants") is not None:
            variants = read_variants(t.optional("variants"), t.at("variants"))
        t.done()
    signed = runtime is not None
    if runtime is None:
        primary = next((m for m in models if m.role == "primary"), None)
        if primary is None:
            raise fail(_W, "the bundle has no runtime policy and no primary model member")
        runtime = RuntimePolicy.single(primary.name)
    declared = {m.name for m in models if m.role in ("primary", "member")}
    if set(runtime.member_names) != declared:
        raise fail(
            f"{_W}.runtime.members",
            f"names {sorted(runtime.member_names)} but the manifest's model members are "
            f"{sorted(declared)}",
        )
    model_names = {m.name for m in models}
    stray = sorted(set(io) - model_names)
    if stray:
        raise fail(f"{_W}.io", f"contracts for members the manifest lacks: {stray}")
    stray = sorted(set(variants) - model_names)
    if stray:
        raise fail(f"{_W}.variants", f"checks for members the manifest lacks: {stray}")
    for name, check in variants.items():
        if check.reference not in model_names:
            raise fail(
                f"{_W}.variants.{name}.reference",
                f"{check.reference!r} is not a model member of the manifest",
            )
    _check_same_inputs(io, (*runtime.member_names, *([fallback] if fallback else [])))
    if engines is not None:
        engines.check_manifest({m.name: (m.role, m.format) for m in manifest.members})
    return SignedSlots(
        runtime=runtime,
        runtime_signed=signed,
        isolation=isolation,
        sanity=sanity,
        io=io,
        engines=engines,
        fallback=fallback,
        variants=variants,
    )


def _check_same_inputs(io: Mapping[str, MemberIo], names: tuple[str, ...]) -> None:
    """Every frame goes to every member: their inputs must agree in name, dtype and rank."""
    known = [(n, io[n]) for n in names if n in io]
    if len(known) < 2:
        return
    first_name, first = known[0]
    want = {s.name: (s.dtype, s.rank) for s in first.inputs}
    for name, member in known[1:]:
        got = {s.name: (s.dtype, s.rank) for s in member.inputs}
        if got != want:
            raise fail(
                f"{_W}.io.{name}",
                f"inputs {sorted(got)} differ from {first_name}'s {sorted(want)} "
                "(every member and the fallback get the same frame)",
            )

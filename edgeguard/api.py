"""The recipe-level Python API (what the CLI calls).

Example::

    from edgeguard import api
    from edgeguard.keystore import load_device_key, load_trust_store

    trust = load_trust_store([Path("signer.pub")])
    device = load_device_key(Path("device.key"))
    with api.open_session("model.egb", trust=trust, device_key=device) as session:
        outputs = session.run({"image": frames})

:func:`open_session` is the only road from a bundle to a model's answer: it enforces
every signed slot (the I/O contract, the sanity profile, the runtime policy and the
isolation floor) for every bundle, one model or an ensemble.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeguard.bundle.model import Header
from edgeguard.crypto.keys import DevicePublicKey, SignerKey
from edgeguard.errors import UsageError
from edgeguard.packaging.calibrate import (
    CalibrationOptions,
    CalibrationReport,
    is_profile_file,
    load_profile_for,
)
from edgeguard.packaging.engines import EngineOptions
from edgeguard.packaging.ensemble import EnsembleOptions, EnsemblePlan
from edgeguard.packaging.packager import DEFAULT_CHUNK, MemberSource, write_bundle
from edgeguard.packaging.variants import VariantChecks
from edgeguard.policy.sanity import SanityProfile
from edgeguard.runtime.opener import verify_bundle
from edgeguard.runtime.session import DeviceSession, check_on_device, open_session

__all__ = [
    "CalibrationOptions",
    "DeviceSession",
    "EngineOptions",
    "EnsembleOptions",
    "VariantChecks",
    "build_bundle",
    "calibrate_profile",
    "check_on_device",
    "load_calibration_arrays",
    "open_session",
    "verify_bundle",
]


def build_bundle(
    models: Sequence[Path],
    *,
    out: Path,
    signer: SignerKey,
    recipients: Sequence[DevicePublicKey],
    profiles: Sequence[str],
    version: int,
    name: str | None = None,
    device_ids: Sequence[str] | None = None,
    expires: int | None = None,
    created: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    sanity: dict[str, Any] | None = None,
    calibration: Path | None = None,
    calibration_options: CalibrationOptions | None = None,
    on_calibration: Callable[[CalibrationReport], None] | None = None,
    ensemble: EnsembleOptions | None = None,
    on_plan: Callable[[EnsemblePlan], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    variant_checks: VariantChecks | None = None,
    engine: EngineOptions | None = None,
    on_note: Callable[[str], None] | None = None,
) -> Header:
    """Check ONNX models and package them into a bundle at ``out``.

    The first model is the ``primary`` member; further models (and, with
    ``ensemble.variants``, their precision variants) are ensemble ``member``s,
    ``ensemble.fallback`` becomes the ``fallback`` member, and the runtime policy
    (voter, quorum, deadline, fallback chain, safe default) is signed into the
    manifest. With ``calibration`` (an .npz/.npy file or a folder of images) the
    input-sanity profile is calibrated on the primary model (``calibration_options``;
    ``on_calibration`` receives the report) and signed too; ``calibration`` may also be
    a profile written by ``edgeguard calibrate`` for the same model. ``on_plan``
    receives the members, policy and I/O contracts before they are signed;
    ``progress(step, done, total)`` is called during the long steps.

    Every derived precision variant (``ensemble.variants`` fp16, int8) is measured
    against its fp32 original on the calibration data with ``variant_checks`` (the task,
    the threshold, a detector's box decoder: a callable from the first output batch to
    per-frame ``(M, 6)`` boxes ``x1, y1, x2, y2, score, class``) and refused below the
    threshold; the measurements are signed into the policy slot (``variants``).

    With ``engine`` options (``edgeguard build --fp16 --useDLACore 0 ...``) every model
    member placed on a GPU or DLA gets a TensorRT engine recipe in the signed
    ``engine_recipe`` slot (:mod:`edgeguard.packaging.engines`); INT8 carries a subset of
    the calibration frames as an encrypted ``npz`` member, and ``engine.on_this_host``
    builds the plans here and embeds them as tagged ``trt-engine`` members. ``on_note``
    receives lines for the build's output (how an engine profile was chosen).
    """
    from edgeguard.devices import load_profile
    from edgeguard.packaging.ensemble import plan_ensemble
    from edgeguard.packaging.onnx_checks import check_onnx_model
    from edgeguard.policy.slots import policy_slot

    if not models:
        raise UsageError("give at least one model")
    if version < 0:
        raise UsageError("--version must be a non-negative integer")
    device_profiles = [load_profile(p) for p in profiles]  # refuses unknown names
    engine = engine or EngineOptions()
    if engine.active:
        from edgeguard.packaging.engines import check_profiles

        check_profiles(engine, device_profiles)
    given: list[tuple[str, bytes]] = []
    infos = []
    for path in models:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read model {path}: {exc.strerror or exc}") from exc
        infos.append(check_onnx_model(data, source=str(path)))
        given.append((Path(path).stem, data))
    ensemble = ensemble or EnsembleOptions()
    if engine.active:
        _check_shapes_early(
            engine, given[0], frames_later=calibration is not None or sanity is not None
        )
    cal_arrays = None
    shape_hints = None
    if calibration is not None:
        if sanity is not None:
            raise UsageError("give either a sanity profile or calibration data, not both")
        if is_profile_file(Path(calibration)):
            sanity = load_profile_for(given[0][1], Path(calibration)).to_dict()
        else:
            options = calibration_options or CalibrationOptions()
            cal_arrays = load_calibration_arrays(given[0][1], calibration, limit=options.limit)
            profile, report = calibrate_profile(given[0][1], cal_arrays, options)
            if on_calibration is not None:
                on_calibration(report)
            sanity = profile.to_dict()
    if sanity is not None and cal_arrays is None:
        from edgeguard.packaging.deadline import profile_frame_shapes

        shape_hints = profile_frame_shapes(sanity)
    if engine.needs_calibration and cal_arrays is None:
        flag = "--int8" if engine.int8 else "--best (which includes int8)"
        raise UsageError(
            f"{flag} needs calibration frames to calibrate the INT8 engine on the device",
            hint="give --calibration DATA: an .npz, an .npy or a folder of images (a "
            "sanity profile .json holds no frames)",
        )
    if engine.dla_core is not None:
        from dataclasses import replace

        ensemble = replace(ensemble, dla_core=engine.dla_core)
    target = device_profiles[0]
    plan = plan_ensemble(
        given,
        ensemble,
        calibration=cal_arrays,
        output_name=infos[0].outputs[0][0],
        dla_cores=target.dla_cores,
        has_gpu=target.gpu is not None,
        progress=progress,
        shape_hints=shape_hints,
        checks=variant_checks,
        profiles=device_profiles,
    )
    if on_plan is not None:
        on_plan(plan)
    checks = {m.name: m.note["check"] for m in plan.members if m.note.get("check") is not None}
    policy = policy_slot(
        runtime=plan.runtime, isolation=plan.isolation, io=plan.io, variants=checks
    )
    sources = [MemberSource(name=m.name, data=m.data, role=m.role) for m in plan.members]
    engine_recipe = None
    if engine.active:
        engine_recipe = _engine_slot(
            engine, plan, sources, target, cal_arrays, shape_hints, progress, on_note
        )
    return write_bundle(
        Path(out),
        sources,
        name=name or Path(models[0]).stem,
        version=version,
        signer=signer,
        recipients=recipients,
        profiles=profiles,
        device_ids=device_ids,
        expires=expires,
        created=created,
        chunk_size=chunk_size,
        sanity=sanity,
        policy=policy,
        engine_recipe=engine_recipe,
    )


def _check_shapes_early(
    engine: EngineOptions, model: tuple[str, bytes], *, frames_later: bool
) -> None:
    """Refuse shapes the primary model refuses before the long steps (calibration,
    variants, timing): every member takes the same inputs, so its contract decides."""
    from edgeguard.packaging.engines import frame_shapes_per_input, shape_ranges
    from edgeguard.packaging.ensemble import MemberPlan, member_io

    contract = member_io(MemberPlan(model[0], model[1], "primary"))
    frames = frame_shapes_per_input(contract, None, None)
    shape_ranges(engine, model[0], contract, frames, frames_later=frames_later)


def _engine_slot(
    engine: EngineOptions,
    plan: EnsemblePlan,
    sources: list[MemberSource],
    target: Any,
    cal_arrays: Mapping[str, np.ndarray] | None,
    shape_hints: Mapping[str, tuple[int, ...]] | None,
    progress: Callable[[str, int, int], None] | None,
    on_note: Callable[[str], None] | None,
) -> dict[str, Any]:
    """The ``engine_recipe`` slot; appends the calibration and plan members to ``sources``."""
    from edgeguard.fsutil import atomic_write
    from edgeguard.packaging import engines
    from edgeguard.policy.engine import EngineRecipe, PrebuiltEngine

    models = {m.name: m for m in plan.members if m.role in ("primary", "member")}
    frames = {
        name: engines.frame_shapes_per_input(plan.io[name], cal_arrays, shape_hints)
        for name in models
    }
    cal_member = engines.CALIBRATION_MEMBER if engine.needs_calibration else None
    recipes, notes = engines.member_recipes(
        engine,
        {name: m.placement for name, m in models.items()},
        plan.io,
        frames=frames,
        profile=target,
        calibration_member=cal_member,
    )
    subset = None
    if cal_member is not None and cal_arrays is not None:
        subset = engines.calibration_subset(cal_arrays)
        sources.append(
            MemberSource(cal_member, engines.calibration_npz(subset), role="aux", format="npz")
        )
        n = len(next(iter(subset.values())))
        notes.append(
            f"int8: {n} of {len(next(iter(cal_arrays.values())))} calibration frames "
            f"(evenly spaced) travel encrypted as member {cal_member} for the device's "
            "INT8 calibration"
        )
    prebuilt: tuple[PrebuiltEngine, ...] = ()
    if engine.on_this_host:
        cache = None
        path = engine.timing_cache_file
        if path is not None and Path(path).exists():
            try:
                cache = Path(path).read_bytes()
            except OSError as exc:
                raise UsageError(f"cannot read --timingCacheFile {path}: {exc.strerror}") from exc
        built, cache = engines.build_prebuilt(
            recipes,
            {name: m.data for name, m in models.items()},
            profile=target,
            calibration=subset,
            timing_cache=cache,
            progress=progress,
        )
        for tag, plan_bytes in built:
            sources.append(MemberSource(tag.member, plan_bytes, role="engine", format="trt-engine"))
        prebuilt = tuple(tag for tag, _ in built)
        if path is not None and cache is not None:
            atomic_write(Path(path), cache, mode=0o600)
    if on_note is not None:
        for note in notes:
            on_note(note)
    return EngineRecipe(members=recipes, prebuilt=prebuilt).to_dict()


def load_calibration_arrays(
    model: bytes, data_path: Path, *, limit: int | None = None
) -> dict[str, np.ndarray]:
    """Calibration inputs for ``model`` from an .npz/.npy file or a folder of images."""
    from edgeguard.backends.onnxruntime import OnnxRuntimeBackend
    from edgeguard.packaging.calibrate import load_calibration_data

    with OnnxRuntimeBackend.from_bytes(model) as backend:
        specs = backend.inputs()
    return dict(load_calibration_data(Path(data_path), specs, limit=limit))


def calibrate_profile(
    model: bytes,
    data: Mapping[str, np.ndarray],
    options: CalibrationOptions | None = None,
) -> tuple[SanityProfile, CalibrationReport]:
    """Calibrate the input-sanity profile of ``model`` on ``data``; with the report."""
    import sys

    from edgeguard.backends.onnxruntime import OnnxRuntimeBackend
    from edgeguard.packaging.calibrate import calibrate_with_report

    options = options or CalibrationOptions()
    with OnnxRuntimeBackend.from_bytes(model) as backend:
        specs = backend.inputs()
    return calibrate_with_report(
        model, data, **options.arguments(specs), progress=sys.stderr.isatty()
    )

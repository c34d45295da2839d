"""The recipe-level Python API (what the CLI calls).

Example::

    from edgeguard import api
    from edgeguard.keystore import load_device_key, load_trust_store

    trust = load_trust_store([Path("signer.pub")])
    device = load_device_key(Path("device.key"))
    with api.open_bundle("model.egb", trust=trust, device_key=device) as session:
        outputs = session.run({"image": frames})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from edgeguard.bundle.model import Header
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.keys import DeviceKey, DevicePublicKey, SignerKey
from edgeguard.errors import UsageError
from edgeguard.packaging.ensemble import EnsembleOptions
from edgeguard.packaging.packager import DEFAULT_CHUNK, MemberSource, write_bundle
from edgeguard.runtime.opener import OpenedBundle, verify_bundle
from edgeguard.runtime.opener import open_bundle as _open

__all__ = [
    "BundleSession",
    "EnsembleOptions",
    "GuardedSession",
    "build_bundle",
    "calibrate_profile",
    "load_calibration_arrays",
    "open_bundle",
    "open_guarded",
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
    target_false_alarm: float = 0.005,
    ensemble: EnsembleOptions | None = None,
) -> Header:
    """Check ONNX models and package them into a bundle at ``out``.

    The first model is the ``primary`` member; further models (and, with
    ``ensemble.variants``, their precision variants) are ensemble ``member``s,
    ``ensemble.fallback`` becomes the ``fallback`` member, and the runtime policy
    (voter, quorum, deadline, fallback chain, safe default) is signed into the
    manifest. With ``calibration`` (an .npz/.npy file or a folder of images) the
    input-sanity profile is calibrated on the primary model and signed too.
    """
    from edgeguard.devices import load_profile
    from edgeguard.packaging.ensemble import member_io, plan_ensemble
    from edgeguard.packaging.onnx_checks import check_onnx_model
    from edgeguard.policy.slots import policy_slot

    if not models:
        raise UsageError("give at least one model")
    if version < 0:
        raise UsageError("--version must be a non-negative integer")
    device_profiles = [load_profile(p) for p in profiles]  # refuses unknown names
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
    cal_arrays = None
    if calibration is not None:
        if sanity is not None:
            raise UsageError("give either a sanity profile or calibration data, not both")
        cal_arrays = load_calibration_arrays(given[0][1], calibration)
        sanity = calibrate_profile(
            given[0][1], calibration, target_false_alarm=target_false_alarm, arrays=cal_arrays
        )
    target = device_profiles[0]
    plans, runtime, isolation = plan_ensemble(
        given,
        ensemble,
        calibration=cal_arrays,
        output_name=infos[0].outputs[0][0],
        dla_cores=target.dla_cores,
        has_gpu=target.gpu is not None,
    )
    policy = policy_slot(
        runtime=runtime, isolation=isolation, io={m.name: member_io(m) for m in plans}
    )
    sources = [MemberSource(name=m.name, data=m.data, role=m.role) for m in plans]
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
    )


def load_calibration_arrays(model: bytes, data_path: Path) -> dict[str, np.ndarray]:
    """Calibration inputs for ``model`` from an .npz/.npy file or a folder of images."""
    from edgeguard.backends.onnxruntime import OnnxRuntimeBackend
    from edgeguard.guard.sanity.calibrate import load_calibration_data

    with OnnxRuntimeBackend.from_bytes(model) as backend:
        specs = backend.inputs()
    return dict(load_calibration_data(Path(data_path), specs, limit=None))


def calibrate_profile(
    model: bytes,
    data_path: Path,
    *,
    target_false_alarm: float = 0.005,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Calibrate the input-sanity profile of ``model`` on the data at ``data_path``.

    Returns:
        The profile's dict form, ready for the manifest's ``sanity`` slot.
    """
    import sys

    from edgeguard.guard.sanity.calibrate import calibrate

    data = arrays if arrays is not None else load_calibration_arrays(model, data_path)
    profile = calibrate(
        model, data, target_false_alarm=target_false_alarm, progress=sys.stderr.isatty()
    )
    return profile.to_dict()


@dataclass
class BundleSession:
    """An opened bundle with its primary model loaded into a backend."""

    bundle: OpenedBundle
    backend: Any

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the primary model."""
        result: dict[str, np.ndarray] = self.backend.run(feeds)
        return result

    def close(self) -> None:
        """Release the backend and wipe the decrypted model from memory."""
        self.backend.close()
        self.bundle.wipe()

    def __enter__(self) -> BundleSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_bundle(
    path: Path | str,
    *,
    trust: TrustStore,
    device_key: DeviceKey,
    state_dir: Path | str | None = None,
    now: int | None = None,
) -> BundleSession:
    """Open a bundle (verify, policy, decrypt in memory) and load its primary model."""
    from edgeguard.backends import load_backend

    opened = _open(path, trust=trust, device_key=device_key, state_dir=state_dir, now=now)
    primary = next(m for m in opened.manifest.members if m.role == "primary")
    try:
        backend = load_backend(primary.format, opened.member_bytes(primary.name))
    except BaseException:
        opened.wipe()
        raise
    return BundleSession(bundle=opened, backend=backend)


class GuardedSession:
    """An opened ensemble bundle served by the guarded runtime.

    Members and the fallback model run in sandboxed worker processes by default
    (``isolation="sandbox"``: sealed memfd, seccomp allowlist, Landlock, network
    namespace, rlimits, as the signed ``policy["sandbox"]`` says, else best
    effort; see ``docs/isolation.md``) or in threads of this process
    (``isolation="threads"``, used when ``wrap`` injects faults in-process).
    Each member runs where its signed placement says (CPU cores, GPU, DLA core;
    ``docs/failsafe.md``, "Placement"), or the session refuses to start with
    :class:`~edgeguard.errors.PolicyError` or :class:`~edgeguard.errors.BackendError`.
    The signed sanity profile guards inputs and outputs; events go to a
    hash-chained log in the state directory, checkpoints signed with the
    device's attestation key.
    """

    def __init__(
        self,
        bundle: OpenedBundle,
        *,
        device_key: DeviceKey,
        state_dir: Path,
        event_log: bool = True,
        wrap: Callable[[str, Any], Any] | None = None,
        isolation: str = "auto",
    ) -> None:
        from edgeguard.backends import load_backend
        from edgeguard.guard.eventlog import EventLog
        from edgeguard.policy.runtime import RuntimePolicy
        from edgeguard.runtime.guarded import GuardedRuntime
        from edgeguard.runtime.placement import cpu_member_count, fallback_options, loader_options

        manifest = bundle.manifest
        if not manifest.policy or "runtime" not in manifest.policy:
            raise UsageError("the bundle carries no runtime policy (it is not an ensemble)")
        if isolation == "auto":
            isolation = "threads" if wrap is not None else "sandbox"
        if isolation not in ("sandbox", "threads"):
            raise UsageError("isolation must be 'sandbox', 'threads' or 'auto'")
        if isolation == "sandbox" and wrap is not None:
            raise UsageError("in-process fault injection (wrap) needs isolation='threads'")
        self.bundle = bundle
        self.isolation = isolation
        self.policy = RuntimePolicy.from_dict(manifest.policy["runtime"])
        self._backends: list[Any] = []
        self.executor: Any = None
        try:
            sanity = None
            if manifest.sanity is not None:
                from edgeguard.guard.sanity import SanityGuard
                from edgeguard.policy.sanity import SanityProfile

                # threads=1: the members' ONNX Runtime pools hold the other cores
                sanity = SanityGuard(SanityProfile.from_dict(manifest.sanity), threads=1)
            self.log_path = Path(state_dir) / "events.log" if event_log else None
            self.event_log = (
                EventLog(self.log_path, signing_key=device_key.attest)
                if self.log_path is not None
                else None
            )
            fallback_entry = next((m for m in manifest.members if m.role == "fallback"), None)
            members: dict[str, Any]
            fallback: Any
            if isolation == "sandbox":
                members, fallback, self.executor = self._start_sandbox(
                    manifest, fallback_entry, sanity
                )
            else:
                members = {}
                n_cpu = cpu_member_count(self.policy)
                for spec in self.policy.members:
                    fmt = manifest.member(spec.name).format
                    opts = loader_options(spec, fmt, cpu_members=n_cpu, sandboxed=False)
                    members[spec.name] = self._load(load_backend, fmt, bundle, spec.name, opts)
                fallback = None
                if fallback_entry is not None:
                    fallback = self._load(
                        load_backend,
                        fallback_entry.format,
                        bundle,
                        fallback_entry.name,
                        fallback_options(fallback_entry.format, cpu_members=n_cpu),
                    )
                _warm_up([*members.values(), *([fallback] if fallback else [])], sanity)
                self.inputs = next(iter(members.values())).inputs()
                if wrap is not None:  # fault injection for field tests and examples
                    members = {name: wrap(name, m) for name, m in members.items()}
                    fallback = wrap("fallback", fallback) if fallback is not None else None
            self.runtime = GuardedRuntime(
                members,
                policy=self.policy,
                fallback=fallback,
                sanity=sanity,
                event_log=self.event_log,
                executor=self.executor,
            )
        except BaseException:
            if self.executor is not None:
                self.executor.close()
            self._release()
            raise

    def _start_sandbox(
        self, manifest: Any, fallback_entry: Any, sanity: Any
    ) -> tuple[dict[str, Any], Any, Any]:
        from edgeguard.backends.base import TensorSpec
        from edgeguard.packaging.onnx_checks import check_onnx_model
        from edgeguard.runtime.placement import cpu_member_count, loader_options
        from edgeguard.runtime.sandbox import SandboxPolicy
        from edgeguard.runtime.sandbox.executor import (
            FALLBACK_NAME,
            ProcessMemberExecutor,
            WorkerSpec,
        )

        raw = (manifest.policy or {}).get("sandbox")
        sandbox = SandboxPolicy.from_dict(raw) if raw is not None else SandboxPolicy()
        specs: dict[str, WorkerSpec] = {}
        n_cpu = cpu_member_count(self.policy)
        for s in self.policy.members:
            fmt = manifest.member(s.name).format
            cpus = s.where.cpus
            specs[s.name] = WorkerSpec(
                self.bundle.member_bytes(s.name),
                fmt=fmt,
                options=loader_options(s, fmt, cpu_members=n_cpu, sandboxed=True),
                cpus=None if cpus is None else tuple(sorted(cpus)),
            )
        if fallback_entry is not None:
            specs[FALLBACK_NAME] = WorkerSpec(
                self.bundle.member_bytes(fallback_entry.name), fmt=fallback_entry.format
            )
        first = self.policy.members[0].name
        info = check_onnx_model(bytes(self.bundle.member_bytes(first)), source=first)
        self.inputs = tuple(TensorSpec(n, d, s) for n, d, s in info.inputs)
        if sanity is not None:
            feeds = _example_feeds_from_specs(self.inputs)
            sanity.check_inputs(feeds)
        executor = ProcessMemberExecutor(specs, policy=sandbox, event_log=self.event_log)
        return executor.members(), executor.fallback(), executor

    def _load(
        self,
        load_backend: Any,
        fmt: str,
        bundle: OpenedBundle,
        name: str,
        options: Mapping[str, Any],
    ) -> Any:
        backend = load_backend(fmt, bundle.member_bytes(name), **options)
        self._backends.append(backend)
        return backend

    def infer(self, feeds: Mapping[str, np.ndarray]) -> Any:
        """One frame through the guarded runtime (a GuardedResult)."""
        return self.runtime.infer(feeds)

    def _release(self) -> None:
        for b in self._backends:
            b.close()
        self.bundle.wipe()

    def close(self) -> None:
        """Stop the runtime and the workers, close the log, wipe the plaintext."""
        try:
            self.runtime.close()
            if self.event_log is not None:
                self.event_log.close()
        finally:
            self._release()

    def __enter__(self) -> GuardedSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _example_feeds(backend: Any) -> dict[str, np.ndarray]:
    return _example_feeds_from_specs(backend.inputs())


def _example_feeds_from_specs(specs: Sequence[Any]) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in specs:
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
        feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


def _warm_up(backends: Sequence[Any], sanity: Any) -> None:
    """Run every member and the sanity checks once before the first real frame.

    The first call of an ONNX Runtime session allocates its arenas and the first
    call of a Numba kernel loads it from the cache (hundreds of milliseconds):
    without a warm-up the first frame would miss its deadline.
    """
    for backend in backends:
        feeds = _example_feeds(backend)
        outputs = backend.run(feeds)
        if sanity is not None:
            sanity.check_inputs(feeds)
            sanity.check_outputs(outputs)


def open_guarded(
    path: Path | str,
    *,
    trust: TrustStore,
    device_key: DeviceKey,
    state_dir: Path | str | None = None,
    event_log: bool = True,
    wrap: Callable[[str, Any], Any] | None = None,
    isolation: str = "auto",
) -> GuardedSession:
    """Open an ensemble bundle and start its guarded runtime.

    ``wrap(name, member)`` may replace each member (and ``"fallback"``) with a
    wrapper, which is how field tests inject faults.
    """
    from edgeguard.runtime.state import default_state_dir

    state = Path(state_dir) if state_dir is not None else default_state_dir()
    opened = _open(path, trust=trust, device_key=device_key, state_dir=state)
    try:
        return GuardedSession(
            opened,
            device_key=device_key,
            state_dir=state,
            event_log=event_log,
            wrap=wrap,
            isolation=isolation,
        )
    except BaseException:
        opened.wipe()
        raise

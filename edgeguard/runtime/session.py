"""The device session: one road from a bundle file to a guarded answer.

Layer: :mod:`edgeguard.runtime`. :func:`open_session` is the only place that turns a
bundle's signed slots into running parts; the library (:func:`edgeguard.api.open_session`),
every CLI command, the examples and the benchmarks go through it, so a program cannot
reach a model's outputs with fewer checks than its signer decided. In order:

1. open the bundle (:mod:`edgeguard.runtime.opener`): signature, length and payload
   digest, the typed signed slots, expiry, device, anti-rollback, then - once this
   process can no longer dump core (``RLIMIT_CORE`` 0, not dumpable) - HPKE unwrap and
   decryption into locked memory;
2. the **isolation floor**: the signed requirements decide the least isolation the
   members may run with; asking for less (``isolation="threads"`` when a layer is
   required) is refused with :class:`~edgeguard.errors.PolicyError`, unless the
   caller names the ``unsafe_in_process`` bypass, which is logged;
3. the event log (hash-chained, checkpoints signed with the device key) in the state
   directory, closed with a final checkpoint on every way out of the session;
4. the checks of every request: the members' signed I/O contract, then the signed
   sanity profile (:class:`~edgeguard.guard.checks.FrameChecks`);
5. the members and the fallback model in sandboxed worker processes (default) or
   threads, placed as the policy says, warmed up; a member compiled on this device
   earlier (ONNX Runtime's ORT-format model, a TensorRT plan built from the signed
   recipe) is loaded from the sealed engine cache, else compiled while it loads and
   sealed (:mod:`edgeguard.runtime.enginecache`, ``docs/engine-cache.md``);
6. the guarded runtime (:class:`~edgeguard.runtime.guarded.GuardedRuntime`) with the
   signed runtime policy; a bundle with one model is a policy with one member;
7. only then the release version is recorded in the anti-rollback store, checked again
   under its lock (a higher release recorded meanwhile by a concurrent open refuses this
   one, and the started parts are stopped), and the decrypted model bytes of this
   process are wiped (the workers hold their own).

Nothing here imports ``onnx`` or the packaging code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeguard.bundle.model import Manifest
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.keys import DeviceKey
from edgeguard.errors import BackendError, MalformedError, PolicyError, UsageError
from edgeguard.guard.checks import FrameChecks
from edgeguard.guard.eventlog import EventLog
from edgeguard.guard.health import HealthState, TransitionCallback
from edgeguard.guard.loganchor import LogAnchor, counter_from_env
from edgeguard.guard.metrics import Metrics
from edgeguard.guard.sanity.check import Impl
from edgeguard.guard.sanity.spec import Verdict
from edgeguard.policy.io import TensorSpec
from edgeguard.policy.runtime import FALLBACK_NAME, RuntimePolicy
from edgeguard.policy.slots import SignedSlots
from edgeguard.runtime import devicestats
from edgeguard.runtime.devicestats import DeviceCheckedMember, DeviceCheckSpec
from edgeguard.runtime.guarded import GuardedResult, GuardedRuntime, MemberExecutor
from edgeguard.runtime.opener import OpenedBundle, VerifiedBundle, open_bundle, record_opened
from edgeguard.runtime.state import default_state_dir, ensure_state_dir

if TYPE_CHECKING:
    from edgeguard.crypto.enginecache import Binding
    from edgeguard.runtime.enginecache import EngineCache
    from edgeguard.runtime.sandbox.area import IoArea

__all__ = [
    "ISOLATIONS",
    "DeadlineCheck",
    "DeviceSession",
    "ExecutorWrapper",
    "check_on_device",
    "open_session",
    "split_frames",
]

#: Where members may run: sandboxed worker processes, or threads of this process.
ISOLATIONS = ("sandbox", "threads")
#: Timed runs per member when the session checks the signed deadline at start.
_DEADLINE_CHECK_RUNS = 3
#: Wraps the session's member executor (fault injection for field tests).
ExecutorWrapper = Callable[[MemberExecutor], MemberExecutor]
#: ``progress(member, phase, done, total)`` of a TensorRT build on this device.
BuildProgress = Callable[[str, str, int, int], None]
#: At close, how long to wait for in-process member calls still running (threads).
DRAIN_S = 5.0
_ARTIFACT_SEALS = 0x1 | 0x2 | 0x4 | 0x8  # F_SEAL_SEAL | SHRINK | GROW | WRITE


@dataclass(frozen=True)
class DeadlineCheck:
    """The members timed on this device at start, against what ``build`` measured.

    Attributes:
        deadline_ms: The signed deadline.
        build_ms: Member -> its slowest run on the build host (the signed basis).
        device_ms: Member -> its slowest run here, on frames of the same shapes.
        slow: Whether this device is too slow for the deadline: a member takes more
            than half of it on one frame (the rest is for the checks, the vote, the
            fallback model and a busy moment).
    """

    deadline_ms: float
    build_ms: Mapping[str, float]
    device_ms: Mapping[str, float]
    slow: bool

    def describe(self) -> str:
        """One line for people."""
        parts = ", ".join(
            f"{n.replace(FALLBACK_NAME, 'fallback')} {self.device_ms[n]:.1f} ms here "
            f"({self.build_ms[n]:.1f} ms at build)"
            for n in sorted(self.device_ms)
        )
        return f"deadline {self.deadline_ms:g} ms; {parts}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (the event log's ``deadline_check`` record)."""
        return {
            "deadline_ms": self.deadline_ms,
            "build_ms": dict(self.build_ms),
            "device_ms": dict(self.device_ms),
            "slow": self.slow,
        }


@dataclass(frozen=True)
class _Parts:
    """What a started session holds (built by :func:`open_session`)."""

    executor: Any
    runtime: GuardedRuntime | None = None
    backends: tuple[Any, ...] = ()
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    io_area: IoArea | None = None  # the sandbox's shared memory (None in threads)
    deadline_check: DeadlineCheck | None = None
    checks: FrameChecks | None = None

    def close(self) -> int:
        """Stop the runtime (or the executor, before a runtime exists) and the backends.

        In-process members: wait up to :data:`DRAIN_S` for calls still running (a late
        call that was abandoned keeps running in native code), so that no backend is
        closed, and no interpreter shuts down, under a running inference.

        Returns:
            The in-process member calls still running afterwards (0 with sandboxed
            members: those are killed).
        """
        stranded = 0
        try:
            if self.runtime is not None:
                self.runtime.close()
            else:
                self.executor.close()
        finally:
            drain = getattr(self.executor, "drain", None)
            if drain is not None:
                stranded = int(drain(DRAIN_S))
            for b in self.backends:
                with contextlib.suppress(Exception):
                    b.close()
        return stranded


class DeviceSession:
    """A bundle opened on this device and served under everything its signer decided.

    Made by :func:`open_session`. Use it as a context manager, or call :meth:`close`:
    closing stops the workers and ends the event log with a signed final checkpoint.

    Attributes:
        manifest: The signed manifest.
        slots: The typed signed slots (runtime policy, isolation, sanity profile, I/O).
        manifest_digest: SHA-256 of the signed header (identifies this exact release).
        isolation: ``"sandbox"`` or ``"threads"``, as the members run.
        unsafe_in_process: True when the isolation floor was bypassed (logged).
        log_path: The event log, or None without one.
        deadline_check: The members timed at start against the build host's
            measurement, when the deadline was measured at build (else None).
        clock: The time the bundle's expiry was checked at; ``clock.behind_floor``
            warns that the clock lay too far behind the device's time floor (the
            event log records it as ``clock_behind_floor``).
    """

    def __init__(
        self,
        verified: VerifiedBundle,
        parts: _Parts,
        *,
        event_log: EventLog | None,
        isolation: str,
        unsafe_in_process: bool,
    ) -> None:
        self.manifest: Manifest = verified.manifest
        self.slots: SignedSlots = verified.slots
        self.manifest_digest = verified.manifest_digest
        self.isolation = isolation
        self.unsafe_in_process = unsafe_in_process
        if parts.runtime is None:
            raise UsageError("a session needs a started runtime")
        self._parts = parts
        self._runtime: GuardedRuntime = parts.runtime
        self._log = event_log
        self.log_path: Path | None = event_log.path if event_log is not None else None
        self.deadline_check = parts.deadline_check
        self.clock = verified.clock
        self._closed = False

    # -- what runs ------------------------------------------------------------------------

    @property
    def policy(self) -> RuntimePolicy:
        """The runtime policy in force (signed, or the single-model default)."""
        return self.slots.runtime

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The inputs every member takes (from the signed I/O contract where present)."""
        return self._parts.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The first member's outputs (empty when the bundle has no I/O contract)."""
        return self._parts.outputs

    @property
    def runtime(self) -> GuardedRuntime:
        """The guarded runtime (for health transitions and metrics)."""
        return self._runtime

    @property
    def metrics(self) -> Metrics:
        """The session's metrics."""
        return self._runtime.metrics

    @property
    def health(self) -> HealthState:
        """The health state after the last request."""
        return self._runtime.health

    def on_transition(self, callback: TransitionCallback) -> None:
        """Call ``callback(transition)`` after every health state change."""
        self._runtime.on_transition(callback)

    def worker_status(self, name: str) -> Any:
        """The sandboxed worker of member ``name`` (None when members run in threads)."""
        ex = self._parts.executor
        return ex.status(name) if self.isolation == "sandbox" else None

    # -- requests -------------------------------------------------------------------------

    def infer(
        self, feeds: Mapping[str, np.ndarray], *, client_id: str | None = None
    ) -> GuardedResult:
        """Answer one request with its source, health state, reasons and latencies.

        Raises:
            InputRejectedError: The input breaks the I/O contract or the sanity
                profile and the policy has no answer for a rejected input.
            InputRefusedError: The input passed those checks but every model refused
                it (for example, larger than a sandboxed member's shared memory: the
                hint names ``sandbox_io_bytes``), and no later step answered.
            BackendError: No step of the fallback chain answered.
            RateLimitedError: ``client_id`` exceeded the signed rate limit.
            UsageError: The session is closed.
        """
        if self._closed:
            raise UsageError("the session is closed")
        return self._runtime.infer(feeds, client_id=client_id)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs for one request (see :meth:`infer` for the errors)."""
        return self.infer(feeds).outputs

    def check_inputs(
        self, feeds: Mapping[str, np.ndarray], prev: Mapping[str, np.ndarray] | None = None
    ) -> Verdict:
        """The verdict of the signed checks on a request, without running any model.

        The same checks :meth:`infer` applies first (the I/O contract, then the sanity
        profile); ``prev`` is the previous frame for the frame-to-frame statistics. For
        dry runs and for measuring the guard (:mod:`edgeguard.fieldtest.quality`).
        """
        if self._closed:
            raise UsageError("the session is closed")
        assert self._parts.checks is not None
        return self._parts.checks.check_inputs(feeds, prev)

    # -- end ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the members, close the event log (final checkpoint). Idempotent.

        With members in threads, waits up to :data:`DRAIN_S` for member calls still
        running; if one still is (``edgeguard.runtime.threads.running_calls()``), end the
        process with ``os._exit`` after flushing (see ``docs/failsafe.md``).
        """
        if self._closed:
            return
        self._closed = True
        stranded = 0
        try:
            stranded = self._parts.close()
        finally:
            if self._log is not None:
                data: dict[str, Any] = {"bundle": self.manifest.name}
                if stranded:
                    data["member_calls_running"] = stranded
                with contextlib.suppress(Exception):
                    self._log.append("session_close", data)
                self._log.close()

    def __enter__(self) -> DeviceSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _floor(slots: SignedSlots, isolation: str, unsafe_in_process: bool, name: str) -> bool:
    """Check the requested isolation against the signed floor; True when it is bypassed."""
    if isolation not in ISOLATIONS:
        raise UsageError(f"isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
    required = slots.isolation.required_layers()
    if isolation == "sandbox" or not required:
        return False
    if not unsafe_in_process:
        raise PolicyError(
            f"bundle {name!r} requires isolation ({', '.join(required)}); its members cannot "
            "run in threads of this process",
            hint="run them sandboxed (the default); a development bypass is "
            "unsafe_in_process=True (--unsafe-in-process), which the event log records",
        )
    return True


def check_on_device(
    path: Path | str,
    *,
    trust: TrustStore,
    device_key: DeviceKey,
    state_dir: Path | str | None = None,
    isolation: str = "sandbox",
    unsafe_in_process: bool = False,
    now: int | None = None,
) -> VerifiedBundle:
    """Everything :func:`open_session` checks before it starts members, read-only.

    The signature, the signed slots, expiry, device, anti-rollback (nothing is
    recorded), decryption and every member's plaintext digest, the isolation floor
    and, for sandboxed members, whether this host offers every required layer. The
    plaintext is wiped before this returns. ``edgeguard verify --device-key`` and
    ``edgeguard attest quote`` use it.

    Raises:
        The errors of :func:`open_session` before any member starts.
    """
    opened = open_bundle(
        path,
        trust=trust,
        device_key=device_key,
        state_dir=_state(state_dir),
        now=now,
        record_version=False,
        check_plaintext_digests=True,
    )
    try:
        _floor(opened.slots, isolation, unsafe_in_process, opened.manifest.name)
        if isolation == "sandbox":
            from edgeguard.runtime.sandbox.probe import check_policy, probe_host

            check_policy(opened.slots.isolation, probe_host())  # PolicyError when unmet
    finally:
        opened.wipe()
    return opened


def _state(state_dir: Path | str | None) -> Path:
    return Path(state_dir) if state_dir is not None else default_state_dir()


def open_session(
    path: Path | str,
    *,
    trust: TrustStore,
    device_key: DeviceKey,
    state_dir: Path | str | None = None,
    isolation: str = "sandbox",
    event_log: bool = True,
    executor_wrapper: ExecutorWrapper | None = None,
    unsafe_in_process: bool = False,
    sanity_impl: Impl = "auto",
    now: int | None = None,
    sandbox_io_bytes: int | None = None,
    engine_cache: bool = True,
    worker_user: str | None = None,
    worker_groups: Sequence[str] | None = None,
    sanity_on_device: bool = True,
    progress: BuildProgress | None = None,
) -> DeviceSession:
    """Open a bundle as this device and start serving it under its signed slots.

    Args:
        path: The bundle file.
        trust: Trusted signer keys.
        device_key: This device's key (recipient, identity, event-log signer).
        state_dir: Anti-rollback state and event log directory; None means the
            documented default, so rollback protection is never off by accident.
        isolation: ``"sandbox"`` (default): members in locked-down worker processes;
            ``"threads"``: in this process, allowed only when the bundle requires no
            isolation layer.
        event_log: Keep the event log (``events.log`` in the state directory),
            anchored in ``eventlog.anchor`` there and, when ``$EDGEGUARD_TPM``
            names the device's TPM, in a TPM NV counter (``docs/eventlog.md``).
        executor_wrapper: Wraps the member executor, e.g. a fault injector for field
            tests (:class:`~edgeguard.fieldtest.faults.FaultyExecutor`); recorded in
            the event log.
        unsafe_in_process: Run members in threads even though the bundle requires
            isolation. For development only; recorded in the event log.
        sanity_impl: Statistics implementation of the sanity checks (``"auto"``).
        now: Current time in Unix seconds (tests).
        sandbox_io_bytes: Shared memory per call and direction that a sandboxed
            member gets for the inputs and outputs whose size nothing signed bounds
            (a dynamic dimension without a calibrated or engine maximum); None: 32 MiB.
            The area is otherwise sized from the signed I/O contract, and always within
            the signed memory limit of a worker (``docs/isolation.md``).
        engine_cache: Keep what is compiled on this device (each CPU ONNX member's
            optimised model in ONNX Runtime's ORT format; the TensorRT plan of a GPU or
            DLA member with a signed recipe) sealed under a key derived from
            ``device_key`` in ``<state>/engines``, and load it instead of compiling at
            the next start (``docs/engine-cache.md``). False: read and write no cache
            (CPU members load their ONNX model; recipe members are built every start).
        worker_user: Service user (name or uid) that sandboxed workers started by root
            run as; None: ``$EDGEGUARD_WORKER_USER``, else ``nobody``. Never root.
        worker_groups: Supplementary groups (names or gids) of workers of GPU and DLA
            members (the groups owning the device nodes, ``video`` on Jetson); None:
            ``$EDGEGUARD_WORKER_GROUPS``, else the groups that own the nodes; empty: none.
            CPU members' workers never keep a group (``docs/isolation.md``).
        sanity_on_device: Compute the sanity statistics of the checked input on the
            device, next to the model, when every member is a TensorRT plan on a GPU
            whose process loads the CUDA C++ kernel (``docs/sanity.md``, "Where the
            statistics are computed"). False: always on the CPU, before the members
            run. Either way the event log records where (``sanity_on_device``).
        progress: Called as ``progress(member, phase, done, total)`` while a GPU or DLA
            member's TensorRT plan is built on this device (the first start; a build
            takes minutes on a Jetson): TensorRT's progress monitor, from the builder's
            threads in ``threads`` isolation and from the supervisor's thread (relayed
            from the worker, at most every 0.25 s and at each phase end) in ``sandbox``
            isolation. Never called when no build happens (a sandboxed build worker
            restarted while the session serves builds again, and reports it); an
            exception it raises is ignored.

    Returns:
        The started session.

    Raises:
        MalformedError, IntegrityError, UntrustedSignerError: The bundle is not
            well-formed, authentic or trusted.
        PolicyError: Expired, rolled back, another device, not a recipient, an
            isolation floor the request or the host cannot meet, a placement that
            cannot be honoured, or a sandbox I/O area beyond the signed memory limit.
        BackendError: A member could not be loaded or started.
        StateStoreError: The anti-rollback state or the event log's anchor
            cannot be read.
        LogRolledBackError: The event log is behind its anchor (cut back to an
            earlier checkpoint, replaced or deleted): an IntegrityError.
    """
    state = _state(state_dir)
    opened = open_bundle(
        path, trust=trust, device_key=device_key, state_dir=state, now=now, record_version=False
    )
    log: EventLog | None = None
    parts: _Parts | None = None
    try:
        slots = opened.slots
        bypass = _floor(slots, isolation, unsafe_in_process, opened.manifest.name)
        if event_log:
            log = EventLog(
                ensure_state_dir(state) / "events.log",
                signing_key=device_key.attest,
                anchor=LogAnchor(state, counter=counter_from_env()),
            )
            log.append(
                "session_open",
                {
                    "bundle": opened.manifest.name,
                    "version": opened.manifest.version,
                    "manifest_sha256": opened.manifest_digest.hex(),
                    "signer": opened.signer.key_id.hex(),
                    "isolation": isolation,
                    "required_isolation": list(slots.isolation.required_layers()),
                },
            )
            if opened.clock is not None and opened.clock.behind_floor:
                log.append("clock_behind_floor", opened.clock.to_dict())
            if bypass:
                log.append(
                    "unsafe_isolation_bypass",
                    {"required": list(slots.isolation.required_layers()), "isolation": isolation},
                )
            if executor_wrapper is not None:
                log.append("fault_injection", {"wrapper": _describe(executor_wrapper)})
        cache = _engine_cache(state, device_key, log) if engine_cache else None
        try:
            parts = _start(
                opened,
                isolation,
                log,
                executor_wrapper,
                sanity_impl,
                _Workers(sandbox_io_bytes, worker_user, _groups(worker_groups)),
                cache,
                sanity_on_device,
                progress,
            )
        finally:
            if cache is not None:
                cache.close()
        record_opened(opened, state)
    except BaseException as exc:
        if parts is not None:
            parts.close()
        if log is not None:
            with contextlib.suppress(Exception):
                log.append(
                    "session_failed", {"error": type(exc).__name__, "message": str(exc)[:500]}
                )
            with contextlib.suppress(Exception):
                log.close()
        opened.wipe()
        raise
    opened.wipe()  # the workers (or the loaded backends) hold what they need
    return DeviceSession(
        opened, parts, event_log=log, isolation=isolation, unsafe_in_process=bypass
    )


def _engine_cache(state: Path, device_key: DeviceKey, log: EventLog | None) -> EngineCache | None:
    from edgeguard.crypto.enginecache import derive_cache_key
    from edgeguard.runtime.enginecache import open_cache

    return open_cache(state, derive_cache_key(device_key), event_log=log)


def _cacheable(opened: OpenedBundle, name: str, *, accelerator: bool) -> Binding | None:
    """The engine cache binding of a member ONNX Runtime compiles on this CPU, else None."""
    if accelerator or opened.manifest.member(name).format != "onnx":
        return None
    import hashlib

    from edgeguard.backends.onnxruntime import ARTIFACT_RECIPE, library_version
    from edgeguard.crypto.encoding import canonical_cbor
    from edgeguard.crypto.enginecache import Binding
    from edgeguard.runtime.enginecache import cpu_identity

    return Binding(
        bundle=opened.manifest.name,
        manifest_sha256=opened.manifest_digest,
        member=name,
        member_sha256=opened.manifest.member(name).digest.value,
        recipe_sha256=hashlib.sha256(canonical_cbor(ARTIFACT_RECIPE)).digest(),
        kind="ort-model",
        library=library_version(),
        hardware=cpu_identity(),
    )


def _artifact_memfd(name: str) -> int:
    """An empty memfd for a compiled artifact (sealable, close-on-exec)."""
    return os.memfd_create(name[:200], os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)


def _trt_recipe(opened: OpenedBundle, name: str, *, accelerator: bool) -> dict[str, Any] | None:
    """The signed engine recipe of an ONNX member placed on a GPU or DLA core, else None."""
    engines = opened.slots.engines
    if not accelerator or engines is None or opened.manifest.member(name).format != "onnx":
        return None
    recipe = engines.members.get(name)
    return None if recipe is None else recipe.to_dict()


#: A compiled artifact is at most this many times its ONNX member, and never held to less
#: than :data:`ARTIFACT_FLOOR` (a TensorRT plan of a small model carries its kernels).
ARTIFACT_FACTOR = 8
ARTIFACT_FLOOR = 64 << 20


def _artifact_max(cache: EngineCache, opened: OpenedBundle, name: str) -> int:
    """What a compiling worker may write for member ``name``: bounded by its model's size,
    so a compromised worker cannot make the supervisor lock and seal the cache's limit."""
    size = len(memoryview(opened.member_bytes(name)).cast("B"))
    return min(cache.limits.max_artifact_bytes, max(ARTIFACT_FLOOR, ARTIFACT_FACTOR * size))


def _trt_where(where: Any, recipe: Mapping[str, Any]) -> dict[str, Any]:
    """Loader options of a plan: ``device_id`` and ``dla_core`` of a GPU or DLA placement,
    and ``allow_host_code`` when the member's signed recipe allows host code (a plan built
    from it may carry TensorRT's lean runtime, which the runtime refuses otherwise)."""
    if where.unit == "dla":
        loc: dict[str, Any] = {"device_id": 0, "dla_core": where.index}
    else:
        loc = {"device_id": where.index or 0, "dla_core": None}
    if recipe.get("engine_host_code_allowed") is True:
        loc["allow_host_code"] = True
    return loc


def _trt_binding(
    opened: OpenedBundle, name: str, recipe: Mapping[str, Any], identity: Mapping[str, str]
) -> Binding:
    """The binding of a TensorRT plan built here from member ``name`` and its recipe."""
    import hashlib

    from edgeguard.crypto.encoding import canonical_cbor
    from edgeguard.crypto.enginecache import Binding

    hw = {
        k: identity[k][:256] for k in ("gpu_name", "compute_capability", "driver") if k in identity
    }
    return Binding(
        bundle=opened.manifest.name,
        manifest_sha256=opened.manifest_digest,
        member=name,
        member_sha256=opened.manifest.member(name).digest.value,
        recipe_sha256=hashlib.sha256(canonical_cbor(dict(recipe))).digest(),
        kind="trt-plan",
        library=f"tensorrt {identity.get('tensorrt', 'unknown')}"[:256],
        hardware=hw,
    )


def _timing_binding(identity: Mapping[str, str]) -> Binding:
    """The binding of this device's TensorRT timing cache (``docs/engine-cache.md``).

    Bound to the TensorRT version and the GPU (name, compute capability, driver), not to
    a bundle, member or recipe: one entry per device, reused by every later build.
    """
    from edgeguard.crypto.enginecache import DEVICE_WIDE, Binding

    hw = {
        k: identity[k][:256] for k in ("gpu_name", "compute_capability", "driver") if k in identity
    }
    return Binding(
        bundle="",
        manifest_sha256=DEVICE_WIDE,
        member="",
        member_sha256=DEVICE_WIDE,
        recipe_sha256=DEVICE_WIDE,
        kind="trt-timing",
        library=f"tensorrt {identity.get('tensorrt', 'unknown')}"[:256],
        hardware=hw,
    )


def _calibration(opened: OpenedBundle, recipe: Mapping[str, Any]) -> memoryview | None:
    """The plaintext of the recipe's INT8 calibration member, or None when it names none.

    Raises:
        MalformedError: The recipe names a member the bundle lacks, or one not in ``npz``.
    """
    name = recipe.get("int8_calibration_member")
    if name is None:
        return None
    try:
        fmt = opened.manifest.member(str(name)).format
    except KeyError:
        raise MalformedError(
            f"the engine recipe names the INT8 calibration member {name!r}, "
            "which the bundle does not have",
            hint="rebuild the bundle with `edgeguard build --int8`",
        ) from None
    if fmt != "npz":
        raise MalformedError(
            f"the INT8 calibration member {name!r} is in format {fmt!r}, not npz",
            hint="rebuild the bundle with `edgeguard build --int8`",
        )
    return opened.member_bytes(str(name))


def _sealed_bytes(cache: EngineCache, binding: Binding) -> bytes | None:
    """The plaintext of a sealed entry (the timing cache), or None on a miss."""
    buf = cache.load(binding)
    if buf is None:
        return None
    try:
        with buf.view() as view:
            return bytes(view)
    finally:
        buf.wipe()


def _member_progress(
    progress: BuildProgress | None, name: str
) -> Callable[[str, int, int], None] | None:
    if progress is None:
        return None

    def on(phase: str, done: int, total: int) -> None:
        with contextlib.suppress(Exception):  # a display never cancels a build
            progress(name, phase, done, total)

    return on


def _prebuilt_plan(
    opened: OpenedBundle,
    name: str,
    identity: Mapping[str, str],
    log: EventLog | None,
    *,
    mismatch: Callable[[Any, Mapping[str, str]], str | None] | None = None,
) -> str | None:
    """The prebuilt plan member that replaces ONNX member ``name`` on this device, or None.

    A plan built on the build host (a ``prebuilt`` tag of the signed engine recipe) runs
    only where TensorRT and the GPU match its tag; it is refused **before** TensorRT
    deserialises it when they do not (``engine_prebuilt_refused`` with the reason), and
    the member is built here from its ONNX model instead. ``mismatch`` is
    ``edgeguard.policy.engine.prebuilt_mismatch``.
    """
    engines = opened.slots.engines
    tags = [t for t in getattr(engines, "prebuilt", ()) if t.for_member == name]
    if not tags:
        return None
    if mismatch is None:
        from edgeguard.policy import engine as engine_policy

        mismatch = getattr(engine_policy, "prebuilt_mismatch", None)
    tag = tags[0]
    why = (
        "this edgeguard cannot check prebuilt tags" if mismatch is None else mismatch(tag, identity)
    )
    if why is None:
        return str(tag.member)
    if log is not None:
        log.append(
            "engine_prebuilt_refused", {"member": name, "plan": tag.member, "reason": why[:300]}
        )
    return None


def _load_trt(
    opened: OpenedBundle,
    name: str,
    where: Any,
    recipe: Mapping[str, Any],
    cache: EngineCache | None,
    log: EventLog | None,
    progress: BuildProgress | None = None,
) -> Any:
    """A GPU/DLA member in this process: its sealed plan, or a plan built here (recorded).

    A build gets ``progress`` (for this member), the recipe's INT8 calibration frames,
    and, when the recipe keeps a timing cache and the engine cache is on, this device's
    sealed timing cache; the updated timing cache is sealed after the build.
    """
    import time

    from edgeguard.backends import device_identity, load_backend

    loc = _trt_where(where, recipe)
    binding = None
    identity = device_identity(device_id=loc["device_id"])
    plan = _prebuilt_plan(opened, name, identity, log)
    if plan is not None:
        return load_backend("trt-engine", opened.member_bytes(plan), **loc)
    if cache is not None:
        binding = _trt_binding(opened, name, recipe, identity)
        sealed = _load_sealed(cache, binding, "trt-plan", loc)
        if sealed is not None:
            return sealed
    cal = _calibration(opened, recipe)
    build: dict[str, Any] = {}
    if cal is not None:
        build["calibration"] = cal
    on = _member_progress(progress, name)
    if on is not None:
        build["progress"] = on
    timing = None
    if cache is not None and recipe.get("timing_cache"):
        timing = _timing_binding(identity)
        old = _sealed_bytes(cache, timing)
        if old is not None:
            build["timing_cache"] = old
    fd = _artifact_memfd(f"edgeguard-plan-{name}") if cache else None
    tfd = _artifact_memfd("edgeguard-timing-cache") if timing is not None else None
    try:
        t0 = time.perf_counter()
        backend = load_backend(
            "trt-build",
            opened.member_bytes(name),
            recipe=recipe,
            artifact_fd=fd,
            timing_cache_fd=tfd,
            **build,
            **loc,
        )
        if log is not None:
            log.append(
                "engine_build",
                {
                    "member": name,
                    "where": str(where),
                    "ms": round((time.perf_counter() - t0) * 1e3, 1),
                },
            )
        try:
            if fd is not None and cache is not None and binding is not None:
                _seal_memfd(cache, binding, fd)
            if tfd is not None and cache is not None and timing is not None:
                _seal_memfd(cache, timing, tfd)
        except BaseException:
            backend.close()
            raise
        return backend
    finally:
        for f in (fd, tfd):
            if f is not None:
                os.close(f)


def _seal_memfd(cache: EngineCache, binding: Binding, fd: int, note: str | None = None) -> None:
    """Seal what the compiler wrote into the memfd ``fd`` (its plaintext stays in memory).

    The memfd is first sealed against any change (a worker that kept a descriptor cannot
    change or shrink it while it is read), then copied into locked memory.
    """
    import fcntl

    from edgeguard.runtime.secmem import SecretBuffer

    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _ARTIFACT_SEALS)
        sealed = fcntl.fcntl(fd, fcntl.F_GET_SEALS) & _ARTIFACT_SEALS == _ARTIFACT_SEALS
    except OSError:
        sealed = False
    size = os.fstat(fd).st_size
    if note is None and not sealed:
        note = "the artifact memfd could not be sealed against changes"
    if note is not None or size == 0:
        cache.record("engine_cache_skipped", binding, reason=note or "nothing was written")
        return
    if size > cache.limits.max_artifact_bytes:
        cache.record("engine_cache_skipped", binding, reason=f"artifact of {size} bytes")
        return
    buf = SecretBuffer(size)
    try:
        with buf.view() as view:
            done = 0
            while done < size:
                n = os.preadv(fd, [view[done:]], done)
                if n <= 0:
                    cache.record("engine_cache_skipped", binding, reason="short read")
                    return
                done += n
            cache.store(binding, view)
    finally:
        buf.wipe()


def _load_member(
    fmt: str,
    data: memoryview,
    opts: Mapping[str, Any],
    cache: EngineCache | None,
    binding: Binding | None,
) -> Any:
    """Load a member in this process: from its sealed artifact, or compile and seal it."""
    import os

    from edgeguard.backends import load_backend

    if cache is None or binding is None:
        return load_backend(fmt, data, **opts)
    sealed = _load_sealed(cache, binding, "ort-model", opts)
    if sealed is not None:
        return sealed
    fd = _artifact_memfd(f"edgeguard-artifact-{binding.member}")
    try:
        backend = load_backend(fmt, data, save_artifact_fd=fd, **opts)
        try:
            _seal_memfd(cache, binding, fd)
        except BaseException:
            backend.close()
            raise
        return backend
    finally:
        os.close(fd)


def _describe(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", type(fn).__name__))[:200]


@dataclass(frozen=True)
class _Workers:
    """How sandboxed workers start: their I/O floor and the identity they run as."""

    io_bytes: int | None
    user: str | None
    groups: tuple[str, ...] | None


def _groups(groups: Sequence[str] | None) -> tuple[str, ...] | None:
    if groups is None:
        return None
    if isinstance(groups, str) or not all(isinstance(g, str) for g in groups):
        raise UsageError("worker_groups must be a sequence of group names or gids")
    return tuple(groups)


def _start(
    opened: OpenedBundle,
    isolation: str,
    log: EventLog | None,
    wrapper: ExecutorWrapper | None,
    sanity_impl: Impl,
    workers: _Workers,
    cache: EngineCache | None = None,
    sanity_on_device: bool = True,
    progress: BuildProgress | None = None,
) -> _Parts:
    """Checks, members and the guarded runtime for an opened bundle."""
    slots = opened.slots
    contract = slots.member_io(slots.runtime.members[0].name)
    sanity = None
    if slots.sanity is not None:
        from edgeguard.guard.sanity.check import SanityGuard

        # threads=1: the members' ONNX Runtime pools hold the other cores
        sanity = SanityGuard(slots.sanity, impl=sanity_impl, threads=1)
    checks = FrameChecks(contract.inputs if contract is not None else None, sanity)
    plan, why_not = _device_plan(opened, sanity_on_device)
    if isolation == "sandbox":
        members, parts = _start_sandbox(opened, log, workers, cache, plan, progress)
    else:
        members, parts = _start_threads(opened, log, cache, plan, progress)
    on_device: frozenset[str] = frozenset()
    if plan is not None:
        missing = _device_check_missing(parts.executor, members, slots.runtime, isolation)
        if missing is None:
            on_device = frozenset({plan.input})
        else:
            why_not = missing
    if log is not None and slots.sanity is not None:
        log.append(
            "sanity_on_device",
            {
                "on": bool(on_device),
                "inputs": sorted(on_device),
                "reason": why_not or "every member computes them next to its TensorRT model",
            },
        )
    try:
        runtime = GuardedRuntime(
            members,
            policy=slots.runtime,
            fallback=members.pop(FALLBACK_NAME, None),
            sanity=checks,
            event_log=log,
            executor=parts.executor if wrapper is None else wrapper(parts.executor),
            device_stats=on_device,
        )
    except BaseException:
        parts.close()
        raise
    inputs = contract.inputs if contract is not None else parts.inputs
    try:
        check = _check_deadline(parts.executor, slots.runtime, inputs)
    except BaseException:
        runtime.close()
        parts.close()
        raise
    if check is not None and log is not None:
        log.append("deadline_check", check.to_dict())
    return dataclasses.replace(
        parts,
        runtime=runtime,
        outputs=contract.outputs if contract is not None else (),
        inputs=inputs,
        deadline_check=check,
        checks=checks,
    )


def _device_plan(opened: OpenedBundle, wanted: bool) -> tuple[DeviceCheckSpec | None, str]:
    """What the members' device checks read, or None and why the statistics stay on the CPU.

    The device computes the statistics only when the bundle has a sanity profile with
    exactly one checked input (the TensorRT backend runs one device check per frame),
    and every member is a TensorRT plan on a GPU: a CPU member needs them on the CPU
    anyway, and a DLA member's stream has not been considered for the kernel.
    """
    profile = opened.slots.sanity
    if profile is None:
        return None, "no sanity profile"
    if not wanted:
        return None, "statistics on the CPU as asked (sanity_on_device=False)"
    if len(profile.inputs) != 1:
        return None, (
            f"the profile checks {len(profile.inputs)} inputs; the device check reads one per frame"
        )
    for m in opened.slots.runtime.members:
        trt = (
            _trt_recipe(opened, m.name, accelerator=m.where.accelerator) is not None
            or opened.manifest.member(m.name).format == "trt-engine"
        )
        if m.where.unit != "gpu" or not trt:
            return None, f"member {m.name!r} is not a TensorRT plan on a GPU ({m.where})"
    p = profile.inputs[0]
    return DeviceCheckSpec(
        p.name, p.layout, p.sat_lo, p.sat_hi, factory=devicestats.DEVICE_CHECK
    ), ""


def _device_check_missing(
    executor: Any, members: Mapping[str, Any], policy: RuntimePolicy, isolation: str
) -> str | None:
    """Why some member started without its device check, or None when every member has it."""
    for m in policy.members:
        if isolation == "sandbox":
            note = str(executor.device_check(m.name))
            if note != "active":
                return f"member {m.name!r}: device check {note}"
        elif not isinstance(members.get(m.name), DeviceCheckedMember):
            return f"member {m.name!r}: device check unavailable"
    return None


def _check_deadline(
    executor: Any, policy: RuntimePolicy, inputs: Sequence[TensorSpec]
) -> DeadlineCheck | None:
    """Time each member on frames of the build's shapes (the raw executor, no faults)."""
    basis = policy.deadline_basis
    if basis is None:
        return None
    dtypes = {s.name: s.dtype for s in inputs}
    if set(basis.shapes) - set(dtypes):
        return None  # the contract and the basis disagree: nothing comparable to time
    feeds = {n: np.zeros(shape, dtype=dtypes[n]) for n, shape in basis.shapes.items()}
    timeout = max(5.0, 10 * policy.deadline_ms / 1e3)
    device: dict[str, float] = {}
    for name in basis.measured_ms:
        runs = []
        for _ in range(_DEADLINE_CHECK_RUNS):
            call = executor.submit(name, feeds)
            if not call.wait(timeout):
                executor.abandon(name)
                break
            try:
                call.result()
            except Exception:
                break
            if call.run_ns is not None:
                runs.append(call.run_ns / 1e6)
        if runs:
            device[name] = round(max(runs), 3)
    if not device:
        return None
    slow = max(device.values()) > 0.5 * policy.deadline_ms
    return DeadlineCheck(
        deadline_ms=policy.deadline_ms,
        build_ms={n: basis.measured_ms[n] for n in device},
        device_ms=device,
        slow=slow,
    )


def _start_sandbox(
    opened: OpenedBundle,
    log: EventLog | None,
    workers: _Workers,
    cache: EngineCache | None = None,
    device: DeviceCheckSpec | None = None,
    progress: BuildProgress | None = None,
) -> tuple[dict[str, Any], _Parts]:
    """Members (and the fallback, under FALLBACK_NAME) in sandboxed worker processes."""
    from edgeguard.runtime.placement import cpu_member_count, loader_options
    from edgeguard.runtime.sandbox.executor import WorkerSpec

    slots, manifest = opened.slots, opened.manifest
    n_cpu = cpu_member_count(slots.runtime)
    specs: dict[str, WorkerSpec] = {}
    bindings: dict[str, Binding] = {}
    timings: dict[str, Binding] = {}  # members whose build keeps the timing cache
    held: list[Any] = []  # decrypted artifacts, wiped once the workers hold their copies

    def spec(key: str, name: str, fmt: str, accel: bool, **kw: Any) -> WorkerSpec:
        recipe = _trt_recipe(opened, name, accelerator=accel)
        if recipe is not None:
            return trt_spec(key, name, recipe, **kw)
        binding = _cacheable(opened, name, accelerator=accel) if cache is not None else None
        if cache is None or binding is None:
            return WorkerSpec(opened.member_bytes(name), fmt=fmt, **kw)
        bindings[key] = binding
        buf = cache.load(binding)
        if buf is None:
            return WorkerSpec(
                opened.member_bytes(name),
                fmt=fmt,
                artifact_max=_artifact_max(cache, opened, name),
                **kw,
            )
        held.append(buf)
        return WorkerSpec(buf.view(), fmt="ort-model", **kw)

    def trt_spec(key: str, name: str, recipe: dict[str, Any], **kw: Any) -> WorkerSpec:
        from edgeguard.backends import TRT_BUILDER, TRT_PLAN_LOADER, device_identity

        where = next(m.where for m in slots.runtime.members if m.name == name)
        loc = _trt_where(where, recipe)
        if TRT_PLAN_LOADER is not None:  # a test double (tests only)
            loc["plan_loader"] = TRT_PLAN_LOADER
        kw.pop("options", None)
        identity = device_identity(device_id=loc["device_id"])
        plan = _prebuilt_plan(opened, name, identity, log)
        if plan is not None:
            return WorkerSpec(opened.member_bytes(plan), fmt="trt-engine", options=loc, **kw)
        if cache is not None:
            bindings[key] = binding = _trt_binding(opened, name, recipe, identity)
            buf = cache.load(binding)
            if buf is not None:
                held.append(buf)
                return WorkerSpec(buf.view(), fmt="trt-plan", options=loc, **kw)
        timing = None
        if cache is not None and recipe.get("timing_cache"):
            timings[key] = _timing_binding(identity)
            timing = _sealed_bytes(cache, timings[key])
        return WorkerSpec(
            opened.member_bytes(name),
            fmt="trt-build",
            options={**loc, "recipe": recipe, "builder": TRT_BUILDER},
            artifact_max=None if cache is None else _artifact_max(cache, opened, name),
            calibration=_calibration(opened, recipe),
            timing_cache=timing,
            timing_cache_out=key in timings,
            **kw,
        )

    try:
        for s in slots.runtime.members:
            fmt = manifest.member(s.name).format
            cpus = s.where.cpus
            specs[s.name] = spec(
                s.name,
                s.name,
                fmt,
                s.where.accelerator,
                options=loader_options(
                    s, fmt, cpu_members=n_cpu, sandboxed=True, precisions=_precisions(slots, s.name)
                ),
                cpus=None if cpus is None else tuple(sorted(cpus)),
                outputs=_signed_outputs(slots, s.name),
                device_check=None
                if device is None
                else dataclasses.replace(device, device_id=s.where.index),
            )
        if slots.fallback is not None:
            specs[FALLBACK_NAME] = spec(
                FALLBACK_NAME,
                slots.fallback,
                manifest.member(slots.fallback).format,
                False,
                outputs=_signed_outputs(slots, slots.fallback),
            )
        executor, area = _sandbox_executor(
            opened, specs, log, workers, cache, bindings, progress, timings
        )
    finally:
        for buf in held:
            buf.wipe()
    members: dict[str, Any] = dict(executor.members())
    fallback = executor.fallback()
    if fallback is not None:
        members[FALLBACK_NAME] = fallback
    reported = executor.reported_inputs(slots.runtime.members[0].name)
    return members, _Parts(executor=executor, inputs=reported or (), io_area=area)


def _sandbox_executor(
    opened: OpenedBundle,
    specs: dict[str, Any],
    log: EventLog | None,
    workers: _Workers,
    cache: EngineCache | None,
    bindings: Mapping[str, Binding],
    progress: BuildProgress | None = None,
    timings: Mapping[str, Binding] | None = None,
) -> tuple[Any, IoArea]:
    """Start the workers; seal what each compiling worker wrote; retry a bad artifact."""
    from edgeguard.runtime.sandbox.area import io_area
    from edgeguard.runtime.sandbox.executor import ProcessMemberExecutor

    slots = opened.slots
    area = io_area(slots, names=specs, floor_bytes=workers.io_bytes)  # PolicyError
    if log is not None:
        log.append(
            "sandbox_io_area",
            {
                "half_bytes": area.half_bytes,
                "contract_bytes": area.contract_bytes,
                "floor_bytes": area.floor_bytes,
                "unbounded": list(area.unbounded),
            },
        )
    try:
        executor = ProcessMemberExecutor(
            specs,
            policy=slots.isolation,
            event_log=log,
            io_bytes=area.half_bytes,
            worker_user=workers.user,
            worker_groups=workers.groups,
            on_progress=progress,
        )
    except BackendError:
        cached = [k for k, v in specs.items() if v.fmt in ("ort-model", "trt-plan")]
        if cache is None or not cached:
            raise
        # a sealed artifact that opened but does not load: discard it, start from ONNX
        for key in cached:
            cache.discard(bindings[key], "load failed", "a worker failed to start")
        return _sandbox_executor(
            opened,
            {k: _from_onnx(opened, k, v, slots) for k, v in specs.items()},
            log,
            workers,
            None,
            {},
            progress,
        )
    if cache is not None:
        try:
            for key, binding in bindings.items():
                fd, note, load_ms = executor.take_artifact(key)
                if fd is not None and binding.kind == "trt-plan" and log is not None:
                    log.append(
                        "engine_build",
                        {"member": binding.member, "where": "sandbox worker", "ms": load_ms},
                    )
                if fd is None:
                    if note is not None:
                        cache.record("engine_cache_skipped", binding, reason=note)
                    continue
                try:
                    _seal_memfd(cache, binding, fd)
                finally:
                    os.close(fd)
            for key, binding in (timings or {}).items():
                tfd = executor.take_timing_cache(key)
                if tfd is not None:
                    try:
                        _seal_memfd(cache, binding, tfd)
                    finally:
                        os.close(tfd)
        except BaseException:
            executor.close()
            raise
    return executor, area


def _from_onnx(opened: OpenedBundle, key: str, spec: Any, slots: SignedSlots) -> Any:
    """``spec`` loading the member's ONNX bytes again (no cached artifact, no compile)."""
    if spec.fmt == "trt-plan":  # build again, nothing sealed
        engines = slots.engines
        assert engines is not None
        from edgeguard.backends import TRT_BUILDER

        opts = {**dict(spec.options), "recipe": engines.members[key].to_dict()}
        opts["builder"] = TRT_BUILDER
        return dataclasses.replace(
            spec,
            model=opened.member_bytes(key),
            fmt="trt-build",
            options=opts,
            artifact_max=None,
            calibration=_calibration(opened, opts["recipe"]),
        )
    if spec.fmt != "ort-model":
        return dataclasses.replace(spec, artifact_max=None)
    name = slots.fallback if key == FALLBACK_NAME else key
    assert name is not None
    return dataclasses.replace(spec, model=opened.member_bytes(name), fmt="onnx")


def _start_threads(
    opened: OpenedBundle,
    log: EventLog | None,
    cache: EngineCache | None = None,
    device: DeviceCheckSpec | None = None,
    progress: BuildProgress | None = None,
) -> tuple[dict[str, Any], _Parts]:
    """Members (and the fallback, under FALLBACK_NAME) loaded in this process, warmed up."""
    from edgeguard.runtime.placement import (
        cpu_member_count,
        fallback_options,
        loader_options,
        member_cpus,
    )
    from edgeguard.runtime.threads import ThreadMemberExecutor

    slots, manifest = opened.slots, opened.manifest
    policy = slots.runtime
    n_cpu = cpu_member_count(policy)
    loaded: dict[str, Any] = {}
    try:
        for s in policy.members:
            fmt = manifest.member(s.name).format
            opts = loader_options(
                s, fmt, cpu_members=n_cpu, sandboxed=False, precisions=_precisions(slots, s.name)
            )
            recipe = _trt_recipe(opened, s.name, accelerator=s.where.accelerator)
            if recipe is not None:
                loaded[s.name] = _load_trt(opened, s.name, s.where, recipe, cache, log, progress)
                continue
            binding = _cacheable(opened, s.name, accelerator=s.where.accelerator)
            loaded[s.name] = _load_member(
                fmt, opened.member_bytes(s.name), opts, cache, binding if cache else None
            )
        if slots.fallback is not None:
            fmt = manifest.member(slots.fallback).format
            binding = _cacheable(opened, slots.fallback, accelerator=False)
            loaded[FALLBACK_NAME] = _load_member(
                fmt,
                opened.member_bytes(slots.fallback),
                fallback_options(fmt, cpu_members=n_cpu),
                cache,
                binding if cache else None,
            )
        basis = policy.deadline_basis
        hints = dict(basis.shapes) if basis is not None else None
        for b in loaded.values():
            _warm_up(b, hints)
        targets = dict(loaded)
        if device is not None:
            targets.update(_checked_members(loaded, policy, device))
        executor = ThreadMemberExecutor(
            targets,
            max_abandoned=policy.quarantine.max_abandoned_workers,
            cpus=member_cpus(policy),
        )
    except BaseException:
        for b in loaded.values():
            with contextlib.suppress(Exception):
                b.close()
        raise
    inputs = loaded[policy.members[0].name].inputs()
    parts = _Parts(executor=executor, backends=tuple(loaded.values()), inputs=inputs)
    return targets, parts


def _checked_members(
    loaded: Mapping[str, Any], policy: RuntimePolicy, device: DeviceCheckSpec
) -> dict[str, DeviceCheckedMember]:
    """Every member with its device check, or none (one that cannot have it: none)."""
    out: dict[str, DeviceCheckedMember] = {}
    for m in policy.members:
        try:
            check = devicestats.make_device_check(
                dataclasses.replace(device, device_id=m.where.index)
            )
            out[m.name] = DeviceCheckedMember(loaded[m.name], check)
        except Exception:  # recorded as "unavailable" (sanity_on_device); CPU statistics
            return {}
    return out


def _signed_outputs(slots: SignedSlots, name: str) -> tuple[TensorSpec, ...] | None:
    """What a sandboxed member's replies must describe: its signed outputs (None: no contract)."""
    io = slots.member_io(name)
    return io.outputs if io is not None else None


def _precisions(slots: SignedSlots, name: str) -> tuple[str, ...]:
    io = slots.member_io(name)
    return io.precisions if io is not None else ()


def _load_sealed(
    cache: EngineCache, binding: Binding, fmt: str, opts: Mapping[str, Any]
) -> Any | None:
    """The member loaded from its sealed entry; None on a miss or an entry that does not
    load (discarded and recorded, so the caller compiles it again)."""
    from edgeguard.backends import load_backend

    buf = cache.load(binding)
    if buf is None:
        return None
    try:
        with buf.view() as view:
            return load_backend(fmt, view, **opts)
    except BackendError as exc:
        cache.discard(binding, "load failed", str(exc))
        return None
    finally:
        buf.wipe()


def _warm_up(backend: Any, hints: Mapping[str, Sequence[int]] | None = None) -> None:
    """Run a member once: its first call allocates arenas (not inside a frame's deadline).

    Inputs take the shapes the signed deadline basis was measured with (``hints``) when
    it names them all. Without them, an input whose only dynamic axis is the first (the
    batch) gets one frame; a model with other dynamic axes (a detector's height and
    width) is not warmed up, since nothing signed says what size its frames are and a
    guessed 1x1 frame is one it may not be able to run: its first real frame allocates
    instead. A failure on the model's own fixed shapes, or on the signed hints, is an
    error; on a guessed batch of one it is not.
    """
    specs = backend.inputs()
    if hints and all(s.name in hints for s in specs):
        feeds = {s.name: np.zeros(tuple(hints[s.name]), dtype=s.dtype) for s in specs}
        guessed = False
    else:
        if any(not isinstance(d, int) for s in specs for d in s.shape[1:]):
            return
        feeds = {s.name: s.zeros() for s in specs}
        guessed = any(s.shape and not isinstance(s.shape[0], int) for s in specs)
    try:
        backend.run(feeds)
    except Exception as exc:  # a model that cannot run zeros of its own shape
        if guessed:
            return
        raise BackendError(f"member failed its warm-up run: {type(exc).__name__}: {exc}") from exc


def split_frames(
    feeds: Mapping[str, np.ndarray], specs: Sequence[TensorSpec]
) -> Iterator[dict[str, np.ndarray]]:
    """Requests of one frame each from arrays that hold a sequence of frames.

    An input whose array has the rank the model declares and whose first axis is a
    batch axis (dynamic, or 1) is cut along that axis; every other input (a scalar,
    a state tensor) goes whole with each frame. Without such an input, the arrays are
    one request.

    Raises:
        UsageError: The cut inputs hold different numbers of frames.
    """
    by_name = {s.name: s for s in specs}
    cut = [
        k
        for k, v in feeds.items()
        if k in by_name
        and getattr(v, "ndim", 0) == by_name[k].rank > 0
        and not (isinstance(by_name[k].shape[0], int) and by_name[k].shape[0] != 1)
    ]
    if not cut:
        yield dict(feeds)
        return
    counts = {len(feeds[k]) for k in cut}
    if len(counts) != 1:
        raise UsageError(
            "the inputs hold different numbers of frames (first axis): "
            + ", ".join(f"{k} {len(feeds[k])}" for k in cut)
        )
    (n,) = counts
    for i in range(n):
        yield {k: np.ascontiguousarray(v[i : i + 1]) if k in cut else v for k, v in feeds.items()}

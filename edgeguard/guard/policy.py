"""Runtime policy of the guarded runtime: members, voter, deadline, fallback chain.

Layer: :mod:`edgeguard.guard` (pure data, no I/O, no inference libraries).

:class:`RuntimePolicy` is a tree of frozen dataclasses with a strict
``to_dict()`` / ``from_dict()`` pair. The dict form holds only ``str``, ``int``,
``float``, ``bool``, ``None``, ``list`` and ``dict`` so it is JSON- and
CBOR-compatible and can be embedded in a signed bundle manifest. NumPy arrays
(the safe-default outputs) travel as ``{"dtype", "shape", "data"}``.
``from_dict`` rejects unknown keys, wrong types and out-of-range values with
:class:`~edgeguard.errors.MalformedError`: a policy is security-relevant, so
nothing is guessed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from edgeguard.errors import MalformedError

__all__ = [
    "FORMAT",
    "ChainStep",
    "HardeningPolicy",
    "HealthPolicy",
    "MemberSpec",
    "Placement",
    "QuarantinePolicy",
    "RateLimitPolicy",
    "RuntimePolicy",
    "VoterKind",
    "VoterSpec",
    "array_from_dict",
    "array_to_dict",
    "parse_placement",
]

FORMAT = "edgeguard-runtime-policy/1"

_MAX_CPU = 4095  # highest CPU number a placement may name (Linux NR_CPUS default ceiling)
_MAX_ACCEL = 15  # highest GPU / DLA index
_PLACEMENT_RE = re.compile(r"(cpu)(?::([0-9,-]+))?|(gpu|dla)([0-9]+)?")
_ALLOWED_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
)
_MAX_SAFE_DEFAULT_ELEMENTS = 1 << 20


class VoterKind(str, Enum):
    """How member outputs are combined."""

    PLURALITY = "plurality"
    """Classification: the label most members chose (ties broken by lowest label)."""
    MAJORITY = "majority"
    """Classification: the label more than half of the answering members chose."""
    SOFT = "soft"
    """Classification: argmax of the mean of the members' probabilities."""
    MEDIAN = "median"
    """Regression: element-wise median."""
    MID_VALUE = "mid_value"
    """Regression: element-wise mid-value select (an actual member value)."""
    DETECTION = "detection"
    """Object detection: cluster boxes by IoU and class, keep boxes confirmed by k members."""


class ChainStep(str, Enum):
    """One step of the fallback chain, tried in the declared order."""

    ENSEMBLE = "ensemble"
    QUORUM = "quorum"
    FALLBACK_MODEL = "fallback_model"
    LAST_KNOWN_GOOD = "last_known_good"
    SAFE_DEFAULT = "safe_default"


def _fail(path: str, what: str) -> MalformedError:
    return MalformedError(f"runtime policy: {path}: {what}")


def _check_keys(d: Mapping[str, Any], path: str, required: set[str], optional: set[str]) -> None:
    if not isinstance(d, Mapping):
        raise _fail(path, "must be a mapping")
    keys = set(d)
    if not all(isinstance(k, str) for k in keys):
        raise _fail(path, "keys must be strings")
    unknown = keys - required - optional
    if unknown:
        raise _fail(path, f"unknown key(s) {sorted(unknown)}")
    missing = required - keys
    if missing:
        raise _fail(path, f"missing key(s) {sorted(missing)}")


def _int(v: Any, path: str, *, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(path, "must be an integer")
    if lo is not None and v < lo:
        raise _fail(path, f"must be >= {lo}")
    if hi is not None and v > hi:
        raise _fail(path, f"must be <= {hi}")
    return v


def _float(
    v: Any, path: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False
) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _fail(path, "must be a number")
    f = float(v)
    if not math.isfinite(f):
        raise _fail(path, "must be finite")
    if lo is not None and (f < lo or (lo_open and f == lo)):
        raise _fail(path, f"must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and f > hi:
        raise _fail(path, f"must be <= {hi}")
    return f


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v:
        raise _fail(path, "must be a non-empty string")
    return v


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise _fail(path, "must be a boolean")
    return v


def array_to_dict(a: np.ndarray) -> dict[str, Any]:
    """Encode an array as ``{"dtype", "shape", "data"}`` with plain Python values."""
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.reshape(-1).tolist()}


def array_from_dict(d: Mapping[str, Any], path: str = "array") -> np.ndarray:
    """Decode :func:`array_to_dict` output, checking dtype, shape and element count.

    Raises:
        MalformedError: Unknown dtype, bad shape, wrong element count or bad values.
    """
    _check_keys(d, path, {"dtype", "shape", "data"}, set())
    dtype = d["dtype"]
    if dtype not in _ALLOWED_DTYPES:
        raise _fail(f"{path}.dtype", f"unsupported dtype {dtype!r}")
    shape = d["shape"]
    if not isinstance(shape, list):
        raise _fail(f"{path}.shape", "must be a list")
    dims = [_int(s, f"{path}.shape", lo=0) for s in shape]
    count = math.prod(dims)
    if count > _MAX_SAFE_DEFAULT_ELEMENTS:
        raise _fail(f"{path}.shape", f"more than {_MAX_SAFE_DEFAULT_ELEMENTS} elements")
    data = d["data"]
    if not isinstance(data, list) or len(data) != count:
        raise _fail(f"{path}.data", f"must be a list of {count} elements")
    for x in data:
        if isinstance(x, bool) and dtype != "bool":
            raise _fail(f"{path}.data", "booleans only in bool arrays")
        if not isinstance(x, (int, float, bool)) or (isinstance(x, float) and not math.isfinite(x)):
            raise _fail(f"{path}.data", "elements must be finite numbers")
    try:
        arr = np.asarray(data, dtype=np.dtype(dtype)).reshape(dims)
    except (ValueError, OverflowError) as exc:
        raise _fail(f"{path}.data", f"does not fit dtype {dtype}") from exc
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True)
class Placement:
    """Where a member runs, parsed from its placement string.

    Grammar (``docs/failsafe.md``, "Placement"):

    * ``cpu``: on the CPU, sharing the cores the process may use;
    * ``cpu:LIST``: on the CPU, pinned to the cores in ``LIST``, a Linux cpulist
      such as ``2``, ``0-3`` or ``0,2-3`` (ascending, no repeats);
    * ``gpu`` / ``gpuN``: on CUDA device ``N`` (default 0);
    * ``dla`` / ``dlaN``: on DLA core ``N`` (default 0) of CUDA device 0.

    Attributes:
        unit: ``"cpu"``, ``"gpu"`` or ``"dla"``.
        index: GPU device or DLA core number (0 for ``cpu``).
        cpus: The pinned cores, or None when the placement pins none.
    """

    unit: str
    index: int = 0
    cpus: frozenset[int] | None = None

    @property
    def accelerator(self) -> bool:
        """True for GPU and DLA placements."""
        return self.unit != "cpu"

    def __str__(self) -> str:
        if self.unit == "cpu":
            return "cpu" if self.cpus is None else "cpu:" + _cpulist(self.cpus)
        return f"{self.unit}{self.index}"


def _cpulist(cpus: frozenset[int]) -> str:
    out: list[str] = []
    run: list[int] = []
    for c in sorted(cpus):
        if run and c != run[-1] + 1:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
            run = []
        run.append(c)
    out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


def parse_placement(text: str, path: str = "placement") -> Placement:
    """Parse a placement string (grammar in :class:`Placement`).

    Raises:
        MalformedError: The string does not follow the grammar, a core list is not
            ascending or repeats a core, or a number is out of range.
    """
    m = _PLACEMENT_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise _fail(path, f"{text!r} is not cpu, cpu:LIST, gpu[N] or dla[N]")
    if m.group(1):
        if m.group(2) is None:
            return Placement("cpu")
        cpus: list[int] = []
        for part in m.group(2).split(","):
            lo, dash, hi = part.partition("-")
            if not lo.isdigit() or (dash and not hi.isdigit()):
                raise _fail(path, f"{part!r} in {text!r} is not N or N-M")
            a, b = int(lo), int(hi) if dash else int(lo)
            if b < a or (cpus and a <= cpus[-1]):
                raise _fail(path, f"core list {text!r} must ascend without repeats")
            if b > _MAX_CPU:
                raise _fail(path, f"CPU {b} is beyond {_MAX_CPU}")
            cpus.extend(range(a, b + 1))
        return Placement("cpu", cpus=frozenset(cpus))
    index = int(m.group(4)) if m.group(4) else 0
    if index > _MAX_ACCEL:
        raise _fail(path, f"{m.group(3)} index {index} is beyond {_MAX_ACCEL}")
    return Placement(m.group(3), index=index)


@dataclass(frozen=True)
class MemberSpec:
    """One ensemble member.

    Attributes:
        name: Unique member name (matches the key in ``GuardedRuntime(members=...)``).
        placement: Where it runs: ``"cpu"``, ``"cpu:0-1"``, ``"gpu"``, ``"gpu1"``,
            ``"dla0"``, ... (grammar in :class:`Placement`).

    Raises:
        MalformedError: The placement does not follow the grammar.
    """

    name: str
    placement: str = "cpu"

    def __post_init__(self) -> None:
        parse_placement(self.placement, f"member {self.name!r}: placement")

    @property
    def where(self) -> Placement:
        """The parsed placement."""
        return parse_placement(self.placement)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return {"name": self.name, "placement": self.placement}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "member") -> MemberSpec:
        """Parse and validate."""
        _check_keys(d, path, {"name"}, {"placement"})
        placement = _str(d.get("placement", "cpu"), f"{path}.placement")
        parse_placement(placement, f"{path}.placement")
        return cls(name=_str(d["name"], f"{path}.name"), placement=placement)


@dataclass(frozen=True)
class VoterSpec:
    """Voter kind and parameters.

    Attributes:
        kind: The voting rule.
        output: Output tensor voted on (classification / regression), for example
            ``"logits"``. For detection, the boxes tensor ``[M, 4]`` (x1, y1, x2, y2).
        agreement: Classification: minimum fraction of answering members that must
            back the winning label in every row, else the frame is a disagreement fault.
        scores_are_logits: Classification: apply softmax before soft voting.
        max_deviation: Regression: a member farther than this from the median in any
            element is outvoted (counted as a dissenter); ``None`` disables the bound.
        iou_threshold: Detection: IoU at which two same-class boxes are one object.
        min_confirmations: Detection: keep a fused box only when at least this many
            distinct members reported it (k of n).
        scores_output: Detection: name of the scores tensor ``[M]``.
        classes_output: Detection: name of the class-id tensor ``[M]``.
    """

    kind: VoterKind
    output: str
    agreement: float = 0.5
    scores_are_logits: bool = True
    max_deviation: float | None = None
    iou_threshold: float = 0.5
    min_confirmations: int = 2
    scores_output: str = "scores"
    classes_output: str = "classes"

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return {
            "kind": self.kind.value,
            "output": self.output,
            "agreement": self.agreement,
            "scores_are_logits": self.scores_are_logits,
            "max_deviation": self.max_deviation,
            "iou_threshold": self.iou_threshold,
            "min_confirmations": self.min_confirmations,
            "scores_output": self.scores_output,
            "classes_output": self.classes_output,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "voter") -> VoterSpec:
        """Parse and validate."""
        opt = {
            "agreement",
            "scores_are_logits",
            "max_deviation",
            "iou_threshold",
            "min_confirmations",
            "scores_output",
            "classes_output",
        }
        _check_keys(d, path, {"kind", "output"}, opt)
        try:
            kind = VoterKind(d["kind"])
        except ValueError as exc:
            raise _fail(f"{path}.kind", f"unknown voter {d['kind']!r}") from exc
        md = d.get("max_deviation")
        return cls(
            kind=kind,
            output=_str(d["output"], f"{path}.output"),
            agreement=_float(
                d.get("agreement", 0.5), f"{path}.agreement", lo=0.0, hi=1.0, lo_open=True
            ),
            scores_are_logits=_bool(d.get("scores_are_logits", True), f"{path}.scores_are_logits"),
            max_deviation=None if md is None else _float(md, f"{path}.max_deviation", lo=0.0),
            iou_threshold=_float(
                d.get("iou_threshold", 0.5), f"{path}.iou_threshold", lo=0.0, hi=1.0, lo_open=True
            ),
            min_confirmations=_int(
                d.get("min_confirmations", 2), f"{path}.min_confirmations", lo=1
            ),
            scores_output=_str(d.get("scores_output", "scores"), f"{path}.scores_output"),
            classes_output=_str(d.get("classes_output", "classes"), f"{path}.classes_output"),
        )


@dataclass(frozen=True)
class HealthPolicy:
    """Hysteresis of the health state machine.

    Attributes:
        recover_frames: Consecutive better frames needed to step up one level.
    """

    recover_frames: int = 10

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return {"recover_frames": self.recover_frames}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "health") -> HealthPolicy:
        """Parse and validate."""
        _check_keys(d, path, set(), {"recover_frames"})
        return cls(
            recover_frames=_int(
                d.get("recover_frames", 10), f"{path}.recover_frames", lo=1, hi=1_000_000
            )
        )


@dataclass(frozen=True)
class QuarantinePolicy:
    """When a failing member is quarantined and how it is retried.

    Attributes:
        after_failures: Consecutive failures (errors, bad outputs) that quarantine a
            member. A member that misses the deadline is quarantined at once.
        backoff_ms: First retry delay; doubles on every failed retry.
        max_backoff_ms: Upper bound of the retry delay.
        max_abandoned_workers: Hung worker threads tolerated per member; past this
            the member stays quarantined for the life of the runtime.
    """

    after_failures: int = 3
    backoff_ms: float = 100.0
    max_backoff_ms: float = 10_000.0
    max_abandoned_workers: int = 4

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return {
            "after_failures": self.after_failures,
            "backoff_ms": self.backoff_ms,
            "max_backoff_ms": self.max_backoff_ms,
            "max_abandoned_workers": self.max_abandoned_workers,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "quarantine") -> QuarantinePolicy:
        """Parse and validate."""
        _check_keys(
            d,
            path,
            set(),
            {"after_failures", "backoff_ms", "max_backoff_ms", "max_abandoned_workers"},
        )
        q = cls(
            after_failures=_int(d.get("after_failures", 3), f"{path}.after_failures", lo=1),
            backoff_ms=_float(d.get("backoff_ms", 100.0), f"{path}.backoff_ms", lo=0.0),
            max_backoff_ms=_float(
                d.get("max_backoff_ms", 10_000.0), f"{path}.max_backoff_ms", lo=0.0
            ),
            max_abandoned_workers=_int(
                d.get("max_abandoned_workers", 4), f"{path}.max_abandoned_workers", lo=0, hi=1024
            ),
        )
        if q.max_backoff_ms < q.backoff_ms:
            raise _fail(f"{path}.max_backoff_ms", "must be >= backoff_ms")
        return q


@dataclass(frozen=True)
class HardeningPolicy:
    """Output hardening against extraction (applied to one classification output).

    Attributes:
        output: Output tensor to harden (``[N, C]`` scores).
        softmax: Convert logits to probabilities before hardening.
        top_k: Keep only the k largest scores per row (others become 0); None keeps all.
        decimals: Round the kept scores to this many decimals; None keeps full precision.
    """

    output: str
    softmax: bool = True
    top_k: int | None = 1
    decimals: int | None = 2

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return {
            "output": self.output,
            "softmax": self.softmax,
            "top_k": self.top_k,
            "decimals": self.decimals,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "hardening") -> HardeningPolicy:
        """Parse and validate."""
        _check_keys(d, path, {"output"}, {"softmax", "top_k", "decimals"})
        tk = d.get("top_k", 1)
        dec = d.get("decimals", 2)
        return cls(
            output=_str(d["output"], f"{path}.output"),
            softmax=_bool(d.get("softmax", True), f"{path}.softmax"),
            top_k=None if tk is None else _int(tk, f"{path}.top_k", lo=1),
            decimals=None if dec is None else _int(dec, f"{path}.decimals", lo=0, hi=15),
        )


@dataclass(frozen=True)
class RateLimitPolicy:
    """Per-client token bucket.

    Attributes:
        rate_per_s: Sustained requests per second per client.
        burst: Bucket size (requests allowed at once).
        max_clients: Clients tracked at once (least recently seen is forgotten first).
    """

    rate_per_s: float
    burst: int
    max_clients: int = 10_000

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return {"rate_per_s": self.rate_per_s, "burst": self.burst, "max_clients": self.max_clients}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "rate_limit") -> RateLimitPolicy:
        """Parse and validate."""
        _check_keys(d, path, {"rate_per_s", "burst"}, {"max_clients"})
        return cls(
            rate_per_s=_float(d["rate_per_s"], f"{path}.rate_per_s", lo=0.0, lo_open=True),
            burst=_int(d["burst"], f"{path}.burst", lo=1),
            max_clients=_int(d.get("max_clients", 10_000), f"{path}.max_clients", lo=1),
        )


_DEFAULT_CHAIN: tuple[ChainStep, ...] = (
    ChainStep.ENSEMBLE,
    ChainStep.QUORUM,
    ChainStep.FALLBACK_MODEL,
    ChainStep.LAST_KNOWN_GOOD,
    ChainStep.SAFE_DEFAULT,
)


@dataclass(frozen=True)
class RuntimePolicy:
    """Everything the guarded runtime needs to decide, per frame, what to answer.

    Attributes:
        members: Ensemble members, at least one, unique names.
        voter: The voting rule.
        quorum: Minimum number of valid member answers for the QUORUM step.
        deadline_ms: Per-frame deadline measured on the monotonic clock.
        member_budget_ms: Part of the deadline the members get; the rest is left for
            the fallback model. Defaults to the whole deadline.
        fallback_chain: Steps tried in order; must end with ``last_known_good`` or
            ``safe_default``, each step at most once.
        last_known_good_max_age_ms: Oldest last-known-good output that may be served.
        safe_default: Outputs served by the ``safe_default`` step.
        health: Hysteresis of the health state machine.
        quarantine: Quarantine and retry policy.
        model_switching: Serve each request from one healthy member chosen at random
            (moving target) instead of the whole ensemble.
        hardening: Output hardening, or None.
        rate_limit: Per-client rate limit, or None.
        reject_action: ``"fallback"`` answers a rejected input from the non-model
            steps of the chain (last-known-good, safe default); ``"raise"`` raises
            :class:`~edgeguard.errors.InputRejectedError`.
        output_shapes: Expected shape per output (``-1`` matches any size); a member
            whose output does not match abstains.
        speculative: Start the members while the input checks run, hiding the
            checks' latency; a rejected input's member answers are discarded
            (but the models did see that input).
    """

    members: tuple[MemberSpec, ...]
    voter: VoterSpec
    quorum: int = 1
    deadline_ms: float = 50.0
    member_budget_ms: float | None = None
    fallback_chain: tuple[ChainStep, ...] = _DEFAULT_CHAIN
    last_known_good_max_age_ms: float = 200.0
    safe_default: Mapping[str, np.ndarray] | None = None
    health: HealthPolicy = field(default_factory=HealthPolicy)
    quarantine: QuarantinePolicy = field(default_factory=QuarantinePolicy)
    model_switching: bool = False
    hardening: HardeningPolicy | None = None
    rate_limit: RateLimitPolicy | None = None
    reject_action: str = "fallback"
    output_shapes: Mapping[str, tuple[int, ...]] | None = None
    speculative: bool = False

    def __post_init__(self) -> None:
        self._validate()

    # -- validation ---------------------------------------------------------------------------

    def _validate(self) -> None:
        if not self.members:
            raise _fail("members", "at least one member is required")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise _fail("members", "member names must be unique")
        if not 1 <= self.quorum <= len(self.members):
            raise _fail("quorum", f"must be between 1 and the member count {len(self.members)}")
        if not (math.isfinite(self.deadline_ms) and self.deadline_ms > 0):
            raise _fail("deadline_ms", "must be a positive finite number")
        if self.member_budget_ms is not None and not (
            math.isfinite(self.member_budget_ms) and 0 < self.member_budget_ms <= self.deadline_ms
        ):
            raise _fail("member_budget_ms", "must be in (0, deadline_ms]")
        chain = self.fallback_chain
        if not chain or len(set(chain)) != len(chain):
            raise _fail("fallback_chain", "must be non-empty with each step at most once")
        if chain[-1] not in (ChainStep.LAST_KNOWN_GOOD, ChainStep.SAFE_DEFAULT):
            raise _fail("fallback_chain", "must end with last_known_good or safe_default")
        if ChainStep.SAFE_DEFAULT in chain:
            if not self.safe_default:
                raise _fail("safe_default", "required when the chain has safe_default")
            if chain[-1] is not ChainStep.SAFE_DEFAULT:
                raise _fail("fallback_chain", "safe_default must be the last step")
        if not (
            math.isfinite(self.last_known_good_max_age_ms) and self.last_known_good_max_age_ms >= 0
        ):
            raise _fail("last_known_good_max_age_ms", "must be a finite number >= 0")
        if self.reject_action not in ("fallback", "raise"):
            raise _fail("reject_action", "must be 'fallback' or 'raise'")
        if self.voter.kind is VoterKind.DETECTION and self.voter.min_confirmations > len(
            self.members
        ):
            raise _fail("voter.min_confirmations", "exceeds the member count")

    @property
    def member_names(self) -> tuple[str, ...]:
        """Member names in declared order."""
        return tuple(m.name for m in self.members)

    @property
    def effective_member_budget_ms(self) -> float:
        """The members' share of the deadline."""
        return self.deadline_ms if self.member_budget_ms is None else self.member_budget_ms

    # -- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict (JSON/CBOR-compatible) form; ``from_dict(to_dict(p)) == p``."""
        return {
            "format": FORMAT,
            "members": [m.to_dict() for m in self.members],
            "voter": self.voter.to_dict(),
            "quorum": self.quorum,
            "deadline_ms": self.deadline_ms,
            "member_budget_ms": self.member_budget_ms,
            "fallback_chain": [s.value for s in self.fallback_chain],
            "last_known_good_max_age_ms": self.last_known_good_max_age_ms,
            "safe_default": None
            if self.safe_default is None
            else {k: array_to_dict(np.asarray(v)) for k, v in sorted(self.safe_default.items())},
            "health": self.health.to_dict(),
            "quarantine": self.quarantine.to_dict(),
            "model_switching": self.model_switching,
            "hardening": None if self.hardening is None else self.hardening.to_dict(),
            "rate_limit": None if self.rate_limit is None else self.rate_limit.to_dict(),
            "reject_action": self.reject_action,
            "output_shapes": None
            if self.output_shapes is None
            else {k: list(v) for k, v in sorted(self.output_shapes.items())},
            "speculative": self.speculative,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RuntimePolicy:
        """Parse and validate a policy dict.

        Raises:
            MalformedError: Unknown or missing keys, wrong types, values out of range.
        """
        opt = {
            "quorum",
            "deadline_ms",
            "member_budget_ms",
            "fallback_chain",
            "last_known_good_max_age_ms",
            "safe_default",
            "health",
            "quarantine",
            "model_switching",
            "hardening",
            "rate_limit",
            "reject_action",
            "output_shapes",
            "speculative",
        }
        _check_keys(d, "policy", {"format", "members", "voter"}, opt)
        if d["format"] != FORMAT:
            raise _fail("format", f"expected {FORMAT!r}")
        if not isinstance(d["members"], list):
            raise _fail("members", "must be a list")
        members = tuple(
            MemberSpec.from_dict(m, f"members[{i}]") for i, m in enumerate(d["members"])
        )
        chain_raw = d.get("fallback_chain", [s.value for s in _DEFAULT_CHAIN])
        if not isinstance(chain_raw, list):
            raise _fail("fallback_chain", "must be a list")
        try:
            chain = tuple(ChainStep(s) for s in chain_raw)
        except ValueError as exc:
            raise _fail("fallback_chain", f"unknown step in {chain_raw!r}") from exc
        sd_raw = d.get("safe_default")
        safe_default: dict[str, np.ndarray] | None = None
        if sd_raw is not None:
            if not isinstance(sd_raw, Mapping):
                raise _fail("safe_default", "must be a mapping")
            safe_default = {
                _str(k, "safe_default"): array_from_dict(v, f"safe_default.{k}")
                for k, v in sd_raw.items()
            }
        os_raw = d.get("output_shapes")
        output_shapes: dict[str, tuple[int, ...]] | None = None
        if os_raw is not None:
            if not isinstance(os_raw, Mapping):
                raise _fail("output_shapes", "must be a mapping")
            output_shapes = {}
            for k, v in os_raw.items():
                if not isinstance(v, list):
                    raise _fail(f"output_shapes.{k}", "must be a list")
                output_shapes[_str(k, "output_shapes")] = tuple(
                    _int(x, f"output_shapes.{k}", lo=-1) for x in v
                )
        mb = d.get("member_budget_ms")
        hard = d.get("hardening")
        rl = d.get("rate_limit")
        ra = d.get("reject_action", "fallback")
        return cls(
            members=members,
            voter=VoterSpec.from_dict(d["voter"]),
            quorum=_int(d.get("quorum", 1), "quorum", lo=1),
            deadline_ms=_float(d.get("deadline_ms", 50.0), "deadline_ms", lo=0.0, lo_open=True),
            member_budget_ms=None
            if mb is None
            else _float(mb, "member_budget_ms", lo=0.0, lo_open=True),
            fallback_chain=chain,
            last_known_good_max_age_ms=_float(
                d.get("last_known_good_max_age_ms", 200.0), "last_known_good_max_age_ms", lo=0.0
            ),
            safe_default=safe_default,
            health=HealthPolicy.from_dict(d.get("health", {})),
            quarantine=QuarantinePolicy.from_dict(d.get("quarantine", {})),
            model_switching=_bool(d.get("model_switching", False), "model_switching"),
            hardening=None if hard is None else HardeningPolicy.from_dict(hard),
            rate_limit=None if rl is None else RateLimitPolicy.from_dict(rl),
            reject_action=_str(ra, "reject_action"),
            output_shapes=output_shapes,
            speculative=_bool(d.get("speculative", False), "speculative"),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RuntimePolicy):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))

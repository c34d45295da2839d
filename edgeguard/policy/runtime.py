"""Runtime policy of the guarded runtime: members, voter, deadline, fallback chain.

Layer: :mod:`edgeguard.policy` (pure data, no I/O, no inference libraries). The policy
travels in the signed manifest's ``policy`` slot under ``"runtime"``.

:class:`RuntimePolicy` is a tree of frozen dataclasses with a strict
``to_dict()`` / ``from_dict()`` pair. The dict form holds only ``str``, ``int``,
``float``, ``bool``, ``None``, ``list`` and ``dict`` so it is JSON- and
CBOR-compatible and can be embedded in a signed bundle manifest. NumPy arrays
(the safe-default outputs) travel as ``{"dtype", "shape", "data"}``.
``from_dict`` rejects unknown keys, wrong types and out-of-range values with
:class:`~edgeguard.errors.MalformedError`: a policy is security-relevant, so
nothing is guessed. Every value is read with :mod:`edgeguard._strict`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from edgeguard._strict import (
    as_bool,
    as_float,
    as_int,
    as_list,
    as_map,
    as_str,
    check_fields,
    fail,
)

__all__ = [
    "FALLBACK_NAME",
    "FORMAT",
    "SINGLE_MODEL_DEADLINE_MS",
    "ChainStep",
    "DeadlineBasis",
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
#: The name under which the fallback model runs (never a member name).
FALLBACK_NAME = "__fallback__"
#: Deadline of a single-model bundle built without one: it catches a hung model, it is
#: not a real-time bound (give ``build --deadline-ms`` for that).
SINGLE_MODEL_DEADLINE_MS = 10_000.0

# as bundle member names: the reserved FALLBACK_NAME can never be one
_MEMBER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]*")
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
    PASSTHROUGH = "passthrough"
    """One member: its outputs, all of them and unchanged, are the answer."""


class ChainStep(str, Enum):
    """One step of the fallback chain, tried in the declared order."""

    ENSEMBLE = "ensemble"
    QUORUM = "quorum"
    FALLBACK_MODEL = "fallback_model"
    LAST_KNOWN_GOOD = "last_known_good"
    SAFE_DEFAULT = "safe_default"


_P = "runtime policy: "


def array_to_dict(a: np.ndarray) -> dict[str, Any]:
    """Encode an array as ``{"dtype", "shape", "data"}`` with plain Python values."""
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.reshape(-1).tolist()}


def array_from_dict(d: Mapping[str, Any], path: str = "array") -> np.ndarray:
    """Decode :func:`array_to_dict` output, checking dtype, shape and element count.

    Raises:
        MalformedError: Unknown dtype, bad shape, wrong element count or bad values.
    """
    check_fields(d, _P + path, {"dtype", "shape", "data"}, set())
    dtype = d["dtype"]
    if dtype not in _ALLOWED_DTYPES:
        raise fail(_P + f"{path}.dtype", f"unsupported dtype {dtype!r}")
    shape = d["shape"]
    if not isinstance(shape, list):
        raise fail(_P + f"{path}.shape", "must be a list")
    dims = [as_int(s, _P + f"{path}.shape", lo=0) for s in shape]
    count = math.prod(dims)
    if count > _MAX_SAFE_DEFAULT_ELEMENTS:
        raise fail(_P + f"{path}.shape", f"more than {_MAX_SAFE_DEFAULT_ELEMENTS} elements")
    data = d["data"]
    if not isinstance(data, list) or len(data) != count:
        raise fail(_P + f"{path}.data", f"must be a list of {count} elements")
    for x in data:
        if isinstance(x, bool) and dtype != "bool":
            raise fail(_P + f"{path}.data", "booleans only in bool arrays")
        if not isinstance(x, (int, float, bool)) or (isinstance(x, float) and not math.isfinite(x)):
            raise fail(_P + f"{path}.data", "elements must be finite numbers")
    try:
        arr = np.asarray(data, dtype=np.dtype(dtype)).reshape(dims)
    except (ValueError, OverflowError) as exc:
        raise fail(_P + f"{path}.data", f"does not fit dtype {dtype}") from exc
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
        raise fail(_P + path, f"{text!r} is not cpu, cpu:LIST, gpu[N] or dla[N]")
    if m.group(1):
        if m.group(2) is None:
            return Placement("cpu")
        cpus: list[int] = []
        for part in m.group(2).split(","):
            lo, dash, hi = part.partition("-")
            if not lo.isdigit() or (dash and not hi.isdigit()):
                raise fail(_P + path, f"{part!r} in {text!r} is not N or N-M")
            a, b = int(lo), int(hi) if dash else int(lo)
            if b < a or (cpus and a <= cpus[-1]):
                raise fail(_P + path, f"core list {text!r} must ascend without repeats")
            if b > _MAX_CPU:
                raise fail(_P + path, f"CPU {b} is beyond {_MAX_CPU}")
            cpus.extend(range(a, b + 1))
        return Placement("cpu", cpus=frozenset(cpus))
    index = int(m.group(4)) if m.group(4) else 0
    if index > _MAX_ACCEL:
        raise fail(_P + path, f"{m.group(3)} index {index} is beyond {_MAX_ACCEL}")
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
        as_str(self.name, _P + "member name", max_len=128, pattern=_MEMBER_NAME_RE)
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
        check_fields(d, _P + path, {"name"}, {"placement"})
        placement = as_str(d.get("placement", "cpu"), _P + f"{path}.placement")
        parse_placement(placement, f"{path}.placement")
        return cls(name=as_str(d["name"], _P + f"{path}.name"), placement=placement)


@dataclass(frozen=True)
class VoterSpec:
    """Voter kind and parameters.

    Attributes:
        kind: The voting rule.
        output: Output tensor voted on (classification / regression), for example
            ``"logits"``. For detection, the boxes tensor ``[M, 4]`` (x1, y1, x2, y2).
            Empty for passthrough, which passes every output on.
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
        check_fields(d, _P + path, {"kind", "output"}, opt)
        try:
            kind = VoterKind(d["kind"])
        except ValueError as exc:
            raise fail(_P + f"{path}.kind", f"unknown voter {d['kind']!r}") from exc
        md = d.get("max_deviation")
        return cls(
            kind=kind,
            output=as_str(
                d["output"], _P + f"{path}.output", nonempty=kind is not VoterKind.PASSTHROUGH
            ),
            agreement=as_float(
                d.get("agreement", 0.5), _P + f"{path}.agreement", lo=0.0, hi=1.0, lo_open=True
            ),
            scores_are_logits=as_bool(
                d.get("scores_are_logits", True), _P + f"{path}.scores_are_logits"
            ),
            max_deviation=None
            if md is None
            else as_float(md, _P + f"{path}.max_deviation", lo=0.0),
            iou_threshold=as_float(
                d.get("iou_threshold", 0.5),
                _P + f"{path}.iou_threshold",
                lo=0.0,
                hi=1.0,
                lo_open=True,
            ),
            min_confirmations=as_int(
                d.get("min_confirmations", 2), _P + f"{path}.min_confirmations", lo=1
            ),
            scores_output=as_str(d.get("scores_output", "scores"), _P + f"{path}.scores_output"),
            classes_output=as_str(
                d.get("classes_output", "classes"), _P + f"{path}.classes_output"
            ),
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
        check_fields(d, _P + path, set(), {"recover_frames"})
        return cls(
            recover_frames=as_int(
                d.get("recover_frames", 10), _P + f"{path}.recover_frames", lo=1, hi=1_000_000
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
        check_fields(
            d,
            _P + path,
            set(),
            {"after_failures", "backoff_ms", "max_backoff_ms", "max_abandoned_workers"},
        )
        q = cls(
            after_failures=as_int(d.get("after_failures", 3), _P + f"{path}.after_failures", lo=1),
            backoff_ms=as_float(d.get("backoff_ms", 100.0), _P + f"{path}.backoff_ms", lo=0.0),
            max_backoff_ms=as_float(
                d.get("max_backoff_ms", 10_000.0), _P + f"{path}.max_backoff_ms", lo=0.0
            ),
            max_abandoned_workers=as_int(
                d.get("max_abandoned_workers", 4),
                _P + f"{path}.max_abandoned_workers",
                lo=0,
                hi=1024,
            ),
        )
        if q.max_backoff_ms < q.backoff_ms:
            raise fail(_P + f"{path}.max_backoff_ms", "must be >= backoff_ms")
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
        check_fields(d, _P + path, {"output"}, {"softmax", "top_k", "decimals"})
        tk = d.get("top_k", 1)
        dec = d.get("decimals", 2)
        return cls(
            output=as_str(d["output"], _P + f"{path}.output"),
            softmax=as_bool(d.get("softmax", True), _P + f"{path}.softmax"),
            top_k=None if tk is None else as_int(tk, _P + f"{path}.top_k", lo=1),
            decimals=None if dec is None else as_int(dec, _P + f"{path}.decimals", lo=0, hi=15),
        )


@dataclass(frozen=True)
class DeadlineBasis:
    """How ``build`` measured the deadline it signed (``--deadline-ms auto``).

    The device session runs the members on frames of the same shapes at start and
    warns when it is much slower than the build host was.

    Attributes:
        measured_ms: Member (and ``__fallback__``) -> its slowest of several timed
            runs on the build host, one frame, one intra-op thread.
        shapes: Input -> the shape of the frames it was measured on.
        factor: The deadline is this many times the slowest member.
        host: What measured it (for example ``"x86_64, 2 cores"``).
    """

    measured_ms: Mapping[str, float]
    shapes: Mapping[str, tuple[int, ...]]
    factor: float
    host: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return {
            "measured_ms": dict(sorted(self.measured_ms.items())),
            "shapes": {k: list(v) for k, v in sorted(self.shapes.items())},
            "factor": self.factor,
            "host": self.host,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "deadline_basis") -> DeadlineBasis:
        """Parse and validate."""
        check_fields(d, _P + path, {"measured_ms", "shapes", "factor"}, {"host"})
        measured = as_map(d["measured_ms"], _P + f"{path}.measured_ms")
        shapes = as_map(d["shapes"], _P + f"{path}.shapes")
        return cls(
            measured_ms={
                as_str(k, _P + f"{path}.measured_ms", max_len=128): as_float(
                    v, _P + f"{path}.measured_ms.{k}", lo=0.0
                )
                for k, v in measured.items()
            },
            shapes={
                as_str(k, _P + f"{path}.shapes", max_len=1024): tuple(
                    as_int(x, _P + f"{path}.shapes.{k}", lo=1, hi=1 << 31)
                    for x in as_list(v, _P + f"{path}.shapes.{k}", max_len=16)
                )
                for k, v in shapes.items()
            },
            factor=as_float(d["factor"], _P + f"{path}.factor", lo=1.0, hi=1000.0),
            host=as_str(d.get("host", ""), _P + f"{path}.host", nonempty=False, max_len=200),
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
        check_fields(d, _P + path, {"rate_per_s", "burst"}, {"max_clients"})
        return cls(
            rate_per_s=as_float(d["rate_per_s"], _P + f"{path}.rate_per_s", lo=0.0, lo_open=True),
            burst=as_int(d["burst"], _P + f"{path}.burst", lo=1),
            max_clients=as_int(d.get("max_clients", 10_000), _P + f"{path}.max_clients", lo=1),
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
        fallback_chain: Steps tried in order, each at most once; ``safe_default``, when
            present, is the last. A frame that no step answers raises (the chains
            ``build`` writes for ensembles end with ``last_known_good`` or
            ``safe_default``; a single model's chain is ``ensemble`` alone).
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
        deadline_basis: How the deadline was measured at build, or None when it was
            given.
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
    deadline_basis: DeadlineBasis | None = None

    def __post_init__(self) -> None:
        self._validate()

    # -- validation ---------------------------------------------------------------------------

    def _validate(self) -> None:
        if not self.members:
            raise fail(_P + "members", "at least one member is required")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise fail(_P + "members", "member names must be unique")
        if not 1 <= self.quorum <= len(self.members):
            raise fail(_P + "quorum", f"must be between 1 and the member count {len(self.members)}")
        if not (math.isfinite(self.deadline_ms) and self.deadline_ms > 0):
            raise fail(_P + "deadline_ms", "must be a positive finite number")
        if self.member_budget_ms is not None and not (
            math.isfinite(self.member_budget_ms) and 0 < self.member_budget_ms <= self.deadline_ms
        ):
            raise fail(_P + "member_budget_ms", "must be in (0, deadline_ms]")
        chain = self.fallback_chain
        if not chain or len(set(chain)) != len(chain):
            raise fail(_P + "fallback_chain", "must be non-empty with each step at most once")
        if ChainStep.SAFE_DEFAULT in chain:
            if not self.safe_default:
                raise fail(_P + "safe_default", "required when the chain has safe_default")
            if chain[-1] is not ChainStep.SAFE_DEFAULT:
                raise fail(_P + "fallback_chain", "safe_default must be the last step")
        if not (
            math.isfinite(self.last_known_good_max_age_ms) and self.last_known_good_max_age_ms >= 0
        ):
            raise fail(_P + "last_known_good_max_age_ms", "must be a finite number >= 0")
        if self.reject_action not in ("fallback", "raise"):
            raise fail(_P + "reject_action", "must be 'fallback' or 'raise'")
        if self.voter.kind is VoterKind.DETECTION and self.voter.min_confirmations > len(
            self.members
        ):
            raise fail(_P + "voter.min_confirmations", "exceeds the member count")
        if self.deadline_basis is not None:
            stray = set(self.deadline_basis.measured_ms) - {*self.member_names, FALLBACK_NAME}
            if stray:
                raise fail(_P + "deadline_basis.measured_ms", f"names no member: {sorted(stray)}")
        if self.voter.kind is VoterKind.PASSTHROUGH and len(self.members) != 1:
            raise fail(_P + "voter.kind", "passthrough needs exactly one member")

    @classmethod
    def single(
        cls,
        name: str,
        *,
        placement: str = "cpu",
        deadline_ms: float = SINGLE_MODEL_DEADLINE_MS,
    ) -> RuntimePolicy:
        """The policy of a bundle with one model: its answer, unchanged, or an error.

        Args:
            name: The member.
            placement: Where the member runs.
            deadline_ms: Per-request deadline; the default only catches a hung model.
        """
        return cls(
            members=(MemberSpec(name, placement),),
            voter=VoterSpec(kind=VoterKind.PASSTHROUGH, output=""),
            deadline_ms=deadline_ms,
            fallback_chain=(ChainStep.ENSEMBLE,),
            reject_action="raise",
        )

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
            "deadline_basis": None
            if self.deadline_basis is None
            else self.deadline_basis.to_dict(),
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
            "deadline_basis",
        }
        check_fields(d, "runtime policy", {"format", "members", "voter"}, opt)
        if d["format"] != FORMAT:
            raise fail(_P + "format", f"expected {FORMAT!r}")
        if not isinstance(d["members"], list):
            raise fail(_P + "members", "must be a list")
        members = tuple(
            MemberSpec.from_dict(m, f"members[{i}]") for i, m in enumerate(d["members"])
        )
        chain_raw = d.get("fallback_chain", [s.value for s in _DEFAULT_CHAIN])
        if not isinstance(chain_raw, list):
            raise fail(_P + "fallback_chain", "must be a list")
        try:
            chain = tuple(ChainStep(s) for s in chain_raw)
        except ValueError as exc:
            raise fail(_P + "fallback_chain", f"unknown step in {chain_raw!r}") from exc
        sd_raw = d.get("safe_default")
        safe_default: dict[str, np.ndarray] | None = None
        if sd_raw is not None:
            if not isinstance(sd_raw, Mapping):
                raise fail(_P + "safe_default", "must be a mapping")
            safe_default = {
                as_str(k, _P + "safe_default"): array_from_dict(v, f"safe_default.{k}")
                for k, v in sd_raw.items()
            }
        os_raw = d.get("output_shapes")
        output_shapes: dict[str, tuple[int, ...]] | None = None
        if os_raw is not None:
            if not isinstance(os_raw, Mapping):
                raise fail(_P + "output_shapes", "must be a mapping")
            output_shapes = {}
            for k, v in os_raw.items():
                if not isinstance(v, list):
                    raise fail(_P + f"output_shapes.{k}", "must be a list")
                output_shapes[as_str(k, _P + "output_shapes")] = tuple(
                    as_int(x, _P + f"output_shapes.{k}", lo=-1) for x in v
                )
        mb = d.get("member_budget_ms")
        hard = d.get("hardening")
        rl = d.get("rate_limit")
        ra = d.get("reject_action", "fallback")
        return cls(
            members=members,
            voter=VoterSpec.from_dict(d["voter"]),
            quorum=as_int(d.get("quorum", 1), _P + "quorum", lo=1),
            deadline_ms=as_float(
                d.get("deadline_ms", 50.0), _P + "deadline_ms", lo=0.0, lo_open=True
            ),
            member_budget_ms=None
            if mb is None
            else as_float(mb, _P + "member_budget_ms", lo=0.0, lo_open=True),
            fallback_chain=chain,
            last_known_good_max_age_ms=as_float(
                d.get("last_known_good_max_age_ms", 200.0),
                _P + "last_known_good_max_age_ms",
                lo=0.0,
            ),
            safe_default=safe_default,
            health=HealthPolicy.from_dict(d.get("health", {})),
            quarantine=QuarantinePolicy.from_dict(d.get("quarantine", {})),
            model_switching=as_bool(d.get("model_switching", False), _P + "model_switching"),
            hardening=None if hard is None else HardeningPolicy.from_dict(hard),
            rate_limit=None if rl is None else RateLimitPolicy.from_dict(rl),
            reject_action=as_str(ra, _P + "reject_action"),
            output_shapes=output_shapes,
            speculative=as_bool(d.get("speculative", False), _P + "speculative"),
            deadline_basis=None
            if d.get("deadline_basis") is None
            else DeadlineBasis.from_dict(d["deadline_basis"]),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RuntimePolicy):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))

"""The supervisor's reader of worker messages: bounded, strict, and never raising anything else.

Layer: :mod:`edgeguard.runtime.sandbox` (parent side; the stdlib and numpy only). A worker
is untrusted: a model that took over its process may send any bytes. Everything a worker
sends the supervisor passes through here before it is believed:

1. **size**: a message longer than :attr:`ReplyLimits.max_bytes` is refused (the caller
   receives one byte more than the limit, so a SOCK_SEQPACKET message that the kernel
   truncated is seen, not parsed as its prefix);
2. **encoding**: strict UTF-8;
3. **depth**: the nesting of arrays and objects is counted by a linear scan (strings
   removed by one regex pass, then a cumulative sum) *before* ``json.loads`` runs, and
   more than :attr:`ReplyLimits.max_depth` levels are refused, so a reply of ``[[[[...``
   cannot exhaust the parser's recursion (``RecursionError``, or a C stack overflow when
   an application raised the recursion limit);
4. **JSON**: no floats, no ``NaN``/``Infinity``, integers of at most
   :attr:`ReplyLimits.max_int_digits` digits, no duplicate keys;
5. **schema**: a run reply is exactly ``{"ok": true, "outputs": [...], "run_ns": N}`` or
   ``{"ok": false, "error": "...", "run_ns": N}`` (``run_ns`` optional; an answer may
   carry ``"stats"``, the device sanity statistics of the checked input);
6. **output descriptors** (:func:`read_outputs`): checked against the member's signed
   output specs (count, names, element types, ranks, fixed dimensions), inside the
   shared output region, aligned, and **non-overlapping**, so a reply can make the
   supervisor copy at most the region once - never one region per descriptor;
7. **statistics record** (:func:`read_stats`): exactly ``{"n", "c", "data"}``, ``n`` and
   ``c`` the frames and channels of the input the supervisor sent, ``data`` lowercase
   hex of exactly the record's length (bounded by the message), counts within the
   frame's size, saturation fractions in ``[0, 1]``.

Every refusal is a :class:`BadReplyError` (a :class:`~edgeguard.errors.BackendError`):
the executor fails the call, records ``sandbox_bad_reply`` and kills the worker.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from edgeguard.errors import BackendError
from edgeguard.policy.io import DTYPES, TensorSpec
from edgeguard.runtime.sandbox.worker import (
    ALIGN,
    MAX_MESSAGE,
    MAX_STATS_HEX,
    STATS_FLOATS,
    STATS_INTS,
)

__all__ = [
    "BadReplyError",
    "ReplyLimits",
    "RunReply",
    "read_message",
    "read_outputs",
    "read_run_reply",
    "read_stats",
]

# A string literal, from its quote to its closing quote or the end of the message; it
# never fails to match, so removing every string takes one linear pass even when the
# message is not JSON (an unterminated string, a stray backslash).
_STRING = re.compile(rb'"(?:[^"\\]|\\.|\\\Z)*(?:"|\Z)', re.S)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 opens, -1 (int8) closes
_RUN_KEYS = frozenset({"ok", "outputs", "error", "run_ns", "stats"})
_STATS_KEYS = frozenset({"n", "c", "data"})
_HEX = re.compile(r"[0-9a-f]*")


class BadReplyError(BackendError):
    """A worker's message breaks the protocol: the worker is no longer trusted."""


@dataclass(frozen=True)
class ReplyLimits:
    """Bounds on what a worker may send the supervisor.

    Attributes:
        max_bytes: Longest message, in bytes (the protocol's :data:`MAX_MESSAGE`).
        max_depth: Deepest nesting of arrays and objects. The deepest message of the
            protocol is 4: the ready message's ``inputs`` (list, spec object, shape
            list) and a run reply's ``outputs`` (list, descriptor, shape).
        max_int_digits: Longest integer literal (sign included); 20 holds any int64.
        max_outputs: Most output descriptors in one reply (without a signed contract;
            with one, exactly its outputs).
        max_rank: Most axes of one output.
        max_dim: Largest size of one axis.
        max_name: Longest output name.
        max_error: Characters of a worker's error text kept (the rest is cut).
    """

    max_bytes: int = MAX_MESSAGE
    max_depth: int = 4
    max_int_digits: int = 20
    max_outputs: int = 256
    max_rank: int = 16
    max_dim: int = 1 << 40
    max_name: int = 1024
    max_error: int = 1000


#: The limits the executor uses.
DEFAULT_LIMITS = ReplyLimits()


@dataclass(frozen=True)
class RunReply:
    """A run reply whose shape has been checked (its descriptors not yet).

    Attributes:
        ok: Whether the worker says the model answered.
        outputs: The raw output descriptors (``ok`` only); see :func:`read_outputs`.
        error: The worker's error text, cut to :attr:`ReplyLimits.max_error` (not ``ok``).
        run_ns: The time the worker says the call took, or None.
        stats: The raw statistics record (``ok`` only, when sent); see :func:`read_stats`.
    """

    ok: bool
    outputs: list[Any] | None
    error: str | None
    run_ns: int | None
    stats: Any = None


def _bad(why: str) -> NoReturn:
    raise BadReplyError(f"bad reply: {why}")


def _too_deep(data: bytes, limit: int) -> bool:
    """Whether arrays and objects nest deeper than ``limit``, strings skipped.

    Linear and in C (a regex pass, a translation, a cumulative sum): a hostile
    message costs the supervisor about as much as a friendly one of its size.
    """
    steps = _STRING.sub(b"", data).translate(_STEPS, _NOT_BRACKETS)
    if len(steps) > 64:  # a long one, in C
        return int(np.cumsum(np.frombuffer(steps, np.int8), dtype=np.int64).max()) > limit
    depth = 0
    for step in steps:  # the protocol's own messages: a dozen brackets
        depth += 1 if step == 1 else -1
        if depth > limit:
            return True
    return False


def _no_float(text: str) -> NoReturn:
    _bad("a number with a fraction or an exponent")


def _no_constant(text: str) -> NoReturn:
    _bad(f"{text} is not a number the protocol uses")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        _bad("an object names a key twice")
    return out


def read_message(data: bytes, limits: ReplyLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """One message from a worker as a JSON object, read within ``limits``.

    Args:
        data: The bytes received; pass up to ``limits.max_bytes + 1`` so that an
            over-long (truncated) message is recognised.
        limits: The bounds.

    Returns:
        The object (its fields are not checked here).

    Raises:
        BadReplyError: Too long, not UTF-8, nested too deeply, not JSON within the
            protocol's subset (no floats, bounded integers, unique keys), or not an object.
    """
    if len(data) > limits.max_bytes:
        _bad(f"longer than {limits.max_bytes} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        _bad("not UTF-8")
    if _too_deep(data, limits.max_depth):
        _bad(f"nested deeper than {limits.max_depth} levels")

    def bounded_int(s: str) -> int:
        if len(s) > limits.max_int_digits:
            _bad(f"an integer of more than {limits.max_int_digits} digits")
        return int(s)

    try:
        msg = json.loads(
            text,
            parse_float=_no_float,
            parse_int=bounded_int,
            parse_constant=_no_constant,
            object_pairs_hook=_pairs,
        )
    except BadReplyError:
        raise
    except (ValueError, RecursionError) as exc:  # RecursionError: belt and braces
        _bad(f"not JSON ({type(exc).__name__})")
    if not isinstance(msg, dict):
        _bad(f"a {type(msg).__name__}, not an object")
    return msg


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_run_reply(data: bytes, limits: ReplyLimits = DEFAULT_LIMITS) -> RunReply:
    """A worker's answer to a ``run`` request, its fields checked.

    Raises:
        BadReplyError: See :func:`read_message`; also unknown or missing fields, or
            fields of the wrong type.
    """
    msg = read_message(data, limits)
    unknown = set(msg) - _RUN_KEYS
    if unknown:
        _bad(f"unknown field(s) {sorted(unknown)[:4]}")
    ok = msg.get("ok")
    if not isinstance(ok, bool):
        _bad("'ok' is not true or false")
    run_ns = msg.get("run_ns")
    if run_ns is not None and not (_int(run_ns) and run_ns >= 0):
        _bad("'run_ns' is not a non-negative integer")
    if ok:
        outputs = msg.get("outputs")
        if "error" in msg or not isinstance(outputs, list):
            _bad("an answer needs 'outputs' (a list) and no 'error'")
        stats = msg.get("stats")
        if "stats" in msg and not isinstance(stats, dict):
            _bad("'stats' is not an object")
        return RunReply(ok=True, outputs=outputs, error=None, run_ns=run_ns, stats=stats)
    error = msg.get("error")
    if "outputs" in msg or "stats" in msg or not isinstance(error, str):
        _bad("a failure needs 'error' (a string) and no 'outputs' or 'stats'")
    return RunReply(ok=False, outputs=None, error=error[: limits.max_error], run_ns=run_ns)


def read_outputs(
    desc: Any,
    region: memoryview,
    *,
    specs: Sequence[TensorSpec] | None,
    limits: ReplyLimits = DEFAULT_LIMITS,
) -> dict[str, np.ndarray]:
    """The outputs a reply describes, copied out of the shared ``region``.

    Each descriptor is ``[name, dtype, shape, offset, nbytes]``. With ``specs`` (the
    member's signed outputs) the descriptors must name exactly those outputs, each with
    its element type, rank and fixed dimensions; a dynamic dimension is bounded by the
    region. Without ``specs`` (a bundle signed before I/O contracts) any plain numeric
    output is taken. Either way every output lies inside ``region``, 64-byte aligned, and
    no two overlap: the copies together are never larger than the region.

    Raises:
        BadReplyError: A descriptor breaks any of the above.
    """
    if not isinstance(desc, list):
        _bad("'outputs' is not a list")
    if len(desc) > limits.max_outputs:
        _bad(f"more than {limits.max_outputs} outputs")
    by_name = None if specs is None else {s.name: s for s in specs}
    if by_name is not None and len(desc) != len(by_name):
        _bad(f"{len(desc)} outputs; the signed contract declares {len(by_name)}")
    size = len(region)
    seen: dict[str, tuple[np.dtype[Any], tuple[int, ...], int]] = {}
    spans: list[tuple[int, int, str]] = []
    for d in desc:
        if not (isinstance(d, list) and len(d) == 5):
            _bad("an output descriptor is not [name, dtype, shape, offset, nbytes]")
        name, dtype, shape, off, n = d
        if not isinstance(name, str) or not 0 < len(name) <= limits.max_name or name in seen:
            _bad("an output name is empty, too long or repeated")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            _bad(f"output {name!r}: element type is not a plain numeric one")
        if not (
            isinstance(shape, list)
            and len(shape) <= limits.max_rank
            and all(_int(x) and 0 <= x <= limits.max_dim for x in shape)
        ):
            _bad(f"output {name!r}: bad shape")
        if not (_int(off) and _int(n) and off >= 0 and n >= 0):
            _bad(f"output {name!r}: bad offset or size")
        dims = tuple(shape)
        if by_name is not None:
            spec = by_name.get(name)
            if spec is None:
                _bad(f"output {name!r} is not one the signed contract declares")
            if dtype != spec.dtype or not spec.matches_shape(dims):
                _bad(
                    f"output {name!r} is {dtype}{list(dims)}; the signed contract declares "
                    f"{spec.describe()}"
                )
        dt = np.dtype(dtype)
        count = footprint = 1
        for x in dims:
            count *= x
            footprint *= max(x, 1)  # an empty output's other axes are bounded too
        if (
            count * dt.itemsize != n
            or footprint * dt.itemsize > max(size, dt.itemsize)
            or off % ALIGN
            or off + n > size
        ):
            _bad(f"output {name!r}: size or offset does not fit the {size}-byte region")
        seen[name] = (dt, dims, off)
        if n:
            spans.append((off, n, name))
    spans.sort()
    for (a_off, a_n, a), (b_off, _, b) in itertools.pairwise(spans):
        if a_off + a_n > b_off:
            _bad(f"outputs {a!r} and {b!r} overlap")
    out: dict[str, np.ndarray] = {}
    for name, (dt, dims, off) in seen.items():
        view: np.ndarray = np.ndarray(dims, dtype=dt, buffer=region, offset=off)
        out[name] = view.copy()
    return out


def read_stats(raw: Any, *, frames: int, channels: int, plane: int) -> dict[str, np.ndarray]:
    """The statistics record of an answer, checked against the input the supervisor sent.

    Args:
        raw: The reply's ``stats`` object (untrusted).
        frames: N of the input sent (its ``[N, C, H, W]`` frames view).
        channels: C of that view.
        plane: H * W of that view (values per frame and channel).

    Returns:
        int64 ``nan``, ``posinf``, ``neginf`` ``[N]`` and ``count`` ``[N, C]``; float64
        ``min``, ``max``, ``mean``, ``std``, ``sat_lo``, ``sat_hi``, ``hf`` ``[N, C]``.

    Raises:
        BadReplyError: Other keys, another N or C, ``data`` not lowercase hex of exactly
            the record's length, a count below 0 or above the frame's size, a
            saturation fraction outside ``[0, 1]``.
    """
    if not isinstance(raw, dict) or set(raw) != _STATS_KEYS:
        _bad("'stats' is not exactly {n, c, data}")
    if raw["n"] != frames or raw["c"] != channels or not (_int(raw["n"]) and _int(raw["c"])):
        _bad(f"'stats' describe {raw['n']!r}x{raw['c']!r} frame channels, not {frames}x{channels}")
    data = raw["data"]
    words = len(STATS_INTS) * frames + (1 + len(STATS_FLOATS)) * frames * channels
    if not isinstance(data, str) or len(data) != 16 * words or len(data) > MAX_STATS_HEX:
        _bad("'stats' data is not a record of the input's size")
    if not _HEX.fullmatch(data):
        _bad("'stats' data is not lowercase hex")
    buf = bytes.fromhex(data)
    ints = np.frombuffer(buf, dtype="<i8", count=len(STATS_INTS) * frames + frames * channels)
    floats = np.frombuffer(buf, dtype="<f8", offset=ints.nbytes)
    out: dict[str, np.ndarray] = {}
    for i, k in enumerate(STATS_INTS):
        out[k] = ints[i * frames : (i + 1) * frames].astype(np.int64)
    out["count"] = ints[len(STATS_INTS) * frames :].astype(np.int64).reshape(frames, channels)
    per = frames * channels
    for i, k in enumerate(STATS_FLOATS):
        out[k] = floats[i * per : (i + 1) * per].astype(np.float64).reshape(frames, channels)
    size = plane * channels  # values per frame
    if any(((out[k] < 0) | (out[k] > size)).any() for k in (*STATS_INTS, "count")) or (
        (out["count"] > plane).any()
        or (sum(out[k] for k in STATS_INTS) + out["count"].sum(axis=1) > size).any()
    ):  # each term bounded first: the sum cannot overflow
        _bad("'stats' counts do not fit the input's frames")
    for k in ("sat_lo", "sat_hi"):
        if not ((out[k] >= 0) & (out[k] <= 1)).all():
            _bad(f"'stats' {k} is not a fraction in [0, 1]")
    return out

"""The one strict reader for every structure edgeguard parses.

Layer: foundation (imports only :mod:`edgeguard.errors`). The bundle manifest, the
typed signed slots (sanity profile, runtime policy, isolation requirements, engine
recipe, I/O specs) and the device profiles are read with these helpers, so every
reader refuses the same things the same way: unknown fields, missing fields, values
of the wrong type (``True`` is not an integer), out-of-range numbers, NaN and
infinities (unless asked for), over-long lists and strings. Every failure is a
:class:`~edgeguard.errors.MalformedError` whose message starts with *where* the bad
value sits, for example ``runtime policy: voter.kind: unknown voter 'x'``.

Example::

    t = Table(d, "runtime policy")
    quorum = as_int(t.optional("quorum", 1), t.at("quorum"), lo=1)
    t.done()  # refuses keys that were never read
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Any

from edgeguard.errors import MalformedError

__all__ = [
    "Table",
    "as_bool",
    "as_bytes",
    "as_float",
    "as_int",
    "as_list",
    "as_map",
    "as_str",
    "check_fields",
    "fail",
]

_MISSING = object()


def fail(where: str, problem: str) -> MalformedError:
    """The error for ``problem`` at ``where`` (``"<where>: <problem>"``)."""
    return MalformedError(f"{where}: {problem}")


def as_map(v: Any, where: str) -> Mapping[str, Any]:
    """``v`` as a mapping with text keys."""
    if not isinstance(v, Mapping):
        raise fail(where, f"must be a map, got {type(v).__name__}")
    if not all(isinstance(k, str) for k in v):
        raise fail(where, "keys must be text strings")
    return v


def as_int(v: Any, where: str, *, lo: int | None = None, hi: int | None = None) -> int:
    """``v`` as an integer in ``[lo, hi]`` (a boolean is not an integer)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise fail(where, f"must be an integer, got {v!r}")
    if lo is not None and v < lo:
        raise fail(where, f"must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise fail(where, f"must be <= {hi}, got {v}")
    return v


def as_float(
    v: Any,
    where: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    allow_inf: bool = False,
) -> float:
    """``v`` as a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``).

    With ``allow_inf`` the strings ``"inf"`` and ``"-inf"`` (the JSON-safe spelling)
    and infinite floats are accepted; NaN never is.
    """
    if allow_inf and v in ("inf", "-inf"):
        return math.inf if v == "inf" else -math.inf
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise fail(where, f"must be a number, got {v!r}")
    f = float(v)
    if math.isnan(f) or (math.isinf(f) and not allow_inf):
        raise fail(where, "must be a finite number")
    if lo is not None and (f < lo or (lo_open and f == lo)):
        raise fail(where, f"must be {'>' if lo_open else '>='} {lo:g}, got {f:g}")
    if hi is not None and f > hi:
        raise fail(where, f"must be <= {hi:g}, got {f:g}")
    return f


def as_str(
    v: Any,
    where: str,
    *,
    nonempty: bool = True,
    max_len: int = 4096,
    pattern: re.Pattern[str] | None = None,
    choices: Collection[str] | None = None,
) -> str:
    """``v`` as a text string (non-empty by default, at most ``max_len`` characters)."""
    if not isinstance(v, str):
        raise fail(where, f"must be a text string, got {type(v).__name__}")
    if nonempty and not v:
        raise fail(where, "must not be empty")
    if len(v) > max_len:
        raise fail(where, f"must be at most {max_len} characters")
    if choices is not None and v not in choices:
        raise fail(where, f"{v!r} is not one of {', '.join(sorted(choices))}")
    if pattern is not None and not pattern.fullmatch(v):
        raise fail(where, f"{v!r} has characters or a form that is not allowed")
    return v


def as_bool(v: Any, where: str) -> bool:
    """``v`` as a boolean."""
    if not isinstance(v, bool):
        raise fail(where, f"must be true or false, got {v!r}")
    return v


def as_list(v: Any, where: str, *, min_len: int = 0, max_len: int = 1 << 20) -> list[Any]:
    """``v`` as a list of ``min_len`` to ``max_len`` entries."""
    if not isinstance(v, list):
        raise fail(where, f"must be a list, got {type(v).__name__}")
    if not min_len <= len(v) <= max_len:
        raise fail(where, f"must have {min_len} to {max_len} entries, has {len(v)}")
    return v


def as_bytes(v: Any, where: str, *, size: int | None = None, max_size: int = 1 << 20) -> bytes:
    """``v`` as a byte string of exactly ``size`` bytes, or at most ``max_size``."""
    if not isinstance(v, bytes):
        raise fail(where, f"must be a byte string, got {type(v).__name__}")
    if size is not None and len(v) != size:
        raise fail(where, f"must be {size} bytes, got {len(v)}")
    if len(v) > max_size:
        raise fail(where, f"must be at most {max_size} bytes")
    return v


class Table:
    """Strict, key-by-key access to one mapping; :meth:`done` refuses keys never read.

    Args:
        obj: The value that must be a mapping with text keys.
        where: Its place, used as the prefix of every message (``"runtime policy"``,
            ``"runtime policy: voter"``).
    """

    def __init__(self, obj: Any, where: str) -> None:
        self._d = as_map(obj, where)
        self.where = where
        self._seen: set[str] = set()

    def at(self, key: str) -> str:
        """The place of ``key`` for messages: ``"<where>.<key>"``."""
        return f"{self.where}.{key}"

    def __contains__(self, key: str) -> bool:
        return key in self._d

    def required(self, key: str) -> Any:
        """The raw value of ``key``, which must be present."""
        self._seen.add(key)
        if key not in self._d:
            raise fail(self.where, f"misses the field {key!r}")
        return self._d[key]

    def optional(self, key: str, default: Any = None) -> Any:
        """The raw value of ``key``, or ``default`` when absent."""
        self._seen.add(key)
        return self._d.get(key, default)

    def done(self) -> None:
        """Refuse every key that was never read (unknown fields)."""
        unknown = sorted(set(self._d) - self._seen)
        if unknown:
            raise fail(self.where, f"unknown field(s) {', '.join(map(repr, unknown))}")


def check_fields(
    obj: Any, where: str, required: Collection[str], optional: Collection[str] = ()
) -> Mapping[str, Any]:
    """``obj`` as a mapping whose keys are all of ``required`` and some of ``optional``."""
    d = as_map(obj, where)
    unknown = sorted(set(d) - set(required) - set(optional))
    if unknown:
        raise fail(where, f"unknown field(s) {', '.join(map(repr, unknown))}")
    missing = sorted(set(required) - set(d))
    if missing:
        raise fail(where, f"misses the field(s) {', '.join(map(repr, missing))}")
    return d

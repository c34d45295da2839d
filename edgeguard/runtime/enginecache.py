"""The sealed per-device engine cache in the state directory (runtime layer).

A member compiled on this device (an ONNX Runtime optimised model in ORT format, a
TensorRT plan) is kept between starts as one **sealed entry** per binding:
``<state>/engines/<hex SHA-256(binding)>.sealed``, in the format of
:mod:`edgeguard.crypto.enginecache` (``docs/engine-cache.md``). What this module
guarantees:

* the plaintext artifact never reaches a file: it is sealed from memory and opened
  into locked memory (:class:`~edgeguard.runtime.secmem.SecretBuffer`);
* entries are written atomically (a temporary file, fsync, rename, fsync of the
  directory), so concurrent starts leave one whole entry, never a mixed one;
* an entry is read only through ``O_NOFOLLOW`` in the private ``engines`` directory:
  a symbolic link, a non-regular file, an entry above :data:`LIMITS` or of the wrong
  length, another binding's entry put in its place, an edited entry, or an entry
  sealed under another device key is **discarded** (deleted), and the caller rebuilds;
* every lookup is recorded in the event log: ``engine_cache_hit``,
  ``engine_cache_miss`` (reason), ``engine_cache_discarded`` (reason),
  ``engine_cache_sealed``, ``engine_cache_evicted``;
* a new entry evicts the other entries of its group (same bundle, member and kind:
  a superseded release, another library version or CPU), and the oldest entries
  beyond the total budget.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import secrets
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgeguard.crypto.enginecache import (
    HEADER_MAX,
    MAGIC,
    Binding,
    EntryOpener,
    parse_header,
    seal_entry,
)
from edgeguard.crypto.stream import ciphertext_size
from edgeguard.errors import EdgeguardError, IntegrityError, MalformedError, StateStoreError
from edgeguard.fsutil import UnsafePathError, atomic_write_at, open_nofollow, open_private_dir
from edgeguard.runtime.secmem import SecretBuffer
from edgeguard.runtime.state import ensure_state_dir

__all__ = [
    "LIMITS",
    "CacheLimits",
    "EngineCache",
    "cpu_identity",
    "open_cache",
]

_NAME_RE = re.compile(r"[0-9a-f]{64}\.sealed")
_PREFIX_MAX = len(MAGIC) + 2 + HEADER_MAX


@dataclass(frozen=True)
class CacheLimits:
    """The bounds of the engine cache (one place: :data:`LIMITS`).

    Attributes:
        max_artifact_bytes: Largest artifact sealed or opened (TensorRT plans run
            10-500 MB); also the file-size limit of a worker while it compiles.
        max_total_bytes: The cache directory's budget; the oldest entries go first.
    """

    max_artifact_bytes: int = 1 << 30
    max_total_bytes: int = 4 << 30


#: The engine cache's limits.
LIMITS = CacheLimits()


class EventSink(Protocol):
    """Where cache events go (:class:`~edgeguard.guard.eventlog.EventLog`)."""

    def append(self, kind: str, data: Mapping[str, Any]) -> Any:
        """Record one event."""


#: /proc/cpuinfo flags that change which kernels ONNX Runtime (MLAS) and its graph
#: optimisations (NCHWc blocking) pick; x86 and Arm.
_CPU_FLAGS = frozenset(
    [
        "sse3",
        "ssse3",
        "sse4_1",
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512dq",
        "avx512vl",
        "avx512cd",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "avx_vnni",
        "avx_vnni_int8",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
        "amx_fp16",
        "asimd",
        "asimddp",
        "asimdhp",
        "fphp",
        "sve",
        "sve2",
        "i8mm",
        "bf16",
        "sme",
    ]
)


def cpu_identity(cpuinfo: str | None = None) -> dict[str, str]:
    """What an ONNX Runtime CPU artifact is specific to: arch, CPU model, relevant flags.

    Args:
        cpuinfo: The text of ``/proc/cpuinfo`` (read when None; tests pass their own).
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                cpuinfo = f.read(1 << 20)
        except OSError:
            cpuinfo = ""
    model, flags = "", set[str]()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    clean = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in model)[:256]
    return {
        "machine": platform.machine()[:64] or "unknown",
        "cpu": clean or "unknown",
        "flags": " ".join(sorted(flags & _CPU_FLAGS)),
    }


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1e3, 3)


class EngineCache:
    """Sealed artifacts of one device in ``<state>/engines``.

    Args:
        state_dir: The (private) state directory.
        cache_key: :func:`edgeguard.crypto.enginecache.derive_cache_key` of the device.
        event_log: Where lookups and writes are recorded (None: nowhere).
        limits: The bounds (tests shrink them).

    Raises:
        StateStoreError: The engines directory is unsafe or cannot be created.
    """

    def __init__(
        self,
        state_dir: Path,
        cache_key: bytes,
        *,
        event_log: EventSink | None = None,
        limits: CacheLimits = LIMITS,
    ) -> None:
        if len(cache_key) != 32:
            raise ValueError("the cache key must be 32 bytes")
        self.path = Path(state_dir) / "engines"
        self._key = cache_key
        self._log = event_log
        self.limits = limits
        ensure_state_dir(Path(state_dir))  # private, created 0700 when missing
        self._dir_fd = self._open_dir()

    def _open_dir(self) -> int:
        try:
            fd = open_private_dir(self.path, what="engine cache directory")
        except UnsafePathError as exc:
            raise StateStoreError(str(exc), hint=exc.hint) from exc
        except OSError as exc:
            raise StateStoreError(f"cannot open engine cache {self.path}: {exc}") from exc
        assert fd is not None
        return fd

    def close(self) -> None:
        """Release the directory descriptor. Idempotent."""
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def __enter__(self) -> EngineCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- events ---------------------------------------------------------------------------

    def _event(self, kind: str, data: Mapping[str, Any]) -> None:
        if self._log is not None:
            with contextlib.suppress(Exception):  # the log never takes a start down
                self._log.append(kind, dict(data))

    @staticmethod
    def file_name(binding: Binding) -> str:
        """The entry's file name: hex SHA-256 of the binding's encoding, ``.sealed``."""
        return binding.digest().hex() + ".sealed"

    def record(self, kind: str, binding: Binding, **data: Any) -> None:
        """Record a cache event about ``binding`` (member, kind and binding digest added)."""
        base = {"member": binding.member, "kind": binding.kind, "binding": binding.digest().hex()}
        self._event(kind, {**base, **data})

    # -- lookup ---------------------------------------------------------------------------

    def load(self, binding: Binding) -> SecretBuffer | None:
        """The artifact of ``binding`` in locked memory, or None (miss or discarded).

        Never raises for a bad entry: it is deleted and recorded, and the caller
        rebuilds. The caller wipes the returned buffer once loaded.
        """
        name = self.file_name(binding)
        t0 = time.perf_counter()
        try:
            fd = open_nofollow(
                name, os.O_RDONLY, dir_fd=self._dir_fd, where=self.path, what="engine cache entry"
            )
        except FileNotFoundError:
            self.record("engine_cache_miss", binding, reason="absent")
            return None
        except UnsafePathError as exc:
            self._discard(name, binding, "unsafe", str(exc))
            return None
        except OSError as exc:
            self._discard(name, binding, "unreadable", str(exc))
            return None
        buf: SecretBuffer | None = None
        try:
            buf = self._read(fd, binding)
        except (MalformedError, IntegrityError) as exc:
            reason = "tampered" if isinstance(exc, IntegrityError) else "malformed"
            if "another binding" in str(exc) or "another member" in str(exc):
                reason = "binding"
            elif "too large" in str(exc):
                reason = "too large"
            self._discard(name, binding, reason, str(exc))
            return None
        except OSError as exc:
            self._discard(name, binding, "unreadable", str(exc))
            return None
        finally:
            os.close(fd)
        self.record("engine_cache_hit", binding, bytes=buf.size, ms=_ms(t0))
        return buf

    def _read(self, fd: int, binding: Binding) -> SecretBuffer:
        st = os.fstat(fd)
        limit = _PREFIX_MAX + ciphertext_size(self.limits.max_artifact_bytes, 1 << 20)
        if st.st_size > limit:
            raise MalformedError(f"entry too large ({st.st_size} bytes; limit {limit})")
        header = parse_header(os.pread(fd, _PREFIX_MAX, 0), max_size=self.limits.max_artifact_bytes)
        if st.st_size != len(header.prefix) + header.body_size:
            raise MalformedError("entry has the wrong length (truncated or extended)")
        opener = EntryOpener(self._key, header, binding)
        buf = SecretBuffer(header.size)
        try:
            out = buf.view()
            try:
                base = len(header.prefix)
                for i in range(opener.chunks):
                    off, length = opener.span(i)
                    sealed = os.pread(fd, length, base + off)
                    start = i * header.chunk
                    opener.open_into(i, sealed, out[start : start + length - 16])
            finally:
                out.release()
        except BaseException:
            buf.wipe()
            raise
        return buf

    def discard(self, binding: Binding, reason: str, detail: str) -> None:
        """Delete ``binding``'s entry (it opened but did not load) and record why."""
        self._discard(self.file_name(binding), binding, reason, detail)

    def _discard(self, name: str, binding: Binding, reason: str, detail: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=self._dir_fd)  # a link itself, never its target
        self.record("engine_cache_discarded", binding, reason=reason, detail=detail[:300])

    # -- store ----------------------------------------------------------------------------

    def store(self, binding: Binding, artifact: bytes | bytearray | memoryview) -> bool:
        """Seal ``artifact`` for ``binding``, replace its entry atomically, evict stale ones.

        Returns:
            True when sealed; False when it was not cached (empty, above the limit, or
            the write failed), which is recorded and never fatal.
        """
        t0 = time.perf_counter()
        size = memoryview(artifact).nbytes
        if not 0 < size <= self.limits.max_artifact_bytes:
            self.record(
                "engine_cache_skipped",
                binding,
                reason=f"artifact size {size} outside 1..{self.limits.max_artifact_bytes}",
            )
            return False
        name = self.file_name(binding)
        try:
            atomic_write_at(
                self._dir_fd,
                name,
                seal_entry(self._key, binding, artifact, salt=secrets.token_bytes(32)),
            )
        except OSError as exc:
            self.record("engine_cache_skipped", binding, reason=f"write failed: {exc}"[:300])
            return False
        self.record("engine_cache_sealed", binding, bytes=size, ms=_ms(t0))
        self._evict(binding, keep=name)
        return True

    def _entries(self) -> list[tuple[str, os.stat_result]]:
        out = []
        for entry in os.listdir(self._dir_fd):
            if not _NAME_RE.fullmatch(entry):
                continue
            with contextlib.suppress(OSError):
                st = os.stat(entry, dir_fd=self._dir_fd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    out.append((entry, st))
        return out

    def _group_of(self, name: str) -> bytes | None:
        try:
            fd = open_nofollow(name, os.O_RDONLY, dir_fd=self._dir_fd, where=self.path)
        except OSError:
            return None
        try:
            return parse_header(
                os.pread(fd, _PREFIX_MAX, 0), max_size=self.limits.max_artifact_bytes
            ).group
        except (MalformedError, OSError):
            return None
        finally:
            os.close(fd)

    def _evict(self, binding: Binding, *, keep: str) -> None:
        group = binding.group()
        gone: list[str] = []
        entries = self._entries()
        for entry, _st in entries:
            if entry != keep and self._group_of(entry) == group:
                with contextlib.suppress(OSError):
                    os.unlink(entry, dir_fd=self._dir_fd)
                    gone.append(entry)
        rest = sorted(
            ((st.st_mtime_ns, e, st.st_size) for e, st in entries if e not in gone),
            reverse=True,
        )
        total = 0
        for _mtime, entry, size in rest:  # newest first; the budget keeps the newest
            total += size
            if total > self.limits.max_total_bytes and entry != keep:
                with contextlib.suppress(OSError):
                    os.unlink(entry, dir_fd=self._dir_fd)
                    gone.append(entry)
        if gone:
            self.record("engine_cache_evicted", binding, entries=sorted(gone))


def open_cache(
    state_dir: Path, cache_key: bytes, *, event_log: EventSink | None
) -> EngineCache | None:
    """:class:`EngineCache`, or None (recorded) when the directory cannot be used."""
    try:
        return EngineCache(state_dir, cache_key, event_log=event_log)
    except EdgeguardError as exc:
        if event_log is not None:
            with contextlib.suppress(Exception):
                event_log.append("engine_cache_unavailable", {"error": str(exc)[:300]})
        return None

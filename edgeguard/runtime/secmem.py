"""Memory for decrypted model bytes: anonymous, unswappable where allowed, wiped on close.

Layer: runtime. A :class:`SecretBuffer` is an anonymous private mapping (never
backed by a file), with transparent huge pages requested (fewer page faults
for large models), excluded from core dumps (``MADV_DONTDUMP``) and, when the
process may, locked in RAM so it is never written to swap. The lock uses
``mlock2(MLOCK_ONFAULT)``: pages are locked as they are first written (or
populated with :meth:`SecretBuffer.populate`, which the payload's reading thread
does ahead of the decryption while it would otherwise wait), so the cost of
faulting them in is spread over the decryption instead of being paid up front.
Whether the lock succeeded is reported in :attr:`SecretBuffer.locked`: an
unprivileged process with a small ``RLIMIT_MEMLOCK`` gets an unlocked buffer, not
an error.

:func:`forbid_core_dumps` is the process-wide half: a process that is about to hold
plaintext sets ``RLIMIT_CORE`` to 0 and makes itself non-dumpable, so neither a crash
nor a peer with the same uid (``ptrace``, ``/proc/<pid>/mem``) gets at copies that are
not in a :class:`SecretBuffer` (the inference library's own, see
``docs/threat-model.md``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import os
import resource
from functools import lru_cache
from typing import Any

from edgeguard.errors import PolicyError

__all__ = ["SecretBuffer", "forbid_core_dumps"]


@lru_cache(maxsize=1)
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


_MLOCK_ONFAULT = 1
_MADV_POPULATE_WRITE = 23  # Linux 5.14 and later
_PR_SET_DUMPABLE = 4


def forbid_core_dumps() -> None:
    """No core dump of this process, ever: ``RLIMIT_CORE`` 0 (soft and hard), not dumpable.

    Called before a bundle's data key is unwrapped, so no plaintext exists yet. Both
    settings are process-wide and meant to stay: freed heap memory may keep copies of
    model bytes after a session closes, so the process must not dump core later either
    (lowering the hard limit cannot be undone without ``CAP_SYS_RESOURCE``). A
    non-dumpable process also refuses ``ptrace`` attach and ``/proc/<pid>/mem`` to
    peers with the same uid; child processes start dumpable again after ``execve``
    (sandboxed workers make themselves non-dumpable first thing).

    Raises:
        PolicyError: The kernel refused either setting; nothing may be decrypted then.
    """
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as exc:
        raise PolicyError(f"cannot disable core dumps (RLIMIT_CORE): {exc}") from exc
    libc = _libc()
    zero = ctypes.c_ulong(0)
    res = -1 if libc is None else libc.prctl(ctypes.c_int(_PR_SET_DUMPABLE), zero, zero, zero, zero)
    if res != 0:
        err = ctypes.get_errno() if libc is not None else 0
        raise PolicyError(
            f"cannot make this process non-dumpable (PR_SET_DUMPABLE): {os.strerror(err)}",
            hint="edgeguard decrypts models only in a process that cannot dump core",
        )


class SecretBuffer:
    """A fixed-size, zero-initialised buffer for plaintext secrets."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("size must be non-negative")
        self.size = size
        self._mm: mmap.mmap | None = mmap.mmap(
            -1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        )
        for advice in ("MADV_DONTDUMP", "MADV_HUGEPAGE"):
            value = getattr(mmap, advice, None)
            if value is not None and (advice != "MADV_HUGEPAGE" or size >= 2 << 20):
                with contextlib.suppress(OSError):
                    self._mm.madvise(value)
        self.locked = self._mlock(True)

    def _mlock(self, lock: bool) -> bool:
        libc = _libc()
        if libc is None or self._mm is None or self.size == 0:
            return False
        anchor = ctypes.c_char.from_buffer(self._mm)
        try:
            addr = ctypes.addressof(anchor)
            if not lock:
                libc.munlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
                return bool(libc.munlock(addr, self.size) == 0)
            mlock2 = getattr(libc, "mlock2", None)
            if mlock2 is not None:
                mlock2.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
                if mlock2(addr, self.size, _MLOCK_ONFAULT) == 0:
                    return True
            libc.mlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
            return bool(libc.mlock(addr, self.size) == 0)
        finally:
            del anchor

    def populate(self, offset: int, length: int) -> bool:
        """Fault in the pages of ``[offset, offset + length)`` writable, without writing them.

        ``madvise(MADV_POPULATE_WRITE)`` leaves the bytes as they are, so another thread
        may call it on a range that is being written, ahead of the writer. It takes the
        first-touch cost (the kernel zeroing pages; on a VM, the host backing them) off
        the writing thread. The GIL is released meanwhile.

        Returns:
            False when the kernel cannot (before Linux 5.14) or the buffer was wiped;
            the pages then fault in when first written, as without this call.
        """
        libc = _libc()
        mm = self._mm
        if libc is None or mm is None or length <= 0 or offset < 0:
            return False
        length = min(length, self.size - offset)
        if length <= 0:
            return False
        anchor = ctypes.c_char.from_buffer(mm)
        try:
            first = ctypes.addressof(anchor) + offset
            start = first - first % mmap.PAGESIZE
            libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            return bool(libc.madvise(start, first + length - start, _MADV_POPULATE_WRITE) == 0)
        finally:
            del anchor

    def view(self) -> memoryview:
        """A writable view of exactly ``size`` bytes (release it before :meth:`wipe`)."""
        if self._mm is None:
            raise ValueError("the buffer was wiped")
        return memoryview(self._mm)[: self.size]

    def __bytes__(self) -> bytes:
        if self._mm is None:
            raise ValueError("the buffer was wiped")
        return self._mm[: self.size]

    def __len__(self) -> int:
        return self.size

    @property
    def wiped(self) -> bool:
        """Whether :meth:`wipe` has run."""
        return self._mm is None

    def wipe(self) -> None:
        """Zero the bytes, unlock and unmap. Views still held keep the mapping alive."""
        mm = self._mm
        if mm is None:
            return
        anchor = ctypes.c_char.from_buffer(mm)
        try:
            ctypes.memset(ctypes.addressof(anchor), 0, len(mm))
        finally:
            del anchor
        if self.locked:
            self._mlock(False)
        self._mm = None
        # A caller may still hold a view; the zeroed mapping then goes with it.
        with contextlib.suppress(BufferError):
            mm.close()

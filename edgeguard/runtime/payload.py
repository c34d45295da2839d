"""One pass over a bundle's payload: read, hash, decrypt and re-hash, on two threads.

Layer: runtime (file I/O). :func:`decrypt_payload` is the only code that turns a
payload into plaintext; :func:`~edgeguard.runtime.opener.open_bundle` calls it, so
``open_session`` and ``edgeguard verify --device-key`` (``check_on_device``) take the
same road, the latter with the plaintext re-hash on.

The payload is cut into blocks of whole sealed chunks of one member (at most
:data:`BLOCK_BYTES`, so a block stays in the core's cache while it is used) and goes
through a two-stage pipeline:

* the **reading thread** reads a block into one of :data:`SLOTS` ring buffers, hands it
  to the decrypting thread and feeds it to the payload's SHA-256 (the ciphertext
  digest) while the other thread decrypts it; whenever no buffer is free it faults in
  the members' destination pages ahead of the decryption (:class:`_Prefault`), so the
  first-touch cost of a payload-sized buffer is shared by both threads;
* the **calling thread** opens every chunk of the block with
  :meth:`~edgeguard.crypto.stream.StreamDecryptor.decrypt_into` straight into the
  member's :class:`~edgeguard.runtime.secmem.SecretBuffer` (every chunk tag is
  checked) and, when asked, feeds the chunk's plaintext to the member's SHA-256 at once,
  while it is still in cache; then it gives the buffer back.

Reading and hashing release the GIL (``hashlib`` does for updates of 2 KiB and more),
AES-GCM decryption in ``cryptography`` holds it, so the two threads overlap the hashes
with each other and with the decryption. Security does not depend on the overlap: the
member digests are compared when a member's last chunk is open, the payload digest once
the reading thread is done, and the plaintext is returned only when every comparison
held. On any failure (a chunk tag, a digest, a short read, an interrupt) the reading
thread is stopped and joined and every member buffer is wiped before the error
propagates; the error is the one the sequential order of checks would give, because the
calling thread consumes blocks, and the reading thread's errors, in payload order.
Memory: the members' buffers (allocated up front, each the member's size) and
:data:`SLOTS` read buffers of at most :data:`BLOCK_BYTES`; no other copy of the payload.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path
from queue import Empty, SimpleQueue

from edgeguard.bundle.model import Member
from edgeguard.crypto.stream import (
    TAG_LEN,
    StreamDecryptor,
    chunk_count,
    ciphertext_size,
    derive_stream_key,
)
from edgeguard.errors import IntegrityError
from edgeguard.runtime.secmem import SecretBuffer

__all__ = ["BLOCK_BYTES", "PREFAULT_BYTES", "SLOTS", "decrypt_payload"]

#: Sealed bytes handed from the reading thread to the decrypting one at a time (at
#: least one chunk): small enough to stay in a core's L2 cache while it is hashed and
#: decrypted, large enough that the hand-offs cost nothing measurable.
BLOCK_BYTES = 1 << 20
#: Read buffers in flight: one being read and hashed, one being decrypted, one spare.
SLOTS = 3
#: Destination bytes the reading thread faults in per step while it waits for a buffer
#: (one huge page).
PREFAULT_BYTES = 2 << 20


@dataclass(frozen=True)
class _Block:
    """A run of whole sealed chunks of one member's stream."""

    member: int  # index in the manifest
    first: int  # first chunk
    count: int  # chunks
    nbytes: int  # sealed bytes


def _plan(members: Sequence[Member], chunk_size: int) -> Iterator[_Block]:
    """The payload's blocks in file order (both threads walk the same plan)."""
    sealed = chunk_size + TAG_LEN
    per_block = max(1, BLOCK_BYTES // sealed)
    for index, member in enumerate(members):
        chunks = chunk_count(member.size, chunk_size)
        stream = ciphertext_size(member.size, chunk_size)
        for first in range(0, chunks, per_block):
            count = min(per_block, chunks - first)
            end = min((first + count) * sealed, stream)
            yield _Block(index, first, count, end - first * sealed)


_DONE = object()  # the reading thread hashed the whole payload


class _Prefault:
    """Faults in the members' destination ahead of the decryption, in steps.

    The first write to a fresh page costs a page fault (the kernel zeroes the page; on a
    VM the host may have to back it first), and for a large payload that costs as much
    as a hash pass. Left to the decrypting thread it lengthens the pipeline's slower
    stage; the reading thread takes steps of it whenever it would otherwise wait for a
    free buffer. :meth:`SecretBuffer.populate` only maps pages, it never writes them,
    so it may run on a range the other thread is writing.
    """

    def __init__(self, secrets: Sequence[SecretBuffer]) -> None:
        self._secrets = secrets
        self._at = (0, 0)  # (member, offset) faulted in up to here
        #: (member, offset) decrypted up to here; set by the decrypting thread.
        self.decrypted = (0, 0)

    def step(self) -> bool:
        """Fault in the next :data:`PREFAULT_BYTES` ahead; False when none are left."""
        member, offset = max(self._at, self.decrypted)
        while member < len(self._secrets) and offset >= self._secrets[member].size:
            member, offset = member + 1, 0
        if member >= len(self._secrets):
            self._at = (member, 0)
            return False
        n = min(PREFAULT_BYTES, self._secrets[member].size - offset)
        if not self._secrets[member].populate(offset, n):
            self._at = (len(self._secrets), 0)  # the kernel cannot; writes fault as usual
            return False
        self._at = (member, offset + n)
        return True


def _take_slot(free: SimpleQueue[int | None], ahead: _Prefault) -> int | None:
    """A free read buffer; while there is none, fault in the destination ahead."""
    while True:
        try:
            return free.get_nowait()
        except Empty:
            if not ahead.step():
                return free.get()


def _read_exact(f: BufferedReader, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise IntegrityError("bundle is truncated")
        got += n


def _read_and_hash(
    f: BufferedReader,
    plan: Iterator[_Block],
    buffers: Sequence[memoryview],
    free: SimpleQueue[int | None],
    ready: SimpleQueue[object],
    digest: hashlib._Hash,
    stop: threading.Event,
    ahead: _Prefault,
) -> None:
    """The reading thread: read each block, hand it over, then hash it; fault in the
    destination ahead of the decryption while it waits for a buffer."""
    try:
        for block in plan:
            slot = _take_slot(free, ahead)
            if slot is None or stop.is_set():
                return
            view = buffers[slot][: block.nbytes]
            _read_exact(f, view)
            ready.put(slot)
            digest.update(view)  # read-only, beside the other thread's decryption
        ready.put(_DONE)
    except BaseException as exc:  # handed to the calling thread, which raises it
        ready.put(exc)


def decrypt_payload(
    f: BufferedReader,
    members: Sequence[Member],
    *,
    path: Path,
    data_key: bytes,
    salt: bytes,
    chunk_size: int,
    payload_digest: bytes,
    check_plaintext: bool,
) -> dict[str, SecretBuffer]:
    """Decrypt every member from ``f`` (positioned at the payload) into secret memory.

    Args:
        f: The bundle file, positioned at the first payload byte. Only the reading
            thread uses it until this returns.
        members: The signed manifest's members, in order (their streams tile the
            payload).
        path: The bundle file, for messages.
        data_key: The unwrapped data key.
        salt: The payload salt (stream keys).
        chunk_size: The signed STREAM chunk size.
        payload_digest: The signed SHA-256 of the whole payload.
        check_plaintext: Also hash every member's plaintext and compare it with the
            member's signed digest.

    Returns:
        Every member's plaintext by name, once every chunk tag, the payload digest and
        (when asked) every member digest held.

    Raises:
        IntegrityError: A chunk does not authenticate, the payload or a member digest
            differs, or the file ends early. Every member buffer is wiped first.
        OSError: Reading the file failed (the buffers are wiped likewise).
        MemoryError: A member buffer cannot be mapped.
    """
    sealed = chunk_size + TAG_LEN
    slot_bytes = max(1, BLOCK_BYTES // sealed) * sealed
    buffers = [memoryview(bytearray(slot_bytes)) for _ in range(SLOTS)]
    free: SimpleQueue[int | None] = SimpleQueue()
    for slot in range(SLOTS):
        free.put(slot)
    ready: SimpleQueue[object] = SimpleQueue()
    ct_hash = hashlib.sha256()
    stop = threading.Event()
    out: dict[str, SecretBuffer] = {}
    out_view: memoryview | None = None
    reader: threading.Thread | None = None
    try:
        for member in members:
            out[member.name] = SecretBuffer(member.size)
        ahead = _Prefault(list(out.values()))
        reader = threading.Thread(
            target=_read_and_hash,
            args=(f, _plan(members, chunk_size), buffers, free, ready, ct_hash, stop, ahead),
            name="eg-read-hash",
            daemon=True,
        )
        reader.start()
        dec: StreamDecryptor | None = None
        pt_hash = hashlib.sha256()
        for block in _plan(members, chunk_size):
            item = ready.get()
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, int)
            member = members[block.member]
            if block.first == 0:
                dec = StreamDecryptor(
                    derive_stream_key(data_key, salt=salt, index=block.member),
                    plaintext_size=member.size,
                    chunk_size=chunk_size,
                )
                out_view = out[member.name].view()
                pt_hash = hashlib.sha256()
            assert dec is not None and out_view is not None
            src = buffers[item]
            for k in range(block.count):
                index = block.first + k
                start = index * chunk_size
                end = min(start + chunk_size, member.size)
                off = k * sealed
                plain = out_view[start:end]
                dec.decrypt_into(index, src[off : off + end - start + TAG_LEN], plain)
                if check_plaintext:
                    pt_hash.update(plain)  # still in cache
            free.put(item)
            ahead.decrypted = (block.member, end)
            if block.first + block.count == dec.chunks:
                out_view.release()
                out_view = None
                if check_plaintext and not hmac.compare_digest(
                    pt_hash.digest(), member.digest.value
                ):
                    raise IntegrityError(
                        f"member {member.name!r} is not authentic (digest mismatch)"
                    )
        item = ready.get()
        if isinstance(item, BaseException):
            raise item
        assert item is _DONE
        if not hmac.compare_digest(ct_hash.digest(), payload_digest):
            raise IntegrityError(f"bundle {path} is not authentic (payload digest mismatch)")
    except BaseException:
        _stop(reader, stop, free)
        if out_view is not None:
            out_view.release()
        for secret in out.values():
            secret.wipe()
        raise
    _stop(reader, stop, free)
    return out


def _stop(
    reader: threading.Thread | None, stop: threading.Event, free: SimpleQueue[int | None]
) -> None:
    """Tell the reading thread to stop and wait for it."""
    stop.set()
    free.put(None)
    if reader is not None and reader.ident is not None:
        reader.join()

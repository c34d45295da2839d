"""The pipelined payload pass (runtime/payload.py): the same plaintext as a sequential
reference, and on every failure mid-way a refusal with the sequential error, the member
buffers wiped and the reading thread gone."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from io import BufferedReader
from pathlib import Path
from typing import Any

import pytest

from edgeguard.bundle.model import Digest, Member
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.keys import DeviceKey, SignerKey
from edgeguard.crypto.stream import TAG_LEN, StreamDecryptor, derive_stream_key
from edgeguard.crypto.wrap import unwrap_data_key
from edgeguard.errors import IntegrityError
from edgeguard.packaging.packager import MemberSource, write_bundle
from edgeguard.runtime import payload as payload_mod
from edgeguard.runtime.opener import open_bundle, read_prefix
from edgeguard.runtime.secmem import SecretBuffer
from tests.bundle.conftest import NOW

CHUNK = 65536
SEALED = CHUNK + TAG_LEN
# sizes around chunk boundaries: several blocks per member once BLOCK_BYTES is small
SIZES = (3 * CHUNK + 100, 0, CHUNK, 5 * CHUNK - 1, 1)


def _data(n: int, seed: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d/%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:n])


def _build(
    path: Path, signer: SignerKey, device: DeviceKey, sizes: tuple[int, ...], chunk: int = CHUNK
) -> list[bytes]:
    plains = [_data(n, i) for i, n in enumerate(sizes)]
    sources = [MemberSource("model", plains[0])] + [
        MemberSource(f"aux{i}", p, role="aux", format="json") for i, p in enumerate(plains[1:])
    ]
    write_bundle(
        path,
        sources,
        name="pipe",
        version=1,
        signer=signer,
        recipients=[device.public],
        profiles=["generic-cpu"],
        expires=NOW + 86400,
        created=NOW - 60,
        chunk_size=chunk,
    )
    return plains


def _sequential_reference(path: Path, device: DeviceKey) -> dict[str, bytes]:
    """One chunk after the other with ``decrypt_chunk``, no threads, checks in the order
    of docs/bundle-format.md (tags, member digests, payload digest): what the pipeline
    must reproduce, results and errors."""
    with open(path, "rb") as f:
        prefix, _ = read_prefix(f)
        f.seek(prefix.payload_offset)
        payload = f.read()
    header = prefix.header
    key = unwrap_data_key(header.recipients[0].wrapped, device, salt=header.payload.salt)
    out = {}
    for index, m in enumerate(header.manifest.members):
        dec = StreamDecryptor(
            derive_stream_key(key, salt=header.payload.salt, index=index),
            plaintext_size=m.size,
            chunk_size=header.payload.chunk_size,
        )
        stream = payload[m.offset : m.offset + m.ct_size(header.payload.chunk_size)]
        parts = []
        for i in range(dec.chunks):
            start, length = dec.chunk_span(i)
            parts.append(dec.decrypt_chunk(i, stream[start : start + length]))
        out[m.name] = b"".join(parts)
        if hashlib.sha256(out[m.name]).digest() != m.digest.value:
            raise IntegrityError(f"member {m.name!r} is not authentic (digest mismatch)")
    if hashlib.sha256(payload).digest() != header.payload.digest.value:
        raise IntegrityError(f"bundle {path} is not authentic (payload digest mismatch)")
    return out


class _Spy:
    """Records every SecretBuffer the pipeline makes and every reading thread it starts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.buffers: list[SecretBuffer] = []
        spy = self

        class Recorded(SecretBuffer):
            def __init__(self, size: int) -> None:
                super().__init__(size)
                spy.buffers.append(self)

        monkeypatch.setattr(payload_mod, "SecretBuffer", Recorded)

    def all_wiped(self) -> bool:
        return all(b.wiped for b in self.buffers)


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "eg-read-hash"]


@pytest.fixture(params=[3 * SEALED, payload_mod.BLOCK_BYTES], ids=["3-chunk-blocks", "1MiB"])
def block_bytes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(payload_mod, "BLOCK_BYTES", request.param)
    if request.param < payload_mod.BLOCK_BYTES:  # many prefault steps beside the decryption
        monkeypatch.setattr(payload_mod, "PREFAULT_BYTES", 8192)
    return int(request.param)


@pytest.mark.parametrize("check", [True, False], ids=["re-hash", "no-re-hash"])
def test_same_plaintext_as_the_sequential_reference(
    tmp_path: Path, signer, device, trust: TrustStore, block_bytes: int, check: bool
) -> None:
    b = tmp_path / "b.egb"
    plains = _build(b, signer, device, SIZES)
    reference = _sequential_reference(b, device)
    ob = open_bundle(
        b,
        trust=trust,
        device_key=device,
        state_dir=tmp_path / "s",
        now=NOW,
        check_plaintext_digests=check,
    )
    got = {name: bytes(buf) for name, buf in ob.members.items()}
    assert got == reference
    assert list(got.values()) == plains
    ob.wipe()
    assert not _reader_threads()


def test_one_mib_chunks(tmp_path: Path, signer, device, trust: TrustStore) -> None:
    b = tmp_path / "b.egb"
    chunk = 1 << 20
    plains = _build(b, signer, device, (2 * chunk + 7, 10), chunk=chunk)
    ob = open_bundle(
        b, trust=trust, device_key=device, state_dir=tmp_path / "s", now=NOW,
        check_plaintext_digests=True,
    )  # fmt: skip
    assert (
        [bytes(v) for v in ob.members.values()]
        == plains
        == list(_sequential_reference(b, device).values())
    )
    ob.wipe()


def _payload_offset(path: Path) -> int:
    with open(path, "rb") as f:
        prefix, _ = read_prefix(f)
    return prefix.payload_offset


@pytest.mark.parametrize(
    ("where", "check"),
    [
        ("middle chunk of the first member", True),
        ("middle chunk of the first member", False),
        ("last chunk of the first member", True),
        ("middle chunk of the last member", True),
        ("last chunk of the last member", False),
        ("tag of the last chunk of the last member", True),
    ],
)
def test_a_tampered_chunk_is_refused_with_the_sequential_error_and_wiped(
    tmp_path: Path,
    signer,
    device,
    trust: TrustStore,
    monkeypatch: pytest.MonkeyPatch,
    block_bytes: int,
    where: str,
    check: bool,
) -> None:
    b = tmp_path / "b.egb"
    sizes = (5 * CHUNK + 100, 4 * CHUNK + 3)
    _build(b, signer, device, sizes)
    base = _payload_offset(b)
    first_stream = sizes[0] + 6 * TAG_LEN
    last_stream = sizes[1] + 5 * TAG_LEN
    pos = {
        "middle chunk of the first member": 2 * SEALED + 10,
        "last chunk of the first member": 5 * SEALED + 50,
        "middle chunk of the last member": first_stream + 2 * SEALED + 9,
        "last chunk of the last member": first_stream + 4 * SEALED,
        "tag of the last chunk of the last member": first_stream + last_stream - 1,
    }[where]
    data = bytearray(b.read_bytes())
    data[base + pos] ^= 0x40
    b.write_bytes(bytes(data))
    # what the sequential order of checks says about the same bytes
    with pytest.raises(IntegrityError) as sequential:
        _sequential_reference(b, device)
    spy = _Spy(monkeypatch)
    with pytest.raises(IntegrityError) as piped:
        open_bundle(
            b,
            trust=trust,
            device_key=device,
            state_dir=tmp_path / "s",
            now=NOW,
            check_plaintext_digests=check,
        )
    assert type(piped.value) is type(sequential.value)
    assert str(piped.value) == str(sequential.value)
    assert str(piped.value) == "bundle is not authentic (payload authentication failed)"
    assert len(spy.buffers) == len(sizes) and spy.all_wiped()
    assert not _reader_threads()
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def _members_and_key(path: Path, device: DeviceKey) -> tuple[Any, bytes]:
    with open(path, "rb") as f:
        prefix, _ = read_prefix(f)
    header = prefix.header
    key = unwrap_data_key(header.recipients[0].wrapped, device, salt=header.payload.salt)
    return prefix, key


def _run(
    f: Any, prefix: Any, key: bytes, *, members: Any = None, digest: bytes | None = None,
    check: bool = True,
) -> dict[str, SecretBuffer]:  # fmt: skip
    p = prefix.header.payload
    return payload_mod.decrypt_payload(
        f,
        members if members is not None else prefix.header.manifest.members,
        path=Path("b.egb"),
        data_key=key,
        salt=p.salt,
        chunk_size=p.chunk_size,
        payload_digest=digest if digest is not None else p.digest.value,
        check_plaintext=check,
    )


@pytest.mark.parametrize("keep", ["half of the last chunk", "all but the last chunk", "nothing"])
def test_a_payload_that_ends_early_is_refused_and_wiped(
    tmp_path: Path, signer, device, monkeypatch: pytest.MonkeyPatch, block_bytes: int, keep: str
) -> None:
    """The file shrank after its length was checked: the reading thread's short read
    reaches the caller in payload order."""
    b = tmp_path / "b.egb"
    sizes = (4 * CHUNK + 5, 7 * CHUNK)
    _build(b, signer, device, sizes)
    prefix, key = _members_and_key(b, device)
    total = prefix.header.payload.size
    cut = {
        "half of the last chunk": total - SEALED // 2,
        "all but the last chunk": total - SEALED,
        "nothing": 0,
    }[keep]
    data = b.read_bytes()
    short = tmp_path / "short.egb"
    short.write_bytes(data[: prefix.payload_offset + cut])
    spy = _Spy(monkeypatch)
    with open(short, "rb") as f:
        f.seek(prefix.payload_offset)
        with pytest.raises(IntegrityError, match="bundle is truncated"):
            _run(f, prefix, key)
    assert len(spy.buffers) == len(sizes) and spy.all_wiped()
    assert not _reader_threads()


def test_digests_are_compared_before_anything_is_returned(
    tmp_path: Path, signer, device, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = tmp_path / "b.egb"
    _build(b, signer, device, (3 * CHUNK + 1, 100))
    prefix, key = _members_and_key(b, device)
    members = prefix.header.manifest.members
    wrong = dataclasses.replace(
        members[1], digest=dataclasses.replace(members[1].digest, value=bytes(32))
    )
    spy = _Spy(monkeypatch)
    with open(b, "rb") as f:
        f.seek(prefix.payload_offset)
        with pytest.raises(IntegrityError, match="not authentic \\(payload digest mismatch\\)"):
            _run(f, prefix, key, digest=bytes(32))
        assert len(spy.buffers) == 2 and spy.all_wiped()  # every tag held, then the digest
        f.seek(prefix.payload_offset)
        with pytest.raises(IntegrityError, match="member 'aux0' is not authentic"):
            _run(f, prefix, key, members=(members[0], wrong))
        assert len(spy.buffers) == 4 and spy.all_wiped()
        f.seek(prefix.payload_offset)
        # without the re-hash the member digest is not looked at (the payload digest is)
        out = _run(f, prefix, key, members=(members[0], wrong), check=False)
    assert sorted(out) == ["aux0", "model"]
    for buf in out.values():
        buf.wipe()
    assert not _reader_threads()


class _FailingReader:
    """A file that raises ``exc`` on its ``n``-th read."""

    def __init__(self, f: BufferedReader, n: int, exc: BaseException) -> None:
        self._f, self._n, self._exc = f, n, exc

    def readinto(self, view: memoryview) -> int:
        self._n -= 1
        if self._n == 0:
            raise self._exc
        return self._f.readinto(view)


def test_a_read_error_and_an_interrupt_mid_way_wipe_and_stop_the_reader(
    tmp_path: Path, signer, device, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(payload_mod, "BLOCK_BYTES", 2 * SEALED)
    b = tmp_path / "b.egb"
    _build(b, signer, device, (9 * CHUNK, 5 * CHUNK))
    prefix, key = _members_and_key(b, device)
    spy = _Spy(monkeypatch)
    with open(b, "rb") as f:
        f.seek(prefix.payload_offset)
        with pytest.raises(OSError, match="disk went away"):
            _run(_FailingReader(f, 7, OSError(5, "disk went away")), prefix, key)
    assert len(spy.buffers) == 2 and spy.all_wiped()
    assert not _reader_threads()

    real = StreamDecryptor.decrypt_into
    calls = iter(range(1000))

    def interrupted(self: StreamDecryptor, index: int, sealed: Any, out: memoryview) -> None:
        if next(calls) == 11:
            raise KeyboardInterrupt
        real(self, index, sealed, out)

    monkeypatch.setattr(StreamDecryptor, "decrypt_into", interrupted)
    with open(b, "rb") as f:
        f.seek(prefix.payload_offset)
        with pytest.raises(KeyboardInterrupt):
            _run(f, prefix, key)
    assert len(spy.buffers) == 4 and spy.all_wiped()
    assert not _reader_threads()


def test_blocks_tile_the_payload() -> None:
    digest = Digest("sha256", bytes(32))
    sizes = (0, 1, CHUNK, 15 * CHUNK, 15 * CHUNK + 1, 40 * CHUNK + 3)
    members = []
    offset = 0
    for i, n in enumerate(sizes):
        members.append(Member(f"m{i}", "aux", "json", n, digest, offset))
        offset += n + TAG_LEN * max(1, -(-n // CHUNK))
    blocks = list(payload_mod._plan(members, CHUNK))
    assert sum(bl.nbytes for bl in blocks) == offset
    per_block = payload_mod.BLOCK_BYTES // SEALED
    assert all(bl.nbytes <= payload_mod.BLOCK_BYTES and bl.count <= per_block for bl in blocks)
    for i, m in enumerate(members):
        mine = [bl for bl in blocks if bl.member == i]
        assert sum(bl.nbytes for bl in mine) == m.size + TAG_LEN * max(1, -(-m.size // CHUNK))
        assert [bl.first for bl in mine] == list(range(0, len(mine) * per_block, per_block))


def test_verify_and_open_take_the_same_road(
    tmp_path: Path, signer, device, trust: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check_on_device (edgeguard verify --device-key) and open_bundle (open_session's
    first step) both decrypt through decrypt_payload, the former with the re-hash."""
    from edgeguard.runtime import opener
    from edgeguard.runtime.session import check_on_device

    b = tmp_path / "b.egb"
    _build(b, signer, device, (2 * CHUNK + 1,))
    calls: list[bool] = []
    real = opener.decrypt_payload

    def spy(*a: Any, **k: Any) -> dict[str, SecretBuffer]:
        calls.append(k["check_plaintext"])
        return real(*a, **k)

    monkeypatch.setattr(opener, "decrypt_payload", spy)
    check_on_device(
        b, trust=trust, device_key=device, state_dir=tmp_path / "s", isolation="threads", now=NOW
    )
    open_bundle(b, trust=trust, device_key=device, state_dir=tmp_path / "s", now=NOW).wipe()
    assert calls == [True, False]

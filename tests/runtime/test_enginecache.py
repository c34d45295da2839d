"""The sealed engine cache in the state directory: hits, misses, and every refusal.

Each refusal path deletes the entry, records ``engine_cache_discarded`` with its reason
and returns None (the caller rebuilds); none raises.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from edgeguard.crypto.enginecache import Binding, derive_cache_key
from edgeguard.crypto.keys import DeviceKey
from edgeguard.errors import StateStoreError
from edgeguard.runtime.enginecache import CacheLimits, EngineCache, cpu_identity, open_cache

KEY = derive_cache_key(DeviceKey.generate("cam-01", kem="x25519"))
ARTIFACT = os.urandom(200_000)


class Log:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def append(self, kind: str, data: Any) -> None:
        self.records.append((kind, dict(data)))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.records]

    def last(self, kind: str) -> dict[str, Any]:
        return [d for k, d in self.records if k == kind][-1]


def binding(**over: Any) -> Binding:
    d: dict[str, Any] = {
        "bundle": "digits",
        "manifest_sha256": b"\x01" * 32,
        "member": "m",
        "member_sha256": b"\x02" * 32,
        "recipe_sha256": b"\x03" * 32,
        "kind": "ort-model",
        "library": "onnxruntime 1.32.0",
        "hardware": {"cpu": "Example", "machine": "x86_64", "flags": "avx2"},
    }
    d.update(over)
    return Binding(**d)


def cache(tmp_path: Path, key: bytes = KEY, **kw: Any) -> tuple[EngineCache, Log]:
    log = Log()
    return EngineCache(tmp_path / "state", key, event_log=log, **kw), log


def entry(c: EngineCache, b: Binding) -> Path:
    return c.path / c.file_name(b)


def test_store_then_load_round_trip(tmp_path: Path) -> None:
    c, log = cache(tmp_path)
    b = binding()
    assert c.load(b) is None
    assert log.last("engine_cache_miss")["reason"] == "absent"
    assert c.store(b, ARTIFACT)
    assert log.last("engine_cache_sealed")["bytes"] == len(ARTIFACT)
    buf = c.load(b)
    assert buf is not None and bytes(buf) == ARTIFACT and buf.locked in (True, False)
    buf.wipe()
    assert log.kinds()[-1] == "engine_cache_hit"
    f = entry(c, b)
    assert f.name == b.digest().hex() + ".sealed"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE(c.path.stat().st_mode) == 0o700
    assert ARTIFACT[1000:1064] not in f.read_bytes()
    assert [p.name for p in c.path.iterdir()] == [f.name]  # no temporary file left


def _discarded(c: EngineCache, log: Log, b: Binding) -> str:
    assert c.load(b) is None
    assert log.kinds()[-1] == "engine_cache_discarded"
    assert not entry(c, b).exists() and not entry(c, b).is_symlink()
    return str(log.last("engine_cache_discarded")["reason"])


@pytest.mark.parametrize("where", [20, 100, -1, 150_000])
def test_tampered_entry_discarded(tmp_path: Path, where: int) -> None:
    c, log = cache(tmp_path)
    b = binding()
    c.store(b, ARTIFACT)
    raw = bytearray(entry(c, b).read_bytes())
    raw[where] ^= 0x40
    entry(c, b).write_bytes(bytes(raw))
    assert _discarded(c, log, b) in ("tampered", "malformed", "binding")


def test_truncated_entry_discarded(tmp_path: Path) -> None:
    c, log = cache(tmp_path)
    b = binding()
    c.store(b, ARTIFACT)
    entry(c, b).write_bytes(entry(c, b).read_bytes()[:-1])
    assert _discarded(c, log, b) == "malformed"


def test_another_device_key_discarded(tmp_path: Path) -> None:
    c, _ = cache(tmp_path)
    b = binding()
    c.store(b, ARTIFACT)
    c.close()
    other, log = cache(tmp_path, derive_cache_key(DeviceKey.generate("cam-01", kem="x25519")))
    assert _discarded(other, log, b) == "tampered"


def test_entry_of_another_binding_swapped_in_is_discarded(tmp_path: Path) -> None:
    c, log = cache(tmp_path)
    old, new = binding(library="onnxruntime 1.31.0"), binding()
    c.store(old, ARTIFACT)
    os.link(entry(c, old), entry(c, new))
    assert _discarded(c, log, new) == "binding"


def test_symlink_entry_refused_and_target_untouched(tmp_path: Path) -> None:
    c, log = cache(tmp_path)
    b = binding()
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep me")
    entry(c, b).symlink_to(target)
    assert _discarded(c, log, b) == "unsafe"
    assert target.read_bytes() == b"keep me"


def test_fifo_entry_refused_without_blocking(tmp_path: Path) -> None:
    c, log = cache(tmp_path)
    b = binding()
    os.mkfifo(entry(c, b))
    assert _discarded(c, log, b) == "unsafe"


def test_too_big_entry_refused_before_reading(tmp_path: Path) -> None:
    c, log = cache(tmp_path, limits=CacheLimits(max_artifact_bytes=100_000))
    b = binding()
    with open(entry(c, b), "wb") as f:
        f.truncate(10 << 20)  # sparse: size is what counts
    os.chmod(entry(c, b), 0o600)
    assert _discarded(c, log, b) == "too large"


def test_entry_above_the_limit_is_not_sealed(tmp_path: Path) -> None:
    c, log = cache(tmp_path, limits=CacheLimits(max_artifact_bytes=1000))
    assert not c.store(binding(), ARTIFACT)
    assert log.kinds()[-1] == "engine_cache_skipped"
    assert list(c.path.iterdir()) == []


def test_new_entry_evicts_its_group(tmp_path: Path) -> None:
    c, log = cache(tmp_path)
    a, b = binding(library="onnxruntime 1.31.0"), binding()
    other = binding(member="other")
    c.store(a, ARTIFACT)
    c.store(other, ARTIFACT)
    c.store(b, ARTIFACT)
    assert not entry(c, a).exists() and entry(c, b).exists() and entry(c, other).exists()
    assert log.last("engine_cache_evicted")["entries"] == [entry(c, a).name]


def test_total_budget_keeps_the_newest(tmp_path: Path) -> None:
    c, _ = cache(tmp_path, limits=CacheLimits(max_total_bytes=450_000))
    names = []
    for i in range(3):
        b = binding(member=f"m{i}")
        c.store(b, ARTIFACT)
        os.utime(entry(c, b), ns=(i * 10**9, i * 10**9))
        names.append(entry(c, b))
    c.store(binding(member="m3"), ARTIFACT)
    left = sorted(p.name for p in c.path.iterdir())
    assert names[0].name not in left and names[1].name not in left and len(left) == 2


def test_concurrent_writers_leave_one_whole_entry(tmp_path: Path) -> None:
    caches = [cache(tmp_path)[0] for _ in range(6)]
    b = binding()
    arts = [os.urandom(300_000) for _ in caches]
    threads = [
        threading.Thread(target=c.store, args=(b, a)) for c, a in zip(caches, arts, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    buf = caches[0].load(b)
    assert buf is not None and bytes(buf) in arts
    assert [p.name for p in caches[0].path.iterdir()] == [caches[0].file_name(b)]


def test_unsafe_engines_directory_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "engines").mkdir(parents=True, mode=0o700)
    os.chmod(state, 0o700)
    os.chmod(state / "engines", 0o777)
    with pytest.raises(StateStoreError, match="writable by group or others"):
        EngineCache(state, KEY)
    log = Log()
    assert open_cache(state, KEY, event_log=log) is None
    assert log.kinds() == ["engine_cache_unavailable"]


def test_cpu_identity_reads_model_and_relevant_flags() -> None:
    text = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 fma avx512f ht\n"
    ident = cpu_identity(text)
    assert ident["cpu"] == "Some CPU" and ident["flags"] == "avx2 avx512f fma"
    assert cpu_identity("Features\t: fp asimd asimddp crc32\n")["flags"] == "asimd asimddp"
    assert cpu_identity()["machine"]


def test_every_compile_time_syscall_has_a_documented_reason() -> None:
    from edgeguard.runtime.sandbox.seccomp import COMPILE_EXTRAS

    text = (Path(__file__).resolve().parents[2] / "docs" / "isolation.md").read_text()
    for name in COMPILE_EXTRAS:
        assert f"| `{name}` |" in text


def _memfd(data: bytes, *, sealing: bool = True) -> int:
    fd = os.memfd_create("t", os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealing else 0))
    os.write(fd, data)
    return fd


def test_compiled_memfd_is_sealed_then_stored(tmp_path: Path) -> None:
    import fcntl

    from edgeguard.runtime.session import _seal_memfd

    c, log = cache(tmp_path)
    fd = _memfd(ARTIFACT)
    try:
        _seal_memfd(c, binding(), fd)
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE
        with pytest.raises(PermissionError):
            os.write(fd, b"late change")
    finally:
        os.close(fd)
    assert log.kinds()[-1] == "engine_cache_sealed"
    buf = c.load(binding())
    assert buf is not None and bytes(buf) == ARTIFACT


def test_a_memfd_that_cannot_be_sealed_is_not_cached(tmp_path: Path) -> None:
    """A writer that keeps a writable mapping (or a memfd without sealing) could change the
    bytes while they are sealed: nothing is stored."""
    import mmap

    from edgeguard.runtime.session import _seal_memfd

    c, log = cache(tmp_path)
    fd = _memfd(ARTIFACT)
    mm = mmap.mmap(fd, len(ARTIFACT))  # shared and writable: F_SEAL_WRITE fails (EBUSY)
    try:
        _seal_memfd(c, binding(), fd)
    finally:
        mm.close()
        os.close(fd)
    fd = _memfd(ARTIFACT, sealing=False)
    try:
        _seal_memfd(c, binding(member="x"), fd)
    finally:
        os.close(fd)
    assert log.kinds() == ["engine_cache_skipped", "engine_cache_skipped"]
    assert "could not be sealed" in log.last("engine_cache_skipped")["reason"]
    assert list(c.path.iterdir()) == []

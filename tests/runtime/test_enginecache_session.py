"""The engine cache in the device session, for real, with ONNX Runtime's ORT format.

First start: every CPU ONNX member is compiled (ONNX Runtime writes its optimised model
into a memfd: in this process, or in the sandboxed worker under Landlock), sealed and
recorded; second start: loaded sealed. A tampered entry, another binding (ORT version,
CPU, bundle release) or another device key is discarded or missed, rebuilt and recorded;
the state directory never holds the plaintext artifact or the model's weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeguard import api, data
from edgeguard.backends import load_backend
from edgeguard.crypto.enginecache import derive_cache_key
from edgeguard.crypto.keys import DeviceKey
from edgeguard.keystore import load_device_key, load_trust_store
from edgeguard.runtime.sandbox import SandboxPolicy, probe_host
from edgeguard.runtime.sandbox.executor import ProcessMemberExecutor, WorkerSpec
from tests.helpers import build, make_keys, run_bundle

HOST = probe_host()
needs_isolation = pytest.mark.skipif(
    not (HOST.available("seccomp") and HOST.available("landlock")),
    reason="this host offers no seccomp or no Landlock: sandboxed workers do not compile",
)
ISOLATIONS = [pytest.param("sandbox", marks=needs_isolation), "threads"]
MEMBERS = {"digits_mlp-fp32", "digits_mlp-fp16", "digits_logreg-fallback"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("enginecache")
    make_keys(d)
    bundles = {}
    for version in (1, 2):
        b = d / f"ens-{version}.egb"
        r = build(
            d,
            b,
            data.model_path("digits_mlp"),
            version=version,
            extra=(
                "--calibration",
                data.split_path("calib"),
                "--variants",
                "fp32,fp16",
                "--fallback",
                data.model_path("digits_logreg"),
            ),
        )
        assert r.returncode == 0, r.stderr
        bundles[version] = b
    x = np.load(data.split_path("test"))
    frames = x[next(iter(x.files))][:4].astype(np.float32)
    return {
        "d": d,
        "bundles": bundles,
        "trust": load_trust_store([d / "signer.pub"]),
        "device": load_device_key(d / "dev" / "device.key"),
        "frames": frames,
    }


def start(world: dict[str, Any], state: Path, isolation: str, **kw: Any) -> Any:
    return api.open_session(
        kw.pop("bundle", world["bundles"][1]),
        trust=world["trust"],
        device_key=kw.pop("device", world["device"]),
        state_dir=state,
        isolation=isolation,
        **kw,
    )


def answers(world: dict[str, Any], session: Any) -> list[np.ndarray]:
    name = session.inputs[0].name
    out = []
    for i in range(len(world["frames"])):
        r = session.infer({name: world["frames"][i : i + 1]})
        out.append(next(iter(r.outputs.values())))
    return out


def cache_events(state: Path) -> list[tuple[str, dict[str, Any]]]:
    """The engine cache records of the last session in ``state`` (then the log is moved)."""
    log = state / "events.log"
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    n = len(list(state.glob("events.*.log")))
    log.rename(state / f"events.{n}.log")
    (state / "eventlog.anchor").unlink()
    return [(r["kind"], r["data"]) for r in recs if r["kind"].startswith("engine_cache")]


def by_member(events: list[tuple[str, dict[str, Any]]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["member"]: d for k, d in events if k == kind}


def windows(blob: bytes, n: int = 8, size: int = 48) -> list[bytes]:
    """High-entropy windows from the middle of ``blob`` (never runs of one value)."""
    out = []
    for i in range(1, n + 1):
        at = len(blob) * i // (n + 2)
        w = blob[at : at + size]
        if len(set(w)) > size // 2:
            out.append(w)
    assert out
    return out


def secrets_of_models() -> list[bytes]:
    """Windows of the ONNX weights and of an ORT-format artifact of the same model."""
    path = data.model_path("digits_mlp")
    model = onnx.load(str(path))
    weights = max((numpy_helper.to_array(t).tobytes() for t in model.graph.initializer), key=len)
    fd = os.memfd_create("t")
    try:
        load_backend("onnx", Path(path).read_bytes(), save_artifact_fd=fd).close()
        with open(fd, "rb", closefd=False) as f:
            artifact = f.read()
    finally:
        os.close(fd)
    assert artifact[4:8] == b"ORTM"
    return windows(weights) + windows(artifact[len(artifact) // 4 :])


def assert_no_plaintext(state: Path) -> None:
    needles = secrets_of_models()
    for p in state.rglob("*"):
        if p.is_file() and not p.is_symlink():
            blob = p.read_bytes()
            for w in needles:
                assert w not in blob, f"plaintext model bytes in {p}"


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_first_start_seals_second_loads_sealed(
    world: dict[str, Any], tmp_path: Path, isolation: str
) -> None:
    state = tmp_path / "state"
    kw = {"unsafe_in_process": True} if isolation == "threads" else {}
    with start(world, state, isolation, **kw) as s:
        first = answers(world, s)
    ev = cache_events(state)
    assert set(by_member(ev, "engine_cache_miss")) == MEMBERS
    sealed = by_member(ev, "engine_cache_sealed")
    assert set(sealed) == MEMBERS and all(d["bytes"] > 1000 for d in sealed.values())
    assert len(list((state / "engines").glob("*.sealed"))) == 3
    with start(world, state, isolation, **kw) as s:
        second = answers(world, s)
    ev = cache_events(state)
    assert set(by_member(ev, "engine_cache_hit")) == MEMBERS
    assert not by_member(ev, "engine_cache_sealed")
    with start(world, tmp_path / "plain", isolation, engine_cache=False, **kw) as s:
        plain = answers(world, s)
    assert cache_events(tmp_path / "plain") == []
    assert not (tmp_path / "plain" / "engines").exists()
    for a, b, c in zip(first, second, plain, strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, c, rtol=1e-5, atol=1e-6)
    assert_no_plaintext(state)


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_tampered_entry_is_discarded_rebuilt_and_recorded(
    world: dict[str, Any], tmp_path: Path, isolation: str
) -> None:
    state = tmp_path / "state"
    kw = {"unsafe_in_process": True} if isolation == "threads" else {}
    start(world, state, isolation, **kw).close()
    cache_events(state)
    victim = sorted((state / "engines").glob("*.sealed"))[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 1
    victim.write_bytes(bytes(raw))
    with start(world, state, isolation, **kw) as s:
        answers(world, s)
    ev = cache_events(state)
    (gone,) = by_member(ev, "engine_cache_discarded").values()
    assert gone["reason"] == "tampered" and gone["binding"] == victim.stem
    assert set(by_member(ev, "engine_cache_sealed")) == {gone["member"]}
    assert len(by_member(ev, "engine_cache_hit")) == 2
    start(world, state, isolation, **kw).close()
    assert set(by_member(cache_events(state), "engine_cache_hit")) == MEMBERS


@pytest.mark.parametrize(
    ("target", "value"),
    [
        ("edgeguard.runtime.enginecache.cpu_identity", {"cpu": "Other CPU", "machine": "x86_64"}),
        ("edgeguard.backends.onnxruntime.library_version", "onnxruntime 0.0.1"),
    ],
)
def test_another_cpu_or_ort_version_misses_rebuilds_and_evicts(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, value: Any
) -> None:
    state = tmp_path / "state"
    start(world, state, "threads", unsafe_in_process=True).close()
    cache_events(state)
    before = {p.name for p in (state / "engines").iterdir()}
    monkeypatch.setattr(target, lambda *a: value)
    start(world, state, "threads", unsafe_in_process=True).close()
    ev = cache_events(state)
    assert set(by_member(ev, "engine_cache_miss")) == MEMBERS
    assert set(by_member(ev, "engine_cache_sealed")) == MEMBERS
    evicted = {e for d in by_member(ev, "engine_cache_evicted").values() for e in d["entries"]}
    assert evicted == before
    assert not before & {p.name for p in (state / "engines").iterdir()}


@needs_isolation
def test_another_release_misses_and_evicts_in_the_sandbox(
    world: dict[str, Any], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    start(world, state, "sandbox").close()
    cache_events(state)
    start(world, state, "sandbox", bundle=world["bundles"][2]).close()
    ev = cache_events(state)
    assert set(by_member(ev, "engine_cache_sealed")) == MEMBERS
    assert len(by_member(ev, "engine_cache_evicted")) == 3
    assert len(list((state / "engines").iterdir())) == 3


def test_entries_of_another_device_key_are_discarded(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries sealed under another device's cache key fail their tags and are rebuilt."""
    state = tmp_path / "state"
    foreign = derive_cache_key(DeviceKey.generate("cam-01", kem="x25519"))
    with monkeypatch.context() as m:
        m.setattr("edgeguard.crypto.enginecache.derive_cache_key", lambda _dev: foreign)
        start(world, state, "threads", unsafe_in_process=True).close()
    assert set(by_member(cache_events(state), "engine_cache_sealed")) == MEMBERS
    start(world, state, "threads", unsafe_in_process=True).close()
    ev = cache_events(state)
    assert {d["reason"] for d in by_member(ev, "engine_cache_discarded").values()} == {"tampered"}
    assert set(by_member(ev, "engine_cache_discarded")) == MEMBERS
    assert set(by_member(ev, "engine_cache_sealed")) == MEMBERS


@needs_isolation
def test_worker_compiles_only_under_landlock(tmp_path: Path) -> None:
    model = Path(data.model_path("digits_mlp")).read_bytes()
    spec = WorkerSpec(model, artifact_max=1 << 26)
    with ProcessMemberExecutor({"m": spec}, policy=SandboxPolicy(), io_bytes=1 << 20) as ex:
        layers = ex.status("m").layers
        assert layers["landlock"].startswith("active") and layers["seccomp"].startswith("active")
        fd, note, load_ms = ex.take_artifact("m")
        assert fd is not None and note is None and load_ms is not None
        try:
            with open(fd, "rb", closefd=False) as f:
                artifact = f.read()
        finally:
            os.close(fd)
        assert ex.take_artifact("m") == (None, None, None)  # once
    assert artifact[4:8] == b"ORTM"
    b = load_backend("ort-model", artifact)
    assert [s.name for s in b.inputs()]
    b.close()
    no_landlock = dataclasses.replace(HOST, landlock_abi=0)
    with ProcessMemberExecutor(
        {"m": spec}, policy=SandboxPolicy(), io_bytes=1 << 20, caps=no_landlock
    ) as ex:
        assert not ex.status("m").layers["landlock"].startswith("active")
        assert ex.take_artifact("m") == (None, "not compiled: needs Landlock", None)


@needs_isolation
def test_cli_run_no_engine_cache(world: dict[str, Any], tmp_path: Path) -> None:
    x = tmp_path / "x.npz"
    np.savez(x, image=world["frames"][:1])
    for flag, expect in (((), True), (("--no-engine-cache",), False)):
        state = tmp_path / f"state{len(flag)}"
        r = run_bundle(world["d"], world["bundles"][1], x, tmp_path / "y.npz", state, *flag)
        assert r.returncode == 0, r.stderr
        assert (state / "engines").exists() == expect


def _start_in_child(args: tuple[str, str, str, str]) -> int:
    bundle, signer_pub, device_key, state = args
    with api.open_session(
        bundle,
        trust=load_trust_store([Path(signer_pub)]),
        device_key=load_device_key(Path(device_key)),
        state_dir=state,
        isolation="threads",
        unsafe_in_process=True,
        event_log=False,
    ):
        pass
    return 0


def test_concurrent_starts_leave_whole_entries(world: dict[str, Any], tmp_path: Path) -> None:
    """Four processes start at once on one fresh state directory, twice: every entry
    they leave opens (the next start hits all three), and no temporary file is left."""
    import multiprocessing

    state = tmp_path / "state"
    d = world["d"]
    args = (str(world["bundles"][1]), str(d / "signer.pub"), str(d / "dev" / "device.key"))
    ctx = multiprocessing.get_context("spawn")
    for _ in range(2):
        with ctx.Pool(4) as pool:
            assert pool.map(_start_in_child, [(*args, str(state))] * 4) == [0] * 4
    names = sorted(p.name for p in (state / "engines").iterdir())
    assert len(names) == 3 and all(n.endswith(".sealed") for n in names)
    start(world, state, "threads", unsafe_in_process=True).close()
    assert set(by_member(cache_events(state), "engine_cache_hit")) == MEMBERS


def test_cli_worker_user_and_groups_reach_the_workers(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """--worker-user / --worker-groups go to the sandbox: root is refused (one line, exit 2);
    the workers of a session started by root run as the named user."""
    import os
    import pwd

    x = tmp_path / "x.npz"
    np.savez(x, image=world["frames"][:1])
    r = run_bundle(
        world["d"],
        world["bundles"][1],
        x,
        tmp_path / "y.npz",
        tmp_path / "s1",
        "--worker-user",
        "root",
    )
    assert r.returncode == 2, r.stderr
    assert "root" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_bundle(
        world["d"],
        world["bundles"][1],
        x,
        tmp_path / "y.npz",
        tmp_path / "s2",
        "--worker-user",
        "no-such-user-here",
    )
    assert r.returncode == 2 and "no-such-user-here" in r.stderr, r.stderr
    if os.geteuid() != 0:
        return
    daemon = pwd.getpwnam("daemon").pw_uid
    with api.open_session(
        world["bundles"][1],
        trust=load_trust_store([world["d"] / "signer.pub"]),
        device_key=load_device_key(world["d"] / "dev" / "device.key"),
        state_dir=tmp_path / "s3",
        worker_user="daemon",
        worker_groups=[],
    ) as s:
        name = s.policy.members[0].name
        pid = s.worker_status(name).pid
        status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(daemon)] * 4


def test_what_a_compiling_worker_may_write_is_bounded_by_its_model() -> None:
    """A compromised worker that grew its artifact memfd to the cache's limit would make
    the supervisor lock and seal that much: the bound follows the member's size."""
    from edgeguard.runtime import session
    from edgeguard.runtime.enginecache import LIMITS

    class Opened:
        def __init__(self, size: int) -> None:
            self.data = bytes(size)

        def member_bytes(self, name: str) -> memoryview:
            return memoryview(self.data)

    class Cache:
        limits = LIMITS

    small = session._artifact_max(Cache(), Opened(70_000), "m")  # type: ignore[arg-type]
    assert small == session.ARTIFACT_FLOOR < LIMITS.max_artifact_bytes
    big = session._artifact_max(Cache(), Opened(20 << 20), "m")  # type: ignore[arg-type]
    assert big == 8 * (20 << 20)
    huge = session._artifact_max(Cache(), Opened(300 << 20), "m")  # type: ignore[arg-type]
    assert huge == LIMITS.max_artifact_bytes

"""The anti-rollback state store: a private directory, no links followed, fail closed."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from edgeguard.errors import RollbackError, StateStoreError
from edgeguard.runtime.state import VersionStore, default_state_dir, ensure_state_dir

KID = bytes(range(32))
DIGEST = b"\x11" * 32
T0 = 1_790_000_000  # a fake wall clock
#: A store written by the release that kept anti-rollback per signer and name (schema 1):
#: "digits" v5 under key aa.., v7 under key bb.., "other" v2 under key aa...
LEGACY = Path(__file__).resolve().parents[1] / "vectors" / "state" / "versions-schema1.json"
#: A store written by this release (schema 2): see test_the_store_is_written_as_the_frozen_vector.
CURRENT = Path(__file__).resolve().parents[1] / "vectors" / "state" / "versions-schema2.json"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    return d


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


# -- the state directory ----------------------------------------------------------------


def test_the_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGEGUARD_STATE_DIR", str(tmp_path / "eg"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "eg"
    monkeypatch.setenv("EDGEGUARD_STATE_DIR", "")  # empty: not set
    assert default_state_dir() == tmp_path / "xdg" / "edgeguard"
    monkeypatch.delenv("EDGEGUARD_STATE_DIR")
    assert default_state_dir() == tmp_path / "xdg" / "edgeguard"
    monkeypatch.setenv("XDG_STATE_HOME", "")
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "edgeguard"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "edgeguard"


def test_ensure_state_dir_returns_the_directory(tmp_path: Path) -> None:
    d = tmp_path / "s"
    assert ensure_state_dir(d) == d and d.is_dir()
    assert ensure_state_dir(d) == d  # an existing private directory is fine


def test_a_new_state_dir_is_created_0700_whatever_the_umask(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b" / "state"
    old = os.umask(0)
    try:
        VersionStore(d).record("m", 1, manifest_digest=DIGEST, signer_key_id=KID, now=T0)
        assert _mode(d) == 0o700
        ensure_state_dir(tmp_path / "other")
        assert _mode(tmp_path / "other") == 0o700
    finally:
        os.umask(old)
    assert _mode(d / "versions.json") == 0o600
    assert _mode(d / "versions.lock") == 0o600


def test_files_are_created_0600_whatever_the_umask(state: Path) -> None:
    old = os.umask(0)
    try:
        VersionStore(state).record("m", 1, manifest_digest=DIGEST, signer_key_id=KID, now=T0)
    finally:
        os.umask(old)
    assert _mode(state / "versions.json") == 0o600
    assert _mode(state / "versions.lock") == 0o600
    assert sorted(p.name for p in state.iterdir()) == ["versions.json", "versions.lock"]


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o720, 0o702, 0o1777], ids=oct)
def test_a_state_dir_writable_by_group_or_others_is_refused(state: Path, mode: int) -> None:
    VersionStore(state).record("m", 5, manifest_digest=DIGEST, signer_key_id=KID, now=T0)
    state.chmod(mode)
    store = VersionStore(state)
    for action in (
        lambda: store.get("m"),
        lambda: store.record("m", 6, manifest_digest=DIGEST, signer_key_id=KID, now=T0),
        lambda: ensure_state_dir(state),
    ):
        with pytest.raises(StateStoreError, match="writable by group or others") as ei:
            action()
        assert ei.value.hint == f"make it private: chmod 700 {state}"
        assert "\n" not in ei.value.one_line()
    state.chmod(0o700)
    assert store.get("m") == 5  # nothing was written meanwhile


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o700, 0o500], ids=oct)
def test_a_state_dir_only_its_owner_may_write_is_accepted(state: Path, mode: int) -> None:
    VersionStore(state).record("m", 5, manifest_digest=DIGEST, signer_key_id=KID, now=T0)
    state.chmod(mode)
    try:
        assert VersionStore(state).get("m") == 5
    finally:
        state.chmod(0o700)


def test_a_state_dir_of_another_user_is_refused(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    VersionStore(state).record("m", 5, manifest_digest=DIGEST, signer_key_id=KID, now=T0)
    other = os.geteuid() + 1000
    if os.geteuid() == 0:
        os.chown(state, other, -1)
    else:
        me = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: me + 1000)
    store = VersionStore(state)
    for action in (
        lambda: store.get("m"),
        lambda: store.record("m", 6, manifest_digest=DIGEST, signer_key_id=KID, now=T0),
        lambda: ensure_state_dir(state),
    ):
        with pytest.raises(StateStoreError, match="not to this user") as ei:
            action()
        assert ei.value.hint is not None and "chown" in ei.value.hint


def test_a_state_dir_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "state"
    f.write_text("")
    with pytest.raises(StateStoreError, match="cannot open state directory"):
        VersionStore(f).record("m", 1, manifest_digest=DIGEST, signer_key_id=KID, now=T0)


def test_reading_a_missing_state_dir_creates_nothing_and_reads_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a store in the working directory must not stand in for the missing one
    (tmp_path / "versions.json").write_text('{"schema": 2, "entries": {"m": {"version": 9}}}')
    (tmp_path / "versions.json").chmod(0o600)
    monkeypatch.chdir(tmp_path)
    assert VersionStore(tmp_path / "none").get("m") is None
    assert VersionStore(tmp_path / "none").time_floor() is None
    assert not (tmp_path / "none").exists()


# -- links and other things planted in place of a state file ------------------------------


def test_a_symlinked_lock_is_refused_and_its_target_never_created(
    state: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "etc" / "victim"
    victim.parent.mkdir()
    (state / "versions.lock").symlink_to(victim)
    with pytest.raises(StateStoreError, match=r"versions\.lock is a symbolic link") as ei:
        VersionStore(state).record("m", 1, manifest_digest=DIGEST, signer_key_id=KID, now=T0)
    assert ei.value.hint is not None and "remove" in ei.value.hint
    assert not victim.exists()
    assert not (state / "versions.json").exists()


def test_a_symlinked_versions_file_is_refused_for_reading_and_writing(
    state: Path, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"schema": 1, "entries": {}}))
    (state / "versions.json").symlink_to(target)
    store = VersionStore(state)
    with pytest.raises(StateStoreError, match=r"versions\.json is a symbolic link"):
        store.get("m")
    with pytest.raises(StateStoreError, match=r"versions\.json is a symbolic link"):
        store.record("m", 1, manifest_digest=DIGEST, signer_key_id=KID, now=T0)
    assert json.loads(target.read_text()) == {"schema": 1, "entries": {}}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", ["versions.json", "versions.lock"])
def test_a_fifo_in_place_of_a_state_file_is_refused_without_blocking(
    state: Path, name: str
) -> None:
    os.mkfifo(state / name)
    with pytest.raises(StateStoreError, match="not a regular file"):
        VersionStore(state).record("m", 1, manifest_digest=DIGEST, signer_key_id=KID, now=T0)


def test_a_directory_in_place_of_the_lock_is_refused(state: Path) -> None:
    (state / "versions.lock").mkdir()
    with pytest.raises(StateStoreError, match="cannot lock state store"):
        VersionStore(state).record("m", 1, manifest_digest=DIGEST, signer_key_id=KID, now=T0)


@pytest.mark.parametrize("name", ["versions.json", "versions.lock"])
def test_a_state_file_writable_by_others_is_refused(state: Path, name: str) -> None:
    VersionStore(state).record("m", 1, manifest_digest=DIGEST, signer_key_id=KID, now=T0)
    (state / name).chmod(0o666)
    with pytest.raises(StateStoreError, match="writable by group or others") as ei:
        VersionStore(state).record("m", 2, manifest_digest=DIGEST, signer_key_id=KID, now=T0)
    assert ei.value.hint == f"make it private: chmod 600 {state / name}"


# -- fail closed: corrupt or unknown stores, failed writes --------------------------------

H = "ab" * 32  # a well-formed hex SHA-256 / key id
GOOD_ENTRY = {"version": 3, "manifest_sha256": H, "signer": H, "recorded": 5}


def _doc(**kw: Any) -> dict[str, Any]:
    return {"schema": 2, "time_floor": 10, "entries": {"m": dict(GOOD_ENTRY)}, **kw}


def _entry(**kw: Any) -> dict[str, Any]:
    return _doc(entries={"m": {**GOOD_ENTRY, **kw}})


UNKNOWN_LAYOUTS = {
    "not an object": [1, 2],
    "a string": "versions",
    "no schema": {"entries": {}},
    "no entries": {"schema": 2},
    "schema 0": _doc(schema=0),
    "schema 3": _doc(schema=3),
    "schema as text": _doc(schema="2"),
    "schema as bool": {"schema": True, "entries": {}},
    "schema as float": _doc(schema=2.0),
    "entries a list": _doc(entries=[]),
    "unknown top-level key": _doc(extra=1),
    "entry not an object": _doc(entries={"m": 3}),
    "entry without version": _doc(entries={"m": {"manifest_sha256": H}}),
    "unknown entry field": _entry(note="x"),
    "version as text": _entry(version="3"),
    "version as float": _entry(version=3.0),
    "version as bool": _entry(version=True),
    "version null": _entry(version=None),
    "negative version": _entry(version=-1),
    "version over 2^53": _entry(version=2**53 + 1),
    "digest not hex": _entry(manifest_sha256="zz" * 32),
    "digest too short": _entry(manifest_sha256="ab"),
    "digest not text": _entry(manifest_sha256=1),
    "digest in capitals": _entry(manifest_sha256="AB" * 32),
    "signer not hex": _entry(signer="x" * 64),
    "signer not text": _entry(signer=[]),
    "recorded negative": _entry(recorded=-1),
    "recorded as bool": _entry(recorded=False),
    "recorded as text": _entry(recorded="5"),
    "name not a bundle name": _doc(entries={"a/b": dict(GOOD_ENTRY)}),
    "empty name": _doc(entries={"": dict(GOOD_ENTRY)}),
    "name too long": _doc(entries={"m" * 129: dict(GOOD_ENTRY)}),
    "time floor negative": _doc(time_floor=-1),
    "time floor as bool": _doc(time_floor=True),
    "time floor as text": _doc(time_floor="10"),
    "time floor as float": _doc(time_floor=10.0),
    "schema 1 with a time floor": {"schema": 1, "time_floor": 1, "entries": {}},
    "schema 1 entry with a signer": {
        "schema": 1,
        "entries": {f"{H}/m": {"version": 1, "signer": H}},
    },
    "schema 1 key without signer": {"schema": 1, "entries": {"m": {"version": 1}}},
    "schema 1 key with a short id": {"schema": 1, "entries": {"abcd/m": {"version": 1}}},
    "schema 1 key with a bad name": {"schema": 1, "entries": {f"{H}/a b": {"version": 1}}},
    "schema 1 version as bool": {"schema": 1, "entries": {f"{H}/m": {"version": True}}},
    "schema 1 negative version": {"schema": 1, "entries": {f"{H}/m": {"version": -2}}},
}


@pytest.mark.parametrize("doc", UNKNOWN_LAYOUTS.values(), ids=UNKNOWN_LAYOUTS.keys())
def test_an_unknown_layout_fails_closed_for_reading_and_recording(state: Path, doc: Any) -> None:
    raw = json.dumps(doc).encode()
    (state / "versions.json").write_bytes(raw)
    store = VersionStore(state)
    for action in (
        store.read,
        lambda: store.get("m"),
        store.time_floor,
        lambda: _rec(store, "m", 9, T0),
    ):
        with pytest.raises(StateStoreError, match="has an unknown layout") as ei:
            action()
        assert ei.value.hint == "restore it from backup, or use the edgeguard release that wrote it"
    assert (state / "versions.json").read_bytes() == raw


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"not json", b'{"schema": 2, "entries": {}', b"\xff\xfe", b"[1,]"]
)
def test_a_corrupt_store_fails_closed(state: Path, raw: bytes) -> None:
    (state / "versions.json").write_bytes(raw)
    store = VersionStore(state)
    for action in (lambda: store.get("m"), lambda: _rec(store, "m", 1, T0)):
        with pytest.raises(StateStoreError, match="is corrupt; refusing to guess") as ei:
            action()
        assert ei.value.hint == "restore it from backup; deleting it disables rollback protection"
    assert (state / "versions.json").read_bytes() == raw


@pytest.mark.parametrize(
    "doc",
    [
        {"schema": 2, "entries": {}},
        {"schema": 2, "time_floor": 0, "entries": {"m": {"version": 0}}},
        _entry(version=2**53),
        _entry(recorded=0),
        {"schema": 2, "time_floor": None, "entries": {"a.b_c:d+e-f": {"version": 1}}},
        _doc(entries={"m" * 128: dict(GOOD_ENTRY)}),
        {"schema": 1, "entries": {}},
        {"schema": 1, "entries": {f"{H}/m": {"version": 0, "recorded": 0}}},
    ],
    ids=[
        "empty",
        "zeros",
        "version 2^53",
        "recorded 0",
        "null floor, every name character",
        "name of 128 characters",
        "empty schema 1",
        "schema 1 zeros",
    ],
)
def test_the_edges_of_a_well_formed_store_are_accepted(state: Path, doc: Any) -> None:
    (state / "versions.json").write_text(json.dumps(doc))
    store = VersionStore(state)
    st = store.read()
    if doc["schema"] == 2:
        assert st.entries == doc["entries"] and st.time_floor == doc.get("time_floor")
    else:
        assert {k.split("/", 1)[1]: v["version"] for k, v in doc["entries"].items()} == {
            k: v["version"] for k, v in st.entries.items()
        }


def test_a_failed_write_raises_and_leaves_the_store_as_it_was(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeguard.runtime import state as state_mod

    store = VersionStore(state)
    _rec(store, "m", 1, T0)
    before = (state / "versions.json").read_bytes()

    def disk_full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_mod, "atomic_write_at", disk_full)
    with pytest.raises(StateStoreError, match=r"cannot write state store .*No space left") as ei:
        _rec(store, "m", 2, T0 + 1)
    assert "\n" not in ei.value.one_line()
    assert (state / "versions.json").read_bytes() == before
    assert store.get("m") == 1


def _record_under_a_file_size_limit(state: str, out: Any) -> None:
    """A separate process whose files may not grow past 16 bytes (a full disk, for real)."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))
    try:
        _rec(VersionStore(Path(state)), "m", 2, T0)
        out.put("recorded")
    except StateStoreError as exc:
        out.put(f"{type(exc).__name__}: {exc}")


def test_a_write_the_file_system_refuses_raises(state: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_record_under_a_file_size_limit, args=(str(state), out))
    p.start()
    result = out.get(timeout=60)
    p.join(timeout=60)
    assert result.startswith("StateStoreError: cannot write state store"), result
    assert not (state / "versions.json").exists()
    assert [n for n in os.listdir(state) if n.endswith(".tmp")] == []  # no temporary left


def test_open_bundle_raises_when_the_store_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeguard.bundle.verify import TrustStore
    from edgeguard.crypto.keys import DeviceKey, SignerKey
    from edgeguard.packaging.packager import MemberSource, write_bundle
    from edgeguard.runtime import state as state_mod
    from edgeguard.runtime.opener import open_bundle
    from tests.bundle.conftest import NOW

    signer, device = SignerKey.generate(), DeviceKey.generate("cam-01", profile="generic-cpu")
    b = tmp_path / "b.egb"
    write_bundle(
        b,
        [MemberSource("model", b"weights")],
        name="m",
        version=1,
        signer=signer,
        recipients=[device.public],
        profiles=("generic-cpu",),
        created=NOW - 10,
    )

    def disk_full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_mod, "atomic_write_at", disk_full)
    with pytest.raises(StateStoreError, match="cannot write state store"):
        open_bundle(
            b,
            trust=TrustStore.of([signer.public]),
            device_key=device,
            state_dir=tmp_path / "s",
            now=NOW,
        )


def test_a_store_that_cannot_be_opened_or_read_is_an_error(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeguard.runtime import state as state_mod

    _rec(VersionStore(state), "m", 1, T0)
    real_open = state_mod.open_nofollow

    def eio(name: str, *a: Any, **k: Any) -> int:
        if name == "versions.json":
            raise OSError(errno.EIO, "Input/output error")
        return real_open(name, *a, **k)

    monkeypatch.setattr(state_mod, "open_nofollow", eio)
    for action in (VersionStore(state).read, lambda: _rec(VersionStore(state), "m", 2, T0)):
        with pytest.raises(StateStoreError) as ei:
            action()
        assert str(ei.value) == (
            f"cannot read state store {state / 'versions.json'}: [Errno 5] Input/output error"
        )

    def a_directory(name: str, *a: Any, **k: Any) -> int:  # reading it fails for real
        return os.open(state, os.O_RDONLY) if name == "versions.json" else real_open(name, *a, **k)

    monkeypatch.setattr(state_mod, "open_nofollow", a_directory)
    with pytest.raises(StateStoreError) as ei:
        VersionStore(state).read()
    assert str(ei.value).startswith(
        f"cannot read state store {state / 'versions.json'}: [Errno 21]"
    )


def test_a_lock_that_cannot_be_opened_is_an_error(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeguard.runtime import state as state_mod

    def eio(*_a: Any, **_k: Any) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(state_mod, "open_nofollow", eio)
    with pytest.raises(StateStoreError) as ei:
        _rec(VersionStore(state), "m", 1, T0)
    assert str(ei.value) == f"cannot lock state store in {state}: [Errno 5] Input/output error"


def test_a_lock_the_file_system_refuses_is_an_error(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    def no_locks(*_a: Any) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(StateStoreError) as ei:
        _rec(VersionStore(state), "m", 1, T0)
    assert str(ei.value) == f"cannot lock state store in {state}: [Errno 37] No locks available"
    assert not (state / "versions.json").exists()


def test_an_interrupt_while_waiting_for_the_lock_propagates_and_leaks_no_descriptor(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    def interrupted(*_a: Any) -> None:
        raise KeyboardInterrupt

    before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(fcntl, "flock", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _rec(VersionStore(state), "m", 1, T0)
    assert len(os.listdir("/proc/self/fd")) == before


def test_the_store_is_written_as_the_frozen_vector(state: Path) -> None:
    """The byte layout is stable (sorted keys, indent 1), so backups and diffs compare."""
    store = VersionStore(state)
    store.record("digits", 7, manifest_digest=b"\x07" * 32, signer_key_id=b"\xbb" * 32, now=T0)
    store.record("other", 2, manifest_digest=b"\x02" * 32, signer_key_id=b"\xaa" * 32, now=T0 + 5)
    assert (state / "versions.json").read_bytes() == CURRENT.read_bytes()
    st = store.read()
    assert st.time_floor == T0 + 5 and st.version("digits") == 7 and st.version("other") == 2


def test_a_refusal_names_the_bundle_and_both_versions(state: Path) -> None:
    _rec(VersionStore(state), "cam-model", 5, T0)
    with pytest.raises(RollbackError) as ei:
        _rec(VersionStore(state), "cam-model", 3, T0)
    assert str(ei.value) == (
        "bundle 'cam-model' v3 is older than v5, which this device already opened "
        "(rollback refused)"
    )


# -- one counter per name, and the schema 1 store migrated ---------------------------------


def test_the_counter_is_per_name_whichever_key_signed(state: Path) -> None:
    store = VersionStore(state)
    store.record("m", 5, manifest_digest=DIGEST, signer_key_id=b"\xaa" * 32, now=T0)
    with pytest.raises(RollbackError, match="v4 is older than v5"):
        store.record("m", 4, manifest_digest=DIGEST, signer_key_id=b"\xbb" * 32, now=T0)
    store.record("m", 5, manifest_digest=DIGEST, signer_key_id=b"\xbb" * 32, now=T0)
    doc = json.loads((state / "versions.json").read_text())
    assert doc["schema"] == 2
    assert doc["entries"]["m"]["signer"] == "aa" * 32  # the same version again changes nothing
    store.record("m", 6, manifest_digest=b"\x06" * 32, signer_key_id=b"\xbb" * 32, now=T0)
    doc = json.loads((state / "versions.json").read_text())
    assert set(doc) == {"schema", "time_floor", "entries"} and list(doc["entries"]) == ["m"]
    entry = doc["entries"]["m"]
    assert entry["version"] == 6 and entry["signer"] == "bb" * 32
    assert entry["manifest_sha256"] == "06" * 32


def test_a_schema_1_store_is_read_per_name_with_the_highest_version_of_any_signer(
    state: Path,
) -> None:
    (state / "versions.json").write_bytes(LEGACY.read_bytes())
    (state / "versions.json").chmod(0o600)
    store = VersionStore(state)
    assert store.get("digits") == 7 and store.get("other") == 2 and store.get("x") is None
    # a release signed by aa.. (which had only seen v5) is refused below bb..'s v7
    with pytest.raises(RollbackError, match="v6 is older than v7"):
        store.record("digits", 6, manifest_digest=DIGEST, signer_key_id=b"\xaa" * 32, now=T0)
    assert (state / "versions.json").read_bytes() == LEGACY.read_bytes()  # reads never migrate
    store.record("digits", 8, manifest_digest=DIGEST, signer_key_id=b"\xaa" * 32, now=T0)
    doc = json.loads((state / "versions.json").read_text())
    assert doc["schema"] == 2
    assert doc["entries"]["other"] == {
        "version": 2,
        "manifest_sha256": "02" * 32,
        "recorded": 1790000000,
        "signer": "aa" * 32,
    }
    assert doc["entries"]["digits"]["version"] == 8
    assert set(doc["entries"]) == {"digits", "other"}
    assert store.get("digits") == 8 and store.get("other") == 2


def test_a_schema_1_store_with_equal_versions_keeps_the_first_signer(state: Path) -> None:
    legacy = {
        "schema": 1,
        "entries": {
            f"{'aa' * 32}/m": {"version": 3},
            f"{'bb' * 32}/m": {"version": 3},
            f"{'cc' * 32}/m": {"version": 1},
        },
    }
    (state / "versions.json").write_text(json.dumps(legacy))
    store = VersionStore(state)
    store.record("n", 1, manifest_digest=DIGEST, signer_key_id=KID, now=T0)  # rewrites as schema 2
    entries = json.loads((state / "versions.json").read_text())["entries"]
    assert entries["m"] == {"version": 3, "signer": "aa" * 32}


# -- the time floor ---------------------------------------------------------------------


def _rec(store: VersionStore, name: str, version: int, now: int) -> None:
    store.record(name, version, manifest_digest=DIGEST, signer_key_id=KID, now=now)


def test_the_time_floor_only_moves_forward_and_with_every_record(state: Path) -> None:
    store = VersionStore(state)
    assert store.time_floor() is None
    _rec(store, "m", 1, T0)
    assert store.time_floor() == T0
    _rec(store, "m", 1, T0 + 100)  # the same release again still moves the floor
    assert store.time_floor() == T0 + 100
    assert store.read().entries["m"]["recorded"] == T0  # ... and leaves its entry alone
    _rec(store, "n", 1, T0 + 50)  # a clock behind the floor never lowers it
    assert store.time_floor() == T0 + 100
    assert store.read().entries["n"]["recorded"] == T0 + 50
    before = (state / "versions.json").read_bytes()
    _rec(store, "m", 1, T0 + 100)  # nothing new: nothing written
    assert (state / "versions.json").read_bytes() == before
    with pytest.raises(RollbackError):
        _rec(store, "m", 0, T0 + 10_000)  # a refused release does not move the floor
    assert store.time_floor() == T0 + 100


def test_a_schema_1_store_has_no_time_floor_until_the_next_record(state: Path) -> None:
    (state / "versions.json").write_bytes(LEGACY.read_bytes())
    store = VersionStore(state)
    assert store.time_floor() is None
    _rec(store, "digits", 7, T0)  # the same version: migrates and sets the floor
    doc = json.loads((state / "versions.json").read_text())
    assert doc["schema"] == 2 and doc["time_floor"] == T0
    assert doc["entries"]["digits"]["signer"] == "bb" * 32


# -- check and update: one critical section across processes ------------------------------


def _record_in_process(
    state: str, version: int, barrier: Any, after: Any, done: Any, out: Any
) -> None:
    """A separate process: wait at the barrier (and for ``after``), then record."""
    barrier.wait(timeout=60)
    if after is not None:
        after.wait(timeout=60)
    try:
        VersionStore(Path(state)).record(
            "m", version, manifest_digest=DIGEST, signer_key_id=KID, now=T0
        )
        out.put((version, "recorded"))
    except RollbackError as exc:
        out.put((version, f"rollback: {exc}"))
    finally:
        if done is not None:
            done.set()


def test_two_processes_the_lower_one_recording_second_is_refused(state: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, higher_done, out = ctx.Barrier(2), ctx.Event(), ctx.Queue()
    higher = ctx.Process(
        target=_record_in_process, args=(str(state), 5, barrier, None, higher_done, out)
    )
    lower = ctx.Process(
        target=_record_in_process, args=(str(state), 3, barrier, higher_done, None, out)
    )
    for p in (higher, lower):
        p.start()
    results = dict(out.get(timeout=60) for _ in range(2))
    for p in (higher, lower):
        p.join(timeout=60)
    assert results[5] == "recorded"
    assert results[3].startswith("rollback: ") and "v3 is older than v5" in results[3]
    assert VersionStore(state).get("m") == 5


def _record_many(state: str, names: list[str], barrier: Any) -> None:
    barrier.wait(timeout=60)
    for n in names:
        VersionStore(Path(state)).record(n, 1, manifest_digest=DIGEST, signer_key_id=KID, now=T0)


def test_concurrent_processes_lose_no_update(state: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    names = [[f"p{i}-{j}" for j in range(15)] for i in range(3)]
    procs = [ctx.Process(target=_record_many, args=(str(state), n, barrier)) for n in names]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    store = VersionStore(state)
    assert all(store.get(n) == 1 for ns in names for n in ns)

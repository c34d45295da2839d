"""Plaintext memory: anonymous, wiped on close, and never written to a file."""

from __future__ import annotations

import builtins
import os
from pathlib import Path
from typing import Any

import pytest

from edgeguard import api, data
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.keys import DeviceKey, SignerKey
from edgeguard.runtime.secmem import SecretBuffer


def test_secret_buffer_zeroed_writable_and_wiped() -> None:
    buf = SecretBuffer(3 << 20)
    view = buf.view()
    assert len(view) == 3 << 20 and not any(view[:4096])
    view[:5] = b"hello"
    assert bytes(buf)[:5] == b"hello"
    view.release()
    buf.wipe()
    assert buf.wiped
    with pytest.raises(ValueError):
        buf.view()
    buf.wipe()  # idempotent


def test_populate_maps_pages_without_changing_bytes() -> None:
    size = (4 << 20) + 123
    buf = SecretBuffer(size)
    view = buf.view()
    view[4096:4101] = b"hello"
    view[-3:] = b"end"
    supported = buf.populate(0, size)
    assert buf.populate(4097, 10) == supported  # unaligned start
    assert buf.populate(size - 5, 1 << 20) == supported  # clipped to the buffer
    assert not buf.populate(size, 10) and not buf.populate(0, 0)
    assert bytes(view[4096:4101]) == b"hello" and bytes(view[-3:]) == b"end"
    assert not any(view[:4096]) and not any(view[4101 : size - 3])
    view.release()
    buf.wipe()
    assert not buf.populate(0, 10)


def test_secret_buffer_empty_and_negative() -> None:
    assert bytes(SecretBuffer(0)) == b""
    with pytest.raises(ValueError):
        SecretBuffer(-1)


@pytest.mark.parametrize("isolation", ["sandbox", "threads"])
def test_open_and_load_write_no_file_but_the_state_store(
    tmp_path: Path, monkeypatch, isolation: str
) -> None:
    from edgeguard.runtime import session as session_mod

    signer, device = SignerKey.generate(), DeviceKey.generate("cam-01")
    bundle = tmp_path / "b.egb"
    api.build_bundle(
        [data.model_path("digits_mlp")],
        out=bundle,
        signer=signer,
        recipients=[device.public],
        profiles=["generic-cpu"],
        version=1,
    )
    state = tmp_path / "state"
    writes: list[str] = []
    opened: list[Any] = []
    real_open, real_os_open = builtins.open, os.open
    real_open_bundle = session_mod.open_bundle

    def spy_open(file, mode="r", *a, **k):  # type: ignore[no-untyped-def]
        if any(c in mode for c in "wax+"):
            writes.append(str(file))
        return real_open(file, mode, *a, **k)

    def spy_os_open(path, flags, *a, **k):  # type: ignore[no-untyped-def]
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            dir_fd = k.get("dir_fd")  # a name relative to an open directory: resolve it
            where = "" if dir_fd is None else os.readlink(f"/proc/self/fd/{dir_fd}")
            writes.append(os.path.join(where, str(path)))
        return real_os_open(path, flags, *a, **k)

    def spy_open_bundle(*a, **k):  # type: ignore[no-untyped-def]
        opened.append(real_open_bundle(*a, **k))
        return opened[-1]

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(session_mod, "open_bundle", spy_open_bundle)
    images, _ = data.load_split("test")
    with api.open_session(
        bundle,
        trust=TrustStore.of([signer.public]),
        device_key=device,
        state_dir=state,
        isolation=isolation,
    ) as session:
        session.run({"image": images[:4]})
        # once the members run, this process holds no decrypted model of its own
        assert opened[0].members["digits_mlp"].wiped
    monkeypatch.undo()
    # the state store and event log; /dev/null is the sandboxed worker's stdio
    outside = [w for w in writes if not w.startswith(str(state)) and w != os.devnull]
    assert outside == [], outside


_CORE_PROBE = r"""
import ctypes, json, resource, sys
from pathlib import Path
from edgeguard import api, data
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.keys import DeviceKey, SignerKey
from edgeguard.runtime import opener

libc = ctypes.CDLL(None, use_errno=True)
def state():
    return {
        "dumpable": libc.prctl(3, 0, 0, 0, 0),  # PR_GET_DUMPABLE
        "core": list(resource.getrlimit(resource.RLIMIT_CORE)),
    }

tmp = Path(sys.argv[1])
signer, device = SignerKey.generate(), DeviceKey.generate("cam-01")
bundle = tmp / "b.egb"
api.build_bundle([data.model_path("digits_mlp")], out=bundle, signer=signer,
                 recipients=[device.public], profiles=["generic-cpu"], version=1)
_soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))  # as a shell with ulimit -c would
seen = {"before": state()}
real_unwrap = opener.unwrap_data_key
def spy_unwrap(*a, **k):
    seen["at_unwrap"] = state()
    return real_unwrap(*a, **k)
opener.unwrap_data_key = spy_unwrap
opened = opener.open_bundle(bundle, trust=TrustStore.of([signer.public]), device_key=device,
                            state_dir=tmp / "state")
seen["after"] = state()
opened.wipe()
print(json.dumps(seen))
"""


def test_a_process_that_decrypts_a_bundle_cannot_dump_core(tmp_path: Path) -> None:
    """Core dumps are off and the process is non-dumpable before the data key is unwrapped."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        [sys.executable, "-c", _CORE_PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.splitlines()[-1])
    assert seen["before"]["dumpable"] == 1  # a fresh interpreter: the probe can fail
    for when in ("at_unwrap", "after"):
        assert seen[when] == {"dumpable": 0, "core": [0, 0]}, (when, seen)

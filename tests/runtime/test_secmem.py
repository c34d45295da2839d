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
            where = str(path)
            if k.get("dir_fd") is not None:  # openat: relative to that directory
                where = os.path.join(os.readlink(f"/proc/self/fd/{k['dir_fd']}"), where)
            writes.append(where)
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

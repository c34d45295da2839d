"""Members in threads that missed their deadline do not take the process down at exit: the
session waits (with a bound) for a call still running in native code before it closes the
backends, and the ``edgeguard`` command ends without the interpreter's shutdown when a call
is still running after that (which aborted the process: SIGABRT, exit 134)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeguard import api
from edgeguard.cli import main as cli_main
from edgeguard.errors import BackendError
from edgeguard.keystore import load_device_key, load_trust_store
from edgeguard.runtime import threads
from edgeguard.runtime.threads import ThreadMemberExecutor, running_calls
from tests.helpers import build, make_keys, run_bundle

pytest.importorskip("onnxruntime")
X = np.ones((1, 256), np.float32)


def _slow_model(path: Path, iterations: int = 40_000) -> None:
    """A Loop of small MatMuls: loads in milliseconds, runs ~1 s here, many kernel calls."""
    from onnx import TensorProto, helper, numpy_helper

    v = [1, 256]
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["c_in"], ["c_out"]),
            helper.make_node("MatMul", ["v_in", "w"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, v),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, v),
        ],
    )
    consts = [
        numpy_helper.from_array(np.eye(256, dtype=np.float32), "w"),
        numpy_helper.from_array(np.array(iterations, np.int64), "trip"),
        numpy_helper.from_array(np.array(True), "cond"),
    ]
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body)],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, v)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, v)],
        consts,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    path.write_bytes(m.SerializeToString())


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A single-model bundle whose model takes ~1 s, signed with a 20 ms deadline."""
    d = tmp_path_factory.mktemp("slow")
    make_keys(d)
    _slow_model(d / "slow.onnx")
    bundle = d / "slow.egb"
    r = build(d, bundle, d / "slow.onnx", extra=("--deadline-ms", "20"))
    assert r.returncode == 0, r.stderr
    np.save(d / "x.npy", X)
    return {"d": d, "bundle": bundle}


def _slow_threads() -> list[threading.Thread]:
    """The worker threads of the member ``slow`` (other tests' threads may still run)."""
    return [t for t in threading.enumerate() if t.name.startswith("edgeguard-member-slow-")]


def test_closing_a_session_waits_for_a_late_call_in_a_thread(slow: dict[str, Path]) -> None:
    d = slow["d"]
    session = api.open_session(
        slow["bundle"],
        trust=load_trust_store([d / "signer.pub"]),
        device_key=load_device_key(d / "dev" / "device.key"),
        state_dir=d / "state-api",
        isolation="threads",
    )
    with pytest.raises(BackendError, match="within the 20 ms deadline"):
        session.infer({"x": X})
    assert [t.is_alive() for t in _slow_threads()] == [True]  # abandoned, in ONNX Runtime
    session.close()
    assert not _slow_threads()
    log = (d / "state-api" / "events.log").read_text()
    assert '"member_calls_running"' not in log  # it ended within the bound


def test_the_cli_exits_cleanly_after_a_deadline_miss_in_threads(slow: dict[str, Path]) -> None:
    d = slow["d"]
    r = run_bundle(
        d, slow["bundle"], d / "x.npy", d / "out.npz", d / "state-cli", "--isolation", "threads"
    )
    assert r.returncode == 10, (r.returncode, r.stderr)
    assert "terminate called" not in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "within the 20 ms deadline" in r.stderr, r.stderr


class _Blocked:
    def __init__(self) -> None:
        self.release = threading.Event()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.release.wait()
        return {"y": np.zeros(1)}


def test_drain_waits_with_a_bound_and_counts_what_is_left() -> None:
    m = _Blocked()
    ex = ThreadMemberExecutor({"m": m})
    call = ex.submit("m", {})
    assert not call.wait(0.05)
    ex.abandon("m")
    t = time.perf_counter()
    assert ex.drain(0.2) == 1 and running_calls() >= 1
    assert time.perf_counter() - t < 2.0
    m.release.set()
    assert ex.drain(5.0) == 0


def test_the_command_ends_without_the_interpreter_shutdown_when_a_call_still_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    exits: list[tuple[str, int]] = []

    def fake_exit(kind: str) -> Any:
        def do(code: int) -> None:
            exits.append((kind, code))
            raise SystemExit(code)

        return do

    monkeypatch.setattr(cli_main.os, "_exit", fake_exit("os._exit"))
    monkeypatch.setattr(cli_main.sys, "exit", fake_exit("sys.exit"))
    monkeypatch.setattr(cli_main, "main", lambda: 10)
    assert "edgeguard.runtime.threads" in sys.modules
    monkeypatch.setattr(threads, "running_calls", lambda: 1)
    with pytest.raises(SystemExit):
        cli_main.console_main()
    assert exits == [("os._exit", 10)]
    assert "1 in-process model call(s) still running" in capsys.readouterr().err
    monkeypatch.setattr(threads, "running_calls", lambda: 0)
    with pytest.raises(SystemExit):
        cli_main.console_main()
    assert exits[-1] == ("sys.exit", 10) and not capsys.readouterr().err

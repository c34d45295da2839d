"""The device session: one road from a bundle to an answer, the same for the library and the CLI.

A calibrated ensemble bundle with a fallback model and a signed isolation requirement is
opened through ``edgeguard.api.open_session`` and through ``edgeguard run``; both get the
same answers, sources, exit classes and event-log records for clean, corrupted and faulty
frames. Also: the isolation floor, the single-model policy, models that declare a dynamic
axis as -1, bundles signed before I/O contracts and runtime policies, and a clean event log
on every way out (errors, SIGTERM) and an unclean one after SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeguard import api, data
from edgeguard.bundle.verify import TrustStore
from edgeguard.errors import (
    EdgeguardError,
    InputRefusedError,
    InputRejectedError,
    PolicyError,
    RollbackError,
    UsageError,
)
from edgeguard.guard.eventlog import verify as verify_log
from edgeguard.keystore import load_device_key, load_trust_store
from edgeguard.runtime.opener import read_prefix
from edgeguard.runtime.sandbox import probe_host
from tests.helpers import EG, build, eg, make_keys, run_bundle

HOST = probe_host()
needs_isolation = pytest.mark.skipif(
    not (HOST.available("seccomp") and HOST.available("landlock")),
    reason="this host offers no seccomp or no Landlock, which the bundle requires",
)
MEMBERS = ("digits_mlp-fp32", "digits_mlp-fp16")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("session")
    make_keys(d)
    b = d / "ens.egb"
    r = build(
        d,
        b,
        data.model_path("digits_mlp"),
        version=1,
        extra=(
            "--calibration",
            data.split_path("calib"),
            "--variants",
            "fp32,fp16",
            "--fallback",
            data.model_path("digits_logreg"),
            "--deadline-ms",
            "3000",
            "--require-isolation",
            "seccomp",
            "--require-isolation",
            "landlock",
        ),
    )
    assert r.returncode == 0, r.stderr
    return {
        "d": d,
        "bundle": b,
        "trust": load_trust_store([d / "signer.pub"]),
        "device": load_device_key(d / "dev" / "device.key"),
    }


def _session(world: dict[str, Any], state: Path, **kw: Any) -> Any:
    return api.open_session(
        world["bundle"], trust=world["trust"], device_key=world["device"], state_dir=state, **kw
    )


# The log records both roads must write alike; ids, times and pids differ by nature.
_VOLATILE = {"pid", "log_id", "sig", "head", "key_id", "time", "retry_in_ms", "detail", "ms"}


def _records(state: Path, world: dict[str, Any]) -> list[tuple[str, Any]]:
    verify_log(state / "events.log", world["device"].public.attest, require_clean=True)
    out = []
    for line in (state / "events.log").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] in ("log_open", "log_resume", "checkpoint") or rec["kind"].startswith(
            "sandbox_worker"
        ):
            continue
        data_ = {k: v for k, v in rec["data"].items() if k not in _VOLATILE}
        out.append((rec["kind"], json.dumps(data_, sort_keys=True)))
    return out


def _sequence() -> np.ndarray:
    """Clean held-out digits with broken camera frames between them."""
    images, _ = data.load_split("test")
    frames = images[:8].copy()
    frames[1, 0, 2, 2] = np.nan  # an upstream filter fault
    frames[3] = frames[3] * 255.0  # the driver's 0..255
    frames[5] = 0.0  # a dead sensor
    return frames


@needs_isolation
def test_library_and_cli_give_the_same_answers_sources_and_log(world, tmp_path) -> None:
    frames = _sequence()
    lib_state, cli_state = tmp_path / "lib", tmp_path / "cli"
    with _session(world, lib_state) as s:
        assert s.isolation == "sandbox"
        lib = [s.infer({"image": frames[i : i + 1]}) for i in range(len(frames))]
    np.savez(tmp_path / "in.npz", image=frames)
    r = run_bundle(
        world["d"], world["bundle"], tmp_path / "in.npz", tmp_path / "o.npz", cli_state, "--json"
    )
    assert r.returncode == 0, r.stderr
    *cli, summary = (json.loads(line) for line in r.stdout.splitlines())
    assert [x.source.value for x in lib] == [x["source"] for x in cli]
    assert [x.source.value for x in lib] == [
        "ensemble",
        "last_known_good",
        "ensemble",
        "last_known_good",
        "ensemble",
        "last_known_good",
        "ensemble",
        "ensemble",
    ]
    assert [x.health.name for x in lib] == [x["health"] for x in cli]
    assert [list(x.reasons) for x in lib] == [x["reasons"] for x in cli]
    labels = np.load(tmp_path / "o.npz")["label"]
    assert np.array_equal(np.concatenate([x.outputs["label"] for x in lib]), labels)
    assert summary["summary"]["isolation"] == "sandbox"
    records = _records(lib_state, world)
    assert records == _records(cli_state, world)
    assert [k for k, _ in records].count("input_rejected") == 3
    assert records[0][0] == "session_open" and records[-1][0] == "session_close"


@needs_isolation
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("clean", None),
        ("nan", InputRejectedError),
        ("float64", InputRejectedError),
        ("shape", InputRejectedError),
    ],
)
def test_library_and_cli_fail_alike_on_a_fresh_device(world, tmp_path, case, expected) -> None:
    """Without a last-known-good answer (a fresh start), a rejected frame has no answer."""
    images, _ = data.load_split("test")
    frame = images[:1].copy()
    if case == "nan":
        frame[0, 0, 0, 0] = np.nan
    elif case == "float64":
        frame = frame.astype(np.float64)
    elif case == "shape":
        frame = np.zeros((1, 1, 8, 9), np.float32)
    with _session(world, tmp_path / "lib") as s:
        try:
            s.infer({"image": frame})
            lib_error: EdgeguardError | None = None
        except EdgeguardError as exc:
            lib_error = exc
    np.savez(tmp_path / "in.npz", image=frame)
    r = run_bundle(
        world["d"], world["bundle"], tmp_path / "in.npz", tmp_path / "o.npz", tmp_path / "cli"
    )
    if expected is None:
        assert lib_error is None and r.returncode == 0, r.stderr
    else:
        assert isinstance(lib_error, expected)
        assert r.returncode == expected.exit_code == 8
        assert r.stderr.strip() == f"edgeguard: error: {lib_error.one_line()}"
        assert "Traceback" not in r.stderr
    # an error inside the session still ends both logs cleanly
    assert _records(tmp_path / "lib", world) == _records(tmp_path / "cli", world)
    r = eg(
        "log",
        "verify",
        tmp_path / "cli" / "events.log",
        "--device-pub",
        world["d"] / "dev" / "device.pub",
    )
    assert r.returncode == 0, r.stderr


@needs_isolation
def test_isolation_floor_refuses_threads_unless_the_unsafe_bypass_is_named(world, tmp_path) -> None:
    with pytest.raises(PolicyError, match="requires isolation \\(landlock, seccomp\\)"):
        _session(world, tmp_path / "s", isolation="threads")
    images, _ = data.load_split("test")
    np.savez(tmp_path / "in.npz", image=images[:1])
    args = (world["d"], world["bundle"], tmp_path / "in.npz", tmp_path / "o.npz")
    r = run_bundle(*args, tmp_path / "s", "--isolation", "threads")
    assert r.returncode == 6 and "requires isolation (landlock, seccomp)" in r.stderr, r.stderr
    assert "--unsafe-in-process" in r.stderr and "Traceback" not in r.stderr
    # the refusal records no version and starts no log
    assert not (tmp_path / "s" / "events.log").exists()
    with _session(world, tmp_path / "u", isolation="threads", unsafe_in_process=True) as s:
        assert s.isolation == "threads" and s.unsafe_in_process
        assert s.infer({"image": images[:1]}).source.value == "ensemble"
    kinds = [k for k, _ in _records(tmp_path / "u", world)]
    assert kinds[:2] == ["session_open", "unsafe_isolation_bypass"]
    r = run_bundle(*args, tmp_path / "c", "--isolation", "threads", "--unsafe-in-process")
    assert r.returncode == 0, r.stderr
    assert "warning: the bundle requires isolation" in r.stderr
    # a bundle that requires nothing may run in threads without any bypass
    r = run_bundle(*args, tmp_path / "v", "--isolation", "sandbox")
    assert r.returncode == 0, r.stderr


@needs_isolation
def test_verify_with_the_device_key_checks_the_floor_too(world) -> None:
    base = ("verify", world["bundle"], "--trust", world["d"] / "signer.pub")
    key = ("--device-key", world["d"] / "dev" / "device.key")
    r = eg(*base, *key)
    assert r.returncode == 0 and "isolation floor" in r.stdout, r.stderr
    r = eg(*base, *key, "--isolation", "threads")
    assert r.returncode == 6 and "requires isolation" in r.stderr


def test_a_bad_isolation_name_is_a_usage_error(world, tmp_path) -> None:
    with pytest.raises(UsageError, match="isolation must be one of"):
        _session(world, tmp_path, isolation="processes")


def _neg_dim_model(path: Path, scale: float) -> Path:
    """A model whose exporter wrote its dynamic batch axis as dim_value -1."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3])
    w = helper.make_tensor(
        "W", TensorProto.FLOAT, [4, 3], (np.arange(12, dtype=np.float32) * scale).tolist()
    )
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g", [x], [y], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save_model(m, path)
    return path


def test_a_sandboxed_ensemble_of_a_model_declaring_dim_minus_one_runs(tmp_path) -> None:
    make_keys(tmp_path)
    a = _neg_dim_model(tmp_path / "a.onnx", 1.0)
    b = _neg_dim_model(tmp_path / "b.onnx", 1.01)
    bundle = tmp_path / "neg.egb"
    r = build(tmp_path, bundle, a, b, extra=("--voter", "plurality", "--quorum", "2"))
    assert r.returncode == 0, r.stderr
    with open(bundle, "rb") as f:
        io = read_prefix(f)[0].header.manifest.policy["io"]
    assert io["a"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": [None, 4]}]
    x = np.ones((5, 4), np.float32)
    with api.open_session(
        bundle,
        trust=load_trust_store([tmp_path / "signer.pub"]),
        device_key=load_device_key(tmp_path / "dev" / "device.key"),
        state_dir=tmp_path / "s",
    ) as s:
        assert s.isolation == "sandbox" and [t.shape for t in s.inputs] == [(None, 4)]
        res = s.infer({"x": x})
    assert res.source.value == "ensemble" and res.members == ("a", "b")
    assert np.array_equal(res.outputs["label"], np.full(5, 2))


def test_a_single_model_bundle_runs_the_same_guarded_road(tmp_path) -> None:
    make_keys(tmp_path)
    bundle = tmp_path / "one.egb"
    r = build(
        tmp_path,
        bundle,
        data.model_path("digits_mlp"),
        extra=("--calibration", data.split_path("calib")),
    )
    assert r.returncode == 0, r.stderr
    with open(bundle, "rb") as f:
        policy = read_prefix(f)[0].header.manifest.policy
    assert policy["runtime"]["voter"]["kind"] == "passthrough"
    assert policy["runtime"]["fallback_chain"] == ["ensemble"]
    images, labels = data.load_split("test")
    with api.open_session(
        bundle,
        trust=load_trust_store([tmp_path / "signer.pub"]),
        device_key=load_device_key(tmp_path / "dev" / "device.key"),
        state_dir=tmp_path / "s",
    ) as s:
        out = s.run({"image": images})  # one request of 360 frames
        assert set(out) == {"logits"}  # every output, unchanged; no voting artefacts
        assert np.mean(np.argmax(out["logits"], 1) == labels) > 0.95
        res = s.infer({"image": images[:1]})
        assert (res.source.value, res.health.name) == ("single_member", "NOMINAL")
        assert res.latency_ms["input_checks"] < 50.0  # warmed up, as for an ensemble
        broken = images[:2].copy()
        broken[1, 0, 3, 3] = np.nan  # a frozen or broken frame inside a batch is caught
        with pytest.raises(InputRejectedError, match="image\\[1"):
            s.run({"image": broken})
        with pytest.raises(InputRefusedError, match="I/O region") as info:  # too large
            s.run({"image": np.resize(images, (200_000, *images.shape[1:]))})
        assert "--sandbox-io-mb" in info.value.one_line()
        assert s.run({"image": images[:1]})["logits"].shape == (1, 10)  # nobody quarantined


def test_a_bundle_signed_before_policies_and_io_contracts_runs(tmp_path) -> None:
    """Older bundles carry no runtime policy and no I/O contract: one model, default policy."""
    from edgeguard.crypto.keys import DeviceKey, SignerKey
    from edgeguard.packaging.packager import MemberSource, write_bundle

    signer, device = SignerKey.generate(), DeviceKey.generate("cam-01")
    bundle = tmp_path / "old.egb"
    write_bundle(
        bundle,
        [MemberSource("digits_mlp", data.model_bytes("digits_mlp"), "primary")],
        name="old",
        version=1,
        signer=signer,
        recipients=[device.public],
        profiles=["generic-cpu"],
    )
    images, labels = data.load_split("test")
    for isolation in ("sandbox", "threads"):
        with api.open_session(
            bundle,
            trust=TrustStore.of([signer.public]),
            device_key=device,
            state_dir=tmp_path / isolation,
            isolation=isolation,
        ) as s:
            assert not s.slots.runtime_signed and s.policy.voter.kind.value == "passthrough"
            assert [t.name for t in s.inputs] == ["image"]  # as the model reports it
            out = s.run({"image": images[:10]})
        assert np.mean(np.argmax(out["logits"], 1) == labels[:10]) >= 0.9


def _serve(world: dict[str, Any], state: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *EG,
            "serve",
            str(world["bundle"]),
            "--trust",
            str(world["d"] / "signer.pub"),
            "--device-key",
            str(world["d"] / "dev" / "device.key"),
            "--frames",
            str(data.split_path("test")),
            "--input-name",
            "image",
            "--fps",
            "5",
            "--state-dir",
            str(state),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_frames(state: Path, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        log = state / "events.log"
        # the release is recorded once the session has started (members up, deadline
        # checked): from then on a signal interrupts serving, not the start
        if (state / "versions.json").exists() and log.exists():
            assert log.read_bytes().count(b"sandbox_worker_started") == 3
            time.sleep(1.0)  # serving: a few frames in
            return
        time.sleep(0.05)
    raise AssertionError("serve did not start")


@needs_isolation
def test_sigterm_and_ctrl_c_end_the_event_log_cleanly_and_sigkill_does_not(world, tmp_path) -> None:
    pub = world["d"] / "dev" / "device.pub"
    p = _serve(world, tmp_path / "term")
    _wait_for_frames(tmp_path / "term")
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143 and "terminated" in err, err
    r = eg("log", "verify", tmp_path / "term" / "events.log", "--device-pub", pub)
    assert r.returncode == 0, r.stderr
    assert "session_close" in (tmp_path / "term" / "events.log").read_text()
    p = _serve(world, tmp_path / "int")
    _wait_for_frames(tmp_path / "int")
    p.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted" in err, err
    r = eg("log", "verify", tmp_path / "int" / "events.log", "--device-pub", pub)
    assert r.returncode == 0, r.stderr
    p = _serve(world, tmp_path / "kill")
    _wait_for_frames(tmp_path / "kill")
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)
    r = eg("log", "verify", tmp_path / "kill" / "events.log", "--device-pub", pub)
    assert r.returncode == 13 and "writer stopped without closing" in r.stderr, r.stderr


def test_only_the_session_builds_the_guard_and_the_runtime() -> None:
    """No other module of the package can build a guarded road of its own from a bundle."""
    import ast

    import edgeguard

    root = Path(edgeguard.__file__).parent
    builders = {
        "GuardedRuntime",
        "SanityGuard",
        "FrameChecks",
        "ProcessMemberExecutor",
        "ThreadMemberExecutor",
        "load_backend",
    }
    allowed = {
        "runtime/session.py",  # the one road
        "runtime/guarded.py",  # its default executor
        "runtime/sandbox/worker.py",  # a worker loads its own member
        "packaging/calibrate.py",  # build side: runs the model to calibrate
        "packaging/variants.py",  # build side: compares variants
    }
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
                if name in builders and rel not in allowed:
                    found.append(f"{rel}:{node.lineno} {name}")
    assert found == []


def test_a_release_overtaken_by_a_higher_one_while_its_members_start_is_refused(
    tmp_path, monkeypatch
) -> None:
    from edgeguard.runtime import session as session_mod

    make_keys(tmp_path)
    v1, v2 = tmp_path / "v1.egb", tmp_path / "v2.egb"
    for v, path in ((1, v1), (2, v2)):
        r = build(tmp_path, path, data.model_path("digits_logreg"), version=v)
        assert r.returncode == 0, r.stderr
    keys = {
        "trust": load_trust_store([tmp_path / "signer.pub"]),
        "device_key": load_device_key(tmp_path / "dev" / "device.key"),
        "state_dir": tmp_path / "s",
        "isolation": "threads",
    }
    real_start = session_mod._start
    closed: list[int] = []

    def start(opened: Any, *args: Any) -> Any:
        parts = real_start(opened, *args)
        if opened.manifest.version == 1:
            # a concurrent open of v2 completes while v1's members start
            api.open_session(v2, event_log=False, **keys).close()
            real_close = parts.close

            def close() -> None:
                closed.append(1)
                real_close()

            object.__setattr__(parts, "close", close)
        return parts

    monkeypatch.setattr(session_mod, "_start", start)
    with pytest.raises(RollbackError, match="v1 is older than v2"):
        api.open_session(v1, **keys)
    assert closed == [1]  # the members v1 started were stopped
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "s" / "events.log").open()]
    assert "session_failed" in kinds and kinds[-1] == "checkpoint"


def test_a_clock_behind_the_time_floor_is_recorded_in_the_event_log(tmp_path) -> None:
    make_keys(tmp_path)
    bundle = tmp_path / "b.egb"
    r = build(tmp_path, bundle, data.model_path("digits_logreg"))
    assert r.returncode == 0, r.stderr
    keys = {
        "trust": load_trust_store([tmp_path / "signer.pub"]),
        "device_key": load_device_key(tmp_path / "dev" / "device.key"),
        "state_dir": tmp_path / "s",
        "isolation": "threads",
    }
    t = int(time.time())
    api.open_session(bundle, now=t + 86_400, **keys).close()  # the floor: a day ahead
    with api.open_session(bundle, now=t, **keys) as s:
        assert s.clock is not None and s.clock.behind_floor
        assert s.clock.effective == t + 86_400
    with api.open_session(bundle, now=t + 86_400 - 300, **keys) as s:
        assert s.clock is not None and not s.clock.behind_floor
    records = [json.loads(line) for line in (tmp_path / "s" / "events.log").open()]
    behind = [r["data"] for r in records if r["kind"] == "clock_behind_floor"]
    assert behind == [{"now": t, "floor": t + 86_400, "effective": t + 86_400}]


def test_a_log_cut_back_to_an_earlier_session_is_refused_by_the_next_session_and_log_verify(
    world, tmp_path, capsys
) -> None:
    """The state directory anchors the log's latest signed checkpoint outside the log.

    A log cut back to the first session's final checkpoint is a clean, fully signed log
    (the log alone cannot show the second session is gone); the anchor next to it can.
    """
    from edgeguard.cli.main import main
    from edgeguard.errors import IntegrityError

    state = tmp_path / "state"
    kw: dict[str, Any] = {"isolation": "threads", "unsafe_in_process": True}
    with _session(world, state, **kw):
        pass
    first = (state / "events.log").read_bytes()
    with _session(world, state, **kw):
        pass
    log = state / "events.log"
    log.write_bytes(first)  # the second session is gone
    pub = world["device"].public.attest
    assert verify_log(log, pub, require_clean=True).clean  # the log alone: clean
    dev_pub = str(world["d"] / "dev" / "device.pub")
    assert main(["log", "verify", str(log), "--device-pub", dev_pub]) == 4
    err = capsys.readouterr().err
    assert err.startswith(f"edgeguard: error: event log {log} is behind its anchor ")
    assert "cut back or rolled back" in err and err.count("\n") == 1
    with pytest.raises(IntegrityError, match="is behind its anchor") as ei:
        _session(world, state, **kw)
    assert type(ei.value).__name__ == "LogRolledBackError" and ei.value.exit_code == 4
    assert log.read_bytes() == first  # nothing was appended to the cut log

"""The shared I/O area of a sandboxed worker is sized from what the bundle signed: the I/O
contract, the calibrated and engine maxima of dynamic axes, a floor for what nothing
bounds (the device's knob), all within the signed memory limit; a 4K frame runs sandboxed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeguard.errors import InputRefusedError, PolicyError, UsageError
from edgeguard.guard.eventlog import EventLog
from edgeguard.policy.engine import EngineRecipe, MemberRecipe, ShapeRange
from edgeguard.policy.io import MemberIo, TensorSpec
from edgeguard.policy.isolation import SandboxPolicy
from edgeguard.policy.runtime import (
    ChainStep,
    MemberSpec,
    QuarantinePolicy,
    RuntimePolicy,
    VoterKind,
    VoterSpec,
)
from edgeguard.policy.sanity import CalibrationInfo, InputProfile, SanityProfile
from edgeguard.policy.slots import SignedSlots
from edgeguard.runtime.guarded import GuardedRuntime, ResultSource
from edgeguard.runtime.sandbox import HostCapabilities
from edgeguard.runtime.sandbox.area import DEFAULT_IO_BYTES, MIN_IO_BYTES, io_area
from edgeguard.runtime.sandbox.executor import FALLBACK_NAME, ProcessMemberExecutor, WorkerSpec
from tests.helpers import build, eg, make_keys, run_bundle
from tests.sandbox.conftest import HOSTILE, ROOT

MiB = 2**20
FRAME_4K = (1, 3, 2160, 3840)  # float32: 99.5 MB


def slots(
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    *,
    profile: dict[str, tuple[tuple[int, int | None], ...]] | None = None,
    engine: dict[str, tuple[int, ...]] | None = None,
    memory_max: int | None = 2 * 1024 * MiB,
    fallback: MemberIo | None = None,
) -> SignedSlots:
    sanity = None
    if profile:
        sanity = SanityProfile(
            inputs=tuple(
                InputProfile(
                    name=n,
                    dtypes=("float32",),
                    layout="NCHW",
                    shape=shape,
                    sat_lo=0.0,
                    sat_hi=1.0,
                    channels=3,
                )
                for n, shape in profile.items()
            ),
            ood=(),
            target_false_alarm=0.01,
            calibration=CalibrationInfo(samples=8, model_sha256="0" * 64, impl="numpy", margin=0.5),
        )
    engines = None
    if engine:
        shapes = tuple(ShapeRange(n, tuple(1 for _ in hi), hi, hi) for n, hi in engine.items())
        engines = EngineRecipe(members={"m": MemberRecipe(fp16=True, shapes=shapes)})
    io = {"m": MemberIo(inputs=inputs, outputs=outputs)}
    if fallback is not None:
        io["fb"] = fallback
    return SignedSlots(
        runtime=RuntimePolicy.single("m"),
        runtime_signed=True,
        isolation=SandboxPolicy(memory_max_bytes=memory_max),
        sanity=sanity,
        io=io,
        engines=engines,
        fallback="fb" if fallback is not None else None,
    )


def image(*shape: Any, dtype: str = "float32", name: str = "image") -> TensorSpec:
    return TensorSpec(name, dtype, tuple(shape))


def test_a_fixed_4k_frame_is_sized_exactly() -> None:
    s = slots((image(*FRAME_4K),), (image(1, 3, name="mean"),))
    area = io_area(s, names=["m"])
    assert area.contract_bytes == 2160 * 3840 * 3 * 4 and not area.unbounded
    assert area.half_bytes == area.contract_bytes  # a multiple of 64 already
    assert "sized from the signed I/O contract" in area.describe()


def test_small_models_keep_the_default_floor_and_every_input_counts() -> None:
    s = slots(
        (image(1, 3, 8, 8), image(1, 7, dtype="int64", name="aux")), (image(1, 10, name="y"),)
    )
    area = io_area(s, names=["m"])
    assert area.contract_bytes == 8 * 8 * 3 * 4 + 64  # each aligned to 64 bytes
    assert area.half_bytes == DEFAULT_IO_BYTES


def test_dynamic_axes_take_the_calibrated_and_engine_maxima() -> None:
    dyn = image("N", 3, "H", "W")
    profile = {"image": ((1, None), (3, 3), (1080, 4320), (1920, 7680))}
    area = io_area(slots((dyn,), (image("N", 3, name="mean"),), profile=profile), names=["m"])
    assert area.contract_bytes == 3 * 4320 * 7680 * 4 and not area.unbounded  # batch 1
    # an engine's max shape bounds an axis too; the smaller maximum wins
    both = slots(
        (dyn,), (image("N", 3, name="mean"),), profile=profile, engine={"image": (2, 3, 2160, 3840)}
    )
    assert io_area(both, names=["m"]).contract_bytes == 2 * 3 * 2160 * 3840 * 4


def test_outputs_named_like_an_input_axis_take_its_size_others_are_unbounded() -> None:
    profile = {"image": ((1, None), (3, 3), (1, 2000), (1, 2000))}
    seg = image("N", 1, "H", "W", name="mask")  # a mask the size of the frame
    area = io_area(slots((image("N", 3, "H", "W"),), (seg,), profile=profile), names=["m"])
    assert area.contract_bytes == 3 * 2000 * 2000 * 4 and not area.unbounded
    boxes = image(None, 6, name="boxes")  # as many detections as the model finds
    area = io_area(slots((image("N", 3, "H", "W"),), (boxes,), profile=profile), names=["m"])
    assert area.unbounded == ("m.boxes",) and area.half_bytes == 3 * 2000 * 2000 * 4
    assert "m.boxes" in area.describe() and "32 MiB" in area.describe()


def test_without_bounds_the_floor_is_the_default_or_the_knob() -> None:
    s = slots((image("N", 3, "H", "W"),), (image("N", 3, name="mean"),))
    area = io_area(s, names=["m"])
    assert area.unbounded == ("m.image",) and area.half_bytes == DEFAULT_IO_BYTES
    assert io_area(s, names=["m"], floor_bytes=100 * MiB).half_bytes == 100 * MiB
    with pytest.raises(UsageError, match="at least"):
        io_area(s, names=["m"], floor_bytes=MIN_IO_BYTES - 1)


def test_the_fallback_model_is_sized_too() -> None:
    fb = MemberIo(inputs=(image(1, 3, 8, 8),), outputs=(image(1, 3, 500, 500, name="big"),))
    s = slots((image(1, 3, 8, 8),), (image(1, 10, name="y"),), fallback=fb)
    assert io_area(s, names=["m", "fb"]).contract_bytes == 3 * 500 * 500 * 4


def test_the_signed_memory_limit_bounds_the_area() -> None:
    fixed = slots((image(*FRAME_4K),), (image(1, 3, name="mean"),), memory_max=128 * MiB)
    with pytest.raises(PolicyError, match="more than half the 128 MiB"):
        io_area(fixed, names=["m"])
    small = slots((image("N", 3, "H", "W"),), (image("N", 3, name="mean"),), memory_max=32 * MiB)
    assert io_area(small, names=["m"]).half_bytes == 16 * MiB  # the default floor is cut
    with pytest.raises(PolicyError, match=r"17 MiB .* more than half the 32 MiB") as info:
        io_area(small, names=["m"], floor_bytes=17 * MiB)
    assert "ask for at most 16 MiB (--sandbox-io-mb)" in info.value.one_line()
    unlimited = slots((image("N", 3, "H", "W"),), (image("N", 3, name="mean"),), memory_max=None)
    assert io_area(unlimited, names=["m"], floor_bytes=4096 * MiB).half_bytes == 4096 * MiB


def _dynamic_model(path: Path) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N", 3])
    node = helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0)
    m = helper.make_model(
        helper.make_graph([node], "dyn", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]
    )
    m.ir_version = 9
    path.write_bytes(m.SerializeToString())


def test_a_4k_frame_runs_sandboxed(tmp_path: Path) -> None:
    """Dynamic axes nothing bounds: the model refuses the frame (exit 14), naming the knob;
    the knob runs it."""
    make_keys(tmp_path)
    _dynamic_model(tmp_path / "dyn.onnx")
    bundle = tmp_path / "dyn.egb"
    assert build(tmp_path, bundle, tmp_path / "dyn.onnx").returncode == 0
    frame = np.full(FRAME_4K, 0.25, np.float32)
    frame[0, 1] = 0.5
    np.save(tmp_path / "frame.npy", frame)
    out = tmp_path / "out.npz"
    r = run_bundle(tmp_path, bundle, tmp_path / "frame.npy", out, tmp_path / "s", "--json")
    assert r.returncode == 14 and "--sandbox-io-mb" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "the models refused it" in r.stderr, r.stderr
    line = json.loads(r.stdout)
    assert (line["error"], line["exit_code"]) == ("InputRefusedError", 14)
    assert [v["check"] for v in line["verdict"]["violations"]] == ["model.refused"]
    r = run_bundle(
        tmp_path, bundle, tmp_path / "frame.npy", out, tmp_path / "s", "--sandbox-io-mb", "100"
    )
    assert r.returncode == 0 and "models in sandbox" in r.stdout, r.stderr
    with np.load(out) as answers:
        np.testing.assert_allclose(answers["mean"], [[0.25, 0.5, 0.25]])
    log = (tmp_path / "s" / "events.log").read_text()
    assert '"sandbox_io_area"' in log and '"half_bytes":104857600' in log


def test_a_request_larger_than_the_area_is_refused_as_the_inputs_fault(
    caps: HostCapabilities, elog: EventLog
) -> None:
    """Every worker refuses it before running: InputRefusedError, and nobody is quarantined."""
    benign = WorkerSpec(b"benign", fmt="test", loader=HOSTILE, python_path=(str(ROOT),))
    ex = ProcessMemberExecutor(
        {"m": benign, FALLBACK_NAME: benign},
        policy=SandboxPolicy(),
        caps=caps,
        event_log=elog,
        io_bytes=MIN_IO_BYTES,
    )
    pol = RuntimePolicy(
        members=(MemberSpec("m"),),
        voter=VoterSpec(kind=VoterKind.MEDIAN, output="y"),
        deadline_ms=5000.0,
        fallback_chain=(ChainStep.ENSEMBLE, ChainStep.FALLBACK_MODEL, ChainStep.LAST_KNOWN_GOOD),
        quarantine=QuarantinePolicy(after_failures=1, backoff_ms=60_000.0),
    )
    with GuardedRuntime(
        ex.members(), fallback=ex.fallback(), policy=pol, executor=ex, event_log=elog
    ) as rt:
        big = {"x": np.ones(MIN_IO_BYTES // 4 + 1, np.float32)}
        with pytest.raises(InputRefusedError, match="cannot take the request") as info:
            rt.infer(big)
        assert "--sandbox-io-mb" in info.value.one_line()
        assert rt.quarantined() == ()
        small = rt.infer({"x": np.ones(4, np.float32)})
        assert small.source is ResultSource.SINGLE_MEMBER  # asked again at once
        assert ex.status("m").deaths == 0  # the worker never saw the request


def test_serve_records_a_refused_frame_as_a_rejected_input(tmp_path: Path) -> None:
    make_keys(tmp_path)
    _dynamic_model(tmp_path / "dyn.onnx")
    bundle = tmp_path / "dyn.egb"
    assert build(tmp_path, bundle, tmp_path / "dyn.onnx").returncode == 0
    np.savez(tmp_path / "frames.npz", image=np.full((3, 3, 64, 64), 0.5, np.float32))
    r = eg(
        "serve", bundle, "--trust", tmp_path / "signer.pub", "--device-key",
        tmp_path / "dev" / "device.key", "--frames", tmp_path / "frames.npz", "--fps", "50",
        "--state-dir", tmp_path / "s", "--sandbox-io-mb", "0.01", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["input_rejections"]["by_check"] == {"model.refused": 3}
    assert report["unanswered"] == 0 and report["sources"] == {"rejected": 3}

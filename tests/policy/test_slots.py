"""The typed signed slots: one strict reader, I/O contracts, engine recipes, read_slots."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeguard import _strict as st
from edgeguard import data
from edgeguard.bundle.model import DeviceConstraints, Digest, Manifest, Member
from edgeguard.errors import MalformedError
from edgeguard.policy.engine import EngineRecipe, MemberRecipe, ShapeRange
from edgeguard.policy.io import MemberIo, TensorSpec, normalize_dim, read_io
from edgeguard.policy.isolation import SandboxPolicy
from edgeguard.policy.runtime import (
    ChainStep,
    MemberSpec,
    RuntimePolicy,
    VoterKind,
    VoterSpec,
)
from edgeguard.policy.slots import policy_slot, read_slots
from tests.helpers import eg, make_keys

# ----------------------------------------------------------------------------- strict reader


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: st.as_int(True, "w"), "must be an integer"),
        (lambda: st.as_int(3, "w", lo=4), ">= 4"),
        (lambda: st.as_int(9, "w", hi=8), "<= 8"),
        (lambda: st.as_float(math.nan, "w"), "finite"),
        (lambda: st.as_float(math.inf, "w"), "finite"),
        (lambda: st.as_float("inf", "w"), "must be a number"),
        (lambda: st.as_float(0.0, "w", lo=0.0, lo_open=True), "> 0"),
        (lambda: st.as_str("", "w"), "empty"),
        (lambda: st.as_str("x" * 9, "w", max_len=8), "at most 8"),
        (lambda: st.as_str("c", "w", choices=("a", "b")), "not one of a, b"),
        (lambda: st.as_bool(1, "w"), "true or false"),
        (lambda: st.as_list([1, 2], "w", max_len=1), "1 entries"),
        (lambda: st.as_bytes(b"ab", "w", size=3), "3 bytes"),
        (lambda: st.as_map({1: 2}, "w"), "text strings"),
        (lambda: st.check_fields({"a": 1, "z": 2}, "w", ("a",)), "unknown field"),
        (lambda: st.check_fields({}, "w", ("a",)), "misses"),
    ],
)
def test_strict_reader_refuses(call: Any, match: str) -> None:
    with pytest.raises(MalformedError, match=match) as info:
        call()
    assert str(info.value).startswith("w: ")


def test_strict_reader_accepts_and_table_refuses_keys_never_read() -> None:
    assert st.as_float("-inf", "w", allow_inf=True) == -math.inf
    t = st.Table({"a": 1, "b": 2}, "thing")
    assert st.as_int(t.required("a"), t.at("a")) == 1
    assert t.optional("c", 7) == 7
    with pytest.raises(MalformedError, match="thing: unknown field\\(s\\) 'b'"):
        t.done()
    with pytest.raises(MalformedError, match="thing: misses the field 'z'"):
        t.required("z")


# ----------------------------------------------------------------------------- I/O contracts


@pytest.mark.parametrize(
    ("dim", "want"),
    [
        (3, 3),
        (-1, None),
        (0, None),
        ("?", None),
        ("", None),
        ("N", "N"),
        (None, None),
        (True, None),
    ],
)
def test_dynamic_axes_are_normalised_whatever_the_exporter_wrote(dim: Any, want: Any) -> None:
    assert normalize_dim(dim) == want


def test_io_contract_round_trip_and_refusals() -> None:
    io = MemberIo(
        inputs=(TensorSpec("x", "float32", (None, 3, "H", 8)),),
        outputs=(TensorSpec("y", "int64", (None,)),),
    )
    assert read_io({"m": io.to_dict()}, "io") == {"m": io}
    bad = io.to_dict()
    for mutate, match in [
        (lambda d: d["inputs"][0].update(shape=[-1, 3]), ">= 1"),
        (lambda d: d["inputs"][0].update(dtype="complex64"), "not one of"),
        (lambda d: d["inputs"][0].update(shape=["a b"]), "not allowed"),
        (lambda d: d["inputs"][0].update(extra=1), "unknown field"),
        (lambda d: d["inputs"].append(dict(d["inputs"][0])), "unique"),
        (lambda d: d.update(inputs=[]), "1 to 256 entries"),
    ]:
        d: Any = {"inputs": [dict(x) for x in bad["inputs"]], "outputs": bad["outputs"]}
        mutate(d)
        with pytest.raises(MalformedError, match=match):
            read_io({"m": d}, "io")


# ----------------------------------------------------------------------------- engine recipe


def test_engine_recipe_round_trip() -> None:
    r = EngineRecipe(
        members={
            "det-fp16": MemberRecipe(
                fp16=True,
                dla_core=1,
                allow_gpu_fallback=True,
                workspace_bytes=1 << 30,
                shapes=(ShapeRange("x", (1, 3, 320, 320), (1, 3, 640, 640), (1, 3, 960, 960)),),
            )
        }
    )
    assert EngineRecipe.from_dict(r.to_dict()) == r


@pytest.mark.parametrize(
    ("member", "match"),
    [
        ({"dla_core": 0}, "DLA runs fp16 or int8"),
        ({"allow_gpu_fallback": True}, "only meaningful with dla_core"),
        ({"fp16": True, "dla_core": 16}, "<= 15"),
        ({"workspace_bytes": 1024}, ">= 1048576"),
        ({"builder_optimization_level": 6}, "<= 5"),
        ({"hardware_compatibility_level": "any"}, "not one of"),
        ({"shapes": [{"input": "x", "min": [2], "opt": [1], "max": [4]}]}, "min <= opt <= max"),
        ({"shapes": [{"input": "x", "min": [1], "opt": [1, 2], "max": [4]}]}, "same"),
        ({"fp32": True}, "unknown field"),
        ({"fp16": 1}, "true or false"),
    ],
)
def test_engine_recipe_refusals(member: dict[str, Any], match: str) -> None:
    d = {"format": "edgeguard-engine-recipe/1", "members": {"m": member}}
    with pytest.raises(MalformedError, match=match):
        EngineRecipe.from_dict(d)
    with pytest.raises(MalformedError, match="expected"):
        EngineRecipe.from_dict({"format": "trt/0", "members": {}})


# ----------------------------------------------------------------------------- read_slots


def _manifest(
    *members: tuple[str, str], policy: Any = None, sanity: Any = None, recipe: Any = None
) -> Manifest:
    return Manifest(
        name="b",
        version=1,
        created=0,
        expires=None,
        signer=bytes(32),
        devices=DeviceConstraints(("generic-cpu",)),
        members=tuple(
            Member(n, role, "onnx", 1, Digest("sha256", bytes(32)), 0) for n, role in members
        ),
        sanity=sanity,
        policy=policy,
        engine_recipe=recipe,
    )


IO = MemberIo(
    inputs=(TensorSpec("x", "float32", (None, 4)),),
    outputs=(TensorSpec("y", "float32", (None, 2)),),
)


def _policy(*names: str, io: dict[str, MemberIo] | None = None, **kw: Any) -> dict[str, Any]:
    runtime = RuntimePolicy(
        members=tuple(MemberSpec(n) for n in names),
        voter=VoterSpec(VoterKind.PLURALITY, "y"),
        fallback_chain=(ChainStep.ENSEMBLE, ChainStep.LAST_KNOWN_GOOD),
        **kw,
    )
    return policy_slot(
        runtime=runtime,
        isolation=SandboxPolicy(),
        io=io if io is not None else dict.fromkeys(names, IO),
    )


def test_read_slots_types_every_slot() -> None:
    m = _manifest(("a", "primary"), ("b", "member"), ("f", "fallback"), policy=_policy("a", "b"))
    s = read_slots(m)
    assert s.runtime_signed and s.runtime.member_names == ("a", "b") and s.fallback == "f"
    assert s.member_io("a") == IO and s.member_io("f") is None and s.sanity is None


def test_a_bundle_without_a_runtime_policy_is_one_model() -> None:
    s = read_slots(_manifest(("m", "primary")))
    assert not s.runtime_signed
    assert s.runtime.voter.kind is VoterKind.PASSTHROUGH and s.runtime.member_names == ("m",)
    assert s.runtime.fallback_chain == (ChainStep.ENSEMBLE,) and s.isolation == SandboxPolicy()


@pytest.mark.parametrize(
    ("manifest", "match"),
    [
        (lambda: _manifest(("a", "primary"), policy=_policy("a", "b")), "model members are"),
        (
            lambda: _manifest(("a", "primary"), ("b", "member"), policy=_policy("a")),
            "model members",
        ),
        (
            lambda: _manifest(("a", "primary"), policy=_policy("a", io={"a": IO, "z": IO})),
            "members the manifest lacks",
        ),
        (
            lambda: _manifest(
                ("a", "primary"),
                ("f", "fallback"),
                policy=_policy(
                    "a",
                    io={
                        "a": IO,
                        "f": dataclasses.replace(IO, inputs=(TensorSpec("x", "uint8", (None, 4)),)),
                    },
                ),
            ),
            "the same frame",
        ),
        (lambda: _manifest(("a", "primary"), ("f", "fallback"), ("g", "fallback")), "at most one"),
        (
            lambda: _manifest(("a", "primary"), policy={"runtime": None, "extra": 1}),
            "unknown field",
        ),
        (lambda: _manifest(("a", "primary"), policy={"sandbox": {"seccomp": "maybe"}}), "seccomp"),
        (lambda: _manifest(("a", "primary"), sanity={"format": "x"}), "sanity profile"),
        (
            lambda: _manifest(
                ("a", "primary"),
                recipe={"format": "edgeguard-engine-recipe/1", "members": {"z": {}}},
            ),
            "lacks",
        ),
        (lambda: _manifest(("a", "member"), ("b", "member")), "no primary"),
    ],
)
def test_read_slots_refuses_slots_that_contradict_the_manifest(manifest: Any, match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        read_slots(manifest())


def test_a_malformed_signed_slot_fails_at_verify_and_is_never_signed(
    tmp_path: Path, monkeypatch
) -> None:
    """The packager reads its slots back before signing; a forged one fails at verify."""
    from edgeguard.crypto.keys import DeviceKey, SignerKey
    from edgeguard.keystore import write_keypair
    from edgeguard.packaging import packager
    from edgeguard.packaging.packager import MemberSource, write_bundle

    signer, device = SignerKey.generate(), DeviceKey.generate("cam-01")
    write_keypair(signer, tmp_path / "signer.key", tmp_path / "signer.pub")
    bad = {"runtime": {"format": "edgeguard-runtime-policy/1", "members": [], "voter": {}}}
    args: dict[str, Any] = dict(
        name="b", version=1, signer=signer, recipients=[device.public], profiles=["generic-cpu"]
    )
    member = [MemberSource("m", data.model_bytes("digits_mlp"), "primary")]
    with pytest.raises(MalformedError, match="runtime policy"):
        write_bundle(tmp_path / "x.egb", member, policy=bad, **args)
    assert not (tmp_path / "x.egb").exists()
    monkeypatch.setattr(packager, "read_slots", lambda m: None)  # a signer that skips the check
    write_bundle(tmp_path / "x.egb", member, policy=bad, **args)
    r = eg("verify", tmp_path / "x.egb", "--trust", tmp_path / "signer.pub")
    assert r.returncode == 3 and "runtime policy" in r.stderr and "Traceback" not in r.stderr


def test_build_signs_each_members_io_contract(tmp_path: Path) -> None:
    from edgeguard.runtime.opener import read_prefix
    from tests.helpers import build

    make_keys(tmp_path)
    r = build(tmp_path, tmp_path / "b.egb", data.model_path("digits_mlp"))
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "b.egb", "rb") as f:
        manifest = read_prefix(f)[0].header.manifest
    io = read_slots(manifest).member_io("digits_mlp")
    assert io is not None
    assert [(t.name, t.dtype) for t in io.inputs] == [("image", "float32")]
    assert io.inputs[0].shape == ("N", 1, 8, 8)  # the named dynamic batch axis
    assert [t.name for t in io.outputs] == ["logits"]
    assert np.dtype(io.outputs[0].dtype) == np.float32

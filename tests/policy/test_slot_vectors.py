"""The signed-slot vectors of docs/bundle-format.md ("The signed slots")."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from edgeguard.bundle.model import DeviceConstraints, Digest, Manifest, Member
from edgeguard.errors import MalformedError
from edgeguard.policy.slots import read_slots

HERE = Path(__file__).resolve().parents[1] / "vectors" / "slots"
VALID = json.loads((HERE / "valid.json").read_text())
CASES = json.loads((HERE / "invalid.json").read_text())["cases"]


def _manifest(v: dict[str, Any]) -> Manifest:
    return Manifest(
        name="vector",
        version=1,
        created=0,
        expires=None,
        signer=bytes(32),
        devices=DeviceConstraints(("jetson-agx-orin",)),
        members=tuple(
            Member(m["name"], m["role"], m["format"], 1, Digest("sha256", bytes(32)), 0)
            for m in v["members"]
        ),
        sanity=v["sanity"],
        policy=v["policy"],
        engine_recipe=v["engine_recipe"],
    )


def test_valid_vector_reads_as_expected() -> None:
    s = read_slots(_manifest(VALID))
    want = VALID["expect"]
    assert list(s.runtime.member_names) == want["members"]
    assert [str(m.where) for m in s.runtime.members] == want["placements"]
    assert s.runtime.voter.kind.value == want["voter"]
    assert s.runtime.deadline_ms == want["deadline_ms"]
    assert s.fallback == want["fallback"] and s.runtime_signed is want["runtime_signed"]
    assert list(s.isolation.required_layers()) == want["required_isolation"]
    first = s.member_io(want["members"][0])
    assert first is not None
    assert [[t.name, t.dtype, list(t.shape)] for t in first.inputs] == want["inputs"]
    for name, precisions in want["precisions"].items():
        io = s.member_io(name)
        assert io is not None and list(io.precisions) == precisions
    assert s.engines is not None and sorted(s.engines.members) == want["engine_members"]
    assert {p.member: p.for_member for p in s.engines.prebuilt} == want["prebuilt"]
    got_cal = {
        n: r.int8_calibration_member
        for n, r in s.engines.members.items()
        if r.int8_calibration_member is not None
    }
    assert got_cal == want["int8_calibration"]
    assert s.runtime.deadline_basis is not None
    assert dict(s.runtime.deadline_basis.measured_ms) == want["deadline_measured"]
    got = {
        name: [c.kind, c.reference, c.task, c.metric, c.value, c.threshold, c.frames]
        for name, c in s.variants.items()
    }
    assert got == want["variants"]
    assert dict(s.variants["det-fp16"].extra) == {"max_abs_error": 0.175}
    # the typed slots write back exactly what was read
    assert s.runtime.to_dict() == VALID["policy"]["runtime"]
    assert s.engines.to_dict() == VALID["engine_recipe"]
    assert {k: v.to_dict() for k, v in s.variants.items()} == VALID["policy"]["variants"]


@pytest.mark.parametrize("case", CASES, ids=[".".join(map(str, c["path"])) for c in CASES])
def test_invalid_vectors_are_refused(case: dict[str, Any]) -> None:
    v = copy.deepcopy(VALID)
    *parents, last = case["path"]
    node: Any = v
    for key in parents:
        node = node[key]
    node[last] = case["value"]
    with pytest.raises(MalformedError) as info:
        read_slots(_manifest(v))
    assert case["error"] in str(info.value)

"""RuntimePolicy: strict dict round trip (JSON and CBOR) and validation."""

from __future__ import annotations

import json
from typing import Any

import cbor2
import numpy as np
import pytest

from edgeguard.errors import MalformedError
from edgeguard.policy.runtime import (
    ChainStep,
    HardeningPolicy,
    HealthPolicy,
    MemberSpec,
    QuarantinePolicy,
    RateLimitPolicy,
    RuntimePolicy,
    VoterKind,
    VoterSpec,
    array_from_dict,
    array_to_dict,
    parse_placement,
)


def full_policy() -> RuntimePolicy:
    return RuntimePolicy(
        members=(MemberSpec("mlp_fp32", "gpu"), MemberSpec("mlp_int8", "dla0"), MemberSpec("cpu")),
        voter=VoterSpec(kind=VoterKind.MAJORITY, output="logits", agreement=0.6),
        quorum=2,
        deadline_ms=40.0,
        member_budget_ms=30.0,
        last_known_good_max_age_ms=150.0,
        safe_default={"logits": np.zeros((1, 10), np.float32), "stop": np.array([1], np.int64)},
        health=HealthPolicy(recover_frames=5),
        quarantine=QuarantinePolicy(after_failures=2, backoff_ms=50.0, max_backoff_ms=800.0),
        model_switching=True,
        hardening=HardeningPolicy(output="logits", top_k=3, decimals=2),
        rate_limit=RateLimitPolicy(rate_per_s=20.0, burst=5),
        output_shapes={"logits": (-1, 10)},
        speculative=True,
    )


def test_round_trip_json_and_cbor() -> None:
    p = full_policy()
    d = p.to_dict()
    again = RuntimePolicy.from_dict(json.loads(json.dumps(d)))
    assert again == p and again.to_dict() == d
    assert RuntimePolicy.from_dict(cbor2.loads(cbor2.dumps(d))) == p
    assert again.safe_default is not None
    assert again.safe_default["logits"].dtype == np.float32
    assert again.output_shapes == {"logits": (-1, 10)}


def _only_plain(x: Any) -> None:
    if isinstance(x, dict):
        for k, v in x.items():
            assert isinstance(k, str)
            _only_plain(v)
    elif isinstance(x, list):
        for v in x:
            _only_plain(v)
    else:
        assert x is None or type(x) in (str, int, float, bool), type(x)


def test_dict_holds_only_plain_types() -> None:
    _only_plain(full_policy().to_dict())


def test_defaults_from_minimal_dict() -> None:
    p = RuntimePolicy.from_dict(
        {
            "format": "edgeguard-runtime-policy/1",
            "members": [{"name": "a"}],
            "voter": {"kind": "median", "output": "y"},
            "fallback_chain": ["ensemble", "last_known_good"],
        }
    )
    assert p.quorum == 1 and p.fallback_chain == (ChainStep.ENSEMBLE, ChainStep.LAST_KNOWN_GOOD)


def _mutate(path: list[Any], value: Any) -> dict[str, Any]:
    d = full_policy().to_dict()
    target = d
    for k in path[:-1]:
        target = target[k]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (["surprise"], 1, "unknown field"),
        (["format"], "other/1", "format"),
        (["voter"], KeyError, "misses"),
        (["voter", "kind"], "vibes", "unknown voter"),
        (["voter", "agreement"], 0.0, "agreement"),
        (["voter", "agreement"], float("nan"), "finite"),
        (["quorum"], 4, "quorum"),
        (["quorum"], True, "integer"),
        (["deadline_ms"], -1, "deadline_ms"),
        (["member_budget_ms"], 41.0, "member_budget_ms"),
        (["voter", "kind"], "passthrough", "exactly one member"),
        (["members", 0, "name"], "__fallback__", "member name"),
        (["fallback_chain"], ["ensemble", "ensemble", "safe_default"], "at most once"),
        (["fallback_chain"], ["safe_default", "last_known_good"], "last step"),
        (["fallback_chain"], ["ensemble", "teleport", "safe_default"], "unknown step"),
        (["safe_default"], None, "safe_default"),
        (["safe_default", "logits", "dtype"], "object", "dtype"),
        (["safe_default", "logits", "shape"], [2, 10], "10 elements|20 elements"),
        (["members"], [{"name": "a"}, {"name": "a"}], "unique"),
        (["members"], [], "at least one"),
        (["members", 0, "placement"], "tpu", "placement"),
        (["members", 0, "placement"], "cpuXYZ", "placement"),
        (["members", 0, "placement"], "cpu:", "placement"),
        (["members", 0, "placement"], "cpu:3-1", "ascend"),
        (["members", 0, "placement"], "cpu:1,1", "ascend"),
        (["members", 0, "placement"], "cpu:2,0", "ascend"),
        (["members", 0, "placement"], "cpu:0,,1", "not N or N-M"),
        (["members", 0, "placement"], "cpu:0-", "not N or N-M"),
        (["members", 0, "placement"], "cpu:4096", "beyond"),
        (["members", 0, "placement"], "dla16", "beyond"),
        (["members", 0, "placement"], "gpu-1", "placement"),
        (["members", 0, "placement"], "GPU", "placement"),
        (["members", 0, "placement"], 3, "placement"),
        (["quarantine", "max_backoff_ms"], 1.0, "max_backoff_ms"),
        (["rate_limit", "rate_per_s"], 0, "rate_per_s"),
        (["hardening", "top_k"], 0, "top_k"),
        (["reject_action"], "ignore", "reject_action"),
        (["output_shapes", "logits"], "N,10", "list"),
        (["health", "recover_frames"], 0, "recover_frames"),
        (["speculative"], 1, "true or false"),
    ],
)
def test_validation_refuses(path: list[Any], value: Any, match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        RuntimePolicy.from_dict(_mutate(path, value))


def test_detection_k_cannot_exceed_members() -> None:
    with pytest.raises(MalformedError, match="min_confirmations"):
        RuntimePolicy(
            members=(MemberSpec("a"),),
            voter=VoterSpec(kind=VoterKind.DETECTION, output="boxes", min_confirmations=2),
            fallback_chain=(ChainStep.ENSEMBLE, ChainStep.LAST_KNOWN_GOOD),
        )


def test_array_codec() -> None:
    a = np.arange(6, dtype=np.int16).reshape(2, 3)
    b = array_from_dict(array_to_dict(a))
    assert b.dtype == np.int16 and (a == b).all() and not b.flags.writeable
    with pytest.raises(MalformedError):
        array_from_dict({"dtype": "uint8", "shape": [1], "data": [300]})
    with pytest.raises(MalformedError):
        array_from_dict({"dtype": "float32", "shape": [1], "data": [True]})
    with pytest.raises(MalformedError, match="elements"):
        array_from_dict({"dtype": "float32", "shape": [4096, 4096], "data": []})


@pytest.mark.parametrize(
    ("text", "unit", "index", "cpus", "canonical"),
    [
        ("cpu", "cpu", 0, None, "cpu"),
        ("cpu:2", "cpu", 0, {2}, "cpu:2"),
        ("cpu:0-3", "cpu", 0, {0, 1, 2, 3}, "cpu:0-3"),
        ("cpu:0,2-3,7", "cpu", 0, {0, 2, 3, 7}, "cpu:0,2-3,7"),
        ("cpu:0,1", "cpu", 0, {0, 1}, "cpu:0-1"),
        ("gpu", "gpu", 0, None, "gpu0"),
        ("gpu1", "gpu", 1, None, "gpu1"),
        ("dla", "dla", 0, None, "dla0"),
        ("dla1", "dla", 1, None, "dla1"),
    ],
)
def test_placement_grammar(
    text: str, unit: str, index: int, cpus: set[int] | None, canonical: str
) -> None:
    p = parse_placement(text)
    assert (p.unit, p.index) == (unit, index)
    assert p.cpus == (None if cpus is None else frozenset(cpus))
    assert p.accelerator is (unit != "cpu")
    assert str(p) == canonical
    assert parse_placement(str(p)) == p
    assert MemberSpec("m", text).where == p


def test_member_spec_refuses_bad_placement_when_built_directly() -> None:
    with pytest.raises(MalformedError, match="placement"):
        MemberSpec("m", "cpu:9-2")

"""Profile serialisation (strict), verdict objects and static checks."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest

from edgeguard.errors import InputRejectedError, MalformedError
from edgeguard.guard.sanity.layout import frames_shape, frames_view, static_checks
from edgeguard.guard.sanity.spec import Verdict, Violation
from edgeguard.policy.sanity import SanityProfile, Status


def test_profile_round_trip_through_json(digits_profile: SanityProfile) -> None:
    d = digits_profile.to_dict()
    text = json.dumps(d, allow_nan=False)
    again = SanityProfile.from_dict(json.loads(text))
    assert again == digits_profile
    assert again.to_dict() == d
    assert d["format"] == "edgeguard.sanity-profile" and d["version"] == 1
    inp = d["inputs"][0]
    assert inp["name"] == "image" and inp["layout"] == "NCHW"
    assert inp["shape"] == [[1, None], [1, 1], [8, 8], [8, 8]]
    assert set(inp["limits"]) == {"min", "max", "mean", "std", "sat_lo", "sat_hi", "hf", "tdiff"}
    assert d["ood"][0]["output"] == "logits"


def _mutations() -> list[tuple[str, Any]]:
    def drop(key: str) -> Any:
        return lambda d: d.pop(key)

    def set_(path: tuple[Any, ...], value: Any) -> Any:
        def f(d: dict[str, Any]) -> None:
            obj: Any = d
            for p in path[:-1]:
                obj = obj[p]
            obj[path[-1]] = value

        return f

    return [
        ("missing key", drop("inputs")),
        ("unknown key", set_(("extra",), 1)),
        ("wrong format", set_(("format",), "something-else")),
        ("wrong version", set_(("version",), 2)),
        ("bool version", set_(("version",), True)),
        ("far out of range", set_(("target_false_alarm",), 0.7)),
        ("far nan", set_(("target_false_alarm",), float("nan"))),
        ("no inputs", set_(("inputs",), [])),
        ("bad layout", set_(("inputs", 0, "layout"), "CHWN")),
        ("bad dtype", set_(("inputs", 0, "dtypes"), ["int32"])),
        ("bad shape", set_(("inputs", 0, "shape"), [[2, 1], [1, 1]])),
        ("rank 5", set_(("inputs", 0, "shape"), [[1, 1]] * 5)),
        ("sat inverted", set_(("inputs", 0, "sat_lo"), 2.0)),
        ("channels 0", set_(("inputs", 0, "channels"), 0)),
        ("nonfinite flag str", set_(("inputs", 0, "allow_nonfinite"), "no")),
        (
            "unknown stat",
            set_(("inputs", 0, "limits", "mystery"), {"warn": [[0], [1]], "reject": [[0], [1]]}),
        ),
        (
            "limits inverted",
            set_(("inputs", 0, "limits", "mean"), {"warn": [[1.0], [0.0]], "reject": [[0], [2]]}),
        ),
        (
            "warn outside reject",
            set_(("inputs", 0, "limits", "mean"), {"warn": [[0.0], [3.0]], "reject": [[0], [2]]}),
        ),
        (
            "limit channel count",
            set_(
                ("inputs", 0, "limits", "mean"),
                {"warn": [[0.0, 0.0], [1.0, 1.0]], "reject": [[0.0, 0.0], [1.0, 1.0]]},
            ),
        ),
        (
            "limit string",
            set_(("inputs", 0, "limits", "mean"), {"warn": [["a"], [1.0]], "reject": [[0], [2]]}),
        ),
        ("bad digest", set_(("calibration", "model_sha256"), "XYZ")),
        ("negative samples", set_(("calibration", "samples"), -1)),
        ("msp > 1", set_(("ood", 0, "msp_min"), 1.5)),
        ("ood severity", set_(("ood", 0, "severity"), "PASS")),
        ("ood temperature", set_(("ood", 0, "temperature"), 0.0)),
        ("not a dict", lambda d: d["inputs"].__setitem__(0, "image")),
    ]


@pytest.mark.parametrize(("what", "mutate"), _mutations(), ids=[m[0] for m in _mutations()])
def test_malformed_profiles_are_refused(
    digits_profile: SanityProfile, what: str, mutate: Any
) -> None:
    d = copy.deepcopy(digits_profile.to_dict())
    mutate(d)
    with pytest.raises(MalformedError):
        SanityProfile.from_dict(d)


def test_verdict_status_and_rejection() -> None:
    assert Verdict.of([]).status is Status.PASS
    warn = Violation(check="stat.mean", tensor="x", severity=Status.WARN, value=2.0, low=0, high=1)
    rej = Violation(check="nonfinite", tensor="x", severity=Status.REJECT, frame=0, detail="1 NaN")
    assert Verdict.of([warn]).status is Status.WARN
    Verdict.of([warn]).raise_if_rejected()  # WARN does not raise
    v = Verdict.of([warn, rej])
    assert v.status is Status.REJECT and v.rejected
    with pytest.raises(InputRejectedError) as exc:
        v.raise_if_rejected()
    assert exc.value.exit_code == 8 and "nonfinite" in str(exc.value)
    d = v.to_dict()
    assert d["status"] == "REJECT" and len(d["violations"]) == 2
    assert json.dumps(d, allow_nan=False)
    inf = Violation(check="stat.max", tensor="x", severity=Status.REJECT, value=float("inf"))
    assert inf.to_dict()["value"] == "inf"


def test_frames_view_layouts() -> None:
    x = np.arange(2 * 4 * 5 * 3).reshape(2, 4, 5, 3)
    f = frames_view(x, "NHWC")
    assert f.shape == (2, 3, 4, 5) and f[1, 2, 3, 4] == x[1, 3, 4, 2]
    assert frames_shape((7, 10), "NCHW") == (7, 1, 1, 10)
    assert frames_shape((3, 4, 5), "NCHW") == (1, 3, 4, 5)
    assert frames_shape((4, 5, 3), "NHWC") == (1, 3, 4, 5)


def test_static_checks(digits_profile: SanityProfile) -> None:
    p = digits_profile.input("image")
    ok = np.zeros((2, 1, 8, 8), np.float32)
    assert static_checks("image", ok, p) == []
    checks = lambda x: sorted(v.check for v in static_checks("image", x, p))  # noqa: E731
    assert checks(ok.astype(np.float64)) == ["dtype"]
    assert checks(np.zeros((2, 1, 8), np.float32)) == ["rank"]
    assert checks(np.zeros((2, 1, 8, 9), np.float32)) == ["shape"]
    assert checks(np.zeros((0, 1, 8, 8), np.float32)) == ["shape"]
    assert checks(np.zeros((2, 1, 8, 16), np.float32)[..., ::2]) == ["contiguity"]
    assert checks([[0.0]]) == ["type"]  # type: ignore[arg-type]

"""Output checks: NaN/Inf, max-softmax probability and energy score."""

from __future__ import annotations

import numpy as np
import pytest

from edgeguard.guard.sanity.output import (
    energy_score,
    logsumexp,
    max_softmax_prob,
    output_checks,
)
from edgeguard.policy.sanity import OodThresholds, Status


def test_msp_and_energy_match_naive_formulas() -> None:
    z = np.random.default_rng(0).normal(size=(5, 10))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(max_softmax_prob(z), p.max(axis=1), rtol=1e-12)
    np.testing.assert_allclose(energy_score(z), -np.log(np.exp(z).sum(axis=1)), rtol=1e-12)
    np.testing.assert_allclose(
        energy_score(z, temperature=2.0), -2.0 * np.log(np.exp(z / 2).sum(axis=1)), rtol=1e-12
    )


def test_stable_for_huge_logits() -> None:
    z = np.array([[1e4, 0.0, -1e4], [1000.0, 1000.0, 1000.0]], dtype=np.float32)
    np.testing.assert_allclose(max_softmax_prob(z), [1.0, 1.0 / 3.0], rtol=1e-12)
    np.testing.assert_allclose(logsumexp(z), [1e4, 1000.0 + np.log(3.0)], rtol=1e-12)
    assert np.isfinite(energy_score(z)).all()


def test_nonfinite_outputs_are_rejected() -> None:
    out = {"logits": np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32), "ids": np.arange(3)}
    v = output_checks(out)
    assert [x.check for x in v] == ["output.nonfinite"]
    assert v[0].severity is Status.REJECT and v[0].value == 1.0


def test_ood_thresholds_flag_flat_logits() -> None:
    th = OodThresholds(output="logits", msp_min=0.5, energy_max=-3.0)
    confident = np.array([[10.0, 0.0, 0.0]])
    flat = np.array([[0.1, 0.0, 0.05]])
    assert output_checks({"logits": confident}, [th]) == []
    v = output_checks({"logits": np.concatenate([confident, flat])}, [th])
    assert {x.check for x in v} == {"ood.msp", "ood.energy"}
    assert all(x.frame == 1 and x.severity is Status.WARN for x in v)


def test_missing_or_malformed_logits_output() -> None:
    th = OodThresholds(output="logits", msp_min=0.5, energy_max=0.0)
    assert output_checks({}, [th])[0].check == "output.missing"
    assert output_checks({"logits": np.zeros((2, 3, 4))}, [th])[0].check == "output.shape"
    with pytest.raises(ValueError):
        max_softmax_prob(np.zeros((2, 0)))


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_compiled_nonfinite_count_agrees_with_numpy(dtype: str) -> None:
    pytest.importorskip("numba")
    from edgeguard.guard.sanity.cpu import count_nonfinite

    rng = np.random.default_rng(3)
    big = np.finfo(dtype).max
    for n in (0, 1, 15, 16, 17, 1000, 4099):
        x = rng.standard_normal(n).astype(dtype)
        if n:
            x[0] = big  # huge finite values are finite: x - x is still 0
            x[-1] = -big
        assert count_nonfinite(x) == 0
        for k, v in enumerate((np.nan, np.inf, -np.inf)):
            if n > k:
                x[(k * 7919) % n] = v
                assert count_nonfinite(x) == np.size(x) - np.count_nonzero(np.isfinite(x))
    y = rng.standard_normal((4, 6)).astype(dtype)[:, ::2]  # not contiguous
    y[1, 1] = np.nan
    assert count_nonfinite(y) == 1


def test_output_checks_with_the_compiled_count() -> None:
    pytest.importorskip("numba")
    from edgeguard.guard.sanity.cpu import count_nonfinite

    out = {"a": np.zeros((2, 3), np.float32), "b": np.ones(5)}
    assert output_checks(out, count_nonfinite=count_nonfinite) == []
    out["a"][1, 2] = np.inf
    out["b"][0] = np.nan
    got = output_checks(out, count_nonfinite=count_nonfinite)
    assert [(v.check, v.tensor, v.value) for v in got] == [
        ("output.nonfinite", "a", 1.0),
        ("output.nonfinite", "b", 1.0),
    ]

"""Output checks of the sanity guard: NaN/Inf in outputs and OOD scores from logits.

Layer: :mod:`edgeguard.guard` (pure NumPy).

* Max-softmax probability (MSP): ``max_k softmax(z)_k = exp(max z - logsumexp(z))``,
  computed stably with log-sum-exp in float64.
* Energy score: ``E = -T * logsumexp(z / T)`` with ``T = 1``; in-distribution
  inputs have *low* energy, OOD inputs higher.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeguard.guard.sanity.spec import Violation
from edgeguard.policy.sanity import OodThresholds, Status

__all__ = ["energy_score", "logsumexp", "max_softmax_prob", "output_checks"]


def logsumexp(z: npt.NDArray[Any], axis: int = -1) -> npt.NDArray[np.float64]:
    """Stable ``log(sum(exp(z)))`` along ``axis`` in float64 (NaN if any input is NaN)."""
    a = np.asarray(z, dtype=np.float64)
    m = np.max(a, axis=axis, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        s = np.sum(np.exp(a - m_safe), axis=axis, keepdims=True)
        out = np.log(s) + m_safe
    result: npt.NDArray[np.float64] = np.squeeze(out, axis=axis)
    return result


def _as_logits(logits: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    a = np.asarray(logits, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"logits must have shape [N, K] with K >= 1, got {a.shape}")
    return a


def max_softmax_prob(logits: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Max-softmax probability per row of ``logits [N, K]`` (float64 ``[N]``)."""
    a = _as_logits(logits)
    with np.errstate(invalid="ignore", over="ignore"):
        result: npt.NDArray[np.float64] = np.exp(np.max(a, axis=1) - logsumexp(a, axis=1))
    return result


def energy_score(logits: npt.NDArray[Any], *, temperature: float = 1.0) -> npt.NDArray[np.float64]:
    """Energy ``-T * logsumexp(logits / T)`` per row of ``logits [N, K]`` (float64 ``[N]``)."""
    a = _as_logits(logits)
    return -temperature * logsumexp(a / temperature, axis=1)


def output_checks(
    outputs: Mapping[str, Any],
    ood: Sequence[OodThresholds] = (),
    *,
    count_nonfinite: Callable[[Any], int] | None = None,
) -> list[Violation]:
    """Check model outputs: NaN/Inf counts (REJECT) and OOD scores on logits.

    Args:
        outputs: Output name -> array, as returned by the backend.
        ood: OOD thresholds per logits output.
        count_nonfinite: Counts the NaN/Inf values of a float array (default: NumPy;
            the Numba guard passes its compiled count).

    Returns:
        Violations: one ``output.nonfinite`` REJECT per output holding NaN/Inf,
        one ``ood.msp`` / ``ood.energy`` per offending frame (severity from the
        thresholds), one ``output.missing`` REJECT per thresholded output absent.
    """
    out: list[Violation] = []
    for name, value in outputs.items():
        arr = np.asarray(value)
        if arr.dtype.kind in "fc":
            if count_nonfinite is not None and arr.dtype.kind == "f":
                bad = count_nonfinite(arr)
            else:
                bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            if bad:
                out.append(
                    Violation(
                        check="output.nonfinite",
                        tensor=name,
                        severity=Status.REJECT,
                        value=float(bad),
                        low=0.0,
                        high=0.0,
                        detail=f"{bad} NaN/Inf values in the output",
                    )
                )
    for th in ood:
        if th.output not in outputs:
            out.append(
                Violation(
                    check="output.missing",
                    tensor=th.output,
                    severity=Status.REJECT,
                    detail="thresholded output is missing",
                )
            )
            continue
        try:
            logits = _as_logits(np.asarray(outputs[th.output]))
        except ValueError as exc:
            out.append(
                Violation(
                    check="output.shape", tensor=th.output, severity=Status.REJECT, detail=str(exc)
                )
            )
            continue
        msp = max_softmax_prob(logits)
        energy = energy_score(logits, temperature=th.temperature)
        for n in range(logits.shape[0]):
            if not msp[n] >= th.msp_min:  # NaN fails too
                out.append(
                    Violation(
                        check="ood.msp",
                        tensor=th.output,
                        severity=th.severity,
                        value=float(msp[n]),
                        low=th.msp_min,
                        high=1.0,
                        frame=n,
                    )
                )
            if not energy[n] <= th.energy_max:
                out.append(
                    Violation(
                        check="ood.energy",
                        tensor=th.output,
                        severity=th.severity,
                        value=float(energy[n]),
                        low=None,
                        high=th.energy_max,
                        frame=n,
                    )
                )
    return out

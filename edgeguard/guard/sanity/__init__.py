"""Input-sanity guard: one-pass statistics, calibrated envelopes and verdicts.

Layer: :mod:`edgeguard.guard`. Importing this package imports NumPy only; the
Numba CPU and Numba CUDA implementations import numba lazily at first use.

Public API:

* :func:`reference_stats` - NumPy oracle of the statistics (see docs/sanity.md).
* :func:`compute_stats` - the same statistics with a chosen implementation.
* :class:`SanityGuard` - checks inputs and outputs against a signed
  :class:`~edgeguard.policy.sanity.SanityProfile` and returns a :class:`Verdict`.

Calibration, which derives the profile at build time, is packaging:
:mod:`edgeguard.packaging.calibrate`.
"""

from __future__ import annotations

from edgeguard.guard.sanity.check import SanityGuard, compute_stats
from edgeguard.guard.sanity.reference import reference_stats
from edgeguard.guard.sanity.spec import FrameStats, Verdict, Violation

__all__ = [
    "FrameStats",
    "SanityGuard",
    "Verdict",
    "Violation",
    "compute_stats",
    "reference_stats",
]

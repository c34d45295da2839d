"""Fixtures of the sanity-guard tests: a digits profile calibrated once per session."""

from __future__ import annotations

import pytest

from edgeguard.policy.sanity import SanityProfile


@pytest.fixture(scope="session")
def digits_profile() -> SanityProfile:
    from edgeguard.data import load_split, model_bytes
    from edgeguard.packaging.calibrate import calibrate

    x, _ = load_split("calib")
    return calibrate(model_bytes("digits_mlp"), {"image": x}, progress=False)

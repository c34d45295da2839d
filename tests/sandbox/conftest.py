"""Fixtures for the sandbox tests: host capabilities, event log, executors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from edgeguard.guard.eventlog import EventLog
from edgeguard.runtime.sandbox import HostCapabilities, probe_host

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "tests.sandbox.hostile:make"


@pytest.fixture(scope="session")
def caps() -> HostCapabilities:
    return probe_host()


@pytest.fixture()
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture()
def elog(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> Iterator[EventLog]:
    log = EventLog(tmp_path / "events.log", signing_key=key, sync="batch")
    yield log
    log.close()


def records(log: EventLog) -> list[dict[str, Any]]:
    log.sync()
    return [json.loads(x) for x in log.path.read_bytes().splitlines()]


def need(caps: HostCapabilities, *layers: str) -> None:
    """Skip (with the reason) when a layer the assertion depends on is unavailable."""
    for layer in layers:
        if not caps.available(layer):
            pytest.skip(f"{layer} unavailable on this host: {caps.detail(layer)}")

"""Property-based and mutation fuzzing of the parser and the open path.

Whatever the bytes, the only exceptions that may escape are edgeguard's own.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeguard.bundle.codec import SIGNATURE_CONTEXT, encode_prefix, parse_prefix, signed_region
from edgeguard.bundle.model import MAGIC, SignatureBlock
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.encoding import canonical_cbor, decode_canonical
from edgeguard.crypto.sign import hybrid_sign
from edgeguard.errors import EdgeguardError, MalformedError
from edgeguard.runtime.opener import open_bundle
from tests.bundle.conftest import NOW
from tests.bundle.test_open import _split

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _parse(data: bytes) -> None:
    parse_prefix(io.BytesIO(data).read, file_size=len(data))


@SETTINGS
@given(st.binary(max_size=2048))
def test_parser_on_arbitrary_bytes(data: bytes) -> None:
    with pytest.raises(MalformedError):
        _parse(data)


@SETTINGS
@given(st.binary(max_size=4096))
def test_parser_on_bytes_after_magic(tail: bytes) -> None:
    with pytest.raises(MalformedError):
        _parse(MAGIC + tail)


@SETTINGS
@given(data=st.data())
def test_random_mutations_of_a_real_bundle(make_bundle, trust, device, tmp_path, data) -> None:
    b: Path = make_bundle()
    original = b.read_bytes()
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set"]))
        pos = data.draw(st.integers(0, max(0, len(mutated) - 1)))
        if op == "flip" and mutated:
            mutated[pos] ^= data.draw(st.integers(1, 255))
        elif op == "set" and mutated:
            mutated[pos] = data.draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x1B, 0x5B]))
        elif op == "insert":
            mutated[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and mutated:
            del mutated[pos : pos + data.draw(st.integers(1, 16))]
        elif op == "truncate":
            del mutated[pos:]
    if bytes(mutated) == original:
        return
    m = tmp_path / "m.egb"
    m.write_bytes(bytes(mutated))
    with pytest.raises(EdgeguardError):
        open_bundle(m, trust=trust, device_key=device, state_dir=tmp_path / "s", now=NOW)


_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    2**64 - 1,
    1.5,
    float("nan"),
    "",
    "x" * 300,
    b"",
    b"\x00" * 33,
    [],
    [1, 2],
    {},
    {"a": 1},
]


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@pytest.mark.parametrize(
    "rounds", [pytest.param(300, id="quick"), pytest.param(3000, id="long", marks=pytest.mark.slow)]
)
def test_structured_fuzz_of_signed_headers(
    make_bundle, signer, device, tmp_path, rounds: int
) -> None:
    """Validly *signed* headers with hostile field values: the schema must hold.

    Every mutant is encoded and signed (none is skipped); opening it either raises an
    EdgeguardError or succeeds with a header that re-encodes to exactly the signed bytes
    (nothing accepted is silently coerced); anything else fails the test.
    """
    rng = random.Random(1234)
    b = make_bundle(extra_member=b"{}")
    header, _, payload = _split(b)
    tree = decode_canonical(header, what="h")
    paths = _paths(tree)
    trust = TrustStore.of([signer.public])
    m = tmp_path / "s.egb"
    outcomes: Counter[str] = Counter()
    for i in range(rounds):
        t = decode_canonical(header, what="h")
        path = paths[rng.randrange(len(paths))]
        node = t
        for k in path[:-1]:
            node = node[k]
        if rng.random() < 0.15 and isinstance(node, dict):
            del node[path[-1]]
            change = f"{path} deleted"
        else:
            value = rng.choice(_VALUES)
            node[path[-1]] = value
            change = f"{path} = {value!r}"[:120]
        new = canonical_cbor(t)
        sig = hybrid_sign(signer.ecdsa, signer.mldsa, signed_region(new), context=SIGNATURE_CONTEXT)
        m.write_bytes(encode_prefix(new, SignatureBlock(signer.public.key_id, sig)) + payload)
        try:
            ob = open_bundle(
                m, trust=trust, device_key=device, state_dir=tmp_path / f"st{i}", now=NOW
            )
        except EdgeguardError as exc:
            outcomes[type(exc).__name__] += 1
            continue
        except Exception as exc:
            pytest.fail(f"{change}: {type(exc).__name__} escaped: {exc!r}")
        assert canonical_cbor(ob.prefix.header.to_cbor()) == new, change
        outcomes["opened"] += 1
    assert sum(outcomes.values()) == rounds
    # most hostile values break the schema; some (a new tool string, no expiry, a member
    # digest that only the payload check sees) are valid or caught later
    assert outcomes["MalformedError"] > rounds // 2, outcomes
    assert set(outcomes) <= {
        "MalformedError",
        "IntegrityError",
        "BundleExpiredError",
        "DeviceNotAllowedError",
        "NotARecipientError",
        "opened",
    }, outcomes


def test_seeded_mutation_fuzz_run(make_bundle, trust, device, tmp_path) -> None:
    """A short deterministic fuzz run (2000 mutants) over the whole open path."""
    rng = random.Random(20261123)
    original = make_bundle(extra_member=b'{"a": 1}').read_bytes()
    m = tmp_path / "f.egb"
    escaped = []
    for _ in range(2000):
        data = bytearray(original)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(data))
            data[pos] = rng.randrange(256)
        if bytes(data) == original:
            continue
        m.write_bytes(bytes(data))
        try:
            open_bundle(m, trust=trust, device_key=device, state_dir=tmp_path / "st", now=NOW)
            escaped.append("opened")
        except EdgeguardError:
            pass
        except Exception as exc:  # pragma: no cover - the assertion reports it
            escaped.append(repr(exc))
    assert escaped == []

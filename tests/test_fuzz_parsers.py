"""Fuzzing every parser of untrusted bytes through its public entry point.

Key files, attestation evidence, event logs and .npz/.npy inputs (the bundle prefix and
manifest are fuzzed in ``tests/bundle/test_fuzz.py``): whatever the bytes, a parser
either accepts them or raises an :class:`~edgeguard.errors.EdgeguardError`; nothing else
may escape. Each property runs a few dozen examples by default and many more under the
``slow`` marker.
"""

from __future__ import annotations

import functools
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeguard.arrayfile import open_arrays
from edgeguard.attest.attester import make_evidence
from edgeguard.attest.eat import parse_eat
from edgeguard.attest.measure import LogEntry, MeasurementLog, sha256_tag
from edgeguard.attest.nonce import NonceVerdict
from edgeguard.attest.reference import ReferenceValues
from edgeguard.attest.verifier import AttestationResult, appraise
from edgeguard.crypto.encoding import armor, canonical_cbor, decode_canonical, unarmor
from edgeguard.crypto.keys import DeviceKey, SignerKey, decode_private, decode_public
from edgeguard.crypto.keys import encode_private as encode_private_key
from edgeguard.errors import EdgeguardError
from edgeguard.guard.eventlog import EventLog, verify
from edgeguard.keystore import (
    load_device_key,
    load_device_public,
    load_signer_key,
    load_signer_public,
)

#: Examples per property: a few dozen by default, many more in the slow run.
RUNS = [pytest.param(40, id="quick"), pytest.param(1500, id="long", marks=pytest.mark.slow)]


def _settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def only_edgeguard_errors(call: Callable[[], object]) -> object:
    """Run ``call``; an exception outside the EdgeguardError hierarchy fails the test."""
    try:
        return call()
    except EdgeguardError:
        return None
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__} escaped: {exc!r}"[:500])


# --------------------------------------------------------------------------- strategies

#: Any value the canonical CBOR encoder takes (what a hostile but well-formed file holds).
CBOR_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.binary(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=12) | st.integers(-5, 300), inner, max_size=5)
    ),
    max_leaves=20,
)


def mutate(data: st.DataObject, original: bytes) -> bytes:
    """1 to 4 byte-level mutations of ``original``: flips, inserts, deletes, truncations."""
    out = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(0, len(out) - 1)))
        if op == "flip" and out:
            out[pos] ^= data.draw(st.integers(1, 255))
        elif op == "set" and out:
            out[pos] = data.draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x9F, 0xC2, 0xD8]))
        elif op == "insert":
            out[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and out:
            del out[pos : pos + data.draw(st.integers(1, 16))]
        elif op == "truncate":
            del out[pos:]
    return bytes(out)


def replace_somewhere(data: st.DataObject, tree: Any) -> Any:
    """``tree`` with one value (at any depth) replaced by a hostile one, or deleted."""
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if path:
            paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, (*path, i))

    walk(tree, ())
    if not paths:
        return data.draw(CBOR_VALUES)
    path = data.draw(st.sampled_from(paths))
    node = tree
    for k in path[:-1]:
        node = node[k]
    if isinstance(node, dict) and data.draw(st.booleans()) and data.draw(st.booleans()):
        del node[path[-1]]
    else:
        node[path[-1]] = data.draw(CBOR_VALUES)
    return tree


# --------------------------------------------------------------------------- key files


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    signer = SignerKey.generate()
    device = DeviceKey.generate("cam-01", kem="x25519")
    return {
        "signer": signer,
        "device": device,
        "encodings": [
            signer.public.encode(),
            device.public.encode(),
            encode_private_key(signer),
            encode_private_key(device),
            encode_private_key(device, passphrase=b"pw"),
        ],
    }


def _load_every_way(raw: bytes, tmp_path: Path) -> None:
    for call in (
        lambda: decode_public(raw, source="k"),
        lambda: decode_private(raw, source="k"),
        lambda: decode_private(raw, source="k", passphrase=b"pw"),
    ):
        only_edgeguard_errors(call)
    for kind in ("PUBLIC KEY", "PRIVATE KEY"):
        p = tmp_path / "k.key"
        p.write_text(armor(kind, raw))
        p.chmod(0o600)
        # private keys without a passphrase: the protected one costs one scrypt per example
        for load in (load_signer_public, load_device_public, load_signer_key, load_device_key):
            only_edgeguard_errors(functools.partial(load, p))


@pytest.mark.parametrize("n", RUNS)
def test_key_files(keys: dict[str, Any], tmp_path: Path, n: int) -> None:
    encodings: list[bytes] = keys["encodings"]

    @_settings(n)
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        original = data.draw(st.sampled_from(encodings))
        how = data.draw(st.sampled_from(["bytes", "mutated", "structured", "armor"]))
        if how == "bytes":
            raw = data.draw(st.binary(max_size=300))
        elif how == "mutated":
            raw = mutate(data, original)
        elif how == "structured":
            raw = canonical_cbor(replace_somewhere(data, decode_canonical(original, what="k")))
        else:  # hostile text around a valid body
            text = data.draw(st.text(max_size=200)) + armor("PUBLIC KEY", original)
            only_edgeguard_errors(lambda: unarmor(text, kind="PUBLIC KEY", source="k"))
            raw = original
        _load_every_way(raw, tmp_path)

    prop()


# --------------------------------------------------------------------------- evidence

NONCE = bytes(range(32))
NOW = 1_800_000_000


@pytest.fixture(scope="module")
def evidence() -> dict[str, Any]:
    device = DeviceKey.generate("cam-01", profile="generic-cpu", kem="x25519")
    entries = (
        LogEntry(0, "code", "edgeguard", sha256_tag(b"code")),
        LogEntry(1, "member", "model", sha256_tag(b"model")),
        LogEntry(2, "device-profile", "generic-cpu", sha256_tag(b"profile")),
    )
    token = make_evidence(MeasurementLog(entries), device_key=device, nonce=NONCE, now=NOW)
    reference = ReferenceValues(
        bundle_name="b",
        bundle_version=1,
        manifest_digest=sha256_tag(b"m"),
        signer_key_id="00" * 32,
        swname="edgeguard",
        swversion="0.1.0",
        measurements=entries[:2],
        device_profiles=(("generic-cpu", sha256_tag(b"profile")),),
        pcr_index=23,
        created=NOW,
    )
    return {"device": device, "token": token, "reference": reference}


def _appraise(token: bytes, ev: dict[str, Any]) -> None:
    def call() -> object:
        result = appraise(
            token,
            nonce=NONCE,
            nonce_verdict=NonceVerdict("fresh", 0, "fresh"),
            device=ev["device"].public,
            reference=ev["reference"],
            now=NOW,
        )
        assert isinstance(result, AttestationResult)
        return result

    only_edgeguard_errors(call)
    only_edgeguard_errors(lambda: parse_eat(token).claims())


@pytest.mark.parametrize("n", RUNS)
def test_attestation_evidence(evidence: dict[str, Any], n: int) -> None:
    from edgeguard.attest.eat import _sig_structure  # re-sign hostile claims
    from edgeguard.crypto.sign import _P256_N

    token: bytes = evidence["token"]
    device: DeviceKey = evidence["device"]
    ok = appraise(
        token,
        nonce=NONCE,
        nonce_verdict=NonceVerdict("fresh", 0, "fresh"),
        device=device.public,
        reference=evidence["reference"],
        now=NOW,
    )
    assert ok.ok, ok.failures()

    def resign(protected: bytes, payload: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        der = device.attest.sign(_sig_structure(protected, payload), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        s = min(s, _P256_N - s)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return b"\xd2" + canonical_cbor([protected, {}, payload, sig])

    cose = decode_canonical(token[1:], what="t")

    @_settings(n)
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        how = data.draw(st.sampled_from(["bytes", "mutated", "claims", "protected", "log"]))
        if how == "bytes":
            bad = data.draw(st.binary(max_size=400))
        elif how == "mutated":
            bad = mutate(data, token)
        elif how == "claims":  # validly signed, hostile claims
            claims = replace_somewhere(data, decode_canonical(cose[2], what="c"))
            bad = resign(cose[0], canonical_cbor(claims))
        elif how == "protected":
            hdr = replace_somewhere(data, decode_canonical(cose[0], what="h"))
            bad = resign(canonical_cbor(hdr), cose[2])
        else:  # validly signed claims holding a hostile measurement log
            claims = decode_canonical(cose[2], what="c")
            log = decode_canonical(claims[273][0][1], what="l")
            claims[273][0][1] = canonical_cbor(replace_somewhere(data, log))
            bad = resign(cose[0], canonical_cbor(claims))
        _appraise(bad, evidence)

    prop()


# --------------------------------------------------------------------------- event logs


@pytest.fixture(scope="module")
def event_log(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("eventlog")
    device = DeviceKey.generate("cam-01", kem="x25519")
    path = d / "events.jsonl"
    with EventLog(path, signing_key=device.attest, checkpoint_every=3) as log:
        for i in range(5):
            log.append("frame", {"i": i, "source": "ensemble"})
    verify(path, device.attest.public_key(), require_clean=True)
    return {"path": path, "key": device.attest.public_key(), "raw": path.read_bytes()}


@pytest.mark.parametrize("n", RUNS)
def test_event_log_lines(event_log: dict[str, Any], tmp_path: Path, n: int) -> None:
    raw: bytes = event_log["raw"]
    lines = raw.split(b"\n")[:-1]
    p = tmp_path / "fuzzed.jsonl"

    @_settings(n)
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        how = data.draw(st.sampled_from(["bytes", "mutated", "line", "json", "nested"]))
        if how == "bytes":
            bad = data.draw(st.binary(max_size=400))
        elif how == "mutated":
            bad = mutate(data, raw)
        elif how == "line":  # one record replaced by a hostile JSON value
            i = data.draw(st.integers(0, len(lines) - 1))
            rec = json.loads(lines[i])
            value = data.draw(CBOR_VALUES.filter(lambda v: not isinstance(v, bytes)))
            rec[data.draw(st.sampled_from(sorted(rec)))] = _jsonable(value)
            new = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
            bad = b"\n".join([*lines[:i], new, *lines[i + 1 :]]) + b"\n"
        elif how == "json":
            bad = b"\n".join([*lines[:2], data.draw(st.text(max_size=200)).encode()]) + b"\n"
        else:  # deep nesting, as one line
            depth = data.draw(st.integers(1, 200_000))
            bad = b"[" * depth + b"]" * depth + b"\n"
        p.write_bytes(bad)
        only_edgeguard_errors(lambda: verify(p, event_log["key"]))
        only_edgeguard_errors(lambda: verify(p, event_log["key"], require_clean=True))

    prop()


def test_a_deeply_nested_event_log_line_is_an_integrity_error(
    event_log: dict[str, Any], tmp_path: Path
) -> None:
    """json.loads recurses into nested arrays: deep nesting raised RecursionError (exit 1)."""
    from edgeguard.errors import IntegrityError

    p = tmp_path / "deep.jsonl"
    p.write_bytes(event_log["raw"] + b"[" * 100_000 + b"]" * 100_000 + b"\n")
    with pytest.raises(IntegrityError, match=r"record 8 \(line 9\): nested deeper than"):
        verify(p, event_log["key"])


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


# --------------------------------------------------------------------------- .npz / .npy


def _npz_bytes(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npz_deflated(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _npy_bytes(a: Any) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize("n", RUNS)
def test_npz_and_npy_inputs(tmp_path: Path, n: int) -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    originals = [
        _npz_bytes(image=x, label=np.array([1, 2])),
        _npz_deflated(image=x),
        _npy_bytes(x),
        _npy_bytes(np.asfortranarray(x)),
    ]
    p = tmp_path / "in.npz"

    @_settings(n)
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        how = data.draw(st.sampled_from(["bytes", "mutated", "header", "member"]))
        if how == "bytes":
            bad = data.draw(st.binary(max_size=300))
        elif how == "mutated":
            bad = mutate(data, data.draw(st.sampled_from(originals)))
        else:  # a hostile .npy header (as numpy's header text) alone or in an archive
            descr = data.draw(
                st.sampled_from(["<f4", "|b1", "<i8", ">u2", "|O", "<U3", "|V4", "<f16"])
                | st.text(max_size=12)
            )
            shape = data.draw(
                st.lists(st.integers(-3, 2**40), max_size=5).map(tuple)
                | CBOR_VALUES.map(lambda v: v if not isinstance(v, dict) else ())
            )
            text = repr({"descr": descr, "fortran_order": data.draw(st.booleans()), "shape": shape})
            body = text.encode("latin1", "replace") + b"\n"
            version = data.draw(st.sampled_from([1, 2]))
            length = len(body).to_bytes(2 if version == 1 else 4, "little")
            npy = b"\x93NUMPY" + bytes([version, 0]) + length + body
            npy += data.draw(st.binary(max_size=64))
            if how == "header":
                bad = npy
            else:
                buf = io.BytesIO()
                method = data.draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
                with zipfile.ZipFile(buf, "w", compression=method) as z:
                    z.writestr(data.draw(st.sampled_from(["x.npy", "x", "a/b.npy"])), npy)
                bad = buf.getvalue()
        p.write_bytes(bad)
        only_edgeguard_errors(lambda: open_arrays(p).read())

    prop()

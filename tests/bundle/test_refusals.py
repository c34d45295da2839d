"""Every refusal of the bundle layer (prefix, header schema, trust, policy) with the exact
message a user reads, and the boundaries of every limit."""

# ruff: noqa: E501 - tables of exact messages read better one case a line

from __future__ import annotations

import copy
import io
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeguard.bundle.codec import encode_prefix, parse_prefix, signed_region
from edgeguard.bundle.model import (
    DEFAULT_LIMITS,
    MAGIC,
    Header,
    Limits,
    Manifest,
    SignatureBlock,
)
from edgeguard.bundle.verify import TrustStore, check_policy, verify_signature
from edgeguard.crypto.encoding import canonical_cbor, decode_canonical
from edgeguard.crypto.keys import DeviceKey, SignerKey
from edgeguard.errors import (
    BundleExpiredError,
    DeviceNotAllowedError,
    IntegrityError,
    MalformedError,
    NotARecipientError,
    RollbackError,
    UntrustedSignerError,
    UsageError,
)
from tests.bundle.conftest import NOW
from tests.bundle.test_open import _split
from tests.helpers import refused

V = Path(__file__).resolve().parents[1] / "vectors" / "bundle"


@pytest.fixture(scope="module")
def tree() -> dict[str, Any]:
    """The frozen vector's header: two members, three recipients."""
    raw = (V / "bundle-v1.egb").read_bytes()
    hlen = int.from_bytes(raw[16:20], "big")
    t: dict[str, Any] = decode_canonical(raw[20 : 20 + hlen], what="h")
    Header.from_cbor(t, DEFAULT_LIMITS)
    return t


def _set(tree: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    t = copy.deepcopy(tree)
    node = t
    for k in path[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return t


_DELETE = object()
M = "malformed bundle"
# (path in the header, value, the message)
CASES: list[tuple[tuple[Any, ...], Any, str]] = [
    (("extra",), 1, f"{M}: header: unknown field(s) 'extra'"),
    (("payload",), _DELETE, f"{M}: header: misses the field(s) 'payload'"),
    (("recipients",), [], f"{M}: recipients must be a list of 1 to 10000"),
    (("recipients",), {}, f"{M}: recipients must be a list of 1 to 10000"),
    (("recipients", 0, "kem"), "rsa", f"{M}: recipient KEM 'rsa' is not supported"),
    (("recipients", 0, "kid"), b"x", f"{M}: recipient key id: must be 32 bytes, got 1"),
    (("recipients", 0, "wrapped"), 1, f"{M}: wrapped key: must be a byte string, got int"),
    (("recipients", 0, "wrapped"), bytes(4097), f"{M}: wrapped key: must be at most 4096 bytes"),
    (("recipients", 0), 1, f"{M}: recipient: must be a map, got int"),
    (("manifest", "format"), 2, f"{M}: manifest format 2 is not supported (expected 1)"),
    (("manifest", "format"), True, f"{M}: manifest format True is not supported (expected 1)"),
    (("manifest", "name"), "a b", f"{M}: bundle name: 'a b' has characters or a form that is not allowed"),
    (("manifest", "name"), "", f"{M}: bundle name: must not be empty"),
    (("manifest", "name"), "a" * 129, f"{M}: bundle name: must be at most 128 characters"),
    (("manifest", "name"), 1, f"{M}: bundle name: must be a text string, got int"),
    (("manifest", "version"), -1, f"{M}: version: must be >= 0, got -1"),
    (("manifest", "version"), 2**53 + 1, f"{M}: version: must be <= 9007199254740992, got 9007199254740993"),
    (("manifest", "version"), 1.0, f"{M}: version: must be an integer, got 1.0"),
    (("manifest", "version"), True, f"{M}: version: must be an integer, got True"),
    (("manifest", "created"), 2**40 + 1, f"{M}: created: must be <= 1099511627776, got 1099511627777"),
    (("manifest", "expires"), 2**40 + 1, f"{M}: expires: must be <= 1099511627776, got 1099511627777"),
    (("manifest", "expires"), "never", f"{M}: expires: must be an integer, got 'never'"),
    (("manifest", "signer"), b"x" * 31, f"{M}: signer key id: must be 32 bytes, got 31"),
    (("manifest", "tool"), 1, f"{M}: tool must be a short text string"),
    (("manifest", "tool"), "t" * 129, f"{M}: tool must be a short text string"),
    (("manifest", "sanity"), 1, f"{M}: sanity: must be a map, got int"),
    (("manifest", "policy"), [], f"{M}: policy: must be a map, got list"),
    (("manifest", "engine_recipe"), "x", f"{M}: engine_recipe: must be a map, got str"),
    (("manifest", "members"), [], f"{M}: members must be a list of 1 to 64"),
    (("manifest", "members"), {}, f"{M}: members must be a list of 1 to 64"),
    (("manifest", "members", 0, "role"), "boss", f"{M}: member role 'boss' is not one of primary, member, fallback, engine, aux"),
    (("manifest", "members", 0, "format"), "exe", f"{M}: member format 'exe' is not one of onnx, trt-engine, npz, cubin, fatbin, json"),
    (("manifest", "members", 0, "name"), "aux", f"{M}: member names must be unique"),
    (("manifest", "members", 0, "name"), "-x", f"{M}: member name: '-x' has characters or a form that is not allowed"),
    (("manifest", "members", 0, "size"), 16 * 1024**3 + 1, f"{M}: member size: must be <= 17179869184, got 17179869185"),
    (("manifest", "members", 1, "offset"), 64 * 1024**3 + 1, f"{M}: member offset: must be <= 68719476736, got 68719476737"),
    (("manifest", "members", 1, "offset"), 165, f"{M}: member 'aux' does not start where the previous one ends"),
    (("manifest", "members", 0, "size"), 151, f"{M}: member 'aux' does not start where the previous one ends"),
    (("manifest", "members", 0, "digest", "alg"), "md5", f"{M}: member digest: unsupported digest algorithm 'md5'"),
    (("manifest", "members", 0, "digest", "value"), b"x", f"{M}: member digest value: must be 32 bytes, got 1"),
    (("manifest", "members", 0, "digest", "extra"), 1, f"{M}: member digest: unknown field(s) 'extra'"),
    (("manifest", "members", 0, "extra"), 1, f"{M}: member: unknown field(s) 'extra'"),
    (("manifest", "devices", "profiles"), [], f"{M}: device profiles must be a list of 1 to 64 names"),
    (("manifest", "devices", "profiles"), ["p"] * 65, f"{M}: device profiles must be a list of 1 to 64 names"),
    (("manifest", "devices", "profiles"), "p", f"{M}: device profiles must be a list of 1 to 64 names"),
    (("manifest", "devices", "profiles"), ["a b"], f"{M}: device profile: 'a b' has characters or a form that is not allowed"),
    (("manifest", "devices", "ids"), [], f"{M}: device ids must be null or a list of 1 to 10000"),
    (("manifest", "devices", "ids"), ["i"] * 10001, f"{M}: device ids must be null or a list of 1 to 10000"),
    (("manifest", "devices", "ids"), "cam", f"{M}: device ids must be null or a list of 1 to 10000"),
    (("manifest", "devices", "ids"), ["a b"], f"{M}: device id: 'a b' has characters or a form that is not allowed"),
    (("manifest", "devices", "extra"), 1, f"{M}: device constraints: unknown field(s) 'extra'"),
    (("manifest", "extra"), 1, f"{M}: manifest: unknown field(s) 'extra'"),
    (("payload", "aead"), "AES-128-GCM-STREAM", f"{M}: payload must use AES-256-GCM-STREAM with HKDF-SHA256"),
    (("payload", "kdf"), "HKDF-SHA512", f"{M}: payload must use AES-256-GCM-STREAM with HKDF-SHA256"),
    (("payload", "chunk"), 1000, f"{M}: chunk size 1000 must be a power of two from 65536 to 1048576"),
    (("payload", "salt"), bytes(31), f"{M}: payload salt: must be 32 bytes, got 31"),
    (("payload", "size"), 64 * 1024**3 + 1, f"{M}: payload size: must be <= 68719476736, got 68719476737"),
    (("payload", "size"), 208, f"{M}: member streams do not add up to the payload size"),
    (("payload", "digest", "alg"), "sha1", f"{M}: payload digest: unsupported digest algorithm 'sha1'"),
    (("payload", "extra"), 1, f"{M}: payload: unknown field(s) 'extra'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value", "message"),
    CASES,
    ids=[f"{i:02d}-" + "-".join(map(str, c[0])) for i, c in enumerate(CASES)],
)
def test_header_schema_messages(tree: dict[str, Any], path: Any, value: Any, message: str) -> None:
    bad = _set(tree, path, value)
    refused(MalformedError, message, lambda: Header.from_cbor(bad, DEFAULT_LIMITS))


def test_header_limits_are_inclusive(tree: dict[str, Any]) -> None:
    """Each limit itself is accepted, one over it is refused."""
    ok = _set(tree, ("manifest", "version"), 2**53)
    assert Header.from_cbor(ok, DEFAULT_LIMITS).manifest.version == 2**53
    ok = _set(tree, ("manifest", "devices", "profiles"), [f"p{i}" for i in range(64)])
    assert len(Header.from_cbor(ok, DEFAULT_LIMITS).manifest.devices.profiles) == 64
    ok = _set(tree, ("manifest", "devices", "ids"), ["cam"])
    assert Header.from_cbor(ok, DEFAULT_LIMITS).manifest.devices.device_ids == ("cam",)
    ok = _set(tree, ("manifest", "created"), 2**40)
    ok = _set(ok, ("manifest", "expires"), 2**40)
    ok = _set(ok, ("manifest", "tool"), "t" * 128)
    ok = _set(ok, ("manifest", "name"), "n" * 128)
    h = Header.from_cbor(ok, DEFAULT_LIMITS)
    assert (h.manifest.created, h.manifest.expires, len(h.manifest.tool)) == (2**40, 2**40, 128)
    ok = _set(tree, ("recipients", 0, "wrapped"), bytes(4096))
    assert len(Header.from_cbor(ok, DEFAULT_LIMITS).recipients[0].wrapped) == 4096
    refused(
        MalformedError,
        f"{M}: members must be a list of 1 to 1",
        lambda: Header.from_cbor(tree, Limits(max_members=1)),
    )
    assert Header.from_cbor(tree, Limits(max_members=2, max_recipients=3, max_profiles=2))
    refused(
        MalformedError,
        f"{M}: recipients must be a list of 1 to 2",
        lambda: Header.from_cbor(tree, Limits(max_recipients=2)),
    )
    refused(
        MalformedError,
        f"{M}: device profiles must be a list of 1 to 1 names",
        lambda: Header.from_cbor(tree, Limits(max_profiles=1)),
    )
    ids = _set(tree, ("manifest", "devices", "ids"), ["a", "b"])
    assert Header.from_cbor(ids, Limits(max_device_ids=2)).manifest.devices.device_ids == ("a", "b")
    refused(
        MalformedError,
        f"{M}: device ids must be null or a list of 1 to 1",
        lambda: Header.from_cbor(ids, Limits(max_device_ids=1)),
    )
    refused(
        MalformedError,
        f"{M}: member size: must be <= 149, got 150",
        lambda: Header.from_cbor(tree, Limits(max_member_size=149)),
    )
    refused(
        MalformedError,
        f"{M}: version: must be <= 6, got 7",
        lambda: Header.from_cbor(tree, Limits(max_version=6)),
    )
    refused(
        MalformedError,
        f"{M}: payload size: must be <= 206, got 207",
        lambda: Header.from_cbor(tree, Limits(max_payload=206)),
    )
    dup = _set(tree, ("recipients", 1, "kid"), tree["recipients"][0]["kid"])
    refused(
        MalformedError,
        f"{M}: recipient key ids must be unique",
        lambda: Header.from_cbor(dup, DEFAULT_LIMITS),
    )


def test_header_round_trip_and_lookups(tree: dict[str, Any]) -> None:
    h = Header.from_cbor(tree, DEFAULT_LIMITS)
    assert h.to_cbor() == tree
    assert canonical_cbor(h.to_cbor()) == canonical_cbor(tree)
    m = h.manifest
    assert m.member("aux").offset == 166 and m.member("model").size == 150
    with pytest.raises(KeyError, match="'nope'"):
        m.member("nope")
    kid = tree["recipients"][1]["kid"]
    r = h.recipient(kid)
    assert r is not None and r.kem == "x25519" and r.key_id == kid
    assert h.recipient(bytes(32)) is None
    assert m.to_cbor() == tree["manifest"]
    assert Manifest.from_cbor(tree["manifest"], DEFAULT_LIMITS) == m
    # the defaults of a manifest made in code
    made = Manifest(
        name="n",
        version=1,
        created=0,
        expires=None,
        signer=bytes(32),
        devices=m.devices,
        members=m.members,
    )
    assert made.to_cbor()["tool"] == "edgeguard"
    assert made.to_cbor()["sanity"] is None and made.to_cbor()["format"] == 1


def test_signature_block_messages(tree: dict[str, Any]) -> None:
    raw = (V / "bundle-v1.egb").read_bytes()
    hlen = int.from_bytes(raw[16:20], "big")
    slen = int.from_bytes(raw[20 + hlen : 24 + hlen], "big")
    block = decode_canonical(raw[24 + hlen : 24 + hlen + slen], what="s")
    sb = SignatureBlock.from_cbor(block)
    assert sb.to_cbor() == block and sb.alg == "ecdsa-p256-sha256+ml-dsa-65"
    for change, message in [
        ({"alg": "ed25519"}, f"{M}: signature algorithm 'ed25519' is not ecdsa-p256-sha256+ml-dsa-65"),
        ({"kid": b"k"}, f"{M}: signature key id: must be 32 bytes, got 1"),
        ({"ecdsa": b"e"}, f"{M}: ECDSA signature must be 64 bytes"),
        ({"mldsa": b"m"}, f"{M}: ML-DSA-65 signature must be 3309 bytes"),
        ({"ecdsa": "e"}, f"{M}: ECDSA signature: must be a byte string, got str"),
        ({"mldsa": 1}, f"{M}: ML-DSA signature: must be a byte string, got int"),
        ({"x": 1}, f"{M}: signature block: unknown field(s) 'x'"),
    ]:  # fmt: skip
        bad = {**block, **change}
        refused(MalformedError, message, lambda bad=bad: SignatureBlock.from_cbor(bad))


# --------------------------------------------------------------------------- the prefix


def _parse(data: bytes, **kw: Any) -> Any:
    return parse_prefix(io.BytesIO(data).read, file_size=len(data), **kw)


def test_prefix_messages() -> None:
    raw = (V / "bundle-v1.egb").read_bytes()
    hlen = int.from_bytes(raw[16:20], "big")
    slen = int.from_bytes(raw[20 + hlen : 24 + hlen], "big")
    prefix = _parse(raw)
    assert prefix.payload_offset == 24 + hlen + slen == len(raw) - 207
    assert prefix.header_bytes == raw[20 : 20 + hlen]
    assert prefix.signed_bytes == raw[: 20 + hlen] == signed_region(prefix.header_bytes)
    assert encode_prefix(prefix.header_bytes, prefix.signature) == raw[: prefix.payload_offset]
    refused(
        MalformedError, "not an edgeguard bundle (bad magic)", lambda: _parse(b"PK\x03\x04" + raw)
    )
    refused(MalformedError, "not an edgeguard bundle (bad magic)", lambda: _parse(b""))
    v2 = MAGIC[:10] + b"2" + MAGIC[11:] + raw[16:]
    refused(
        MalformedError, "not a bundle of format v1 (unsupported format version)", lambda: _parse(v2)
    )
    refused(
        MalformedError,
        "malformed bundle: file ends inside the header length (truncated)",
        lambda: _parse(raw[:18]),
    )
    refused(
        MalformedError,
        "malformed bundle: file ends inside the signature length (truncated)",
        lambda: parse_prefix(io.BytesIO(raw[: 21 + hlen]).read, file_size=len(raw)),
    )
    refused(
        MalformedError,
        "malformed bundle: file ends inside the header (truncated)",
        lambda: parse_prefix(io.BytesIO(raw[:100]).read, file_size=len(raw)),
    )
    refused(
        MalformedError,
        "malformed bundle: file ends inside the signature block (truncated)",
        lambda: parse_prefix(io.BytesIO(raw[: 30 + hlen]).read, file_size=len(raw)),
    )

    def with_lengths(h: int | None = None, s: int | None = None) -> bytes:
        out = bytearray(raw)
        if h is not None:
            out[16:20] = struct.pack(">I", h)
        if s is not None:
            out[20 + hlen : 24 + hlen] = struct.pack(">I", s)
        return bytes(out)

    for h in (0, 8 * 1024 * 1024 + 1, len(raw)):
        refused(
            MalformedError,
            f"malformed bundle: header length {h} exceeds the limit or the file size",
            lambda h=h: _parse(with_lengths(h=h)),
        )
    # the header length may reach the file size minus the signature length field
    refused(
        MalformedError,
        f"malformed bundle: header length {len(raw) - 19} exceeds the limit or the file size",
        lambda: _parse(with_lengths(h=len(raw) - 19)),
    )
    for s in (0, 16 * 1024 + 1, len(raw)):
        refused(
            MalformedError,
            f"malformed bundle: signature length {s} exceeds the limit or the file size",
            lambda s=s: _parse(with_lengths(s=s)),
        )
    # a one-byte header or signature block passes the length check and fails as CBOR
    one = raw[:16] + struct.pack(">I", 1) + b"\xa0" + raw[20 + hlen : prefix.payload_offset]
    refused(
        MalformedError,
        "malformed bundle: header: misses the field(s) 'manifest', 'payload', 'recipients'",
        lambda: _parse(one),
    )
    one_sig = raw[: 20 + hlen] + struct.pack(">I", 1) + b"\xa0"
    refused(
        MalformedError,
        "malformed bundle: signature block: misses the field(s) 'alg', 'ecdsa', 'kid', 'mldsa'",
        lambda: _parse(one_sig),
    )
    # a file that ends right after the signature length: the signature length is at fault
    cut = raw[: 24 + hlen]
    refused(
        MalformedError,
        f"malformed bundle: signature length {slen} exceeds the limit or the file size",
        lambda: _parse(cut),
    )
    # limits come from the Limits object; the exact limits are accepted
    refused(
        MalformedError,
        f"malformed bundle: header length {hlen} exceeds the limit or the file size",
        lambda: _parse(raw, limits=Limits(max_header=hlen - 1)),
    )
    assert _parse(raw, limits=Limits(max_header=hlen, max_signature=slen)).payload_offset
    refused(
        MalformedError,
        f"malformed bundle: signature length {slen} exceeds the limit or the file size",
        lambda: _parse(raw, limits=Limits(max_signature=slen - 1)),
    )
    # a file that ends right after the signature block parses (the payload is checked later)
    assert _parse(raw[: prefix.payload_offset]).payload_offset == prefix.payload_offset
    refused(
        MalformedError,
        "bundle header: not in canonical CBOR form (or has trailing bytes)",
        lambda: _parse(
            raw[:16]
            + struct.pack(">I", hlen + 1)
            + raw[20 : 20 + hlen]
            + b"\x00"
            + raw[20 + hlen : prefix.payload_offset]
        ),
    )
    refused(
        MalformedError,
        "signature block: not in canonical CBOR form (or has trailing bytes)",
        lambda: _parse(
            raw[: 20 + hlen]
            + struct.pack(">I", slen + 1)
            + raw[24 + hlen : prefix.payload_offset]
            + b"\x00"
        ),
    )


# --------------------------------------------------------------------------- trust and policy


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {"signer": SignerKey.generate(), "device": DeviceKey.generate("cam-01", kem="x25519")}


def test_trust_store(keys: dict[str, Any]) -> None:
    pub = keys["signer"].public
    refused(
        UsageError,
        "the trust store is empty: a bundle can only be verified against at least one "
        "trusted signer key",
        lambda: TrustStore({}),
        hint="pass --trust signer.pub",
    )
    source = {pub.key_id: pub}
    store = TrustStore(source)
    source.clear()  # the store holds its own, read-only copy
    assert list(store.signers) == [pub.key_id]
    with pytest.raises(TypeError):
        store.signers[b"x"] = pub  # type: ignore[index]
    assert TrustStore.of([pub]).signers[pub.key_id] == pub


def test_verify_signature_messages(make_bundle, keys, signer, attacker) -> None:
    b = make_bundle()
    with open(b, "rb") as f:
        prefix = parse_prefix(f.read, file_size=b.stat().st_size)
    assert verify_signature(prefix, trust=TrustStore.of([signer.public])) == signer.public
    kid = signer.public.key_id.hex()[:16]
    refused(
        UntrustedSignerError,
        f"bundle is signed by key {kid}…, which is not in the trust store",
        lambda: verify_signature(prefix, trust=TrustStore.of([attacker.public])),
        hint="check --trust, or ask the publisher which key signed this release",
    )
    header, _, _ = _split(b)
    sig = prefix.signature.signature
    forged = SignatureBlock(signer.public.key_id, type(sig)(ecdsa=sig.ecdsa, mldsa=bytes(3309)))
    bad = parse_prefix(io.BytesIO(encode_prefix(header, forged)).read, file_size=10**6)
    refused(
        IntegrityError,
        "bundle signature is invalid (ML-DSA-65 signature does not verify): the bundle was "
        "modified or corrupted",
        lambda: verify_signature(bad, trust=TrustStore.of([signer.public])),
    )


@pytest.fixture
def utc_and_elsewhere() -> Iterator[None]:
    """Times in messages are UTC whatever the host's time zone."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/St_Johns"  # UTC-3:30: no whole-hour coincidence
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_policy_messages_and_boundaries(make_bundle, keys, device, utc_and_elsewhere) -> None:
    def manifest_of(**kw: Any) -> tuple[Any, Any]:
        b = make_bundle(**kw)
        with open(b, "rb") as f:
            p = parse_prefix(f.read, file_size=b.stat().st_size)
        return p.header.manifest, p.header.recipients

    def decide(m: Any, r: Any, *, now: int = NOW, stored: int | None = None, dev: Any = None):
        return check_policy(m, r, device=(dev or device).public, now=now, stored_version=stored)

    exp = 1_800_000_000  # 2027-01-15T08:00:00Z
    m, r = manifest_of(expires=exp, created=exp - 100)
    assert decide(m, r, now=exp - 1).key_id == device.public.key_id
    refused(
        BundleExpiredError,
        "bundle 'digits' v2 expired at 2027-01-15T08:00:00Z (now 2027-01-15T08:00:00Z)",
        lambda: decide(m, r, now=exp),  # expired at the second it names
        hint="ask the publisher for a current release",
    )
    m, r = manifest_of(created=NOW + 300, expires=None)
    assert decide(m, r) is not None  # 300 s of clock skew are allowed
    m, r = manifest_of(created=NOW + 301, expires=None)
    refused(
        BundleExpiredError,
        "bundle 'digits' claims to be created in the future (2027-01-15T08:05:01Z; now "
        "2027-01-15T08:00:00Z)",
        lambda: decide(m, r),
        hint="check the device clock",
    )
    m, r = manifest_of(profiles=("jetson-agx-orin", "jetson-nano"))
    refused(
        DeviceNotAllowedError,
        "bundle is for device profiles jetson-agx-orin, jetson-nano, this device is 'generic-cpu'",
        lambda: decide(m, r),
    )
    m, r = manifest_of(device_ids=("cam-02", "cam-03"))
    refused(
        DeviceNotAllowedError,
        "device 'cam-01' is not among the bundle's ids",
        lambda: decide(m, r),
    )
    m, r = manifest_of(device_ids=("cam-01",), version=4)
    assert decide(m, r, stored=4) is not None  # the same release again
    refused(
        RollbackError,
        "bundle 'digits' v4 is older than v5, which this device already opened (rollback refused)",
        lambda: decide(m, r, stored=5),
    )
    other = keys["device"]
    refused(
        NotARecipientError,
        f"device 'cam-01' (key {other.public.key_id.hex()[:16]}…) is not a recipient of this "
        "bundle",
        lambda: decide(m, r, dev=other),
        hint="rebuild the bundle with --recipient for this device",
    )

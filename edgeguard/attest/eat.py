"""Entity Attestation Tokens: CWT claims (RFC 9711) in a COSE_Sign1 (RFC 9052).

Layer: attest (bytes in, bytes out; no I/O).

The evidence a device sends is one untagged CWT: a ``COSE_Sign1`` (CBOR tag
18) with protected header ``{1: -7 (ES256), 4: kid}``, an empty unprotected
header, the claims map as payload and a 64-byte ``r || s`` ECDSA P-256 /
SHA-256 signature over ``Sig_structure = ["Signature1", protected, h'',
payload]`` (RFC 9052 section 4.4). ``kid`` is the device key id. COSE is
built here with cbor2 and ``cryptography`` directly; the tests check it
against the independent ``pycose`` implementation.

Claim keys used (IANA CWT registry, RFC 9711):

=========  ====  ==================================================
iat           6  issue time (Unix seconds)
eat_nonce    10  the verifier's 32-byte challenge nonce
ueid        256  ``0x01`` (RAND type) followed by the 32-byte device key id
hwmodel     259  the device profile id (bytes)
dbgstat     263  only when known; never guessed
eat_profile 265  :data:`EAT_PROFILE`
swname      270  ``"edgeguard"``
swversion   271  ``[version, 16384]`` (CoSWID semver scheme)
measurements 273 ``[[65000, log]]``: the canonical measurement log
                 (CoAP content format 65000 = experimental range,
                 ``application/vnd.edgeguard.measurement-log+cbor``)
=========  ====  ==================================================

and one private claim :data:`EDGEGUARD_CLAIM` (``-70001``, private-use
range below -65536) holding ``assurance`` (``"software"`` or ``"tpm"``), the
replayed register value ``pcr``, the PCR index, and for the TPM path the
``TPMS_ATTEST`` blob and ``TPMT_SIGNATURE`` of the quote. A software token
says ``"software"`` in a signed claim, so it can never pass as a TPM one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from edgeguard.attest.measure import MeasurementLog
from edgeguard.crypto.encoding import canonical_cbor, decode_canonical
from edgeguard.errors import IntegrityError, MalformedError

__all__ = [
    "ASSURANCE_LEVELS",
    "EAT_PROFILE",
    "EDGEGUARD_CLAIM",
    "MAX_EVIDENCE",
    "Assurance",
    "EatClaims",
    "SignedEat",
    "TpmQuote",
    "parse_eat",
    "sign_eat",
    "verify_eat_signature",
]

Assurance = Literal["software", "tpm"]
ASSURANCE_LEVELS: tuple[Assurance, ...] = ("software", "tpm")
EAT_PROFILE = "urn:edgeguard:eat-profile:1"
EDGEGUARD_CLAIM = -70001
MEASUREMENT_LOG_CF = 65000
MAX_EVIDENCE = 4 * 1024 * 1024
COSE_SIGN1_TAG = 18
_COSE_SIGN1_HEAD = bytes([0xC0 | COSE_SIGN1_TAG])  # major type 6, tag 18 in the head byte
_ALG_ES256 = -7
_HDR_ALG, _HDR_KID = 1, 4
_IAT, _NONCE, _UEID, _HWMODEL, _DBGSTAT, _PROFILE = 6, 10, 256, 259, 263, 265
_SWNAME, _SWVERSION, _MEASUREMENTS = 270, 271, 273
_SEMVER = 16384
_UEID_RAND = b"\x01"
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@dataclass(frozen=True)
class TpmQuote:
    """A TPM2_Quote: the marshalled ``TPMS_ATTEST`` and ``TPMT_SIGNATURE``."""

    attest: bytes
    signature: bytes


@dataclass(frozen=True)
class EatClaims:
    """The claims of one evidence token.

    Attributes:
        nonce: The verifier's challenge nonce (eat_nonce).
        device_key_id: The device key id (carried in ueid and as COSE kid).
        hwmodel: Device profile id.
        swname: Software name (``edgeguard``).
        swversion: edgeguard version string.
        iat: Issue time, Unix seconds.
        log: The measurement log.
        pcr: The register value the attester computed (software) or read
            back from the TPM after extending (tpm).
        pcr_index: The TPM PCR used (also recorded for the software path).
        assurance: ``"software"`` or ``"tpm"``.
        quote: The TPM quote (TPM path only).
        dbgstat: RFC 9711 debug status when known, else None.
    """

    nonce: bytes
    device_key_id: bytes
    hwmodel: str
    swname: str
    swversion: str
    iat: int
    log: MeasurementLog
    pcr: bytes
    pcr_index: int
    assurance: Assurance
    quote: TpmQuote | None = None
    dbgstat: int | None = None

    def __post_init__(self) -> None:
        if self.assurance not in ASSURANCE_LEVELS:
            raise MalformedError(f"unknown assurance level {self.assurance!r}")
        if (self.assurance == "tpm") != (self.quote is not None):
            raise MalformedError("a TPM quote is present exactly when assurance is 'tpm'")
        if len(self.device_key_id) != 32 or len(self.pcr) != 32:
            raise MalformedError("device key id and pcr must be 32 bytes")
        if not 8 <= len(self.nonce) <= 64:
            raise MalformedError("eat_nonce must be 8 to 64 bytes")

    def to_cbor(self) -> dict[int, Any]:
        """The CWT claims map (integer keys)."""
        claims: dict[int, Any] = {
            _IAT: self.iat,
            _NONCE: self.nonce,
            _UEID: _UEID_RAND + self.device_key_id,
            _HWMODEL: self.hwmodel.encode(),
            _PROFILE: EAT_PROFILE,
            _SWNAME: self.swname,
            _SWVERSION: [self.swversion, _SEMVER],
            _MEASUREMENTS: [[MEASUREMENT_LOG_CF, self.log.encode()]],
            EDGEGUARD_CLAIM: {
                "assurance": self.assurance,
                "pcr": self.pcr,
                "pcr-index": self.pcr_index,
                "tpm": None
                if self.quote is None
                else {"attest": self.quote.attest, "sig": self.quote.signature},
            },
        }
        if self.dbgstat is not None:
            claims[_DBGSTAT] = self.dbgstat
        return claims

    @classmethod
    def from_cbor(cls, obj: Any) -> EatClaims:
        """Parse and validate a claims map."""
        if not isinstance(obj, dict):
            raise MalformedError("EAT claims must be a map")
        required = {_IAT, _NONCE, _UEID, _HWMODEL, _PROFILE, _SWNAME, _SWVERSION, _MEASUREMENTS}
        required.add(EDGEGUARD_CLAIM)
        missing = required - set(obj)
        if missing:
            raise MalformedError(f"EAT misses claims {sorted(missing)}")
        if not set(obj) <= required | {_DBGSTAT}:
            raise MalformedError(f"EAT has unknown claims {sorted(set(obj) - required)}")
        if obj[_PROFILE] != EAT_PROFILE:
            raise MalformedError(f"unsupported eat_profile {obj[_PROFILE]!r}")
        ueid, nonce, hw = obj[_UEID], obj[_NONCE], obj[_HWMODEL]
        if not (isinstance(ueid, bytes) and len(ueid) == 33 and ueid[:1] == _UEID_RAND):
            raise MalformedError("ueid must be a 33-byte RAND UEID")
        if not isinstance(nonce, bytes) or not isinstance(hw, bytes):
            raise MalformedError("eat_nonce and hwmodel must be byte strings")
        swv = obj[_SWVERSION]
        if not (isinstance(swv, list) and len(swv) == 2 and isinstance(swv[0], str)):
            raise MalformedError("swversion must be [version, scheme]")
        meas = obj[_MEASUREMENTS]
        if not (
            isinstance(meas, list)
            and len(meas) == 1
            and isinstance(meas[0], list)
            and len(meas[0]) == 2
            and meas[0][0] == MEASUREMENT_LOG_CF
            and isinstance(meas[0][1], bytes)
        ):
            raise MalformedError("measurements must hold exactly one edgeguard measurement log")
        eg = obj[EDGEGUARD_CLAIM]
        if not isinstance(eg, dict) or set(eg) != {"assurance", "pcr", "pcr-index", "tpm"}:
            raise MalformedError("the edgeguard claim must hold assurance, pcr, pcr-index, tpm")
        quote = None
        if eg["tpm"] is not None:
            t = eg["tpm"]
            if not (
                isinstance(t, dict)
                and set(t) == {"attest", "sig"}
                and isinstance(t["attest"], bytes)
                and isinstance(t["sig"], bytes)
            ):
                raise MalformedError("the tpm claim must hold attest and sig byte strings")
            quote = TpmQuote(t["attest"], t["sig"])
        iat, dbg, idx = obj[_IAT], obj.get(_DBGSTAT), eg["pcr-index"]
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (iat, idx)) or not (
            isinstance(eg["pcr"], bytes)
        ):
            raise MalformedError("iat, pcr-index and pcr have wrong types")
        if dbg is not None and (not isinstance(dbg, int) or isinstance(dbg, bool)):
            raise MalformedError("dbgstat must be an integer")
        if not isinstance(obj[_SWNAME], str):
            raise MalformedError("swname must be text")
        try:
            hwmodel = hw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedError("hwmodel is not UTF-8") from exc
        return cls(
            nonce=nonce,
            device_key_id=ueid[1:],
            hwmodel=hwmodel,
            swname=obj[_SWNAME],
            swversion=swv[0],
            iat=iat,
            log=MeasurementLog.decode(meas[0][1]),
            pcr=eg["pcr"],
            pcr_index=idx,
            assurance=eg["assurance"],
            quote=quote,
            dbgstat=dbg,
        )


@dataclass(frozen=True)
class SignedEat:
    """A parsed COSE_Sign1 whose signature has *not* been checked yet.

    Attributes:
        kid: The key id from the protected header.
        protected: The protected header bytes (as signed).
        payload: The claims bytes (as signed).
        signature: 64-byte ``r || s``.
    """

    kid: bytes
    protected: bytes
    payload: bytes
    signature: bytes

    def claims(self) -> EatClaims:
        """Decode the claims (call only after :func:`verify_eat_signature`)."""
        return EatClaims.from_cbor(decode_canonical(self.payload, what="EAT claims"))


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    return bytes(canonical_cbor(["Signature1", protected, b"", payload]))


def sign_eat(claims: EatClaims, key: ec.EllipticCurvePrivateKey) -> bytes:
    """Encode ``claims`` as a CWT signed with ES256 by ``key``.

    Returns:
        The tagged COSE_Sign1 bytes.
    """
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("ES256 needs a P-256 key")
    protected = canonical_cbor({_HDR_ALG: _ALG_ES256, _HDR_KID: claims.device_key_id})
    payload = canonical_cbor(claims.to_cbor())
    der = key.sign(_sig_structure(protected, payload), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    if s > _P256_N // 2:
        s = _P256_N - s
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return bytes(canonical_cbor(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload, sig])))


def parse_eat(data: bytes) -> SignedEat:
    """Parse a tagged COSE_Sign1 token (signature not checked).

    Raises:
        MalformedError: Too large, not CBOR, not a COSE_Sign1 with ES256, or
            not canonically encoded.
    """
    if len(data) > MAX_EVIDENCE:
        raise MalformedError(f"evidence is larger than {MAX_EVIDENCE} bytes")
    # The one tag is the outer COSE_Sign1 tag (18, one head byte); inside it the
    # structure is canonical CBOR without tags, decoded like every edgeguard structure.
    if bytes(data[:1]) != _COSE_SIGN1_HEAD:
        raise MalformedError("evidence is not a tagged COSE_Sign1")
    v = decode_canonical(bytes(data[1:]), what="evidence")
    if not (
        isinstance(v, list)
        and len(v) == 4
        and isinstance(v[0], bytes)
        and isinstance(v[1], Mapping)
        and isinstance(v[2], bytes)
        and isinstance(v[3], bytes)
    ):
        raise MalformedError("COSE_Sign1 must be [protected, unprotected, payload, signature]")
    if v[1]:
        raise MalformedError("unprotected COSE headers are not accepted")
    hdr = decode_canonical(v[0], what="COSE protected header")
    if not isinstance(hdr, dict) or set(hdr) != {_HDR_ALG, _HDR_KID}:
        raise MalformedError("COSE protected header must hold exactly alg and kid")
    if hdr[_HDR_ALG] != _ALG_ES256:
        raise MalformedError(f"COSE algorithm {hdr[_HDR_ALG]!r} is not ES256 (-7)")
    kid = hdr[_HDR_KID]
    if not isinstance(kid, bytes) or len(kid) != 32:
        raise MalformedError("COSE kid must be a 32-byte key id")
    if len(v[3]) != 64:
        raise MalformedError("ES256 signature must be 64 bytes")
    return SignedEat(kid=kid, protected=v[0], payload=v[2], signature=v[3])


def verify_eat_signature(token: SignedEat, key: ec.EllipticCurvePublicKey) -> None:
    """Check the ES256 signature of a parsed token.

    Raises:
        IntegrityError: Out-of-range, high-S or non-verifying signature.
    """
    r = int.from_bytes(token.signature[:32], "big")
    s = int.from_bytes(token.signature[32:], "big")
    if not (0 < r < _P256_N and 0 < s <= _P256_N // 2):
        raise IntegrityError("evidence signature is out of range or not in low-S form")
    try:
        key.verify(
            encode_dss_signature(r, s),
            _sig_structure(token.protected, token.payload),
            ec.ECDSA(hashes.SHA256()),
        )
    except InvalidSignature as exc:
        raise IntegrityError("evidence signature does not verify (forged or altered)") from exc

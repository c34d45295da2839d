"""TPM 2.0 quotes: the attester side (tpm2-pytss) and a dependency-free verifier side.

Layer: attest. Only :class:`TpmAttester` touches the TPM, through
``tpm2-pytss`` (the ``[tpm]`` extra, imported lazily) and a TCTI such as
``swtpm:path=/run/swtpm/sock`` or ``device:/dev/tpmrm0``. Everything a
verifier needs (:func:`parse_public`, :func:`parse_attest`,
:func:`verify_quote`, :class:`AkBinding`) parses the TPM wire formats (TPM 2.0
Library Part 2, big-endian) with the standard library and ``cryptography``,
so a verifier host needs no TSS.

**Attestation key (AK).** A restricted ECDSA P-256/SHA-256 signing key
(``fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | restricted
| sign``) created with ``TPM2_CreatePrimary`` under the *owner* hierarchy.
Its template's ``unique.x`` is the 32-byte device key id, so the key is
deterministic per (TPM owner seed, device): it is re-derived for each quote
and never stored. ``edgeguard attest enroll-tpm`` exports its public area in
an :class:`AkBinding` signed by the device's software attestation key, which
ties the AK to the enrolled device.

**PCR.** :data:`ATTEST_PCR` = 23, the PC Client "application support" PCR,
resettable from locality 0: the attester resets it, extends the SHA-256
event digest of each measurement log entry, and quotes ``sha256:23`` with
the verifier's nonce as ``qualifyingData``. Replaying the log therefore
gives the PCR value, and ``pcrDigest = SHA-256(PCR23)``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from edgeguard._optional import require
from edgeguard.attest.eat import TpmQuote
from edgeguard.attest.measure import MeasurementLog
from edgeguard.crypto.encoding import armor, canonical_cbor, decode_canonical, unarmor
from edgeguard.crypto.sign import ecdsa_sign_raw, ecdsa_verify_raw
from edgeguard.errors import BackendError, IntegrityError, MalformedError, UsageError

__all__ = [
    "AK_ATTRIBUTES",
    "ATTEST_PCR",
    "AkBinding",
    "AkPublic",
    "QuoteInfo",
    "TpmAttester",
    "parse_attest",
    "parse_public",
    "quote_signature_valid",
]

ATTEST_PCR = 23
TPM_GENERATED = 0xFF544347
ST_ATTEST_QUOTE = 0x8018
ALG_ECC, ALG_ECDSA, ALG_SHA256, ALG_NULL = 0x0023, 0x0018, 0x000B, 0x0010
ECC_NIST_P256 = 0x0003
TPM_RH_OWNER = 0x40000001
_FIXEDTPM, _FIXEDPARENT, _SDO, _USERAUTH = 0x2, 0x10, 0x20, 0x40
_RESTRICTED, _SIGN = 0x10000, 0x40000
#: objectAttributes every AK must have.
AK_ATTRIBUTES = _FIXEDTPM | _FIXEDPARENT | _SDO | _USERAUTH | _RESTRICTED | _SIGN
_BINDING_CONTEXT = b"edgeguard attest ak binding v1"
_BINDING_KIND = "TPM AK PUBLIC"


class _Reader:
    """Bounds-checked big-endian reader for TPM structures."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MalformedError(f"{self.what} is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def tpm2b(self) -> bytes:
        return self.take(self.u16())

    def end(self) -> None:
        if self.pos != len(self.data):
            raise MalformedError(f"{self.what} has trailing bytes")


# --------------------------------------------------------------------------- public area


@dataclass(frozen=True)
class AkPublic:
    """A parsed TPMT_PUBLIC of an ECC P-256 attestation key.

    Attributes:
        area: The marshalled TPMT_PUBLIC (without the TPM2B size).
        key: The public key.
        attributes: objectAttributes bits.
        name: The TPM Name: ``nameAlg || SHA-256(area)``.
    """

    area: bytes
    key: ec.EllipticCurvePublicKey
    attributes: int
    name: bytes

    @property
    def qualified_name(self) -> bytes:
        """Qualified Name of the AK as a primary key of the owner hierarchy.

        ``nameAlg || SHA-256(QN(TPM_RH_OWNER) || Name)`` where the hierarchy's
        qualified name is its handle ``0x40000001`` (TPM 2.0 Part 1, 16.6).
        This is the ``qualifiedSigner`` a quote by this AK carries.
        """
        owner = struct.pack(">I", TPM_RH_OWNER)
        return struct.pack(">H", ALG_SHA256) + hashlib.sha256(owner + self.name).digest()

    @property
    def is_restricted_signing_key(self) -> bool:
        """Whether every bit of :data:`AK_ATTRIBUTES` is set."""
        return self.attributes & AK_ATTRIBUTES == AK_ATTRIBUTES


def parse_public(area: bytes) -> AkPublic:
    """Parse a TPMT_PUBLIC holding an ECDSA P-256 key with nameAlg SHA-256.

    Raises:
        MalformedError: Truncated, other key type, curve, scheme or name algorithm.
    """
    r = _Reader(area, "TPM public area")
    if r.u16() != ALG_ECC:
        raise MalformedError("TPM public area is not an ECC key")
    if r.u16() != ALG_SHA256:
        raise MalformedError("TPM public area nameAlg is not SHA-256")
    attrs = r.u32()
    r.tpm2b()  # authPolicy
    if r.u16() != ALG_NULL:  # symmetric: a signing key has none
        raise MalformedError("TPM attestation key must not be a storage (symmetric) key")
    scheme = r.u16()
    if scheme != ALG_ECDSA or r.u16() != ALG_SHA256:
        raise MalformedError("TPM attestation key scheme must be ECDSA with SHA-256")
    if r.u16() != ECC_NIST_P256:
        raise MalformedError("TPM attestation key must be on NIST P-256")
    if r.u16() != ALG_NULL:
        raise MalformedError("TPM attestation key must have no KDF")
    x, y = r.tpm2b(), r.tpm2b()
    r.end()
    if len(x) != 32 or len(y) != 32:
        raise MalformedError("TPM attestation key point has the wrong size")
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
    except ValueError as exc:
        raise MalformedError("TPM attestation key is not a valid P-256 point") from exc
    name = struct.pack(">H", ALG_SHA256) + hashlib.sha256(area).digest()
    return AkPublic(area=area, key=key, attributes=attrs, name=name)


# --------------------------------------------------------------------------- quote


@dataclass(frozen=True)
class QuoteInfo:
    """The fields of a TPMS_ATTEST of type quote that a verifier checks.

    Attributes:
        qualified_signer: TPM Name of the signing key.
        extra_data: ``qualifyingData`` given to TPM2_Quote (the nonce).
        reset_count: TPM reset count (obfuscated by the TPM for keys outside the
            endorsement hierarchy, so not comparable across keys; not checked).
        restart_count: TPM restart count (likewise obfuscated).
        selection: ``((hash alg, (pcr, ...)), ...)``.
        pcr_digest: Digest of the selected PCR values.
    """

    qualified_signer: bytes
    extra_data: bytes
    reset_count: int
    restart_count: int
    selection: tuple[tuple[int, tuple[int, ...]], ...]
    pcr_digest: bytes


def parse_attest(data: bytes) -> QuoteInfo:
    """Parse a marshalled TPMS_ATTEST that must be a TPM-generated quote.

    Raises:
        MalformedError: Truncated, trailing bytes, wrong magic or not a quote.
    """
    r = _Reader(data, "TPM quote")
    if r.u32() != TPM_GENERATED:
        raise MalformedError("TPM quote magic is not TPM_GENERATED_VALUE")
    if r.u16() != ST_ATTEST_QUOTE:
        raise MalformedError("TPM attestation structure is not a quote")
    signer = r.tpm2b()
    extra = r.tpm2b()
    r.u64()  # clock
    reset_count, restart_count = r.u32(), r.u32()
    r.u8()  # safe
    r.u64()  # firmware version
    count = r.u32()
    if count > 16:
        raise MalformedError("TPM quote selects too many PCR banks")
    selection = []
    for _ in range(count):
        alg = r.u16()
        bitmap = r.take(r.u8())
        pcrs = tuple(i * 8 + b for i, byte in enumerate(bitmap) for b in range(8) if byte >> b & 1)
        selection.append((alg, pcrs))
    pcr_digest = r.tpm2b()
    r.end()
    return QuoteInfo(signer, extra, reset_count, restart_count, tuple(selection), pcr_digest)


def quote_signature_valid(ak: AkPublic, quote: TpmQuote) -> bool:
    """Whether ``quote.signature`` (TPMT_SIGNATURE, ECDSA/SHA-256) verifies under ``ak``."""
    try:
        r = _Reader(quote.signature, "TPM signature")
        if r.u16() != ALG_ECDSA or r.u16() != ALG_SHA256:
            return False
        sig_r, sig_s = r.tpm2b(), r.tpm2b()
        r.end()
    except MalformedError:
        return False
    der = encode_dss_signature(int.from_bytes(sig_r, "big"), int.from_bytes(sig_s, "big"))
    try:
        ak.key.verify(der, quote.attest, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


# --------------------------------------------------------------------------- enrolment


@dataclass(frozen=True)
class AkBinding:
    """An AK public area bound to a device key by the device's attestation signature.

    Attributes:
        device_key_id: Key id of the device the AK belongs to.
        area: The AK's TPMT_PUBLIC.
        signature: ECDSA signature of the device attestation key over both.
    """

    device_key_id: bytes
    area: bytes
    signature: bytes

    def _signed(self) -> bytes:
        return bytes(
            canonical_cbor(
                {"type": "tpm-ak-public", "v": 1, "device": self.device_key_id, "ak": self.area}
            )
        )

    @classmethod
    def create(
        cls, area: bytes, *, device_key_id: bytes, attest_key: ec.EllipticCurvePrivateKey
    ) -> AkBinding:
        """Bind ``area`` to the device (signed with its attestation key)."""
        unsigned = cls(device_key_id, area, b"")
        sig = ecdsa_sign_raw(attest_key, unsigned._signed(), context=_BINDING_CONTEXT)
        return cls(device_key_id, area, sig)

    def verify(self, *, device_key_id: bytes, attest_pub: ec.EllipticCurvePublicKey) -> AkPublic:
        """Check the binding belongs to this device and return the parsed AK.

        Raises:
            IntegrityError: Another device's AK, or the binding signature fails.
            MalformedError: The AK is not a restricted P-256 signing key.
        """
        if self.device_key_id != device_key_id:
            raise IntegrityError("the enrolled TPM AK belongs to a different device key")
        ecdsa_verify_raw(attest_pub, self.signature, self._signed(), context=_BINDING_CONTEXT)
        ak = parse_public(self.area)
        if not ak.is_restricted_signing_key:
            raise MalformedError("the enrolled TPM AK is not a restricted TPM-resident signing key")
        return ak

    def encode(self) -> str:
        """Armoured text file content."""
        body = {
            "type": "tpm-ak-public",
            "v": 1,
            "device": self.device_key_id,
            "ak": self.area,
            "sig": self.signature,
        }
        return armor(_BINDING_KIND, canonical_cbor(body))

    @classmethod
    def decode(cls, text: str | bytes, *, source: str) -> AkBinding:
        """Parse an armoured AK public file."""
        d = decode_canonical(unarmor(text, kind=_BINDING_KIND, source=source), what=source)
        if (
            not isinstance(d, dict)
            or set(d) != {"type", "v", "device", "ak", "sig"}
            or d["type"] != "tpm-ak-public"
            or d["v"] != 1
            or isinstance(d["v"], bool)
            or not all(isinstance(d[k], bytes) for k in ("device", "ak", "sig"))
        ):
            raise MalformedError(f"{source}: not an edgeguard TPM AK public file")
        return cls(d["device"], d["ak"], d["sig"])


# --------------------------------------------------------------------------- attester


def _split_tcti(tcti: str) -> tuple[str, str | None]:
    if not tcti or not isinstance(tcti, str):
        raise UsageError("empty TCTI", hint="for example --tpm swtpm:path=/tmp/swtpm/sock")
    name, _, conf = tcti.partition(":")
    return name, conf or None


class TpmAttester:
    """A connection to a TPM that derives the AK, extends PCR 23 and quotes.

    Use as a context manager; the connection and the AK handle are closed on exit.
    """

    def __init__(self, tcti: str) -> None:
        """Connect to the TPM behind ``tcti`` (for example ``swtpm:path=SOCK``).

        Raises:
            MissingDependencyError: tpm2-pytss is not installed.
            BackendError: The TCTI cannot be loaded or the TPM does not answer.
        """
        require("tpm2_pytss", extra="tpm", purpose="TPM attestation")
        from tpm2_pytss import ESAPI, TCTILdr

        name, conf = _split_tcti(tcti)
        self._tcti_str = tcti
        try:
            self._tcti: Any = TCTILdr(name, conf)
            self._esapi: Any = ESAPI(self._tcti)
        except Exception as exc:
            raise BackendError(f"cannot connect to the TPM via TCTI {tcti!r}: {exc}") from exc
        self._ak: Any = None

    def __enter__(self) -> TpmAttester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush the AK and close the connection."""
        try:
            if self._ak is not None:
                self._esapi.flush_context(self._ak)
                self._ak = None
        finally:
            self._esapi.close()
            self._tcti.close()

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            raise BackendError(f"TPM {what} failed via {self._tcti_str!r}: {exc}") from exc

    def ak_public(self, *, device_key_id: bytes) -> bytes:
        """Derive (CreatePrimary) the device's AK and return its TPMT_PUBLIC bytes."""
        from tpm2_pytss.constants import ESYS_TR, TPMA_OBJECT
        from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE

        if len(device_key_id) != 32:
            raise UsageError("device key id must be 32 bytes")
        attrs = (
            TPMA_OBJECT.FIXEDTPM
            | TPMA_OBJECT.FIXEDPARENT
            | TPMA_OBJECT.SENSITIVEDATAORIGIN
            | TPMA_OBJECT.USERWITHAUTH
            | TPMA_OBJECT.RESTRICTED
            | TPMA_OBJECT.SIGN_ENCRYPT
        )
        template = TPM2B_PUBLIC.parse(
            "ecc256:ecdsa-sha256:null", objectAttributes=attrs, nameAlg="sha256"
        )
        template.publicArea.unique.ecc.x = device_key_id
        if self._ak is not None:
            self._call("FlushContext", self._esapi.flush_context, self._ak)
        handle, out_public, _, _, _ = self._call(
            "CreatePrimary",
            self._esapi.create_primary,
            TPM2B_SENSITIVE_CREATE(),
            template,
            ESYS_TR.OWNER,
        )
        self._ak = handle
        area = bytes(out_public.marshal())[2:]
        parse_public(area)  # what we hand out must parse on the verifier side
        return area

    def measure(self, log: MeasurementLog, *, pcr: int = ATTEST_PCR) -> bytes:
        """Reset ``pcr``, extend every log entry's event digest and read the PCR back."""
        from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
        from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA, TPMU_HA

        if not 0 <= pcr <= 23:
            raise UsageError(f"PCR index {pcr} is out of range 0-23")
        handle = getattr(ESYS_TR, f"PCR{pcr}")
        self._call("PCR_Reset", self._esapi.pcr_reset, handle)
        for entry in log.entries:
            values = TPML_DIGEST_VALUES(
                [TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=entry.event_digest()))]
            )
            self._call("PCR_Extend", self._esapi.pcr_extend, handle, values)
        _, _, read = self._call("PCR_Read", self._esapi.pcr_read, f"sha256:{pcr}")
        if len(read) != 1:
            raise BackendError(f"TPM PCR_Read returned {len(read)} values for PCR {pcr}")
        return bytes(read[0])

    def quote(self, nonce: bytes, *, device_key_id: bytes, pcr: int = ATTEST_PCR) -> TpmQuote:
        """TPM2_Quote over ``sha256:<pcr>`` with ``nonce`` as qualifying data."""
        from tpm2_pytss.constants import TPM2_ALG
        from tpm2_pytss.types import TPMS_SCHEME_HASH, TPMT_SIG_SCHEME, TPMU_SIG_SCHEME

        if self._ak is None:
            self.ak_public(device_key_id=device_key_id)
        scheme = TPMT_SIG_SCHEME(
            scheme=TPM2_ALG.ECDSA,
            details=TPMU_SIG_SCHEME(ecdsa=TPMS_SCHEME_HASH(hashAlg=TPM2_ALG.SHA256)),
        )
        attest, sig = self._call(
            "Quote", self._esapi.quote, self._ak, f"sha256:{pcr}", nonce, scheme
        )
        return TpmQuote(attest=bytes(attest.marshal())[2:], signature=bytes(sig.marshal()))

"""Trust and policy decisions on a parsed bundle (pure logic, no I/O).

Layer: bundle. The order is fixed and matches ``docs/bundle-format.md``:

1. :func:`verify_signature` - the signer key id must be in the explicit
   :class:`TrustStore` (else :class:`UntrustedSignerError`), both halves of
   the hybrid signature must verify (else :class:`IntegrityError`), and the
   manifest must name the same signer.
2. :func:`check_policy` - expiry, device profile / id, anti-rollback, and
   whether this device is a recipient. Each failure is a
   :class:`~edgeguard.errors.PolicyError` subclass.

Expiry is decided at the time :func:`clock_check` gives: the wall clock, or
the device's time floor (the latest wall-clock time of a successful open,
kept in the state store) when the clock lies more than
:data:`CLOCK_FLOOR_SKEW_S` behind it, so setting the clock back does not
revive an expired bundle.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from edgeguard.bundle.codec import SIGNATURE_CONTEXT, ParsedPrefix
from edgeguard.bundle.model import Manifest, Recipient
from edgeguard.crypto.keys import DevicePublicKey, SignerPublicKey
from edgeguard.crypto.sign import hybrid_verify
from edgeguard.errors import (
    BundleExpiredError,
    DeviceNotAllowedError,
    IntegrityError,
    NotARecipientError,
    RollbackError,
    UntrustedSignerError,
    UsageError,
)

__all__ = [
    "CLOCK_FLOOR_SKEW_S",
    "CLOCK_SKEW_S",
    "ClockCheck",
    "TrustStore",
    "check_policy",
    "check_rollback",
    "clock_check",
    "verify_signature",
]


def _iso(ts: int) -> str:
    """Unix seconds as ISO 8601 UTC (``2027-01-01T00:00:00Z``)."""
    return datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


#: How far in the future ``created`` may lie before the bundle is refused.
CLOCK_SKEW_S = 300
#: How far the clock may lie behind the device's time floor before the floor is used.
CLOCK_FLOOR_SKEW_S = 300


@dataclass(frozen=True)
class ClockCheck:
    """The time a policy decision used, and why.

    Attributes:
        now: The wall clock (Unix seconds) when the bundle was opened.
        floor: The device's time floor: the latest wall-clock time of a successful
            open on this device, or None when none was recorded.
        effective: The time expiry and creation were checked at: ``now``, or
            ``floor`` when the clock lies more than :data:`CLOCK_FLOOR_SKEW_S`
            behind it.
    """

    now: int
    floor: int | None
    effective: int

    @property
    def behind_floor(self) -> bool:
        """Whether the clock was too far behind the floor, so the floor was used."""
        return self.effective != self.now

    def describe(self) -> str:
        """One line for people (meaningful when :attr:`behind_floor`)."""
        return (
            f"the clock ({_iso(self.now)}) is {self.effective - self.now} s behind this "
            f"device's time floor ({_iso(self.effective)}, the latest successful open); "
            "expiry was checked at the floor"
        )

    def to_dict(self) -> dict[str, int | None]:
        """JSON-compatible form (the event log's ``clock_behind_floor`` record)."""
        return {"now": self.now, "floor": self.floor, "effective": self.effective}


def clock_check(now: int, floor: int | None) -> ClockCheck:
    """The time to decide expiry at: ``now``, unless it is more than the skew behind ``floor``.

    A clock up to :data:`CLOCK_FLOOR_SKEW_S` behind the floor is believed (a small
    correction of the clock); further behind, the floor is used instead.
    """
    if floor is not None and now < floor - CLOCK_FLOOR_SKEW_S:
        return ClockCheck(now=now, floor=floor, effective=floor)
    return ClockCheck(now=now, floor=floor, effective=now)


@dataclass(frozen=True)
class TrustStore:
    """The signer public keys a device accepts, by key id. Never empty."""

    signers: Mapping[bytes, SignerPublicKey]

    def __post_init__(self) -> None:
        if not self.signers:
            raise UsageError(
                "the trust store is empty: a bundle can only be verified against "
                "at least one trusted signer key",
                hint="pass --trust signer.pub",
            )
        object.__setattr__(self, "signers", MappingProxyType(dict(self.signers)))

    @classmethod
    def of(cls, keys: Iterable[SignerPublicKey]) -> TrustStore:
        """A trust store holding ``keys``."""
        return cls({k.key_id: k for k in keys})


def verify_signature(prefix: ParsedPrefix, *, trust: TrustStore) -> SignerPublicKey:
    """Verify the hybrid signature of a parsed bundle against ``trust``.

    Returns:
        The signer key that made the signature.

    Raises:
        UntrustedSignerError: The signing key is not in the trust store.
        IntegrityError: The signature does not verify, or the manifest names
            a different signer than the signature block.
    """
    kid = prefix.signature.key_id
    signer = trust.signers.get(kid)
    if signer is None:
        raise UntrustedSignerError(
            f"bundle is signed by key {kid.hex()[:16]}…, which is not in the trust store",
            hint="check --trust, or ask the publisher which key signed this release",
        )
    try:
        hybrid_verify(
            signer.ecdsa,
            signer.mldsa,
            prefix.signature.signature,
            prefix.signed_bytes,
            context=SIGNATURE_CONTEXT,
        )
    except IntegrityError as exc:
        raise IntegrityError(
            f"bundle signature is invalid ({exc}): the bundle was modified or corrupted"
        ) from exc
    if prefix.header.manifest.signer != kid:
        raise IntegrityError("bundle manifest names a different signer than its signature")
    return signer


def check_rollback(name: str, version: int, stored_version: int | None) -> None:
    """Refuse release ``version`` of ``name`` when this device already opened a higher one.

    The same version again is allowed (re-opening the current release).

    Raises:
        RollbackError: ``version`` is lower than ``stored_version``.
    """
    if stored_version is not None and version < stored_version:
        raise RollbackError(
            f"bundle {name!r} v{version} is older than v{stored_version}, "
            "which this device already opened (rollback refused)",
        )


def check_policy(
    manifest: Manifest,
    recipients: tuple[Recipient, ...],
    *,
    device: DevicePublicKey,
    now: int,
    stored_version: int | None,
    time_floor: int | None = None,
) -> Recipient:
    """Decide whether this device may open this (authentic) bundle now.

    Args:
        manifest: The verified manifest.
        recipients: The verified recipient entries.
        device: The opening device's public identity (id, profile, key id).
        now: Current time (the wall clock), Unix seconds.
        stored_version: Highest release version of this bundle name this device
            has opened before, under any trusted signer, or None.
        time_floor: The device's time floor (see :func:`clock_check`), or None.

    Returns:
        The recipient entry holding this device's wrapped data key.

    Raises:
        BundleExpiredError: Expired, or created implausibly far in the future.
        DeviceNotAllowedError: Profile or device id not allowed.
        RollbackError: Older than a release this device already opened.
        NotARecipientError: The bundle holds no data key for this device.
    """
    clock = clock_check(now, time_floor)
    at = clock.effective
    when = (
        f"now {_iso(at)}"
        if not clock.behind_floor
        else f"time floor {_iso(at)}; the clock says {_iso(now)}"
    )
    if manifest.expires is not None and at >= manifest.expires:
        raise BundleExpiredError(
            f"bundle {manifest.name!r} v{manifest.version} expired at "
            f"{_iso(manifest.expires)} ({when})",
            hint="ask the publisher for a current release",
        )
    if manifest.created > at + CLOCK_SKEW_S:
        raise BundleExpiredError(
            f"bundle {manifest.name!r} claims to be created in the future "
            f"({_iso(manifest.created)}; {when})",
            hint="check the device clock",
        )
    if device.profile not in manifest.devices.profiles:
        raise DeviceNotAllowedError(
            f"bundle is for device profiles {', '.join(manifest.devices.profiles)}, "
            f"this device is {device.profile!r}",
        )
    ids = manifest.devices.device_ids
    if ids is not None and device.device_id not in ids:
        raise DeviceNotAllowedError(f"device {device.device_id!r} is not among the bundle's ids")
    check_rollback(manifest.name, manifest.version, stored_version)
    for r in recipients:
        if r.key_id == device.key_id:
            return r
    raise NotARecipientError(
        f"device {device.device_id!r} (key {device.key_id.hex()[:16]}…) is not a recipient "
        "of this bundle",
        hint="rebuild the bundle with --recipient for this device",
    )

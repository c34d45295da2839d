"""The attester: measure a bundle load and produce signed evidence (an EAT).

Layer: attest (reads the bundle and kernel files; talks to the TPM through
:class:`~edgeguard.attest.tpm.TpmAttester` when asked to).

Two assurance levels, never silently equal:

``software``  the measurement log is replayed in software and the EAT is
              signed with the device's software attestation key
              (``DeviceKey.attest``). The token says ``assurance: software``.
``tpm``       additionally the log is extended into PCR 23 of a TPM 2.0 and
              a ``TPM2_Quote`` by the TPM-resident AK over the nonce and
              ``sha256:23`` is embedded; the token says ``assurance: tpm``.
"""

from __future__ import annotations

import time
from pathlib import Path

from edgeguard import __version__
from edgeguard.attest.eat import EatClaims, sign_eat
from edgeguard.attest.measure import MeasurementLog, build_log, code_digest, kernel_files
from edgeguard.attest.tpm import ATTEST_PCR, TpmAttester
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.keys import DeviceKey
from edgeguard.errors import IntegrityError, UsageError
from edgeguard.runtime.opener import VerifiedBundle

__all__ = ["SWNAME", "make_evidence", "measure_bundle", "quote_bundle"]

SWNAME = "edgeguard"


def measure_bundle(
    vb: VerifiedBundle,
    *,
    device_profile: str,
    kernel_dirs: list[Path] | None = None,
    code: str | None = None,
) -> MeasurementLog:
    """The measurement log for running ``vb`` on a device with ``device_profile``.

    Args:
        vb: A verified (or opened) bundle.
        device_profile: The device's profile id (measured with its file digest).
        kernel_dirs: Where kernel binaries are looked for (default: the loader's).
        code: Precomputed :func:`~edgeguard.attest.measure.code_digest` (default: compute).
    """
    from edgeguard.devices import profile_digest

    m = vb.manifest
    return build_log(
        code=code if code is not None else code_digest()[0],
        manifest_name=m.name,
        manifest_digest=vb.manifest_digest,
        signer_key_id=vb.signer.key_id,
        members=[(mb.name, mb.digest.value) for mb in m.members],
        sanity=m.sanity,
        policy=m.policy,
        kernels=kernel_files(kernel_dirs),
        device_profile=(device_profile, profile_digest(device_profile)),
    )


def make_evidence(
    log: MeasurementLog,
    *,
    device_key: DeviceKey,
    nonce: bytes,
    tpm: TpmAttester | None = None,
    now: int | None = None,
) -> bytes:
    """Sign ``log`` into an EAT for ``nonce``; with ``tpm``, extend PCR 23 and quote.

    Returns:
        The COSE_Sign1 evidence bytes.

    Raises:
        IntegrityError: The TPM's PCR after extending differs from the replayed log
            (someone else extended PCR 23 meanwhile).
        BackendError: A TPM command failed.
    """
    pcr = log.replay()
    quote = None
    kid = device_key.public.key_id
    if tpm is not None:
        tpm.ak_public(device_key_id=kid)
        tpm_pcr = tpm.measure(log, pcr=ATTEST_PCR)
        if tpm_pcr != pcr:
            raise IntegrityError(
                f"TPM PCR {ATTEST_PCR} does not equal the replayed measurement log "
                "(another process extended it); retry"
            )
        quote = tpm.quote(nonce, device_key_id=kid, pcr=ATTEST_PCR)
    claims = EatClaims(
        nonce=nonce,
        device_key_id=kid,
        hwmodel=device_key.profile,
        swname=SWNAME,
        swversion=__version__,
        iat=int(time.time()) if now is None else now,
        log=log,
        pcr=pcr,
        pcr_index=ATTEST_PCR,
        assurance="tpm" if quote is not None else "software",
        quote=quote,
    )
    return sign_eat(claims, device_key.attest)


def quote_bundle(
    bundle: Path,
    *,
    trust: TrustStore,
    device_key: DeviceKey,
    nonce: bytes,
    tcti: str | None = None,
    state_dir: Path | None = None,
    kernel_dirs: list[Path] | None = None,
) -> bytes:
    """Open ``bundle`` as the runtime would (read-only), measure it and make evidence.

    The bundle goes through every check the device session makes before it starts
    members (:func:`~edgeguard.runtime.session.check_on_device`: signature, signed
    slots, policy, rollback against the state dir without recording, decryption,
    every member digest re-checked, the isolation floor on this host), so the
    measured member digests are those of the plaintext that would run; the
    plaintext is wiped before the evidence is made.

    Args:
        bundle: The bundle file.
        trust: Trusted signer keys.
        device_key: This device's key (recipient, identity, attestation).
        nonce: The verifier's challenge nonce.
        tcti: TPM TCTI string (for example ``swtpm:path=SOCK``); None for software.
        state_dir: Anti-rollback state directory (read only).
        kernel_dirs: Kernel binary directories (default: the loader's).
    """
    from edgeguard.runtime.session import check_on_device

    if len(nonce) != 32:
        raise UsageError("the challenge nonce must be 32 bytes")
    opened = check_on_device(bundle, trust=trust, device_key=device_key, state_dir=state_dir)
    log = measure_bundle(opened, device_profile=device_key.profile, kernel_dirs=kernel_dirs)
    if tcti is None:
        return make_evidence(log, device_key=device_key, nonce=nonce)
    with TpmAttester(tcti) as tpm:
        return make_evidence(log, device_key=device_key, nonce=nonce, tpm=tpm)

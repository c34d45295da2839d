"""The recipe-level Python API (what the CLI calls).

Example::

    from edgeguard import api
    from edgeguard.keystore import load_device_key, load_trust_store

    trust = load_trust_store([Path("signer.pub")])
    device = load_device_key(Path("device.key"))
    with api.open_bundle("model.egb", trust=trust, device_key=device) as session:
        outputs = session.run({"image": frames})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from edgeguard.build.packager import DEFAULT_CHUNK, MemberSource, write_bundle
from edgeguard.bundle.model import Header
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.keys import DeviceKey, DevicePublicKey, SignerKey
from edgeguard.errors import UsageError
from edgeguard.runtime.opener import OpenedBundle, VerifiedBundle, verify_bundle
from edgeguard.runtime.opener import open_bundle as _open

__all__ = ["BundleSession", "build_bundle", "calibrate_profile", "open_bundle", "verify_bundle"]


def build_bundle(
    models: Sequence[Path],
    *,
    out: Path,
    signer: SignerKey,
    recipients: Sequence[DevicePublicKey],
    profiles: Sequence[str],
    version: int,
    name: str | None = None,
    device_ids: Sequence[str] | None = None,
    expires: int | None = None,
    created: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    sanity: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    calibration: Path | None = None,
    target_false_alarm: float = 0.005,
) -> Header:
    """Check ONNX models and package them into a bundle at ``out``.

    The first model is the ``primary`` member; further models are ``member``s.
    With ``calibration`` (an .npz/.npy file or a folder of images), the input
    sanity profile is calibrated on the primary model and embedded in the
    signed manifest.
    """
    from edgeguard.build.onnx_checks import check_onnx_model
    from edgeguard.devices import load_profile

    if not models:
        raise UsageError("give at least one model")
    for prof in profiles:
        load_profile(prof)  # refuses unknown profile names
    sources = []
    for i, path in enumerate(models):
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read model {path}: {exc.strerror or exc}") from exc
        check_onnx_model(data, source=str(path))
        sources.append(
            MemberSource(name=Path(path).stem, data=data, role="primary" if i == 0 else "member")
        )
    if version < 0:
        raise UsageError("--version must be a non-negative integer")
    if calibration is not None:
        if sanity is not None:
            raise UsageError("give either a sanity profile or calibration data, not both")
        primary = sources[0].data
        assert isinstance(primary, bytes)
        sanity = calibrate_profile(primary, calibration, target_false_alarm=target_false_alarm)
    return write_bundle(
        Path(out),
        sources,
        name=name or Path(models[0]).stem,
        version=version,
        signer=signer,
        recipients=recipients,
        profiles=profiles,
        device_ids=device_ids,
        expires=expires,
        created=created,
        chunk_size=chunk_size,
        sanity=sanity,
        policy=policy,
    )


def calibrate_profile(
    model: bytes, data_path: Path, *, target_false_alarm: float = 0.005
) -> dict[str, Any]:
    """Calibrate the input-sanity profile of ``model`` on the data at ``data_path``.

    Returns:
        The profile's dict form, ready for the manifest's ``sanity`` slot.
    """
    import sys

    from edgeguard.backends.onnxruntime import OnnxRuntimeBackend
    from edgeguard.guard.sanity.calibrate import calibrate, load_calibration_data

    with OnnxRuntimeBackend.from_bytes(model) as backend:
        specs = backend.inputs()
    data = load_calibration_data(Path(data_path), specs, limit=None)
    profile = calibrate(
        model, data, target_false_alarm=target_false_alarm, progress=sys.stderr.isatty()
    )
    return profile.to_dict()


@dataclass
class BundleSession:
    """An opened bundle with its primary model loaded into a backend."""

    bundle: OpenedBundle
    backend: Any

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the primary model."""
        result: dict[str, np.ndarray] = self.backend.run(feeds)
        return result

    def close(self) -> None:
        """Release the backend and wipe the decrypted model from memory."""
        self.backend.close()
        self.bundle.wipe()

    def __enter__(self) -> BundleSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_bundle(
    path: Path | str,
    *,
    trust: TrustStore,
    device_key: DeviceKey,
    state_dir: Path | str | None = None,
    now: int | None = None,
) -> BundleSession:
    """Open a bundle (verify, policy, decrypt in memory) and load its primary model."""
    from edgeguard.backends import load_backend

    opened = _open(path, trust=trust, device_key=device_key, state_dir=state_dir, now=now)
    primary = next(m for m in opened.manifest.members if m.role == "primary")
    try:
        backend = load_backend(primary.format, opened.member_bytes(primary.name))
    except BaseException:
        opened.wipe()
        raise
    return BundleSession(bundle=opened, backend=backend)


# Re-exported for the recipe API.
VerifiedBundle = VerifiedBundle

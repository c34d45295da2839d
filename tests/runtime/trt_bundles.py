"""Bundles for the TensorRT test double (tests/runtime/fake_trt.py): kept apart from it,
since sandboxed workers import the double itself and must not import packaging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeguard import data
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.keys import DeviceKey, SignerKey
from edgeguard.packaging.packager import MemberSource, write_bundle
from edgeguard.policy.io import MemberIo, TensorSpec
from edgeguard.policy.runtime import RuntimePolicy
from edgeguard.policy.slots import policy_slot
from edgeguard.runtime.sandbox import SandboxPolicy


def gpu_bundle(
    d: Path,
    recipe: dict[str, Any],
    *,
    cal: tuple[bytes, str] | None = None,
    tag: str = "b",
    device: DeviceKey | None = None,
) -> dict[str, Any]:
    """A digits bundle whose member ``m`` is placed on ``gpu0`` with ``recipe``, for a fresh
    signer and ``device`` (a new one by default); ``cal`` adds an ``aux`` member."""
    signer = SignerKey.generate()
    device = device or DeviceKey.generate("cam-01")
    io_ = MemberIo(
        inputs=(TensorSpec("image", "float32", (None, 1, 8, 8)),),
        outputs=(TensorSpec("logits", "float32", (None, 10)),),
    )
    members = [MemberSource("m", Path(data.model_path("digits_mlp")))]
    if cal is not None:
        members.append(MemberSource("calibration", cal[0], role="aux", format=cal[1]))
    b = d / f"{tag}.egb"
    write_bundle(
        b,
        members,
        name=f"gpu-{tag}",
        version=1,
        signer=signer,
        recipients=[device.public],
        profiles=["generic-cpu"],
        policy=policy_slot(
            runtime=RuntimePolicy.single("m", placement="gpu0"),
            isolation=SandboxPolicy(),
            io={"m": io_},
        ),
        engine_recipe={"format": "edgeguard-engine-recipe/1", "members": {"m": recipe}},
    )
    return {"bundle": b, "trust": TrustStore.of([signer.public]), "device": device}

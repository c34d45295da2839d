"""``edgeguard demo``: the main job end to end on the embedded defaults.

In a temporary directory: make a signer and two device keys, package the real
digits model (trained on scikit-learn's digits), verify the bundle, open it
as the enrolled device and measure accuracy on held-out digits, then show
that a tampered copy, a rollback, a device that is not a recipient, an
untrusted signer, an expired bundle and a device of the wrong profile are each
refused with the documented error class and exit code, and that refusals
leave the anti-rollback state untouched.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeguard.errors import (
    BundleExpiredError,
    DeviceNotAllowedError,
    EdgeguardError,
    IntegrityError,
    NotARecipientError,
    RollbackError,
    UntrustedSignerError,
)

__all__ = ["run_demo"]


@dataclass(frozen=True)
class _Check:
    scenario: str
    expected: type[EdgeguardError]
    got: str
    exit_code: int | None
    ok: bool
    message: str


def _expect_refusal(
    scenario: str, expected: type[EdgeguardError], action: Callable[[], object]
) -> _Check:
    try:
        action()
    except EdgeguardError as exc:
        return _Check(
            scenario,
            expected,
            type(exc).__name__,
            exc.exit_code,
            isinstance(exc, expected),
            exc.one_line(),
        )
    return _Check(scenario, expected, "accepted", None, False, "was NOT refused")


def _state_files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("*")) if p.is_file()}


def _show_sanity(console: Any, session: Any, images: np.ndarray) -> bool:
    """Feed clean held-out frames and corrupted copies through the session, one by one."""
    from rich.table import Table

    from edgeguard.errors import InputRejectedError

    rng = np.random.default_rng(7)
    frames = [images[i : i + 1] for i in range(len(images))]

    def rejected(frame: np.ndarray) -> bool:
        try:
            session.run({"image": frame})
        except InputRejectedError:
            return True
        return False

    def rate(make: Callable[[np.ndarray], np.ndarray]) -> float:
        return sum(rejected(make(f)) for f in frames) / len(frames)

    def nan(f: np.ndarray) -> np.ndarray:
        g: np.ndarray = f.copy()
        g[0, 0, rng.integers(8), rng.integers(8)] = np.nan
        return g

    cases: list[tuple[str, Callable[[np.ndarray], np.ndarray], bool]] = [
        ("clean held-out frames", lambda f: f, False),
        ("one NaN pixel (upstream filter fault)", nan, True),
        ("wrong scale: 0..255 instead of 0..1", lambda f: f * 255.0, True),
        ("dead sensor (all zeros)", lambda f: np.zeros_like(f), True),
        (
            "noise sigma 0.3, unclipped",
            lambda f: f + rng.normal(0, 0.3, f.shape).astype(f.dtype),
            True,
        ),
        ("wrong dtype (float64 frames)", lambda f: f.astype(np.float64), True),
    ]
    table = Table(
        title=f"{len(frames)} held-out frames through the session (signed contract and profile)"
    )
    table.add_column("input")
    table.add_column("rejected", justify="right")
    ok = True
    for label, make, corrupt in cases:
        r = rate(make)
        ok &= r >= 0.95 if corrupt else r <= 0.01
        table.add_row(label, f"{r:.1%}")
    console.print(table)
    return ok


def run_demo(*, workdir: Path | None = None, keep: bool = False) -> int:
    """Run the demo; returns 0 when every step behaved as expected."""
    from rich.console import Console
    from rich.table import Table

    from edgeguard import data
    from edgeguard.api import build_bundle, open_session
    from edgeguard.bundle.verify import TrustStore
    from edgeguard.crypto.keys import DeviceKey, SignerKey
    from edgeguard.keystore import (
        load_device_key,
        load_device_public,
        load_signer_key,
        load_trust_store,
        write_keypair,
    )
    from edgeguard.runtime.opener import verify_bundle

    console = Console(highlight=False)
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="edgeguard-demo-"))
    tmp.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]edgeguard demo")
    console.print(f"working directory: {tmp}" + ("" if keep else " (removed at the end)"))
    try:
        keys, state = tmp / "keys", tmp / "device-state"
        keys.mkdir(exist_ok=True)

        # 1. Keys -----------------------------------------------------------
        t0 = time.perf_counter()
        write_keypair(SignerKey.generate(), keys / "signer.key", keys / "signer.pub")
        write_keypair(
            DeviceKey.generate("cam-01", profile="generic-cpu"),
            keys / "cam-01.key",
            keys / "cam-01.pub",
        )
        write_keypair(
            DeviceKey.generate("cam-02", profile="generic-cpu"),
            keys / "cam-02.key",
            keys / "cam-02.pub",
        )
        write_keypair(
            DeviceKey.generate("orin-01", profile="jetson-agx-orin"),
            keys / "orin-01.key",
            keys / "orin-01.pub",
        )
        write_keypair(SignerKey.generate(), keys / "mallory.key", keys / "mallory.pub")
        signer = load_signer_key(keys / "signer.key")
        cam01 = load_device_key(keys / "cam-01.key")
        trust = load_trust_store([keys / "signer.pub"])
        console.print(
            f"[bold]1. keys[/]  signer {signer.public.key_id.hex()[:16]}… "
            "(ECDSA P-256 + ML-DSA-65); devices cam-01, cam-02 (generic-cpu) and orin-01 "
            "(jetson-agx-orin), HPKE ML-KEM-768+X25519; "
            f"{(time.perf_counter() - t0) * 1e3:.0f} ms"
        )

        # 2. Build ------------------------------------------------------------
        model = data.model_path("digits_mlp")
        info = data.models_info()
        bundle = tmp / "digits-v2.egb"
        t0 = time.perf_counter()
        build_bundle(
            [model],
            out=bundle,
            signer=signer,
            recipients=[cam01.public, load_device_public(keys / "orin-01.pub")],
            profiles=["generic-cpu"],
            version=2,
            name="digits",
            expires=int(time.time()) + 30 * 86400,
            calibration=data.split_path("calib"),
        )
        console.print(
            f"[bold]2. build[/]  {model.name} ({model.stat().st_size} bytes) -> {bundle.name} "
            f"({bundle.stat().st_size} bytes, encrypted for cam-01 and orin-01, profile "
            f"generic-cpu, v2, expires in 30 days, input-sanity profile calibrated on "
            f"{data.load_split('calib')[0].shape[0]} frames and signed); "
            f"{(time.perf_counter() - t0) * 1e3:.0f} ms"
        )

        # 3. Verify -------------------------------------------------------------
        vb = verify_bundle(bundle, trust=trust)
        console.print(
            f"[bold]3. verify[/]  signature (both halves), length and payload digest OK; "
            f"manifest sha256 {vb.manifest_digest.hex()[:16]}…"
        )

        # 4. Open and run on held-out data -----------------------------------------
        images, labels = data.load_split("test")
        t0 = time.perf_counter()
        with open_session(bundle, trust=trust, device_key=cam01, state_dir=state) as session:
            t1 = time.perf_counter()
            logits = session.run({"image": images})["logits"]
            t2 = time.perf_counter()
            accuracy = float(np.mean(np.argmax(logits, axis=1) == labels))
            trained = info.get("models", {}).get("digits_mlp", {}).get("test_accuracy")
            console.print(
                f"[bold]4. run on cam-01[/]  opened in {(t1 - t0) * 1e3:.0f} ms (decrypted "
                f"in memory, model in a sandboxed worker: {session.isolation}); "
                f"{len(labels)} held-out digits in {(t2 - t1) * 1e3:.1f} ms; accuracy "
                f"[bold]{accuracy:.2%}[/]"
                + (f" (training script measured {trained:.2%})" if trained else "")
            )
            accuracy_ok = accuracy >= 0.95
            sanity_ok = _show_sanity(console, session, images)

        # 5. Refusals ---------------------------------------------------------------
        state_before = _state_files(state)
        tampered = tmp / "tampered.egb"
        raw = bytearray(bundle.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        tampered.write_bytes(bytes(raw))
        old = tmp / "digits-v1.egb"
        build_bundle(
            [model],
            out=old,
            signer=signer,
            recipients=[cam01.public],
            profiles=["generic-cpu"],
            version=1,
            name="digits",
        )
        mallory = tmp / "mallory.egb"
        build_bundle(
            [model],
            out=mallory,
            signer=load_signer_key(keys / "mallory.key"),
            recipients=[cam01.public],
            profiles=["generic-cpu"],
            version=3,
            name="digits",
        )
        expired = tmp / "expired.egb"
        now = int(time.time())
        build_bundle(
            [model],
            out=expired,
            signer=signer,
            recipients=[cam01.public],
            profiles=["generic-cpu"],
            version=4,
            name="digits",
            created=now - 7200,
            expires=now - 3600,
        )
        orin = load_device_key(keys / "orin-01.key")
        cam02 = load_device_key(keys / "cam-02.key")

        def opener(path: Path, key: DeviceKey, ts: TrustStore = trust) -> Callable[[], object]:
            def attempt() -> None:
                open_session(path, trust=ts, device_key=key, state_dir=state).close()

            return attempt

        checks = [
            _expect_refusal(
                "tampered copy (1 bit flipped)", IntegrityError, opener(tampered, cam01)
            ),
            _expect_refusal("rollback to v1 after v2", RollbackError, opener(old, cam01)),
            _expect_refusal(
                "wrong device (cam-02, not a recipient)", NotARecipientError, opener(bundle, cam02)
            ),
            _expect_refusal(
                "wrong device profile (orin-01 is jetson-agx-orin)",
                DeviceNotAllowedError,
                opener(bundle, orin),
            ),
            _expect_refusal(
                "signed by an untrusted key", UntrustedSignerError, opener(mallory, cam01)
            ),
            _expect_refusal("expired bundle", BundleExpiredError, opener(expired, cam01)),
        ]
        unchanged = _state_files(state) == state_before
        table = Table(title="5. what must be refused")
        for col in ("scenario", "refused with", "exit", "as expected"):
            table.add_column(col)
        for c in checks:
            table.add_row(
                c.scenario,
                c.got,
                str(c.exit_code),
                "[green]yes[/]" if c.ok else f"[red]NO (expected {c.expected.__name__})[/]",
            )
        console.print(table)
        for c in checks:
            console.print(f"  {c.scenario}: edgeguard: error: {c.message}", soft_wrap=True)
        console.print(
            "anti-rollback state after the refusals: "
            + ("[green]unchanged[/]" if unchanged else "[red]CHANGED[/]")
        )
        ok = accuracy_ok and sanity_ok and unchanged and all(c.ok for c in checks)
        console.rule(
            "[bold green]demo passed: every step behaved as expected"
            if ok
            else "[bold red]demo FAILED: see the rows marked NO above"
        )
        return 0 if ok else 1
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)

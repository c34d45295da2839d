"""A camera-style frame loop: a packaged ensemble under the guard, faults injected live.

    python examples/camera_loop.py [--fps 30] [--frames 300]

What it does, in a temporary directory:
1. makes a signer and a device key;
2. packages the digits classifier (trained on scikit-learn's digits) as an ensemble: fp32, fp16
   and int8 variants, the logistic-regression model as fallback, a calibrated input-sanity
   profile, a 30 ms deadline and a safe default, all signed into one bundle;
3. opens it as the device and feeds the held-out digits as a "camera" at a fixed frame rate,
   showing the health state live, while this schedule of faults is injected:
   - frames 60-100: the fp16 member hangs (a stuck accelerator);
   - frames 80-110: the int8 member crashes on every call;
   - frames 130-145: the camera freezes (the same frame again and again);
   - frames 170-175: NaNs from an upstream filter;
   - frames 200-215: the driver delivers 0..255 instead of 0..1;
4. prints where every answer came from (ensemble, surviving quorum, fallback model,
   last-known-good, safe default), accuracy per source, deadline misses and the health
   transitions, then verifies the signed event log.

Every frame is answered by its deadline. Note: with a digit "camera" every frame shows a new
digit, so a last-known-good answer is stale by construction; on a real camera consecutive frames
agree and last-known-good is the useful short-term fallback it is meant to be.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console

from edgeguard import api, data
from edgeguard.api import EnsembleOptions, open_session
from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.keys import DeviceKey, SignerKey
from edgeguard.fieldtest.faults import FaultClock, FaultyExecutor, parse_faults
from edgeguard.fieldtest.frameloop import print_report, run_frame_loop
from edgeguard.guard.eventlog import verify as verify_log

SCHEDULE = (
    "hang:digits_mlp-fp16@60-100,crash:digits_mlp-int8@80-110,"
    "freeze@130-145,nan@170-175,scale255@200-215"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--inject", default=SCHEDULE)
    args = ap.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="edgeguard-camera-") as td:
        d = Path(td)
        signer, device = SignerKey.generate(), DeviceKey.generate("cam-01")
        np.savez(d / "safe.npz", logits=np.zeros((1, 10), np.float32))
        console.print("[bold]packaging[/] fp32/fp16/int8 ensemble + fallback + sanity profile…")
        api.build_bundle(
            [data.model_path("digits_mlp")],
            out=d / "camera.egb",
            signer=signer,
            recipients=[device.public],
            profiles=["generic-cpu"],
            version=1,
            calibration=data.split_path("calib"),
            ensemble=EnsembleOptions(
                variants=("fp32", "fp16", "int8"),
                fallback=data.model_path("digits_logreg"),
                voter="plurality",
                deadline_ms=30.0,
                safe_default=d / "safe.npz",
            ),
        )
        images, labels = data.load_split("test")
        reps = -(-args.frames // len(images))
        frames = np.concatenate([images] * reps)[: args.frames]
        truth = np.concatenate([labels] * reps)[: args.frames]
        clock = FaultClock()
        faults = parse_faults(
            args.inject, members=["digits_mlp-fp32", "digits_mlp-fp16", "digits_mlp-int8"]
        )
        console.print(
            f"[bold]serving[/] {args.frames} frames at {args.fps:g} fps; faults: {args.inject}"
        )
        with open_session(
            d / "camera.egb",
            trust=TrustStore.of([signer.public]),
            device_key=device,
            state_dir=d / "state",
            executor_wrapper=lambda ex: FaultyExecutor(ex, faults, clock),
        ) as session:
            report = run_frame_loop(
                session,
                frames,
                input_name="image",
                fps=args.fps,
                labels=truth,
                faults=faults,
                clock=clock,
                console=console,
            )
        print_report(console, report)
        log = verify_log(d / "state" / "events.log", device.public.attest, require_clean=True)
        console.print(
            f"event log: {log.records} records, {log.checkpoints} signed checkpoints, "
            f"status {log.status}; kinds: "
            + ", ".join(f"{k}={v}" for k, v in sorted(log.kinds.items()))
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

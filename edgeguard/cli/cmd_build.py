"""``edgeguard build``: package ONNX models into an encrypted, signed bundle."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeguard.cli._common import (
    add_calibration_args,
    add_passphrase_arg,
    calibration_options,
    parse_time,
    passphrase,
    print_calibration_report,
    warn_image_folder,
)


def register(sub: Any) -> None:
    """Add the ``build`` parser."""
    p = sub.add_parser(
        "build",
        help="package a model into an encrypted, signed bundle",
        description=(
            "Check the ONNX model, encrypt it with a fresh data key (AES-256-GCM STREAM), "
            "wrap the key to every --recipient device with HPKE, and sign the header with "
            "the hybrid signer key. The output is written atomically. Also writes the signed "
            "reference values for `edgeguard attest verify` to OUT.egb.rv.json."
        ),
    )
    p.add_argument(
        "models",
        type=Path,
        nargs="+",
        metavar="MODEL.onnx",
        help="the primary model, then any further ensemble members",
    )
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.egb")
    p.add_argument("--sign-key", type=Path, required=True, metavar="signer.key")
    p.add_argument(
        "--recipient",
        type=Path,
        action="append",
        required=True,
        metavar="device.pub",
        help="a device that may open the bundle (repeat for a fleet)",
    )
    p.add_argument(
        "--device-profile",
        action="append",
        required=True,
        metavar="NAME",
        help="an allowed device profile (repeat to allow several; see `edgeguard devices list`)",
    )
    p.add_argument(
        "--device-id",
        action="append",
        metavar="ID",
        help="restrict the bundle to these device ids (repeatable; default: any recipient)",
    )
    p.add_argument("--version", type=int, required=True, metavar="N", help="release version")
    p.add_argument("--name", help="bundle name (default: the model file's stem)")
    p.add_argument("--expires", metavar="ISO8601", help="expiry date-time (UTC if no zone)")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=1 << 20,
        metavar="BYTES",
        help="STREAM chunk size, a power of two from 65536 to 1048576 (default 1048576)",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        metavar="DATA",
        help=(
            "calibrate the input-sanity profile on this data (.npz keyed by input name, .npy, "
            "or a folder of images) and embed it in the signed manifest; or give a profile "
            ".json written by edgeguard calibrate for this model"
        ),
    )
    add_calibration_args(p)
    g = p.add_argument_group(
        "ensemble and runtime policy (signed into the manifest)",
        "Giving any of these, or more than one model, makes the bundle an ensemble that "
        "`edgeguard run` serves through the guarded runtime.",
    )
    g.add_argument(
        "--variants",
        metavar="fp32,fp16,int8",
        help=(
            "derive precision-diverse variants of each model; fp16 and int8 are measured "
            "against fp32 on the --calibration data and refused below --min-agreement"
        ),
    )
    g.add_argument(
        "--task",
        choices=["auto", "classifier", "detector", "map", "regression"],
        default="auto",
        help=(
            "what the model computes, which decides how a variant's agreement is measured: "
            "top-1 (classifier), box F1 at IoU 0.5 of YOLOv8-style [N, 4+classes, anchors] "
            "outputs (detector), pixel IoU at 0.5 (map), share of values within 1%% of the "
            "output's range (regression); auto (default) reads the fp32 outputs: [N, C] -> "
            "classifier, [N, 4+k, A] -> detector, [N, C, H, W] in [0, 1] -> map, else regression"
        ),
    )
    g.add_argument(
        "--min-agreement",
        type=float,
        metavar="VALUE",
        help=(
            "refuse a variant whose agreement with fp32 is below VALUE (0..1; default per "
            "metric: top1 0.98, box_f1 0.9, pixel_iou 0.9, within_1pct 0.99)"
        ),
    )
    g.add_argument("--fallback", type=Path, metavar="SMALL.onnx", help="a smaller fallback model")
    g.add_argument(
        "--voter",
        choices=["plurality", "majority", "soft", "median", "mid_value", "boxes"],
        help="how member outputs are combined (default: plurality for a classifier, else "
        "median, element by element, on every output)",
    )
    g.add_argument("--quorum", type=int, metavar="K", help="members needed (default majority)")
    g.add_argument(
        "--deadline-ms",
        default="auto",
        metavar="D|auto",
        help="per-frame deadline in ms; auto (default) measures every member on this host "
        "(one frame of the calibration data, one thread) and takes 4x the slowest; the "
        "device re-measures at start and warns when it is slower",
    )
    g.add_argument(
        "--last-good-max-age-ms",
        type=float,
        metavar="MS",
        help="oldest last-known-good answer the fallback chain may serve (default 200)",
    )
    g.add_argument(
        "--safe-default",
        type=Path,
        metavar="SAFE.npz",
        help="outputs served when everything else fails (keyed by output name)",
    )
    g.add_argument(
        "--require-isolation",
        action="append",
        default=[],
        metavar="LAYER",
        help=(
            "isolation layer the device must apply to the members or refuse to start "
            "(seccomp, landlock, netns, rlimits, cgroup; repeatable; others are best effort)"
        ),
    )
    g.add_argument(
        "--model-switching",
        action="store_true",
        help="serve each request from one healthy member chosen at random (moving target)",
    )
    g.add_argument("--top-k", type=int, metavar="K", help="output hardening: keep the top K scores")
    g.add_argument(
        "--round",
        dest="decimals",
        type=int,
        metavar="D",
        help="output hardening: round to D decimals",
    )
    g.add_argument(
        "--rate-limit",
        metavar="RATE[/BURST]",
        help="per-client requests per second (and burst) for devices exposing an inference API",
    )
    g.add_argument(
        "--placement",
        action="append",
        default=[],
        metavar="MEMBER=WHERE",
        help=(
            "where a member runs: cpu, cpu:LIST (pinned to those cores, e.g. cpu:0-3), "
            "gpuN or dlaN (repeatable; default: from the device profile)"
        ),
    )
    add_passphrase_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the bundle."""
    from edgeguard.api import EnsembleOptions, VariantChecks, build_bundle
    from edgeguard.keystore import load_device_public, load_signer_key

    signer = load_signer_key(args.sign_key, passphrase=passphrase(args))
    recipients = [load_device_public(p) for p in args.recipient]
    ensemble = EnsembleOptions(
        variants=tuple(v.strip() for v in args.variants.split(",")) if args.variants else (),
        fallback=args.fallback,
        voter=args.voter,
        quorum=args.quorum,
        deadline_ms=_deadline(args.deadline_ms),
        last_good_max_age_ms=args.last_good_max_age_ms,
        safe_default=args.safe_default,
        require_isolation=tuple(args.require_isolation),
        model_switching=args.model_switching,
        top_k=args.top_k,
        decimals=args.decimals,
        rate_limit=_rate(args.rate_limit),
        placements=tuple(_placement(t) for t in args.placement),
    )
    checks = VariantChecks(task=args.task, min_agreement=args.min_agreement)
    warn_image_folder(args.calibration)
    notes: list[str] = []
    with _Progress() as progress:
        header = build_bundle(
            args.models,
            out=args.output,
            signer=signer,
            recipients=recipients,
            profiles=args.device_profile,
            device_ids=args.device_id,
            version=args.version,
            name=args.name,
            expires=None if args.expires is None else parse_time(args.expires),
            chunk_size=args.chunk_size,
            calibration=args.calibration,
            calibration_options=calibration_options(args),
            on_calibration=print_calibration_report,
            ensemble=ensemble,
            on_plan=lambda plan: notes.extend(
                [plan.deadline_note, *(f"warning: {w}" for w in plan.warnings)]
            ),
            progress=progress.update,
            variant_checks=checks,
        )
    from edgeguard.attest.reference import write_reference_values

    rv = write_reference_values(args.output, signer=signer)
    m = header.manifest
    print(
        f"wrote {args.output}: {m.name} v{m.version}, {len(m.members)} member(s), "
        f"{len(header.recipients)} recipient(s), signer {m.signer.hex()[:16]}…"
        + (", sanity profile embedded" if m.sanity is not None else "")
        + (", runtime policy embedded" if m.policy is not None else "")
    )
    for member in m.members:
        print(f"  {member.role:8} {member.name} ({member.size} bytes)")
    for note in notes:
        print(note)
    print_variants(m)
    print(f"reference values for attestation: {rv}")
    return 0


def print_variants(manifest: Any) -> None:
    """The signed agreement of every precision variant, as a table (nothing without any)."""
    from rich.console import Console
    from rich.table import Table

    from edgeguard.policy.slots import read_slots

    checks = read_slots(manifest).variants
    if not checks:
        return
    sizes = {x.name: x.size for x in manifest.members}
    t = Table(title="precision variants (signed agreement with the fp32 member)")
    for col in ("member", "kind", "size", "metric", "value", "threshold", "frames", "error"):
        t.add_column(col, justify="right" if col in ("size", "value", "frames") else "left")
    refs = sorted({c.reference for c in checks.values()})
    for ref in refs:
        t.add_row(ref, "fp32", _size(sizes.get(ref, 0)), "reference", "", "", "", "")
        for name, c in sorted(checks.items()):
            if c.reference != ref:
                continue
            size = sizes.get(name, 0)
            share = f" ({size / sizes[ref]:.0%})" if sizes.get(ref) else ""
            t.add_row(
                name,
                c.kind,
                _size(size) + share,
                c.metric,
                f"{c.value:.4f}",
                f">= {c.threshold:g}",
                str(c.frames),
                ", ".join(f"{k} {v:.3g}" for k, v in c.extra),
            )
    Console(width=120).print(t)


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


class _Progress:
    """A rich progress bar on stderr for the long steps of a build (quiet when piped)."""

    def __init__(self) -> None:
        import sys

        from rich.progress import Progress

        self._bar = Progress(transient=True, disable=not sys.stderr.isatty())
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> _Progress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def update(self, step: str, done: int, total: int) -> None:
        if step not in self._tasks:
            self._tasks[step] = self._bar.add_task(step, total=total)
        self._bar.update(self._tasks[step], completed=done, total=total)


def _deadline(text: str) -> float | None:
    """``auto`` (None: measured) or a positive number of milliseconds."""
    from edgeguard.errors import UsageError

    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise UsageError(f"--deadline-ms {text!r}: give milliseconds or auto") from exc
    if not value > 0:
        raise UsageError("--deadline-ms must be positive")
    return value


def _rate(text: str | None) -> tuple[float, int] | None:
    """``RATE`` or ``RATE/BURST`` (burst defaults to the rate, at least 1)."""
    from edgeguard.errors import UsageError

    if text is None:
        return None
    try:
        rate_s, _, burst_s = text.partition("/")
        rate = float(rate_s)
        burst = int(burst_s) if burst_s else max(1, int(rate))
    except ValueError as exc:
        raise UsageError(f"--rate-limit {text!r}: expected RATE or RATE/BURST") from exc
    if rate <= 0 or burst < 1:
        raise UsageError("--rate-limit needs a positive rate and a burst of at least 1")
    return rate, burst


def _placement(text: str) -> tuple[str, str]:
    """``MEMBER=WHERE``."""
    from edgeguard.errors import UsageError

    name, eq, where = text.partition("=")
    if not eq or not name or not where:
        raise UsageError(f"--placement {text!r} is not MEMBER=WHERE (e.g. m-fp32=cpu:0-1)")
    return name, where

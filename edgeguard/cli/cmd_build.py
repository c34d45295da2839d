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
    _add_engine_args(p)
    add_passphrase_arg(p)
    p.set_defaults(func=run)


def _add_engine_args(p: Any) -> None:
    """The TensorRT engine options, with trtexec's names (docs/tensorrt.md)."""
    e = p.add_argument_group(
        "TensorRT engine recipe (signed into the manifest; docs/tensorrt.md)",
        "Giving any of these gives every member placed on a GPU or DLA a signed recipe: "
        "how the device builds its TensorRT engine. Names and syntax follow trtexec.",
    )
    e.add_argument("--fp16", action="store_true", help="allow fp16 kernels")
    e.add_argument(
        "--int8",
        action="store_true",
        help="allow int8 kernels; up to 32 of the --calibration frames travel encrypted in "
        "the bundle for the device's INT8 calibration",
    )
    e.add_argument("--best", action="store_true", help="allow every precision (int8 included)")
    e.add_argument(
        "--useDLACore",
        "--use-dla-core",
        dest="dla_core",
        type=int,
        metavar="N",
        help="build for DLA core N: members on a GPU or DLA without --placement run on dlaN",
    )
    e.add_argument(
        "--allowGPUFallback",
        "--allow-gpu-fallback",
        dest="allow_gpu_fallback",
        action="store_true",
        help="layers the DLA cannot run go to the GPU",
    )
    e.add_argument(
        "--memPoolSize",
        "--mem-pool-size",
        dest="mem_pool",
        metavar="workspace:SIZE",
        help="builder workspace; SIZE in MiB, or with a B, K, M or G suffix (base 2)",
    )
    for flag, what in (("min", "smallest"), ("opt", "tuned-for"), ("max", "largest")):
        e.add_argument(
            f"--{flag}Shapes",
            f"--{flag}-shapes",
            dest=f"{flag}_shapes",
            metavar="IN:DxDx..[,..]",
            help=f"{what} shape of each dynamic input, e.g. images:1x3x640x640 "
            "('in:0':1x3x224x224 for a name with colons)",
        )
    e.add_argument(
        "--builderOptimizationLevel",
        "--builder-optimization-level",
        dest="opt_level",
        type=int,
        metavar="0-5",
        help="TensorRT's builder optimisation level (default 3)",
    )
    e.add_argument(
        "--timingCacheFile",
        "--timing-cache-file",
        dest="timing_cache",
        type=Path,
        metavar="PATH",
        help="the device keeps a sealed timing cache; with --engine-on-this-host this "
        "host's cache is read from and written to PATH",
    )
    e.add_argument(
        "--versionCompatible",
        "--version-compatible",
        dest="version_compatible",
        action="store_true",
        help="build version-compatible plans (later TensorRT of the same major runs them)",
    )
    e.add_argument(
        "--hardwareCompatibilityLevel",
        "--hardware-compatibility-level",
        dest="hw_level",
        choices=["none", "ampere+", "same_compute_capability"],
        metavar="LEVEL",
        help="GPUs a plan runs on besides the builder's model: none (default), ampere+ or "
        "same_compute_capability",
    )
    e.add_argument(
        "--allowEngineHostCode",
        "--allow-engine-host-code",
        dest="engine_host_code",
        action="store_true",
        help="let plans carry host code that runs when they load (off by default)",
    )
    e.add_argument(
        "--engine-on-this-host",
        dest="engine_on_this_host",
        action="store_true",
        help="build the plans here with TensorRT (needs the trt extra and a GPU of the "
        "first --device-profile's kind) and embed them, tagged, next to the ONNX members",
    )


def engine_options(args: argparse.Namespace) -> Any:
    """The :class:`~edgeguard.packaging.engines.EngineOptions` of the parsed arguments."""
    from edgeguard.packaging.engines import EngineOptions, parse_mem_pool, parse_shapes

    def shapes(text: str | None, flag: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return () if text is None else parse_shapes(text, flag)

    return EngineOptions(
        fp16=args.fp16,
        int8=args.int8,
        best=args.best,
        dla_core=args.dla_core,
        allow_gpu_fallback=args.allow_gpu_fallback,
        workspace_bytes=None if args.mem_pool is None else parse_mem_pool(args.mem_pool),
        min_shapes=shapes(args.min_shapes, "--minShapes"),
        opt_shapes=shapes(args.opt_shapes, "--optShapes"),
        max_shapes=shapes(args.max_shapes, "--maxShapes"),
        builder_optimization_level=args.opt_level,
        timing_cache_file=args.timing_cache,
        version_compatible=args.version_compatible,
        hardware_compatibility_level=args.hw_level,
        engine_host_code=args.engine_host_code,
        on_this_host=args.engine_on_this_host,
    )


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
    engine = engine_options(args)
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
            engine=engine,
            on_note=notes.append,
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
    print_engine_recipe(m)
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


def print_engine_recipe(manifest: Any) -> None:
    """One line per member with an engine recipe, one per prebuilt plan (nothing without)."""
    from edgeguard.policy.slots import read_slots

    engines = read_slots(manifest).engines
    if engines is None:
        return
    for name, r in sorted(engines.members.items()):
        print(f"  engine recipe {name}: {recipe_summary(r)}")
    for tag in engines.prebuilt:
        print(
            f"  prebuilt plan {tag.member} for {tag.for_member}: TensorRT {tag.tensorrt}, "
            f"{tag.gpu_name} (compute capability {tag.compute_capability}), profile "
            f"{tag.device_profile}"
        )


def recipe_summary(r: Any) -> str:
    """A member recipe in one line, trtexec-style."""
    parts = [f"dla{r.dla_core}" if r.dla_core is not None else "gpu"]
    parts += [p for p, on in (("fp16", r.fp16), ("int8", r.int8), ("best", r.best)) if on]
    if r.allow_gpu_fallback:
        parts.append("gpu fallback")
    if r.workspace_bytes is not None:
        parts.append(f"workspace {r.workspace_bytes >> 20} MiB")
    for s in r.shapes:
        dims = ["x".join(map(str, d)) for d in (s.min, s.opt, s.max)]
        same = dims[0] == dims[1] == dims[2]
        parts.append(f"{s.input} " + (dims[0] if same else f"{dims[0]}..{dims[1]}..{dims[2]}"))
    if r.builder_optimization_level != 3:
        parts.append(f"opt level {r.builder_optimization_level}")
    if r.version_compatible:
        parts.append("version-compatible")
    if r.hardware_compatibility_level != "none":
        parts.append(f"hardware {r.hardware_compatibility_level}")
    if r.engine_host_code_allowed:
        parts.append("host code allowed")
    if r.timing_cache:
        parts.append("timing cache")
    if r.int8_calibration_member:
        parts.append(f"calibration {r.int8_calibration_member}")
    return ", ".join(parts)


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

"""``edgeguard inspect``: show a bundle's header without any secret."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeguard.cli._common import emit_json, iso_time


def register(sub: Any) -> None:
    """Add the ``inspect`` parser."""
    p = sub.add_parser(
        "inspect",
        help="show a bundle's manifest (no keys needed; does NOT verify)",
        description=(
            "Parse a bundle and print its manifest, recipients and payload layout. "
            "Nothing is verified: use `edgeguard verify` for that."
        ),
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE.egb")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.set_defaults(func=run)


def describe(prefix: Any) -> dict[str, Any]:
    """A JSON-compatible description of a parsed prefix."""
    h = prefix.header
    m = h.manifest
    return {
        "verified": False,
        "format": 1,
        "name": m.name,
        "version": m.version,
        "created": iso_time(m.created),
        "expires": iso_time(m.expires),
        "signer_key_id": m.signer.hex(),
        "signature_alg": prefix.signature.alg,
        "devices": {"profiles": list(m.devices.profiles), "ids": m.devices.device_ids},
        "members": [
            {
                "name": x.name,
                "role": x.role,
                "format": x.format,
                "size": x.size,
                "sha256": x.digest.value.hex(),
            }
            for x in m.members
        ],
        "recipients": [{"key_id": r.key_id.hex(), "kem": r.kem} for r in h.recipients],
        "payload": {
            "aead": h.payload.aead,
            "chunk_size": h.payload.chunk_size,
            "size": h.payload.size,
            "sha256": h.payload.digest.value.hex(),
            "offset": prefix.payload_offset,
        },
        "slots": {
            "sanity": m.sanity is not None,
            "policy": m.policy is not None,
            "engine_recipe": m.engine_recipe is not None,
        },
        "runtime": _runtime_summary(m.policy),
        **_typed_slots(m),
        "tool": m.tool,
    }


def _typed_slots(m: Any) -> dict[str, Any]:
    """The I/O contracts and isolation requirements, or why the slots do not parse."""
    from edgeguard.errors import MalformedError
    from edgeguard.policy.slots import read_slots

    try:
        slots = read_slots(m)
    except MalformedError as exc:
        return {"slots_error": str(exc)}
    return {
        "io": {name: io.to_dict() for name, io in slots.io.items()},
        "isolation": {
            "required": list(slots.isolation.required_layers()),
            "policy": slots.isolation.to_dict(),
        },
        "sanity_inputs": [p.name for p in slots.sanity.inputs] if slots.sanity else [],
        "sanity_unchecked": list(slots.sanity.unchecked) if slots.sanity else [],
        "variants": {name: c.to_dict() for name, c in sorted(slots.variants.items())},
        "engine_recipe": None if slots.engines is None else slots.engines.to_dict(),
    }


def _runtime_summary(policy: Any) -> dict[str, Any] | None:
    """The runtime policy's main fields as the manifest holds them (not validated here)."""
    rt = policy.get("runtime") if isinstance(policy, dict) else None
    if not isinstance(rt, dict):
        return None
    raw_voter, raw_members = rt.get("voter"), rt.get("members")
    voter: dict[str, Any] = raw_voter if isinstance(raw_voter, dict) else {}
    members: list[Any] = raw_members if isinstance(raw_members, list) else []
    return {
        "voter": voter.get("kind"),
        "output": voter.get("output"),
        "quorum": rt.get("quorum"),
        "deadline_ms": rt.get("deadline_ms"),
        "fallback_chain": rt.get("fallback_chain"),
        "placement": {
            str(x.get("name")): str(x.get("placement", "cpu"))
            for x in members
            if isinstance(x, dict)
        },
    }


def run(args: argparse.Namespace) -> int:
    """Print the description."""
    from edgeguard.errors import UsageError
    from edgeguard.runtime.opener import read_prefix

    try:
        f = open(args.bundle, "rb")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot read bundle {args.bundle}: {exc.strerror}") from exc
    with f:
        prefix, _ = read_prefix(f)
    d = describe(prefix)
    if args.json:
        emit_json(d)
        return 0
    import time

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    c = Console()
    title = f"[bold]{escape(d['name'])}[/] v{d['version']}"
    c.print(f"{title}  (format 1, [yellow]signature not verified[/])")
    expired = prefix.header.manifest.expires is not None and (
        prefix.header.manifest.expires <= time.time()
    )
    c.print(
        f"created {d['created']}  expires {d['expires'] or 'never'}"
        + ("  [red](expired)[/]" if expired else "")
    )
    c.print(f"signer  {d['signer_key_id']}  ({d['signature_alg']})")
    ids = d["devices"]["ids"]
    c.print(f"devices profiles={', '.join(d['devices']['profiles'])} ids={ids or 'any recipient'}")
    rt = d["runtime"]
    where = rt["placement"] if rt else {}
    t = Table(title="members (sha256 prefix; --json for the full digests)")
    for col in ("name", "role", "format", "size", "sha256", *(("placement",) if rt else ())):
        t.add_column(col, overflow="fold")
    uses = _engine_uses(d.get("engine_recipe"))
    for x in d["members"]:
        row = [escape(x["name"]), x["role"], x["format"], str(x["size"]), x["sha256"][:16] + "…"]
        if rt:
            other = "cpu, unpinned" if x["role"] == "fallback" else uses.get(x["name"], "-")
            row.append(escape(where.get(x["name"], other)))
        t.add_row(*row)
    c.print(t)
    if rt:
        chain = rt["fallback_chain"]
        steps = " -> ".join(map(str, chain)) if isinstance(chain, list) else "?"
        if rt["voter"] == "passthrough":
            c.print(
                f"runtime policy: one model, its answer as is; deadline {rt['deadline_ms']:g} ms"
                + ("" if chain == ["ensemble"] else f"; chain {steps}")
            )
        else:
            voter = rt["voter"] if not rt["output"] else f"{rt['voter']} on {rt['output']}"
            c.print(
                f"runtime policy: voter {escape(str(voter))}, quorum {rt['quorum']} of "
                f"{len(where)}, deadline {rt['deadline_ms']:g} ms, chain {steps}"
            )
    if "slots_error" in d:
        c.print(f"[red]signed slots do not parse[/]: {d['slots_error']}")
    else:
        io = Table(title="I/O contracts (signed; ? = dynamic axis)")
        for col in ("member", "inputs", "outputs", "precisions"):
            io.add_column(col, overflow="fold")
        for name, contract in d["io"].items():
            io.add_row(
                escape(name),
                "\n".join(_tensor(t) for t in contract["inputs"]),
                "\n".join(_tensor(t) for t in contract["outputs"]),
                ", ".join(contract["precisions"]) or "fp32",
            )
        if d["io"]:
            c.print(io)
        if d["variants"]:
            sizes = {x["name"]: x["size"] for x in d["members"]}
            refs = sorted({v["reference"] for v in d["variants"].values()})
            vt = Table(title="precision variants (signed agreement; --json has the error bounds)")
            for col in ("member", "kind", "size", "metric", "value", "threshold", "frames"):
                vt.add_column(col)
            for name, v in d["variants"].items():
                ref_size = sizes.get(v["reference"])
                share = f" ({sizes.get(name, 0) / ref_size:.0%})" if ref_size else ""
                vt.add_row(
                    name,
                    v["kind"],
                    f"{sizes.get(name, 0)}{share}",
                    v["metric"],
                    f"{v['value']:.4f}",
                    f">= {v['threshold']:g}",
                    str(v["frames"]),
                )
            c.print(vt)
            tasks = sorted({v["task"] for v in d["variants"].values()})
            c.print(f"variants measured against {', '.join(refs)} (task {', '.join(tasks)})")
        if d["engine_recipe"] is not None:
            _print_engines(c, d["engine_recipe"])
        req = d["isolation"]["required"]
        c.print(
            "isolation: "
            + (f"requires {', '.join(req)} (threads refused)" if req else "nothing required")
        )
        checked, unchecked = d["sanity_inputs"], d["sanity_unchecked"]
        c.print(
            "sanity profile: "
            + (f"checks {escape(', '.join(checked))}" if checked else "none")
            + (f"; passes unchecked: {escape(', '.join(unchecked))}" if unchecked else "")
        )
    c.print(
        f"{len(d['recipients'])} recipient(s): "
        + ", ".join(f"{r['kem']}:{r['key_id'][:12]}…" for r in d["recipients"][:8])
    )
    c.print(
        f"payload {d['payload']['size']} bytes, {d['payload']['aead']}, "
        f"chunk {d['payload']['chunk_size']}"
    )
    slots = [k for k, v in d["slots"].items() if v]
    c.print(f"signed slots: {', '.join(slots) or 'none'}")
    return 0


def _engine_uses(slot: dict[str, Any] | None) -> dict[str, str]:
    """What the plan and calibration members are for (shown where a placement would be)."""
    if slot is None:
        return {}
    uses = {p["member"]: f"plan for {p['for_member']}" for p in slot.get("prebuilt", [])}
    for recipe in slot["members"].values():
        if recipe.get("int8_calibration_member"):
            uses[recipe["int8_calibration_member"]] = "int8 calibration frames"
    return uses


def _print_engines(c: Any, slot: dict[str, Any]) -> None:
    """The engine recipe per member and the prebuilt plans' tags, as tables."""
    from rich.markup import escape
    from rich.table import Table

    from edgeguard.policy.engine import EngineRecipe

    recipe = EngineRecipe.from_dict(slot)
    t = Table(title="TensorRT engine recipes (signed; built on the device)")
    for col in ("member", "unit", "precision", "input shapes", "builder"):
        t.add_column(col, overflow="fold")
    for name, r in sorted(recipe.members.items()):
        unit = "gpu" if r.dla_core is None else f"dla{r.dla_core}"
        if r.allow_gpu_fallback:
            unit += " (gpu fallback)"
        prec = ", ".join(
            p for p, on in (("fp16", r.fp16), ("int8", r.int8), ("best", r.best)) if on
        )
        if r.int8_calibration_member:
            prec += f"\ncalibration: {r.int8_calibration_member}"
        shapes = "\n".join(_shape_range(x.input, x.min, x.opt, x.max) for x in r.shapes)
        builder = [f"opt level {r.builder_optimization_level}"]
        if r.workspace_bytes is not None:
            builder.append(f"workspace {r.workspace_bytes >> 20} MiB")
        if r.version_compatible:
            builder.append("version-compatible")
        if r.hardware_compatibility_level != "none":
            builder.append(f"hardware {r.hardware_compatibility_level}")
        builder.append("host code allowed" if r.engine_host_code_allowed else "no host code")
        if r.timing_cache:
            builder.append("timing cache")
        t.add_row(
            escape(name), unit, prec or "fp32", escape(shapes) or "static", "\n".join(builder)
        )
    c.print(t)
    if recipe.prebuilt:
        p = Table(title="prebuilt plans (run only where TensorRT and the GPU match)")
        for col in ("plan", "for", "TensorRT", "GPU", "compute cap.", "profile", "relaxed"):
            p.add_column(col, overflow="fold")
        for tag in recipe.prebuilt:
            relaxed = [
                x
                for x, on in (
                    ("version", tag.version_compatible),
                    (tag.hardware_compatibility_level, tag.hardware_compatibility_level != "none"),
                )
                if on
            ]
            p.add_row(
                escape(tag.member),
                escape(tag.for_member),
                tag.tensorrt,
                escape(tag.gpu_name),
                tag.compute_capability,
                tag.device_profile,
                ", ".join(relaxed) or "-",
            )
        c.print(p)


def _shape_range(name: str, *dims: tuple[int, ...]) -> str:
    """``name 1x3x320x320`` when fixed, else ``name`` and min / opt / max on lines."""
    lo, mid, hi = ("x".join(map(str, d)) for d in dims)
    if lo == mid == hi:
        return f"{name} {lo}"
    return f"{name}\n min {lo}\n opt {mid}\n max {hi}"


def _tensor(t: dict[str, Any]) -> str:
    """``name dtype[dims]``, escaped for rich (``[batch, 3]`` is not markup)."""
    from rich.markup import escape

    dims = ", ".join(str(x) if isinstance(x, int) and x >= 0 else "?" for x in t["shape"])
    return escape(f"{t['name']} {t['dtype']}[{dims}]")

"""``edgeguard sandbox-check``: which isolation layers this host offers, against a policy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgeguard.cli._common import emit_json


def register(sub: Any) -> None:
    """Add the ``sandbox-check`` parser."""
    p = sub.add_parser(
        "sandbox-check",
        help="report the sandbox layers this host offers (seccomp, Landlock, namespaces, cgroup)",
        description=(
            "Probe this host's isolation layers for sandboxed member workers: seccomp-bpf "
            "(and the pyseccomp binding), the Landlock ABI, network/user namespaces, cgroup "
            "v2 memory delegation, rlimits. With a policy (--policy, --bundle or --require) "
            "exit with status 6 when a layer the policy requires is missing."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--policy",
        type=Path,
        metavar="FILE.json",
        help='a sandbox policy, or a runtime policy holding one under "sandbox"',
    )
    src.add_argument(
        "--bundle",
        type=Path,
        metavar="BUNDLE.egb",
        help="use the sandbox policy signed into this bundle (needs --trust)",
    )
    p.add_argument(
        "--trust", type=Path, action="append", metavar="signer.pub", help="trusted signer key"
    )
    p.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="LAYER",
        help="demand LAYER (seccomp, landlock, netns, rlimits, cgroup); repeatable",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def _load_policy(args: argparse.Namespace) -> tuple[Any, str]:
    from edgeguard.errors import MalformedError, UsageError
    from edgeguard.runtime.sandbox import REQUIRED, SandboxPolicy

    source = "default (every layer best-effort)"
    d: dict[str, Any] = {}
    if args.policy is not None:
        try:
            raw = json.loads(args.policy.read_text())
        except OSError as exc:
            raise UsageError(f"cannot read {args.policy}: {exc.strerror}") from exc
        except ValueError as exc:
            raise MalformedError(f"{args.policy} is not JSON: {exc}") from exc
        if isinstance(raw, dict) and isinstance(raw.get("sandbox"), dict):
            raw = raw["sandbox"]
        d = SandboxPolicy.from_dict(raw).to_dict()
        source = str(args.policy)
    elif args.bundle is not None:
        from edgeguard.keystore import load_trust_store
        from edgeguard.runtime.opener import verify_bundle

        if not args.trust:
            raise UsageError("--bundle needs --trust to verify the bundle's signature first")
        vb = verify_bundle(args.bundle, trust=load_trust_store(args.trust))
        d = vb.slots.isolation.to_dict()
        signed = isinstance(vb.manifest.policy, dict) and "sandbox" in vb.manifest.policy
        source = f"{args.bundle} " + ("(signed)" if signed else "(no sandbox policy: default)")
    for layer in args.require:
        if layer not in d and layer not in SandboxPolicy().to_dict():
            raise UsageError(f"unknown layer {layer!r} for --require")
        d[layer] = REQUIRED
    if args.require:
        source += " + --require " + ",".join(args.require)
    return SandboxPolicy.from_dict(d), source


def run(args: argparse.Namespace) -> int:
    """Probe, report, and check the policy."""
    from edgeguard.errors import PolicyError
    from edgeguard.runtime.sandbox import LAYERS, check_policy, probe_host

    policy, source = _load_policy(args)
    caps = probe_host()
    error: PolicyError | None = None
    try:
        check_policy(policy, caps)
    except PolicyError as exc:
        error = exc
    rows = []
    for layer in LAYERS:
        mode = policy.mode(layer)
        if mode == "off":
            verdict = "off"
        elif caps.available(layer):
            verdict = "apply"
        else:
            verdict = "MISSING" if mode == "required" else "skip"
        rows.append(
            {
                "layer": layer,
                "available": caps.available(layer),
                "detail": caps.detail(layer),
                "policy": mode,
                "plan": verdict,
            }
        )
    if args.json:
        emit_json(
            {
                "ok": error is None,
                "policy_source": source,
                "policy": policy.to_dict(),
                "layers": rows,
                "host": caps.to_dict(),
                "error": str(error) if error is not None else None,
            }
        )
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"sandbox layers on {caps.machine} / Linux {caps.kernel}")
        for col in ("layer", "available", "policy", "plan", "detail"):
            t.add_column(col)
        for r in rows:
            t.add_row(
                r["layer"], "yes" if r["available"] else "no", r["policy"], r["plan"], r["detail"]
            )
        Console().print(t)
        print(f"policy: {source}")
        print("OK: the policy can be met" if error is None else "REFUSED: see below")
    if error is not None:
        raise error
    return 0

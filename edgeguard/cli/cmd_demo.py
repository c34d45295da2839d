"""``edgeguard demo``: the main job end to end on the embedded defaults."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add the ``demo`` parser."""
    p = sub.add_parser(
        "demo",
        help="package a real model, run it, and show every refusal (in a temp directory)",
        description=(
            "Make keys, package the digits model trained on real data, verify it, run it on "
            "held-out digits and print the accuracy, then show a tampered copy, a rollback, "
            "a wrong device, a wrong profile, an untrusted signer and an expired bundle each "
            "being refused. Exit 0 only if everything behaved as expected."
        ),
    )
    p.add_argument("--workdir", type=Path, help="use this directory instead of a temporary one")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    from edgeguard.demo import run_demo

    return run_demo(workdir=args.workdir, keep=args.keep)

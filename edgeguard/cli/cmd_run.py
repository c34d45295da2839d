"""``edgeguard run``: open a bundle on this device and answer the frames of an input file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeguard.cli._common import (
    add_device_args,
    add_input_limit_arg,
    add_sandbox_io_arg,
    open_device_session,
)


def register(sub: Any) -> None:
    """Add the ``run`` parser."""
    p = sub.add_parser(
        "run",
        help="open a bundle as this device and answer the frames of an input file",
        description=(
            "Open the bundle exactly as a device does - signature against --trust, the "
            "signed slots, expiry, device profile and id, anti-rollback, HPKE unwrap, "
            "in-memory decryption - then answer each frame (first axis) of --input through "
            "the guarded runtime the bundle was signed with: the models' I/O contract and "
            "sanity profile check every frame, the models run sandboxed, the runtime policy "
            "votes and falls back. --input is an .npz keyed by the model's input names (or "
            "an .npy for a model with one input); --output gets the answers keyed by output "
            "name. The decrypted model never touches the disk. Without --state-dir the "
            "default state directory is used ($EDGEGUARD_STATE_DIR, else "
            "$XDG_STATE_HOME/edgeguard, else ~/.local/state/edgeguard), so rollback "
            "protection is never off by accident. Exit 8 when a frame is rejected and the "
            "policy has no answer for it, 14 when the models refuse a frame the checks "
            "passed (e.g. larger than --sandbox-io-mb allows) and nothing else answers, 10 "
            "when no step of the fallback chain answers."
        ),
        epilog=(
            "example: edgeguard run model.egb --trust keys/signer.pub "
            "--device-key keys/cam01/device.key --input frames.npz --output answers.npz --json"
        ),
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE.egb")
    p.add_argument("--input", type=Path, required=True, metavar="IN.npz")
    p.add_argument("--output", type=Path, required=True, metavar="OUT.npz")
    p.add_argument(
        "--json", action="store_true", help="one JSON line per frame, then a summary line"
    )
    add_input_limit_arg(p)
    add_device_args(p)
    add_sandbox_io_arg(p)
    p.set_defaults(func=run)


def read_inputs(arrays: Any, specs: Any, path: Path) -> tuple[dict[str, Any], str | None]:
    """The model's inputs from an opened array file, named (:func:`name_inputs`), and
    their declared dtypes and shapes checked against ``specs`` before any data is read.

    An array that cannot feed its input (no frame of it would pass the I/O contract) is
    not read past its first frame: that frame goes to the session, which refuses it (and
    logs it) exactly as it refuses any such frame.

    Returns:
        The inputs, and why every frame would be rejected (None when they fit).

    Raises:
        UsageError: The file holds arrays the model does not take.
    """
    from edgeguard.arrayfile import contract_problem

    named = name_inputs(dict(arrays.headers), specs, path)
    by_name = {s.name: s for s in specs}
    unfit = {
        key: p
        for key, header in named.items()
        if (p := contract_problem(header, by_name[key], frames="batch-axis")) is not None
    }
    if not unfit:
        data = arrays.read(h.name for h in named.values())
        return {key: data[h.name] for key, h in named.items()}, None

    def first_only(key: str) -> bool:  # an unfit array, or one split_frames cuts into frames
        spec, shape = by_name[key], named[key].shape
        batch = not (isinstance(spec.shape[0], int) and spec.shape[0] != 1) if spec.rank else False
        return key in unfit or (len(shape) == spec.rank and batch)

    cut = [key for key in named if first_only(key)]
    data = arrays.read((named[k].name for k in cut), first=1)
    data.update(arrays.read(named[k].name for k in named if k not in cut))
    return {key: data[h.name] for key, h in named.items()}, next(iter(unfit.values()))


def name_inputs(arrays: dict[str, Any], specs: Any, path: Path) -> dict[str, Any]:
    """Give an .npy file's array the model's only input name; refuse an .npz that holds
    arrays the model does not take (a missing input is the I/O contract's to refuse)."""
    from edgeguard.errors import UsageError

    if "" not in arrays:
        wanted = {s.name for s in specs}
        extra, missing = sorted(set(arrays) - wanted), sorted(wanted - set(arrays))
        if extra:
            raise UsageError(
                f"{path} holds array(s) the model does not take: {', '.join(extra)}",
                hint="the model takes "
                + ", ".join(s.name for s in specs)
                + (f"; {path} lacks {', '.join(missing)}" if missing else "")
                + " (rename the arrays or drop the others)",
            )
        return arrays
    if len(specs) != 1:
        raise UsageError(
            f"{path} holds one array but the model takes {len(specs)} inputs",
            hint="give an .npz keyed by " + ", ".join(s.name for s in specs),
        )
    return {specs[0].name: arrays[""]}


def run(args: argparse.Namespace) -> int:
    """Open the session, answer every frame, write the answers."""
    import io
    import json
    import sys

    import numpy as np

    from edgeguard.arrayfile import open_arrays
    from edgeguard.cli._common import input_limits
    from edgeguard.errors import EdgeguardError, InputRejectedError, UsageError
    from edgeguard.fsutil import atomic_write
    from edgeguard.runtime.session import split_frames

    out_dir = args.output.parent if str(args.output.parent) else Path(".")
    if not out_dir.is_dir():  # before any frame runs
        raise UsageError(f"output directory {out_dir} does not exist")
    arrays = open_arrays(args.input, limits=input_limits(args))  # headers only, checked
    if any(h.shape and h.shape[0] == 0 for h in arrays.headers.values()):
        raise UsageError(f"{args.input} holds no frames (an array with a first axis of 0)")
    with open_device_session(args) as session:
        feeds, unfit = read_inputs(arrays, session.inputs, args.input)
        answers: dict[str, list[Any]] = {}
        sources: dict[str, int] = {}
        n = 0
        for i, frame in enumerate(split_frames(feeds, session.inputs)):
            try:
                res = session.infer(frame)
            except EdgeguardError as exc:
                if args.json:
                    line: dict[str, Any] = {
                        "frame": i,
                        "error": type(exc).__name__,
                        "exit_code": exc.exit_code,
                        "message": str(exc),
                    }
                    if isinstance(exc, InputRejectedError) and exc.verdict is not None:
                        line["verdict"] = exc.verdict
                    sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
                    exc.reported_as_json = True
                raise
            n += 1
            for k, v in res.outputs.items():
                answers.setdefault(k, []).append(np.asarray(v))
            sources[res.source.value] = sources.get(res.source.value, 0) + 1
            if args.json:
                line = {
                    "frame": i,
                    "source": res.source.value,
                    "health": res.health.name,
                    "reasons": list(res.reasons),
                    "members": list(res.members),
                    "latency_ms": {
                        k: round(v, 4)
                        for k, v in res.latency_ms.items()
                        if v == v  # drop NaN
                    },
                }
                sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
        if unfit is not None:  # the policy answered the first frame; the others are alike
            raise InputRejectedError(
                f"{args.input}: every frame would be rejected: {unfit}",
                hint="feed what the model takes (edgeguard inspect shows its inputs)",
            )
        buf = io.BytesIO()
        np.savez(buf, **_stack(answers))
        atomic_write(args.output, buf.getvalue())
        manifest = session.manifest
        summary = {
            "bundle": manifest.name,
            "version": manifest.version,
            "frames": n,
            "sources": sources,
            "health": session.health.name,
            "isolation": session.isolation,
            "placement": {m.name: str(m.where) for m in session.policy.members},
            "event_log": str(session.log_path) if session.log_path else None,
            "output_file": str(args.output),
        }
    if args.json:
        sys.stdout.write(json.dumps({"summary": summary}, sort_keys=True) + "\n")
    else:
        parts = ", ".join(f"{k}={v}" for k, v in sorted(sources.items()))
        print(
            f"answered {n} frame(s) of {manifest.name} v{manifest.version} ({parts}); models "
            f"in {summary['isolation']}; health {summary['health']}; wrote {args.output}"
        )
    return 0


def _stack(answers: dict[str, list[Any]]) -> dict[str, Any]:
    """Frame answers per output: concatenated on the first axis when their shapes allow,
    else one array per frame (``name/0``, ``name/1``, ...)."""
    import numpy as np

    out: dict[str, Any] = {}
    for k, frames in answers.items():
        tails = {a.shape[1:] for a in frames if a.ndim > 0}
        if all(a.ndim > 0 for a in frames) and len(tails) == 1:
            out[k] = np.concatenate(frames, axis=0)
        else:
            out.update({f"{k}/{i}": a for i, a in enumerate(frames)})
    return out

"""The ``edgeguard`` command line.

Every subcommand lives in its own module ``edgeguard/cli/cmd_<name>.py`` that
exposes ``register(subparsers)``; the module adds its parser and sets
``func=run`` where ``run(args) -> int`` returns the exit code. Heavy modules
are imported inside ``run`` so ``edgeguard --help`` starts fast and works even
when optional dependencies are missing.

Expected errors (subclasses of :class:`~edgeguard.errors.EdgeguardError`) are
printed as one line on stderr, ``edgeguard: error: <what> (<what to do>)``,
and mapped to the class's documented exit code; no traceback.

The console script runs :func:`console_main`: :func:`main`, then the process exit,
which skips the interpreter's shutdown when an in-process member call is still running
(see :func:`exit_process`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from edgeguard import __version__
from edgeguard.errors import EdgeguardError, FileSystemError, InternalError

# Order here is the order in --help.
_COMMANDS: tuple[str, ...] = (
    "keygen",
    "build",
    "inspect",
    "verify",
    "run",
    "serve",
    "calibrate",
    "devices",
    "log",
    "attest",
    "sandbox_check",
    "selftest",
    "demo",
)


#: One example per command, shown at the end of its --help.
_EXAMPLES: dict[str, str] = {
    "keygen": "edgeguard keygen signer -o keys/ && edgeguard keygen device -o keys/cam01 "
    "--id cam-01 --profile jetson-orin-nx",
    "build": "edgeguard build det.onnx -o det.egb --sign-key keys/signer.key --recipient "
    "keys/cam01/device.pub --device-profile generic-cpu --version 1 --calibration frames.npz",
    "inspect": "edgeguard inspect det.egb --json",
    "selftest": "edgeguard selftest --json > selftest.json",
    "verify": "edgeguard verify det.egb --trust keys/signer.pub --device-key keys/cam01/device.key",
    "serve": "edgeguard serve det.egb --trust keys/signer.pub --device-key "
    "keys/cam01/device.key --frames frames.npz --fps 15 --inject hang@60-90,freeze@120",
    "devices": "edgeguard devices list; edgeguard devices show jetson-agx-orin --json",
    "devices list": "edgeguard devices list --json",
    "devices show": "edgeguard devices show jetson-orin-nx",
    "log": "edgeguard log verify state/events.log --device-pub keys/cam01/device.pub",
    "log verify": "edgeguard log verify state/events.log --device-pub keys/cam01/device.pub --json",
    "attest": "edgeguard attest challenge -o nonce.bin; edgeguard attest quote det.egb ...",
    "attest challenge": "edgeguard attest challenge -o nonce.bin",
    "attest quote": "edgeguard attest quote det.egb --device-key keys/cam01/device.key "
    "--trust keys/signer.pub --nonce nonce.bin -o evidence.cbor",
    "attest verify": "edgeguard attest verify evidence.cbor --nonce nonce.bin --reference "
    "det.egb.rv.json --trust keys/signer.pub --device-pub keys/cam01/device.pub",
    "attest enroll-tpm": "edgeguard attest enroll-tpm --device-key keys/cam01/device.key "
    "--tpm swtpm:path=/run/swtpm.sock -o tpm.pub",
    "attest reference": "edgeguard attest reference det.egb --sign-key keys/signer.key",
    "sandbox-check": "edgeguard sandbox-check --bundle det.egb --trust keys/signer.pub",
    "demo": "edgeguard demo --keep --workdir /tmp/eg-demo",
}


def _add_examples(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Give every (sub)command without an example the one from :data:`_EXAMPLES`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                key = f"{path} {name}".strip()
                if not sub.epilog and key in _EXAMPLES:
                    sub.epilog = f"example: {_EXAMPLES[key]}"
                _add_examples(sub, key)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="edgeguard",
        description="Encrypted, signed model bundles and a guarded runtime for edge inference.",
    )
    parser.add_argument("--version", action="version", version=f"edgeguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"edgeguard.cli.cmd_{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"edgeguard.cli.cmd_{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    _add_examples(parser)
    return parser


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``with`` block unwinds."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def _json_error(args: argparse.Namespace, exc: EdgeguardError) -> None:
    """With ``--json``, the error also goes to stdout as one JSON line, for the program
    that reads it (the one-line message stays on stderr for people)."""
    if not getattr(args, "json", False) or exc.reported_as_json:
        return
    err = {
        "type": type(exc).__name__,
        "exit_code": exc.exit_code,
        "message": str(exc),
        "hint": exc.hint,
    }
    try:
        sys.stdout.write(json.dumps({"error": err}, sort_keys=True) + "\n")
        sys.stdout.flush()
    except OSError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edgeguard`` console script.

    SIGTERM unwinds like Ctrl-C: open sessions stop their workers and end the event log
    with a signed final checkpoint before the process exits (143; Ctrl-C: 130).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code: int = args.func(args)
    except _Terminated:
        print("edgeguard: terminated", file=sys.stderr)
        return 143
    except EdgeguardError as exc:
        print(f"edgeguard: error: {exc.one_line()}", file=sys.stderr)
        _json_error(args, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgeguard: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, like other Unix tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as exc:
        err = FileSystemError(
            f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        )
        print(f"edgeguard: error: {err.one_line()}", file=sys.stderr)
        _json_error(args, err)
        return err.exit_code
    except Exception as exc:
        if os.environ.get("EDGEGUARD_DEBUG"):
            raise
        print(
            f"edgeguard: internal error: {type(exc).__name__}: {exc} "
            "(this is a bug; set EDGEGUARD_DEBUG=1 to see the traceback and please report it)",
            file=sys.stderr,
        )
        return InternalError.exit_code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return code


def exit_process(code: int) -> NoReturn:
    """End the ``edgeguard`` process with ``code``.

    A member that ran in a thread of this process (``--isolation threads``) and missed its
    deadline was abandoned, not stopped: its call may still be inside ONNX Runtime when
    the command is done (the session waited for it, with a bound, when it closed). An
    interpreter shutting down under such a call destroys the library's static objects
    while the call uses them and the process aborts (SIGABRT, exit 134) after its answer
    was given. So when a call is still running, the output is flushed (the session and its
    event log are already closed) and the process ends with ``os._exit``, skipping the
    interpreter's shutdown; the exit code is the command's.
    """
    threads = sys.modules.get("edgeguard.runtime.threads")
    running = threads.running_calls() if threads is not None else 0
    if running:
        print(
            f"edgeguard: warning: {running} in-process model call(s) still running after "
            "the deadline; exiting without waiting for them",
            file=sys.stderr,
        )
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)
    sys.exit(code)


def console_main() -> NoReturn:
    """Entry point of the ``edgeguard`` console script: :func:`main`, then :func:`exit_process`."""
    exit_process(main())


if __name__ == "__main__":  # pragma: no cover
    console_main()

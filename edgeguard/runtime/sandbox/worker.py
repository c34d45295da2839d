"""Entry point of a sandboxed member worker: ``python -I -m edgeguard.runtime.sandbox.worker FD``.

Layer: :mod:`edgeguard.runtime.sandbox` (runs in the child process; imports numpy and,
through the model loader, the inference library).

Life of a worker:

1. read the ``init`` message from the control socket ``FD`` (a SOCK_SEQPACKET socket
   the supervisor created before spawning us);
2. while still single-threaded: pin to the placement's CPU cores (if any), enter a new
   network namespace (policy permitting);
3. map the **sealed memfd** holding the decrypted model (never a file on disk), check
   its seals, load the model from memory and close the memfd;
4. map the shared I/O memfd, run warm-up inferences through the exact serving code
   path, so ONNX Runtime's threads exist and every lazy import has happened;
5. lock down: not dumpable, ``no_new_privs``, rlimits, Landlock (no filesystem), seccomp
   allowlist (kill on anything else) - in that order, seccomp last;
6. report ``ready`` with the layers actually active, then serve ``run`` requests: the
   inputs are read in place from shared memory, the outputs written back there, and
   only a small JSON message crosses the socket.

After step 5 the worker can read and write the descriptors it holds, allocate memory
and compute; it cannot open a file, create a socket, run a program, create a process
or trace one. Exit codes: 0 on ``exit`` or EOF, 3 when the init is malformed, 4 when a
layer the policy requires cannot be applied, 5 when the model cannot be loaded.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import mmap
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from edgeguard.policy.io import DTYPES
from edgeguard.runtime.sandbox import _linux

__all__ = ["ALIGN", "MAX_MESSAGE", "main", "pack_arrays", "unpack_arrays"]

#: Byte alignment of every tensor in the shared I/O region.
ALIGN = 64
#: Largest control message, either direction.
MAX_MESSAGE = 1 << 16
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
Loader = Callable[[memoryview, str, Mapping[str, Any]], Any]


def pack_arrays(arrays: Mapping[str, np.ndarray], region: memoryview) -> list[list[Any]]:
    """Copy ``arrays`` into ``region`` (64-byte aligned); return their descriptors.

    Each descriptor is ``[name, dtype, shape, offset, nbytes]``, offsets relative to
    ``region``.

    Raises:
        ValueError: The arrays do not fit, or a dtype is not a plain numeric one.
    """
    desc: list[list[Any]] = []
    off = 0
    for name, arr in arrays.items():
        a = np.asarray(arr)
        if a.dtype.name not in DTYPES:
            raise ValueError(f"array {name!r} has unsupported dtype {a.dtype}")
        n = a.nbytes
        if off + n > len(region):
            raise ValueError(f"arrays need more than the {len(region)}-byte I/O region")
        dst: np.ndarray = np.ndarray(a.shape, dtype=a.dtype, buffer=region, offset=off)
        np.copyto(dst, a, casting="no")
        desc.append([str(name), a.dtype.name, list(a.shape), off, n])
        off += (n + ALIGN - 1) // ALIGN * ALIGN
    return desc


def unpack_arrays(desc: Any, region: memoryview, *, copy: bool) -> dict[str, np.ndarray]:
    """Arrays described by ``desc`` (from :func:`pack_arrays`), validated strictly.

    Args:
        desc: The descriptor list as received (untrusted).
        region: The memory the offsets refer to.
        copy: Copy out of ``region`` (True) or return views into it.

    Raises:
        ValueError: A descriptor is malformed or points outside ``region``.
    """
    if not isinstance(desc, list) or len(desc) > 256:
        raise ValueError("array descriptors must be a list of at most 256 entries")
    out: dict[str, np.ndarray] = {}
    for d in desc:
        if not (isinstance(d, list) and len(d) == 5):
            raise ValueError("bad array descriptor")
        name, dtype, shape, off, n = d
        if not isinstance(name, str) or not name or name in out:
            raise ValueError("bad or duplicate array name")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ValueError(f"array {name!r}: bad dtype")
        if (
            not isinstance(shape, list)
            or len(shape) > 16
            or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 1 << 40 for s in shape
            )
        ):
            raise ValueError(f"array {name!r}: bad shape")
        for v in (off, n):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"array {name!r}: bad offset or size")
        dt = np.dtype(dtype)
        count = 1
        for s in shape:
            count *= s
        if count * dt.itemsize != n or off % ALIGN or off + n > len(region):
            raise ValueError(f"array {name!r}: size or offset does not fit the region")
        view: np.ndarray = np.ndarray(tuple(shape), dtype=dt, buffer=region, offset=off)
        out[name] = view.copy() if copy else view
    return out


def _send(fd: int, obj: Mapping[str, Any]) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        data = json.dumps({"ok": False, "error": "reply too large"}).encode()
    os.write(fd, data)


def _recv(fd: int) -> dict[str, Any] | None:
    data = os.read(fd, MAX_MESSAGE)
    if not data:
        return None
    msg = json.loads(data)
    if not isinstance(msg, dict):
        raise ValueError("control message is not an object")
    return msg


def _default_loader(model: memoryview, fmt: str, options: Mapping[str, Any]) -> Any:
    from edgeguard.backends import load_backend

    return load_backend(fmt, model, **dict(options))


def _resolve_loader(spec: str | None) -> Loader:
    if spec is None:
        return _default_loader
    mod, _, attr = spec.partition(":")
    fn = getattr(importlib.import_module(mod), attr)
    if not callable(fn):
        raise TypeError(f"loader {spec!r} is not callable")
    loader: Loader = fn
    return loader


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


class _Server:
    """The serving half: one request at a time over shared memory."""

    def __init__(self, ctl: int, target: Any, io: mmap.mmap, io_bytes: int) -> None:
        self.ctl = ctl
        self.target = target
        self.view = memoryview(io)
        self.inp = self.view[:io_bytes]
        self.out = self.view[io_bytes:]

    def handle(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter_ns()
        try:
            feeds = unpack_arrays(msg.get("feeds"), self.inp, copy=False)
            outputs = self.target.run(feeds)
            if not isinstance(outputs, Mapping):
                raise TypeError(f"the model returned {type(outputs).__name__}, not a mapping")
            desc = pack_arrays(outputs, self.out)
        except Exception as exc:  # reported to the supervisor, never raised here
            return {"ok": False, "error": _error_text(exc), "run_ns": time.perf_counter_ns() - t0}
        return {"ok": True, "outputs": desc, "run_ns": time.perf_counter_ns() - t0}

    def warm_up(self, rounds: int) -> None:
        specs = self.target.inputs() if hasattr(self.target, "inputs") else ()
        feeds = {s.name: s.zeros() for s in specs}
        desc = pack_arrays(feeds, self.inp)
        for _ in range(rounds):
            json.dumps(self.handle({"feeds": desc}))
        # exercise the error path too (exception formatting, lazy imports)
        json.dumps(self.handle({"feeds": [["x", "float32", [1], 1, 4]]}))

    def serve(self) -> int:
        while True:
            msg = _recv(self.ctl)
            if msg is None or msg.get("op") == "exit":
                return 0
            if msg.get("op") != "run":
                _send(self.ctl, {"ok": False, "error": "unknown op"})
                continue
            _send(self.ctl, self.handle(msg))


def _lockdown(init: Mapping[str, Any], plan: Mapping[str, str], threads: int) -> dict[str, str]:
    """Apply the planned layers; returns each layer's state. Raises on a required failure.

    Everything that may touch the filesystem (importing the seccomp module and libseccomp,
    building the BPF program) happens before the first restriction.
    """
    required = set(init["required"])
    state: dict[str, str] = {}

    def failed(layer: str, why: str) -> None:
        if layer in required:
            raise _RequiredLayerError(f"{layer}: {why}")
        state[layer] = f"failed: {why}"

    flt: Any = None
    if plan.get("seccomp") == "apply":
        try:
            from edgeguard.runtime.sandbox.seccomp import build_filter

            flt = build_filter(ctl_fd=int(init["ctl_fd"]), pid=os.getpid())
        except Exception as exc:
            failed("seccomp", _error_text(exc))
    abi = _linux.landlock_abi() if plan.get("landlock") == "apply" else 0

    _linux.set_dumpable(False)
    _linux.set_no_new_privs()
    if plan.get("rlimits") == "apply":
        try:
            _linux.set_rlimit(resource.RLIMIT_NOFILE, int(init["max_open_files"]))
            _linux.set_rlimit(resource.RLIMIT_NPROC, 0)
            _linux.set_rlimit(resource.RLIMIT_FSIZE, 0)
            _linux.set_rlimit(resource.RLIMIT_CORE, 0)
            state["rlimits"] = "active"
        except (OSError, ValueError) as exc:
            failed("rlimits", str(exc))
    if plan.get("landlock") == "apply":
        try:
            res = _linux.landlock_restrict_self(abi)
            state["landlock"] = f"active (ABI {res.abi}" + (
                f"; {threads - 1} earlier thread(s) not covered, seccomp covers them)"
                if threads > 1
                else ")"
            )
        except OSError as exc:
            failed("landlock", str(exc))
    if flt is not None:
        try:
            flt.load()
            state["seccomp"] = "active (allowlist, kill process, all threads)"
        except Exception as exc:
            failed("seccomp", _error_text(exc))
    return state


class _RequiredLayerError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    """Run the worker on the control socket given as the only argument."""
    args = sys.argv[1:] if argv is None else argv
    try:
        ctl = int(args[0])
        init = _recv(ctl)
        if init is None or init.get("op") != "init":
            return 3
        init["ctl_fd"] = ctl
        plan: dict[str, str] = dict(init["plan"])
        model_fd, io_fd, io_bytes = int(init["model_fd"]), int(init["io_fd"]), int(init["io_bytes"])
    except (IndexError, ValueError, KeyError, TypeError, OSError):
        return 3
    state: dict[str, str] = {k: "off" if v == "off" else "skipped" for k, v in plan.items()}
    required = set(init.get("required", ()))
    try:
        # 2a. CPU placement while single-threaded, so every later thread inherits it
        if init.get("cpus") is not None:
            try:
                os.sched_setaffinity(0, {int(c) for c in init["cpus"]})
            except (OSError, TypeError, ValueError) as exc:
                _send(ctl, {"op": "error", "error": f"cannot pin to CPUs {init['cpus']}: {exc}"})
                return 4
        # 2b. network namespace while single-threaded (unshare refuses otherwise for userns)
        if plan.get("netns") == "apply":
            try:
                flags = _linux.CLONE_NEWNET
                if init.get("netns_mode") == "userns":
                    flags |= _linux.CLONE_NEWUSER
                _linux.unshare(flags)
                state["netns"] = "active (" + str(init.get("netns_mode")) + ")"
            except OSError as exc:
                if "netns" in required:
                    raise _RequiredLayerError(f"netns: {exc}") from exc
                state["netns"] = f"failed: {exc}"
        if init.get("cgroup"):
            state["cgroup"] = "active (" + str(init["cgroup"]) + ")"
        # 3. the model, from the sealed memfd
        try:
            seals = fcntl.fcntl(model_fd, fcntl.F_GET_SEALS)
            if seals & _SEALS != _SEALS:
                raise ValueError("the model memfd is not sealed")
            with mmap.mmap(model_fd, int(init["model_size"]), prot=mmap.PROT_READ) as mm:
                sys.path[:0] = [str(p) for p in init.get("python_path", ())]
                loader = _resolve_loader(init.get("loader"))
                target = loader(memoryview(mm), str(init["fmt"]), dict(init.get("options", {})))
            os.close(model_fd)
        except Exception as exc:
            _send(ctl, {"op": "error", "error": "model load failed: " + _error_text(exc)})
            return 5
        io = mmap.mmap(io_fd, 2 * io_bytes)
        os.close(io_fd)
        server = _Server(ctl, target, io, io_bytes)
        # 4. warm-up through the serving path
        try:
            server.warm_up(int(init.get("warmup_rounds", 2)))
        except Exception as exc:
            _send(ctl, {"op": "error", "error": "warm-up failed: " + _error_text(exc)})
            return 5
        threads = _linux.thread_count()
        # 5. lockdown
        state.update(_lockdown(init, plan, threads))
    except _RequiredLayerError as exc:
        _send(ctl, {"op": "error", "error": f"required layer unavailable: {exc}"})
        return 4
    ins = [s.to_dict() for s in target.inputs()] if hasattr(target, "inputs") else []
    _send(
        ctl, {"op": "ready", "pid": os.getpid(), "layers": state, "threads": threads, "inputs": ins}
    )
    return server.serve()


if __name__ == "__main__":
    sys.exit(main())

"""Test-only model loader that records the worker's state at the moment it parses a model.

Loaded inside a sandbox worker through ``WorkerSpec(loader="tests.sandbox.loadprobe:make")``.
The worker imports this module before it locks down, so the descriptors of its own
``/proc`` files are opened then; :func:`make` runs where the real loader would parse the
model, reads them again (``pread`` regenerates a ``/proc`` file) and tries to open a file.
The worker's ``run`` answers with that record as JSON bytes (``{"state": uint8[...]}``).
With ``options={"forbidden_syscall": True}`` the loader makes a system call that is on
no seccomp list instead (``getuid``); with ``options={"localtime": True}`` it only
formats the time as a C library's logger does (``localtime``, as ONNX Runtime's log lines
while it loads a model) and answers ``{"state": ...}`` with the hour.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
from collections.abc import Mapping
from typing import Any

import numpy as np

_STATUS = os.open("/proc/self/status", os.O_RDONLY)
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_GET_DUMPABLE = 3


def _status() -> dict[str, str]:
    text = os.pread(_STATUS, 1 << 16, 0).decode()
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines())}


class Recorded:
    def __init__(self, state: Mapping[str, Any]) -> None:
        self.blob = np.frombuffer(json.dumps(state).encode(), np.uint8).copy()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"state": self.blob}


class _Tm(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in ("sec", "min", "hour", "mday", "mon", "year")]


def make(model: memoryview, fmt: str, options: Mapping[str, Any]) -> Recorded:
    if options.get("localtime"):
        _LIBC.localtime.restype = ctypes.POINTER(_Tm)
        now = ctypes.c_long(int(_LIBC.time(None)))
        return Recorded({"hour": _LIBC.localtime(ctypes.byref(now)).contents.hour})
    if options.get("forbidden_syscall"):
        os.getuid()
    try:
        with open("/etc/hostname", "rb") as f:
            f.read(1)
        files = "readable"
    except PermissionError:
        files = "denied"
    status = _status()
    return Recorded(
        {
            "model_bytes": len(bytes(model)),
            "dumpable": _LIBC.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0),
            "core": list(resource.getrlimit(resource.RLIMIT_CORE)),
            "files": files,
            **{k: status.get(k) for k in ("Uid", "Gid", "Groups", "CapEff", "CapPrm")},
            **{k: status.get(k) for k in ("CapInh", "CapAmb", "NoNewPrivs", "Seccomp")},
            "Threads": status.get("Threads"),
        }
    )

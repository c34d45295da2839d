"""Test-only worker payloads: a member that misbehaves after lockdown.

Loaded inside a sandbox worker through ``WorkerSpec(loader="tests.sandbox.hostile:make")``.
Everything the hostile actions need is prepared before they run, so that the *action
itself* is what the sandbox sees - not an import or a ``getppid`` on the way to it: what
needs a system call the load-time seccomp filter forbids (the parent pid, the libc
handle) when this module is imported, before the worker locks down; the rest in
:func:`make`, which the worker calls as its model loader, already locked down.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

_PTRACE_ATTACH = 16
_MADV_HWPOISON = 100
_PPID = os.getppid()  # at import: the worker imports its loader before it locks down
_LIBC = ctypes.CDLL(None, use_errno=True)

#: Forged replies of the ``reply`` action, chosen per call by the first value of ``x``.
REPLIES: dict[str, bytes] = {
    "deep": b"[" * 100_000,  # longer than a message may be, and far too deep
    "deep_in_limit": b'{"ok":true,"outputs":' + b"[" * 60_000,  # fits 64 KiB, too deep
    "deep_in_string": b'{"ok":false,"error":"' + b"[" * 60_000 + b'"}',  # fine: a string
    "not_utf8": b'{"ok":false,"error":"' + bytes([0xFF, 0xFE]) + b'"}',
    "huge": b'{"ok":false,"error":"x"}' + b" " * 150_000,  # a valid 64 KiB prefix
    "not_object": b"[1, 2, 3]",
    "ok_not_bool": b'{"ok":"yes","error":"x"}',
    "outputs_not_list": b'{"ok":true,"outputs":{"y":[1]}}',
    "float_dim": b'{"ok":true,"outputs":[["y","float32",[4.0],0,16]]}',
    "huge_int": b'{"ok":true,"outputs":[["y","float32",[4],0,16]],"run_ns":' + b"9" * 5000 + b"}",
    "infinity": b'{"ok":true,"outputs":[["y","float32",[4],0,16]],"run_ns":Infinity}',
    "negative_run_ns": b'{"ok":true,"outputs":[["y","float32",[4],0,16]],"run_ns":-5}',
    "duplicate_key": b'{"ok":false,"error":"x","ok":true,"outputs":[]}',
    "error_not_string": b'{"ok":false,"error":["x"]}',
    "unknown_field": b'{"ok":false,"error":"x","exec":"sh"}',
    "trailing": b'{"ok":false,"error":"x"} {}',
}


class Hostile:
    def __init__(self, action: str, options: Mapping[str, Any]) -> None:
        self.action = action
        self.path = str(options.get("path", "/tmp/edgeguard-hostile-never"))
        self.port = int(options.get("port", 9))
        self.ppid = _PPID
        self.libc = _LIBC
        self.family = socket.AF_INET
        self.ctl = int(sys.argv[1])  # the worker's control socket
        hole = mmap.mmap(-1, 4096)  # a page address that is certainly unmapped afterwards
        self.hole = ctypes.addressof(ctypes.c_char.from_buffer(hole))
        hole.close()
        self.replies = list(REPLIES.values())
        area = int(options.get("area", 1 << 20))  # the worker's output region, in bytes
        self.amplify = json.dumps(  # ~10 KB: 256 outputs, each the whole output region
            {"ok": True, "outputs": [[f"o{i}", "uint8", [area], 0, area] for i in range(256)]}
        ).encode()
        if action == "ready_deep":  # taken for the ready message: sent before the real one
            os.write(self.ctl, REPLIES["deep_in_limit"])

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "x" not in feeds:  # the warm-up call: behave
            return {"y": np.zeros(1, np.float32)}
        x = np.asarray(feeds["x"], np.float32)
        a = self.action
        if a == "benign":
            return {"y": x * 2}
        if a == "open_passwd":
            with open("/etc/passwd", "rb") as f:
                f.read()
        elif a == "write_file":
            with open(self.path, "w") as f:
                f.write("pwned")
        elif a == "socket":
            s = socket.socket(self.family, socket.SOCK_STREAM)
            s.connect(("127.0.0.1", self.port))
        elif a == "exec":
            os.execv("/bin/sh", ["sh", "-c", "true"])
        elif a == "ptrace":
            if self.libc.ptrace(_PTRACE_ATTACH, self.ppid, None, None) != 0:
                e = ctypes.get_errno()
                raise PermissionError(e, os.strerror(e))
        elif a == "fork":
            for _ in range(64):
                if os.fork() == 0:
                    os._exit(0)
        elif a == "hang":
            while True:  # a busy loop: sleeping would already be a forbidden syscall
                pass
        elif a == "crash":
            ctypes.string_at(0)
        elif a == "write_stdout":  # an fd it holds, but not one it may write to
            os.write(1, b"leak")
        elif a == "madvise_hwpoison":  # on an unmapped page: harmless even where allowed
            if self.libc.madvise(ctypes.c_void_p(self.hole), 4096, _MADV_HWPOISON) != 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e))
        elif a == "mmap_exec":  # new executable memory (shellcode staging)
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        elif a == "forge":  # a reply pointing far outside the shared region
            os.write(self.ctl, b'{"ok":true,"outputs":[["y","float32",[1000000],0,4000000]]}')
        elif a == "reply":  # a forged reply chosen by the call, then the real one
            os.write(self.ctl, self.replies[int(x.reshape(-1)[0])])
        elif a == "amplify":
            os.write(self.ctl, self.amplify)
        elif a == "garbage":
            return {"y": np.zeros(1, np.complex64)}  # not a plain numeric dtype
        else:
            raise ValueError(f"unknown action {a!r}")
        return {"y": x}  # the action was not stopped


def make(model: memoryview, fmt: str, options: Mapping[str, Any]) -> Hostile:
    """Loader entry point: the model bytes name the action."""
    return Hostile(bytes(model).decode(), options)

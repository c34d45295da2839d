"""Test-only worker payload for the GPU profile and discovery mode, on a CPU host.

Loaded inside a sandbox worker through ``WorkerSpec(loader="tests.sandbox.gpuprobe:make")``.
At load (before a GPU member's lockdown) it opens the paths in ``options["open"]``, as the
CUDA driver opens its device nodes; each request then does ``options["action"]``:

* ``echo``: nothing but return ``x``;
* ``getppid``: make a syscall no allowlist has (``getppid``), then return ``x``;
* ``ioctl_device``: ``ioctl(FIONREAD)`` on the first descriptor opened at load;
* ``ioctl_stderr``: ``ioctl(FIONREAD)`` on stderr (no device descriptor);
* ``open``: try to open each path of ``options["try"]``; returns 0 or the errno per path.

With ``options["helper"]`` it starts a helper thread at load (as CUDA does at context
creation) that calls ``getppid`` whenever a request asks it to.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import termios
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgeguard.policy.io import TensorSpec


class GpuProbe:
    def __init__(self, options: Mapping[str, Any]) -> None:
        self.action = str(options.get("action", "echo"))
        self.fds = [os.open(p, os.O_RDWR | os.O_CLOEXEC) for p in options.get("open", ())]
        self.tries = [str(p) for p in options.get("try", ())]
        self.poke = threading.Event()
        self.done = threading.Event()
        if options.get("helper"):
            threading.Thread(target=self._helper, daemon=True).start()

    def _helper(self) -> None:
        while True:
            self.poke.wait()
            self.poke.clear()
            os.getppid()
            self.done.set()

    def inputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("x", "float32", (1,)),)

    def _ioctl(self, fd: int) -> int:
        """FIONREAD's answer, or minus the errno (stderr may be /dev/null: ENOTTY)."""
        buf = array.array("i", [0])
        try:
            fcntl.ioctl(fd, termios.FIONREAD, buf, True)
        except OSError as exc:
            return -(exc.errno or errno.EIO)
        return int(buf[0])

    def _open(self, path: str) -> int:
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        except OSError as exc:
            return exc.errno or errno.EIO
        return 0

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.asarray(feeds["x"], np.float32)
        if self.action == "getppid":
            os.getppid()
        elif self.action == "helper":
            self.done.clear()
            self.poke.set()
            self.done.wait(10)
        elif self.action == "ioctl_device":
            return {"y": np.array([self._ioctl(self.fds[0])], np.int64)}
        elif self.action == "ioctl_stderr":
            return {"y": np.array([self._ioctl(2)], np.int64)}
        elif self.action == "open":
            return {"y": np.array([self._open(p) for p in self.tries], np.int64)}
        return {"y": x}


def make(model: memoryview, fmt: str, options: Mapping[str, Any]) -> GpuProbe:
    return GpuProbe(options)

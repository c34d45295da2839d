"""Test-only fake worker that reports layers it never applied: ``python -I liar.py MODE FD``.

Stdlib only (``-I`` puts no project directory on ``sys.path``). It answers the
supervisor's ``init`` with a ``ready`` message claiming every planned layer active, then
serves every request with an error until the socket closes. Modes:

* ``nothing``: applies nothing at all (a worker started by root stays root with every
  capability, ``no_new_privs`` 0, no filter);
* ``all-but-seccomp``: does everything a real worker does except the seccomp filter -
  core 0, not dumpable, network namespace, no root, no capability, ``no_new_privs``,
  rlimits - so that the seccomp claim is the only lie.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys

_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWNET = 0x40000000


def _all_but_seccomp(init: dict) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if init["plan"].get("netns") == "apply":
        assert libc.unshare(_CLONE_NEWNET) == 0
    if os.geteuid() == 0:
        uid, gid = init["user"]
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)  # from root to another uid: every capability is gone
    assert libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    assert libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    resource.setrlimit(resource.RLIMIT_NOFILE, (init["max_open_files"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def main() -> int:
    mode, ctl = sys.argv[1], int(sys.argv[2])
    init = json.loads(os.read(ctl, 1 << 16))
    if mode == "all-but-seccomp":
        _all_but_seccomp(init)
    claims = {k: "off" if v == "off" else "active (trust me)" for k, v in init["plan"].items()}
    os.write(ctl, json.dumps({"op": "ready", "pid": os.getpid(), "layers": claims}).encode())
    while os.read(ctl, 1 << 16):
        os.write(ctl, b'{"ok":false,"error":"fake worker"}')
    return 0


if __name__ == "__main__":
    sys.exit(main())

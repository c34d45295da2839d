"""docs/isolation.md documents every syscall the seccomp allowlist lets through."""

from __future__ import annotations

from pathlib import Path

from edgeguard.runtime.sandbox.seccomp import (
    ALLOWLIST,
    CONDITIONAL,
    ENOSYS_LIST,
    LOAD_EXTRAS,
    MADVISE_ADVICE,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "isolation.md"


def test_every_allowed_syscall_has_a_documented_reason() -> None:
    text = DOC.read_text()
    for name in (*ALLOWLIST, *CONDITIONAL, *ENOSYS_LIST, *LOAD_EXTRAS):
        assert f"| `{name}` |" in text, f"{name} is not documented in {DOC.name}"
    for advice in MADVISE_ADVICE:
        assert f"`{advice}`" in text, f"madvise {advice} is not documented in {DOC.name}"


def test_denied_families_are_not_on_the_lists() -> None:
    allowed = {*ALLOWLIST, *CONDITIONAL}
    for name in (
        "open",
        "openat",
        "openat2",
        "creat",
        "socket",
        "connect",
        "execve",
        "execveat",
        "fork",
        "vfork",
        "ptrace",
        "kill",
        "ioctl",
        "unshare",
        "setns",
        "prctl",
        "seccomp",
        "bpf",
        "process_vm_readv",
        "process_vm_writev",
    ):
        assert name not in allowed
    assert set(ENOSYS_LIST) == {"clone3"}
    assert "madvise" not in ALLOWLIST  # only with the advice values on MADVISE_ADVICE
    dangerous = {9, 12, 17, 20, 21, 100, 101}  # REMOVE, MERGEABLE, DODUMP, COLD, PAGEOUT, ...
    assert not dangerous & {value for value, _ in MADVISE_ADVICE.values()}


def test_importing_the_sandbox_imports_no_heavy_module() -> None:
    import subprocess
    import sys

    code = (
        "import sys, edgeguard.runtime.sandbox, edgeguard.runtime.sandbox.executor, "
        "edgeguard.runtime.sandbox.seccomp, edgeguard.cli.cmd_sandbox_check\n"
        "bad = [m for m in ('onnxruntime', 'numba', 'tensorrt', 'pycuda', 'pyseccomp') "
        "if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

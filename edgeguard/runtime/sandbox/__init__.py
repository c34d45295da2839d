"""Sandboxed member workers: each model runs in its own locked-down child process.

Layer: :mod:`edgeguard.runtime` (composes the backends in a child process; the parent
side imports no inference library). Pieces:

* :mod:`~edgeguard.policy.isolation` - :class:`SandboxPolicy`, the signed
  per-bundle choice of layers (``policy["sandbox"]`` in the manifest);
* :mod:`~edgeguard.runtime.sandbox.probe` - :func:`probe_host` and :func:`check_policy`;
* :mod:`~edgeguard.runtime.sandbox.seccomp` - the syscall allowlist, with a reason each;
* :mod:`~edgeguard.runtime.sandbox.worker` - the child process's entry point (model from
  a sealed memfd, warm-up, lockdown, serve);
* :mod:`~edgeguard.runtime.sandbox.executor` - :class:`ProcessMemberExecutor`, the
  :class:`~edgeguard.runtime.guarded.MemberExecutor` that runs members in workers,
  kills hung ones and restarts dead ones with backoff;
* :mod:`~edgeguard.runtime.sandbox.replies` - the supervisor's bounded, strict reader of
  everything a worker sends.
* :mod:`~edgeguard.runtime.sandbox.gpu` - a GPU member's device nodes, their groups and
  the descriptors it may ``ioctl`` (never run on a GPU);
* :mod:`~edgeguard.runtime.sandbox.identity` - the service user and groups of workers
  started by root;
* :mod:`~edgeguard.runtime.sandbox.discover` - :func:`run_discovery`: a worker whose
  unlisted syscalls are reported to the supervisor, not killed.

See ``docs/isolation.md`` for the policy and its reasoning. Importing this package does
not import numpy's heavy friends, onnxruntime, numba or pyseccomp.
"""

from __future__ import annotations

from edgeguard.policy.isolation import BEST_EFFORT, LAYERS, OFF, REQUIRED, SandboxPolicy
from edgeguard.runtime.sandbox.probe import HostCapabilities, check_policy, probe_host

__all__ = [
    "BEST_EFFORT",
    "LAYERS",
    "OFF",
    "REQUIRED",
    "HostCapabilities",
    "SandboxPolicy",
    "check_policy",
    "probe_host",
]

"""The single error hierarchy of edgeguard.

Every error edgeguard raises on purpose derives from :class:`EdgeguardError`.
Errors are grouped by *who is at fault*, after python-tuf's
``tuf/api/exceptions.py``: the user (usage), the file (malformed), an attacker
or a corrupted medium (integrity), the trust configuration (untrusted signer),
the deployment policy (expired, rolled back, wrong device), the host (missing
optional dependency), the input data (rejected by the signed checks, or refused
by the models), the model/backend, and a writer that stopped without closing its
event log.

Each class carries an ``exit_code``: the CLI maps the class to that code and
prints one line. The codes are part of the public contract (README, "Exit
codes") and never change meaning.

Decryption and integrity failures deliberately share one message: a caller
learns *that* the bundle is not authentic, never *which* secret-dependent step
failed (pyca/cryptography's rule).
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BundleExpiredError",
    "DeviceNotAllowedError",
    "EdgeguardError",
    "FileSystemError",
    "InputRefusedError",
    "InputRejectedError",
    "IntegrityError",
    "InternalError",
    "KeyFileError",
    "LogRolledBackError",
    "MalformedError",
    "MissingDependencyError",
    "NotARecipientError",
    "PolicyError",
    "RollbackError",
    "SelftestFailedError",
    "StateStoreError",
    "UncleanLogError",
    "UntrustedSignerError",
    "UsageError",
]


class EdgeguardError(Exception):
    """Root of every error edgeguard raises on purpose.

    Attributes:
        exit_code: Process exit code the CLI uses for this class.
        hint: One short sentence telling the user what to do next.
        reported_as_json: Set by a command that already wrote this error into its
            ``--json`` output (the CLI then adds no separate JSON error line).
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        self.reported_as_json = False

    def one_line(self) -> str:
        """The message and hint as the single line the CLI prints."""
        msg = str(self)
        return f"{msg} ({self.hint})" if self.hint else msg


class InternalError(EdgeguardError):
    """A bug in edgeguard: an invariant did not hold. Please report it."""

    exit_code = 1


class UsageError(EdgeguardError):
    """The command or API was called wrongly (missing file, bad option value)."""

    exit_code = 2


class MalformedError(EdgeguardError):
    """A file (bundle, key, profile, input) does not follow its format."""

    exit_code = 3


class IntegrityError(EdgeguardError):
    """Authentication failed: signature, AEAD tag or digest mismatch.

    The bundle or file was modified, truncated or extended after it was made,
    or the wrong key was used. The message never says which secret-dependent
    step failed.
    """

    exit_code = 4


class LogRolledBackError(IntegrityError):
    """An event log is behind its anchor: cut back, rolled back, replaced or deleted.

    The log itself may verify (a cut back to an earlier session's final
    checkpoint is a clean, fully signed log), but the anchor kept outside it
    (the state directory's ``eventlog.anchor``, and with a TPM its NV counter)
    records a later signed checkpoint than the log holds, or a different log.
    An integrity error (exit 4) with its own message.
    """


class UntrustedSignerError(EdgeguardError):
    """The signature is valid for a key that is not in the trust store."""

    exit_code = 5


class PolicyError(EdgeguardError):
    """The artifact is authentic but policy forbids using it here and now."""

    exit_code = 6


class BundleExpiredError(PolicyError):
    """The bundle's ``expires`` time has passed (or ``created`` lies in the future)."""


class RollbackError(PolicyError):
    """The bundle's release version is older than one this device already opened."""


class DeviceNotAllowedError(PolicyError):
    """The bundle's device constraints exclude this device (profile or id)."""


class NotARecipientError(PolicyError):
    """The bundle holds no wrapped data key for this device."""


class MissingDependencyError(EdgeguardError):
    """An optional dependency is not installed; the message names the extra."""

    exit_code = 7

    def __init__(self, module: str, extra: str, *, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python module '{module}', which is not installed",
            hint=f"install it with: pip install 'edgeguard[{extra}]'",
        )
        self.module = module
        self.extra = extra


class InputRejectedError(EdgeguardError):
    """The input was rejected: it breaks the model's signed I/O contract (names, dtypes,
    shapes) or the calibrated sanity profile (verdict REJECT), and the policy has no
    answer for a rejected input.

    Attributes:
        verdict: The verdict's JSON-compatible form (violations, measured values and
            limits), when known.
    """

    exit_code = 8

    def __init__(
        self, message: str, *, hint: str | None = None, verdict: dict[str, object] | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.verdict = verdict


class InputRefusedError(InputRejectedError):
    """The input passed the signed checks, but the models refused it: every model the
    frame asked failed on the input itself, before running (it does not fit a sandboxed
    member's shared memory, or an in-process model's own input validation refused it),
    and no later step of the fallback chain answered.

    Like :class:`InputRejectedError` it means the input, not the device, is at fault (so
    ``except InputRejectedError`` catches it), with its own exit code: the signed checks
    did not catch this input, the models did.

    Attributes:
        verdict: ``{"status": "REJECT", "violations": [...]}`` with one
            ``model.refused`` violation per model, naming why it refused.
    """

    exit_code = 14


class KeyFileError(EdgeguardError):
    """A key file cannot be used: wrong type, wrong passphrase, unsafe permissions."""

    exit_code = 9


class BackendError(EdgeguardError):
    """The inference backend could not load or run the model."""

    exit_code = 10


class StateStoreError(EdgeguardError):
    """The local anti-rollback state store cannot be read or written safely."""

    exit_code = 11


class FileSystemError(EdgeguardError):
    """The operating system refused a file operation (disk full, permission, ...)."""

    exit_code = 12


class UncleanLogError(EdgeguardError):
    """An event log verifies but does not end with a final checkpoint.

    Every complete record chains and every checkpoint present verifies, so
    the records up to the last signed checkpoint are as the writer signed
    them (those after it are chained but not signed); but the log lacks the
    final checkpoint a writer writes when it closes cleanly. This is what a writer that crashed,
    lost power or was killed (``kill -9``) leaves behind: complete records
    after the last signed checkpoint and possibly a torn, unterminated last
    line. The message names the last complete record, how many records follow
    the last signed checkpoint and how many torn bytes were ignored.

    It does not mean the log was edited: an edit, deletion, insertion,
    reordering or a foreign key is an :class:`IntegrityError` (exit 4), never
    this error. It does not prove a crash either: a file cut exactly at a
    record boundary after the last signed checkpoint (dropping records not
    yet signed) is byte for byte what a writer killed at that point leaves,
    and the log alone cannot tell the two apart; the same holds for a cut at
    any earlier record boundary that leaves no final checkpoint at the end.
    """

    exit_code = 13


class SelftestFailedError(EdgeguardError):
    """A check of ``edgeguard selftest`` ran on this host and failed.

    Checks this host cannot run (no GPU, no TensorRT) are reported as not run and do
    not raise this: only a part that ran and disagreed with its reference does.
    """

    exit_code = 15

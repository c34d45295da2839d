"""Lazy import of optional and heavy dependencies.

Importing :mod:`edgeguard` never imports onnxruntime, numba, tensorrt or
pycuda. Modules that need them call :func:`require` at first use; a missing
module raises :class:`~edgeguard.errors.MissingDependencyError` naming the
extra to install, so the CLI can print one clear line instead of a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edgeguard.errors import MissingDependencyError

__all__ = ["available", "require"]


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise a MissingDependencyError naming ``extra``.

    Args:
        module: Dotted module name, for example ``"tensorrt"``.
        extra: The edgeguard extra that installs it, for example ``"trt"``.
        purpose: What needs it, for the message ("The TensorRT backend").

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: The module (or one it needs) is not importable.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module, extra, purpose=purpose) from exc


def available(module: str) -> bool:
    """Whether ``module`` can be imported (imports it on success)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True

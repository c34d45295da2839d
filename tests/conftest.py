"""Shared pytest configuration: report which optional stacks were found."""

from __future__ import annotations

import importlib.util
import shutil

import pytest


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _have_real_tensorrt() -> bool:
    """tensorrt-stubs installs an importable but empty 'tensorrt' package: look deeper."""
    if not _have("tensorrt"):
        return False
    try:
        import tensorrt

        return hasattr(tensorrt, "Runtime") and hasattr(tensorrt, "Builder")
    except Exception:
        return False


def pytest_report_header(config: pytest.Config) -> list[str]:
    stacks = {
        "onnxruntime": _have("onnxruntime"),
        "numba": _have("numba"),
        "tensorrt": _have_real_tensorrt(),
        "pycuda": _have("pycuda"),
        "tpm2_pytss": _have("tpm2_pytss"),
        "nvcc": shutil.which("nvcc") is not None,
        "swtpm": shutil.which("swtpm") is not None,
    }
    found = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in stacks.items())
    return [f"edgeguard optional stacks: {found}", "GPU: none expected on CI (gpu tests skip)"]

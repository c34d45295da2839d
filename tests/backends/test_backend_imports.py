"""Importing edgeguard and the modules of this area never pulls in heavy GPU/ML libraries."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

HEAVY = ("onnxruntime", "numba", "tensorrt", "pycuda")
MODULES = (
    "edgeguard",
    "edgeguard.backends",
    "edgeguard.backends.base",
    "edgeguard.backends.onnxruntime",
    "edgeguard.backends.tensorrt",
    "edgeguard.data",
    "edgeguard.devices",
    "edgeguard.cli.cmd_devices",
)
REPO = pathlib.Path(__file__).resolve().parents[2]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_backends_package_does_not_import_onnxruntime() -> None:
    proc = _python("import edgeguard.backends, sys; assert 'onnxruntime' not in sys.modules")
    assert proc.returncode == 0, proc.stderr


def test_no_module_of_this_area_imports_heavy_libraries() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {MODULES!r}:\n"
        "    importlib.import_module(m)\n"
        f"bad = sorted(h for h in {HEAVY!r} if any(k == h or k.startswith(h + '.') "
        "for k in sys.modules))\n"
        "assert not bad, bad\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr


def test_the_check_itself_can_fail() -> None:
    """Guard against a vacuous test: importing the ORT backend *and using it* does import ORT."""
    proc = _python(
        "import sys\n"
        "from edgeguard import data\n"
        "from edgeguard.backends import load_backend\n"
        "load_backend('onnx', data.model_bytes('digits_logreg'))\n"
        "assert 'onnxruntime' in sys.modules\n"
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("argv", [["devices", "--help"], ["devices", "list", "--help"]])
def test_cli_help_starts_without_heavy_imports(argv: list[str]) -> None:
    proc = _python(
        "import sys\n"
        "from edgeguard.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        f"bad = [h for h in {HEAVY!r} if h in sys.modules]\n"
        "assert not bad, bad\n"
    )
    assert proc.returncode == 0, proc.stderr


def test_onnxruntime_telemetry_is_off(tmp_path) -> None:
    """Importing edgeguard first keeps ONNX Runtime from writing its telemetry database."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env["HOME"] = str(tmp_path)
    code = (
        "import edgeguard\n"
        "from edgeguard.backends.onnxruntime import OnnxRuntimeBackend\n"
        "from edgeguard import data\n"
        "OnnxRuntimeBackend.from_bytes(data.model_bytes('digits_mlp')).close()\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / ".cache" / "Microsoft").exists()

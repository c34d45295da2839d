"""edgeguard/backends/tensorrt.py type-checks against the TensorRT 10 API stubs.

The project's plain ``mypy`` run cannot use ``tensorrt-stubs`` 10.13 as installed:
the package ships ``tensorrt/*.pyi`` without a ``py.typed`` marker and its generated
stubs contain a few syntax errors (a parameter named ``in``, a non-default parameter
after defaults). This test copies the stubs to a temporary directory, repairs exactly
those defects, and runs ``mypy --strict`` on the backend with the copy on MYPYPATH,
so wrong TensorRT API use (a misspelt method, a wrong argument type) fails here.
Errors inside the stubs themselves are ignored; only edgeguard's are counted.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def _stub_dirs() -> list[pathlib.Path] | None:
    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None or spec.origin is None:
        return None
    site = pathlib.Path(spec.origin).parent.parent
    dirs = [site / "tensorrt", site / "tensorrt_bindings"]
    if not all((d / "__init__.pyi").is_file() for d in dirs):
        return None
    return dirs


def _repair(text: str) -> str:
    text = re.sub(r"\bin: ", "in_: ", text)
    text = re.sub(r"^import tensorrt_libs.*$", "", text, flags=re.M)

    def fix_def(match: re.Match[str]) -> str:
        head, params, tail = match.group(1), match.group(2), match.group(3)
        parts = params.split(", ")
        seen_default = False
        for i, part in enumerate(parts):
            if "=" in part:
                seen_default = True
            elif seen_default and re.match(r"^\w+: [\w.\[\]]+$", part):
                parts[i] = part + " = ..."
        return head + ", ".join(parts) + tail

    return re.sub(r"^(\s*def \w+\()(.*)(\) -> .*:)$", fix_def, text, flags=re.M)


@pytest.mark.skipif(_stub_dirs() is None, reason="tensorrt-stubs is not installed")
def test_tensorrt_backend_typechecks_against_stubs(tmp_path: pathlib.Path) -> None:
    stubs = tmp_path / "stubs"
    for src in _stub_dirs() or []:
        dst = stubs / src.name
        shutil.copytree(src, dst)
        for pyi in dst.glob("*.pyi"):
            pyi.write_text(_repair(pyi.read_text(encoding="utf-8")), encoding="utf-8")
        (dst / "py.typed").write_text("")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--python-version",
            "3.10",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-error-summary",
            "edgeguard/backends/tensorrt.py",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MYPYPATH": str(stubs)},
    )
    lines = proc.stdout.splitlines()
    assert not any("syntax" in ln for ln in lines if ln.startswith(str(stubs))), proc.stdout[:2000]
    ours = [ln for ln in lines if ln.startswith("edgeguard")]
    assert not ours, "\n".join(ours)
    # the stubs were really used: tensorrt resolved from the repaired copy
    assert "import-untyped" not in proc.stdout

"""The TensorRT and CUDA modules type-check against the TensorRT 10 API stubs.

The project's plain ``mypy`` run cannot use ``tensorrt-stubs`` 10.13 as installed:
the package ships ``tensorrt/*.pyi`` without a ``py.typed`` marker and its generated
stubs contain a few syntax errors (a parameter named ``in``, a non-default parameter
after defaults). This test copies the stubs to a temporary directory, repairs exactly
those defects, and runs ``mypy --strict`` on every module that uses TensorRT or
pycuda types (:data:`MODULES`) with the copy on MYPYPATH, so wrong TensorRT API use
(a misspelt method, a wrong argument type) fails here. pycuda has no stubs: its calls
stay behind ``Any``. A generated snippet also checks that the guard's
``DeviceSanityCheck`` satisfies the backend's ``DeviceCheck[FrameStats]`` interface
(the two layers never import each other, so nothing else would notice a drift).
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
#: Every module that imports tensorrt or pycuda (or speaks to them through a seam).
MODULES = (
    "edgeguard/backends/tensorrt.py",
    "edgeguard/backends/trt_frame.py",
    "edgeguard/guard/sanity/cuda_cpp.py",
)
CONFORMANCE = """
from edgeguard.backends.tensorrt import BuiltEngine, TensorRTBackend, build_engine
from edgeguard.backends.trt_frame import DeviceCheck
from edgeguard.guard.sanity.cuda_cpp import CudaSanityKernel, DeviceSanityCheck
from edgeguard.guard.sanity.spec import FrameStats
from edgeguard.policy.engine import MemberRecipe


def wire(kernel: CudaSanityKernel, backend: TensorRTBackend, x: object) -> FrameStats:
    check: DeviceCheck[FrameStats] = kernel.device_check("image")
    direct: DeviceCheck[FrameStats] = DeviceSanityCheck(kernel, "image")
    _, stats = backend.run_with_stats({"image": x}, check)  # type: ignore[dict-item]
    assert direct.input_name == "image"
    return stats


def built(onnx: bytes) -> bytes:
    engine: BuiltEngine = build_engine(onnx, MemberRecipe(fp16=True))
    return engine.plan
"""


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
    snippet = tmp_path / "conformance.py"
    snippet.write_text(CONFORMANCE, encoding="utf-8")
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
            *MODULES,
            str(snippet),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MYPYPATH": str(stubs)},
    )
    lines = proc.stdout.splitlines()
    assert not any("syntax" in ln for ln in lines if ln.startswith(str(stubs))), proc.stdout[:2000]
    ours = [ln for ln in lines if ln.startswith(("edgeguard", str(snippet)))]
    assert not ours, "\n".join(ours)
    # the stubs were really used: tensorrt resolved from the repaired copy
    assert "import-untyped" not in proc.stdout

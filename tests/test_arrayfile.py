"""The one reader of .npz/.npy input files: crafted files are refused before allocation."""

from __future__ import annotations

import io
import pickle
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeguard import data
from edgeguard.arrayfile import ArrayLimits, contract_problem, open_arrays
from edgeguard.cli.main import main
from edgeguard.errors import MalformedError, UsageError
from edgeguard.policy.io import TensorSpec

# --------------------------------------------------------------------------- crafting


def npy_header(descr: Any, shape: Any, *, fortran: bool = False, version: int = 1) -> bytes:
    """An .npy header as numpy writes it, for any (hostile) values."""
    text = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode("latin1")
    return npy_header_text(text, version=version)


def npy_header_text(text: bytes, *, version: int = 1, length: int | None = None) -> bytes:
    fmt = "<H" if version == 1 else "<I"
    pre = 6 + 2 + struct.calcsize(fmt)
    pad = -(pre + len(text) + 1) % 64
    body = text + b" " * pad + b"\n"
    n = len(body) if length is None else length
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(fmt, n) + body


def npz(path: Path, members: dict[str, bytes], *, method: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as z:
        for name, content in members.items():
            z.writestr(name, content)
    return path


def deflated_zeros_member(header: bytes, zeros: int) -> tuple[bytes, int, int]:
    """A raw deflate stream of ``header`` then ``zeros`` zero bytes, made in milliseconds
    (independent, byte-aligned blocks of 1 MiB repeated); with its CRC-32 and size."""
    mib = 1 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(mib)) + c.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(zeros, mib)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = c.compress(bytes(rest)) + c.flush(zlib.Z_FINISH)
    crc, zero = zlib.crc32(header), bytes(mib)
    for _ in range(full):  # about a second per GiB
        crc = zlib.crc32(zero, crc)
    crc = zlib.crc32(bytes(rest), crc)
    return head + block * full + tail, crc, len(header) + zeros


def zip_with_raw_member(
    path: Path, name: str, raw: bytes, crc: int, size: int, *, claimed: int | None = None
) -> Path:
    """A one-member ZIP holding an already deflated stream; the directory may claim
    another uncompressed size (``claimed``) than the stream really has."""
    fname = name.encode()
    usize = size if claimed is None else claimed
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(raw), usize, len(fname), 0
    )
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII",
        0x02014B50,
        20,
        20,
        0,
        8,
        0,
        0x21,
        crc,
        len(raw),
        usize,
        len(fname),
        0,
        0,
        0,
        0,
        0,
        0,
    )
    cd_offset = len(local) + len(fname) + len(raw)
    cd = central + fname
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(cd), cd_offset, 0)
    path.write_bytes(local + fname + raw + cd + end)
    return path


def _refused(path: Path, match: str, **kw: Any) -> MalformedError:
    with pytest.raises(MalformedError, match=match) as err:
        open_arrays(path, **kw).read()
    assert "\n" not in str(err.value)
    return err.value


# --------------------------------------------------------------------------- reading


def test_reads_what_numpy_writes(tmp_path: Path) -> None:
    arrays = {
        "image": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "label": np.array([1, 2], np.int64),
        "flags": np.array([True, False]),
        "scalar": np.array(3.5, np.float16),
        "empty": np.zeros((0, 3), np.uint8),
        "fortran": np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
        "big_endian": np.arange(5, dtype=">f8"),
    }
    np.savez(tmp_path / "a.npz", **arrays)
    np.savez_compressed(tmp_path / "c.npz", **arrays)
    for f in ("a.npz", "c.npz"):
        got = open_arrays(tmp_path / f).read()
        assert set(got) == set(arrays)
        for k, v in arrays.items():
            assert np.array_equal(got[k], v) and got[k].shape == v.shape
            assert got[k].dtype == v.dtype.newbyteorder("=") and got[k].dtype.isnative
            assert got[k].flags.writeable
    np.save(tmp_path / "one.npy", arrays["fortran"])
    af = open_arrays(tmp_path / "one.npy")
    assert list(af.headers) == [""] and af.headers[""].describe() == "int32 [3, 4]"
    assert np.array_equal(af.read()[""], arrays["fortran"])
    # only the arrays asked for are read
    assert set(open_arrays(tmp_path / "a.npz").read(["label"])) == {"label"}


# --------------------------------------------------------------------------- crafted files


def test_a_244_byte_npz_declaring_256_tib_is_refused_before_allocation(tmp_path: Path) -> None:
    p = npz(tmp_path / "huge.npz", {"image.npy": npy_header("<f4", (2**46,))})
    assert p.stat().st_size < 300
    err = _refused(p, r"declare 2814749767105\d\d bytes more than the file holds for them, more")
    assert err.exit_code == 3
    # what run, serve and calibrate say: one line, exit 3 (not a MemoryError, exit 1)
    run = main(["run", "b.egb", "--trust", "t.pub", "--device-key", "d.key", "--input", str(p),
                "--output", str(tmp_path / "o.npz")])  # fmt: skip
    assert run == 3
    serve = main(["serve", "b.egb", "--trust", "t.pub", "--device-key", "d.key", "--frames",
                  str(p)])  # fmt: skip
    assert serve == 3
    calibrate = main(["calibrate", str(data.model_path("digits_logreg")), "--data", str(p),
                      "-o", str(tmp_path / "p.json")])  # fmt: skip
    assert calibrate == 3


def test_a_small_deflated_npz_declaring_over_a_gib_allocates_nothing(tmp_path: Path) -> None:
    """About a megabyte on disk, 1.1 GB declared (and really there when inflated)."""
    header = npy_header("<f4", (275_000_000,))
    raw, crc, size = deflated_zeros_member(header, 275_000_000 * 4)
    p = zip_with_raw_member(tmp_path / "bomb.npz", "image.npy", raw, crc, size)
    assert p.stat().st_size < 2 * 1024 * 1024
    tracemalloc.start()
    try:
        code = main(["run", "b.egb", "--trust", "t.pub", "--device-key", "d.key", "--input",
                     str(p), "--output", str(tmp_path / "o.npz")])  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024  # reading it took 1.1 GB (twice, for a moment)
    assert code == 3
    # the limit is what refused it: under a higher one its header passes
    raised = open_arrays(p, limits=ArrayLimits(max_bytes=2 << 30))
    assert raised.headers["image"].nbytes == size - len(header)


def test_inflation_is_bounded_by_the_header_not_the_zip_directory(tmp_path: Path) -> None:
    """A member whose header declares 16 bytes but whose stream inflates to 64 MiB, with
    the ZIP directory telling the truth or claiming only the declared size."""
    header = npy_header("<f4", (4,))
    raw, crc, size = deflated_zeros_member(header, 64 << 20)
    honest = zip_with_raw_member(tmp_path / "h.npz", "x.npy", raw, crc, size)
    lying = zip_with_raw_member(
        tmp_path / "l.npz", "x.npy", raw, crc, size, claimed=len(header) + 16
    )
    for p, match in ((honest, "bytes after its declared data"), (lying, "damaged")):
        tracemalloc.start()
        try:
            _refused(p, match)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 * 1024 * 1024, (p.name, peak)
    # a directory claiming more than the stream holds: the data ends early
    short = npy_header("<f4", (1024,))
    raw, crc, size = deflated_zeros_member(short, 16)
    p = zip_with_raw_member(tmp_path / "s.npz", "x.npy", raw, crc, size, claimed=10**9)
    _refused(p, "ends before|damaged")


def test_objects_and_pickles_are_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self) -> Any:
            return (Path.touch, (marker,))

    obj = np.empty(1, dtype=object)
    obj[0] = Boom()
    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    (tmp_path / "o.npy").write_bytes(buf.getvalue())
    npz(tmp_path / "o.npz", {"x.npy": buf.getvalue()})
    npz(tmp_path / "p.npz", {"x.pkl": pickle.dumps([1, 2])})
    for f in ("o.npy", "o.npz"):
        _refused(tmp_path / f, "Python objects")
    _refused(tmp_path / "p.npz", "not an .npy array")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("descr", "shape", "match"),
    [
        ([("a", "<f4"), ("b", "<i4")], (2,), "not supported"),  # structured
        ("<U4", (2,), "not supported"),
        ("|S4", (2,), "not supported"),
        ("<c8", (2,), "not supported"),
        ("|V8", (2,), "not supported"),
        ("<M8[s]", (2,), "not supported"),
        ("<f4", (-1,), "invalid shape"),
        ("<f4", (True, 2), "invalid shape"),
        ("<f4", (1,) * 33, "invalid shape"),
        ("<f4", (2**62, 2**62), "more than the limit"),
        ("<f9", (2,), "not a valid .npy header"),
        ("|O", (2,), "Python objects"),
    ],
    ids=repr,
)
def test_unsupported_headers_are_refused(
    tmp_path: Path, descr: Any, shape: Any, match: str
) -> None:
    h = npy_header(descr, shape)
    _refused(npz(tmp_path / "x.npz", {"x.npy": h + bytes(64)}), match)
    (tmp_path / "x.npy").write_bytes(h + bytes(64))
    _refused(tmp_path / "x.npy", match)


def test_a_subarray_dtype_is_refused(tmp_path: Path) -> None:
    h = npy_header_text(b"{'descr': ('<f4', (1000, 1000)), 'fortran_order': False, 'shape': (2,)}")
    _refused(npz(tmp_path / "x.npz", {"x.npy": h}), "not supported|not a valid")


def test_header_lengths_and_versions(tmp_path: Path) -> None:
    text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}"
    # a version 2 header claiming 4 GiB of header text: refused after a few bytes
    p = npz(tmp_path / "l.npz", {"x.npy": npy_header_text(text, version=2, length=2**32 - 1)})
    _refused(p, "header is longer than")
    # version 3 (UTF-8 field names) and unknown versions
    for v in (3, 9):
        raw = bytearray(npy_header_text(text, version=2))
        raw[6] = v
        _refused(npz(tmp_path / f"v{v}.npz", {"x.npy": bytes(raw)}), "not a valid .npy header")
    # a header that is not a dict literal, or nests without end
    for bad in (b"__import__('os').system('true')", b"{" * 5000, b"{'descr': '<f4'}"):
        _refused(npz(tmp_path / "b.npz", {"x.npy": npy_header_text(bad)}), "not a valid")


def test_npy_size_must_match_its_header(tmp_path: Path) -> None:
    h = npy_header("<f4", (4,))
    (tmp_path / "short.npy").write_bytes(h + bytes(15))
    _refused(tmp_path / "short.npy", "file holds 15 bytes of data")
    (tmp_path / "long.npy").write_bytes(h + bytes(17))
    _refused(tmp_path / "long.npy", "file holds 17 bytes of data")
    p = npz(tmp_path / "short.npz", {"x.npy": h + bytes(15)})
    _refused(p, "ends before its declared size")
    p = npz(tmp_path / "long.npz", {"x.npy": h + bytes(17)})
    _refused(p, "bytes after its declared data")


def test_archive_structure_is_checked(tmp_path: Path) -> None:
    ok = np.lib.format
    buf = io.BytesIO()
    ok.write_array(buf, np.zeros(2, np.float32))
    member = buf.getvalue()
    _refused(npz(tmp_path / "d.npz", {"dir/": b""}), "not an .npy array")
    _refused(npz(tmp_path / "e.npz", {".npy": member}), "not an .npy array")
    with zipfile.ZipFile(tmp_path / "dup.npz", "w") as z:
        z.writestr("x.npy", member)
        with pytest.warns(UserWarning):
            z.writestr("x.npy", member)
    _refused(tmp_path / "dup.npz", "appears twice")
    for method in (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        _refused(npz(tmp_path / f"m{method}.npz", {"x.npy": member}, method=method), "compressed")
    many = {f"a{i}.npy": member for i in range(5)}
    _refused(
        npz(tmp_path / "many.npz", many), "more than 4 arrays", limits=ArrayLimits(max_arrays=4)
    )
    raw = bytearray(npz(tmp_path / "enc.npz", {"x.npy": member}).read_bytes())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # set the encryption flag in both headers
        at = raw.index(sig) + (6 if sig == b"PK\x03\x04" else 8)
        raw[at] |= 1
    (tmp_path / "enc.npz").write_bytes(bytes(raw))
    _refused(tmp_path / "enc.npz", "encrypted")
    crc = bytearray(npz(tmp_path / "crc.npz", {"x.npy": member}).read_bytes())
    crc[raw.index(b"PK\x03\x04") + 30 + len("x.npy") + len(member) - 1] ^= 0xFF  # last data byte
    (tmp_path / "crc.npz").write_bytes(bytes(crc))
    _refused(tmp_path / "crc.npz", "damaged")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    _refused(tmp_path / "junk.npz", "not a readable .npz or .npy")
    with pytest.raises(UsageError, match="does not exist"):
        open_arrays(tmp_path / "missing.npz")
    with pytest.raises(UsageError, match="is a directory"):
        open_arrays(tmp_path)


def test_only_the_first_frame_is_read_when_asked(tmp_path: Path) -> None:
    """What run and serve read of an array that cannot feed the model: one frame."""
    big = np.zeros((2048, 16, 256), np.float64)  # 64 MiB declared
    big[0] = 1.0
    np.savez(tmp_path / "b.npz", x=big, f=np.asfortranarray(big[:4]))
    np.save(tmp_path / "b.npy", big)
    del big
    for name in ("b.npz", "b.npy"):
        af = open_arrays(tmp_path / name)
        tracemalloc.start()
        try:
            got = af.read(["x" if name == "b.npz" else ""], first=1)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        (arr,) = got.values()
        assert arr.shape == (1, 16, 256) and (arr == 1.0).all()
        assert peak < 4 * 1024 * 1024
    # column-major data is read whole (it is not contiguous by frame), then cut
    f = open_arrays(tmp_path / "b.npz").read(["f"], first=1)["f"]
    assert f.shape == (1, 16, 256) and (f == 1.0).all()
    # asking for more frames than there are reads them all
    assert open_arrays(tmp_path / "b.npy").read(first=5000)[""].shape == (2048, 16, 256)


def test_a_file_changed_between_headers_and_data_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "x.npz"
    np.savez(p, x=np.zeros(4, np.float32))
    af = open_arrays(p)
    np.savez(p, x=np.zeros(8, np.float32))
    _ = af.headers
    with pytest.raises(MalformedError, match="changed while it was read"):
        af.read()
    np.save(tmp_path / "y.npy", np.zeros(4, np.float32))
    af = open_arrays(tmp_path / "y.npy")
    np.save(tmp_path / "y.npy", np.zeros(4, np.float64))
    with pytest.raises(MalformedError, match="changed while it was read"):
        af.read()


# --------------------------------------------------------------------------- the contract


def test_declared_shapes_and_dtypes_against_the_model() -> None:
    from edgeguard.arrayfile import ArrayHeader

    def h(dtype: str, shape: tuple[int, ...]) -> ArrayHeader:
        return ArrayHeader("x", np.dtype(dtype), shape, False, 0)

    dynamic = TensorSpec("image", "float32", (None, 1, 8, 8))
    batch1 = TensorSpec("image", "float32", (1, 1, 8, 8))
    fixed = TensorSpec("state", "float32", (4, 2))
    assert contract_problem(h("float32", (50, 1, 8, 8)), dynamic, frames="batch-axis") is None
    assert contract_problem(h("float32", (50, 1, 8, 8)), batch1, frames="batch-axis") is None
    assert contract_problem(h("float32", (4, 2)), fixed, frames="batch-axis") is None
    assert "input.shape" in str(contract_problem(h("float32", (5, 2)), fixed, frames="batch-axis"))
    assert contract_problem(h("float32", (5, 2)), fixed, frames="first-axis") is None
    assert (
        contract_problem(h("float64", (2, 1, 8, 8)), dynamic, frames="batch-axis")
        == "input.dtype image: dtype float64; the model takes float32"
    )
    assert "input.rank" in str(
        contract_problem(h("float32", (2, 64)), dynamic, frames="batch-axis")
    )
    assert "input.shape" in str(
        contract_problem(h("float32", (2, 1, 8, 9)), dynamic, frames="first-axis")
    )


def test_calibrate_refuses_an_array_the_model_cannot_take_before_reading_it(
    tmp_path: Path,
) -> None:
    """A declared dtype or shape that does not fit, refused before any data is read."""
    p = npz(tmp_path / "bad.npz", {"image.npy": npy_header("<f4", (3, 1, 8, 9)) + bytes(16)})
    code = main(["calibrate", str(data.model_path("digits_logreg")), "--data", str(p),
                 "-o", str(tmp_path / "p.json")])  # fmt: skip
    assert code == 2
    np.savez(tmp_path / "ok.npz", image=np.zeros((40, 1, 8, 8), np.float32))
    assert main(["calibrate", str(data.model_path("digits_logreg")), "--data",
                 str(tmp_path / "ok.npz"), "--max-input-mb", "0", "-o",
                 str(tmp_path / "p.json")]) == 2  # fmt: skip


def test_serve_hands_one_frame_of_an_unfit_array_to_the_session(tmp_path: Path) -> None:
    """float64 frames for a float32 model: the first frame is refused and recorded by the
    session like any rejected input, no more is read, and serve exits 8."""
    import json

    from tests.fieldtest.test_faults_and_serve import _plain_bundle, _serve_cli

    bundle = _plain_bundle(tmp_path)
    images, _ = data.load_split("test")
    np.savez(tmp_path / "f64.npz", image=images[:40].astype(np.float64))
    records = tmp_path / "r.jsonl"
    r = _serve_cli(
        tmp_path, bundle, "--frames", str(tmp_path / "f64.npz"), "--records", str(records)
    )
    assert r.returncode == 8, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"edgeguard: error: {tmp_path / 'f64.npz'}: every frame would be rejected: input.dtype "
        "image: dtype float64; the model takes float32 (feed what the model takes (edgeguard "
        "inspect shows its inputs))"
    )
    lines = [json.loads(x) for x in records.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["source"] == "rejected", lines


def test_arrays_stored_as_is_count_only_against_available_memory(tmp_path: Path) -> None:
    """Data the file holds byte for byte (np.savez, .npy) is not an amplification: a
    stored file larger than --max-input-mb reads; its compressed twin is refused."""
    frames = np.zeros((4, 3, 64, 64), np.float32)  # 196 KiB, all zeros: compresses ~1000x
    stored, packed = tmp_path / "stored.npz", tmp_path / "packed.npz"
    np.savez(stored, image=frames)
    np.savez_compressed(packed, image=frames)
    tight = ArrayLimits(max_bytes=64 << 10)
    got = open_arrays(stored, limits=tight).read()
    assert got["image"].shape == (4, 3, 64, 64)
    npy = tmp_path / "frames.npy"
    np.save(npy, frames)
    assert open_arrays(npy, limits=tight).read()[""].shape == (4, 3, 64, 64)
    with pytest.raises(MalformedError, match="more than the file holds for them"):
        open_arrays(packed, limits=tight)


def test_arrays_larger_than_the_available_memory_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgeguard.arrayfile as af

    p = tmp_path / "f.npz"
    np.savez(p, image=np.zeros((2, 1024), np.float32))
    monkeypatch.setattr(af, "_available_memory", lambda: 4096)
    with pytest.raises(MalformedError, match="more than this machine's available memory"):
        open_arrays(p)

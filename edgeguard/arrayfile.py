"""The one reader of user-supplied array files (``.npz`` and ``.npy``).

Layer: beside :mod:`edgeguard.keystore` (file I/O of user files; imports the I/O
contract types of :mod:`edgeguard.policy.io` and nothing above). ``run``, ``serve``,
``calibrate`` and ``build`` (calibration data, a safe default) read arrays only
through :func:`open_arrays`.

An array file is untrusted: its ``.npy`` headers declare any shape and dtype, and a
zip member's sizes in the archive directory say whatever its maker wrote. So reading
is two steps, and nothing is allocated for an array before both checked it:

1. :func:`open_arrays` reads each array's ``.npy`` header through a stream that
   refuses to deliver more than a header can hold (``numpy.lib.format.read_magic`` and
   ``read_array_header_*``), refuses object, structured and other dtypes outside the
   I/O contract's element types (so no pickle is ever loaded), and adds up what the
   arrays declare beyond the bytes the file holds for them (the inflation of compressed
   members) against :class:`ArrayLimits` (1 GiB by default), and all they declare
   against the memory the machine has available.
2. The caller compares the declared shapes and dtypes with the model's inputs
   (:func:`contract_problem`), then :meth:`ArrayFile.read` fills each array (or only
   its first frames) from a stream bounded by its declared size: a zip member that
   decompresses to more or fewer bytes than its header declares is refused, whatever
   the archive directory says.

Every refusal is an :class:`~edgeguard.errors.EdgeguardError`: a file that is not a
readable array file, or exceeds a limit, is :class:`~edgeguard.errors.MalformedError`
(exit 3); a missing file is :class:`~edgeguard.errors.UsageError` (exit 2).
"""

from __future__ import annotations

import contextlib
import math
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import numpy.typing as npt

from edgeguard.errors import MalformedError, UsageError
from edgeguard.policy.io import DTYPES, TensorSpec

__all__ = [
    "DEFAULT_ARRAY_LIMITS",
    "ArrayFile",
    "ArrayHeader",
    "ArrayLimits",
    "contract_problem",
    "open_arrays",
]

_NPY_MAGIC = b"\x93NUMPY"
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArrayLimits:
    """Limits on one array file, checked before anything is allocated.

    Attributes:
        max_bytes: What the arrays may declare beyond the bytes the file holds for them,
            added up: the inflation of compressed ``.npz`` members (and any declared size
            the file does not back). Data stored as is (an ``.npy`` file, ``np.savez``)
            costs what the file holds and counts only against the memory available.
        max_arrays: Arrays in one ``.npz``.
        max_rank: Axes of one array.
        max_header: Bytes of one ``.npy`` header (numpy writes at most a few hundred).
    """

    max_bytes: int = 1 << 30
    max_arrays: int = 256
    max_rank: int = 32
    max_header: int = 10_000


DEFAULT_ARRAY_LIMITS = ArrayLimits()


@dataclass(frozen=True)
class ArrayHeader:
    """What an array's ``.npy`` header declares (checked: a supported dtype, a shape of
    non-negative sizes within the limits).

    Attributes:
        name: The array's name (the ``.npz`` member without ``.npy``; ``""`` for an
            ``.npy`` file).
        dtype: Its element type (as stored; byte order may be non-native).
        shape: Its shape.
        fortran_order: Whether the data is stored column-major.
        nbytes: The data's size in bytes.
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran_order: bool
    nbytes: int

    def describe(self) -> str:
        """``float32 [2, 1, 8, 8]``."""
        return f"{self.dtype.name} {list(self.shape)}"


class _TooLong(Exception):
    """A bounded stream was asked for more than it may deliver."""


class _Bounded:
    """``read(n)`` over ``f`` that refuses to deliver more than ``budget`` bytes."""

    def __init__(self, f: IO[bytes], budget: int) -> None:
        self._f = f
        self.left = budget

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            raise _TooLong
        data = self._f.read(n)
        self.left -= len(data)
        return data


def _bad(path: Path, what: str, problem: str) -> MalformedError:
    where = f"{path}" if not what else f"{path}: array {what!r}"
    return MalformedError(f"{where}: {problem}", hint="give an .npz or .npy file of numeric arrays")


def _read_header(f: IO[bytes], path: Path, name: str, limits: ArrayLimits) -> ArrayHeader:
    """Parse one ``.npy`` header from ``f`` (positioned at its start)."""
    fmt = np.lib.format
    stream = _Bounded(f, len(_NPY_MAGIC) + 2 + 4 + limits.max_header)
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            header = fmt.read_array_header_1_0(stream, max_header_size=limits.max_header)
        elif version == (2, 0):
            header = fmt.read_array_header_2_0(stream, max_header_size=limits.max_header)
        else:  # 3.0 exists for structured dtypes with non-Latin-1 field names: never ours
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran, dtype = header
    except _TooLong as exc:
        raise _bad(path, name, f"the .npy header is longer than {limits.max_header} bytes") from exc
    except zipfile.BadZipFile as exc:
        raise _bad(path, name, f"damaged zip member ({exc})") from exc
    # numpy parses the header with ast.literal_eval and builds the dtype from it: on
    # hostile text that raises ValueError, SyntaxError, TypeError, MemoryError, ...
    except Exception as exc:
        raise _bad(path, name, f"not a valid .npy header ({type(exc).__name__})") from exc
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise _bad(path, name, "holds Python objects (pickles are never loaded)")
    if dtype.fields is not None or dtype.subdtype is not None or dtype.name not in DTYPES:
        raise _bad(
            path,
            name,
            f"element type {dtype.str!r} is not supported (one of {', '.join(sorted(DTYPES))})",
        )
    if (
        not isinstance(shape, tuple)
        or len(shape) > limits.max_rank
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise _bad(path, name, f"declares an invalid shape {shape!r}")
    nbytes = math.prod(shape) * dtype.itemsize
    return ArrayHeader(name, dtype, shape, bool(fortran), nbytes)


def _fill(
    f: IO[bytes], header: ArrayHeader, path: Path, first: int | None = None
) -> npt.NDArray[Any]:
    """Read exactly the declared data of ``header`` from ``f`` (after its header), then
    insist on the end of the stream; with ``first``, only the first ``first`` entries of
    the first axis of a row-major array (no more is allocated or read)."""
    shape, nbytes, whole = header.shape, header.nbytes, True
    if first is not None and shape and not header.fortran_order and first < shape[0]:
        shape = (first, *shape[1:])
        nbytes = math.prod(shape) * header.dtype.itemsize
        whole = False
    flat = np.empty(nbytes, np.uint8)
    view = flat.data
    pos = 0
    stream = _Bounded(f, nbytes + 1)
    try:
        while pos < nbytes:
            data = stream.read(min(_READ_CHUNK, nbytes - pos))
            if not data:
                raise _bad(path, header.name, "the data ends before its declared size")
            view[pos : pos + len(data)] = data
            pos += len(data)
        if whole and stream.read(1):
            raise _bad(path, header.name, "has bytes after its declared data")
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        # zlib and zipfile report a damaged member (bad CRC, truncated stream) this way
        raise _bad(path, header.name, f"damaged data ({type(exc).__name__})") from exc
    dtype = header.dtype
    arr = flat.view(dtype).reshape(shape, order="F" if header.fortran_order else "C")
    if first is not None and arr.ndim and len(arr) > first:  # column-major: cut after
        arr = np.ascontiguousarray(arr[:first])
    if not dtype.isnative:  # big-endian data on this host: swap in place
        arr = arr.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return arr


class ArrayFile:
    """An array file whose headers were read and checked; the data is read on demand.

    :attr:`headers` maps each array's name to its :class:`ArrayHeader`; an ``.npy`` file
    holds one array named ``""``. The file is open only inside :func:`open_arrays` and
    :meth:`read`; :meth:`read` checks every header again, so a file changed in between
    is refused, not trusted.
    """

    def __init__(self, path: Path, limits: ArrayLimits) -> None:
        self.path = Path(path)
        self.limits = limits
        with self._opened() as (f, zf):
            self.headers: Mapping[str, ArrayHeader] = self._scan(f, zf)

    @contextlib.contextmanager
    def _opened(self) -> Iterator[tuple[IO[bytes], zipfile.ZipFile | None]]:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError as exc:
            raise UsageError(f"input file {self.path} does not exist") from exc
        except IsADirectoryError as exc:
            raise UsageError(f"input file {self.path} is a directory") from exc
        with f:
            magic = f.read(len(_NPY_MAGIC))
            f.seek(0)
            if magic == _NPY_MAGIC:
                yield f, None
                return
            try:
                zf = zipfile.ZipFile(f)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                raise MalformedError(
                    f"{self.path} is not a readable .npz or .npy file of arrays ({exc})",
                    hint="give an .npz or .npy file of numeric arrays",
                ) from exc
            with zf:
                yield f, zf

    def _scan(self, f: IO[bytes], zf: zipfile.ZipFile | None) -> dict[str, ArrayHeader]:
        if zf is None:
            return {"": self._npy_header(f)}
        infos = zf.infolist()
        if len(infos) > self.limits.max_arrays:
            raise _bad(self.path, "", f"holds more than {self.limits.max_arrays} arrays")
        headers: dict[str, ArrayHeader] = {}
        inflated: dict[str, int] = {}
        for info in infos:
            name = self._member_name(info)
            if name in headers:
                raise _bad(self.path, name, "appears twice in the archive")
            with self._open_member(zf, info) as m:
                headers[name] = _read_header(m, self.path, name, self.limits)
            # what the member would grow to beyond its bytes in the file (its header is
            # in those bytes too, so this never undercounts)
            inflated[name] = max(0, headers[name].nbytes - info.compress_size)
            self._check_total(headers.values(), inflated)
        return headers

    def _npy_header(self, f: IO[bytes]) -> ArrayHeader:
        """The header of an .npy file, whose size must be the header's plus the data's."""
        header = _read_header(f, self.path, "", self.limits)
        size = os.fstat(f.fileno()).st_size
        self._check_total([header], {"": max(0, header.nbytes - size)})
        if f.tell() + header.nbytes != size:
            raise _bad(
                self.path,
                "",
                f"declares {header.describe()} ({header.nbytes} bytes) but the file holds "
                f"{max(0, size - f.tell())} bytes of data",
            )
        return header

    def _member_name(self, info: zipfile.ZipInfo) -> str:
        name = info.filename
        if not name.endswith(".npy") or len(name) == len(".npy") or len(name) > 1024:
            raise _bad(self.path, "", f"member {name[:80]!r} is not an .npy array")
        if info.flag_bits & 0x1:
            raise _bad(self.path, name[:-4], "is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _bad(
                self.path, name[:-4], "is compressed with a method other than deflate or none"
            )
        return name[:-4]

    def _open_member(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> IO[bytes]:
        try:
            return zf.open(info)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise _bad(self.path, info.filename[:-4], f"damaged zip member ({exc})") from exc

    def _check_total(self, headers: Iterable[ArrayHeader], inflated: Mapping[str, int]) -> None:
        listed = list(headers)
        total = sum(h.nbytes for h in listed)
        grown = sum(inflated.values())
        if grown > self.limits.max_bytes:
            biggest = max(listed, key=lambda h: inflated.get(h.name, 0))
            raise MalformedError(
                f"{self.path}: its arrays declare {grown} bytes more than the file holds for "
                f"them, more than the limit of {self.limits.max_bytes} (the largest: "
                f"{biggest.name or 'the array'} {biggest.describe()})",
                hint="split the file, store it uncompressed (np.savez), or raise the limit "
                "with --max-input-mb",
            )
        available = _available_memory()
        if available is not None and total > available:
            biggest = max(listed, key=lambda h: h.nbytes)
            raise MalformedError(
                f"{self.path}: its arrays declare {total} bytes, more than this machine's "
                f"available memory ({available} bytes; the largest: "
                f"{biggest.name or 'the array'} {biggest.describe()})",
                hint="split the file into smaller ones",
            )

    def read(
        self, names: Iterable[str] | None = None, *, first: int | None = None
    ) -> dict[str, npt.NDArray[Any]]:
        """The arrays called ``names`` (default: all), each read within its declared size;
        with ``first``, only their first ``first`` entries along the first axis."""
        wanted = list(self.headers) if names is None else list(names)
        out: dict[str, npt.NDArray[Any]] = {}
        with self._opened() as (f, zf):
            if zf is None:
                if self._npy_header(f) != self.headers[""]:
                    raise _bad(self.path, "", "changed while it was read")
                return {name: _fill(f, self.headers[name], self.path, first) for name in wanted}
            infos = {info.filename: info for info in zf.infolist()}
            for name in wanted:
                header = self.headers[name]
                info = infos.get(name + ".npy")
                if info is None or self._member_name(info) != name:
                    raise _bad(self.path, name, "changed while it was read")
                with self._open_member(zf, info) as m:
                    if _read_header(m, self.path, name, self.limits) != header:
                        raise _bad(self.path, name, "changed while it was read")
                    out[name] = _fill(m, header, self.path, first)
        return out


def _available_memory() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (None where it cannot be read)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def open_arrays(path: Path, *, limits: ArrayLimits = DEFAULT_ARRAY_LIMITS) -> ArrayFile:
    """Read and check every array header of an ``.npz`` or ``.npy`` file.

    Raises:
        UsageError: The file does not exist or is a directory.
        MalformedError: Not an array file; a damaged or unsupported member; an object,
            structured or unsupported dtype; an invalid shape; over a limit.
    """
    return ArrayFile(path, limits)


def contract_problem(
    header: ArrayHeader, spec: TensorSpec, *, frames: Literal["first-axis", "batch-axis"]
) -> str | None:
    """Why the declared array cannot feed input ``spec``, or None when it can.

    Args:
        header: The array's declared dtype and shape.
        spec: The model input it feeds.
        frames: ``"first-axis"``: the first axis always counts frames (calibration data,
            ``serve``), so only the other axes are compared. ``"batch-axis"``: the first
            axis counts frames when the model's first axis is a batch axis (dynamic, or
            1), as :func:`~edgeguard.runtime.session.split_frames` cuts it for ``run``;
            a fixed first axis of another size must match.

    The wording follows the per-frame I/O contract check (``input.dtype``,
    ``input.rank``, ``input.shape``).
    """
    if header.dtype.name != spec.dtype:
        return f"input.dtype {spec.name}: dtype {header.dtype.name}; the model takes {spec.dtype}"
    if len(header.shape) != spec.rank:
        return (
            f"input.rank {spec.name}: shape {list(header.shape)} has rank {len(header.shape)}; "
            f"the model takes {spec.describe()}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, header.shape, strict=True)):
        if axis == 0 and (frames == "first-axis" or want == 1):
            continue
        if isinstance(want, int) and want != got:
            return (
                f"input.shape {spec.name}: shape {list(header.shape)}; the model takes "
                f"{spec.describe()}"
            )
    return None

"""CUDA C++ implementation of the sanity statistics: host harness and pycuda launcher.

Layer: :mod:`edgeguard.guard` (kernel loader). This is the only module of the
sanity guard that touches native code: it loads the CPU host harness
(``libedgeguard_sanity_host.so``, ctypes) and the device kernel
(``sanity_kernel.fatbin`` / ``sanity_kernel_sm_<N>.cubin``, pycuda). Both are
built from ``kernels/`` by the top-level ``CMakeLists.txt`` and share every
line of arithmetic through ``kernels/sanity_math.cuh``; see ``docs/kernels.md``.

* :class:`HostHarness` runs the device algorithm on the CPU (block by block,
  thread by thread, with the device's reduction order). Tests compare it with
  the NumPy oracle on the golden vectors and on random inputs.
* :class:`CudaSanityKernel` launches the real kernel on an NVIDIA GPU with
  pycuda (imported lazily: importing this module imports NumPy and ctypes
  only). It has never run on a GPU in this repository's CI.

Both return :class:`~edgeguard.guard.sanity.spec.FrameStats`, like
:func:`~edgeguard.guard.sanity.reference.reference_stats`.
"""

from __future__ import annotations

import ctypes
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeguard._optional import require
from edgeguard.errors import BackendError, InternalError, UsageError
from edgeguard.guard.sanity.layout import check_layout_name, resolve_stats_args
from edgeguard.guard.sanity.spec import FrameStats

__all__ = [
    "ABI_VERSION",
    "BLOCK_THREADS",
    "FATBIN",
    "HOST_LIBRARY",
    "KERNEL_DIR_ENV",
    "PARTIAL_BYTES",
    "STATS_DTYPE",
    "CudaSanityKernel",
    "DeviceSanityCheck",
    "HostHarness",
    "LaunchPlan",
    "default_rows_per_tile",
    "find_kernel_file",
    "kernel_search_dirs",
    "partials_bytes",
    "plan_launch",
]

#: Environment variable naming a directory with the built kernel files.
KERNEL_DIR_ENV = "EDGEGUARD_KERNEL_DIR"
#: File name of the CPU host harness library.
HOST_LIBRARY = "libedgeguard_sanity_host.so"
#: File name of the multi-architecture device image.
FATBIN = "sanity_kernel.fatbin"
#: EG_SANITY_ABI_VERSION of kernels/sanity_math.cuh this module speaks.
ABI_VERSION = 1
#: Threads per block of the partials kernel (EG_DEFAULT_THREADS).
BLOCK_THREADS = 256
#: Largest block the kernel is compiled for (EG_MAX_THREADS, __launch_bounds__).
MAX_THREADS = 256
#: Elements of one (frame, channel) plane per block (EG_TILE_ELEMS).
TILE_ELEMS = 8192
#: sizeof(EgPartial): 8 int64 + 6 double.
PARTIAL_BYTES = 112
#: Largest gridDim.z of a CUDA launch (frames per partials launch).
MAX_GRID_YZ = 65535
#: Largest gridDim.x of a CUDA launch (tiles * channels).
MAX_GRID_X = 2**31 - 1

#: Record layout of ``EgStats`` (kernels/sanity_math.cuh): 12 packed 8-byte fields.
STATS_DTYPE = np.dtype(
    [
        ("count", "<i8"),
        ("nan", "<i8"),
        ("posinf", "<i8"),
        ("neginf", "<i8"),
        ("min", "<f8"),
        ("max", "<f8"),
        ("mean", "<f8"),
        ("std", "<f8"),
        ("sat_lo", "<f8"),
        ("sat_hi", "<f8"),
        ("hf", "<f8"),
        ("tdiff", "<f8"),
    ]
)

_DTYPE_CODES = {"uint8": 0, "float16": 1, "float32": 2, "float64": 3}
_DTYPE_SUFFIX = {"uint8": "u8", "float16": "f16", "float32": "f32", "float64": "f64"}
_LAYOUT_CODES = {"NCHW": 0, "NHWC": 1}
_HOST_ERRORS = {
    1: "unsupported dtype code",
    2: "unsupported layout code",
    3: "negative dimension",
    4: "block_threads must be a multiple of 32 in [32, 256]",
    5: "null buffer",
}


# --------------------------------------------------------------------------- locating files


def kernel_search_dirs() -> list[Path]:
    """Directories searched for built kernel files, in order.

    ``$EDGEGUARD_KERNEL_DIR`` when set, then ``<repo>/build/kernels`` (the
    documented ``cmake -S . -B build`` output directory).
    """
    dirs: list[Path] = []
    env = os.environ.get(KERNEL_DIR_ENV)
    if env:
        dirs.append(Path(env))
    dirs.append(Path(__file__).resolve().parents[3] / "build" / "kernels")
    return dirs


def find_kernel_file(name: str, *, directory: str | os.PathLike[str] | None = None) -> Path:
    """Locate a built kernel file (host library, cubin or fatbin).

    Args:
        name: File name, e.g. :data:`HOST_LIBRARY` or ``"sanity_kernel.fatbin"``.
        directory: Search only this directory instead of :func:`kernel_search_dirs`.

    Returns:
        Path of the first match.

    Raises:
        UsageError: The file was not built (or not where it is looked for).
    """
    dirs = [Path(directory)] if directory is not None else kernel_search_dirs()
    for d in dirs:
        candidate = d / name
        if candidate.is_file():
            return candidate
    shown = ", ".join(str(d) for d in dirs)
    raise UsageError(
        f"kernel file {name} not found in {shown}",
        hint=f"build it with: cmake -S . -B build && cmake --build build (or set {KERNEL_DIR_ENV})",
    )


# --------------------------------------------------------------------------- launch plan


@dataclass(frozen=True)
class LaunchPlan:
    """How one tensor is cut into blocks (shared by the GPU launch and the host harness).

    Attributes:
        frames: N.
        channels: C.
        height: H.
        width: W.
        dtype: Input dtype name.
        layout: Memory layout passed to the kernel ("NCHW" or "NHWC").
        rows_per_tile: Rows of one (frame, channel) plane per block.
        tiles: Blocks per plane along H; 0 when the tensor is empty. The partials
            kernel runs ``tiles * C`` blocks along ``gridDim.x`` (channel fastest).
        block_threads: Threads per block.
    """

    frames: int
    channels: int
    height: int
    width: int
    dtype: str
    layout: str
    rows_per_tile: int
    tiles: int
    block_threads: int = BLOCK_THREADS

    @property
    def planes(self) -> int:
        """Number of (frame, channel) planes, N * C."""
        return self.frames * self.channels

    def frame_chunks(self) -> list[tuple[int, int]]:
        """``(first frame, frame count)`` per launch: gridDim.z is at most 65535."""
        return [
            (n0, min(MAX_GRID_YZ, self.frames - n0)) for n0 in range(0, self.frames, MAX_GRID_YZ)
        ]

    def bytes_read(self, *, with_prev: bool) -> int:
        """Bytes the partials kernel must read from DRAM (input once, prev once)."""
        item = np.dtype(self.dtype).itemsize
        total = self.planes * self.height * self.width * item
        return total * (2 if with_prev else 1)


def default_rows_per_tile(height: int, width: int) -> int:
    """Rows per block: about TILE_ELEMS elements (eg_default_rows_per_tile)."""
    rows = math.ceil(TILE_ELEMS / width) if width > 0 else 1
    return max(1, min(rows, height))


def _frames_dims(shape: tuple[int, ...], layout: str) -> tuple[int, int, int, int]:
    """``(N, C, H, W)`` of a shape (as ``layout.frames_shape``, without allocating)."""
    check_layout_name(layout)
    if len(shape) == 4:
        n, a, b, d = shape
        return (n, a, b, d) if layout == "NCHW" else (n, d, a, b)
    if len(shape) == 3:
        a, b, d = shape
        return (1, a, b, d) if layout == "NCHW" else (1, d, a, b)
    if len(shape) == 2:
        return (shape[0], 1, 1, shape[1])
    raise UsageError(f"sanity statistics need a tensor of rank 2, 3 or 4, got rank {len(shape)}")


def plan_launch(
    shape: tuple[int, ...],
    dtype: np.dtype[Any] | str,
    layout: str,
    *,
    block_threads: int = BLOCK_THREADS,
    rows_per_tile: int | None = None,
) -> LaunchPlan:
    """The launch plan of a tensor of ``shape`` / ``dtype`` read with ``layout``.

    Rank 3 tensors are one frame (CHW / HWC); rank 2 ``[N, F]`` is N frames of
    C = H = 1, W = F, passed to the kernel as NCHW.

    Raises:
        UsageError: Unsupported dtype or layout, bad block size or tile height,
            or more than 2**31 - 1 blocks per frame (gridDim.x).
    """
    name = str(np.dtype(dtype))
    if name not in _DTYPE_CODES:
        raise UsageError(f"unsupported dtype {name}; expected one of {sorted(_DTYPE_CODES)}")
    if block_threads < 32 or block_threads > MAX_THREADS or block_threads % 32:
        raise UsageError(
            f"block_threads must be a multiple of 32 in [32, 256], got {block_threads}"
        )
    n, c, h, w = _frames_dims(tuple(int(d) for d in shape), layout)
    kernel_layout = "NCHW" if len(shape) == 2 else layout
    if rows_per_tile is None:
        rpt = default_rows_per_tile(h, w)
    elif rows_per_tile < 1:
        raise UsageError(f"rows_per_tile must be >= 1, got {rows_per_tile}")
    else:
        rpt = rows_per_tile
    tiles = math.ceil(h / rpt) if h > 0 and w > 0 else 0
    if tiles * c > MAX_GRID_X:
        raise UsageError(f"{tiles * c} blocks per frame exceed the CUDA grid limit {MAX_GRID_X}")
    return LaunchPlan(n, c, h, w, name, kernel_layout, rpt, tiles, block_threads)


@dataclass(frozen=True, eq=False)
class _Prepared:
    x: npt.NDArray[Any]
    prev: npt.NDArray[Any] | None
    plan: LaunchPlan
    lo: float
    hi: float


def _prepare(
    x: npt.NDArray[Any],
    layout: str,
    sat_lo: float | None,
    sat_hi: float | None,
    prev: npt.NDArray[Any] | None,
    block_threads: int,
    rows_per_tile: int | None,
) -> _Prepared:
    lo, hi = resolve_stats_args(x, layout, sat_lo, sat_hi, prev)
    plan = plan_launch(
        x.shape, x.dtype, layout, block_threads=block_threads, rows_per_tile=rows_per_tile
    )
    # The kernel reads the tensor in its own memory order: make it C-contiguous
    # (a no-op for inputs that passed the static checks) and little-endian.
    xc = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
    pc = None if prev is None else np.ascontiguousarray(prev, dtype=xc.dtype)
    if xc.dtype == np.float16:  # the kernel reads binary16 bit patterns
        xc = xc.view(np.uint16)
        pc = None if pc is None else pc.view(np.uint16)
    return _Prepared(xc, pc, plan, lo, hi)


def _to_frame_stats(
    records: npt.NDArray[Any], plan: LaunchPlan, layout: str, lo: float, hi: float, has_prev: bool
) -> FrameStats:
    if records.dtype != STATS_DTYPE or records.shape != (plan.planes,):
        raise InternalError("kernel returned records of an unexpected shape or type")
    r = records.reshape(plan.frames, plan.channels)

    def f64(name: str) -> npt.NDArray[np.float64]:
        return np.ascontiguousarray(r[name], dtype=np.float64)

    def frame_sum(name: str) -> npt.NDArray[np.int64]:
        return np.asarray(r[name].sum(axis=1, dtype=np.int64), dtype=np.int64)

    return FrameStats(
        layout=layout,
        sat_lo_level=lo,
        sat_hi_level=hi,
        nan=frame_sum("nan"),
        posinf=frame_sum("posinf"),
        neginf=frame_sum("neginf"),
        count=np.ascontiguousarray(r["count"], dtype=np.int64),
        min=f64("min"),
        max=f64("max"),
        mean=f64("mean"),
        std=f64("std"),
        sat_lo=f64("sat_lo"),
        sat_hi=f64("sat_hi"),
        hf=f64("hf"),
        tdiff=f64("tdiff") if has_prev else None,
    )


# --------------------------------------------------------------------------- host harness


class HostHarness:
    """The device algorithm run on the CPU through ``libedgeguard_sanity_host.so``.

    Args:
        library: Path of the shared library; default: :func:`find_kernel_file`.

    Raises:
        UsageError: The library was not built or is not a sanity host library.
        InternalError: The library speaks another ABI version or record layout.
    """

    def __init__(self, library: str | os.PathLike[str] | None = None) -> None:
        path = Path(library) if library is not None else find_kernel_file(HOST_LIBRARY)
        if not path.is_file():
            raise UsageError(f"host harness library {path} does not exist")
        self._path = path
        try:
            lib = ctypes.CDLL(str(path))
            fn = lib.eg_sanity_host_stats
        except (OSError, AttributeError) as exc:
            raise UsageError(
                f"{path} is not an edgeguard sanity host library: {exc}",
                hint="build it with: cmake -S . -B build && cmake --build build",
            ) from exc
        lib.eg_sanity_abi_version.restype = ctypes.c_int
        lib.eg_sanity_abi_version.argtypes = []
        lib.eg_sanity_stats_size.restype = ctypes.c_int64
        lib.eg_sanity_stats_size.argtypes = []
        lib.eg_sanity_default_rows_per_tile.restype = ctypes.c_int64
        lib.eg_sanity_default_rows_per_tile.argtypes = [ctypes.c_int64, ctypes.c_int64]
        fn.restype = ctypes.c_int
        fn.argtypes = [
            ctypes.c_void_p,  # x
            ctypes.c_int,  # dtype
            ctypes.c_int,  # layout
            ctypes.c_int64,  # n
            ctypes.c_int64,  # c
            ctypes.c_int64,  # h
            ctypes.c_int64,  # w
            ctypes.c_void_p,  # prev
            ctypes.c_double,  # sat_lo
            ctypes.c_double,  # sat_hi
            ctypes.c_int,  # block_threads
            ctypes.c_int64,  # rows_per_tile
            ctypes.c_void_p,  # out
        ]
        version = int(lib.eg_sanity_abi_version())
        if version != ABI_VERSION:
            raise InternalError(
                f"{path} has sanity ABI version {version}, this edgeguard needs {ABI_VERSION}"
            )
        if int(lib.eg_sanity_stats_size()) != STATS_DTYPE.itemsize:
            raise InternalError(f"{path} has a different EgStats record layout")
        self._lib = lib
        self._fn = fn

    @property
    def path(self) -> Path:
        """The loaded library."""
        return self._path

    def default_rows_per_tile(self, height: int, width: int) -> int:
        """The library's default rows per block (must equal :func:`default_rows_per_tile`)."""
        return int(self._lib.eg_sanity_default_rows_per_tile(height, width))

    def stats(
        self,
        x: npt.NDArray[Any],
        *,
        layout: str = "NCHW",
        sat_lo: float | None = None,
        sat_hi: float | None = None,
        prev: npt.NDArray[Any] | None = None,
        block_threads: int = BLOCK_THREADS,
        rows_per_tile: int | None = None,
    ) -> FrameStats:
        """Compute the sanity statistics of ``x`` with the host harness.

        Same arguments, result and errors as
        :func:`~edgeguard.guard.sanity.reference.reference_stats`, plus the
        emulated launch shape (``block_threads``, ``rows_per_tile``).

        Raises:
            UsageError: Invalid arguments.
            InternalError: The library refused arguments this module validated.
        """
        p = _prepare(x, layout, sat_lo, sat_hi, prev, block_threads, rows_per_tile)
        plan = p.plan
        out = np.empty(plan.planes, dtype=STATS_DTYPE)
        rc = self._fn(
            p.x.ctypes.data if p.x.size else None,
            _DTYPE_CODES[plan.dtype],
            _LAYOUT_CODES[plan.layout],
            plan.frames,
            plan.channels,
            plan.height,
            plan.width,
            None if p.prev is None or p.prev.size == 0 else p.prev.ctypes.data,
            p.lo,
            p.hi,
            plan.block_threads,
            plan.rows_per_tile,
            out.ctypes.data if out.size else None,
        )
        if rc != 0:
            raise InternalError(f"host harness refused the call: {_HOST_ERRORS.get(rc, rc)}")
        has_prev = prev is not None
        return _to_frame_stats(out, plan, layout, p.lo, p.hi, has_prev)


# --------------------------------------------------------------------------- device kernel


class CudaSanityKernel:
    """The CUDA C++ sanity kernel launched with pycuda on an NVIDIA GPU.

    Loads the fatbin (or a cubin for one architecture) into the device's
    primary context and resolves the ``extern "C"`` entry points
    ``eg_sanity_partials_<u8|f16|f32|f64>_<nchw|nhwc>`` and ``eg_sanity_merge``.

    Args:
        kernel: Path of ``sanity_kernel.fatbin`` or ``sanity_kernel_sm_<N>.cubin``;
            default: :data:`FATBIN` found by :func:`find_kernel_file`.
        device: CUDA device ordinal.

    Raises:
        MissingDependencyError: pycuda is not installed.
        UsageError: The kernel file was not built.
        BackendError: No usable CUDA device, or the image has no code for it.
    """

    def __init__(self, kernel: str | os.PathLike[str] | None = None, *, device: int = 0) -> None:
        cuda = require("pycuda.driver", extra="cuda", purpose="The CUDA C++ sanity kernel")
        path = Path(kernel) if kernel is not None else find_kernel_file(FATBIN)
        if not path.is_file():
            raise UsageError(f"kernel image {path} does not exist")
        try:
            cuda.init()
            dev = cuda.Device(device)
            ctx = dev.retain_primary_context()
        except cuda.Error as exc:
            raise BackendError(f"no usable CUDA device {device}: {exc}") from exc
        ctx.push()
        try:
            module = cuda.module_from_file(str(path))
            self._partials = {
                (dt, lay): module.get_function(
                    f"eg_sanity_partials_{_DTYPE_SUFFIX[dt]}_{lay.lower()}"
                )
                for dt in _DTYPE_CODES
                for lay in _LAYOUT_CODES
            }
            self._merge = module.get_function("eg_sanity_merge")
        except cuda.Error as exc:
            raise BackendError(
                f"cannot load {path.name} on {dev.name()} "
                f"(sm_{''.join(map(str, dev.compute_capability()))}): {exc}"
            ) from exc
        finally:
            ctx.pop()
        self._cuda = cuda
        self._ctx: Any = ctx
        self._module = module
        self._path = path
        self._device_id = device

    @property
    def device_id(self) -> int:
        """The CUDA device ordinal the kernel was loaded on."""
        return self._device_id

    @property
    def path(self) -> Path:
        """The loaded kernel image."""
        return self._path

    def close(self) -> None:
        """Release the retained primary context (the object is unusable afterwards)."""
        if self._ctx is not None:
            self._ctx.detach()
            self._ctx = None

    def stats(
        self,
        x: npt.NDArray[Any],
        *,
        layout: str = "NCHW",
        sat_lo: float | None = None,
        sat_hi: float | None = None,
        prev: npt.NDArray[Any] | None = None,
        block_threads: int = BLOCK_THREADS,
        rows_per_tile: int | None = None,
    ) -> FrameStats:
        """Compute the sanity statistics of ``x`` on the GPU.

        Copies ``x`` (and ``prev``) to the device, launches the partials kernel
        over grid ``(tiles * C, 1, frames)`` in chunks of at most 65535 frames,
        then the merge kernel with one thread per (frame, channel), and copies
        the finalized records back. Same arguments, result and errors as
        :meth:`HostHarness.stats`.

        Raises:
            UsageError: Invalid arguments.
            BackendError: A CUDA call failed.
        """
        p = _prepare(x, layout, sat_lo, sat_hi, prev, block_threads, rows_per_tile)
        plan = p.plan
        has_prev = prev is not None
        out = np.empty(plan.planes, dtype=STATS_DTYPE)
        if plan.planes == 0:
            return _to_frame_stats(out, plan, layout, p.lo, p.hi, has_prev)
        cuda = self._cuda
        if self._ctx is None:
            raise UsageError("this CudaSanityKernel was closed")
        self._ctx.push()
        buffers: list[Any] = []
        try:
            partials = cuda.mem_alloc(partials_bytes(plan))
            records = cuda.mem_alloc(out.nbytes)
            buffers += [partials, records]
            x_dev: Any = np.uintp(0)
            prev_arg: Any = np.uintp(0)
            if plan.tiles > 0:
                x_dev = cuda.mem_alloc(p.x.nbytes)
                buffers.append(x_dev)
                cuda.memcpy_htod(x_dev, p.x)
                if p.prev is not None:
                    prev_dev = cuda.mem_alloc(p.prev.nbytes)
                    buffers.append(prev_dev)
                    cuda.memcpy_htod(prev_dev, p.prev)
                    prev_arg = prev_dev
            self._launch(plan, x_dev, prev_arg, partials, records, p.lo, p.hi, has_prev, None)
            cuda.memcpy_dtoh(out, records)
        except cuda.Error as exc:
            raise BackendError(f"CUDA sanity kernel failed: {exc}") from exc
        finally:
            for buf in buffers:
                buf.free()
            self._ctx.pop()
        return _to_frame_stats(out, plan, layout, p.lo, p.hi, has_prev)

    def _launch(
        self,
        plan: LaunchPlan,
        x: Any,
        prev: Any,
        partials: Any,
        records: Any,
        lo: float,
        hi: float,
        has_prev: bool,
        stream: Any,
    ) -> None:
        """Enqueue the partials and merge kernels (``stream`` None: the default stream)."""
        tiles = plan.tiles
        if tiles > 0:
            fn = self._partials[(plan.dtype, plan.layout)]
            for n0, count in plan.frame_chunks():
                fn(
                    x,
                    prev,
                    partials,
                    np.int64(n0),
                    np.int64(plan.channels),
                    np.int64(plan.height),
                    np.int64(plan.width),
                    np.int64(plan.rows_per_tile),
                    np.int64(tiles),
                    np.float64(lo),
                    np.float64(hi),
                    block=(plan.block_threads, 1, 1),
                    grid=(tiles * plan.channels, 1, count),
                    stream=stream,
                )
        merge_threads = 128
        self._merge(
            partials,
            records,
            np.int64(plan.planes),
            np.int64(tiles),
            np.float64(lo),
            np.float64(hi),
            np.int32(1 if has_prev else 0),
            block=(merge_threads, 1, 1),
            grid=(math.ceil(plan.planes / merge_threads), 1, 1),
            stream=stream,
        )

    def device_check(
        self,
        input_name: str,
        *,
        layout: str = "NCHW",
        sat_lo: float | None = None,
        sat_hi: float | None = None,
        block_threads: int = BLOCK_THREADS,
        rows_per_tile: int | None = None,
    ) -> DeviceSanityCheck:
        """The statistics of one model input, computed where a GPU backend keeps it.

        See :class:`DeviceSanityCheck`; the arguments are those of :meth:`stats`.
        """
        return DeviceSanityCheck(
            self,
            input_name,
            layout=layout,
            sat_lo=sat_lo,
            sat_hi=sat_hi,
            block_threads=block_threads,
            rows_per_tile=rows_per_tile,
        )


def partials_bytes(plan: LaunchPlan) -> int:
    """Device bytes of the partials buffer of one launch (at least 1)."""
    return max(1, plan.planes * max(plan.tiles, 1) * PARTIAL_BYTES)


class DeviceSanityCheck:
    """The sanity statistics of one model input, on the input's device buffer.

    A GPU backend that keeps the input on the device (the TensorRT backend's
    ``run_with_stats``) calls :meth:`device_buffers`, then :meth:`enqueue` on its own
    stream after copying the input and before running the model, copies back only
    the result buffer (``planes * 96`` bytes) and calls :meth:`finish`, which returns
    the :class:`~edgeguard.guard.sanity.spec.FrameStats` :meth:`CudaSanityKernel.stats`
    would return for the same array. This class implements the backends layer's
    ``DeviceCheck`` interface structurally: neither layer imports the other.

    The temporal statistic (``tdiff``) is not computed here (the previous accepted
    frame is the guard's to choose); its result has ``tdiff`` None. Never run on a
    GPU in this repository.

    Attributes:
        input_name: The model input the statistics describe.
        device_id: The CUDA device of the kernel.
    """

    def __init__(
        self,
        kernel: CudaSanityKernel,
        input_name: str,
        *,
        layout: str = "NCHW",
        sat_lo: float | None = None,
        sat_hi: float | None = None,
        block_threads: int = BLOCK_THREADS,
        rows_per_tile: int | None = None,
    ) -> None:
        if not isinstance(input_name, str) or not input_name:
            raise UsageError("input_name must be a non-empty str")
        check_layout_name(layout)
        self._kernel = kernel
        self._name = input_name
        self._layout = layout
        self._sat = (sat_lo, sat_hi)
        self._block_threads = block_threads
        self._rows_per_tile = rows_per_tile

    @property
    def input_name(self) -> str:
        """The model input the statistics describe."""
        return self._name

    @property
    def device_id(self) -> int:
        """The CUDA device ordinal of the kernel."""
        return self._kernel.device_id

    def _plan(self, shape: tuple[int, ...], dtype: str) -> tuple[LaunchPlan, float, float]:
        probe = np.empty((0,) * len(shape), dtype=np.dtype(dtype))
        lo, hi = resolve_stats_args(probe, self._layout, self._sat[0], self._sat[1], None)
        plan = plan_launch(
            shape,
            dtype,
            self._layout,
            block_threads=self._block_threads,
            rows_per_tile=self._rows_per_tile,
        )
        return plan, lo, hi

    def device_buffers(self, shape: tuple[int, ...], dtype: str) -> tuple[int, int]:
        """``(partials bytes, result bytes)`` for an input of this shape and dtype.

        Raises:
            UsageError: The statistics cannot read such a tensor (dtype, rank, levels).
        """
        plan, _, _ = self._plan(shape, dtype)
        return partials_bytes(plan), plan.planes * STATS_DTYPE.itemsize

    def enqueue(
        self,
        *,
        x: int,
        shape: tuple[int, ...],
        dtype: str,
        scratch: int,
        result: int,
        stream: Any,
    ) -> None:
        """Launch the kernels on ``stream`` over the device buffer at ``x``.

        The input must be C-contiguous in ``dtype`` (TensorRT's linear I/O format);
        ``scratch`` and ``result`` are device buffers of :meth:`device_buffers` bytes.
        """
        plan, lo, hi = self._plan(shape, dtype)
        if plan.planes == 0:
            return
        self._kernel._launch(
            plan,
            np.uintp(x),
            np.uintp(0),
            np.uintp(scratch),
            np.uintp(result),
            lo,
            hi,
            False,
            stream,
        )

    def finish(
        self, result: npt.NDArray[np.uint8], *, shape: tuple[int, ...], dtype: str
    ) -> FrameStats:
        """Decode the result buffer copied back from the device.

        Raises:
            InternalError: The buffer does not hold one record per (frame, channel).
        """
        plan, lo, hi = self._plan(shape, dtype)
        raw = np.ascontiguousarray(result, dtype=np.uint8)
        expected = plan.planes * STATS_DTYPE.itemsize
        if raw.nbytes != expected:
            raise InternalError(f"sanity result has {raw.nbytes} bytes, expected {expected}")
        records = raw.view(STATS_DTYPE)
        return _to_frame_stats(records, plan, self._layout, lo, hi, False)

"""Layout handling and static checks of the input-sanity guard.

Layer: :mod:`edgeguard.guard` (pure NumPy, no I/O).

Every implementation views an input tensor as frames ``[N, C, H, W]``:

* rank 4, layout "NCHW": as is; layout "NHWC": ``x[n, h, w, c]``;
* rank 3: one frame, CHW ("NCHW") or HWC ("NHWC");
* rank 2 ``[N, F]``: N frames with C = 1, H = 1, W = F (layout ignored).

The static checks (dtype, rank, shape ranges, C-contiguity) run before the
one-pass statistics and produce :class:`~edgeguard.guard.sanity.spec.Violation`
objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeguard.errors import UsageError
from edgeguard.guard.sanity.spec import Violation
from edgeguard.policy.sanity import LAYOUTS, SUPPORTED_DTYPES, InputProfile, Status

__all__ = [
    "check_layout_name",
    "frames_shape",
    "frames_view",
    "hf_eps",
    "resolve_stats_args",
    "static_checks",
]


def check_layout_name(layout: str) -> str:
    """Return ``layout`` if it is a known layout, else raise UsageError."""
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; expected one of {list(LAYOUTS)}")
    return layout


def frames_view(x: npt.NDArray[Any], layout: str) -> npt.NDArray[Any]:
    """A ``[N, C, H, W]`` view of ``x`` (no copy; strides follow ``layout``).

    Args:
        x: Input tensor of rank 2, 3 or 4.
        layout: "NCHW" or "NHWC".

    Returns:
        A view of ``x`` with axes ordered N, C, H, W.

    Raises:
        UsageError: Unknown layout or unsupported rank.
    """
    check_layout_name(layout)
    if x.ndim == 4:
        return x if layout == "NCHW" else x.transpose(0, 3, 1, 2)
    if x.ndim == 3:
        y = x[None]
        return y if layout == "NCHW" else y.transpose(0, 3, 1, 2)
    if x.ndim == 2:
        return x[:, None, None, :]
    raise UsageError(f"sanity statistics need a tensor of rank 2, 3 or 4, got rank {x.ndim}")


def frames_shape(shape: Sequence[int], layout: str) -> tuple[int, int, int, int]:
    """The ``(N, C, H, W)`` frames shape of a tensor shape (see :func:`frames_view`)."""
    view = frames_view(np.empty(tuple(shape), dtype=np.uint8), layout)
    n, c, h, w = view.shape
    return int(n), int(c), int(h), int(w)


def static_checks(name: str, x: Any, profile: InputProfile) -> list[Violation]:
    """Static checks of one input against its profile: type, dtype, rank, shape, contiguity.

    Every violation found is REJECT: an input failing a static check cannot be
    interpreted as the model expects.

    Args:
        name: Input name (for the violations).
        x: The value fed to the model.
        profile: The input's profile.

    Returns:
        The violations (empty when all checks pass).
    """
    out: list[Violation] = []

    def bad(check: str, detail: str) -> None:
        out.append(Violation(check=check, tensor=name, severity=Status.REJECT, detail=detail))

    if not isinstance(x, np.ndarray):
        bad("type", f"expected a numpy.ndarray, got {type(x).__name__}")
        return out
    dtype = str(x.dtype)
    if dtype not in profile.dtypes or dtype not in SUPPORTED_DTYPES:
        bad("dtype", f"dtype {dtype} not in {list(profile.dtypes)}")
    if x.ndim != len(profile.shape):
        bad("rank", f"rank {x.ndim}, expected {len(profile.shape)}")
    else:
        for axis, (size, (lo, hi)) in enumerate(zip(x.shape, profile.shape, strict=True)):
            if size < lo or (hi is not None and size > hi):
                shown = "inf" if hi is None else str(hi)
                bad("shape", f"dim {axis} is {size}, allowed [{lo}, {shown}]")
    if not x.flags.c_contiguous:
        bad("contiguity", "tensor is not C-contiguous")
    return out


def resolve_stats_args(
    x: npt.NDArray[Any],
    layout: str,
    sat_lo: float | None,
    sat_hi: float | None,
    prev: npt.NDArray[Any] | None,
) -> tuple[float, float]:
    """Validate the arguments shared by every statistics implementation.

    Args:
        x: Input tensor.
        layout: "NCHW" or "NHWC".
        sat_lo: Low saturation level, or None for the dtype default.
        sat_hi: High saturation level, or None for the dtype default.
        prev: Previous frame batch or None.

    Returns:
        The saturation levels ``(lo, hi)`` to use.

    Raises:
        UsageError: Not an ndarray, unsupported dtype, rank or layout, ``prev`` of
            another shape or dtype, or non-finite / inverted saturation levels.
    """
    if not isinstance(x, np.ndarray):
        raise UsageError(f"expected a numpy.ndarray, got {type(x).__name__}")
    if str(x.dtype) not in SUPPORTED_DTYPES:
        raise UsageError(f"unsupported dtype {x.dtype}; expected one of {list(SUPPORTED_DTYPES)}")
    check_layout_name(layout)
    if not 2 <= x.ndim <= 4:
        raise UsageError(f"sanity statistics need a tensor of rank 2, 3 or 4, got rank {x.ndim}")
    if prev is not None and (
        not isinstance(prev, np.ndarray) or prev.shape != x.shape or prev.dtype != x.dtype
    ):
        raise UsageError("prev must be an ndarray of the same shape and dtype as x")
    dlo, dhi = (0.0, 255.0) if x.dtype == np.uint8 else (0.0, 1.0)
    lo = dlo if sat_lo is None else float(sat_lo)
    hi = dhi if sat_hi is None else float(sat_hi)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo >= hi:
        raise UsageError(f"saturation levels must be finite with lo < hi, got ({lo}, {hi})")
    return lo, hi


def hf_eps(lo: float, hi: float) -> float:
    """The ``eps`` of the hf statistic: ``1e-6 * max(1, |hi - lo|)``."""
    return 1e-6 * max(1.0, abs(hi - lo))

"""The sanity guard: checks inputs and outputs of every call against a profile.

Layer: :mod:`edgeguard.guard`. Pure logic over NumPy arrays; the statistics
implementation is chosen by name and imported lazily.

Verdict semantics (docs/sanity.md, "Verdicts"):

* REJECT - a static check failed (type, dtype, rank, shape, contiguity), the
  input holds NaN/Inf (unless the profile allows it), a frame channel has no
  finite value, a statistic lies outside its REJECT limits, or an output holds
  NaN/Inf.
* WARN - a statistic lies outside its WARN band but inside its REJECT limits,
  or an OOD score crosses its threshold (OOD severity is WARN by default).
* PASS - none of the above.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edgeguard.errors import UsageError
from edgeguard.guard.sanity.layout import static_checks
from edgeguard.guard.sanity.output import output_checks
from edgeguard.guard.sanity.spec import FrameStats, Verdict, Violation
from edgeguard.policy.sanity import ENVELOPE_STATS, InputProfile, SanityProfile, Status

__all__ = ["IMPLS", "Impl", "SanityGuard", "compute_stats", "input_violations", "resolve_impl"]

Impl = Literal["auto", "numpy", "numba", "numba-cuda", "cuda-cpp"]
#: Implementation names accepted by :func:`compute_stats` and :class:`SanityGuard`.
IMPLS: tuple[str, ...] = ("auto", "numpy", "numba", "numba-cuda", "cuda-cpp")

StatsFn = Callable[..., FrameStats]


def resolve_impl(impl: str) -> tuple[str, StatsFn]:
    """The concrete implementation name and function for ``impl``.

    "auto" is the Numba CPU kernel when numba is importable, else the NumPy oracle.

    Raises:
        UsageError: Unknown name.
        MissingDependencyError: The implementation's module is missing.
    """
    if impl not in IMPLS:
        raise UsageError(f"unknown sanity implementation {impl!r}; expected one of {list(IMPLS)}")
    if impl == "auto":
        from edgeguard._optional import available

        impl = "numba" if available("numba") else "numpy"
    if impl == "numpy":
        from edgeguard.guard.sanity.reference import reference_stats

        return impl, reference_stats
    if impl == "numba":
        from edgeguard.guard.sanity.cpu import numba_stats

        return impl, numba_stats
    if impl == "numba-cuda":
        from edgeguard.guard.sanity.cuda import numba_cuda_stats

        return impl, numba_cuda_stats
    # CUDA C++ kernel (maintained with kernels/): needs the built fatbin, pycuda and a GPU;
    # its constructor raises MissingDependencyError / BackendError when they are absent.
    from edgeguard.guard.sanity.cuda_cpp import CudaSanityKernel

    kernel = CudaSanityKernel()
    return impl, kernel.stats


def compute_stats(
    x: npt.NDArray[Any],
    *,
    impl: Impl = "auto",
    layout: str = "NCHW",
    sat_lo: float | None = None,
    sat_hi: float | None = None,
    prev: npt.NDArray[Any] | None = None,
) -> FrameStats:
    """Compute the sanity statistics of ``x`` with the chosen implementation.

    Args:
        x: Input tensor.
        impl: "auto", "numpy", "numba", "numba-cuda" or "cuda-cpp".
        layout: "NCHW" or "NHWC".
        sat_lo: Low saturation level (default per dtype).
        sat_hi: High saturation level (default per dtype).
        prev: Previous frame batch for ``tdiff``.

    Returns:
        The statistics.
    """
    _, fn = resolve_impl(impl)
    return fn(x, layout=layout, sat_lo=sat_lo, sat_hi=sat_hi, prev=prev)


def input_violations(name: str, stats: FrameStats, profile: InputProfile) -> list[Violation]:
    """Violations of one input's statistics against its profile (no static checks).

    The scan is vectorised: NumPy compares every (frame, channel) against the limits
    at once and Python only builds objects for the values that violate them, so a
    batch of hundreds of frames costs about as much as one.
    """
    out: list[Violation] = []
    nonfinite = stats.nan + stats.posinf + stats.neginf
    empty = stats.count == 0
    if not profile.allow_nonfinite:
        for n in np.flatnonzero(nonfinite):
            out.append(
                Violation(
                    check="nonfinite",
                    tensor=name,
                    severity=Status.REJECT,
                    value=float(nonfinite[n]),
                    low=0.0,
                    high=0.0,
                    frame=int(n),
                    detail=f"{stats.nan[n]} NaN, {stats.posinf[n]} +inf, {stats.neginf[n]} -inf",
                )
            )
    for n, c in zip(*np.nonzero(empty), strict=True):
        out.append(
            Violation(
                check="empty",
                tensor=name,
                severity=Status.REJECT,
                value=0.0,
                frame=int(n),
                channel=int(c),
                detail="no finite value in this frame channel",
            )
        )
    small = stats.frames * stats.channels <= 16  # scalar checks beat NumPy's call overhead
    for lim in profile.limits:
        arr = stats.get(lim.stat)
        if arr is None:
            continue  # tdiff without a previous frame
        if small:
            _scalar_limit_checks(out, name, lim, arr, empty)
            continue
        v = np.asarray(arr, dtype=np.float64)
        valid = ~empty & ~np.isnan(v)  # NaN: statistic undefined here (e.g. tdiff)
        rlo, rhi = np.asarray(lim.reject_low), np.asarray(lim.reject_high)
        wlo, whi = np.asarray(lim.warn_low), np.asarray(lim.warn_high)
        reject = valid & ((v < rlo) | (v > rhi))
        warn = valid & ~reject & ((v < wlo) | (v > whi))
        for sev, mask, lo, hi in (
            (Status.REJECT, reject, rlo, rhi),
            (Status.WARN, warn, wlo, whi),
        ):
            for n, c in zip(*np.nonzero(mask), strict=True):
                out.append(
                    Violation(
                        check=f"stat.{lim.stat}",
                        tensor=name,
                        severity=sev,
                        value=float(v[n, c]),
                        low=float(lo[c]),
                        high=float(hi[c]),
                        frame=int(n),
                        channel=int(c),
                    )
                )
    out.sort(key=lambda x: (x.frame if x.frame is not None else -1, x.channel or 0))
    return out


assert ENVELOPE_STATS == ("min", "max", "mean", "std", "sat_lo", "sat_hi", "hf", "tdiff")


@dataclass(frozen=True)
class _Envelope:
    """One input's limits stacked for a one-shot "all inside" test (the common case).

    ``lo``/``hi`` ``[L, C]`` are the intersection of the WARN and REJECT ranges of
    limit row ``l``, which applies to statistic ``ENVELOPE_STATS[codes[l]]``.
    """

    codes: npt.NDArray[np.int64]
    codes_no_prev: npt.NDArray[np.int64]  # tdiff rows skipped (no previous frame)
    lo: npt.NDArray[np.float64]
    hi: npt.NDArray[np.float64]
    compiled: bool

    @classmethod
    def of(cls, profile: InputProfile, *, compiled: bool) -> _Envelope | None:
        lims = profile.limits
        if not lims or len({len(lim.warn_low) for lim in lims}) != 1:
            return None
        codes = np.array([ENVELOPE_STATS.index(lim.stat) for lim in lims], dtype=np.int64)
        td = ENVELOPE_STATS.index("tdiff")
        return cls(
            codes=codes,
            codes_no_prev=np.where(codes == td, -1, codes),
            lo=np.array([np.maximum(lim.warn_low, lim.reject_low) for lim in lims]),
            hi=np.array([np.minimum(lim.warn_high, lim.reject_high) for lim in lims]),
            compiled=compiled,
        )

    def inside(self, stats: FrameStats, allow_nonfinite: bool) -> bool:
        """True when ``stats`` violates nothing (then no per-value scan is needed)."""
        td = stats.tdiff
        codes = self.codes if td is not None else self.codes_no_prev
        # ENVELOPE_STATS order (checked at import); hf stands in for a missing tdiff
        vals = (
            stats.min,
            stats.max,
            stats.mean,
            stats.std,
            stats.sat_lo,
            stats.sat_hi,
            stats.hf,
            td if td is not None else stats.hf,
        )
        if self.compiled:
            from edgeguard.guard.sanity.cpu import envelope_inside

            return envelope_inside(vals, codes, self.lo, self.hi, stats, allow_nonfinite)
        if not allow_nonfinite and (stats.nan.any() or stats.posinf.any() or stats.neginf.any()):
            return False
        if not stats.count.all():
            return False
        for ell, k in enumerate(codes):
            if k < 0:
                continue
            v = vals[k]
            if v.shape[1] != self.lo.shape[1]:
                return False
            # NaN (a statistic undefined here) compares False on both sides: inside
            if ((v < self.lo[ell]) | (v > self.hi[ell])).any():
                return False
        return True


def _scalar_limit_checks(out: list[Violation], name: str, lim: Any, arr: Any, empty: Any) -> None:
    frames, channels = arr.shape
    for n in range(frames):
        for c in range(channels):
            if empty[n, c]:
                continue
            v = float(arr[n, c])
            if v != v:  # NaN: statistic undefined here (e.g. tdiff without overlap)
                continue
            if v < lim.reject_low[c] or v > lim.reject_high[c]:
                sev, lo, hi = Status.REJECT, lim.reject_low[c], lim.reject_high[c]
            elif v < lim.warn_low[c] or v > lim.warn_high[c]:
                sev, lo, hi = Status.WARN, lim.warn_low[c], lim.warn_high[c]
            else:
                continue
            out.append(
                Violation(
                    check=f"stat.{lim.stat}",
                    tensor=name,
                    severity=sev,
                    value=v,
                    low=lo,
                    high=hi,
                    frame=n,
                    channel=c,
                )
            )


class SanityGuard:
    """Checks the inputs and outputs of every call against a calibrated profile.

    Example:
        >>> guard = SanityGuard(profile)            # doctest: +SKIP
        >>> verdict = guard.check_inputs({"image": x})  # doctest: +SKIP
        >>> verdict.raise_if_rejected()             # doctest: +SKIP
    """

    def __init__(
        self, profile: SanityProfile, *, impl: Impl = "auto", threads: int | None = None
    ) -> None:
        """Create a guard.

        Args:
            profile: The calibrated profile (from the signed bundle manifest).
            impl: Statistics implementation; "auto" = Numba CPU on hosts.
            threads: ``1`` computes the Numba CPU statistics in the calling thread.
                Use it next to inference runtimes whose thread pools hold the other
                cores (ONNX Runtime keeps its pool spinning after each run): a
                parallel check then waits for a time slice on a busy core
                (``benchmarks/RESULTS.md``, side measurements).
                ``None``: parallel for large tensors.

        Raises:
            UsageError: Unknown ``impl``.
            MissingDependencyError: The implementation's module is missing.
            BackendError: "cuda-cpp" requested but not built.
        """
        if not isinstance(profile, SanityProfile):
            raise UsageError("SanityGuard needs a SanityProfile")
        if threads is not None and threads != 1:
            raise UsageError("SanityGuard threads must be 1 or None")
        self._profile = profile
        self._impl, self._fn = resolve_impl(impl)
        # Per input: the stacked envelope, and the last (dtype, shape) that passed the
        # static checks (a camera's frames repeat them, so those checks run once).
        compiled = self._impl == "numba"
        self._envelopes = {p.name: _Envelope.of(p, compiled=compiled) for p in profile.inputs}
        self._static_ok: dict[str, tuple[np.dtype[Any], tuple[int, ...]]] = {}
        if threads == 1 and self._impl == "numba":
            self._fn = functools.partial(self._fn, serial=True)
        self._warm = False
        self._count_nonfinite: Callable[[Any], int] | None = None
        if compiled:
            from edgeguard.guard.sanity.cpu import count_nonfinite

            self._count_nonfinite = count_nonfinite

    def warm_up(self) -> None:
        """Compile (or load from numba's on-disk cache) every kernel the checks call.

        Numba compiles a kernel on its first call, which on a machine without the
        cache takes seconds: without this, the first frame would pay for it (and
        miss its deadline). :class:`~edgeguard.runtime.guarded.GuardedRuntime` calls
        it when it is built; it is idempotent and cheap once compiled. A no-op for
        the NumPy and CUDA implementations.
        """
        if self._impl != "numba" or self._warm:
            return
        from edgeguard.guard.sanity.cpu import count_nonfinite, numba_stats

        forced_serial = isinstance(self._fn, functools.partial)
        for p in self._profile.inputs:
            shape = tuple(max(lo, 1) for lo, _ in p.shape)
            for dtype in p.dtypes:
                x = np.zeros(shape, dtype=dtype)
                for serial in (True,) if forced_serial else (True, False):
                    stats = numba_stats(
                        x, layout=p.layout, sat_lo=p.sat_lo, sat_hi=p.sat_hi, prev=x, serial=serial
                    )
                env = self._envelopes[p.name]
                if env is not None:
                    env.inside(stats, p.allow_nonfinite)
        for dt in (np.float32, np.float64):
            count_nonfinite(np.zeros(1, dtype=dt))
        self._warm = True

    @property
    def counts_nonfinite_outputs(self) -> bool:
        """True: :meth:`check_outputs` counts NaN/inf in every float output."""
        return True

    @property
    def profile(self) -> SanityProfile:
        """The profile checked against."""
        return self._profile

    @property
    def impl(self) -> str:
        """The concrete statistics implementation in use."""
        return self._impl

    def input_stats(
        self,
        name: str,
        x: npt.NDArray[Any],
        prev: npt.NDArray[Any] | None = None,
    ) -> FrameStats:
        """Statistics of input ``name`` with the profile's layout and saturation levels."""
        p = self._profile.input(name)
        if prev is not None and (prev.shape != x.shape or prev.dtype != x.dtype):
            prev = None
        return self._fn(x, layout=p.layout, sat_lo=p.sat_lo, sat_hi=p.sat_hi, prev=prev)

    def check_inputs(
        self,
        feeds: Mapping[str, Any],
        prev: Mapping[str, Any] | None = None,
        *,
        stats_elsewhere: frozenset[str] = frozenset(),
    ) -> Verdict:
        """Check every input of one call.

        Args:
            feeds: Input name -> array, as about to be given to the model.
            prev: The previous call's feeds (enables the temporal ``tdiff`` check);
                an entry of another shape or dtype is ignored.
            stats_elsewhere: Inputs whose statistics are computed elsewhere (on the
                device, next to the model; judged later with :meth:`check_stats`):
                only their static checks run here.

        Returns:
            The verdict; a missing or unexpected input is a REJECT violation (an input
            the profile lists as unchecked is expected, and not checked).
        """
        violations: list[Violation] = []
        names = {p.name for p in self._profile.inputs} | set(self._profile.unchecked)
        for extra in sorted(set(feeds) - names):
            violations.append(
                Violation(
                    check="input.unexpected",
                    tensor=extra,
                    severity=Status.REJECT,
                    detail="not a model input",
                )
            )
        for p in self._profile.inputs:
            if p.name not in feeds:
                violations.append(
                    Violation(
                        check="input.missing",
                        tensor=p.name,
                        severity=Status.REJECT,
                        detail="input not fed",
                    )
                )
                continue
            x = feeds[p.name]
            seen = self._static_ok.get(p.name)
            if not (
                type(x) is np.ndarray
                and seen is not None
                and x.dtype == seen[0]
                and x.shape == seen[1]
                and x.flags.c_contiguous
            ):
                static = static_checks(p.name, x, p)
                if static:
                    violations += static
                    if any(v.check in ("type", "dtype", "rank") for v in static):
                        continue  # cannot interpret the values
                    x = np.ascontiguousarray(x)
                else:
                    self._static_ok[p.name] = (x.dtype, x.shape)
            if p.name in stats_elsewhere:
                continue
            pv = None if prev is None else prev.get(p.name)
            pv = pv if isinstance(pv, np.ndarray) else None
            stats = self.input_stats(p.name, x, pv)
            env = self._envelopes[p.name]
            if env is None or not env.inside(stats, p.allow_nonfinite):
                violations += input_violations(p.name, stats, p)
        return Verdict.of(violations)

    def check_stats(self, name: str, stats: FrameStats) -> Verdict:
        """Judge statistics of input ``name`` computed elsewhere (on the device).

        The same envelope test and :func:`input_violations` as :meth:`check_inputs`;
        the static checks are not repeated (they ran before the model did).

        Raises:
            KeyError: ``name`` is not a checked input of the profile.
            UsageError: ``stats`` has another number of channels than the profile.
        """
        p = self._profile.input(name)
        widths = {len(lim.warn_low) for lim in p.limits}
        if widths and widths != {stats.channels}:
            raise UsageError(
                f"statistics of {name!r} have {stats.channels} channels; "
                f"the profile {sorted(widths)}"
            )
        env = self._envelopes[name]
        if env is not None and env.inside(stats, p.allow_nonfinite):
            return Verdict.of(())
        return Verdict.of(input_violations(name, stats, p))

    def check_outputs(self, outputs: Mapping[str, Any]) -> Verdict:
        """Check the outputs of one call: NaN/Inf and OOD scores."""
        return Verdict.of(
            output_checks(outputs, self._profile.ood, count_nonfinite=self._count_nonfinite)
        )

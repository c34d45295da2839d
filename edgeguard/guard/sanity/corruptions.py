"""Input corruptions and a black-box attack for evaluating the sanity guard.

Layer: :mod:`edgeguard.guard` (evaluation support, pure NumPy). Used by the
tests and by ``examples/sanity_quality.py``; every function returns a new
array and never modifies its argument. Frames are ``[N, C, H, W]`` (NCHW) or
``[N, H, W, C]`` (NHWC) floats in ``lo..hi``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "bgr_swap",
    "drop_channel",
    "gaussian_noise",
    "inject",
    "random_search_attack",
    "saturate",
    "wrong_scale",
]

Array = npt.NDArray[Any]


def inject(x: Array, value: float, *, fraction: float, rng: np.random.Generator) -> Array:
    """Set a random ``fraction`` (at least one value) of every frame to ``value`` (NaN, inf)."""
    y: Array = x.copy()
    flat = y.reshape(y.shape[0], -1)
    k = max(1, round(fraction * flat.shape[1]))
    for n in range(flat.shape[0]):
        flat[n, rng.choice(flat.shape[1], size=k, replace=False)] = value
    return y


def saturate(x: Array, *, gain: float, lo: float = 0.0, hi: float = 1.0) -> Array:
    """Over-exposure: ``clip(x * gain, lo, hi)``."""
    out: Array = np.clip(x * np.asarray(gain, dtype=x.dtype), lo, hi).astype(x.dtype)
    return out


def drop_channel(x: Array, channel: int, *, layout: str = "NCHW", fill: float = 0.0) -> Array:
    """A dead channel: every value of ``channel`` set to ``fill``."""
    y: Array = x.copy()
    if layout == "NCHW":
        y[:, channel] = fill
    else:
        y[..., channel] = fill
    return y


def bgr_swap(x: Array, *, layout: str = "NCHW") -> Array:
    """Channel order reversed (RGB <-> BGR)."""
    y = x[:, ::-1] if layout == "NCHW" else x[..., ::-1]
    return np.ascontiguousarray(y)


def wrong_scale(x: Array, *, factor: float = 255.0) -> Array:
    """Wrong value range, e.g. 0..255 handed to a model expecting 0..1."""
    out: Array = (x * np.asarray(factor, dtype=x.dtype)).astype(x.dtype)
    return out


def gaussian_noise(
    x: Array,
    *,
    sigma: float,
    rng: np.random.Generator,
    clip: tuple[float, float] | None = None,
) -> Array:
    """Additive Gaussian noise, optionally clipped back into the valid range."""
    y = x + rng.normal(0.0, sigma, size=x.shape)
    if clip is not None:
        y = np.clip(y, clip[0], clip[1])
    return y.astype(x.dtype)


def _margin(logits: Array, labels: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Logit margin of the true class over the best other class (< 0: misclassified)."""
    z = np.asarray(logits, dtype=np.float64)
    true = z[np.arange(z.shape[0]), labels]
    other = z.copy()
    other[np.arange(z.shape[0]), labels] = -np.inf
    return np.asarray(true - other.max(axis=1), dtype=np.float64)


def random_search_attack(
    predict: Callable[[Array], Array],
    x: Array,
    labels: npt.NDArray[np.int64],
    *,
    eps: float,
    queries: int,
    rng: np.random.Generator,
    lo: float = 0.0,
    hi: float = 1.0,
) -> tuple[Array, npt.NDArray[np.bool_]]:
    """Score-based black-box L-inf attack (random search over sign patterns).

    A simplified Square-Attack-style random search: the perturbation is
    ``eps * sign`` per value (clipped to ``[lo, hi]``); each query flips the
    signs of a random subset of values for every frame that is still correctly
    classified and keeps the change when the logit margin of the true class
    drops. It uses only the model's logits (one batched call per query).

    Args:
        predict: Frames -> logits ``[N, K]``.
        x: Clean frames.
        labels: True classes ``[N]``.
        eps: L-inf budget.
        queries: Number of batched model calls.
        rng: Random generator.
        lo: Lower bound of valid values.
        hi: Upper bound of valid values.

    Returns:
        The adversarial frames and a mask of frames that are misclassified.
    """
    n = x.shape[0]
    per = int(np.prod(x.shape[1:]))
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n, per))

    def make(s: npt.NDArray[np.float64]) -> Array:
        adv = x.reshape(n, per) + eps * s
        return np.clip(adv, lo, hi).astype(x.dtype).reshape(x.shape)

    best = make(signs)
    score = _margin(predict(best), labels)
    frac = 0.2
    for q in range(queries):
        active = score > 0
        if not active.any():
            break
        k = max(1, int(frac * per * (1.0 - q / max(queries, 1))))
        trial = signs.copy()
        for i in np.flatnonzero(active):
            idx = rng.choice(per, size=k, replace=False)
            trial[i, idx] = -trial[i, idx]
        cand = make(trial)
        new = _margin(predict(cand), labels)
        better = active & (new < score)
        signs[better] = trial[better]
        score = np.where(better, new, score)
        best = np.where(better.reshape((n,) + (1,) * (x.ndim - 1)), cand, best)
    return best, score <= 0

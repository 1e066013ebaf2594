"""Robust location and scale (median / MAD) and the robust z-score, shared by every outlier
score (the flags' feature and embedding outliers, the motifs' segment outliers)."""

from __future__ import annotations

from typing import Literal

import numpy as np

#: MAD x this = the standard deviation of a normal distribution
MAD_TO_SIGMA = 1.4826

#: a spread at or below this is a constant input (see :func:`robust_z`)
CONSTANT_SPREAD = 1e-12

Side = Literal["abs", "high", "signed"]


def median_sigma(x: np.ndarray) -> tuple[float, float] | None:
    """(median, 1.4826 x median absolute deviation) of the finite values of ``x``, or None when
    fewer than 3 are finite."""
    ok = x[np.isfinite(x)]
    if ok.size < 3:
        return None
    med = float(np.median(ok))
    return med, MAD_TO_SIGMA * float(np.median(np.abs(ok - med)))


def robust_z(
    x: np.ndarray,
    side: Side = "abs",
    *,
    center: float | np.ndarray | None = None,
    sigma: float | np.ndarray | None = None,
    min_sigma: float = 0.0,
    constant: float = 0.0,
) -> np.ndarray:
    """Robust z-score ``(x - median) / sigma`` of every value, ``sigma`` = 1.4826 MAD.

    Args:
        x: the values (float64 result, same shape).
        side: ``abs`` -> ``|z|`` (far on either side); ``high`` -> ``max(z, 0)`` (only large
            values are outliers, e.g. a distance); ``signed`` -> ``z``.
        center, sigma: precomputed location and scale (scalars, or arrays aligned with ``x``,
            e.g. per-cluster statistics); both None: :func:`median_sigma` of ``x``, and all
            zeros when fewer than 3 values are finite.
        min_sigma: a floor on the scale (keeps a very tight group from turning tiny
            differences into huge scores).
        constant: the score of a value that differs (by more than 1e-9) from the center of a
            constant input (scale <= 1e-12): such a value is infinitely far, capped here;
            values equal to the center score 0.

    Non-finite values score 0.
    """
    x = np.asarray(x, np.float64)
    if center is None or sigma is None:
        stats = median_sigma(x)
        if stats is None:
            return np.zeros(x.shape, np.float64)
        center, sigma = stats
    scale = np.maximum(np.asarray(sigma, np.float64), min_sigma)
    d = x - center
    with np.errstate(invalid="ignore", divide="ignore"):
        z = d / np.where(scale > CONSTANT_SPREAD, scale, 1.0)
    far = np.abs(d) > 1e-9
    if side == "abs":
        z = np.abs(z)
    elif side == "high":
        z, far = np.maximum(0.0, z), d > 1e-9
    capped = constant * (np.sign(d) if side == "signed" else 1.0)
    z = np.where(scale > CONSTANT_SPREAD, z, np.where(far, capped, 0.0))
    return np.where(np.isfinite(x), z, 0.0)


def high_side_robust_z(x: np.ndarray) -> np.ndarray:
    """:func:`robust_z` of the high side only (far-from-everything is the outlier side of a
    k-NN distance); 0 for NaN and for a constant input."""
    return robust_z(x, "high")

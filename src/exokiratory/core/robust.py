"""Robust location and scale (median / MAD), shared by every outlier score."""

from __future__ import annotations

import numpy as np

#: MAD x this = the standard deviation of a normal distribution
MAD_TO_SIGMA = 1.4826


def median_sigma(x: np.ndarray) -> tuple[float, float] | None:
    """(median, 1.4826 x median absolute deviation) of the finite values of ``x``, or None when
    fewer than 3 are finite."""
    ok = x[np.isfinite(x)]
    if ok.size < 3:
        return None
    med = float(np.median(ok))
    return med, MAD_TO_SIGMA * float(np.median(np.abs(ok - med)))

"""Summary statistics of a relative depth map (pure numpy).

The model predicts relative *inverse* depth ``D`` (disparity: larger is nearer), defined only
up to an unknown scale and shift per image. Everything stored is therefore per image and
invariant to that affine ambiguity:

* ``depth`` below means the normalised relative depth ``r = clip((hi - D) / (hi - lo), 0, 1)``
  with ``lo``, ``hi`` the 2nd and 98th percentiles of ``D``: 0 = the nearest 2 % of the image,
  1 = the farthest 2 %. (A flat prediction, ``hi - lo`` < 1e-6, gives ``r`` = 0.5 everywhere.)
* ``depth_p05``, ``depth_p25``, ``depth_p50``, ``depth_p75``, ``depth_p95``: percentiles of ``r``.
* ``near_fraction`` / ``far_fraction``: share of pixels with ``r`` < 1/3 / ``r`` > 2/3.
* ``depth_entropy_score``: Shannon entropy of the 16-bin histogram of ``r`` on [0, 1], divided
  by 4 bits (0 = one depth, 1 = depths spread evenly).
* ``planarity_score``: R^2 of the least-squares fit ``D ~ a + b x + c y`` over the image. For a
  pinhole camera the inverse depth of a plane is exactly affine in the pixel coordinates, and
  ``D`` is affine-invariant, so 1 = the scene is one plane (a wall, a document, a table top seen
  obliquely), lower = relief (objects in front, corners, sky over ground).
* ``depth_layering_score``: Otsu's separability of ``r``, ``sigma_between^2 / sigma_total^2`` at
  the best two-class threshold (256 bins): 1 = two separated depth layers (a subject before a far
  background), near 0 = one continuous ramp; 0 for a flat map.
* ``disparity_min``, ``disparity_max``: the model's raw output range (model units, comparable
  only between images of the same model).
* ``depth_map``: ``r`` resized (box filter) so that its longer side is ``map_side`` (64) px,
  float16, row-major, ``depth_map_height`` x ``depth_map_width``; for conditioning later.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

HIST_BINS = 16
NEAR, FAR = 1 / 3, 2 / 3


def normalise(disparity: np.ndarray) -> np.ndarray:
    """``r`` in [0, 1] (0 near, 1 far) from the raw disparity (see the module docstring)."""
    d = disparity.astype(np.float64)
    lo, hi = np.percentile(d, [2, 98])
    if hi - lo < 1e-6:
        return np.full(d.shape, 0.5, np.float64)
    return np.clip((hi - d) / (hi - lo), 0.0, 1.0)


def planarity(disparity: np.ndarray) -> float:
    """R^2 of the affine fit of the disparity on the pixel coordinates (1 for a constant map).

    On a full pixel grid the two coordinates are uncorrelated, so the least-squares fit
    decouples: slope along x = cov(x, D) / var(x) (from the column means), along y likewise,
    and R^2 = (b^2 var(x) + c^2 var(y)) / var(D): exact, in one pass over the map."""
    d = disparity.astype(np.float64)
    total = float(d.var())
    if total <= 1e-12:
        return 1.0
    h, w = d.shape
    xc = np.arange(w) - (w - 1) / 2
    yc = np.arange(h) - (h - 1) / 2
    mean = d.mean()
    b = float((d.mean(axis=0) - mean) @ xc) / float(xc @ xc) if w > 1 else 0.0
    c = float((d.mean(axis=1) - mean) @ yc) / float(yc @ yc) if h > 1 else 0.0
    explained = b * b * float(np.mean(xc * xc)) + c * c * float(np.mean(yc * yc))
    return float(np.clip(explained / total, 0.0, 1.0))


def otsu_separability(r: np.ndarray, bins: int = 256) -> float:
    """Otsu's ``sigma_between^2 / sigma_total^2`` at the best threshold (0 for a flat map)."""
    hist, edges = np.histogram(r, bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    total_var = float((p * (centres - (p * centres).sum()) ** 2).sum())
    if total_var <= 1e-12:
        return 0.0
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * (1 - w0))
    between = np.nan_to_num(between[:-1], nan=0.0, posinf=0.0)
    return float(np.clip(between.max() / total_var, 0.0, 1.0))


def entropy_score(r: np.ndarray) -> float:
    hist, _ = np.histogram(r, bins=HIST_BINS, range=(0.0, 1.0))
    p = hist[hist > 0].astype(np.float64) / hist.sum()
    return float(-(p * np.log2(p)).sum() / np.log2(HIST_BINS))


def small_map(r: np.ndarray, map_side: int) -> np.ndarray:
    """``r`` box-resized so its longer side is ``map_side`` (never upscaled), float16."""
    h, w = r.shape
    scale = min(1.0, map_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray(r.astype(np.float32), mode="F")
    if img.size != size:
        img = img.resize(size, Image.Resampling.BOX)
    return np.asarray(img, np.float32).astype(np.float16)


def depth_summary(disparity: np.ndarray, map_side: int = 64) -> dict[str, Any]:
    """Every stored column of one image's prediction (see the module docstring)."""
    r = normalise(disparity)
    p05, p25, p50, p75, p95 = np.percentile(r, [5, 25, 50, 75, 95])
    m = small_map(r, map_side)
    return {
        "depth_p05": float(p05),
        "depth_p25": float(p25),
        "depth_p50": float(p50),
        "depth_p75": float(p75),
        "depth_p95": float(p95),
        "near_fraction": float((r < NEAR).mean()),
        "far_fraction": float((r > FAR).mean()),
        "depth_entropy_score": entropy_score(r),
        "planarity_score": planarity(disparity),
        "depth_layering_score": otsu_separability(r),
        "disparity_min": float(disparity.min()),
        "disparity_max": float(disparity.max()),
        "depth_map": m.ravel(),
        "depth_map_height": int(m.shape[0]),
        "depth_map_width": int(m.shape[1]),
    }

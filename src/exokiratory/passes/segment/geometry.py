"""Shape measurements of binary masks, exact on pixel shapes (numpy only).

Conventions (mask raster coordinates; pixel ``(row i, column j)`` is the unit square
``[j, j+1] x [i, i+1]``, so the mask is a union of unit squares):

* ``area_pixels``: number of foreground pixels; ``area_fraction``: of the raster.
* ``bbox``: COCO ``[x, y, w, h]``: left column, top row, width and height in pixels.
* ``centroid_x``, ``centroid_y``: centre of mass of the union of squares (a pixel's centre is
  ``(j + 0.5, i + 0.5)``).
* ``eccentricity``: ``sqrt(1 - l2 / l1)`` for the eigenvalues ``l1 >= l2`` of the second central
  moments of the union of squares (each pixel adds its own ``1/12`` variance per axis), i.e. the
  eccentricity of the ellipse with the same second moments: 0 for a square or a disc,
  ``sqrt(1 - (w/h)^2)`` exactly for a ``w x h`` rectangle with ``w <= h``.
* ``perimeter``: crack length, the number of pixel edges between the mask and the outside (the
  raster border counts as outside): exactly ``2 (w + h)`` for a rectangle.
* ``solidity``: ``area_pixels`` over the area of the convex hull of the pixel squares' corners:
  exactly 1 for a rectangle (and any convex union of squares that fills its hull).
* ``touches_border``: the mask has a pixel in the first or last row or column of the raster.

:func:`measure` works on a stack of masks; every measurement except the hull is vectorised over
the stack; the hull runs on each mask's row extremes only (at most ``4 x bbox height`` points, fewer
after dropping the rows that cannot hold a hull vertex).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Per-mask measurements of a stack of ``N`` masks (arrays of length ``N``)."""

    area_pixels: np.ndarray  # int64
    area_fraction: np.ndarray  # float32
    bbox: np.ndarray  # float32 (N, 4): x, y, w, h
    centroid_x: np.ndarray  # float32
    centroid_y: np.ndarray  # float32
    eccentricity: np.ndarray  # float32
    perimeter: np.ndarray  # float32
    solidity: np.ndarray  # float32
    touches_border: np.ndarray  # bool

    @property
    def thickness(self) -> np.ndarray:
        """Mean thickness ``2 * area / perimeter`` in pixels (about the width of a thin band)."""
        return np.where(
            self.perimeter > 0, 2.0 * self.area_pixels / np.maximum(self.perimeter, 1), 0
        )


def measure(masks: np.ndarray) -> Geometry:
    """Measure every mask of a boolean ``(N, H, W)`` stack (empty masks get zeros)."""
    if masks.ndim != 3:
        raise ValueError(f"expected masks of shape (N, H, W), got {masks.shape}")
    masks = masks.astype(bool, copy=False)
    n, height, width = masks.shape
    rows = np.asarray(masks.any(axis=2))  # (N, H)
    cols = np.asarray(masks.any(axis=1))  # (N, W)
    row_counts = masks.sum(axis=2, dtype=np.int64)  # pixels per row
    col_counts = masks.sum(axis=1, dtype=np.int64)  # pixels per column
    area = row_counts.sum(axis=1)
    safe_area = np.maximum(area, 1).astype(np.float64)
    bbox = _bboxes(rows, cols)
    xs = np.arange(width, dtype=np.float64) + 0.5
    ys = np.arange(height, dtype=np.float64) + 0.5
    cx = col_counts @ xs / safe_area
    cy = row_counts @ ys / safe_area
    ecc = _eccentricity(masks, row_counts, col_counts, xs, ys, cx, cy, safe_area)
    border = rows[:, 0] | rows[:, -1] | cols[:, 0] | cols[:, -1]
    hull = np.array([_hull_area(m, b) for m, b in zip(masks, bbox, strict=True)], np.float64)
    solidity = np.where(hull > 0, area / np.maximum(hull, 1e-12), 0.0)
    empty = area == 0
    return Geometry(
        area_pixels=area.astype(np.int64),
        area_fraction=(area / float(height * width)).astype(np.float32),
        bbox=bbox.astype(np.float32),
        centroid_x=np.where(empty, 0, cx).astype(np.float32),
        centroid_y=np.where(empty, 0, cy).astype(np.float32),
        eccentricity=np.where(empty, 0, ecc).astype(np.float32),
        perimeter=_perimeter(masks).astype(np.float32),
        solidity=solidity.astype(np.float32),
        touches_border=border & ~empty if n else np.zeros(0, bool),
    )


def _bboxes(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """COCO ``[x, y, w, h]`` from per-mask row/column occupancy (zeros for empty masks)."""
    n = rows.shape[0]
    out = np.zeros((n, 4), np.int64)
    has = rows.any(axis=1)
    y0 = rows.argmax(axis=1)
    y1 = rows.shape[1] - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = cols.shape[1] - cols[:, ::-1].argmax(axis=1)
    out[has] = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)[has]
    return out


def _eccentricity(
    masks: np.ndarray,
    row_counts: np.ndarray,
    col_counts: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    area: np.ndarray,
) -> np.ndarray:
    """Eccentricity of the moment-equivalent ellipse of each union of pixel squares."""
    var_x = col_counts @ (xs * xs) / area - cx * cx + 1.0 / 12.0
    var_y = row_counts @ (ys * ys) / area - cy * cy + 1.0 / 12.0
    # sum over pixels of x*y = sum over rows of y * (sum of x in that row)
    row_x = np.einsum("nhw,w->nh", masks, xs, dtype=np.float64, casting="unsafe")
    cov = row_x @ ys / area - cx * cy
    half_trace = (var_x + var_y) / 2
    root = np.sqrt(((var_x - var_y) / 2) ** 2 + cov * cov)
    l1, l2 = half_trace + root, np.maximum(half_trace - root, 0.0)
    return np.sqrt(np.clip(1.0 - l2 / np.maximum(l1, 1e-12), 0.0, 1.0))


def _perimeter(masks: np.ndarray) -> np.ndarray:
    """Crack length: foreground/outside pixel edges, the raster border counting as outside."""
    inner_v = np.count_nonzero(masks[:, :, 1:] != masks[:, :, :-1], axis=(1, 2))
    inner_h = np.count_nonzero(masks[:, 1:, :] != masks[:, :-1, :], axis=(1, 2))
    edges = (
        np.count_nonzero(masks[:, :, 0], axis=1)
        + np.count_nonzero(masks[:, :, -1], axis=1)
        + np.count_nonzero(masks[:, 0, :], axis=1)
        + np.count_nonzero(masks[:, -1, :], axis=1)
    )
    return (inner_v + inner_h + edges).astype(np.int64)


def _hull_area(mask: np.ndarray, bbox: np.ndarray) -> float:
    """Area of the convex hull of the mask's pixel squares (0 for an empty mask)."""
    x, y, w, h = (int(v) for v in bbox)
    if w == 0 or h == 0:
        return 0.0
    sub = mask[y : y + h, x : x + w]
    has = sub.any(axis=1)
    rr = np.nonzero(has)[0]
    left = sub[rr].argmax(axis=1)
    right = w - sub[rr, ::-1].argmax(axis=1)
    # corners of the leftmost and rightmost squares of the occupied rows that can be hull
    # vertices (the others lie on a segment between hull points: the same hull, fewer points)
    lk, rk = _outermost(left), _outermost(-right)
    left, lr, right, rr = left[lk], rr[lk], right[rk], rr[rk]
    px = np.concatenate([left, left, right, right]).astype(np.float64)
    py = np.concatenate([lr, lr + 1, rr, rr + 1]).astype(np.float64)
    return _polygon_area(convex_hull(np.stack([px, py], axis=1)))


def _outermost(v: np.ndarray) -> np.ndarray:
    """Rows whose ``v`` is strictly below that of every row above or of every row below.

    ``v`` is the left edge (the right side: ``-right``). Another row has a row above and a row
    below that reach at least as far out; its outer corners lie between its opposite corners
    and the segment joining those two rows, so inside the hull: dropping them keeps the hull."""
    big = np.iinfo(np.int64).max
    v = v.astype(np.int64)
    above = np.concatenate([[big], np.minimum.accumulate(v)[:-1]])
    below = np.concatenate([np.minimum.accumulate(v[::-1])[::-1][1:], [big]])
    return np.asarray((v < above) | (v < below))


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull of ``(N, 2)`` points, counter-clockwise, by Andrew's monotone chain."""
    pts = np.unique(points, axis=0)  # sorted by x then y
    if len(pts) <= 2:
        return pts
    seq = [(float(a), float(b)) for a, b in pts]

    def half(points_seq: list[tuple[float, float]]) -> list[tuple[float, float]]:
        chain: list[tuple[float, float]] = []
        for p in points_seq:
            while len(chain) >= 2:
                (ax, ay), (bx, by) = chain[-2], chain[-1]
                if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) > 0:
                    break
                chain.pop()
            chain.append(p)
        return chain

    lower, upper = half(seq), half(seq[::-1])
    return np.asarray(lower[:-1] + upper[:-1], np.float64)


def _polygon_area(poly: np.ndarray) -> float:
    """Shoelace area of a simple polygon (0 for fewer than three vertices)."""
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)

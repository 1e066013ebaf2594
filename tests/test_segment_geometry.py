"""Exact geometry of masks on synthetic shapes with known answers (segments/geometry.py)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as coco_mask

from exokiratory.passes.segment.geometry import convex_hull, measure
from exokiratory.passes.segment.rle import encode_rle

H, W = 120, 160


def _grid() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:H, :W] + 0.5
    return xx, yy


def _one(mask: np.ndarray):  # type: ignore[no-untyped-def]
    return measure(mask[None])


def test_rectangle_is_exact() -> None:
    m = np.zeros((H, W), bool)
    m[10:30, 40:120] = True  # 80 wide, 20 high
    g = _one(m)
    assert g.area_pixels[0] == 1600
    assert g.bbox[0].tolist() == [40, 10, 80, 20]
    assert g.solidity[0] == 1.0
    assert g.perimeter[0] == 2 * (80 + 20)
    assert (g.centroid_x[0], g.centroid_y[0]) == (80.0, 20.0)
    assert math.isclose(g.eccentricity[0], math.sqrt(1 - (20 / 80) ** 2), rel_tol=1e-6)
    assert not g.touches_border[0]
    assert math.isclose(g.area_fraction[0], 1600 / (H * W), rel_tol=1e-6)


def test_square_and_single_pixel_have_zero_eccentricity() -> None:
    m = np.zeros((2, H, W), bool)
    m[0, 50:90, 50:90] = True
    m[1, 7, 9] = True
    g = measure(m)
    assert g.eccentricity.tolist() == [0.0, 0.0]
    assert g.solidity.tolist() == [1.0, 1.0]
    assert g.perimeter.tolist() == [160.0, 4.0]


def test_l_shape_solidity_is_exact() -> None:
    m = np.zeros((H, W), bool)
    m[20:30, 20:30] = True
    m[25:30, 25:30] = False  # 10x10 square minus a 5x5 corner: hull area 100 - 12.5
    assert math.isclose(float(_one(m).solidity[0]), 75 / 87.5, rel_tol=1e-6)


def test_disc_annulus_and_ellipse() -> None:
    xx, yy = _grid()
    r2 = (xx - 80) ** 2 + (yy - 60) ** 2
    disc = r2 <= 40**2
    annulus = disc & (r2 > 20**2)
    ellipse = ((xx - 80) / 50) ** 2 + ((yy - 60) / 25) ** 2 <= 1
    g = measure(np.stack([disc, annulus, ellipse]))
    assert g.eccentricity[0] < 0.05
    assert 0.97 < g.solidity[0] < 1.0
    # annulus: area fraction of its hull (the disc) is 1 - (r/R)^2 = 0.75, up to pixelation
    assert abs(float(g.solidity[1]) - 0.75) < 0.02
    assert g.eccentricity[1] < 0.05
    assert abs(float(g.eccentricity[2]) - math.sqrt(1 - 0.25)) < 0.01
    assert abs(float(g.perimeter[0]) - 4 * 2 * 40) < 4  # crack length of a disc ~ 8 R
    for k in range(3):
        assert (g.centroid_x[k], g.centroid_y[k]) == (80.0, 60.0)


def test_border_and_empty() -> None:
    m = np.zeros((3, H, W), bool)
    m[0, 0:5, 50:60] = True
    m[1, 50:60, W - 3 :] = True
    g = measure(m)
    assert g.touches_border.tolist() == [True, True, False]
    assert g.perimeter[0] == 30  # the raster border counts as outside
    assert g.area_pixels[2] == 0 and g.solidity[2] == 0 and g.bbox[2].tolist() == [0, 0, 0, 0]


def test_convex_hull_of_square_corners() -> None:
    pts = np.array([[0, 0], [2, 0], [2, 2], [0, 2], [1, 1], [1, 0]], float)
    hull = convex_hull(pts)
    assert sorted(map(tuple, hull.tolist())) == [(0, 0), (0, 2), (2, 0), (2, 2)]


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.booleans()))
def test_random_masks_agree_with_pycocotools_and_naive_counts(mask: np.ndarray) -> None:
    g = _one(mask)
    rle = {"size": list(mask.shape), "counts": encode_rle(mask)}
    assert g.area_pixels[0] == int(coco_mask.area(rle)) == int(mask.sum())
    if mask.any():
        assert g.bbox[0].tolist() == coco_mask.toBbox(rle).tolist()
        assert 0.0 < g.solidity[0] <= 1.0 + 1e-6
        assert 0.0 <= g.eccentricity[0] <= 1.0
        ys, xs = np.nonzero(mask)
        assert math.isclose(g.centroid_x[0], xs.mean() + 0.5, rel_tol=1e-5, abs_tol=1e-5)
        assert math.isclose(g.centroid_y[0], ys.mean() + 0.5, rel_tol=1e-5, abs_tol=1e-5)
    padded = np.pad(mask, 1)
    naive = int(np.sum(padded[:, 1:] != padded[:, :-1]) + np.sum(padded[1:] != padded[:-1]))
    assert g.perimeter[0] == naive

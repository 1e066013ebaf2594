"""Colour and texture statistics of a segment's masked pixels (the ``segment-stats`` columns).

Computed on the image at the mask raster (see :mod:`exokiratory.passes.segment_embed.crops`), once per image:
the Lab planes and the LBP code of every pixel are computed for the whole image, then each
segment reads the values under its mask. Only pixels inside the mask count; the LBP code of a
pixel at the mask's edge does look at its neighbours outside the mask (texture is a property of
a neighbourhood).

Columns
-------
``lab_hist``
    48 float32: marginal histograms of L* (16 bins over [0, 100]), a* and b* (16 bins each over
    [-128, 127]) of the masked pixels, each channel normalised to sum 1 (the PASS 1 ``lab_hist``
    binning, so segment and image histograms compare). CIE Lab from sRGB, D65
    (:func:`exokiratory.passes.sense.signals.srgb_to_lab`).
``lab_mean_l``, ``lab_mean_a``, ``lab_mean_b``, ``lab_std_l``
    Mean L*, a*, b* and the population standard deviation of L* (lightness contrast).
``chroma_mean``
    Mean Lab chroma ``sqrt(a*^2 + b*^2)`` (~0 for grey segments).
``lbp_hist``
    10 float32: histogram of rotation-invariant *uniform* local binary patterns, P = 8
    neighbours at radius R = 1, of the masked pixels, normalised to sum 1. The grey image is
    Rec.601 luma on 0..255; neighbour ``p`` sits at ``(-sin(2 pi p / 8), cos(2 pi p / 8))``
    (rounded to 5 decimals) and is bilinearly interpolated (0 outside the image); bit ``p`` is
    ``neighbour >= centre``. A code whose bit sequence has at most two 0/1 changes (counted
    between consecutive bits 0..7, not wrapping round) is "uniform" and labelled by its number
    of ones (bins 0..8), any other code goes to bin 9. This is exactly
    ``skimage.feature.local_binary_pattern(grey, 8, 1, "uniform")`` (tested), numpy-vectorised.
    Flat regions land in bin 8 (all neighbours >= centre); stripes, edges and grain spread over
    the others.

Masks of more than :data:`MAX_PIXELS` pixels use an evenly strided subset of their pixels (in
raster order, deterministic) for every statistic.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from exokiratory.passes.sense.signals import LAB_RANGES, N_HIST_BINS, srgb_to_lab

LBP_POINTS = 8
LBP_RADIUS = 1.0
N_LBP_BINS = LBP_POINTS + 2
MAX_PIXELS = 1 << 16
"""Statistics use at most this many pixels of a mask (evenly strided above it)."""

_F32 = pa.float32()

STATS_FIELDS: tuple[pa.Field, ...] = (
    pa.field("lab_hist", pa.list_(_F32, 3 * N_HIST_BINS)),
    pa.field("lab_mean_l", _F32),
    pa.field("lab_mean_a", _F32),
    pa.field("lab_mean_b", _F32),
    pa.field("lab_std_l", _F32),
    pa.field("chroma_mean", _F32),
    pa.field("lbp_hist", pa.list_(_F32, N_LBP_BINS)),
)
"""The statistics columns, in order (nullable: an errored segment has none)."""


def grey_luma(rgb: np.ndarray) -> np.ndarray:
    """Rec.601 luma of ``(H, W, 3)`` uint8 RGB, float64 on 0..255."""
    f = rgb.astype(np.float64)
    out: np.ndarray = 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]
    return out


def _shifted(padded: np.ndarray, dr: int, dc: int, h: int, w: int) -> np.ndarray:
    """The ``(h, w)`` window of a 2-pixel zero-padded image shifted by ``(dr, dc)``."""
    return padded[2 + dr : 2 + dr + h, 2 + dc : 2 + dc + w]


def lbp_codes(grey: np.ndarray) -> np.ndarray:
    """Uniform LBP label (0..9, see the module docstring) of every pixel, uint8 ``(H, W)``."""
    h, w = grey.shape
    padded = np.zeros((h + 4, w + 4), np.float64)
    padded[2:-2, 2:-2] = grey
    angles = 2.0 * np.pi * np.arange(LBP_POINTS) / LBP_POINTS
    rp = np.round(-LBP_RADIUS * np.sin(angles), 5)
    cp = np.round(LBP_RADIUS * np.cos(angles), 5)
    rows, cols = np.arange(h, dtype=np.float64)[:, None], np.arange(w, dtype=np.float64)[None, :]
    bits = np.empty((LBP_POINTS, h, w), bool)
    for p in range(LBP_POINTS):
        r0, c0 = math.floor(rp[p]), math.floor(cp[p])
        r1, c1 = math.ceil(rp[p]), math.ceil(cp[p])
        # weights from the absolute sample position, in skimage's bilinear_interpolation order,
        # so that thresholds (interpolated neighbour >= centre) agree with it bit for bit
        if r0 == r1 and c0 == c1:  # an integer offset: the weights are exactly 1 and 0
            bits[p] = _shifted(padded, r0, c0, h, w) - grey >= 0
            continue
        dr, dc = (rows + rp[p]) % 1.0, (cols + cp[p]) % 1.0
        top = (1 - dc) * _shifted(padded, r0, c0, h, w) + dc * _shifted(padded, r0, c1, h, w)
        bottom = (1 - dc) * _shifted(padded, r1, c0, h, w) + dc * _shifted(padded, r1, c1, h, w)
        bits[p] = ((1 - dr) * top + dr * bottom) - grey >= 0
    changes = (bits[:-1] != bits[1:]).sum(axis=0)
    ones = bits.sum(axis=0)
    return np.where(changes <= 2, ones, LBP_POINTS + 1).astype(np.uint8)


def _histogram(values: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    scaled = (values.astype(np.float64) - lo) * (bins / (hi - lo))
    idx = np.clip(scaled, 0.0, bins - 0.5).astype(np.int64)
    return _normalised(np.bincount(idx, minlength=bins))


def _normalised(counts: np.ndarray) -> np.ndarray:
    total = float(counts.sum())
    if total <= 0:
        return np.zeros(counts.shape, np.float32)
    return (counts / total).astype(np.float32)


class ImageStats:
    """Per-pixel Lab and LBP of one image on the mask raster, shared by all of its segments."""

    def __init__(self, rgb: np.ndarray):
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
        self.shape = rgb.shape[:2]
        self.lab = np.stack(srgb_to_lab(np.moveaxis(rgb, 2, 0)))  # (3, H, W) float32
        self.lbp = lbp_codes(grey_luma(rgb))

    def segment(self, mask: np.ndarray) -> dict[str, object]:
        """The statistics columns of the pixels under ``mask`` (an empty mask gives zeros)."""
        if mask.shape != self.shape:
            raise ValueError(f"mask {mask.shape} does not match the image {self.shape}")
        flat = np.flatnonzero(mask)
        if flat.size > MAX_PIXELS:
            flat = flat[:: math.ceil(flat.size / MAX_PIXELS)]
        lab = self.lab.reshape(3, -1)[:, flat]
        lbp = self.lbp.reshape(-1)[flat]
        hist = [
            _histogram(ch, lo, hi, N_HIST_BINS)
            for ch, (lo, hi) in zip(lab, LAB_RANGES, strict=True)
        ]
        n = max(flat.size, 1)
        mean = lab.sum(axis=1, dtype=np.float64) / n
        std_l = float(
            np.sqrt(max(float((lab[0].astype(np.float64) ** 2).sum()) / n - mean[0] ** 2, 0.0))
        )
        chroma = np.sqrt(lab[1].astype(np.float64) ** 2 + lab[2].astype(np.float64) ** 2)
        return {
            "lab_hist": np.concatenate(hist).tolist(),
            "lab_mean_l": float(mean[0]),
            "lab_mean_a": float(mean[1]),
            "lab_mean_b": float(mean[2]),
            "lab_std_l": std_l,
            "chroma_mean": float(chroma.sum() / n),
            "lbp_hist": _normalised(np.bincount(lbp, minlength=N_LBP_BINS)).tolist(),
        }

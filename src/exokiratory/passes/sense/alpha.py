"""PASS 1 columns of transparent images: alpha statistics, an alpha hash and visible-pixel
signals.

The other PASS 1 signals are computed on the working image composited over the sense pass's
``background`` (white by default, see :mod:`exokiratory.core.decode`). For a mostly transparent
image that composite is mostly background: five different white logos on transparent canvases
all become the same blank white image, whose brightness, entropy and chroma describe the
background, not the image. These columns describe the image itself, from
:attr:`DecodedImage.rgba <exokiratory.core.decode.DecodedImage.rgba>` (straight colour and
alpha at working size):

``alpha_coverage``
    Mean opacity, ``mean(alpha) / 255`` (0 = fully transparent .. 1 = opaque); 1.0 for images
    without transparency.
``transparent_fraction``
    Fraction of working-image pixels that are fully transparent (``alpha == 0``); 0.0 for
    images without transparency.
``alpha_phash``
    64-bit DCT hash of the alpha channel (the silhouette): the ``phash`` algorithm of
    :mod:`exokiratory.passes.sense.hashes` applied to the alpha plane, without border trimming
    (an overlay's position on its canvas is part of what it is). It is **0** when there is no
    silhouette to hash: images without transparency, images at least
    :data:`ALPHA_HASH_MIN_COVERAGE` opaque (a photo with transparent rounded corners hashes like
    its opaque copy) and images whose alpha varies by less than :data:`ALPHA_HASH_MIN_RANGE`
    levels once area-resampled to 32x32 (uniformly translucent, or fully transparent). The
    near-duplicate rule requires this hash to match too (``passes.flags``).
``visible_brightness_p05``, ``visible_brightness_p99``, ``visible_entropy_score``,
``visible_grayscale_score``
    ``brightness_p05``/``p99``, ``entropy_score`` and ``grayscale_score`` (same definitions,
    see :mod:`exokiratory.passes.sense.signals`) computed on the *visible* pixels: every pixel's
    straight colour weighted by its opacity (``alpha / 255``), so fully transparent pixels do
    not count and the background plays no part. Null for images without transparency (every
    alpha 255), whose composite columns are already exactly these values; for a fully
    transparent image the entropy is 0 (nothing visible) and the brightness and chroma are
    null. The light / dark / low-information / grayscale flags use them when present.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from exokiratory.passes.sense.hashes import phash_grey, resample
from exokiratory.passes.sense.signals import BRIGHTNESS_QUANTILES, srgb_to_lab

ALPHA_HASH_COLUMN = "alpha_phash"
"""Name of the alpha hash column (uint64, like the other hashes)."""

ALPHA_HASH_MIN_COVERAGE = 0.95
"""Images at least this opaque (``alpha_coverage``) get ``alpha_phash = 0``."""

ALPHA_HASH_MIN_RANGE = 32.0
"""Alpha (0..255) must vary by at least this much at 32x32 for ``alpha_phash`` to be set."""

_F32 = pa.float32()
ALPHA_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("alpha_coverage", _F32),
        pa.field("transparent_fraction", _F32),
        pa.field(ALPHA_HASH_COLUMN, pa.uint64()),
        pa.field("visible_brightness_p05", _F32),
        pa.field("visible_brightness_p99", _F32),
        pa.field("visible_entropy_score", _F32),
        pa.field("visible_grayscale_score", _F32),
    ]
)
"""Arrow schema of the dict returned by :func:`compute_alpha` (same order)."""

#: the values of an image without transparency
OPAQUE: dict[str, object] = {
    "alpha_coverage": 1.0,
    "transparent_fraction": 0.0,
    ALPHA_HASH_COLUMN: 0,
    "visible_brightness_p05": None,
    "visible_brightness_p99": None,
    "visible_entropy_score": None,
    "visible_grayscale_score": None,
}


def alpha_phash(alpha: np.ndarray) -> int:
    """The alpha hash of an (H, W) uint8 alpha plane (see the module docstring)."""
    a = np.asarray(alpha, dtype=np.float32)
    if a.size == 0 or float(a.mean()) / 255.0 >= ALPHA_HASH_MIN_COVERAGE:
        return 0
    small = resample(a, 32, 32)
    if float(small.max() - small.min()) < ALPHA_HASH_MIN_RANGE:
        return 0
    return phash_grey(a)


def _weighted_grey_stats(grey_u8: np.ndarray, weight: np.ndarray) -> dict[str, object]:
    """Entropy and brightness percentiles of an opacity-weighted grey histogram."""
    counts = np.bincount(grey_u8.ravel(), weights=weight.ravel(), minlength=256)
    total = float(counts.sum())
    p = counts[counts > 0] / total
    entropy = float(-(p * np.log2(p)).sum()) if p.size > 1 else 0.0
    cdf = np.cumsum(counts) / total
    out: dict[str, object] = {"visible_entropy_score": entropy}
    for name in ("p05", "p99"):
        level = int(np.searchsorted(cdf, BRIGHTNESS_QUANTILES[name] - 1e-12, side="left"))
        out[f"visible_brightness_{name}"] = min(level, 255) / 255.0
    return out


def compute_alpha(rgba: np.ndarray | None) -> dict[str, object]:
    """The columns of :data:`ALPHA_SCHEMA` for a working image's straight RGBA array
    (``None``: an image without an alpha band)."""
    if rgba is None:
        return dict(OPAQUE)
    alpha = rgba[:, :, 3]
    if alpha.size == 0 or bool((alpha == 255).all()):
        return dict(OPAQUE)
    weight = alpha.astype(np.float64) * (1.0 / 255.0)
    out: dict[str, object] = {
        **OPAQUE,
        "alpha_coverage": float(weight.mean()),
        "transparent_fraction": float(np.count_nonzero(alpha == 0)) / alpha.size,
        ALPHA_HASH_COLUMN: alpha_phash(alpha),
    }
    if float(weight.sum()) <= 0.0:  # nothing visible
        out["visible_entropy_score"] = 0.0
        return out
    planes = np.ascontiguousarray(rgba[:, :, :3].transpose(2, 0, 1))
    pf = planes.astype(np.float32)
    g255 = np.float32(0.299) * pf[0] + np.float32(0.587) * pf[1] + np.float32(0.114) * pf[2]
    out.update(_weighted_grey_stats(np.clip(g255 + 0.5, 0, 255).astype(np.uint8), weight))
    _, lab_a, lab_b = srgb_to_lab(planes)
    chroma = np.sqrt(lab_a.astype(np.float64) ** 2 + lab_b.astype(np.float64) ** 2)
    out["visible_grayscale_score"] = float((chroma * weight).sum() / weight.sum())
    return out

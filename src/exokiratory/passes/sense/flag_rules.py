"""Flag rules of the ``sense`` family: image-quality flags cut from the PASS 1 signals.

Scores come from ``features`` (:mod:`exokiratory.passes.sense.signals`); thresholds are fields of
``passes.flags`` (:class:`ImageQualityParams`, :class:`OutlierParams`):

* ``dark_score`` = brightness p99 (grey, 0..1); ``is_dark`` when < ``dark_threshold`` (0.32,
  cleanvision's definition and default).
* ``light_score`` = 1 - brightness p05; ``is_light`` when < ``light_threshold`` (0.05, as
  cleanvision).
* ``blurry_score`` = the Crete-Roffet re-blur score (0 sharp .. 1 blurry); ``is_blurry`` when >
  ``blurry_threshold`` (0.5: real photos score 0.12-0.33, a Gaussian blur of radius 5 px at the
  256-px working size 0.5-0.8), except near-blank images (blur is undefined there; they are
  junk already). Differs from cleanvision, which thresholds the variance of PIL's FIND_EDGES
  and finds 1 of 5 Gaussian blurs where this finds 4 (bench/flags_agreement.py).
* ``low_information_score`` = grey entropy / 8 bits; ``is_low_information`` when <
  ``low_information_threshold`` (0.3). cleanvision uses the entropy of PIL's 768-bin RGB
  histogram x 0.1 with the same 0.3 cut.
* ``grayscale_score`` = mean Lab chroma of the working image; ``is_grayscale`` when <=
  ``grayscale_threshold`` (2.0). Unlike cleanvision (mode ``L`` only) this catches grey images
  stored as RGB or palette: on purpose, since they are what costs colour models time.
* ``aspect_ratio_score`` = min(w/h, h/w); ``is_odd_aspect_ratio`` when < 0.35 (as cleanvision).
* ``size_score`` = sqrt(w*h); ``is_odd_size`` when log(size_score) is outside
  [Q1 - k*IQR, Q3 + k*IQR] of the collection, k = ``odd_size_iqr_factor`` (3.0). cleanvision
  applies the same fence to the linear size, whose lower fence is usually negative, so it can
  never flag a thumbnail; image sizes are closer to log-normal.
* ``is_tiny`` when min(w, h) < ``tiny_min_side`` px (32).
* ``outlier_score`` = max over cheap features of the robust z-score |x - median| / (1.4826 MAD);
  ``is_outlier`` when > ``outlier_threshold`` (6.0) in a collection of at least
  ``outlier_min_images`` (20).
* ``is_junk`` = corrupt, tiny, or near-blank (``low_information_score`` <
  ``junk_information_threshold`` = 0.12, about 1 bit: a low-information threshold of 0.3 also
  catches logos and flat graphics, which are not junk).

Transparent images: the composite PASS 1 columns describe the image drawn over the sense pass's
background (white), so for a mostly transparent image they describe the background: every
transparent overlay would be light, low-information and grey. For images with transparency,
``dark_score``, ``light_score``, ``low_information_score`` and ``grayscale_score`` (and so
``is_dark``, ``is_light``, ``is_low_information``, ``is_grayscale``, the near-blank part of
``is_junk`` and the blank guard of ``is_blurry``) are therefore made on the *visible pixels*
(each pixel's own colour weighted by its opacity: PASS 1's ``visible_*`` columns, see
:mod:`exokiratory.passes.sense.alpha`), with the same thresholds. A fully transparent image has
nothing visible: low information 0 (near-blank, junk), and no dark, light or grayscale decision
(null scores, flags False). Images without transparency, and rows sensed before the
``visible_*`` columns existed (null there), keep the composite columns, so their values are
unchanged. The other scores (blur, geometry, outliers) stay on the composite.

Score direction: ``dark_score``, ``light_score``, ``low_information_score``,
``grayscale_score`` and ``aspect_ratio_score`` are *quality* scores (higher = less of the named
problem; the flag is set below the threshold), unlike every other ``*_score``. They keep
cleanvision's definitions (its issue scores are qualities in [0, 1], low = severe) so that
thresholds and comparisons carry over, and renaming or inverting them would change stored
columns. ``size_score`` is a plain size (neither direction is a problem: the fence is
two-sided).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from exokiratory.core.robust import robust_z
from exokiratory.engine.flag_rules import Columns, FlagFrame, flag_rule
from exokiratory.engine.step import PassParams

OUTLIER_FEATURES: tuple[str, ...] = (
    "brightness_p50",
    "std_r",
    "std_g",
    "std_b",
    "colorfulness_score",
    "saturation_mean",
    "entropy_score",
    "log_sharpness",
    "log_noise",
    "edge_density",
    "high_freq_ratio",
    "spectral_slope",
    "blur_score",
)
#: a constant feature: values that differ at all are "infinitely" far; capped at this z
CONSTANT_FEATURE_Z = 1e3


class ImageQualityParams(PassParams):
    """Thresholds of the image-quality flags (fields of ``passes.flags``)."""

    dark_threshold: float = Field(0.32, ge=0, le=1)
    light_threshold: float = Field(0.05, ge=0, le=1)
    blurry_threshold: float = Field(0.5, ge=0, le=1)
    low_information_threshold: float = Field(0.3, ge=0, le=1)
    grayscale_threshold: float = Field(2.0, ge=0)
    odd_aspect_ratio_threshold: float = Field(0.35, ge=0, le=1)
    odd_size_iqr_factor: float = Field(3.0, gt=0)
    tiny_min_side: int = Field(32, ge=1)
    junk_information_threshold: float = Field(
        0.12, ge=0, le=1, description="low_information_score below this is junk (near-blank)"
    )


class OutlierParams(PassParams):
    """Thresholds of the feature outliers (``outlier_min_images`` is shared by every outlier
    score of the flags)."""

    outlier_threshold: float = Field(6.0, gt=0)
    outlier_min_images: int = Field(20, ge=3)


_F32 = pa.float32()
_BOOL = pa.bool_()


def visible_or_composite(frame: FlagFrame, composite: str) -> np.ndarray:
    """PASS 1 column ``composite``, replaced by its ``visible_*`` twin where that is not null
    (images with transparency, see the module docstring); a fully transparent image's twin of
    a brightness or chroma column stays NaN (nothing visible: no decision)."""
    base = frame.num(composite)
    names = frame.table.column_names
    if f"visible_{composite}" not in names:
        return base
    visible = frame.num(f"visible_{composite}")
    use = np.isfinite(visible)
    if composite != "entropy_score" and "transparent_fraction" in names:
        with np.errstate(invalid="ignore"):
            use |= frame.num("transparent_fraction") >= 1.0  # nothing visible: no decision
    return np.where(use, visible, base)


@flag_rule(
    "dark_light",
    [
        pa.field("dark_score", _F32),
        pa.field("is_dark", _BOOL),
        pa.field("light_score", _F32),
        pa.field("is_light", _BOOL),
    ],
    order=20,
    params=ImageQualityParams,
    features=(
        "brightness_p99",
        "brightness_p05",
        "visible_brightness_p99",
        "visible_brightness_p05",
        "transparent_fraction",
    ),
    reads=("sense",),
)
def dark_light(frame: FlagFrame, p: ImageQualityParams) -> Columns:
    """Too dark (brightest pixels still dim) or too light (darkest pixels still bright).
    Images with transparency: decided on their visible pixels; fully transparent: not decided
    (see the module docstring)."""
    dark = visible_or_composite(frame, "brightness_p99")
    light = 1.0 - visible_or_composite(frame, "brightness_p05")
    with np.errstate(invalid="ignore"):
        is_dark = frame.flag(dark, dark < p.dark_threshold)
        is_light = frame.flag(light, light < p.light_threshold)
    return {"dark_score": dark, "is_dark": is_dark, "light_score": light, "is_light": is_light}


@flag_rule(
    "blurry",
    [pa.field("blurry_score", _F32), pa.field("is_blurry", _BOOL)],
    order=21,
    params=ImageQualityParams,
    features=("blur_score",),
    needs=("low_information_score",),
    reads=("sense",),
)
def blurry(frame: FlagFrame, p: ImageQualityParams) -> Columns:
    """Blurry, unless near-blank (blur is undefined there)."""
    blur = frame.num("blur_score")
    with np.errstate(invalid="ignore"):
        blank = frame["low_information_score"] < p.junk_information_threshold
        is_blurry = frame.flag(blur, (blur > p.blurry_threshold) & ~blank)
    return {"blurry_score": blur, "is_blurry": is_blurry}


@flag_rule(
    "low_information",
    [pa.field("low_information_score", _F32), pa.field("is_low_information", _BOOL)],
    order=22,
    params=ImageQualityParams,
    features=("entropy_score", "visible_entropy_score"),
    reads=("sense",),
)
def low_information(frame: FlagFrame, p: ImageQualityParams) -> Columns:
    """Few grey levels in use (flat graphics, logos, near-blank images). Images with
    transparency: the grey levels of their visible pixels (a fully transparent image has none:
    0), not of the background they were composited on (see the module docstring)."""
    low_info = visible_or_composite(frame, "entropy_score") / 8.0
    with np.errstate(invalid="ignore"):
        flagged = frame.flag(low_info, low_info < p.low_information_threshold)
    return {"low_information_score": low_info, "is_low_information": flagged}


@flag_rule(
    "grayscale",
    [pa.field("grayscale_score", _F32), pa.field("is_grayscale", _BOOL)],
    order=23,
    params=ImageQualityParams,
    features=("grayscale_score", "visible_grayscale_score", "transparent_fraction"),
    reads=("sense",),
)
def grayscale(frame: FlagFrame, p: ImageQualityParams) -> Columns:
    """Grey images, however they are stored (the score is the mean chroma). Images with
    transparency: the chroma of their visible pixels; fully transparent: not decided."""
    grey = visible_or_composite(frame, "grayscale_score")
    with np.errstate(invalid="ignore"):
        flagged = frame.flag(grey, grey <= p.grayscale_threshold)
    return {"grayscale_score": grey, "is_grayscale": flagged}


@flag_rule(
    "geometry",
    [
        pa.field("aspect_ratio_score", _F32),
        pa.field("is_odd_aspect_ratio", _BOOL),
        pa.field("size_score", _F32),
        pa.field("is_odd_size", _BOOL),
        pa.field("is_tiny", _BOOL),
    ],
    order=24,
    params=ImageQualityParams,
    features=("width", "height"),
    reads=("sense",),
)
def geometry(frame: FlagFrame, p: ImageQualityParams) -> Columns:
    """Odd aspect ratio, odd size for this collection (log-scale IQR fence), tiny."""
    w, h = frame.num("width"), frame.num("height")
    with np.errstate(invalid="ignore", divide="ignore"):
        aspect = np.minimum(w / h, h / w)
        size = np.sqrt(w * h)
    with np.errstate(invalid="ignore"):
        is_odd_ar = frame.flag(aspect, aspect < p.odd_aspect_ratio_threshold)
        is_tiny = frame.flag(w, np.minimum(w, h) < p.tiny_min_side)
    return {
        "aspect_ratio_score": aspect,
        "is_odd_aspect_ratio": is_odd_ar,
        "size_score": size,
        "is_odd_size": _odd_size(size, frame.sensed, p.odd_size_iqr_factor),
        "is_tiny": is_tiny,
    }


def _odd_size(size: np.ndarray, sensed: np.ndarray, iqr_factor: float) -> np.ndarray:
    odd = np.zeros(len(size), dtype=bool)
    if sensed.sum() < 4:
        return odd
    with np.errstate(divide="ignore", invalid="ignore"):
        log_size = np.log(size)
    q1, q3 = np.percentile(log_size[sensed], [25, 75])
    k = iqr_factor * (q3 - q1)
    return sensed & ((log_size < q1 - k) | (log_size > q3 + k))


@flag_rule(
    "outlier",
    [pa.field("outlier_score", _F32), pa.field("is_outlier", _BOOL)],
    order=40,
    params=OutlierParams,
    features=(
        *(c for c in OUTLIER_FEATURES if not c.startswith("log_")),
        "sharpness_score",
        "noise_score",
    ),
    reads=("sense",),
)
def outlier(frame: FlagFrame, p: OutlierParams) -> Columns:
    """Far from the collection on some cheap feature (see :func:`outlier_scores`)."""
    score = outlier_scores(frame, p.outlier_min_images)
    with np.errstate(invalid="ignore"):
        flagged = frame.flag(score, score > p.outlier_threshold)
    return {"outlier_score": score, "is_outlier": flagged}


def outlier_scores(frame: FlagFrame, min_images: int) -> np.ndarray:
    """Max over :data:`OUTLIER_FEATURES` of the robust |z|; NaN for unsensed rows and for
    every row of a collection with fewer than ``min_images`` sensed images."""
    feats = {name: frame.num(name) for name in OUTLIER_FEATURES if name in frame.table.column_names}
    feats["log_sharpness"] = np.log1p(np.maximum(frame.num("sharpness_score"), 0))
    feats["log_noise"] = np.log1p(np.maximum(frame.num("noise_score"), 0))
    valid = np.isfinite(feats["entropy_score"])
    if valid.sum() < min_images:
        return np.full(frame.n, np.nan)
    z = np.zeros(frame.n)
    for name in OUTLIER_FEATURES:
        z = np.maximum(z, robust_z(feats[name], "abs", constant=CONSTANT_FEATURE_Z))
    return np.where(valid, z, np.nan)


@flag_rule(
    "junk",
    [pa.field("is_junk", _BOOL)],
    order=90,
    params=ImageQualityParams,
    needs=("is_corrupt", "is_tiny", "low_information_score"),
    reads=("sense",),
)
def junk(frame: FlagFrame, p: ImageQualityParams) -> Columns:
    """Corrupt, tiny, or near-blank: never worth any further pass."""
    low_info = frame["low_information_score"]
    with np.errstate(invalid="ignore"):
        blank = frame.flag(low_info, low_info < p.junk_information_threshold)
    return {"is_junk": frame["is_corrupt"] | frame["is_tiny"] | blank}

"""Cheap global PASS 1 signals computed on the canonical working image.

Everything here is pure numpy, vectorised, float32 where precision allows, and
computed on :attr:`DecodedImage.rgb` (longer side ``WORKING_SIZE`` px, see
:mod:`exokiratory.core.decode`), so values compare across resolutions.  Every
column is finite for every input (1x1, 256x1, flat images...): degenerate
cases get the documented neutral value instead of NaN.

Conventions: ``grey`` is Rec.601 luma ``0.299 R + 0.587 G + 0.114 B``; "0..1
scale" means 8-bit values divided by 255.  Lab is CIE L*a*b* from sRGB via
XYZ with the D65 white point.

Columns (see :data:`SIGNALS_SCHEMA` for types)
-----------------------------------------------
Geometry
    ``working_width``, ``working_height``: size of the working image in px.
    ``aspect_ratio``: true ``width / height`` (after EXIF orientation).
    ``megapixels``: true ``width * height / 1e6``.
Colour
    ``rgb_hist``: 48 floats, R then G then B, 16 equal bins of 16 levels each
    over 0..255, each channel normalised to sum 1.
    ``lab_hist``: 48 floats, marginal histograms of L (16 bins over [0, 100]),
    a and b (16 bins each over [-128, 127]); out-of-range values are clipped
    into the end bins; each channel normalised to sum 1.
    ``mean_r/g/b``, ``std_r/g/b``: per-channel mean and population standard
    deviation, 0..1 scale.
    ``lab_mean_l/a/b``: mean L* (0..100), a*, b*.
    (All Lab-based columns - ``lab_hist``, ``lab_mean_*``, ``grayscale_score``
    - use every 2nd pixel of every 2nd row when the working image has more
    than 2**14 pixels: 4x cheaper, statistically equivalent.)
    ``colorfulness_score``: Hasler & Suesstrunk (2003) M3 on 0..255 RGB:
    ``sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2)`` with
    ``rg = R - G`` and ``yb = (R + G) / 2 - B`` (~0 grey, ~>100 very colourful).
    ``saturation_mean``: mean HSV saturation ``(max - min) / max`` (0 where
    ``max == 0``), 0..1.
    ``grayscale_score``: how far from grey the image is: mean Lab chroma
    ``sqrt(a*^2 + b*^2)``; ~0 (< 1e-3) for R == G == B images, higher = more
    colour.
    ``n_colors``: number of distinct RGB triplets in the working image (no
    quantisation).
    ``entropy_score``: Shannon entropy, in bits, of the 256-bin grey histogram
    (0..8).
    ``brightness_p01/p05/p50/p95/p99``: grey percentiles (lowest level whose
    cumulative frequency reaches q), 0..1 scale.
Sharpness, blur, noise (on grey)
    ``sharpness_score``: variance of the 4-neighbour Laplacian on the 0..255
    grey image (valid interior; 0 if a side is < 3 px).  OpenCV's
    "variance of Laplacian" convention.
    ``blur_score``: Crete-Roffet et al. (2007) no-reference blur metric in
    [0, 1], higher = blurrier: the image is re-blurred with an 11-tap box
    filter along each axis; ``1 - sum(max(0, |dI| - |dB|)) / sum(|dI|)`` where
    ``dI``/``dB`` are neighbour differences of the image/re-blurred image (the
    loss of edge variation caused by re-blurring; sharp edges lose a lot,
    already-blurred ones almost nothing); the max over the two axes.  1.0 for
    images without any variation.
    ``noise_score``: Immerkaer (1996) fast noise sigma estimate on the 0..255
    grey image: ``sqrt(pi/2) / (6 (W-2)(H-2)) * sum |I * N|`` with
    ``N = [[1,-2,1],[-2,4,-2],[1,-2,1]]`` (0 if a side is < 3 px).
    ``edge_density``: fraction of pixels whose Sobel gradient magnitude
    (kernel normalised by 1/8, 0..1 grey, edge-replicated borders) is above
    :data:`EDGE_THRESHOLD` = 0.1 (a sharp step of contrast >= 0.2).
Frequency (grey minus its mean, Hann-windowed, ``rfft2``; radius ``r`` in
cycles/pixel, ``r_max = sqrt(2)/2`` at the corners)
    ``fft_band_energy``: 8 floats, fraction of the non-DC power in octave
    bands ``(r_max 2^(k-8), r_max 2^(k-7)]`` for ``k = 0..7`` (band 0 extends
    down to, but excludes, DC); sums to 1, all 0 when there is no AC power.
    ``high_freq_ratio``: fraction of the non-DC power at ``r > 0.25``
    (above half the Nyquist frequency); 0 without AC power.
    ``spectral_slope``: least-squares slope of ``ln(mean power per band)``
    versus ``ln(mean radius per band)`` over non-empty bands (natural images
    ~ -2, white noise ~ 0); 0 when fewer than 2 bands have power.
Text
    ``text_likeness_score``: in [0, 1], high for scanned text pages and
    screenshots of text; see :func:`text_likeness`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from exokiratory.core.decode import DecodedImage

__all__ = [
    "BRIGHTNESS_QUANTILES",
    "EDGE_THRESHOLD",
    "N_FFT_BANDS",
    "SIGNALS_SCHEMA",
    "compute_signals",
    "text_likeness",
]

N_HIST_BINS = 16
N_FFT_BANDS = 8
EDGE_THRESHOLD = 0.1
BLUR_TAPS = 11
BRIGHTNESS_QUANTILES = {"p01": 0.01, "p05": 0.05, "p50": 0.50, "p95": 0.95, "p99": 0.99}
LAB_RANGES = ((0.0, 100.0), (-128.0, 127.0), (-128.0, 127.0))

_F32 = pa.float32()
SIGNALS_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("working_width", pa.int32(), nullable=False),
        pa.field("working_height", pa.int32(), nullable=False),
        pa.field("aspect_ratio", _F32, nullable=False),
        pa.field("megapixels", _F32, nullable=False),
        pa.field("rgb_hist", pa.list_(_F32, 3 * N_HIST_BINS), nullable=False),
        pa.field("lab_hist", pa.list_(_F32, 3 * N_HIST_BINS), nullable=False),
        *(pa.field(f"mean_{c}", _F32, nullable=False) for c in "rgb"),
        *(pa.field(f"std_{c}", _F32, nullable=False) for c in "rgb"),
        *(pa.field(f"lab_mean_{c}", _F32, nullable=False) for c in "lab"),
        pa.field("colorfulness_score", _F32, nullable=False),
        pa.field("saturation_mean", _F32, nullable=False),
        pa.field("grayscale_score", _F32, nullable=False),
        pa.field("n_colors", pa.int32(), nullable=False),
        pa.field("entropy_score", _F32, nullable=False),
        *(pa.field(f"brightness_{k}", _F32, nullable=False) for k in BRIGHTNESS_QUANTILES),
        pa.field("sharpness_score", _F32, nullable=False),
        pa.field("blur_score", _F32, nullable=False),
        pa.field("noise_score", _F32, nullable=False),
        pa.field("edge_density", _F32, nullable=False),
        pa.field("fft_band_energy", pa.list_(_F32, N_FFT_BANDS), nullable=False),
        pa.field("high_freq_ratio", _F32, nullable=False),
        pa.field("spectral_slope", _F32, nullable=False),
        pa.field("text_likeness_score", _F32, nullable=False),
    ]
)
"""Arrow schema of the dict returned by :func:`compute_signals` (same order)."""

Signals = dict[str, Any]


# --------------------------------------------------------------------------- #
# Colour space helpers
# --------------------------------------------------------------------------- #
def _srgb_to_linear_lut() -> np.ndarray:
    c = np.arange(256, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return lin.astype(np.float32)


_LINEAR_LUT = _srgb_to_linear_lut()

# sRGB -> XYZ (D65); each row divided by the D65 white (its own row sum), so
# that R == G == B maps to X/Xn == Y/Yn == Z/Zn exactly and a* == b* == 0.
_RGB_TO_XYZN = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ],
    dtype=np.float64,
)
_RGB_TO_XYZN = (_RGB_TO_XYZN / _RGB_TO_XYZN.sum(axis=1, keepdims=True)).astype(np.float32)
_LAB_EPS = np.float32(216.0 / 24389.0)
_LAB_KAPPA = np.float32(24389.0 / 27.0)


def _lab_f(t: np.ndarray) -> np.ndarray:
    """CIE Lab companding ``f(t)``."""
    return np.where(t > _LAB_EPS, np.cbrt(t), (_LAB_KAPPA * t + 16.0) / 116.0).astype(np.float32)


def _planes_to_lab(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(3, H, W) uint8 sRGB planes -> L*, a*, b* float32 arrays (H, W)."""
    lin = _LINEAR_LUT.take(planes)
    m = _RGB_TO_XYZN
    fx, fy, fz = (_lab_f(m[i, 0] * lin[0] + m[i, 1] * lin[1] + m[i, 2] * lin[2]) for i in range(3))
    return 116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)


def srgb_to_lab(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(3, ...)`` uint8 sRGB planes -> L*, a*, b* float32 arrays of shape ``...`` (the
    conversion every Lab column here uses; public for the segment statistics)."""
    return _planes_to_lab(planes)


# --------------------------------------------------------------------------- #
# Histograms and colour statistics
# --------------------------------------------------------------------------- #
def _normalise(counts: np.ndarray) -> np.ndarray:
    total = float(counts.sum())
    if total <= 0:
        return np.zeros(counts.shape, dtype=np.float32)
    return (counts / total).astype(np.float32)


def _channel_counts(planes: np.ndarray) -> np.ndarray:
    """(3, 256) level counts per channel."""
    return np.stack([np.bincount(p.ravel(), minlength=256) for p in planes])


def _hist_moments(counts: np.ndarray) -> tuple[float, float]:
    """Mean and population std (0..1 scale) from a 256-level histogram."""
    levels = np.arange(counts.size, dtype=np.float64) / 255.0
    total = max(float(counts.sum()), 1.0)
    mean = float(counts @ levels) / total
    var = float(counts @ (levels * levels)) / total - mean * mean
    return mean, float(np.sqrt(max(var, 0.0)))


def _rgb_stats(planes: np.ndarray) -> Signals:
    counts = _channel_counts(planes)
    hist = counts.reshape(3, N_HIST_BINS, 256 // N_HIST_BINS).sum(axis=2)
    out: Signals = {"rgb_hist": np.concatenate([_normalise(h) for h in hist]).tolist()}
    for name, c in zip("rgb", counts, strict=True):
        mean, std = _hist_moments(c)
        out[f"mean_{name}"], out[f"std_{name}"] = mean, std
    return out


def _binned(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (values - np.float32(lo)) * np.float32(N_HIST_BINS / (hi - lo))
    np.clip(scaled, 0.0, N_HIST_BINS - 0.5, out=scaled)
    return _normalise(np.bincount(scaled.astype(np.uint8).ravel(), minlength=N_HIST_BINS))


LAB_SUBSAMPLE_ABOVE = 1 << 14
"""Lab columns use every 2nd pixel of every 2nd row above this many pixels."""


def _lab_stats(planes: np.ndarray) -> Signals:
    if planes[0].size > LAB_SUBSAMPLE_ABOVE:
        planes = planes[:, ::2, ::2]
    lab = _planes_to_lab(planes)
    hist = [_binned(ch, lo, hi) for ch, (lo, hi) in zip(lab, LAB_RANGES, strict=True)]
    chroma = np.sqrt(lab[1] * lab[1] + lab[2] * lab[2])
    return {
        "lab_hist": np.concatenate(hist).tolist(),
        "lab_mean_l": float(lab[0].mean()),
        "lab_mean_a": float(lab[1].mean()),
        "lab_mean_b": float(lab[2].mean()),
        "grayscale_score": float(chroma.mean()),
    }


def _colorfulness(planes_f: np.ndarray) -> float:  # (3, H, W) float32
    """Hasler & Suesstrunk M3 on 0..255 float planes."""
    r, g, b = planes_f
    rg = r - g
    yb = 0.5 * (r + g) - b
    sd = np.sqrt(float(rg.var()) + float(yb.var()))
    mu = np.sqrt(float(rg.mean()) ** 2 + float(yb.mean()) ** 2)
    return float(sd + 0.3 * mu)


def _saturation_mean(planes: np.ndarray) -> float:
    mx = np.maximum(np.maximum(planes[0], planes[1]), planes[2])
    mn = np.minimum(np.minimum(planes[0], planes[1]), planes[2])
    chroma = (mx - mn).astype(np.float32)
    sat = chroma / np.maximum(mx, 1).astype(np.float32)
    return float(sat.mean())


def _n_colors(planes: np.ndarray) -> int:
    code = (planes[0].astype(np.uint32) << 16) | (planes[1].astype(np.uint32) << 8) | planes[2]
    ordered = np.sort(code.ravel())
    return int(np.count_nonzero(ordered[1:] != ordered[:-1])) + 1


def _grey_stats(grey_u8: np.ndarray) -> Signals:
    counts = np.bincount(grey_u8.ravel(), minlength=256)
    p = counts[counts > 0] / max(int(counts.sum()), 1)
    entropy = float(-(p * np.log2(p)).sum()) if p.size > 1 else 0.0
    cdf = np.cumsum(counts) / max(int(counts.sum()), 1)
    out: Signals = {"entropy_score": entropy}
    for name, q in BRIGHTNESS_QUANTILES.items():
        level = int(np.searchsorted(cdf, q - 1e-12, side="left"))
        out[f"brightness_{name}"] = min(level, 255) / 255.0
    return out


# --------------------------------------------------------------------------- #
# Sharpness / blur / noise / edges
# --------------------------------------------------------------------------- #
def _laplacian_variance(g255: np.ndarray) -> float:
    if min(g255.shape) < 3:
        return 0.0
    c = g255[1:-1, 1:-1]
    lap = g255[:-2, 1:-1] + g255[2:, 1:-1] + g255[1:-1, :-2] + g255[1:-1, 2:] - 4.0 * c
    return float(lap.var())


def _immerkaer_noise(g255: np.ndarray) -> float:
    h, w = g255.shape
    if h < 3 or w < 3:
        return 0.0
    dx = g255[:, :-2] - 2.0 * g255[:, 1:-1] + g255[:, 2:]
    dxy = dx[:-2] - 2.0 * dx[1:-1] + dx[2:]
    total = float(np.abs(dxy).sum(dtype=np.float64))
    return float(np.sqrt(np.pi / 2.0) * total / (6.0 * (w - 2) * (h - 2)))


def _box_blur_rows(g: np.ndarray, taps: int) -> np.ndarray:
    """Centred ``taps``-tall running mean along axis 0 with edge replication."""
    half = taps // 2
    padded = np.concatenate(
        [np.repeat(g[:1], half + 1, axis=0), g, np.repeat(g[-1:], half, axis=0)], axis=0
    )
    csum = np.cumsum(padded, axis=0, dtype=np.float32)
    return (csum[taps:] - csum[:-taps]) * np.float32(1.0 / taps)


def _blur_effect(g: np.ndarray) -> float:
    """Crete-Roffet blur metric (max over axes), 1.0 for flat images."""
    scores = []
    for view in (g, np.ascontiguousarray(g.T)):  # contiguous: cumsum down strided columns is slow
        if view.shape[0] < 2:
            continue
        d_img = np.abs(np.diff(view, axis=0))
        s_img = float(d_img.sum(dtype=np.float64))
        if s_img <= 1e-6:
            continue
        d_blur = np.abs(np.diff(_box_blur_rows(view, BLUR_TAPS), axis=0))
        s_var = float(np.maximum(d_img - d_blur, 0.0).sum(dtype=np.float64))
        scores.append((s_img - s_var) / s_img)
    return float(min(1.0, max(0.0, *scores))) if scores else 1.0


def _sobel_magnitude(g: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude / 8 with edge-replicated borders (same shape)."""
    p = np.pad(g, 1, mode="edge")
    sy = p[:-2] + 2.0 * p[1:-1] + p[2:]  # vertical smoothing
    sx = p[:, :-2] + 2.0 * p[:, 1:-1] + p[:, 2:]  # horizontal smoothing
    gx = sy[:, 2:] - sy[:, :-2]
    gy = sx[2:] - sx[:-2]
    return np.sqrt(gx * gx + gy * gy) * 0.125


# --------------------------------------------------------------------------- #
# Frequency
# --------------------------------------------------------------------------- #
@lru_cache(maxsize=256)
def _hann2d(h: int, w: int) -> np.ndarray:
    return np.outer(
        np.hanning(h) if h > 2 else np.ones(h), np.hanning(w) if w > 2 else np.ones(w)
    ).astype(np.float32)


@lru_cache(maxsize=64)
def _fft_layout(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-shape constants: Hann window, band index, weights, high-freq mask."""
    window = np.outer(
        np.hanning(h) if h > 2 else np.ones(h), np.hanning(w) if w > 2 else np.ones(w)
    )
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.sqrt(fy * fy + fx * fx)
    r_max = np.sqrt(0.5)
    ratio = np.maximum(radius, 1e-12) / r_max
    band = np.clip(np.ceil(np.log2(ratio)) + (N_FFT_BANDS - 1), 0, N_FFT_BANDS - 1)
    band = band.astype(np.intp)
    weight = np.full(radius.shape, 2.0)
    weight[:, 0] = 1.0
    if w % 2 == 0 and w > 1:
        weight[:, -1] = 1.0
    weight[0, 0] = 0.0  # DC excluded
    band_r = np.bincount(band.ravel(), weights=(weight * radius).ravel(), minlength=N_FFT_BANDS)
    band_n = np.bincount(band.ravel(), weights=weight.ravel(), minlength=N_FFT_BANDS)
    mean_r = np.where(band_n > 0, band_r / np.maximum(band_n, 1e-12), 0.0)
    high = (radius > 0.25).astype(np.float64) * weight
    consts = np.stack([band_n, mean_r])
    return window.astype(np.float32), band, np.stack([weight, high]), consts


def _spectral(g: np.ndarray) -> Signals:
    """Spectral signals of the windowed grey image, zero-padded to a square frame of side
    ``max(h, w)`` (the working size for all but small images), so that one cached frequency
    layout serves every aspect ratio and bands mean the same frequencies across images."""
    h, w = g.shape
    side = max(h, w)
    window = _hann2d(h, w)
    # float64: NumPy's pocketfft is ~3x faster on it than on float32 at this size (measured)
    frame = np.zeros((side, side), dtype=np.float64)
    frame[:h, :w] = (g - g.mean()) * window
    _, band, weights, consts = _fft_layout(side, side)
    spec = np.fft.rfft2(frame)
    power = (spec.real * spec.real + spec.imag * spec.imag).astype(np.float64)
    band_power = np.bincount(band.ravel(), weights=(power * weights[0]).ravel(), minlength=8)
    total = float(band_power.sum())
    if total <= 1e-12:
        return {
            "fft_band_energy": [0.0] * N_FFT_BANDS,
            "high_freq_ratio": 0.0,
            "spectral_slope": 0.0,
        }
    high = float((power * weights[1]).sum()) / total
    band_n, mean_r = consts
    ok = (band_n > 0) & (band_power > 0)
    slope = 0.0
    if int(ok.sum()) >= 2:
        x = np.log(mean_r[ok])
        y = np.log(band_power[ok] / band_n[ok])
        xc = x - x.mean()
        denom = float(xc @ xc)
        slope = float(xc @ (y - y.mean())) / denom if denom > 0 else 0.0
    return {
        "fft_band_energy": (band_power / total).tolist(),
        "high_freq_ratio": high,
        "spectral_slope": slope,
    }


# --------------------------------------------------------------------------- #
# Text-likeness
# --------------------------------------------------------------------------- #
TEXT_RADIUS = 2
"""Half-size of the square closing window (5x5): strokes thinner than this are ink."""


def _max_filter_axis(a: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Running maximum over ``2 * radius + 1`` samples along ``axis`` (borders shrink)."""
    out = a.copy()
    n = a.shape[axis]
    for k in range(1, min(radius, n - 1) + 1):
        head: list[slice] = [slice(None), slice(None)]
        tail: list[slice] = [slice(None), slice(None)]
        head[axis], tail[axis] = slice(k, None), slice(None, -k)
        np.maximum(out[tuple(head)], a[tuple(tail)], out=out[tuple(head)])
        np.maximum(out[tuple(tail)], a[tuple(head)], out=out[tuple(tail)])
    return out


def _grey_closing(g: np.ndarray, radius: int) -> np.ndarray:
    """Morphological closing (max then min filter) with a square window."""
    dilated = _max_filter_axis(_max_filter_axis(g, radius, 0), radius, 1)
    inverted = 255 - dilated
    return 255 - _max_filter_axis(_max_filter_axis(inverted, radius, 0), radius, 1)


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.clip(x, -50.0, 50.0))))


def text_likeness(grey_u8: np.ndarray, saturation: float) -> float:
    """Cheap score in [0, 1], high for scanned text pages / screenshots of text.

    Dark-on-light text at working size is a set of *thin dark strokes* on a
    *smooth, almost colourless background*.  With the black top-hat
    ``T = closing_5x5(grey) - grey`` (0..1 scale; large only on dark features
    thinner than 5 px) and the closed image ``C`` (the "paper" with the ink
    removed), the score is a soft AND (product of logistic terms) of:

    * ink: ``ink = mean(T > 0.15)``, ``sigmoid((ink - 0.04) / 0.012)``
      (text pages have >= 5-40 % ink pixels, photos rarely have thin dark
      detail that dense, except strong textures);
    * smooth paper: ``rough = mean|dC/dx| + mean|dC/dy|`` (0..1 scale),
      ``sigmoid((0.015 - rough) / 0.003)`` (kills textures such as grass or
      gravel whose closing is still rough);
    * little colour: ``sigmoid((0.12 - saturation_mean) / 0.03)``.

    Light-on-dark text (dark mode) and very large type are not detected.
    """
    if grey_u8.size == 0:
        return 0.0
    closed = _grey_closing(grey_u8, TEXT_RADIUS)
    tophat = closed - grey_u8  # closing >= image, no underflow
    ink = float(np.count_nonzero(tophat > 38)) / grey_u8.size
    closed_f = closed.astype(np.float32) * np.float32(1.0 / 255.0)
    rough = 0.0
    for axis in (0, 1):
        if closed_f.shape[axis] > 1:
            rough += float(np.abs(np.diff(closed_f, axis=axis)).mean())
    return (
        _sigmoid((ink - 0.04) / 0.012)
        * _sigmoid((0.015 - rough) / 0.003)
        * _sigmoid((0.12 - saturation) / 0.03)
    )


# --------------------------------------------------------------------------- #
# Public entry point
# --------------------------------------------------------------------------- #
def _geometry(img: DecodedImage) -> Signals:
    h, w = img.rgb.shape[:2]
    width, height = max(1, img.width), max(1, img.height)
    return {
        "working_width": int(w),
        "working_height": int(h),
        "aspect_ratio": width / height,
        "megapixels": width * height / 1e6,
    }


def _grey_planes(planes_f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rec.601 luma of (3, H, W) float32 planes, as float32 0..255 and rounded uint8."""
    pf = planes_f
    g255 = np.float32(0.299) * pf[0] + np.float32(0.587) * pf[1] + np.float32(0.114) * pf[2]
    g_u8 = np.clip(g255 + 0.5, 0, 255).astype(np.uint8)
    return g255, g_u8


def _texture_stats(g255: np.ndarray) -> Signals:
    g = g255 * np.float32(1.0 / 255.0)
    magnitude = _sobel_magnitude(g)
    return {
        "sharpness_score": _laplacian_variance(g255),
        "blur_score": _blur_effect(g),
        "noise_score": _immerkaer_noise(g255),
        "edge_density": float(np.count_nonzero(magnitude > EDGE_THRESHOLD)) / max(g.size, 1),
        **_spectral(g),
    }


def _finite(value: Any) -> Any:
    """Replace non-finite floats (defensive) by 0.0."""
    if isinstance(value, list):
        return [float(v) if math.isfinite(v) else 0.0 for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else 0.0
    return value


def compute_signals(img: DecodedImage) -> dict[str, object]:
    """Compute all PASS 1 global signals of a decoded working image.

    Returns a dict whose keys and value types match :data:`SIGNALS_SCHEMA`
    exactly (Python ``int``/``float``/``list[float]``); see the module
    docstring for the definition of every column.
    """
    rgb = img.rgb
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ValueError("DecodedImage.rgb must be a non-empty (H, W, 3) uint8 array")
    planes = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    planes_f = planes.astype(np.float32)
    g255, g_u8 = _grey_planes(planes_f)
    saturation = _saturation_mean(planes)
    out: Signals = {
        **_geometry(img),
        **_rgb_stats(planes),
        **_lab_stats(planes),
        "colorfulness_score": _colorfulness(planes_f),
        "saturation_mean": saturation,
        "n_colors": _n_colors(planes),
        **_grey_stats(g_u8),
        **_texture_stats(g255),
        "text_likeness_score": text_likeness(g_u8, saturation),
    }
    return {name: _finite(out[name]) for name in SIGNALS_SCHEMA.names}

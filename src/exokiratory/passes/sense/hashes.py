"""64-bit perceptual hashes of a PASS 1 working image (numpy only).

All hashes are computed on the canonical working image (RGB uint8, longer side <= 256 px).
Before hashing, near-uniform borders (letterbox / pillarbox bars, scanner margins) are
trimmed, so that a picture padded to another aspect ratio hashes like the original.

Hashes (each a Python ``int`` in ``[0, 2**64)``, bit 63 = first cell in row-major order):

``phash``
    Classic DCT hash (as in imagehash / imagededup): grey image area-resampled to 32x32,
    2-D DCT-II (unnormalised, like ``scipy.fftpack.dct``), the top-left 8x8 coefficients
    (DC included), bit = coefficient > median of those 64 values.
``dhash``
    Horizontal gradient hash: grey image resampled to 8 rows x 9 columns,
    bit = pixel[r, c + 1] > pixel[r, c].
``phash_center``
    ``phash`` of the centred square whose side is ``CENTER_FRACTION`` of the shorter side.
    Robust to re-framing (crop to 1:1, crop to another aspect) and to moderate crops,
    which change the full-frame hashes a lot.

The 2-D DCT and the resampling are matrix products with cached matrices, so a 256 px image
costs well under 1 ms for all hashes.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt

HASH_COLUMNS: tuple[str, ...] = ("phash", "dhash", "phash_center")
"""Names of the hashes returned by :func:`compute_hashes` (and of their Arrow columns)."""

CENTER_FRACTION = 0.7
"""Side of the ``phash_center`` square as a fraction of the (trimmed) shorter image side."""

BORDER_TOLERANCE = 12.0
"""Max absolute grey deviation (0..255) for a row/column to count as a uniform border."""

MAX_TRIM_FRACTION = 0.4
"""Never trim more than this fraction of the height (width) from each side."""

_POW2 = (1 << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

FloatArray = npt.NDArray[np.float32]
U64Array = npt.NDArray[np.uint64]


@lru_cache(maxsize=64)
def _area_matrix(n_in: int, n_out: int) -> FloatArray:
    """Matrix ``(n_out, n_in)`` that area-averages a 1-D signal of length n_in to n_out."""
    edges = np.linspace(0.0, float(n_in), n_out + 1)
    lo = edges[:-1, None]
    hi = edges[1:, None]
    pix = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(hi, pix + 1.0) - np.maximum(lo, pix), 0.0, None)
    weights = overlap / overlap.sum(axis=1, keepdims=True)
    return weights.astype(np.float32)


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> FloatArray:
    """Unnormalised DCT-II matrix: ``D[k, x] = 2 cos(pi (2x + 1) k / (2n))``."""
    k = np.arange(n, dtype=np.float64)[:, None]
    x = np.arange(n, dtype=np.float64)[None, :]
    return (2.0 * np.cos(np.pi * (2.0 * x + 1.0) * k / (2.0 * n))).astype(np.float32)


def to_grey(rgb: np.ndarray) -> FloatArray:
    """ITU-R 601 luma of an RGB (H, W, 3) or grey (H, W) uint8 image, as float32."""
    if rgb.ndim == 2:
        return rgb.astype(np.float32)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    return rgb[:, :, :3].astype(np.float32) @ _LUMA


def _leading_border(profile: FloatArray, limit: int, tol: float = BORDER_TOLERANCE) -> int:
    """Number of leading entries of ``profile`` (max deviation per line) that are border."""
    is_content = profile[:limit] > tol
    if not is_content.any():
        return limit
    return int(np.argmax(is_content))


def trim_borders(grey: FloatArray) -> FloatArray:
    """Remove near-uniform border bars (letterbox, pillarbox, margins) of any colour.

    A row (column) is border if all its pixels lie within a tolerance of the median of the
    outermost row (column) on that side. The tolerance is ``BORDER_TOLERANCE`` grey levels,
    scaled down for low-contrast images (a tenth of the 1-99 percentile range, at least 1
    level): a fixed tolerance would call every row of a washed-out or very dark photo
    "border" and crop it to a sliver. At most ``MAX_TRIM_FRACTION`` is removed per side; a
    fully uniform image is returned unchanged.
    """
    h, w = grey.shape
    lo, hi = np.percentile(grey, [1, 99])
    tol = float(min(BORDER_TOLERANCE, max(1.0, 0.1 * (hi - lo))))
    lim_h = int(h * MAX_TRIM_FRACTION)
    lim_w = int(w * MAX_TRIM_FRACTION)
    top = _leading_border(np.abs(grey - np.median(grey[0])).max(axis=1), lim_h, tol)
    bottom = _leading_border(np.abs(grey - np.median(grey[-1])).max(axis=1)[::-1], lim_h, tol)
    left = _leading_border(np.abs(grey - np.median(grey[:, 0])).max(axis=0), lim_w, tol)
    right = _leading_border(np.abs(grey - np.median(grey[:, -1])).max(axis=0)[::-1], lim_w, tol)
    if top + bottom >= h - 1 or left + right >= w - 1:
        return grey
    return grey[top : h - bottom, left : w - right]


def resample(grey: FloatArray, rows: int, cols: int) -> FloatArray:
    """Area-average resample of a grey image to ``(rows, cols)``."""
    h, w = grey.shape
    out = _area_matrix(h, rows) @ grey @ _area_matrix(w, cols).T
    return np.asarray(out, dtype=np.float32)


def bits_to_int(bits: np.ndarray) -> int:
    """Pack 64 booleans (row-major, first = most significant bit) into a Python int."""
    flat = np.asarray(bits, dtype=bool).reshape(-1)
    if flat.size != 64:
        raise ValueError(f"expected 64 bits, got {flat.size}")
    return int(np.bitwise_or.reduce(np.where(flat, _POW2, np.uint64(0))))


def phash_grey(grey: FloatArray) -> int:
    """pHash of a grey image (see module docstring)."""
    small = resample(grey, 32, 32)
    dct = _dct_matrix(32)
    coef = (dct @ small @ dct.T)[:8, :8]
    return bits_to_int(coef > np.median(coef))


def dhash_grey(grey: FloatArray) -> int:
    """dHash of a grey image: 8 rows x 9 columns, bit = right neighbour brighter."""
    small = resample(grey, 8, 9)
    return bits_to_int(small[:, 1:] > small[:, :-1])


def center_square(grey: FloatArray, fraction: float = CENTER_FRACTION) -> FloatArray:
    """Centred square crop whose side is ``fraction`` of the shorter side (>= 1 px)."""
    h, w = grey.shape
    side = max(1, round(min(h, w) * fraction))
    top = (h - side) // 2
    left = (w - side) // 2
    return grey[top : top + side, left : left + side]


def compute_hashes(rgb: np.ndarray) -> dict[str, int]:
    """All perceptual hashes of a working image, keyed by the names in ``HASH_COLUMNS``.

    ``rgb`` is an (H, W, 3) uint8 array (a 2-D grey array is accepted too). Values are
    Python ints in ``[0, 2**64)``; convert with :func:`to_int64` for Arrow/Parquet storage.
    """
    grey = to_grey(np.asarray(rgb))
    if grey.size == 0:
        raise ValueError("cannot hash an empty image")
    grey = trim_borders(grey)
    return {
        "phash": phash_grey(grey),
        "dhash": dhash_grey(grey),
        "phash_center": phash_grey(center_square(grey)),
    }


def to_uint64(values: object) -> U64Array:
    """Python ints in ``[0, 2**64)`` (or an int64 / uint64 array) -> uint64 array.

    int64 input is reinterpreted bit for bit (the inverse of :func:`to_int64`).
    """
    if not isinstance(values, np.ndarray):
        values = np.array(
            [int(v) for v in np.asarray(values, dtype=object).reshape(-1)], dtype=np.uint64
        )
    arr = values
    if arr.dtype == np.int64:
        return arr.view(np.uint64)
    if arr.dtype == object or arr.size == 0:
        return np.array([int(v) for v in arr.reshape(-1)], dtype=np.uint64).reshape(arr.shape)
    return arr.astype(np.uint64)


def to_int64(values: object) -> npt.NDArray[np.int64]:
    """Hashes -> int64 with the same bits (for stores without unsigned integers)."""
    return to_uint64(values).view(np.int64)


def hashes_to_arrow(rows: list[dict[str, int]]) -> dict[str, object]:
    """Columns of ``pa.uint64`` arrays (one per name in ``HASH_COLUMNS``) from hash dicts."""
    import pyarrow as pa

    return {
        name: pa.array(to_uint64([r[name] for r in rows]), type=pa.uint64())
        for name in HASH_COLUMNS
    }


def _popcount_fallback(x: U64Array) -> npt.NDArray[np.uint8]:
    """Byte-table popcount for numpy < 2.0."""
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    as_bytes = np.ascontiguousarray(x).view(np.uint8).reshape(*x.shape, 8)
    return table[as_bytes].sum(axis=-1, dtype=np.uint8)


def popcount(x: np.ndarray) -> npt.NDArray[np.uint8]:
    """Number of set bits of each uint64 element."""
    arr = np.asarray(x, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(arr)  # type: ignore[no-any-return]
    return _popcount_fallback(arr)


def hamming(a: np.ndarray, b: np.ndarray) -> npt.NDArray[np.uint8]:
    """Element-wise (broadcasting) Hamming distance between uint64 hash arrays."""
    return popcount(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64)))

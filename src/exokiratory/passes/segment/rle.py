"""COCO run-length encoding of binary masks (pycocotools-backed).

Masks are stored as the ``counts`` bytes of COCO *compressed* RLE, exactly as
``pycocotools.mask.encode`` returns them: runs are taken in column-major (Fortran) order over a
raster of ``[height, width]``, starting with a run of zeros. The raster size is stored next to the
counts (``mask_height``, ``mask_width`` columns), so a stored mask is decoded with
``decode_rle(counts, height, width)`` or, equivalently, with
``pycocotools.mask.decode({"size": [height, width], "counts": counts})``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as coco_mask

# pycocotools' Cython decoder trips NumPy 2's ``__array__(copy=...)`` deprecation on every call;
# the result is correct, so the warning is silenced around the decode call only.
_NUMPY_COPY_WARNING = "__array__ implementation doesn't accept a copy keyword"


def encode_rle(mask: np.ndarray) -> bytes:
    """COCO compressed RLE counts of one ``(H, W)`` boolean (or 0/1) mask."""
    return encode_rle_batch(mask[None])[0]


def encode_rle_batch(masks: np.ndarray) -> list[bytes]:
    """COCO compressed RLE counts of ``(N, H, W)`` boolean masks (one C call for the batch)."""
    if masks.ndim != 3:
        raise ValueError(f"expected masks of shape (N, H, W), got {masks.shape}")
    if masks.shape[0] == 0:
        return []
    stacked = np.asfortranarray(np.moveaxis(masks.astype(np.uint8, copy=False), 0, -1))
    return [bytes(rle["counts"]) for rle in coco_mask.encode(stacked)]


def decode_rle(counts: bytes, height: int, width: int) -> np.ndarray:
    """Boolean ``(height, width)`` mask from COCO compressed RLE counts."""
    return decode_rle_batch([counts], height, width)[0]


def decode_rle_batch(counts: Sequence[bytes], height: int, width: int) -> np.ndarray:
    """Boolean ``(N, height, width)`` masks from COCO RLE counts sharing one raster size."""
    if len(counts) == 0:
        return np.zeros((0, int(height), int(width)), dtype=bool)
    size = [int(height), int(width)]
    rles = [{"size": size, "counts": bytes(c)} for c in counts]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NUMPY_COPY_WARNING, category=DeprecationWarning)
        stacked = coco_mask.decode(rles)
    return np.moveaxis(np.asarray(stacked, dtype=bool), -1, 0)


def rle_area(counts: bytes, height: int, width: int) -> int:
    """Number of foreground pixels, computed on the runs without decoding."""
    rle = {"size": [int(height), int(width)], "counts": bytes(counts)}
    return int(coco_mask.area(rle))

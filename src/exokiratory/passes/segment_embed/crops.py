"""Masked crops of segments, made on the fly from the image and the stored RLE mask (no crop files).

Geometry (all in *mask pixels*: the image decoded, EXIF-transposed and resized to
``(mask_width, mask_height)``, exactly the raster the mask was predicted on):

1. **Box with a margin.** The segment's ``bbox`` ``[x, y, w, h]`` is grown by ``margin`` times its
   longer side on every side (default 0.1, so a 100 x 40 box gains 10 px each side) and clipped
   to the image; a box of less than one pixel becomes one pixel.
2. **Background fill.** Inside that box every pixel *outside the mask* is replaced by ``fill``:
   for the embedding passes the model's normalisation mean (``image_mean x 255``, rounded), so the
   background normalises to ~0, the value the model's convolution/patch embedding sees as "no
   signal"; the segment's context therefore never leaks into its embedding.
3. **Square padding.** The box is padded to a square, centred (the odd pixel goes to the bottom /
   right), with the same ``fill``, so the model's resize-shortest-edge-then-centre-crop keeps the
   whole segment undistorted instead of cutting its long ends off.

:func:`decode_at_mask_size` decodes an image once to the mask raster for all of its segments,
through :func:`exokiratory.core.decode.load_working_image` (EXIF orientation, every mode,
alpha composited on white, decompression-bomb guard, DCT-scaled JPEG decoding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from exokiratory.core.decode import load_working_image

RGB = tuple[int, int, int]


def decode_at_mask_size(data: bytes, width: int, height: int, max_pixels: int) -> np.ndarray:
    """The image in ``data`` as ``(height, width, 3)`` uint8 RGB, on the segment mask raster.

    Decoded with a working size of ``max(width, height)`` (the rule the mask raster was made
    with: longer side at most the mask resolution, never upscaled), then resized exactly to
    ``(width, height)`` if rounding made it differ by a pixel.

    Raises:
        ImageTooLarge, DecodeError, OSError: as :func:`load_working_image`.
    """
    if width < 1 or height < 1:
        raise ValueError(f"bad mask raster size {width}x{height}")
    rgb = load_working_image(data, max(width, height), max_pixels).rgb
    if rgb.shape[:2] != (height, width):
        small = Image.fromarray(rgb, mode="RGB").resize((width, height), Image.Resampling.BILINEAR)
        rgb = np.asarray(small)
    return rgb


def crop_box(
    bbox: Sequence[float], width: int, height: int, margin: float
) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` (exclusive) of ``bbox`` grown by ``margin`` x its longer
    side on each side, clipped to the ``width`` x ``height`` raster, at least 1 x 1 px."""
    x, y, w, h = (float(v) for v in bbox)
    pad = margin * max(w, h, 1.0)
    left = max(0, min(width - 1, math.floor(x - pad)))
    top = max(0, min(height - 1, math.floor(y - pad)))
    right = min(width, max(left + 1, math.ceil(x + w + pad)))
    bottom = min(height, max(top + 1, math.ceil(y + h + pad)))
    return left, top, right, bottom


def masked_crop(
    rgb: np.ndarray, mask: np.ndarray, bbox: Sequence[float], margin: float, fill: RGB
) -> np.ndarray:
    """The square masked crop of one segment (see the module docstring), ``(s, s, 3)`` uint8.

    Args:
        rgb: ``(H, W, 3)`` uint8 image on the mask raster.
        mask: ``(H, W)`` boolean mask.
        bbox: ``[x, y, w, h]`` in mask pixels.
        margin: context kept around the box, as a fraction of its longer side.
        fill: RGB value of every pixel outside the mask and of the padding.
    """
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"image {rgb.shape[:2]} and mask {mask.shape} differ in size")
    height, width = mask.shape
    left, top, right, bottom = crop_box(bbox, width, height, margin)
    box = rgb[top:bottom, left:right]
    inside = mask[top:bottom, left:right]
    h, w = inside.shape
    side = max(h, w)
    out = np.empty((side, side, 3), np.uint8)
    out[:] = np.asarray(fill, np.uint8)
    oy, ox = (side - h) // 2, (side - w) // 2
    region = out[oy : oy + h, ox : ox + w]
    region[inside] = box[inside]
    return out


def mean_fill(image_mean: Sequence[float]) -> RGB:
    """A model's normalisation mean (0..1 per channel) as an 8-bit RGB fill value."""
    r, g, b = (int(np.clip(round(float(v) * 255.0), 0, 255)) for v in image_mean)
    return r, g, b

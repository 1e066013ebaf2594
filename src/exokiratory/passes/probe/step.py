"""``probe``: a full decode of every image, recording what the decoder sees.

The cheapest pass that touches pixels: it finds files whose headers parse but whose data is
damaged (PASS 0 only reads headers), and records mode, frame count and EXIF orientation.

Pillow decodes a JPEG whose entropy-coded data is corrupt without complaint (the damaged blocks
come out as garbage); libjpeg notices many such cases and only warns. For JPEG files the probe
also decodes with libjpeg-turbo in strict mode (``simplejpeg``, when installed) and records its
warning in ``decode_warning`` ("Corrupt JPEG data: 114 extraneous bytes before marker 0xd9"):
the image stays readable (no ``error``), and the warning says its pixels may be damaged.
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
from PIL import Image

from exokiratory.core.decode import pil_limit_lifted
from exokiratory.engine.registry import register
from exokiratory.engine.step import BatchContext, ImagePass


@register
class ProbePass(ImagePass):
    name = "probe"
    dataset = "features/probe"
    version = "v1"  # decode_warning was added later: null in parts written before it
    stage = 0
    description = "full decode check: mode, frames, EXIF orientation, decode errors"

    def output_schema(self) -> pa.Schema:
        return pa.schema(
            [
                pa.field("image_id", pa.string(), nullable=False),
                pa.field("image_idx", pa.int64(), nullable=False),
                pa.field("width", pa.int64()),
                pa.field("height", pa.int64()),
                pa.field("mode", pa.string()),
                pa.field("n_frames", pa.int64()),
                pa.field("exif_orientation", pa.int64()),
                pa.field("decode_warning", pa.string()),
                pa.field("error", pa.string()),
            ]
        )

    def process_image(self, unit: dict[str, Any], ctx: BatchContext) -> dict[str, Any]:
        data = unit["data"]
        # our own limit (ctx.max_image_pixels) is checked before decoding, not Pillow's
        with pil_limit_lifted(), Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > ctx.max_image_pixels:
                raise ValueError(
                    f"decompression bomb: {im.width}x{im.height} exceeds the pixel limit"
                )
            orientation = im.getexif().get(0x0112)
            n_frames = int(getattr(im, "n_frames", 1))
            mode = im.mode
            im.load()
            return {
                "width": im.width,
                "height": im.height,
                "mode": mode,
                "n_frames": n_frames,
                "exif_orientation": int(orientation) if orientation is not None else None,
                "decode_warning": jpeg_warning(data) if im.format == "JPEG" else None,
            }


def jpeg_warning(data: bytes) -> str | None:
    """libjpeg's warning about corrupt data in a JPEG (strict decode), or None: no warning, or
    ``simplejpeg`` is not installed."""
    try:
        import simplejpeg
    except ImportError:
        return None
    try:
        simplejpeg.decode_jpeg(data, strict=True, fastdct=True, fastupsample=True)
    except ValueError as exc:
        text = str(exc)
        # a header libjpeg-turbo's fast path does not support (an unusual subsampling) says
        # nothing about the data: Pillow decoded the file, so only data warnings count
        return None if "DecompressHeader" in text else text
    return None

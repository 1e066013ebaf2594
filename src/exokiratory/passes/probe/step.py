"""``probe``: a full decode of every image, recording what the decoder sees.

The cheapest pass that touches pixels: it finds files whose headers parse but whose data is
damaged (PASS 0 only reads headers), and records mode, frame count and EXIF orientation.
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
    version = "v1"
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
            }

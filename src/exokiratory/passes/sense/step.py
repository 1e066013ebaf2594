"""``sense`` (PASS 1): cheap global signals for every image, written to features/global/<version>/.

One row per image: what the decoder saw (true size after EXIF orientation, mode, bit depth,
alpha, animation, EXIF camera/time), file stats, perceptual hashes, and the signals of
:mod:`exokiratory.passes.sense.signals` computed on the canonical working image (longer side
``working_size`` px, see :mod:`exokiratory.core.decode`). Unreadable images get an ``error``.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import Field

from exokiratory.core.decode import WORKING_SIZE, load_working_image
from exokiratory.engine.registry import register
from exokiratory.engine.step import BatchContext, ImagePass, PassParams
from exokiratory.passes.sense.hashes import HASH_COLUMNS, compute_hashes
from exokiratory.passes.sense.signals import SIGNALS_SCHEMA, compute_signals

_DECODE_FIELDS = [
    pa.field("width", pa.int64()),
    pa.field("height", pa.int64()),
    pa.field("format", pa.string()),
    pa.field("mode", pa.string()),
    pa.field("bit_depth", pa.int32()),
    pa.field("has_alpha", pa.bool_()),
    pa.field("is_animated", pa.bool_()),
    pa.field("n_frames", pa.int32()),
    pa.field("has_exif", pa.bool_()),
    pa.field("exif_orientation", pa.int32()),
    pa.field("camera_make", pa.string()),
    pa.field("camera_model", pa.string()),
    pa.field("exif_datetime", pa.string()),
    pa.field("has_icc_profile", pa.bool_()),
    pa.field("size_bytes", pa.int64()),
    pa.field("bytes_per_pixel", pa.float32()),
]

SENSE_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_idx", pa.int64(), nullable=False),
        *_DECODE_FIELDS,
        *(pa.field(h, pa.uint64()) for h in HASH_COLUMNS),
        # nullable here: an image that fails to decode has an error row with no signals
        *(f.with_nullable(True) for f in SIGNALS_SCHEMA),
        pa.field("error", pa.string()),
    ]
)


class SenseParams(PassParams):
    working_size: int = Field(WORKING_SIZE, ge=32, le=2048, description="longer side, px")
    background: tuple[int, int, int] = Field((255, 255, 255), description="alpha background RGB")


@register
class SensePass(ImagePass[SenseParams]):
    name = "sense"
    dataset = "features/global"
    version = "v1"
    stage = 1
    Params = SenseParams
    description = "PASS 1 cheap global signals: size, EXIF, hashes, colour, sharpness, FFT, text"

    @property
    def view_name(self) -> str:
        return "features"

    def output_schema(self) -> pa.Schema:
        return SENSE_SCHEMA

    def process_image(self, unit: dict[str, Any], ctx: BatchContext) -> dict[str, Any]:
        params = self.params
        data = unit["data"]
        img = load_working_image(
            data,
            working_size=params.working_size,
            max_pixels=ctx.max_image_pixels,
            background=params.background,
        )
        row: dict[str, Any] = {
            "width": img.width,
            "height": img.height,
            "format": img.format,
            "mode": img.mode,
            "bit_depth": img.bit_depth,
            "has_alpha": img.has_alpha,
            "is_animated": img.is_animated,
            "n_frames": img.n_frames,
            "has_exif": img.has_exif,
            "exif_orientation": img.exif_orientation,
            "camera_make": img.camera_make,
            "camera_model": img.camera_model,
            "exif_datetime": img.exif_datetime,
            "has_icc_profile": img.icc_profile,
            "size_bytes": len(data),
            "bytes_per_pixel": len(data) / max(1, img.width * img.height),
        }
        row.update(compute_hashes(img.rgb))
        row.update(compute_signals(img))
        return row

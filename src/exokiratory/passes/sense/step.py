"""``sense`` (PASS 1): cheap global signals for every image, written to features/global/<version>/.

One row per image: what the decoder saw (true size after EXIF orientation, mode, bit depth,
alpha, animation, EXIF camera/time), file stats, perceptual hashes, and the signals of
:mod:`exokiratory.passes.sense.signals` computed on the canonical working image (longer side
``working_size`` px, see :mod:`exokiratory.core.decode`), and, for images with transparency,
the alpha statistics, alpha hash and visible-pixel signals of :mod:`exokiratory.passes.sense.alpha`
(added to ``v1`` without a version change: parts written before have no such columns, and the
``features`` view shows them as null there). Unreadable images get an ``error``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pydantic import Field

from exokiratory.core.dataset import keep_one_sql
from exokiratory.core.decode import WORKING_SIZE, load_working_image
from exokiratory.engine.registry import register
from exokiratory.engine.step import BatchContext, ImagePass, PassParams
from exokiratory.passes.sense.alpha import ALPHA_SCHEMA, compute_alpha
from exokiratory.passes.sense.hashes import HASH_COLUMNS, compute_hashes
from exokiratory.passes.sense.signals import SIGNALS_SCHEMA, compute_signals

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

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
        *ALPHA_SCHEMA,
        pa.field("error", pa.string()),
    ]
)


#: DuckDB types of the columns that may be missing from old parts
_DUCK_TYPES = {pa.float32(): "FLOAT", pa.uint64(): "UBIGINT"}


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

    def define_views(self, catalog: Catalog) -> None:
        """The keyed ``features`` view; columns added to ``v1`` later (the alpha columns) that
        no part has yet are added as nulls, so that readers can always select them."""
        super().define_views(catalog)
        src = catalog.raw_source(self.output_rel)
        if not src:
            return
        have = {str(r[0]) for r in catalog.rows(f'DESCRIBE "{self.view_name}"')}
        missing = [f for f in SENSE_SCHEMA if f.name not in have]
        if not missing:
            return
        nulls = ", ".join(f'CAST(NULL AS {_DUCK_TYPES[f.type]}) AS "{f.name}"' for f in missing)
        one = keep_one_sql(src, self.key, True, "filename")
        catalog.define_view(
            self.view_name, f"SELECT *, {nulls} FROM ({one}) ORDER BY image_idx, image_id"
        )

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
        row.update(compute_alpha(img.rgba))
        return row

"""Thumbnails for the report: small JPEGs kept in one keyed Parquet dataset under ``reports/``.

Thumbnails are made by :class:`ThumbPass`, an image pass run through the ordinary runner (its
batches are Parquet parts written atomically, a rerun makes only the missing ones, a kill loses at
most the batch in flight), but it is not part of the pipeline: ``run all`` never runs it, and only
the images a report shows get a thumbnail. The dataset lives in ``reports/thumbs/<version>/``.

Columns:

* ``thumb_id`` (key): the image id, or ``<segment_id>`` for a segment crop.
* ``image_id``, ``image_idx``: the image the thumbnail was cut from.
* ``jpeg``: the JPEG bytes (longer side ``size`` px, quality ``quality``), PNG with alpha for
  images with transparency (the page draws those on a checkerboard); null on error.
* ``width``, ``height``: the thumbnail's size in pixels.
* ``error``: why no thumbnail could be made (decode error...), else null.

A crop (segments) is given in fractions of the EXIF-oriented image ``[x0, y0, x1, y1]``; the image
is decoded at ``crop_working_size`` px, cropped, then reduced to ``size``.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import Field

from exokiratory.core.decode import load_working_image
from exokiratory.engine.step import IMAGE_UNITS_SQL, BatchContext, ImagePass, PassParams

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog
    from exokiratory.core.storage import Storage

log = logging.getLogger(__name__)

THUMB_WANTS = "_report_thumb_wants"


class ThumbParams(PassParams):
    size: int = Field(96, ge=16, le=512, description="longer side of a thumbnail, pixels")
    quality: int = Field(72, ge=10, le=95, description="JPEG quality")
    crop_working_size: int = Field(512, ge=64, le=4096, description="decode size for crops")


WANTS_SCHEMA = pa.schema(
    [
        pa.field("thumb_id", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("crop", pa.list_(pa.float32(), 4)),
    ]
)


class ThumbPass(ImagePass[ThumbParams]):
    """Small JPEGs of the images (and segment crops) that a report shows."""

    name = "report-thumbs"
    dataset = "reports/thumbs"
    version = "v2"  # v2: transparent images as PNG with alpha
    key = ("thumb_id",)
    Params = ThumbParams
    description = "report thumbnails (not a pipeline pass)"

    def __init__(self, params: dict[str, Any] | None = None, wants: pa.Table | None = None):
        super().__init__(params)
        self.wants = wants

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["wants"] = None  # only the planner needs it; workers get their units in batches
        return state

    def output_schema(self) -> pa.Schema:
        return pa.schema(
            [
                pa.field("thumb_id", pa.string(), nullable=False),
                pa.field("image_id", pa.string()),
                pa.field("image_idx", pa.int64()),
                pa.field("jpeg", pa.binary()),
                pa.field("width", pa.int32()),
                pa.field("height", pa.int32()),
                pa.field("error", pa.string()),
            ]
        )

    def units(self, catalog: Catalog) -> pa.Table:
        wants = self.wants if self.wants is not None else WANTS_SCHEMA.empty_table()
        catalog.con.register(THUMB_WANTS, wants)
        try:
            # thumb_id first: the planner names parts from the first column when no image_id
            # column exists (several crops of one image must not share a part name)
            return catalog.query(
                f"""SELECT w.thumb_id, u.image_idx, u.image_id AS src_image_id, u.format,
                           u.path, u.source, w.crop
                    FROM {THUMB_WANTS} w JOIN ({IMAGE_UNITS_SQL}) u USING (image_id)
                    ORDER BY u.image_idx, w.thumb_id"""
            )
        finally:
            catalog.con.unregister(THUMB_WANTS)

    def process_image(self, unit: dict[str, Any], ctx: BatchContext) -> dict[str, Any]:
        p = self.params
        crop = unit.get("crop")
        working = p.crop_working_size if crop else p.size
        img = load_working_image(unit["data"], working, ctx.max_image_pixels)
        # transparent images keep their alpha (PNG): the page draws them on a checkerboard
        rgb = img.rgb if img.rgba is None else img.rgba
        if crop:
            rgb = crop_array(rgb, [float(c) for c in crop])
        im = Image.fromarray(rgb)
        if max(im.size) > p.size:
            scale = p.size / max(im.size)
            im = im.resize(
                (max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                Image.Resampling.BILINEAR,
                reducing_gap=2.0,
            )
        buf = io.BytesIO()
        if im.mode == "RGBA":
            im.save(buf, "PNG", optimize=True)
        else:
            im.save(buf, "JPEG", quality=p.quality, optimize=True)
        return {
            "image_id": unit["src_image_id"],
            "jpeg": buf.getvalue(),
            "width": im.width,
            "height": im.height,
        }

    def process_batch(self, units: pa.Table, ctx: BatchContext) -> pa.Table:
        table = super().process_batch(units, ctx)
        # error rows still name their source image
        ids = pa.array(units.column("src_image_id").to_pylist(), pa.string())
        idx = table.schema.get_field_index("image_id")
        return table.set_column(idx, "image_id", ids)


def crop_array(rgb: np.ndarray, crop: list[float]) -> np.ndarray:
    """The part of ``rgb`` inside ``[x0, y0, x1, y1]`` (fractions), at least 1x1 pixel."""
    h, w = rgb.shape[:2]
    x0 = min(max(0, math.floor(crop[0] * w)), w - 1)
    y0 = min(max(0, math.floor(crop[1] * h)), h - 1)
    x1 = max(x0 + 1, min(w, math.ceil(crop[2] * w)))
    y1 = max(y0 + 1, min(h, math.ceil(crop[3] * h)))
    return np.ascontiguousarray(rgb[y0:y1, x0:x1])


@dataclass(frozen=True)
class Thumb:
    jpeg: bytes | None
    width: int
    height: int
    error: str | None


class ThumbStore:
    """Makes the missing thumbnails of a set of images/crops and reads them back."""

    def __init__(self, workspace: Any, params: ThumbParams | None = None):
        self.ws = workspace
        self.params = params or ThumbParams()
        self.storage: Storage = workspace.storage

    def _pass(self, wants: pa.Table | None = None) -> ThumbPass:
        return ThumbPass(self.params.model_dump(exclude_defaults=True), wants)

    def ensure(
        self,
        wants: pa.Table,
        *,
        workers: int = 1,
        batch_size: int = 256,
        progress: bool | None = None,
    ) -> int:
        """Make the thumbnails of ``wants`` (``WANTS_SCHEMA``) not stored yet; returns how many
        were made."""
        from exokiratory.core.catalog import Catalog
        from exokiratory.engine.executors import make_executor
        from exokiratory.engine.run import run_pass

        wants = _unique(wants)
        if wants.num_rows == 0:
            return 0
        p = self._pass(wants)
        # a process pool pays for itself only on a few hundred images per worker
        n_workers = max(1, min(workers, wants.num_rows // 300))
        rep = run_pass(
            p,
            self.storage,
            self.ws.batch_context(),
            make_executor("local", n_workers),
            batch_size=batch_size,
            progress=progress,
            catalog=lambda: Catalog(self.storage, [p]),
        )
        if rep.batches_failed:
            log.warning("thumbnails: %d batch(es) failed: %s", rep.batches_failed, rep.failures)
        return rep.processed

    def read(self, thumb_ids: list[str]) -> dict[str, Thumb]:
        """Stored thumbnails by id (ids without one are absent)."""
        from exokiratory.core.catalog import Catalog

        if not thumb_ids:
            return {}
        p = self._pass()
        with Catalog(self.storage, [p]) as cat:
            cat.con.register("_ids", pa.table({"thumb_id": sorted(set(thumb_ids))}))
            try:
                t = cat.query(
                    f'SELECT t.thumb_id, t.jpeg, t.width, t.height, t.error FROM "{p.view_name}" '
                    "t JOIN _ids USING (thumb_id)"
                )
            finally:
                cat.con.unregister("_ids")
        return {
            r["thumb_id"]: Thumb(r["jpeg"], int(r["width"] or 0), int(r["height"] or 0), r["error"])
            for r in t.to_pylist()
        }


def _unique(wants: pa.Table) -> pa.Table:
    seen: set[str] = set()
    keep = []
    for i, tid in enumerate(wants.column("thumb_id").to_pylist()):
        if tid not in seen:
            seen.add(tid)
            keep.append(i)
    return wants.take(pa.array(keep, pa.int64())).cast(WANTS_SCHEMA)


class ThumbWants:
    """The thumbnails the report's sections ask for (:class:`exokiratory.engine.sections.
    ThumbnailRequests`), collected while they gather, made afterwards."""

    def __init__(self) -> None:
        self._wants: dict[str, tuple[str, list[float] | None]] = {}

    def image(self, image_id: str) -> str:
        self._wants.setdefault(image_id, (image_id, None))
        return image_id

    def crop(self, thumb_id: str, image_id: str, box: Sequence[float]) -> str:
        self._wants.setdefault(thumb_id, (image_id, [float(c) for c in box]))
        return thumb_id

    def ids(self) -> list[str]:
        return list(self._wants)

    def table(self) -> pa.Table:
        """The wants as a ``WANTS_SCHEMA`` table (one row per thumbnail)."""
        return pa.table(
            {
                "thumb_id": list(self._wants),
                "image_id": [w[0] for w in self._wants.values()],
                "crop": [w[1] for w in self._wants.values()],
            },
            schema=WANTS_SCHEMA,
        )


def image_wants(image_ids: list[str]) -> pa.Table:
    """Wants for whole images."""
    return pa.table(
        {"thumb_id": image_ids, "image_id": image_ids, "crop": [None] * len(image_ids)},
        schema=WANTS_SCHEMA,
    )

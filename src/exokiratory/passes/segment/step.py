"""``segment`` (PASS 3): SAM automatic masks for every routed image -> segments/masks/<version>/.

A unit is one image; it gives many rows. The dataset is keyed ``(image_id, mask_index)`` and holds,
for every processed image, its segment rows (``mask_index`` 0, 1, ...) **and one marker row**
(``mask_index = -1``) that records the image's outcome: how many segments it kept, how many mask
outputs were decoded, or the error. The planner's anti-join uses the marker rows (view
``segment_images``), so an image with zero kept masks is done, and a failed image retried with
``--retry-errors`` gets a new marker without an error that wins over the old one (a row without
error always wins, see :mod:`exokiratory.core.dataset`), so no stale error stays visible. An image's
rows are always written in one part, so a killed run never leaves half an image.

Every row (``segment_rows`` view: segments and markers; ``segments`` view: segments only):

* ``segment_id``: ``f"{image_id}-{mask_index:04d}"`` (null on markers); ``image_id``,
  ``image_idx``; ``mask_index`` (int32, 0-based in order of decreasing predicted IoU, then
  stability, area, position; -1 on markers).
* ``crop_layer`` (int8; 0 = whole image), ``points_per_side`` (int16): the scale it came from.
* ``mask_height``, ``mask_width`` (int32): the mask raster, i.e. the image decoded with EXIF
  orientation and its longer side reduced to at most ``mask_max_side`` (never upscaled) by
  :func:`exokiratory.core.decode.load_working_image` (set on markers too).
* ``rle_counts`` (binary): COCO compressed RLE counts, column-major, size
  ``[mask_height, mask_width]`` (:func:`exokiratory.passes.segment.rle.decode_rle`).
* ``bbox`` (4 x float32, COCO ``[x, y, w, h]``), ``area_pixels`` (int64), ``area_fraction``,
  ``solidity``, ``eccentricity``, ``perimeter``, ``centroid_x``, ``centroid_y`` (float32),
  ``touches_border`` (bool): see :mod:`exokiratory.passes.segment.geometry` for exact definitions.
* ``predicted_iou``, ``stability_score`` (float32): SAM's own quality scores.
* ``model_id``: the checkpoint (hub id, local folder, or ``tiny:sam``).
* ``n_segments``, ``n_candidates`` (int32, markers only): kept segments; mask outputs decoded
  (3 per point prompt) before any filter.
* ``error``: markers only; null when the image was segmented.

Views: ``segments`` (kept segments of images whose marker has no error, and only the
``n_segments`` indices its marker announces), ``segment_images`` (one row per processed image:
``image_id, image_idx, mask_height, mask_width, n_segments, n_candidates, model_id, error``).
No crop files are written: crops are cut on the fly from the image and the RLE.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from exokiratory.engine.registry import register
from exokiratory.engine.step import (
    IMAGE_UNITS_SQL,
    MODEL_MODULES,
    BatchContext,
    Pass,
    PassSetupError,
    Resource,
    RoutedParams,
    missing_modules,
)
from exokiratory.engine.threads import in_threads
from exokiratory.models.registry import ModelSpec, model_slug, resolve
from exokiratory.passes.embed.step import ROUTED_UNITS_SQL, cache_dir_for
from exokiratory.passes.segment.params import MaskGenerationParams

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog
    from exokiratory.passes.segment.amg import GeneratedMasks, MaskGenerator

log = logging.getLogger(__name__)

MARKER_INDEX = -1
"""``mask_index`` of an image's marker row."""

SEGMENT_SCHEMA = pa.schema(
    [
        pa.field("segment_id", pa.string()),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_idx", pa.int64(), nullable=False),
        pa.field("mask_index", pa.int32(), nullable=False),
        pa.field("crop_layer", pa.int8()),
        pa.field("points_per_side", pa.int16()),
        pa.field("mask_height", pa.int32()),
        pa.field("mask_width", pa.int32()),
        pa.field("rle_counts", pa.binary()),
        pa.field("bbox", pa.list_(pa.float32(), 4)),
        pa.field("area_pixels", pa.int64()),
        pa.field("area_fraction", pa.float32()),
        pa.field("solidity", pa.float32()),
        pa.field("eccentricity", pa.float32()),
        pa.field("perimeter", pa.float32()),
        pa.field("centroid_x", pa.float32()),
        pa.field("centroid_y", pa.float32()),
        pa.field("touches_border", pa.bool_()),
        pa.field("predicted_iou", pa.float32()),
        pa.field("stability_score", pa.float32()),
        pa.field("model_id", pa.string()),
        pa.field("n_segments", pa.int32()),
        pa.field("n_candidates", pa.int32()),
        pa.field("error", pa.string()),
    ]
)

#: parameters that change how the pass runs, not what it writes (kept out of the version)
_RUN_ONLY = frozenset(
    {"model", "revision", "device", "routed_only", "decode_threads", "points_per_batch"}
)


class SegmentParams(RoutedParams, MaskGenerationParams):
    """``passes.segment`` in the workspace config (mask generation fields: see
    :class:`exokiratory.passes.segment.params.MaskGenerationParams`)."""

    model: str = Field(
        "lite",
        description="profile (full = SAM ViT-H, lite = ViT-B, large, base, huge, sam2, sam2-base, "
        "sam2-small, sam2-tiny, tiny), hub id, or local folder",
    )
    revision: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    decode_threads: int = Field(2, ge=1, le=64, description="images decoded ahead by threads")


@register
class SegmentMasksPass(Pass[SegmentParams]):
    """PASS 3: SAM automatic mask generation, one marker row plus one row per kept segment."""

    name = "segment"
    dataset = "segments/masks"
    version = "v1"
    stage = 3
    key = ("image_id", "mask_index")
    unit_key = ("image_id",)
    resources = Resource.GPU
    reads = ("flags",)  # images_routed
    Params = SegmentParams
    units_sql = IMAGE_UNITS_SQL
    description = "SAM automatic masks (COCO RLE + geometry) for routed images"

    @property
    def seg_params(self) -> SegmentParams:
        params = self.params
        return params

    @property
    def spec(self) -> ModelSpec:
        params = self.seg_params
        spec = resolve("sam", params.model)
        if params.revision is not None:
            spec = ModelSpec(spec.role, spec.model_id, params.revision, spec.space)
        return spec

    @property
    def full_version(self) -> str:
        """``v1-<model slug>[@revision]``, plus a digest of the mask-generation parameters
        that differ from the defaults."""
        spec = self.spec
        base = f"{self.version}-{model_slug(spec.model_id)}"
        if spec.revision:
            base += f"@{model_slug(spec.revision)}"
        changed = {
            k: v
            for k, v in self.params.model_dump(exclude_defaults=True).items()
            if k not in _RUN_ONLY
        }
        if not changed:
            return base
        text = json.dumps(changed, sort_keys=True, default=str)
        return f"{base}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"

    @property
    def view_name(self) -> str:
        return "segment_rows"

    @property
    def done_view(self) -> str:
        return "segment_images"

    def extra_views(self) -> dict[str, str]:
        per_image = f"""SELECT image_id, image_idx, mask_height, mask_width, n_segments,
                   n_candidates, model_id, error
            FROM "{self.view_name}" WHERE mask_index = {MARKER_INDEX} ORDER BY image_idx"""
        segments = f"""SELECT s.* EXCLUDE (n_segments, n_candidates, error)
            FROM "{self.view_name}" s
            JOIN "{self.view_name}" m
              ON m.image_id = s.image_id AND m.mask_index = {MARKER_INDEX}
            WHERE s.mask_index >= 0 AND m.error IS NULL AND s.mask_index < m.n_segments
            ORDER BY s.image_idx, s.mask_index"""
        return {"segment_images": per_image, "segments": segments}

    def in_all(self, configured: bool) -> bool:
        """A model pass: ``run all`` includes it once the config names it."""
        return configured

    def missing_requirement(self) -> str | None:
        return missing_modules(MODEL_MODULES, "ml")

    def output_schema(self) -> pa.Schema:
        return SEGMENT_SCHEMA

    def units(self, catalog: Catalog) -> pa.Table:
        if self.is_routed and "images_routed" in catalog.views:
            return catalog.query(ROUTED_UNITS_SQL)
        return catalog.query(IMAGE_UNITS_SQL)

    def error_rows(self, units: pa.Table, message: str) -> pa.Table:
        rows = [
            _marker(u, None, error=message)
            for u in units.select(["image_id", "image_idx"]).to_pylist()
        ]
        return pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA)

    # -- the batch ---------------------------------------------------------------------------
    def process_batch(self, units: pa.Table, ctx: BatchContext) -> pa.Table:
        generator = self._generator(ctx)
        tables = []
        for unit, raster in self._rasters(units.to_pylist(), ctx):
            tables.append(self._image_table(unit, raster, generator))
        if not tables:
            return SEGMENT_SCHEMA.empty_table()
        return pa.concat_tables(tables)

    def _generator(self, ctx: BatchContext) -> MaskGenerator:
        from exokiratory.models.sam import load_segmenter
        from exokiratory.passes.segment.amg import MaskGenerator

        params = self.seg_params
        try:
            segmenter = load_segmenter(self.spec, cache_dir_for(ctx.workspace_url), params.device)
        except Exception as exc:
            raise PassSetupError(
                f"cannot load model {self.spec.model_id!r}: {type(exc).__name__}: {exc}. "
                f"Offline? Point passes.{self.name}.model at a local folder, or use the 'tiny' "
                "profile for plumbing."
            ) from exc
        segmenter.point_batch_size = params.points_per_batch
        return MaskGenerator(segmenter, MaskGenerationParams(**_generation_fields(params)))

    def _image_table(
        self, unit: dict[str, Any], raster: np.ndarray | str, generator: MaskGenerator
    ) -> pa.Table:
        """The marker row and the segment rows of one image (only the marker on error)."""
        if isinstance(raster, str):
            return pa.Table.from_pylist([_marker(unit, None, error=raster)], schema=SEGMENT_SCHEMA)
        try:
            masks = generator.generate(raster)
        except Exception as exc:  # one image's failure is its marker row, never a crash
            log.debug("segment: image %s failed: %s", unit["image_id"], exc)
            err = f"{type(exc).__name__}: {exc}"
            return pa.Table.from_pylist(
                [_marker(unit, raster.shape[:2], error=err)], schema=SEGMENT_SCHEMA
            )
        marker = pa.Table.from_pylist(
            [
                _marker(
                    unit,
                    raster.shape[:2],
                    model_id=self.spec.model_id,
                    n_segments=len(masks),
                    n_candidates=masks.timings.n_candidates,
                )
            ],
            schema=SEGMENT_SCHEMA,
        )
        return pa.concat_tables([segment_table(unit, masks, self.spec.model_id), marker])

    def _rasters(
        self, units: list[dict[str, Any]], ctx: BatchContext
    ) -> Iterator[tuple[dict[str, Any], np.ndarray | str]]:
        """Each unit with its mask raster (or an error text), decoded by threads at most
        ``2 x decode_threads`` images ahead of the model."""
        from exokiratory.core.decode import load_working_image

        max_side = self.seg_params.mask_max_side

        def load(u: dict[str, Any]) -> np.ndarray | str:
            try:
                data = ctx.read_bytes(u["path"], u.get("source"))
                return load_working_image(data, max_side, ctx.max_image_pixels).rgb
            except Exception as exc:  # a bad image is a row, never a crash
                return f"{type(exc).__name__}: {exc}"

        return in_threads(lambda u: (u, load(u)), units, self.seg_params.decode_threads)


def _generation_fields(params: SegmentParams) -> dict[str, Any]:
    names = MaskGenerationParams.model_fields
    return {k: v for k, v in params.model_dump().items() if k in names}


def _marker(
    unit: dict[str, Any],
    hw: tuple[int, int] | None,
    *,
    error: str | None = None,
    model_id: str | None = None,
    n_segments: int | None = None,
    n_candidates: int | None = None,
) -> dict[str, Any]:
    return {
        "segment_id": None,
        "image_id": unit["image_id"],
        "image_idx": unit["image_idx"],
        "mask_index": MARKER_INDEX,
        "mask_height": hw[0] if hw else None,
        "mask_width": hw[1] if hw else None,
        "model_id": model_id,
        "n_segments": n_segments,
        "n_candidates": n_candidates,
        "error": error,
    }


def segment_table(unit: dict[str, Any], masks: GeneratedMasks, model_id: str) -> pa.Table:
    """The segment rows of one image, built column-wise."""
    n = len(masks)
    geo = masks.geometry
    image_id = unit["image_id"]
    bbox_values = pa.array(np.ascontiguousarray(geo.bbox, np.float32).reshape(-1), pa.float32())
    columns: dict[str, Any] = {
        "segment_id": [f"{image_id}-{i:04d}" for i in range(n)],
        "image_id": [image_id] * n,
        "image_idx": np.full(n, unit["image_idx"], np.int64),
        "mask_index": np.arange(n, dtype=np.int32),
        "crop_layer": masks.crop_layer,
        "points_per_side": masks.points_per_side,
        "mask_height": np.full(n, masks.height, np.int32),
        "mask_width": np.full(n, masks.width, np.int32),
        "rle_counts": pa.array(masks.rle_counts, pa.binary()),
        "bbox": pa.FixedSizeListArray.from_arrays(bbox_values, 4),
        "area_pixels": geo.area_pixels,
        "area_fraction": geo.area_fraction,
        "solidity": geo.solidity,
        "eccentricity": geo.eccentricity,
        "perimeter": geo.perimeter,
        "centroid_x": geo.centroid_x,
        "centroid_y": geo.centroid_y,
        "touches_border": geo.touches_border,
        "predicted_iou": masks.predicted_iou,
        "stability_score": masks.stability_score,
        "model_id": [model_id] * n,
        "n_segments": pa.nulls(n, pa.int32()),
        "n_candidates": pa.nulls(n, pa.int32()),
        "error": pa.nulls(n, pa.string()),
    }
    return pa.table(columns, schema=SEGMENT_SCHEMA)

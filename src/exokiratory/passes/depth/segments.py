"""Per-segment depth: each SAM segment's share of its image's stored depth map.

For a segment, its mask (``segments.rle_counts`` on the ``mask_height x mask_width`` raster) is
box-resized to the depth map's grid (``depth_map_height x depth_map_width``, 64 px on the long
side): each map cell gets the fraction ``w`` of it that the mask covers, so a segment smaller
than a cell still counts. Then, with ``r`` the map (0 = near .. 1 = far, see
:mod:`exokiratory.passes.depth.stats`):

* ``depth_mean`` = sum(w r) / sum(w); ``depth_median`` = the ``w``-weighted median of ``r``;
* ``map_cells`` = sum(w), the segment's area in map cells (a measure of how much the 64 px map
  can say about it: under about 4 cells, read the numbers as coarse);
* ``depth_rank`` = rank of ``depth_median`` among the image's segments (0 = nearest; ties by
  ``mask_index``).

Images are read in chunks of :data:`IMAGES_PER_CHUNK` (their maps and masks only), so memory
stays bounded whatever the number of segments. View ``depth_segments``, joined to the segment
manifest on ``segment_id``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from PIL import Image

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

IMAGES_PER_CHUNK = 256

DEPTH_SEGMENTS_SCHEMA = pa.schema(
    [
        pa.field("segment_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_idx", pa.int64(), nullable=False),
        pa.field("mask_index", pa.int32(), nullable=False),
        pa.field("depth_mean", pa.float32()),
        pa.field("depth_median", pa.float32()),
        pa.field("map_cells", pa.float32()),
        pa.field("depth_rank", pa.int32()),
        pa.field("model_id", pa.string()),
    ]
)

_IMAGES_SQL = """
SELECT DISTINCT d.image_idx FROM depth d JOIN segments s USING (image_id)
WHERE d.error IS NULL ORDER BY 1
"""

_MAPS_SQL = """
SELECT image_id, depth_map, depth_map_height, depth_map_width, model_id FROM depth
WHERE error IS NULL AND image_idx BETWEEN ? AND ?
"""

_SEGMENTS_SQL = """
SELECT segment_id, image_id, image_idx, mask_index, mask_height, mask_width, rle_counts
FROM segments WHERE image_idx BETWEEN ? AND ?
ORDER BY image_idx, mask_index
"""


def coverage(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fraction of each cell of a ``height x width`` grid that ``mask`` covers (box filter)."""
    img = Image.fromarray(mask.astype(np.float32), mode="F")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BOX)
    return np.asarray(img, np.float64)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The smallest value at which the cumulative weight reaches half of the total."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


def segment_row(row: dict[str, Any], depth_map: np.ndarray, model_id: str) -> dict[str, Any]:
    """The depth columns of one segment (``depth_rank`` is set per image afterwards)."""
    from exokiratory.passes.segment.rle import decode_rle

    mask = decode_rle(row["rle_counts"], row["mask_height"], row["mask_width"])
    w = coverage(mask, *depth_map.shape).ravel()
    r = depth_map.astype(np.float64).ravel()
    total = float(w.sum())
    keep = w > 0
    return {
        "segment_id": row["segment_id"],
        "image_id": row["image_id"],
        "image_idx": row["image_idx"],
        "mask_index": row["mask_index"],
        "depth_mean": float((w * r).sum() / total) if total > 0 else None,
        "depth_median": weighted_median(r[keep], w[keep]) if total > 0 else None,
        "map_cells": total,
        "model_id": model_id,
    }


def _ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set ``depth_rank`` within each image (rows come ordered by image, then mask index)."""
    by_image: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_image.setdefault(r["image_id"], []).append(r)
    for segs in by_image.values():
        known = [s for s in segs if s["depth_median"] is not None]
        known.sort(key=lambda s: (s["depth_median"], s["mask_index"]))
        for rank, s in enumerate(known):
            s["depth_rank"] = rank
    return rows


def segment_depths(catalog: Catalog) -> pa.Table:
    """The whole ``depth_segments`` table, image chunk by image chunk."""
    idx = [int(r[0]) for r in catalog.rows(_IMAGES_SQL)]
    rows: list[dict[str, Any]] = []
    for start in range(0, len(idx), IMAGES_PER_CHUNK):
        lo, hi = idx[start], idx[min(start + IMAGES_PER_CHUNK, len(idx)) - 1]
        maps = _maps(catalog.query(_MAPS_SQL, [lo, hi]))
        for row in catalog.query(_SEGMENTS_SQL, [lo, hi]).to_pylist():
            found = maps.get(row["image_id"])
            if found is not None:
                rows.append(segment_row(row, *found))
    return pa.Table.from_pylist(_ranked(rows), schema=DEPTH_SEGMENTS_SCHEMA)


def _maps(t: pa.Table) -> dict[str, tuple[np.ndarray, str]]:
    """image_id -> (depth map as a float32 array, model id), straight from Arrow."""
    out = {}
    maps = t.column("depth_map").combine_chunks()
    for i, image_id in enumerate(t.column("image_id").to_pylist()):
        h = int(t.column("depth_map_height")[i].as_py())
        w = int(t.column("depth_map_width")[i].as_py())
        flat = maps[i].values.to_numpy(zero_copy_only=False).astype(np.float32)
        out[image_id] = (flat.reshape(h, w), str(t.column("model_id")[i].as_py()))
    return out

"""Schemas of the PASS 0 tables and the readers that derive their current state.

``images`` (manifests/images/) is append-only: one row per image ID, written once when the ID is
first registered; its ``image_idx`` is dense and never reassigned. ``paths`` (manifests/paths/) is
an append-only log: a row each time a path is first seen, changes, errors, or vanishes. The current
state of a path is its newest row. An image's public status is derived: ``missing`` when no present
path holds it any more, else its registration status (``ok`` or ``unreadable``).
"""

from __future__ import annotations

import pyarrow as pa

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_idx", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("format", pa.string()),
        pa.field("width", pa.int64()),
        pa.field("height", pa.int64()),
        pa.field("first_path", pa.string(), nullable=False),
        pa.field("registered_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
    ]
)

#: ``status`` of a paths row: the path holds an image (readable or not), holds a non-image file
#: (ignored), could not be read (retried on every scan), or has vanished.
PATH_STATUSES = ("image", "ignored", "error", "missing")

PATHS_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("image_id", pa.string()),
        pa.field("size_bytes", pa.int64()),
        pa.field("mtime_ns", pa.int64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("seen_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

PATHS_KEY = ("path", "size_bytes", "mtime_ns", "image_id", "status")


CURRENT_PATHS_SQL = """
SELECT * EXCLUDE (_rn) FROM (
  SELECT *, row_number() OVER (PARTITION BY path ORDER BY seen_at DESC, _part_no DESC) AS _rn
  FROM {src}) WHERE _rn = 1
"""

#: one present path per image (the smallest), and its source: how passes find an image's file
IMAGE_PATHS_SQL = """
SELECT image_id, min(path) AS path, arg_min(source, path) AS source
FROM paths WHERE status = 'image' GROUP BY image_id
"""

IMAGES_VIEW_SQL = """
SELECT i.image_id, i.image_idx, i.sha256, i.size_bytes, i.format, i.width, i.height,
       i.first_path, i.registered_at,
       CASE WHEN p.n_present IS NULL OR p.n_present = 0 THEN 'missing' ELSE i.status END AS status,
       i.error, coalesce(p.n_present, 0) AS n_paths
FROM {images} i
LEFT JOIN (SELECT image_id, count(*) AS n_present FROM {current_paths}
           WHERE status = 'image' GROUP BY image_id) p USING (image_id)
ORDER BY i.image_idx
"""

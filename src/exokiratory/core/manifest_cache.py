"""A stored copy of the ``images``, ``paths`` and ``image_paths`` views, valid for one listing
of the manifest.

They deduplicate the append-only registry and path log with window functions, aggregate
and join them (:mod:`exokiratory.core.manifest`): at 10^6 images every query that touches ``images``
pays about a second for that, ``sql count(*)`` included. Commands that change the manifest
(``scan``, ``compact``) therefore store these views' rows once, as
``cache/manifest/<view>-<digest>.parquet``. ``<digest>`` covers the names of every manifest
part and :data:`CACHE_VERSION`; a catalog uses the copy only when the digest of the
parts it lists now is the same, so a part added or removed by any writer (a scan killed half
way, a concurrent scan, a compaction) makes the copy invisible until the next ``scan`` or
``compact`` writes a new one. Each file is written atomically, and they are looked up
together: a kill leaves either no copy or a whole one. Without a copy the views are computed
from the parts as before; the rows are the same either way.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence

import duckdb
import pyarrow as pa

from exokiratory.core.layout import IMAGES, PATHS
from exokiratory.core.storage import Storage

log = logging.getLogger(__name__)

MANIFEST_CACHE = "cache/manifest"
#: bump when the SQL of the ``images`` or ``paths`` view changes (old copies are then ignored)
CACHE_VERSION = "manifest-views-v2"
#: the cached views (core.manifest), in the order they are stored (each reads the ones before
#: it); one is used only with all the others
CACHED_VIEWS = ("paths", "image_paths", "images")
ROW_GROUP = 131_072


def manifest_digest(storage: Storage, listed: Mapping[str, Sequence[str]] | None = None) -> str:
    """A digest of the manifest parts' names (and :data:`CACHE_VERSION`); ``listed``: the
    parts of ``IMAGES`` and ``PATHS`` when the caller has listed them already."""
    h = hashlib.sha256(CACHE_VERSION.encode())
    for rel in (IMAGES, PATHS):
        names = storage.list_files(rel, ".parquet") if listed is None else listed[rel]
        for name in names:
            h.update(name.encode() + b"\0")
    return h.hexdigest()[:20]


def cache_rel(view: str, digest: str) -> str:
    return f"{MANIFEST_CACHE}/{view}-{digest}.parquet"


def cached_views(storage: Storage, digest: str) -> dict[str, str] | None:
    """``{view: rel}`` of a whole copy for ``digest``, or None."""
    try:
        names = set(storage.listdir(MANIFEST_CACHE))
    except OSError:
        return None
    rels = {v: cache_rel(v, digest) for v in CACHED_VIEWS}
    if all(rel.rsplit("/", 1)[1] in names for rel in rels.values()):
        return rels
    return None


def arrow_reader(rel: duckdb.DuckDBPyRelation, batch_rows: int) -> pa.RecordBatchReader:
    """A query result as a stream of Arrow batches (DuckDB 1.x and 2.x spell it differently)."""
    fn = getattr(rel, "to_arrow_reader", None) or getattr(rel, "fetch_record_batch")  # noqa: B009
    reader: pa.RecordBatchReader = fn(batch_rows)
    return reader


def write_view(storage: Storage, rel: str, result: duckdb.DuckDBPyRelation) -> None:
    """Store a query's rows as one Parquet file, streamed in row groups of :data:`ROW_GROUP`
    rows (bounded memory at 10^7 images; DuckDB scans the row groups in parallel)."""
    reader = arrow_reader(result, ROW_GROUP)
    storage.write_parquet_stream(rel, reader.schema, reader, row_group_size=ROW_GROUP)


def prune(storage: Storage, digest: str) -> None:
    """Remove the copies of other digests (housekeeping: they are never read)."""
    keep = {cache_rel(v, digest).rsplit("/", 1)[1] for v in CACHED_VIEWS}
    for name in storage.listdir(MANIFEST_CACHE):
        if name.endswith(".parquet") and name not in keep:
            try:
                storage.fs.rm(storage.path(f"{MANIFEST_CACHE}/{name}"))
            except OSError as exc:
                log.warning("could not remove an old manifest copy %s: %s", name, exc)

"""``manifest``: one Parquet file and one CSV file of the exported records (no image bytes).

``manifest.parquet`` and ``manifest.csv`` hold one row per image that exists (paths, ids and the
chosen columns); images that vanished since the scan are left out and listed in
``export_log.csv``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from exokiratory.core.storage import Storage
from exokiratory.export.records import plain_table, portable_schema
from exokiratory.export.selection import Selection
from exokiratory.export.shards import ImageItem

MANIFEST_PARQUET = "manifest.parquet"
MANIFEST_CSV = "manifest.csv"


def write_manifest(out: Storage, table: pa.Table) -> None:
    """``manifest.parquet`` and ``manifest.csv``, each written whole."""
    table = table.cast(portable_schema(table.schema))
    out.write_parquet_atomic(MANIFEST_PARQUET, table)
    with out.open_atomic(MANIFEST_CSV) as fh:
        pacsv.write_csv(plain_table(table), fh)


def exported_rows(selection: Selection, problems: pa.Table) -> pa.Table:
    """The selection's exported columns, without the images the log lists."""
    table = selection.table.select(selection.columns)
    bad = problems.column("image_id")
    if len(bad):
        table = table.filter(pc.invert(pc.is_in(table.column("image_id"), value_set=bad)))
    return table


class ManifestFormat:
    name = "manifest"
    reads = "stat"

    def prepare(self, selection: Selection, out: Storage) -> None:
        return None

    def write_shard(self, out: Storage, index: int, n_shards: int, items: list[ImageItem]) -> None:
        return None  # the manifest is written whole at the end

    def finish(self, out: Storage, selection: Selection, problems: pa.Table) -> None:
        write_manifest(out, exported_rows(selection, problems))

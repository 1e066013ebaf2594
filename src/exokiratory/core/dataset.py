"""Part datasets: a folder of Parquet part files read as one table with one row per key.

A dataset is the union of its parts. Two parts may hold a row for the same key (two workers raced,
or an errored unit was retried); readers keep exactly one: a row without ``error`` wins over a row
with one, and among equals the row from the part whose name sorts last (parts named by a sequence or
time sort in write order), then the first row within it. The choice is deterministic, so every reader
sees the same table.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence

import duckdb
import pyarrow as pa

from exokiratory.core.storage import Storage


def fetch_arrow(result: duckdb.DuckDBPyConnection | duckdb.DuckDBPyRelation) -> pa.Table:
    """A query result as an Arrow table (DuckDB 1.x and 2.x spell it differently)."""
    fn = getattr(result, "to_arrow_table", None) or getattr(result, "fetch_arrow_table", None)
    if fn is None:
        fn = getattr(result, "arrow")  # noqa: B009
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 2.x: "extra copy" note on cursors
        table = fn()
    if isinstance(table, pa.RecordBatchReader):
        table = table.read_all()
    return table


def _fetch(cur: duckdb.DuckDBPyConnection) -> pa.Table:
    return fetch_arrow(cur)


#: a derived dataset's pointer file: ``{"folder": ...}`` names its current output folder
POINTER = "CURRENT.json"


def current_folder(storage: Storage, dataset: str) -> str | None:
    """The folder (relative to the workspace) that a derived dataset's pointer names."""
    rel = f"{dataset}/{POINTER}"
    if not storage.exists(rel):
        return None
    folder = json.loads(storage.read_bytes(rel))["folder"]
    return f"{dataset}/{folder}"


PART_SUFFIX = ".parquet"
#: prefix of a compacted part's file name, and its column naming the part each row came from
#: (:mod:`exokiratory.core.compact`); readers order such rows by ``_origin``, others by file name
COMPACT_PREFIX = "compact-"
ORIGIN = "_origin"


def is_compacted(path: str) -> bool:
    return path.rsplit("/", 1)[-1].startswith(COMPACT_PREFIX)


class PartDataset:
    """A keyed dataset stored as Parquet parts under ``rel`` in a workspace."""

    def __init__(
        self, storage: Storage, rel: str, key: Sequence[str], schema: pa.Schema | None = None
    ):
        if not key:
            raise ValueError("a dataset needs at least one key column")
        self.storage = storage
        self.rel = rel.rstrip("/")
        self.key = tuple(key)
        self.schema = schema

    def parts(self) -> list[str]:
        """Relative paths of the committed part files, sorted by name."""
        return self.storage.list_files(self.rel, PART_SUFFIX)

    def exists(self) -> bool:
        return bool(self.parts())

    def part_exists(self, name: str) -> bool:
        return self.storage.exists(f"{self.rel}/{name}")

    def write_part(self, name: str, table: pa.Table) -> int:
        """Write one part atomically (whole or absent). Returns bytes written."""
        if not name.endswith(PART_SUFFIX):
            name += PART_SUFFIX
        if self.schema is not None:
            table = table.select(self.schema.names).cast(self.schema)
        return self.storage.write_parquet_atomic(f"{self.rel}/{name}", table)

    def read_raw(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Every row of every part, with a ``_part`` column naming the part it was written in (a
        compacted part's rows keep their original part's name); no de-duplication."""
        tables = []
        for part in self.parts():
            compacted = is_compacted(part)
            cols = [*columns, ORIGIN] if columns and compacted else columns
            t = self.storage.read_parquet(part, list(cols) if cols else None)
            if compacted:
                origin = t.column(ORIGIN)
                t = t.drop_columns([ORIGIN]).append_column("_part", origin)
            else:
                name = part.rsplit("/", 1)[-1]
                t = t.append_column("_part", pa.array([name] * t.num_rows, pa.string()))
            tables.append(t)
        if not tables:
            return self._empty(columns)
        return pa.concat_tables(tables, promote_options="default")

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The dataset with one row per key (see module docstring for which row wins)."""
        cols = list(columns) if columns else None
        if cols is not None:
            needed = list(dict.fromkeys([*self.key, *cols]))
            cols_read = needed
        else:
            cols_read = None
        raw = self.read_raw(cols_read)
        if raw.num_rows == 0:
            out = raw.drop_columns(["_part"]) if "_part" in raw.column_names else raw
            return out.select(cols) if cols else out
        out = dedupe(raw, self.key)
        return out.select(cols) if cols else out

    def _empty(self, columns: Sequence[str] | None) -> pa.Table:
        if self.schema is None:
            return pa.table({k: pa.array([], pa.string()) for k in (columns or self.key)})
        schema = self.schema
        if columns:
            schema = pa.schema([schema.field(c) for c in columns if c in schema.names])
        return schema.empty_table()


def keep_one_sql(src: str, key: Sequence[str], has_error: bool, part_col: str) -> str:
    """SQL keeping one row per key of ``src`` (see the module docstring): a row without error
    wins, then the row of the part that sorts last by ``part_col``. The catalog's views and
    :meth:`PartDataset.read` both use it, so every reader applies the same rule."""
    keys = ", ".join(f'"{k}"' for k in key)
    err = "(error IS NOT NULL), " if has_error else ""
    return f"""SELECT * EXCLUDE ({part_col}, _rn) FROM (
                 SELECT *, row_number() OVER (PARTITION BY {keys}
                   ORDER BY {err}{part_col} DESC) AS _rn FROM {src}) WHERE _rn = 1"""


def dedupe(raw: pa.Table, key: Sequence[str]) -> pa.Table:
    """Keep one row per key from a table carrying a ``_part`` column (the part name). The rows
    are chosen on the key columns and taken with Arrow, so every column keeps its type."""
    has_error = "error" in raw.column_names
    cols = list(dict.fromkeys([*key, "_part", *(["error"] if has_error else [])]))
    small = raw.select(cols).append_column("_row", pa.array(range(raw.num_rows), pa.int64()))
    con = duckdb.connect()
    try:
        con.register("raw_t", small)
        sql = keep_one_sql("raw_t", key, has_error, "_part")
        rows = _fetch(con.execute(f"SELECT _row FROM ({sql}) ORDER BY _row")).column("_row")
    finally:
        con.close()
    return raw.take(rows).drop_columns(["_part"])

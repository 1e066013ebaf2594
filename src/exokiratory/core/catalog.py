"""DuckDB views over every dataset of a workspace (the SQL interface and the readers' engine).

Views (when their data exists): ``images``, ``paths``, ``paths_log``, ``image_paths`` (one
present path per image), ``jobs``, and one per pass
output, named after the pass (``probe``, ``features``...). Keyed views keep one row per key
(see :mod:`exokiratory.core.dataset`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from exokiratory.core.dataset import ORIGIN, fetch_arrow, is_compacted, keep_one_sql
from exokiratory.core.jobs import JOBS_SCHEMA
from exokiratory.core.layout import IMAGES, JOBS, PATHS
from exokiratory.core.manifest import (
    CURRENT_PATHS_SQL,
    IMAGE_PATHS_SQL,
    IMAGES_SCHEMA,
    IMAGES_VIEW_SQL,
    PATHS_KEY,
    PATHS_SCHEMA,
)
from exokiratory.core.manifest_cache import (
    CACHED_VIEWS,
    cache_rel,
    cached_views,
    manifest_digest,
    prune,
    write_view,
)
from exokiratory.core.samples import define_sample_views
from exokiratory.core.storage import Storage

if TYPE_CHECKING:
    from exokiratory.engine.step import Step


log = logging.getLogger(__name__)

_DATABASE: duckdb.DuckDBPyConnection | None = None
_DATABASE_PID = 0


def _shared_database() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB database per process (re-created after a fork)."""
    global _DATABASE, _DATABASE_PID
    if _DATABASE is None or os.getpid() != _DATABASE_PID:
        _DATABASE = _connect()
        _DATABASE_PID = os.getpid()
    return _DATABASE


def _connect() -> duckdb.DuckDBPyConnection:
    """A new in-memory database whose freed query memory goes back to the system: without
    DuckDB's background allocator threads (DuckDB >= 1.1) the working memory of a large
    query (~600 MB for the flags' inputs at 10^6 images) stays with the process."""
    con = duckdb.connect()
    try:
        con.execute("SET allocator_background_threads = true")
    except duckdb.Error as exc:  # an older DuckDB keeps the memory; nothing else changes
        log.debug("DuckDB cannot return freed memory in the background: %s", exc)
    return con


def _no_half(t: pa.DataType) -> pa.DataType:
    """float16 -> float32 (DuckDB reads float16 Parquet as FLOAT but cannot register it)."""
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_fixed_size_list(t):
        return pa.list_(_no_half(t.value_type), t.list_size)
    if pa.types.is_list(t):
        return pa.list_(_no_half(t.value_type))
    return t


_DUCK_TYPES = {
    pa.bool_(): "BOOLEAN",
    pa.int8(): "TINYINT",
    pa.int16(): "SMALLINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.uint8(): "UTINYINT",
    pa.uint16(): "USMALLINT",
    pa.uint32(): "UINTEGER",
    pa.uint64(): "UBIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR",
    pa.large_string(): "VARCHAR",
    pa.binary(): "BLOB",
    pa.large_binary(): "BLOB",
    pa.date32(): "DATE",
}


def duck_type(t: pa.DataType) -> str:
    """The DuckDB type an Arrow type is read as (TypeError for one this does not know)."""
    if t in _DUCK_TYPES:
        return _DUCK_TYPES[t]
    if pa.types.is_timestamp(t):
        return "TIMESTAMP WITH TIME ZONE" if t.tz else "TIMESTAMP"
    if pa.types.is_fixed_size_list(t):
        return f"{duck_type(t.value_type)}[{t.list_size}]"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"{duck_type(t.value_type)}[]"
    if pa.types.is_struct(t):
        fields = ", ".join(f'"{f.name}" {duck_type(f.type)}' for f in t)
        return f"STRUCT({fields})"
    raise TypeError(f"no DuckDB type for {t}")


def empty_sql(schema: pa.Schema) -> str:
    """A FROM source with ``schema``'s columns and no rows."""
    cols = ", ".join(f'CAST(NULL AS {duck_type(f.type)}) AS "{f.name}"' for f in schema)
    return f"(SELECT {cols} WHERE false)"


def _sql_list(items: Sequence[str]) -> str:
    return "[" + ", ".join("'" + i.replace("'", "''") + "'" for i in items) + "]"


class ReadOnlyError(ValueError):
    """A statement that a read-only catalog refuses (it would write, attach or read files)."""


#: statements a read-only catalog runs: queries (SELECT, WITH, DESCRIBE, SHOW...) and EXPLAIN
_READ_ONLY_TYPES = frozenset({"SELECT", "EXPLAIN"})


def check_read_only(sql: str) -> None:
    """Refuse anything but queries, with one line naming the statement."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ReadOnlyError(f"cannot parse the query: {exc}") from None
    for st in statements:
        kind = st.type.name
        if kind not in _READ_ONLY_TYPES:
            head = " ".join(st.query.split())[:60]
            raise ReadOnlyError(
                f"read-only: only queries (SELECT, WITH, DESCRIBE, SHOW, EXPLAIN) are allowed, "
                f"not {kind} ({head!r})"
            )


def _read_only_connection(storage: Storage) -> duckdb.DuckDBPyConnection:
    """A database of its own that reads only the workspace's files: no other file, no
    extension install, settings locked (the views are defined on it afterwards)."""
    con = _connect()
    if storage.is_local:
        con.execute("SET allowed_directories = ?", [[storage.path("").rstrip("/") + "/"]])
        con.execute("SET enable_external_access = false")
    else:  # DuckDB's file allow-list does not cover fsspec file systems: statements only
        con.register_filesystem(storage.fs)
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET lock_configuration = true")
    return con


class Catalog:
    """A DuckDB connection with views over a workspace's part datasets."""

    def __init__(
        self, storage: Storage, steps: Sequence[Step[Any]] = (), *, read_only: bool = False
    ):
        self.storage = storage
        self.read_only = read_only
        if read_only:
            self.con = _read_only_connection(storage)
        elif storage.is_local:
            # A cursor of one process-wide database: opening a DuckDB database costs ~15 ms, a
            # cursor almost nothing. Views are TEMP, so catalogs never see each other's views.
            self.con = _shared_database().cursor()
        else:
            # fsspec file systems are registered per database: a remote workspace gets its own.
            self.con = _connect()
            self.con.register_filesystem(storage.fs)
        self.views: list[str] = []
        self._recorded: list[tuple[str, pa.Table]] | None = None
        self._view_sql: dict[str, str] = {}
        #: keyed view -> (key, raw source, has an error column): see key_status_sql, keyed_rows
        self._keyed: dict[str, tuple[tuple[str, ...], str, bool]] = {}
        self._define_manifest_views()
        self._define_jobs_view()
        define_sample_views(self)  # named samples (samples/<name>/), when any exist
        for step in steps:  # each step defines its own views (engine.step.Step.define_views)
            step.define_views(self)

    # -- helpers -----------------------------------------------------------------------------
    def _files(self, rel: str, listed: Sequence[str] | None = None) -> list[str]:
        found = self.storage.list_files(rel, ".parquet") if listed is None else listed
        return [self._url(p) for p in found]

    def _url(self, rel: str) -> str:
        """A workspace file as DuckDB opens it (a path, or a URL of the registered fs)."""
        full = self.storage.path(rel)
        return full if self.storage.is_local else self.storage.fs.unstrip_protocol(full)

    def _source(
        self, rel: str, schema: pa.Schema | None = None, listed: Sequence[str] | None = None
    ) -> str:
        """A FROM-clause source for a dataset's parts (with a ``filename`` column);
        ``listed``: the parts, when the caller has listed them already."""
        src = self.raw_source(rel, listed)
        if src or schema is None:
            return src
        schema = pa.schema([f.with_type(_no_half(f.type)) for f in schema])
        schema = schema.append(pa.field("filename", pa.string()))
        try:  # in SQL: registering an Arrow table makes DuckDB import pandas (0.7 s a command)
            return empty_sql(schema)
        except TypeError:
            name = "_empty_" + re.sub(r"[^0-9A-Za-z]+", "_", rel)
            self.con.register(name, schema.empty_table())
            return name

    def _view(self, name: str, sql: str) -> None:
        self.rows(f'CREATE OR REPLACE TEMP VIEW "{name}" AS {sql}')
        self._view_sql[name] = sql
        if name not in self.views:
            self.views.append(name)

    @contextmanager
    def materialized(self, names: Sequence[str]) -> Iterator[None]:
        """Within the block, the views ``names`` (in this order) read a copy computed once:
        for callers that query a costly view many times (``status`` evaluates ``images`` for
        every pass). The views are restored afterwards; others defined on them follow."""
        done: list[str] = []
        try:
            for name in names:
                if name not in self._view_sql or (self.manifest_cached and name in CACHED_VIEWS):
                    continue  # a stored copy is read faster than it is copied
                table = f"_materialized_{name}"
                self.rows(f'CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM "{name}"')
                self.rows(f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT * FROM {table}')
                done.append(name)
            yield
        finally:
            for name in reversed(done):
                self.rows(f'CREATE OR REPLACE TEMP VIEW "{name}" AS {self._view_sql[name]}')
                self.rows(f"DROP TABLE IF EXISTS _materialized_{name}")

    # -- views -------------------------------------------------------------------------------
    def _define_manifest_views(self) -> None:
        listed = {rel: self.storage.list_files(rel, ".parquet") for rel in (IMAGES, PATHS)}
        img_src = self._source(IMAGES, IMAGES_SCHEMA, listed[IMAGES])
        self._view(
            "images_registry",
            f"""SELECT * EXCLUDE (filename, _rn) FROM (
                  SELECT *, row_number() OVER (PARTITION BY image_id
                    ORDER BY image_idx, filename) AS _rn FROM {img_src}) WHERE _rn = 1""",
        )
        path_src = self._source(PATHS, PATHS_SCHEMA, listed[PATHS])
        keys = ", ".join(PATHS_KEY)
        self._view(
            "paths_log",
            f"""SELECT * EXCLUDE (_rn) FROM (
                  SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY seen_at, filename)
                  AS _rn FROM {path_src}) WHERE _rn = 1""",
        )
        current = CURRENT_PATHS_SQL.format(src="(SELECT *, filename AS _part_no FROM paths_log)")
        self._view("paths", f"SELECT * EXCLUDE (filename, _part_no) FROM ({current})")
        self._view("image_paths", IMAGE_PATHS_SQL)
        self._view(
            "images", IMAGES_VIEW_SQL.format(images="images_registry", current_paths="paths")
        )
        self.manifest_digest = manifest_digest(self.storage, listed)  # one listing each
        stored = cached_views(self.storage, self.manifest_digest)
        self.manifest_cached = stored is not None
        # the same rows, computed once (core.manifest_cache); ``images`` is stored in image_idx
        # order, and DuckDB keeps a file's order (preserve_insertion_order) without a sort
        for name, rel in (stored or {}).items():
            self._view(name, f"SELECT * FROM {self._file(rel)}")

    def store_manifest_views(self) -> bool:
        """Store the ``images`` and ``paths`` views' rows for the current manifest parts, so that
        later catalogs read them from one file each (see :mod:`core.manifest_cache`); False when
        there is nothing to store or the copy is already there."""
        if (
            self.manifest_cached
            or self.read_only
            or not self.storage.list_files(IMAGES, ".parquet")
        ):
            return False
        for view in CACHED_VIEWS:  # each view then reads its copy: the next one reuses it
            rel = cache_rel(view, self.manifest_digest)
            write_view(self.storage, rel, self.con.sql(f'SELECT * FROM "{view}"'))
            self._view(view, f"SELECT * FROM {self._file(rel)}")
        prune(self.storage, self.manifest_digest)
        self.manifest_cached = True
        return True

    def _file(self, rel: str) -> str:
        return f"read_parquet({_sql_list([self._url(rel)])})"

    def _define_jobs_view(self) -> None:
        src = self._source(JOBS, JOBS_SCHEMA)
        self._view("jobs", f"SELECT * EXCLUDE (filename) FROM {src} ORDER BY finished_at")

    def define_view(self, name: str, sql: str) -> None:
        """A view over other views (defined after the views it reads)."""
        self._view(name, sql)

    def define_keyed_view(self, name: str, rel: str, schema: pa.Schema, key: Sequence[str]) -> None:
        """A part dataset read as one row per key (see :mod:`exokiratory.core.dataset`)."""
        src = self._source(rel, schema)
        keys = ", ".join(f'"{k}"' for k in key)
        order = "image_idx, " + keys if "image_idx" in schema.names else keys
        one = keep_one_sql(src, key, "error" in schema.names, "filename")
        self._view(name, f"{one} ORDER BY {order}")
        self._keyed[name] = (tuple(key), src, "error" in schema.names)

    def key_status_sql(self, name: str, key: Sequence[str]) -> str | None:
        """For a keyed view ``name`` whose key is ``key``: SQL giving one row per key with
        ``ok``, whether the row readers keep has no error, by a hash aggregate over the key
        and error columns (the view itself sorts every row by key: 3x slower at 10^6). The
        kept row has no error exactly when some row of the key has none (keep_one_sql)."""
        found = self._keyed.get(name)
        if found is None or found[0] != tuple(key) or not found[2]:
            return None
        keys = ", ".join(f'"{k}"' for k in key)
        return f"SELECT {keys}, bool_or(error IS NULL) AS ok FROM {found[1]} GROUP BY {keys}"

    def keyed_rows(self, name: str, column: str, values: Sequence[object]) -> pa.Table:
        """The rows of view ``name`` whose ``column`` is one of ``values`` (see
        :meth:`keyed_subset_sql`): looking up a few keys does not rank every row of a keyed
        view (80 s at 10^7 images)."""
        return self.query(self.keyed_subset_sql(name, column, "SELECT unnest(?)"), [list(values)])

    def has_ok_rows(self, name: str) -> bool:
        """Whether view ``name`` has a row without error. For a keyed view it is answered from
        the parts (a key's kept row has no error when one of its rows has none), so the
        answer does not rank every row (30 s at 10^7 images)."""
        found = self._keyed.get(name)
        src = found[1] if found is not None and found[2] else f'"{name}"'
        return bool(self.rows(f"SELECT 1 FROM {src} WHERE error IS NULL LIMIT 1"))

    def keyed_subset_sql(self, name: str, column: str, subquery: str) -> str:
        """SQL of the rows of view ``name`` whose ``column`` is in ``subquery``. For a keyed
        view and a key column, the filter is applied to the parts' rows before the
        one-row-per-key rule (the same rows: a key's rows are all kept or all dropped), so the
        rule ranks the subset only; otherwise the view is filtered."""
        found = self._keyed.get(name)
        if found is None or column not in found[0]:
            return f'SELECT * FROM "{name}" WHERE "{column}" IN ({subquery})'
        key, src, has_error = found
        rows = f'(SELECT * FROM {src} WHERE "{column}" IN ({subquery}))'
        return keep_one_sql(rows, key, has_error, "filename")

    def raw_source(self, rel: str, listed: Sequence[str] | None = None) -> str:
        """A FROM source over every row of a dataset's parts (with ``filename``), or ''."""
        files = self._files(rel, listed)
        if not files:
            return ""
        src = f"read_parquet({_sql_list(files)}, filename=true, union_by_name=true)"
        if not any(is_compacted(f) for f in files):
            return src
        # a compacted part's rows keep the name of the part they were written in
        # (core.compact): ``filename`` is that name, so every reader's rule is unchanged
        return (
            f"(SELECT * EXCLUDE ({ORIGIN}, filename), "
            f"coalesce({ORIGIN}, parse_filename(filename)) AS filename FROM {src})"
        )

    def define_table_view(self, name: str, rel: str, schema: pa.Schema) -> None:
        """Every row of the parts under ``rel`` (a derived output folder); empty with
        ``schema`` when there are none."""
        src = self._source(rel, schema)
        order = "image_idx" if "image_idx" in schema.names else "1"
        self._view(name, f"SELECT * EXCLUDE (filename) FROM {src} ORDER BY {order}")

    # -- queries -----------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[object] | None = None) -> pa.Table:
        if self.read_only:
            check_read_only(sql)
        if self._recorded is not None and not params:  # see units_query
            empty = fetch_arrow(self.con.sql(f"SELECT * FROM ({sql}) AS _q LIMIT 0"))
            self._recorded.append((sql, empty))
            return empty
        rel = self.con.sql(sql, params=list(params) if params else None)
        if rel is None:  # a statement without a result (CREATE, SET...)
            return pa.table({})
        return fetch_arrow(rel)

    def units_query(self, units: Callable[[Catalog], pa.Table]) -> tuple[str, pa.Table] | None:
        """The SQL behind ``units(self)`` when it returns one query's result unchanged (the
        usual case: a pass's ``units`` is a query over the views), else None. Counting and
        anti-joins can then run inside DuckDB without materialising every unit: at 10^6 images
        that is the difference between reading keys and copying every unit row to Arrow.
        Returns the SQL and an empty table of the units' schema."""
        self._recorded = []
        try:
            result = units(self)
            recorded = self._recorded
        except Exception:
            return None
        finally:
            self._recorded = None
        if len(recorded) != 1 or recorded[0][1] is not result:
            return None
        try:  # still valid after units() returned (not over a table it registered for itself)
            self.con.sql(f"SELECT * FROM ({recorded[0][0]}) AS _q LIMIT 0")
        except duckdb.Error:
            return None
        return recorded[0]

    def rows(self, sql: str, params: Sequence[object] | None = None) -> list[tuple[Any, ...]]:
        """Run a query and return its rows as tuples (the result is fully consumed)."""
        return self.con.execute(sql, list(params) if params else []).fetchall()

    def scalar(self, sql: str, params: Sequence[object] | None = None) -> Any:
        r = self.rows(sql, params)
        return r[0][0] if r else None

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

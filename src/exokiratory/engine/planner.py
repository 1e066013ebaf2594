"""Planning: units wanted minus units already present, split into deterministic batches.

A batch's part name is derived from its content (the first unit's ``image_idx`` and a digest of
its keys), so two workers that plan the same batch write the same file name with the same rows:
the second write replaces the first with identical content, and readers never see duplicates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from exokiratory.core.catalog import Catalog, fetch_arrow
from exokiratory.engine.step import Pass


@dataclass(frozen=True)
class Batch:
    name: str
    units: pa.Table
    #: a retry of errored units: an existing part of the same name (the same units, all of
    #: them errors, or they would not be planned) is replaced instead of skipped
    overwrite: bool = False

    @property
    def n_units(self) -> int:
        return int(self.units.num_rows)


@dataclass(frozen=True)
class Plan:
    pass_name: str
    wanted: int
    done: int
    failed: int
    todo: pa.Table
    batch_size: int
    retry_errors: bool = False

    def batches(self) -> Iterator[Batch]:
        for start in range(0, self.todo.num_rows, self.batch_size):
            units = self.todo.slice(start, self.batch_size)
            yield Batch(part_name(units, self.todo.column_names), units, self.retry_errors)

    @property
    def n_batches(self) -> int:
        return -(-self.todo.num_rows // self.batch_size)


def part_name(units: pa.Table, columns: list[str]) -> str:
    key_cols = [c for c in ("image_id", "segment_id") if c in columns] or columns[:1]
    h = hashlib.sha256()
    for col in key_cols:
        for v in units.column(col).to_pylist():
            h.update(str(v).encode())
            h.update(b"\0")
    first = units.column("image_idx")[0].as_py() if "image_idx" in columns else 0
    return f"part-{int(first):012d}-{h.hexdigest()[:16]}.parquet"


def unit_counts(
    cat: Catalog, p: Pass, sql: str | None = None, shared: dict[str, str] | None = None
) -> tuple[int, int, int]:
    """Units wanted, done and failed: counted inside DuckDB over the pass's units query when
    it has one (keys only, see ``Catalog.units_query``), else over its units materialised.
    ``shared``: units queries already computed (query and keys -> temp table), for callers that
    count many passes, several of which want the same units (``status``)."""
    keys = list(p.units_key)
    on = " AND ".join(f'w."{k}" = d."{k}"' for k in keys)
    if sql is None:
        query = cat.units_query(p.units)
        sql = query[0] if query else None
    if sql is None:
        cat.con.register("_wanted_units", p.units(cat).select(keys))
        src = "_wanted_units"
    else:
        cols = ", ".join(f'"{k}"' for k in keys)
        select = f"SELECT {cols} FROM ({sql}) AS _units"
        src = f"({select})"
        if shared is not None:
            tag = f"{cols}\0{sql}"
            if tag not in shared:
                shared[tag] = f"_units_{len(shared)}"
                cat.rows(f"CREATE OR REPLACE TEMP TABLE {shared[tag]} AS {select}")
            src = shared[tag]
    status = cat.key_status_sql(p.done_view, keys)
    try:
        if status is None:
            r = cat.rows(
                f"""SELECT count(*),
                       count(*) FILTER (WHERE d."{keys[0]}" IS NOT NULL AND d.error IS NULL),
                       count(*) FILTER (WHERE d.error IS NOT NULL)
                FROM {src} w LEFT JOIN "{p.done_view}" d ON {on}"""
            )
        else:  # the same counts from the keys and errors alone (Catalog.key_status_sql)
            r = cat.rows(
                f"""SELECT count(*), count(*) FILTER (WHERE d.ok),
                       count(*) FILTER (WHERE NOT d.ok)
                FROM {src} w LEFT JOIN ({status}) d ON {on}"""
            )
    finally:
        if sql is None:
            cat.con.unregister("_wanted_units")
    return int(r[0][0]), int(r[0][1]), int(r[0][2])


def balanced_batch_size(n_units: int, batch_size: int, workers: int) -> int:
    """``batch_size``, or less when there are too few units to give every worker two batches.

    Large runs keep the configured size (few, large parts); a small run is split evenly so that
    no worker idles while another processes most of the units.
    """
    if n_units <= 0:
        return batch_size
    return max(1, min(batch_size, -(-n_units // (2 * max(1, workers)))))


def plan(
    p: Pass,
    catalog: Catalog,
    *,
    batch_size: int,
    limit: int | None = None,
    retry_errors: bool = False,
    workers: int = 1,
) -> Plan:
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    query = catalog.units_query(p.units)
    counts: tuple[int, int, int] | None = None
    if query is not None:  # counted on keys inside DuckDB: nothing to do costs no unit rows
        counts = unit_counts(catalog, p, query[0])
        wanted_n, n_ok, n_failed = counts
        if wanted_n == n_ok + (0 if retry_errors else n_failed):
            return Plan(p.name, wanted_n, n_ok, n_failed, query[1], batch_size, retry_errors)
    wanted = p.units(catalog)
    done = catalog.query(f'SELECT {", ".join(p.units_key)}, error FROM "{p.done_view}"')
    todo, n_ok, n_failed = _anti_join(wanted, done, list(p.units_key), retry_errors, counts)
    if limit is not None:
        todo = todo.slice(0, limit)
    size = balanced_batch_size(todo.num_rows, batch_size, workers)
    return Plan(p.name, wanted.num_rows, n_ok, n_failed, todo, size, retry_errors)


def _anti_join(
    wanted: pa.Table,
    done: pa.Table,
    keys: list[str],
    retry_errors: bool,
    counts: tuple[int, int, int] | None,
) -> tuple[pa.Table, int, int]:
    """The units of ``wanted`` not in ``done`` (errored ones too with ``retry_errors``), in
    ``wanted``'s order, with the done and failed counts (``counts`` when already known)."""
    con = duckdb.connect()
    try:
        con.register(
            "wanted", wanted.append_column("_ord", pa.array(range(wanted.num_rows), pa.int64()))
        )
        con.register("done", done)
        on = " AND ".join(f'w."{k}" = d."{k}"' for k in keys)
        skip = "" if not retry_errors else " AND d.error IS NULL"
        todo = fetch_arrow(
            con.execute(
                f"""SELECT w.* EXCLUDE (_ord) FROM wanted w
                WHERE NOT EXISTS (SELECT 1 FROM done d WHERE {on}{skip}) ORDER BY w._ord"""
            )
        )
        if counts is not None:
            return todo, counts[1], counts[2]
        r = con.execute(
            f"""SELECT count(*) FILTER (WHERE d.error IS NULL),
                       count(*) FILTER (WHERE d.error IS NOT NULL)
                FROM wanted w JOIN done d ON {on}"""
        ).fetchone()
    finally:
        con.close()
    return todo, (int(r[0]) if r else 0), (int(r[1]) if r else 0)

"""Compaction: many small Parquet parts of a dataset rewritten as a few large ones, same rows.

Readers keep one row per key by a total order over ``(row, part name)`` (see
:mod:`exokiratory.core.dataset`). Compaction rewrites a *group* of small parts as one part
holding exactly the rows readers keep from that group, each with an ``_origin`` column naming
the part the row came from. Readers order by ``_origin`` where a file has one and by the file's
own name otherwise, so:

- the winner of a key over {compacted group} + {other parts} is the winner over the original
  parts (the maximum of a total order is the maximum of the maxima of any partition);
- while both the compacted part and (some of) its inputs exist, a key's candidates include
  identical rows with the same ``_origin``: readers see the same table. A SIGKILL at any instant
  (before the compacted part is whole, between the deletions of its inputs) therefore leaves the
  dataset readable with identical contents, and a rerun finishes the job;
- a part written while compaction runs is not in the group and is never deleted; two
  compactions racing on the same group write the same file name with the same rows.

Only parts smaller than the target size are grouped, in name order, so large parts are not
rewritten again and again as a collection grows. Column types are kept exactly (float16
embeddings stay float16): rows are chosen with DuckDB on the key columns and taken with Arrow.
A group of up to :data:`STREAM_BYTES` is read whole and written sorted by key; a larger one is
compacted streamed (the path log of a 10^7-file first scan is one group): DuckDB chooses the
winners from the key columns of the files, then the parts are read one at a time, their winners
taken and written in part order, so memory is the key columns and one part, not the group.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from exokiratory.core.dataset import COMPACT_PREFIX, ORIGIN, PART_SUFFIX, fetch_arrow
from exokiratory.core.storage import Storage

log = logging.getLogger(__name__)
#: default size of a compacted part (compressed bytes), and the number of small parts that
#: makes a dataset worth compacting after a run
TARGET_BYTES = 512 * 1024 * 1024
MIN_PARTS = 32
#: a group of more compressed bytes than this is compacted streamed (see the module docstring)
STREAM_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class CompactRule:
    """Which rows of a dataset readers keep: one per ``key``, the first by ``order`` (an SQL
    ORDER BY list where ``_origin`` is the part name)."""

    rel: str
    key: tuple[str, ...]
    order: str

    @classmethod
    def keyed(cls, rel: str, key: Sequence[str], has_error: bool) -> CompactRule:
        """A pass output: a row without error wins, then the part whose name sorts last."""
        err = "(error IS NOT NULL), " if has_error else ""
        return cls(rel, tuple(key), f"{err}{ORIGIN} DESC")


@dataclass(frozen=True)
class CompactResult:
    rel: str
    parts_before: int
    parts_after: int
    rows_written: int
    bytes_before: int
    bytes_after: int

    def summary(self) -> str:
        return (
            f"{self.rel}: {self.parts_before} -> {self.parts_after} parts "
            f"({self.bytes_before / 1e6:.1f} -> {self.bytes_after / 1e6:.1f} MB)"
        )


def part_sizes(storage: Storage, rel: str) -> list[tuple[str, int]]:
    """``(relative path, bytes)`` of the committed parts of a dataset, in name order."""
    return storage.file_sizes(rel, PART_SUFFIX)


def plan_groups(
    sizes: Sequence[tuple[str, int]], target_bytes: int, min_parts: int
) -> list[list[str]]:
    """Groups of consecutive small parts (name order), each up to ``target_bytes``; nothing when
    fewer than ``min_parts`` parts are small. A group of one part is left alone."""
    small = [(p, n) for p, n in sizes if n < target_bytes // 2]
    if len(small) < max(2, min_parts):
        return []
    groups: list[list[str]] = []
    cur: list[str] = []
    total = 0
    for path, n in small:
        if cur and total + n > target_bytes:
            groups.append(cur)
            cur, total = [], 0
        cur.append(path)
        total += n
    if cur:
        groups.append(cur)
    return [g for g in groups if len(g) > 1]


def _read_group(storage: Storage, group: Sequence[str]) -> pa.Table:
    tables = []
    for path in group:
        t = storage.read_parquet(path)
        if ORIGIN not in t.column_names:
            name = path.rsplit("/", 1)[-1]
            t = t.append_column(ORIGIN, pa.array([name] * t.num_rows, pa.string()))
        tables.append(t)
    return pa.concat_tables(tables, promote_options="default")


def kept_rows(table: pa.Table, rule: CompactRule) -> pa.Table:
    """The rows readers keep from ``table`` (which has an ``_origin`` column), ordered by key."""
    words = set(re.findall(r"\w+", rule.order))
    ordering = [c for c in table.column_names if c in words]
    cols = list(dict.fromkeys([*rule.key, ORIGIN, *ordering]))
    con = duckdb.connect()
    try:
        con.register("t", table.select(cols).append_column("_row", pa.array(range(len(table)))))
        keys = ", ".join(f'"{k}"' for k in rule.key)
        idx = fetch_arrow(
            con.execute(
                f"""SELECT _row FROM t QUALIFY row_number() OVER (PARTITION BY {keys}
                    ORDER BY {rule.order}, _row) = 1 ORDER BY {keys}"""
            )
        ).column("_row")
    finally:
        con.close()
    return table.take(idx)


def group_name(group: Sequence[str]) -> str:
    """A compacted part's name: a digest of its inputs' names (racing compactions agree)."""
    h = hashlib.sha256("\0".join(p.rsplit("/", 1)[-1] for p in group).encode()).hexdigest()
    first = group[0].rsplit("/", 1)[-1].removesuffix(PART_SUFFIX)
    return f"{COMPACT_PREFIX}{first}-{h[:16]}{PART_SUFFIX}"


def compact_dataset(
    storage: Storage,
    rule: CompactRule,
    *,
    target_bytes: int = TARGET_BYTES,
    min_parts: int = MIN_PARTS,
) -> CompactResult:
    """Compact the small parts of one dataset (see the module docstring). Kill-safe."""
    if target_bytes <= 0 or min_parts < 2:
        raise ValueError("target_bytes must be positive and min_parts at least 2")
    sizes = part_sizes(storage, rule.rel)
    groups = plan_groups(sizes, target_bytes, min_parts)
    rows = 0
    size_of = dict(sizes)
    for group in groups:
        name = f"{rule.rel}/{group_name(group)}"
        if sum(size_of[p] for p in group) > STREAM_BYTES:
            n = _compact_streamed(storage, group, rule, name)
        else:
            kept = kept_rows(_read_group(storage, group), rule)
            storage.write_parquet_atomic(name, kept)
            n = kept.num_rows
        rows += n
        for path in group:  # the compacted part is whole: its inputs can go, in any order
            storage.remove(path)
        log.info("compacted %d parts of %s into one (%d rows)", len(group), rule.rel, n)
    after = part_sizes(storage, rule.rel) if groups else sizes
    return CompactResult(
        rule.rel,
        len(sizes),
        len(after),
        rows,
        sum(n for _, n in sizes),
        sum(n for _, n in after),
    )


def _compact_streamed(storage: Storage, group: Sequence[str], rule: CompactRule, rel: str) -> int:
    """Write the rows readers keep from ``group`` as the part ``rel``, one input part in
    memory at a time (in part order, then row order); returns the rows written."""
    schemas = [_schema(storage, p) for p in group]
    winners = _winners(storage, group, rule, schemas)
    schema = pa.unify_schemas(
        [*schemas, pa.schema([pa.field(ORIGIN, pa.string())])], promote_options="default"
    )

    def tables() -> Iterator[pa.Table]:
        for i, path in enumerate(group):
            rows = winners.get(i)
            if rows is None:
                continue
            t = storage.read_parquet(path).take(pa.array(rows, pa.int64()))
            if ORIGIN not in t.column_names:
                name = path.rsplit("/", 1)[-1]
                t = t.append_column(ORIGIN, pa.array([name] * t.num_rows, pa.string()))
            yield _conform(t, schema)

    storage.write_parquet_stream(rel, schema, tables())
    return sum(len(r) for r in winners.values())


def _schema(storage: Storage, rel: str) -> pa.Schema:
    with storage.fs.open(storage.path(rel), "rb") as fh:
        return pq.read_schema(fh)


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = [
        t.column(f.name) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=schema.remove_metadata()).cast(schema)


def _winners(
    storage: Storage, group: Sequence[str], rule: CompactRule, schemas: Sequence[pa.Schema]
) -> dict[int, np.ndarray]:
    """Part index in ``group`` (whose schemas are ``schemas``) -> the sorted row numbers of the
    rows readers keep from it, chosen by DuckDB from the key and ordering columns of the files
    (the rule of :func:`kept_rows`, ties broken by part then row, as there)."""
    urls = [
        storage.path(p) if storage.is_local else storage.fs.unstrip_protocol(storage.path(p))
        for p in group
    ]
    words = set(re.findall(r"\w+", rule.order)) - {ORIGIN}
    present = set().union(*(s.names for s in schemas))  # the parts' footers, read once
    has_origin = ORIGIN in present
    keys = ", ".join(f'"{k}"' for k in rule.key)
    cols = ", ".join(f'"{c}"' for c in sorted(words & present - set(rule.key)))
    origin = (
        f"coalesce({ORIGIN}, parse_filename(filename))"
        if has_origin
        else "parse_filename(filename)"
    )
    sql = f"""SELECT _part, file_row_number AS _frow FROM (
                SELECT {keys}, {cols + ", " if cols else ""}file_row_number,
                       list_position(?::VARCHAR[], filename) AS _part, {origin} AS {ORIGIN}
                FROM read_parquet(?, filename=true, file_row_number=true, union_by_name=true))
              QUALIFY row_number() OVER (PARTITION BY {keys}
                ORDER BY {rule.order}, _part, file_row_number) = 1"""
    con = duckdb.connect()
    try:
        if not storage.is_local:
            con.register_filesystem(storage.fs)
        t = fetch_arrow(con.execute(sql, [urls, urls]))
    finally:
        con.close()
    if t.num_rows == 0:
        return {}
    part = t.column("_part").to_numpy() - 1
    row = t.column("_frow").to_numpy()
    order = np.lexsort((row, part))
    part, row = part[order], row[order]
    cuts = np.flatnonzero(np.diff(part)) + 1
    return {int(p[0]): r for p, r in zip(np.split(part, cuts), np.split(row, cuts), strict=True)}

"""What the workspace holds: every catalog view, its columns, and a generic summary of each.

Used by the report and by the report sections of the pass families (:mod:`exokiratory.engine.
sections`): they discover tables by their columns instead of listing them, so a table added by a
new pass gets a summary (row count and one line per column) without any change here. Every
summary is one aggregate query per table (DuckDB reads only the columns it needs), so it scales
with the data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from exokiratory.core.catalog import Catalog

T = TypeVar("T")

NUMERIC_TYPES = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "FLOAT",
    "DOUBLE",
    "DECIMAL",
)


def is_numeric(sql_type: str) -> bool:
    return sql_type.split("(")[0] in NUMERIC_TYPES


def qi(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


@dataclass
class ColumnSummary:
    name: str
    sql_type: str
    non_null: int
    distinct: int | None = None
    n_true: int | None = None
    minimum: Any = None
    maximum: Any = None
    mean: float | None = None


@dataclass
class TableInfo:
    name: str
    columns: dict[str, str]  # name -> DuckDB type
    rows: int = 0
    summaries: list[ColumnSummary] = field(default_factory=list)
    error: str | None = None

    def has(self, *cols: str) -> bool:
        return all(c in self.columns for c in cols)


class Tables:
    """The catalog's views with their columns, looked up by name."""

    def __init__(self, cat: Catalog):
        self.cat = cat
        self.info: dict[str, TableInfo] = {}
        self._memo: dict[str, Any] = {}
        for name in cat.views:
            try:
                cols = {
                    str(r[0]): str(r[1]) for r in cat.rows(f"DESCRIBE SELECT * FROM {qi(name)}")
                }
                self.info[name] = TableInfo(name, cols)
            except Exception as exc:  # a broken view is reported, never fatal
                self.info[name] = TableInfo(name, {}, error=f"{type(exc).__name__}: {exc}")

    def __contains__(self, name: object) -> bool:
        return name in self.info and self.info[name].error is None

    def get(self, name: str) -> TableInfo | None:
        t = self.info.get(name)
        return t if t is not None and t.error is None else None

    def has(self, name: str, *cols: str) -> bool:
        t = self.get(name)
        return t is not None and t.has(*cols)

    def nonempty(self, name: str) -> bool:
        t = self.get(name)
        return t is not None and t.rows > 0

    def find_with(self, *cols: str, prefer: tuple[str, ...] = ()) -> str | None:
        """The first view holding all of ``cols`` (``prefer`` first, then by name)."""
        order = [*(p for p in prefer if p in self.info), *sorted(self.info)]
        for name in order:
            if self.has(name, *cols) and self.nonempty(name):
                return name
        return None

    def n_true(self, name: str, col: str) -> int:
        """Rows of ``name`` where the boolean ``col`` is true, from its summary (no query)."""
        t = self.get(name)
        s = next((s for s in t.summaries if s.name == col), None) if t is not None else None
        return int(s.n_true or 0) if s is not None else 0

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()`` once per build: the views do not change while a report is built, and
        several sections ask the same question (clustering levels, zero-shot groups)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]  # type: ignore[no-any-return]

    def summarise(self) -> None:
        for t in self.info.values():
            if t.error is None:
                summarise_table(self.cat, t)


def summarise_table(cat: Catalog, t: TableInfo) -> None:
    """Row count and per-column summaries of one view, in a single aggregate query."""
    exprs = ["count(*)"]
    plan: list[tuple[str, str, list[str]]] = []
    for name, typ in t.columns.items():
        c = qi(name)
        kinds = ["non_null"]
        exprs.append(f"count({c})")
        base = typ.split("(")[0]
        if is_numeric(typ):
            exprs += [
                f"min({c})::DOUBLE",
                f"max({c})::DOUBLE",
                f"avg({c}::DOUBLE) FILTER (WHERE isfinite({c}::DOUBLE))",
            ]
            kinds += ["minimum", "maximum", "mean"]
        elif base == "BOOLEAN":
            exprs.append(f"count(*) FILTER (WHERE {c})")
            kinds.append("n_true")
        elif base == "VARCHAR":
            exprs.append(f"approx_count_distinct({c})")
            kinds.append("distinct")
        elif base.startswith("TIMESTAMP") or base == "DATE":
            exprs += [f"min({c})::VARCHAR", f"max({c})::VARCHAR"]
            kinds += ["minimum", "maximum"]
        plan.append((name, typ, kinds))
    try:
        row = cat.rows(f"SELECT {', '.join(exprs)} FROM {qi(t.name)}")[0]
    except Exception as exc:
        t.error = f"{type(exc).__name__}: {exc}"
        return
    t.rows = int(row[0])
    i = 1
    for name, typ, kinds in plan:
        s = ColumnSummary(name, typ, 0)
        for kind in kinds:
            v = row[i]
            i += 1
            if kind in ("non_null", "n_true", "distinct"):
                v = int(v or 0)
            setattr(s, kind, v)
        t.summaries.append(s)

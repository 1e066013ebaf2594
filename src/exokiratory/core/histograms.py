"""Exact histograms of numeric view columns, aggregated in DuckDB (never by pulling rows).

The columns are read once into a temporary table, their robust ranges come from one
approximate-quantile query, and each histogram is one ``GROUP BY bin`` over that table, so the
cost grows linearly with the number of rows and the result is a few numbers per bin at any
scale. The range is [p0.5, p99.5] widened to include the thresholds drawn on it; values outside
are counted as under/overflow. Heavy-tailed positive columns (p99.5 / p0.5 > 50) get a
logarithmic axis; integer columns with at most 12 distinct values become bar charts of their
values. Which columns and which thresholds is the caller's business (the flags family's report
section draws the PASS 1 signals with the flag thresholds).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from exokiratory.core.tables import Tables, qi

FLOAT_TYPES = ("FLOAT", "DOUBLE", "DECIMAL")
#: at most this many distinct values (of a non-float column): a bar per value
MAX_CATEGORIES = 12


@dataclass(frozen=True)
class Threshold:
    value: float
    label: str
    side: str  # "below" | "above": the flagged side


@dataclass
class Histogram:
    table: str
    column: str
    n: int = 0
    n_missing: int = 0
    edges: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    under: int = 0
    over: int = 0
    log_x: bool = False
    thresholds: list[Threshold] = field(default_factory=list)
    categories: list[tuple[str, int]] | None = None
    note: str = ""


class _Binner:
    """Bins the columns of one temporary table; ranges from one approximate-quantile query."""

    def __init__(self, tables: Tables, view: str, cols: list[str], where: str):
        self.cat = tables.cat
        self.name = f"_report_hist_{uuid.uuid4().hex[:8]}"
        self.cols = cols
        sel = ", ".join(f"{qi(c)}::DOUBLE AS {qi(c)}" for c in cols)
        self.cat.rows(f"CREATE TEMP TABLE {self.name} AS SELECT {sel} FROM {qi(view)} {where}")

    def stats(self) -> dict[str, tuple[Any, ...]]:
        exprs = []
        for c in self.cols:
            x = qi(c)
            fin = f"FILTER (WHERE isfinite({x}))"
            exprs += [
                f"count({x}) {fin}",
                f"count(*) - count({x}) {fin}",
                f"min({x}) {fin}",
                f"max({x}) {fin}",
                f"approx_quantile({x}, 0.005) {fin}",
                f"approx_quantile({x}, 0.995) {fin}",
                f"approx_count_distinct({x}) {fin}",
            ]
        row = self.cat.rows(f"SELECT {', '.join(exprs)} FROM {self.name}")[0]
        return {c: tuple(row[7 * i : 7 * i + 7]) for i, c in enumerate(self.cols)}

    def bin(
        self, col: str, lo: float, hi: float, bins: int, log_x: bool
    ) -> tuple[list[int], int, int]:
        x = qi(col)
        v = f"ln(greatest({x}, 1e-300))" if log_x else x
        ok = f"isfinite({x})" + (f" AND {x} > 0" if log_x else "")
        width = (hi - lo) / bins
        rows = self.cat.con.execute(
            f"""SELECT CASE WHEN NOT ({ok}) OR {v} < $lo THEN -1 WHEN {v} > $hi THEN $bins
                            ELSE least(floor(({v} - $lo) / $w)::BIGINT, $bins - 1) END AS b,
                       count(*)
                FROM {self.name} WHERE {x} IS NOT NULL GROUP BY b""",
            {"lo": lo, "hi": hi, "w": width, "bins": bins},
        ).fetchall()
        counts = [0] * bins
        under = over = 0
        for b, n in rows:
            b = int(b)
            if b < 0:
                under += int(n)
            elif b >= bins:
                over += int(n)
            else:
                counts[b] = int(n)
        return counts, under, over

    def values(self, col: str, limit: int) -> list[tuple[str, int]]:
        x = qi(col)
        return [
            (_fmt_num(float(v)), int(n))
            for v, n in self.cat.rows(
                f"SELECT {x}, count(*) FROM {self.name} WHERE isfinite({x}) GROUP BY 1 "
                f"ORDER BY 1 LIMIT {int(limit)}"
            )
        ]

    def drop(self) -> None:
        self.cat.rows(f"DROP TABLE IF EXISTS {self.name}")


def _fmt_num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.4g}"


def histograms(
    tables: Tables,
    view: str,
    cols: list[str],
    where: str,
    bins: int,
    thresholds_for: Callable[[str], list[Threshold]],
) -> list[Histogram]:
    """One histogram per column of ``view`` (rows filtered by the SQL ``where`` clause), each
    with the thresholds ``thresholds_for(column)`` inside its axis."""
    if not cols:
        return []
    t = tables.get(view)
    types = t.columns if t is not None else {}
    binner = _Binner(tables, view, cols, where)
    try:
        out = []
        stats = binner.stats()
        for c in cols:
            n, n_bad, *_ = stats[c]
            h = Histogram(view, c, n=int(n or 0), n_missing=int(n_bad or 0))
            h.thresholds = thresholds_for(c)
            out.append(h)
            _fill(h, binner, stats[c], types.get(c, ""), bins)
        return out
    finally:
        binner.drop()


def _fill(h: Histogram, binner: _Binner, stats: tuple[Any, ...], sql_type: str, bins: int) -> None:
    """The bars of one histogram from its column's statistics."""
    _, _, mn, mx, q_lo, q_hi, distinct = stats
    if not h.n:
        h.note = "no finite values"
        return
    if int(distinct or 0) <= MAX_CATEGORIES and sql_type.split("(")[0] not in FLOAT_TYPES:
        h.categories = binner.values(h.column, 24)
        return
    lo, hi = float(q_lo), float(q_hi)
    if not hi > lo:
        lo, hi = float(mn), float(mx)
    h.log_x = bool(lo > 0 and hi / lo > 50)
    marks = [t.value for t in h.thresholds if not h.log_x or t.value > 0]
    if marks and (min(marks) < lo or max(marks) > hi):
        span = max(hi, *marks) - min(lo, *marks)
        pad = 0.0 if h.log_x else 0.03 * span
        lo, hi = min(lo, min(marks) - pad), max(hi, max(marks) + pad)
    if not hi > lo:
        hi = lo + 1.0
    h.edges = _edges(lo, hi, bins, h.log_x)
    h.counts, h.under, h.over = binner.bin(h.column, *_axis(lo, hi, h.log_x), bins, h.log_x)


def _axis(lo: float, hi: float, log_x: bool) -> tuple[float, float]:
    return (math.log(lo), math.log(hi)) if log_x else (lo, hi)


def _edges(lo: float, hi: float, bins: int, log_x: bool) -> list[float]:
    a, b = _axis(lo, hi, log_x)
    e = [a + (b - a) * i / bins for i in range(bins + 1)]
    return [math.exp(x) for x in e] if log_x else e

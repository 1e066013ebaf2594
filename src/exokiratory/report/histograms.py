"""Histograms of the PASS 1 signals and flag scores, with the flag thresholds drawn on them.

Aggregated in DuckDB (never by pulling rows into Python): the signals are read once into a
temporary table, their robust ranges come from one approximate-quantile query, and each
histogram is one ``GROUP BY bin`` over that table, so the cost grows linearly with the number of
images and the result is a few numbers per bin at any scale. The range is [p0.5, p99.5] widened
to include the thresholds; values outside are counted as under/overflow. Heavy-tailed positive
signals (p99.5 / p0.5 > 50) get a logarithmic axis.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from exokiratory.report.tables import Tables, is_numeric, qi

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class ThresholdRule:
    param: str
    label: str
    side: str
    to_axis: Callable[[float], float] = float


#: PASS 1 signal -> the flag thresholds that cut it (converted to the signal's own units).
FEATURE_RULES: dict[str, tuple[ThresholdRule, ...]] = {
    "brightness_p99": (ThresholdRule("dark_threshold", "is_dark", "below"),),
    "brightness_p05": (ThresholdRule("light_threshold", "is_light", "above", lambda t: 1.0 - t),),
    "blur_score": (ThresholdRule("blurry_threshold", "is_blurry", "above"),),
    "entropy_score": (
        ThresholdRule(
            "low_information_threshold", "is_low_information", "below", lambda t: 8.0 * t
        ),
        ThresholdRule("junk_information_threshold", "junk", "below", lambda t: 8.0 * t),
    ),
    "grayscale_score": (ThresholdRule("grayscale_threshold", "is_grayscale", "below"),),
    "text_likeness_score": (ThresholdRule("text_heavy_threshold", "is_text_heavy", "above"),),
}

#: Flag scores without a PASS 1 column of their own.
FLAG_RULES: dict[str, tuple[ThresholdRule, ...]] = {
    "aspect_ratio_score": (
        ThresholdRule("odd_aspect_ratio_threshold", "is_odd_aspect_ratio", "below"),
    ),
    "size_score": (),  # the odd-size fence is data-dependent: computed below
    "outlier_score": (ThresholdRule("outlier_threshold", "is_outlier", "above"),),
}

FLOAT_TYPES = ("FLOAT", "DOUBLE", "DECIMAL")

#: Feature columns that are identifiers or codes, not signals.
SKIP_COLUMNS = {"image_idx", "phash", "dhash", "phash_center", "exif_orientation"}


def flag_params(tables: Tables, config_params: dict[str, Any] | None) -> dict[str, Any]:
    """The thresholds that made the current flags (recorded in every row), else the config's."""
    from exokiratory.passes.flags.rules import FlagsParams

    if tables.has("flags", "flags_params") and tables.nonempty("flags"):
        text = tables.cat.scalar("SELECT any_value(flags_params) FROM flags")
        if text:
            return dict(json.loads(text))
    return FlagsParams.model_validate(config_params or {}).model_dump(mode="json")


def _thresholds(rules: tuple[ThresholdRule, ...], params: dict[str, Any]) -> list[Threshold]:
    out = []
    for r in rules:
        if r.param in params and params[r.param] is not None:
            out.append(Threshold(float(r.to_axis(float(params[r.param]))), r.label, r.side))
    return out


def gather_histograms(
    tables: Tables, params: dict[str, Any], bins: int
) -> tuple[list[Histogram], list[Histogram]]:
    """(PASS 1 signal histograms, flag score histograms)."""
    feats: list[Histogram] = []
    flag_h: list[Histogram] = []
    t = tables.get("features")
    if t is not None and t.rows:
        cols = [c for c, typ in t.columns.items() if is_numeric(typ) and c not in SKIP_COLUMNS]
        ordered = [c for c in FEATURE_RULES if c in cols] + [
            c for c in cols if c not in FEATURE_RULES
        ]
        where = "WHERE error IS NULL" if "error" in t.columns else ""
        feats = _histograms(
            tables,
            "features",
            ordered,
            where,
            bins,
            lambda c: _thresholds(FEATURE_RULES.get(c, ()), params),
        )
    f = tables.get("flags")
    if f is not None and f.rows:
        k = float(params.get("odd_size_iqr_factor", 3.0))

        def flag_thresholds(c: str) -> list[Threshold]:
            if c == "size_score":
                return _size_fence(tables, k)
            return _thresholds(FLAG_RULES.get(c, ()), params)

        cols = [c for c in FLAG_RULES if c in f.columns]
        flag_h = _histograms(tables, "flags", cols, "", bins, flag_thresholds)
    return feats, flag_h


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


def _histograms(
    tables: Tables,
    view: str,
    cols: list[str],
    where: str,
    bins: int,
    thresholds_for: Callable[[str], list[Threshold]],
) -> list[Histogram]:
    if not cols:
        return []
    t = tables.get(view)
    types = t.columns if t is not None else {}
    binner = _Binner(tables, view, cols, where)
    try:
        out = []
        stats = binner.stats()
        for c in cols:
            n, n_bad, mn, mx, q_lo, q_hi, distinct = stats[c]
            h = Histogram(view, c, n=int(n or 0), n_missing=int(n_bad or 0))
            h.thresholds = thresholds_for(c)
            out.append(h)
            if not h.n:
                h.note = "no finite values"
                continue
            if int(distinct or 0) <= 12 and types.get(c, "").split("(")[0] not in FLOAT_TYPES:
                h.categories = binner.values(c, 24)
                continue
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
            h.counts, h.under, h.over = binner.bin(c, *_axis(lo, hi, h.log_x), bins, h.log_x)
        return out
    finally:
        binner.drop()


def _axis(lo: float, hi: float, log_x: bool) -> tuple[float, float]:
    return (math.log(lo), math.log(hi)) if log_x else (lo, hi)


def _edges(lo: float, hi: float, bins: int, log_x: bool) -> list[float]:
    a, b = _axis(lo, hi, log_x)
    e = [a + (b - a) * i / bins for i in range(bins + 1)]
    return [math.exp(x) for x in e] if log_x else e


def _size_fence(tables: Tables, k: float) -> list[Threshold]:
    """The odd-size fence of the flags: Q1 - k IQR and Q3 + k IQR of log(size_score)."""
    r = tables.cat.rows(
        "SELECT quantile_cont(ln(size_score), 0.25), quantile_cont(ln(size_score), 0.75) "
        "FROM flags WHERE size_score > 0 AND isfinite(size_score)"
    )
    if not r or r[0][0] is None:
        return []
    q1, q3 = float(r[0][0]), float(r[0][1])
    iqr = q3 - q1
    return [
        Threshold(math.exp(q1 - k * iqr), "is_odd_size", "below"),
        Threshold(math.exp(q3 + k * iqr), "is_odd_size", "above"),
    ]

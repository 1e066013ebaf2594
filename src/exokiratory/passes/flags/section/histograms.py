"""The distributions of the report: PASS 1 signals and flag scores with the flag thresholds.

Histograms are exact aggregates in DuckDB (:mod:`exokiratory.core.histograms`); this module says
which columns to draw and which thresholds cut them (converted to each signal's own units),
taken from the parameters recorded with the current flags.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exokiratory.core.histograms import Histogram, Threshold, histograms
from exokiratory.core.tables import Tables, is_numeric


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

#: Feature columns that are identifiers or codes, not signals.
SKIP_COLUMNS = {"image_idx", "phash", "dhash", "phash_center", "exif_orientation"}


def flag_params(tables: Tables, config_params: dict[str, Any] | None) -> dict[str, Any]:
    """The thresholds that made the current flags (recorded in every row), else the config's."""
    from exokiratory.passes.flags.rules import FlagsParams

    if tables.has("flags", "flags_params") and tables.nonempty("flags"):
        # one row: every row holds the same ~1 KB of parameters (an aggregate over the column
        # read 10 GB of strings at 10^7 images)
        text = tables.cat.scalar("SELECT flags_params FROM flags LIMIT 1")
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
        feats = histograms(
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
        flag_h = histograms(tables, "flags", cols, "", bins, flag_thresholds)
    return feats, flag_h


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

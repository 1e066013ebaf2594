"""Criterion 4, outliers: do outliers remain outliers whatever is thrown at them?

At snapshot time, each outlier score present gives the set of its top ``outlier_fraction`` images
(at least one; ties broken by image_id), signal ``outlier:<set>``:

* ``features``: ``flags.outlier_score`` (PASS 1 signals, robust z);
* ``clip`` / ``dino``: the lowest cosine to the own cluster centroid at the finest level
  (``clusters_<space>.similarity``);
* ``motifs``: an image's largest segment ``motifs.outlier_score``;
* ``genprobe``: the generative reconstruction distance, when PASS 8 wrote a ``genprobe_*`` view
  with an ``image_id`` and a numeric column whose name holds ``recon`` (found by looking at
  the views, never by importing the family).

The criterion: the Jaccard of each set with the same set in the baseline snapshot (across
passes); headline value the smallest, met at >= ``stable_outlier_jaccard``. The evidence also
holds the Jaccard of every pair of sets in the latest snapshot (across spaces) and how many
images are outliers in two sets or more.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from exokiratory.core.dataset import current_folder
from exokiratory.passes.stop.base import (
    GENPROBE_PREFIX,
    INSUFFICIENT,
    MET,
    NOT_MET,
    OUTLIER_STEPS,
    Criterion,
    StopParams,
    first_pending,
    fmt,
)
from exokiratory.passes.stop.history import History, SnapshotInfo

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

TITLE = "outliers remain outliers"
#: passes whose new rows move the outlier sets (the derivations themselves trigger snapshots)
OUTLIER_SOURCES = ("sense", "embed-clip", "embed-dino", "segment-embed-clip", "segment-embed-dino")


# -- pure measures -----------------------------------------------------------------------------
def jaccard(a: set[str], b: set[str]) -> float | None:
    """|a & b| / |a | b| (None for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else None


def n_top(n: int, fraction: float) -> int:
    """Members of a top-``fraction`` set of ``n`` scored items (at least one)."""
    import math

    return max(1, math.ceil(fraction * n)) if n else 0


# -- snapshot time -----------------------------------------------------------------------------
def columns(cat: Catalog, view: str) -> dict[str, str]:
    try:
        return {str(r[0]): str(r[1]) for r in cat.rows(f'DESCRIBE SELECT * FROM "{view}"')}
    except Exception:  # a broken view is no outlier source
        return {}


def clusters_source(cat: Catalog, space: str) -> str:
    """A FROM source of ``clusters_<space>``'s rows: the clusters derivation's current parts
    read directly when the catalog can (the view sorts every row by image_idx: 3 x 10^7 rows
    held in memory at 10^7 images), else the view (same rows)."""
    view = f"clusters_{space}"
    raw, storage = getattr(cat, "raw_source", None), getattr(cat, "storage", None)
    if raw is None or storage is None:
        return view
    folder = current_folder(storage, f"clusters/{space}")
    return (raw(folder) if folder else "") or view


def _genprobe_source(cat: Catalog) -> str | None:
    numeric = ("FLOAT", "DOUBLE", "REAL", "DECIMAL", "INTEGER", "BIGINT")
    for view in sorted(v for v in cat.views if v.startswith(GENPROBE_PREFIX)):
        cols = columns(cat, view)
        found = sorted(
            (("distance" not in c), c)
            for c, t in cols.items()
            if "recon" in c and t.upper().startswith(numeric)
        )
        if "image_id" in cols and found:
            col = found[0][1]
            return f'SELECT image_id, max("{col}") AS score FROM "{view}" GROUP BY image_id'
    return None


def sources(cat: Catalog) -> dict[str, str]:
    """set name -> SQL of ``image_id, score`` (higher = more of an outlier)."""
    out: dict[str, str] = {}
    if "outlier_score" in columns(cat, "flags"):
        out["features"] = "SELECT image_id, outlier_score AS score FROM flags"
    for space in ("clip", "dino"):
        cols = columns(cat, f"clusters_{space}")
        if "similarity" in cols:
            where = "WHERE level = 0" if "level" in cols else ""
            src = clusters_source(cat, space)
            out[space] = f"SELECT image_id, -similarity AS score FROM {src} {where}"
    if "outlier_score" in columns(cat, "motifs"):
        out["motifs"] = "SELECT image_id, max(outlier_score) AS score FROM motifs GROUP BY 1"
    gen = _genprobe_source(cat)
    if gen is not None:
        out["genprobe"] = gen
    return out


#: the top ``{n}`` rows of a source, ranked (DuckDB's top-N keeps ``{n}`` rows, not every score)
TOP_SQL = """
SELECT 'outlier:{name}' AS signal, image_id AS key,
       row_number() OVER (ORDER BY score DESC, image_id)::BIGINT AS value
FROM (SELECT image_id, score FROM ({src}) WHERE {scored} ORDER BY score DESC, image_id LIMIT {n})
"""
SCORED = "score IS NOT NULL AND NOT isnan(score::DOUBLE)"


def outlier_rows(cat: Catalog, p: StopParams) -> list[pa.Table]:
    """Snapshot rows ``outlier:<set>`` (key image_id, value rank) of every source present."""
    out = []
    for name, src in sources(cat).items():
        scored = int(cat.scalar(f"SELECT count(*) FROM ({src}) WHERE {SCORED}"))
        if scored:
            n = n_top(scored, float(p.outlier_fraction))
            out.append(cat.query(TOP_SQL.format(name=name, src=src, scored=SCORED, n=n)))
    return out


# -- the criterion -----------------------------------------------------------------------------
def _sets(info: SnapshotInfo) -> list[str]:
    return sorted(s for s in info.signals if s.startswith("outlier:"))


def cross_space(history: History, info: SnapshotInfo) -> list[dict[str, Any]]:
    """Jaccard of every pair of outlier sets of one snapshot, and the consensus count."""
    sets = {s.split(":", 1)[1]: history.keys(info, s) for s in _sets(info)}
    rows: list[dict[str, Any]] = [
        {"pair": f"{a} vs {b}", "jaccard": jaccard(sets[a], sets[b]), "n": len(sets[a] | sets[b])}
        for a, b in itertools.combinations(sorted(sets), 2)
    ]
    if len(sets) > 1:
        counts: dict[str, int] = {}
        for members in sets.values():
            for k in members:
                counts[k] = counts.get(k, 0) + 1
        rows.append({"pair": "in 2 sets or more", "n": sum(1 for c in counts.values() if c > 1)})
    return rows


def evaluate(history: History, p: StopParams, pending: Sequence[str] = ()) -> Criterion:
    """Criterion 4 (see the module docstring)."""
    rule = f"smallest Jaccard of an outlier set with its baseline >= {p.stable_outlier_jaccard}"
    crit = Criterion("outliers", TITLE, None, p.stable_outlier_jaccard, rule, INSUFFICIENT, "")
    latest = history.latest
    if latest is None or not _sets(latest):
        crit.run = first_pending(pending, OUTLIER_STEPS) or "flags"
        crit.why = f"no outlier score yet: run {crit.run}"
        return crit
    across = cross_space(history, latest)
    base = history.baseline(latest)
    shared = sorted(set(_sets(latest)) & set(_sets(base))) if base is not None else []
    if base is None or not shared:
        crit.run = first_pending(pending, OUTLIER_STEPS) or "clusters-clip"
        crit.evidence = {"across spaces (latest)": across}
        crit.why = f"one snapshot of the outlier sets only: run {crit.run}, then measure again"
        return crit
    persistence = _persistence(history, base, latest, shared)
    crit.evidence = {
        f"across passes (vs {base.name})": persistence,
        "across spaces (latest)": across,
    }
    crit.values = {"compared_with": base.name}
    crit.values.update({f"jaccard_{r['set']}": r["jaccard"] for r in persistence})
    _judge(crit, persistence, p)
    return crit


def _persistence(
    history: History, base: SnapshotInfo, latest: SnapshotInfo, shared: list[str]
) -> list[dict[str, Any]]:
    return [
        {
            "set": s.split(":", 1)[1],
            "jaccard": jaccard(history.keys(latest, s), history.keys(base, s)),
            "by": history.changed_by(base, s, OUTLIER_SOURCES),
        }
        for s in shared
    ]


def _judge(crit: Criterion, persistence: list[dict[str, Any]], p: StopParams) -> None:
    scored = [r for r in persistence if r["jaccard"] is not None]
    crit.value = min((float(r["jaccard"]) for r in scored), default=None)
    crit.values["jaccard_min"] = crit.value
    moved = [r for r in scored if r["jaccard"] < p.stable_outlier_jaccard]
    if not moved:
        crit.state = MET
        crit.why = (
            f"every outlier set kept Jaccard >= {p.stable_outlier_jaccard} ({len(scored)} sets)"
        )
        return
    worst = min(moved, key=lambda r: float(r["jaccard"]))
    crit.state = NOT_MET
    crit.run = worst["by"] or "flags"
    crit.why = (
        f"the {worst['set']} outliers changed (Jaccard {fmt(worst['jaccard'])} < "
        f"{p.stable_outlier_jaccard}) after {crit.run}"
    )

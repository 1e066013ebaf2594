"""Stop-condition metrics: do new passes still change the structure of the collection?

Three families, each computed from the stored tables:

* **Agreement between spaces**: for every clustering level present for both CLIP and DINO, the
  adjusted Rand index (ARI) and adjusted mutual information (AMI) between the two partitions of
  the images clustered in both (:func:`exokiratory.api.status.cluster_agreement`). Two spaces that
  agree more and more mean the structure is real; agreement that stops moving means more passes
  will not change it.
* **Change between runs**: every report build keeps a *snapshot* of the structure in
  ``reports/history/snap-<seq>-<digest>.parquet`` (one row per ``image_id`` and ``signal``:
  ``cluster:<space>:<level>`` with the cluster id as ``value``, ``outlier`` for a flags outlier,
  ``emb_outlier:<space>`` for the least typical images of a space); the digest is that of the
  input part listings (flags, clusters, images), so an unchanged workspace reuses its snapshot.
  The panel compares the current snapshot with the one before it: ARI, NMI (arithmetic mean) and,
  where the contingency table is small enough, AMI per clustering on the images present in both, Jaccard of the outlier sets (outlier
  persistence), new images.
* **Outlier persistence across spaces**: Jaccard of the CLIP and DINO embedding outliers (the
  ``outlier_fraction`` of images least similar to their own cluster centroid at the finest level)
  and their overlap with the cheap-feature outliers of the flags.

The verdict is a heuristic stated with its thresholds (``stable_ari``, ``stable_outlier_jaccard``):
"move on" when every started pass is complete and, against the previous snapshot, every clustering has
ARI >= stable_ari and the outlier sets have Jaccard >= stable_outlier_jaccard.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from exokiratory.core.storage import Storage
from exokiratory.core.tables import Tables
from exokiratory.passes.clusters.section import cluster_levels
from exokiratory.passes.clusters.step import agreement

log = logging.getLogger(__name__)

HISTORY = "reports/history"
SNAPSHOT_INPUTS = ("manifests/images", "manifests/flags", "clusters")
SNAPSHOT_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string()),
        pa.field("signal", pa.string()),
        pa.field("value", pa.int64()),
    ]
)
_SNAP = re.compile(r"snap-(\d{6})-([0-9a-f]{16})\.parquet$")
#: largest contingency table (rows x columns) for which AMI is computed
AMI_MAX_CELLS = 40_000


# -- partition comparison --------------------------------------------------------------------
def compare(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """ARI and AMI (:func:`exokiratory.passes.clusters.step.agreement`) and NMI (arithmetic mean) of
    two labelings of the same items; AMI is None when the contingency table is too large for
    it to be quick."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    ami: float | None = None
    if len(np.unique(a)) * len(np.unique(b)) <= AMI_MAX_CELLS:
        ari, ami = agreement(a, b)
    else:
        ari = float(adjusted_rand_score(a, b))
    return {"n": len(a), "ari": ari, "nmi": float(normalized_mutual_info_score(a, b)), "ami": ami}


# -- results -----------------------------------------------------------------------------------
@dataclass
class Check:
    name: str
    value: str
    state: str  # "stable" | "moving" | "unknown" | "info" (not counted)
    detail: str = ""


@dataclass
class StopPanel:
    agreement: list[dict[str, Any]] = field(default_factory=list)
    cluster_change: list[dict[str, Any]] = field(default_factory=list)
    between_runs: list[dict[str, Any]] = field(default_factory=list)
    persistence: list[dict[str, Any]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    verdict: str = "unknown"
    verdict_text: str = ""
    snapshot: str | None = None
    previous: str | None = None


# -- gathering ---------------------------------------------------------------------------------
def _cluster_sql(tables: Tables, space: str) -> list[tuple[str, str]]:
    """(signal name, SQL selecting image_id, value) per clustering level of a space."""
    view = f"clusters_{space}"
    out = []
    for level, _k in cluster_levels(tables, space):
        where = f"WHERE level = {level}" if tables.has(view, "level") else ""
        out.append(
            (
                f"cluster:{space}:{level}",
                f"SELECT image_id, cluster_id::BIGINT AS value FROM {view} {where}",
            )
        )
    return out


def _emb_outlier_sql(tables: Tables, space: str, fraction: float) -> str | None:
    view = f"clusters_{space}"
    levels = cluster_levels(tables, space)
    if not levels or not tables.has(view, "similarity"):
        return None
    where = f"WHERE level = {levels[-1][0]}" if tables.has(view, "level") else ""
    return f"""SELECT image_id, 1::BIGINT AS value FROM {view} {where}
               QUALIFY percent_rank() OVER (ORDER BY similarity ASC, image_id) < {fraction}"""


def snapshot_table(tables: Tables, fraction: float) -> pa.Table:
    parts = []
    for space in ("clip", "dino"):
        for signal, sql in _cluster_sql(tables, space):
            parts.append(f"SELECT image_id, '{signal}' AS signal, value FROM ({sql})")
        emb = _emb_outlier_sql(tables, space, fraction)
        if emb is not None:
            parts.append(f"SELECT image_id, 'emb_outlier:{space}' AS signal, value FROM ({emb})")
    if tables.has("flags", "is_outlier"):
        parts.append(
            "SELECT image_id, 'outlier' AS signal, 1::BIGINT AS value FROM flags WHERE is_outlier"
        )
    parts.append(
        "SELECT image_id, 'image' AS signal, 1::BIGINT AS value FROM images WHERE status = 'ok'"
    )
    sql = " UNION ALL ".join(parts) + " ORDER BY signal, image_id"
    return tables.cat.query(sql).cast(SNAPSHOT_SCHEMA)


def _snapshots(storage: Storage) -> list[tuple[int, str, str]]:
    out = []
    for rel in storage.list_files(HISTORY, ".parquet"):
        m = _SNAP.search(rel)
        if m:
            out.append((int(m.group(1)), m.group(2), rel))
    return sorted(out)


def record_snapshot(
    tables: Tables, storage: Storage, fraction: float, metrics: dict[str, Any]
) -> tuple[str, str | None]:
    """Write this state's snapshot unless the newest one has the same inputs; returns
    (current snapshot, the one before it or None)."""
    digest = storage.listing_digest(SNAPSHOT_INPUTS, ".parquet")[:16]
    snaps = _snapshots(storage)
    if snaps and snaps[-1][1] == digest:
        prev = snaps[-2][2] if len(snaps) > 1 else None
        return snaps[-1][2], prev
    seq = snaps[-1][0] + 1 if snaps else 1
    table = snapshot_table(tables, fraction)
    table = table.replace_schema_metadata({"exokiratory.metrics": json.dumps(metrics)})
    rel = f"{HISTORY}/snap-{seq:06d}-{digest}.parquet"
    storage.write_parquet_atomic(rel, table)
    return rel, snaps[-1][2] if snaps else None


def _read_snapshot(storage: Storage, rel: str) -> tuple[pa.Table, dict[str, Any]]:
    with storage.fs.open(storage.path(rel), "rb") as fh:
        t = pq.read_table(fh)
    meta = (t.schema.metadata or {}).get(b"exokiratory.metrics")
    return t, (json.loads(meta) if meta else {})


def cluster_metrics(tables: Tables) -> list[dict[str, Any]]:
    """Change of each clustering against its previous run, as the clustering derivations
    recorded it (views ``clusters_<space>_metrics``)."""
    out = []
    for space in ("clip", "dino"):
        view = f"clusters_{space}_metrics"
        if not tables.has(view, "level", "ari_vs_previous") or not tables.nonempty(view):
            continue
        t = tables.cat.query(f"SELECT * FROM {view} ORDER BY level")
        for r in t.to_pylist():
            out.append({"space": space, **{k: v for k, v in r.items() if k != "centroid"}})
    return out


def _between(cur: pa.Table, prev: pa.Table) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(each clustering of ``cur`` against ``prev`` on the images of both, {"persistence": the
    outlier sets kept, "new_images": images in ``cur`` only})."""
    import duckdb

    con = duckdb.connect()
    try:
        con.register("cur", cur)
        con.register("prev", prev)
        out = _clusterings_between(con)
        pers = _outliers_between(con)
        new = con.execute(
            "SELECT count(*) FROM cur WHERE signal = 'image' AND image_id NOT IN "
            "(SELECT image_id FROM prev WHERE signal = 'image')"
        ).fetchone()
        return out, {"persistence": pers, "new_images": int(new[0]) if new else 0}
    finally:
        con.close()


def _clusterings_between(con: Any) -> list[dict[str, Any]]:
    out = []
    signals = [
        str(r[0])
        for r in con.execute(
            "SELECT DISTINCT signal FROM cur WHERE signal LIKE 'cluster:%' ORDER BY 1"
        ).fetchall()
    ]
    for s in signals:
        rows = con.execute(
            "SELECT c.value, p.value FROM cur c JOIN prev p USING (image_id, signal) "
            "WHERE signal = ?",
            [s],
        ).fetchall()
        if not rows:
            out.append({"signal": s, "n": 0, "ari": None, "nmi": None, "ami": None})
            continue
        arr = np.asarray(rows, dtype=np.int64)
        out.append({"signal": s, **compare(arr[:, 0], arr[:, 1])})
    return out


def _outliers_between(con: Any) -> list[dict[str, Any]]:
    pers = []
    for s in ("outlier", "emb_outlier:clip", "emb_outlier:dino"):
        both, either, n_prev = con.execute(
            """SELECT count(*) FILTER (WHERE c.image_id IS NOT NULL AND p.image_id IS NOT NULL),
                      count(*), count(p.image_id)
               FROM (SELECT image_id FROM cur WHERE signal = $s
                     AND image_id IN (SELECT image_id FROM prev WHERE signal = 'image')) c
               FULL JOIN (SELECT image_id FROM prev WHERE signal = $s) p USING (image_id)""",
            {"s": s},
        ).fetchone() or (0, 0, 0)
        if either:
            pers.append(
                {
                    "signal": s,
                    "jaccard": both / either,
                    "kept": both / n_prev if n_prev else float("nan"),
                    "n": int(either),
                }
            )
    return pers


def _cross_space_persistence(cur: pa.Table) -> list[dict[str, Any]]:
    sets = {}
    for s in ("outlier", "emb_outlier:clip", "emb_outlier:dino"):
        mask = pc.equal(cur.column("signal"), s)
        sets[s] = set(cur.filter(mask).column("image_id").to_pylist())
    out = []
    pairs = [
        ("emb_outlier:clip", "emb_outlier:dino"),
        ("outlier", "emb_outlier:clip"),
        ("outlier", "emb_outlier:dino"),
    ]
    for a, b in pairs:
        if sets[a] and sets[b]:
            inter, union = len(sets[a] & sets[b]), len(sets[a] | sets[b])
            out.append({"pair": f"{a} vs {b}", "jaccard": inter / union, "n": union})
    return out


def gather_stop_panel(
    tables: Tables,
    storage: Storage,
    status: Any,
    *,
    stable_ari: float,
    stable_jaccard: float,
    outlier_fraction: float = 0.01,
    write_history: bool = True,
) -> StopPanel:
    panel = StopPanel()
    panel.agreement = [dict(a) for a in getattr(status, "cluster_agreement", None) or []]
    panel.cluster_change = cluster_metrics(tables)
    metrics = {"agreement": panel.agreement}
    if write_history:
        panel.snapshot, panel.previous = record_snapshot(tables, storage, outlier_fraction, metrics)
        cur, _ = _read_snapshot(storage, panel.snapshot)
    else:
        cur = snapshot_table(tables, outlier_fraction)
    panel.persistence = _cross_space_persistence(cur)
    prev_metrics: dict[str, Any] = {}
    new_images = None
    if panel.previous is not None:
        prev, prev_metrics = _read_snapshot(storage, panel.previous)
        panel.between_runs, extra = _between(cur, prev)
        new_images = extra["new_images"]
        panel.persistence = [
            *({"pair": f"{p['signal']} vs previous run", **p} for p in extra["persistence"]),
            *panel.persistence,
        ]
    _verdict(panel, status, stable_ari, stable_jaccard, prev_metrics, new_images)
    return panel


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _verdict(
    panel: StopPanel,
    status: Any,
    stable_ari: float,
    stable_jaccard: float,
    prev_metrics: dict[str, Any],
    new_images: int | None,
) -> None:
    """The checks of the panel, then the verdict they give (see the module docstring)."""
    panel.checks += _completion_checks(status)
    panel.checks += _clustering_checks(panel.cluster_change, stable_ari)
    if panel.previous is None:
        panel.checks.append(
            Check(
                "change since the previous report",
                "no earlier snapshot",
                "unknown",
                "build the report again after the next pass or rescan",
            )
        )
    else:
        panel.checks += _new_images_checks(new_images)
        panel.checks += _between_runs_checks(panel.between_runs, stable_ari)
        panel.checks += _persistence_checks(panel.persistence, stable_jaccard)
        panel.checks += _agreement_checks(panel.agreement, prev_metrics)
    panel.verdict, panel.verdict_text = _decide(panel.checks)


def _completion_checks(status: Any) -> list[Check]:
    started = [p for p in status.passes if p.done or p.failed]
    remaining = {p.name: p.remaining for p in started if p.remaining}
    out = [
        Check(
            "started passes complete",
            "all done" if not remaining else ", ".join(f"{k}: {v}" for k, v in remaining.items()),
            "stable" if not remaining else "moving",
            "units still wanted by a pass that has begun",
        )
    ]
    idle = [p.name for p in status.passes if not (p.done or p.failed) and p.wanted]
    if idle:
        out.append(
            Check("passes not started", ", ".join(idle), "info", "not counted in the verdict")
        )
    return out


def _clustering_checks(cluster_change: list[dict[str, Any]], stable_ari: float) -> list[Check]:
    """Each clustering against its own previous run (recorded by the derivations)."""
    out = []
    for r in cluster_change:
        ari = r.get("ari_vs_previous")
        if ari is None:
            continue
        out.append(
            Check(
                f"{r['space'].upper()} clustering level {r['level']} vs its previous run",
                f"ARI {_fmt(float(ari))}",
                "stable" if float(ari) >= stable_ari else "moving",
                f"stable when ARI >= {stable_ari} (clusters_{r['space']}_metrics)",
            )
        )
    return out


def _new_images_checks(new_images: int | None) -> list[Check]:
    if new_images is None:
        return []
    return [
        Check(
            "new images since the previous snapshot",
            str(new_images),
            "stable" if new_images == 0 else "moving",
        )
    ]


def _between_runs_checks(between: list[dict[str, Any]], stable_ari: float) -> list[Check]:
    out = []
    for r in between:
        ari = r.get("ari")
        state = "unknown" if ari is None else "stable" if ari >= stable_ari else "moving"
        out.append(
            Check(
                f"{r['signal']} vs previous run",
                f"ARI {_fmt(ari)}",
                state,
                f"stable when ARI >= {stable_ari}",
            )
        )
    return out


def _persistence_checks(persistence: list[dict[str, Any]], stable_jaccard: float) -> list[Check]:
    """Outlier sets against the previous snapshot (not the cross-space pairs)."""
    out = []
    for p in persistence:
        if not str(p.get("pair", "")).endswith("previous run"):
            continue
        j = float(p["jaccard"])
        out.append(
            Check(
                f"{p['signal']} persistence",
                f"Jaccard {_fmt(j)}",
                "stable" if j >= stable_jaccard else "moving",
                f"stable when Jaccard >= {stable_jaccard}",
            )
        )
    return out


def _agreement_checks(agreement: list[dict[str, Any]], prev_metrics: dict[str, Any]) -> list[Check]:
    """CLIP-DINO agreement per level against the one recorded with the previous snapshot."""
    old = {str(a["level"]): a for a in prev_metrics.get("agreement", [])}
    out = []
    for a in agreement:
        o = old.get(str(a["level"]))
        if o is None or a.get("ari") is None or o.get("ari") is None:
            continue
        delta = float(a["ari"]) - float(o["ari"])
        out.append(
            Check(
                f"CLIP-DINO agreement, level {a['level']}",
                f"ARI {_fmt(a['ari'])} ({delta:+.3f} since previous)",
                "stable" if abs(delta) < 0.02 else "moving",
                "stable when it changes by less than 0.02",
            )
        )
    return out


def _decide(checks: list[Check]) -> tuple[str, str]:
    """(verdict, its explanation): any moving check keeps going; else any unknown one means
    not enough history; else move on."""
    states = {c.state for c in checks}
    if "moving" in states:
        moving = [c.name for c in checks if c.state == "moving"]
        return "keep going", "still changing: " + "; ".join(moving)
    if "unknown" in states:
        return (
            "not enough history",
            "no change measured yet: run the next pass (or rescan) and build the report again",
        )
    return (
        "move on",
        "every started pass is complete and the structure did not change since the "
        "previous snapshot: further passes of this kind are unlikely to change it",
    )

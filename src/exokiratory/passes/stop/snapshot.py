"""Building a snapshot of the structure from the catalog, and recording it after a step.

:func:`build_snapshot` gathers the rows of every signal present (see
:mod:`exokiratory.passes.stop.history` for the signals) and the measures computed at snapshot
time: the bootstrap stability of the clusters (:mod:`.topology`), the mutual k-NN alignment of
the segment embeddings (:mod:`.segments`), the captions' vocabulary, PCA basis and Vendi score
(:mod:`.language`), the top-q outlier sets (:mod:`.outliers`), and which views hold rows of
random-weight (``tiny``) models. The bootstrap, the dominant cost, is reused from the newest
snapshot when the clusterings did not change. :class:`Recorder` is what ``Workspace.run`` calls after each
step: a snapshot when a structural step (:data:`.base.STRUCTURE_STEPS`, ``genprobe*``) wrote rows
or re-derived; never an error that fails the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from exokiratory.core.storage import Storage
from exokiratory.engine.derive import DeriveReport
from exokiratory.engine.run import RunReport
from exokiratory.models.registry import TINY_PREFIX
from exokiratory.passes.stop.base import StopParams, is_structural, stop_params
from exokiratory.passes.stop.history import (
    SNAPSHOT_SCHEMA,
    History,
    SnapshotInfo,
    new_run_id,
    signal_digests,
    write_snapshot,
)
from exokiratory.passes.stop.language import caption_rows
from exokiratory.passes.stop.outliers import columns, outlier_rows
from exokiratory.passes.stop.segments import alignment
from exokiratory.passes.stop.topology import bootstrap_stability, stability_table

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

log = logging.getLogger(__name__)

SPACES = ("clip", "dino")
#: views whose ``model_id`` says whether a random-weight model made the numbers
MODEL_VIEWS = (
    "embeddings_clip",
    "embeddings_dino",
    "segment_embeddings_clip",
    "segment_embeddings_dino",
    "caption_embeddings",
    "captions",
)


def cluster_rows(cat: Catalog) -> list[pa.Table]:
    out = []
    for space in SPACES:
        view = f"clusters_{space}"
        cols = columns(cat, view)
        if "cluster_id" not in cols:
            continue
        level = "level" if "level" in cols else "0"
        out.append(
            cat.query(
                f"SELECT 'cluster:{space}:' || {level}::VARCHAR AS signal, image_id AS key, "
                f"cluster_id::BIGINT AS value FROM {view} WHERE cluster_id IS NOT NULL"
            )
        )
    return out


def motif_rows(cat: Catalog) -> list[pa.Table]:
    if not {"space", "segment_id", "cluster_id"} <= set(columns(cat, "motifs")):
        return []
    return [
        cat.query(
            "SELECT 'motif:' || space AS signal, segment_id AS key, cluster_id::BIGINT AS value "
            "FROM motifs WHERE cluster_id IS NOT NULL"
        )
    ]


#: the seeded bootstrap sample: key columns only (asking the keyed view for ``embedding`` made
#: DuckDB hold every vector: 30 GB at 10^7 x 768); the vectors are then read from the parts
SAMPLE_SQL = """
SELECT e.image_id, e.image_idx FROM embeddings_{space} e
WHERE e.error IS NULL
  AND e.image_id IN (SELECT image_id FROM clusters_{space} WHERE level = 0)
ORDER BY md5(e.image_id || ?), e.image_id LIMIT {limit}
"""


def sample_vectors(cat: Catalog, space: str, keys: pa.Table) -> np.ndarray:
    """float32 stored vectors of the sample ``keys`` (image_id, image_idx), in their order,
    gathered in one streamed pass over the embedding parts."""
    from exokiratory.search.indices import gather_rows, stream_chunks

    idx = keys.column("image_idx").to_numpy()
    order = np.argsort(idx, kind="stable")
    rows = gather_rows(stream_chunks(cat, space, False)(), idx[order])
    out = np.empty(rows.shape, np.float32)
    out[order] = rows
    return out


def stability_rows(cat: Catalog, p: StopParams) -> list[pa.Table]:
    """Bootstrap stability of the levels :func:`bootstrap_levels` picks, per space, on one
    seeded sample of ``bootstrap_sample`` images."""
    out = []
    for space in SPACES:
        view = f"clusters_{space}"
        if "level" not in columns(cat, view) or f"embeddings_{space}" not in cat.views:
            continue
        levels = bootstrap_levels(
            cat.rows(f"SELECT level, count(DISTINCT cluster_id) FROM {view} GROUP BY 1"), p
        )
        if not levels:
            continue
        t = cat.query(SAMPLE_SQL.format(space=space, limit=int(p.bootstrap_sample)), [str(p.seed)])
        if t.num_rows < 4:
            continue
        x, ids = sample_vectors(cat, space, t), t.column("image_id").to_pylist()
        for level in sorted(levels):
            out += _level_stability(cat, view, space, level, x, ids, p)
    return out


def bootstrap_levels(level_k: list[tuple[Any, ...]], p: StopParams) -> list[int]:
    """The levels to bootstrap: 2..``bootstrap_max_k`` clusters, and the coarsest level when
    the sample gives its clusters 10 images on average."""
    ks = {int(level): int(k) for level, k in level_k if int(k) >= 2}
    chosen = {lv for lv, k in ks.items() if k <= p.bootstrap_max_k}
    if ks:
        coarsest = min(ks, key=lambda lv: ks[lv])
        if ks[coarsest] <= p.bootstrap_sample // 10:
            chosen.add(coarsest)
    return sorted(chosen)


def _level_stability(
    cat: Catalog,
    view: str,
    space: str,
    level: int,
    x: np.ndarray,
    ids: list[str],
    p: StopParams,
) -> list[pa.Table]:
    rows = cat.rows(
        f"SELECT image_id, cluster_id FROM {view} WHERE level = ? "
        "AND image_id IN (SELECT unnest(?::VARCHAR[]))",
        [level, ids],
    )
    of = {str(i): int(c) for i, c in rows}
    labels = np.asarray([of.get(i, -1) for i in ids], np.int64)
    keep = labels >= 0
    k = len(np.unique(labels[keep]))
    if k < 2 or k >= int(keep.sum()):
        return []
    stab = bootstrap_stability(
        x[keep], labels[keep], resamples=p.bootstrap_resamples, seed=p.seed, niter=p.bootstrap_niter
    )
    return [stability_table(space, level, labels[keep], stab)]


def random_weight(cat: Catalog) -> dict[str, list[str]]:
    """view -> the random-weight model ids among its rows."""
    out = {}
    for view in MODEL_VIEWS:
        if "model_id" not in columns(cat, view):
            continue
        rows = cat.rows(
            f"SELECT DISTINCT model_id FROM {view} WHERE starts_with(model_id, ?) ORDER BY 1",
            [TINY_PREFIX],
        )
        if rows:
            out[view] = [str(r[0]) for r in rows]
    return out


def build_snapshot(
    cat: Catalog, p: StopParams, previous: History | None = None
) -> tuple[pa.Table, dict[str, Any]]:
    """The snapshot rows (:data:`.history.SNAPSHOT_SCHEMA`) and measures of the catalog's
    current structure. ``previous``: the stored history; when the clusterings are the same as
    in its newest snapshot, that snapshot's bootstrap stability is reused (the dominant cost)."""
    clusters = cluster_rows(cat)
    stability = _reused_stability(previous, clusters)
    if stability is None:
        stability = stability_rows(cat, p)
    parts = [*clusters, *stability, *motif_rows(cat), *outlier_rows(cat, p)]
    captions, metrics = caption_rows(cat, p)
    parts += captions
    aligned = alignment(cat, p)
    if aligned is not None:
        metrics["segments_alignment"] = aligned
    tiny = random_weight(cat)
    if tiny:
        metrics["random_weight"] = tiny
    return conform(parts), metrics


def _reused_stability(history: History | None, clusters: list[pa.Table]) -> list[pa.Table] | None:
    latest = history.latest if history is not None else None
    if history is None or latest is None:
        return None
    table = conform(clusters).sort_by([("signal", "ascending"), ("key", "ascending")])
    now = {k: v["digest"] for k, v in signal_digests(table).items()}
    before = {k: v["digest"] for k, v in latest.signals.items() if k.startswith("cluster:")}
    if now != before:
        return None
    t = history.table(latest)
    return [t.filter(pc.starts_with(t.column("signal"), "stability:"))]


def conform(parts: list[pa.Table]) -> pa.Table:
    """Tables holding some of the snapshot columns, as one table of the snapshot schema."""
    full = []
    for t in parts:
        cols = {
            f.name: t.column(f.name) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
            for f in SNAPSHOT_SCHEMA
        }
        full.append(pa.table(cols).cast(SNAPSHOT_SCHEMA))
    return pa.concat_tables(full) if full else SNAPSHOT_SCHEMA.empty_table()


def record_snapshot(
    storage: Storage,
    cat: Catalog,
    p: StopParams,
    *,
    trigger: str,
    run_id: str | None = None,
    wrote: Sequence[str] = (),
) -> SnapshotInfo | None:
    """Build and store a snapshot of the current structure (None: the same as the newest);
    ``wrote``: the passes that wrote rows earlier in the same run."""
    table, metrics = build_snapshot(cat, p, History(storage, p.snapshot_digest()))
    return write_snapshot(
        storage,
        table,
        metrics,
        params_digest=p.snapshot_digest(),
        trigger=trigger,
        run_id=run_id or new_run_id(),
        wrote=wrote,
    )


class Recorder:
    """Snapshots after the structural steps of one ``run`` (one ``run_id`` for all)."""

    def __init__(
        self,
        storage: Storage,
        catalog: Callable[[], Catalog],
        config: Mapping[str, Any] | None,
    ):
        self.storage, self.catalog = storage, catalog
        self.run_id = new_run_id()
        self.wrote: list[str] = []  # passes that wrote rows in this run, in order
        try:
            self.params: StopParams | None = stop_params(config)
        except ValueError as exc:
            log.warning("no structure snapshots this run: %s", exc)
            self.params = None

    def after(self, step: str, report: RunReport | DeriveReport) -> SnapshotInfo | None:
        """Record a snapshot if ``step`` is structural and changed something."""
        changed = report.processed > 0 if isinstance(report, RunReport) else not report.up_to_date
        if isinstance(report, RunReport) and changed:
            self.wrote.append(step)
        if self.params is None or not changed or not is_structural(step):
            return None
        try:
            with self.catalog() as cat:
                return record_snapshot(
                    self.storage,
                    cat,
                    self.params,
                    trigger=step,
                    run_id=self.run_id,
                    wrote=[w for w in self.wrote if w != step],
                )
        except Exception as exc:  # the history is a diagnostic: never fail a run for it
            log.warning("could not record a structure snapshot after %s: %s", step, exc)
            return None

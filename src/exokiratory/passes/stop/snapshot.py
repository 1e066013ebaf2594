"""Building a snapshot of the structure from the catalog, and recording it after a step.

:func:`build_snapshot` gathers the rows of every signal present (see
:mod:`exokiratory.passes.stop.history` for the signals) and the measures computed at snapshot
time: the bootstrap stability of the clusters (:mod:`.topology`), the mutual k-NN alignment of
the segment embeddings (:mod:`.segments`), the captions' vocabulary, PCA basis and Vendi score
(:mod:`.language`), the top-q outlier sets (:mod:`.outliers`), and which views hold rows of
random-weight (``tiny``) models. The bootstrap, the dominant cost, is reused from the newest
snapshot when the clusterings did not change. The rows are streamed from the catalog into
:class:`.history.SnapshotRows` (spilled and sorted on disk), the clusters read from the
derivation's parts (:func:`.outliers.clusters_source`): bounded memory at 10^7 images.
:class:`Recorder` is what ``Workspace.run`` calls after each step: a snapshot when a structural
step (:data:`.base.STRUCTURE_STEPS`, ``genprobe*``) wrote rows or re-derived; never an error
that fails the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from exokiratory.core.manifest_cache import arrow_reader
from exokiratory.core.storage import Storage
from exokiratory.engine.derive import DeriveReport
from exokiratory.engine.run import RunReport
from exokiratory.models.registry import TINY_PREFIX
from exokiratory.passes.stop.base import StopParams, is_structural, stop_params
from exokiratory.passes.stop.history import (
    BATCH_ROWS,
    SNAPSHOT_SCHEMA,
    History,
    SnapshotInfo,
    SnapshotRows,
    conform_table,
    new_run_id,
    write_snapshot,
)
from exokiratory.passes.stop.language import caption_rows
from exokiratory.passes.stop.outliers import clusters_source, columns, outlier_rows
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


def cluster_sql(cat: Catalog) -> list[str]:
    """The queries of the ``cluster:<space>:<level>`` rows (streamed: 10^7 per level)."""
    out = []
    for space in SPACES:
        cols = columns(cat, f"clusters_{space}")
        if "cluster_id" not in cols:
            continue
        level = "level" if "level" in cols else "0"
        out.append(
            f"SELECT 'cluster:{space}:' || {level}::VARCHAR AS signal, image_id AS key, "
            f"cluster_id::BIGINT AS value FROM {clusters_source(cat, space)} "
            "WHERE cluster_id IS NOT NULL"
        )
    return out


def motif_sql(cat: Catalog) -> list[str]:
    """The query of the ``motif:<space>`` rows (one per segment), when there are motifs."""
    if not {"space", "segment_id", "cluster_id"} <= set(columns(cat, "motifs")):
        return []
    return [
        "SELECT 'motif:' || space AS signal, segment_id AS key, cluster_id::BIGINT AS value "
        "FROM motifs WHERE cluster_id IS NOT NULL"
    ]


def stream(cat: Catalog, sql: str) -> pa.RecordBatchReader:
    """A catalog query's rows as a stream of batches."""
    return arrow_reader(cat.con.sql(sql), BATCH_ROWS)


#: the seeded bootstrap sample: key columns only (asking the keyed view for ``embedding`` made
#: DuckDB hold every vector: 30 GB at 10^7 x 768); the vectors are then read from the parts
SAMPLE_SQL = """
SELECT e.image_id, e.image_idx FROM embeddings_{space} e
WHERE e.error IS NULL
  AND e.image_id IN (SELECT image_id FROM {clusters} WHERE level = 0)
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
        src = clusters_source(cat, space)
        levels = bootstrap_levels(
            cat.rows(f"SELECT level, count(DISTINCT cluster_id) FROM {src} GROUP BY 1"), p
        )
        if not levels:
            continue
        sample = SAMPLE_SQL.format(space=space, clusters=src, limit=int(p.bootstrap_sample))
        t = cat.query(sample, [str(p.seed)])
        if t.num_rows < 4:
            continue
        x, ids = sample_vectors(cat, space, t), t.column("image_id").to_pylist()
        for level in sorted(levels):
            out += _level_stability(cat, src, space, level, x, ids, p)
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
    src: str,
    space: str,
    level: int,
    x: np.ndarray,
    ids: list[str],
    p: StopParams,
) -> list[pa.Table]:
    rows = cat.rows(
        f"SELECT image_id, cluster_id FROM {src} WHERE level = ? "
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
    cat: Catalog, p: StopParams, rows: SnapshotRows, previous: History | None = None
) -> dict[str, Any]:
    """Gather the snapshot rows (:data:`.history.SNAPSHOT_SCHEMA`) of the catalog's current
    structure into ``rows`` (spilled, sorted on disk: bounded memory at 10^7 images) and return
    its measures. ``previous``: the stored history; when the clusterings are the same as in its
    newest snapshot, that snapshot's bootstrap stability is reused (the dominant cost)."""
    for sql in [*cluster_sql(cat), *motif_sql(cat)]:
        rows.add(stream(cat, sql))
    for t in outlier_rows(cat, p):
        rows.add(t)
    captions, metrics = caption_rows(cat, p)
    for t in captions:
        rows.add(t)
    stability = _reused_stability(previous, rows.sort())
    if stability is None:
        stability = stability_rows(cat, p)
    rows.hold(conform(stability))
    aligned = alignment(cat, p)
    if aligned is not None:
        metrics["segments_alignment"] = aligned
    tiny = random_weight(cat)
    if tiny:
        metrics["random_weight"] = tiny
    return metrics


def _reused_stability(
    history: History | None, signals: dict[str, dict[str, Any]]
) -> list[pa.Table] | None:
    """The newest snapshot's stability rows when its clusterings have the ``signals``' digests
    (only the stability signals are read from its file), else None."""
    latest = history.latest if history is not None else None
    if history is None or latest is None:
        return None
    now = {k: v["digest"] for k, v in signals.items() if k.startswith("cluster:")}
    before = {k: v["digest"] for k, v in latest.signals.items() if k.startswith("cluster:")}
    if now != before:
        return None
    return [history.signal(latest, s) for s in sorted(latest.signals) if s.startswith("stability:")]


def conform(parts: list[pa.Table]) -> pa.Table:
    """Tables holding some of the snapshot columns, as one table of the snapshot schema."""
    full = [conform_table(t) for t in parts]
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
    with SnapshotRows() as rows:
        metrics = build_snapshot(cat, p, rows, History(storage, p.snapshot_digest()))
        return write_snapshot(
            storage,
            rows,
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

"""``clusters-clip`` / ``clusters-dino``: a hierarchy of spherical k-means clusters per space.

A derivation over the stored global embeddings (never pixels), written to
``clusters/<space>/<version>-<inputs>/`` (see :mod:`exokiratory.engine.derive`), as three tables:

``clusters_<space>`` (one row per image and level):
    image_id, image_idx; ``level`` (0 = finest); ``k`` (clusters at that level); ``cluster_id``
    (0..k-1); ``similarity`` (cosine of the image to its cluster's centroid); ``is_exemplar``
    (among the ``exemplars`` images closest to the centroid).

``clusters_<space>_summary`` (one row per cluster):
    level, k, cluster_id, ``parent_cluster_id`` (its cluster at level + 1; -1 at the top),
    ``size``, ``mean_similarity``, ``exemplar_ids`` (image_ids, closest first), ``centroid``
    (float32, L2-normalised).

``clusters_<space>_metrics`` (one row per level):
    level, k, n_images, mean_similarity; ``n_common_with_previous``, ``ari_vs_previous`` and
    ``ami_vs_previous``: agreement with the clustering that was current before this one, on the
    images both saw (null on the first run). A value near 1 means the new data did not change
    the structure at that level: one of the stop-condition signals.

Cluster counts: level 0 has about ``cluster_size`` images per cluster; each coarser level has
``branching`` times fewer clusters (up to ``max_levels`` levels, while at least 2 clusters
remain). Levels nest (Vo et al. 2024): level i clusters level i-1's centroids.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field

from exokiratory.engine.registry import register
from exokiratory.engine.shards import current_engine, imap_shards
from exokiratory.engine.step import Derivation, PassParams, missing_modules
from exokiratory.search.clustering import (
    ASSIGN_PROBE,
    TWO_LEVEL_MIN_K,
    Hierarchy,
    KMeansResult,
    exemplars,
    fit_hierarchy,
    level_sizes,
    read_hierarchy,
    stream_hierarchy,
    training_positions,
)

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

log = logging.getLogger(__name__)


class ClusterParams(PassParams):
    cluster_size: int = Field(30, ge=2, description="images per finest cluster, on average")
    branching: int = Field(8, ge=2, description="fewer clusters per coarser level")
    max_levels: int = Field(3, ge=1, le=8)
    niter: int = Field(25, ge=1, le=1000, description="k-means iterations per level")
    seed: int = 0
    exemplars: int = Field(5, ge=1, le=100, description="exemplar images per cluster")
    two_level_min_k: int = Field(
        TWO_LEVEL_MIN_K,
        ge=2,
        description="levels with at least this many clusters are fitted coarse then fine "
        "(sqrt(k) cells, then k split among them) and assigned approximately",
    )
    assign_probe: int = Field(
        ASSIGN_PROBE,
        ge=1,
        description="nearest coarse cells searched per image in a two-level fit",
    )


ASSIGNMENTS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_idx", pa.int64(), nullable=False),
        pa.field("level", pa.int8()),
        pa.field("k", pa.int32()),
        pa.field("cluster_id", pa.int32()),
        pa.field("similarity", pa.float32()),
        pa.field("is_exemplar", pa.bool_()),
    ]
)

SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("level", pa.int8()),
        pa.field("k", pa.int32()),
        pa.field("cluster_id", pa.int32()),
        pa.field("parent_cluster_id", pa.int32()),
        pa.field("size", pa.int64()),
        pa.field("mean_similarity", pa.float32()),
        pa.field("exemplar_ids", pa.list_(pa.string())),
        pa.field("centroid", pa.list_(pa.float32())),
    ]
)

METRICS_SCHEMA = pa.schema(
    [
        pa.field("level", pa.int8()),
        pa.field("k", pa.int32()),
        pa.field("n_images", pa.int64()),
        pa.field("mean_similarity", pa.float32()),
        pa.field("n_common_with_previous", pa.int64()),
        pa.field("ari_vs_previous", pa.float64()),
        pa.field("ami_vs_previous", pa.float64()),
    ]
)


class ClustersDerivation(Derivation[ClusterParams]):
    """Base of the per-space cluster derivations."""

    space: ClassVar[str]
    version = "v1"
    stage = 1
    Params = ClusterParams

    def in_all(self, configured: bool) -> bool:
        """In ``run all`` once its embedding pass (or itself) is configured."""
        return configured

    def missing_requirement(self) -> str | None:
        return missing_modules(("faiss",), "ml")

    def output_schema(self) -> pa.Schema:
        return ASSIGNMENTS_SCHEMA

    def extra_schemas(self) -> dict[str, pa.Schema]:
        return {"summary": SUMMARY_SCHEMA, "metrics": METRICS_SCHEMA}

    def derive(self, catalog: Catalog) -> pa.Table:
        return self.derive_outputs(catalog)[""]

    def derive_outputs(self, catalog: Catalog) -> dict[str, pa.Table]:
        from exokiratory.search.indices import image_keys

        params = self.params
        try:  # key columns only: the vectors are streamed from the parts (twice)
            idx, ids, _model, dim = image_keys(catalog, self.space)
        except ValueError:  # no embeddings (yet)
            log.info("%s: no %s embeddings yet; nothing to cluster", self.name, self.space)
            return {
                "": ASSIGNMENTS_SCHEMA.empty_table(),
                "summary": SUMMARY_SCHEMA.empty_table(),
                "metrics": METRICS_SCHEMA.empty_table(),
            }
        ks = level_sizes(len(ids), params.cluster_size, params.branching, params.max_levels)
        hier, labels, sims = self._fit_and_assign(catalog, idx, dim, ks or [1])
        assignments, summaries = [], []
        for li in range(labels.shape[0]):
            fit = KMeansResult(labels[li], hier.centroids[li], sims[li])
            ex = exemplars(fit, params.exemplars)
            assignments.append(_assignment_table(li, fit, ex, idx, ids))
            summaries.append(_summary_table(li, fit, hier.parents[li], ex, ids))
        table = pa.concat_tables(assignments)
        previous = _previous_assignments(catalog, f"clusters_{self.space}")
        return {
            "": table,
            "summary": pa.concat_tables(summaries),
            "metrics": _metrics(table, previous),
        }

    def _fit_and_assign(
        self, catalog: Catalog, idx: np.ndarray, dim: int, ks: list[int]
    ) -> tuple[Hierarchy, np.ndarray, np.ndarray]:
        """The hierarchy fitted on the training rows (every row up to
        ``TRAIN_SAMPLE_MAX``, else a seeded sample, read from the parts in one pass), then
        every row assigned at every level in a second streamed pass (shards as cluster tasks on
        ``--engine ray``, the same result): memory is the sample and a few shards, never the
        n x d matrix (15 GB of float16 at 10^7 x 768). On Ray, when the vectors come from the
        parts, both passes are tasks that read their own rows (``PartReader``): this process
        reads no vector and receives the sample, the labels and the similarities only."""
        from exokiratory.search.indices import gather_rows, stream_sources
        from exokiratory.search.ivf import read_ids

        params = self.params
        passes, raw = stream_sources(catalog, self.space, False)  # the parts found once
        imap = imap_shards if current_engine().name == "ray" else None
        reader = raw.reader(catalog) if imap is not None and raw is not None else None
        wanted = idx[training_positions(idx.size, params.seed)]
        if imap is not None and reader is not None:
            train = gather_rows(read_ids(reader, wanted, imap), wanted, dim)
        else:
            train = gather_rows(passes(), wanted, dim)
        hier = fit_hierarchy(
            train,
            ks,
            seed=params.seed,
            niter=params.niter,
            two_level_min_k=params.two_level_min_k,
            probe=params.assign_probe,
        )
        del train
        if imap is not None and reader is not None:
            labels, sims = read_hierarchy(reader, idx, hier, imap)
        else:
            labels, sims = stream_hierarchy(passes(), idx, hier, imap=imap)
        return hier, labels, sims


def _assignment_table(
    level: int,
    fit: KMeansResult,
    ex: dict[int, np.ndarray],
    idx: np.ndarray,
    ids: pa.Array,
) -> pa.Table:
    n = len(ids)
    is_ex = np.zeros(n, bool)
    for rows in ex.values():
        is_ex[rows] = True
    return pa.table(
        {
            "image_id": ids,
            "image_idx": idx.astype(np.int64),
            "level": np.full(n, level, np.int8),
            "k": np.full(n, fit.k, np.int32),
            "cluster_id": fit.assignments.astype(np.int32),
            "similarity": fit.similarity,
            "is_exemplar": is_ex,
        },
        schema=ASSIGNMENTS_SCHEMA,
    )


def _summary_table(
    level: int,
    fit: KMeansResult,
    parents: np.ndarray,
    ex: dict[int, np.ndarray],
    ids: pa.Array,
) -> pa.Table:
    sizes = fit.sizes()
    sums = np.bincount(fit.assignments, weights=fit.similarity, minlength=fit.k)
    mean_sim = np.where(sizes > 0, sums / np.maximum(sizes, 1), np.nan).astype(np.float32)
    return pa.table(
        {
            "level": np.full(fit.k, level, np.int8),
            "k": np.full(fit.k, fit.k, np.int32),
            "cluster_id": np.arange(fit.k, dtype=np.int32),
            "parent_cluster_id": parents.astype(np.int32),
            "size": sizes,
            "mean_similarity": mean_sim,
            "exemplar_ids": _exemplar_ids(ex, ids, fit.k),
            "centroid": _list_column(fit.centroids),
        },
        schema=SUMMARY_SCHEMA,
    )


def _exemplar_ids(ex: dict[int, np.ndarray], ids: pa.Array, k: int) -> pa.ListArray:
    """Each cluster's exemplar image_ids (best first), as one list column (one take)."""
    rows = [ex.get(c, np.zeros(0, np.int64)) for c in range(k)]
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int32)
    flat = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    return pa.ListArray.from_arrays(pa.array(offsets), ids.take(pa.array(flat)))


def _list_column(matrix: np.ndarray) -> pa.ListArray:
    """A float32 ``(k, d)`` matrix as a list<float32> column (no Python floats)."""
    k, d = matrix.shape
    offsets = pa.array(np.arange(0, (k + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), pa.float32()))


def _previous_assignments(catalog: Catalog, view: str) -> pa.Table | None:
    if view not in catalog.views:
        return None
    prev = catalog.query(f"SELECT image_id, level, cluster_id FROM {view}")
    return prev if prev.num_rows else None


def _metrics(current: pa.Table, previous: pa.Table | None) -> pa.Table:
    """Per level: size, mean similarity, and agreement with the previous clustering."""
    import duckdb

    from exokiratory.core.catalog import fetch_arrow

    con = duckdb.connect()
    try:
        con.register("cur", current)
        base = fetch_arrow(
            con.execute(
                "SELECT level, any_value(k) AS k, count(*) AS n_images, "
                "avg(similarity)::FLOAT AS mean_similarity FROM cur GROUP BY level ORDER BY level"
            )
        ).to_pylist()
        vs_previous: dict[int, dict[str, Any]] = {}
        if previous is not None:
            con.register("prev", previous)
            vs_previous = {r["level"]: r for r in level_agreement(con, "cur", "prev")}
    finally:
        con.close()
    rows = []
    for r in base:
        prev = vs_previous.get(r["level"], {})
        rows.append(
            {
                **r,
                "n_common_with_previous": prev.get("n_images", 0),
                "ari_vs_previous": prev.get("ari"),
                "ami_vs_previous": prev.get("ami"),
            }
        )
    return pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)


def level_agreement(con: Any, left: str, right: str) -> list[dict[str, Any]]:
    """Per level, ARI and AMI between two cluster-assignment relations (``image_id, level,
    cluster_id``; views or registered tables of the DuckDB connection ``con``) on the images
    both hold: ``level, n_images, ari, ami`` (ari/ami None below 2 common images)."""
    from exokiratory.core.catalog import fetch_arrow

    t = fetch_arrow(
        con.execute(
            f"SELECT l.level, l.cluster_id AS a, r.cluster_id AS b FROM {left} l "
            f"JOIN {right} r USING (image_id, level) ORDER BY l.level, l.image_id"
        )
    )
    level = t.column("level").to_numpy()
    a, b = t.column("a").to_numpy(), t.column("b").to_numpy()
    out = []
    for lv in np.unique(level):
        sel = level == lv
        ari, ami = agreement(a[sel], b[sel]) if sel.sum() >= 2 else (None, None)
        out.append({"level": int(lv), "n_images": int(sel.sum()), "ari": ari, "ami": ami})
    return out


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(adjusted Rand index, adjusted mutual information) of two labelings of the same items."""
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

    return float(adjusted_rand_score(a, b)), float(adjusted_mutual_info_score(a, b))


@register
class ClipClustersDerivation(ClustersDerivation):
    name = "clusters-clip"
    space = "clip"
    dataset = "clusters/clip"
    reads = ("embed-clip",)
    description = "k-means cluster hierarchy of the CLIP embeddings"


@register
class DinoClustersDerivation(ClustersDerivation):
    name = "clusters-dino"
    space = "dino"
    dataset = "clusters/dino"
    reads = ("embed-dino",)
    description = "k-means cluster hierarchy of the DINOv2 embeddings"

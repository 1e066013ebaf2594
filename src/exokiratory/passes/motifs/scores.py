"""Segment motifs: spherical k-means clusters of segment embeddings, scored as *infrastructure*
(recurring, large, border-touching: sky, road, wall, floor, background) or *foreground*, with
rare motifs and per-segment outliers. Pure computation; :mod:`exokiratory.passes.motifs.step` is the
derivation that reads the stored tables and writes the results.

Per space (``clip``, ``dino``), over the segments that have an embedding in that space:

* ``k = choose_k(n, target_cluster_size)`` (about ``target_cluster_size`` = 50 segments per
  cluster, at least 2 clusters, never more than n) and
  :func:`exokiratory.search.clustering.spherical_kmeans`, restarted ``n_init`` (3) times with seeds
  ``seed, seed + 1, ...``, keeping the fit with the highest total cosine similarity (a single
  random initialisation can merge a small motif into a large one). Clusters are renumbered
  by size, largest first (ties: the cluster of the earlier segment first), so ``cluster_id``
  does not depend on FAISS's internal order.
* Per cluster (``N`` = images with at least one clustered segment in this space):

  - ``size`` (segments), ``n_images`` (distinct images), ``image_fraction = n_images / N``;
  - ``mean_area_fraction``, ``mean_touches_border`` (fraction of its segments that touch the
    image border), ``mean_similarity`` (cosine to the centroid);
  - ``recurrence_score = min(1, image_fraction / recurrence_ref)``: 1 once the motif recurs in
    at least ``recurrence_ref`` (5 %) of the images;
  - ``area_score = min(1, mean_area_fraction / area_ref)``: 1 once its segments cover on
    average ``area_ref`` (20 %) of their image;
  - ``infrastructure_score = w_r recurrence_score + w_a area_score + w_b mean_touches_border``
    with weights 0.4, 0.3, 0.3 (they sum to 1, so the score is in [0, 1]);
    ``is_infrastructure = infrastructure_score >= infrastructure_threshold`` (0.6);
  - ``is_rare_motif``: ``n_images <= rare_max_images`` (2) or
    ``size < rare_relative_size x target_cluster_size`` (0.2 x 50 = 10): a motif few images
    share, or a small group k-means set apart;
  - ``is_foreground``: neither infrastructure nor rare;
  - exemplars: the ``exemplars`` (5) segments closest to the centroid, best first.

* Per segment: ``similarity`` (cosine to its centroid), ``distance = 1 - similarity`` and
  ``outlier_score``, the robust z of its distance within its cluster:
  ``(distance - median) / max(1.4826 x MAD, min_scale)``, using the cluster's median and MAD
  when it has at least ``robust_min_size`` (5) members, else those of all segments in the space
  (``min_scale`` = 0.01 keeps very tight clusters from turning tiny differences into huge
  scores); ``is_outlier = outlier_score > outlier_z`` (3.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from exokiratory.core.robust import MAD_TO_SIGMA, robust_z
from exokiratory.engine.step import PassParams, Spaces
from exokiratory.search.clustering import (
    KMeansResult,
    choose_k,
    exemplars,
    normalise_rows,
    spherical_kmeans,
)

MIN_SCALE = 0.01


class MotifsParams(PassParams):
    spaces: Spaces = Field(
        ("clip", "dino"), description="segment embedding spaces to cluster (those present)"
    )
    target_cluster_size: int = Field(50, ge=2, description="segments per cluster, on average")
    niter: int = Field(25, ge=1, le=1000)
    n_init: int = Field(3, ge=1, le=20, description="k-means restarts; the best fit is kept")
    seed: int = 0
    exemplars: int = Field(5, ge=1, le=100)
    recurrence_ref: float = Field(0.05, gt=0.0, le=1.0)
    area_ref: float = Field(0.2, gt=0.0, le=1.0)
    weight_recurrence: float = Field(0.4, ge=0.0)
    weight_area: float = Field(0.3, ge=0.0)
    weight_border: float = Field(0.3, ge=0.0)
    infrastructure_threshold: float = Field(0.6, ge=0.0, le=1.0)
    rare_max_images: int = Field(2, ge=0)
    rare_relative_size: float = Field(0.2, ge=0.0, le=1.0)
    robust_min_size: int = Field(5, ge=2)
    outlier_z: float = Field(3.5, gt=0.0)

    @model_validator(mode="after")
    def _some_weight(self) -> MotifsParams:
        if self.weight_recurrence + self.weight_area + self.weight_border <= 0:
            raise ValueError("weight_recurrence + weight_area + weight_border must be > 0")
        return self


SEGMENTS_SCHEMA = pa.schema(
    [
        pa.field("segment_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_idx", pa.int64(), nullable=False),
        pa.field("mask_index", pa.int32()),
        pa.field("space", pa.string(), nullable=False),
        pa.field("k", pa.int32()),
        pa.field("cluster_id", pa.int32()),
        pa.field("similarity", pa.float32()),
        pa.field("outlier_score", pa.float32()),
        pa.field("is_outlier", pa.bool_()),
        pa.field("is_exemplar", pa.bool_()),
        pa.field("is_infrastructure", pa.bool_()),
        pa.field("is_rare_motif", pa.bool_()),
    ]
)
"""Per segment and space (view ``motifs``); the two cluster flags repeat its cluster's."""

CLUSTERS_SCHEMA = pa.schema(
    [
        pa.field("space", pa.string(), nullable=False),
        pa.field("k", pa.int32()),
        pa.field("cluster_id", pa.int32()),
        pa.field("size", pa.int64()),
        pa.field("n_images", pa.int64()),
        pa.field("image_fraction", pa.float32()),
        pa.field("mean_area_fraction", pa.float32()),
        pa.field("mean_touches_border", pa.float32()),
        pa.field("mean_similarity", pa.float32()),
        pa.field("recurrence_score", pa.float32()),
        pa.field("area_score", pa.float32()),
        pa.field("infrastructure_score", pa.float32()),
        pa.field("is_infrastructure", pa.bool_()),
        pa.field("is_rare_motif", pa.bool_()),
        pa.field("is_foreground", pa.bool_()),
        pa.field("exemplar_segment_ids", pa.list_(pa.string())),
        pa.field("exemplar_image_ids", pa.list_(pa.string())),
        pa.field("centroid", pa.list_(pa.float32())),
    ]
)
"""Per cluster and space (view ``motifs_clusters``)."""


@dataclass(frozen=True)
class SegmentSet:
    """The segments of one space: vectors and the geometry the scores use (row-aligned)."""

    vectors: np.ndarray
    segment_ids: list[str]
    image_ids: list[str]
    image_idx: np.ndarray
    mask_index: np.ndarray
    area_fraction: np.ndarray
    touches_border: np.ndarray

    @property
    def n(self) -> int:
        return len(self.segment_ids)


def _relabel_by_size(assign: np.ndarray, k: int) -> np.ndarray:
    """New id of each old cluster: by size descending, then by first member row."""
    sizes = np.bincount(assign, minlength=k)
    first = np.full(k, len(assign), np.int64)
    np.minimum.at(first, assign, np.arange(len(assign)))
    order = np.lexsort((first, -sizes))
    new = np.empty(k, np.int32)
    new[order] = np.arange(k, dtype=np.int32)
    return new


def group_median(values: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """Median of ``values`` per group ``0..k-1`` (NaN for an empty group), vectorised."""
    order = np.lexsort((values, groups))
    v, g = values[order], groups[order]
    starts = np.searchsorted(g, np.arange(k), side="left")
    ends = np.searchsorted(g, np.arange(k), side="right")
    counts = ends - starts
    lo = starts + np.maximum(counts - 1, 0) // 2
    hi = starts + counts // 2
    safe = np.clip(np.stack([lo, hi]), 0, max(len(v) - 1, 0))
    med = (v[safe[0]] + v[safe[1]]) / 2.0 if len(v) else np.zeros(k)
    return np.where(counts > 0, med, np.nan)


def robust_outlier_scores(
    distance: np.ndarray, assign: np.ndarray, k: int, min_size: int
) -> np.ndarray:
    """Robust z of each distance within its cluster (see the module docstring)."""
    d = distance.astype(np.float64)
    sizes = np.bincount(assign, minlength=k)
    med = group_median(d, assign, k)
    mad = group_median(np.abs(d - med[assign]), assign, k)
    g_med = float(np.median(d))
    g_mad = float(np.median(np.abs(d - g_med)))
    small = sizes < min_size
    med = np.where(small, g_med, med)
    mad = np.where(small, g_mad, mad)
    z = robust_z(
        d, "signed", center=med[assign], sigma=MAD_TO_SIGMA * mad[assign], min_sigma=MIN_SCALE
    )
    return z.astype(np.float32)


def cluster_segments(seg: SegmentSet, params: MotifsParams) -> KMeansResult:
    """Spherical k-means of the segments, clusters renumbered by size (largest first)."""
    x = normalise_rows(seg.vectors)
    k = choose_k(seg.n, params.target_cluster_size) if seg.n >= 2 else 1
    fits = [
        spherical_kmeans(x, k, seed=params.seed + i, niter=params.niter)
        for i in range(params.n_init if k > 1 else 1)
    ]
    fit = max(fits, key=lambda f: float(f.similarity.sum(dtype=np.float64)))
    relabel = _relabel_by_size(fit.assignments, k)
    centroids = np.empty_like(fit.centroids)
    centroids[relabel] = fit.centroids
    return KMeansResult(relabel[fit.assignments], centroids, fit.similarity)


def find_motifs(seg: SegmentSet, space: str, params: MotifsParams) -> tuple[pa.Table, pa.Table]:
    """(per-segment table, per-cluster table) of one space (schemas above)."""
    if seg.n == 0:
        return SEGMENTS_SCHEMA.empty_table(), CLUSTERS_SCHEMA.empty_table()
    return score_motifs(seg, space, params, cluster_segments(seg, params))


def score_motifs(
    seg: SegmentSet, space: str, params: MotifsParams, fit: KMeansResult
) -> tuple[pa.Table, pa.Table]:
    """The two tables for a given clustering of ``seg`` (see the module docstring)."""
    assign, sim, k = fit.assignments, fit.similarity, fit.k
    ranked = exemplars(fit, params.exemplars)
    clusters = _cluster_table(seg, space, params, assign, fit.centroids, sim, ranked)
    outlier = robust_outlier_scores(1.0 - sim, assign, k, params.robust_min_size)
    is_exemplar = np.zeros(seg.n, bool)
    for rows in ranked.values():
        is_exemplar[rows] = True
    infra = np.asarray(clusters.column("is_infrastructure").to_pylist(), bool)
    rare = np.asarray(clusters.column("is_rare_motif").to_pylist(), bool)
    segments = pa.table(
        {
            "segment_id": seg.segment_ids,
            "image_id": seg.image_ids,
            "image_idx": seg.image_idx.astype(np.int64),
            "mask_index": seg.mask_index.astype(np.int32),
            "space": [space] * seg.n,
            "k": np.full(seg.n, k, np.int32),
            "cluster_id": assign.astype(np.int32),
            "similarity": sim.astype(np.float32),
            "outlier_score": outlier,
            "is_outlier": outlier > params.outlier_z,
            "is_exemplar": is_exemplar,
            "is_infrastructure": infra[assign],
            "is_rare_motif": rare[assign],
        },
        schema=SEGMENTS_SCHEMA,
    )
    return segments, clusters


def _cluster_table(
    seg: SegmentSet,
    space: str,
    params: MotifsParams,
    assign: np.ndarray,
    centroids: np.ndarray,
    sim: np.ndarray,
    ranked: dict[int, np.ndarray],
) -> pa.Table:
    k = centroids.shape[0]
    sizes = np.bincount(assign, minlength=k).astype(np.int64)
    denom = np.maximum(sizes, 1)
    pairs = np.unique(np.stack([assign.astype(np.int64), seg.image_idx.astype(np.int64)]), axis=1)
    n_images = np.bincount(pairs[0], minlength=k).astype(np.int64)
    total_images = max(len(np.unique(seg.image_idx)), 1)
    image_fraction = n_images / total_images
    area_sum = np.bincount(assign, weights=seg.area_fraction.astype(np.float64), minlength=k)
    mean_area = area_sum / denom
    border_sum = np.bincount(assign, weights=seg.touches_border.astype(np.float64), minlength=k)
    border = border_sum / denom
    mean_sim = np.bincount(assign, weights=sim.astype(np.float64), minlength=k) / denom
    recurrence = np.minimum(1.0, image_fraction / params.recurrence_ref)
    area_score = np.minimum(1.0, mean_area / params.area_ref)
    weights = np.array([params.weight_recurrence, params.weight_area, params.weight_border])
    weights = weights / weights.sum()
    score = weights[0] * recurrence + weights[1] * area_score + weights[2] * border
    is_infra = score >= params.infrastructure_threshold
    is_rare = (n_images <= params.rare_max_images) | (
        sizes < params.rare_relative_size * params.target_cluster_size
    )
    empty = np.zeros(0, np.int64)
    return pa.table(
        {
            "space": [space] * k,
            "k": np.full(k, k, np.int32),
            "cluster_id": np.arange(k, dtype=np.int32),
            "size": sizes,
            "n_images": n_images,
            "image_fraction": image_fraction.astype(np.float32),
            "mean_area_fraction": mean_area.astype(np.float32),
            "mean_touches_border": border.astype(np.float32),
            "mean_similarity": mean_sim.astype(np.float32),
            "recurrence_score": recurrence.astype(np.float32),
            "area_score": area_score.astype(np.float32),
            "infrastructure_score": score.astype(np.float32),
            "is_infrastructure": is_infra,
            "is_rare_motif": is_rare,
            "is_foreground": ~is_infra & ~is_rare,
            "exemplar_segment_ids": [
                [seg.segment_ids[i] for i in ranked.get(c, empty)] for c in range(k)
            ],
            "exemplar_image_ids": [
                [seg.image_ids[i] for i in ranked.get(c, empty)] for c in range(k)
            ],
            "centroid": [c.tolist() for c in centroids],
        },
        schema=CLUSTERS_SCHEMA,
    )

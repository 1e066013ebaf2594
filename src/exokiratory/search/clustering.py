"""Spherical k-means on L2-normalised embeddings (FAISS), and a hierarchy of them.

Used for image clusters (:mod:`exokiratory.passes.clusters.step`) and segment motifs. Everything here
is deterministic for a given input order and seed: FAISS k-means samples its initial centroids
and training subset with the seed, and the assignment step is an exact inner-product search.

The hierarchy follows Vo et al. 2024 ("Automatic data curation for self-supervised learning: a
clustering-based approach"): level 0 clusters the vectors into many small clusters; each higher
level clusters the (normalised) centroids of the level below, so every fine cluster has exactly
one parent and the levels nest. Their resampling refinement between levels is not applied.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

#: FAISS trains on at most this many points per centroid (its own default is 256); a seeded
#: subsample above that, so a 10^6-point level-0 fit stays in seconds to minutes.
MAX_POINTS_PER_CENTROID = 256

#: k-means trains on a seeded sample of at most this many rows (262,144 x 768 float32 = 800 MB
#: of training data at most); every row is then assigned to its nearest centroid in batches of
#: :data:`ASSIGN_BATCH`. Below this size the fit is the same as training on every row.
TRAIN_SAMPLE_MAX = 262_144

#: rows per exact nearest-centroid search batch (the assignment never holds n x k scores).
ASSIGN_BATCH = 65_536


@dataclass(frozen=True)
class KMeansResult:
    """One k-means fit.

    Attributes:
        assignments: int32 ``(n,)``, the cluster of each row (0..k-1).
        centroids: float32 ``(k, d)``, L2-normalised.
        similarity: float32 ``(n,)``, cosine similarity of each row to its own centroid.
    """

    assignments: np.ndarray
    centroids: np.ndarray
    similarity: np.ndarray

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def sizes(self) -> np.ndarray:
        """Rows per cluster, int64 ``(k,)``."""
        return np.bincount(self.assignments, minlength=self.k).astype(np.int64)


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32, contiguous); all-zero rows stay zero."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def choose_k(n: int, target_size: int, k_min: int = 2, k_max: int = 100_000) -> int:
    """The number of clusters that gives clusters of about ``target_size`` rows, clamped to
    ``[k_min, k_max]`` and never above ``n``."""
    if n <= 0:
        return 0
    if target_size < 1:
        raise ValueError("target_size must be >= 1")
    k = max(k_min, math.ceil(n / target_size))
    return int(max(1, min(k, k_max, n)))


def spherical_kmeans(x: np.ndarray, k: int, *, seed: int = 0, niter: int = 25) -> KMeansResult:
    """Spherical k-means (cosine) of the rows of ``x`` into ``k`` clusters.

    Raises:
        ValueError: for an empty input, ``k < 1`` or ``k`` larger than the number of rows.
    """
    x = normalise_rows(np.atleast_2d(x))
    n, d = x.shape
    if n == 0:
        raise ValueError("cannot cluster an empty set of vectors")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] for {n} vectors, got {k}")
    if k == 1:
        centroid = normalise_rows(x.mean(axis=0, keepdims=True))
        return KMeansResult(np.zeros(n, np.int32), centroid, (x @ centroid[0]).astype(np.float32))
    import faiss

    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=seed,
        spherical=True,
        max_points_per_centroid=MAX_POINTS_PER_CENTROID,
        min_points_per_centroid=1,
        verbose=False,
    )
    train = training_sample(x, seed)
    km.train(train, init_centroids=kmeanspp_init(train, k, seed))
    centroids = normalise_rows(np.asarray(km.centroids))
    assign, sim = assign_to_centroids(x, centroids)
    return KMeansResult(assign, centroids, sim)


def training_sample(x: np.ndarray, seed: int, size: int = TRAIN_SAMPLE_MAX) -> np.ndarray:
    """``x`` itself up to ``size`` rows, else a seeded sample of ``size`` rows (in row order)."""
    if x.shape[0] <= size:
        return x
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(x[np.sort(rng.choice(x.shape[0], size, replace=False))])


def assign_to_centroids(
    x: np.ndarray, centroids: np.ndarray, batch: int = ASSIGN_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """(int32 nearest centroid, float32 its cosine) of each row of ``x`` (unit rows), by an
    exact inner-product search over row batches (the same result as one search)."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    assign = np.empty(x.shape[0], np.int32)
    sim = np.empty(x.shape[0], np.float32)
    for lo in range(0, x.shape[0], batch):
        s, a = index.search(np.ascontiguousarray(x[lo : lo + batch], dtype=np.float32), 1)
        assign[lo : lo + batch] = a[:, 0]
        sim[lo : lo + batch] = s[:, 0]
    return assign, sim


def row_similarity(
    x: np.ndarray, centroids: np.ndarray, assignments: np.ndarray, batch: int = ASSIGN_BATCH
) -> np.ndarray:
    """float32 cosine of each row to its assigned centroid, in row batches (no n x d gather)."""
    out = np.empty(x.shape[0], np.float32)
    for lo in range(0, x.shape[0], batch):
        rows = x[lo : lo + batch]
        out[lo : lo + batch] = np.einsum(
            "nd,nd->n", rows, centroids[assignments[lo : lo + batch]]
        ).astype(np.float32)
    return out


#: k-means++ seeding runs while k x sample x d stays under this many multiply-adds (about a
#: second); above it FAISS's own seeded random initialisation is used.
KMEANSPP_BUDGET = 5e10


def kmeanspp_init(x: np.ndarray, k: int, seed: int) -> np.ndarray | None:
    """k-means++ initial centroids (Arthur & Vassilvitskii 2007) from a seeded subsample of at
    most ``50 * k`` rows, or ``None`` when that would cost more than :data:`KMEANSPP_BUDGET`.

    Random initialisation alone often merges two clusters and splits another; k-means++ spreads
    the seeds, so well-separated groups are recovered."""
    n, d = x.shape
    rng = np.random.default_rng(seed)
    m = min(n, 50 * k)
    if float(k) * m * d > KMEANSPP_BUDGET:
        return None
    sample = x[np.sort(rng.choice(n, m, replace=False))] if m < n else x
    centres = np.empty((k, d), np.float32)
    centres[0] = sample[rng.integers(m)]
    dist = np.maximum(0.0, 2.0 - 2.0 * (sample @ centres[0]))  # squared distance, unit vectors
    for i in range(1, k):
        total = float(dist.sum())
        j = int(rng.choice(m, p=dist / total)) if total > 0 else int(rng.integers(m))
        centres[i] = sample[j]
        dist = np.minimum(dist, np.maximum(0.0, 2.0 - 2.0 * (sample @ centres[i])))
    return centres


def exemplars(result: KMeansResult, per_cluster: int) -> dict[int, np.ndarray]:
    """Row indices closest to each centroid, best first (at most ``per_cluster`` each; ties
    broken by row index, so the choice is deterministic)."""
    if per_cluster < 1:
        raise ValueError("per_cluster must be >= 1")
    order = np.lexsort((np.arange(len(result.similarity)), -result.similarity, result.assignments))
    out: dict[int, np.ndarray] = {}
    clusters = result.assignments[order]
    starts = np.searchsorted(clusters, np.arange(result.k), side="left")
    ends = np.searchsorted(clusters, np.arange(result.k), side="right")
    for c in range(result.k):
        if ends[c] > starts[c]:
            out[c] = order[starts[c] : min(ends[c], starts[c] + per_cluster)]
    return out


@dataclass(frozen=True)
class Level:
    """One level of a hierarchy: the k-means of the level below's centroids (or of the data).

    Attributes:
        k: number of clusters.
        assignments: int32 ``(n_rows,)``, each data row's cluster at this level.
        centroids: float32 ``(k, d)``.
        parents: int32 ``(k,)``, each cluster's cluster at the next coarser level (-1 at the top).
    """

    k: int
    assignments: np.ndarray
    centroids: np.ndarray
    parents: np.ndarray


def hierarchical_kmeans(
    x: np.ndarray,
    ks: list[int],
    *,
    seed: int = 0,
    niter: int = 25,
) -> list[Level]:
    """Nested spherical k-means: level 0 clusters ``x`` into ``ks[0]`` clusters, level i
    clusters level i-1's centroids into ``ks[i]`` (``ks`` must decrease)."""
    if not ks:
        raise ValueError("need at least one level")
    if any(b >= a for a, b in itertools.pairwise(ks)):
        raise ValueError(f"cluster counts must decrease from fine to coarse, got {ks}")
    first = spherical_kmeans(x, ks[0], seed=seed, niter=niter)
    assignments = [first.assignments]
    centroids = [first.centroids]
    parents: list[np.ndarray] = []
    for level, k in enumerate(ks[1:], start=1):
        fit = spherical_kmeans(centroids[-1], k, seed=seed + level, niter=niter)
        parents.append(fit.assignments)
        assignments.append(fit.assignments[assignments[-1]])
        centroids.append(fit.centroids)
    parents.append(np.full(ks[-1], -1, np.int32))
    return [
        Level(k, a.astype(np.int32), c, p.astype(np.int32))
        for k, a, c, p in zip(ks, assignments, centroids, parents, strict=True)
    ]


def level_sizes(n: int, cluster_size: int, branching: int, max_levels: int) -> list[int]:
    """Cluster counts per level for ``n`` rows: about ``cluster_size`` rows per finest cluster,
    then ``branching`` times fewer clusters per level, while at least 2 clusters remain."""
    if n < 2:
        return []
    ks = [choose_k(n, cluster_size)]
    while len(ks) < max_levels:
        nxt = math.ceil(ks[-1] / branching)
        if nxt < 2 or nxt >= ks[-1]:
            break
        ks.append(nxt)
    return ks

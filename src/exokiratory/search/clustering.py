"""Spherical k-means on L2-normalised embeddings (FAISS), and a hierarchy of them.

Used for image clusters (:mod:`exokiratory.passes.clusters.step`) and segment motifs. Everything here
is deterministic for a given input order and seed: FAISS k-means samples its initial centroids
and training subset with the seed, and the assignment step is an exact inner-product search.

The hierarchy follows Vo et al. 2024 ("Automatic data curation for self-supervised learning: a
clustering-based approach"): level 0 clusters the vectors into many small clusters; each higher
level clusters the (normalised) centroids of the level below, so every fine cluster has exactly
one parent and the levels nest. Their resampling refinement between levels is not applied.

Memory: the input may be float16 (the stored embeddings, :func:`.indices.load_embeddings_f16`);
rows are converted to float32 and normalised only a batch at a time (training sample, assignment
batch, similarity batch). From :data:`TWO_LEVEL_MIN_K` clusters a level is fitted coarse then
fine (:func:`two_level_kmeans`) and assigned approximately; below it, the exact one-level fit.

Data that does not fit in memory: the fit reads only the training rows (:func:`fit_kmeans`,
:func:`fit_hierarchy` on the rows :func:`training_positions` names, the same fit as on the whole
matrix), and :func:`stream_hierarchy` assigns rows arriving as chunks in any order, shard by
shard (here or as cluster tasks): the image clusters never hold the n x d matrix. On a cluster,
:func:`read_hierarchy` goes further: its tasks read their own rows from the stored parts
(descriptors of row groups, :class:`.ivf.ShardReader`), so the driver reads no vector at all.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from exokiratory.search.ivf import (
    CHANGED,
    READ_BATCH,
    Chunk,
    ShardMap,
    ShardReader,
    exact_half,
    positions,
)

log = logging.getLogger(__name__)

#: FAISS trains on at most this many points per centroid (its own default is 256); a seeded
#: subsample above that, so a 10^6-point level-0 fit stays in seconds to minutes.
MAX_POINTS_PER_CENTROID = 256

#: k-means trains on a seeded sample of at most this many rows (262,144 x 768 float32 = 800 MB
#: of training data at most); every row is then assigned to its nearest centroid in batches of
#: :data:`ASSIGN_BATCH`. Below this size the fit is the same as training on every row.
TRAIN_SAMPLE_MAX = 262_144

#: rows per exact nearest-centroid search batch (the assignment never holds n x k scores).
ASSIGN_BATCH = 65_536
#: batches per shard when the assignment runs as cluster tasks (``assign_to_centroids(imap=)``)
SHARD_BATCHES = 16

#: from this many clusters, k-means is fitted in two levels ("coarse then fine", see
#: :func:`two_level_kmeans`) instead of one FAISS k-means over the training sample: at 10^6
#: images with the default ``cluster_size`` 30 (k = 33,334) the one-level fit costs about
#: 3 x 10^14 multiply-adds. Below it the fit is the exact one-level k-means, as before.
TWO_LEVEL_MIN_K = 4096

#: coarse cells whose fine centroids a row is compared with, in a two-level fit (the nearest
#: ``ASSIGN_PROBE`` of about sqrt(k)): the assignment is then approximate (the exact nearest of
#: all k centroids costs n x k x d, 2.6 x 10^13 multiply-adds at 10^6 x 33,334 x 768).
ASSIGN_PROBE = 8


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


def unit_rows(
    x: np.ndarray, rows: np.ndarray | None = None, batch: int = ASSIGN_BATCH
) -> np.ndarray:
    """:func:`normalise_rows` of ``x[rows]`` (every row when ``rows`` is None), converted and
    normalised ``batch`` rows at a time into one float32 array: a float16 ``x`` is never copied
    whole to float32 (the result is the same row for row, as normalisation is per row)."""
    n = x.shape[0] if rows is None else len(rows)
    out = np.empty((n, x.shape[1]), np.float32)
    for lo in range(0, n, batch):
        chunk = x[lo : lo + batch] if rows is None else x[rows[lo : lo + batch]]
        out[lo : lo + batch] = normalise_rows(chunk)
    return out


def choose_k(n: int, target_size: int, k_min: int = 2, k_max: int = 100_000) -> int:
    """The number of clusters that gives clusters of about ``target_size`` rows, clamped to
    ``[k_min, k_max]`` and never above ``n``."""
    if n <= 0:
        return 0
    if target_size < 1:
        raise ValueError("target_size must be >= 1")
    k = max(k_min, math.ceil(n / target_size))
    return int(max(1, min(k, k_max, n)))


def spherical_kmeans(
    x: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    niter: int = 25,
    two_level_min_k: int = TWO_LEVEL_MIN_K,
    probe: int = ASSIGN_PROBE,
    imap: ShardMap | None = None,
) -> KMeansResult:
    """Spherical k-means (cosine) of the rows of ``x`` (float16 or float32, any norm: rows
    are normalised batch by batch) into ``k`` clusters: one FAISS k-means on the training sample
    below ``two_level_min_k`` clusters, else :func:`two_level_kmeans`.

    Raises:
        ValueError: for an empty input, ``k < 1`` or ``k`` larger than the number of rows.
    """
    x = np.atleast_2d(x)
    n = x.shape[0]
    if n == 0:
        raise ValueError("cannot cluster an empty set of vectors")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] for {n} vectors, got {k}")
    if k == 1:
        return _one_cluster(x)
    centroids, cells = fit_kmeans(
        x, k, seed=seed, niter=niter, two_level_min_k=two_level_min_k, probe=probe
    )
    assign, sim = assign_to_centroids(x, centroids, cells=cells, imap=imap)
    return KMeansResult(assign, centroids, sim)


def fit_kmeans(
    x: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    niter: int = 25,
    two_level_min_k: int = TWO_LEVEL_MIN_K,
    probe: int = ASSIGN_PROBE,
) -> tuple[np.ndarray, CoarseCells | None]:
    """The fit of :func:`spherical_kmeans` without the assignment: (float32 ``(k, d)`` unit
    centroids, the coarse cells of a two-level fit or None). It reads only the training rows:
    ``x`` itself up to :data:`TRAIN_SAMPLE_MAX` rows, else the rows :func:`sample_rows` picks,
    so ``fit_kmeans(x[sample_rows(n, seed, TRAIN_SAMPLE_MAX)], ...)`` is the same fit as
    ``fit_kmeans(x, ...)`` (how :func:`stream_hierarchy`'s caller fits without holding ``x``).
    ``1 <= k <= rows``; k = 1: the normalised mean of the unit training rows."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] for {n} vectors, got {k}")
    if k == 1:
        return normalise_rows(training_rows(x, seed).mean(axis=0, keepdims=True)), None
    if k >= two_level_min_k:
        rows = sample_rows(n, seed, TRAIN_SAMPLE_MAX) if n > TRAIN_SAMPLE_MAX else None
        return fit_two_level(x, k, rows=rows, seed=seed, niter=niter, probe=probe)
    return fit_centroids(training_rows(x, seed), k, seed, niter), None


def _one_cluster(x: np.ndarray) -> KMeansResult:
    """k = 1: the normalised mean of the unit rows, summed batch by batch."""
    n = x.shape[0]
    if n <= ASSIGN_BATCH:
        unit = normalise_rows(x)
        centroid = normalise_rows(unit.mean(axis=0, keepdims=True))
        return KMeansResult(
            np.zeros(n, np.int32), centroid, (unit @ centroid[0]).astype(np.float32)
        )
    total = np.zeros(x.shape[1], np.float64)
    for lo in range(0, n, ASSIGN_BATCH):
        total += normalise_rows(x[lo : lo + ASSIGN_BATCH]).sum(axis=0, dtype=np.float64)
    centroid = normalise_rows((total / n)[None, :])
    assign = np.zeros(n, np.int32)
    return KMeansResult(assign, centroid, row_similarity(x, centroid, assign))


def fit_centroids(train: np.ndarray, k: int, seed: int, niter: int) -> np.ndarray:
    """float32 ``(k, d)`` unit centroids of one seeded FAISS spherical k-means of the unit rows
    ``train`` (k-means++ seeding while affordable; ``k`` <= rows)."""
    import faiss

    km = faiss.Kmeans(
        train.shape[1],
        k,
        niter=niter,
        seed=seed,
        spherical=True,
        max_points_per_centroid=MAX_POINTS_PER_CENTROID,
        min_points_per_centroid=1,
        verbose=False,
    )
    km.train(train, init_centroids=kmeanspp_init(train, k, seed))
    return normalise_rows(np.asarray(km.centroids))


def training_sample(x: np.ndarray, seed: int, size: int | None = None) -> np.ndarray:
    """``x`` itself up to ``size`` (default :data:`TRAIN_SAMPLE_MAX`) rows, else a seeded sample
    of ``size`` rows (in row order)."""
    size = TRAIN_SAMPLE_MAX if size is None else size
    if x.shape[0] <= size:
        return x
    return np.ascontiguousarray(x[sample_rows(x.shape[0], seed, size)])


def sample_rows(n: int, seed: int, size: int) -> np.ndarray:
    """The sorted row numbers of :func:`training_sample`'s seeded sample of ``size`` of ``n``."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size, replace=False))


def training_rows(x: np.ndarray, seed: int, size: int | None = None) -> np.ndarray:
    """The unit float32 rows of :func:`training_sample` (every row up to ``size`` rows),
    gathered and normalised in batches (no float32 copy of a float16 ``x``)."""
    size = TRAIN_SAMPLE_MAX if size is None else size
    if x.shape[0] <= size:
        return unit_rows(x)
    return unit_rows(x, sample_rows(x.shape[0], seed, size))


@dataclass(frozen=True)
class CoarseCells:
    """The coarse level of a two-level fit, for the approximate assignment.

    Attributes:
        centroids: float32 ``(k1, d)`` unit coarse centroids.
        offsets: int64 ``(k1 + 1,)``: the fine centroids of cell ``c`` are the rows
            ``offsets[c]:offsets[c + 1]`` of the fine centroids.
        probe: coarse cells searched per row (the nearest ones).
    """

    centroids: np.ndarray
    offsets: np.ndarray
    probe: int


def assign_batch(
    chunk: np.ndarray, centroids: np.ndarray, cells: CoarseCells | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(int32 nearest centroid, float32 its cosine) of each row of ``chunk`` (float16 or
    float32, normalised here). Exact (a FAISS inner-product search over all centroids) without
    ``cells``; with them, the best of the fine centroids of each row's ``cells.probe`` nearest
    coarse cells (approximate). A pure function of its arguments: batches can run anywhere."""
    x = normalise_rows(chunk)
    if cells is None:
        return _nearest(x, centroids)
    return _nearest_within(x, centroids, cells)


def _nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    s, a = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return a[:, 0].astype(np.int32), s[:, 0].astype(np.float32)


def _nearest_within(
    x: np.ndarray, centroids: np.ndarray, cells: CoarseCells
) -> tuple[np.ndarray, np.ndarray]:
    """The nearest fine centroid among those of each row's nearest coarse cells; ties go to
    the lower centroid number (cells are visited in increasing order)."""
    k1 = cells.centroids.shape[0]
    probe = max(1, min(cells.probe, k1))
    scores = x @ cells.centroids.T
    top = np.argpartition(-scores, probe - 1, axis=1)[:, :probe] if probe < k1 else None
    pair_rows = np.repeat(np.arange(x.shape[0]), probe)
    pair_cells = top.ravel() if top is not None else np.tile(np.arange(k1), x.shape[0])
    order = np.argsort(pair_cells, kind="stable")
    bounds = np.searchsorted(pair_cells[order], np.arange(k1 + 1))
    best = np.full(x.shape[0], -1, np.int32)
    best_s = np.full(x.shape[0], -np.inf, np.float32)
    for c in range(k1):
        lo, hi = int(cells.offsets[c]), int(cells.offsets[c + 1])
        if hi == lo or bounds[c + 1] == bounds[c]:
            continue
        rows = pair_rows[order[bounds[c] : bounds[c + 1]]]
        s = x[rows] @ centroids[lo:hi].T
        j = np.argmax(s, axis=1)
        v = s[np.arange(len(rows)), j]
        better = v > best_s[rows]
        best[rows[better]] = lo + j[better]
        best_s[rows[better]] = v[better]
    return best, best_s


def assign_to_centroids(
    x: np.ndarray,
    centroids: np.ndarray,
    batch: int = ASSIGN_BATCH,
    cells: CoarseCells | None = None,
    imap: ShardMap | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(int32 nearest centroid, float32 its cosine) of each row of ``x``, by
    :func:`assign_batch` over row batches (exact without ``cells``: the same result as one
    search). ``imap`` (``engine.shards.imap_shards`` on a Ray cluster): shards of
    :data:`SHARD_BATCHES` batches run as tasks; each shard cuts the same batches as this
    process would, so the result is identical."""
    assign = np.empty(x.shape[0], np.int32)
    sim = np.empty(x.shape[0], np.float32)
    if imap is not None:
        step = batch * SHARD_BATCHES
        ranges = [(lo, min(lo + step, x.shape[0])) for lo in range(0, x.shape[0], step)]
        results = imap(_assign_range, ranges, (x, centroids, cells, batch))
        for (lo, hi), (a, s) in zip(ranges, results, strict=True):
            assign[lo:hi], sim[lo:hi] = a, s
        return assign, sim
    for lo in range(0, x.shape[0], batch):
        assign[lo : lo + batch], sim[lo : lo + batch] = assign_batch(
            x[lo : lo + batch], centroids, cells
        )
    return assign, sim


def _assign_range(
    rows: tuple[int, int],
    x: np.ndarray,
    centroids: np.ndarray,
    cells: CoarseCells | None,
    batch: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One shard of :func:`assign_to_centroids` (a Ray task's work)."""
    return assign_to_centroids(x[rows[0] : rows[1]], centroids, batch, cells)


def row_similarity(
    x: np.ndarray, centroids: np.ndarray, assignments: np.ndarray, batch: int = ASSIGN_BATCH
) -> np.ndarray:
    """float32 cosine of each row of ``x`` (normalised per batch) to its assigned centroid, in
    row batches (no n x d gather)."""
    out = np.empty(x.shape[0], np.float32)
    for lo in range(0, x.shape[0], batch):
        rows = normalise_rows(x[lo : lo + batch])
        out[lo : lo + batch] = np.einsum(
            "nd,nd->n", rows, centroids[assignments[lo : lo + batch]]
        ).astype(np.float32)
    return out


def two_level_kmeans(
    x: np.ndarray,
    k: int,
    *,
    rows: np.ndarray | None = None,
    seed: int = 0,
    niter: int = 25,
    probe: int = ASSIGN_PROBE,
    imap: ShardMap | None = None,
) -> KMeansResult:
    """k-means with a large ``k`` in two levels, trained on the rows ``rows`` of ``x`` (sorted
    row numbers; None: every row): a coarse k-means into about sqrt(k) cells (on at most
    :data:`MAX_POINTS_PER_CENTROID` rows per cell); each cell's training rows clustered into a
    share of ``k`` proportional to its size (:func:`fine_shares`; seed ``seed + 1 + cell``);
    the ``k`` fine centroids are the union, in cell order. Every row of ``x`` is then assigned
    to the nearest fine centroid of its ``probe`` nearest cells (:func:`assign_batch`):
    approximate; the share of rows given the exact nearest is measured by
    ``bench/clusters_scale.py``. Training costs about ``niter x (sqrt(k) + k / sqrt(k)) x rows x
    d`` instead of ``niter x k x rows x d``. Rows are gathered from ``x`` and normalised batch
    by batch (no float32 copy of the training rows). Seeded and deterministic."""
    centroids, cells = fit_two_level(x, k, rows=rows, seed=seed, niter=niter, probe=probe)
    assign, sim = assign_to_centroids(x, centroids, cells=cells, imap=imap)
    return KMeansResult(assign, centroids, sim)


def fit_two_level(
    x: np.ndarray,
    k: int,
    *,
    rows: np.ndarray | None = None,
    seed: int = 0,
    niter: int = 25,
    probe: int = ASSIGN_PROBE,
) -> tuple[np.ndarray, CoarseCells]:
    """The fit of :func:`two_level_kmeans` (fine centroids, coarse cells), reading only the
    rows ``rows`` of ``x`` (None: every row)."""
    train = np.arange(x.shape[0]) if rows is None else np.asarray(rows, np.int64)
    if not 2 <= k <= train.size:
        raise ValueError(f"k must be in [2, {train.size}] for {train.size} training rows, got {k}")
    k1 = max(2, min(round(math.sqrt(k)), k - 1))
    fit_rows = train
    if train.size > k1 * MAX_POINTS_PER_CENTROID:
        fit_rows = train[sample_rows(train.size, seed, k1 * MAX_POINTS_PER_CENTROID)]
    coarse = fit_centroids(unit_rows(x, fit_rows), k1, seed, niter)
    cell = np.empty(train.size, np.int32)
    for lo in range(0, train.size, ASSIGN_BATCH):
        cell[lo : lo + ASSIGN_BATCH] = assign_batch(x[train[lo : lo + ASSIGN_BATCH]], coarse)[0]
    order = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[order], np.arange(k1 + 1))
    shares = fine_shares(np.diff(bounds), k)
    fine = [
        _fit_cell(
            unit_rows(x, train[order[bounds[c] : bounds[c + 1]]]),
            int(shares[c]),
            seed + 1 + c,
            niter,
        )
        for c in range(k1)
        if shares[c] > 0
    ]
    cells = CoarseCells(coarse, np.concatenate([[0], np.cumsum(shares)]).astype(np.int64), probe)
    centroids = np.ascontiguousarray(np.concatenate(fine), dtype=np.float32)
    log.info("two-level k-means: k = %d in %d coarse cells, %d probed per row", k, k1, probe)
    return centroids, cells


def _fit_cell(rows: np.ndarray, k: int, seed: int, niter: int) -> np.ndarray:
    """The ``k`` fine centroids of one coarse cell's unit training rows."""
    if k >= rows.shape[0]:
        return normalise_rows(rows)
    if k == 1:
        return normalise_rows(rows.mean(axis=0, keepdims=True))
    return fit_centroids(np.ascontiguousarray(rows), k, seed, niter)


def fine_shares(sizes: np.ndarray, k: int) -> np.ndarray:
    """int64 clusters per coarse cell: proportional to ``sizes`` (largest remainders), at
    least 1 for a non-empty cell, at most its size, summing to ``k`` (<= ``sizes.sum()``)."""
    sizes = np.asarray(sizes, np.int64)
    quota = k * sizes / max(int(sizes.sum()), 1)
    shares = np.minimum(np.maximum(np.floor(quota).astype(np.int64), sizes > 0), sizes)
    while (left := k - int(shares.sum())) != 0:
        if left > 0:  # give one more to the cells furthest below their quota
            room = np.flatnonzero(shares < sizes)
            pick = room[np.argsort(-(quota[room] - shares[room]), kind="stable")[:left]]
            shares[pick] += 1
        else:  # take one from the cells furthest above their quota (keeping >= 1)
            room = np.flatnonzero(shares > 1)
            pick = room[np.argsort(-(shares[room] - quota[room]), kind="stable")[:-left]]
            shares[pick] -= 1
    return shares


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
    two_level_min_k: int = TWO_LEVEL_MIN_K,
    probe: int = ASSIGN_PROBE,
    imap: ShardMap | None = None,
) -> list[Level]:
    """Nested spherical k-means: level 0 clusters ``x`` (float16 or float32) into ``ks[0]``
    clusters, level i clusters level i-1's centroids into ``ks[i]`` (``ks`` must decrease);
    levels with at least ``two_level_min_k`` clusters are fitted in two levels
    (:func:`fit_hierarchy`). ``imap``: the assignment of the rows of ``x`` as cluster tasks
    (:func:`assign_to_centroids`). For rows that do not fit in memory:
    :func:`stream_hierarchy`."""
    x = np.atleast_2d(x)
    hier = fit_hierarchy(
        x, ks, seed=seed, niter=niter, two_level_min_k=two_level_min_k, probe=probe
    )
    first, _ = assign_to_centroids(x, hier.centroids[0], cells=hier.cells, imap=imap)
    return hier.levels(first)


def _check_ks(ks: list[int]) -> None:
    if not ks:
        raise ValueError("need at least one level")
    if any(b >= a for a, b in itertools.pairwise(ks)):
        raise ValueError(f"cluster counts must decrease from fine to coarse, got {ks}")


@dataclass(frozen=True)
class Hierarchy:
    """A fitted hierarchy (:func:`fit_hierarchy`), before any row is assigned.

    Attributes:
        centroids: per level, float32 ``(k, d)`` unit centroids (level 0 first).
        parents: per level, int32 ``(k,)``: each cluster's cluster one level up (-1 at the top).
        cells: the coarse cells of a two-level level 0 (approximate assignment), or None.
    """

    centroids: tuple[np.ndarray, ...]
    parents: tuple[np.ndarray, ...]
    cells: CoarseCells | None = None

    def labels(self, first: np.ndarray) -> list[np.ndarray]:
        """int32 cluster at every level of rows whose level-0 clusters are ``first``."""
        out = [np.asarray(first, np.int32)]
        for parents in self.parents[:-1]:
            out.append(parents[out[-1]])
        return out

    def levels(self, first: np.ndarray) -> list[Level]:
        """The :class:`Level` list of rows whose level-0 clusters are ``first``."""
        return [
            Level(int(c.shape[0]), a, c, p)
            for a, c, p in zip(self.labels(first), self.centroids, self.parents, strict=True)
        ]


def fit_hierarchy(
    train: np.ndarray,
    ks: list[int],
    *,
    seed: int = 0,
    niter: int = 25,
    two_level_min_k: int = TWO_LEVEL_MIN_K,
    probe: int = ASSIGN_PROBE,
) -> Hierarchy:
    """Fit the levels of :func:`hierarchical_kmeans` without assigning any
    data row: level 0 by :func:`fit_kmeans` of ``train``, which may be the data itself or, for
    the same fit without holding the data, its rows ``sample_rows(n, seed, TRAIN_SAMPLE_MAX)``
    when ``n > TRAIN_SAMPLE_MAX``; level i by :func:`spherical_kmeans` of level i-1's
    centroids (seed ``seed + i``)."""
    _check_ks(ks)
    first, cells = fit_kmeans(
        train, ks[0], seed=seed, niter=niter, two_level_min_k=two_level_min_k, probe=probe
    )
    centroids, parents = [first], []
    for level, k in enumerate(ks[1:], start=1):
        fit = spherical_kmeans(
            centroids[-1],
            k,
            seed=seed + level,
            niter=niter,
            two_level_min_k=two_level_min_k,
            probe=probe,
        )
        parents.append(fit.assignments.astype(np.int32))
        centroids.append(fit.centroids)
    parents.append(np.full(ks[-1], -1, np.int32))
    return Hierarchy(tuple(centroids), tuple(parents), cells)


def training_positions(n: int, seed: int) -> np.ndarray:
    """The row numbers :func:`fit_kmeans` trains on, for ``n`` rows: all of them up to
    :data:`TRAIN_SAMPLE_MAX`, else the seeded sample (sorted)."""
    if n <= TRAIN_SAMPLE_MAX:
        return np.arange(n, dtype=np.int64)
    return sample_rows(n, seed, TRAIN_SAMPLE_MAX).astype(np.int64)


def assign_hierarchy(
    x: np.ndarray, hier: Hierarchy, batch: int = ASSIGN_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """(int32 ``(levels, rows)`` cluster of each row of ``x`` at each level, float32
    ``(levels, rows)`` its cosine to that cluster's centroid), ``batch`` rows at a time: level 0
    as :func:`assign_batch`, the levels above by the parents. A pure function of its
    arguments, so shards can run anywhere."""
    n, depth = x.shape[0], len(hier.centroids)
    labels = np.empty((depth, n), np.int32)
    sims = np.empty((depth, n), np.float32)
    for lo in range(0, n, batch):
        unit = normalise_rows(x[lo : lo + batch])
        if hier.cells is None:
            first = _nearest(unit, hier.centroids[0])[0]
        else:
            first = _nearest_within(unit, hier.centroids[0], hier.cells)[0]
        for level, lab in enumerate(hier.labels(first)):
            labels[level, lo : lo + batch] = lab
            sims[level, lo : lo + batch] = np.einsum(
                "nd,nd->n", unit, hier.centroids[level][lab]
            ).astype(np.float32)
    return labels, sims


def stream_hierarchy(
    chunks: Iterable[Chunk],
    ids: np.ndarray,
    hier: Hierarchy,
    *,
    imap: ShardMap | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`assign_hierarchy` of rows that arrive as ``(ids, vectors)`` chunks in any order
    (e.g. read from the stored parts, :data:`.ivf.READ_BATCH` rows each), one chunk at a time:
    each chunk (float16 when that is exact) is a shard, assigned here or, with ``imap``, as a
    cluster task (the same shards either way, so the same result). Chunks are not joined into
    larger shards: at 10^6 x 768, shards of 262,144 rows cost 2.1 GB more peak memory.
    Returns ``(labels, sims)`` with one column per id of the sorted ``ids``.

    Raises:
        RuntimeError: when the chunks do not hold each of ``ids`` exactly once."""
    shards = ((ids, _half_if_exact(vectors)) for ids, vectors in chunks)
    results = (
        imap(_assign_shard, shards, (hier,))
        if imap is not None
        else (_assign_shard(s, hier) for s in shards)
    )
    return _placed(results, ids, len(hier.centroids))


def read_hierarchy(
    reader: ShardReader,
    ids: np.ndarray,
    hier: Hierarchy,
    imap: ShardMap,
    rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`stream_hierarchy` with shards that the tasks read themselves: descriptors of
    about ``rows`` (default :data:`.ivf.READ_BATCH`) stored rows (``reader.shards``), each task reading its rows from storage and
    assigning them chunk by chunk (:func:`_assign_read`). ``reader.read`` gives the chunks of the
    driver's stream, and each chunk is assigned as :func:`stream_hierarchy` assigns it, so the
    labels and similarities are the same, bit for bit; the driver reads no vector (it receives
    the labels and similarities only).

    Raises:
        RuntimeError: when the stored rows do not hold each of ``ids`` exactly once."""
    results = imap(_assign_read, reader.shards(rows or READ_BATCH), (hier, reader))
    return _placed(results, ids, len(hier.centroids))


def _placed(
    results: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], ids: np.ndarray, depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, sims) with one column per id of the sorted ``ids``, from shard results
    ``(shard ids, labels, sims)`` in any order."""
    labels = np.empty((depth, ids.size), np.int32)
    sims = np.empty((depth, ids.size), np.float32)
    seen = 0
    for shard_ids, lab, sim in results:
        pos = positions(ids, shard_ids)
        labels[:, pos], sims[:, pos] = lab, sim
        seen += pos.size
    if seen != ids.size:
        raise RuntimeError(CHANGED)
    return labels, sims


def _assign_read(
    shard: object, hier: Hierarchy, reader: ShardReader
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A task of :func:`read_hierarchy`: (ids, labels, sims) of the rows of the descriptor
    ``shard``, each chunk read from storage and assigned as one shard of
    :func:`stream_hierarchy` (the same numbers)."""
    depth = len(hier.centroids)
    done = [_assign_shard((i, _half_if_exact(v)), hier) for i, v in reader.read(shard)]
    if not done:
        empty = np.zeros((depth, 0), np.int32)
        return np.zeros(0, np.int64), empty, empty.astype(np.float32)
    return (
        np.concatenate([d[0] for d in done]),
        np.concatenate([d[1] for d in done], axis=1),
        np.concatenate([d[2] for d in done], axis=1),
    )


def _half_if_exact(vectors: np.ndarray) -> np.ndarray:
    """float16 when that loses nothing: half the bytes held and shipped to a task."""
    half = exact_half(vectors)
    return vectors if half is None else half


def _assign_shard(shard: Chunk, hier: Hierarchy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One shard of :func:`stream_hierarchy`: (ids, labels, sims)."""
    ids, vectors = shard
    labels, sims = assign_hierarchy(vectors, hier)
    return ids, labels, sims


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

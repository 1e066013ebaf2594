"""Flags from the global embeddings: semantic near-duplicates and k-NN outliers.

Both read stored vectors (``embeddings_clip`` / ``embeddings_dino``), never pixels, and are
the flag rules of the ``embed`` family (:mod:`exokiratory.passes.embed.flag_rules`):

* Semantic near-duplicates (SemDeDup, Abbas et al. 2023): images whose embeddings have cosine
  similarity >= ``semantic_duplicate_threshold`` (0.95), in ``semantic_duplicate_space``
  (``clip``; the other space when only it exists). Candidate pairs are searched inside k-means
  clusters of about ``semantic_duplicate_cluster_size`` (1000) images, as in SemDeDup, but each
  image is also compared with the members of its second-nearest cluster, so a pair split by a
  cluster boundary is still found. Every candidate pair is then re-checked exactly (float64
  cosine of the stored vectors) before it joins a group. Groups are connected components; the
  canonical is chosen by the same quality rule as the hash near-duplicates (largest, sharpest,
  largest file, smallest id). Columns: ``semantic_dup_group_id``, ``semantic_dup_group_size``,
  ``is_semantic_dup_canonical``, ``semantic_similarity_to_canonical``, and
  ``is_semantic_duplicate`` (a member that is not the canonical). They catch what perceptual
  hashes cannot: heavy crops, re-shoots of the same scene, screenshots of a photo.
* Embeddings of a random-weight ``tiny`` model (tests, the offline demo) give no flags.
* Embedding outliers: ``knn_distance_<space>`` = mean cosine distance (1 - cos) to the
  ``embedding_outlier_k`` (10) nearest other images: exact (FAISS flat inner product) up to
  :data:`EXACT_KNN_MAX` images; above it, the k nearest among the members of the image's
  nearest and second-nearest k-means clusters (the clusters of the duplicate search, of
  ``semantic_duplicate_cluster_size`` images, computed in the same pass over the clusters; an
  image with no other member in them gets NaN), then the high tail (robust z > 2) searched
  again in its 16 nearest clusters (:func:`refine_tail`). On 2 x 10^5 clustered 768-d vectors
  (``bench/embedding_flags_scale.py``; 10^4 evaluated rows) it found 99.25% of the exact 10
  neighbours, distances at Pearson 0.998 / Spearman 0.998 with the exact ones, p99 excess
  0.0024 (without the tail search: 98.7%, Pearson 0.37, a few rows of small groups pushed to
  distance 0.89 from 0.25, i.e. false outliers). A FAISS IVF-SQ8 (nprobe 16) found 97.0% with
  Pearson 1.000 but holds ``d + 8`` bytes per vector (7.8 GB at 10^7 x 768), beyond the 8 GB
  target; the two-cluster search holds ``k x 4`` bytes per vector. ``embedding_outlier_score`` = the largest
  robust z-score (median / MAD, high side only: :func:`exokiratory.core.robust.high_side_robust_z`)
  over the spaces present; ``is_embedding_outlier`` when it exceeds
  ``embedding_outlier_threshold`` (4.0) in a collection of at least ``outlier_min_images``.

Memory (n images, d dimensions): the vectors are never held whole. :func:`load_spaces` streams
each space into a float16 temporary file (:mod:`exokiratory.search.spill`: ``n x d x 2`` bytes
of local disk, removed when the derivation ends or the process dies), and every computation
reads row batches from it: the k-means fit a training sample of at most
``clustering.TRAIN_SAMPLE_MAX`` rows (float32), the nearest-two-centroids pass
:data:`TOP2_ELEMS` similarities at a time, the duplicate and k-NN search one cluster's rows and
members at a time (tiles of :data:`ROW_TILE` x :data:`MEMBER_TILE`). What grows with n is a few
int64 / float64 numbers per image (cluster numbers, quality keys, labels) and, above
:data:`EXACT_KNN_MAX`, the running k nearest similarities (``n x k`` float32: 400 MB at 10^7,
k = 10). The exact k-NN holds at most :data:`EXACT_KNN_MAX` float32 vectors in its FAISS index
(600 MB at 768-d).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa

from exokiratory.core.hashing import update_joined
from exokiratory.core.robust import high_side_robust_z
from exokiratory.models.registry import TINY_PREFIX
from exokiratory.passes.flags.neardup import choose_canonicals, connected_components
from exokiratory.search.clustering import (
    choose_k,
    fit_kmeans,
    normalise_rows,
    training_positions,
)
from exokiratory.search.spill import Spill, spill_embeddings

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog
    from exokiratory.core.storage import Storage

log = logging.getLogger(__name__)

SPACES = ("clip", "dino")
#: exact k-NN (brute force) up to this many vectors; the two-cluster search above
EXACT_KNN_MAX = 200_000
#: rows whose similarities to the semantic-duplicate clusters are computed at once (at most)
TOP2_ROWS = 16_384
#: similarities (rows x clusters) of the nearest-two-centroids pass held at once
TOP2_ELEMS = 16_777_216
#: rows of a cluster and members compared at once (a 128 MB float32 similarity tile)
ROW_TILE = 4096
MEMBER_TILE = 8192
#: vectors gathered at a time by the exact re-check, the similarities to the canonicals, the
#: k-means training sample and the exact k-NN index
GATHER_BATCH = 65_536
#: queries of the exact k-NN searched at once (a multiple of FAISS's 4096-query block, so
#: every similarity is the one a single search gives)
KNN_QUERY_BATCH = 16_384
KMEANS_NITER = 25
#: above EXACT_KNN_MAX, rows whose k-NN distance has a robust z above this are searched again
#: in up to REFINE_PROBE nearest clusters (:func:`refine_tail`)
REFINE_Z = 2.0
REFINE_PROBE = 16

SEMANTIC_DUP_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("semantic_dup_group_id", pa.string()),
        pa.field("semantic_dup_group_size", pa.int32()),
        pa.field("is_semantic_dup_canonical", pa.bool_()),
        pa.field("semantic_similarity_to_canonical", pa.float32()),
    ]
)


class Rows(Protocol):
    """Vectors read in batches: ``read(lo, hi)`` and ``gather(rows)`` give float32 rows."""

    @property
    def n(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def read(self, lo: int, hi: int) -> np.ndarray: ...

    def gather(self, rows: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ArrayRows:
    """An in-memory matrix, rows used as given (as float32)."""

    x: np.ndarray

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])

    def read(self, lo: int, hi: int) -> np.ndarray:
        return np.ascontiguousarray(self.x[lo:hi], np.float32)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.x[rows], np.float32)


@dataclass(frozen=True)
class SpillRows:
    """A :class:`~exokiratory.search.spill.Spill` of stored vectors, rows normalised as read
    (the same float32 rows as normalising the whole float32 matrix: normalisation is per row)."""

    spill: Spill

    @property
    def n(self) -> int:
        return self.spill.n

    @property
    def dim(self) -> int:
        return self.spill.dim

    def read(self, lo: int, hi: int) -> np.ndarray:
        return normalise_rows(self.spill.read(lo, hi))

    def gather(self, rows: np.ndarray) -> np.ndarray:
        return normalise_rows(self.spill.gather(rows))


def as_rows(vectors: np.ndarray | Spill) -> Rows:
    """The :class:`Rows` of an in-memory matrix or of a spill."""
    if isinstance(vectors, Spill):
        return SpillRows(vectors)
    return ArrayRows(np.atleast_2d(np.asarray(vectors)))


@dataclass(frozen=True, eq=False)
class SpaceVectors:
    """The stored embeddings of one space: image ids (Arrow strings; a list is converted) and
    the vectors (a :class:`~exokiratory.search.spill.Spill` of the stored values, or an
    in-memory matrix of unit rows). ``memo`` keeps what the two flag rules share (the clusters,
    the duplicate pairs, the k-NN distances, the cache digest)."""

    space: str
    ids: pa.Array
    vectors: np.ndarray | Spill
    memo: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.ids, pa.Array):
            ids = self.ids.combine_chunks() if isinstance(self.ids, pa.ChunkedArray) else self.ids
            object.__setattr__(self, "ids", pa.array(ids, pa.string()))

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def rows(self) -> Rows:
        return as_rows(self.vectors)

    def close(self) -> None:
        """Remove the spill file now (else when garbage-collected)."""
        if isinstance(self.vectors, Spill):
            self.vectors.close()


def load_spaces(catalog: Catalog) -> dict[str, SpaceVectors]:
    """Every embedding space with stored vectors (of a single model each), spilled to a
    temporary float16 file (:func:`exokiratory.search.spill.spill_embeddings`)."""
    from exokiratory.search import indices

    out = {}
    for space in SPACES:
        if f"embeddings_{space}" not in catalog.views:
            continue
        try:
            keys = indices._stored_keys(catalog, space, False)
        except ValueError as exc:  # no rows yet, or mixed models
            log.debug("flags: no usable %s embeddings (%s)", space, exc)
            continue
        if keys[2].startswith(TINY_PREFIX):
            log.info(
                "flags: the %s embeddings come from a random-weight tiny model; no semantic "
                "flags from them (their similarities mean nothing)",
                space,
            )
            continue
        spilled = spill_embeddings(catalog, space, keys=keys)
        out[space] = SpaceVectors(space, spilled.ids, spilled.spill)
    return out


# -- clusters -----------------------------------------------------------------------------


def kmeans_centroids(rows: Rows, k: int, seed: int = 0) -> np.ndarray:
    """float32 unit centroids of the spherical k-means of the rows: the fit of
    :func:`exokiratory.search.clustering.fit_kmeans` on its seeded training rows, gathered in
    batches (the same fit as on every row; its assignment pass is :func:`two_nearest`)."""
    sample = training_positions(rows.n, seed)
    train = np.empty((sample.size, rows.dim), np.float32)
    for lo in range(0, sample.size, GATHER_BATCH):
        train[lo : lo + GATHER_BATCH] = rows.gather(sample[lo : lo + GATHER_BATCH])
    return fit_kmeans(train, k, seed=seed, niter=KMEANS_NITER)[0]


def two_nearest(rows: Rows, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nearest and second-nearest centroid of each row (ties: the lower number), at most
    :data:`TOP2_ELEMS` similarities at a time (one n x k matrix and its argsort were 12 GB at
    10^6 rows, k = 1000)."""
    n, k = rows.n, centroids.shape[0]
    step = max(1, min(TOP2_ROWS, TOP2_ELEMS // max(k, 1)))
    first = np.empty(n, np.int64)
    second = np.empty(n, np.int64)
    at = np.arange(step)
    for lo in range(0, n, step):
        sims = rows.read(lo, lo + step) @ centroids.T
        m = sims.shape[0]
        best = np.argmax(sims, axis=1)
        sims[at[:m], best] = -np.inf
        first[lo : lo + m], second[lo : lo + m] = best, np.argmax(sims, axis=1)
    return first, second


@dataclass(frozen=True)
class Clusters:
    """Each row's nearest (``first``) and second-nearest (``second``) of ``k`` centroids; the
    rows of each cluster (``by_first``, sorted within a cluster, cut by ``first_bounds``) and
    the rows whose second-nearest it is (``by_second`` / ``second_bounds``)."""

    k: int
    first: np.ndarray
    second: np.ndarray
    centroids: np.ndarray | None = None

    @property
    def by_first(self) -> np.ndarray:
        return np.argsort(self.first, kind="stable")

    @property
    def by_second(self) -> np.ndarray:
        return np.argsort(self.second, kind="stable")

    def cluster_members(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows of cluster c, its members: those rows and the rows whose second-nearest it is)
        for each non-empty cluster, in cluster order; both sorted."""
        by_first, by_second = self.by_first, self.by_second
        fb = np.searchsorted(self.first[by_first], np.arange(self.k + 1))
        sb = np.searchsorted(self.second[by_second], np.arange(self.k + 1))
        for c in range(self.k):
            own = by_first[fb[c] : fb[c + 1]]
            if own.size == 0:
                continue
            if self.k == 1:
                yield own, own
            else:
                yield own, np.union1d(own, by_second[sb[c] : sb[c + 1]])


def find_clusters(rows: Rows, cluster_size: int, seed: int = 0) -> Clusters:
    """The k-means clusters of about ``cluster_size`` rows and each row's two nearest."""
    n = rows.n
    k = choose_k(n, cluster_size, k_min=1)
    if k == 1:
        zeros = np.zeros(n, np.int64)
        return Clusters(1, zeros, zeros)
    centroids = kmeans_centroids(rows, k, seed)
    first, second = two_nearest(rows, centroids)
    return Clusters(k, first, second, centroids)


# -- the pass over the clusters ------------------------------------------------------------


class TopK:
    """The ``k`` largest similarities seen for each of ``n`` rows (float32, -inf: none yet)."""

    def __init__(self, n: int, k: int) -> None:
        self.k = k
        self.best = np.full((n, k), -np.inf, np.float32)

    def add_columns(self, own: np.ndarray, members: np.ndarray, sims: np.ndarray) -> None:
        """Offer each member (column of ``sims``) its similarities to the rows ``own``
        (a member's similarity to itself excluded)."""
        j = np.searchsorted(members, own)
        hit = (j < members.size) & (members[np.minimum(j, members.size - 1)] == own)
        sims[np.flatnonzero(hit), j[hit]] = -np.inf
        kk = min(self.k, sims.shape[0])
        top = sims if sims.shape[0] == kk else np.partition(sims, sims.shape[0] - kk, axis=0)[-kk:]
        cand = np.concatenate([self.best[members], top.T], axis=1)
        self.best[members] = np.partition(cand, cand.shape[1] - self.k, axis=1)[:, -self.k :]

    def add_rows(self, rows: np.ndarray, sims: np.ndarray) -> None:
        """Offer each of ``rows`` (unique) its similarities ``sims`` (one row each)."""
        kk = min(self.k, sims.shape[1])
        top = sims if sims.shape[1] == kk else np.partition(sims, sims.shape[1] - kk, axis=1)
        cand = np.concatenate([self.best[rows], top[:, -kk:]], axis=1)
        self.best[rows] = np.partition(cand, cand.shape[1] - self.k, axis=1)[:, -self.k :]

    def mean_distances(self) -> np.ndarray:
        """Mean cosine distance (1 - similarity) to the neighbours found (NaN: none)."""
        out = np.empty(self.best.shape[0], np.float64)
        for lo in range(0, out.size, GATHER_BATCH):
            b = self.best[lo : lo + GATHER_BATCH]
            found = np.isfinite(b)
            count = found.sum(1)
            total = np.where(found, 1.0 - b, 0.0).sum(1, dtype=np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[lo : lo + GATHER_BATCH] = np.where(count > 0, total / count, np.nan)
        return out


@dataclass(frozen=True)
class ClusterScan:
    """What one pass over the clusters found: re-checked duplicate pairs (when a threshold was
    given) and the two-cluster k-NN distances (when ``k`` was given; ``knn_sims``: the ``n x k``
    similarities they average, -inf where fewer were found)."""

    pairs: np.ndarray | None
    knn: np.ndarray | None
    knn_sims: np.ndarray | None = None


def scan_clusters(
    rows: Rows,
    clusters: Clusters,
    threshold: float | None,
    k: int | None,
) -> ClusterScan:
    """One pass over the clusters in order: each cluster's rows against its members (its rows
    and those whose second-nearest it is), tile by tile, gathered from ``rows``. Pairs
    ``(i, j)``, i < j, with float32 cosine >= ``threshold - 1e-3`` are re-checked exactly
    (:func:`exact_recheck`); ``k``: each row's ``k`` nearest among the rows of its two nearest
    clusters."""
    found: list[np.ndarray] = []
    top = TopK(rows.n, k) if k is not None else None
    for own, members in clusters.cluster_members():
        for m_lo in range(0, members.size, MEMBER_TILE):
            mem = members[m_lo : m_lo + MEMBER_TILE]
            xm = rows.gather(mem)
            for r_lo in range(0, own.size, ROW_TILE):
                r = own[r_lo : r_lo + ROW_TILE]
                xr = xm[np.searchsorted(mem, r)] if members.size <= MEMBER_TILE else rows.gather(r)
                sims = xr @ xm.T
                if threshold is not None:
                    ri, mi = np.nonzero(sims >= threshold - 1e-3)  # screen; exact check below
                    i, j = r[ri], mem[mi]
                    keep = i < j
                    found.append(np.stack([i[keep], j[keep]], axis=1))
                if top is not None:
                    top.add_columns(r, mem, sims)
    pairs = None
    if threshold is not None:
        cand = np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 2), np.int64)
        pairs = exact_recheck(rows, cand, threshold)
    if top is None:
        return ClusterScan(pairs, None)
    refine_tail(rows, clusters, top)
    return ClusterScan(pairs, top.mean_distances(), top.best)


def refine_tail(
    rows: Rows, clusters: Clusters, top: TopK, probe: int = REFINE_PROBE, z: float = REFINE_Z
) -> None:
    """Search the rows whose two-cluster k-NN distance is in the high tail (robust z above
    ``z``, or no neighbour found) again among the members of their next nearest clusters (up to
    the ``probe`` nearest): a row of a small group whose centroid is a mixture of many groups
    can have its neighbours' cluster only third or fourth nearest, and would look like an
    outlier (measured: ``bench/embedding_flags_scale.py``)."""
    if clusters.centroids is None or clusters.k <= 2:
        return
    dist = top.mean_distances()
    tail = np.flatnonzero(np.isnan(dist) | (high_side_robust_z(dist) > z))
    if tail.size == 0:
        return
    p = min(probe, clusters.k)
    who, where = [], []
    step = max(1, TOP2_ELEMS // clusters.k)
    for lo in range(0, tail.size, step):
        t = tail[lo : lo + step]
        sims = rows.gather(t) @ clusters.centroids.T
        near = np.argpartition(-sims, p - 1, axis=1)[:, :p]
        new = (near != clusters.first[t][:, None]) & (near != clusters.second[t][:, None])
        who.append(np.broadcast_to(t[:, None], near.shape)[new])
        where.append(near[new])
    q_rows, q_clusters = np.concatenate(who), np.concatenate(where)
    order = np.argsort(q_clusters, kind="stable")  # rows stay ascending within a cluster
    q_rows, q_clusters = q_rows[order], q_clusters[order]
    by_first = clusters.by_first
    fb = np.searchsorted(clusters.first[by_first], np.arange(clusters.k + 1))
    qb = np.searchsorted(q_clusters, np.arange(clusters.k + 1))
    log.info("k-NN: %d tail rows searched again in up to %d clusters", tail.size, p)
    for c in np.unique(q_clusters).tolist():
        members = by_first[fb[c] : fb[c + 1]]
        if members.size == 0:
            continue
        q = q_rows[qb[c] : qb[c + 1]]
        for m_lo in range(0, members.size, MEMBER_TILE):
            xm = rows.gather(members[m_lo : m_lo + MEMBER_TILE])
            for q_lo in range(0, q.size, ROW_TILE):
                rq = q[q_lo : q_lo + ROW_TILE]
                top.add_rows(rq, rows.gather(rq) @ xm.T)


def candidate_pairs(
    x: np.ndarray | Spill | Rows, threshold: float, cluster_size: int, seed: int = 0
) -> np.ndarray:
    """Pairs ``(i, j)``, i < j, with cosine >= ``threshold``, searched within clusters (each
    row against the members of its nearest and second-nearest clusters), re-checked exactly."""
    rows = _rows(x)
    if rows.n < 2:
        return np.zeros((0, 2), np.int64)
    pairs = scan_clusters(rows, find_clusters(rows, cluster_size, seed), threshold, None).pairs
    return pairs if pairs is not None else np.zeros((0, 2), np.int64)


def _rows(x: np.ndarray | Spill | Rows) -> Rows:
    return as_rows(x) if isinstance(x, np.ndarray | Spill) else x


def exact_recheck(x: np.ndarray | Spill | Rows, pairs: np.ndarray, threshold: float) -> np.ndarray:
    """The pairs whose float64 cosine really is >= ``threshold`` (gathered in batches)."""
    if len(pairs) == 0:
        return np.asarray(pairs, np.int64).reshape(-1, 2)
    rows = _rows(x)
    keep = np.empty(len(pairs), bool)
    for lo in range(0, len(pairs), GATHER_BATCH):
        p = pairs[lo : lo + GATHER_BATCH]
        a = rows.gather(p[:, 0]).astype(np.float64)
        b = rows.gather(p[:, 1]).astype(np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        keep[lo : lo + GATHER_BATCH] = cos >= threshold
    return np.asarray(pairs[keep], np.int64)


def space_scan(
    sv: SpaceVectors, cluster_size: int, threshold: float | None = None, k: int | None = None
) -> ClusterScan:
    """:func:`scan_clusters` of a space, remembered in ``sv.memo`` (the clusters too): the
    duplicate rule and the outlier rule share one pass (and one clustering) per space."""
    cl_key = ("clusters", cluster_size)
    p_key, k_key = ("pairs", cluster_size, threshold), ("knn", cluster_size, k)
    want_pairs = threshold is not None and p_key not in sv.memo
    want_knn = k is not None and k_key not in sv.memo
    if (want_pairs or want_knn) and sv.n >= 2:
        if cl_key not in sv.memo:
            sv.memo[cl_key] = find_clusters(sv.rows, cluster_size)
        scan = scan_clusters(
            sv.rows, sv.memo[cl_key], threshold if want_pairs else None, k if want_knn else None
        )
        if want_pairs:
            sv.memo[p_key] = scan.pairs
        if want_knn:
            sv.memo[k_key] = scan.knn
    empty = np.zeros((0, 2), np.int64)
    return ClusterScan(
        sv.memo.get(p_key, empty) if threshold is not None else None,
        sv.memo.get(k_key, np.full(sv.n, np.nan)) if k is not None else None,
    )


def semantic_duplicates(
    sv: SpaceVectors,
    threshold: float,
    cluster_size: int,
    quality: dict[str, np.ndarray] | None = None,
    knn_k: int | None = None,
) -> pa.Table:
    """Groups of semantic near-duplicates (rows only for images in a group of 2 or more).
    ``knn_k``: also compute the two-cluster k-NN distances in the same pass (kept in
    ``sv.memo`` for :func:`space_knn`)."""
    pairs = space_scan(sv, cluster_size, threshold, knn_k).pairs
    if pairs is None or len(pairs) == 0:
        return SEMANTIC_DUP_SCHEMA.empty_table()
    n, ids = sv.n, sv.ids
    labels = connected_components(n, pairs[:, 0], pairs[:, 1])
    sizes = np.bincount(labels, minlength=n)[labels]
    canon = choose_canonicals(ids, labels, quality)
    keep = np.flatnonzero(sizes >= 2)
    sim = _row_dots(sv.rows, keep, canon[keep])
    return pa.table(
        {
            "image_id": ids.take(pa.array(keep, pa.int64())),
            "semantic_dup_group_id": ids.take(pa.array(canon[keep], pa.int64())),
            "semantic_dup_group_size": sizes[keep].astype(np.int32),
            "is_semantic_dup_canonical": canon[keep] == keep,
            "semantic_similarity_to_canonical": np.clip(sim, -1, 1).astype(np.float32),
        },
        schema=SEMANTIC_DUP_SCHEMA,
    )


def _row_dots(rows: Rows, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 dot product of row ``a[i]`` with row ``b[i]``, gathered in batches."""
    out = np.empty(a.size, np.float32)
    for lo in range(0, a.size, GATHER_BATCH):
        xa = rows.gather(a[lo : lo + GATHER_BATCH])
        xb = rows.gather(b[lo : lo + GATHER_BATCH])
        out[lo : lo + GATHER_BATCH] = np.einsum("nd,nd->n", xa, xb)
    return out


# -- k-NN distances ------------------------------------------------------------------------


def knn_distance(x: np.ndarray | Spill | Rows, k: int, cluster_size: int = 1000) -> np.ndarray:
    """Mean cosine distance of each row to its ``k`` nearest other rows (NaN when n <= 1):
    exact up to :data:`EXACT_KNN_MAX` rows, else among the rows of its two nearest k-means
    clusters of about ``cluster_size`` rows."""
    rows = _rows(x)
    if rows.n <= 1:
        return np.full(rows.n, np.nan)
    if rows.n <= EXACT_KNN_MAX:
        return exact_knn_distance(rows, min(k, rows.n - 1))
    knn = scan_clusters(rows, find_clusters(rows, cluster_size), None, k).knn
    return knn if knn is not None else np.full(rows.n, np.nan)


def space_knn(sv: SpaceVectors, k: int, cluster_size: int) -> np.ndarray:
    """:func:`knn_distance` of a space; above :data:`EXACT_KNN_MAX` from (or into) the pass
    over the clusters shared with the duplicate search (:func:`space_scan`)."""
    if sv.n <= EXACT_KNN_MAX:
        return knn_distance(sv.rows, k, cluster_size)
    knn = space_scan(sv, cluster_size, None, k).knn
    return knn if knn is not None else np.full(sv.n, np.nan)


def exact_knn_distance(rows: Rows, k: int) -> np.ndarray:
    """Exact :func:`knn_distance` (``k`` < n): a FAISS flat inner-product index filled and
    searched in batches (the same numbers as one search of every row)."""
    import faiss

    index = faiss.IndexFlatIP(rows.dim)
    for lo in range(0, rows.n, GATHER_BATCH):
        index.add(rows.read(lo, lo + GATHER_BATCH))
    out = np.empty(rows.n, np.float64)
    # FAISS searches fewer than threshold / d queries without BLAS (other rounding)
    smallest = faiss.cvar.distance_compute_blas_threshold // rows.dim + 1
    for lo, hi in _query_batches(rows.n, smallest):
        sims, nbrs = index.search(rows.read(lo, hi), k + 1)
        out[lo:hi] = _mean_distance(sims, nbrs, np.arange(lo, hi), k)
    return out


def _query_batches(n: int, smallest: int) -> Iterator[tuple[int, int]]:
    """Ranges of a multiple of :data:`KNN_QUERY_BATCH` rows, at least ``smallest``; a last one
    of fewer than ``smallest`` rows is merged into the one before."""
    step = KNN_QUERY_BATCH * -(-smallest // KNN_QUERY_BATCH)
    starts = list(range(0, n, step))
    if len(starts) > 1 and n - starts[-1] < smallest:
        starts.pop()
    for i, lo in enumerate(starts):
        yield lo, (starts[i + 1] if i + 1 < len(starts) else n)


def _mean_distance(sims: np.ndarray, nbrs: np.ndarray, self_rows: np.ndarray, k: int) -> np.ndarray:
    """Mean of 1 - similarity over the first ``k`` hits that are not the row itself (with exact
    ties the row may not come first)."""
    not_self = nbrs != self_rows[:, None]
    not_self &= nbrs >= 0
    rank = np.cumsum(not_self, axis=1)
    use = not_self & (rank <= k)
    dist = np.where(use, 1.0 - sims, 0.0).sum(1) / np.maximum(use.sum(1), 1)
    return np.asarray(dist, np.float64)


class KnnCache:
    """k-NN distances depend only on the vectors, k and the method, and are the costly step of
    the embedding flags (41 s at 10^5 vectors, bench/embedding_derivations.py): they are kept in
    ``<folder>/<digest>.parquet`` (digest of k, the ids and the unit vectors' float32 bytes,
    computed batch by batch; above :data:`EXACT_KNN_MAX` the method and cluster size too), so
    changing a flag threshold re-derives in seconds. Only the newest entry per space is kept."""

    def __init__(self, storage: Storage, folder: str):
        self.storage = storage
        self.folder = folder

    def path(self, sv: SpaceVectors, k: int, cluster_size: int = 1000) -> str:
        """The cache file of these vectors (its digest remembered in ``sv.memo``)."""
        key = ("knn-digest", k, cluster_size if sv.n > EXACT_KNN_MAX else None)
        if key not in sv.memo:
            sv.memo[key] = _knn_digest(sv, k, cluster_size)
        return f"{self.folder}/{sv.space}-{sv.memo[key]}.parquet"

    def has(self, sv: SpaceVectors, k: int, cluster_size: int = 1000) -> bool:
        return self.storage.exists(self.path(sv, k, cluster_size))

    def distances(self, sv: SpaceVectors, k: int, cluster_size: int = 1000) -> np.ndarray:
        rel = self.path(sv, k, cluster_size)
        if self.storage.exists(rel):
            return self.storage.read_parquet(rel).column("knn_distance").to_numpy()
        dist = space_knn(sv, k, cluster_size)
        for old in self.storage.list_files(self.folder, ".parquet"):
            if old.rsplit("/", 1)[-1].startswith(f"{sv.space}-"):
                self.storage.remove(old)
        self.storage.write_parquet_atomic(rel, pa.table({"knn_distance": dist}))
        return dist


def _knn_digest(sv: SpaceVectors, k: int, cluster_size: int) -> str:
    """Up to :data:`EXACT_KNN_MAX` rows the digest of the whole-matrix version (``knn-v1``:
    k, the NUL-joined ids, the unit float32 rows' bytes), so its cache entries stay valid."""
    prefix = "knn-v1" if sv.n <= EXACT_KNN_MAX else f"knn-v2-clusters{cluster_size}"
    h = hashlib.sha256(f"{prefix}:{k}:{sv.space}:".encode())
    update_joined(h, sv.ids, "\0")
    rows = sv.rows
    for lo in range(0, rows.n, GATHER_BATCH):
        h.update(rows.read(lo, lo + GATHER_BATCH).data.cast("B"))
    return h.hexdigest()[:16]


def frame_rows(frame_ids: pa.Array | pa.ChunkedArray, ids: pa.Array | Sequence[str]) -> np.ndarray:
    """The position of each of ``ids`` in ``frame_ids`` (-1: absent), vectorised."""
    import pyarrow.compute as pc

    value_set = frame_ids.combine_chunks() if isinstance(frame_ids, pa.ChunkedArray) else frame_ids
    pos = pc.index_in(ids, value_set=value_set)
    return np.asarray(pc.fill_null(pos, -1).to_numpy(zero_copy_only=False), np.int64)

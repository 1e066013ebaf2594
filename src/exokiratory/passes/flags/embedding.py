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
  ``embedding_outlier_k`` (10) nearest other images, exact (FAISS flat inner product) up to
  ``EXACT_KNN_MAX`` images, IVF beyond; ``embedding_outlier_score`` = the largest robust
  z-score (median / MAD, high side only: :func:`exokiratory.core.robust.high_side_robust_z`)
  over the spaces present; ``is_embedding_outlier`` when
  it exceeds ``embedding_outlier_threshold`` (4.0) in a collection of at least
  ``outlier_min_images``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from exokiratory.models.registry import TINY_PREFIX
from exokiratory.passes.flags.neardup import choose_canonicals, connected_components
from exokiratory.search.clustering import choose_k, normalise_rows, spherical_kmeans

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog
    from exokiratory.core.storage import Storage

log = logging.getLogger(__name__)

SPACES = ("clip", "dino")
#: exact k-NN (brute force) up to this many vectors; an IVF index above
EXACT_KNN_MAX = 200_000
#: rows whose similarities to the semantic-duplicate clusters are computed at once
TOP2_ROWS = 16_384

SEMANTIC_DUP_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("semantic_dup_group_id", pa.string()),
        pa.field("semantic_dup_group_size", pa.int32()),
        pa.field("is_semantic_dup_canonical", pa.bool_()),
        pa.field("semantic_similarity_to_canonical", pa.float32()),
    ]
)


@dataclass(frozen=True)
class SpaceVectors:
    """The stored embeddings of one space: image ids and unit vectors (float32)."""

    space: str
    ids: list[str]
    vectors: np.ndarray


def load_spaces(catalog: Catalog) -> dict[str, SpaceVectors]:
    """Every embedding space with stored vectors (of a single model each)."""
    from exokiratory.search.indices import load_embeddings

    out = {}
    for space in SPACES:
        if f"embeddings_{space}" not in catalog.views:
            continue
        try:
            vectors, _idx, ids, model = load_embeddings(catalog, space)
        except ValueError as exc:  # no rows yet, or mixed models
            log.debug("flags: no usable %s embeddings (%s)", space, exc)
            continue
        if model.startswith(TINY_PREFIX):
            log.info(
                "flags: the %s embeddings come from a random-weight tiny model; no semantic "
                "flags from them (their similarities mean nothing)",
                space,
            )
            continue
        out[space] = SpaceVectors(space, ids, normalise_rows(vectors))
    return out


def candidate_pairs(
    x: np.ndarray, threshold: float, cluster_size: int, seed: int = 0
) -> np.ndarray:
    """Pairs ``(i, j)``, i < j, with cosine >= ``threshold``, searched within clusters (each
    row against the members of its nearest and second-nearest clusters), re-checked exactly."""
    n = x.shape[0]
    if n < 2:
        return np.zeros((0, 2), np.int64)
    k = choose_k(n, cluster_size, k_min=1)
    if k == 1:
        first = np.zeros(n, np.int64)
        second = first
    else:
        first, second = _two_nearest(x, spherical_kmeans(x, k, seed=seed).centroids)
    found = []
    for c in range(k):
        rows = np.flatnonzero(first == c)
        if rows.size == 0:
            continue
        members = np.union1d(rows, np.flatnonzero(second == c)) if k > 1 else rows
        s = x[rows] @ x[members].T
        ri, mi = np.nonzero(s >= threshold - 1e-3)  # float32 screen, exact check below
        i, j = rows[ri], members[mi]
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], axis=1))
    pairs = np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 2), np.int64)
    return exact_recheck(x, pairs, threshold)


def _two_nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nearest and second-nearest centroid of each row, :data:`TOP2_ROWS` rows at a time
    (one n x k similarity matrix and its argsort were 12 GB at 10^6 rows, k = 1000)."""
    n = x.shape[0]
    first = np.empty(n, np.int64)
    second = np.empty(n, np.int64)
    for lo in range(0, n, TOP2_ROWS):
        sims = x[lo : lo + TOP2_ROWS] @ centroids.T
        top2 = np.argsort(-sims, axis=1, kind="stable")[:, :2]
        first[lo : lo + TOP2_ROWS], second[lo : lo + TOP2_ROWS] = top2[:, 0], top2[:, 1]
    return first, second


def exact_recheck(x: np.ndarray, pairs: np.ndarray, threshold: float) -> np.ndarray:
    """The pairs whose float64 cosine really is >= ``threshold``."""
    if len(pairs) == 0:
        return pairs.astype(np.int64)
    a = x[pairs[:, 0]].astype(np.float64)
    b = x[pairs[:, 1]].astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return pairs[cos >= threshold].astype(np.int64)


def semantic_duplicates(
    sv: SpaceVectors,
    threshold: float,
    cluster_size: int,
    quality: dict[str, np.ndarray] | None = None,
) -> pa.Table:
    """Groups of semantic near-duplicates (rows only for images in a group of 2 or more)."""
    pairs = candidate_pairs(sv.vectors, threshold, cluster_size)
    ids = np.array(sv.ids, dtype=str)
    if len(pairs) == 0:
        return SEMANTIC_DUP_SCHEMA.empty_table()
    labels = connected_components(len(ids), pairs[:, 0], pairs[:, 1])
    sizes = np.bincount(labels, minlength=len(ids))[labels]
    canon = choose_canonicals(ids, labels, quality)
    keep = np.flatnonzero(sizes >= 2)
    sim = np.einsum("nd,nd->n", sv.vectors[keep], sv.vectors[canon[keep]])
    return pa.table(
        {
            "image_id": ids[keep].tolist(),
            "semantic_dup_group_id": ids[canon[keep]].tolist(),
            "semantic_dup_group_size": sizes[keep].astype(np.int32),
            "is_semantic_dup_canonical": canon[keep] == keep,
            "semantic_similarity_to_canonical": np.clip(sim, -1, 1).astype(np.float32),
        },
        schema=SEMANTIC_DUP_SCHEMA,
    )


def knn_distance(x: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine distance of each row to its ``k`` nearest other rows (NaN when n <= 1)."""
    import faiss

    n, d = x.shape
    if n <= 1:
        return np.full(n, np.nan)
    k = min(k, n - 1)
    x = np.ascontiguousarray(x, np.float32)
    index: Any
    if n <= EXACT_KNN_MAX:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 0
        index.train(x)
        index.nprobe = 16
    index.add(x)
    sims, nbrs = index.search(x, k + 1)
    # drop each row itself (usually the first hit; with exact ties it may come later)
    not_self = nbrs != np.arange(n)[:, None]
    not_self &= nbrs >= 0
    rank = np.cumsum(not_self, axis=1)
    use = not_self & (rank <= k)
    dist = np.where(use, 1.0 - sims, 0.0).sum(1) / np.maximum(use.sum(1), 1)
    return dist.astype(np.float64)


class KnnCache:
    """k-NN distances depend only on the vectors and k, and are the costly step of the
    embedding flags (41 s at 10^5 vectors, bench/embedding_derivations.py): they are kept in
    ``<folder>/<digest>.parquet`` (digest of k, the ids and the vectors' bytes), so changing a
    flag threshold re-derives in seconds. Only the newest entry per space is kept."""

    def __init__(self, storage: Storage, folder: str):
        self.storage = storage
        self.folder = folder

    def distances(self, sv: SpaceVectors, k: int) -> np.ndarray:
        h = hashlib.sha256(f"knn-v1:{k}:{sv.space}:".encode())
        h.update("\0".join(sv.ids).encode())
        h.update(np.ascontiguousarray(sv.vectors).tobytes())
        rel = f"{self.folder}/{sv.space}-{h.hexdigest()[:16]}.parquet"
        if self.storage.exists(rel):
            return self.storage.read_parquet(rel).column("knn_distance").to_numpy()
        dist = knn_distance(sv.vectors, k)
        for old in self.storage.list_files(self.folder, ".parquet"):
            if old.rsplit("/", 1)[-1].startswith(f"{sv.space}-"):
                self.storage.remove(old)
        self.storage.write_parquet_atomic(rel, pa.table({"knn_distance": dist}))
        return dist

"""Motif bags: segment motifs collapsed to one vector per image (pure computation).

For one embedding space, from the segments of the ``motifs`` derivation (each with its motif,
``cluster_id``, and its ``area_fraction`` when the ``segments`` view has it):

* ``motif_ids``: the image's distinct motifs (ascending); ``motif_counts``: its segments per
  motif; ``motif_areas``: the summed ``area_fraction`` of those segments (the area-weighted
  histogram; null without segment geometry). The three lists are aligned (a long format of the
  histogram is one ``unnest`` away, see the README);
* ``tfidf``: aligned with ``motif_ids``, ``count x idf`` L2-normalised per image, with
  ``idf = ln((1 + N) / (1 + df)) + 1`` (``N`` images with a bag, ``df`` images holding the
  motif: scikit-learn's smooth idf), so motifs every image shares weigh little;
* ``infrastructure_share`` / ``foreground_share`` / ``rare_share``: the fraction of the image's
  segments whose motif is infrastructure / foreground / rare (flags of ``motifs_clusters``);
  ``infrastructure_area_share`` / ``foreground_area_share``: the same weighted by area (of the
  area its segments cover);
* ``bag_cluster_id``: spherical k-means of the TF-IDF vectors (reduced to at most ``svd_dims``
  dimensions by a seeded truncated SVD when there are more motifs and images), ``k = choose_k(N,
  bag_cluster_size)``; clusters renumbered by size, largest first. These "segment-semantics"
  clusters are what ``structure_agreement`` compares with the image-embedding clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SegmentMotifs:
    """The clustered segments of one space (row-aligned)."""

    image_row: np.ndarray  # int64 0..n_images-1 (rows of ``image_ids``)
    motif: np.ndarray  # int64 motif (cluster) id, 0..n_motifs-1
    area: np.ndarray | None  # float64 area_fraction, or None without segment geometry
    n_images: int
    n_motifs: int


@dataclass(frozen=True)
class Bags:
    """Per image (CSR-like: the motifs of image i are ``offsets[i]:offsets[i+1]``)."""

    offsets: np.ndarray
    motif: np.ndarray
    count: np.ndarray
    area: np.ndarray | None
    tfidf: np.ndarray
    n_segments: np.ndarray  # per image
    df: np.ndarray  # per motif: images holding it

    @property
    def pair_image(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))


def motif_bags(seg: SegmentMotifs) -> Bags:
    """The bags of every image of ``seg`` (see the module docstring)."""
    k = max(seg.n_motifs, 1)
    keys = seg.image_row.astype(np.int64) * k + seg.motif.astype(np.int64)
    uniq, inverse, count = np.unique(keys, return_inverse=True, return_counts=True)
    img, motif = uniq // k, uniq % k
    area = None
    if seg.area is not None:
        area = np.bincount(inverse, weights=np.nan_to_num(seg.area), minlength=len(uniq))
    offsets = np.searchsorted(img, np.arange(seg.n_images + 1)).astype(np.int64)
    df = np.bincount(motif, minlength=seg.n_motifs).astype(np.int64)
    n_bags = int((np.diff(offsets) > 0).sum())
    idf = np.log((1.0 + n_bags) / (1.0 + df)) + 1.0
    w = count * idf[motif]
    norm = np.sqrt(np.bincount(img, weights=w * w, minlength=seg.n_images))
    tfidf = w / np.where(norm[img] > 0, norm[img], 1.0)
    n_segments = np.bincount(seg.image_row, minlength=seg.n_images).astype(np.int64)
    return Bags(offsets, motif, count.astype(np.int64), area, tfidf, n_segments, df)


def shares(bags: Bags, flag: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Per image: the fraction of its segments (and of their area) whose motif has ``flag``."""
    n = len(bags.offsets) - 1
    img = bags.pair_image
    hit = flag[bags.motif]
    seg_share = np.bincount(img, weights=bags.count * hit, minlength=n) / np.maximum(
        bags.n_segments, 1
    )
    if bags.area is None:
        return seg_share, None
    total = np.bincount(img, weights=bags.area, minlength=n)
    part = np.bincount(img, weights=bags.area * hit, minlength=n)
    return seg_share, np.where(total > 0, part / np.where(total > 0, total, 1.0), np.nan)


def bag_clusters(
    bags: Bags, n_motifs: int, *, cluster_size: int, svd_dims: int, seed: int, niter: int
) -> np.ndarray:
    """``bag_cluster_id`` of every image with a bag (-1 for images without one)."""
    from scipy import sparse

    from exokiratory.search.clustering import choose_k, spherical_kmeans

    n = len(bags.offsets) - 1
    rows = np.flatnonzero(np.diff(bags.offsets) > 0)
    out = np.full(n, -1, np.int32)
    if len(rows) < 2:
        out[rows] = 0
        return out
    x = sparse.csr_matrix((bags.tfidf, (bags.pair_image, bags.motif)), shape=(n, max(n_motifs, 1)))[
        rows
    ]
    if n_motifs > svd_dims + 1 and len(rows) > svd_dims + 1:
        from sklearn.decomposition import TruncatedSVD
        from threadpoolctl import threadpool_limits

        # tall-and-thin QR / SVD: one BLAS thread is as fast, and much faster on a busy machine
        with threadpool_limits(limits=1, user_api="blas"):
            dense = TruncatedSVD(svd_dims, random_state=seed).fit_transform(x)
    else:
        dense = x.toarray()
    k = choose_k(len(rows), cluster_size)
    fit = spherical_kmeans(dense.astype(np.float32), k, seed=seed, niter=niter)
    out[rows] = by_size(fit.assignments)
    return out


def by_size(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered by cluster size (largest first; ties: the earliest member's first)."""
    uniq, inverse = np.unique(labels, return_inverse=True)
    k = len(uniq)
    sizes = np.bincount(inverse, minlength=k)
    first = np.full(k, len(labels), np.int64)
    np.minimum.at(first, inverse, np.arange(len(labels)))
    order = np.lexsort((first, -sizes))
    new = np.empty(k, np.int32)
    new[order] = np.arange(k, dtype=np.int32)
    return new[inverse]

"""Motif co-occurrence: pair counts over images, PMI / NPMI, and a shuffled baseline.

Pure computation over an *incidence* (the distinct ``(image, motif)`` pairs of one embedding
space). For two motifs ``a`` and ``b`` among ``N`` images:

* ``count_a``, ``count_b``: images holding each; ``count``: images holding both;
* ``pmi = ln(count * N / (count_a * count_b))`` and ``npmi = pmi / -ln(count / N)`` (in
  [-1, 1]; 1 when both always occur together; ``npmi = 1`` when ``count = N``);
* the **shuffled baseline**: ``n_shuffles`` samples of a seeded *curveball* chain (Strona et
  al. 2014) over the binary image x motif matrix. A curveball trade pairs two images and
  re-deals, at random, the motifs only one of them holds, so every sample keeps **each
  image's number of motifs and each motif's number of images exactly** (a motif in every image
  stays in every image). Each round pairs every image with a random partner (vectorised);
  ``burn_in`` rounds (10) precede the first sample, ``rounds`` (2) separate the samples.
  ``expected`` and ``expected_std`` are the mean and standard deviation of the pair count over
  the samples;
  ``z_score = (count - expected) / max(expected_std, sqrt(max(expected, 1)))`` (the floor keeps
  a few shuffles with a tiny spread from inflating it), and
  ``p_value = (1 + #{shuffles with count >= observed}) / (1 + n_shuffles)`` (empirical,
  one-sided; its smallest value is ``1 / (1 + n_shuffles)``).

Only pairs of motifs each held by at least ``min_motif_images`` images, and seen together in at
least ``min_pair_images`` images, are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Incidence:
    """Distinct ``(image row, motif)`` pairs of one space (sorted by image, then motif)."""

    image: np.ndarray  # int64, 0..n_images-1
    motif: np.ndarray  # int64, 0..n_motifs-1
    n_images: int
    n_motifs: int

    @classmethod
    def from_pairs(
        cls, image: np.ndarray, motif: np.ndarray, n_images: int, n_motifs: int
    ) -> Incidence:
        keys = np.unique(image.astype(np.int64) * n_motifs + motif.astype(np.int64))
        return cls(keys // max(n_motifs, 1), keys % max(n_motifs, 1), n_images, n_motifs)

    def motif_images(self) -> np.ndarray:
        """Images holding each motif."""
        return np.bincount(self.motif, minlength=self.n_motifs).astype(np.int64)


@dataclass(frozen=True)
class PairCounts:
    """Co-occurrence of motif pairs ``a < b`` (sorted by ``a * n_motifs + b``)."""

    a: np.ndarray
    b: np.ndarray
    count: np.ndarray


def pair_counts(image: np.ndarray, motif: np.ndarray, n_images: int, n_motifs: int) -> PairCounts:
    """Images holding both motifs, for every pair seen together at least once."""
    from scipy import sparse

    if len(image) == 0 or n_motifs < 2:
        empty = np.zeros(0, np.int64)
        return PairCounts(empty, empty, empty)
    x = sparse.csr_matrix(
        (np.ones(len(image), np.int32), (image, motif)), shape=(n_images, n_motifs)
    )
    x.data[:] = 1  # duplicates (a shuffle's collisions) count once
    product = (x.T @ x).tocsr()
    product.sum_duplicates()  # canonical: column indices sorted within each row
    c = product.tocoo()  # row-major: the pair keys a * n_motifs + b come out sorted
    upper = c.row < c.col
    a, b = c.row[upper].astype(np.int64), c.col[upper].astype(np.int64)
    return PairCounts(a, b, c.data[upper].astype(np.int64))


def lookup(pairs: PairCounts, n_motifs: int, keys: np.ndarray) -> np.ndarray:
    """The count of each sorted pair key ``a * n_motifs + b`` in ``pairs`` (0 when absent)."""
    have = pairs.a * n_motifs + pairs.b
    out = np.zeros(len(keys), np.int64)
    if len(have) == 0:
        return out
    pos = np.clip(np.searchsorted(have, keys), 0, len(have) - 1)
    hit = have[pos] == keys
    out[hit] = pairs.count[pos[hit]]
    return out


def curveball_round(inc: Incidence, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One round of curveball trades: every image (but one when their number is odd) trades
    with a random partner; returns the new image of every incidence pair (motifs unchanged)."""
    n = inc.n_images
    n_pairs = n // 2
    perm = rng.permutation(n)
    pair_of = np.full(n, -1, np.int64)
    side_of = np.zeros(n, np.int64)
    pair_of[perm[: 2 * n_pairs]] = np.arange(2 * n_pairs) // 2
    side_of[perm[: 2 * n_pairs]] = np.arange(2 * n_pairs) % 2
    pid, side = pair_of[image], side_of[image]
    key = pid * inc.n_motifs + inc.motif
    order = np.argsort(key)  # only to find equal keys: the sort's stability does not matter
    same = key[order][1:] == key[order][:-1]
    shared = np.zeros(len(key), bool)
    shared[order[1:][same]] = True
    shared[order[:-1][same]] = True
    free = np.flatnonzero((pid >= 0) & ~shared)
    if len(free) == 0:
        return image
    # by pair, in a random order within each pair (pair id + a uniform draw in [0, 1))
    grouped = free[np.argsort(pid[free] + rng.random(len(free)))]  # distinct keys
    pg = pid[grouped]
    n_first = np.bincount(pid[free], weights=side[free] == 0, minlength=n_pairs).astype(np.int64)
    rank = np.arange(len(grouped)) - np.searchsorted(pg, pg)
    new_side = np.where(rank < n_first[pg], 0, 1)
    members = perm[: 2 * n_pairs].reshape(n_pairs, 2)
    out = image.copy()
    out[grouped] = members[pg, new_side]
    return out


def shuffled_counts(
    inc: Incidence, keys: np.ndarray, n_shuffles: int, seed: int, burn_in: int = 10, rounds: int = 2
) -> np.ndarray:
    """Pair counts at ``keys`` in ``n_shuffles`` samples of the curveball chain (shape
    shuffles x keys): image and motif totals kept exactly (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n_shuffles, len(keys)), np.int64)
    image = inc.image
    for _ in range(burn_in):
        image = curveball_round(inc, image, rng)
    for s in range(n_shuffles):
        for _ in range(rounds):
            image = curveball_round(inc, image, rng)
        counts = pair_counts(image, inc.motif, inc.n_images, inc.n_motifs)
        out[s] = lookup(counts, inc.n_motifs, keys)
    return out


@dataclass(frozen=True)
class Cooccurrence:
    """The reported pairs of one space, with their statistics (row-aligned arrays)."""

    a: np.ndarray
    b: np.ndarray
    count: np.ndarray
    count_a: np.ndarray
    count_b: np.ndarray
    n_images: int
    pmi: np.ndarray
    npmi: np.ndarray
    expected: np.ndarray
    expected_std: np.ndarray
    z_score: np.ndarray
    p_value: np.ndarray


def cooccurrence(
    inc: Incidence,
    *,
    min_motif_images: int,
    min_pair_images: int,
    n_shuffles: int,
    seed: int,
) -> Cooccurrence:
    """Pairs and their statistics (see the module docstring)."""
    held = inc.motif_images()
    keep = held[inc.motif] >= min_motif_images
    sub = Incidence(inc.image[keep], inc.motif[keep], inc.n_images, inc.n_motifs)
    pairs = pair_counts(sub.image, sub.motif, sub.n_images, sub.n_motifs)
    sel = pairs.count >= min_pair_images
    a, b, count = pairs.a[sel], pairs.b[sel], pairs.count[sel]
    keys = a * inc.n_motifs + b
    shuf = shuffled_counts(sub, keys, n_shuffles, seed) if n_shuffles else np.zeros((0, len(keys)))
    n = max(inc.n_images, 1)
    ca, cb = held[a], held[b]
    c = count.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(c * n / (ca * cb))
        denom = -np.log(c / n)
        npmi = np.where(denom > 0, pmi / np.where(denom > 0, denom, 1.0), 1.0)
    if n_shuffles:
        expected = shuf.mean(axis=0)
        std = shuf.std(axis=0)
        p_value = (1.0 + (shuf >= count[None, :]).sum(axis=0)) / (1.0 + n_shuffles)
    else:
        expected = ca * cb / n
        std = np.zeros(len(keys))
        p_value = np.full(len(keys), np.nan)
    scale = np.maximum(std, np.sqrt(np.maximum(expected, 1.0)))
    z = (c - expected) / scale
    return Cooccurrence(a, b, count, ca, cb, inc.n_images, pmi, npmi, expected, std, z, p_value)

"""Draw orders: deterministic permutations of a population whose every prefix is a sample.

A sample of size N is the first N images of an order, so a larger sample with the same rule and
seed contains the smaller one, and the same arguments give the same sample. Every random choice
is a hash of (seed, image_idx, ...) (``image_idx`` is frozen forever), not of a position, so
images added later do not reshuffle the relative order of the others.

* :func:`uniform_order`: a seeded random permutation.
* :func:`balanced_order`: balanced hierarchical sampling over a cluster hierarchy, after Vo et al.
  2024 ("Automatic data curation for self-supervised learning: a clustering-based approach"):
  inside each finest cluster the images are in random order; each cluster's sequence is the
  round-robin interleave of its children's sequences (one from each child per round, the
  children in a fresh random order each round, skipping exhausted ones), up to the root. A prefix
  therefore takes equally from every cluster at every level, up to rounding (water-filling:
  small clusters are taken whole, their unused share goes to the larger ones), so dense modes do
  not swamp rare ones.
* :func:`stratified_order`: the same over one level of strata (``equal`` allocation), or a
  systematic interleave that keeps every prefix proportional to the strata (``proportional``).
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective, well-mixed hash of uint64 values."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_keys(seed: int, *columns: np.ndarray | int) -> np.ndarray:
    """One uint64 per row hashing ``seed`` and the given integer columns (or constants)."""
    with np.errstate(over="ignore"):
        h = mix64(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], np.uint64))
        for c in columns:
            h = mix64(h ^ np.asarray(c).astype(np.int64).astype(np.uint64))
    return h


def _positions_in_groups(sorted_groups: np.ndarray) -> np.ndarray:
    """For a sorted group column: each row's 0-based position inside its group."""
    n = len(sorted_groups)
    if n == 0:
        return np.zeros(0, np.int64)
    starts = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
    sizes = np.diff(np.r_[starts, n])
    return np.arange(n, dtype=np.int64) - np.repeat(starts, sizes)


def uniform_order(image_idx: np.ndarray, seed: int) -> np.ndarray:
    """Row indices of ``image_idx`` in a seeded random order."""
    keys = hash_keys(seed, 0, image_idx)
    return np.lexsort((image_idx, keys))


def _rank_within(groups: np.ndarray, keys: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """Each row's position inside its group when the group is sorted by (keys, tie)."""
    order = np.lexsort((tie, keys, groups))
    rank = np.empty(len(groups), np.int64)
    rank[order] = _positions_in_groups(groups[order])
    return rank


def balanced_order(image_idx: np.ndarray, paths: np.ndarray, seed: int) -> np.ndarray:
    """Row indices in balanced hierarchical order. ``paths[i]`` holds row i's cluster ids from
    the coarsest level (column 0) to the finest (last column); ids need only be unique within a
    level. One column is plain stratified sampling with equal allocation."""
    paths = np.asarray(paths, np.int64)
    n = len(image_idx)
    if paths.ndim != 2 or paths.shape[0] != n:
        raise ValueError("paths must be an (n_images, n_levels) array")
    if n == 0:
        return np.zeros(0, np.int64)
    levels = paths.shape[1]
    # inside each finest cluster: random order
    rank = _rank_within(paths[:, -1], hash_keys(seed, 1, image_idx), image_idx)
    order = np.arange(n)
    for j in range(levels - 1, -1, -1):
        child = paths[:, j]
        parent = paths[:, j - 1] if j > 0 else np.zeros(n, np.int64)
        # round r of the parent's interleave holds each child's r-th image; inside the round
        # the children come in a fresh random order
        shuffle = hash_keys(seed, 2 + j, child, rank)
        order = np.lexsort((child, shuffle, rank, parent))
        new_rank = np.empty(n, np.int64)
        new_rank[order] = _positions_in_groups(parent[order])
        rank = new_rank
    return order


def stratified_order(
    image_idx: np.ndarray,
    strata: np.ndarray,
    seed: int,
    allocation: str = "equal",
) -> np.ndarray:
    """Row indices in stratified order over integer stratum codes: ``equal`` takes the same
    number from every stratum (water-filling), ``proportional`` keeps every prefix in the
    strata's population proportions."""
    strata = np.asarray(strata, np.int64)
    if allocation == "equal":
        return balanced_order(image_idx, strata[:, None], seed)
    if allocation != "proportional":
        raise ValueError(f"allocation must be 'equal' or 'proportional', not {allocation!r}")
    rank = _rank_within(strata, hash_keys(seed, 1, image_idx), image_idx)
    _, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    offset = hash_keys(seed, 3, strata).astype(np.float64) / 2.0**64  # per-stratum phase
    position = (rank + offset) / counts[inverse]
    return np.lexsort((image_idx, strata, position))

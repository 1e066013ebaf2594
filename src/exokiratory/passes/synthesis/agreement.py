"""Agreement between two clusterings of the same units, with its chance baseline.

For two labelings ``left`` and ``right`` of the same ``n`` units (images or segments):

* ``ari`` (adjusted Rand index) and ``ami`` (adjusted mutual information, arithmetic
  normalisation; scikit-learn). Both are 0 in expectation for independent labelings and 1 for
  identical ones;
* the **shuffled-label baseline**: the same statistic between ``left`` and ``n_shuffles``
  seeded permutations of ``right`` (``ari_baseline`` = their mean, ``ari_baseline_std`` their
  standard deviation; likewise ``ami_*``). It shows what agreement chance alone gives at this
  ``n`` and these cluster sizes: a value is meaningful only well above it (``ari_z`` = (ari -
  baseline) / max(std, 1e-6));
* AMI costs much more than ARI with many clusters; it is computed only when both sides have at
  most ``ami_max_clusters`` clusters (else null, and said in the notes);
* the **contingency table**: units per (left cluster, right cluster) cell, with each cell's
  share of its left cluster (``left_fraction``) and of its right cluster (``right_fraction``);
  only cells of at least ``min_cell`` units are stored;
* the **mapping** of each left cluster (of at least ``min_cluster_size`` units): its best right
  cluster and the share it gets; ``is_split`` when ``split_fraction`` or more of it falls in
  each of two or more right clusters; ``is_merged`` when its best right cluster is also the
  best of another left cluster (the right side merges them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Agreement:
    n: int
    k_left: int
    k_right: int
    ari: float
    ari_baseline: float
    ari_baseline_std: float
    ami: float | None
    ami_baseline: float | None
    ami_baseline_std: float | None


def agreement_with_baseline(
    left: np.ndarray,
    right: np.ndarray,
    *,
    n_shuffles: int,
    seed: int,
    ami_max_clusters: int,
) -> Agreement:
    """ARI and AMI of ``left`` vs ``right`` and their shuffled-label baselines."""
    k_left, k_right = len(np.unique(left)), len(np.unique(right))
    with_ami = max(k_left, k_right) <= ami_max_clusters
    rng = np.random.default_rng(seed)
    shuffles = [rng.permutation(right) for _ in range(n_shuffles)]
    ari = adjusted_rand(left, right)
    ari_s = np.asarray([adjusted_rand(left, s) for s in shuffles], np.float64)
    ami = ami_b = ami_sd = None
    if with_ami:
        # a shuffle keeps both marginals: the expected mutual information (the costly part)
        # and the entropies are those of the real labels; only the mutual information changes
        ref = MutualInfo.of(left, right)
        ami = ref.adjusted(ref.mi)
        ami_s = np.asarray([ref.adjusted(MutualInfo.mi_of(left, s)) for s in shuffles], np.float64)
        ami_b, ami_sd = _mean_std(ami_s)
    ari_b, ari_sd = _mean_std(ari_s)
    return Agreement(
        len(left), k_left, k_right, ari, ari_b or 0.0, ari_sd or 0.0, ami, ami_b, ami_sd
    )


@dataclass(frozen=True)
class MutualInfo:
    """What the adjusted mutual information of two labelings needs (natural logarithms)."""

    mi: float
    emi: float
    h_left: float
    h_right: float
    trivial: bool  # both one cluster: a perfect match by convention

    @staticmethod
    def mi_of(left: np.ndarray, right: np.ndarray) -> float:
        c = contingency(left, right)
        n = float(len(left))
        nij = c.n.astype(np.float64)
        return float((nij / n * np.log(n * nij / (c.left_size * c.right_size))).sum())

    @classmethod
    def of(cls, left: np.ndarray, right: np.ndarray) -> MutualInfo:
        a = np.unique(left, return_counts=True)[1]
        b = np.unique(right, return_counts=True)[1]
        trivial = len(a) == len(b) == 1
        return cls(
            cls.mi_of(left, right),
            0.0 if trivial else _expected_mi(left, right),
            _entropy(a),
            _entropy(b),
            trivial,
        )

    def adjusted(self, mi: float) -> float:
        """AMI with the arithmetic mean of the entropies (scikit-learn's default)."""
        if self.trivial:
            return 1.0
        denominator = (self.h_left + self.h_right) / 2 - self.emi
        eps = float(np.finfo(np.float64).eps)
        if abs(denominator) < eps:
            denominator = eps if denominator >= 0 else -eps
        return (mi - self.emi) / denominator


def _entropy(counts: np.ndarray) -> float:
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def _expected_mi(left: np.ndarray, right: np.ndarray) -> float:
    """Expected mutual information of two labelings with these marginals (hypergeometric
    model; scikit-learn's compiled implementation)."""
    try:
        from sklearn.metrics.cluster._expected_mutual_info_fast import (
            expected_mutual_information,
        )
    except ImportError:  # a future scikit-learn moved it: derive it from the public AMI
        from sklearn.metrics import adjusted_mutual_info_score

        ami = float(adjusted_mutual_info_score(left, right))
        mi = MutualInfo.mi_of(left, right)
        a = np.unique(left, return_counts=True)[1]
        b = np.unique(right, return_counts=True)[1]
        h = (_entropy(a) + _entropy(b)) / 2
        return (mi - ami * h) / (1.0 - ami) if ami != 1.0 else mi
    from sklearn.metrics.cluster import contingency_matrix

    table = contingency_matrix(left, right, sparse=True)
    return float(expected_mutual_information(table, len(left)))


def adjusted_rand(left: np.ndarray, right: np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) from the contingency counts; the same value
    as scikit-learn's ``adjusted_rand_score`` (1.0 when both labelings are trivial)."""
    n = len(left)
    cells = contingency(left, right).n.astype(np.float64)
    a = np.unique(left, return_counts=True)[1].astype(np.float64)
    b = np.unique(right, return_counts=True)[1].astype(np.float64)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) / 2).sum())

    index, sa, sb = pairs(cells), pairs(a), pairs(b)
    expected = sa * sb / (n * (n - 1) / 2) if n > 1 else 0.0
    top = (sa + sb) / 2
    if top == expected:
        return 1.0
    return (index - expected) / (top - expected)


def _mean_std(x: np.ndarray) -> tuple[float | None, float | None]:
    if len(x) == 0:
        return None, None
    return float(x.mean()), float(x.std())


@dataclass(frozen=True)
class Contingency:
    left: np.ndarray  # cluster ids of the nonzero cells
    right: np.ndarray
    n: np.ndarray
    left_size: np.ndarray  # size of the cell's left cluster
    right_size: np.ndarray


def contingency(left: np.ndarray, right: np.ndarray) -> Contingency:
    """Every nonzero cell of the contingency table (sorted by left, then right cluster)."""
    l64, r64 = left.astype(np.int64), right.astype(np.int64)
    r_span = int(r64.max()) + 1 if len(r64) else 1
    keys, n = np.unique(l64 * r_span + r64, return_counts=True)
    cl, cr = keys // r_span, keys % r_span
    lu, lc = np.unique(l64, return_counts=True)
    ru, rc = np.unique(r64, return_counts=True)
    return Contingency(
        cl, cr, n.astype(np.int64), lc[np.searchsorted(lu, cl)], rc[np.searchsorted(ru, cr)]
    )


@dataclass(frozen=True)
class Mapping:
    left: np.ndarray
    left_size: np.ndarray
    best_right: np.ndarray
    best_fraction: np.ndarray
    n_major: np.ndarray  # right clusters holding >= split_fraction of it
    is_split: np.ndarray
    is_merged: np.ndarray


def mapping(c: Contingency, *, split_fraction: float, min_cluster_size: int) -> Mapping:
    """Where each left cluster goes on the right side (see the module docstring)."""
    frac = c.n / np.maximum(c.left_size, 1)
    lefts = np.unique(c.left)
    # best cell per left cluster: the largest, ties by lowest right id (cells sorted by right)
    order = np.lexsort((c.right, -c.n, c.left))
    first = order[np.searchsorted(c.left[order], lefts)]
    major = np.bincount(
        np.searchsorted(lefts, c.left), weights=(frac >= split_fraction), minlength=len(lefts)
    ).astype(np.int64)
    best_right = c.right[first]
    keep = c.left_size[first] >= min_cluster_size
    kept_best = best_right[keep]
    share = np.unique(kept_best, return_counts=True)
    merged_rights = set(share[0][share[1] >= 2].tolist())
    return Mapping(
        lefts[keep],
        c.left_size[first][keep],
        kept_best,
        frac[first][keep],
        major[keep],
        major[keep] >= 2,
        np.asarray([r in merged_rights for r in kept_best.tolist()], bool),
    )

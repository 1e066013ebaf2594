"""Criterion 1, topology: do new passes still change the clusters?

* **Change**: for every clustering (``cluster:<space>:<level>``) in both the latest snapshot and
  the baseline (:meth:`.history.History.baseline`), the adjusted Rand index (ARI), adjusted mutual
  information (AMI, when scikit-learn is installed and the contingency table has at most
  :data:`AMI_MAX_CELLS` cells) and NMI on the images in both. Headline value: the smallest ARI;
  met when it is >= ``stable_ari``.
* **Bootstrap stability** (Hennig 2007, ``fpc::clusterboot``): at snapshot time, for each
  level with at most ``bootstrap_max_k`` clusters (and the coarsest level when the sample gives
  its clusters 10 images on average), a seeded sample of ``bootstrap_sample``
  images is resampled with replacement ``bootstrap_resamples`` times and the distinct resampled
  images re-clustered with spherical k-means (same k, :func:`spherical_lloyd`); a cluster's
  stability is its mean, over resamples, of the best
  Jaccard with a new cluster on the distinct resampled images. Hennig reads >= 0.75 as a valid
  cluster and >= 0.85 as highly stable. Met also needs every bootstrapped level's mean >=
  ``bootstrap_stable``.
* Evidence also holds the CLIP-vs-DINO agreement of the image clusters per level.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits

from exokiratory.passes.stop.base import (
    INSUFFICIENT,
    MET,
    NOT_MET,
    TOPOLOGY_STEPS,
    Criterion,
    StopParams,
    first_pending,
    fmt,
)
from exokiratory.passes.stop.history import History, SnapshotInfo

#: largest contingency table (rows x columns) for which AMI is computed (it is quadratic)
AMI_MAX_CELLS = 40_000
TITLE = "new passes stop changing cluster topology"


# -- pure measures -----------------------------------------------------------------------------
def _comb2(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float((x * (x - 1) / 2).sum())


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """ARI and NMI (arithmetic mean; numpy, from the contingency table, scikit-learn's special
    cases) and AMI (scikit-learn, when installed and the table has at most
    :data:`AMI_MAX_CELLS` cells, else None) of two labelings of the same items."""
    n = len(a)
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    ka, kb = int(ai.max(initial=-1)) + 1, int(bi.max(initial=-1)) + 1
    _, cells = np.unique(ai.astype(np.int64) * max(kb, 1) + bi, return_counts=True)
    rows, cols = np.bincount(ai, minlength=ka), np.bincount(bi, minlength=kb)
    if ka == kb and ka in (0, 1, n):
        ari = 1.0
    else:
        index, ra, rb = _comb2(cells), _comb2(rows), _comb2(cols)
        expected = ra * rb / (n * (n - 1) / 2)
        ari = (index - expected) / ((ra + rb) / 2 - expected)
    if ka == kb and ka in (0, 1):
        nmi = 1.0
    else:
        mi = _entropy(rows, n) + _entropy(cols, n) - _entropy(cells, n)
        nmi = 0.0 if mi <= 1e-15 else mi / ((_entropy(rows, n) + _entropy(cols, n)) / 2)
    return {"n": n, "ari": float(ari), "ami": _ami(a, b, ka * kb), "nmi": float(nmi)}


def _ami(a: np.ndarray, b: np.ndarray, cells: int) -> float | None:
    if cells > AMI_MAX_CELLS or importlib.util.find_spec("sklearn") is None:
        return None
    from sklearn.metrics import adjusted_mutual_info_score

    return float(adjusted_mutual_info_score(a, b))


def best_jaccard(old: np.ndarray, new: np.ndarray) -> dict[int, float]:
    """For each cluster of ``old``: its largest Jaccard with a cluster of ``new`` (same items)."""
    old_ids, old_inv = np.unique(old, return_inverse=True)
    new_ids, new_inv = np.unique(new, return_inverse=True)
    table = np.zeros((len(old_ids), len(new_ids)), np.int64)
    np.add.at(table, (old_inv, new_inv), 1)
    union = table.sum(1, keepdims=True) + table.sum(0, keepdims=True) - table
    jac = (table / np.maximum(union, 1)).max(axis=1)
    return {int(c): float(j) for c, j in zip(old_ids, jac, strict=True)}


def spherical_lloyd(x: np.ndarray, k: int, *, seed: int, niter: int) -> np.ndarray:
    """Spherical k-means of the unit rows of ``x`` (k-means++ seeding, then Lloyd's
    iterations; an emptied cluster keeps its centroid): the cluster of each row. Plain numpy,
    a few BLAS products per iteration: cheap at the bounded sample sizes of the bootstrap."""
    centres = _kmeanspp(x, k, np.random.default_rng(seed))
    for _ in range(niter):
        assign = (x @ centres.T).argmax(axis=1)
        onehot = np.zeros((k, len(x)), x.dtype)
        onehot[assign, np.arange(len(x))] = 1
        sums = onehot @ x
        empty = onehot.sum(axis=1) == 0
        sums[empty] = centres[empty]
        centres = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return np.asarray((x @ centres.T).argmax(axis=1))


def _kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeds (Arthur & Vassilvitskii 2007) among the unit rows of ``x``."""
    chosen = [int(rng.integers(len(x)))]
    dist = np.maximum(0.0, 2.0 - 2.0 * (x @ x[chosen[0]])).astype(np.float64)
    for _ in range(1, k):
        total = float(dist.sum())
        j = int(rng.choice(len(x), p=dist / total)) if total > 0 else int(rng.integers(len(x)))
        chosen.append(j)
        dist = np.minimum(dist, np.maximum(0.0, 2.0 - 2.0 * (x @ x[j])))
    return x[chosen].copy()


def bootstrap_stability(
    x: np.ndarray, labels: np.ndarray, *, resamples: int, seed: int, niter: int
) -> dict[int, float]:
    """Hennig's clusterboot: cluster id -> mean best Jaccard over bootstrap resamples (a
    cluster absent from a resample is not scored in it)."""
    x = np.asarray(x, np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    n = len(labels)
    k = len(np.unique(labels))
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    # small products: one BLAS thread is several times faster than a pool fighting for cores
    with threadpool_limits(limits=1, user_api="blas"):
        for b in range(resamples):
            uniq = np.unique(rng.integers(0, n, n))
            new = spherical_lloyd(x[uniq], min(k, len(uniq)), seed=seed + b, niter=niter)
            for c, j in best_jaccard(labels[uniq], new).items():
                sums[c] = sums.get(c, 0.0) + j
                counts[c] = counts.get(c, 0) + 1
    return {c: sums[c] / counts[c] for c in sorted(sums)}


def stability_table(
    space: str, level: int, labels: np.ndarray, stability: dict[int, float]
) -> pa.Table:
    """Snapshot rows ``stability:<space>:<level>``: key cluster id, value its size in the
    sample, score its stability."""
    ids = sorted(stability)
    sizes = [int((labels == c).sum()) for c in ids]
    return pa.table(
        {
            "signal": [f"stability:{space}:{level}"] * len(ids),
            "key": [str(c) for c in ids],
            "value": pa.array(sizes, pa.int64()),
            "score": pa.array([stability[c] for c in ids], pa.float64()),
        }
    )


# -- the criterion -----------------------------------------------------------------------------
def _clusterings(info: SnapshotInfo) -> list[str]:
    return sorted(s for s in info.signals if s.startswith("cluster:"))


def _space_step(signal: str) -> str:
    return f"clusters-{signal.split(':')[1]}"


def _changes(history: History, base: SnapshotInfo, latest: SnapshotInfo) -> list[dict[str, Any]]:
    rows = []
    for s in sorted(set(_clusterings(base)) & set(_clusterings(latest))):
        if base.signals[s]["digest"] == latest.signals[s]["digest"]:
            n = int(latest.signals[s]["rows"])
            rows.append({"clustering": s, "n": n, "ari": 1.0, "ami": 1.0, "nmi": 1.0, "by": None})
            continue
        a, b = history.joined(base, latest, s)
        row = {"clustering": s, **(compare(a, b) if len(a) >= 2 else {"n": len(a), "ari": None})}
        row["by"] = history.changed_by(base, s, TOPOLOGY_STEPS)
        rows.append(row)
    return rows


def _stability(history: History, latest: SnapshotInfo, p: StopParams) -> list[dict[str, Any]]:
    rows = []
    for s in sorted(x for x in latest.signals if x.startswith("stability:")):
        t = history.signal(latest, s)
        scores = np.asarray(t.column("score").to_numpy(zero_copy_only=False), np.float64)
        rows.append(
            {
                "clustering": "cluster:" + s.split(":", 1)[1],
                "clusters": len(scores),
                "mean_jaccard": float(scores.mean()) if len(scores) else None,
                "valid": int((scores >= p.bootstrap_stable).sum()),
                "highly_stable": int((scores >= p.bootstrap_highly_stable).sum()),
            }
        )
    return rows


def _cross_space(history: History, latest: SnapshotInfo) -> list[dict[str, Any]]:
    rows = []
    for s in _clusterings(latest):
        _, space, level = s.split(":")
        other = f"cluster:dino:{level}"
        if space != "clip" or other not in latest.signals:
            continue
        a, b = history.joined(latest, latest, s, other)
        if len(a) >= 2:
            rows.append({"level": int(level), **compare(a, b)})
    return rows


def evaluate(history: History, p: StopParams, pending: Sequence[str] = ()) -> Criterion:
    """Criterion 1 (see the module docstring)."""
    rule = f"smallest ARI >= {p.stable_ari} and bootstrap mean Jaccard >= {p.bootstrap_stable}"
    crit = Criterion("topology", TITLE, None, p.stable_ari, rule, INSUFFICIENT, "")
    latest = history.latest
    if latest is None or not _clusterings(latest):
        crit.run = first_pending(pending, TOPOLOGY_STEPS) or "clusters-clip"
        crit.why = f"no clustering yet: run {crit.run}"
        return crit
    stab = _stability(history, latest, p)
    means = [r["mean_jaccard"] for r in stab if r["mean_jaccard"] is not None]
    crit.values["bootstrap_mean_min"] = min(means, default=None)
    crit.evidence = {"image clusters, CLIP vs DINO (latest)": _cross_space(history, latest)}
    if stab:
        crit.evidence["bootstrap stability (latest)"] = stab
    base = history.baseline(latest)
    changes = _changes(history, base, latest) if base is not None else []
    if base is None or not changes:
        crit.run = first_pending(pending, TOPOLOGY_STEPS) or TOPOLOGY_STEPS[0]
        crit.why = (
            "one snapshot of the clusterings only: "
            f"run {crit.run} (more images or another pass), then measure again"
        )
        return crit
    crit.evidence = {f"change since {base.name}": changes, **crit.evidence}
    aris = [r["ari"] for r in changes if r.get("ari") is not None]
    crit.value = min(aris) if aris else None
    crit.values.update(
        ari_min=crit.value,
        ami_min=min((r["ami"] for r in changes if r.get("ami") is not None), default=None),
        compared_with=base.name,
    )
    _judge(crit, changes, stab, p)
    return crit


def _judge(
    crit: Criterion, changes: list[dict[str, Any]], stab: list[dict[str, Any]], p: StopParams
) -> None:
    moved = [r for r in changes if r.get("ari") is not None and r["ari"] < p.stable_ari]
    weak = [
        r for r in stab if r["mean_jaccard"] is not None and r["mean_jaccard"] < p.bootstrap_stable
    ]
    if moved:
        worst = min(moved, key=lambda r: r["ari"])
        crit.state, crit.run = NOT_MET, worst["by"] or _space_step(worst["clustering"])
        crit.why = (
            f"{worst['clustering']} moved (ARI {fmt(worst['ari'])} < {p.stable_ari}) "
            f"after {crit.run}: its next run is likely to move it again"
        )
    elif weak:
        worst = min(weak, key=lambda r: r["mean_jaccard"])
        crit.state, crit.run = NOT_MET, _space_step(worst["clustering"])
        crit.why = (
            f"{worst['clustering']} is unstable under bootstrap (mean Jaccard "
            f"{fmt(worst['mean_jaccard'])} < {p.bootstrap_stable}): more images or fewer "
            f"clusters ({crit.run})"
        )
    else:
        crit.state = MET
        crit.why = f"every clustering kept ARI >= {p.stable_ari}" + (
            " and its clusters are bootstrap-stable" if stab else " (no bootstrap measured)"
        )

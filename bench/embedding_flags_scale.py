"""The k-NN distance of the embedding outlier flag above ``EXACT_KNN_MAX``: methods compared
with exact search on clustered synthetic vectors.

    python bench/embedding_flags_scale.py [--n 200000] [--clusters 2000] [--k 10]
                                          [--queries 20000] [--methods two-cluster,ivfsq8]

Data: ``bench/index_scale.py``'s ``labelled_vectors`` (768-d unit vectors around ``--clusters``
random centres, cosine to the centre about 0.86, Zipf-like sizes, float16), spilled to a
temporary file as the flags derivation does (:mod:`exokiratory.search.spill`). Exact: the k
nearest by a FAISS flat inner-product search of every vector, for ``--queries`` random rows
(the evaluation sample). Methods, each run on every vector:

* ``two-cluster`` (what the flags use above ``EXACT_KNN_MAX``): the k nearest among the members
  of the row's nearest and second-nearest k-means clusters of 1000 vectors
  (:func:`exokiratory.passes.flags.embedding.scan_clusters`, the same pass as the semantic
  duplicate search), then the rows of the high tail (robust z > 2) searched again in their 16
  nearest clusters (``refine_tail``). Extra memory: ``k x 4`` bytes of running similarities + 16 bytes of cluster
  numbers per vector.
* ``ivfsq8``: a FAISS IVF with 8-bit scalar quantisation (``4 sqrt(n)`` lists, trained on
  the vectors, ``nprobe`` 16), distances from the exact similarities of the neighbours it
  returns. Index memory: ``d + 8`` bytes per vector (6.2 GB at 10^7 x 768, which alone leaves
  nothing of an 8 GB machine).

Reported: seconds, recall of the k neighbours (the share of a row's exact k nearest that the
method finds; for ``two-cluster``, whose similarities are exact but over fewer rows, the share of
its k similarities at least the exact k-th), Pearson and Spearman correlation of the mean
distance with the exact one, and the median and 99th percentile of its excess over exact.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

import numpy as np
from index_scale import DIM, labelled_vectors

from exokiratory.passes.flags.embedding import (
    SpillRows,
    find_clusters,
    scan_clusters,
)
from exokiratory.search.spill import Spill

log = logging.getLogger("embedding_flags_scale")


def spill(n: int, clusters: int) -> Spill:
    s = Spill(n, DIM)
    for lo in range(0, n, 50_000):
        rows = min(50_000, n - lo)
        s.write(lo, labelled_vectors(7 + lo // 50_000, rows, clusters)[0])
    return s


def exact(rows: SpillRows, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, ids) of the k nearest other rows of each query, exact."""
    import faiss

    index = faiss.IndexFlatIP(rows.dim)
    for lo in range(0, rows.n, 65_536):
        index.add(rows.read(lo, lo + 65_536))
    sims, ids = index.search(rows.gather(queries), k + 1)
    return _drop_self(sims, ids, queries, k)


def _drop_self(
    sims: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    keep = ids != queries[:, None]
    out_s = np.full((len(queries), k), -np.inf, np.float32)
    out_i = np.full((len(queries), k), -1, np.int64)
    for r in range(len(queries)):
        s, i = sims[r][keep[r]][:k], ids[r][keep[r]][:k]
        out_s[r, : len(s)], out_i[r, : len(i)] = s, i
    return out_s, out_i


def two_cluster(rows: SpillRows, k: int, queries: np.ndarray) -> dict[str, np.ndarray]:
    scan = scan_clusters(rows, find_clusters(rows, 1000), None, k)
    if scan.knn is None:
        raise RuntimeError("no k-NN from the scan")
    if scan.knn_sims is None:
        raise RuntimeError("no k-NN similarities from the scan")
    return {"dist": scan.knn[queries], "sims": np.sort(scan.knn_sims[queries], axis=1)[:, ::-1]}


def ivfsq8(rows: SpillRows, k: int, queries: np.ndarray) -> dict[str, np.ndarray]:
    import faiss

    nlist = int(4 * np.sqrt(rows.n))
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(rows.dim),
        rows.dim,
        nlist,
        faiss.ScalarQuantizer.QT_8bit,
        faiss.METRIC_INNER_PRODUCT,
    )
    index.cp.seed = 0
    sample = np.sort(np.random.default_rng(0).choice(rows.n, min(rows.n, 64 * nlist), False))
    index.train(rows.gather(sample))
    for lo in range(0, rows.n, 65_536):
        index.add(rows.read(lo, lo + 65_536))
    index.nprobe = 16
    _, ids = index.search(rows.gather(queries), k + 1)
    ids = np.where(ids >= 0, ids, queries[:, None])
    q = rows.gather(queries)
    sims = np.stack([np.einsum("d,nd->n", q[r], rows.gather(ids[r])) for r in range(len(q))])
    sims, ids = _drop_self(sims.astype(np.float32), ids, queries, k)
    return {"dist": _mean_dist(sims), "ids": ids}


def _mean_dist(sims: np.ndarray) -> np.ndarray:
    found = np.isfinite(sims)
    return np.where(found, 1.0 - sims, 0.0).sum(1) / np.maximum(found.sum(1), 1)


def _rank(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(np.float64)


METHODS: dict[str, Callable[[SpillRows, int, np.ndarray], dict[str, np.ndarray]]] = {
    "two-cluster": two_cluster,
    "ivfsq8": ivfsq8,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=20_000)
    ap.add_argument("--methods", default="two-cluster,ivfsq8")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t = time.perf_counter()
    with spill(args.n, args.clusters) as s:
        rows = SpillRows(s)
        queries = np.sort(np.random.default_rng(1).choice(args.n, args.queries, False))
        print(f"## {args.n:,} x {DIM} vectors, {args.clusters} clusters, k = {args.k}")
        print(f"spilled in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        ex_s, ex_i = exact(rows, queries, args.k)
        ex_d = _mean_dist(ex_s)
        print(f"exact (flat) for {args.queries:,} queries: {time.perf_counter() - t:.1f} s")
        for name in args.methods.split(","):
            t = time.perf_counter()
            got = METHODS[name](rows, args.k, queries)
            seconds = time.perf_counter() - t
            d = got["dist"]
            if "ids" in got:
                recall = np.mean(
                    [len(np.intersect1d(a, b)) for a, b in zip(got["ids"], ex_i, strict=True)]
                )
            else:  # exact similarities over a subset: those >= the exact k-th are true hits
                recall = float(np.mean((got["sims"] >= ex_s[:, -1:] - 1e-6).sum(1)))
            excess = d - ex_d
            print(
                f"{name}: {seconds:.1f} s for all {args.n:,} rows; recall@{args.k} "
                f"{recall / args.k:.4f}; pearson {np.corrcoef(d, ex_d)[0, 1]:.4f}, spearman "
                f"{np.corrcoef(_rank(d), _rank(ex_d))[0, 1]:.4f}; excess distance median "
                f"{np.median(excess):.5f}, p99 {np.percentile(excess, 99):.5f} "
                f"(exact mean distance {ex_d.mean():.4f})"
            )


if __name__ == "__main__":
    main()

"""Index benchmark: build time, recall@10 of HNSW vs exact search, and query latency, on random
unit vectors (the worst case for graph indices: no cluster structure).

    python bench/index_recall.py [--n 100000] [--dim 512] [--queries 1000] [--kinds flat,hnsw]
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from exokiratory.search.indices import HNSW_EF_SEARCH, _new_index


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--kinds", default="flat,hnsw", help="flat is the reference for recall")
    ap.add_argument(
        "--clustered",
        type=int,
        default=0,
        help="draw the vectors around this many Gaussian centres (like real embeddings)",
    )
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    if args.clustered:
        centres = rng.standard_normal((args.clustered, args.dim)).astype(np.float32)
        x = 0.9 * x + centres[rng.integers(0, args.clustered, args.n)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(args.n, args.queries, replace=False)] + 0.05 * rng.standard_normal(
        (args.queries, args.dim)
    ).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids = np.arange(args.n, dtype=np.int64)
    print(
        f"{args.n} {'clustered' if args.clustered else 'random'} unit vectors, dim {args.dim}, "
        f"{args.queries} queries, {faiss.omp_get_max_threads()} threads"
    )
    results = {}
    for kind in args.kinds.split(","):
        index = _new_index(kind, args.dim)
        t0 = time.perf_counter()
        index.add_with_ids(x, ids)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, found = index.search(q, 10)
        per_query = (time.perf_counter() - t0) / args.queries
        results[kind] = found
        print(f"{kind:5s} build {build:7.2f} s   query {per_query * 1e3:7.3f} ms/query (batched)")
    if "flat" in results and "hnsw" in results:
        exact, approx = results["flat"], results["hnsw"]
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
        print(f"HNSW recall@10 vs exact: {recall:.3f} (efSearch {HNSW_EF_SEARCH})")


if __name__ == "__main__":
    main()

"""Cost of the derivations over global embeddings at scale: the cluster hierarchy
(``clusters-*``), the semantic-duplicate search and the k-NN outlier distances (``flags``).

Synthetic clustered unit vectors (``--groups`` Gaussian groups, like real embeddings, not uniform
noise) with planted near-copies; prints seconds per step and the recall of the clustered
semantic-duplicate search against the planted pairs.

    python bench/embedding_derivations.py [--n 100000] [--dim 512]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from exokiratory.passes.clusters.step import ClusterParams
from exokiratory.passes.flags.embedding import candidate_pairs, knn_distance
from exokiratory.search.clustering import hierarchical_kmeans, level_sizes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--groups", type=int, default=500)
    ap.add_argument("--planted", type=int, default=1000, help="planted near-copy pairs")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.groups, args.dim)).astype(np.float32)
    x = centres[rng.integers(0, args.groups, args.n)] + 0.9 * rng.standard_normal(
        (args.n, args.dim)
    ).astype(np.float32)
    src = rng.choice(args.n - args.planted, args.planted, replace=False)
    dst = np.arange(args.n - args.planted, args.n)
    x[dst] = x[src] + 0.05 * rng.standard_normal((args.planted, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    print(f"{args.n} clustered unit vectors, dim {args.dim}, {args.planted} planted near-copies")

    p = ClusterParams()
    ks = level_sizes(args.n, p.cluster_size, p.branching, p.max_levels)
    t0 = time.perf_counter()
    hierarchical_kmeans(x, ks, seed=0, niter=p.niter)
    print(f"cluster hierarchy k={ks}: {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    pairs = candidate_pairs(x, 0.95, 1000)
    found = {tuple(sorted(pr)) for pr in pairs.tolist()}
    planted = {tuple(sorted(pr)) for pr in zip(src.tolist(), dst.tolist(), strict=True)}
    recall = len(found & planted) / len(planted)
    print(
        f"semantic duplicates (cosine >= 0.95, clusters of ~1000): {time.perf_counter() - t0:.1f} s, "
        f"{len(found)} pairs, recall of planted pairs {recall:.3f}"
    )

    t0 = time.perf_counter()
    knn_distance(x, 10)
    print(f"k-NN distances (k=10, exact): {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()

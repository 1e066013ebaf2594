"""Scale benchmark of the IVF indices (:mod:`exokiratory.search.ivf`): memory per vector and
recall@10 against exact search, on synthetic clustered unit vectors stored as float16.

    python bench/index_scale.py --n 100000 --n 1000000 [--kind ivfpq --kind ivfsq8]

Data: ``--clusters`` (2,000) random centres in 768-d; each vector is its centre plus Gaussian
noise (cosine to the centre about 0.86), normalised, rounded to float16; cluster sizes follow a
Zipf-like law. The vectors are generated chunk by chunk from per-chunk seeds, so the bench never
holds them all; the index is built with :func:`build_ivf` exactly as ``build_index`` does (a
seeded training sample, then chunks of 50,000 converted to float32 one at a time).
Queries: 1,000 fresh vectors of the same law; exact top-10 by a chunked float32 scan.
Reported per size and kind: build seconds, peak RSS of the process (each size and kind runs in
a fresh process), serialized index bytes per vector, recall@10 at several ``nprobe``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

DIM = 768
CHUNK = 50_000


def _centres(clusters: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(12345)
    c = rng.standard_normal((clusters, DIM)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.7
    return c, weights / weights.sum()


def labelled_vectors(seed: int, rows: int, clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """(``rows`` float16 unit vectors of the clustered law, their planted cluster), deterministic
    in ``seed`` (``bench/clusters_scale.py`` scores clusters against the planted ones)."""
    centres, weights = _centres(clusters)
    rng = np.random.default_rng(seed)
    label = rng.choice(clusters, rows, p=weights)
    x = centres[label] + rng.standard_normal((rows, DIM)).astype(np.float32) * (0.6 / DIM**0.5)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16), label


def vectors(seed: int, rows: int, clusters: int) -> np.ndarray:
    """``rows`` float16 unit vectors of the clustered law (deterministic in ``seed``)."""
    return labelled_vectors(seed, rows, clusters)[0]


def chunks(n: int, clusters: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for k, lo in enumerate(range(0, n, CHUNK)):
        rows = min(CHUNK, n - lo)
        yield (
            np.arange(lo, lo + rows, dtype=np.int64),
            vectors(1000 + k, rows, clusters).astype(np.float32),
        )


def exact_top10(n: int, clusters: int, q: np.ndarray) -> np.ndarray:
    best_s = np.full((q.shape[0], 10), -np.inf, np.float32)
    best_i = np.zeros((q.shape[0], 10), np.int64)
    for ids, x in chunks(n, clusters):
        s = q @ x.T
        top = np.argpartition(-s, 10, axis=1)[:, :10]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, ids[top]], axis=1)
        keep = np.argsort(-cand_s, axis=1)[:, :10]
        best_s = np.take_along_axis(cand_s, keep, 1)
        best_i = np.take_along_axis(cand_i, keep, 1)
    return best_i


def run(n: int, kind: str, clusters: int, queries: int) -> dict[str, Any]:
    import faiss

    from exokiratory.search.ivf import build_ivf

    start = time.perf_counter()
    index, params, added = build_ivf(
        kind, np.arange(n, dtype=np.int64), DIM, lambda: chunks(n, clusters)
    )
    build_s = time.perf_counter() - start
    size = faiss.serialize_index(index).nbytes
    q = vectors(7, queries, clusters).astype(np.float32)
    truth = exact_top10(n, clusters, q)
    recall = {}
    for nprobe in (16, 64, 128):
        index.nprobe = nprobe
        t = time.perf_counter()
        _, found = index.search(q, 10)
        ms = (time.perf_counter() - t) / queries * 1000
        hits = sum(len(set(found[i]) & set(truth[i])) for i in range(queries))
        recall[nprobe] = {"recall_at_10": hits / (10 * queries), "ms_per_query": round(ms, 3)}
    return {
        "n": n,
        "kind": kind,
        "params": params,
        "added": added,
        "build_s": round(build_s, 1),
        "bytes_per_vector": round(size / n, 1),
        "flat_bytes_per_vector": DIM * 4 + 8,
        "recall": recall,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, action="append")
    ap.add_argument("--kind", action="append", choices=("ivfpq", "ivfsq8"))
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes, kinds = args.n or [100_000], args.kind or ["ivfpq"]
    if args.child:
        print(json.dumps(run(sizes[0], kinds[0], args.clusters, args.queries)))
        return
    for n in sizes:
        for kind in kinds:
            cmd = [sys.executable, __file__, "--child", "--n", str(n), "--kind", kind]
            cmd += ["--clusters", str(args.clusters), "--queries", str(args.queries)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            print(done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()

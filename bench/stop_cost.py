"""Cost of ``exokiratory stop`` at 10^5 images, on synthetic stored tables.

Usage: ``python bench/stop_cost.py [--images 100000] [--workdir DIR]``

Synthetic tables with the columns the stop family reads (no pixels, no model): CLIP (512-d) and
DINO (384-d) embeddings of ``--images`` images with a three-level cluster hierarchy each (about 30
images per finest cluster, 8x fewer per level: 3334 / 417 / 52 clusters at 10^5), one segment per
image embedded in both spaces with motif ids, feature outlier scores, and captions for 10 % of
the images with their 512-d text embeddings. They are registered in one DuckDB connection
standing in for the workspace catalog.

Three costs, each printed with seconds and memory:

1. **record**: build and write one snapshot (cluster rows, bootstrap stability of the coarsest
   levels, mutual k-NN on the fixed sample, caption vocabulary + PCA + Vendi, top-q outliers);
   three times: a second state with 5 % of the assignments moved and 10 % more captions, a
   third with only new feature outlier scores (the bootstrap is reused);
2. **stop** (``measure`` on the stored history, the command's work after a run recorded its
   snapshots), in a fresh process so its peak resident memory is its own (it compares the
   newest snapshot with the one before it);
3. the stored history's size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from exokiratory.core.dataset import fetch_arrow
from exokiratory.core.storage import Storage
from exokiratory.passes.stop.base import StopParams
from exokiratory.passes.stop.snapshot import record_snapshot

WORDS = [f"w{i:04d}" for i in range(3000)]


def rss_mb() -> float:
    """Peak resident memory of this process so far (VmHWM: reset by exec, unlike ru_maxrss)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class BenchCatalog:
    """The part of :class:`exokiratory.core.catalog.Catalog` the stop family uses."""

    def __init__(self, tables: dict[str, pa.Table]):
        self.con = duckdb.connect()
        for name, t in tables.items():
            self.con.register(name, t)
        self.views = list(tables)

    def query(self, sql: str, params: list[Any] | None = None) -> pa.Table:
        return fetch_arrow(self.con.execute(sql, params or []))

    def rows(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, params or []).fetchall()

    def scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        row = self.con.execute(sql, params or []).fetchone()
        return row[0] if row else None


def _vectors(labels: np.ndarray, k: int, dim: int, rng: np.random.Generator) -> pa.Array:
    centres = rng.normal(0, 1, (k, dim)).astype(np.float32)
    x = centres[labels] + rng.normal(0, 0.8, (len(labels), dim)).astype(np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim)


def _clusters(ids: list[str], labels0: np.ndarray, sim: np.ndarray) -> pa.Table:
    levels = [labels0, labels0 // 8, labels0 // 64]
    n = len(ids)
    return pa.table(
        {
            "image_id": ids * 3,
            "level": np.repeat(np.arange(3), n),
            "cluster_id": np.concatenate(levels),
            "similarity": np.tile(sim, 3),
        }
    )


def synthetic(
    n: int, moved: float, extra_captions: float, seed: int = 0, flags_seed: int = 0
) -> dict[str, pa.Table]:
    rng = np.random.default_rng(seed)
    ids = [f"{i:032x}" for i in range(n)]
    k0 = max(2, n // 30)
    labels = rng.integers(0, k0, n)
    move = np.random.default_rng(seed + 1).random(n) < moved
    labels_now = np.where(move, rng.integers(0, k0, n), labels)
    sim = rng.random(n).astype(np.float32)
    tables: dict[str, pa.Table] = {}
    for space, dim in (("clip", 512), ("dino", 384)):
        emb = _vectors(labels, k0, dim, np.random.default_rng(hash(space) % 2**32))
        common = {"error": pa.nulls(n, pa.string()), "model_id": ["bench"] * n}
        tables[f"embeddings_{space}"] = pa.table({"image_id": ids, "embedding": emb, **common})
        tables[f"clusters_{space}"] = _clusters(ids, labels_now, sim)
        segs = [f"{i}-0000" for i in ids]
        tables[f"segment_embeddings_{space}"] = pa.table(
            {"segment_id": segs, "embedding": emb, **common}
        )
    tables["motifs"] = pa.table(
        {
            "segment_id": [f"{i}-0000" for i in ids] * 2,
            "image_id": ids * 2,
            "space": ["clip"] * n + ["dino"] * n,
            "cluster_id": np.concatenate([labels_now % 2000, labels_now % 1500]),
            "outlier_score": np.tile(rng.normal(0, 1, n).astype(np.float32), 2),
        }
    )
    flags_rng = np.random.default_rng(100 + flags_seed)
    tables["flags"] = pa.table({"image_id": ids, "outlier_score": flags_rng.normal(0, 1, n)})
    n_cap = int(n * 0.1 * (1 + extra_captions))
    cap_ids = [f"c{i:09d}" for i in range(n_cap)]
    texts = [" ".join(rng.choice(WORDS, 8)) for _ in range(n_cap)]
    tables["captions"] = pa.table(
        {"caption_id": cap_ids, "text": texts, "error": pa.nulls(n_cap, pa.string())}
    )
    cap_labels = rng.integers(0, 40, n_cap)
    tables["caption_embeddings"] = pa.table(
        {
            "caption_id": cap_ids,
            "embedding": _vectors(cap_labels, 40, 512, np.random.default_rng(7)),
            "error": pa.nulls(n_cap, pa.string()),
            "model_id": ["bench"] * n_cap,
        }
    )
    return tables


def record(workdir: Path, n: int) -> list[dict[str, Any]]:
    storage = Storage(workdir)
    p = StopParams()
    out = []
    # three states: the first; 5 % of the assignments moved and 10 % more captions; then only
    # new feature outlier scores (the clusters unchanged: the bootstrap is reused)
    for run, (moved, extra, flags) in enumerate([(0.0, 0.0, 0), (0.05, 0.1, 0), (0.05, 0.1, 1)]):
        tables = synthetic(n, moved, extra, flags_seed=flags)
        before = rss_mb()
        cat = BenchCatalog(tables)
        t0 = time.perf_counter()
        info = record_snapshot(storage, cat, p, trigger="bench", run_id=f"run{run}")
        secs = time.perf_counter() - t0
        assert info is not None
        out.append(
            {
                "snapshot": info.name,
                "seconds": round(secs, 2),
                "peak_rss_mb": round(rss_mb(), 0),
                "rss_before_mb": round(before, 0),
                "rows": sum(s["rows"] for s in info.signals.values()),
            }
        )
        cat.con.close()
        del tables, cat
    return out


def evaluate(workdir: Path) -> dict[str, Any]:
    from exokiratory.passes.stop.verdict import measure

    before = rss_mb()
    t0 = time.perf_counter()
    result = measure(Storage(workdir), {})
    secs = time.perf_counter() - t0
    return {
        "seconds": round(secs, 2),
        "peak_rss_mb": round(rss_mb(), 0),
        "rss_after_imports_mb": round(before, 0),
        "states": [c.state for c in result.criteria],
        "values": [c.value for c in result.criteria],
        "verdict": result.verdict.decision,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--evaluate-only", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.evaluate_only:
        print(json.dumps(evaluate(args.evaluate_only)))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="stop-bench-"))
    recorded = record(workdir, args.images)
    for r in recorded:
        print(f"record {r}")
    child = subprocess.run(
        [sys.executable, __file__, "--evaluate-only", str(workdir)],
        check=True,
        capture_output=True,
        text=True,
    )
    print(f"stop {child.stdout.strip()}")
    sizes = [f.stat().st_size for f in (workdir / "history" / "structure").glob("snap-*")]
    print(f"history: {len(sizes)} snapshots, {sum(sizes) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

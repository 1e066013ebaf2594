"""Report benchmark, measured in one run:

1. ``exokiratory report`` on a workspace of 10^4 images (real files: crops of real photos at
   most 192 px, scanned, sensed and flagged by the real passes; CLIP / DINO embeddings are
   synthetic clustered unit vectors written as the embedding passes' parts, clustered by the real
   clustering derivations): build time cold (thumbnails made) and warm (thumbnails cached); the
   target is < 60 s cold.
2. Scaling of the aggregate queries to 10^6 images: the per-table summary and the PASS 1
   histograms over synthetic ``features`` parts of 10^5 and 10^6 rows (the real PASS 1 schema);
   the ratio of the two times should be at most about 10 (linear or better).

    python bench/report_build.py [--images 10000] [--rows 1000000] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("EXOKIRATORY_PROGRESS", "0")

import numpy as np
import pyarrow as pa
from _collection import build_collection

from exokiratory import Workspace
from exokiratory.core.catalog import Catalog
from exokiratory.core.config import RunConfig, render_config
from exokiratory.core.dataset import PartDataset
from exokiratory.core.tables import Tables
from exokiratory.engine.registry import get_pass
from exokiratory.passes.flags.section import gather_histograms


def synthetic_embeddings(ws: Workspace, space: str, dim: int, seed: int) -> int:
    """Clustered unit vectors for every readable image, as the embed pass's output parts."""
    (p,) = ws.passes([f"embed-{space}"])
    units = ws.sql("SELECT image_id, image_idx FROM images WHERE status = 'ok' ORDER BY 1")
    n = units.num_rows
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    x = centres[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ds = PartDataset(ws.storage, p.output_rel, p.key)  # type: ignore[union-attr]
    for start in range(0, n, 2000):
        sl = slice(start, start + 2000)
        part = pa.table(
            {
                "image_id": units["image_id"][sl],
                "image_idx": units["image_idx"][sl],
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[sl].ravel()), dim),
                "model_id": ["synthetic"] * len(x[sl]),
                "revision": [None] * len(x[sl]),
                "error": pa.nulls(len(x[sl]), pa.string()),
            }
        )
        ds.write_part(f"part-{start:012d}-synthetic", part)
    return n


def build_workspace(root: Path, n_images: int, workers: int) -> Workspace:
    t0 = time.perf_counter()
    build_collection(root / "src", n_images, max_side=192)
    ws = Workspace.init(root / "ws", [str(root / "src")], run=RunConfig(workers=workers))
    for space in ("clip", "dino"):
        ws.config.passes[f"embed-{space}"] = {"model": "tiny", "routed_only": False}
    ws.storage.write_bytes_atomic("exokiratory.yaml", render_config(ws.config).encode())
    ws = Workspace(root / "ws")
    ws.scan(progress=False)
    ws.run(["sense", "flags"], progress=False)
    for i, space in enumerate(("clip", "dino")):
        synthetic_embeddings(ws, space, 128, seed=i)
    ws.run(["clusters-clip", "clusters-dino"], progress=False)
    print(f"workspace of {n_images} images built in {time.perf_counter() - t0:.0f}s")
    return ws


def synthetic_features(root: Path, n_rows: int) -> Catalog:
    """A workspace whose ``features`` view holds ``n_rows`` synthetic PASS 1 rows."""
    ws = Workspace.init(root, [str(root)])
    sense = get_pass("sense")
    schema = sense.output_schema()
    rng = np.random.default_rng(0)
    ds = PartDataset(ws.storage, sense.output_rel, sense.key)  # type: ignore[union-attr]
    per_part = 250_000
    for start in range(0, n_rows, per_part):
        m = min(per_part, n_rows - start)
        cols = {}
        for f in schema:
            if f.name == "image_id":
                cols[f.name] = pa.array([f"{i:032x}" for i in range(start, start + m)])
            elif f.name == "image_idx":
                cols[f.name] = pa.array(np.arange(start, start + m), pa.int64())
            elif pa.types.is_floating(f.type):
                cols[f.name] = pa.array(rng.lognormal(0, 1, m).astype(np.float32)).cast(f.type)
            elif pa.types.is_integer(f.type):
                cols[f.name] = pa.array(rng.integers(1, 4000, m)).cast(f.type)
            else:
                cols[f.name] = pa.nulls(m, f.type)
        ds.write_part(f"part-{start:012d}-synthetic", pa.table(cols, schema=schema))
    return Catalog(ws.storage, [sense])  # type: ignore[list-item]


def time_aggregates(cat: Catalog) -> float:
    t0 = time.perf_counter()
    tables = Tables(cat)
    tables.summarise()
    feats, _ = gather_histograms(tables, {"dark_threshold": 0.32}, 40)
    elapsed = time.perf_counter() - t0
    if not feats or feats[0].n == 0:
        raise RuntimeError("no histogram computed")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="exo-report-bench-"))
    try:
        ws = build_workspace(tmp / "a", args.images, args.workers)
        t0 = time.perf_counter()
        cold = ws.report("bench", progress=False)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = ws.report("bench", progress=False)
        t_warm = time.perf_counter() - t0
        print(
            f"report on {args.images} images: cold {t_cold:.1f}s ({cold.n_thumbs_made} "
            f"thumbnails made), warm {t_warm:.1f}s ({warm.n_thumbs_made} made); "
            f"{cold.size_bytes / 1e6:.1f} MB; target < 60 s cold: "
            f"{'met' if t_cold < 60 else 'MISSED'}"
        )
        small = max(1, args.rows // 10)
        with synthetic_features(tmp / "b", small) as cat:
            t_small = time_aggregates(cat)
        with synthetic_features(tmp / "c", args.rows) as cat:
            t_big = time_aggregates(cat)
        print(
            f"summary + PASS 1 histograms: {small} rows {t_small:.2f}s, {args.rows} rows "
            f"{t_big:.2f}s; ratio {t_big / t_small:.1f} for 10x the rows"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

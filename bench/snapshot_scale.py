"""Scale benchmark of the structure snapshots and ``exokiratory stop`` at 10^6 and 10^7 images.

    python bench/snapshot_scale.py --n 1000000 [--keep DIR] [--changes 1000]

Data: a workspace whose ``clusters_clip`` is written directly as the clusters derivation's
output (its real schema, ``ASSIGNMENTS_SCHEMA``, in parts of 10^6 rows, a ``CURRENT.json``
pointer), ``n`` images x 3 levels (the default ``cluster_size`` 30 and ``branching`` 8: 33,334 /
4,167 / 521 clusters at 10^6), 32-character hex image ids, random nested cluster ids and
similarities; no embeddings (so no bootstrap), no manifest rows. Then, each in a FRESH process
with its wall seconds and peak RSS (``os.wait4`` ``ru_maxrss``) and the 1-minute load average
before it:

1. ``record``: the snapshot ``Workspace.run`` records after ``clusters-clip``
   (:func:`exokiratory.passes.stop.snapshot.record_snapshot`): 3n cluster rows, the top-2 %
   outlier set of the level-0 similarities;
2. ``record-changed``: the same after ``--changes`` images changed cluster at levels 0 and 1
   (a new derivation folder, the pointer moved);
3. ``stop``: ``exokiratory stop --json`` (it records the current structure when it differs from
   the newest snapshot, here it does not, then evaluates the four criteria: ARI of every
   clustering against the baseline, joined on n keys, the outlier sets' Jaccard).

Also printed: the snapshot files' sizes and that the second one holds the expected signals.
The record/stop modes (``--record WS TRIGGER``) are the child processes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from _proc import timed

from exokiratory.api.workspace import Workspace
from exokiratory.core.dataset import POINTER
from exokiratory.passes.clusters.step import ASSIGNMENTS_SCHEMA, METRICS_SCHEMA, SUMMARY_SCHEMA
from exokiratory.search.clustering import level_sizes

PART_ROWS = 1_000_000
DATASET = "clusters/clip"


def image_ids(start: int, n: int) -> pa.Array:
    """The synthetic image ids (as ``bench/scale_catalog.py`` writes them)."""
    return pa.array([f"{i:032x}" for i in range(start, start + n)], pa.string())


def labels(n: int, ks: list[int]) -> list[np.ndarray]:
    """Nested cluster ids per level (level i+1 = level i's cluster // 8, within k)."""
    rng = np.random.default_rng(0)
    out = [rng.integers(0, ks[0], n, dtype=np.int64)]
    for k in ks[1:]:
        out.append(np.minimum(out[-1] // 8, k - 1))
    return out


def part(level: int, k: int, lo: int, ids: pa.Array, cid: np.ndarray) -> pa.Table:
    m = len(ids)
    sim = np.random.default_rng(10_000 * level + lo // PART_ROWS).random(m, np.float32)
    cols = {
        "image_id": ids,
        "image_idx": np.arange(lo, lo + m, dtype=np.int64),
        "level": np.full(m, level, np.int8),
        "k": np.full(m, k, np.int32),
        "cluster_id": cid.astype(np.int32),
        "similarity": sim,
        "is_exemplar": np.zeros(m, bool),
    }
    return pa.table(cols, schema=ASSIGNMENTS_SCHEMA)


def write_clusters(ws: Workspace, n: int, folder: str, changes: int = 0) -> None:
    """The clusters derivation's output for ``n`` images in ``folder`` (pointer moved to it);
    ``changes``: that many images (the first ones) moved to the next cluster at levels 0 and 1."""
    ks = level_sizes(n, 30, 8, 3)
    labs = labels(n, ks)
    rel = f"{DATASET}/{folder}"
    i = 0
    for lo in range(0, n, PART_ROWS):
        ids = image_ids(lo, min(PART_ROWS, n - lo))
        for level, k in enumerate(ks):
            cid = labs[level][lo : lo + len(ids)].copy()
            if level < 2 and lo == 0 and changes:
                cid[:changes] = (cid[:changes] + 1) % k
            ws.storage.write_parquet_atomic(
                f"{rel}/part-{i:05d}.parquet", part(level, k, lo, ids, cid)
            )
            i += 1
    ws.storage.write_parquet_atomic(
        f"{rel}/summary/part-00000.parquet", SUMMARY_SCHEMA.empty_table()
    )
    ws.storage.write_parquet_atomic(
        f"{rel}/metrics/part-00000.parquet", METRICS_SCHEMA.empty_table()
    )
    pointer = {"folder": folder, "version": "v1", "params": {}, "rows": n * len(ks)}
    ws.storage.write_bytes_atomic(f"{DATASET}/{POINTER}", json.dumps(pointer).encode())


def build(root: Path, n: int) -> Workspace:
    src = root / "images"
    src.mkdir(parents=True)
    Workspace.init(root / "ws", [str(src)])
    ws = Workspace(str(root / "ws"))
    write_clusters(ws, n, "v1-bench00000000000001")
    return ws


def record(ws_path: str, trigger: str) -> None:
    """The child process of ``record``: one snapshot, as ``Workspace.run`` records it."""
    from exokiratory.passes.stop.base import stop_params
    from exokiratory.passes.stop.snapshot import record_snapshot

    ws = Workspace(ws_path)
    with ws.catalog() as cat:
        info = record_snapshot(
            ws.storage, cat, stop_params(ws.config.passes.get("stop")), trigger=trigger
        )
    print(json.dumps({"recorded": info.name if info else None}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, action="append")
    ap.add_argument("--keep", type=Path, help="build under this folder (removed otherwise)")
    ap.add_argument("--changes", type=int, default=1000, help="images moved at levels 0 and 1")
    ap.add_argument("--record", nargs=2, metavar=("WS", "TRIGGER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.record:
        record(*args.record)
        return
    exe = str(Path(sys.executable).with_name("exokiratory"))
    me = [sys.executable, str(Path(__file__).resolve())]
    for n in args.n or [100_000]:
        root = (args.keep / f"snapshot-{n}") if args.keep else Path(tempfile.mkdtemp())
        if root.exists():
            shutil.rmtree(root)
        try:
            t = time.perf_counter()
            ws = build(root, n)
            out: dict[str, Any] = {"n": n, "build_s": round(time.perf_counter() - t, 1)}
            wsd = root / "ws"
            out["record"] = timed([*me, "--record", str(wsd), "clusters-clip"], wsd)
            out["record"]["recorded"] = json.loads(out["record"].pop("output"))["recorded"]
            write_clusters(ws, n, "v1-bench00000000000002", args.changes)
            out["record_changed"] = timed([*me, "--record", str(wsd), "clusters-clip"], wsd)
            rec = json.loads(out["record_changed"].pop("output"))["recorded"]
            out["record_changed"]["recorded"] = rec
            out["stop"] = timed([exe, "stop", "--json"], wsd)
            result = json.loads(out["stop"].pop("output"))
            topo = result["criteria"][0]
            out["topology"] = {"state": topo["state"], "value": topo["value"]}
            out["verdict"] = result["verdict"]["decision"]
            hist = sorted((wsd / "history" / "structure").glob("snap-*.parquet"))
            out["snapshots_mb"] = [round(p.stat().st_size / 2**20, 1) for p in hist]
            print(json.dumps(out), flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

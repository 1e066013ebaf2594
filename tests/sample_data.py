"""A small workspace with a known cluster hierarchy and known flags, for the sample and export
tests (a helper module imported by tests, not a test file).

The images are real (tiny PNG files, scanned), but the ``clusters_clip`` and ``flags`` tables are
written directly, as the derivations would write them, so the tests know the truth:

* level 1 (coarse): cluster 0 is dominant (fine clusters 0..5 at level 0, ``n_dominant`` images);
  clusters 1 and 2 are rare (fine clusters 6, 7 and 8, 9; ``rare`` images each);
* ``modality``: photo for the dominant cluster, scan for fine 6 and 7, graphic for 8 and 9;
* ``n_junk`` junk images and ``n_dups`` non-canonical near duplicates, all in rare fine cluster 9.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from exokiratory import Workspace
from exokiratory.core.layout import FLAGS
from exokiratory.passes.clusters.step import ASSIGNMENTS_SCHEMA
from exokiratory.passes.flags.rules import FLAGS_SCHEMA

FINE_TO_COARSE = {0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 1, 7: 1, 8: 2, 9: 2}
RARE_FINE = (6, 7, 8, 9)
MODALITY = {0: "photo", 1: "scan", 2: "graphic"}


@dataclass
class Truth:
    fine: dict[str, int]  # image_id -> fine cluster
    junk: set[str]
    dups: set[str]
    src: Path

    @property
    def eligible(self) -> set[str]:
        return set(self.fine) - self.junk - self.dups


def _write_images(src: Path, n: int, side: int, seed: int) -> None:
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        px = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        Image.fromarray(px).save(src / f"img{i:04d}.png")


def _derived(ws: Workspace, dataset: str, table: pa.Table) -> None:
    """Write ``table`` as the current output of a derivation (folder + CURRENT.json)."""
    ws.storage.write_parquet_atomic(f"{dataset}/synthetic/part-00000.parquet", table)
    ws.storage.write_bytes_atomic(
        f"{dataset}/CURRENT.json", json.dumps({"folder": "synthetic"}).encode()
    )


def _flags(ids: list[str], idx: list[int], truth: Truth) -> pa.Table:
    n = len(ids)
    cols = {f.name: pa.nulls(n, f.type) for f in FLAGS_SCHEMA}
    coarse = [FINE_TO_COARSE[truth.fine[i]] for i in ids]
    cols.update(
        image_id=pa.array(ids),
        image_idx=pa.array(idx, pa.int64()),
        is_junk=pa.array([i in truth.junk for i in ids]),
        is_near_duplicate=pa.array([i in truth.dups for i in ids]),
        is_semantic_duplicate=pa.array([False] * n),
        modality=pa.array([MODALITY[c] for c in coarse]),
        is_text_heavy=pa.array([c == 1 for c in coarse]),
        text_heavy_score=pa.array([0.9 if c == 1 else 0.1 for c in coarse], pa.float32()),
    )
    return pa.table(cols, schema=FLAGS_SCHEMA)


def _clusters(ids: list[str], idx: list[int], truth: Truth) -> pa.Table:
    rows = []
    for level in (0, 1):
        for image_id, image_idx in zip(ids, idx, strict=True):
            fine = truth.fine[image_id]
            rows.append(
                {
                    "image_id": image_id,
                    "image_idx": image_idx,
                    "level": level,
                    "k": 10 if level == 0 else 3,
                    "cluster_id": fine if level == 0 else FINE_TO_COARSE[fine],
                    "similarity": 0.9,
                    "is_exemplar": False,
                }
            )
    return pa.Table.from_pylist(rows, schema=ASSIGNMENTS_SCHEMA)


def make_sample_workspace(
    root: Path,
    n_dominant: int = 150,
    rare: int = 3,
    n_junk: int = 2,
    n_dups: int = 2,
    side: int = 16,
) -> tuple[Workspace, Truth]:
    n = n_dominant + rare * len(RARE_FINE) + n_junk + n_dups
    src = root / "src"
    _write_images(src, n, side, seed=11)
    ws = Workspace.init(root / "ws", [str(src)])
    ws.scan(progress=False)
    t = ws.sql("SELECT image_id, image_idx FROM images ORDER BY image_idx")
    ids, idx = t.column("image_id").to_pylist(), t.column("image_idx").to_pylist()
    fine: dict[str, int] = {}
    for k, image_id in enumerate(ids):
        if k < n_dominant:
            fine[image_id] = k % 6
        elif k < n_dominant + rare * len(RARE_FINE):
            fine[image_id] = RARE_FINE[(k - n_dominant) // rare]
        else:
            fine[image_id] = 9
    extra = ids[n_dominant + rare * len(RARE_FINE) :]
    truth = Truth(fine, set(extra[:n_junk]), set(extra[n_junk:]), src)
    _derived(ws, FLAGS, _flags(ids, idx, truth))
    _derived(ws, "clusters/clip", _clusters(ids, idx, truth))
    return ws, truth

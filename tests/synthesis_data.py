"""A planted-structure workspace for PASS 7: stored inputs written directly, no model runs.

``N_TYPES`` scene types, ``PER_TYPE`` images each (image ``i`` has type ``i % N_TYPES``):

* motifs (both spaces, the same segments): two infrastructure motifs (0 "sky", 1 "ground") in
  every image; each type has ``FG_PER_TYPE`` foreground motifs of its own, each present in an
  image of that type with probability 0.8; one in five images also holds one foreground motif
  of another type (noise). The DINOv2 motif ids are a permutation of the CLIP ones (same
  segments, so CLIP vs DINO agree perfectly at the segment level);
* image clusters (``clusters_clip``, ``clusters_dino``, level 0): the type;
* captions naming the type (``TYPE_WORDS``), and caption embeddings near one direction per
  type; ``clip_score`` null (no image embeddings).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from exokiratory import Workspace
from exokiratory.core.dataset import PartDataset
from exokiratory.passes.clusters.step import ASSIGNMENTS_SCHEMA, METRICS_SCHEMA, SUMMARY_SCHEMA
from exokiratory.passes.motifs.scores import CLUSTERS_SCHEMA, SEGMENTS_SCHEMA

N_TYPES = 3
PER_TYPE = 30
FG_PER_TYPE = 4
N_MOTIFS = 2 + N_TYPES * FG_PER_TYPE
TYPE_WORDS = (("beach", "sand", "waves"), ("forest", "trees", "moss"), ("city", "street", "cars"))
DIM = 16


def image_id(i: int) -> str:
    return f"{i:032x}"


def planted_type(i: int) -> int:
    return i % N_TYPES


def fg_motifs(t: int) -> list[int]:
    return [2 + t * FG_PER_TYPE + j for j in range(FG_PER_TYPE)]


def dino_of(motif: int) -> int:
    """The DINOv2 id of a CLIP motif (a fixed permutation)."""
    return (motif * 5 + 3) % N_MOTIFS


def planted_segments(seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    n = N_TYPES * PER_TYPE
    for i in range(n):
        t = planted_type(i)
        motifs = [0, 1] + [m for m in fg_motifs(t) if rng.random() < 0.8]
        if rng.random() < 0.2:
            other = (t + 1 + int(rng.integers(N_TYPES - 1))) % N_TYPES
            motifs.append(int(rng.choice(fg_motifs(other))))
        for j, m in enumerate(motifs):
            area = 0.35 if m < 2 else 0.05
            rows.append({"image_idx": i, "mask_index": j, "motif": m, "area": area})
    return rows


def _write_derived(ws: Workspace, dataset: str, tables: dict[str, pa.Table]) -> None:
    folder = "v1-planted"
    for name, table in tables.items():
        sub = f"{dataset}/{folder}" + (f"/{name}" if name else "")
        ws.storage.write_parquet_atomic(f"{sub}/part-00000.parquet", table)
    pointer = {"folder": folder, "version": "v1", "params": {}, "rows": tables[""].num_rows}
    ws.storage.write_bytes_atomic(f"{dataset}/CURRENT.json", json.dumps(pointer).encode())


def install_motifs(ws: Workspace, segs: list[dict[str, Any]]) -> None:
    rows, clusters = [], []
    for space in ("clip", "dino"):
        for s in segs:
            m = s["motif"] if space == "clip" else dino_of(s["motif"])
            infra = s["motif"] < 2
            rows.append(
                {
                    "segment_id": f"{image_id(s['image_idx'])}-{s['mask_index']:04d}",
                    "image_id": image_id(s["image_idx"]),
                    "image_idx": s["image_idx"],
                    "mask_index": s["mask_index"],
                    "space": space,
                    "k": N_MOTIFS,
                    "cluster_id": m,
                    "similarity": 0.9,
                    "is_infrastructure": infra,
                    "is_rare_motif": False,
                }
            )
        for m in range(N_MOTIFS):
            clip_m = m if space == "clip" else next(c for c in range(N_MOTIFS) if dino_of(c) == m)
            infra = clip_m < 2
            clusters.append(
                {
                    "space": space,
                    "k": N_MOTIFS,
                    "cluster_id": m,
                    "is_infrastructure": infra,
                    "is_rare_motif": False,
                    "is_foreground": not infra,
                }
            )
    _write_derived(
        ws,
        "clusters/motifs",
        {
            "": pa.Table.from_pylist(rows, schema=SEGMENTS_SCHEMA),
            "clusters": pa.Table.from_pylist(clusters, schema=CLUSTERS_SCHEMA),
        },
    )


def install_segments(ws: Workspace, segs: list[dict[str, Any]]) -> None:
    (p,) = ws.passes(["segment"])
    rows: list[dict[str, Any]] = []
    per_image: dict[int, int] = {}
    for s in segs:
        i = s["image_idx"]
        per_image[i] = per_image.get(i, 0) + 1
        rows.append(
            {
                "segment_id": f"{image_id(i)}-{s['mask_index']:04d}",
                "image_id": image_id(i),
                "image_idx": i,
                "mask_index": s["mask_index"],
                "area_fraction": s["area"],
                "touches_border": s["motif"] < 2,
                "model_id": "planted",
            }
        )
    for i, n in per_image.items():
        rows.append(
            {
                "image_id": image_id(i),
                "image_idx": i,
                "mask_index": -1,
                "model_id": "planted",
                "n_segments": n,
                "n_candidates": n,
            }
        )
    table = pa.Table.from_pylist(rows, schema=p.output_schema())
    PartDataset(ws.storage, p.output_rel, p.key).write_part("part-000000000000-planted", table)  # type: ignore[attr-defined]


def install_image_clusters(ws: Workspace, flip_dino: int = 3) -> None:
    n = N_TYPES * PER_TYPE
    for space in ("clip", "dino"):
        label = [planted_type(i) for i in range(n)]
        if space == "dino":  # a few images disagree
            for i in range(flip_dino):
                label[i] = (label[i] + 1) % N_TYPES
        rows = [
            {
                "image_id": image_id(i),
                "image_idx": i,
                "level": 0,
                "k": N_TYPES,
                "cluster_id": label[i],
                "similarity": 0.9,
                "is_exemplar": False,
            }
            for i in range(n)
        ]
        _write_derived(
            ws,
            f"clusters/{space}",
            {
                "": pa.Table.from_pylist(rows, schema=ASSIGNMENTS_SCHEMA),
                "summary": SUMMARY_SCHEMA.empty_table(),
                "metrics": METRICS_SCHEMA.empty_table(),
            },
        )


def install_captions(ws: Workspace, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (cap,) = ws.passes(["caption-factual"])
    (emb,) = ws.passes(["caption-embed"])
    n = N_TYPES * PER_TYPE
    caps, embs = [], []
    centres = rng.normal(size=(N_TYPES, DIM))
    for i in range(n):
        t = planted_type(i)
        words = TYPE_WORDS[t]
        text = f"a photo of a {words[0]} with {words[int(rng.integers(1, 3))]} and a {words[0]}"
        cid = f"c{i:05d}"
        caps.append(
            {
                "unit_id": image_id(i),
                "unit_kind": "image",
                "image_id": image_id(i),
                "image_idx": i,
                "caption_id": cid,
                "prompt_id": "planted",
                "prompt_version": "1",
                "model_id": "planted",
                "is_random_weights": False,
                "text": text,
            }
        )
        v = centres[t] + 0.1 * rng.normal(size=DIM)
        embs.append(
            {
                "caption_id": cid,
                "unit_id": image_id(i),
                "unit_kind": "image",
                "image_id": image_id(i),
                "image_idx": i,
                "embedding": (v / np.linalg.norm(v)).tolist(),
                "model_id": "planted",
            }
        )
    PartDataset(ws.storage, cap.output_rel, cap.key).write_part(  # type: ignore[attr-defined]
        "part-000000000000-planted", pa.Table.from_pylist(caps, schema=cap.output_schema())
    )
    schema = pa.schema(
        [
            f.with_type(pa.list_(pa.float32())) if f.name == "embedding" else f
            for f in emb.output_schema()
        ]
    )
    PartDataset(ws.storage, emb.output_rel, emb.key).write_part(  # type: ignore[attr-defined]
        "part-000000000000-planted", pa.Table.from_pylist(embs, schema=schema)
    )


def planted_workspace(root: Path, *, captions: bool = True) -> Workspace:
    """A workspace holding the planted inputs (no images: every input is a stored table)."""
    (root / "src").mkdir(parents=True, exist_ok=True)
    ws = Workspace.init(root / "ws", [str(root / "src")])
    ws.config.passes["motif-bags"] = {"min_group_images": 5, "bag_cluster_size": PER_TYPE}
    ws.config.passes["caption-clusters"] = {"cluster_size": PER_TYPE}
    segs = planted_segments()
    install_motifs(ws, segs)
    install_segments(ws, segs)
    install_image_clusters(ws)
    if captions:
        install_captions(ws)
    return ws

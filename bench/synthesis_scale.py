"""PASS 7 synthesis at scale: derivation time and peak memory of ``motif-bags``,
``caption-clusters`` and ``structure-agreement`` on synthetic stored outputs.

Writes a workspace whose inputs are stored tables (no images, no models): ``--images`` images
with ``--segments`` segments each (motifs of one or two spaces, their segment geometry), image
clusters (3 levels per space), ``--captions`` captioned images (CLIP-sized text embeddings).
Images belong to ``--types`` latent scene types; a segment's motif is drawn from its type's
pool (60 %), from ``--infra`` infrastructure motifs (20 %) or uniformly (20 %). Each derivation
then runs in a fresh process (wall seconds; peak RSS of that process, and its RSS before the
derivation started, after imports and the catalog).

    python bench/synthesis_scale.py [--images 100000] [--segments 30] [--motifs 2000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

STEPS = ("motif-bags", "caption-clusters", "structure-agreement")
WORDS = [f"w{i}" for i in range(2000)]


def image_id(idx: np.ndarray) -> list[str]:
    return [f"{i:032x}" for i in idx.tolist()]


def write_derived(ws, dataset: str, tables: dict[str, pa.Table]) -> None:  # type: ignore[no-untyped-def]
    folder = "v1-bench"
    for name, t in tables.items():
        sub = f"{dataset}/{folder}" + (f"/{name}" if name else "")
        ws.storage.write_parquet_atomic(f"{sub}/part-00000.parquet", t)
    pointer = {"folder": folder, "version": "v1", "params": {}, "rows": tables[""].num_rows}
    ws.storage.write_bytes_atomic(f"{dataset}/CURRENT.json", json.dumps(pointer).encode())


def build(root: Path, args: argparse.Namespace) -> None:
    from exokiratory import Workspace
    from exokiratory.core.dataset import PartDataset
    from exokiratory.passes.clusters.step import (
        ASSIGNMENTS_SCHEMA,
        METRICS_SCHEMA,
        SUMMARY_SCHEMA,
    )
    from exokiratory.passes.motifs.scores import CLUSTERS_SCHEMA, SEGMENTS_SCHEMA

    rng = np.random.default_rng(0)
    (root / "src").mkdir(parents=True, exist_ok=True)
    ws = Workspace.init(root / "ws", [str(root / "src")])
    n, s, k = args.images, args.segments, args.motifs
    types = rng.integers(0, args.types, n)
    idx = np.repeat(np.arange(n), s)
    mask = np.tile(np.arange(s), n)
    t_seg = types[idx]
    pool = max((k - args.infra) // args.types, 1)
    draw = rng.random(n * s)
    motif = np.where(
        draw < 0.6,
        args.infra + (t_seg * pool + rng.integers(0, pool, n * s)) % (k - args.infra),
        np.where(draw < 0.8, rng.integers(0, args.infra, n * s), rng.integers(0, k, n * s)),
    )
    ids = np.asarray(image_id(np.arange(n)), dtype=object)
    seg_ids = [f"{a}-{m:04d}" for a, m in zip(ids[idx].tolist(), mask.tolist(), strict=True)]
    infra = motif < args.infra
    area = np.where(infra, 0.2, 0.02) * rng.uniform(0.5, 1.5, n * s)
    t0 = time.perf_counter()
    motifs = []
    for sp, space in enumerate(args.spaces):
        m = motif if sp == 0 else (motif * 7 + 3) % k  # the same segments, other ids
        motifs.append(
            pa.table(
                {
                    "segment_id": seg_ids,
                    "image_id": ids[idx],
                    "image_idx": idx,
                    "mask_index": mask.astype(np.int32),
                    "space": [space] * (n * s),
                    "k": np.full(n * s, k, np.int32),
                    "cluster_id": m.astype(np.int32),
                    "similarity": np.full(n * s, 0.9, np.float32),
                    "outlier_score": np.zeros(n * s, np.float32),
                    "is_outlier": np.zeros(n * s, bool),
                    "is_exemplar": np.zeros(n * s, bool),
                    "is_infrastructure": infra,
                    "is_rare_motif": np.zeros(n * s, bool),
                },
                schema=SEGMENTS_SCHEMA,
            )
        )
    cl_rows = [
        {"space": space, "k": k, "cluster_id": c, "is_infrastructure": c < args.infra,
         "is_rare_motif": False, "is_foreground": c >= args.infra}
        for space in args.spaces for c in range(k)
    ]  # fmt: skip
    write_derived(
        ws,
        "clusters/motifs",
        {
            "": pa.concat_tables(motifs),
            "clusters": pa.Table.from_pylist(cl_rows, schema=CLUSTERS_SCHEMA),
        },
    )
    del motifs
    (seg_pass,) = ws.passes(["segment"])
    seg = pa.table(
        {
            "segment_id": seg_ids,
            "image_id": ids[idx],
            "image_idx": idx,
            "mask_index": mask.astype(np.int32),
            "area_fraction": area.astype(np.float32),
            "touches_border": infra,
        }
    )
    marker = pa.table(
        {
            "segment_id": pa.nulls(n, pa.string()),
            "image_id": ids,
            "image_idx": np.arange(n),
            "mask_index": np.full(n, -1, np.int32),
            "n_segments": np.full(n, s, np.int32),
        }
    )
    schema = seg_pass.output_schema()
    full = pa.concat_tables([seg, marker], promote_options="default")
    full = pa.table(
        {
            f.name: full.column(f.name)
            if f.name in full.column_names
            else pa.nulls(full.num_rows, f.type)
            for f in schema
        }
    ).cast(schema)
    PartDataset(ws.storage, seg_pass.output_rel, seg_pass.key).write_part(
        "part-000000000000-bench", full
    )  # type: ignore[attr-defined]
    del full, seg, seg_ids
    for space in args.spaces:
        levels = []
        for level, (cid, kk) in enumerate(
            [
                (types * 11 + rng.integers(0, 11, n), args.types * 11),
                (types, args.types),
                (types // 6, (args.types + 5) // 6),
            ]
        ):
            noisy = np.where(rng.random(n) < 0.1, rng.integers(0, kk, n), cid)
            levels.append(
                pa.table(
                    {
                        "image_id": ids,
                        "image_idx": np.arange(n),
                        "level": np.full(n, level, np.int8),
                        "k": np.full(n, kk, np.int32),
                        "cluster_id": noisy.astype(np.int32),
                        "similarity": np.full(n, 0.9, np.float32),
                        "is_exemplar": np.zeros(n, bool),
                    },
                    schema=ASSIGNMENTS_SCHEMA,
                )
            )
        write_derived(
            ws,
            f"clusters/{space}",
            {
                "": pa.concat_tables(levels),
                "summary": SUMMARY_SCHEMA.empty_table(),
                "metrics": METRICS_SCHEMA.empty_table(),
            },
        )
    _captions(ws, rng, ids, types, args)
    print(f"inputs written in {time.perf_counter() - t0:.1f} s", flush=True)


def _captions(ws, rng, ids, types, args) -> None:  # type: ignore[no-untyped-def]
    from exokiratory.core.dataset import PartDataset

    m = min(args.captions, len(ids))
    chosen = np.sort(rng.choice(len(ids), m, replace=False))
    (cap,) = ws.passes(["caption-factual"])
    (emb,) = ws.passes(["caption-embed"])
    cids = [f"c{i:08d}" for i in range(m)]
    texts = [
        f"a photo of {WORDS[t % len(WORDS)]} and {WORDS[(t * 7 + int(r)) % len(WORDS)]}"
        for t, r in zip(types[chosen].tolist(), rng.integers(0, 5, m).tolist(), strict=True)
    ]
    caps = pa.table(
        {
            "unit_id": ids[chosen],
            "unit_kind": ["image"] * m,
            "image_id": ids[chosen],
            "image_idx": chosen,
            "caption_id": cids,
            "prompt_id": ["bench"] * m,
            "prompt_version": ["1"] * m,
            "model_id": ["bench"] * m,
            "is_random_weights": np.zeros(m, bool),
            "text": texts,
        }
    )
    schema = cap.output_schema()
    caps = pa.table(
        {
            f.name: caps.column(f.name) if f.name in caps.column_names else pa.nulls(m, f.type)
            for f in schema
        }
    ).cast(schema)
    PartDataset(ws.storage, cap.output_rel, cap.key).write_part("part-000000000000-bench", caps)  # type: ignore[attr-defined]
    centres = rng.standard_normal((args.types, args.dim)).astype(np.float32)
    v = centres[types[chosen]] + 0.5 * rng.standard_normal((m, args.dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    emb_t = pa.table(
        {
            "caption_id": cids,
            "unit_id": ids[chosen],
            "unit_kind": ["image"] * m,
            "image_id": ids[chosen],
            "image_idx": chosen,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), args.dim),
            "model_id": ["bench"] * m,
            "revision": pa.nulls(m, pa.string()),
            "error": pa.nulls(m, pa.string()),
        }
    )
    PartDataset(ws.storage, emb.output_rel, emb.key).write_part("part-000000000000-bench", emb_t)  # type: ignore[attr-defined]


def peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM`` (Linux; unlike ``ru_maxrss``, not inherited from the
    parent across fork + exec), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(ws_root: str, step: str) -> None:
    """Child process: one derivation; prints a JSON line."""
    from exokiratory import Workspace

    ws = Workspace(ws_root)
    with ws.catalog():  # the registry, the views: imports before the baseline
        pass
    import sklearn.metrics  # noqa: F401  (imports before the baseline)

    before = peak_rss_mb()
    t0 = time.perf_counter()
    (rep,) = ws.run([step])
    secs = time.perf_counter() - t0
    peak = peak_rss_mb()
    print(
        json.dumps(
            {
                "step": step,
                "seconds": secs,
                "rows": rep.rows,
                "rss_before_mb": before,
                "peak_rss_mb": peak,
            }
        )
    )  # type: ignore[union-attr]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--segments", type=int, default=30)
    ap.add_argument("--motifs", type=int, default=2000)
    ap.add_argument("--infra", type=int, default=20)
    ap.add_argument("--types", type=int, default=300)
    ap.add_argument("--captions", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--spaces", nargs="+", default=["clip", "dino"])
    ap.add_argument("--root", default="/tmp/exokiratory-synthesis-bench")
    ap.add_argument("--child", nargs=2, metavar=("WS", "STEP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_one(*args.child)
        return
    import shutil

    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    print(
        f"{args.images} images x {args.segments} segments, {args.motifs} motifs, spaces "
        f"{args.spaces}, {args.captions} captioned images",
        flush=True,
    )
    build(root, args)
    for step in STEPS:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(root / "ws"), step],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{step}: {r['seconds']:.1f} s, {r['rows']} rows, peak RSS {r['peak_rss_mb']:.0f} MB "
            f"(before the derivation {r['rss_before_mb']:.0f} MB)",
            flush=True,
        )


if __name__ == "__main__":
    main()

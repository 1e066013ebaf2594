"""Scale benchmark of the clusters derivation and the index build at 10^5 and 10^6 x 768.

    python bench/clusters_scale.py --n 100000 --n 1000000 [--keep DIR] [--compare]

Data: the clustered synthetic float16 unit vectors of ``bench/index_scale.py`` (2,000 planted
clusters, Zipf-like sizes, cosine to the centre ~0.86), written as a workspace's
``embeddings_clip`` parts (the real schema of ``embed-clip``, 10,000 rows per part) beside a
manifest of the same images. Then, each in a FRESH process (``exokiratory`` itself, its peak
RSS read with ``os.wait4``): ``exokiratory run clusters-clip`` and ``exokiratory index build
clip``. Reported: wall seconds, peak RSS, k per level, and quality:

* purity of level 0 against the planted clusters (the share of rows in their cluster's majority
  planted cluster) and ARI against the planted clusters at the level whose k is nearest 2,000;
* the assignment check: on a seeded sample of 2,000 rows, the share whose stored level-0
  cluster is the exact nearest of all the stored level-0 centroids (1.0 for an exact assignment;
  below 1 when a two-level fit assigns within the nearest coarse cells);
* ``--synthetic N [--planted P]``: instead of the above, exact against two-level k-means of
  the same k on N synthetic vectors in this process (``compare_synthetic``);
* ``--compare`` (meant for 10^5, where level 0 is below ``TWO_LEVEL_MIN_K`` and so exact): the
  two-level fit of the same level-0 k on the same vectors, in this process, against the stored
  exact fit: ARI, mean cosine to the centroid of both, seconds.
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

from exokiratory.api.workspace import Workspace
from exokiratory.core.dataset import PartDataset
from exokiratory.core.layout import IMAGES, PATHS
from exokiratory.core.manifest import IMAGES_SCHEMA, PATHS_SCHEMA

sys.path.insert(0, str(Path(__file__).parent))
import _proc
import index_scale
from index_scale import _centres, labelled_vectors
from scale_catalog import _table

PART_ROWS = 10_000
CLUSTERS = 2_000
CHECK_ROWS = 2_000
MODEL = "openai/clip-vit-large-patch14"


def image_ids(start: int, n: int) -> list[str]:
    """The synthetic image ids (as ``bench/scale_catalog.py`` writes them)."""
    return [f"{i:032x}" for i in range(start, start + n)]


def planted(n: int) -> np.ndarray:
    """The planted cluster of every row: the first draw of each part's generator in
    ``labelled_vectors`` (regenerated without the vectors)."""
    _, weights = _centres(CLUSTERS)
    return np.concatenate(
        [
            np.random.default_rng(1000 + p).choice(CLUSTERS, min(PART_ROWS, n - lo), p=weights)
            for p, lo in _parts(n)
        ]
    )


def _parts(n: int) -> list[tuple[int, int]]:
    return list(enumerate(range(0, n, PART_ROWS)))


def build(root: Path, n: int) -> Workspace:
    """A workspace whose manifest and ``embeddings_clip`` hold ``n`` synthetic images."""
    src = root / "images"
    src.mkdir(parents=True)
    ws = Workspace.init(root / "ws", [str(src)])
    cfg = root / "ws" / "exokiratory.yaml"  # a 768-d CLIP (the default one is 512-d)
    cfg.write_text(
        cfg.read_text().replace("passes: {}", f"passes:\n  embed-clip: {{model: {MODEL}}}")
    )
    ws = Workspace(str(root / "ws"))
    rng = np.random.default_rng(0)
    (embed,) = ws.passes(["embed-clip"])
    schema = embed.output_schema()
    at = schema.get_field_index("embedding")  # --dim: the model's width replaced
    schema = schema.set(at, schema.field(at).with_type(pa.list_(pa.float16(), index_scale.DIM)))
    ds = PartDataset(ws.storage, embed.output_rel, embed.key)  # type: ignore[attr-defined]
    model_id = embed.embedding_model.spec.model_id  # type: ignore[attr-defined]
    for p, lo in _parts(n):
        m = min(PART_ROWS, n - lo)
        ws.storage.write_parquet_atomic(
            f"{IMAGES}/part-{lo:012d}.parquet", _table(IMAGES_SCHEMA, m, lo, rng)
        )
        ws.storage.write_parquet_atomic(
            f"{PATHS}/part-{lo:012d}.parquet", _table(PATHS_SCHEMA, m, lo, rng)
        )
        x16, _ = labelled_vectors(1000 + p, m, CLUSTERS)
        emb = pa.FixedSizeListArray.from_arrays(
            pa.array(x16.reshape(-1), pa.float16()), index_scale.DIM
        )
        cols = {
            "image_id": image_ids(lo, m),
            "image_idx": np.arange(lo, lo + m, dtype=np.int64),
            "embedding": emb.cast(schema.field("embedding").type),
            "model_id": [model_id] * m,
            "revision": pa.nulls(m, pa.string()),
            "error": pa.nulls(m, pa.string()),
        }
        ds.write_part(f"part-{lo:012d}", pa.table(cols, schema=schema))
    return ws


def set_cluster_size(ws_root: Path, size: int) -> None:
    """``cluster_size`` of ``clusters-clip`` in the workspace config (fewer clusters: cheaper)."""
    cfg = ws_root / "exokiratory.yaml"
    text = cfg.read_text()
    line = f"  clusters-clip: {{cluster_size: {size}}}\n"
    if "clusters-clip:" not in text:
        cfg.write_text(text.replace("passes:\n", "passes:\n" + line))


def timed(cmd: list[str], cwd: Path) -> dict[str, Any]:
    """:func:`_proc.timed`, with the last line of the output instead of all of it."""
    out = _proc.timed(cmd, cwd)
    text = out.pop("output").strip()
    return {**out, "tail": text.splitlines()[-1:] if text else []}


def quality(ws: Workspace, n: int) -> dict[str, Any]:
    """k per level, purity and ARI against the planted clusters, the assignment check."""
    from sklearn.metrics import adjusted_rand_score

    truth = planted(n)
    a = ws.sql(
        "SELECT image_idx, level, k, cluster_id FROM clusters_clip ORDER BY level, image_idx"
    )
    level = a.column("level").to_numpy()
    cid = a.column("cluster_id").to_numpy()
    ks = {int(lv): int(a.column("k").to_numpy()[level == lv][0]) for lv in np.unique(level)}
    lv0 = cid[level == 0]
    joint = lv0.astype(np.int64) * CLUSTERS + truth
    counts = np.bincount(joint, minlength=(int(lv0.max()) + 1) * CLUSTERS)
    purity = float(counts.reshape(-1, CLUSTERS).max(axis=1).sum() / n)
    near = min(ks, key=lambda lv: abs(ks[lv] - CLUSTERS))
    ari = float(adjusted_rand_score(truth, cid[level == near]))
    return {
        "k_per_level": ks,
        "purity_level0": round(purity, 4),
        f"ari_vs_planted_level{near}": round(ari, 4),
        "exact_nearest_share_level0": exact_share(ws, lv0, n),
    }


def exact_share(ws: Workspace, assigned: np.ndarray, n: int) -> float:
    """Share of a seeded sample of rows whose stored level-0 cluster is the exact nearest."""
    from exokiratory.search.clustering import normalise_rows

    s = ws.sql(
        "SELECT cluster_id, centroid FROM clusters_clip_summary WHERE level = 0 ORDER BY cluster_id"
    )
    flat = s.column("centroid").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    centroids = flat.astype(np.float32).reshape(s.num_rows, -1)
    rows = np.sort(np.random.default_rng(5).choice(n, min(CHECK_ROWS, n), replace=False))
    x = np.concatenate([_rows(ws, p, lo, n, rows) for p, lo in _parts(n)])
    best = np.argmax(normalise_rows(x) @ centroids.T, axis=1)
    return round(float(np.mean(best == assigned[rows])), 4)


def _rows(ws: Workspace, p: int, lo: int, n: int, rows: np.ndarray) -> np.ndarray:
    """The stored vectors of ``rows`` that part ``p`` holds, read from the part file itself."""
    m = min(PART_ROWS, n - lo)
    sel = rows[(rows >= lo) & (rows < lo + m)] - lo
    if sel.size == 0:
        return np.zeros((0, index_scale.DIM), np.float16)
    (embed,) = ws.passes(["embed-clip"])
    rel = f"{embed.output_rel}/part-{lo:012d}.parquet"  # type: ignore[attr-defined]
    col = ws.storage.read_parquet(rel).column("embedding").combine_chunks().take(pa.array(sel))
    return col.flatten().to_numpy(zero_copy_only=False).reshape(sel.size, index_scale.DIM)


def compare(ws: Workspace) -> dict[str, Any]:
    """The two-level fit of level 0's k against the stored (exact) level 0."""
    from sklearn.metrics import adjusted_rand_score

    from exokiratory.search import clustering
    from exokiratory.search.indices import load_embeddings_f16

    with ws.catalog(ws.passes()) as cat:
        x16, _idx, _ids, _ = load_embeddings_f16(cat, "clip")
    a = ws.sql(
        "SELECT cluster_id, similarity, k FROM clusters_clip WHERE level = 0 ORDER BY image_idx"
    )
    exact = a.column("cluster_id").to_numpy()
    k = int(a.column("k").to_numpy()[0])
    t = time.perf_counter()
    fit = clustering.spherical_kmeans(x16, k, seed=0, niter=25, two_level_min_k=1)
    seconds = time.perf_counter() - t
    return {
        "k": k,
        "two_level_s": round(seconds, 1),
        "ari_two_level_vs_exact": round(float(adjusted_rand_score(exact, fit.assignments)), 4),
        "mean_cos_exact": round(float(np.mean(a.column("similarity").to_numpy())), 4),
        "mean_cos_two_level": round(float(np.mean(fit.similarity)), 4),
    }


def compare_synthetic(n: int, clusters: int, cluster_size: int = 30) -> dict[str, Any]:
    """Exact against two-level k-means of level 0's k (``n / cluster_size``) on ``n`` vectors
    of ``clusters`` planted clusters, in this process: seconds, mean cosine to the centroid,
    purity against the planted clusters, ARI between the two fits, and the share of rows the
    two-level assignment gives their exact nearest two-level centroid."""
    from sklearn.metrics import adjusted_rand_score

    from exokiratory.search import clustering

    x, truth = labelled_vectors(99, n, clusters)
    k = clustering.choose_k(n, cluster_size)
    out: dict[str, Any] = {"n": n, "planted": clusters, "k": k}
    fits = {}
    for name, min_k in (("exact", k + 1), ("two_level", 2)):
        t = time.perf_counter()
        fits[name] = clustering.spherical_kmeans(x, k, seed=0, two_level_min_k=min_k)
        out[f"{name}_s"] = round(time.perf_counter() - t, 1)
        out[f"{name}_mean_cos"] = round(float(np.mean(fits[name].similarity)), 4)
        out[f"{name}_purity"] = round(_purity(fits[name].assignments, truth, clusters), 4)
    two = fits["two_level"]
    best = np.argmax(clustering.unit_rows(x) @ two.centroids.T, axis=1)
    out["two_level_exact_nearest_share"] = round(float(np.mean(best == two.assignments)), 4)
    ari = adjusted_rand_score(fits["exact"].assignments, two.assignments)
    out["ari_two_level_vs_exact"] = round(float(ari), 4)
    return out


def _purity(labels: np.ndarray, truth: np.ndarray, clusters: int) -> float:
    counts = np.bincount(labels.astype(np.int64) * clusters + truth)
    counts = np.pad(counts, (0, (-len(counts)) % clusters))
    return float(counts.reshape(-1, clusters).max(axis=1).sum() / len(truth))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, action="append")
    ap.add_argument("--keep", type=Path, help="build under this folder (reused when present)")
    ap.add_argument("--compare", action="store_true", help="two-level vs exact level 0")
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument("--synthetic", type=int, help="only compare_synthetic() on this many rows")
    ap.add_argument("--planted", type=int, default=500, help="planted clusters of --synthetic")
    ap.add_argument("--dim", type=int, default=index_scale.DIM, help="vector size (768)")
    ap.add_argument("--cluster-size", type=int, help="clusters-clip's cluster_size (30)")
    args = ap.parse_args()
    index_scale.DIM = args.dim  # the generator reads it when called
    if args.synthetic:
        print(json.dumps(compare_synthetic(args.synthetic, args.planted)), flush=True)
        return
    exe = str(Path(sys.executable).with_name("exokiratory"))
    for n in args.n or [100_000]:
        name = f"clusters-{n}" + (f"x{args.dim}" if args.dim != 768 else "")
        root = (args.keep / name) if args.keep else Path(tempfile.mkdtemp())
        try:
            if not (root / "ws").exists():
                t = time.perf_counter()
                build(root, n)
                print(
                    f"## {n:,} x {args.dim}: workspace written in {time.perf_counter() - t:.1f} s",
                    flush=True,
                )
            ws = Workspace(str(root / "ws"))
            out: dict[str, Any] = {"n": n}
            if args.cluster_size:
                set_cluster_size(root / "ws", args.cluster_size)
            out["clusters"] = timed([exe, "run", "clusters-clip"], root / "ws")
            out.update(quality(ws, n))
            if args.compare:
                out["compare"] = compare(ws)
            if not args.skip_index:
                out["index"] = timed([exe, "index", "build", "clip"], root / "ws")
            print(json.dumps(out), flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Cluster hierarchies over stored embeddings: recovery of known clusters, nesting, exemplars,
stability against the previous run, and CLIP-vs-DINO agreement in ``status``.

Embeddings are written as parts in the exact schema of the embed passes (no model needed), with a
known cluster structure, so the tests check meaning, not plumbing."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("faiss")
pytest.importorskip("sklearn")

from sklearn.metrics import adjusted_rand_score

from exokiratory import Workspace
from exokiratory.core.config import render_config
from exokiratory.core.dataset import PartDataset
from exokiratory.search.clustering import (
    choose_k,
    exemplars,
    hierarchical_kmeans,
    level_sizes,
    spherical_kmeans,
)

N_CLUSTERS = 4
PER_CLUSTER = 15


def _blobs(n_clusters: int, per: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    labels = np.repeat(np.arange(n_clusters), per)
    x = centres[labels] + 0.08 * rng.normal(size=(len(labels), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_spherical_kmeans_recovers_blobs_and_is_deterministic() -> None:
    x, labels = _blobs(5, 30, 16)
    a = spherical_kmeans(x, 5, seed=3)
    b = spherical_kmeans(x, 5, seed=3)
    assert adjusted_rand_score(labels, a.assignments) == 1.0
    assert np.array_equal(a.assignments, b.assignments)
    assert np.allclose(np.linalg.norm(a.centroids, axis=1), 1.0, atol=1e-5)
    assert a.sizes().tolist() == [30] * 5
    ex = exemplars(a, 3)
    for c, rows in ex.items():
        assert len(rows) == 3 and (a.assignments[rows] == c).all()
        sims = a.similarity[rows]
        assert (np.diff(sims) <= 0).all()  # best first
        assert sims[0] == a.similarity[a.assignments == c].max()


def test_kmeans_rejects_bad_k() -> None:
    x, _ = _blobs(2, 3, 4)
    with pytest.raises(ValueError, match="k must be"):
        spherical_kmeans(x, 7)
    with pytest.raises(ValueError, match="empty"):
        spherical_kmeans(np.zeros((0, 4), np.float32), 1)


def test_hierarchy_nests_and_level_sizes() -> None:
    assert level_sizes(1, 10, 4, 3) == []
    assert level_sizes(1000, 10, 4, 3) == [100, 25, 7]
    assert level_sizes(60, 30, 8, 3) == [2]
    assert choose_k(10, 100) == 2 and choose_k(3, 1) == 3
    x, labels = _blobs(6, 20, 12, seed=1)
    levels = hierarchical_kmeans(x, [12, 6, 2], seed=0)
    assert [lv.k for lv in levels] == [12, 6, 2]
    for fine, coarse in itertools.pairwise(levels):
        # each image's coarse cluster is its fine cluster's parent
        assert np.array_equal(coarse.assignments, fine.parents[fine.assignments])
    assert (levels[-1].parents == -1).all()
    assert adjusted_rand_score(labels, levels[1].assignments) > 0.9
    with pytest.raises(ValueError, match="decrease"):
        hierarchical_kmeans(x, [2, 6])


def _make_workspace(root: Path, n_images: int) -> Workspace:
    from PIL import Image

    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(n_images):
        px = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(px).save(src / f"img{i:03d}.png")
    ws = Workspace.init(root / "ws", [str(src)])
    # a hub id that is never loaded: the tests write the embedding parts themselves
    ws.config.passes["embed-clip"] = {"model": "test-org/clip-like"}
    ws.config.passes["embed-dino"] = {"model": "test-org/dino-like"}
    ws.config.passes["clusters-clip"] = {"cluster_size": 8, "branching": 2, "max_levels": 2}
    ws.config.passes["clusters-dino"] = {"cluster_size": 8, "branching": 2, "max_levels": 2}
    ws.storage.write_bytes_atomic("exokiratory.yaml", render_config(ws.config).encode())
    ws = Workspace(root / "ws")
    ws.scan(progress=False)
    return ws


def _write_embeddings(ws: Workspace, space: str, x: np.ndarray, order: list[str]) -> None:
    """Rows for the images in ``order`` (image_ids), with vectors ``x``, as one part."""
    p = ws._embed_pass(space)
    schema = p.output_schema()
    dim = getattr(schema.field("embedding").type, "list_size", x.shape[1])  # tiny: unbuilt
    x = np.pad(x, ((0, 0), (0, dim - x.shape[1]))) if x.shape[1] < dim else x[:, :dim]
    by_id = {
        r["image_id"]: r["image_idx"]
        for r in ws.sql("SELECT image_id, image_idx FROM images").to_pylist()
    }
    table = pa.table(
        {
            "image_id": order,
            "image_idx": [by_id[i] for i in order],
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(x.astype(np.float16).reshape(-1), pa.float16()), dim
            ),
            "model_id": [p.spec.model_id] * len(order),
            "revision": [None] * len(order),
            "error": [None] * len(order),
        }
    )
    name = f"part-{by_id[order[0]]:012d}-test.parquet"
    PartDataset(ws.storage, p.output_rel, p.key, schema).write_part(name, table)


def test_clusters_derivation_tables_stability_and_agreement(tmp_path: Path) -> None:
    n = N_CLUSTERS * PER_CLUSTER
    ws = _make_workspace(tmp_path, n + 12)
    ids = [
        r["image_id"] for r in ws.sql("SELECT image_id FROM images ORDER BY image_idx").to_pylist()
    ]
    x, labels = _blobs(N_CLUSTERS, PER_CLUSTER, 32)
    first = ids[:n]
    _write_embeddings(ws, "clip", x, first)
    # DINO sees the same groups in another space (a random rotation) with other label numbers
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(32, 32)))
    _write_embeddings(ws, "dino", (x @ q).astype(np.float32), first)

    reports = ws.run(["clusters-clip", "clusters-dino"])
    assert all(not r.up_to_date for r in reports)
    assign = ws.sql("SELECT * FROM clusters_clip WHERE level = 0 ORDER BY image_idx")
    assert assign.num_rows == n
    k0 = assign.column("k")[0].as_py()
    assert k0 == choose_k(n, 8)  # 8
    # every fine cluster lies inside one true cluster
    pairs = set(zip(assign.column("cluster_id").to_pylist(), labels.tolist(), strict=True))
    assert len({c for c, _ in pairs}) == len(pairs)
    # levels nest: summary parent ids agree with the coarse assignments
    nest = ws.sql(
        """SELECT count(*) FROM clusters_clip f JOIN clusters_clip c USING (image_id)
           JOIN clusters_clip_summary s ON s.level = 0 AND s.cluster_id = f.cluster_id
           WHERE f.level = 0 AND c.level = 1 AND s.parent_cluster_id != c.cluster_id"""
    )
    assert nest.column(0)[0].as_py() == 0
    summary = ws.sql("SELECT * FROM clusters_clip_summary WHERE level = 0")
    assert sum(summary.column("size").to_pylist()) == n
    for row in summary.to_pylist():
        assert 1 <= len(row["exemplar_ids"]) <= 5
        assert abs(float(np.linalg.norm(row["centroid"])) - 1.0) < 1e-4
    n_ex = ws.sql("SELECT count(*) FROM clusters_clip WHERE level = 0 AND is_exemplar")
    assert n_ex.column(0)[0].as_py() == sum(len(r["exemplar_ids"]) for r in summary.to_pylist())
    metrics = ws.sql("SELECT * FROM clusters_clip_metrics ORDER BY level").to_pylist()
    assert [m["level"] for m in metrics] == [0, 1]
    assert metrics[0]["ari_vs_previous"] is None  # first run

    st = ws.status()
    agree = {a["level"]: a for a in st.cluster_agreement}
    assert agree[1]["ari"] > 0.95 and agree[1]["n_images"] == n
    assert st.to_dict()["cluster_agreement"] == st.cluster_agreement

    # up to date: nothing to do; new embeddings: re-derived, compared with the previous run
    assert all(r.up_to_date for r in ws.run(["clusters-clip"]))
    extra, _ = _blobs(N_CLUSTERS, 3, 32)
    _write_embeddings(ws, "clip", extra, ids[n : n + 12])
    (rep,) = ws.run(["clusters-clip"])
    assert not rep.up_to_date
    metrics = ws.sql("SELECT * FROM clusters_clip_metrics ORDER BY level").to_pylist()
    assert metrics[0]["n_common_with_previous"] == n
    assert metrics[-1]["ari_vs_previous"] is not None and metrics[-1]["ari_vs_previous"] > 0.5


def test_clusters_without_embeddings_is_empty_not_an_error(tmp_path: Path) -> None:
    ws = _make_workspace(tmp_path, 3)
    (rep,) = ws.run(["clusters-clip"])
    assert rep.rows == 0
    assert ws.sql("SELECT count(*) FROM clusters_clip_summary").column(0)[0].as_py() == 0
    assert ws.status().cluster_agreement == []

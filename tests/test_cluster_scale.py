"""Clusters and index builds in bounded memory: stored float16 embeddings read in batches into
one float16 matrix (the row the view keeps for each key), two-level ("coarse then fine")
k-means for large k, and its approximate, batch-pure assignment."""

from __future__ import annotations

from collections.abc import Iterator
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
from exokiratory.search import clustering, indices

DIM = 16


def _blobs(k: int, per: int, seed: int = 0, noise: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, DIM))
    labels = np.repeat(np.arange(k), per)
    x = centres[labels] + noise * rng.normal(size=(len(labels), DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16), labels


def test_fine_shares_are_proportional_and_bounded() -> None:
    sizes = np.array([100, 0, 1, 30, 7])
    shares = clustering.fine_shares(sizes, 20)
    assert shares.sum() == 20 and shares[1] == 0 and (shares[sizes > 0] >= 1).all()
    assert (shares <= sizes).all() and shares[0] > shares[3] > shares[4]
    assert clustering.fine_shares(np.array([3, 3]), 6).tolist() == [3, 3]  # every row a centroid
    assert clustering.fine_shares(np.array([50, 1, 1, 1]), 4).tolist() == [1, 1, 1, 1]


def test_two_level_kmeans_recovers_blobs_and_is_deterministic() -> None:
    x, labels = _blobs(12, 20)
    a = clustering.spherical_kmeans(x, 12, seed=3, two_level_min_k=2)
    b = clustering.spherical_kmeans(x, 12, seed=3, two_level_min_k=2)
    assert np.array_equal(a.assignments, b.assignments)
    assert np.array_equal(a.centroids, b.centroids)
    # k is split among the coarse cells by their size, so a blob cut by a coarse boundary can
    # be split while two others merge: close to, not exactly, the blobs
    assert adjusted_rand_score(labels, a.assignments) > 0.8
    assert a.k == 12 and np.allclose(np.linalg.norm(a.centroids, axis=1), 1.0, atol=1e-5)
    levels = clustering.hierarchical_kmeans(x, [12, 4], seed=0, two_level_min_k=2)
    assert [lv.k for lv in levels] == [12, 4]
    assert np.array_equal(levels[1].assignments, levels[0].parents[levels[0].assignments])


def test_two_level_assignment_exact_when_every_cell_is_probed() -> None:
    x, _ = _blobs(40, 15, seed=1, noise=0.3)
    unit = clustering.unit_rows(x)
    full = clustering.spherical_kmeans(x, 40, seed=0, two_level_min_k=2, probe=10**6)
    exact = np.argmax(unit @ full.centroids.T, axis=1)
    assert np.array_equal(full.assignments, exact)
    near = clustering.spherical_kmeans(x, 40, seed=0, two_level_min_k=2, probe=2)
    assert np.array_equal(near.centroids, full.centroids)  # the probe only changes assignment
    agree = np.mean(near.assignments == np.argmax(unit @ near.centroids.T, axis=1))
    assert 0.9 <= agree <= 1.0
    sims = np.einsum("nd,nd->n", unit, near.centroids[near.assignments])
    assert np.allclose(near.similarity, sims, atol=1e-5)


def test_assignment_is_a_pure_function_of_float16_batches() -> None:
    x, _ = _blobs(6, 20, seed=2, noise=0.4)
    fit = clustering.spherical_kmeans(x, 6, seed=0)
    a, s = clustering.assign_to_centroids(x, fit.centroids, batch=7)
    whole_a, whole_s = clustering.assign_batch(x, fit.centroids)
    assert np.array_equal(a, whole_a) and np.array_equal(s, whole_s)
    assert np.array_equal(a, fit.assignments)
    f32 = clustering.normalise_rows(x.astype(np.float32))
    assert np.array_equal(clustering.unit_rows(x, batch=9), f32)  # no whole float32 copy
    assert np.array_equal(clustering.training_rows(x, 0), f32)
    sample = clustering.training_rows(x, 4, size=50)
    assert np.array_equal(sample, f32[clustering.sample_rows(len(x), 4, 50)])


def _chunks(x: np.ndarray, ids: np.ndarray, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for lo in range(0, len(ids), rows):
        yield ids[lo : lo + rows], x[lo : lo + rows].astype(np.float32)


def test_fill_matrix_places_chunks_and_keeps_float16() -> None:
    x, _ = _blobs(3, 10)
    ids = np.arange(30, dtype=np.int64) * 3
    perm = np.random.default_rng(0).permutation(30)
    out = indices.fill_matrix(_chunks(x[perm], ids[perm], 7), ids, DIM)
    assert out.dtype == np.float16 and np.array_equal(out, x)
    x32 = x.astype(np.float32) + np.float32(1e-5)  # not float16 values: kept as float32
    out32 = indices.fill_matrix(((ids, x32[:]),), ids, DIM)
    assert out32.dtype == np.float32 and np.array_equal(out32, x32)
    with pytest.raises(RuntimeError, match="changed"):
        indices.fill_matrix(_chunks(x[:20], ids[:20], 7), ids, DIM)
    with pytest.raises(RuntimeError, match="changed"):
        indices.fill_matrix(_chunks(x, ids + 1, 7), ids, DIM)


def _workspace(root: Path, clusters: dict[str, int]) -> Workspace:
    src = root / "src"
    src.mkdir(parents=True)
    ws = Workspace.init(root / "ws", [str(src)])
    ws.config.passes["embed-clip"] = {"model": "test-org/clip-like"}
    ws.config.passes["clusters-clip"] = clusters
    ws.storage.write_bytes_atomic("exokiratory.yaml", render_config(ws.config).encode())
    return Workspace(root / "ws")


def _part(ws: Workspace, name: str, idx: np.ndarray, x: np.ndarray, error: str | None) -> None:
    (p,) = ws.passes(["embed-clip"])
    table = clip_part_table(ws, idx, x, error)
    PartDataset(ws.storage, p.output_rel, p.key, table.schema).write_part(name, table)  # type: ignore[attr-defined]


def clip_part_table(ws: Workspace, idx: np.ndarray, x: np.ndarray, error: str | None) -> pa.Table:
    """Rows of ``embed-clip`` (its schema) for ``idx`` with float16 vectors ``x``."""
    (p,) = ws.passes(["embed-clip"])
    schema = p.output_schema()
    return pa.table(
        {
            "image_id": [f"{i:032x}" for i in idx],
            "image_idx": idx.astype(np.int64),
            "embedding": pa.ListArray.from_arrays(
                pa.array(np.arange(0, (len(idx) + 1) * DIM, DIM, dtype=np.int32)),
                pa.array(x.reshape(-1), pa.float16()),
            ),
            "model_id": [p.spec.model_id] * len(idx),  # type: ignore[attr-defined]
            "revision": [None] * len(idx),
            "error": [error] * len(idx),
        }
    ).cast(schema)


def test_stored_embeddings_read_from_parts_as_the_view_keeps_them(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, {})
    x, _ = _blobs(4, 10)
    idx = np.arange(40)
    _part(ws, "part-a", idx[:25], x[:25], None)
    _part(ws, "part-b", idx[20:], -x[20:], None)  # later part: wins rows 20..24
    _part(ws, "part-c", idx[:5], x[:5] * 0, "boom")  # errors never win over good rows
    with ws.catalog(ws.passes()) as cat:
        assert indices.RawParts.find(cat, "clip") is not None
        vectors, got_idx, ids, _ = indices.load_embeddings_f16(cat, "clip")
        view = cat.query(
            "SELECT image_idx, image_id, embedding FROM embeddings_clip "
            "WHERE error IS NULL ORDER BY image_idx"
        )
        ref = indices.embedding_matrix(view.column("embedding"))
        f32, _, id_list, _ = indices.load_embeddings(cat, "clip")
    expected = np.concatenate([x[:20], -x[20:]])
    assert vectors.dtype == np.float16 and np.array_equal(vectors, expected)
    assert np.array_equal(vectors.astype(np.float32), ref)
    assert np.array_equal(got_idx, idx) and ids.to_pylist() == view.column(1).to_pylist()
    assert f32.dtype == np.float32 and np.array_equal(f32, ref) and id_list == ids.to_pylist()


def test_clusters_derivation_two_level_and_flat_index(tmp_path: Path) -> None:
    x, labels = _blobs(8, 12)
    ws = _workspace(tmp_path, {"cluster_size": 12, "max_levels": 1, "two_level_min_k": 4})
    _part(ws, "part-a", np.arange(len(labels)), x, None)
    (rep,) = ws.run(["clusters-clip"])
    assert rep.rows == len(labels)
    t = ws.sql("SELECT cluster_id, k FROM clusters_clip WHERE level = 0 ORDER BY image_idx")
    assert t.column("k").to_pylist()[0] == 8
    assert adjusted_rand_score(labels, t.column("cluster_id").to_numpy()) > 0.9
    report = ws.build_index("clip", "flat")
    assert report.total == len(labels)
    hits = indices.search_vectors(ws.storage, "clip", x[:3].astype(np.float32), 1)
    assert hits.column("image_idx").to_pylist() == [0, 1, 2]


def _shuffled_chunks(x: np.ndarray, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The rows of ``x`` as (ids, float32 vectors) chunks of uneven sizes in a random order,
    as parts arrive from storage."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    cuts = np.sort(rng.choice(np.arange(1, len(x)), 7, replace=False))
    for rows in np.split(order, cuts):
        yield rows.astype(np.int64), x[rows].astype(np.float32)


@pytest.mark.parametrize("two_level_min_k", [2, 10**6])
def test_streamed_hierarchy_equals_the_in_memory_fit(
    monkeypatch: pytest.MonkeyPatch, two_level_min_k: int
) -> None:
    """Fitted on the gathered training sample and assigned from shuffled chunks in shards, the
    hierarchy is the in-memory one: the same centroids, labels at every level and cosines."""
    monkeypatch.setattr(clustering, "TRAIN_SAMPLE_MAX", 300)  # n = 960 > 300: a real sample
    x, _ = _blobs(24, 40, seed=5)
    ks, kw = [24, 6, 2], {"seed": 3, "two_level_min_k": two_level_min_k}
    levels = clustering.hierarchical_kmeans(x, ks, **kw)
    train = x[clustering.training_positions(len(x), 3)]
    assert len(train) == 300
    hier = clustering.fit_hierarchy(train, ks, **kw)
    labels, sims = clustering.stream_hierarchy(_shuffled_chunks(x, 1), np.arange(len(x)), hier)
    assert (hier.cells is not None) == (two_level_min_k == 2)
    for li, lv in enumerate(levels):
        assert np.array_equal(hier.centroids[li], lv.centroids)
        assert np.array_equal(hier.parents[li], lv.parents)
        assert np.array_equal(labels[li], lv.assignments)
        ref = clustering.row_similarity(x, lv.centroids, lv.assignments)
        assert np.array_equal(sims[li], ref)


def test_streamed_assignment_refuses_missing_or_extra_rows() -> None:
    x, _ = _blobs(4, 10)
    hier = clustering.fit_hierarchy(x, [4, 2])
    chunks = list(_shuffled_chunks(x, 0))
    with pytest.raises(RuntimeError, match="changed while they were read"):
        clustering.stream_hierarchy(chunks[1:], np.arange(len(x)), hier)
    with pytest.raises(RuntimeError, match="changed while they were read"):
        clustering.stream_hierarchy([*chunks, chunks[0]], np.arange(len(x)), hier)


def test_clusters_derivation_streams_above_the_training_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the training sample size, ``run clusters-clip`` fits on the sampled rows read from
    the parts and assigns every row in a second streamed pass: the same tables as the fit of
    the whole matrix in memory, and never the whole matrix (the reads are counted)."""
    monkeypatch.setattr(clustering, "TRAIN_SAMPLE_MAX", 150)
    x, labels = _blobs(8, 60, seed=2)
    ws = _workspace(tmp_path, {"cluster_size": 15, "max_levels": 2})
    _part(ws, "part-a", np.arange(200), x[:200], None)
    _part(ws, "part-b", np.arange(200, len(x)), x[200:], None)
    gathered: list[int] = []
    real_gather = indices.gather_rows

    def counting(chunks, wanted, dim):  # type: ignore[no-untyped-def]
        out = real_gather(chunks, wanted, dim)
        gathered.append(len(out))
        return out

    monkeypatch.setattr(indices, "gather_rows", counting)
    ws.run(["clusters-clip"])
    # the derivation held only the training sample (a later gather is the structure
    # snapshot's bootstrap sample of the 480 images, read after the derivation is done)
    assert gathered[0] == 150 and len(gathered) <= 2
    levels = clustering.hierarchical_kmeans(x, [32, 4], seed=0)
    t = ws.sql("SELECT level, cluster_id, similarity FROM clusters_clip ORDER BY level, image_idx")
    for li, lv in enumerate(levels):
        got = t.filter(pa.compute.equal(t.column("level"), li))
        assert np.array_equal(got.column("cluster_id").to_numpy(), lv.assignments)
        ref = clustering.row_similarity(x, lv.centroids, lv.assignments)
        assert np.array_equal(got.column("similarity").to_numpy(), ref)
    assert (
        adjusted_rand_score(
            labels, t.filter(pa.compute.equal(t.column("level"), 1)).column("cluster_id").to_numpy()
        )
        > 0.3
    )

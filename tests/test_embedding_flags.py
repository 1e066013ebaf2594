"""Semantic near-duplicates (SemDeDup-style) and k-NN embedding outliers in the flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("faiss")

from exokiratory.core.config import render_config
from exokiratory.core.robust import high_side_robust_z
from exokiratory.passes.flags.embedding import (
    SpaceVectors,
    candidate_pairs,
    knn_distance,
    semantic_duplicates,
)

from .test_clusters import _blobs, _make_workspace, _write_embeddings


def _brute_pairs(x: np.ndarray, t: float) -> set[tuple[int, int]]:
    s = x.astype(np.float64) @ x.astype(np.float64).T
    i, j = np.nonzero(np.triu(s >= t, 1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


@settings(max_examples=25, deadline=None)
@given(
    n_clusters=st.integers(1, 6),
    per=st.integers(2, 30),
    noise=st.floats(0.01, 0.3),
    threshold=st.floats(0.8, 0.99),
    size_factor=st.integers(1, 3),
    seed=st.integers(0, 10_000),
)
def test_candidate_pairs_are_exact_and_complete_on_clustered_data(
    n_clusters: int, per: int, noise: float, threshold: float, size_factor: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, 16))
    x = np.repeat(centres, per, 0) + noise * rng.normal(size=(n_clusters * per, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    # k-means clusters at least as large as the natural groups (as with the default 1000)
    found = {tuple(p) for p in candidate_pairs(x, threshold, per * size_factor).tolist()}
    truth = _brute_pairs(x, threshold)
    assert found <= truth  # every reported pair is re-checked exactly
    if truth:  # clustered search with a second-nearest probe finds (nearly) all of them
        assert len(found) >= 0.9 * len(truth)


def test_semantic_duplicates_group_and_canonical_by_quality() -> None:
    x, _ = _blobs(3, 1, 8, seed=2)
    dup = x[0] + 0.01 * np.random.default_rng(0).normal(size=8)
    vecs = np.vstack([x, dup / np.linalg.norm(dup)]).astype(np.float32)
    sv = SpaceVectors("clip", ["a", "b", "c", "d"], vecs)
    quality = {"megapixels": np.array([1.0, 1.0, 1.0, 4.0])}
    t = semantic_duplicates(sv, 0.95, 1000, quality).to_pylist()
    assert [r["image_id"] for r in t] == ["a", "d"]
    assert all(r["semantic_dup_group_id"] == "d" for r in t)  # larger image is canonical
    assert [r["is_semantic_dup_canonical"] for r in t] == [False, True]
    assert t[0]["semantic_similarity_to_canonical"] > 0.95
    assert semantic_duplicates(sv, 0.9999, 1000).num_rows == 0


def test_knn_distance_matches_brute_force_and_finds_the_outlier() -> None:
    x, _ = _blobs(3, 20, 16, seed=4)
    far = -x.mean(0)
    x = np.vstack([x, far / np.linalg.norm(far)]).astype(np.float32)
    d = knn_distance(x, 5)
    s = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(s, -np.inf)
    brute = 1 - np.sort(s, axis=1)[:, ::-1][:, :5].mean(1)
    assert np.allclose(d, brute, atol=1e-5)
    z = high_side_robust_z(d)
    assert int(np.argmax(z)) == len(x) - 1 and z[-1] > 4
    assert np.isnan(knn_distance(x[:1], 5)).all()


def test_flags_gain_semantic_duplicates_and_embedding_outliers(tmp_path: Path) -> None:
    ws = _make_workspace(tmp_path, 40)
    ws.run(["sense"], workers=1, progress=False)
    ids = [
        r["image_id"] for r in ws.sql("SELECT image_id FROM images ORDER BY image_idx").to_pylist()
    ]
    rng = np.random.default_rng(3)
    x = np.repeat(rng.normal(size=(4, 32)), 10, 0) + 0.6 * rng.normal(size=(40, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # groups, members at cosine ~0.7
    x[1] = x[0] + 0.005 * rng.normal(size=32)  # a semantic duplicate of image 0
    x[1] /= np.linalg.norm(x[1])
    far = rng.normal(size=32)
    x[39] = far / np.linalg.norm(far)  # an image unlike any other
    _write_embeddings(ws, "clip", x, ids)
    ws.run(["flags"], progress=False)
    f = {r["image_id"]: r for r in ws.sql("SELECT * FROM flags").to_pylist()}
    a, b = f[ids[0]], f[ids[1]]
    assert a["semantic_dup_group_id"] == b["semantic_dup_group_id"] is not None
    assert a["semantic_dup_group_size"] == 2
    assert a["is_semantic_duplicate"] != b["is_semantic_duplicate"]
    dup_id = ids[0] if a["is_semantic_duplicate"] else ids[1]
    routed = {r["image_id"] for r in ws.sql("SELECT image_id FROM images_routed").to_pylist()}
    assert dup_id not in routed
    others = [f[i] for i in ids[2:39]]
    assert not any(r["is_semantic_duplicate"] for r in others)
    assert f[ids[39]]["is_embedding_outlier"]
    assert sum(r["is_embedding_outlier"] for r in f.values()) <= 3
    assert f[ids[5]]["knn_distance_clip"] is not None and f[ids[5]]["knn_distance_dino"] is None
    # the k-NN distances are cached: a threshold change re-derives without recomputing them
    cached = list((Path(ws.storage.root) / "manifests/flags/_knn").glob("clip-*.parquet"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    ws.config.passes["flags"] = {"embedding_outlier_threshold": 100.0}
    ws.storage.write_bytes_atomic("exokiratory.yaml", render_config(ws.config).encode())
    ws = type(ws)(ws.storage.root)
    ws.run(["flags"], progress=False)
    assert cached[0].stat().st_mtime_ns == stamp
    again = {r["image_id"]: r for r in ws.sql("SELECT * FROM flags").to_pylist()}
    assert again[ids[39]]["knn_distance_clip"] == f[ids[39]]["knn_distance_clip"]
    assert not again[ids[39]]["is_embedding_outlier"]
    # without embeddings the columns are null and the flags are false
    ws2 = _make_workspace(tmp_path / "plain", 5)
    ws2.run(["sense", "flags"], workers=1, progress=False)
    rows = ws2.sql("SELECT is_semantic_duplicate, embedding_outlier_score FROM flags").to_pylist()
    assert rows and all(
        r["is_semantic_duplicate"] is False and r["embedding_outlier_score"] is None for r in rows
    )


# -- bounded memory: the spill, the two-cluster k-NN, the vectorised rules -----------------


def _unit_f16(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def test_spill_writes_gathers_and_switches_to_float32() -> None:
    from exokiratory.search.spill import Spill

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float16)
    with Spill(50, 6) as s:
        order = rng.permutation(50)
        s.write_at(order[:30], x[order[:30]])
        s.write_at(order[30:], x[order[30:]])
        assert np.array_equal(s.read(0, 50), x) and s.read(45, 99).shape == (5, 6)
        rows = np.array([7, 3, 3, 49, 0, 8, 9])
        assert np.array_equal(s.gather(rows), x[rows])
        assert np.array_equal(np.asarray(s.memmap()), x)
        wide = s.to_float32()
    with wide:
        assert wide.dtype == np.float32 and np.array_equal(wide.read(0, 50), x.astype(np.float32))
        with pytest.raises(IndexError):
            wide.gather(np.array([50]))


@pytest.mark.slow
def test_spill_round_trip_equals_load_embeddings(tmp_path: Path) -> None:
    from exokiratory.search.indices import load_embeddings
    from exokiratory.search.spill import spill_embeddings

    ws = _make_workspace(tmp_path, 12)
    ids = [r["image_id"] for r in ws.sql("SELECT image_id FROM images").to_pylist()]
    x, _ = _blobs(3, 4, 16, seed=1)
    _write_embeddings(ws, "clip", x[:7], ids[:7])  # two parts, in reverse key order
    _write_embeddings(ws, "clip", x[7:], ids[7:])
    with ws.catalog(ws.passes()) as cat:
        vectors, idx, want_ids, model = load_embeddings(cat, "clip")
        got = spill_embeddings(cat, "clip")
    with got.spill:
        assert got.spill.dtype == np.float16  # the stored values, not a float32 copy
        assert np.array_equal(got.spill.read(0, got.spill.n).astype(np.float32), vectors)
        assert np.array_equal(got.image_idx, idx) and got.ids.to_pylist() == want_ids
        assert got.model_id == model


def test_spill_of_float32_values_keeps_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa

    from exokiratory.search import indices
    from exokiratory.search.spill import spill_embeddings

    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 4)).astype(np.float32)
    x[:4] = x[:4].astype(np.float16)  # the first chunk is exactly float16, the second is not
    keys = pa.table({"image_idx": np.arange(9), "image_id": [f"i{i}" for i in range(9)]})
    chunks = [(np.arange(4), x[:4]), (np.arange(8, 3, -1), x[8:3:-1])]
    monkeypatch.setattr(indices, "stream_chunks", lambda *a, **k: lambda: iter(chunks))
    got = spill_embeddings(None, "clip", keys=(keys, "image_idx", "m", 4))  # type: ignore[arg-type]
    assert got.spill.dtype == np.float32 and np.array_equal(got.spill.read(0, 9), x)
    monkeypatch.setattr(indices, "stream_chunks", lambda *a, **k: lambda: iter(chunks[:1]))
    with pytest.raises(RuntimeError, match="changed while they were read"):
        spill_embeddings(None, "clip", keys=(keys, "image_idx", "m", 4))  # type: ignore[arg-type]


def _spilled(x16: np.ndarray) -> SpaceVectors:
    from exokiratory.search.spill import Spill

    s = Spill(*x16.shape)
    s.write(0, x16)
    return SpaceVectors("clip", [f"id{i:04d}" for i in range(len(x16))], s)


def test_semantic_pairs_from_the_spill_match_brute_force_on_planted_duplicates() -> None:
    rng = np.random.default_rng(5)
    base = np.repeat(rng.normal(size=(8, 24)), 40, 0) + 0.7 * rng.normal(size=(320, 24))
    src = rng.choice(320, 25, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(320), src), 25, replace=False)
    base[dst] = base[src] + 0.02 * rng.normal(size=(25, 24))  # planted near copies
    x16 = _unit_f16(base)
    x32 = x16.astype(np.float32)
    x32 /= np.linalg.norm(x32, axis=1, keepdims=True)
    truth = _brute_pairs(x32, 0.95)
    assert len(truth) >= 25
    sv = _spilled(x16)
    with sv.vectors:  # type: ignore[union-attr]
        from_spill = {tuple(p) for p in candidate_pairs(sv.vectors, 0.95, 40).tolist()}
        assert from_spill == {tuple(p) for p in candidate_pairs(x32, 0.95, 40).tolist()} == truth
        t = semantic_duplicates(sv, 0.95, 40)
        in_groups = {i for p in truth for i in p}
        assert sorted(t.column("image_id").to_pylist()) == sorted(f"id{i:04d}" for i in in_groups)


def test_two_cluster_knn_above_the_exact_limit_agrees_with_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from exokiratory.passes.flags import embedding as emb

    rng = np.random.default_rng(2)
    centres = rng.normal(size=(12, 32))
    x16 = _unit_f16(np.repeat(centres, 150, 0) + 0.5 * rng.normal(size=(1800, 32)))
    x32 = x16.astype(np.float32)
    exact = knn_distance(x32 / np.linalg.norm(x32, axis=1, keepdims=True), 10)
    monkeypatch.setattr(emb, "EXACT_KNN_MAX", 500)
    sv = _spilled(x16)
    with sv.vectors:  # type: ignore[union-attr]
        approx = emb.space_knn(sv, 10, 150)
        assert np.isfinite(approx).all()
        assert (approx >= exact - 1e-5).all()  # a subset of the rows: never nearer
        assert np.corrcoef(approx, exact)[0, 1] > 0.95
        assert np.median(approx - exact) < 0.01
        # the duplicate search computes it in the same pass, and the rule reads it back
        sv2 = _spilled(x16)
        with sv2.vectors:  # type: ignore[union-attr]
            semantic_duplicates(sv2, 0.95, 150, knn_k=10)
            assert ("knn", 150, 10) in sv2.memo
            assert np.array_equal(emb.space_knn(sv2, 10, 150), approx)


def test_exact_knn_in_query_batches_is_bit_identical_to_one_search(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import faiss

    from exokiratory.passes.flags import embedding as emb

    x, _ = _blobs(6, 2000, 16, seed=8)
    index = faiss.IndexFlatIP(16)
    index.add(x)
    sims, nbrs = index.search(x, 6)
    one_search = emb._mean_distance(sims, nbrs, np.arange(len(x)), 5)
    monkeypatch.setattr(emb, "KNN_QUERY_BATCH", 4096)  # several batches, the last one merged
    assert len(list(emb._query_batches(len(x), 128000 // 16 + 1))) == 1
    monkeypatch.setattr(faiss.cvar, "distance_compute_blas_threshold", 16 * 3000)
    assert list(emb._query_batches(12000, 3001)) == [(0, 4096), (4096, 8192), (8192, 12000)]
    assert np.array_equal(emb.exact_knn_distance(emb.ArrayRows(x), 5), one_search)

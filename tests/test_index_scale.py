"""IVF indices for large collections: trained on a seeded sample, filled chunk by chunk from
float16 storage, chosen automatically above the documented sizes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from exokiratory.search import ivf  # noqa: E402
from exokiratory.search.indices import EXACT_MAX, PQ_ABOVE, choose_kind  # noqa: E402


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim)).astype(np.float32)
    x = centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16)  # stored as float16


def _chunks(x16: np.ndarray, rows: int, seen: list[int]) -> Iterator[ivf.Chunk]:
    for lo in range(0, len(x16), rows):
        part = x16[lo : lo + rows]
        seen.append(len(part))
        yield np.arange(lo, lo + len(part), dtype=np.int64), part.astype(np.float32)


def test_auto_kind_thresholds() -> None:
    assert choose_kind(10, ivf_above=EXACT_MAX) == "flat"
    assert choose_kind(2 * 10**6, ivf_above=EXACT_MAX) == "ivfsq8"
    assert choose_kind(PQ_ABOVE, ivf_above=EXACT_MAX) == "ivfpq"
    assert choose_kind(2 * 10**6) == "hnsw"  # IVF off
    p = ivf.ivf_params(10**6, 768, "ivfpq")
    assert p["nlist"] == 1024 and p["m"] == 96 and p["train_size"] <= ivf.TRAIN_MAX


def test_ivfsq8_matches_exact_with_all_cells_probed() -> None:
    x16 = _clustered(3000, 48)
    seen: list[int] = []
    index, params, added = ivf.build_ivf(
        "ivfsq8", np.arange(3000), 48, lambda: _chunks(x16, 700, seen)
    )
    assert added == 3000 and index.ntotal == 3000 and max(seen) == 700
    index.nprobe = params["nlist"]
    x = x16.astype(np.float32)
    q = x[:100]
    _, found = index.search(q, 10)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)])
    assert recall >= 0.9
    again, _, _ = ivf.build_ivf("ivfsq8", np.arange(3000), 48, lambda: _chunks(x16, 500, []))
    assert np.array_equal(faiss.serialize_index(again), faiss.serialize_index(index))  # seeded


def test_incremental_add_and_ivfpq() -> None:
    x16 = _clustered(2500, 32, seed=1)
    ids = np.arange(2500)
    first, _, n1 = ivf.build_ivf("ivfpq", ids[:2000], 32, lambda: _chunks(x16[:2000], 512, []))
    index, _, n2 = ivf.build_ivf(
        "ivfpq", ids, 32, lambda: _chunks(x16, 512, []), index=first, known=ids[:2000]
    )
    assert (n1, n2, index.ntotal) == (2000, 500, 2500)
    # the same training sample, every vector added in one pass: the very same index
    whole, _, _ = ivf.build_ivf("ivfpq", ids[:2000], 32, lambda: _chunks(x16, 512, []))
    assert np.array_equal(faiss.serialize_index(whole), faiss.serialize_index(index))


def test_sample_is_seeded_and_bounded() -> None:
    ids = np.arange(10_000, 20_000)
    a, b = ivf.sample_ids(ids, 500, 0), ivf.sample_ids(ids, 500, 0)
    assert np.array_equal(a, b) and a.size == 500 and np.all(np.isin(a, ids))
    assert ivf.sample_ids(ids[:10], 500, 0).size == 10


@pytest.mark.slow
def test_workspace_ivf_build_and_search(tmp_path: object) -> None:
    pytest.importorskip("torch")
    from pathlib import Path

    from exokiratory import Workspace
    from exokiratory.core.config import render_config
    from exokiratory.search.indices import search_vectors

    from .conftest import NATURAL_PHOTOS, skimage_data_dir

    root = Path(str(tmp_path))
    src = root / "src"
    src.mkdir()
    for name in NATURAL_PHOTOS[:5]:
        shutil.copy(skimage_data_dir() / name, src / name)
    w = Workspace.init(root / "ws", [str(src)])
    w.config.passes["embed-clip"] = {"model": "tiny", "routed_only": False}
    w.storage.write_bytes_atomic("exokiratory.yaml", render_config(w.config).encode())
    w = Workspace(root / "ws")
    w.scan()
    w.run(["embed-clip"])
    rep = w.build_index("clip", kind="ivfsq8")
    assert rep.kind == "ivfsq8" and rep.total == 5 and rep.added == 5
    assert w.build_index("clip", kind="ivfsq8").added == 0
    q = np.asarray(
        w.sql("SELECT embedding FROM embeddings_clip LIMIT 1").to_pylist()[0]["embedding"]
    )
    approx = search_vectors(w.storage, "clip", q, 3).column("image_id").to_pylist()
    w.build_index("clip", kind="flat")
    exact = search_vectors(w.storage, "clip", q, 3).column("image_id").to_pylist()
    assert approx[0] == exact[0]


def test_kmeans_sampled_training_and_batched_assignment(monkeypatch: pytest.MonkeyPatch) -> None:
    from exokiratory.search import clustering

    x = clustering.normalise_rows(_clustered(3000, 24, seed=4).astype(np.float32))
    ref = clustering.spherical_kmeans(x, 20, seed=1)
    assert clustering.training_sample(x, 1) is x  # below the sample size: trained on all rows
    a, s = clustering.assign_to_centroids(x, ref.centroids, batch=128)
    assert np.array_equal(a, ref.assignments) and np.allclose(s, ref.similarity, atol=1e-6)
    sim = clustering.row_similarity(x, ref.centroids, ref.assignments, batch=100)
    assert np.allclose(sim, ref.similarity, atol=1e-5)
    monkeypatch.setattr(clustering, "TRAIN_SAMPLE_MAX", 1000)
    sample = clustering.training_sample(x, 1, size=1000)
    assert sample.shape == (1000, 24)
    sampled = clustering.spherical_kmeans(x, 20, seed=1)
    assert sampled.assignments.shape == (3000,) and sampled.k == 20
    best = (x @ sampled.centroids.T).argmax(axis=1)
    assert np.mean(best == sampled.assignments) > 0.999  # every row assigned to its nearest

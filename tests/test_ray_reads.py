"""Ray shard tasks read their own rows from storage (issue 16): under ``--engine ray`` the
clusters' training sample and assignment and the IVF add are tasks over descriptors of the
embedding parts' row groups (:class:`exokiratory.search.indices.PartReader`), not chunks the
driver read. The tasks' chunks are the driver stream's chunks (superseded rows, errors,
compacted parts, several row groups and batch cuts included), so the cluster tables and the IVF
index bytes are those of the local engine; with the driver's read of the vectors made to fail,
the Ray builds still succeed."""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("faiss")
pytest.importorskip("sklearn")

from exokiratory import Workspace
from exokiratory.core.compact import compact_dataset
from exokiratory.core.config import render_config
from exokiratory.engine.compaction import pass_rule
from exokiratory.search import clustering, indices, ivf

from .test_cluster_scale import clip_part_table

DIM = 16
ROWS = 7  # the record batch size of the stream in the chunk test: cuts inside row groups


def _blobs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(9, DIM))
    x = centres[rng.integers(0, 9, n)] + 0.2 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def _workspace(root: Path) -> Workspace:
    src = root / "src"
    src.mkdir(parents=True)
    ws = Workspace.init(root / "ws", [str(src)])
    ws.config.passes["embed-clip"] = {"model": "test-org/clip-like"}
    ws.config.passes["clusters-clip"] = {
        "cluster_size": 20,
        "max_levels": 2,
        "two_level_min_k": 8,  # the two-level fit and its approximate assignment
    }
    ws.storage.write_bytes_atomic("exokiratory.yaml", render_config(ws.config).encode())
    return Workspace(root / "ws")


def _part(
    ws: Workspace,
    name: str,
    idx: np.ndarray,
    x: np.ndarray,
    *,
    row_group: int,
    error: str | None = None,
) -> None:
    """A part of ``embed-clip`` with row groups of ``row_group`` rows."""
    (p,) = ws.passes(["embed-clip"])
    table = clip_part_table(ws, idx, x, error)
    path = Path(ws.storage.path(f"{p.output_rel}/{name}.parquet"))  # type: ignore[attr-defined]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group)


def _fill(ws: Workspace, seed: int = 0) -> None:
    """Parts with several row groups, a later part superseding 50 rows of an earlier one, and
    error rows that never win over good ones."""
    x = _blobs(600, seed)
    idx = np.arange(600)
    _part(ws, "part-a", idx[:300], x[:300], row_group=64)
    _part(ws, "part-b", idx[250:], -x[250:], row_group=100)  # later: wins rows 250..299
    _part(ws, "part-c", idx[:10], x[:10] * 0, error="boom", row_group=4)


def _chunks_equal(a: list[ivf.Chunk], b: list[ivf.Chunk]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(i, j) and v.dtype == w.dtype and np.array_equal(v, w)
        for (i, v), (j, w) in zip(a, b, strict=True)
    )


# ----------------------------------------------------------------------- the tasks' chunks


@pytest.mark.parametrize("compacted", [False, True])
def test_part_reader_gives_the_driver_stream_chunks(tmp_path: Path, compacted: bool) -> None:
    ws = _workspace(tmp_path)
    _fill(ws)
    if compacted:  # a compacted part (rows keep their part's name), then a later part
        (p,) = ws.passes(["embed-clip"])
        compact_dataset(ws.storage, pass_rule(p), min_parts=2)  # type: ignore[arg-type]
        _part(ws, "part-d", np.arange(280, 320), _blobs(40, 5), row_group=16)
    with ws.catalog(ws.passes()) as cat:
        raw = indices.RawParts.find(cat, "clip")
        assert raw is not None
        names = [f.rsplit("/", 1)[-1] for f in raw.files]
        assert any(n.startswith("compact-") for n in names) == compacted
        driver = list(raw.chunks(cat, ROWS))
        reader = raw.reader(cat, ROWS)
        for rows in (1, 50, 10**6):  # one row group per task ... one task for all
            shards = reader.shards(rows)
            assert shards[0][0] == 0 and shards[-1][1] == reader.group.size
            tasks = [c for s in shards for c in reader.read(s)]
            assert _chunks_equal(tasks, driver)
    ids = np.concatenate([c[0] for c in driver])
    assert np.array_equal(np.sort(ids), np.arange(600))  # each image once
    vectors = np.concatenate([c[1] for c in driver])[np.argsort(ids)]
    x = _blobs(600, 0).astype(np.float32)
    assert np.array_equal(vectors[:10], x[:10]) and np.array_equal(vectors[260], -x[260])
    if compacted:  # the later part wins over the compacted part's rows
        assert np.array_equal(vectors[290], _blobs(40, 5)[10].astype(np.float32))
    assert max(len(c[0]) for c in driver) == ROWS


# ------------------------------------------------------------------------------ on Ray


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One in-process Ray instance (one CPU) for the module: Ray starts slowly."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _no_driver_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every read of stored vectors on the driver fails: from the parts (``RawParts.chunks``)
    or through the view (``arrow_chunks``); Ray tasks run in other processes."""

    def refuse(*_a: object, **_k: object) -> Iterator[ivf.Chunk]:
        raise AssertionError("the driver read the stored vectors")

    monkeypatch.setattr(indices.RawParts, "chunks", refuse)
    monkeypatch.setattr(indices, "arrow_chunks", refuse)


def _ray_shards(caplog: pytest.LogCaptureFixture) -> list[int]:
    """The shard counts of the Ray maps logged since the capture started."""
    found = [re.search(r": (\d+) shards as Ray tasks", r.getMessage()) for r in caplog.records]
    return [int(m.group(1)) for m in found if m]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Workspace, Workspace]:
    """The same workspace twice: one for the local engine, one for Ray."""
    ws = _workspace(tmp_path / "local")
    _fill(ws)
    shutil.copytree(tmp_path / "local", tmp_path / "ray", symlinks=True)
    return ws, Workspace(tmp_path / "ray" / "ws")


@pytest.mark.ray
@pytest.mark.slow
def test_clusters_on_ray_read_by_tasks_equal_local(
    ray_local: None,
    pair: tuple[Workspace, Workspace],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    local, on_ray = pair
    local.run(["clusters-clip"])
    monkeypatch.setattr(ivf, "READ_BATCH", 128)  # several sample and assignment tasks
    monkeypatch.setattr(clustering, "READ_BATCH", 128)
    _no_driver_reads(monkeypatch)
    with pytest.raises(AssertionError, match="driver read"):  # the local engine does read
        on_ray.run(["clusters-clip"], engine="local")
    caplog.set_level(logging.INFO, "exokiratory.engine.shards")
    on_ray.run(["clusters-clip"], engine="ray")
    assert _ray_shards(caplog) == [5, 5]  # the training sample, then the assignment
    for view in ("clusters_clip", "clusters_clip_summary", "clusters_clip_metrics"):
        sql = f"SELECT * FROM {view} ORDER BY ALL"
        assert on_ray.sql(sql).equals(local.sql(sql)), view
    k = local.sql("SELECT count(DISTINCT cluster_id) AS k FROM clusters_clip WHERE level = 0")
    assert k.column(0)[0].as_py() == 30


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ivfsq8", "ivfpq"])
def test_ivf_on_ray_read_by_tasks_is_the_local_index(
    ray_local: None,
    pair: tuple[Workspace, Workspace],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    local, on_ray = pair
    monkeypatch.setattr(ivf, "SHARD_ROWS", 150)  # several add tasks, merged in order
    monkeypatch.setattr(ivf, "READ_BATCH", 128)  # several training-sample tasks
    files = [f"indices/clip.{s}" for s in ("faiss", "ids.parquet")]
    for grow in (False, True):  # a new build, then an incremental one (known ids left out)
        if grow:
            for ws in pair:
                _part(ws, "part-e", np.arange(600, 700), _blobs(100, 7), row_group=32)
        caplog.clear()
        caplog.set_level(logging.INFO, "exokiratory.engine.shards")
        with monkeypatch.context() as m:
            _no_driver_reads(m)
            rep = on_ray.build_index("clip", kind=kind, engine="ray")
        assert _ray_shards(caplog) == ([5] if grow else [5, 4])  # (training sample), the add
        ref = local.build_index("clip", kind=kind)
        assert (
            (rep.total, rep.added) == (ref.total, ref.added) == ((700, 100) if grow else (600, 600))
        )
        for f in files:
            assert on_ray.storage.read_bytes(f) == local.storage.read_bytes(f), f

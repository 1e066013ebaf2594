"""Embedding passes through the workspace, with tiny random-weight CLIP / DINOv2 models built
locally and loaded through the same path as real checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from exokiratory import Workspace
from exokiratory.core.config import render_config

from .conftest import NATURAL_PHOTOS, skimage_data_dir


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("embed")
    src = root / "src"
    src.mkdir()
    for name in NATURAL_PHOTOS[:5]:
        shutil.copy(skimage_data_dir() / name, src / name)
    from PIL import Image

    Image.open(skimage_data_dir() / "astronaut.png").resize((256, 256)).save(
        src / "astro_small.jpg"
    )
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50 + b"IEND")
    w = Workspace.init(root / "ws", [str(src)])
    w.config.passes["embed-clip"] = {"model": "tiny", "forward_batch_size": 2}
    w.config.passes["embed-dino"] = {"model": "tiny", "routed_only": False}
    w.storage.write_bytes_atomic("exokiratory.yaml", render_config(w.config).encode())
    w = Workspace(root / "ws")
    w.scan()
    w.run(["sense", "flags", "embed-clip", "embed-dino"], workers=1)
    return w


def _vectors(ws: Workspace, view: str) -> dict[str, np.ndarray]:
    rows = ws.sql(f"SELECT image_id, embedding FROM {view} WHERE error IS NULL").to_pylist()
    return {r["image_id"]: np.asarray(r["embedding"], np.float32) for r in rows}


def test_rows_are_unit_vectors_of_the_model_dimension(ws: Workspace) -> None:
    clip = _vectors(ws, "embeddings_clip")
    dino = _vectors(ws, "embeddings_dino")
    assert clip and dino
    for vecs in (clip, dino):
        dims = {v.shape[0] for v in vecs.values()}
        assert len(dims) == 1
        for v in vecs.values():
            assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-2  # float16 storage
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted((Path(ws.storage.root) / "embeddings" / "clip" / "tiny-clip").glob("*.parquet"))
    stored = pq.read_schema(parts[0]).field("embedding").type
    assert pa.types.is_fixed_size_list(stored) and pa.types.is_float16(stored.value_type)
    meta = ws.sql("SELECT DISTINCT model_id FROM embeddings_clip WHERE error IS NULL").to_pylist()
    assert meta == [{"model_id": "tiny:clip"}]


def test_routed_only_by_default_all_when_asked(ws: Workspace) -> None:
    routed = {r["image_id"] for r in ws.sql("SELECT image_id FROM images_routed").to_pylist()}
    ok = {
        r["image_id"] for r in ws.sql("SELECT image_id FROM images WHERE status = 'ok'").to_pylist()
    }
    assert set(_vectors(ws, "embeddings_clip")) == routed
    assert set(_vectors(ws, "embeddings_dino")) == ok
    assert routed < ok  # the near-duplicate (resized) copy is not routed


def test_resume_and_status(ws: Workspace) -> None:
    reports = ws.run(["embed-clip", "embed-dino"])
    assert all(r.planned == 0 for r in reports)  # type: ignore[union-attr]
    st = {p.name: p for p in ws.status().passes}
    assert st["embed-clip"].remaining == 0 and st["embed-clip"].done > 0
    assert st["embed-clip"].version.startswith("v1:tiny:clip")


def test_weights_are_cached_in_the_workspace(ws: Workspace) -> None:
    cache = Path(ws.storage.root) / "cache" / "models"
    assert (cache / "tiny-clip" / "config.json").exists()
    assert (cache / "tiny-dino" / "config.json").exists()


def test_model_passes_join_run_all_only_when_configured(tmp_path: Path) -> None:
    w = Workspace.init(tmp_path / "ws", [str(tmp_path)])
    plain = [p.name for p in w.passes(["all"])]
    assert plain[:2] == ["probe", "sense"] and "flags" in plain
    model_passes = {"embed-clip", "embed-dino", "segment", "segment-embed-clip", "zeroshot"}
    assert not model_passes & set(plain)
    assert not {"clusters-dino", "segment-stats", "motifs"} & set(plain)
    w.config.passes["embed-dino"] = {"model": "tiny"}
    names = [p.name for p in w.passes(["all"])]
    # the configured model pass joins, and so do the cheap passes over its output (PASS 7's
    # structure agreement compares the clusterings of whatever spaces exist)
    assert set(names) - set(plain) == {"embed-dino", "clusters-dino", "structure-agreement"}
    assert names.index("embed-dino") < names.index("clusters-dino")
    w.config.passes["segment"] = {"model": "tiny"}
    names = [p.name for p in w.passes(["all"])]
    # segment statistics need no model; segment embeddings must be named themselves
    assert {"segment", "segment-stats"} <= set(names)
    assert "segment-embed-clip" not in names and "motifs" not in names


def test_an_unloadable_model_fails_the_pass_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in NATURAL_PHOTOS[:3]:
        shutil.copy(skimage_data_dir() / name, src / name)
    empty_model = tmp_path / "not-a-model"
    empty_model.mkdir()
    w = Workspace.init(tmp_path / "ws", [str(src)])
    w.config.passes["embed-clip"] = {"model": str(empty_model)}
    w.scan()
    (rep,) = w.run("embed-clip", batch_size=1)
    assert rep.batches_failed == 1 and rep.processed == 0  # stopped after the first batch
    assert "cannot load model" in rep.failures[0]
    assert w.sql("SELECT count(*) AS n FROM embeddings_clip").to_pylist() == [{"n": 0}]


def test_ray_runs_model_passes_on_long_lived_actors(ws: Workspace) -> None:
    """engine=ray: one actor per (GPU) worker keeps the model loaded; same parts, same rows."""
    pytest.importorskip("ray")
    folder = Path(ws.storage.root) / "embeddings" / "dino" / "tiny-dino"
    before = _vectors(ws, "embeddings_dino")
    names = sorted(f.name for f in folder.glob("*.parquet"))
    for f in folder.glob("*.parquet"):
        f.unlink()
    try:
        (rep,) = ws.run(["embed-dino"], engine="ray", workers=1, batch_size=2)
    finally:
        import ray

        ray.shutdown()
    assert rep.batches_ok == 3 and rep.batches_failed == 0  # type: ignore[union-attr]
    after = _vectors(ws, "embeddings_dino")
    assert set(after) == set(before)
    for k, v in before.items():
        assert np.allclose(after[k], v, atol=2e-3)  # another process, other BLAS threads
    jobs = ws.sql(
        "SELECT DISTINCT pid FROM jobs WHERE pass_name = 'embed-dino' AND engine = 'ray'"
    ).to_pylist()
    assert len(jobs) == 1  # every batch ran in the one actor process
    assert names  # the local run wrote parts (their layout depends on the batch size)


def test_embed_alias_and_all_images_flag_then_models_are_released(ws: Workspace) -> None:
    from typer.testing import CliRunner

    from exokiratory.api.cli import app
    from exokiratory.models import vision

    ok = {
        r["image_id"] for r in ws.sql("SELECT image_id FROM images WHERE status = 'ok'").to_pylist()
    }
    assert set(_vectors(ws, "embeddings_clip")) < ok  # routed only so far
    r = CliRunner().invoke(
        app, ["run", "embed", "--all", "-w", str(ws.storage.root)], catch_exceptions=False
    )
    assert r.exit_code == 0, r.output
    assert "embed-clip" in r.output and "embed-dino" in r.output
    assert set(_vectors(ws, "embeddings_clip")) == ok  # the near-duplicate copy too
    assert ws.status().passes  # same dataset version: --all adds rows, it does not fork
    assert not vision._CACHE  # the models were dropped after their pass


def test_read_ahead_runs_into_the_next_batch_without_decoding_twice() -> None:
    import threading

    from exokiratory.passes.embed.step import ReadAhead

    calls: list[str] = []
    lock = threading.Lock()

    def fn(unit: dict[str, str]) -> str:
        with lock:
            calls.append(unit["image_id"])
        return unit["image_id"].upper()

    first = [{"image_id": f"a{i}"} for i in range(5)]
    second = [{"image_id": f"b{i}"} for i in range(5)]
    ra = ReadAhead(2)
    try:
        assert list(ra.ordered(fn, first, 2, upcoming=second)) == [
            u["image_id"].upper() for u in first
        ]
        assert set(ra.early) == {"b0", "b1"}  # queued while the first batch finished
        assert list(ra.ordered(fn, second, 2)) == [u["image_id"].upper() for u in second]
        assert sorted(calls) == sorted(u["image_id"] for u in first + second)  # each once
        assert not ra.early
        # a batch that was read ahead but never run leaves nothing behind for another run
        list(ra.ordered(fn, first[:1], 2, upcoming=second))
        assert list(ra.ordered(fn, first[1:2], 2)) == ["A1"] and not ra.early
    finally:
        ra.close()


def test_many_small_batches_give_the_same_vectors(ws: Workspace, tmp_path: Path) -> None:
    folder = Path(ws.storage.root) / "embeddings" / "dino" / "tiny-dino"
    before = _vectors(ws, "embeddings_dino")
    for f in folder.glob("*.parquet"):
        f.unlink()
    (rep,) = ws.run(["embed-dino"], workers=1, batch_size=1, progress=False)
    assert rep.batches_ok == len(before)  # type: ignore[union-attr]
    after = _vectors(ws, "embeddings_dino")
    assert set(after) == set(before)
    for k, v in before.items():
        assert np.allclose(after[k], v, atol=2e-3)

"""FAISS indices and search over tiny-model embeddings (plumbing, not meaning)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("faiss")

from typer.testing import CliRunner

from exokiratory import Workspace
from exokiratory.api.cli import app
from exokiratory.core.config import render_config
from exokiratory.search.indices import choose_kind, search_vectors

from .conftest import NATURAL_PHOTOS, skimage_data_dir

NAMES = NATURAL_PHOTOS[:6]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("index")
    src = root / "src"
    src.mkdir()
    for name in NAMES[:4]:
        shutil.copy(skimage_data_dir() / name, src / name)
    w = Workspace.init(root / "ws", [str(src)])
    w.config.passes["embed-clip"] = {"model": "tiny", "routed_only": False}
    w.storage.write_bytes_atomic("exokiratory.yaml", render_config(w.config).encode())
    w = Workspace(root / "ws")
    w.scan()
    w.run(["embed-clip"])
    return w


def test_build_search_similar(ws: Workspace) -> None:
    rep = ws.build_index("clip")
    assert rep.kind == "flat" and rep.total == 4 and rep.added == 4
    meta = json.loads((Path(ws.storage.root) / "indices" / "clip.json").read_text())
    assert meta["count"] == 4 and meta["model_id"] == "tiny:clip"
    some = ws.sql("SELECT image_id FROM images ORDER BY image_idx LIMIT 1").to_pylist()[0][
        "image_id"
    ]
    hits = ws.similar(some, k=3).to_dict("records")
    assert hits[0]["image_id"] == some and hits[0]["score"] == pytest.approx(1.0, abs=1e-2)
    assert [h["rank"] for h in hits] == [1, 2, 3] and all(h["first_path"] for h in hits)
    by_text = ws.search(text="a cat", k=2).to_dict("records")
    assert len(by_text) == 2
    by_file = ws.search(image=str(skimage_data_dir() / "coffee.png"), k=1).to_dict("records")
    assert Path(by_file[0]["first_path"]).name == "coffee.png"  # the same pixels, same vector


def test_incremental_add(ws: Workspace) -> None:
    ws.build_index("clip")
    src = Path(ws.config.sources[0].path)
    for name in NAMES[4:]:
        shutil.copy(skimage_data_dir() / name, src / name)
    ws.scan()
    ws.run(["embed-clip"])
    rep = ws.build_index("clip")
    assert rep.total == 6 and rep.added == 2
    assert ws.build_index("clip").added == 0


def test_exact_and_hnsw_agree_on_small_sets(ws: Workspace) -> None:
    ws.build_index("clip", kind="hnsw")
    q = np.asarray(
        ws.sql("SELECT embedding FROM embeddings_clip LIMIT 1").to_pylist()[0]["embedding"]
    )
    approx = search_vectors(ws.storage, "clip", q, 3).column("image_id").to_pylist()
    ws.build_index("clip", kind="flat")
    exact = search_vectors(ws.storage, "clip", q, 3).column("image_id").to_pylist()
    assert approx == exact
    assert choose_kind(10) == "flat" and choose_kind(2 * 10**6) == "hnsw"


def test_cli_and_errors(ws: Workspace) -> None:
    runner = CliRunner()
    r = runner.invoke(
        app, ["index", "build", "clip", "-w", ws.storage.root], catch_exceptions=False
    )
    assert r.exit_code == 0 and "index clip" in r.output
    some = ws.sql("SELECT image_id FROM images LIMIT 1").to_pylist()[0]["image_id"]
    r = runner.invoke(
        app,
        ["similar", some, "-k", "2", "-f", "json", "-w", ws.storage.root],
        catch_exceptions=False,
    )
    assert json.loads(r.output)[0]["image_id"] == some
    with pytest.raises(ValueError, match="exactly one"):
        ws.search(k=3)
    with pytest.raises(ValueError, match=r"no dino (index|embeddings)"):
        ws.build_index("dino")
    with pytest.raises(ValueError, match="text search needs the clip space"):
        ws.search(text="x", space="dino")

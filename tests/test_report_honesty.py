"""The report's honest output: random-weight numbers said so (a banner and a note on every
affected section), the page opens on counts and galleries, readable captions, transparent
thumbnails on a checkerboard, thumbnail decode errors as rows, no line printed twice, and the
named samples block."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from exokiratory import Workspace
from exokiratory.core.config import render_config
from exokiratory.report.thumbs import ThumbParams, ThumbPass

from .test_report import _collection


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, str]:
    """Tiny-model embeddings and clusters, a transparent PNG and a named sample, reported."""
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("honesty")
    _collection(root / "src")
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[16:48, 16:48] = (200, 30, 30, 255)  # an opaque square on a transparent canvas
    Image.fromarray(rgba, "RGBA").save(root / "src" / "overlay.png")
    ws = Workspace.init(root / "ws", [str(root / "src")])
    for space in ("clip", "dino"):
        ws.config.passes[f"embed-{space}"] = {"model": "tiny", "routed_only": False}
        ws.config.passes[f"clusters-{space}"] = {"cluster_size": 4, "branching": 2}
    ws.storage.write_bytes_atomic("exokiratory.yaml", render_config(ws.config).encode())
    ws = Workspace(root / "ws")
    ws.scan(progress=False)
    steps = ["probe", "sense", "flags", "embed-clip", "embed-dino", "clusters-clip"]
    ws.run([*steps, "clusters-dino"], workers=1, progress=False)
    ws.sample("bal", 8)
    result = ws.report("honest", progress=False)
    return ws, Path(str(result.local_path)).read_text("utf-8")


def _section(page: str, sid: str) -> str:
    m = re.search(rf"<section id='{sid}'>(.*?)</section>", page, re.S)
    assert m, sid
    return m.group(1)


def test_random_weight_banner_and_section_notes(honest: tuple[Workspace, str]) -> None:
    _, page = honest
    header = page[page.index("<header>") : page.index("</header>")]
    assert "id='random-weight-banner'" in header and "RANDOM-WEIGHT" in header
    assert header.index("random-weight-banner") > header.index("<h1>")
    for sid in ("maps", "clusters", "galleries"):  # galleries: the outliers block
        assert "class='random-weight'" in _section(page, sid), sid
    stop = _section(page, "stop")
    topology = stop[stop.index("<h3>topology") : stop.index("<h3>segments")]
    assert "class='random-weight'" in topology
    # a section with no model behind it says nothing
    assert "class='random-weight'" not in _section(page, "overview")


def test_page_opens_on_counts_and_galleries(honest: tuple[Workspace, str]) -> None:
    _, page = honest
    ids = re.findall(r"<section id='([^']+)'>", page)
    assert ids[:2] == ["overview", "galleries"]
    assert ids.index("stop") > ids.index("clusters") and ids[-1] == "tables"
    assert "near-duplicates" in _section(page, "galleries")  # content kept


def test_captions_show_folder_and_file(honest: tuple[Workspace, str]) -> None:
    _, page = honest
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page, re.S)
    assert captions
    # the duplicate galleries have no caption text: the folder and the file name stand in
    assert any(re.fullmatch(r"src/[\w.-]+\.(jpg|png)", c) for c in captions), captions[:5]
    titles = re.findall(r"<figure class='[^']+' title='([^']*)'", page)
    assert any(t.endswith("/src/astro_small.jpg") and len(t) > 20 for t in titles)


def test_transparent_thumbnail_keeps_alpha(honest: tuple[Workspace, str]) -> None:
    ws, page = honest
    t = ws.sql(
        "SELECT image_id FROM images i JOIN paths p USING (image_id) "
        "WHERE p.path LIKE '%overlay.png'"
    )
    image_id = t["image_id"][0].as_py()
    tp = ThumbPass()
    unit = _thumb_unit(ws, image_id, str(Path(ws.storage.root).parent / "src" / "overlay.png"))
    out = tp.process_batch(unit, ws.batch_context()).to_pylist()[0]
    assert out["error"] is None
    im = Image.open(io.BytesIO(out["jpeg"]))
    assert im.format == "PNG" and im.mode == "RGBA"
    alpha = np.asarray(im)[..., 3]
    assert alpha.min() == 0 and alpha.max() == 255
    css = page[page.index("<style>") : page.index("</style>")]
    assert "figure.tile img, #tooltip img" in css and "linear-gradient(45deg" in css


def _thumb_unit(ws: Workspace, image_id: str, path: str) -> pa.Table:
    return pa.table(
        {
            "thumb_id": [image_id],
            "image_idx": [0],
            "src_image_id": [image_id],
            "format": ["PNG"],
            "path": [path],
            "source": [str(Path(ws.storage.root).parent / "src")],
            "crop": pa.array([None], pa.list_(pa.float32(), 4)),
        }
    )


def test_undecodable_thumbnail_is_an_error_row(
    honest: tuple[Workspace, str], tmp_path: Path
) -> None:
    ws, _ = honest
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    tp = ThumbPass(ThumbParams().model_dump(exclude_defaults=True))
    rows = tp.process_batch(_thumb_unit(ws, "deadbeef", str(bad)), ws.batch_context()).to_pylist()
    assert len(rows) == 1 and rows[0]["thumb_id"] == "deadbeef"
    assert rows[0]["jpeg"] is None and rows[0]["image_id"] == "deadbeef"
    assert rows[0]["error"] and "image_id" not in rows[0]["error"]


def test_samples_block(honest: tuple[Workspace, str]) -> None:
    _, page = honest
    s = _section(page, "samples")
    assert "id='sample-bal'" in s and "data-grouping='clip level" in s
    assert "tv_sample_population" in s and "population" in s and "sampled" in s
    block = s[s.index("data-grouping='clip level") :]
    assert "class='random-weight'" in block[: block.index("</details>")]


def test_cli_report_prints_each_line_once(honest: tuple[Workspace, str]) -> None:
    ws, _ = honest
    r = subprocess.run(
        [sys.executable, "-m", "exokiratory", "report", "-w", ws.storage.url, "--name", "cli"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    both = r.stdout + r.stderr
    assert both.count("report written to") == 1, both

"""``exokiratory report``: sections for every table, exact histograms, cached thumbnails, stop
metrics, and a real headless browser (chromium) loading the page."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageEnhance, ImageFilter

from exokiratory import Workspace
from exokiratory.core.config import render_config
from exokiratory.passes.stop.base import fmt
from exokiratory.passes.stop.history import list_snapshots
from exokiratory.passes.stop.topology import AMI_MAX_CELLS, compare
from exokiratory.report.thumbs import (
    WANTS_SCHEMA,
    ThumbParams,
    ThumbPass,
    ThumbStore,
    image_wants,
)

from .conftest import NATURAL_PHOTOS, skimage_data_dir

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _collection(src: Path) -> None:
    src.mkdir(parents=True)
    data = skimage_data_dir()
    for name in NATURAL_PHOTOS[:12]:
        shutil.copy(data / name, src / name)
    astro = Image.open(data / "astronaut.png").convert("RGB")
    astro.resize((200, 200)).save(src / "astro_small.jpg", quality=85)  # near duplicate
    ImageEnhance.Brightness(astro).enhance(0.08).save(src / "astro_dark.jpg")
    astro.filter(ImageFilter.GaussianBlur(6)).save(src / "astro_blur.jpg")
    Image.open(data / "coffee.png").convert("RGB").resize((20, 16)).save(src / "tiny.png")
    Image.open(data / "chelsea.png").convert("RGB").resize((900, 60)).save(src / "banner.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)


def _workspace(root: Path, *, embed: bool) -> Workspace:
    _collection(root / "src")
    ws = Workspace.init(root / "ws", [str(root / "src")])
    if embed:
        for space in ("clip", "dino"):
            ws.config.passes[f"embed-{space}"] = {"model": "tiny", "routed_only": False}
            ws.config.passes[f"clusters-{space}"] = {
                "cluster_size": 4,
                "branching": 2,
                "max_levels": 2,
            }
        ws.storage.write_bytes_atomic("exokiratory.yaml", render_config(ws.config).encode())
        ws = Workspace(root / "ws")
    ws.scan(progress=False)
    return ws


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Scanned, sensed, flagged, embedded (tiny models) and clustered."""
    pytest.importorskip("torch")
    ws = _workspace(tmp_path_factory.mktemp("report"), embed=True)
    steps = ["probe", "sense", "flags", "embed-clip", "embed-dino", "clusters-clip"]
    ws.run([*steps, "clusters-dino"], workers=1, progress=False)
    ws.run(["flags"], progress=False)  # semantic flags read the embeddings
    return ws


@pytest.fixture(scope="module")
def built(full: Workspace) -> tuple[Workspace, str]:
    result = full.report("diag", progress=False)
    assert result.local_path is not None
    return full, Path(result.local_path).read_text("utf-8")


def _json_block(page: str, block_id: str) -> object:
    m = re.search(rf"<script type='application/json' id='{block_id}'>(.*?)</script>", page, re.S)
    assert m, block_id
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_every_table_has_a_section_and_special_sections_light_up(
    built: tuple[Workspace, str],
) -> None:
    ws, page = built
    with ws.catalog() as cat:
        views = list(cat.views)
    shown = set(re.findall(r"data-table='([^']+)'", page))
    assert set(views) <= shown, set(views) - shown
    for anchor in ("stop", "overview", "distributions", "galleries", "maps", "clusters"):
        assert f"id='{anchor}'" in page
    # a table filled by no pass here says which command fills it
    assert "not computed yet: run <code>exokiratory run cues</code>" in page
    # special sections fed by data
    assert "id='map-clip'" in page and "id='map-dino'" in page
    assert "id='exemplars-clip'" in page and "id='near-duplicates'" in page
    assert "id='flag-is_dark'" in page and "id='flag-is_corrupt'" in page
    # offline: no network references anywhere
    assert not re.search(r"(src|href)=['\"]https?://", page)


def test_maps_hold_every_embedded_image_with_colour_fields(built: tuple[Workspace, str]) -> None:
    ws, page = built
    maps = _json_block(page, "exo-maps")
    assert isinstance(maps, list) and [m["space"] for m in maps] == ["clip", "dino"]
    n = int(ws.sql("SELECT count(*) AS n FROM embeddings_clip WHERE error IS NULL")["n"][0].as_py())
    clip = maps[0]
    assert len(clip["ids"]) == len(clip["x"]) == len(clip["y"]) == n
    assert all(0.0 <= v <= 1.0 for v in clip["x"] + clip["y"])
    names = [c["name"] for c in clip["colours"]]
    assert any(n.startswith("CLIP cluster") for n in names) and "is_dark" in names
    clusters = dict(
        (r["image_id"], r["cluster_id"])
        for r in ws.sql(
            "SELECT image_id, cluster_id FROM clusters_clip WHERE level = "
            "(SELECT min(level) FROM clusters_clip WHERE k = (SELECT min(k) FROM clusters_clip))"
        ).to_pylist()
    )
    field = next(c for c in clip["colours"] if c["name"].startswith("CLIP cluster"))
    got = {i: field["labels"][code] for i, code in zip(clip["ids"], field["codes"], strict=True)}
    assert got == {i: str(clusters[i]) for i in clip["ids"]}
    thumbs = _json_block(page, "exo-thumbs")
    assert isinstance(thumbs, dict) and set(clip["ids"]) <= set(thumbs)


def test_histograms_are_exact_and_carry_the_thresholds(built: tuple[Workspace, str]) -> None:
    ws, page = built
    from exokiratory.core.tables import Tables
    from exokiratory.passes.flags.section import gather_histograms

    with ws.catalog() as cat:
        tables = Tables(cat)
        tables.summarise()
        feats, flags = gather_histograms(
            tables, {"dark_threshold": 0.3, "blurry_threshold": 0.5}, 10
        )
        values = np.asarray(
            cat.query("SELECT blur_score FROM features WHERE error IS NULL")["blur_score"].to_numpy(
                zero_copy_only=False
            ),
            np.float64,
        )
    h = next(h for h in feats if h.column == "blur_score")
    assert sum(h.counts) + h.under + h.over == h.n == len(values)
    inside = values[(values >= h.edges[0]) & (values <= h.edges[-1])]
    expected, _ = np.histogram(inside, bins=np.asarray(h.edges))
    assert np.abs(np.asarray(h.counts) - expected).sum() <= 1  # edge rounding only
    assert [t.value for t in h.thresholds] == [0.5]
    assert h.edges[0] <= 0.5 <= h.edges[-1]
    dark = next(h for h in feats if h.column == "brightness_p99")
    assert dark.thresholds[0].value == pytest.approx(0.3) and dark.thresholds[0].side == "below"
    # the page draws the thresholds recorded with the current flags (defaults: dark 0.32)
    svg = page[page.index("data-column='brightness_p99'") :][:6000]
    assert "is_dark threshold 0.32" in svg
    assert {h.column for h in flags} >= {"size_score", "outlier_score"}


def test_thumbnails_are_cached_and_resumed(built: tuple[Workspace, str]) -> None:
    ws, _ = built
    store = ThumbStore(ws, ThumbParams(size=96))
    ids = [r["image_id"] for r in ws.sql("SELECT image_id FROM images").to_pylist()]
    parts_before = list(ws.storage.list_files(f"reports/thumbs/{ThumbPass.version}", ".parquet"))
    assert parts_before  # the report made thumbnails in batches
    before = store.read(ids)
    readable = {
        r["image_id"] for r in ws.sql("SELECT image_id FROM images WHERE status = 'ok'").to_pylist()
    }
    assert before and set(before) <= readable
    # only the missing thumbnails are made, and a second call makes none
    assert store.ensure(image_wants(ids), progress=False) == len(readable - set(before))
    assert store.ensure(image_wants(ids), progress=False) == 0
    thumbs = store.read(ids)
    ok = [t for t in thumbs.values() if t.jpeg]
    assert ok and all(max(t.width, t.height) <= 96 for t in ok)
    first = sorted(readable)[0]
    crop = pa.table(
        {"thumb_id": [f"{first}-crop"], "image_id": [first], "crop": [[0.0, 0.0, 0.5, 0.25]]},
        schema=WANTS_SCHEMA,
    )
    assert store.ensure(crop, progress=False) == 1
    assert store.ensure(crop, progress=False) == 0
    t = store.read([f"{first}-crop"])[f"{first}-crop"]
    full = thumbs[first]
    assert t.jpeg and t.width / t.height == pytest.approx(2 * full.width / full.height, rel=0.1)


def _stop_section(page: str) -> str:
    m = re.search(r"<section id='stop'>(.*?)</section>", page, re.S)
    assert m
    return m.group(1)


def test_stop_panel_shows_the_numbers_of_the_stop_command(built: tuple[Workspace, str]) -> None:
    ws, page = built
    section = _stop_section(page)
    result = ws.stop(record=False)  # the function behind `exokiratory stop`
    assert f"'verdict {result.verdict.decision}'" in section
    for row in result.rows():
        cells = (
            f"<td>{row['criterion']}</td><td class='num'>{row['value']}</td>"
            f"<td class='num'>{row['threshold']}</td>"
        )
        assert cells in section, cells
    # the clusterings were recorded by `run` (one snapshot per structural step)
    triggers = [s.trigger for s in list_snapshots(ws.storage)]
    assert "clusters-clip" in triggers and "clusters-dino" in triggers


def test_second_build_compares_with_the_previous_snapshot(
    built: tuple[Workspace, str], tmp_path: Path
) -> None:
    # a copy of the module's workspace and sources: this test adds an image and reruns
    shared, _ = built
    src = Path(shared.config.sources[0].path)
    shutil.copytree(src, tmp_path / "src")
    shutil.copytree(shared.storage.root, tmp_path / "ws")
    config = tmp_path / "ws" / "exokiratory.yaml"
    config.write_text(config.read_text("utf-8").replace(str(src), str(tmp_path / "src")), "utf-8")
    ws = Workspace(tmp_path / "ws")
    before = list_snapshots(ws.storage)
    again = Path(str(ws.report("diag", progress=False).local_path)).read_text("utf-8")
    assert list_snapshots(ws.storage) == before  # unchanged structure: no new snapshot
    assert "snapshot(s) in <code>history/structure/</code>" in _stop_section(again)
    # a new image: the next run re-clusters, and the panel compares with the earlier run
    shutil.copy(skimage_data_dir() / "cell.png", Path(ws.config.sources[0].path) / "cell.png")
    ws.scan(progress=False)
    steps = ["probe", "sense", "flags", "embed-clip", "embed-dino"]
    ws.run([*steps, "clusters-clip", "clusters-dino"], workers=1, progress=False)
    after = list_snapshots(ws.storage)
    assert len(after) > len(before) and after[-1].run_id != before[-1].run_id
    page = Path(str(ws.report("diag", progress=False).local_path)).read_text("utf-8")
    stop = _stop_section(page)
    assert f"change since {before[-1].name}" in stop
    topo = ws.stop(record=False).criteria[0]
    assert topo.value is not None and f"<td class='num'>{fmt(topo.value)}</td>" in stop


def test_fresh_workspace_says_what_to_run(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, embed=False)
    page = Path(str(ws.report(progress=False).local_path)).read_text("utf-8")
    assert "not computed yet: run <code>exokiratory run sense</code>" in page
    assert "not computed yet: run <code>exokiratory run flags</code>" in page
    assert "not computed yet: run <code>exokiratory run embed-clip" in page
    # an empty table names the pass that fills it (the longest matching view prefix)
    assert "not computed yet: run <code>exokiratory run segment-embed-clip</code>" in page
    assert _json_block(page, "exo-maps") == []
    # generic fallback: a table without a special section still gets rows and columns
    m = re.search(r"data-table='images'><summary><b>images</b> <span class='rows'>(\d+) rows", page)
    assert m and int(m.group(1)) == 18


def test_cli_report_and_bad_name(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from exokiratory.api.cli import app, main

    ws = _workspace(tmp_path, embed=False)
    r = CliRunner().invoke(app, ["report", "-w", ws.storage.url, "--name", "scan-only"])
    assert r.exit_code == 0, r.output
    assert (Path(ws.storage.root) / "reports" / "scan-only.html").exists()
    with pytest.raises(ValueError, match="report: name"):
        ws.report("../escape")
    assert main is not None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 7)), min_size=2, max_size=200),
)
def test_partition_scores_match_scikit_learn(pairs: list[tuple[int, int]]) -> None:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    a = np.asarray([p[0] for p in pairs])
    b = np.asarray([p[1] for p in pairs])
    got = compare(a, b)
    assert got["n"] == len(pairs)
    assert got["ari"] == pytest.approx(adjusted_rand_score(a, b), abs=1e-9)
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-9)
    assert got["ami"] is not None
    # relabelling a partition changes none of the scores
    same = compare(a, 10 - a)
    assert same["ari"] == pytest.approx(1.0) and same["nmi"] == pytest.approx(1.0)
    assert same["ami"] == pytest.approx(1.0)


def test_partition_scores_skip_ami_on_a_large_contingency_table() -> None:
    n = int(AMI_MAX_CELLS**0.5) + 2
    a = np.arange(n * 2) % n
    got = compare(a, a)
    assert got["ami"] is None  # too many cells to be quick
    assert got["ari"] == pytest.approx(1.0) and got["nmi"] == pytest.approx(1.0)


# -- a real browser ------------------------------------------------------------------------------
def _artifacts() -> Path:
    out = Path(os.environ.get("PYTEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="no chromium: apt-get install chromium chromium-driver (.ci/run does)",
)
def test_page_in_headless_chromium(built: tuple[Workspace, str]) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    ws, _ = built
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="exo-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get(Path(ws.storage.path("reports/diag.html")).as_uri())
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        # galleries show images (decoded: natural width > 0)
        widths = driver.execute_script(
            "return Array.from(document.querySelectorAll('#galleries img[data-thumb]'))"
            ".map(i => i.complete ? i.naturalWidth : 0)"
        )
        assert len(widths) >= 10 and min(widths) > 0
        # the map's canvas has drawn every point, in colour
        canvas = driver.find_element(By.CSS_SELECTOR, "#map-clip canvas")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
        n_points = driver.execute_script("return window.exoMaps[0].m.ids.length")
        assert n_points == len(_json_block(built[1], "exo-maps")[0]["ids"])  # type: ignore[index]
        assert int(canvas.get_attribute("data-drawn")) == n_points
        painted = driver.execute_script(
            "const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height)"
            ".data; let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n",
            canvas,
        )
        assert painted > 20 * n_points
        # hovering a point shows its thumbnail
        p = driver.execute_script("return window.exoMaps[0].screenPoint(0)")
        rect = driver.execute_script(
            "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height]", canvas
        )
        ActionChains(driver).move_to_element_with_offset(
            canvas, int(p["x"] - rect[0] / 2), int(p["y"] - rect[1] / 2)
        ).perform()
        tip = driver.find_element(By.ID, "tooltip")
        assert tip.is_displayed()
        assert driver.execute_script(
            "const i = document.querySelector('#tooltip img'); return i && i.naturalWidth"
        )
        # colour by another field redraws without errors
        driver.execute_script(
            "const s = document.querySelector('#map-clip select'); s.value = s.options.length - 1;"
            "s.dispatchEvent(new Event('change'))"
        )
        driver.save_screenshot(str(_artifacts() / "report-map.png"))
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(_artifacts() / "report-top.png"))
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_motif_sheets_show_segment_crops(tmp_path: Path) -> None:
    from .segment_data import install_segments, write_scenes
    from .test_motifs import _install_embeddings

    scenes = write_scenes(tmp_path / "src", 6, seed=4)
    ws = Workspace.init(tmp_path / "ws", [str(tmp_path / "src")])
    ws.config.passes["motifs"] = {"spaces": ["clip"], "target_cluster_size": 6}
    ws.storage.write_bytes_atomic("exokiratory.yaml", render_config(ws.config).encode())
    ws = Workspace(tmp_path / "ws")
    ws.scan(progress=False)
    install_segments(ws, scenes)
    _install_embeddings(ws)
    ws.run(["motifs"], progress=False)
    page = Path(str(ws.report(progress=False).local_path)).read_text("utf-8")
    assert "id='motifs-clip'" in page
    sheet = page[page.index("id='motifs-clip'") : page.index("id='tables'")]
    segment_ids = set(re.findall(r"data-thumb='([0-9a-f]{32}-\d{4})'", sheet))
    assert len(segment_ids) >= 3
    thumbs = ThumbStore(ws).read(sorted(segment_ids))
    boxes = {
        r["segment_id"]: r["bbox"]
        for r in ws.sql("SELECT segment_id, bbox FROM segments").to_pylist()
    }
    checked = 0
    for sid in segment_ids:
        # the crop of its bounding box: the thumbnail has the box's shape
        _, _, bw, bh = boxes[sid]
        t = thumbs[sid]
        assert t.jpeg
        if min(bw, bh) >= 8:
            assert t.width / t.height == pytest.approx(bw / bh, rel=0.15)
            checked += 1
    assert checked

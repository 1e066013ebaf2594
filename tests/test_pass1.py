"""PASS 1 (sense) and PASS 2 (flags) through the workspace: rows, routing, recompute rules."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from exokiratory import Workspace
from exokiratory.core.layout import CONFIG_FILE

from .conftest import NATURAL_PHOTOS, skimage_data_dir


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("pass1")
    src = root / "src"
    src.mkdir()
    data = skimage_data_dir()
    for name in NATURAL_PHOTOS:
        shutil.copy(data / name, src / name)
    astro = Image.open(data / "astronaut.png").convert("RGB")
    astro.resize((256, 256)).save(src / "astronaut_small.jpg", quality=70)  # near duplicate
    shutil.copy(data / "astronaut.png", src / "astronaut_copy.png")  # exact duplicate
    astro.filter(ImageFilter.GaussianBlur(8)).save(src / "astronaut_blurred.jpg")
    Image.new("RGB", (300, 200), (3, 3, 3)).save(src / "black.png")
    Image.new("RGB", (300, 200), (252, 252, 252)).save(src / "white.png")
    Image.new("RGB", (12, 12), (90, 20, 20)).save(src / "tiny.png")
    Image.new("RGB", (2000, 40), (10, 120, 200)).save(src / "banner.png")
    Image.open(data / "chelsea.png").convert("L").convert("RGB").save(
        src / "chelsea_grey_as_rgb.png"
    )
    shutil.copy(data / "page.png", src / "page.png")
    buf = io.BytesIO()
    astro.resize((64, 64)).save(buf, "PNG")
    damaged = bytearray(buf.getvalue())
    damaged[damaged.find(b"IDAT") + 40] ^= 0xFF  # header and IEND intact, pixel data broken
    (src / "damaged.png").write_bytes(bytes(damaged))
    w = Workspace.init(root / "ws", [str(src)])
    w.scan()
    w.run("all", workers=1)
    return w


def _flags(ws: Workspace) -> dict[str, dict]:  # type: ignore[type-arg]
    rows = ws.sql(
        "SELECT f.*, i.first_path FROM flags f JOIN images i USING (image_id)"
    ).to_pylist()
    return {Path(r["first_path"]).name: r for r in rows}


def test_sense_rows(ws: Workspace) -> None:
    feats = ws.sql("SELECT * FROM features").to_pylist()
    n_ok = ws.sql("SELECT count(*) AS n FROM images WHERE status = 'ok'").to_pylist()[0]["n"]
    assert len(feats) == n_ok
    ok = [f for f in feats if f["error"] is None]
    assert all(
        len(f["rgb_hist"]) == 48 and len(f["lab_hist"]) == 48 and len(f["fft_band_energy"]) == 8
        for f in ok
    )
    assert all(f["phash"] is not None and f["working_width"] <= 256 for f in ok)
    damaged = ws.sql(
        "SELECT f.error FROM features f JOIN images i USING (image_id) WHERE i.first_path LIKE '%damaged.png'"
    ).to_pylist()
    assert damaged and damaged[0]["error"] is not None


def test_flags_catch_what_they_should(ws: Workspace) -> None:
    f = _flags(ws)
    assert f["black.png"]["is_dark"] and not f["astronaut.png"]["is_dark"]
    assert f["white.png"]["is_light"] and not f["coffee.png"]["is_light"]
    assert f["astronaut_blurred.jpg"]["is_blurry"] and not f["astronaut.png"]["is_blurry"]
    assert f["black.png"]["is_low_information"] and f["black.png"]["is_junk"]
    assert f["tiny.png"]["is_tiny"] and not f["tiny.png"]["is_worth_gpu"]
    assert f["banner.png"]["is_odd_aspect_ratio"]
    assert f["camera.png"]["is_grayscale"] and f["chelsea_grey_as_rgb.png"]["is_grayscale"]
    assert not f["coffee.png"]["is_grayscale"]
    assert f["page.png"]["is_text_heavy"] and not f["chelsea.png"]["is_text_heavy"]
    assert f["damaged.png"]["is_corrupt"] and not f["damaged.png"]["is_worth_gpu"]
    # exact duplicate: one image, two paths; near duplicate: the small JPEG joins the original
    assert f["astronaut.png"]["n_paths"] == 2 and f["astronaut.png"]["has_exact_duplicates"]
    small, orig = f["astronaut_small.jpg"], f["astronaut.png"]
    assert small["dup_group_id"] == orig["dup_group_id"] == orig["image_id"]
    assert orig["is_dup_canonical"] and small["is_near_duplicate"] and not small["is_worth_gpu"]
    assert orig["is_worth_gpu"]
    assert {r["flags_version"] for r in f.values()} == {"v1"}


def test_images_routed_view(ws: Workspace) -> None:
    routed = {Path(r["first_path"]).name for r in ws.sql("SELECT * FROM images_routed").to_pylist()}
    assert "astronaut.png" in routed and "coffee.png" in routed
    assert not {"astronaut_small.jpg", "tiny.png", "black.png", "damaged.png"} & routed


def test_changing_a_threshold_rederives_without_recomputing_features(ws: Workspace) -> None:
    sense_jobs = ws.sql("SELECT count(*) AS n FROM jobs WHERE pass_name = 'sense'").to_pylist()[0][
        "n"
    ]
    assert "up to date" in ws.run("flags")[0].summary()
    cfg = Path(ws.storage.root) / CONFIG_FILE
    text = cfg.read_text()
    cfg.write_text(text.replace("passes: {}", "passes:\n  flags: {dark_threshold: 0.9}"))
    try:
        ws2 = Workspace(ws.storage.root)
        reports = ws2.run(["sense", "flags"])
        assert reports[0].planned == 0  # features untouched
        assert "rows derived" in reports[1].summary()
        f = _flags(ws2)
        assert f["chelsea.png"]["is_dark"]  # p99 brightness 0.71 < 0.9
        assert '"dark_threshold": 0.9' in f["chelsea.png"]["flags_params"]
        after = ws2.sql("SELECT count(*) AS n FROM jobs WHERE pass_name = 'sense'").to_pylist()[0][
            "n"
        ]
        assert after == sense_jobs
    finally:
        cfg.write_text(text)
    Workspace(ws.storage.root).run("flags")
    assert not _flags(Workspace(ws.storage.root))["chelsea.png"]["is_dark"]


def test_sense_params_write_a_new_version(ws: Workspace) -> None:
    from exokiratory.passes.sense.step import SensePass

    assert SensePass().output_rel == "features/global/v1"
    other = SensePass({"working_size": 128})
    assert (
        other.output_rel.startswith("features/global/v1-")
        and other.output_rel != "features/global/v1"
    )


def test_flat_copy_of_a_photo_joins_its_original_under_the_strict_rule(tmp_path: Path) -> None:
    """A blurred/darkened copy can fall under the 'flat' noise cut; it must still group."""
    src = tmp_path / "src"
    src.mkdir()
    photo = Image.open(skimage_data_dir() / "astronaut.png").convert("RGB")
    photo.save(src / "astronaut.png")
    photo.point(lambda v: int(v * 0.12)).save(src / "astronaut_dark.png")
    for name in ("coffee.png", "chelsea.png", "rocket.jpg"):
        shutil.copy(skimage_data_dir() / name, src / name)
    w = Workspace.init(tmp_path / "ws", [str(src)])
    w.scan()
    w.run(["sense", "flags"], workers=1)
    f = _flags(w)
    assert f["astronaut_dark.png"]["dup_group_id"] == f["astronaut.png"]["image_id"]
    assert f["coffee.png"]["dup_group_id"] is None


def test_near_duplicate_groups_are_cached_per_hash_inputs(ws: Workspace) -> None:
    cache = Path(ws.storage.root) / "manifests/flags/_neardup"
    files = sorted(cache.glob("*.parquet"))
    assert len(files) == 1
    # the cached groups are what the flags hold
    import pyarrow.parquet as pq

    cached = {r["image_id"]: r["dup_group_id"] for r in pq.read_table(files[0]).to_pylist()}
    f = {r["image_id"]: r["dup_group_id"] for r in ws.sql("SELECT * FROM flags").to_pylist()}
    assert cached and all(f[k] == v for k, v in cached.items())


def test_blank_images_are_junk_not_blurry_and_thumbnails_are_odd_size(ws: Workspace) -> None:
    f = _flags(ws)
    assert f["black.png"]["is_junk"] and not f["black.png"]["is_blurry"]
    assert f["tiny.png"]["is_odd_size"]  # log-scale fence: a 12x12 among photos


def test_large_collections_cap_near_duplicate_thresholds(caplog: pytest.LogCaptureFixture) -> None:
    import numpy as np
    import pyarrow as pa

    from exokiratory.passes.flags.flag_rules import near_duplicates
    from exokiratory.passes.flags.table import FlagsParams

    base = np.uint64(0x0F0F_0F0F_0F0F_0F0F)
    flip10 = np.uint64((1 << 10) - 1)  # a copy 10 bits away in every hash
    n = 3
    t = pa.table(
        {
            "image_id": ["a", "b", "c"],
            "phash": pa.array([base, base ^ flip10, ~base], pa.uint64()),
            "dhash": pa.array([base, base ^ flip10, ~base], pa.uint64()),
            "phash_center": pa.array([base, base ^ flip10, ~base], pa.uint64()),
            "text_likeness_score": [0.0] * n,
            "noise_score": [5.0] * n,
            "megapixels": [1.0] * n,
            "sharpness_score": [1.0] * n,
            "size_bytes": [1.0] * n,
        }
    )
    sensed = np.ones(n, dtype=bool)
    assert near_duplicates(t, sensed, FlagsParams()).num_rows == 2  # phash 10 <= 12
    capped = FlagsParams(near_duplicate_large_n=2)
    with caplog.at_level("WARNING"):
        assert near_duplicates(t, sensed, capped).num_rows == 0  # 10 > cap 8
    assert "capping hash thresholds at 8" in caplog.text

"""Images with transparency (issue 17, honest output): PASS 1 records their alpha statistics,
the near-duplicate rule compares their silhouettes, and the light / low-information / grayscale
decisions are made on their visible pixels, not on the white they are composited over."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from exokiratory import Workspace
from exokiratory.core.decode import load_working_image
from exokiratory.passes.flags.flag_rules import ALPHA_HASH_THRESHOLD
from exokiratory.passes.flags.neardup import group_near_duplicates, make_clauses, with_checks
from exokiratory.passes.sense.alpha import ALPHA_SCHEMA, OPAQUE, compute_alpha
from exokiratory.passes.sense.hashes import hamming

SIZE = 256  # the working size: no resampling, so the expected statistics are exact
SIDE = 50  # ~4 % of the canvas: 96 % transparent


def _shape_mask(kind: str, top: int, left: int) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    y, x = yy - top, xx - left
    inside = (y >= 0) & (y < SIDE) & (x >= 0) & (x < SIDE)
    if kind == "disc":
        return (y - SIDE / 2) ** 2 + (x - SIDE / 2) ** 2 < (SIDE / 2) ** 2
    if kind == "triangle":
        return inside & (np.abs(x - SIDE / 2) <= y / 2)
    return inside  # square


def _overlay(kind: str, top: int, left: int, fill: str, opacity: int = 255) -> np.ndarray:
    """An RGBA canvas, transparent but for one small shape: random colours or white."""
    rng = np.random.default_rng(top * SIZE + left)
    mask = _shape_mask(kind, top, left)
    rgba = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    if fill == "texture":
        rgba[..., :3] = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    else:
        rgba[..., :3] = 255
    rgba[..., 3] = np.where(mask, opacity, 0)
    return rgba


OVERLAYS: dict[str, np.ndarray] = {
    "texture_disc.png": _overlay("disc", 20, 20, "texture"),
    "texture_square.png": _overlay("square", 30, 180, "texture"),
    "texture_triangle.png": _overlay("triangle", 180, 40, "texture"),
    "white_disc.png": _overlay("disc", 150, 150, "white"),
    "white_square_half.png": _overlay("square", 100, 60, "white", opacity=128),
}
TEXTURED = [n for n in OVERLAYS if n.startswith("texture")]
WHITE = [n for n in OVERLAYS if n.startswith("white")]


def _render_on_white(rgba: np.ndarray) -> Image.Image:
    im = Image.fromarray(rgba, "RGBA")
    flat = Image.new("RGB", im.size, (255, 255, 255))
    flat.paste(im, mask=im.getchannel("A"))
    return flat


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("alpha")
    src = root / "src"
    src.mkdir()
    for name, rgba in OVERLAYS.items():
        Image.fromarray(rgba, "RGBA").save(src / name)
    render = _render_on_white(OVERLAYS["texture_disc.png"])
    render.save(src / "render.png")  # two opaque copies of one overlay's render
    render.save(src / "render_copy.jpg", quality=92)
    w = Workspace.init(root / "ws", [str(src)])
    w.scan()
    w.run(["sense", "flags"], workers=1)
    return w


def _by_name(ws: Workspace, table: str) -> dict[str, dict[str, Any]]:
    rows = ws.sql(f"SELECT t.*, i.first_path FROM {table} t JOIN images i USING (image_id)")
    return {Path(r["first_path"]).name: r for r in rows.to_pylist()}


def test_alpha_statistics_are_recorded(ws: Workspace) -> None:
    feats = _by_name(ws, "features")
    for name, rgba in OVERLAYS.items():
        f, alpha = feats[name], rgba[..., 3]
        assert f["has_alpha"] and f["error"] is None
        assert f["alpha_coverage"] == pytest.approx(alpha.mean() / 255, abs=1e-6)
        assert f["transparent_fraction"] == pytest.approx((alpha == 0).mean(), abs=1e-6)
        assert 0.9 < f["transparent_fraction"] < 0.99
        assert f["alpha_phash"] != 0 and f["visible_entropy_score"] is not None
    half = feats["white_square_half.png"]
    assert half["alpha_coverage"] == pytest.approx(SIDE * SIDE * 128 / 255 / SIZE**2, abs=1e-6)
    for name in ("render.png", "render_copy.jpg"):  # opaque: neutral values, no visible twin
        f = feats[name]
        assert (f["alpha_coverage"], f["transparent_fraction"], f["alpha_phash"]) == (1, 0, 0)
        assert f["visible_brightness_p05"] is None and f["visible_grayscale_score"] is None


def test_overlays_are_not_near_duplicates_of_each_other(ws: Workspace) -> None:
    feats, flags = _by_name(ws, "features"), _by_name(ws, "flags")
    a, b = feats["white_disc.png"], feats["white_square_half.png"]
    # the bug: over white both are one blank white image, with the same perceptual hashes ...
    hashes = ("phash", "dhash", "phash_center")
    assert [a[h] for h in hashes] == [b[h] for h in hashes]
    # ... their silhouettes differ
    dist = hamming(np.uint64(a["alpha_phash"]), np.uint64(b["alpha_phash"]))
    assert int(dist) > ALPHA_HASH_THRESHOLD
    for name in OVERLAYS:
        assert flags[name]["dup_group_id"] is None and not flags[name]["is_near_duplicate"]
    # opaque copies still group (the alpha check passes for opaque pairs)
    assert flags["render.png"]["dup_group_id"] == flags["render_copy.jpg"]["dup_group_id"]
    assert flags["render.png"]["dup_group_id"] is not None


def test_light_low_information_grayscale_look_at_visible_pixels(ws: Workspace) -> None:
    feats, flags = _by_name(ws, "features"), _by_name(ws, "flags")
    for name in TEXTURED:
        f, fl = feats[name], flags[name]
        # over white, these are light, low-information images: what the composite says
        assert 1 - f["brightness_p05"] < 0.05 and f["entropy_score"] / 8 < 0.3
        # their visible pixels are random colours: not light, not low information, not grey
        assert not fl["is_light"] and not fl["is_low_information"] and not fl["is_grayscale"]
        assert not fl["is_junk"] and fl["is_worth_gpu"]
        assert fl["low_information_score"] == pytest.approx(f["visible_entropy_score"] / 8)
    for name in WHITE:  # a white shape is light and colourless: that is honest
        assert flags[name]["is_light"] and flags[name]["is_grayscale"]
    assert not all(flags[n]["is_light"] for n in OVERLAYS)
    assert not all(flags[n]["is_low_information"] for n in OVERLAYS)
    for name in ("render.png", "render_copy.jpg"):  # opaque: the composite columns, unchanged
        f, fl = feats[name], flags[name]
        assert fl["light_score"] == pytest.approx(1 - f["brightness_p05"])
        assert fl["low_information_score"] == pytest.approx(f["entropy_score"] / 8)
        assert fl["grayscale_score"] == pytest.approx(f["grayscale_score"])


def test_parts_written_before_the_alpha_columns_read_as_null(ws: Workspace, tmp_path: Path) -> None:
    copy = tmp_path / "ws"
    shutil.copytree(Path(ws.storage.root), copy)
    parts = list((copy / "features").rglob("*.parquet"))
    assert parts
    for part in parts:  # as `sense` wrote them before the alpha columns existed
        pq.write_table(pq.read_table(part).drop_columns(ALPHA_SCHEMA.names), part)
    shutil.rmtree(copy / "manifests" / "flags")
    old = Workspace(str(copy))
    rows = old.sql("SELECT alpha_phash, visible_entropy_score FROM features").to_pylist()
    assert rows and all(r["alpha_phash"] is None for r in rows)
    old.run("flags", workers=1)
    flags = _by_name(old, "flags")
    # back to the composite: the textured overlays look light again (why the columns exist)
    assert all(flags[n]["is_light"] for n in TEXTURED)


def test_compute_alpha_edge_cases() -> None:
    assert compute_alpha(None) == OPAQUE
    opaque = np.full((8, 8, 4), 255, dtype=np.uint8)
    assert compute_alpha(opaque) == OPAQUE
    clear = np.zeros((8, 8, 4), dtype=np.uint8)
    out = compute_alpha(clear)
    assert out["alpha_coverage"] == 0 and out["transparent_fraction"] == 1
    assert out["visible_entropy_score"] == 0 and out["visible_brightness_p05"] is None
    assert out["alpha_phash"] == 0  # no silhouette
    assert list(out) == ALPHA_SCHEMA.names


def test_decoder_keeps_the_straight_rgba_and_trns_transparency() -> None:
    rgba = OVERLAYS["white_disc.png"]
    img = load_working_image(_png(Image.fromarray(rgba, "RGBA")))
    assert img.rgba is not None and np.array_equal(img.rgba[..., 3], rgba[..., 3])
    assert (img.rgb == 255).all()  # the composite over white is blank
    key = Image.new("RGB", (16, 16), (10, 20, 30))
    key.paste((200, 0, 0), (0, 0, 8, 16))
    trns = load_working_image(_png(key, transparency=(10, 20, 30)))
    assert trns.rgba is not None and trns.rgba[0, 0, 3] == 255 and trns.rgba[0, 15, 3] == 0
    assert tuple(trns.rgb[0, 15]) == (255, 255, 255)
    assert load_working_image(_png(key)).rgba is None


HIGH, LOW = 0xFFFF_FFFF_0000_0000, 0x0000_0000_FFFF_FFFF


@pytest.mark.parametrize("max_identical", [1000, 1])  # pairs, and star links of identical sets
def test_the_alpha_check_separates_identical_composites(max_identical: int) -> None:
    ids = [f"img{i}" for i in range(6)]
    same = np.zeros(6, dtype=np.uint64)  # six blank composites: identical colour hashes
    alpha = np.array([0, 0, HIGH, HIGH + 1, LOW, LOW], dtype=np.uint64)  # 0, 1, 32, 64 bits apart
    hashes = {"phash": same, "dhash": same, "alpha_phash": alpha}
    clauses = with_checks(
        make_clauses({"phash": 4, "dhash": 8}, [("phash", "dhash")]),
        [("alpha_phash", ALPHA_HASH_THRESHOLD)],
    )
    out = group_near_duplicates(ids, hashes, [(clauses, None)], max_identical=max_identical)
    groups = {r["image_id"]: r["dup_group_id"] for r in out.to_pylist()}
    if max_identical > 6:  # every matching pair is found: three groups of two
        assert groups == {
            "img0": "img0",
            "img1": "img0",
            "img2": "img2",
            "img3": "img2",
            "img4": "img4",
            "img5": "img4",
        }
    else:  # a star around img0: only the members whose alpha matches img0's join it
        assert groups == {"img0": "img0", "img1": "img0"}


def _png(im: Image.Image, **options: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **options)
    return buf.getvalue()

"""PASS 4: masked crops, one decode per image, segment statistics, tiny CLIP/DINOv2 segment
embeddings through the real loading path, resume, and SIGKILL at segment level."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exokiratory import Workspace
from exokiratory.core.config import RunConfig
from exokiratory.core.dataset import PartDataset
from exokiratory.passes.segment_embed import crops
from exokiratory.passes.segment_embed.crops import (
    crop_box,
    decode_at_mask_size,
    masked_crop,
    mean_fill,
)
from exokiratory.passes.segment_embed.stats import ImageStats, lbp_codes

from .conftest import skimage_data_dir, table_rows
from .segment_data import HEIGHT, WIDTH, install_segments, write_scenes

FILL = (1, 2, 3)


# -- masked crop geometry ------------------------------------------------------------------
def test_masked_crop_fills_background_and_pads_to_a_centred_square() -> None:
    rgb = np.full((50, 80, 3), 200, np.uint8)
    rgb[..., 0] = np.arange(80, dtype=np.uint8)[None, :] + 10  # every column distinguishable
    mask = np.zeros((50, 80), bool)
    mask[20:30, 10:50] = True  # 40 x 10 box
    out = masked_crop(rgb, mask, [10, 20, 40, 10], margin=0.1, fill=FILL)
    # box grown by 0.1 x 40 = 4 px each side: 48 x 18, padded to a 48 x 48 square
    assert out.shape == (48, 48, 3)
    oy = (48 - 18) // 2
    inside = out[oy + 4 : oy + 14, 4:44]
    assert (inside == rgb[20:30, 10:50]).all()  # mask pixels kept, in place
    filled = np.ones((48, 48), bool)
    filled[oy + 4 : oy + 14, 4:44] = False
    assert (out[filled] == FILL).all()  # context outside the mask and padding: the fill


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    data=st.data(),
    margin=st.floats(0.0, 1.0),
)
def test_masked_crop_keeps_exactly_the_mask_pixels(
    h: int, w: int, data: st.DataObject, margin: float
) -> None:
    y0 = data.draw(st.integers(0, h - 1))
    x0 = data.draw(st.integers(0, w - 1))
    y1 = data.draw(st.integers(y0 + 1, h))
    x1 = data.draw(st.integers(x0 + 1, w))
    rng = np.random.default_rng(h * 100 + w)
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.7
    mask[y0, x0] = mask[y1 - 1, x1 - 1] = True  # the bbox is exactly the rectangle
    rgb = rng.integers(10, 256, (h, w, 3)).astype(np.uint8)
    bbox = [x0, y0, x1 - x0, y1 - y0]
    out = masked_crop(rgb, mask, bbox, margin, FILL)
    assert out.shape[0] == out.shape[1]
    left, top, right, bottom = crop_box(bbox, w, h, margin)
    assert left <= x0 and top <= y0 and right >= x1 and bottom >= y1
    assert out.shape[0] == max(right - left, bottom - top)
    kept = (out != np.asarray(FILL, np.uint8)).any(axis=2)
    assert kept.sum() == mask.sum()  # every mask pixel, nothing else
    assert sorted(map(tuple, out[kept].tolist())) == sorted(map(tuple, rgb[mask].tolist()))


def test_mean_fill_is_the_model_mean_in_8_bits() -> None:
    assert mean_fill([0.48145466, 0.4578275, 0.40821073]) == (123, 117, 104)  # CLIP
    assert mean_fill([0.485, 0.456, 0.406]) == (124, 116, 104)  # ImageNet (DINOv2)


def test_decode_at_mask_size_matches_the_raster_and_applies_exif(tmp_path: Path) -> None:
    from PIL import Image

    img = Image.open(skimage_data_dir() / "astronaut.png").convert("RGB").resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    data = (tmp_path / "rot.jpg").read_bytes()
    rgb = decode_at_mask_size(data, 67, 100, 10**8)  # the raster is portrait after EXIF
    assert rgb.shape == (100, 67, 3)
    expected = np.asarray(img.transpose(Image.Transpose.ROTATE_270).resize((67, 100)))
    assert np.abs(rgb.astype(int) - expected.astype(int)).mean() < 12


# -- statistics ----------------------------------------------------------------------------
def test_lbp_is_skimage_uniform_lbp_bit_for_bit() -> None:
    from skimage.feature import local_binary_pattern

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 4, (40, 50)).astype(np.float64), rng.random((30, 20)) * 255]
    from PIL import Image

    images.append(np.asarray(Image.open(skimage_data_dir() / "camera.png"), np.float64))
    for g in images:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # skimage: float input note
            want = local_binary_pattern(g, 8, 1, "uniform")
        assert (lbp_codes(g) == want).all()


def test_lbp_tells_stripes_from_flat_and_lab_matches_known_colours() -> None:
    rgb = np.zeros((40, 80, 3), np.uint8)
    rgb[:, :40] = (255, 0, 0)  # flat red
    rgb[:, 40:] = np.where((np.arange(40) // 2 % 2 == 0)[None, :, None], 240, 20)  # stripes
    left = np.zeros((40, 80), bool)
    left[5:35, 5:35] = True
    right = np.zeros((40, 80), bool)
    right[5:35, 45:75] = True
    stats = ImageStats(rgb)
    flat, stripes = stats.segment(left), stats.segment(right)
    assert flat["lbp_hist"][8] == pytest.approx(1.0)  # all neighbours >= centre
    assert stripes["lbp_hist"][8] < 0.6
    assert sum(abs(a - b) for a, b in zip(flat["lbp_hist"], stripes["lbp_hist"], strict=True)) > 0.8
    # sRGB red in CIE Lab (D65): L 53.2, a 80.1, b 67.2
    assert flat["lab_mean_l"] == pytest.approx(53.24, abs=0.1)
    assert flat["lab_mean_a"] == pytest.approx(80.09, abs=0.2)
    assert flat["lab_mean_b"] == pytest.approx(67.20, abs=0.2)
    assert flat["lab_std_l"] == pytest.approx(0.0, abs=1e-3)
    assert stripes["lab_std_l"] > 30 and stripes["chroma_mean"] < 1.0
    for hist in (flat["lab_hist"], stripes["lab_hist"]):
        assert np.asarray(hist).reshape(3, 16).sum(axis=1) == pytest.approx([1, 1, 1])


# -- through the workspace -----------------------------------------------------------------
N_SCENES = 12


@pytest.fixture(scope="module")
def seg_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, list]:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("segembed")
    scenes = write_scenes(root / "src", N_SCENES)
    ws = Workspace.init(root / "ws", [str(root / "src")], run=RunConfig(batch_size=8))
    ws.scan()
    install_segments(ws, scenes)
    return ws, scenes


def test_stats_rows_for_every_segment_decoding_each_image_once(
    seg_ws: tuple[Workspace, list],  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ws, scenes = seg_ws
    calls: list[tuple[int, int]] = []
    real = crops.decode_at_mask_size

    def counting(data: bytes, width: int, height: int, max_pixels: int) -> np.ndarray:
        calls.append((width, height))
        return real(data, width, height, max_pixels)

    monkeypatch.setattr(crops, "decode_at_mask_size", counting)
    # 36 segments in batches of 9: 3 per image, so every batch holds whole images
    (rep,) = ws.run(["segment-stats"], workers=1, batch_size=9)
    assert rep.processed == 3 * N_SCENES and rep.unit_errors == 0  # type: ignore[union-attr]
    assert len(calls) == N_SCENES and set(calls) == {(WIDTH, HEIGHT)}
    rows = ws.sql(
        "SELECT s.segment_id, s.mask_index, s.lbp_hist, s.lab_mean_b, s.error, i.first_path "
        "FROM segment_stats s JOIN images i USING (image_id) ORDER BY segment_id"
    ).to_pylist()
    assert len(rows) == 3 * N_SCENES
    by_scene = {s.name: s for s in scenes}
    for r in rows:
        scene = by_scene[r["first_path"].rsplit("/", 1)[-1]]
        if r["mask_index"] == 2:  # the object: stripes are textured, the disk is flat
            flat = r["lbp_hist"][8]
            assert flat < 0.6 if scene.object_kind == "stripes" else flat > 0.6
        if r["mask_index"] == 0:  # blue sky: negative b*
            assert r["lab_mean_b"] < -20


def test_images_split_across_batches_are_decoded_once_per_batch(
    seg_ws: tuple[Workspace, list],  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from exokiratory.passes.segment_embed.step import SegmentStatsPass

    ws, _ = seg_ws
    calls: list[int] = []
    real = crops.decode_at_mask_size
    monkeypatch.setattr(
        crops,
        "decode_at_mask_size",
        lambda *a: calls.append(1) or real(*a),  # type: ignore[func-returns-value]
    )
    with ws.catalog() as cat:
        units = SegmentStatsPass().units(cat)
    ctx = ws.batch_context()
    p = SegmentStatsPass()
    for start in range(0, units.num_rows, 4):  # 4 segments per batch: images straddle batches
        p.process_batch(units.slice(start, 4), ctx)
    n_batches = -(-units.num_rows // 4)
    assert N_SCENES <= len(calls) <= N_SCENES + n_batches - 1


def test_an_unreadable_image_gives_an_error_row_per_segment(tmp_path: Path) -> None:
    scenes = write_scenes(tmp_path / "src", 3, seed=1)
    ws = Workspace.init(tmp_path / "ws", [str(tmp_path / "src")])
    ws.scan()
    install_segments(ws, scenes)
    (tmp_path / "src" / scenes[1].name).write_bytes(b"\x89PNG\r\n\x1a\n broken now")
    (rep,) = ws.run(["segment-stats"], workers=1)
    assert rep.unit_errors == 3  # type: ignore[union-attr]
    errors = ws.sql("SELECT mask_index, error FROM segment_stats WHERE error IS NOT NULL")
    assert sorted(errors.column("mask_index").to_pylist()) == [0, 1, 2]
    assert ws.sql("SELECT count(*) AS n FROM segment_stats").to_pylist() == [{"n": 9}]


def test_resume_recomputes_only_missing_segments(tmp_path: Path) -> None:
    scenes = write_scenes(tmp_path / "src", 6, seed=2)
    ws = Workspace.init(tmp_path / "ws", [str(tmp_path / "src")])
    ws.scan()
    install_segments(ws, scenes)
    (first,) = ws.run(["segment-stats"], workers=1, batch_size=5)
    full = ws.table("segment_stats")
    (again,) = ws.run(["segment-stats"], workers=1, batch_size=5)
    assert again.planned == 0  # type: ignore[union-attr]
    ds = PartDataset(ws.storage, "segments/stats/v1", ("segment_id",))
    parts = ds.parts()
    lost = ws.storage.read_parquet(parts[1]).num_rows
    ws.storage.fs.rm(ws.storage.path(parts[1]))
    (resumed,) = ws.run(["segment-stats"], workers=1, batch_size=5)
    assert resumed.planned == lost  # type: ignore[union-attr]
    assert table_rows(ws.table("segment_stats")) == table_rows(full)
    assert first.processed == 18  # type: ignore[union-attr]


# -- tiny CLIP / DINOv2 through the real loading path ---------------------------------------
def test_tiny_segment_embeddings(
    seg_ws: tuple[Workspace, list],  # type: ignore[type-arg]
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import pyarrow as pa
    import pyarrow.parquet as pq

    ws, _ = seg_ws
    ws.config.passes["segment-embed-clip"] = {"model": "tiny", "forward_batch_size": 4}
    ws.config.passes["segment-embed-dino"] = {"model": "tiny", "fill": "grey"}
    reports = ws.run(["segment-embed-clip", "segment-embed-dino"])
    assert [r.processed for r in reports] == [3 * N_SCENES] * 2  # type: ignore[union-attr]
    for view, dim in (("segment_embeddings_clip", 16), ("segment_embeddings_dino", 32)):
        rows = ws.sql(f"SELECT segment_id, image_id, embedding, error FROM {view}").to_pylist()
        assert len(rows) == 3 * N_SCENES and all(r["error"] is None for r in rows)
        vecs = np.asarray([r["embedding"] for r in rows], np.float32)
        assert vecs.shape == (3 * N_SCENES, dim)
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-2)
        assert all(r["segment_id"].startswith(r["image_id"]) for r in rows)
    root = Path(ws.storage.root)
    clip_parts = sorted((root / "segments/embeddings/clip/tiny-clip").glob("*.parquet"))
    stored = pq.read_schema(clip_parts[0]).field("embedding").type
    assert pa.types.is_fixed_size_list(stored) and pa.types.is_float16(stored.value_type)
    # a non-default fill is another dataset, so crops of two geometries never mix
    names = [d.name for d in (root / "segments/embeddings/dino").iterdir()]
    assert len(names) == 1 and names[0].startswith("tiny-dino-crop")
    # only the masked pixels reach the model: the red disks (same shape and colour, at other
    # places in other scenes, with other noisy surroundings) embed identically
    objects = ws.sql(
        "SELECT e.embedding, i.first_path FROM segment_embeddings_clip e "
        "JOIN images i USING (image_id) WHERE e.mask_index = 2"
    ).to_pylist()
    disks = np.asarray(
        [r["embedding"] for r in objects if int(r["first_path"][-8:-4]) % 2 == 0], np.float32
    )
    stripes = np.asarray(
        [r["embedding"] for r in objects if int(r["first_path"][-8:-4]) % 2 == 1], np.float32
    )
    assert np.abs(disks - disks[0]).max() < 1e-3
    assert np.abs(stripes[0] - disks[0]).max() > 1e-2
    assert [r.planned for r in ws.run(["segment-embed-clip"])] == [0]  # type: ignore[union-attr]
    # text search over segments goes through the same model's text tower
    assert ws.build_index("clip", segments=True).total == 3 * N_SCENES
    hits = ws.search(text="a red disk", k=4, segments=True).to_dict("records")
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    paths = {r["image_id"]: r["first_path"] for r in ws.images().to_pylist()}
    assert all(h["path"] == paths[h["image_id"]] for h in hits)


# -- SIGKILL at segment level --------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_segment_stats_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    from .test_kill import _cli, _kill_at, _run_to_end

    scenes = write_scenes(tmp_path / "src", 150, seed=3)

    def workspace(name: str) -> Workspace:
        ws = Workspace.init(tmp_path / name, [str(tmp_path / "src")], run=RunConfig(batch_size=12))
        ws.scan()
        install_segments(ws, scenes)
        return ws

    ref, ws = workspace("ref"), workspace("ws")
    _run_to_end(_cli(tmp_path / "ref", "run", "segment-stats", "--workers", "2"))
    ds = PartDataset(ws.storage, "segments/stats/v1", ("segment_id",))
    rng = random.Random(5)
    states = []
    for i in range(4):
        cmd = _cli(tmp_path / "ws", "run", "segment-stats", "--workers", "2")
        if i == 0:
            killed = _kill_at(cmd, rng.uniform(0.05, 0.4))
        else:
            killed = _kill_at(cmd, rng.uniform(0.0, 0.3), lambda: len(ds.parts()))
        states.append((killed, len(ds.parts())))
    _run_to_end(_cli(tmp_path / "ws", "run", "segment-stats", "--workers", "2"))
    assert any(k and n > 0 for k, n in states), states  # really killed mid-work
    got, want = ws.table("segment_stats"), ref.table("segment_stats")
    assert got.num_rows == 3 * len(scenes)
    assert table_rows(got) == table_rows(want)
    raw = ds.read_raw(["segment_id"])
    assert len(set(raw.column("segment_id").to_pylist())) == raw.num_rows  # no duplicates

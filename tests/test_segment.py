"""PASS 3 ``segment``: tiny random-weight SAM through the real loading path, the segments
contract, marker rows and resume, mask-generation steps on crafted masks, and a SIGKILL test."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

pytest.importorskip("transformers")

from PIL import Image

from exokiratory import Workspace
from exokiratory.core.config import RunConfig, render_config
from exokiratory.core.dataset import PartDataset
from exokiratory.engine.registry import get_pass
from exokiratory.models.registry import resolve
from exokiratory.models.sam import SamInputGeometry, load_segmenter
from exokiratory.passes.segment import amg
from exokiratory.passes.segment.params import MaskGenerationParams
from exokiratory.passes.segment.rle import decode_rle

from .conftest import NATURAL_PHOTOS, skimage_data_dir, table_rows

#: permissive filters: random-weight masks are noise, so SAM's quality thresholds would drop all
TEST_PARAMS = {
    "model": "tiny",
    "routed_only": False,
    "points_per_side": 4,
    "crop_n_layers": 1,
    "mask_max_side": 96,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "min_thickness_pixels": 0.0,
    "min_area_fraction": 0.001,
}
PHOTOS = NATURAL_PHOTOS[:4]


def _source(
    folder: Path, names: tuple[str, ...] = PHOTOS, size: tuple[int, int] = (120, 90)
) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        img = Image.open(skimage_data_dir() / name).convert("RGB").resize(size)
        img.save(folder / (Path(name).stem + ".png"))
    return folder


def _workspace(root: Path, src: Path, batch_size: int = 256, **extra: object) -> Workspace:
    w = Workspace.init(root, [str(src)], run=RunConfig(batch_size=batch_size))
    w.config.passes["segment"] = {**TEST_PARAMS, **extra}
    w.storage.write_bytes_atomic("exokiratory.yaml", render_config(w.config).encode())
    w = Workspace(root)
    w.scan()
    return w


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("segment")
    src = _source(root / "src")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    w = _workspace(root / "ws", src)
    (report,) = w.run(["segment"])
    assert report.ok and report.processed == len(PHOTOS)
    return w


# -- the pass through the workspace ------------------------------------------------------


def test_segments_follow_the_contract(ws: Workspace) -> None:
    seg = ws.sql("SELECT * FROM segments")
    assert seg.num_rows > 0
    types = {f.name: f.type for f in seg.schema}
    assert types["segment_id"] == pa.string() and types["mask_index"] == pa.int32()
    assert types["crop_layer"] == pa.int8() and types["points_per_side"] == pa.int16()
    assert types["rle_counts"] == pa.binary() and types["bbox"].value_type == pa.float32()
    version = ws.passes(["segment"])[0].full_version
    stored = PartDataset(ws.storage, f"segments/masks/{version}", ("image_id", "mask_index"))
    assert stored.read_raw().schema.field("bbox").type == pa.list_(pa.float32(), 4)
    for name in ("n_segments", "n_candidates", "error"):
        assert name not in types
    images = {r["image_id"]: r for r in ws.sql("SELECT * FROM segment_images").to_pylist()}
    assert len(images) == len(PHOTOS) and all(r["error"] is None for r in images.values())
    by_image: dict[str, list[int]] = {}
    for r in seg.to_pylist():
        assert r["segment_id"] == f"{r['image_id']}-{r['mask_index']:04d}"
        assert (r["mask_height"], r["mask_width"]) == (72, 96)  # 120x90 -> long side 96
        mask = decode_rle(r["rle_counts"], r["mask_height"], r["mask_width"])
        assert int(mask.sum()) == r["area_pixels"] > 0
        ys, xs = np.nonzero(mask)
        assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert abs(r["centroid_x"] - (xs.mean() + 0.5)) < 1e-3
        assert r["area_fraction"] >= TEST_PARAMS["min_area_fraction"]
        assert r["crop_layer"] in (0, 1) and r["points_per_side"] == 4
        assert r["model_id"] == "tiny:sam"
        by_image.setdefault(r["image_id"], []).append(r["mask_index"])
    for image_id, indices in by_image.items():
        assert indices == list(range(images[image_id]["n_segments"]))
    for r in images.values():
        assert r["n_candidates"] == 5 * 16 * 3  # 5 crops x 4x4 points x 3 outputs


def test_rerun_is_a_no_op_and_status_counts_images(ws: Workspace) -> None:
    (report,) = ws.run(["segment"])
    assert report.planned == 0 and report.already_done == len(PHOTOS)
    (st,) = [p for p in ws.status().passes if p.name == "segment"]
    assert (st.wanted, st.done, st.failed) == (len(PHOTOS), len(PHOTOS), 0)


def test_masks_are_deterministic(ws: Workspace) -> None:
    p = get_pass("segment", TEST_PARAMS)
    cache = Path(ws.storage.path("cache/models"))
    segmenter = load_segmenter(p.spec, cache, "cpu")  # type: ignore[attr-defined]
    gen = amg.MaskGenerator(segmenter, MaskGenerationParams(**_generation(TEST_PARAMS)))
    rgb = np.asarray(Image.open(skimage_data_dir() / "coffee.png").convert("RGB").resize((96, 72)))
    a, b = gen.generate(rgb), gen.generate(rgb)
    assert len(a) > 0 and a.rle_counts == b.rle_counts
    np.testing.assert_array_equal(a.predicted_iou, b.predicted_iou)


def test_version_tracks_output_parameters_only() -> None:
    base = get_pass("segment", {"model": "tiny"}).full_version
    assert base == "v1-tiny-sam"
    assert get_pass("segment", {"model": "tiny", "device": "cpu"}).full_version == base
    assert get_pass("segment", {"model": "tiny", "points_per_batch": 8}).full_version == base
    changed = get_pass("segment", {"model": "tiny", "points_per_side": 16}).full_version
    assert changed.startswith("v1-tiny-sam-") and changed != base


def test_bad_parameters_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"passes\.segment: pred_iou_thresh"):
        get_pass("segment", {"pred_iou_thresh": 1.5})
    with pytest.raises(ValueError, match=r"passes\.segment: crop_layers"):
        get_pass("segment", {"crop_layers": 1})
    with pytest.raises(ValueError, match="points_per_side"):
        get_pass(
            "segment",
            {"points_per_side": 2, "crop_n_layers": 2, "crop_n_points_downscale_factor": 2},
        )


def test_failed_image_is_a_marker_and_a_retry_leaves_no_stale_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _source(tmp_path / "src", PHOTOS[:2])
    w = _workspace(tmp_path / "ws", src)
    real = amg.MaskGenerator.generate
    calls: list[int] = []

    def flaky(self: amg.MaskGenerator, rgb: np.ndarray) -> amg.GeneratedMasks:
        calls.append(1)
        if len(calls) == 1:  # the first image fails
            raise RuntimeError("simulated failure")
        return real(self, rgb)

    monkeypatch.setattr(amg.MaskGenerator, "generate", flaky)
    (report,) = w.run(["segment"])
    assert report.unit_errors == 1
    errors = w.sql("SELECT image_id, error FROM segment_images WHERE error IS NOT NULL")
    assert errors.num_rows == 1 and "simulated failure" in errors.column("error")[0].as_py()
    failed = errors.column("image_id")[0].as_py()
    assert (
        w.sql(f"SELECT count(*) AS n FROM segments WHERE image_id = '{failed}'")["n"][0].as_py()
        == 0
    )
    (again,) = w.run(["segment"])
    assert again.planned == 0  # an error is done until retried
    monkeypatch.setattr(amg.MaskGenerator, "generate", real)
    (retry,) = w.run(["segment"], retry_errors=True)
    assert retry.planned == 1 and retry.unit_errors == 0
    assert (
        w.sql("SELECT count(*) AS n FROM segment_images WHERE error IS NOT NULL")["n"][0].as_py()
        == 0
    )
    n = w.sql(f"SELECT n_segments FROM segment_images WHERE image_id = '{failed}'")[0][0].as_py()
    assert n > 0
    got = w.sql(f"SELECT count(*) AS n FROM segments WHERE image_id = '{failed}'")["n"][0].as_py()
    assert got == n


def test_routed_only_follows_flags(tmp_path: Path) -> None:
    src = _source(tmp_path / "src", PHOTOS[:2])
    w = _workspace(tmp_path / "ws", src, routed_only=True)
    w.run(["sense", "flags"])
    with w.catalog() as cat:
        (p,) = w.passes(["segment"])
        routed = cat.query("SELECT image_id FROM images_routed").num_rows
        assert p.units(cat).num_rows == routed  # type: ignore[union-attr]


# -- mask-generation steps on crafted inputs ---------------------------------------------


def _generation(params: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in params.items() if k in MaskGenerationParams.model_fields}


def test_crop_layout_matches_sam_reference() -> None:
    boxes = amg.crop_boxes(1000, 1500, 1, 512 / 1500)
    assert boxes == [
        ((0, 0, 1500, 1000), 0),
        ((0, 0, 921, 671), 1),
        ((0, 330, 921, 1000), 1),
        ((580, 0, 1500, 671), 1),
        ((580, 330, 1500, 1000), 1),
    ]
    assert len(amg.crop_boxes(100, 100, 2, 0.3)) == 1 + 4 + 16
    grid = amg.point_grid(4)
    assert grid.shape == (16, 2) and grid.min() == 0.125 and grid.max() == 0.875


def test_nms_keeps_best_and_distinct_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]], float)
    scores = np.array([0.5, 0.9, 0.1, 0.3])
    assert amg.nms(boxes, scores, 0.7).tolist() == [1, 3, 2]
    assert amg.nms(boxes, scores, 0.9).tolist() == [1, 0, 3, 2]  # IoU 0.81 survives 0.9


def test_stability_score_and_crop_edge() -> None:
    logits = torch.full((2, 4, 4), -5.0)
    logits[0, :2, :2] = 5.0  # crisp mask: stable
    logits[1, :2, :2] = 0.5  # weak logits: the +1 threshold removes it
    assert amg.stability_score(logits, 1.0).tolist() == [1.0, 0.0]
    crop, image = (0, 0, 60, 48), (0, 0, 96, 72)
    boxes = np.array([[10, 10, 58, 30], [0, 0, 20, 20], [10, 10, 30, 30]], float)
    assert amg.near_crop_edge(boxes, crop, image, 3.0).tolist() == [True, False, False]


def _crop_masks(
    masks: np.ndarray, ious: list[float], box: tuple[int, int, int, int], layer: int
) -> amg.CropMasks:
    x0, y0 = box[0], box[1]
    return amg.CropMasks(
        masks,
        amg.mask_boxes(masks) + np.array([x0, y0, x0, y0], float),
        np.array(ious, np.float32),
        np.ones(len(ious), np.float32),
        box,
        layer,
        4,
    )


def test_merge_prefers_small_crops_and_finalize_filters_and_caps() -> None:
    h, w = 40, 40
    whole = np.zeros((4, h, w), bool)
    whole[0, 5:15, 5:15] = True  # duplicated by the crop's mask below
    whole[1, 20:38, 20:38] = True  # big, kept
    whole[2, 0:1, 0:1] = True  # one pixel: below the area fraction
    whole[3, 2:4, 25:39] = True  # 2 px thin band: below the thickness
    crop = np.zeros((1, 20, 20), bool)
    crop[0, 5:15, 5:15] = True
    crops = [
        _crop_masks(whole, [0.99, 0.9, 0.95, 0.97], (0, 0, w, h), 0),
        _crop_masks(crop, [0.5], (0, 0, 20, 20), 1),
    ]
    merged = amg.merge_crops(crops, 0.7)
    assert sorted(zip(merged.crop_index.tolist(), merged.row.tolist(), strict=True)) == [
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 0),
    ]
    params = MaskGenerationParams(min_area_fraction=0.01, min_thickness_pixels=2.0)
    out = amg.finalize(merged, h, w, params)
    assert out.crop_layer.tolist() == [0, 1]  # ordered by predicted IoU
    assert out.geometry.area_pixels.tolist() == [18 * 18, 100]
    np.testing.assert_array_equal(decode_rle(out.rle_counts[1], h, w), whole[0])
    capped = amg.finalize(merged, h, w, params.model_copy(update={"max_masks_per_image": 1}))
    assert len(capped) == 1 and capped.geometry.area_pixels.tolist() == [18 * 18]


def test_input_geometry_sam_and_sam2() -> None:
    sam = SamInputGeometry.from_config({"size": {"longest_edge": 1024}})
    assert sam.keep_aspect and sam.resized_hw(750, 1000) == (768, 1024)
    sam2 = SamInputGeometry.from_config({"size": {"height": 1024, "width": 1024}})
    assert not sam2.keep_aspect and sam2.resized_hw(750, 1000) == (1024, 1024)
    px = SamInputGeometry.from_config({"size": {"longest_edge": 16}}).pixels(
        np.full((6, 12, 3), 255, np.uint8)
    )
    assert px.shape == (3, 16, 16) and px[:, 8:].max() == 0 and px[:, :8].min() > 0


def test_tiny_sam_loads_through_from_pretrained(tmp_path: Path) -> None:
    seg = load_segmenter(resolve("sam", "tiny"), tmp_path, "cpu", use_cache=False)
    assert (tmp_path / "tiny-sam" / "config.json").is_file()
    assert type(seg.model).__name__ == "SamModel" and seg.geometry.input_size == 128
    logits, ious = seg.predict_points(
        seg.embed(np.zeros((3, 128, 128), np.float32)), np.array([[5.0, 9.0]])
    )
    assert tuple(logits.shape) == (1, 3, 64, 64) and tuple(ious.shape) == (1, 3)
    empty, _ = seg.predict_points(None, np.zeros((0, 2)))
    assert tuple(empty.shape) == (0, 3, 64, 64)


# -- kill and resume -----------------------------------------------------------------------


def _cli(ws: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "exokiratory", "-q", *args, "-w", str(ws)]


@pytest.mark.slow
def test_sigkill_segment_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    names = (*PHOTOS, "camera.png", "coins.png", "moon.png", "grass.png")
    src = _source(tmp_path / "src", names, size=(80, 60))
    ref = _workspace(tmp_path / "ref", src, batch_size=1)
    ref.run(["segment"])
    ws = _workspace(tmp_path / "ws", src, batch_size=1)
    ds = PartDataset(
        ws.storage,
        f"segments/masks/{ref.passes(['segment'])[0].full_version}",
        ("image_id", "mask_index"),
    )
    rng = random.Random(7)
    killed = []
    for _ in range(2):
        base = len(ds.parts())
        proc = subprocess.Popen(
            _cli(tmp_path / "ws", "run", "segment"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while len(ds.parts()) <= base and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed.append(len(ds.parts()))
        proc.wait()
    assert killed and 0 < killed[0] < len(names), killed  # really killed mid-work
    subprocess.run(
        _cli(tmp_path / "ws", "run", "segment"), check=True, capture_output=True, timeout=300
    )
    for view in ("segments", "segment_images"):
        assert table_rows(ws.sql(f"SELECT * FROM {view}")) == table_rows(
            ref.sql(f"SELECT * FROM {view}")
        )
    raw = ds.read_raw(["image_id", "mask_index"])
    keys = list(zip(raw["image_id"].to_pylist(), raw["mask_index"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys))  # no duplicated segment

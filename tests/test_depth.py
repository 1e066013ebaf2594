"""The ``depth`` pass and ``depth-segments``: statistics on known maps, the processor's input
rule, a tiny random-weight Depth Anything end to end (routing, bad input, segments), kill +
rerun."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("transformers")

from exokiratory import Workspace
from exokiratory.core.config import RunConfig
from exokiratory.models.depth import DepthInput, load_depth_estimator
from exokiratory.models.registry import LICENSES, resolve
from exokiratory.passes.depth import segments as dseg
from exokiratory.passes.depth import stats
from exokiratory.passes.depth.step import DepthPass
from exokiratory.passes.segment.rle import encode_rle

from .conftest import skimage_data_dir, table_rows
from .test_kill import _cli, _kill_at, _run_to_end


def test_statistics_of_known_maps() -> None:
    ys, xs = np.mgrid[0:60, 0:80].astype(np.float64)
    plane = 1.0 + 0.02 * xs + 0.05 * ys  # inverse depth of a plane: affine in x, y
    s = stats.depth_summary(plane)
    assert s["planarity_score"] == pytest.approx(1.0, abs=1e-9)
    assert s["depth_layering_score"] < 0.8 and s["depth_entropy_score"] > 0.9
    assert s["depth_p05"] < s["depth_p50"] < s["depth_p95"]
    steps = np.where(xs < 40, 10.0, 1.0)  # left half near (large disparity), right half far
    s = stats.depth_summary(steps)
    assert s["near_fraction"] == pytest.approx(0.5) and s["far_fraction"] == pytest.approx(0.5)
    assert s["depth_layering_score"] == pytest.approx(1.0, abs=1e-6)
    assert s["planarity_score"] < 0.8 and s["depth_entropy_score"] == pytest.approx(0.25)
    m = np.asarray(s["depth_map"], np.float32).reshape(s["depth_map_height"], s["depth_map_width"])
    assert m.shape == (48, 64) and m.dtype == np.float32
    assert m[:, :30].max() == 0.0 and m[:, 34:].min() == 1.0  # 0 near, 1 far
    flat = stats.depth_summary(np.full((10, 10), 3.0))
    assert flat["depth_p50"] == 0.5 and flat["depth_entropy_score"] == 0.0
    assert flat["planarity_score"] == 1.0 and flat["depth_layering_score"] == 0.0
    assert stats.small_map(np.zeros((10, 20)), 64).shape == (10, 20)  # never upscaled


def test_input_rule_is_the_dpt_processors() -> None:
    geo = DepthInput.from_config({"size": {"height": 518, "width": 518}})
    assert geo.input_hw(750, 1000) == (518, 686)  # the shorter side reaches 518
    assert geo.input_hw(1000, 750) == (686, 518)
    assert geo.input_hw(200, 300) == (350, 518)  # upscaling: as little as possible
    x = geo.pixels(np.zeros((75, 100, 3), np.uint8))
    assert x.shape == (3, 392, 518) and x.dtype == np.float32


def test_profiles_say_their_licences() -> None:
    assert resolve("depth", "lite").model_id == "depth-anything/Depth-Anything-V2-Small-hf"
    assert LICENSES[resolve("depth", "lite").model_id] == "Apache-2.0"
    assert "non-commercial" in LICENSES[resolve("depth", "large").model_id]


def test_segment_depth_weights_cells_by_mask_coverage() -> None:
    depth_map = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (4, 1))  # 4 x 8, far to the right
    mask = np.zeros((40, 80), bool)
    mask[:, :20] = True  # the left quarter: map columns 0-1
    row = {
        "segment_id": "a-0000",
        "image_id": "a",
        "image_idx": 0,
        "mask_index": 0,
        "rle_counts": encode_rle(mask),
        "mask_height": 40,
        "mask_width": 80,
    }
    out = dseg.segment_row(row, depth_map, "m")
    assert out["depth_mean"] == pytest.approx(depth_map[0, :2].mean())
    assert out["map_cells"] == pytest.approx(8.0)
    assert out["depth_median"] in (pytest.approx(depth_map[0, 0]), pytest.approx(depth_map[0, 1]))
    tiny = np.zeros((40, 80), bool)
    tiny[0, 79] = True  # smaller than a map cell: still counted
    out = dseg.segment_row({**row, "rle_counts": encode_rle(tiny)}, depth_map, "m")
    assert out["depth_median"] == pytest.approx(1.0) and 0 < out["map_cells"] < 1


def test_tiny_model_forward_does_not_depend_on_the_batch(tmp_path: Path) -> None:
    est = load_depth_estimator(resolve("depth", "tiny"), tmp_path, "cpu")
    rng = np.random.default_rng(0)
    a, b = (est.pixels(rng.integers(0, 255, (60, 80, 3), np.uint8)) for _ in range(2))
    est.batch_size = 8
    together = est.predict([a, b, a])
    alone = est.predict([a])
    assert np.array_equal(together[0], alone[0]) and np.array_equal(together[2], alone[0])
    assert together[0].shape == a.shape[1:] and float(together[0].std()) > 0


def _collection(src: Path) -> Path:
    src.mkdir(parents=True)
    for name in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"):
        shutil.copy(skimage_data_dir() / name, src / name)
    page = Image.new("RGB", (400, 500), "white")
    page.save(src / "blank_page.png")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 300, 3), np.uint8)).save(
        buf, "JPEG", quality=90
    )
    (src / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    return src


def test_depth_pass_end_to_end_with_segments(tmp_path: Path) -> None:
    src = _collection(tmp_path / "src")
    ws = Workspace.init(tmp_path / "ws", [str(src)], run=RunConfig(workers=1))
    ws.config.passes["depth"] = {"model": "tiny"}
    ws.config.passes["segment"] = {
        "model": "tiny",
        "points_per_side": 2,
        "crop_n_layers": 0,
        "mask_max_side": 48,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "min_thickness_pixels": 0.0,
        "min_area_fraction": 0.001,
    }
    ws.scan(progress=False)
    ws.run(["sense", "flags"], progress=False)
    routed = {
        r["image_id"]
        for r in ws.sql(
            f"SELECT image_id FROM flags f WHERE {DepthPass().params.route}"
        ).to_pylist()
    }
    (rep,) = ws.run(["depth"], progress=False)
    rows = ws.sql("SELECT * FROM depth").to_pylist()
    assert {r["image_id"] for r in rows} == routed and rep.unit_errors == 0
    assert len(routed) >= 3  # the photos (not the blank page)
    for r in rows:
        assert r["model_id"] == "tiny:depth" and r["error"] is None
        assert len(r["depth_map"]) == r["depth_map_height"] * r["depth_map_width"]
        side = max(r["depth_map_height"], r["depth_map_width"])
        assert side == min(64, max(r["input_height"], r["input_width"]))  # never upscaled
        assert 0 <= r["near_fraction"] + r["far_fraction"] <= 1
        assert r["input_height"] % 14 == 0 and r["input_width"] % 14 == 0
    # bad input: every readable image (--all); a file damaged since the scan is an error row,
    # the truncated JPEG (unreadable at scan) is no unit at all
    (src / "blank_page.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged after the scan")
    ws.run(["depth"], progress=False, all_images=True)
    errors = ws.sql(
        "SELECT i.first_path, d.error FROM depth d JOIN images i USING (image_id) "
        "WHERE d.error IS NOT NULL"
    ).to_pylist()
    assert [Path(e["first_path"]).name for e in errors] == ["blank_page.png"]
    assert ws.sql("SELECT count(*) AS n FROM depth").to_pylist()[0]["n"] == 5
    st = {p.name: p for p in ws.status().passes}["depth"]
    assert st.failed == 0 and st.done == len(routed)  # status counts the routed images
    # per-segment depth, joined to the segment manifest
    ws.run(["segment"], progress=False, limit=2)
    ws.run(["depth-segments"], progress=False)
    seg = ws.sql(
        "SELECT s.segment_id, d.depth_mean, d.depth_median, d.depth_rank, d.map_cells "
        "FROM segments s JOIN depth_segments d USING (segment_id)"
    ).to_pylist()
    n_segments = ws.sql(
        "SELECT count(*) AS n FROM segments s JOIN depth USING (image_id) WHERE depth.error IS NULL"
    ).to_pylist()[0]["n"]
    assert len(seg) == n_segments > 0
    assert all(0 <= r["depth_median"] <= 1 and r["map_cells"] > 0 for r in seg)
    assert min(r["depth_rank"] for r in seg) == 0


def test_sigkill_mid_run_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(5)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (40 + i, 60, 3), np.uint8)).save(src / f"n{i:02d}.png")

    def make(name: str) -> Path:
        root = tmp_path / name
        ws = Workspace.init(root, [str(src)], run=RunConfig(batch_size=1, workers=1))
        from exokiratory.api.colab import configure

        configure(ws, "depth", model="tiny")
        ws.scan(progress=False)
        return root

    ref, ws = make("ref"), make("ws")
    # every run in a fresh process (same torch threads: float results depend on their number)
    _run_to_end(_cli(ref, "run", "depth", "--all"))
    parts = lambda: len(list((ws / "semantics" / "depth").rglob("*.parquet")))  # noqa: E731
    killed = _kill_at(_cli(ws, "run", "depth", "--all"), 0.1, parts)
    mid = parts()
    _run_to_end(_cli(ws, "run", "depth", "--all"))
    assert killed and 0 < mid < 10, mid
    got, want = Workspace(ws).table("depth"), Workspace(ref).table("depth")
    assert got.num_rows == want.num_rows == 10
    assert table_rows(got) == table_rows(want)

"""Synthetic scenes with known segments, written into a workspace as PASS 3 output would be.

Each scene is a small RGB image: a blue "sky" band on top and a green "ground" band below (both
touch the border, large: infrastructure), and one foreground object in the middle (a red disk,
or a yellow/black striped square: small, away from the border). The segments are written in
the segments contract's schema through the ``segment`` pass's own dataset (its parts, its
marker rows), so the ``segments`` view and every PASS 4 pass read them exactly as they would
read SAM's output, with geometry known in advance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from exokiratory import Workspace
from exokiratory.core.dataset import PartDataset
from exokiratory.passes.segment.rle import encode_rle

WIDTH, HEIGHT = 96, 72
KINDS = ("sky", "ground", "object")


@dataclass(frozen=True)
class Scene:
    name: str
    rgb: np.ndarray
    masks: list[np.ndarray]  # sky, ground, object
    object_kind: str  # "disk" or "stripes"


def make_scene(i: int, seed: int = 0) -> Scene:
    rng = np.random.default_rng(seed * 10_000 + i)
    rgb = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    horizon = int(HEIGHT * 0.45)
    rgb[:horizon] = (70, 120, 220)
    rgb[horizon:] = (60, 160, 60)
    rgb = np.clip(rgb + rng.integers(-6, 7, rgb.shape), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    cy, cx = int(rng.integers(25, 47)), int(rng.integers(30, 66))
    kind = "disk" if i % 2 == 0 else "stripes"
    if kind == "disk":
        obj = (yy - cy) ** 2 + (xx - cx) ** 2 <= 11**2
        rgb[obj] = (220, 30, 30)
    else:
        obj = (abs(yy - cy) <= 10) & (abs(xx - cx) <= 10)
        stripes = obj & ((xx // 2) % 2 == 0)
        rgb[obj] = (240, 220, 20)
        rgb[stripes] = (10, 10, 10)
    sky = (yy < horizon) & ~obj
    ground = (yy >= horizon) & ~obj
    return Scene(f"scene_{i:04d}.png", rgb, [sky, ground, obj], kind)


def write_scenes(folder: Path, n: int, seed: int = 0) -> list[Scene]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    scenes = [make_scene(i, seed) for i in range(n)]
    for s in scenes:
        Image.fromarray(s.rgb).save(folder / s.name)
    return scenes


def bbox_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)]


def touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def segment_rows(image_id: str, image_idx: int, masks: list[np.ndarray]) -> list[dict[str, Any]]:
    """Rows in the segments contract's schema (plus the marker row of the ``segment`` pass)."""
    h, w = masks[0].shape
    rows = []
    for i, m in enumerate(masks):
        area = int(m.sum())
        ys, xs = np.nonzero(m)
        rows.append(
            {
                "segment_id": f"{image_id}-{i:04d}",
                "image_id": image_id,
                "image_idx": image_idx,
                "mask_index": i,
                "crop_layer": 0,
                "points_per_side": 32,
                "mask_height": h,
                "mask_width": w,
                "rle_counts": encode_rle(m),
                "bbox": bbox_of(m),
                "area_pixels": area,
                "area_fraction": area / (h * w),
                "solidity": 1.0,
                "eccentricity": 0.0,
                "perimeter": 0.0,
                "centroid_x": float(xs.mean()),
                "centroid_y": float(ys.mean()),
                "touches_border": touches_border(m),
                "predicted_iou": 0.9,
                "stability_score": 0.95,
                "model_id": "synthetic",
            }
        )
    rows.append(
        {
            "segment_id": None,
            "image_id": image_id,
            "image_idx": image_idx,
            "mask_index": -1,
            "mask_height": h,
            "mask_width": w,
            "model_id": "synthetic",
            "n_segments": len(masks),
            "n_candidates": len(masks),
            "error": None,
        }
    )
    return rows


def install_segments(ws: Workspace, scenes: list[Scene]) -> int:
    """Write the scenes' segments as the ``segment`` pass's output; returns the segment count."""
    (seg_pass,) = ws.passes(["segment"])
    by_name = {
        r["first_path"].rsplit("/", 1)[-1]: r
        for r in ws.sql("SELECT image_id, image_idx, first_path FROM images").to_pylist()
    }
    rows: list[dict[str, Any]] = []
    for s in scenes:
        img = by_name[s.name]
        rows.extend(segment_rows(img["image_id"], img["image_idx"], s.masks))
    table = pa.Table.from_pylist(rows, schema=seg_pass.output_schema())  # type: ignore[union-attr]
    ds = PartDataset(ws.storage, seg_pass.output_rel, seg_pass.key)  # type: ignore[union-attr]
    ds.write_part("part-000000000000-synthetic", table)
    return sum(len(s.masks) for s in scenes)

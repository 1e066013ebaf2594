"""PASS 4 throughput: segments per second of ``segment-stats`` and ``segment-embed-clip``
(tiny random-weight CLIP on the CPU: plumbing cost, not a real model), decodes per image, and
the gain of decoding each image once for all of its segments over decoding it per segment.

Images: real photos (skimage / sklearn wheels) at 512 px on the long side; segments: a
``--grid`` x ``--grid`` tiling of each image into irregular blobs (Voronoi cells of random
seeds), written as PASS 3 output in the segments contract's schema.

    python bench/segment_embed_throughput.py [--images 60] [--grid 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from _collection import real_photo_paths
from PIL import Image

from exokiratory import Workspace
from exokiratory.core.config import RunConfig
from exokiratory.core.dataset import PartDataset
from exokiratory.passes.segment.rle import encode_rle_batch
from exokiratory.passes.segment_embed import crops


def _cells(h: int, w: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, h, w) masks: Voronoi cells of n random seeds (irregular, cover the image)."""
    seeds = rng.random((n, 2)) * [h, w]
    yy, xx = np.mgrid[:h, :w]
    d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    owner = d.argmin(axis=0)
    return np.stack([owner == i for i in range(n)])


def build(root: Path, n_images: int, grid: int) -> tuple[Workspace, int]:
    src = root / "src"
    src.mkdir(parents=True)
    photos = [Image.open(p).convert("RGB") for p in real_photo_paths()]
    for i in range(n_images):
        im = photos[i % len(photos)].copy()
        im.thumbnail((512, 512))
        im = im.rotate(0 if i < len(photos) else (i // len(photos)) * 7, expand=False)
        im.save(src / f"img_{i:04d}.jpg", quality=90)
    ws = Workspace.init(root / "ws", [str(src)], run=RunConfig(batch_size=256))
    ws.scan()
    (seg_pass,) = ws.passes(["segment"])
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for img in ws.sql("SELECT image_id, image_idx, width, height FROM images").to_pylist():
        h, w = img["height"], img["width"]
        masks = _cells(h, w, grid * grid, rng)
        for m, (mask, rle) in enumerate(zip(masks, encode_rle_batch(masks), strict=True)):
            ys, xs = np.nonzero(mask)
            rows.append(
                {
                    "segment_id": f"{img['image_id']}-{m:04d}",
                    "image_id": img["image_id"],
                    "image_idx": img["image_idx"],
                    "mask_index": m,
                    "mask_height": h,
                    "mask_width": w,
                    "rle_counts": rle,
                    "bbox": [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1],
                    "area_pixels": int(mask.sum()),
                    "area_fraction": float(mask.mean()),
                    "touches_border": bool(xs.min() == 0 or ys.min() == 0),
                }
            )
        rows.append(
            {
                "image_id": img["image_id"],
                "image_idx": img["image_idx"],
                "mask_index": -1,
                "mask_height": h,
                "mask_width": w,
                "n_segments": grid * grid,
            }
        )
    table = pa.Table.from_pylist(rows, schema=seg_pass.output_schema())  # type: ignore[union-attr]
    PartDataset(ws.storage, seg_pass.output_rel, seg_pass.key).write_part(  # type: ignore[union-attr]
        "part-000000000000-bench", table
    )
    return ws, n_images * grid * grid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--grid", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws, n_seg = build(Path(tmp), args.images, args.grid)
        calls = [0]
        real = crops.decode_at_mask_size

        def counting(*a: Any) -> np.ndarray:
            calls[0] += 1
            return real(*a)

        crops.decode_at_mask_size = counting  # type: ignore[assignment]
        print(f"{args.images} images (512 px), {n_seg} segments ({args.grid**2} per image)")
        for name, workers in (("segment-stats", 1), ("segment-embed-clip", 1)):
            if name == "segment-embed-clip":
                ws.config.passes[name] = {"model": "tiny"}
                ws.run([name], limit=1, workers=1)  # build + load the tiny model once
                calls[0] = 0
            t0 = time.perf_counter()
            (rep,) = ws.run([name], workers=workers)
            dt = time.perf_counter() - t0
            per_image = calls[0] / args.images
            print(
                f"{name}: {rep.processed} segments in {dt:.2f} s = "  # type: ignore[union-attr]
                f"{rep.processed / dt:.0f} segments/s, {per_image:.2f} decodes per image"  # type: ignore[union-attr]
            )
            calls[0] = 0
        # what a decode per segment would cost: the decode time alone, per segment vs per image
        data = [p.read_bytes() for p in sorted((Path(tmp) / "src").iterdir())]
        sizes = [Image.open(p).size for p in sorted((Path(tmp) / "src").iterdir())]
        t0 = time.perf_counter()
        for d, (w, h) in zip(data, sizes, strict=True):
            real(d, w, h, 10**9)
        once = time.perf_counter() - t0
        print(
            f"decoding: {once / args.images * 1e3:.1f} ms per image; one decode per segment "
            f"would add {once * (args.grid**2 - 1):.2f} s ({args.grid**2}x the decode work)"
        )


if __name__ == "__main__":
    main()

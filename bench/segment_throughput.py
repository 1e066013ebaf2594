"""PASS 3 benchmark (segment), measured in one run on the same images:

1. the mask generator with the tiny random-weight SAM (the real code path; one crop layer =
   5 crops; SAM's quality filters OFF, so every mask output is upscaled, scored, binarised and
   boxed: the worst case of the per-candidate post-processing): segments/s, model time vs
   post-processing time per image, and the post-processing cost per candidate mask output;
2. the final stage on realistic masks: geometry + ordering + RLE of up to ``--masks`` region
   masks per image (Felzenszwalb regions of the same photo, a stand-in for SAM's ~100 kept
   masks, which random weights cannot give), and the RLE bytes per segment;
3. the real SAM ViT-B cost: ``SamModel(SamConfig())`` (the ViT-B sizes; random weights, no
   download) timed on the CPU for one image embedding (1024 x 1024 input) and one decoder
   forward of 64 point prompts, and counted in FLOPs (``torch.utils.flop_counter``); per image
   at the default 32 x 32 grid: ``crops x (encoder + 16 x decoder)``.

The post-processing of the default configuration is ``pass_rate x 3072 x crops x cost per
candidate + final stage``, where ``pass_rate`` is the share of mask outputs above SAM's
predicted-IoU threshold (only a trained model knows it): the bench prints the ratio to the real
ViT-B model time at pass rate 1 (every output survives, the worst case) and the pass rate at
which it would reach 25%.

    python bench/segment_throughput.py [--images 2] [--side 1024] [--grid 8] [--masks 100]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("EXOKIRATORY_PROGRESS", "0")

import numpy as np
import skimage
import torch
from PIL import Image
from skimage.segmentation import felzenszwalb
from torch.utils.flop_counter import FlopCounterMode

from exokiratory.models.registry import resolve
from exokiratory.models.sam import load_segmenter
from exokiratory.passes.segment import amg
from exokiratory.passes.segment.geometry import measure
from exokiratory.passes.segment.params import MaskGenerationParams
from exokiratory.passes.segment.rle import encode_rle_batch

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png", "rocket.jpg")


def photos(n: int, side: int) -> list[np.ndarray]:
    """Natural photos resized so the long side is ``side`` (the mask raster)."""
    out = []
    for name in PHOTOS[:n]:
        img = Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")
        scale = side / max(img.size)
        size = (round(img.width * scale), round(img.height * scale))
        out.append(np.asarray(img.resize(size, Image.Resampling.BILINEAR)))
    return out


def tiny_generator(cache: str, grid: int) -> amg.MaskGenerator:
    params = MaskGenerationParams(
        points_per_side=grid,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        min_thickness_pixels=0.0,
    )
    segmenter = load_segmenter(resolve("sam", "tiny"), cache, "cpu")
    return amg.MaskGenerator(segmenter, params)


def region_masks(rgb: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` largest Felzenszwalb regions of the photo as a boolean stack."""
    labels = felzenszwalb(rgb, scale=200, sigma=0.8, min_size=200)
    ids, counts = np.unique(labels, return_counts=True)
    keep = ids[np.argsort(-counts)][:n]
    return labels[None] == keep[:, None, None]


def final_stage(masks: np.ndarray) -> tuple[float, int]:
    """Seconds for geometry + ordering + RLE of ``masks``; total RLE bytes."""
    t0 = time.perf_counter()
    geo = measure(masks)
    order = np.lexsort((geo.bbox[:, 0], geo.bbox[:, 1], -geo.area_pixels))
    counts = encode_rle_batch(masks[order])
    return time.perf_counter() - t0, sum(len(c) for c in counts)


def vit_b_cost(points: int, crops: int) -> dict[str, float]:
    """CPU seconds and GFLOPs of SAM ViT-B (random weights, real sizes) for one image."""
    from transformers import SamConfig, SamModel

    torch.manual_seed(0)
    model = SamModel(SamConfig()).eval()
    pixels = torch.randn(1, 3, 1024, 1024)
    pts = torch.rand(1, 64, 1, 2) * 1024
    with torch.inference_mode():
        emb = model.get_image_embeddings(pixels)  # warm-up
        t0 = time.perf_counter()
        emb = model.get_image_embeddings(pixels)
        enc_s = time.perf_counter() - t0
        model(image_embeddings=emb, input_points=pts, multimask_output=True)  # warm-up
        t0 = time.perf_counter()
        for _ in range(3):
            model(image_embeddings=emb, input_points=pts, multimask_output=True)
        dec_s = (time.perf_counter() - t0) / 3
        with FlopCounterMode(display=False) as enc_flops:
            model.get_image_embeddings(pixels)
        with FlopCounterMode(display=False) as dec_flops:
            model(image_embeddings=emb, input_points=pts, multimask_output=True)
    batches = math.ceil(points / 64)
    return {
        "encoder_s": enc_s,
        "decoder64_s": dec_s,
        "encoder_gflop": enc_flops.get_total_flops() / 1e9,
        "decoder64_gflop": dec_flops.get_total_flops() / 1e9,
        "per_image_s": crops * (enc_s + batches * dec_s),
        "per_image_gflop": crops
        * (enc_flops.get_total_flops() + batches * dec_flops.get_total_flops())
        / 1e9,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--grid", type=int, default=8, help="tiny run's points per side")
    ap.add_argument("--masks", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    images = photos(args.images, args.side)

    gen = tiny_generator(tempfile.mkdtemp(prefix="exo-bench-sam-"), args.grid)
    gen.generate(images[0][:64, :64].copy())  # warm-up
    p = gen.params
    h, w = images[0].shape[:2]
    crops = len(amg.crop_boxes(h, w, p.crop_n_layers, p.crop_overlap_ratio))
    model_s = post_s = 0.0
    n_segments = n_candidates = 0
    for rgb in images:
        out = gen.generate(rgb)
        model_s += out.timings.model_seconds
        post_s += out.timings.post_seconds
        n_segments += len(out)
        n_candidates += out.timings.n_candidates
    n = len(images)
    per_candidate = post_s / n_candidates
    print(f"tiny SAM, {n} images {w}x{h}, {crops} crops, grid {args.grid}, filters off")
    print(f"  mask outputs/image {n_candidates / n:.0f}, kept segments/image {n_segments / n:.1f}")
    print(f"  model {model_s / n:.2f} s/image, post-processing {post_s / n:.2f} s/image")
    print(
        f"  segments/s {n_segments / (model_s + post_s):.2f}; post / tiny model {post_s / model_s:.2f}"
    )
    print(f"  post-processing per mask output {1000 * per_candidate:.2f} ms")

    final_s = 0.0
    n_masks = n_bytes = 0
    for rgb in images:
        masks = region_masks(rgb, args.masks)
        seconds, nbytes = final_stage(masks)
        final_s += seconds
        n_masks += len(masks)
        n_bytes += nbytes
    final_per_image = final_s / n
    print(f"final stage on {n_masks / n:.0f} region masks/image: {final_per_image:.3f} s/image")
    print(f"  RLE bytes per segment {n_bytes / n_masks:.0f} ({w}x{h} raster)")

    points = MaskGenerationParams().points_per_side ** 2
    cost = vit_b_cost(points, crops)
    print(
        f"SAM ViT-B (CPU, {args.threads} threads): encoder {cost['encoder_s']:.2f} s "
        f"({cost['encoder_gflop']:.0f} GFLOP), decoder x64 points {cost['decoder64_s']:.3f} s "
        f"({cost['decoder64_gflop']:.1f} GFLOP)"
    )
    print(
        f"  per image ({crops} crops x {points} points): {cost['per_image_s']:.1f} s, "
        f"{cost['per_image_gflop']:.0f} GFLOP"
    )
    outputs = 3 * points * crops
    worst = outputs * per_candidate + final_per_image
    print(
        f"default config, every one of {outputs} outputs kept (worst case): post-processing "
        f"{worst:.1f} s = {100 * worst / cost['per_image_s']:.0f}% of the ViT-B model time"
    )
    share = (0.25 * cost["per_image_s"] - final_per_image) / (outputs * per_candidate)
    if share >= 1:
        print("  post-processing stays < 25% even if every mask output passes the IoU threshold")
    else:
        print(
            f"  post-processing stays < 25% while <= {100 * share:.0f}% of the mask outputs "
            "pass the predicted-IoU threshold"
        )


if __name__ == "__main__":
    main()

"""CUDA paths, checked on a machine with a GPU (CPU-only machines skip it: it says so).

    python bench/gpu_check.py [--out results.json]

1. fp16 embeddings: tiny CLIP and DINOv2 loaded through the real load path on CUDA (dtype chosen
   by ``models.device``) against the same models on the CPU in float32: cosine of the vectors.
2. OOM halving for real: ``run_with_oom_backoff`` over a function that allocates 40 GiB per item
   on the GPU; the chunk size must halve until it fits, and every item must be returned in order.
3. Tiny SD img2img + ControlNet (canny) through ``load_diffusion`` on CUDA in fp16 with model
   CPU offload: images come back finite, and the same seed gives the same image twice.
4. Real-size random-weight throughput: CLIP ViT-L/14 image tower (224 px) and the SD 1.5 UNet
   (64 x 64 latents, guidance batch of 2) in fp16: images per second and seconds per step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from exokiratory.models.device import pick_device, pick_dtype, run_with_oom_backoff
from exokiratory.models.registry import resolve


def _images(n: int, size: int = 96) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


def check_embeddings(cache: Path) -> dict[str, Any]:
    from exokiratory.models.vision import load_embedder

    out = {}
    for role in ("clip", "dino"):
        spec = resolve(role, "tiny")
        gpu = load_embedder(spec, cache, "cuda", use_cache=False)
        cpu = load_embedder(spec, cache, "cpu", use_cache=False)
        ims = _images(16)
        a, b = gpu.embed_images(ims), cpu.embed_images(ims)
        cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        dtype = str(next(gpu.model.parameters()).dtype)
        out[role] = {"dtype": dtype, "min_cosine_vs_cpu_fp32": float(cos.min())}
    return out


def check_oom_halving() -> dict[str, Any]:
    sizes: list[int] = []
    per_item = 40 * 1024**3  # bytes: 8 items (320 GiB) cannot fit, 2 (80 GiB) can

    def fn(chunk: list[int]) -> list[int]:
        sizes.append(len(chunk))
        block = torch.empty(len(chunk) * per_item, dtype=torch.uint8, device="cuda")
        del block
        return [x * 10 for x in chunk]

    items = list(range(8))
    got = run_with_oom_backoff(fn, items, 8)
    torch.cuda.empty_cache()
    return {"chunk_sizes_tried": sizes, "results_in_order": got == [x * 10 for x in items]}


def check_diffusion(cache: Path) -> dict[str, Any]:
    from exokiratory.models.diffusion import (
        GenerationRequest,
        GenerationSettings,
        load_controlnet,
        load_diffusion,
    )

    probe = load_diffusion(resolve("diffusion", "tiny"), cache, "cuda", offload=True)
    probe.add_controlnet(
        "canny", load_controlnet(resolve("controlnet-canny", "tiny"), cache, "cuda")
    )
    im = _images(1, 64)[0]
    reqs = [
        GenerationRequest(im, "a photo", 0.6, 7),
        GenerationRequest(im, "a photo", 0.6, 7, kind="canny", control=im),
    ]
    settings = GenerationSettings(steps=4)
    first = probe.generate(reqs, settings)
    again = probe.generate(reqs, settings)
    return {
        "n_images": len(first),
        "finite": all(np.isfinite(x.astype(np.float32)).all() for x in first),
        "same_seed_same_image": all(
            np.array_equal(a, b) for a, b in zip(first, again, strict=True)
        ),
        "unet_dtype": str(probe.pipeline("none").unet.dtype),
    }


def _timed(fn: Any, repeat: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat


def check_throughput() -> dict[str, Any]:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from exokiratory.models.tiny_diffusion import sd15_unet_config

    dtype = torch.float16
    vit = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        patch_size=14,
        image_size=224,
        projection_dim=768,
    )
    model = CLIPVisionModelWithProjection(vit).to("cuda", dtype).eval()
    x = torch.randn(256, 3, 224, 224, device="cuda", dtype=dtype)
    with torch.inference_mode():
        s = _timed(lambda: model(pixel_values=x).image_embeds)
    clip_ips = 256 / s
    unet = UNet2DConditionModel(**sd15_unet_config()).to("cuda", dtype).eval()
    lat = torch.randn(2, 4, 64, 64, device="cuda", dtype=dtype)
    txt = torch.randn(2, 77, 768, device="cuda", dtype=dtype)
    t = torch.tensor([500, 500], device="cuda")
    with torch.inference_mode():
        step = _timed(lambda: unet(lat, t, encoder_hidden_states=txt).sample, repeat=10)
    return {
        "clip_vit_l14_fp16_images_per_s_batch256": round(clip_ips, 1),
        "sd15_unet_fp16_s_per_guided_step_512px": round(step, 4),
        "gpu": torch.cuda.get_device_name(0),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to check")
        sys.exit(0)
    print(json.dumps({"device": pick_device(), "dtype": str(pick_dtype("cuda"))}))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        for name, fn in (
            ("embeddings", lambda: check_embeddings(cache)),
            ("oom_halving", check_oom_halving),
            ("diffusion", lambda: check_diffusion(cache)),
            ("throughput", check_throughput),
        ):
            try:
                results[name] = fn()
            except Exception as exc:
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(name, json.dumps(results[name]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

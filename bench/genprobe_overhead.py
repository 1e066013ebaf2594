"""PASS 8 ``genprobe``: end to end vs the bare pipeline call, and the real SD 1.5 cost in FLOPs.

**Overhead.** A mid-size random-weight Stable Diffusion pipeline (the real diffusers classes;
UNet and VAE blocks of ``--widths`` channels, default 32 and 64) and a matching canny ControlNet
are saved to local folders and named in ``passes.genprobe`` by path (the "local folder" path of
a real checkpoint, loaded through the same ``from_pretrained``). Upstream (not timed): synthetic
images, tiny CLIP / DINOv2 embeddings, clusters. On the CPU, one torch thread:

* bare: the diffusers pipeline alone (``StableDiffusionImg2ImgPipeline`` and
  ``StableDiffusionControlNetImg2ImgPipeline`` loaded with ``from_pretrained``), one request per
  call (as the pass on the CPU), on init and control images prepared beforehand, same prompts,
  strengths and seeds; then the bare CLIP and DINOv2 embedders on the generated images;
* the pass: ``run genprobe`` in this process, end to end (plan: clusters, captions, prompt
  registry; read and decode the exemplars, canny, generate, encode WebP, decode and re-embed with
  CLIP and DINOv2, Parquet, jobs log), after a first run of one unit loaded the models (as for the
  bare run).

Ratios: pass / bare pipeline, and pass / (bare pipeline + bare embedding): the pass's own work
is the second; the first includes the re-embedding the measures need.

**Real cost.** ``torch.utils.flop_counter`` (2 FLOPs per multiply-add) on random-weight models
built on the ``meta`` device (no memory, no download) from the published SD 1.5 dimensions
(:mod:`exokiratory.models.tiny_diffusion`): text encoder, VAE encode (512 px), UNet steps with
classifier-free guidance (batch 2, 64 x 64 latent), ControlNet steps, VAE decode; img2img runs
``int(steps x strength)`` of the ``steps`` denoising steps.

    python bench/genprobe_overhead.py [--images 12] [--size 64] [--steps 10] [--only flops]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from exokiratory import Workspace
from exokiratory.core.config import RunConfig, render_config
from exokiratory.core.layout import CONFIG_FILE
from exokiratory.models import tiny_diffusion as td

LADDER = (0.25, 0.5, 0.75, 0.9)


class Clock:
    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


# -- FLOPs of a real SD 1.5 generation -------------------------------------------------------------
def sd15_flops() -> dict[str, float]:
    """TFLOPs of each component call at 512 px (UNet and ControlNet: one CFG step, batch 2)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**td.sd15_unet_config())
        vae = AutoencoderKL(**td.sd15_vae_config())
        cn = ControlNetModel(**td.sd15_controlnet_config())
        te = CLIPTextModel(td.sd15_text_config())

    def count(fn: Any) -> float:
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            fn()
        return fc.get_total_flops() / 1e12

    meta = {"device": "meta"}
    lat, txt = torch.zeros(2, 4, 64, 64, **meta), torch.zeros(2, 77, 768, **meta)
    t = torch.tensor([10, 10], **meta)
    params = {
        n: sum(p.numel() for p in m.parameters()) / 1e6
        for n, m in (("unet", unet), ("vae", vae), ("controlnet", cn), ("text", te))
    }
    return {
        "text": count(lambda: te(torch.zeros(2, 77, dtype=torch.long, **meta))),
        "vae_encode": count(lambda: vae.encode(torch.zeros(1, 3, 512, 512, **meta))),
        "unet_step": count(lambda: unet(lat, t, encoder_hidden_states=txt)),
        "controlnet_step": count(
            lambda: cn(
                lat,
                t,
                encoder_hidden_states=txt,
                controlnet_cond=torch.zeros(2, 3, 512, 512, **meta),
            )
        ),
        "vae_decode": count(lambda: vae.decode(torch.zeros(1, 4, 64, 64, **meta))),
        **{f"params_{k}_M": v for k, v in params.items()},
    }


def generation_tflops(f: dict[str, float], strength: float, steps: int, control: bool) -> float:
    n = min(int(steps * strength), steps)
    step = f["unet_step"] + (f["controlnet_step"] if control else 0.0)
    return f["text"] + f["vae_encode"] + n * step + f["vae_decode"]


def report_flops(steps: int) -> None:
    f = sd15_flops()
    print("SD 1.5 parameters (M):", {k: round(v, 2) for k, v in f.items() if k.startswith("par")})
    print("TFLOPs per call:", {k: round(v, 3) for k, v in f.items() if not k.startswith("par")})
    for control in (False, True):
        per = [generation_tflops(f, s, steps, control) for s in LADDER]
        kind = "ControlNet img2img" if control else "img2img"
        print(
            f"{kind}, {steps} steps, 512 px: "
            + ", ".join(f"strength {s}: {v:.1f}" for s, v in zip(LADDER, per, strict=True))
            + f" TFLOPs; mean over the ladder {np.mean(per):.1f} TFLOPs per generation"
        )


# -- overhead ------------------------------------------------------------------------------------
def collection(src: Path, n: int) -> None:
    from PIL import Image

    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        colour = rng.integers(0, 255, 3).astype(np.float64)
        arr = np.clip(colour + rng.normal(0, 30, (96, 128, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(src / f"im{i:03d}.png")


def workspace(tmp: Path, args: argparse.Namespace, pipe: Path, cn: Path) -> Workspace:
    src = tmp / "src"
    collection(src, args.images)
    ws = Workspace.init(tmp / "ws", [str(src)], run=RunConfig(workers=1))
    ws.config.passes.update(
        {
            "embed-clip": {"model": "tiny"},
            "embed-dino": {"model": "tiny"},
            "clusters-clip": {"cluster_size": 2},
            "genprobe": {
                "model": str(pipe),
                "controlnet_canny": str(cn),
                "conditionings": ["none", "canny"],
                "strengths": [0.5, 1.0],
                "seeds": [0, 1],
                "size": args.size,
                "steps": args.steps,
                "level": 0,
                "device": "cpu",
            },
        }
    )
    ws.storage.write_bytes_atomic(CONFIG_FILE, render_config(ws.config).encode("utf-8"))
    ws = Workspace(ws.storage.url)
    ws.scan(progress=False)
    ws.run(["embed-clip", "embed-dino", "clusters-clip"], progress=False)
    return ws


def bare(
    ws: Workspace, units: list[dict[str, Any]], pipe: Path, cn: Path, args: Any
) -> tuple[Clock, Clock]:
    """(the pipelines alone, the embedders alone) on the same units."""
    from diffusers import (
        ControlNetModel,
        StableDiffusionControlNetImg2ImgPipeline,
        StableDiffusionImg2ImgPipeline,
    )

    from exokiratory.passes.embed.step import EmbeddingModel, ModelParams
    from exokiratory.passes.genprobe import inputs

    base = StableDiffusionImg2ImgPipeline.from_pretrained(
        str(pipe), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    control = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
        str(pipe),
        controlnet=ControlNetModel.from_pretrained(str(cn)),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for p in (base, control):
        p.set_progress_bar_config(disable=True)
    prepared = []
    for u in units:
        init = inputs.init_image(Path(u["path"]).read_bytes(), args.size, 10**9)
        ctl = inputs.canny_control(init, 100, 200) if u["conditioning"] == "canny" else None
        prepared.append((u, init, ctl))
    images = []
    with Clock() as gen:
        for u, init, ctl in prepared:
            kw: dict[str, Any] = {
                "prompt": [u["prompt_text"]],
                "image": [init],
                "strength": float(u["strength"]),
                "num_inference_steps": args.steps,
                "generator": [torch.Generator("cpu").manual_seed(int(u["seed"]))],
                "output_type": "pil",
            }
            pipe_ = base if ctl is None else control
            if ctl is not None:
                kw["control_image"] = [ctl]
            with torch.inference_mode():
                images.append(pipe_(**kw).images[0])
    embedders = [
        EmbeddingModel(s, ModelParams(model="tiny", device="cpu"), "bench").load(ws.storage.url)
        for s in ("clip", "dino")
    ]
    with Clock() as emb:
        for e in embedders:
            e.embed_images(images)
    return gen, emb


def overhead(args: argparse.Namespace) -> None:
    from exokiratory.core.catalog import Catalog  # noqa: F401 - warm the import
    from exokiratory.passes.genprobe.step import GenProbePass

    tmp = Path(tempfile.mkdtemp(prefix="genprobe-bench-"))
    try:
        widths = (args.widths[0], args.widths[1])
        pipe = td.build_tiny_diffusion(tmp / "mid-pipeline", widths=widths)
        cn = td.build_tiny_controlnet(tmp / "mid-controlnet", widths=widths)
        ws = workspace(tmp, args, pipe, cn)
        ws.run(["genprobe"], progress=False, limit=1)  # loads the models (warm, like bare)
        (p,) = ws.passes(["genprobe"])
        assert isinstance(p, GenProbePass)
        with ws.catalog() as cat:
            done = {
                r["gen_id"] for r in cat.query("SELECT gen_id FROM genprobe_outputs").to_pylist()
            }
            units = [u for u in p.units(cat).to_pylist() if u["gen_id"] not in done]
        gen0, emb0 = bare(ws, units, pipe, cn, args)
        with Clock() as run:
            (rep,) = ws.run(["genprobe"], progress=False)
        gen1, emb1 = bare(ws, units, pipe, cn, args)
        g_wall, g_cpu = (gen0.wall + gen1.wall) / 2, (gen0.cpu + gen1.cpu) / 2
        e_wall, e_cpu = (emb0.wall + emb1.wall) / 2, (emb0.cpu + emb1.cpu) / 2
        n = len(units)
        print(
            f"{n} generations ({rep.processed} by the pass), {args.size} px, {args.steps} steps, "
            f"widths {widths}: bare pipeline {g_wall / n * 1000:.0f} ms wall / "
            f"{g_cpu / n * 1000:.0f} ms CPU per generation (runs {gen0.wall:.1f}s, {gen1.wall:.1f}s); "
            f"bare embedding (CLIP + DINOv2) {e_wall / n * 1000:.0f} ms wall per generation"
        )
        print(
            f"pass end to end: {run.wall:.2f}s wall, {run.cpu:.2f}s CPU = "
            f"{run.wall / g_wall:.3f}x wall, {run.cpu / g_cpu:.3f}x CPU of the bare pipeline; "
            f"{run.wall / (g_wall + e_wall):.3f}x wall, {run.cpu / (g_cpu + e_cpu):.3f}x CPU of "
            "bare pipeline + bare embedding"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sd-steps", type=int, default=30, help="steps of the priced SD 1.5 run")
    ap.add_argument("--widths", type=int, nargs=2, default=(32, 64))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=("flops", "overhead"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.only != "overhead":
        report_flops(args.sd_steps)
    if args.only != "flops":
        overhead(args)


if __name__ == "__main__":
    main()

"""PASS 5 throughput: the ``caption-factual`` pass end to end against bare ``generate`` on
preloaded inputs for the same units (target <= 1.15x), tokens per second, and the cost of the
real default models per 1,000 units computed from their configurations (no download).

Model for the timing: a random-weight BLIP-2 bigger than the test's ``tiny`` one (ViT 6 x 256
at 224 px, Q-Former 2 x 256, OPT decoder 6 x 512), built locally and loaded from its folder
through ``from_pretrained`` like any checkpoint, so generation costs about what it would on a
GPU relative to decoding; the images are real photos (skimage / sklearn wheels) at 800 px,
plus one masked segment crop per image.

    python bench/caption_throughput.py [--images 48] [--tokens 20] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from _collection import real_photo_paths
from PIL import Image

from exokiratory import Workspace
from exokiratory.core.config import RunConfig, render_config
from exokiratory.core.dataset import PartDataset
from exokiratory.passes.captions.inputs import CropSpec, by_image, encoded_group, fill_colour
from exokiratory.passes.segment.rle import encode_rle


def build_model(out: Path) -> Path:
    """A random-weight BLIP-2 of bench size, saved like a checkpoint."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor
    from transformers import BlipImageProcessorPil as ImageProcessor

    from exokiratory.models.tiny_captioners import CLIP_MEAN, CLIP_STD, IMAGE_TOKEN, byte_tokenizer

    specials = {
        "bos_token": "</s>",
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
    }
    tok = byte_tokenizer(out, "GPT2Tokenizer", specials, named=False)
    ids = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    config = Blip2Config(
        vision_config={"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 6,
                       "num_attention_heads": 4, "image_size": 224, "patch_size": 16},
        qformer_config={"vocab_size": 99, "hidden_size": 256, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "intermediate_size": 1024,
                        "encoder_hidden_size": 256},
        text_config={"model_type": "opt", "vocab_size": len(tok), "hidden_size": 512,
                     "num_hidden_layers": 6, "num_attention_heads": 8, "ffn_dim": 2048,
                     "max_position_embeddings": 512, "word_embed_proj_dim": 512, **ids},
        num_query_tokens=32,
        image_token_index=int(tok.convert_tokens_to_ids(IMAGE_TOKEN)),
    )  # fmt: skip
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config)
    model.generation_config.suppress_tokens = [ids["eos_token_id"]]  # always max_new_tokens
    model.eval().save_pretrained(out)
    images = ImageProcessor(
        size={"height": 224, "width": 224}, image_mean=CLIP_MEAN, image_std=CLIP_STD
    )
    Blip2Processor(image_processor=images, tokenizer=tok, num_query_tokens=32).save_pretrained(out)
    return out


def build_workspace(root: Path, n_images: int, model: Path, tokens: int, batch: int) -> Workspace:
    src = root / "src"
    src.mkdir(parents=True)
    photos = [Image.open(p).convert("RGB") for p in real_photo_paths()]
    for i in range(n_images):
        im = photos[i % len(photos)].copy()
        im.thumbnail((800, 800))
        im.rotate((i // len(photos)) * 5).save(src / f"img_{i:04d}.jpg", quality=90)
    ws = Workspace.init(root / "ws", [str(src)], run=RunConfig(batch_size=4 * batch, workers=1))
    ws.scan()
    _install_center_segments(ws)
    ws.config.passes["caption-select"] = {"user_where": "true", "max_units": 10 * n_images}
    ws.config.passes["caption-factual"] = {
        "model": str(model), "device": "cpu", "max_new_tokens": tokens,
        "segment_max_new_tokens": tokens, "generate_batch_size": batch,
    }  # fmt: skip
    ws.storage.write_bytes_atomic("exokiratory.yaml", render_config(ws.config).encode())
    ws = Workspace(ws.storage.url)
    ws.run(["caption-select"], progress=False)
    return ws


def _install_center_segments(ws: Workspace) -> None:
    """One segment per image: a centred ellipse, written as PASS 3 output."""
    (seg,) = ws.passes(["segment"])
    rows: list[dict[str, Any]] = []
    for img in ws.sql("SELECT image_id, image_idx, width, height FROM images").to_pylist():
        h, w = img["height"], img["width"]
        yy, xx = np.mgrid[:h, :w]
        mask = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 <= 1
        ys, xs = np.nonzero(mask)
        base = {"image_id": img["image_id"], "image_idx": img["image_idx"], "mask_height": h,
                "mask_width": w, "model_id": "bench"}  # fmt: skip
        rows.append({**base, "segment_id": f"{img['image_id']}-0000", "mask_index": 0,
                     "rle_counts": encode_rle(mask),
                     "bbox": [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1],
                     "area_fraction": float(mask.mean()), "touches_border": False})  # fmt: skip
        rows.append({**base, "mask_index": -1, "n_segments": 1, "n_candidates": 1})
    table = pa.Table.from_pylist(rows, schema=seg.output_schema())  # type: ignore[union-attr]
    PartDataset(ws.storage, seg.output_rel, seg.key).write_part("part-bench", table)  # type: ignore[union-attr]


def bare_generate(ws: Workspace, batch: int, tokens: int) -> tuple[float, int, int]:
    """Seconds of ``generate`` alone over preloaded inputs of the same units, in the pass's
    batches (per unit kind); returns (seconds, units, generated tokens)."""
    (p,) = ws.passes(["caption-factual"])
    cap = p.load(ws.storage.url)  # type: ignore[attr-defined]
    prompts = p.prompts(ws.storage)  # type: ignore[attr-defined]
    texts = {k: cap.prompt_text(pr.text, pr.task) for k, pr in prompts.items()}
    with ws.catalog() as cat:
        rows = p.units(cat).to_pylist()  # type: ignore[attr-defined]
    spec = CropSpec(1024, 0.1, fill_colour("model_mean", cap.image_mean), 178_956_970)
    ctx = ws.batch_context()
    by_kind: dict[str, list[Any]] = {"image": [], "segment": []}
    for group in by_image(rows):
        for i, enc in encoded_group(group, ctx, spec, cap.encode, texts):
            by_kind[rows[i]["unit_kind"]].append(enc)
    t0 = time.perf_counter()
    n_tokens = 0
    for encs in by_kind.values():
        for start in range(0, len(encs), batch):
            n_tokens += sum(g.n_tokens for g in cap.generate(encs[start : start + batch], tokens))
    return time.perf_counter() - t0, len(rows), n_tokens


def end_to_end(ws: Workspace) -> tuple[float, int, int]:
    (p,) = ws.passes(["caption-factual"])
    p.load(ws.storage.url)  # type: ignore[attr-defined]  # the model is loaded in both timings
    t0 = time.perf_counter()
    (rep,) = ws.run(["caption-factual"], progress=False)
    seconds = time.perf_counter() - t0
    n_tokens = int(ws.sql("SELECT sum(n_tokens) AS n FROM captions_factual").to_pylist()[0]["n"])
    return seconds, rep.processed, n_tokens  # type: ignore[union-attr]


# -- real default models: parameters and FLOPs from their configurations -----------------------
REAL_CONFIGS: dict[str, dict[str, Any]] = {
    "Salesforce/blip2-opt-2.7b": {
        "cls": "Blip2ForConditionalGeneration", "config": "Blip2Config",
        "kw": {"vision_config": {"hidden_size": 1408, "intermediate_size": 6144,
                                 "num_hidden_layers": 39, "num_attention_heads": 16,
                                 "image_size": 224, "patch_size": 14},
               "qformer_config": {"hidden_size": 768, "num_hidden_layers": 12,
                                  "num_attention_heads": 12, "intermediate_size": 3072,
                                  "encoder_hidden_size": 1408, "cross_attention_frequency": 2},
               "text_config": {"model_type": "opt", "hidden_size": 2560, "ffn_dim": 10240,
                               "num_hidden_layers": 32, "num_attention_heads": 32,
                               "vocab_size": 50304, "word_embed_proj_dim": 2560},
               "num_query_tokens": 32},
        "vision_tokens": 257, "lm_prefix": 32 + 12,
    },
    "llava-hf/llava-1.5-7b-hf": {
        "cls": "LlavaForConditionalGeneration", "config": "LlavaConfig",
        "kw": {"vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024,
                                 "intermediate_size": 4096, "num_hidden_layers": 24,
                                 "num_attention_heads": 16, "image_size": 336,
                                 "patch_size": 14, "projection_dim": 768},
               "text_config": {"model_type": "llama", "hidden_size": 4096,
                               "intermediate_size": 11008, "num_hidden_layers": 32,
                               "num_attention_heads": 32, "vocab_size": 32064}},
        "vision_tokens": 577, "lm_prefix": 576 + 40,
    },
    "florence-community/Florence-2-base": {
        "cls": "Florence2ForConditionalGeneration", "config": "Florence2Config",
        "kw": {"vision_config": {"projection_dim": 768},
               "text_config": {"model_type": "bart", "d_model": 768, "encoder_layers": 6,
                               "decoder_layers": 6, "encoder_attention_heads": 12,
                               "decoder_attention_heads": 12, "encoder_ffn_dim": 3072,
                               "decoder_ffn_dim": 3072, "vocab_size": 51289}},
        "vision_tokens": 577, "lm_prefix": 577 + 10,
    },
}  # fmt: skip
"""Each model's configuration (as its config.json), vision tokens per image and language-model
input tokens (image tokens + prompt)."""

T4_FP16_FLOPS = 65e12  # tensor-core peak
T4_BYTES_PER_S = 320e9  # HBM bandwidth
MFU = 0.35  # a typical achieved fraction of peak for prefill / vision encoders


def param_counts(name: str) -> tuple[int, int]:
    """(vision + connector parameters, language-model parameters), counted on the meta
    device (no weights allocated)."""
    import transformers

    spec = REAL_CONFIGS[name]
    config = getattr(transformers, spec["config"])(**spec["kw"])
    with torch.device("meta"):
        model = getattr(transformers, spec["cls"])(config)
    vision_parts = ("vision", "qformer", "query_tokens", "projector", "language_projection")
    vision_parts += ("image_proj", "image_pos", "visual_temporal")
    n_vis = n_lm = 0
    for pname, param in model.named_parameters():
        if any(v in pname for v in vision_parts):
            n_vis += param.numel()
        else:
            n_lm += param.numel()
    return n_vis, n_lm


def price(name: str, new_tokens: int, batch: int) -> dict[str, Any]:
    """FLOPs per unit (2 x parameters x tokens) and T4 seconds per 1,000 units: vision and
    prefill compute-bound at ``MFU``; decoding the larger of compute at ``MFU`` and reading
    the fp16 weights once per step for a batch of ``batch``."""
    spec = REAL_CONFIGS[name]
    n_vis, n_lm = param_counts(name)
    vision = 2 * n_vis * spec["vision_tokens"]
    prefill = 2 * n_lm * spec["lm_prefix"]
    decode = 2 * n_lm * new_tokens
    compute_s = (vision + prefill + decode) / (T4_FP16_FLOPS * MFU)
    memory_s = new_tokens * (2 * n_lm) / T4_BYTES_PER_S / batch
    per_unit_s = (vision + prefill) / (T4_FP16_FLOPS * MFU) + max(
        decode / (T4_FP16_FLOPS * MFU), memory_s
    )
    return {
        "model": name,
        "params_vision_M": round(n_vis / 1e6),
        "params_lm_M": round(n_lm / 1e6),
        "tflop_per_1000_units": round((vision + prefill + decode) * 1000 / 1e12),
        "t4_minutes_per_1000_units": round(per_unit_s * 1000 / 60, 1),
        "t4_compute_only_minutes": round(compute_s * 1000 / 60, 1),
        "units_per_t4_hour": int(3600 / per_unit_s),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-pricing", action="store_true")
    args = ap.parse_args()
    # no GPU here: the model gets one core (as a GPU would take the work off the CPU), the
    # decode threads the other (bench/embed_overlap.py does the same)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_model(root / "model")
        for r in range(args.repeats):
            ws = build_workspace(root / f"run{r}", args.images, model, args.tokens, args.batch)
            bare_s, n_bare, bare_tokens = bare_generate(ws, args.batch, args.tokens)
            e2e_s, n, e2e_tokens = end_to_end(ws)
            t0 = time.perf_counter()
            ws.run(["caption-factual"], progress=False)  # nothing left: catalog + planning
            idle_s = time.perf_counter() - t0
            result = {
                "units": n,
                "end_to_end_s": round(e2e_s, 2),
                "bare_generate_s": round(bare_s, 2),
                "ratio": round(e2e_s / bare_s, 3),
                "nothing_to_do_s": round(idle_s, 2),
                "tokens_per_s_end_to_end": round(e2e_tokens / e2e_s, 1),
                "tokens_per_s_bare": round(bare_tokens / bare_s, 1),
                "units_per_s_end_to_end": round(n / e2e_s, 2),
                "same_units": n == n_bare,
            }
            print(json.dumps(result), flush=True)
    if not args.skip_pricing:
        for name in REAL_CONFIGS:
            print(json.dumps(price(name, new_tokens=30, batch=16)))


if __name__ == "__main__":
    main()

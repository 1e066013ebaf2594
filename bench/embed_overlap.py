"""Do decoding and inference overlap in ``run embed``? (issue 4, "Overlap").

Measured in one run, on the same files and the same model:

(a) decode + preprocess alone (the pass's own ``model_input``, one thread);
(b) the bare model forward on preloaded tensors;
(c) ``exokiratory run embed-dino`` end to end (planning, reading, decoding, forward, writing
    the Parquet parts, the jobs log), on a fresh workspace.

The model is a random-weight DINOv2 ViT (the real architecture, loaded from a local folder through
the same path as a real checkpoint) whose depth is calibrated so that (b) costs about as much as
(a): the case where overlap matters most. This machine has no GPU, so the GPU is emulated by
giving the model one core (``torch.set_num_threads(1)``) and decoding one thread on the other
core; on a GPU machine the model runs on the device and the CPU decodes. Without overlap (c)
would be about a + b; the target is c <= 1.15 x max(a, b).

    python bench/embed_overlap.py [--files 480] [--forward-batch 16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("EXOKIRATORY_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import torch
from _collection import build_collection


def build_model(dest: Path, layers: int) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    from exokiratory.models.tiny import _save_dinov2_processor

    dest.mkdir(parents=True, exist_ok=True)
    config = Dinov2Config(
        hidden_size=192,
        num_hidden_layers=layers,
        num_attention_heads=3,
        mlp_ratio=4,
        image_size=224,
        patch_size=14,
    )
    torch.manual_seed(0)
    Dinov2Model(config).eval().save_pretrained(dest)
    _save_dinov2_processor(dest)
    return dest


def load(folder: Path):  # type: ignore[no-untyped-def]
    from exokiratory.models.registry import resolve
    from exokiratory.models.vision import load_embedder

    return load_embedder(resolve("dino", str(folder)), folder.parent / "cache", "cpu")


def time_decode(files: list[Path], embedder) -> tuple[float, list[np.ndarray]]:  # type: ignore[no-untyped-def]
    from exokiratory.passes.embed.step import InputSpec, model_input

    spec = InputSpec(embedder.preprocessing, embedder.image_size, 10**9)
    t0 = time.perf_counter()
    out = [model_input(f.read_bytes(), spec) for f in files]
    return time.perf_counter() - t0, out


def time_forward(embedder, pixels: list[np.ndarray], batch: int) -> float:  # type: ignore[no-untyped-def]
    embedder.batch_size = batch
    arr = np.stack(pixels)
    embedder.embed_pixels(arr[:batch])  # warm-up
    t0 = time.perf_counter()
    for s in range(0, len(arr), batch):
        embedder.embed_pixels(arr[s : s + batch])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=480)
    ap.add_argument("--forward-batch", type=int, default=16)
    ap.add_argument("--run-batch", type=int, default=None, help="units per part (config default)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from exokiratory import Workspace
    from exokiratory.core.config import render_config

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "src"
        build_collection(src, args.files, seed=3, max_side=1600)
        files = sorted(p for p in src.rglob("*") if p.is_file())
        # calibrate depth: forward per image ~ decode per image
        probe = load(build_model(root / "m1", 1))
        a, pixels = time_decode(files[:32], probe)
        f1 = time_forward(probe, pixels, args.forward_batch)
        layers = max(1, round(a / f1))
        model_dir = build_model(root / "model", layers)
        embedder = load(model_dir)

        a, pixels = time_decode(files, embedder)
        b = time_forward(embedder, pixels, args.forward_batch)

        ws = Workspace.init(root / "ws", [str(src)])
        ws.config.passes["embed-dino"] = {
            "model": str(model_dir),
            "device": "cpu",
            "routed_only": False,
            "decode_threads": 1,
            "forward_batch_size": args.forward_batch,
        }
        ws.storage.write_bytes_atomic("exokiratory.yaml", render_config(ws.config).encode())
        ws = Workspace(root / "ws")
        ws.scan(progress=False)
        t0 = time.perf_counter()
        (rep,) = ws.run(["embed-dino"], workers=1, batch_size=args.run_batch, progress=False)
        c = time.perf_counter() - t0
        t0 = time.perf_counter()
        ws.run(["embed-dino"], workers=1, batch_size=args.run_batch, progress=False)
        fixed = time.perf_counter() - t0  # the same command with nothing left to do
        assert rep.processed == len(files) and rep.unit_errors == 0, rep.summary()  # type: ignore[union-attr]

    result = {
        "files": len(files),
        "model": f"random-weight DINOv2 ViT, hidden 192, {layers} layers, 224 px",
        "a_decode_preprocess_s": round(a, 2),
        "b_forward_s": round(b, 2),
        "c_run_embed_s": round(c, 2),
        "c_over_max_ab": round(c / max(a, b), 3),
        "c_over_a_plus_b": round(c / (a + b), 3),
        "rerun_with_nothing_to_do_s": round(fixed, 2),
    }
    print(json.dumps(result, indent=1))
    print(
        f"(a) decode+preprocess {a:.2f}s, (b) forward {b:.2f}s, (c) run embed {c:.2f}s: "
        f"c / max(a, b) = {c / max(a, b):.2f} (target <= 1.15), c / (a + b) = {c / (a + b):.2f}; "
        f"the same command with nothing left to do: {fixed:.2f}s"
    )


if __name__ == "__main__":
    main()

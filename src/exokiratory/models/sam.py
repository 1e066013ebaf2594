"""Segment Anything models (SAM ViT-H/L/B, SAM 2 Hiera) behind one small promptable interface.

:func:`load_segmenter` loads a checkpoint with transformers (``SamModel`` for ``model_type:
sam``, ``Sam2Model`` for ``model_type: sam2``); a :class:`Segmenter` then

* turns an RGB image into the model's input (:meth:`Segmenter.pixels`, numpy/PIL, thread-safe),
* computes the image embedding once (:meth:`Segmenter.embed`), and
* decodes batches of single-point prompts against it (:meth:`Segmenter.predict_points`),
  returning low-resolution mask logits and predicted IoUs for the three multimask outputs.

Geometry of the model input (:class:`SamInputGeometry`): SAM resizes the longest side to 1024
and pads bottom/right to 1024 x 1024; SAM 2 resizes to 1024 x 1024 (aspect ratio not kept). Both
are read from the checkpoint's ``preprocessor_config.json`` (``size.longest_edge`` or
``size.height/width``), so the tiny test model (128 px input) runs the same code.

The ``tiny`` profile builds a random-weight SAM of the real architecture with tiny dimensions
(:func:`build_tiny_sam`) into the cache and loads it through the same ``from_pretrained`` path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from PIL import Image

from exokiratory.models.cache import ModelCache, load_through_cache, pretrained_class
from exokiratory.models.device import pick_dtype, run_with_oom_backoff
from exokiratory.models.registry import ModelSpec
from exokiratory.models.vision import _processor_config

_RESAMPLE = {0: Image.Resampling.NEAREST, 2: Image.Resampling.BILINEAR, 3: Image.Resampling.BICUBIC}
IMAGENET_MEAN: Final[tuple[float, float, float]] = (0.485, 0.456, 0.406)
IMAGENET_STD: Final[tuple[float, float, float]] = (0.229, 0.224, 0.225)

_CACHE: ModelCache[Segmenter] = ModelCache()


@dataclass(frozen=True)
class SamInputGeometry:
    """How an image becomes the square model input, read from the processor config.

    Attributes:
        input_size: side of the square model input (1024 for real checkpoints).
        keep_aspect: True (SAM): longest side resized to ``input_size``, then padded
            bottom/right with zeros; False (SAM 2): resized to ``input_size`` square.
        resample: PIL resampling filter.
        rescale: factor turning 0..255 pixel values into 0..1.
        mean, std: per-channel normalisation.
    """

    input_size: int
    keep_aspect: bool
    resample: Image.Resampling
    rescale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SamInputGeometry:
        size = config.get("size", {"longest_edge": 1024})
        if isinstance(size, int):
            size = {"longest_edge": size}
        keep_aspect = "longest_edge" in size
        side = int(size["longest_edge"] if keep_aspect else size["height"])
        return cls(
            input_size=side,
            keep_aspect=keep_aspect,
            resample=_RESAMPLE.get(int(config.get("resample", 2)), Image.Resampling.BILINEAR),
            rescale=float(config.get("rescale_factor", 1 / 255)),
            mean=_triple(config.get("image_mean", IMAGENET_MEAN)),
            std=_triple(config.get("image_std", IMAGENET_STD)),
        )

    def resized_hw(self, height: int, width: int) -> tuple[int, int]:
        """Size of the image inside the model input (SAM's ``get_preprocess_shape``)."""
        if not self.keep_aspect:
            return self.input_size, self.input_size
        scale = self.input_size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def pixels(self, rgb: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB -> float32 ``(3, S, S)`` normalised, padded model input."""
        height, width = rgb.shape[:2]
        rh, rw = self.resized_hw(height, width)
        img = Image.fromarray(rgb)
        if (rw, rh) != (width, height):
            img = img.resize((rw, rh), resample=self.resample)
        arr = np.asarray(img, dtype=np.float32) * np.float32(self.rescale)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        out = np.zeros((3, self.input_size, self.input_size), np.float32)
        out[:, :rh, :rw] = ((arr - mean) / std).transpose(2, 0, 1)
        return out


def _triple(values: Any) -> tuple[float, float, float]:
    vals = [float(v) for v in values]
    if len(vals) == 1:
        vals = vals * 3
    return vals[0], vals[1], vals[2]


class Segmenter:
    """One loaded SAM / SAM 2 checkpoint.

    Attributes:
        spec: the model it runs; device, dtype: where and how.
        geometry: the model input geometry.
        point_batch_size: initial prompts per decoder forward (halved on out-of-memory errors).
    """

    def __init__(
        self,
        spec: ModelSpec,
        model: Any,
        geometry: SamInputGeometry,
        device: str,
        dtype: torch.dtype,
    ) -> None:
        self.spec = spec
        self.model = model
        self.geometry = geometry
        self.device = device
        self.dtype = dtype
        self.point_batch_size = 64

    def pixels(self, rgb: np.ndarray) -> np.ndarray:
        """Model input for an ``(H, W, 3)`` uint8 image (CPU, thread-safe)."""
        return self.geometry.pixels(rgb)

    def embed(self, pixels: np.ndarray) -> Any:
        """Image embedding of one ``(3, S, S)`` input (a tensor for SAM, a list for SAM 2)."""
        x = torch.from_numpy(np.ascontiguousarray(pixels[None], dtype=np.float32))
        x = x.to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            return self.model.get_image_embeddings(x)

    def predict_points(
        self, embedding: Any, points_xy: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode one foreground point per prompt against ``embedding``.

        Args:
            embedding: from :meth:`embed`.
            points_xy: ``(N, 2)`` float ``(x, y)`` in model-input pixels.

        Returns:
            ``(N, 3, m, m)`` float32 low-resolution mask logits (covering the whole square
            model input) and ``(N, 3)`` float32 predicted IoUs, on the model's device.
        """
        if len(points_xy) == 0:
            prompt = self.model.config.prompt_encoder_config
            m = 4 * (int(prompt.image_size) // int(prompt.patch_size))  # low-res mask side
            empty = torch.zeros((0, 3, m, m), device=self.device)
            return empty, torch.zeros((0, 3), device=self.device)
        parts = run_with_oom_backoff(
            lambda chunk: self._decode_chunk(embedding, chunk), points_xy, self.point_batch_size
        )
        logits = torch.stack([p[0] for p in parts])
        ious = torch.stack([p[1] for p in parts])
        return logits, ious

    def _decode_chunk(self, embedding: Any, chunk: np.ndarray) -> list[tuple[Any, Any]]:
        pts = torch.as_tensor(np.asarray(chunk, np.float32)[None, :, None, :], device=self.device)
        labels = torch.ones(pts.shape[:3], dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            out = self.model(
                image_embeddings=embedding,
                input_points=pts.to(self.dtype),
                input_labels=labels,
                multimask_output=True,
            )
        logits = out.pred_masks[0].float()  # stays on the model's device for post-processing
        ious = out.iou_scores[0].float()
        return list(zip(logits, ious, strict=True))


def load_segmenter(
    spec: ModelSpec, cache_dir: str | Path, device: str = "auto", *, use_cache: bool = True
) -> Segmenter:
    """Load (or reuse) the segmenter for ``spec`` on ``device`` (see module docstring)."""
    return load_through_cache(
        _CACHE,
        spec,
        cache_dir,
        device,
        lambda source, folder, dev: _load(spec, source, folder, dev),
        build_tiny=build_tiny_sam,
        use_cache=use_cache,
        roles=("sam",),
    )


def clear_cache() -> None:
    """Forget every cached segmenter."""
    _CACHE.clear()


def _load(spec: ModelSpec, source: str, cache_dir: Path, device: str) -> Segmenter:
    from transformers import Sam2Model, SamModel

    dtype = pick_dtype(device)
    classes: dict[str, Any] = {"sam": SamModel, "sam2": Sam2Model}
    cls, common = pretrained_class(spec, source, cache_dir, classes, "SAM or SAM 2")
    model = cls.from_pretrained(source, **common).eval().to(device=device, dtype=dtype)
    geometry = SamInputGeometry.from_config(_processor_config(source, common))
    return Segmenter(spec, model, geometry, device, dtype)


# -- tiny random-weight SAM ------------------------------------------------------------------

TINY_INPUT: Final[int] = 128
TINY_PATCH: Final[int] = 8
TINY_HIDDEN: Final[int] = 32
TINY_SEED: Final[int] = 0


def tiny_sam_config() -> Any:
    """A ``SamConfig`` of the real architecture with tiny widths, depths and a 128 px input."""
    from transformers import SamConfig
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    vision = SamVisionConfig(
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_dim=2 * TINY_HIDDEN,
        output_channels=TINY_HIDDEN,
        image_size=TINY_INPUT,
        patch_size=TINY_PATCH,
        window_size=4,
        global_attn_indexes=[1],
        num_pos_feats=TINY_HIDDEN // 2,
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=TINY_HIDDEN, image_size=TINY_INPUT, patch_size=TINY_PATCH, mask_input_channels=4
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_dim=2 * TINY_HIDDEN,
        iou_head_hidden_dim=TINY_HIDDEN,
    )
    return SamConfig(
        vision_config=vision.to_dict(),
        prompt_encoder_config=prompt.to_dict(),
        mask_decoder_config=decoder.to_dict(),
    )


def build_tiny_sam(path: str | Path) -> Path:
    """Save a seeded random-weight tiny ``SamModel`` and its processor config to ``path``."""
    from transformers import SamModel

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(TINY_SEED)
    SamModel(tiny_sam_config()).eval().save_pretrained(out)
    processor = {
        "image_processor_type": "SamImageProcessor",
        "do_resize": True,
        "size": {"longest_edge": TINY_INPUT},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "do_pad": True,
        "pad_size": {"height": TINY_INPUT, "width": TINY_INPUT},
        "do_convert_rgb": True,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    (out / "README.md").write_text(
        "# Tiny random-weight SAM (exokiratory)\n\nReal SamModel architecture, tiny dimensions, "
        f"random weights (torch.manual_seed({TINY_SEED})). Its masks are plumbing, never "
        "meaning.\n"
    )
    return out

"""Open-vocabulary detection (OWLv2) behind one small batch interface.

:func:`load_detector` loads an ``owlv2`` checkpoint with transformers
(``Owlv2ForObjectDetection`` and the CLIP tokenizer saved with it) through the same cache,
device and dtype rules as the embedders; a :class:`Detector` then

* turns an RGB image into the model input (:meth:`Detector.pixels`, numpy/PIL, thread-safe) as
  ``Owlv2ImageProcessor`` does: rescaled to 0..1, padded bottom/right to a square with grey
  (0.5), resized to the checkpoint's square size (960 px for the base and large checkpoints),
  bilinear, CLIP mean/std;
* tokenises text queries once (:meth:`Detector.tokens`, padded to 16 tokens as OWL does);
* runs a batch of inputs against the queries (:meth:`Detector.detect`; ``batch_size`` per
  forward on a GPU, halved on CUDA out-of-memory errors; one per forward on the CPU, whose
  batched kernels round differently, so that rows never depend on the batch), and returns for each image the boxes of every patch
  (``(P, 4)`` as ``x0, y0, x1, y1`` fractions of the padded square) and their per-query logits
  ``(P, Q)`` (sigmoid -> score).

The ``tiny`` profile builds a random-weight OWLv2 of the real architecture with tiny dimensions
(:func:`build_tiny_owlv2`, CLIP tokenizer of :mod:`exokiratory.models.tiny`) and loads it the
same way: its boxes are plumbing, never meaning.
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

CLIP_MEAN: Final[tuple[float, float, float]] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: Final[tuple[float, float, float]] = (0.26862954, 0.26130258, 0.27577711)
QUERY_TOKENS: Final[int] = 16

_CACHE: ModelCache[Detector] = ModelCache()


@dataclass(frozen=True)
class DetectInput:
    """The square model input, read from ``preprocessor_config.json``."""

    size: int
    rescale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DetectInput:
        size = config.get("size", {"height": 960, "width": 960})
        side = int(size if isinstance(size, int) else size["height"])
        mean = [float(v) for v in config.get("image_mean", CLIP_MEAN)]
        std = [float(v) for v in config.get("image_std", CLIP_STD)]
        return cls(
            side,
            float(config.get("rescale_factor", 1 / 255)),
            (mean[0], mean[1], mean[2]),
            (std[0], std[1], std[2]),
        )

    def pixels(self, rgb: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> float32 ``(3, S, S)``: padded square, resized, normalised."""
        h, w = rgb.shape[:2]
        side = max(h, w)
        square = np.full((side, side, 3), 0.5, np.float32)
        square[:h, :w] = rgb.astype(np.float32) * np.float32(self.rescale)
        chans = [
            Image.fromarray(square[:, :, c], mode="F").resize(
                (self.size, self.size), Image.Resampling.BILINEAR
            )
            for c in range(3)
        ]
        arr = np.stack([np.asarray(c, np.float32) for c in chans], axis=-1)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return np.ascontiguousarray(((arr - mean) / std).transpose(2, 0, 1), dtype=np.float32)


class Detector:
    """One loaded OWLv2 checkpoint (see the module docstring).

    Attributes:
        batch_size: images per forward (halved on CUDA out-of-memory errors).
    """

    def __init__(
        self,
        spec: ModelSpec,
        model: Any,
        tokenizer: Any,
        geometry: DetectInput,
        device: str,
        dtype: torch.dtype,
    ) -> None:
        self.spec = spec
        self.model = model
        self.tokenizer = tokenizer
        self.geometry = geometry
        self.device = device
        self.dtype = dtype
        self.batch_size = 4

    def pixels(self, rgb: np.ndarray) -> np.ndarray:
        return self.geometry.pixels(rgb)

    def tokens(self, queries: list[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask of the queries (max length 16, as OWL)."""
        out = self.tokenizer(
            queries,
            padding="max_length",
            truncation=True,
            max_length=QUERY_TOKENS,
            return_tensors="pt",
        )
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    def detect(
        self, inputs: np.ndarray, tokens: dict[str, torch.Tensor]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each ``(3, S, S)`` input: boxes ``(P, 4)`` (x0, y0, x1, y1 fractions of the padded
        square) and logits ``(P, Q)`` against the ``Q`` queries of ``tokens``."""
        if len(inputs) == 0:
            return []
        size = self.batch_size if self.device != "cpu" else 1  # see DepthEstimator.forward_size
        return run_with_oom_backoff(lambda c: self._chunk(c, tokens), inputs, size)

    def _chunk(
        self, chunk: np.ndarray, tokens: dict[str, torch.Tensor]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        n = len(chunk)
        x = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
        x = x.to(device=self.device, dtype=self.dtype)
        ids = tokens["input_ids"].repeat(n, 1).to(self.device)
        mask = tokens["attention_mask"].repeat(n, 1).to(self.device)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, pixel_values=x)
        boxes = out.pred_boxes.float().cpu().numpy()  # (n, P, 4) cx, cy, w, h
        logits = out.logits.float().cpu().numpy()  # (n, P, Q)
        xyxy = np.concatenate(
            [boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], axis=-1
        )
        return [(np.clip(xyxy[i], 0.0, 1.0), logits[i]) for i in range(n)]


def load_detector(
    spec: ModelSpec, cache_dir: str | Path, device: str = "auto", *, use_cache: bool = True
) -> Detector:
    """Load (or reuse) the detector for ``spec`` on ``device``."""
    return load_through_cache(
        _CACHE,
        spec,
        cache_dir,
        device,
        lambda source, folder, dev: _load(spec, source, folder, dev),
        build_tiny=build_tiny_owlv2,
        use_cache=use_cache,
        roles=("detect",),
    )


def clear_cache() -> None:
    """Forget every cached detector."""
    _CACHE.clear()


def _load(spec: ModelSpec, source: str, cache_dir: Path, device: str) -> Detector:
    from transformers import CLIPTokenizer, Owlv2ForObjectDetection

    dtype = pick_dtype(device)
    cls, common = pretrained_class(
        spec, source, cache_dir, {"owlv2": Owlv2ForObjectDetection}, "OWLv2"
    )
    model = cls.from_pretrained(source, **common)
    model = model.eval().to(device=device, dtype=dtype)
    tokenizer = CLIPTokenizer.from_pretrained(source, **common)
    geometry = DetectInput.from_config(_processor_config(source, common))
    return Detector(spec, model, tokenizer, geometry, device, dtype)


# -- configurations: tiny (tests) and real size (FLOP counts without weights) -------------------

TINY_SIZE: Final[int] = 64
TINY_SEED: Final[int] = 0


def owlv2_config(
    vision: tuple[int, int, int, int],
    text: tuple[int, int, int],
    image: int,
    vocab: int,
    special: tuple[int, int, int] = (49406, 49407, 49407),
) -> Any:
    """An ``Owlv2Config``: vision (hidden, layers, heads, patch), text (hidden, layers, heads);
    the projection is the text width, as in the real checkpoints; ``special``: the bos, eos
    and pad token ids."""
    from transformers import Owlv2Config

    vh, vl, vheads, patch = vision
    th, tl, theads = text
    return Owlv2Config(
        text_config={
            "vocab_size": vocab,
            "hidden_size": th,
            "intermediate_size": 4 * th,
            "num_hidden_layers": tl,
            "num_attention_heads": theads,
            "max_position_embeddings": QUERY_TOKENS,
            "bos_token_id": special[0],
            "eos_token_id": special[1],
            "pad_token_id": special[2],
        },
        vision_config={
            "hidden_size": vh,
            "intermediate_size": 4 * vh,
            "num_hidden_layers": vl,
            "num_attention_heads": vheads,
            "image_size": image,
            "patch_size": patch,
        },
        projection_dim=th,
    )


def base_config() -> Any:
    """OWLv2 base patch16's dimensions (ViT-B/16 at 960 px, 3600 patches; text 512 wide)."""
    return owlv2_config((768, 12, 12, 16), (512, 12, 8), 960, 49408)


def build_tiny_owlv2(path: str | Path) -> Path:
    """Save a seeded random-weight tiny OWLv2, a tiny CLIP tokenizer and the processor config."""
    from transformers import Owlv2ForObjectDetection

    from exokiratory.models.tiny import _build_tokenizer

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(out)
    tokenizer.model_max_length = QUERY_TOKENS
    tokenizer.save_pretrained(out)
    special = (
        int(tokenizer.bos_token_id),
        int(tokenizer.eos_token_id),
        int(tokenizer.pad_token_id or 0),
    )
    config = owlv2_config((32, 2, 2, 16), (32, 2, 2), TINY_SIZE, tokenizer.vocab_size, special)
    torch.manual_seed(TINY_SEED)
    Owlv2ForObjectDetection(config).eval().save_pretrained(out)
    processor = {
        "image_processor_type": "Owlv2ImageProcessor",
        "do_resize": True,
        "size": {"height": TINY_SIZE, "width": TINY_SIZE},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_pad": True,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
    }
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    (out / "README.md").write_text(
        "# Tiny random-weight OWLv2 (exokiratory)\n\nReal Owlv2ForObjectDetection architecture, "
        f"tiny dimensions, random weights (torch.manual_seed({TINY_SEED})). Its boxes and scores "
        "are plumbing, never meaning.\n"
    )
    return out

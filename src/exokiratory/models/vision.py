"""Image (and CLIP text) embedders over Hugging Face checkpoints.

* CLIP image embedding: ``CLIPModel.get_image_features`` (the projected pooled output).
* CLIP text embedding: ``CLIPModel.get_text_features`` with the tokenizer saved with the model.
* DINOv2 image embedding: the CLS token of the last hidden state of ``Dinov2Model`` (CLS only,
  no mean of patch tokens), i.e. ``hidden_size`` dimensions.

All embeddings are float32 and L2-normalised. Preprocessing is numpy/PIL only, runs on the CPU,
and is safe to call from several threads at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from exokiratory.models.cache import ModelCache, load_through_cache
from exokiratory.models.device import pick_dtype, run_with_oom_backoff
from exokiratory.models.registry import ModelSpec, check_role

DEFAULT_BATCH_SIZE = 32
_PROCESSOR_FILE = "preprocessor_config.json"
_RESAMPLE = {0: Image.Resampling.NEAREST, 2: Image.Resampling.BILINEAR}

_CACHE: ModelCache[ImageEmbedder] = ModelCache()


@dataclass(frozen=True)
class Preprocessing:
    """The image preprocessing a checkpoint expects, read from its saved processor config.

    Attributes:
        resize: shortest edge to resize to, or ``None`` to resize to ``(height, width)``.
        resize_hw: exact ``(height, width)`` resize when ``resize`` is ``None``.
        crop_hw: centre-crop ``(height, width)``, or ``None`` for no crop.
        resample: PIL resampling filter (bicubic unless the config says otherwise).
        rescale: factor turning 0..255 pixel values into 0..1.
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation.
    """

    resize: int | None
    resize_hw: tuple[int, int] | None
    crop_hw: tuple[int, int] | None
    resample: Image.Resampling
    rescale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def output_hw(self) -> tuple[int, int]:
        """Height and width of the model input."""
        if self.crop_hw is not None:
            return self.crop_hw
        if self.resize_hw is not None:
            return self.resize_hw
        side = int(self.resize or 224)
        return side, side

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Preprocessing:
        """Parse a ``preprocessor_config.json`` (old int sizes and new dict sizes both work)."""
        size = config.get("size", 224) if config.get("do_resize", True) else None
        resize, resize_hw = _parse_size(size)
        crop = config.get("crop_size") if config.get("do_center_crop", True) else None
        return cls(
            resize=resize,
            resize_hw=resize_hw,
            crop_hw=_parse_hw(crop) if crop is not None else None,
            resample=_RESAMPLE.get(int(config.get("resample", 3)), Image.Resampling.BICUBIC),
            rescale=float(config.get("rescale_factor", 1 / 255)),
            mean=_triple(config.get("image_mean", [0.5, 0.5, 0.5])),
            std=_triple(config.get("image_std", [0.5, 0.5, 0.5])),
        )


def _parse_size(size: Any) -> tuple[int | None, tuple[int, int] | None]:
    """Split a processor ``size`` into (shortest edge, exact height/width)."""
    if size is None:
        return None, None
    if isinstance(size, int):
        return size, None
    if "shortest_edge" in size:
        return int(size["shortest_edge"]), None
    return None, _parse_hw(size)


def _parse_hw(value: Any) -> tuple[int, int]:
    """Read ``(height, width)`` from an int or a ``{"height", "width"}`` dict."""
    if isinstance(value, int):
        return value, value
    return int(value["height"]), int(value["width"])


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    """Three floats from a per-channel list (a single value is broadcast)."""
    vals = [float(v) for v in values]
    if len(vals) == 1:
        vals = vals * 3
    return vals[0], vals[1], vals[2]


def preprocess_image(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """Resize, centre-crop, rescale and normalise ``img`` into a float32 ``(C, H, W)`` array."""
    img = img.convert("RGB")
    img = _resize(img, prep)
    if prep.crop_hw is not None:
        img = _center_crop(img, prep.crop_hw)
    pixels = np.asarray(img, dtype=np.float32) * np.float32(prep.rescale)
    mean = np.asarray(prep.mean, dtype=np.float32)
    std = np.asarray(prep.std, dtype=np.float32)
    normalised: np.ndarray = (pixels - mean) / std
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)


def _resize(img: Image.Image, prep: Preprocessing) -> Image.Image:
    """Resize so the shortest side equals ``prep.resize`` (or to ``prep.resize_hw`` exactly)."""
    if prep.resize is not None:
        width, height = img.size
        short, long = min(width, height), max(width, height)
        new_short, new_long = prep.resize, int(prep.resize * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
    elif prep.resize_hw is not None:
        size = (prep.resize_hw[1], prep.resize_hw[0])
    else:
        return img
    return img if size == img.size else img.resize(size, resample=prep.resample)


def _center_crop(img: Image.Image, crop_hw: tuple[int, int]) -> Image.Image:
    """Centre-crop to ``(height, width)``, padding with black if the image is smaller."""
    crop_h, crop_w = crop_hw
    width, height = img.size
    if width < crop_w or height < crop_h:
        padded = Image.new("RGB", (max(width, crop_w), max(height, crop_h)))
        padded.paste(img, ((padded.width - width) // 2, (padded.height - height) // 2))
        img, width, height = padded, padded.width, padded.height
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return img.crop((left, top, left + crop_w, top + crop_h))


def _features(out: Any) -> torch.Tensor:
    """The embedding tensor from ``get_*_features``: a tensor, or an output's pooled output.

    transformers 5 returns a ``BaseModelOutputWithPooling`` whose ``pooler_output`` holds the
    projected features; transformers 4 returned the tensor itself.
    """
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"cannot read features from {type(out).__name__}")


def _l2_normalise(x: torch.Tensor) -> np.ndarray:
    """L2-normalise rows in float32 and return them as a numpy array."""
    x = x.float()
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return x.cpu().numpy().astype(np.float32, copy=False)


class ImageEmbedder:
    """Embeds images with one loaded checkpoint.

    Attributes:
        spec: the model this embedder runs.
        dim: embedding dimension.
        device: ``"cuda"`` or ``"cpu"``.
        dtype: the model's inference dtype.
        image_size: side of the (square) model input.
        preprocessing: the preprocessing parameters read from the checkpoint.
        batch_size: initial chunk size for forwards (halved on out-of-memory errors).
    """

    def __init__(
        self,
        spec: ModelSpec,
        model: Any,
        preprocessing: Preprocessing,
        device: str,
        dtype: torch.dtype,
        dim: int,
    ) -> None:
        """Wrap an already loaded, eval-mode ``model`` placed on ``device`` in ``dtype``."""
        self.spec = spec
        self.model = model
        self.preprocessing = preprocessing
        self.device = device
        self.dtype = dtype
        self.dim = dim
        self.image_size = preprocessing.output_hw[0]
        self.batch_size = DEFAULT_BATCH_SIZE

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """Turn a PIL image into a float32 ``(C, H, W)`` model input (CPU, thread-safe)."""
        return preprocess_image(img, self.preprocessing)

    def embed_pixels(self, batch: np.ndarray) -> np.ndarray:
        """Embed preprocessed ``(N, C, H, W)`` float32 pixels into L2-normalised ``(N, dim)``."""
        if batch.ndim != 4:
            raise ValueError(f"expected a (N, C, H, W) batch, got shape {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = run_with_oom_backoff(self._embed_chunk, batch, self.batch_size)
        return np.stack(rows).astype(np.float32, copy=False)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Preprocess and embed PIL images (convenience over :meth:`embed_pixels`)."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_pixels(np.stack([self.preprocess(img) for img in images]))

    def _embed_chunk(self, chunk: Sequence[Any]) -> np.ndarray:
        """Forward one chunk of pixels under ``inference_mode``."""
        pixels = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            return _l2_normalise(self._image_forward(pixels))

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) image embeddings; subclasses choose the readout."""
        raise NotImplementedError


class DinoEmbedder(ImageEmbedder):
    """DINOv2 embedder: CLS token of the last hidden state (``hidden_size`` dims)."""

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLS token of ``Dinov2Model``'s last hidden state."""
        out = self.model(pixel_values=pixels)
        return out.last_hidden_state[:, 0]


class ClipEmbedder(ImageEmbedder):
    """CLIP embedder: projected image features, plus text embeddings in the same space."""

    def __init__(self, *args: Any, tokenizer: Any, **kwargs: Any) -> None:
        """As :class:`ImageEmbedder`, plus the tokenizer saved with the checkpoint."""
        super().__init__(*args, **kwargs)
        self.tokenizer = tokenizer
        self.max_text_length = int(self.model.config.text_config.max_position_embeddings)

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``CLIPModel.get_image_features`` (tensor or output object)."""
        return _features(self.model.get_image_features(pixel_values=pixels))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` into L2-normalised ``(N, dim)`` float32 vectors in the CLIP space."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = run_with_oom_backoff(self._embed_text_chunk, list(texts), self.batch_size)
        return np.stack(rows).astype(np.float32, copy=False)

    def _embed_text_chunk(self, chunk: Sequence[str]) -> np.ndarray:
        """Tokenise and forward one chunk of texts under ``inference_mode``."""
        tokens = self.tokenizer(
            list(chunk),
            padding=True,
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        with torch.inference_mode():
            return _l2_normalise(_features(self.model.get_text_features(**tokens)))


def load_embedder(
    spec: ModelSpec, cache_dir: str | Path, device: str = "auto", *, use_cache: bool = True
) -> ImageEmbedder:
    """Load (or reuse) the embedder for ``spec`` on ``device``.

    Hub ids are fetched with ``from_pretrained(model_id, revision=..., cache_dir=cache_dir)``;
    local directories load through the same call. For the tiny profile the random-weight model
    is first built into ``cache_dir/tiny-<role>`` (if absent) and then loaded the same way.
    Loaded embedders are kept in a process-wide cache keyed by spec, device and source.
    """
    check_role(spec.role)
    from exokiratory.models.tiny import build_tiny_clip, build_tiny_dinov2

    builders: dict[str, Callable[[Path], object]] = {
        "clip": build_tiny_clip,
        "dino": build_tiny_dinov2,
    }
    return load_through_cache(
        _CACHE,
        spec,
        cache_dir,
        device,
        lambda source, folder, dev: _load(spec, source, folder, dev),
        build_tiny=builders[spec.role],
        use_cache=use_cache,
    )


def clear_cache() -> None:
    """Forget every cached embedder (their memory is freed once unreferenced)."""
    _CACHE.clear()


def _load(spec: ModelSpec, source: str, cache_dir: Path, device: str) -> ImageEmbedder:
    """Load model, preprocessing (and tokenizer) for ``spec`` from ``source``."""
    dtype = pick_dtype(device)
    common: dict[str, Any] = {"revision": spec.revision, "cache_dir": str(cache_dir)}
    preprocessing = Preprocessing.from_config(_processor_config(source, common))
    if spec.role == "clip":
        return _load_clip(spec, source, common, preprocessing, device, dtype)
    return _load_dino(spec, source, common, preprocessing, device, dtype)


def _load_clip(
    spec: ModelSpec,
    source: str,
    common: dict[str, Any],
    preprocessing: Preprocessing,
    device: str,
    dtype: torch.dtype,
) -> ClipEmbedder:
    """Load a ``CLIPModel`` and its tokenizer."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(source, **common).eval().to(device=device, dtype=dtype)
    tokenizer = CLIPTokenizer.from_pretrained(source, **common)
    dim = int(model.config.projection_dim)
    return ClipEmbedder(spec, model, preprocessing, device, dtype, dim, tokenizer=tokenizer)


def _load_dino(
    spec: ModelSpec,
    source: str,
    common: dict[str, Any],
    preprocessing: Preprocessing,
    device: str,
    dtype: torch.dtype,
) -> DinoEmbedder:
    """Load a ``Dinov2Model`` backbone."""
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(source, **common).eval().to(device=device, dtype=dtype)
    return DinoEmbedder(spec, model, preprocessing, device, dtype, int(model.config.hidden_size))


def _processor_config(source: str, common: dict[str, Any]) -> dict[str, Any]:
    """Read ``preprocessor_config.json`` from a local directory or the hub cache."""
    local = Path(source) / _PROCESSOR_FILE
    if local.is_file():
        path = str(local)
    else:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(source, _PROCESSOR_FILE, **common)
    with open(path, encoding="utf-8") as fh:
        config: dict[str, Any] = json.load(fh)
    return config

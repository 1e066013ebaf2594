"""Monocular relative depth (Depth Anything V2) behind one small batch interface.

:func:`load_depth_estimator` loads a ``depth_anything`` checkpoint with transformers
(``DepthAnythingForDepthEstimation``) through the same cache, device and dtype rules as the
embedders (:mod:`exokiratory.models.vision`); a :class:`DepthEstimator` then

* turns an RGB image into the model input (:meth:`DepthEstimator.pixels`, numpy/PIL,
  thread-safe) as the checkpoint's processor does (``keep_aspect_ratio``, ``ensure_multiple_of``
  14, ``size`` 518): the aspect ratio kept, scaled as little as possible so that one side is
  518 px (a large photo: its shorter side), both sides rounded to multiples of 14, bicubic,
  ImageNet mean/std;
* predicts the model's relative *inverse* depth (disparity: larger is nearer; affine-invariant,
  so only its order and ratios of differences mean something) at the input resolution
  (:meth:`DepthEstimator.predict`), inputs of equal shape batched together, the batch halved on
  CUDA out-of-memory errors.

The ``tiny`` profile builds a random-weight Depth Anything of the real architecture with tiny
dimensions (:func:`build_tiny_depth`) into the cache and loads it the same way: its maps are
plumbing, never meaning.
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

IMAGENET_MEAN: Final[tuple[float, float, float]] = (0.485, 0.456, 0.406)
IMAGENET_STD: Final[tuple[float, float, float]] = (0.229, 0.224, 0.225)
_RESAMPLE = {0: Image.Resampling.NEAREST, 2: Image.Resampling.BILINEAR, 3: Image.Resampling.BICUBIC}

_CACHE: ModelCache[DepthEstimator] = ModelCache()


@dataclass(frozen=True)
class DepthInput:
    """How an image becomes the model input (from ``preprocessor_config.json``).

    Attributes:
        size: the shorter side (lower bound) when ``keep_aspect``, else the square side.
        multiple: both sides are rounded to a multiple of it (the patch size, 14).
        keep_aspect: keep the aspect ratio (True for Depth Anything).
    """

    size: int
    multiple: int
    keep_aspect: bool
    resample: Image.Resampling
    rescale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DepthInput:
        size = config.get("size", {"height": 518, "width": 518})
        side = int(size if isinstance(size, int) else min(size["height"], size["width"]))
        mean = [float(v) for v in config.get("image_mean", IMAGENET_MEAN)]
        std = [float(v) for v in config.get("image_std", IMAGENET_STD)]
        return cls(
            size=side,
            multiple=int(config.get("ensure_multiple_of", 14)),
            keep_aspect=bool(config.get("keep_aspect_ratio", True)),
            resample=_RESAMPLE.get(int(config.get("resample", 3)), Image.Resampling.BICUBIC),
            rescale=float(config.get("rescale_factor", 1 / 255)),
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
        )

    def input_hw(self, height: int, width: int) -> tuple[int, int]:
        """Model input size for an image: the DPT processor's rule (scale as little as
        possible while one side reaches ``size``; both sides rounded to ``multiple``)."""
        sh, sw = self.size / height, self.size / width
        if self.keep_aspect:
            sh = sw = sw if abs(1 - sw) < abs(1 - sh) else sh
        m = self.multiple
        return max(m, round(height * sh / m) * m), max(m, round(width * sw / m) * m)

    def pixels(self, rgb: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB -> float32 ``(3, h, w)`` normalised model input."""
        h, w = self.input_hw(*rgb.shape[:2])
        img = Image.fromarray(rgb)
        if img.size != (w, h):
            img = img.resize((w, h), resample=self.resample)
        arr = np.asarray(img, dtype=np.float32) * np.float32(self.rescale)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return np.ascontiguousarray(((arr - mean) / std).transpose(2, 0, 1), dtype=np.float32)


class DepthEstimator:
    """One loaded depth checkpoint (see the module docstring).

    Attributes:
        batch_size: inputs per forward (halved on CUDA out-of-memory errors).
    """

    def __init__(
        self, spec: ModelSpec, model: Any, geometry: DepthInput, device: str, dtype: torch.dtype
    ) -> None:
        self.spec = spec
        self.model = model
        self.geometry = geometry
        self.device = device
        self.dtype = dtype
        self.batch_size = 8

    def pixels(self, rgb: np.ndarray) -> np.ndarray:
        return self.geometry.pixels(rgb)

    @property
    def forward_size(self) -> int:
        """Inputs per forward: ``batch_size`` on a GPU, 1 on the CPU, where batched kernels
        round differently from single ones, so that a row never depends on which images shared
        its forward (a rerun after a kill then writes identical rows)."""
        return self.batch_size if self.device != "cpu" else 1

    def predict(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Relative inverse depth ``(h, w)`` float32 for each ``(3, h, w)`` input, in order;
        inputs of the same shape go through the model together (see :attr:`forward_size`)."""
        out: list[np.ndarray | None] = [None] * len(inputs)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(inputs):
            by_shape.setdefault(tuple(x.shape), []).append(i)
        for idx in by_shape.values():
            batch = np.stack([inputs[i] for i in idx])
            maps = run_with_oom_backoff(self._chunk, batch, self.forward_size)
            for i, m in zip(idx, maps, strict=True):
                out[i] = m
        return [m for m in out if m is not None]

    def _chunk(self, chunk: np.ndarray) -> list[np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
        x = x.to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            depth = self.model(pixel_values=x).predicted_depth
        return list(depth.float().cpu().numpy())


def load_depth_estimator(
    spec: ModelSpec, cache_dir: str | Path, device: str = "auto", *, use_cache: bool = True
) -> DepthEstimator:
    """Load (or reuse) the depth estimator for ``spec`` on ``device``."""
    return load_through_cache(
        _CACHE,
        spec,
        cache_dir,
        device,
        lambda source, folder, dev: _load(spec, source, folder, dev),
        build_tiny=build_tiny_depth,
        use_cache=use_cache,
        roles=("depth",),
    )


def clear_cache() -> None:
    """Forget every cached depth estimator."""
    _CACHE.clear()


def _load(spec: ModelSpec, source: str, cache_dir: Path, device: str) -> DepthEstimator:
    from transformers import DepthAnythingForDepthEstimation

    dtype = pick_dtype(device)
    cls, common = pretrained_class(
        spec,
        source,
        cache_dir,
        {"depth_anything": DepthAnythingForDepthEstimation},
        "Depth Anything",
    )
    model = cls.from_pretrained(source, **common)
    model = model.eval().to(device=device, dtype=dtype)
    geometry = DepthInput.from_config(_processor_config(source, common))
    return DepthEstimator(spec, model, geometry, device, dtype)


# -- configurations: tiny (tests) and real size (FLOP counts without weights) -------------------

TINY_SIZE: Final[int] = 56
TINY_SEED: Final[int] = 0


def depth_config(
    hidden: int, layers: int, heads: int, neck: list[int], fusion: int, head: int, image: int
) -> Any:
    """A ``DepthAnythingConfig`` over a DINOv2 backbone of these dimensions (patch 14)."""
    from transformers import DepthAnythingConfig, Dinov2Config

    step = max(1, layers // 4)
    extra: dict[str, Any] = {"out_indices": [step, 2 * step, 3 * step, layers]}
    backbone = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        mlp_ratio=4,
        patch_size=14,
        image_size=image,
        reshape_hidden_states=False,
        **extra,
    )
    return DepthAnythingConfig(
        backbone_config=backbone.to_dict(),
        reassemble_hidden_size=hidden,
        neck_hidden_sizes=neck,
        fusion_hidden_size=fusion,
        head_hidden_size=head,
        patch_size=14,
        depth_estimation_type="relative",
    )


def small_config() -> Any:
    """Depth Anything V2 Small's dimensions (ViT-S/14 backbone, 24.8 M parameters)."""
    return depth_config(384, 12, 6, [48, 96, 192, 384], 64, 32, 518)


def tiny_config() -> Any:
    return depth_config(32, 4, 2, [8, 16, 32, 32], 16, 8, TINY_SIZE)


def _processor(size: int) -> dict[str, Any]:
    return {
        "image_processor_type": "DPTImageProcessor",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "keep_aspect_ratio": True,
        "ensure_multiple_of": 14,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "do_pad": False,
    }


def build_tiny_depth(path: str | Path) -> Path:
    """Save a seeded random-weight tiny Depth Anything and its processor config to ``path``."""
    from transformers import DepthAnythingForDepthEstimation

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(TINY_SEED)
    model = DepthAnythingForDepthEstimation(tiny_config()).eval()
    with torch.no_grad():  # lift the last conv above the ReLU, or random weights predict ~0
        model.head.conv3.bias.fill_(1.0)
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(_processor(TINY_SIZE), indent=2))
    (out / "README.md").write_text(
        "# Tiny random-weight Depth Anything (exokiratory)\n\nReal DepthAnythingForDepthEstimation "
        f"architecture, tiny dimensions, random weights (torch.manual_seed({TINY_SEED})). Its "
        "depth maps are plumbing, never meaning.\n"
    )
    return out

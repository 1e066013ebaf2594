"""Stable Diffusion img2img and ControlNet img2img (diffusers) behind one small batch interface.

:func:`load_diffusion` loads a Stable Diffusion pipeline folder (``role`` ``diffusion``: SD 1.5
``stable-diffusion-v1-5/stable-diffusion-v1-5`` by default, any SD-1.x-architecture checkpoint
by hub id or local folder) as a ``StableDiffusionImg2ImgPipeline``; :func:`load_controlnet`
loads a ``ControlNetModel`` (roles ``controlnet-depth`` and ``controlnet-canny``). Both go through
:func:`exokiratory.models.cache.load_through_cache` (one process-wide cache, the workspace model
cache, offline fail-fast), like every other model. The safety checker is not loaded (the outputs
are measured, never published).

Device and dtype follow :mod:`exokiratory.models.device`: float16 on CUDA, float32 on the CPU.
On CUDA with ``offload`` (the default) the pipeline uses diffusers' model CPU offload (each
sub-model moves to the GPU only while it runs: SD 1.5 + a ControlNet fit a 16 GB T4 with room
to spare); it needs ``accelerate``, without which the whole pipeline is moved to the GPU.

A :class:`DiffusionProbe` turns :class:`GenerationRequest` s into images: requests that share a
conditioning kind, a strength and the generation settings go through the pipeline together
(``batch_size`` on a GPU, halved on CUDA out-of-memory errors; one at a time on the CPU, where
batched kernels round differently, so that a row never depends on its batch-mates). Each request
has its own seeded ``torch.Generator`` (on the CPU, so a seed gives the same noise on any
device). The ControlNet pipelines share the base pipeline's UNet, VAE and text encoder
(``from_pipe``: no second copy in memory).

The ``tiny`` profile builds random-weight pipelines and ControlNets of the real classes with tiny
dimensions (:mod:`exokiratory.models.tiny_diffusion`) into the cache: their images are plumbing,
never meaning.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from exokiratory.models.cache import ModelCache, load_through_cache
from exokiratory.models.device import pick_dtype, run_with_oom_backoff
from exokiratory.models.registry import ModelSpec

log = logging.getLogger(__name__)

_PIPES: ModelCache[DiffusionProbe] = ModelCache()
_CONTROLNETS: ModelCache[Any] = ModelCache()

CONTROL_ROLES: dict[str, str] = {"depth": "controlnet-depth", "canny": "controlnet-canny"}
"""Conditioning kind -> the model role of its ControlNet."""


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: an init image (RGB, the output size), a prompt, a strength, a seed, and
    for ControlNet kinds (``depth``, ``canny``) the control image (RGB, the same size)."""

    image: Image.Image
    prompt: str
    strength: float
    seed: int
    kind: str = "none"
    control: Image.Image | None = None


@dataclass(frozen=True)
class GenerationSettings:
    """What every request of one call shares."""

    steps: int = 30
    guidance_scale: float = 7.5
    controlnet_scale: float = 1.0


def quiet_diffusers() -> None:
    """No progress bars and no info chatter from diffusers."""
    try:
        from diffusers.utils import logging as d_logging

        d_logging.set_verbosity_error()
        d_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - the loader needs diffusers anyway
        pass


class DiffusionProbe:
    """A loaded img2img pipeline and the ControlNet pipelines built on it (see the module
    docstring).

    Attributes:
        batch_size: requests per pipeline call on a GPU (halved on CUDA out-of-memory errors).
    """

    def __init__(
        self, spec: ModelSpec, pipe: Any, device: str, dtype: torch.dtype, offload: bool
    ) -> None:
        self.spec = spec
        self.pipe = pipe
        self.device = device
        self.dtype = dtype
        self.offload = offload
        self.batch_size = 4
        self._control: dict[str, Any] = {}
        self._placed: Any = None

    @property
    def forward_size(self) -> int:
        """Requests per call: ``batch_size`` on a GPU, 1 on the CPU (rows independent of the
        batch, so a rerun after a kill writes identical rows)."""
        return self.batch_size if self.device != "cpu" else 1

    def add_controlnet(self, kind: str, controlnet: Any) -> None:
        """Make ``kind`` (``depth``, ``canny``) available, sharing the base components."""
        if kind in self._control:
            return
        from diffusers import StableDiffusionControlNetImg2ImgPipeline

        # the dtype must be given: without it from_pipe casts every shared component (the base
        # pipeline's too) to float32, and a float16 CUDA probe silently ran in float32
        pipe = _quietly(
            lambda: StableDiffusionControlNetImg2ImgPipeline.from_pipe(
                self.pipe, controlnet=controlnet, torch_dtype=self.dtype
            )
        )
        pipe.set_progress_bar_config(disable=True)
        self._control[kind] = pipe

    def pipeline(self, kind: str) -> Any:
        """The pipeline of a conditioning kind, placed on the device (on CUDA with offload, the
        offload hooks move to it: the pipelines share sub-models)."""
        pipe = self.pipe if kind == "none" else self._control.get(kind)
        if pipe is None:
            raise ValueError(f"no ControlNet loaded for conditioning {kind!r}")
        if self._placed is not pipe:
            self._place(pipe)
        return pipe

    def _place(self, pipe: Any) -> None:
        if self.device == "cpu":
            pipe.to("cpu")
        elif self.offload and importlib.util.find_spec("accelerate") is not None:
            if self._placed is not None:
                self._placed.remove_all_hooks()
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            if self.offload:
                log.warning("model CPU offload needs accelerate (pip install accelerate)")
            pipe.to(self.device)
        self._placed = pipe

    def generate(
        self, requests: list[GenerationRequest], settings: GenerationSettings
    ) -> list[np.ndarray]:
        """``(H, W, 3)`` uint8 images, one per request, in order. Requests of the same kind and
        strength go through the pipeline together (see :attr:`forward_size`)."""
        out: list[np.ndarray | None] = [None] * len(requests)
        groups: dict[tuple[str, float], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.kind, r.strength), []).append(i)
        for (kind, _), idx in groups.items():
            pipe = self.pipeline(kind)

            def chunk_fn(chunk: list[int], p: Any = pipe) -> list[np.ndarray]:
                return self._call(p, [requests[i] for i in chunk], settings)

            images = run_with_oom_backoff(chunk_fn, idx, self.forward_size)
            for i, img in zip(idx, images, strict=True):
                out[i] = img
        return [img for img in out if img is not None]

    def _call(
        self, pipe: Any, reqs: list[GenerationRequest], settings: GenerationSettings
    ) -> list[np.ndarray]:
        kwargs: dict[str, Any] = {
            "prompt": [r.prompt for r in reqs],
            "image": [r.image for r in reqs],
            "strength": float(reqs[0].strength),
            "num_inference_steps": settings.steps,
            "guidance_scale": settings.guidance_scale,
            "generator": [torch.Generator("cpu").manual_seed(int(r.seed)) for r in reqs],
            "output_type": "np",
        }
        if reqs[0].kind != "none":
            kwargs["control_image"] = [r.control for r in reqs]
            kwargs["controlnet_conditioning_scale"] = settings.controlnet_scale
        with torch.inference_mode():
            images = pipe(**kwargs).images
        arr = np.clip(np.rint(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)
        return list(arr)


def load_diffusion(
    spec: ModelSpec,
    cache_dir: str | Path,
    device: str = "auto",
    *,
    offload: bool = True,
    use_cache: bool = True,
) -> DiffusionProbe:
    """Load (or reuse) the img2img pipeline for ``spec`` on ``device``."""
    from exokiratory.models.tiny_diffusion import build_tiny_diffusion

    quiet_diffusers()
    return load_through_cache(
        _PIPES,
        _offline_snapshot(spec, Path(cache_dir)),
        cache_dir,
        device,
        lambda source, folder, dev: _load_pipe(spec, source, folder, dev, offload),
        build_tiny=build_tiny_diffusion,
        use_cache=use_cache,
        roles=("diffusion",),
    )


def load_controlnet(
    spec: ModelSpec, cache_dir: str | Path, device: str = "auto", *, use_cache: bool = True
) -> Any:
    """Load (or reuse) the ControlNet for ``spec`` (role ``controlnet-depth`` / ``-canny``),
    in the device's dtype, on the CPU (the pipeline places it)."""
    from exokiratory.models.tiny_diffusion import build_tiny_controlnet

    quiet_diffusers()
    roles = tuple(CONTROL_ROLES.values())
    return load_through_cache(
        _CONTROLNETS,
        spec,
        cache_dir,
        device,
        lambda source, folder, dev: _load_controlnet(spec, source, folder, dev),
        build_tiny=lambda path: build_tiny_controlnet(path, seed=1 + roles.index(spec.role)),
        use_cache=use_cache,
        roles=roles,
    )


def _offline_snapshot(spec: ModelSpec, cache_dir: Path) -> ModelSpec:
    """Offline with the pipeline in the cache: the cached snapshot folder (a pipeline repo has
    ``model_index.json``, not the ``config.json`` by which the shared offline check recognises a
    cached model); otherwise ``spec`` unchanged."""
    from exokiratory.models.cache import hub_reachable

    if spec.is_tiny or Path(spec.model_id).expanduser().is_dir() or hub_reachable():
        return spec
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            spec.model_id, revision=spec.revision, cache_dir=str(cache_dir), local_files_only=True
        )
    except Exception:  # not cached: the shared check says so in one line
        return spec
    return ModelSpec(spec.role, folder, None, spec.space)


def clear_cache() -> None:
    """Forget every cached pipeline and ControlNet."""
    _PIPES.clear()
    _CONTROLNETS.clear()


def _common(spec: ModelSpec, cache_dir: Path, device: str) -> dict[str, Any]:
    return {
        "revision": spec.revision,
        "cache_dir": str(cache_dir),
        "torch_dtype": pick_dtype(device),
    }


def _quietly(fn: Callable[[], Any]) -> Any:
    """``fn()`` without diffusers' FutureWarnings (``torch_dtype``: renamed ``dtype`` in recent
    releases, still the name older ones accept)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return fn()


def _load_pipe(
    spec: ModelSpec, source: str, cache_dir: Path, device: str, offload: bool
) -> DiffusionProbe:
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = _quietly(
        lambda: StableDiffusionImg2ImgPipeline.from_pretrained(
            source,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **_common(spec, cache_dir, device),
        )
    )
    pipe.set_progress_bar_config(disable=True)
    return DiffusionProbe(spec, pipe, device, pick_dtype(device), offload)


def _load_controlnet(spec: ModelSpec, source: str, cache_dir: Path, device: str) -> Any:
    from diffusers import ControlNetModel

    common = _common(spec, cache_dir, device)
    return _quietly(lambda: ControlNetModel.from_pretrained(source, **common)).eval()

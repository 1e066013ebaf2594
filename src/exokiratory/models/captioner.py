"""Captioners: image-to-text models (BLIP-2, LLaVA, Florence-2, SmolVLM, Qwen-VL...) behind one
small interface, loaded through transformers' ``AutoProcessor`` and
``AutoModelForImageTextToText`` (the same call for a hub id, a local folder and a tiny
random-weight model built by :mod:`exokiratory.models.tiny_captioners`).

* :meth:`Captioner.prompt_text` turns a registry prompt into what the model expects: the chat
  template when the processor has one (LLaVA, SmolVLM, Qwen-VL), ``Question: <text> Answer:`` for
  BLIP-2, a task token for Florence-2 (``<CAPTION>``, ``<MORE_DETAILED_CAPTION>``: Florence-2
  knows no free-text prompts), the text itself otherwise.
* :meth:`Captioner.encode` runs the processor on one image and its prompt (thread-safe: decode
  threads call it while the model generates).
* :meth:`Captioner.generate` pads a list of encodings into batches (left padding for
  decoder-only models, right padding for encoder-decoders), decodes greedily (``do_sample=False``,
  one beam: a rerun gives the same text on the same hardware; CUDA kernels may differ between
  GPUs and batch shapes, see the README), and halves the batch on CUDA out-of-memory errors.

Loading: device and dtype are chosen automatically (fp16 on CUDA, fp32 on CPU); ``quantize``
loads 8- or 4-bit weights with bitsandbytes on CUDA. A hub id that is not in the cache fails at
once when the hub cannot be reached (instead of transformers' minutes of retries).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from exokiratory.models.cache import ModelCache, build_once
from exokiratory.models.device import pick_device, pick_dtype, run_with_oom_backoff
from exokiratory.models.registry import TINY_PREFIX, ModelSpec, model_slug

log = logging.getLogger(__name__)

FLORENCE_TASKS = {
    "caption": "<CAPTION>",
    "dense": "<MORE_DETAILED_CAPTION>",
    "segment": "<CAPTION>",
}
"""Florence-2's task token for each prompt task (its prompt text is fixed by the task)."""

BLIP2_TEMPLATE = "Question: {} Answer:"
"""BLIP-2's instructed zero-shot prompt format (Li et al. 2023)."""

QUANTIZE = ("none", "8bit", "4bit")
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")

_CACHE: ModelCache[Captioner] = ModelCache()


@dataclass(frozen=True)
class Generated:
    """One generated caption: the decoded ``text`` (special tokens removed, stripped) and
    ``n_tokens``, the number of generated tokens that are not special tokens (EOS and padding
    not counted)."""

    text: str
    n_tokens: int


class Captioner:
    """One loaded captioning model (see the module docstring)."""

    def __init__(self, spec: ModelSpec, model: Any, processor: Any, device: str) -> None:
        self.spec = spec
        self.model = model
        self.processor = processor
        self.device = device
        self.family = str(getattr(model.config, "model_type", ""))
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "right" if self.is_encoder_decoder else "left"
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id)
        self.special_ids = {int(i) for i in self.tokenizer.all_special_ids}
        self.batch_size = 8
        self.revision = getattr(model.config, "_commit_hash", None) or spec.revision
        self._lock = threading.Lock()

    @property
    def image_mean(self) -> tuple[float, float, float]:
        """The image processor's normalisation mean (the fill of segment crops)."""
        mean = getattr(self.processor.image_processor, "image_mean", None) or [0.5, 0.5, 0.5]
        vals = [float(v) for v in mean] * (3 if len(mean) == 1 else 1)
        return vals[0], vals[1], vals[2]

    def prompt_text(self, text: str, task: str) -> str:
        """The model's prompt for a registry prompt of ``task`` (caption, dense, segment)."""
        if self.family == "florence2":
            return FLORENCE_TASKS.get(task, "<CAPTION>")
        if getattr(self.processor, "chat_template", None):
            messages = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
            ]
            rendered: str = self.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            return rendered
        if self.family == "blip-2":
            return BLIP2_TEMPLATE.format(text)
        return text

    def encode(self, image: Any, prompt: str) -> dict[str, torch.Tensor]:
        """The model inputs of one PIL image with its prompt (batch of one; thread-safe)."""
        with self._lock:  # tokenizers are not safe to share between threads
            enc = self.processor(images=[image], text=[prompt], return_tensors="pt")
        return {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}

    def generate(
        self, encoded: Sequence[dict[str, torch.Tensor]], max_new_tokens: int
    ) -> list[Generated]:
        """Greedy captions of encoded inputs, in order (batches of :attr:`batch_size`,
        halved on CUDA out-of-memory errors)."""
        return run_with_oom_backoff(
            lambda chunk: self._generate_chunk(chunk, max_new_tokens),
            list(encoded),
            self.batch_size,
        )

    def _generate_chunk(
        self, chunk: Sequence[dict[str, torch.Tensor]], max_new_tokens: int
    ) -> list[Generated]:
        batch = collate(chunk, self.pad_id, self.tokenizer.padding_side)
        batch = {k: _to(v, self.device, self.model.dtype) for k, v in batch.items()}
        with torch.inference_mode():
            out = self.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=self.pad_id,
            )
        new = out if self.is_encoder_decoder else out[:, batch["input_ids"].shape[1] :]
        rows = new.cpu().tolist()
        with self._lock:  # decode threads tokenize meanwhile
            texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        return [
            Generated(t.strip(), sum(1 for i in r if i not in self.special_ids))
            for t, r in zip(texts, rows, strict=True)
        ]


def _to(v: torch.Tensor, device: str, dtype: torch.dtype) -> torch.Tensor:
    """Move a model input to ``device``; floating inputs (pixels) take the model's dtype."""
    if torch.is_floating_point(v):
        return v.to(device=device, dtype=dtype)
    return v.to(device)


def collate(
    encoded: Sequence[dict[str, torch.Tensor]], pad_id: int, side: str
) -> dict[str, torch.Tensor]:
    """One batch from encodings of one image each: token sequences padded on ``side`` to the
    longest (``pad_id`` for ids, 0 for masks), other tensors concatenated on their first axis
    (zero-padded on their second when those differ, e.g. SmolVLM's image tiles)."""
    out: dict[str, torch.Tensor] = {}
    for key in encoded[0]:
        values = [e[key] for e in encoded]
        if key in _SEQUENCE_KEYS:
            fill = pad_id if key == "input_ids" else 0
            out[key] = _pad_cat(values, dim=1, fill=fill, left=side == "left")
        elif len({tuple(v.shape[1:]) for v in values}) == 1:
            out[key] = torch.cat(values, dim=0)
        else:
            out[key] = _pad_cat(values, dim=1, fill=0, left=False)
    return out


def _pad_cat(values: list[torch.Tensor], dim: int, fill: int, left: bool) -> torch.Tensor:
    longest = max(v.shape[dim] for v in values)
    padded = []
    for v in values:
        missing = longest - v.shape[dim]
        if missing:
            shape = list(v.shape)
            shape[dim] = missing
            pad = torch.full(shape, fill, dtype=v.dtype)
            v = torch.cat([pad, v] if left else [v, pad], dim=dim)
        padded.append(v)
    return torch.cat(padded, dim=0)


def load_captioner(
    spec: ModelSpec,
    cache_dir: str | Path,
    device: str = "auto",
    quantize: str = "none",
    *,
    use_cache: bool = True,
) -> Captioner:
    """Load (or reuse, per process) the captioner for ``spec``.

    Raises:
        ValueError: an unknown ``quantize``, or 4/8-bit loading without CUDA.
        OSError: the checkpoint cannot be found (not cached and the hub is unreachable...).
    """
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, not {quantize!r}")
    resolved = pick_device(device)
    if quantize != "none" and resolved != "cuda":
        raise ValueError(f"{quantize} loading (bitsandbytes) needs a CUDA GPU")
    source = _source(spec, Path(cache_dir))
    key = (spec, resolved, quantize, source)
    return _CACHE.get_or_load(
        key, lambda: _load(spec, source, Path(cache_dir), resolved, quantize), use_cache
    )


def clear_cache() -> None:
    """Forget every loaded captioner (its memory is freed once unreferenced)."""
    _CACHE.clear()


def _source(spec: ModelSpec, cache_dir: Path) -> str:
    """Where ``from_pretrained`` loads ``spec`` from, building a tiny model if needed."""
    if not spec.is_tiny:
        return spec.model_id
    from exokiratory.models.tiny_captioners import TINY_CAPTIONERS

    name = spec.model_id[len(TINY_PREFIX) :]
    if name not in TINY_CAPTIONERS:
        raise ValueError(f"no tiny captioner {name!r}; known: {', '.join(TINY_CAPTIONERS)}")
    return build_once(cache_dir / model_slug(spec.model_id), TINY_CAPTIONERS[name])


def _load(spec: ModelSpec, source: str, cache_dir: Path, device: str, quantize: str) -> Captioner:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    common: dict[str, Any] = {"revision": spec.revision, "cache_dir": str(cache_dir)}
    if not Path(source).is_dir():
        common["local_files_only"] = not hub_reachable(source)
    processor = AutoProcessor.from_pretrained(source, **common)
    kwargs: dict[str, Any] = {"dtype": pick_dtype(device)}
    if quantize != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=quantize == "8bit",
            load_in_4bit=quantize == "4bit",
            bnb_4bit_compute_dtype=torch.float16,
        )
        kwargs["device_map"] = {"": 0}
    model = AutoModelForImageTextToText.from_pretrained(source, **common, **kwargs).eval()
    if quantize == "none":
        model = model.to(device)
    log.info("loaded captioner %s (%s) on %s", spec.model_id, model.config.model_type, device)
    return Captioner(spec, model, processor, device)


def hub_reachable(model_id: str, timeout: float = 3.0) -> bool:
    """Whether to ask the hub for ``model_id``: False in offline mode, or when the hub's host
    cannot be reached in ``timeout`` seconds (then only cached files are used, and a model
    that is not cached fails at once with transformers' "couldn't find them in the cached
    files" instead of minutes of retries). Behind a proxy the hub is assumed reachable."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        with socket.create_connection((host or "huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        log.info("%s: the hub is unreachable; using cached files only", model_id)
        return False

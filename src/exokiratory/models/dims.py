"""Embedding dimensions without loading weights (no torch): from a table of the profile models,
a local folder's ``config.json``, or the config in the Hugging Face cache."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

KNOWN_DIMS: dict[str, int] = {
    "openai/clip-vit-large-patch14": 768,
    "openai/clip-vit-base-patch32": 512,
    "openai/clip-vit-base-patch16": 512,
    "facebook/dinov2-large": 1024,
    "facebook/dinov2-base": 768,
    "facebook/dinov2-small": 384,
    "facebook/dinov2-giant": 1536,
}


def dim_from_config(config: dict[str, Any], role: str) -> int | None:
    """CLIP: the projection dimension; DINOv2: the hidden size (CLS token)."""
    value = config.get("projection_dim" if role == "clip" else "hidden_size")
    return int(value) if value else None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def embedding_dim(role: str, model_id: str, folders: Sequence[str | Path] = ()) -> int | None:
    """The embedding size of ``model_id`` for ``role``, or None if it cannot be known yet."""
    if model_id in KNOWN_DIMS:
        return KNOWN_DIMS[model_id]
    for folder in [model_id, *folders]:
        cfg = _read(Path(folder) / "config.json")
        if cfg is not None:
            return dim_from_config(cfg, role)
    if ":" in model_id or Path(model_id).is_absolute():  # tiny ids and local folders: not hub ids
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_id, "config.json")
    except Exception:  # not installed, not a valid hub id, no cache: unknown for now
        return None
    if isinstance(cached, str):
        cfg = _read(Path(cached))
        if cfg is not None:
            return dim_from_config(cfg, role)
    return None

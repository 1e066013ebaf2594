"""Embedding models: which checkpoint fills each role, and how to run it.

Importing this package does not import torch: :mod:`exokiratory.models.registry` is torch-free
and is re-exported eagerly, while the torch-backed names (``load_embedder``, ``pick_device``,
...) are imported on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from exokiratory.models.registry import (
    PROFILES,
    ROLES,
    TINY_PROFILE,
    ModelSpec,
    model_slug,
    resolve,
)

if TYPE_CHECKING:
    from exokiratory.models.device import (
        pick_device,
        pick_dtype,
        release_memory,
        run_with_oom_backoff,
    )
    from exokiratory.models.vision import (
        ClipEmbedder,
        DinoEmbedder,
        ImageEmbedder,
        clear_cache,
        load_embedder,
    )

_LAZY: dict[str, str] = {
    "pick_device": "exokiratory.models.device",
    "pick_dtype": "exokiratory.models.device",
    "release_memory": "exokiratory.models.device",
    "run_with_oom_backoff": "exokiratory.models.device",
    "ImageEmbedder": "exokiratory.models.vision",
    "ClipEmbedder": "exokiratory.models.vision",
    "DinoEmbedder": "exokiratory.models.vision",
    "load_embedder": "exokiratory.models.vision",
    "clear_cache": "exokiratory.models.vision",
}

__all__ = [
    "PROFILES",
    "ROLES",
    "TINY_PROFILE",
    "ClipEmbedder",
    "DinoEmbedder",
    "ImageEmbedder",
    "ModelSpec",
    "clear_cache",
    "load_embedder",
    "model_slug",
    "pick_device",
    "pick_dtype",
    "release_memory",
    "resolve",
    "run_with_oom_backoff",
]


def __getattr__(name: str) -> Any:
    """Import torch-backed names on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

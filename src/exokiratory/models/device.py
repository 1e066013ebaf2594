"""Device and dtype choice, memory release, and out-of-memory batch backoff."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


_PREFERENCES = ("auto", "cuda", "cpu")


def pick_device(preference: str = "auto") -> str:
    """Return ``"cuda"`` or ``"cpu"``.

    ``"auto"`` picks CUDA when available; ``"cuda"`` and ``"cpu"`` force the choice.

    Raises:
        ValueError: for an unknown preference, or ``"cuda"`` when no CUDA device exists.
    """
    if preference not in _PREFERENCES:
        raise ValueError(f"unknown device {preference!r}; expected one of {_PREFERENCES}")
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return preference


def pick_dtype(device: str) -> torch.dtype:
    """Inference dtype for ``device``: float16 on CUDA, float32 on CPU."""
    return torch.float16 if device.startswith("cuda") else torch.float32


def release_memory() -> None:
    """Collect garbage and, when CUDA is in use, return cached blocks to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_with_oom_backoff(
    fn: Callable[[Any], Sequence[Any] | np.ndarray],
    items: Sequence[Any] | np.ndarray,
    batch_size: int,
    oom_errors: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,),
) -> list[Any]:
    """Apply ``fn`` to ``items`` in chunks, halving the chunk size on out-of-memory errors.

    ``fn`` receives a slice of ``items`` (a numpy array slice stays an array) and must return
    one result per item, in order. On an error in ``oom_errors`` the memory is released and the
    same chunk is retried at half the size; the reduced size is kept for the remaining chunks.

    Returns:
        The per-item results of all chunks, in the order of ``items``.

    Raises:
        ValueError: if ``batch_size`` < 1 or ``fn`` returns the wrong number of results.
        BaseException: the out-of-memory error itself when a chunk of one item still fails.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results: list[Any] = []
    start, size = 0, batch_size
    while start < len(items):
        chunk = items[start : start + size]
        try:
            out = fn(chunk)
        except oom_errors:
            if size == 1:
                raise
            size = _halve(size)
            continue
        _check_count(out, len(chunk))
        results.extend(out)
        start += len(chunk)
    return results


def _halve(size: int) -> int:
    """Release memory and return half of ``size`` (at least 1), logging the backoff."""
    release_memory()
    new_size = max(1, size // 2)
    log.warning("out of memory at batch size %d; retrying with %d", size, new_size)
    return new_size


def _check_count(out: Sequence[Any] | np.ndarray, expected: int) -> None:
    """Raise ``ValueError`` unless ``fn`` returned one result per item."""
    if len(out) != expected:
        raise ValueError(f"fn returned {len(out)} results for a chunk of {expected} items")

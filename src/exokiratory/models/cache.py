"""What every model loader shares: a process-wide cache of loaded models, the one-time,
race-safe build of a tiny random-weight checkpoint into the workspace's model cache, and
:func:`load_through_cache`, the one path by which a loader turns a spec into a model."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from exokiratory.models.registry import ModelSpec

T = TypeVar("T")

_BUILD_LOCK = threading.Lock()


class ModelCache(Generic[T]):
    """Loaded models by key (spec, device, source), so a worker loads each model once."""

    def __init__(self) -> None:
        self._items: dict[Hashable, T] = {}
        self._lock = threading.Lock()

    def get_or_load(self, key: Hashable, load: Callable[[], T], use_cache: bool = True) -> T:
        """The cached model for ``key``, or ``load()`` (kept unless ``use_cache`` is false)."""
        with self._lock:
            if use_cache and key in self._items:
                return self._items[key]
            model = load()
            if use_cache:
                self._items[key] = model
        return model

    def clear(self) -> None:
        """Forget every model (their memory is freed once unreferenced)."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def build_once(target: Path, build: Callable[[Path], object]) -> str:
    """Make sure a checkpoint folder exists at ``target`` (``build`` writes one into a folder
    it is given): built into a temporary sibling, then renamed into place, so a killed build
    leaves nothing half-written and two processes racing end with one complete copy.
    Returns the folder's absolute path."""
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with _BUILD_LOCK:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
            try:
                build(tmp)
                if not (target / "config.json").is_file():
                    shutil.rmtree(target, ignore_errors=True)
                    try:
                        os.replace(tmp, target)
                    except OSError:  # another process won the race
                        if not (target / "config.json").is_file():
                            raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return str(target.resolve())


def model_source(
    spec: ModelSpec, cache_dir: Path, build_tiny: Callable[[Path], object] | None = None
) -> str:
    """Where ``from_pretrained`` loads ``spec`` from: its hub id or local folder, or, for the
    ``tiny`` profile, the random-weight checkpoint ``build_tiny`` writes (once) under
    ``cache_dir`` (the same ``from_pretrained`` call then loads it like a real one)."""
    if not spec.is_tiny:
        return spec.model_id
    if build_tiny is None:
        raise ValueError(f"{spec.role}: no tiny random-weight model is defined for this role")
    from exokiratory.models.registry import model_slug

    return build_once(cache_dir / model_slug(spec.model_id), build_tiny)


def load_through_cache(
    cache: ModelCache[T],
    spec: ModelSpec,
    cache_dir: str | Path,
    device: str,
    load: Callable[[str, Path, str], T],
    *,
    build_tiny: Callable[[Path], object] | None = None,
    use_cache: bool = True,
) -> T:
    """The model for ``spec`` on ``device`` (``auto`` resolved), loaded once per process:
    ``load(source, cache_dir, device)`` runs on a cache miss (see :func:`model_source`)."""
    from exokiratory.models.device import pick_device

    resolved = pick_device(device)
    folder = Path(cache_dir)
    source = model_source(spec, folder, build_tiny)
    return cache.get_or_load(
        (spec, resolved, source), lambda: load(source, folder, resolved), use_cache
    )

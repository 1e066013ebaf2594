"""What every model loader shares: a process-wide cache of loaded models, and the one-time,
race-safe build of a tiny random-weight checkpoint into the workspace's model cache."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

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

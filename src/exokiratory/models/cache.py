"""What every model loader shares: a process-wide cache of loaded models, the one-time,
race-safe build of a tiny random-weight checkpoint into the workspace's model cache, and
:func:`load_through_cache`, the one path by which a loader turns a spec into a model."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Collection, Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

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


def quiet_libraries() -> None:
    """No progress bars or info chatter from transformers / huggingface_hub ("Loading
    weights", "Writing model shards") inside our commands: ours report progress."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - loaders need transformers anyway
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass


def build_once(target: Path, build: Callable[[Path], object]) -> str:
    """Make sure a checkpoint folder exists at ``target`` (``build`` writes one into a folder
    it is given): built into a temporary sibling, then renamed into place, so a killed build
    leaves nothing half-written and two processes racing end with one complete copy.
    Returns the folder's absolute path."""
    if not (target / "config.json").is_file():
        quiet_libraries()
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


_HUB_STATE: dict[str, bool] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers (checked once per process: a DNS lookup and a TCP
    connection, ``timeout`` seconds at most); False when ``HF_HUB_OFFLINE`` is set."""
    if "reachable" not in _HUB_STATE:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            _HUB_STATE["reachable"] = False
        else:
            from urllib.parse import urlparse

            host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
            try:
                socket.create_connection((host or "huggingface.co", 443), timeout=timeout).close()
                _HUB_STATE["reachable"] = True
            except OSError:
                _HUB_STATE["reachable"] = False
    return _HUB_STATE["reachable"]


def check_hub_model(spec: ModelSpec, cache_dir: Path) -> None:
    """Fail fast, in one line, when a hub model cannot be had: offline and not in the cache
    (instead of a minute of retries). Offline with the model cached: the hub libraries are
    switched to offline mode so they load it without asking the network."""
    if spec.is_tiny or Path(spec.model_id).expanduser().is_dir() or hub_reachable():
        return
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(
        spec.model_id, "config.json", cache_dir=str(cache_dir), revision=spec.revision
    )
    if not isinstance(cached, str):
        raise RuntimeError(
            f"cannot load {spec.model_id}: the model hub is unreachable (offline?) and the "
            f"model is not in the cache {cache_dir}; use a local folder or the 'tiny' profile"
        )
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


def load_through_cache(
    cache: ModelCache[T],
    spec: ModelSpec,
    cache_dir: str | Path,
    device: str,
    load: Callable[[str, Path, str], T],
    *,
    build_tiny: Callable[[Path], object] | None = None,
    use_cache: bool = True,
    roles: Collection[str] = (),
) -> T:
    """The model for ``spec`` on ``device`` (``auto`` resolved), loaded once per process:
    ``load(source, cache_dir, device)`` runs on a cache miss (see :func:`model_source`).
    ``roles``: the model roles this loader serves; a spec of another role is an error."""
    from exokiratory.models.device import pick_device

    if roles and spec.role not in roles:
        wanted = " or ".join(repr(r) for r in roles)
        raise ValueError(f"a {wanted} model spec is needed here, got a {spec.role!r} one")

    quiet_libraries()
    resolved = pick_device(device)
    folder = Path(cache_dir)
    check_hub_model(spec, folder)
    source = model_source(spec, folder, build_tiny)
    return cache.get_or_load(
        (spec, resolved, source), lambda: load(source, folder, resolved), use_cache
    )


C = TypeVar("C")


def pretrained_class(
    spec: ModelSpec, source: str, cache_dir: Path, classes: Mapping[str, C], what: str
) -> tuple[C, dict[str, Any]]:
    """The model class for the checkpoint at ``source`` (by its config's ``model_type``) and the
    ``from_pretrained`` keyword arguments (revision, cache folder); a checkpoint of another
    type is an error naming it (``what``: what was expected, e.g. "OWLv2")."""
    from transformers import AutoConfig

    common: dict[str, Any] = {"revision": spec.revision, "cache_dir": str(cache_dir)}
    model_type = AutoConfig.from_pretrained(source, **common).model_type
    if model_type not in classes:
        raise ValueError(f"{spec.model_id!r} is a {model_type!r} checkpoint, not {what}")
    return classes[model_type], common

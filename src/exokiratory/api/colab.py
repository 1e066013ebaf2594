"""What the Colab notebooks (``notebooks/``) call: open or create a workspace in one line.

:func:`setup` mounts Google Drive when it runs on Colab (``google.colab`` importable) and does
nothing of the kind elsewhere, then opens the workspace at ``root`` or creates it over
``sources``. Arguments left ``None`` come from the environment (``EXOKIRATORY_WORKSPACE``,
``EXOKIRATORY_SOURCES`` with ``os.pathsep`` between folders, ``EXOKIRATORY_MODELS``), then from the
Colab defaults (``/content/drive/MyDrive/exokiratory`` over ``/content/drive/MyDrive/photos``).
Running it again after a kernel death reopens the same workspace; every pass then resumes from
its committed parts.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from typing import Any

from exokiratory.api.workspace import Workspace
from exokiratory.core.config import render_config
from exokiratory.core.layout import CONFIG_FILE

log = logging.getLogger(__name__)

DRIVE = "/content/drive"
COLAB_ROOT = f"{DRIVE}/MyDrive/exokiratory"
COLAB_SOURCES = (f"{DRIVE}/MyDrive/photos",)
#: passes whose ``model`` a profile given to :func:`setup` sets (when the config names none)
MODEL_PASSES = (
    "embed-clip",
    "embed-dino",
    "segment",
    "segment-embed-clip",
    "segment-embed-dino",
)


def in_colab() -> bool:
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):
        return False


def mount_drive() -> bool:
    """Mount Google Drive at /content/drive on Colab; False (and nothing done) elsewhere."""
    if not in_colab():
        return False
    from google.colab import drive  # type: ignore[import-not-found]

    drive.mount(DRIVE)
    return True


def setup(
    root: str | None = None,
    sources: Sequence[str] | None = None,
    *,
    models: str | None = None,
    mount: bool = True,
) -> Workspace:
    """Open the workspace at ``root`` (creating it over ``sources`` when it does not exist)."""
    colab = mount_drive() if mount else in_colab()
    root = root or os.environ.get("EXOKIRATORY_WORKSPACE") or (COLAB_ROOT if colab else None)
    if not root:
        raise ValueError("no workspace root: pass root=... or set EXOKIRATORY_WORKSPACE")
    if sources is None:
        env = os.environ.get("EXOKIRATORY_SOURCES")
        sources = env.split(os.pathsep) if env else (list(COLAB_SOURCES) if colab else [])
    models = models or os.environ.get("EXOKIRATORY_MODELS") or None
    from exokiratory.core.storage import Storage

    if Storage(root).exists(CONFIG_FILE):
        ws = Workspace(root)
    else:
        if not sources:
            raise ValueError(
                f"{root} is not a workspace yet: give sources=[...] (image folders) or set "
                "EXOKIRATORY_SOURCES"
            )
        ws = Workspace.init(root, list(sources))
        log.info("created workspace %s over %s", root, ", ".join(sources))
    if models:
        for name in MODEL_PASSES:
            if "model" not in ws.config.passes.get(name, {}):
                ws = configure(ws, name, model=models)
    return ws


def configure(ws: Workspace, name: str, **params: Any) -> Workspace:
    """Merge ``params`` into ``passes.<name>`` of the config (validated first), write it, and
    return the reopened workspace."""
    from exokiratory.engine.registry import get_pass

    merged = {**ws.config.passes.get(name, {}), **params}
    get_pass(name, merged)  # raises with the key named when a value is wrong
    ws.config.passes[name] = merged
    ws.storage.write_bytes_atomic(CONFIG_FILE, render_config(ws.config).encode("utf-8"))
    return Workspace(ws.storage.url, ws.storage.storage_options)

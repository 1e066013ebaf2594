"""Workspace layout: every relative path the workspace uses, in one place (see DESIGN.md)."""

from __future__ import annotations

CONFIG_FILE = "exokiratory.yaml"

IMAGES = "manifests/images"
PATHS = "manifests/paths"
FLAGS = "manifests/flags"
JOBS = "manifests/jobs"
SCAN_LOCK = "manifests/.scan.lock"
DATA_IMAGES = "data/images"

#: Folders created by ``init`` (DESIGN.md "Workspace layout").
DIRECTORIES: tuple[str, ...] = (
    "data/images",
    IMAGES,
    PATHS,
    FLAGS,
    JOBS,
    "features/global",
    "features/tiles",
    "features/objects",
    "embeddings",
    "segments/masks",
    "segments/embeddings",
    "clusters",
    "captions",
    "semantics/ocr",
    "semantics/depth",
    "semantics/detect",
    "synthesis",
    "probes",
    "prompts",
    "indices",
    "reports",
    "logs",
    "cache",
)

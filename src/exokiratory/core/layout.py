"""Workspace layout: every relative path the workspace uses, in one place (docs/architecture.md)."""

from __future__ import annotations

CONFIG_FILE = "exokiratory.yaml"

IMAGES = "manifests/images"
PATHS = "manifests/paths"
FLAGS = "manifests/flags"
JOBS = "manifests/jobs"
SCAN_LOCK = "manifests/.scan.lock"
DATA_IMAGES = "data/images"

#: PASS 8, generative probing: img2img / ControlNet outputs and their re-embeddings. The family
#: is called ``genprobe`` everywhere (folder, pass names, views ``genprobe_*``) so it is never
#: confused with ``probe``, the decode check of every image.
GENPROBE = "genprobe"

#: Folders created by ``init`` (docs/architecture.md "Storage layout").
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
    GENPROBE,
    "prompts",
    "indices",
    "reports",
    "logs",
    "cache",
)

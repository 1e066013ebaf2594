"""Workspace configuration (``exokiratory.yaml``), validated by pydantic on every command."""

from __future__ import annotations

import json
import os
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from exokiratory.core.layout import CONFIG_FILE
from exokiratory.core.storage import Storage

#: Pillow's own default decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS of 89.5 Mpx).
DEFAULT_MAX_PIXELS = 178_956_970


class ConfigError(ValueError):
    """The workspace configuration is missing or invalid; the message says what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Source(_Strict):
    """A folder or URL holding images. Scanned recursively."""

    path: str = Field(description="local folder (a mounted Drive folder too) or fsspec URL")
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("a source path must not be empty")
        return v


class ScanConfig(_Strict):
    batch_size: int = Field(2000, gt=0, description="files hashed per committed batch")
    hash_workers: int = Field(4, gt=0, le=256, description="threads reading and hashing files")
    follow_symlinks: bool = True
    include_hidden: bool = False
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="decompression-bomb limit")
    lock_ttl_seconds: int = Field(120, gt=0, description="a scan lock older than this is stale")


class RunConfig(_Strict):
    engine: Literal["local", "ray"] = "local"
    workers: int | None = Field(None, gt=0, description="processes; default: all cores")
    batch_size: int = Field(256, gt=0, description="units per part file")
    ray_address: str | None = Field(None, description="Ray cluster address; default: local Ray")
    compact_min_parts: int = Field(
        32,
        ge=0,
        description="compact a dataset after a run once it has this many small parts (0: never)",
    )
    compact_target_mb: int = Field(512, gt=0, description="size of a compacted part (MB)")


class WorkspaceConfig(_Strict):
    version: Literal[1] = 1
    sources: list[Source] = Field(default_factory=list)
    scan: ScanConfig = Field(default_factory=ScanConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    passes: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-pass parameters, by pass name"
    )


def format_validation_error(err: ValidationError, where: str) -> str:
    """One line per problem, naming the key path, what is wrong, and what is allowed."""
    lines = [f"{where}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(e["loc"][:-1])
            msg = f"unknown key; allowed here: {', '.join(allowed)}"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = WorkspaceConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        candidates = [ann, *args]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if model is None:
            return []
    return sorted(model.model_fields)


def parse_config(text: str, where: str = CONFIG_FILE) -> WorkspaceConfig:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: the top level must be a mapping of keys, not {type(data).__name__}"
        )
    try:
        return WorkspaceConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from exc


def load_config(storage: Storage) -> WorkspaceConfig:
    try:
        present = storage.exists(CONFIG_FILE)
    except Exception as exc:  # an unreachable endpoint, bad credentials...: one clear line
        raise ConfigError(
            f"cannot reach the workspace {storage.url}: {type(exc).__name__}: {exc} "
            "(check its URL, endpoint and credentials: --storage-option KEY=VALUE or "
            "EXOKIRATORY_STORAGE_OPTIONS)"
        ) from None
    if not present:
        raise ConfigError(
            f"{storage.url} is not an exokiratory workspace (no {CONFIG_FILE}); "
            "create one with `exokiratory init WORKSPACE --source DIR`"
        )
    return parse_config(
        storage.read_bytes(CONFIG_FILE).decode("utf-8"), f"{storage.url}/{CONFIG_FILE}"
    )


CONFIG_TEMPLATE = """\
# exokiratory workspace configuration. Validated on every command: unknown keys are errors.
# Edit freely; `exokiratory status` re-reads it. Docs: README.md "Configuration".
version: 1

# Where the images are. Local folders (a mounted Google Drive folder is a local path) or fsspec
# URLs (s3://bucket/prefix, gs://..., memory://...). Scanned recursively; image-ness is decided by
# magic bytes, not by extension.
sources:
{sources}
scan:
  batch_size: {scan.batch_size}           # files hashed per committed batch (one part file each)
  hash_workers: {scan.hash_workers}           # threads reading + hashing (I/O bound: more helps on Drive/S3)
  follow_symlinks: {follow}     # loops are detected and skipped
  include_hidden: {hidden}     # files and folders whose names start with '.'
  max_image_pixels: {scan.max_image_pixels}  # larger images are recorded as decompression bombs
  lock_ttl_seconds: {scan.lock_ttl_seconds}    # a scan lock not refreshed for this long is stale

run:
  engine: {run.engine}        # local | ray
  workers: {workers}         # processes for CPU passes; null = all cores
  batch_size: {run.batch_size}       # units per part file
  ray_address: {ray}     # null = start a local Ray instance
  compact_min_parts: {run.compact_min_parts}   # compact a dataset after a run at this many small parts (0 = never)
  compact_target_mb: {run.compact_target_mb}  # size of a compacted part file

# Per-pass parameters, by pass name, e.g.
# passes:
#   probe: {{}}
passes: {{}}
"""


def render_config(cfg: WorkspaceConfig) -> str:
    """The commented YAML text for a configuration (used by ``init``)."""
    if cfg.sources:
        src_lines = []
        for s in cfg.sources:
            src_lines.append(f"  - path: {json.dumps(s.path)}")
            if s.storage_options:
                opts = json.dumps(s.storage_options)
                src_lines.append(f"    storage_options: {opts}")
        sources = "\n".join(src_lines)
    else:
        sources = "  []"
    text = CONFIG_TEMPLATE.format(
        sources=sources,
        scan=cfg.scan,
        run=cfg.run,
        follow=str(cfg.scan.follow_symlinks).lower(),
        hidden=str(cfg.scan.include_hidden).lower(),
        workers="null" if cfg.run.workers is None else cfg.run.workers,
        ray="null" if cfg.run.ray_address is None else cfg.run.ray_address,
    )
    if cfg.passes:
        text = text.replace("passes: {}\n", yaml.safe_dump({"passes": cfg.passes}, sort_keys=True))
    # The rendered text must round-trip to the same configuration.
    if parse_config(text) != cfg:
        raise ConfigError("internal error: rendered configuration does not round-trip")
    return text


def default_workers() -> int:
    return max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )

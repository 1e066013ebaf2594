"""What the ``genprobe`` pass generates from: its units (exemplars x conditioning x strength x
seed, with their prompt and depth map), the init and control images, and the stored encoding.

* **Exemplars**: the ``is_exemplar`` images of ``clusters_<space>`` at one level (``level``:
  0 = finest, -1 = coarsest, the default), the ``exemplars_per_cluster`` closest to their
  centroid per cluster, largest clusters first, at most ``max_exemplars``.
* **Unit key** ``gen_id`` = ``<image_id>-<conditioning>-s<strength x 1000>-r<seed>``
  (deterministic; a rerun plans exactly the missing ones).
* **Prompt**: the exemplar's caption when the ``captions`` view has one (factual first, newest
  prompt version; ``prompt_source`` = ``caption``, ``prompt_id`` / ``prompt_version`` = the caption
  prompt's), else the registry prompt ``prompt`` (``genprobe_v1`` in
  ``prompts/prompt_registry.yaml``; ``prompt_source`` = ``registry``). Its text may not change
  while its version stays the same (:mod:`exokiratory.core.prompts.versions`).
* **Init image**: the exemplar decoded (EXIF orientation applied), its shorter side resized to
  ``size`` and centre-cropped to ``size x size``.
* **Control images**: ``depth``: the PASS 6 depth map (0 near .. 1 far) turned into the
  ControlNet's convention (near = white), resized and cropped like the init image; ``canny``:
  OpenCV's Canny edges of the init image (``canny_low`` / ``canny_high``), white on black.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

from exokiratory.core.prompts.registry import CaptionPrompt, PromptRegistryError

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog
    from exokiratory.core.storage import Storage

PATHS_SQL = "image_paths"

EXEMPLARS_SQL = """
WITH c AS (SELECT * FROM clusters_{space} WHERE level = {level}),
     sizes AS (SELECT cluster_id, count(*) AS size FROM c GROUP BY 1),
     ex AS (SELECT c.image_id, c.image_idx, c.cluster_id, c.level, c.similarity, s.size
            FROM c JOIN sizes s USING (cluster_id) WHERE c.is_exemplar
            QUALIFY row_number() OVER (PARTITION BY c.cluster_id
                                       ORDER BY c.similarity DESC, c.image_id) <= {per})
SELECT ex.image_id, ex.image_idx, ex.cluster_id, ex.level, p.path, p.source
FROM ex LEFT JOIN {paths} p USING (image_id)
ORDER BY ex.size DESC, ex.cluster_id, ex.similarity DESC, ex.image_id
LIMIT {limit}
"""

CAPTION_SQL = """
SELECT image_id, text, prompt_id, prompt_version, caption_id FROM captions
WHERE unit_kind = 'image' AND error IS NULL AND text IS NOT NULL AND trim(text) <> ''
QUALIFY row_number() OVER (PARTITION BY image_id
        ORDER BY caption_pass = 'factual' DESC, prompt_version DESC, caption_id) = 1
"""

DEPTH_SQL = """
SELECT image_id, depth_map, depth_map_height, depth_map_width, model_id AS depth_model_id
FROM depth WHERE error IS NULL AND depth_map IS NOT NULL
"""

CANNY_MODEL = "opencv-canny"

UNIT_SCHEMA = pa.schema(
    [
        pa.field("gen_id", pa.string(), nullable=False),
        pa.field("image_idx", pa.int64(), nullable=False),
        pa.field("exemplar_id", pa.string(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("source", pa.string()),
        pa.field("cluster_id", pa.int32()),
        pa.field("cluster_level", pa.int8()),
        pa.field("conditioning", pa.string()),
        pa.field("strength", pa.float32()),
        pa.field("seed", pa.int64()),
        pa.field("prompt_source", pa.string()),
        pa.field("prompt_id", pa.string()),
        pa.field("prompt_version", pa.string()),
        pa.field("prompt_text", pa.string()),
        pa.field("depth_map", pa.list_(pa.float32())),  # float16 is not registrable in DuckDB
        pa.field("depth_map_height", pa.int32()),
        pa.field("depth_map_width", pa.int32()),
        pa.field("depth_model_id", pa.string()),
    ]
)
"""Columns of a unit (no ``image_id`` column: the planner names a batch's part from the keys of
its first column, ``gen_id``, so batches of one exemplar's many generations never collide)."""


def gen_id(image_id: str, conditioning: str, strength: float, seed: int) -> str:
    """The deterministic key of one generation."""
    return f"{image_id}-{conditioning}-s{round(strength * 1000):04d}-r{seed}"


def registry_prompt(storage: Storage, prompt_id: str) -> CaptionPrompt:
    """The registry prompt ``prompt_id`` (from the workspace registry; from the packaged default
    when an older workspace copy lacks it), checked against its version record."""
    from exokiratory.core.prompts.registry import (
        default_registry_text,
        load_registry,
        parse_registry,
    )
    from exokiratory.core.prompts.versions import check_caption_prompt

    registry = load_registry(storage)
    try:
        prompt = registry.caption_prompt(prompt_id)
    except PromptRegistryError:
        default = parse_registry(default_registry_text(), "packaged prompt_registry.yaml")
        if prompt_id not in {p.id for p in default.caption_prompts}:
            raise
        prompt = default.caption_prompt(prompt_id)
    check_caption_prompt(storage, prompt)
    return prompt


def resolve_level(catalog: Catalog, space: str, level: int) -> int:
    """The stored level ``level`` names (negative: from the coarsest, -1 = coarsest).

    Raises:
        RuntimeError: "run clusters-<space> first" when the clusters are missing or empty.
    """
    view = f"clusters_{space}"
    levels = []
    if view in catalog.views:
        levels = sorted(int(r[0]) for r in catalog.rows(f"SELECT DISTINCT level FROM {view}"))
    if not levels:
        raise RuntimeError(
            f"genprobe probes cluster exemplars: run `exokiratory run clusters-{space}` first"
        )
    if not -len(levels) <= level < len(levels):
        raise ValueError(f"passes.genprobe.level: {level} is not one of the levels {levels}")
    return levels[level]


def exemplar_rows(
    catalog: Catalog, space: str, level: int, per: int, limit: int
) -> list[dict[str, Any]]:
    """The exemplars to probe with their path, caption and depth map (see the module
    docstring); ``caption`` / ``depth`` keys are None when absent."""
    lv = resolve_level(catalog, space, level)
    rows = catalog.query(
        EXEMPLARS_SQL.format(space=space, level=lv, per=int(per), limit=int(limit), paths=PATHS_SQL)
    ).to_pylist()
    captions: dict[str, dict[str, Any]] = {}
    if "captions" in catalog.views:
        captions = {r["image_id"]: r for r in catalog.query(CAPTION_SQL).to_pylist()}
    depths: dict[str, dict[str, Any]] = {}
    if "depth" in catalog.views:
        depths = {r["image_id"]: r for r in catalog.query(DEPTH_SQL).to_pylist()}
    for r in rows:
        r["caption"] = captions.get(r["image_id"])
        r["depth"] = depths.get(r["image_id"])
    return rows


def unit_table(
    exemplars: list[dict[str, Any]],
    conditionings: tuple[str, ...],
    strengths: tuple[float, ...],
    seeds: tuple[int, ...],
    prompt: CaptionPrompt,
    use_captions: bool,
) -> pa.Table:
    """Every generation of every exemplar, in (exemplar, conditioning, strength, seed) order."""
    out: list[dict[str, Any]] = []
    for ex in exemplars:
        cap = ex["caption"] if use_captions else None
        depth = ex["depth"] or {}
        base = {
            "image_idx": ex["image_idx"],
            "exemplar_id": ex["image_id"],
            "path": ex["path"],
            "source": ex["source"],
            "cluster_id": ex["cluster_id"],
            "cluster_level": ex["level"],
            "prompt_source": "caption" if cap else "registry",
            "prompt_id": cap["prompt_id"] if cap else prompt.id,
            "prompt_version": cap["prompt_version"] if cap else prompt.version,
            "prompt_text": cap["text"] if cap else prompt.text,
        }
        for kind in conditionings:
            extra = {
                "depth_map": depth.get("depth_map") if kind == "depth" else None,
                "depth_map_height": depth.get("depth_map_height") if kind == "depth" else None,
                "depth_map_width": depth.get("depth_map_width") if kind == "depth" else None,
                "depth_model_id": depth.get("depth_model_id") if kind == "depth" else None,
            }
            for strength in strengths:
                for seed in seeds:
                    key = gen_id(ex["image_id"], kind, strength, seed)
                    out.append(
                        base
                        | extra
                        | {
                            "gen_id": key,
                            "conditioning": kind,
                            "strength": strength,
                            "seed": seed,
                        }
                    )
    return pa.Table.from_pylist(out, schema=UNIT_SCHEMA)


# -- images ----------------------------------------------------------------------------------------
def square(img: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """Shorter side resized to ``size``, centre-cropped to ``size x size``."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), resample=resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def init_image(data: bytes, size: int, max_pixels: int) -> Image.Image:
    """The exemplar's file bytes -> the ``size x size`` RGB init image.

    Raises:
        ValueError: for an image over ``max_pixels`` (a decompression bomb); PIL's errors for a
            file that cannot be decoded.
    """
    with Image.open(io.BytesIO(data)) as im:
        if im.width * im.height > max_pixels:
            raise ValueError("decompression bomb: over the pixel limit")
        im.draft("RGB", (size * 2, size * 2))
        rgb = ImageOps.exif_transpose(im).convert("RGB")
    return square(rgb, size, Image.Resampling.BICUBIC)


def depth_control(unit: dict[str, Any], size: int) -> Image.Image:
    """The ControlNet depth image (near = white) from the unit's stored depth map.

    Raises:
        ValueError: when the exemplar has no depth map (naming what to run).
    """
    values = unit.get("depth_map")
    h, w = unit.get("depth_map_height"), unit.get("depth_map_width")
    if values is None or not h or not w:
        raise ValueError(
            "no depth map for this exemplar: run `exokiratory run depth` first (depth runs on "
            "the routed photographs; `run depth --all` takes every image)"
        )
    m = np.asarray(values, np.float32).reshape(int(h), int(w))
    grey = np.clip(np.rint((1.0 - m) * 255.0), 0, 255).astype(np.uint8)
    img = Image.fromarray(grey).convert("RGB")
    return square(img, size, Image.Resampling.BILINEAR)


def canny_control(init: Image.Image, low: int, high: int) -> Image.Image:
    """Canny edges of the init image (white on black, RGB), with OpenCV."""
    try:
        import cv2
    except ImportError as exc:
        raise RuntimeError(
            "canny conditioning needs OpenCV: pip install 'exokiratory[cues]'"
        ) from exc
    grey = np.asarray(init.convert("L"))
    edges = cv2.Canny(grey, int(low), int(high))
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def encode(rgb: np.ndarray, fmt: str, quality: int) -> bytes:
    """``(H, W, 3)`` uint8 -> PNG (lossless) or WebP (``quality``) bytes; deterministic."""
    buf = io.BytesIO()
    img = Image.fromarray(rgb)
    if fmt == "png":
        img.save(buf, "PNG", compress_level=6)
    else:
        img.save(buf, "WEBP", quality=int(quality), method=4)
    return buf.getvalue()

"""The pictures a captioner sees: a whole image, or a segment's masked crop.

A batch of caption units is grouped by image (:func:`by_image`); each group's file is read
**once**, then

* an image unit is the image decoded at a working size of ``image_side`` (longer side, never
  upscaled) with :func:`exokiratory.core.decode.load_working_image` (EXIF orientation, every
  mode, alpha on white, decompression-bomb guard), independent of the segments beside it;
* segment units share one decode to the mask raster
  (:func:`exokiratory.passes.segment_embed.crops.decode_at_mask_size`) and one RLE decode of
  their masks, and each becomes the square masked crop of
  :func:`exokiratory.passes.segment_embed.crops.masked_crop` (box grown by ``margin``, pixels
  outside the mask and the padding set to ``fill``), exactly as segment embeddings see it.

A unit that cannot be read or decoded becomes its error text (a row, never a crash).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from exokiratory.core.decode import load_working_image
from exokiratory.engine.step import BatchContext
from exokiratory.passes.segment.rle import decode_rle_batch
from exokiratory.passes.segment_embed import crops
from exokiratory.passes.segment_embed.crops import RGB


@dataclass(frozen=True)
class CropSpec:
    """How pictures are made (picklable; part of the pass parameters)."""

    image_side: int
    margin: float
    fill: RGB
    max_pixels: int


def by_image(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Units grouped by image, groups in order of first appearance: ``{"image_id", "rows"}``
    where each row carries its position in the batch as ``"_i"``."""
    groups: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        g = groups.setdefault(row["image_id"], {"image_id": row["image_id"], "rows": []})
        g["rows"].append({**row, "_i": i})
    return list(groups.values())


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def pictures(group: dict[str, Any], ctx: BatchContext, spec: CropSpec) -> list[Image.Image | str]:
    """The picture (or error text) of every unit of one image group, in its row order."""
    rows = group["rows"]
    first = rows[0]
    try:
        data = ctx.read_bytes(first["path"], first.get("source"))
    except Exception as exc:
        return [_error(exc)] * len(rows)
    out: dict[int, Image.Image | str] = {}
    images = [r for r in rows if r["unit_kind"] == "image"]
    segments = [r for r in rows if r["unit_kind"] == "segment"]
    for r in images:
        try:
            rgb = load_working_image(data, spec.image_side, spec.max_pixels).rgb
            out[r["_i"]] = Image.fromarray(rgb, mode="RGB")
        except Exception as exc:
            out[r["_i"]] = _error(exc)
    if segments:
        out.update(
            zip((r["_i"] for r in segments), segment_crops(data, segments, spec), strict=True)
        )
    return [out[r["_i"]] for r in rows]


def segment_crops(
    data: bytes, rows: list[dict[str, Any]], spec: CropSpec
) -> list[Image.Image | str]:
    """The masked crops of one image's segments (one image decode, one mask decode)."""
    height, width = int(rows[0]["mask_height"]), int(rows[0]["mask_width"])
    try:
        if len({(int(r["mask_height"]), int(r["mask_width"])) for r in rows}) != 1:
            raise ValueError("segments of one image disagree on the mask raster")
        rgb = crops.decode_at_mask_size(data, width, height, spec.max_pixels)
        masks = decode_rle_batch([r["rle_counts"] for r in rows], height, width)
    except Exception as exc:
        return [_error(exc)] * len(rows)
    out: list[Image.Image | str] = []
    for row, mask in zip(rows, masks, strict=True):
        try:
            crop = crops.masked_crop(rgb, mask, row["bbox"], spec.margin, spec.fill)
            out.append(Image.fromarray(crop, mode="RGB"))
        except Exception as exc:
            out.append(_error(exc))
    return out


def encoded_group(
    group: dict[str, Any],
    ctx: BatchContext,
    spec: CropSpec,
    encode: Callable[[Image.Image, str], Any],
    prompts: dict[str, str],
) -> list[tuple[int, Any]]:
    """``(row position, model inputs or error text)`` for every unit of one image group:
    the pictures, each encoded with the prompt of its unit kind (runs in a decode thread)."""
    out: list[tuple[int, Any]] = []
    for row, pic in zip(group["rows"], pictures(group, ctx, spec), strict=True):
        if isinstance(pic, str):
            out.append((row["_i"], pic))
            continue
        try:
            out.append((row["_i"], encode(pic, prompts[row["unit_kind"]])))
        except Exception as exc:
            out.append((row["_i"], _error(exc)))
    return out


def fill_colour(fill: str, image_mean: tuple[float, float, float]) -> RGB:
    """The crop fill: the model's normalisation mean (``model_mean``) or a fixed colour."""
    from exokiratory.passes.segment_embed.step import FIXED_FILLS

    if fill == "model_mean":
        return crops.mean_fill(image_mean)
    return FIXED_FILLS[fill]

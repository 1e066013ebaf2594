"""Automatic mask generation with SAM: point grids at several scales, no labels.

Follows ``SamAutomaticMaskGenerator`` of the SAM reference code (segment-anything), top down:

1. :func:`crop_boxes`: the whole image (layer 0) plus, per crop layer ``i``, ``2^i x 2^i``
   overlapping crops; :func:`point_grids`: a regular grid per layer (``points_per_side /
   downscale^i`` per side, points at the cell centres).
2. For each crop (:meth:`MaskGenerator._crop`): crop, resize to the model input and compute the
   image embedding **once**; decode the crop's grid points in batches of ``points_per_batch``
   single-point prompts (three multimask outputs each).
3. For each batch (:meth:`MaskGenerator._batch`): drop outputs with predicted IoU <=
   ``pred_iou_thresh``; upscale the kept low-res logits to the crop (model input -> unpadded
   resize -> crop size, bilinear, as SAM's ``postprocess_masks``); drop those with stability
   score <= ``stability_score_thresh``; binarise at logit 0; drop masks whose box touches an
   inner crop edge (within ``20 px at 1500 px`` of the long side, scaled to the raster).
4. Per crop: box NMS (``box_nms_thresh``, scored by predicted IoU). Across crops: box NMS
   (``crop_nms_thresh``) preferring masks from smaller crops (score ``1 / crop area``).
5. :func:`finalize` (exokiratory's own filters): drop masks below ``min_area_fraction`` or
   thinner than ``min_thickness_pixels``; order by predicted IoU (then stability, area,
   position), keep ``max_masks_per_image``; measure geometry and RLE-encode the survivors.

Everything is in the mask raster (the image as given to :meth:`MaskGenerator.generate`).
:class:`Timings` splits the time spent into model forwards and everything else.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from itertools import product
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from exokiratory.passes.segment.geometry import Geometry, measure
from exokiratory.passes.segment.params import MaskGenerationParams
from exokiratory.passes.segment.rle import encode_rle_batch

#: SAM's crop-edge tolerance: 20 px for an image whose long side is 1500 px
CROP_EDGE_TOLERANCE = 20 / 1500
#: masks upscaled per interpolation call (bounds memory: 32 x 1024^2 float32 = 128 MiB)
UPSCALE_CHUNK = 32


class PromptableSegmenter(Protocol):
    """What the generator needs of a model (see :class:`exokiratory.models.sam.Segmenter`)."""

    def pixels(self, rgb: np.ndarray) -> np.ndarray: ...

    def embed(self, pixels: np.ndarray) -> Any: ...

    def predict_points(
        self, embedding: Any, points_xy: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    @property
    def geometry(self) -> Any: ...


@dataclass
class Timings:
    """Seconds spent in model forwards (image encoder, prompt encoder, mask decoder) and in
    everything else (upscaling, thresholds, stability, boxes, NMS, filters, geometry, RLE)."""

    model_seconds: float = 0.0
    post_seconds: float = 0.0
    n_candidates: int = 0

    def add(self, other: Timings) -> None:
        self.model_seconds += other.model_seconds
        self.post_seconds += other.post_seconds
        self.n_candidates += other.n_candidates


@dataclass(frozen=True)
class CropMasks:
    """Masks kept from one crop, still in crop coordinates."""

    masks: np.ndarray  # (n, crop h, crop w) bool
    boxes: np.ndarray  # (n, 4) float64 x0, y0, x1, y1 (exclusive) in raster coordinates
    predicted_iou: np.ndarray  # (n,) float32
    stability_score: np.ndarray  # (n,) float32
    crop_box: tuple[int, int, int, int]
    crop_layer: int
    points_per_side: int

    def take(self, idx: np.ndarray) -> CropMasks:
        return CropMasks(
            self.masks[idx],
            self.boxes[idx],
            self.predicted_iou[idx],
            self.stability_score[idx],
            self.crop_box,
            self.crop_layer,
            self.points_per_side,
        )


@dataclass(frozen=True)
class GeneratedMasks:
    """The final masks of one image, in ``mask_index`` order."""

    height: int
    width: int
    rle_counts: list[bytes]
    geometry: Geometry
    predicted_iou: np.ndarray  # float32
    stability_score: np.ndarray  # float32
    crop_layer: np.ndarray  # int8
    points_per_side: np.ndarray  # int16
    timings: Timings = field(default_factory=Timings)

    def __len__(self) -> int:
        return len(self.rle_counts)


# -- layout of crops and prompts -----------------------------------------------------------


def crop_boxes(
    height: int, width: int, n_layers: int, overlap_ratio: float
) -> list[tuple[tuple[int, int, int, int], int]]:
    """``((x0, y0, x1, y1), layer)`` for the whole image and every crop (SAM's layout)."""
    out: list[tuple[tuple[int, int, int, int], int]] = [((0, 0, width, height), 0)]
    short = min(height, width)
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + width) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + height) / per_side)
        xs = [int((crop_w - overlap) * i) for i in range(per_side)]
        ys = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(xs, ys):
            out.append(((x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)), layer))
    return out


def point_grid(n_per_side: int) -> np.ndarray:
    """``(n^2, 2)`` points at the centres of an ``n x n`` grid over ``[0, 1]^2`` (x, y)."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def points_per_side_at(params: MaskGenerationParams, layer: int) -> int:
    return int(params.points_per_side / params.crop_n_points_downscale_factor**layer)


# -- small pure steps ----------------------------------------------------------------------


def stability_score(logits: torch.Tensor, offset: float) -> torch.Tensor:
    """IoU between the masks thresholded at ``+offset`` and at ``-offset`` (SAM's definition).

    On the CPU the counts run in numpy (``count_nonzero`` is ~6x faster than torch's sum)."""
    if logits.device.type == "cpu":
        x = logits.numpy()
        inter_np = np.count_nonzero(x > offset, axis=(1, 2))
        union_np = np.count_nonzero(x > -offset, axis=(1, 2))
        score = np.where(union_np > 0, inter_np / np.maximum(union_np, 1), 0.0)
        return torch.from_numpy(score.astype(np.float32))
    inter = (logits > offset).sum(dim=(-1, -2), dtype=torch.int64)
    union = (logits > -offset).sum(dim=(-1, -2), dtype=torch.int64)
    zero = torch.zeros_like(inter, dtype=torch.float64)
    return torch.where(union > 0, inter / union.clamp_min(1), zero).float()


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """``(n, 4)`` x0, y0, x1, y1 (exclusive) boxes of ``(n, h, w)`` masks; zeros when empty."""
    rows = np.asarray(masks.any(axis=2))
    cols = np.asarray(masks.any(axis=1))
    has = rows.any(axis=1)
    y0 = rows.argmax(axis=1)
    y1 = rows.shape[1] - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = cols.shape[1] - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([x0, y0, x1, y1], axis=1).astype(np.float64)
    boxes[~has] = 0
    return boxes


def near_crop_edge(
    boxes: np.ndarray, crop: tuple[int, int, int, int], image: tuple[int, int, int, int], tol: float
) -> np.ndarray:
    """Boxes (raster coordinates) within ``tol`` of an edge of the crop that is not an edge
    of the image: SAM drops those masks, the crop cut the object."""
    crop_a = np.asarray(crop, np.float64)[None]
    image_a = np.asarray(image, np.float64)[None]
    near_crop = np.abs(boxes - crop_a) <= tol
    near_image = np.abs(boxes - image_a) <= tol
    return np.any(near_crop & ~near_image, axis=1)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x0, y0, x1, y1 box with each of ``boxes`` (0 where both are empty)."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, best score first (ties: input order)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    suppressed = np.zeros(len(boxes), bool)
    keep: list[int] = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= box_iou(boxes[i], boxes) > thresh
    return np.asarray(keep, np.int64)


# -- the generator -------------------------------------------------------------------------


class MaskGenerator:
    """SAM automatic mask generation for one model and one set of parameters."""

    def __init__(self, segmenter: PromptableSegmenter, params: MaskGenerationParams) -> None:
        self.segmenter = segmenter
        self.params = params

    def generate(self, rgb: np.ndarray) -> GeneratedMasks:
        """Masks of an ``(H, W, 3)`` uint8 RGB image (the mask raster)."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
        t0 = time.perf_counter()
        timings = Timings()
        height, width = rgb.shape[:2]
        layout = crop_boxes(
            height, width, self.params.crop_n_layers, self.params.crop_overlap_ratio
        )
        crops = [self._crop(rgb, box, layer, timings) for box, layer in layout]
        merged = merge_crops(crops, self.params.crop_nms_thresh)
        out = finalize(merged, height, width, self.params)
        timings.post_seconds = time.perf_counter() - t0 - timings.model_seconds
        return GeneratedMasks(
            out.height,
            out.width,
            out.rle_counts,
            out.geometry,
            out.predicted_iou,
            out.stability_score,
            out.crop_layer,
            out.points_per_side,
            timings,
        )

    def _crop(
        self, rgb: np.ndarray, box: tuple[int, int, int, int], layer: int, timings: Timings
    ) -> CropMasks:
        x0, y0, x1, y1 = box
        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        t = time.perf_counter()
        embedding = self.segmenter.embed(self.segmenter.pixels(crop))
        timings.model_seconds += time.perf_counter() - t
        n_side = points_per_side_at(self.params, layer)
        points = point_grid(n_side) * np.array([x1 - x0, y1 - y0], np.float64)
        batch = self.params.points_per_batch
        parts = [
            self._batch(embedding, points[i : i + batch], box, rgb.shape[:2], timings)
            for i in range(0, len(points), batch)
        ]
        masks = CropMasks(
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
            np.concatenate([p[3] for p in parts]),
            box,
            layer,
            n_side,
        )
        return masks.take(nms(masks.boxes, masks.predicted_iou, self.params.box_nms_thresh))

    def _batch(
        self,
        embedding: Any,
        points: np.ndarray,
        box: tuple[int, int, int, int],
        image_hw: tuple[int, int],
        timings: Timings,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        p = self.params
        x0, y0, x1, y1 = box
        crop_h, crop_w = y1 - y0, x1 - x0
        geo = self.segmenter.geometry
        rh, rw = geo.resized_hw(crop_h, crop_w)
        model_points = points * np.array([rw / crop_w, rh / crop_h])
        t = time.perf_counter()
        logits, ious = self.segmenter.predict_points(embedding, model_points)
        timings.model_seconds += time.perf_counter() - t
        logits = logits.flatten(0, 1)
        ious = ious.flatten(0, 1)
        timings.n_candidates += int(ious.numel())
        if p.pred_iou_thresh > 0:
            keep = ious > p.pred_iou_thresh
            logits, ious = logits[keep], ious[keep]
        up = upscale_logits(logits, geo.input_size, (rh, rw), (crop_h, crop_w))
        stability = stability_score(up, p.stability_score_offset)
        if p.stability_score_thresh > 0:
            keep = stability > p.stability_score_thresh
            up, ious, stability = up[keep], ious[keep], stability[keep]
        masks = (up > 0).cpu().numpy()
        ious, stability = ious.cpu(), stability.cpu()
        boxes = mask_boxes(masks) + np.array([x0, y0, x0, y0], np.float64)
        boxes[~masks.any(axis=(1, 2))] = 0
        tol = CROP_EDGE_TOLERANCE * max(image_hw)
        cut = near_crop_edge(boxes, box, (0, 0, image_hw[1], image_hw[0]), tol)
        keep_np = ~cut
        return (
            masks[keep_np],
            boxes[keep_np],
            ious.numpy()[keep_np].astype(np.float32),
            stability.numpy()[keep_np].astype(np.float32),
        )


def upscale_logits(
    logits: torch.Tensor, input_size: int, resized_hw: tuple[int, int], out_hw: tuple[int, int]
) -> torch.Tensor:
    """Low-res logits over the square model input -> logits over the crop (SAM's
    ``postprocess_masks``: bilinear to the input size, drop the padding, bilinear to the crop
    size). Only the low-res rows/columns that reach the unpadded region are upscaled (the
    same values: bilinear at an exact integer scale reads at most one cell past the edge), and
    the second resize is skipped when the sizes already match."""
    if logits.shape[0] == 0:
        return torch.zeros((0, *out_hw), device=logits.device)
    side = logits.shape[-1]
    scale = input_size // side
    rows = min(side, -(-resized_hw[0] // scale) + 1)
    cols = min(side, -(-resized_hw[1] // scale) + 1)
    exact = scale * side == input_size
    chunks = []
    for start in range(0, logits.shape[0], UPSCALE_CHUNK):
        x = logits[start : start + UPSCALE_CHUNK, None].float()
        if exact:
            x = F.interpolate(
                x[..., :rows, :cols],
                scale_factor=float(scale),
                mode="bilinear",
                align_corners=False,
                recompute_scale_factor=False,
            )
        else:
            x = F.interpolate(x, (input_size, input_size), mode="bilinear", align_corners=False)
        x = x[..., : resized_hw[0], : resized_hw[1]]
        if tuple(x.shape[-2:]) != tuple(out_hw):
            x = F.interpolate(x, out_hw, mode="bilinear", align_corners=False)
        chunks.append(x[:, 0])
    return torch.cat(chunks)


# -- merging and final filters ------------------------------------------------------------


@dataclass(frozen=True)
class Candidates:
    """Masks of several crops after cross-crop NMS (each still in its crop's coordinates)."""

    crops: list[CropMasks]
    crop_index: np.ndarray  # which crop each candidate comes from
    row: np.ndarray  # its row within that crop


def merge_crops(crops: list[CropMasks], thresh: float) -> Candidates:
    """Cross-crop NMS preferring masks from smaller crops (SAM: score ``1 / crop area``)."""
    crop_index = np.concatenate([np.full(len(c.boxes), i, np.int64) for i, c in enumerate(crops)])
    row = np.concatenate([np.arange(len(c.boxes), dtype=np.int64) for c in crops])
    if len(crops) <= 1 or len(row) == 0:
        return Candidates(crops, crop_index, row)
    boxes = np.concatenate([c.boxes for c in crops])
    areas = np.array(
        [(c.crop_box[2] - c.crop_box[0]) * (c.crop_box[3] - c.crop_box[1]) for c in crops],
        np.float64,
    )
    keep = nms(boxes, 1.0 / areas[crop_index], thresh)
    keep = np.sort(keep)  # keep crop order; finalize decides the final order
    return Candidates(crops, crop_index[keep], row[keep])


def finalize(
    cands: Candidates, height: int, width: int, params: MaskGenerationParams
) -> GeneratedMasks:
    """Area filter, uncrop, geometry, thickness filter, order, cap, RLE (module docstring)."""
    areas = np.array(
        [
            int(cands.crops[c].masks[r].sum())
            for c, r in zip(cands.crop_index, cands.row, strict=True)
        ],
        np.int64,
    )
    big = (areas > 0) & (areas >= params.min_area_fraction * height * width)
    crop_index, row = cands.crop_index[big], cands.row[big]
    masks = np.zeros((len(row), height, width), bool)
    for k, (c, r) in enumerate(zip(crop_index, row, strict=True)):
        x0, y0, x1, y1 = cands.crops[c].crop_box
        masks[k, y0:y1, x0:x1] = cands.crops[c].masks[r]
    iou = _gather(cands, crop_index, row, "predicted_iou", np.float32)
    stab = _gather(cands, crop_index, row, "stability_score", np.float32)
    layer = np.array([cands.crops[c].crop_layer for c in crop_index], np.int8)
    grid = np.array([cands.crops[c].points_per_side for c in crop_index], np.int16)
    geo = measure(masks)
    thick = geo.thickness >= params.min_thickness_pixels
    bbox = geo.bbox
    order = np.lexsort((bbox[:, 0], bbox[:, 1], -geo.area_pixels, -stab, -iou))
    order = order[thick[order]][: params.max_masks_per_image]
    masks = masks[order]
    return GeneratedMasks(
        height,
        width,
        encode_rle_batch(masks),
        _take_geometry(geo, order),
        iou[order],
        stab[order],
        layer[order],
        grid[order],
    )


def _gather(
    cands: Candidates, crop_index: np.ndarray, row: np.ndarray, name: str, dtype: Any
) -> np.ndarray:
    return np.array(
        [getattr(cands.crops[c], name)[r] for c, r in zip(crop_index, row, strict=True)], dtype
    )


def _take_geometry(geo: Geometry, idx: np.ndarray) -> Geometry:
    return Geometry(**{k: getattr(geo, k)[idx] for k in geo.__dataclass_fields__})

"""Parameters of automatic mask generation (validated up front; no torch needed).

Defaults are the seed defaults of ``SamAutomaticMaskGenerator`` in the SAM paper's reference
code (segment-anything), except ``crop_n_layers``: 1 here instead of 0, so that every image is
segmented at two scales (the whole image with a 32 x 32 point grid, and 2 x 2 overlapping crops
of about half the image each, with their own 32 x 32 grids), which the pass is meant to produce.
The filters after the SAM filters (area fraction, thickness, cap) are exokiratory's own.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MaskGenerationParams(BaseModel):
    """How masks are generated, filtered and de-duplicated (see module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mask_max_side: int = Field(
        1024,
        ge=16,
        le=8192,
        description="long side of the mask raster: images larger than this are resized down "
        "(aspect kept) before segmentation; masks, bboxes and geometry are in this raster",
    )
    points_per_side: int = Field(
        32, ge=1, le=128, description="point grid per side on the whole image (layer 0)"
    )
    points_per_batch: int = Field(64, ge=1, description="point prompts per decoder forward")
    pred_iou_thresh: float = Field(
        0.88, ge=0.0, le=1.0, description="keep masks whose predicted IoU exceeds this (0: off)"
    )
    stability_score_thresh: float = Field(
        0.95, ge=0.0, le=1.0, description="keep masks whose stability score exceeds this (0: off)"
    )
    stability_score_offset: float = Field(
        1.0, ge=0.0, description="logit offset of the stability score's two thresholds"
    )
    box_nms_thresh: float = Field(
        0.7, gt=0.0, le=1.0, description="box IoU above which masks of one crop are duplicates"
    )
    crop_n_layers: int = Field(
        1, ge=0, le=3, description="crop layers: layer i has (2^i)^2 crops (0: whole image only)"
    )
    crop_nms_thresh: float = Field(
        0.7, gt=0.0, le=1.0, description="box IoU above which masks of different crops are dups"
    )
    crop_overlap_ratio: float = Field(
        512 / 1500, ge=0.0, lt=1.0, description="overlap of neighbouring crops (of the short side)"
    )
    crop_n_points_downscale_factor: int = Field(
        1, ge=1, description="points per side shrink by this factor at each crop layer"
    )
    min_area_fraction: float = Field(
        0.0005, ge=0.0, lt=1.0, description="drop masks smaller than this fraction of the image"
    )
    min_thickness_pixels: float = Field(
        2.0, ge=0.0, description="drop masks thinner than this (2 * area / perimeter, pixels)"
    )
    max_masks_per_image: int = Field(
        256, ge=1, description="keep at most this many masks per image (highest predicted IoU)"
    )

    @model_validator(mode="after")
    def _grid_survives_downscale(self) -> MaskGenerationParams:
        last = self.points_per_side // self.crop_n_points_downscale_factor**self.crop_n_layers
        if last < 1:
            raise ValueError(
                "points_per_side / crop_n_points_downscale_factor^crop_n_layers must be >= 1 "
                f"(got {self.points_per_side} / {self.crop_n_points_downscale_factor}^"
                f"{self.crop_n_layers})"
            )
        return self
